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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::keys::seal::MasterKey;
use crate::keys::store::{KeyRecord, KeyStore, Mutation, StoreError};

/// Most mutations committed in one transaction.
const MAX_BATCH: usize = 512;
/// Queue depth of each queue.
const QUEUE: usize = 4096;

type Written = Result<KeyRecord, StoreError>;
type ReadWork = Box<dyn FnOnce(&mut dyn KeyStore, &MasterKey) + Send>;

struct WriteJob {
    mutation: Mutation,
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
}

/// Handle to the store threads; cheap to clone. The threads end when the last handle is
/// dropped and their queues are drained.
#[derive(Clone)]
pub struct StoreService {
    write_tx: Sender<WriteJob>,
    write_slots: Arc<Semaphore>,
    read_tx: Sender<ReadJob>,
    read_slots: Arc<Semaphore>,
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
        store: Box<dyn KeyStore>,
        master: MasterKey,
        readers: usize,
    ) -> Result<StoreService, StoreError> {
        let master = Arc::new(master);
        let spawn_err =
            |e: std::io::Error| StoreError::Open(format!("cannot start store thread: {e}"));
        let (read_tx, read_rx) = crossbeam_channel::bounded::<ReadJob>(QUEUE);
        for i in 0..readers.max(1) {
            let (rx, m, mut handle) = (read_rx.clone(), master.clone(), store.reader()?);
            std::thread::Builder::new()
                .name(format!("hsm-store-r{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        (job.work)(handle.as_mut(), &m);
                    }
                })
                .map_err(spawn_err)?;
        }
        let (write_tx, write_rx) = crossbeam_channel::bounded::<WriteJob>(QUEUE);
        let stats = Arc::new(StoreStats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("hsm-store-w".into())
            .spawn(move || write_loop(store, &master, &write_rx, &s))
            .map_err(spawn_err)?;
        Ok(StoreService {
            write_tx,
            write_slots: Arc::new(Semaphore::new(QUEUE)),
            read_tx,
            read_slots: Arc::new(Semaphore::new(QUEUE)),
            stats,
        })
    }

    /// Applies one mutation; answers once it is durable (or refused).
    pub async fn write(&self, mutation: Mutation) -> Written {
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
                mutation,
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
        F: FnOnce(&mut dyn KeyStore, &MasterKey) -> Result<T, StoreError> + Send + 'static,
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

fn write_loop(
    mut store: Box<dyn KeyStore>,
    master: &MasterKey,
    rx: &Receiver<WriteJob>,
    stats: &StoreStats,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // Everything that queued while the previous commit was syncing joins this one.
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (mutations, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.mutation, (j.reply, j._slot)))
            .unzip();
        let n = mutations.len();
        let outcome = catch_unwind(AssertUnwindSafe(|| store.commit(master, mutations)))
            .unwrap_or_else(|_| Err(StoreError::Backend("store commit panicked".into())));
        match outcome {
            Ok(results) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.mutations.fetch_add(n as u64, Ordering::Relaxed);
                for ((reply, _slot), r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, mutations = n, "key store commit failed; nothing in this batch was changed");
                for (reply, _slot) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
