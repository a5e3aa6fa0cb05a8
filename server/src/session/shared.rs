//! What every session shares, and the count of requests in flight that shutdown waits for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferrohsm_proto::Status;
use tokio::sync::{Notify, watch};

use crate::admission::Slot;
use crate::auth::{Authenticator, Credential};
use crate::dispatch::Dispatcher;
use crate::error::OpError;

/// Counts requests in flight across all sessions, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub(super) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Waits until no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub(super) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every session shares.
pub struct Sessions {
    /// Carries requests to the key manager and the crypto pool.
    pub dispatcher: Arc<Dispatcher>,
    /// Maps credentials and proofs to clients.
    pub auth: Authenticator,
    /// Requests in flight per session.
    pub window: u32,
    /// Body cap.
    pub max_body: u32,
    /// Body cap before authentication.
    pub preauth_max_body: u32,
    /// Bytes of requests and responses buffered, server-wide.
    pub budget: Arc<super::budget::Budget>,
    /// How long a socket session looks for its next request before its thread may sleep.
    pub spin: std::time::Duration,
    /// Handshake deadline.
    pub handshake_timeout: std::time::Duration,
    /// Sessions per client, at most.
    pub max_per_client: usize,
    /// Global in-flight count.
    pub inflight: Arc<InFlight>,
    /// Flips to true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// What `/metrics` shows: requests answered, handshakes refused.
    pub metrics: Arc<crate::metrics::Metrics>,
    next_session: AtomicU64,
    per_client: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Bundles the shared state from a validated config.
    pub fn new(
        config: &crate::config::Config,
        dispatcher: Arc<Dispatcher>,
        shutdown: watch::Receiver<bool>,
    ) -> Sessions {
        let clients = Arc::new(config.clients.clone());
        Sessions {
            auth: Authenticator::new(clients),
            dispatcher,
            window: config.window,
            max_body: config.max_body,
            preauth_max_body: config.limits.preauth_max_body,
            budget: Arc::new(super::budget::Budget::new(
                config.limits.memory,
                config.clients.len(),
                config.max_body,
            )),
            spin: config.spin,
            handshake_timeout: config.handshake_timeout,
            max_per_client: config.max_connections_per_client,
            inflight: Arc::new(InFlight::default()),
            shutdown,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            next_session: AtomicU64::new(1),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh session id.
    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new session of `client`; refuses one over the per-client limit.
    pub(super) fn enter_client(&self, client: &str) -> Result<(), OpError> {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client.to_owned()).or_insert(0);
        if *n >= self.max_per_client {
            return Err(OpError::new(
                Status::Busy,
                format!("client {client} already has {n} connections, the most allowed"),
            ));
        }
        *n += 1;
        Ok(())
    }

    pub(super) fn leave_client(&self, client: &str) {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(client);
            }
        }
    }
}

/// What a transport knows about an accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The peer, for logs (`tcp:127.0.0.1:5000`, `shm:pid=..,uid=..`).
    pub peer: String,
    /// What the transport proved; the authenticator decides what it means.
    pub credential: Credential,
    /// A session id already announced to the client (shm), else a fresh one is taken.
    pub session_id: Option<u64>,
    /// The listener's connection slot and arbiter placement, released when it ends.
    pub slot: Slot,
}
