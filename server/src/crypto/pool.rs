//! The crypto worker pool: N OS threads serving one queue per client, fairly. An idle worker
//! spins briefly before it blocks, so back-to-back requests do not pay a thread wake-up each.
//!
//! Fairness is deficit round robin by cost (a job's input bytes plus a fixed charge for the
//! key operation itself): the clients with queued jobs take turns, each turn worth
//! [`QUANTUM`] of cost, so a client flooding the pool with large jobs delays another client's
//! job by at most about one quantum per worker, whatever the length of its own backlog.
//!
//! Bounded: each client may have at most `queue` jobs queued or running (a tokio semaphore per
//! client; a job takes a permit before it is queued and gives it back when it has run). A
//! client at its bound makes only *its own* submitting sessions wait (and so stop reading
//! their sockets); it never grows memory, never blocks an actor thread, and never takes the
//! room of another client.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::OpError;

type Work = Box<dyn FnOnce() + Send>;

struct Job {
    work: Work,
    cost: usize,
    // Released when the job has run, freeing a place in its client's queue.
    _slot: OwnedSemaphorePermit,
}

/// The cost one client's turn is worth, in bytes of input.
pub const QUANTUM: usize = 64 * 1024;

/// What a job costs besides its input: about what one signature costs in hashed bytes.
pub const JOB_COST: usize = 4096;

#[derive(Default)]
struct ClientQueue {
    jobs: VecDeque<Job>,
    deficit: usize,
}

#[derive(Default)]
struct Queues {
    by_client: HashMap<Arc<str>, ClientQueue>,
    // Clients with queued jobs, in turn order; the front one is being served.
    turns: VecDeque<Arc<str>>,
    closed: bool,
    idle: usize,
}

impl Queues {
    /// The next job by deficit round robin.
    fn pop(&mut self) -> Option<Job> {
        loop {
            let client = self.turns.front()?.clone();
            let Some(q) = self.by_client.get_mut(&client) else {
                self.turns.pop_front();
                continue;
            };
            let Some(cost) = q.jobs.front().map(|j| j.cost) else {
                self.by_client.remove(&client);
                self.turns.pop_front();
                continue;
            };
            if cost <= q.deficit {
                q.deficit -= cost;
                let job = q.jobs.pop_front();
                if q.jobs.is_empty() {
                    // A client with nothing queued keeps no credit.
                    self.by_client.remove(&client);
                    self.turns.pop_front();
                }
                return job;
            }
            // Its turn is spent: credit for the next one, and the next client's turn.
            q.deficit += QUANTUM;
            self.turns.rotate_left(1);
        }
    }

    fn push(&mut self, client: &Arc<str>, job: Job) {
        let q = self.by_client.entry(client.clone()).or_default();
        if q.jobs.is_empty() {
            self.turns.push_back(client.clone());
        }
        q.jobs.push_back(job);
    }
}

struct PoolState {
    queues: Mutex<Queues>,
    ready: Condvar,
    // Per client: places for jobs queued or running.
    slots: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
    per_client: usize,
}

/// How long an idle worker keeps looking for the next job before it blocks: a blocked
/// worker costs a futex wake-up (tens of microseconds on a small VM) for the next job, more
/// than one signature; a session with one request in flight sends its next one well within
/// this window.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The next job: spins (yielding the core between looks) for [`SPIN`], then blocks. `None`
/// when the pool is closed and drained.
fn next_job(sh: &PoolState) -> Option<Job> {
    let start = std::time::Instant::now();
    while start.elapsed() < SPIN {
        if let Some(mut q) = sh.queues.try_lock() {
            if let Some(job) = q.pop() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
        }
        std::thread::yield_now();
    }
    let mut q = sh.queues.lock();
    loop {
        if let Some(job) = q.pop() {
            return Some(job);
        }
        if q.closed {
            return None;
        }
        q.idle += 1;
        sh.ready.wait(&mut q);
        q.idle -= 1;
    }
}

/// Wipes the stack a job may have left key bytes on (key schedules, expanded secrets, block
/// buffers), by writing a zeroed buffer over the 64 KiB below the caller. Measured with
/// `client/tests/secrets.rs` (which scans hsmd's memory after a delete): ring's AES-GCM left
/// copies of the key about 23 KiB deep on a worker's stack. A plain zeroed array made opaque
/// with `black_box` is a memset (a few microseconds); per-byte volatile writes would cost tens.
#[inline(never)]
pub fn scrub_stack() {
    scrub::<8192>();
}

/// Jobs a busy worker runs between two stack scrubs (it always scrubs before it idles).
const SCRUB_EVERY: u32 = 64;

thread_local! {
    // Key work ran inline on this session thread since its stack was last wiped.
    static DIRTY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this session thread's stack as holding key bytes; [`scrub_if_dirty`] wipes it.
pub fn mark_dirty() {
    DIRTY.with(|d| d.set(true));
}

/// Wipes this session thread's stack if key work ran on it since the last wipe. Called by a
/// task each session arbiter runs every [`SCRUB_PERIOD`], from the top of its stack.
pub fn scrub_if_dirty() {
    if DIRTY.with(|d| d.replace(false)) {
        scrub_session_stack();
    }
}

/// How often a session thread wipes its stack after inline key work.
pub const SCRUB_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// [`scrub_stack`] for the session threads, whose request futures run deeper: 256 KiB.
#[inline(never)]
pub fn scrub_session_stack() {
    scrub::<32768>();
}

#[inline(never)]
fn scrub<const WORDS: usize>() {
    let mut buf = [0u64; WORDS];
    std::hint::black_box(&mut buf);
}

/// Handle to the pool; cheap to clone. Workers exit when the last handle is dropped and the
/// queues are drained.
#[derive(Clone)]
pub struct CryptoPool {
    shared: Arc<PoolState>,
    _close: Arc<StopOnDrop>,
}

/// Closes the queues when the last pool handle goes.
struct StopOnDrop(Arc<PoolState>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.queues.lock().closed = true;
        self.0.ready.notify_all();
    }
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.shared.queues.lock();
        f.debug_struct("CryptoPool")
            .field("clients_queued", &q.turns.len())
            .finish()
    }
}

impl CryptoPool {
    /// Starts `workers` threads; each client may have `queue` jobs queued or running; workers
    /// run `nice` steps nicer than the thread that starts them.
    pub fn start(workers: usize, queue: usize, nice: i32) -> std::io::Result<CryptoPool> {
        let shared = Arc::new(PoolState {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            slots: Mutex::new(HashMap::new()),
            per_client: queue.max(1),
        });
        for i in 0..workers.max(1) {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name(format!("hsm-crypto-{i}"))
                .spawn(move || {
                    // Optionally the batch work: a session arbiter woken with a request or a
                    // response to move then takes the core at once instead of waiting out a
                    // worker's time slice. Failure only costs that preference.
                    if nice > 0 {
                        let _ = rustix::process::nice(nice);
                    }
                    // The stack is wiped before the worker idles, and at least every
                    // SCRUB_EVERY jobs under load (a 64 KiB memset per job would cost a
                    // tenth of a small signature).
                    let mut since_scrub = 0;
                    loop {
                        let ready = sh.queues.try_lock().and_then(|mut q| q.pop());
                        let job = match ready {
                            Some(job) => job,
                            None => {
                                if since_scrub > 0 {
                                    scrub_stack();
                                    since_scrub = 0;
                                }
                                match next_job(&sh) {
                                    Some(job) => job,
                                    None => break,
                                }
                            }
                        };
                        (job.work)();
                        since_scrub += 1;
                        if since_scrub >= SCRUB_EVERY {
                            scrub_stack();
                            since_scrub = 0;
                        }
                    }
                })?;
        }
        Ok(CryptoPool {
            _close: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// Jobs queued for a worker now (not yet running), over every client.
    pub fn queued(&self) -> usize {
        let q = self.shared.queues.lock();
        q.by_client.values().map(|c| c.jobs.len()).sum()
    }

    fn slots_of(&self, client: &Arc<str>) -> Arc<Semaphore> {
        self.shared
            .slots
            .lock()
            .entry(client.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.shared.per_client)))
            .clone()
    }

    /// Runs `f` for `client` on a worker and returns its result; `input` is the bytes it
    /// works on (its cost, with [`JOB_COST`], in the fair schedule). Waits (asynchronously) for
    /// a free place in the client's queue.
    pub async fn run<T, F>(&self, client: &Arc<str>, input: usize, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, OpError> + Send + 'static,
    {
        let slot = self
            .slots_of(client)
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
        let job = Job {
            work,
            cost: input.saturating_add(JOB_COST),
            _slot: slot,
        };
        {
            let mut q = self.shared.queues.lock();
            q.push(client, job);
            if q.idle > 0 {
                self.shared.ready.notify_one();
            }
        }
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
        let c: Arc<str> = Arc::from("alice");
        rt.block_on(async {
            let v = pool.run(&c, 0, || Ok(41 + 1)).await.unwrap();
            assert_eq!(v, 42);
            let err = pool
                .run(&c, 0, || -> Result<(), OpError> { panic!("boom") })
                .await
                .unwrap_err();
            assert_eq!(err.status, ferrohsm_proto::Status::Internal);
            // Many more jobs than slots: all complete, none lost.
            let jobs: Vec<_> = (0..100u32)
                .map(|i| pool.run(&c, 0, move || Ok(i * 2)))
                .collect();
            let mut sum = 0;
            for j in jobs {
                sum += j.await.unwrap();
            }
            assert_eq!(sum, (0..100u32).map(|i| i * 2).sum::<u32>());
        });
    }

    #[test]
    fn a_flooding_client_delays_another_by_about_a_quantum() {
        // No workers running: the schedule alone, popped by hand.
        let sem = Arc::new(Semaphore::new(1000));
        let job = |cost| Job {
            work: Box::new(|| {}),
            cost,
            _slot: sem.clone().try_acquire_owned().unwrap(),
        };
        let mut q = Queues::default();
        let (flood, light): (Arc<str>, Arc<str>) = (Arc::from("flood"), Arc::from("light"));
        for _ in 0..500 {
            q.push(&flood, job(1 << 20));
        }
        q.push(&light, job(100));
        // The light client's job comes out among the first two, not after 500 large ones.
        let first: Vec<usize> = (0..2).map(|_| q.pop().unwrap().cost).collect();
        assert!(first.contains(&100), "{first:?}");
        // Everything is served, nothing lost.
        let mut n = 0;
        while q.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, 499);
        assert!(q.turns.is_empty() && q.by_client.is_empty());
    }
}
