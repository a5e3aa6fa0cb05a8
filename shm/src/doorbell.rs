//! Futex doorbells in the shared mapping, and the spin budget.
//!
//! A waiting side spins briefly, either in its own task (a session arbiter: see
//! [`crate::stream::Waiting`]) or here in its watcher thread (only one watcher per process at a
//! time may spin, so all sessions together never burn more than about one core), then
//! announces that it sleeps and waits on its bell's futex with a timeout. The other side, after publishing data or space,
//! rings the bell only when the sleeper flag is set: a busy pair of processes makes no system
//! calls at all. Shared (not process-private) futexes, since the word lives in a memfd mapping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use crate::segment::Bell;

/// How long a waiter spins before sleeping.
pub const SPIN: Duration = Duration::from_micros(50);

// One spinner per process.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// Wakes the peer if it is asleep on `bell`. Call it after publishing (a ring position).
pub fn ring(bell: &Bell) {
    // The publication before this call may be a plain release store, which x86 lets sit in
    // the store buffer past the load below (store-load reordering): the peer, announcing its
    // sleep and then re-checking, would miss it while we miss its flag, and it would sleep
    // out its whole timeout. The fence orders the publication before the look at `sleeping`,
    // pairing with the peer's SeqCst store of it.
    std::sync::atomic::fence(Ordering::SeqCst);
    if bell.sleeping.load(Ordering::SeqCst) != 0 {
        bell.ring.fetch_add(1, Ordering::SeqCst);
        // A failed wake (EFAULT cannot happen for a live mapping) only delays the peer until
        // its wait times out.
        let _ = futex::wake(&bell.ring, futex::Flags::empty(), 1);
    }
}

/// Waits until `ready()` holds or `timeout` passes: when `spin` is set, spins first (if no
/// other thread of this process is spinning), then sleeps on `bell`. Returns whether `ready()`
/// held.
pub fn wait(bell: &Bell, timeout: Duration, spin: bool, ready: impl Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    if spin
        && SPINNING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        let start = Instant::now();
        let mut hit = false;
        // Yielding between checks keeps the spin polite: on a busy machine the threads doing
        // real work (crypto workers, the peer) get the core, on an idle one we stay hot.
        while start.elapsed() < SPIN {
            if ready() {
                hit = true;
                break;
            }
            std::thread::yield_now();
        }
        SPINNING.store(false, Ordering::Release);
        if hit {
            return true;
        }
    }
    // Announce the sleep, then re-check: the peer publishes before it looks at `sleeping`
    // (both SeqCst), so either it sees the flag and rings, or we see its data here.
    bell.sleeping.store(1, Ordering::SeqCst);
    let seen = bell.ring.load(Ordering::SeqCst);
    let ok = ready() || {
        let ts = rustix::thread::futex::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // EAGAIN (the bell moved), EINTR and ETIMEDOUT all just mean "look again".
        let _ = futex::wait(&bell.ring, futex::Flags::empty(), seen, Some(&ts));
        ready()
    };
    bell.sleeping.store(0, Ordering::SeqCst);
    ok
}

/// Wakes this side's own watcher (after registering something it should look at).
pub fn kick(own: &Bell) {
    ring(own)
}
