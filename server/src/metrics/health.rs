//! Whether this node serves: started, not draining, and its store answered within the last
//! second; and what the store holds, for the `_stored` gauges.
//!
//! Nothing here runs per request of the HSM. A store check is one job at a time, whoever asks
//! and however often: it runs on its own (a waiter that gives up does not cancel it, and no
//! second one starts while it runs), its answer stands for [`FRESH`], and a failed one is not
//! tried again sooner. A load balancer polling every 100 ms costs one check a second; a peer
//! hammering `/metrics` costs one count of the keys per [`STORED_FRESH`]. On SQLite the check is the store writer answering (behind
//! any commit it is in: a stuck disk makes the node unhealthy) with a read; on PostgreSQL the
//! same read over the writer's connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::keys::service::StoreService;

/// How long a store check's success stands.
pub const FRESH: Duration = Duration::from_secs(1);

/// How long `/health` waits for a store check before it calls the store unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the keys and audit entries counted stand (a count of the keys reads every key's
/// row: not something an unauthenticated peer may make the store do more often).
pub const STORED_FRESH: Duration = Duration::from_secs(15);

/// How old a count may be and still be shown while a newer one is being made.
pub const STORED_STALE: Duration = Duration::from_secs(60);

/// What is stored, for the `_stored` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Keys (each once, whatever its versions).
    pub keys: u64,
    /// Audit entries in the chain.
    pub audit_entries: u64,
}

/// A store question asked by one job at a time and at most once per `gap`, its last answer
/// kept with when it came.
#[derive(Debug)]
struct Probe<T> {
    last: Mutex<Option<(Instant, T)>>,
    // When the last job started: a failure is not asked again sooner than `gap` after.
    tried: Mutex<Option<Instant>>,
    gap: Duration,
    running: AtomicBool,
    answered: Notify,
}

impl<T: Clone + Send + 'static> Probe<T> {
    fn new(gap: Duration) -> Arc<Probe<T>> {
        Arc::new(Probe {
            last: Mutex::new(None),
            tried: Mutex::new(None),
            gap,
            running: AtomicBool::new(false),
            answered: Notify::new(),
        })
    }

    /// The last answer, if it came within `fresh`.
    fn within(&self, fresh: Duration) -> Option<T> {
        let last = self.last.lock();
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < fresh)
            .map(|(_, v)| v.clone())
    }

    /// Starts `ask` unless a job is running; it records its answer (`None`: none to keep)
    /// whenever it finishes, whether or not anyone still waits.
    fn start<F>(self: &Arc<Self>, ask: F)
    where
        F: Future<Output = Option<T>> + 'static,
    {
        {
            let mut tried = self.tried.lock();
            if tried.is_some_and(|t| t.elapsed() < self.gap) {
                return;
            }
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *tried = Some(Instant::now());
        }
        let me = self.clone();
        tokio::task::spawn_local(async move {
            if let Some(v) = ask.await {
                *me.last.lock() = Some((Instant::now(), v));
            }
            me.running.store(false, Ordering::Release);
            me.answered.notify_waiters();
        });
    }

    /// Waits up to `within` for the running job, if any, to answer.
    async fn wait(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let answered = self.answered.notified();
                if !self.running.load(Ordering::Acquire) {
                    return;
                }
                answered.await;
            }
        })
        .await;
    }
}

/// Where the node is in its life, as `/health` reports it.
const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// The node's health, as `/health` reports it.
#[derive(Debug)]
pub struct Health {
    store: StoreService,
    // Where the store is (a path, or host:port/db), for the 503's body.
    place: String,
    phase: AtomicU8,
    // When the store last answered a check.
    check: Arc<Probe<()>>,
    stored: Arc<Probe<Stored>>,
}

impl Health {
    /// Health over `store`, described as `place` in the unreachable answer.
    pub fn new(store: StoreService, place: String) -> Health {
        Health {
            store,
            place,
            phase: AtomicU8::new(STARTING),
            check: Probe::new(FRESH),
            stored: Probe::new(STORED_FRESH),
        }
    }

    /// Every listener is bound: the node serves.
    pub fn serving(&self) {
        let _ = self
            .phase
            .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The node has begun to drain: from now on it is not healthy.
    pub fn drain(&self) {
        self.phase.store(DRAINING, Ordering::Release);
    }

    /// `Ok` while the node serves and its store answers; otherwise the reason, as `/health`'s
    /// body says it (`starting`, `draining`, `store unreachable: <where>`).
    pub async fn check(&self) -> Result<(), String> {
        match self.phase.load(Ordering::Acquire) {
            STARTING => return Err("starting".into()),
            DRAINING => return Err("draining".into()),
            _ => {}
        }
        if self.check.within(FRESH).is_some() {
            return Ok(());
        }
        let store = self.store.clone();
        self.check.start(async move {
            match store.ping().await {
                Ok(()) => Some(()),
                Err(e) => {
                    tracing::warn!(error = %e, "health: the key store did not answer");
                    None
                }
            }
        });
        self.check.wait(PROBE_TIMEOUT).await;
        match self.check.within(FRESH) {
            Some(()) => Ok(()),
            None => Err(format!("store unreachable: {}", self.place)),
        }
    }

    /// Keys and audit entries stored: counted at most once per [`STORED_FRESH`]; `None`
    /// when the store has not answered a count for [`STORED_STALE`].
    pub async fn stored(&self) -> Option<Stored> {
        if let Some(s) = self.stored.within(STORED_FRESH) {
            return Some(s);
        }
        let store = self.store.clone();
        self.stored.start(async move {
            store
                .stored()
                .await
                .ok()
                .map(|(keys, audit_entries)| Stored {
                    keys,
                    audit_entries,
                })
        });
        self.stored.wait(PROBE_TIMEOUT).await;
        self.stored.within(STORED_STALE)
    }

    /// The store's commit counters.
    pub fn store(&self) -> &StoreService {
        &self.store
    }
}
