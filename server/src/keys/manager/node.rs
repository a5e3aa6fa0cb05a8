//! What this node reports besides its store's answer: its name, backend, start, and the
//! sessions open on each transport.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::caller::Caller;

use crate::metrics::TRANSPORTS;

/// What the status reports besides the store's answer.
#[derive(Debug)]
pub struct NodeInfo {
    /// `[server] node` (empty when the config names none).
    pub node: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Longest the store may take to answer the status's read.
    pub store_timeout: Duration,
    pub(super) started: Instant,
    pub(super) sessions: [AtomicU64; 4],
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

    /// Sessions open now, by transport (in the order of [`TRANSPORTS`] and of
    /// `NodeStatus::sessions`).
    pub fn sessions(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.sessions[i].load(Ordering::Relaxed))
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
