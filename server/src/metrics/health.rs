//! Whether this node serves: not draining, and its store answered within the last second.
//!
//! The store check runs when asked (a `/health` or a scrape), at most one at a time, and its
//! answer is reused for up to [`FRESH`]: a load balancer polling every 100 ms costs one store
//! round trip a second. On SQLite the check is the writer answering (behind any commit it is
//! in: a stuck disk makes the node unhealthy), then a read; on PostgreSQL a read transaction
//! on the writer's connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::keys::service::StoreService;

/// How long a store check's answer stands.
pub const FRESH: Duration = Duration::from_secs(1);

/// How long a store check may take before the store counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What is stored, for the `_stored` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Keys (each once, whatever its versions).
    pub keys: u64,
    /// Audit entries in the chain.
    pub audit_entries: u64,
}

/// A value worth asking for at most once per [`FRESH`].
#[derive(Debug)]
struct Cached<T> {
    last: Mutex<Option<(Instant, T)>>,
    // One question at a time: the others wait for its answer.
    asking: tokio::sync::Mutex<()>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            last: Mutex::new(None),
            asking: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T: Clone> Cached<T> {
    fn fresh(&self) -> Option<T> {
        let last = self.last.lock();
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, v)| v.clone())
    }

    async fn get<F: Future<Output = T>>(&self, ask: impl FnOnce() -> F) -> T {
        if let Some(v) = self.fresh() {
            return v;
        }
        let _one = self.asking.lock().await;
        if let Some(v) = self.fresh() {
            return v;
        }
        let v = ask().await;
        *self.last.lock() = Some((Instant::now(), v.clone()));
        v
    }
}

/// The node's health, as `/health` reports it.
#[derive(Debug)]
pub struct Health {
    store: StoreService,
    // Where the store is (a path, or postgres://user@host:port/db), for the 503's body.
    place: String,
    draining: AtomicBool,
    check: Cached<Result<(), String>>,
    stored: Cached<Option<Stored>>,
}

impl Health {
    /// Health over `store`, described as `place` in messages.
    pub fn new(store: StoreService, place: String) -> Health {
        Health {
            store,
            place,
            draining: AtomicBool::new(false),
            check: Cached::default(),
            stored: Cached::default(),
        }
    }

    /// The node has begun to drain: from now on it is not healthy.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `Ok` while the node serves and its store answers; otherwise the reason, as `/health`'s
    /// body says it (`draining`, `store unreachable: <where>`).
    pub async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        self.check
            .get(|| async {
                match tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "health: the key store did not answer");
                        Err(format!("store unreachable: {}", self.place))
                    }
                    Err(_) => {
                        tracing::warn!(
                            "health: the key store did not answer within {PROBE_TIMEOUT:?}"
                        );
                        Err(format!("store unreachable: {}", self.place))
                    }
                }
            })
            .await
    }

    /// Keys and audit entries stored (`None` when the store does not answer in time).
    pub async fn stored(&self) -> Option<Stored> {
        self.stored
            .get(|| async {
                tokio::time::timeout(PROBE_TIMEOUT, self.store.stored())
                    .await
                    .ok()?
                    .ok()
                    .map(|(keys, audit_entries)| Stored {
                        keys,
                        audit_entries,
                    })
            })
            .await
    }

    /// The store's commit counters.
    pub fn store(&self) -> &StoreService {
        &self.store
    }
}
