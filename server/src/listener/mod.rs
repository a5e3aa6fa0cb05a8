//! Transport listeners: thin actix actors that accept connections, place each on a session
//! arbiter, run the transport's handshake there and hand `(stream, credential)` to
//! [`crate::session::serve`]. What the credential proves is decided by the one
//! [`crate::auth::Authenticator`]; a listener only moves bytes and says what its handshake
//! proved.
//!
//! One generic [`Listener`] actor runs every accept loop (TCP and the shm set-up socket alike):
//! shutdown, a handshake place for each connection ([`gate`]), and the per-listener limit on
//! authenticated sessions, taken when a session authenticates. An [`Accept`] is the bound
//! socket; a [`Transport`] decides what happens to an accepted one on its arbiter.

pub mod memory;
pub mod psk;
pub mod shm;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, AsyncContext, Context, WrapFuture};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::admission::{Admission, Slot, gate};
use crate::auth::Credential;
use crate::session::{Conn, Sessions, serve};

/// A tokio socket that can leave the runtime it was accepted on and join another.
pub trait Detach: Sized {
    /// The runtime-free socket that travels between threads.
    type Std: Send + 'static;
    /// Leaves this runtime.
    fn detach(self) -> std::io::Result<Self::Std>;
    /// Registers with the current runtime (called on the session arbiter).
    fn attach(s: Self::Std) -> std::io::Result<Self>;
}

impl Detach for TcpStream {
    type Std = std::net::TcpStream;
    fn detach(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn attach(s: Self::Std) -> std::io::Result<Self> {
        TcpStream::from_std(s)
    }
}

impl Detach for UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn detach(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn attach(s: Self::Std) -> std::io::Result<Self> {
        UnixStream::from_std(s)
    }
}

/// A bound socket that accepts connections.
pub trait Accept: Unpin + 'static {
    /// An accepted connection.
    type Socket: Detach;
    /// Who connected, as the kernel says (for logs and credentials).
    type Peer: Send + std::fmt::Display + 'static;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Socket, Self::Peer)>>;
    /// Where a peer comes from, for the per-source handshake limit.
    fn source(peer: &Self::Peer) -> gate::Source;
}

impl Accept for TcpListener {
    type Socket = TcpStream;
    type Peer = SocketAddr;
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (s, peer) = TcpListener::accept(self).await?;
        // Small frames, request/response: latency matters more than packet count.
        let _ = s.set_nodelay(true);
        Ok((s, peer))
    }
    fn source(peer: &SocketAddr) -> gate::Source {
        gate::Source::ip(peer.ip())
    }
}

/// The process at the other end of a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer(pub ferrohsm_shm::handoff::PeerCred);

impl std::fmt::Display for UnixPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid={},uid={}", self.0.pid, self.0.uid)
    }
}

impl Accept for UnixListener {
    type Socket = UnixStream;
    type Peer = UnixPeer;
    async fn accept(&self) -> std::io::Result<(UnixStream, UnixPeer)> {
        loop {
            let (s, _) = UnixListener::accept(self).await?;
            // A peer whose credentials cannot be read (gone already) is not served.
            if let Ok(cred) = ferrohsm_shm::handoff::peer_cred(&s) {
                return Ok((s, UnixPeer(cred)));
            }
        }
    }
    fn source(peer: &UnixPeer) -> gate::Source {
        gate::Source::Uid(peer.0.uid)
    }
}

/// What a listener does with an accepted connection, on the session arbiter it was placed on.
pub trait Transport: Clone + Send + Unpin + 'static {
    /// Name for logs (`tcp`, `tls`, `tls-psk`, `shm`).
    const NAME: &'static str;
    /// The bound socket.
    type Listen: Accept;
    /// Handshakes and serves the connection; `slot` must live as long as it.
    fn start(
        self,
        shared: Arc<Sessions>,
        socket: <Self::Listen as Accept>::Socket,
        peer: <Self::Listen as Accept>::Peer,
        slot: Slot,
    ) -> impl Future<Output = ()> + 'static;
}

/// What differs between the TLS transports: how the handshake runs. Everything else is
/// [`Secured`].
pub trait TlsHandshake: Clone + Send + Unpin + 'static {
    /// Name for logs.
    const NAME: &'static str;
    /// The encrypted stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// Runs the handshake within `timeout`; the stream and what the handshake proved.
    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<(Self::Stream, Credential), ferrohsm_tls::TlsError>> + 'static;
}

/// A TLS transport: its handshake (bounded by the handshake timeout, ended early if evicted),
/// then the session with what the handshake proved (the session decides what it means).
#[derive(Debug, Clone)]
pub struct Secured<H>(pub H);

impl<H: TlsHandshake> Transport for Secured<H> {
    const NAME: &'static str = H::NAME;
    type Listen = TcpListener;

    async fn start(self, shared: Arc<Sessions>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        let started = std::time::Instant::now();
        let handshake = self.0.handshake(stream, shared.handshake_timeout);
        let done = tokio::select! {
            done = handshake => done,
            _ = slot.evicted() => {
                return shared.metrics.refused(H::NAME, crate::metrics::Refusal::Evicted);
            }
        };
        let (tls, credential) = match done {
            Ok(ok) => ok,
            Err(e) => {
                // The handshake's deadline is the transport's own: one that ran out is a
                // timeout, anything else a TLS failure (a bad certificate, an unknown PSK).
                let why = if started.elapsed() >= shared.handshake_timeout {
                    crate::metrics::Refusal::Timeout
                } else {
                    crate::metrics::Refusal::Tls
                };
                shared.metrics.refused(H::NAME, why);
                return crate::logsafe::limited(
                    "tls",
                    &peer.ip().to_string(),
                    format_args!(
                        "{}: TLS handshake failed: {}",
                        H::NAME,
                        crate::logsafe::Escaped(&e.to_string())
                    ),
                );
            }
        };
        let (rd, wr) = tokio::io::split(tls);
        let conn = Conn {
            peer: format!("{}:{peer}", H::NAME),
            credential,
            session_id: None,
            slot,
        };
        serve(shared, rd, wr, conn);
    }
}

/// Accepts connections until shutdown; at most `max_connections` of them authenticated at once.
pub struct Listener<T: Transport> {
    listener: Option<T::Listen>,
    shared: Arc<Sessions>,
    admission: Arc<Admission>,
    connections: Arc<Semaphore>,
    transport: T,
}

impl<T: Transport> std::fmt::Debug for Listener<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("transport", &T::NAME)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Listener<T> {
    /// A listener over an already bound socket: its connections are admitted by `admission`
    /// (at most `admission.connections` sessions of its own) and served by `shared`.
    pub fn new(
        listener: T::Listen,
        shared: Arc<Sessions>,
        admission: Arc<Admission>,
        transport: T,
    ) -> Self {
        Listener {
            listener: Some(listener),
            shared,
            connections: Arc::new(Semaphore::new(admission.connections)),
            admission,
            transport,
        }
    }
}

/// Moves an accepted socket to the least-loaded session arbiter and runs `work` on it there.
fn place<T: Transport, F, Fut>(
    admission: &Admission,
    socket: <T::Listen as Accept>::Socket,
    handshake: gate::Handshake,
    connections: Arc<Semaphore>,
    work: F,
) where
    F: FnOnce(<T::Listen as Accept>::Socket, Slot) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let std = match socket.detach() {
        Ok(s) => s,
        Err(e) => {
            return tracing::warn!(transport = T::NAME, error = %e, "cannot hand over a connection");
        }
    };
    admission.arbiters.place(move |placement| async move {
        let slot = Slot::new(handshake, connections, placement);
        match <<T::Listen as Accept>::Socket as Detach>::attach(std) {
            Ok(socket) => work(socket, slot).await,
            Err(e) => {
                tracing::warn!(transport = T::NAME, error = %e, "cannot take over a connection")
            }
        }
    });
}

impl<T: Transport> Actor for Listener<T>
where
    <T::Listen as Accept>::Socket: AsyncWrite + Unpin + 'static,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let transport = self.transport.clone();
        let shared = self.shared.clone();
        let admission = self.admission.clone();
        let connections = self.connections.clone();
        let mut shutdown = shared.shutdown.clone();
        ctx.spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(transport = T::NAME, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (t, sh) = (transport.clone(), shared.clone());
                    // Refused (its source's handshakes are all young): closed at once.
                    let Some(handshake) = admission.handshakes.admit(T::Listen::source(&peer))
                    else {
                        shared
                            .metrics
                            .refused(T::NAME, crate::metrics::Refusal::Busy);
                        continue;
                    };
                    place::<T, _, _>(
                        &admission,
                        socket,
                        handshake,
                        connections.clone(),
                        move |s, slot| t.start(sh, s, peer, slot),
                    );
                }
            }
            .into_actor(self),
        );
    }
}
