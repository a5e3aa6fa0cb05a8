//! Futex doorbells in the shared mapping, and the spin budget.
//!
//! A waiting side spins briefly in its own task (see `stream.rs`: a session arbiter spins at
//! most one thread, so all sessions together never burn more cores than there are arbiters),
//! then announces that it sleeps and waits on its bell's futex with a timeout. The other side, after publishing data or space,
//! rings the bell only when the sleeper flag is set: a busy pair of processes makes no system
//! calls at all. Shared (not process-private) futexes, since the word lives in a memfd mapping.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::thread::futex;

use crate::segment::Bell;

/// How long a waiter spins before sleeping.
pub const SPIN: Duration = Duration::from_micros(50);

/// Wakes the peer if it is asleep on `bell`.
pub fn ring(bell: &Bell) {
    if bell.sleeping.load(Ordering::SeqCst) != 0 {
        bell.ring.fetch_add(1, Ordering::SeqCst);
        // A failed wake (EFAULT cannot happen for a live mapping) only delays the peer until
        // its wait times out.
        let _ = futex::wake(&bell.ring, futex::Flags::empty(), 1);
    }
}

/// Waits until `ready()` holds or `timeout` passes, asleep on `bell` (the spinning happens
/// before, in the waiting task: see `stream.rs`). Returns whether `ready()` held.
pub fn wait(bell: &Bell, timeout: Duration, ready: impl Fn() -> bool) -> bool {
    if ready() {
        return true;
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
