//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::time::{Duration, Instant};

/// Polls `f` until it gives a value; panics naming `what` if `within` passes first.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `cond` until it holds; panics naming `what` if `within` passes first.
pub fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    eventually(what, within, || cond().then_some(()));
}
