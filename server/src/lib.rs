//! The FerroHSM server: the `hsmd` daemon as a library.
//!
//! # Layout and threads
//! ```text
//!  listener/   one generic Listener actor per socket (tcp.rs, tls.rs, psk.rs, shm.rs), on the
//!              main actix thread: accept, take a handshake place (admission/), move the std
//!              socket to the least-loaded session arbiter (arbiters.rs); there the transport's
//!              own handshake (TLS) or set-up (shm segment) runs
//!       |  (stream, Credential, admission::Slot)
//!       v
//!  session/    one actor per connection on its arbiter (N = session_threads, default one per
//!              CPU): frames in and out (io.rs), the one login of every transport (login.rs:
//!              proto's ServerHandshake + auth::Authenticator + the audit of a refusal),
//!              per-client limit, in-flight window, memory budget (budget.rs), ping
//!       |  (caller, request)
//!       v
//!  dispatch/   Dispatcher (key manager, pool, inline limit): splits a request once; cheap ops
//!              up to inline_max and a lone signature answered on the arbiter with the key from
//!              memory; otherwise Deferred: keys::manager authorizes (caller, key, op) -> handle;
//!              crypto/pool.rs runs the job on a worker; keys::manager creates new keys
//!              (durable before it answers)
//!       |  response (encoded in place, secrets wiped after the write)
//!       v
//!  session writer  response frame on the wire, window slot returned
//!
//!  admission/  leaf: handshake places (gate.rs), connection slots, the descriptor budget
//!  metrics/    counters the sessions, listeners and store writer add to (relaxed atomics);
//!              with `[metrics] listen`, /metrics and /health over HTTP (hyper), stopped last
//!  keys/       manager, policy, seal (master key), service (store threads, group commit),
//!              store/ (format over a backend: sqlite/ keys.db, or postgres/ shared by nodes)
//! ```
//! What each request kind needs (its key, cost, whether its response is secret) is its
//! description in proto ([`ferrohsm_proto::Kind`]); no layer keeps a list of its own.
//! Actix types stay inside this crate. [`run`] opens and unlocks the key store (before any
//! listener is bound), then blocks the calling thread with its own actix system until
//! `shutdown` resolves; [`start`] runs it on a thread and returns the bound addresses (tests
//! use it with port 0).
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod arbiters;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod error;
pub mod harden;
pub mod init;
pub mod keys;
pub mod listener;
pub mod logsafe;
pub mod metrics;
pub mod notify;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use tokio::sync::watch;

pub use config::{Config, LogFormat};
pub use error::{OpError, ServerError};

/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses the server actually bound.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// Plain TCP listener.
    pub tcp: Option<SocketAddr>,
    /// Certificate TLS listener.
    pub tls: Option<SocketAddr>,
    /// TLS-PSK listener.
    pub tls_psk: Option<SocketAddr>,
    /// Sessions-memory set-up socket.
    pub shm: Option<std::path::PathBuf>,
    /// In-memory connections (fuzzing, tests); not a configured listener.
    pub memory: Option<listener::memory::MemoryConnector>,
    /// The metrics and health endpoint (HTTP).
    pub metrics: Option<SocketAddr>,
}

impl std::fmt::Display for Bound {
    /// `tcp 127.0.0.1:7301, tls 127.0.0.1:7302, tls-psk 127.0.0.1:7303, shm D/hsmd.sock`, then
    /// `metrics http://127.0.0.1:9301` when that endpoint is on
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("tcp", self.tcp),
            ("tls", self.tls),
            ("tls-psk", self.tls_psk),
        ]
        .into_iter()
        .filter_map(|(n, a)| a.map(|a| format!("{n} {a}")))
        .chain(self.shm.as_ref().map(|p| format!("shm {}", p.display())))
        .chain(self.metrics.map(|a| format!("metrics http://{a}")))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Runs the server until `shutdown` resolves, then stops taking work, lets in-flight requests
/// finish (up to 10 s), and returns. `ready` is called once the listeners are bound.
pub fn run<S, F>(config: Config, shutdown: S, ready: F) -> Result<(), ServerError>
where
    S: Future<Output = ()> + 'static,
    F: FnOnce(&Bound) + 'static,
{
    // Fail closed before anything listens: a store that does not open or unlock stops here.
    let km = open_keys(&config)?;
    let db = config
        .store
        .as_ref()
        .filter(|s| s.postgres.is_none())
        .map(|s| s.path.clone());
    let system = actix::System::new();
    let served = system.block_on(listen(config, km, shutdown, ready));
    // Fold the WAL into keys.db on a clean exit, so the file alone is the whole store (a
    // crash leaves the WAL, which SQLite replays on the next open).
    if let Some(db) = db {
        keys::checkpoint(&db);
    }
    served
}

/// Opens the key store, unwraps its master key, and starts the store threads.
fn open_keys(config: &Config) -> Result<Arc<keys::manager::KeyManager>, ServerError> {
    let st = config
        .store
        .as_ref()
        .ok_or_else(|| ServerError::Config("no [store] section in the configuration".into()))?;
    let lock = keys::claim(st)?;
    let unlock = keys::unlock_configured(st)?;
    let (mut store, master) = keys::unlock_store(keys::open_configured(st)?, &unlock)?;
    let store_err = |e: keys::store::StoreError| ServerError::Store(e.to_string());
    // A store from before the audit chain gets its audit key here (sealed under the master key).
    let audit_pub = store.ensure_audit_key(&master).map_err(store_err)?;
    keys::check_audit_pub(&st.path, &audit_pub)?;
    let grants = store.grants(&master).map_err(store_err)?;
    let quotas = quotas(&mut store, &grants, config.limits.quotas).map_err(store_err)?;
    if store.shared() {
        // No node's memory knows what the others hold: the database counts.
        store.enforce_limits(config.limits.quotas);
    }
    let service =
        keys::service::StoreService::start(store, master, st.readers).map_err(store_err)?;
    tracing::info!(store = %st.describe(), cache_keys = st.cache_keys, grants = grants.len(), audit = ?config.audit, "key store open");
    let opts = keys::manager::ManagerOptions {
        audit: config.audit,
        clients: config.clients.keys().cloned().collect(),
        trusted_wrap_keys: config
            .clients
            .iter()
            .map(|(n, c)| (n.clone(), c.trusted_wrap_keys.clone()))
            .collect(),
        revalidate: st.postgres.as_ref().map(|pg| pg.revalidate),
    };
    let node = keys::manager::NodeInfo::new(
        config.node.clone().unwrap_or_default(),
        if st.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        st.postgres
            .as_ref()
            .map_or(std::time::Duration::from_secs(1), |pg| pg.timeout),
    );
    let km =
        keys::manager::KeyManager::new(service, st.cache_keys, lock, grants, opts, quotas, node)
            .map_err(|e| ServerError::Io {
                context: "cannot start the store follower thread".into(),
                source: e,
            })?;
    // A node of a shared store serves once it follows the other nodes' changes.
    let within = st
        .postgres
        .as_ref()
        .map_or(Duration::ZERO, |pg| pg.connect_timeout + pg.timeout);
    if !km.wait_following(within) {
        tracing::warn!(
            "not yet following the other nodes' changes; keys are read from the database until it does"
        );
    }
    Ok(Arc::new(km))
}

/// The quotas, counting what the store holds.
fn quotas(
    store: &mut keys::store::Store,
    grants: &[keys::store::GrantRecord],
    limits: keys::quota::QuotaLimits,
) -> Result<keys::quota::Quotas, keys::store::StoreError> {
    use keys::quota::Resource;
    let mut held: Vec<(Arc<str>, Resource, usize)> = Vec::new();
    for (owner, k, c) in store.held()? {
        let owner: Arc<str> = Arc::from(owner);
        held.push((owner.clone(), Resource::Key, k));
        held.push((owner, Resource::Counter, c));
    }
    held.extend(grants.iter().map(|g| (g.owner.clone(), Resource::Grant, 1)));
    Ok(keys::quota::Quotas::new(limits, held))
}

async fn listen<S, F>(
    config: Config,
    km: Arc<keys::manager::KeyManager>,
    shutdown: S,
    ready: F,
) -> Result<(), ServerError>
where
    S: Future<Output = ()>,
    F: FnOnce(&Bound),
{
    let pool =
        crypto::pool::CryptoPool::start(config.workers, config.pool_queue, config.worker_nice)
            .map_err(|e| ServerError::io("cannot start crypto workers", e))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let arbiters = Arc::new(arbiters::SessionArbiters::start(config.session_threads));
    let listeners = usize::from(config.tcp.is_some())
        + usize::from(config.tls.is_some())
        + usize::from(config.tls_psk.is_some())
        + usize::from(config.shm.is_some());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let configured = admission::Fitted {
        connections: config.max_connections,
        handshakes: config.limits.max_handshakes,
        per_source: config.limits.max_handshakes_per_source,
    };
    // A shm session holds its set-up socket and its segment; count 3 for every connection.
    // The metrics endpoint's connections (and the one it closes unanswered) come off the top.
    let reserved = admission::reserved(
        arbiters.len(),
        config.store.as_ref().map_or(0, |s| s.readers) + 1,
    ) + config
        .metrics
        .as_ref()
        .map_or(0, |_| metrics::http::MAX_CONNECTIONS + 3);
    let places = admission::fit(nofile, reserved, listeners, 3, configured);
    if places != configured {
        tracing::warn!(
            nofile,
            max_connections = places.connections,
            max_handshakes = places.handshakes,
            max_handshakes_per_source = places.per_source,
            "connection limits lowered to fit the file-descriptor limit"
        );
    }
    let admission = Arc::new(admission::Admission {
        // No real handshake takes a second; none is cut short before a third of its time.
        handshakes: Arc::new(admission::gate::Handshakes::new(
            places.handshakes,
            places.per_source,
            (config.handshake_timeout / 3).min(Duration::from_secs(1)),
        )),
        arbiters: arbiters.clone(),
        connections: places.connections,
    });
    let store_place = config.store.as_ref().map(|s| s.place()).unwrap_or_default();
    let health = Arc::new(metrics::health::Health::new(
        km.store().clone(),
        store_place,
    ));
    let dispatcher = Arc::new(dispatch::Dispatcher::new(km, pool, config.inline_max));
    let shared = Arc::new(session::Sessions::new(&config, dispatcher, stop_rx));
    // Build every acceptor before binding anything, so a bad certificate or key fails fast.
    let cert_tls = match &config.tls {
        Some(t) => Some(listener::Secured(listener::tls::CertTls::new(
            ferrohsm_tls::server::CertAcceptor::new(&t.ca, &t.cert, &t.key, t.allow_tls12)
                .map_err(|e| ServerError::Config(format!("[tls]: {e}")))?,
        ))),
        None => None,
    };
    let psk = match &config.tls_psk {
        Some(_) => Some(listener::Secured(listener::psk::TlsPsk::new(
            &config.clients,
        )?)),
        None => None,
    };
    // The metrics endpoint is bound first (it answers `starting` until every listener is
    // bound) and stopped last: it answers `draining` while the session listeners are closed
    // and requests in flight finish. It runs on a thread of its own.
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    let mut bound = Bound::default();
    let mut metrics_thread = None;
    if let Some(m) = &config.metrics {
        let l = std::net::TcpListener::bind(m.listen).map_err(|source| ServerError::Bind {
            addr: format!("{} ([metrics] listen)", m.listen),
            source,
        })?;
        bound.metrics = l.local_addr().ok();
        let scrape = Arc::new(metrics::http::Scrape {
            metrics: shared.metrics.clone(),
            health: health.clone(),
            keys: shared.dispatcher.keys().clone(),
            pool: shared.dispatcher.pool().clone(),
            budget: shared.budget.clone(),
        });
        metrics_thread = Some(
            metrics::http::start(l, scrape, metrics_stopped)
                .map_err(|e| ServerError::io("cannot start the metrics endpoint", e))?,
        );
    }
    let (memory_tx, memory_rx) = tokio::sync::mpsc::channel(64);
    bound.memory = Some(listener::memory::MemoryConnector(memory_tx));
    actix::spawn(listener::memory::accept(
        shared.clone(),
        admission.clone(),
        memory_rx,
    ));
    if let Some(tcp) = &config.tcp {
        let l = bind(tcp.addr).await?;
        bound.tcp = l.local_addr().ok();
        listener::Listener::new(l, shared.clone(), admission.clone(), listener::tcp::Tcp).start();
    }
    if let (Some(t), Some(transport)) = (&config.tls, cert_tls) {
        let l = bind(t.addr).await?;
        bound.tls = l.local_addr().ok();
        listener::Listener::new(l, shared.clone(), admission.clone(), transport).start();
    }
    if let (Some(t), Some(transport)) = (&config.tls_psk, psk) {
        let l = bind(t.addr).await?;
        bound.tls_psk = l.local_addr().ok();
        listener::Listener::new(l, shared.clone(), admission.clone(), transport).start();
    }
    let mut shm_socket = None;
    if let Some(t) = &config.shm {
        let (l, socket) = listener::shm::bind(&t.socket, t.mode)?;
        bound.shm = Some(t.socket.clone());
        shm_socket = Some(socket);
        let shm = listener::shm::Shm {
            ring_size: t.ring_size,
        };
        listener::Listener::new(l, shared.clone(), admission.clone(), shm).start();
    }
    tracing::info!(listening = %bound, clients = config.clients.len(), workers = config.workers, session_threads = arbiters.len(), "hsmd ready");
    if let Some(addr) = bound.tcp.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(%addr, "plain TCP listener on a non-loopback address: traffic is not confidential");
    }
    // The shutdown future is polled once before anyone hears that hsmd is up, so the signal
    // handlers it installs (`signal()`) are in place: a SIGTERM right after the readiness line
    // drains like any other instead of ending the process by the default action.
    let mut shutdown = std::pin::pin!(shutdown);
    let stopped_early = tokio::select! {
        biased;
        _ = &mut shutdown => true,
        _ = std::future::ready(()) => false,
    };
    if !stopped_early {
        health.serving();
        ready(&bound);
        notify::ready(&bound.to_string());
        shutdown.await;
    }
    notify::stopping();
    health.drain();
    tracing::info!("shutting down: no new work; finishing requests in flight");
    let _ = stop_tx.send(true);
    // The shm socket file goes as its listener stops taking connections (sessions already
    // set up keep their rings), if it is still the one this process bound.
    if let Some(s) = shm_socket {
        s.remove();
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, shared.inflight.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    // Everything acknowledged goes back into the main database file (SQLite's WAL emptied),
    // so a copy of it alone is complete after a clean stop.
    match tokio::time::timeout(DRAIN_TIMEOUT, shared.dispatcher.keys().store().close()).await {
        Ok(Ok(())) => tracing::info!("key store closed: its main file holds every change"),
        Ok(Err(e)) => tracing::warn!(error = %e, "key store not checkpointed at stop"),
        Err(_) => {
            tracing::warn!("key store did not close within {DRAIN_TIMEOUT:?}; stopping anyway")
        }
    }
    let stats = &shared.dispatcher.keys().store().stats;
    tracing::info!(
        commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        changes = stats.mutations.load(std::sync::atomic::Ordering::Relaxed),
        "key store: every acknowledged change is on disk"
    );
    let _ = metrics_stop.send(true);
    if let Some(t) = metrics_thread
        && t.join().is_err()
    {
        tracing::warn!("the metrics endpoint's thread panicked");
    }
    drop(shared);
    arbiters.stop();
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

    /// The certificate TLS address, if that listener runs.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.bound.tls
    }

    /// The shared-memory socket, if that listener runs.
    pub fn shm_socket(&self) -> Option<&std::path::Path> {
        self.bound.shm.as_deref()
    }

    /// The TLS-PSK address, if that listener runs.
    pub fn tls_psk_addr(&self) -> Option<SocketAddr> {
        self.bound.tls_psk
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
