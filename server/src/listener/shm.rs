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
//! The hello, challenge and proof on the socket are the session's own login
//! ([`crate::session::login`], the same authenticator and audit as every transport): this
//! listener only moves their frames, then sets up the segment. The socket stays open for the
//! whole session: it is how each side learns that the other is
//! gone, within milliseconds.

use std::path::Path;
use std::sync::Arc;

use ferrohsm_proto::Response;
use ferrohsm_proto::handshake::Welcome;
use ferrohsm_proto::message::error_frame;
use ferrohsm_shm::handoff::send_with_fd;
use ferrohsm_shm::{Segment, ShmStream, Side, Waiting};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{Transport, UnixPeer};
use crate::admission::Slot;
use crate::auth::Credential;
use crate::error::{OpError, ServerError};
use crate::metrics::Refusal;
use crate::session::login::{self, Login};
use crate::session::{Conn, Sessions, serve};
use std::time::Instant;

/// The lock file beside the socket: `hsmd.sock.lock` for `hsmd.sock`.
pub fn lock_path(socket: &Path) -> std::path::PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// Binds the socket: a stale socket file from a previous run is replaced, anything else at the
/// path is refused; the mode limits who can connect at all.
///
/// First the lock file beside it is taken (and held while this process serves): of two hsmd
/// starting at once on one stale socket file, one replaces it and the other is refused,
/// instead of the second unlinking the first's fresh socket. The lock file stays after a stop
/// (removing it would let two later starts lock two different files).
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, Bound), ServerError> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let lock_at = lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_at)
        .map_err(|e| ServerError::io(format!("cannot open {}", lock_at.display()), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ServerError::Config(format!(
                "shm.socket {} is in use: another hsmd holds {}",
                path.display(),
                lock_at.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(ServerError::io(
                format!("cannot lock {}", lock_at.display()),
                e,
            ));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::Config(format!(
                "shm.socket {} exists and is not a socket",
                path.display()
            )));
        }
        // A socket file left by an hsmd that crashed is replaced; one that answers belongs to
        // a running hsmd, which keeps it. The probe is bounded: a connect that hangs (a stuck
        // hsmd with a full backlog) counts as someone there.
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(std::os::unix::net::UnixStream::connect(probe).map(drop));
        });
        let answered = rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .unwrap_or(Ok(()));
        match answered {
            Ok(_) => {
                return Err(ServerError::Config(format!(
                    "shm.socket {} is in use: another hsmd answers on it",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                return Err(ServerError::io(
                    format!("cannot tell whether {} is in use", path.display()),
                    e,
                ));
            }
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
    let bound = Bound::of(path, lock).ok_or_else(|| {
        ServerError::Config(format!(
            "shm.socket {} vanished as it was bound",
            path.display()
        ))
    })?;
    Ok((l, bound))
}

/// The socket file this process bound, to remove at a clean stop: by its device and inode, so
/// a file another process put there since is left alone. Holds the lock file's lock until then.
#[derive(Debug)]
pub struct Bound {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
    _lock: std::fs::File,
}

impl Bound {
    /// The socket at `path`, as it is now (just after the bind), and the lock held for it.
    fn of(path: &Path, lock: std::fs::File) -> Option<Bound> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(Bound {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            _lock: lock,
        })
    }

    /// Removes the socket file if it is still the one bound, then lets the lock go.
    pub fn remove(self) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the shm socket");
                }
            }
            _ => {}
        }
    }
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
        shared: Arc<Sessions>,
        socket: UnixStream,
        peer: UnixPeer,
        slot: Slot,
    ) -> impl std::future::Future<Output = ()> + 'static {
        set_up(shared, socket, peer, self.ring_size, slot)
    }
}

/// Hello, challenge, proof and the uid check on the socket; then the segment goes to the
/// client and the session starts on it.
async fn set_up(shared: Arc<Sessions>, mut s: UnixStream, unix: UnixPeer, ring: u32, slot: Slot) {
    let (peer, cred) = (format!("shm:{unix}"), unix.0);
    let timeout = shared.handshake_timeout;
    let session_id = shared.new_session_id();
    // The session's own login (hello, challenge, proof; the authenticator also checks that
    // this process may run as the client: allowed_uids), run on the set-up socket.
    let mut login = Login::new(session_id, Credential::UnixPeer(cred));
    let shared2 = shared.clone();
    let refused = |why| shared.metrics.refused("shm", why);
    let outcome = tokio::select! {
        o = tokio::time::timeout(timeout, login::over_stream(&shared2, &mut s, &mut login, &peer)) => o,
        _ = slot.evicted() => return refused(Refusal::Evicted),
    };
    // The login's last answer, as a session would count it (the challenge was counted where
    // it was written).
    let shm = crate::metrics::transport("shm");
    let answered = |op, status| shared.metrics.answered(op, shm, status, Instant::now());
    let (client, op, rid) = match outcome {
        Ok((Ok(client), op, rid)) => match slot.authenticate() {
            Ok(()) => (client, op, rid),
            Err(e) => {
                answered(op, Some(e.status));
                refused(Refusal::ConnectionLimit);
                let _ = s
                    .write_all(&error_frame(op, rid, &e.to_body()).encode())
                    .await;
                return;
            }
        },
        Ok((Err(e), op, rid)) => {
            answered(op, Some(e.status));
            refused(Refusal::AuthFailed);
            let _ = s
                .write_all(&error_frame(op, rid, &e.to_body()).encode())
                .await;
            return;
        }
        Err(_) => {
            refused(Refusal::Timeout);
            tracing::info!(%peer, "shm handshake timed out; closing");
            return;
        }
    };
    let seg = match Segment::create(ring) {
        Ok(seg) => seg,
        Err(e) => {
            refused(Refusal::Setup);
            tracing::error!(%peer, error = %e, "cannot create a shared-memory segment");
            let e = OpError::internal("cannot create a shared-memory segment");
            answered(op, Some(e.status));
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
    answered(op, None);
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
        return refused(Refusal::Setup);
    }
    let (rd, wr, closer) = match ShmStream::start(seg, Side::Server, Waiting::InTask) {
        Ok(x) => x,
        Err(e) => {
            refused(Refusal::Setup);
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
