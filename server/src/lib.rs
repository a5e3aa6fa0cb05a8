//! The FerroHSM server: the `hsmd` daemon as a library.
//!
//! # Layout
//! ```text
//!  listener/tcp.rs  accept -> session::serve (reader task, Session actor, writer task)
//!  session.rs       handshake (Ed25519 challenge-response), identity, in-flight window, ping
//!       |  Resolve{caller, request}
//!       v
//!  keys/manager.rs  KeyManager actor: store (keys/store.rs), namespaces, policy (keys/policy.rs)
//!       |  Plan::Crypto(job)
//!       v
//!  crypto/pool.rs   N worker threads, bounded queue; crypto/ops.rs does the algorithms
//!       |  JobOutput (NewKey goes back to the KeyManager as Insert)
//!       v
//!  session writer   response frame on the wire, window slot returned
//! ```
//! Actix types stay inside this crate. [`run`] blocks the calling thread with its own actix
//! system until `shutdown` resolves; [`start`] runs it on a thread and returns the bound
//! addresses (tests use it with port 0).
#![forbid(unsafe_code)]

pub mod config;
pub mod crypto;
pub mod error;
pub mod init;
pub mod keys;
pub mod listener;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use tokio::sync::watch;

pub use config::Config;
pub use error::{OpError, ServerError};

/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses the server actually bound.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// Plain TCP listener.
    pub tcp: Option<SocketAddr>,
}

/// Runs the server until `shutdown` resolves, then stops taking work, lets in-flight requests
/// finish (up to 10 s), and returns. `ready` is called once the listeners are bound.
pub fn run<S, F>(config: Config, shutdown: S, ready: F) -> Result<(), ServerError>
where
    S: Future<Output = ()> + 'static,
    F: FnOnce(&Bound) + 'static,
{
    let system = actix::System::new();
    system.block_on(serve(config, shutdown, ready))
}

async fn serve<S, F>(config: Config, shutdown: S, ready: F) -> Result<(), ServerError>
where
    S: Future<Output = ()>,
    F: FnOnce(&Bound),
{
    let pool = crypto::pool::CryptoPool::start(config.workers, config.pool_queue)
        .map_err(|e| ServerError::io("cannot start crypto workers", e))?;
    let km = keys::manager::KeyManager::new(Box::new(keys::store::MemoryStore::default())).start();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(session::Shared::new(
        config.clients.clone(),
        km,
        pool,
        config.window,
        config.max_body,
        config.handshake_timeout,
        stop_rx,
    ));
    let mut bound = Bound::default();
    if let Some(tcp) = &config.tcp {
        let l = tokio::net::TcpListener::bind(tcp.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: tcp.addr.to_string(),
                source,
            })?;
        bound.tcp = l.local_addr().ok();
        listener::tcp::TcpListenerActor::new(l, shared.clone(), config.max_connections).start();
    }
    tracing::info!(tcp = ?bound.tcp, clients = config.clients.len(), workers = config.workers, "hsmd ready");
    ready(&bound);
    shutdown.await;
    tracing::info!("shutting down: no new work; finishing requests in flight");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, shared.inflight.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    actix::System::current().stop();
    Ok(())
}

/// A server running on its own thread (tests, embedding).
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound addresses.
    pub bound: Bound,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    /// The TCP address, if a TCP listener runs.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.bound.tcp
    }

    /// Graceful shutdown; waits for the server thread.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ServerError::Config("server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Starts a server on a new thread and waits until its listeners are bound.
pub fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Bound>();
    let thread = std::thread::Builder::new()
        .name("hsmd".into())
        .spawn(move || {
            run(
                config,
                async move {
                    let _ = stop_rx.await;
                },
                move |b| {
                    let _ = ready_tx.send(b.clone());
                },
            )
        })
        .map_err(|e| ServerError::io("cannot start server thread", e))?;
    match ready_rx.recv() {
        Ok(bound) => Ok(ServerHandle {
            bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        // The thread ended before binding: report its error.
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(ServerError::Config("server failed to start".into())),
        },
    }
}

/// Resolves on SIGINT or SIGTERM (must be polled inside the server's runtime).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
