//! The store on threads of its own: one writer that commits mutations in batches (group
//! commit), and a few readers that look keys up and open their sealed material. No store call,
//! and so no fsync, ever runs on a thread that serves sessions.
//!
//! ```text
//!  key manager --write(Mutation)--> [bounded queue] --> writer thread: take one, then every
//!       |                                               queued one (up to MAX_BATCH); one
//!       |                                               transaction, one fsync; answer each
//!       +------read(closure)------> [bounded queue] --> reader threads (own connections):
//!                                                       find / list, open, build the key
//! ```
//! Many clients creating keys at once therefore share fsyncs, and each still gets its answer
//! only once its key is durable. Both queues are bounded by semaphores: a full queue makes
//! the *requesting* task wait, never a session thread, and never grows memory.
//!
//! Audit entries that need no answer (denied requests, and with `[audit] level = "all"` every
//! use of a key) wait in a bounded list and join the next commit, or are committed on their
//! own after at most [`AUDIT_FLUSH`]: a flood of bad requests costs one fsync per flush, not
//! one each.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::keys::seal::MasterKey;
use crate::keys::store::{Applied, AuditEvent, Change, Mutation, Store, StoreError};
use crate::metrics::histogram::Histogram;

/// Most mutations committed in one transaction.
const MAX_BATCH: usize = 512;
/// Queue depth of each queue.
const QUEUE: usize = 4096;
/// Longest a queued audit entry waits for a commit.
pub const AUDIT_FLUSH: Duration = Duration::from_millis(200);
/// Queued audit entries that make the writer commit them at once.
const AUDIT_QUEUE: usize = 4096;
/// Queued audit entries at most (a stalled disk must not grow memory without bound): beyond
/// it entries are counted, and the count is itself committed as an `audit-overflow` entry.
const AUDIT_CAP: usize = 16 * AUDIT_QUEUE;

/// Audit entries waiting for a commit.
#[derive(Default)]
struct Queued {
    events: Vec<AuditEvent>,
    dropped: u64,
    flush_requested: bool,
}

impl Queued {
    /// Everything waiting, with an entry that counts what the cap dropped.
    fn take(&mut self) -> Vec<AuditEvent> {
        let mut out = std::mem::take(&mut self.events);
        if self.dropped > 0 {
            out.push(AuditEvent {
                time_ms: crate::keys::audit::now_ms(),
                client: "".into(),
                session: 0,
                transport: "",
                op: "audit-overflow",
                key: String::new(),
                detail: format!("{} entries dropped: the audit queue was full", self.dropped),
                status: "dropped",
            });
            self.dropped = 0;
        }
        self.flush_requested = false;
        out
    }
}

type Written = Result<Applied, StoreError>;
/// A store handle and the master key, for the thread that follows other nodes' changes.
pub type FollowerHandle = (Store, Arc<MasterKey>);
type ReadWork = Box<dyn FnOnce(&mut Store, &MasterKey) + Send>;

struct WriteJob {
    change: Change,
    reply: oneshot::Sender<Written>,
    _slot: OwnedSemaphorePermit,
}

/// What the writer takes: a change to commit, or a health check to answer.
// Nearly every job is a write: the queue's slots are as large as before the checks joined it.
#[allow(clippy::large_enum_variant)]
enum Job {
    Write(WriteJob),
    // Answered once the writer reaches it (after the commit it was in) and a read succeeds.
    Ping(
        oneshot::Sender<Result<(), StoreError>>,
        OwnedSemaphorePermit,
    ),
}

struct ReadJob {
    work: ReadWork,
    _slot: OwnedSemaphorePermit,
}

/// Counters, for logs, metrics and benchmarks.
#[derive(Debug)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Mutations applied (each in some commit).
    pub mutations: AtomicU64,
    /// Audit entries appended.
    pub audited: AtomicU64,
    /// The change-log position of the last commit that changed a grant (a store several nodes
    /// share; 0 before).
    pub noted: AtomicU64,
    /// How long each commit took (its transaction and fsync), failed ones too.
    pub commit_seconds: Histogram,
    /// Changes per commit that carried any (audit entries of denied requests, and the
    /// writer's own flushes of them, aside).
    pub batch_size: Histogram,
}

impl Default for StoreStats {
    fn default() -> StoreStats {
        StoreStats {
            commits: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            noted: AtomicU64::new(0),
            commit_seconds: Histogram::seconds(),
            batch_size: Histogram::new(crate::metrics::histogram::BATCH, 1.0),
        }
    }
}

/// Handle to the store threads; cheap to clone. The threads end when the last handle is
/// dropped and their queues are drained.
#[derive(Clone)]
pub struct StoreService {
    write_tx: Sender<Job>,
    write_slots: Arc<Semaphore>,
    read_tx: Sender<ReadJob>,
    read_slots: Arc<Semaphore>,
    queued: Arc<Mutex<Queued>>,
    // A handle for the thread that follows other nodes' changes (a shared store only).
    follower: Arc<Mutex<Option<FollowerHandle>>>,
    shared: bool,
    /// Counters.
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for StoreService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreService").finish_non_exhaustive()
    }
}

fn unavailable() -> StoreError {
    StoreError::Backend("the key store thread stopped".into())
}

impl StoreService {
    /// Starts the writer on `store` and `readers` reader threads on handles of their own.
    pub fn start(
        mut store: Store,
        master: MasterKey,
        readers: usize,
    ) -> Result<StoreService, StoreError> {
        let master = Arc::new(master);
        let follower = match store.shared() {
            true => Some((store.reader()?, master.clone())),
            false => None,
        };
        let spawn_err =
            |e: std::io::Error| StoreError::Open(format!("cannot start store thread: {e}"));
        let (read_tx, read_rx) = crossbeam_channel::bounded::<ReadJob>(QUEUE);
        for i in 0..readers.max(1) {
            let (rx, m, mut handle) = (read_rx.clone(), master.clone(), store.reader()?);
            std::thread::Builder::new()
                .name(format!("hsm-store-r{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        (job.work)(&mut handle, &m);
                        // Unsealed key bytes may have passed through this stack.
                        crate::crypto::pool::scrub_stack();
                    }
                })
                .map_err(spawn_err)?;
        }
        let (write_tx, write_rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let stats = Arc::new(StoreStats::default());
        let s = stats.clone();
        let queued = Arc::new(Mutex::new(Queued::default()));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("hsm-store-w".into())
            .spawn(move || write_loop(store, &master, &write_rx, &q, &s))
            .map_err(spawn_err)?;
        Ok(StoreService {
            write_tx,
            write_slots: Arc::new(Semaphore::new(QUEUE)),
            read_tx,
            read_slots: Arc::new(Semaphore::new(QUEUE)),
            queued,
            shared: follower.is_some(),
            follower: Arc::new(Mutex::new(follower)),
            stats,
        })
    }

    /// The store handle and master key for the thread that follows other nodes' changes
    /// (`keys/follow.rs`): `None` when nobody else writes the store, or once taken.
    pub fn take_follower(&self) -> Option<FollowerHandle> {
        self.follower.lock().take()
    }

    /// Whether other processes write the store too (its changes must be followed).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Queues an audit entry for the next commit (never waits, never fails the request).
    /// When the queue is full the writer is asked to commit it at once.
    pub fn audit_later(&self, e: AuditEvent) {
        let flush = {
            let mut q = self.queued.lock();
            if q.events.len() >= AUDIT_CAP {
                q.dropped += 1;
                return;
            }
            q.events.push(e);
            let flush = q.events.len() >= AUDIT_QUEUE && !q.flush_requested;
            q.flush_requested |= flush;
            flush
        };
        if flush && let Ok(slot) = self.write_slots.clone().try_acquire_owned() {
            let (reply, _) = oneshot::channel();
            let _ = self.write_tx.try_send(Job::Write(WriteJob {
                change: Change {
                    mutation: Mutation::Record,
                    audit: None,
                },
                reply,
                _slot: slot,
            }));
        }
    }

    /// Applies one change with its audit entry; answers once both are durable (or refused).
    pub async fn write(&self, change: Change) -> Written {
        self.to_writer(|reply, slot| {
            Job::Write(WriteJob {
                change,
                reply,
                _slot: slot,
            })
        })
        .await
    }

    /// Whether the store answers: the writer reaches this (after whatever it is committing)
    /// and reads from the database. Changes nothing.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.to_writer(Job::Ping).await
    }

    /// Queues the job `make` builds around its reply and queue slot; its answer.
    async fn to_writer<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>, OwnedSemaphorePermit) -> Job,
    ) -> Result<T, StoreError> {
        let slot = self
            .write_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable())?;
        let (reply, rx) = oneshot::channel();
        // Permits equal channel slots, so with a permit in hand try_send cannot be Full.
        self.write_tx
            .try_send(make(reply, slot))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Keys stored, and audit entries in the chain (a reader's query: the whole database's,
    /// every node's on a shared store).
    pub async fn stored(&self) -> Result<(u64, u64), StoreError> {
        self.read(|store, _| store.stored()).await
    }

    /// Runs `f` on a reader thread with its store handle and the master key.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, &MasterKey) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable())?;
        let (tx, rx) = oneshot::channel();
        let work: ReadWork = Box::new(move |store, master| {
            let out = catch_unwind(AssertUnwindSafe(|| f(store, master)))
                .unwrap_or_else(|_| Err(StoreError::Backend("store read panicked".into())));
            let _ = tx.send(out);
        });
        self.read_tx
            .try_send(ReadJob { work, _slot: slot })
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }
}

impl StoreService {
    /// At a clean stop, once no request is in flight: commits the audit entries still
    /// queued, then writes everything back into the main database file (SQLite's WAL), so a
    /// copy of `keys.db` alone holds every acknowledged change.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.write(Change {
            mutation: Mutation::Record,
            audit: None,
        })
        .await
        .map(|_| ())?;
        self.read(|store, _| store.checkpoint()).await
    }
}

fn write_loop(
    mut store: Store,
    master: &MasterKey,
    rx: &Receiver<Job>,
    queued: &Mutex<Queued>,
    stats: &StoreStats,
) {
    loop {
        let mut jobs = match rx.recv_timeout(AUDIT_FLUSH) {
            Ok(first) => vec![first],
            Err(RecvTimeoutError::Timeout) if queued.lock().events.is_empty() => continue,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => {
                // The last handle is gone: commit what is still queued, then stop.
                let denials = queued.lock().take();
                if !denials.is_empty() {
                    let n = denials.len() as u64;
                    if store.commit(master, Vec::new(), denials).is_ok() {
                        stats.audited.fetch_add(n, Ordering::Relaxed);
                    }
                }
                return;
            }
        };
        // Everything that queued while the previous commit was syncing joins this one.
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut pings = Vec::new();
        let (changes, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .filter_map(|j| match j {
                Job::Write(j) => Some((j.change, (j.reply, j._slot))),
                Job::Ping(reply, slot) => {
                    pings.push((reply, slot));
                    None
                }
            })
            .unzip();
        let n = changes.len();
        // What the batch-size histogram counts: changes a caller asked for, not the writer's
        // own requests to commit queued audit entries (an empty `Record`).
        let asked = changes
            .iter()
            .filter(|c| !matches!(c.mutation, Mutation::Record) || c.audit.is_some())
            .count();
        let audited = changes.iter().filter(|c| c.audit.is_some()).count();
        let denials = queued.lock().take();
        let d = denials.len();
        if n == 0 && d == 0 {
            answer_pings(&mut store, pings);
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| store.commit(master, changes, denials)))
            .unwrap_or_else(|_| Err(StoreError::Backend("store commit panicked".into())));
        // Failed commits are timed too: a disk that fails slowly shows.
        stats.commit_seconds.observe_duration(started.elapsed());
        // Sealing passed key bytes through this stack.
        crate::crypto::pool::scrub_stack();
        match outcome {
            Ok(results) => {
                if asked > 0 {
                    stats.batch_size.observe(asked as u64);
                }
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .noted
                    .store(u64::try_from(store.noted()).unwrap_or(0), Ordering::Release);
                stats.mutations.fetch_add(n as u64, Ordering::Relaxed);
                stats
                    .audited
                    .fetch_add((audited + d) as u64, Ordering::Relaxed);
                for ((reply, _slot), r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, mutations = n, audit_entries = d, "key store commit failed; nothing in this batch was changed (its queued audit entries are lost)");
                for (reply, _slot) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        answer_pings(&mut store, pings);
    }
}

/// Answers health checks that reached the writer: whether a read of the database succeeds.
fn answer_pings(
    store: &mut Store,
    pings: Vec<(
        oneshot::Sender<Result<(), StoreError>>,
        OwnedSemaphorePermit,
    )>,
) {
    if pings.is_empty() {
        return;
    }
    let answer = catch_unwind(AssertUnwindSafe(|| store.ping()))
        .unwrap_or_else(|_| Err(StoreError::Backend("store check panicked".into())));
    for (reply, _slot) in pings {
        let _ = reply.send(answer.clone());
    }
}

#[cfg(test)]
mod tests;
