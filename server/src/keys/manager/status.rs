//! `hsmctl status`: this node's name, version, uptime, whether its store answers, and its open
//! sessions per transport. It answers within the store's timeout even when the store does not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrohsm_proto::message::NodeStatus;

use super::{Caller, KeyManager};
use crate::keys::store::Store;

/// The transports, in the order of [`NodeStatus::sessions`].
const TRANSPORTS: [&str; 4] = ["tcp", "tls", "tls-psk", "shm"];

/// What the status reports besides the store's answer.
#[derive(Debug)]
pub struct NodeInfo {
    /// `[server] node` (empty when the config names none).
    pub node: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Longest the store may take to answer the status's read.
    pub store_timeout: Duration,
    started: Instant,
    sessions: [AtomicU64; 4],
}

impl NodeInfo {
    /// A node that starts now.
    pub fn new(node: String, backend: &'static str, store_timeout: Duration) -> NodeInfo {
        NodeInfo {
            node,
            backend,
            store_timeout,
            started: Instant::now(),
            sessions: Default::default(),
        }
    }

    fn count(&self, caller: &Caller) -> Option<&AtomicU64> {
        TRANSPORTS
            .iter()
            .position(|t| *t == caller.transport)
            .map(|i| &self.sessions[i])
    }

    /// A session opened.
    pub(super) fn opened(&self, caller: &Caller) {
        if let Some(c) = self.count(caller) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session ended.
    pub(super) fn ended(&self, caller: &Caller) {
        if let Some(c) = self.count(caller) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

impl KeyManager {
    /// The node's status; the store is asked for one read, and reported unreachable if it
    /// does not answer within its timeout (the answer never waits longer).
    pub async fn status(&self) -> NodeStatus {
        let n = &self.node;
        let read = self.store.read(|s: &mut Store, _| s.ping());
        let reachable = matches!(
            tokio::time::timeout(n.store_timeout, read).await,
            Ok(Ok(()))
        );
        NodeStatus {
            node: n.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: n.started.elapsed().as_secs(),
            store_backend: n.backend.to_string(),
            store_reachable: reachable,
            sessions: std::array::from_fn(|i| n.sessions[i].load(Ordering::Relaxed)),
        }
    }
}
