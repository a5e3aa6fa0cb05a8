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

use actix::{Actor, AsyncContext, Context, WrapFuture};
use ferrohsm_proto::frame::Decoded;
use ferrohsm_proto::handshake::Welcome;
use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{Frame, FrameDecoder, Request, Response, Status};
use ferrohsm_shm::handoff::{PeerCred, peer_cred, send_with_fd};
use ferrohsm_shm::{Segment, ShmStream, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Accepts shared-memory sessions until shutdown.
pub struct ShmListener {
    listener: Option<UnixListener>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    ring_size: u32,
}

impl std::fmt::Debug for ShmListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmListener")
            .field("ring_size", &self.ring_size)
            .finish_non_exhaustive()
    }
}

impl ShmListener {
    /// A listener on a bound socket.
    pub fn new(
        listener: UnixListener,
        shared: Arc<Shared>,
        max_connections: usize,
        ring_size: u32,
    ) -> Self {
        ShmListener {
            listener: Some(listener),
            shared,
            connections: Arc::new(Semaphore::new(max_connections)),
            ring_size,
        }
    }
}

impl Actor for ShmListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let (shared, connections, ring) = (
            self.shared.clone(),
            self.connections.clone(),
            self.ring_size,
        );
        let mut shutdown = shared.shutdown.clone();
        ctx.spawn(
            async move {
                loop {
                    let stream = tokio::select! {
                        a = listener.accept() => match a {
                            Ok((s, _)) => s,
                            Err(e) => {
                                tracing::warn!(transport = "shm", error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let Ok(cred) = peer_cred(&stream) else {
                        continue;
                    };
                    match connections.clone().try_acquire_owned() {
                        Ok(slot) => {
                            actix::spawn(set_up(shared.clone(), stream, cred, ring, slot));
                        }
                        Err(_) => {
                            tracing::warn!(
                                transport = "shm",
                                pid = cred.pid,
                                "connection limit reached; refusing"
                            );
                            actix::spawn(super::refuse(
                                stream,
                                Status::Busy,
                                "too many connections",
                            ));
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}

/// Reads one frame from the set-up socket.
async fn read_frame(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    dec: &FrameDecoder,
) -> Result<Frame, OpError> {
    loop {
        match dec.decode(buf) {
            Ok(Decoded::Frame(f, used)) => {
                buf.drain(..used);
                return Ok(f);
            }
            Ok(Decoded::Incomplete(_)) => {}
            Err(e) => return Err(OpError::new(e.status(), e.to_string())),
        }
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(OpError::new(Status::ProtocolViolation, "peer hung up")),
            Ok(_) => {}
        }
    }
}

async fn request(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    dec: &FrameDecoder,
) -> Result<(Request, u16, u64), OpError> {
    let f = read_frame(s, buf, dec).await?;
    let (op, rid) = (f.header.opcode, f.header.request_id);
    let r = Request::decode(op, &f.body).map_err(|e| OpError::new(e.status(), e.to_string()))?;
    Ok((r, op, rid))
}

/// Hello, challenge, proof and the uid check on the socket; then the segment goes to the
/// client and the session starts on it.
async fn set_up(
    shared: Arc<Shared>,
    mut s: UnixStream,
    cred: PeerCred,
    ring: u32,
    slot: OwnedSemaphorePermit,
) {
    let peer = format!("shm:pid={},uid={}", cred.pid, cred.uid);
    let timeout = shared.handshake_timeout;
    let shared2 = shared.clone();
    let outcome = tokio::time::timeout(timeout, handshake(&shared2, &mut s, &cred, &peer)).await;
    let (client, session_id, op, rid) = match outcome {
        Ok(Ok(ok)) => ok,
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
    let (rd, wr, closer) = match ShmStream::start(seg, Side::Server) {
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
            proven: Some(client),
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
    let dec = FrameDecoder::new(4096);
    let mut buf = Vec::with_capacity(512);
    let (hello, op, rid) = request(s, &mut buf, &dec).await.map_err(|e| (e, 0, 0))?;
    let Request::Hello(h) = hello else {
        return Err((
            OpError::new(
                Status::ProtocolViolation,
                "authenticate first (hello, proof)",
            ),
            op,
            rid,
        ));
    };
    crate::auth::check_version(&h).map_err(|e| (e, op, rid))?;
    let session_id = shared.new_session_id();
    let (pending, challenge) =
        crate::auth::challenge(shared, session_id, h.client).map_err(|e| (e, op, rid))?;
    let frame = Response::Challenge(challenge).to_frame(op, rid).encode();
    s.write_all(&frame)
        .await
        .map_err(|_| (OpError::internal("write failed"), op, rid))?;
    let (proof, op, rid) = request(s, &mut buf, &dec).await.map_err(|e| (e, 0, 0))?;
    let Request::Proof(p) = proof else {
        return Err((
            OpError::new(Status::ProtocolViolation, "expected the proof"),
            op,
            rid,
        ));
    };
    let client = pending
        .verify(&p.signature, peer)
        .map_err(|e| (e, op, rid))?;
    // The name is proven; now the process must also be one this client may run as.
    let allowed = shared
        .clients
        .get(&*client)
        .and_then(|c| c.allowed_uids.as_ref());
    if let Some(uids) = allowed
        && !uids.contains(&cred.uid)
    {
        tracing::warn!(%peer, %client, uid = cred.uid, "peer uid not allowed for this client; refusing");
        let e = OpError::new(
            Status::PeerNotAllowed,
            format!("peer uid {} is not allowed for client {client}", cred.uid),
        );
        return Err((e, op, rid));
    }
    Ok((client, session_id, op, rid))
}
