//! The shared-memory listener: sessions are set up on a Unix socket, then run over a sealed
//! memfd segment.
//!
//! ```text
//! client                         Unix socket                       hsmd
//!   connect                         ->   SO_PEERCRED (pid, uid)
//!   Hello{name}                     ->   Challenge (same Ed25519 proof as plain TCP)
//!   Proof                           ->   verify; uid in the client's allowed_uids?
//!                                   <-   Welcome + memfd (SCM_RIGHTS)
//!   (rings) Hello{name}             ->   session, the name already proven: Welcome
//!   ... requests over the rings ...
//!   exit / crash: socket EOF        ->   session ends, segment freed
//! ```
//! The socket stays open for the whole session: it is how each side learns that the other is
//! gone, within milliseconds.

use std::path::Path;
use std::sync::Arc;

use ferrohsm_proto::handshake::{ServerHandshake, ServerStep, Welcome};
use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{Frame, FrameReader, Request, Response, Status};
use ferrohsm_shm::handoff::{PeerCred, send_with_fd};
use ferrohsm_shm::{Segment, ShmStream, Side, Waiting};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{Slot, Transport, UnixPeer};
use crate::auth::{Connection, Credential};
use crate::error::{OpError, ServerError};
use crate::session::{Conn, Shared, serve};

/// Binds the socket: a stale socket file from a previous run is replaced, anything else at the
/// path is refused; the mode limits who can connect at all.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::Config(format!(
                "shm.socket {} exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| ServerError::io(format!("cannot replace {}", path.display()), e))?;
    }
    let l = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServerError::io(format!("cannot set the mode of {}", path.display()), e))?;
    Ok(l)
}

/// The shared-memory transport: set-up handshake on the Unix socket, then the session on
/// the rings of a fresh segment.
#[derive(Debug, Clone, Copy)]
pub struct Shm {
    /// Bytes per ring.
    pub ring_size: u32,
}

impl Transport for Shm {
    const NAME: &'static str = "shm";
    type Listen = UnixListener;

    fn start(
        self,
        shared: Arc<Shared>,
        socket: UnixStream,
        peer: UnixPeer,
        slot: Slot,
    ) -> impl std::future::Future<Output = ()> + 'static {
        set_up(shared, socket, peer, self.ring_size, slot)
    }
}

/// Reads one frame from the set-up socket.
async fn read_frame(s: &mut UnixStream, frames: &mut FrameReader) -> Result<Frame, OpError> {
    loop {
        match frames.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(OpError::new(e.status(), e.to_string())),
        }
        match s.read_buf(frames.buffer()).await {
            Ok(0) | Err(_) => return Err(OpError::new(Status::ProtocolViolation, "peer hung up")),
            Ok(_) => {}
        }
    }
}

async fn request(
    s: &mut UnixStream,
    frames: &mut FrameReader,
) -> Result<(Request, u16, u64), OpError> {
    let f = read_frame(s, frames).await?;
    let (op, rid) = (f.header.opcode, f.header.request_id);
    let r = Request::decode(op, &f.body).map_err(|e| OpError::new(e.status(), e.to_string()))?;
    Ok((r, op, rid))
}

/// Hello, challenge, proof and the uid check on the socket; then the segment goes to the
/// client and the session starts on it.
async fn set_up(shared: Arc<Shared>, mut s: UnixStream, unix: UnixPeer, ring: u32, slot: Slot) {
    let (peer, cred) = (format!("shm:{unix}"), unix.0);
    let timeout = shared.handshake_timeout;
    let shared2 = shared.clone();
    let outcome = tokio::select! {
        o = tokio::time::timeout(timeout, handshake(&shared2, &mut s, &cred, &peer)) => o,
        _ = slot.evicted() => return,
    };
    let (client, session_id, op, rid) = match outcome {
        Ok(Ok(ok)) => match slot.authenticate() {
            Ok(()) => ok,
            Err(e) => {
                let _ = s
                    .write_all(&error_frame(ok.2, ok.3, &e.to_body()).encode())
                    .await;
                return;
            }
        },
        Ok(Err((e, op, rid))) => {
            let _ = s
                .write_all(&error_frame(op, rid, &e.to_body()).encode())
                .await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "shm handshake timed out; closing");
            return;
        }
    };
    let seg = match Segment::create(ring) {
        Ok(seg) => seg,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot create a shared-memory segment");
            let e = OpError::internal("cannot create a shared-memory segment");
            let _ = s
                .write_all(&error_frame(op, rid, &e.to_body()).encode())
                .await;
            return;
        }
    };
    let welcome = Response::Welcome(Welcome {
        session_id,
        max_body: shared.max_body,
        window: shared.window,
    });
    let bytes = welcome.to_frame(op, rid).encode();
    let sent = loop {
        if s.writable().await.is_err() {
            break false;
        }
        match s.try_io(tokio::io::Interest::WRITABLE, || {
            send_with_fd(&s, &bytes, seg.fd())
        }) {
            Ok(()) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break false,
        }
    };
    if !sent {
        return;
    }
    let (rd, wr, closer) = match ShmStream::start(seg, Side::Server, Waiting::InTask) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot start the shared-memory watcher");
            return;
        }
    };
    serve(
        shared,
        rd,
        wr,
        Conn {
            peer: peer.clone(),
            credential: Credential::ShmSession { client, peer: cred },
            session_id: Some(session_id),
            slot,
        },
    );
    // Liveness: the client's end of the socket closing (exit, crash, SIGKILL) ends the session;
    // the session ending drops the socket, which tells the client.
    let mut b = [0u8; 64];
    tokio::select! {
        _ = async { while matches!(s.read(&mut b).await, Ok(n) if n > 0) {} } => {
            tracing::debug!(%peer, "shm client went away; ending its session");
            closer.close();
        }
        _ = closer.closed() => {}
    }
    if let Some(why) = closer.error() {
        tracing::warn!(%peer, reason = %why, "shm session ended: the client broke its ring");
    }
}

type Fail = (OpError, u16, u64);

async fn handshake(
    shared: &Shared,
    s: &mut UnixStream,
    cred: &PeerCred,
    peer: &str,
) -> Result<(Arc<str>, u64, u16, u64), Fail> {
    // Before authentication, frames are small: a hello or a proof.
    let mut frames = FrameReader::new(shared.preauth_max_body);
    let session_id = shared.new_session_id();
    let credential = Credential::UnixPeer(*cred);
    // The same handshake machine as a session's: hello, challenge, proof; the authenticator
    // also checks that this process may run as the client (allowed_uids).
    let mut hs = ServerHandshake::new(session_id);
    let conn = Connection {
        auth: &shared.auth,
        credential: &credential,
        peer,
    };
    // The name a hello claimed, for the audit entry of a failed login.
    let mut claimed = String::new();
    let (client, op, rid) = loop {
        let (req, op, rid) = request(s, &mut frames).await.map_err(|e| (e, 0, 0))?;
        if let Request::Hello(h) = &req {
            claimed = h.client.chars().take(64).collect();
        }
        match hs.on_request(&conn, req) {
            Ok(ServerStep::Challenge(c)) => {
                let frame = Response::Challenge(c).to_frame(op, rid).encode();
                s.write_all(&frame)
                    .await
                    .map_err(|_| (OpError::internal("write failed"), op, rid))?;
            }
            Ok(ServerStep::Open(client)) => break (client, op, rid),
            Err(e) => {
                // Audited like a failed login on any other transport.
                if matches!(e.status, Status::AuthFailed | Status::PeerNotAllowed) {
                    shared
                        .dispatcher
                        .keys()
                        .deny_login(&claimed, session_id, "shm", e.status);
                }
                return Err((e, op, rid));
            }
        }
    };
    Ok((client, session_id, op, rid))
}
