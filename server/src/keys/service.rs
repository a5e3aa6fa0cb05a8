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

struct ReadJob {
    work: ReadWork,
    _slot: OwnedSemaphorePermit,
}

/// Counters, for logs and benchmarks.
#[derive(Debug, Default)]
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
}

/// Handle to the store threads; cheap to clone. The threads end when the last handle is
/// dropped and their queues are drained.
#[derive(Clone)]
pub struct StoreService {
    write_tx: Sender<WriteJob>,
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
        let (write_tx, write_rx) = crossbeam_channel::bounded::<WriteJob>(QUEUE);
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
            let _ = self.write_tx.try_send(WriteJob {
                change: Change {
                    mutation: Mutation::Record,
                    audit: None,
                },
                reply,
                _slot: slot,
            });
        }
    }

    /// Applies one change with its audit entry; answers once both are durable (or refused).
    pub async fn write(&self, change: Change) -> Written {
        let slot = self
            .write_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable())?;
        let (reply, rx) = oneshot::channel();
        // Permits equal channel slots, so with a permit in hand try_send cannot be Full.
        self.write_tx
            .try_send(WriteJob {
                change,
                reply,
                _slot: slot,
            })
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
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
    rx: &Receiver<WriteJob>,
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
        let (changes, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.change, (j.reply, j._slot)))
            .unzip();
        let n = changes.len();
        let audited = changes.iter().filter(|c| c.audit.is_some()).count();
        let denials = queued.lock().take();
        let d = denials.len();
        let outcome = catch_unwind(AssertUnwindSafe(|| store.commit(master, changes, denials)))
            .unwrap_or_else(|_| Err(StoreError::Backend("store commit panicked".into())));
        // Sealing passed key bytes through this stack.
        crate::crypto::pool::scrub_stack();
        match outcome {
            Ok(results) => {
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
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::mpsc;

    use ferrohsm_proto::KeyRef;

    use super::*;
    use crate::keys::audit::AuditRow;
    use crate::keys::store::backend::{
        Backend, ChangeLog, Counted, CounterRow, GrantRow, KeyFilter, KeyRow, Tx, VersionRow,
    };

    /// An audit entry as written: operation, detail, status.
    type Entry = (String, String, String);
    /// What one commit held: how many changes, and the audit entries written with them.
    type Committed = (usize, Vec<Entry>);

    /// A backend that keeps the audit entries of a transaction in memory, reports them at
    /// commit, then holds the writer inside the commit until `hold` (the sender of `held`) is
    /// dropped: the test fills the audit queue while the writer is busy.
    struct HeldBackend {
        committed: mpsc::Sender<Committed>,
        held: Receiver<()>,
        meta: HashMap<String, Vec<u8>>,
        changes: usize,
        entries: Vec<AuditRow>,
        last: Option<(i64, Vec<u8>)>,
    }

    impl Backend for HeldBackend {
        fn describe(&self) -> String {
            "held".into()
        }
        fn reader(&self) -> Result<Box<dyn Backend>, StoreError> {
            Ok(Box::new(HeldBackend {
                committed: self.committed.clone(),
                held: self.held.clone(),
                meta: HashMap::new(),
                changes: 0,
                entries: Vec::new(),
                last: None,
            }))
        }
        fn change_log(&mut self) -> Option<&mut dyn ChangeLog> {
            None
        }
        fn begin(&mut self, _: Tx) -> Result<(), StoreError> {
            self.changes = 0;
            self.entries.clear();
            Ok(())
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            if self.changes == 0 && self.entries.is_empty() {
                // Making the audit key, before the service starts.
                return Ok(());
            }
            let entries = self
                .entries
                .drain(..)
                .map(|r| (r.op.clone(), r.detail.clone(), r.status.clone()))
                .collect();
            let _ = self.committed.send((self.changes, entries));
            // Returns at once when the sender is gone (the gate is open).
            let _ = self.held.recv();
            Ok(())
        }
        fn rollback(&mut self) {}
        fn savepoint(&mut self) -> Result<(), StoreError> {
            self.changes += 1;
            Ok(())
        }
        fn release_savepoint(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.meta.get(name).cloned())
        }
        fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
            self.meta.insert(name.into(), value.to_vec());
            Ok(())
        }
        fn delete_meta(&mut self, name: &str) -> Result<(), StoreError> {
            self.meta.remove(name);
            Ok(())
        }
        fn audit_last(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
            Ok(self.last.clone())
        }
        fn audit_append(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
            for row in rows {
                self.last = Some((row.seq as i64, row.hash.to_vec()));
                self.entries.push(row.clone());
            }
            Ok(())
        }
        fn key(&mut self, _: &str, _: &KeyRef) -> Result<Option<KeyRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn keys(
            &mut self,
            _: &str,
            _: &KeyFilter,
            _: u32,
            _: usize,
        ) -> Result<Vec<KeyRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn label_in_use(&mut self, _: &str, _: &str) -> Result<bool, StoreError> {
            unreachable!("the writer only commits")
        }
        fn count_by_owner(&mut self, _: Counted) -> Result<Vec<(String, i64)>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn count_owned(&mut self, _: Counted, _: &str) -> Result<i64, StoreError> {
            unreachable!("the writer only commits")
        }
        fn claim_ids(&mut self, _: &[(&str, &str)]) -> Result<Vec<Option<i64>>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn insert_keys(&mut self, _: &[KeyRow]) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn insert_version(&mut self, _: &str, _: i64, _: &VersionRow) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn set_sealed(&mut self, _: &str, _: i64, _: i64, _: &[u8]) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn retire_below(&mut self, _: &str, _: i64, _: i64) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn set_version(&mut self, _: &str, _: i64, _: i64) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn delete_key(&mut self, _: &str, _: i64) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn grants(&mut self) -> Result<Vec<GrantRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn grant(&mut self, _: &str, _: i64, _: &str) -> Result<Option<GrantRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn put_grant(&mut self, _: &GrantRow) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn delete_grant(&mut self, _: &str, _: i64, _: &str) -> Result<bool, StoreError> {
            unreachable!("the writer only commits")
        }
        fn counter(&mut self, _: &str, _: &str) -> Result<Option<CounterRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn put_counter(&mut self, _: &CounterRow) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn audit_rows(&mut self, _: u64) -> Result<Vec<AuditRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn owners(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn put_owner(&mut self, _: &str, _: i64) -> Result<(), StoreError> {
            unreachable!("the writer only commits")
        }
        fn counters(&mut self) -> Result<Vec<CounterRow>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn meta_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            unreachable!("the writer only commits")
        }
        fn is_empty(&mut self) -> Result<bool, StoreError> {
            unreachable!("the writer only commits")
        }
    }

    fn denied(i: usize) -> AuditEvent {
        AuditEvent {
            time_ms: 1,
            client: "mallory".into(),
            session: 1,
            transport: "tcp",
            op: "sign",
            key: "alice:k".into(),
            detail: format!("entry {i}"),
            status: "key_not_found",
        }
    }

    const WAIT: Duration = Duration::from_secs(30);

    #[test]
    fn a_full_audit_queue_counts_what_it_drops_and_commits_the_count() {
        let (committed_tx, committed) = mpsc::channel();
        let (hold, held) = crossbeam_channel::bounded::<()>(0);
        let store = Store::new(Box::new(HeldBackend {
            committed: committed_tx,
            held,
            meta: HashMap::new(),
            changes: 0,
            entries: Vec::new(),
            last: None,
        }));
        let mut store = store;
        let master = MasterKey::generate().unwrap();
        store.ensure_audit_key(&master).unwrap();
        let s = StoreService::start(store, master, 1).unwrap();
        let entry = |i: usize| -> Entry {
            let e = denied(i);
            (e.op.to_string(), e.detail, e.status.to_string())
        };
        // One entry, committed on its own after at most AUDIT_FLUSH; the writer then sits in
        // that commit, so everything queued next waits.
        s.audit_later(denied(0));
        let (n, first) = committed
            .recv_timeout(WAIT)
            .expect("the first entry's commit");
        assert_eq!(n, 0);
        assert_eq!(first, vec![entry(0)]);
        // The queue's bound, and three more, while the writer is held.
        for i in 1..=AUDIT_CAP + 3 {
            s.audit_later(denied(i));
        }
        assert!(
            committed.try_recv().is_err(),
            "nothing commits while the writer is held"
        );
        drop(hold);
        // The queue reaching AUDIT_QUEUE asked for a commit at once (one empty `Record`
        // change); it carries every entry the bound kept, then the count of the rest.
        let (n, second) = committed.recv_timeout(WAIT).expect("the queue's commit");
        assert_eq!(n, 1, "one flush request for the full queue");
        assert_eq!(second.len(), AUDIT_CAP + 1);
        let (overflow, kept) = second.split_last().unwrap();
        assert_eq!(kept.first(), Some(&entry(1)));
        assert_eq!(
            kept.last(),
            Some(&entry(AUDIT_CAP)),
            "the newest three went"
        );
        assert!(kept.iter().all(|e| e.0 == "sign"));
        assert_eq!(
            overflow,
            &(
                "audit-overflow".to_string(),
                "3 entries dropped: the audit queue was full".to_string(),
                "dropped".to_string()
            )
        );
        // The count starts again from zero: the next entry commits alone.
        s.audit_later(denied(0));
        let (n, third) = committed
            .recv_timeout(WAIT)
            .expect("the next entry's commit");
        assert_eq!((n, third), (0, vec![entry(0)]));
    }
}
