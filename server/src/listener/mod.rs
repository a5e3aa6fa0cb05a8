//! Transport listeners: accept connections and hand each to [`crate::session::serve`]. A
//! listener only moves bytes and names the peer (and, for TLS, the client its credential
//! proves); identity policy and everything after live in the session.
//!
//! One generic [`Listener`] actor runs the accept loop (shutdown, per-listener connection
//! limit); a [`Transport`] decides what happens to an accepted socket.

pub mod psk;
pub mod shm;
pub mod tcp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, AsyncContext, Context, WrapFuture};
use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, Status};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::session::{Conn, Shared, serve};

/// Tells a refused peer why, in one error frame, then closes.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(mut wr: W, status: Status, message: &str) {
    let frame = error_frame(0, 0, &ErrorBody::new(status, message));
    let _ = wr.write_all(&frame.encode()).await;
    let _ = wr.shutdown().await;
}

/// What differs between the TLS transports: how the handshake runs and which configured
/// client its credential names. Everything else is [`Secured`].
pub trait Handshake: Clone + Unpin + 'static {
    /// Name for logs.
    const NAME: &'static str;
    /// The encrypted stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// What the handshake proved (certificate names, PSK identity).
    type Credential;
    /// Runs the handshake within `timeout`.
    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<
        Output = Result<(Self::Stream, Self::Credential), ferrohsm_tls::TlsError>,
    > + 'static;
    /// The configured client the credential names, or why none.
    fn identify(&self, credential: Self::Credential) -> Result<Arc<str>, &'static str>;
}

/// A TLS transport: handshake (bounded by the handshake timeout), the client named by the
/// credential, then the session; over the limit, a readable `busy` after the handshake.
#[derive(Debug, Clone)]
pub struct Secured<H>(pub H);

impl<H: Handshake> Transport for Secured<H> {
    const NAME: &'static str = H::NAME;

    fn start(
        &self,
        shared: &Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let (h, shared) = (self.0.clone(), shared.clone());
        actix::spawn(async move {
            let (tls, credential) = match h.handshake(stream, shared.handshake_timeout).await {
                Ok(ok) => ok,
                Err(e) => {
                    return tracing::info!(transport = H::NAME, %peer, reason = %e, "TLS handshake failed");
                }
            };
            let (rd, wr) = tokio::io::split(tls);
            match h.identify(credential) {
                Ok(client) => {
                    let conn = Conn {
                        peer: format!("{}:{peer}", H::NAME),
                        proven: Some(client),
                        session_id: None,
                        slot,
                    };
                    serve(shared, rd, wr, conn);
                }
                Err(why) => {
                    tracing::warn!(transport = H::NAME, %peer, "{why}");
                    refuse(wr, Status::AuthFailed, why).await;
                }
            }
        });
    }

    fn refuse(&self, shared: &Arc<Shared>, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let handshake = self.0.handshake(stream, shared.handshake_timeout);
        actix::spawn(async move {
            if let Ok((tls, _)) = handshake.await {
                refuse(tls, Status::Busy, "too many connections").await;
            }
            drop(slot);
        });
    }
}

/// What a listener does with an accepted connection.
pub trait Transport: Unpin + 'static {
    /// Name for logs (`tcp`, `tls`, `tls-psk`).
    const NAME: &'static str;
    /// Takes over an accepted socket; `slot` must live as long as the connection.
    fn start(
        &self,
        shared: &Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    );

    /// Tells a peer over the connection limit why it is refused, in a form it can read (TLS
    /// transports finish the handshake first). `slot` bounds how many refusals run at once.
    fn refuse(&self, shared: &Arc<Shared>, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let _ = shared;
        actix::spawn(async move {
            refuse(stream, Status::Busy, "too many connections").await;
            drop(slot);
        });
    }
}

/// Refusals (handshake + error frame) in progress at once, per listener; beyond this an
/// over-limit connection is closed without a word.
const MAX_REFUSALS: usize = 16;

/// Accepts connections until shutdown, at most `max_connections` at once.
pub struct Listener<T: Transport> {
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    transport: Option<T>,
}

impl<T: Transport> std::fmt::Debug for Listener<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("transport", &T::NAME)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Listener<T> {
    /// A listener over an already bound socket.
    pub fn new(
        listener: TcpListener,
        shared: Arc<Shared>,
        max_connections: usize,
        transport: T,
    ) -> Self {
        Listener {
            listener: Some(listener),
            shared,
            connections: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            transport: Some(transport),
        }
    }
}

impl<T: Transport> Actor for Listener<T> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(listener), Some(transport)) = (self.listener.take(), self.transport.take())
        else {
            return;
        };
        let shared = self.shared.clone();
        let connections = self.connections.clone();
        let refusals = self.refusals.clone();
        let mut shutdown = shared.shutdown.clone();
        ctx.spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(transport = T::NAME, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Small frames, request/response: latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    match connections.clone().try_acquire_owned() {
                        Ok(slot) => transport.start(&shared, stream, peer, slot),
                        Err(_) => {
                            tracing::warn!(transport = T::NAME, %peer, "connection limit reached; refusing");
                            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                                transport.refuse(&shared, stream, slot);
                            }
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}
