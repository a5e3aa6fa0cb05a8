//! The budget of a side that looks for its peer's next frame before it lets its thread sleep
//! (a client waiting for an answer, a session waiting for the next request): looks for up to a
//! window, and every few looks gives the core away.
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine, more than a whole
//! round trip on loopback; a side that looks again instead of sleeping does not pay it when the
//! peer answers within the window. But on a machine with more runnable threads than cores, the
//! thread the looker waits for may be waiting for its core: so every [`YIELD_EVERY`] looks it
//! calls `sched_yield`, which lets a runnable thread of that core go first (and returns at once
//! when there is none). Without it, one busy process beside a spinning client and server on two
//! cores made a ping 8 times slower than with no spinning at all (BENCHMARKS.md).

use std::time::{Duration, Instant};

/// Looks between two gifts of the core.
pub const YIELD_EVERY: u32 = 4;

/// The default window, in microseconds, on either side (`[server] spin_us`, a client profile's
/// `spin_us`): it covers the slowest lone request measured here, a P-256 signature over TLS
/// (BENCHMARKS.md, "One request at a time").
pub const DEFAULT_SPIN_US: u64 = 50;

/// The longest window either side accepts, in microseconds: 10 ms of a core per request.
pub const MAX_SPIN_US: u64 = 10_000;

/// One wait's looks.
#[derive(Debug)]
pub struct Looks {
    until: Option<Instant>,
    looks: u32,
}

impl Looks {
    /// Looks for up to `window` (zero: none at all).
    pub fn new(window: Duration) -> Looks {
        Looks {
            until: (!window.is_zero()).then(|| Instant::now() + window),
            looks: 0,
        }
    }

    /// Whether to look (again): true for the first look and then while the window lasts.
    /// Gives the core away every [`YIELD_EVERY`] looks.
    pub fn again(&mut self) -> bool {
        let Some(until) = self.until else {
            return false;
        };
        self.looks = self.looks.wrapping_add(1);
        if self.looks == 1 {
            return true;
        }
        if Instant::now() >= until {
            self.until = None;
            return false;
        }
        if self.looks.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_means_no_look() {
        assert!(!Looks::new(Duration::ZERO).again());
    }

    #[test]
    fn looks_end_with_the_window_and_stay_ended() {
        let start = Instant::now();
        let mut l = Looks::new(Duration::from_millis(2));
        let mut n = 0u32;
        while l.again() {
            n += 1;
        }
        assert!(n >= 1);
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert!(!l.again());
    }
}
