//! The crypto worker pool: N OS threads fed by a bounded queue. An idle worker spins briefly
//! before it blocks, so back-to-back requests do not pay a thread wake-up each.
//!
//! actix's `SyncArbiter` has an unbounded queue, so the pool is its own: a tokio semaphore holds
//! one permit per queue slot, a job takes a permit before it is queued and gives it back when it
//! has run. A full pool therefore makes the *submitting session* wait (and so stop reading its
//! socket), never grows memory, and never blocks an actor thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::OpError;

type Work = Box<dyn FnOnce() + Send>;

struct Job {
    work: Work,
    // Released when the job has run, freeing a queue slot.
    _slot: OwnedSemaphorePermit,
}

/// How long an idle worker keeps looking for the next job before it blocks: a blocked
/// worker costs a futex wake-up (tens of microseconds on a small VM) for the next job, more
/// than one signature; a session with one request in flight sends its next one well within
/// this window.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The next job: spins (yielding the core between looks) for [`SPIN`], then blocks. `None`
/// when every handle is gone and the queue is drained.
fn next_job(rx: &Receiver<Job>) -> Option<Job> {
    let start = std::time::Instant::now();
    while start.elapsed() < SPIN {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.recv().ok()
}

/// Handle to the pool; cheap to clone. Workers exit when the last handle is dropped and the
/// queue is drained.
#[derive(Clone)]
pub struct CryptoPool {
    tx: Sender<Job>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPool")
            .field("free_slots", &self.slots.available_permits())
            .finish()
    }
}

impl CryptoPool {
    /// Starts `workers` threads with room for `queue` jobs queued or running, each `nice`
    /// steps nicer than the thread that starts them.
    pub fn start(workers: usize, queue: usize, nice: i32) -> std::io::Result<CryptoPool> {
        let queue = queue.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue);
        for i in 0..workers.max(1) {
            let rx: Receiver<Job> = rx.clone();
            std::thread::Builder::new()
                .name(format!("hsm-crypto-{i}"))
                .spawn(move || {
                    // Optionally the batch work: a session arbiter woken with a request or a
                    // response to move then takes the core at once instead of waiting out a
                    // worker's time slice. Failure only costs that preference.
                    if nice > 0 {
                        let _ = rustix::process::nice(nice);
                    }
                    while let Some(job) = next_job(&rx) {
                        (job.work)();
                    }
                })?;
        }
        Ok(CryptoPool {
            tx,
            slots: Arc::new(Semaphore::new(queue)),
        })
    }

    /// Runs `f` on a worker and returns its result. Waits (asynchronously) for a free slot.
    pub async fn run<T, F>(&self, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, OpError> + Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OpError::internal("crypto pool closed"))?;
        let (done_tx, done_rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            // A panic in a crypto library must not kill the worker or leak the slot.
            let out = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(OpError::internal("crypto operation panicked")));
            let _ = done_tx.send(out);
        });
        // The semaphore has exactly as many permits as the channel has slots, so with a permit
        // in hand the channel always has room: try_send cannot report Full.
        self.tx
            .try_send(Job { work, _slot: slot })
            .map_err(|_| OpError::internal("crypto pool unavailable"))?;
        done_rx
            .await
            .map_err(|_| OpError::internal("crypto worker stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_and_survives_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = CryptoPool::start(2, 4, 0).unwrap();
        rt.block_on(async {
            let v = pool.run(|| Ok(41 + 1)).await.unwrap();
            assert_eq!(v, 42);
            let err = pool
                .run(|| -> Result<(), OpError> { panic!("boom") })
                .await
                .unwrap_err();
            assert_eq!(err.status, ferrohsm_proto::Status::Internal);
            // Many more jobs than slots: all complete, none lost.
            let jobs: Vec<_> = (0..100u32).map(|i| pool.run(move || Ok(i * 2))).collect();
            let mut sum = 0;
            for j in jobs {
                sum += j.await.unwrap();
            }
            assert_eq!(sum, (0..100u32).map(|i| i * 2).sum::<u32>());
        });
    }
}
