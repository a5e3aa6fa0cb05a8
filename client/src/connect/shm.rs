//! Shared memory: set up on the server's Unix socket (the same Ed25519 proof as plain TCP,
//! plus the server's uid check), then requests and responses cross a memfd segment. The socket
//! stays open as the liveness signal in both directions.

use std::path::Path;

use ferrohsm_proto::FrameReader;
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep};
use ferrohsm_shm::handoff::recv_with_fd;
use ferrohsm_shm::{Segment, ShmStream, Side, Waiting};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::client::{Client, handshake_error, signer};
use crate::error::ClientError;
use crate::io::{read_frame, send_frame};
use crate::profile::Identity;

fn conn(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// Connects through the set-up socket at `socket` and authenticates as `id`.
pub async fn connect(socket: &Path, id: &Identity) -> Result<Client, ClientError> {
    let (mut s, seg) = set_up(socket, id).await?;
    let (rd, wr, closer) = ShmStream::start(seg, Side::Client, Waiting::InTask).map_err(conn)?;
    // Liveness: the server closing the socket ends our stream; our stream ending (client
    // dropped) closes the socket, which ends the server's session.
    tokio::spawn(async move {
        let mut b = [0u8; 64];
        tokio::select! {
            _ = async { while matches!(s.read(&mut b).await, Ok(n) if n > 0) {} } => closer.close(),
            _ = closer.closed() => {}
        }
    });
    let client = Client::handshake(
        rd,
        wr,
        &Identity {
            name: id.name.clone(),
            auth_key: None,
        },
    )
    .await?;
    // The rings spin on their own (`Waiting::InTask`).
    client.set_spin(std::time::Duration::ZERO);
    Ok(client)
}

/// The set-up half of [`connect`]: authenticates on the socket and maps the segment the server
/// sends. Returns the socket (keep it open: closing it ends the session) and the segment.
/// Public so tests can play a misbehaving client on a real segment.
pub async fn set_up(socket: &Path, id: &Identity) -> Result<(UnixStream, Segment), ClientError> {
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|e| conn(format!("cannot connect to {}: {e}", socket.display())))?;
    let mut frames = FrameReader::new(64 * 1024);
    let mut hs = ClientHandshake::new(&id.name);
    let (mut r, mut w) = s.split();
    // Hello, challenge and proof on the socket.
    send_frame(&mut w, &hs.start()).await?;
    let challenge = read_frame(&mut r, &mut frames).await?;
    let proof = match hs
        .on_frame(&challenge, signer(id))
        .map_err(handshake_error)?
    {
        ClientStep::Send(proof) => proof,
        ClientStep::Done(_) => {
            return Err(ClientError::Protocol(
                "the set-up socket opened a session without a proof".into(),
            ));
        }
    };
    send_frame(&mut w, &proof).await?;
    // The welcome arrives in one message with the segment's memfd attached.
    let mut msg = vec![0u8; 4096];
    let (n, fd) = loop {
        s.readable().await.map_err(conn)?;
        match s.try_io(tokio::io::Interest::READABLE, || recv_with_fd(&s, &mut msg)) {
            Ok((0, _)) => return Err(conn("the server closed the connection")),
            Ok(got) => break got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(conn(e)),
        }
    };
    frames.buffer().extend_from_slice(&msg[..n]);
    let welcome = frames
        .next_frame()
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .ok_or_else(|| ClientError::Protocol("truncated welcome".into()))?;
    match hs
        .on_frame(&welcome, |_| Err("a second challenge".into()))
        .map_err(handshake_error)?
    {
        ClientStep::Done(_) => {}
        ClientStep::Send(_) => return Err(ClientError::Protocol("expected the welcome".into())),
    }
    let fd = fd.ok_or_else(|| ClientError::Protocol("the welcome carried no segment".into()))?;
    let seg = Segment::open(fd).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((s, seg))
}
