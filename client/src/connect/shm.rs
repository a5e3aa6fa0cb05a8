//! Shared memory: set up on the server's Unix socket (the same Ed25519 proof as plain TCP,
//! plus the server's uid check), then requests and responses cross a memfd segment. The socket
//! stays open as the liveness signal in both directions.

use std::path::Path;

use ferrohsm_proto::frame::Decoded;
use ferrohsm_proto::handshake::Hello;
use ferrohsm_proto::{FrameDecoder, PROTOCOL_VERSION, Request, Response};
use ferrohsm_shm::handoff::recv_with_fd;
use ferrohsm_shm::{Segment, ShmStream, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::profile::Identity;
use crate::{Client, ClientError, decode_response, handshake_step, prove};

fn conn(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// Connects through the set-up socket at `socket` and authenticates as `id`.
pub async fn connect(socket: &Path, id: &Identity) -> Result<Client, ClientError> {
    let (mut s, seg) = set_up(socket, id).await?;
    let (rd, wr, closer) = ShmStream::start(seg, Side::Client).map_err(conn)?;
    // Liveness: the server closing the socket ends our stream; our stream ending (client
    // dropped) closes the socket, which ends the server's session.
    tokio::spawn(async move {
        let mut b = [0u8; 64];
        tokio::select! {
            _ = async { while matches!(s.read(&mut b).await, Ok(n) if n > 0) {} } => closer.close(),
            _ = closer.closed() => {}
        }
    });
    Client::handshake(
        rd,
        wr,
        &Identity {
            name: id.name.clone(),
            auth_key: None,
        },
    )
    .await
}

/// The set-up half of [`connect`]: authenticates on the socket and maps the segment the server
/// sends. Returns the socket (keep it open: closing it ends the session) and the segment.
/// Public so tests can play a misbehaving client on a real segment.
pub async fn set_up(socket: &Path, id: &Identity) -> Result<(UnixStream, Segment), ClientError> {
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|e| conn(format!("cannot connect to {}: {e}", socket.display())))?;
    let dec = FrameDecoder::new(64 * 1024);
    let mut buf = Vec::with_capacity(512);
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: id.name.clone(),
    });
    let (mut r, mut w) = s.split();
    let challenge = match handshake_step(&mut r, &mut w, &mut buf, &dec, hello).await? {
        Response::Challenge(c) => c,
        other => {
            return Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            )));
        }
    };
    let proof = Request::Proof(prove(id, &challenge)?).to_frame(0).encode();
    w.write_all(&proof).await.map_err(conn)?;
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
    buf.extend_from_slice(&msg[..n]);
    let frame = match dec
        .decode(&buf)
        .map_err(|e| ClientError::Protocol(e.to_string()))?
    {
        Decoded::Frame(f, _) => f,
        Decoded::Incomplete(_) => return Err(ClientError::Protocol("truncated welcome".into())),
    };
    match decode_response(&frame) {
        Ok(Response::Welcome(_)) => {}
        Ok(other) => {
            return Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            )));
        }
        Err(ClientError::Server(b)) => return Err(ClientError::Auth(b)),
        Err(e) => return Err(e),
    }
    let fd = fd.ok_or_else(|| ClientError::Protocol("the welcome carried no segment".into()))?;
    let seg = Segment::open(fd).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((s, seg))
}
