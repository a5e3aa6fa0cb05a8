//! What a run's threads share: the counters, the problems found, the labels each identity
//! made (for the isolation probes), the latency statistics, and how to restart the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Restarts the server under test; returns once it listens again.
#[derive(Clone)]
pub struct Restarter(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Restarter(..)")
    }
}

/// Latency histograms and error counts per (transport, op), and a per-second timeline per
/// transport.
#[derive(Debug, Default)]
pub struct Stats {
    /// (transport, op) -> latencies in µs.
    pub ops: BTreeMap<(String, String), Histogram<u64>>,
    /// (transport, op) -> failed operations.
    pub errors: BTreeMap<(String, String), u64>,
    /// transport -> per-second latency histograms.
    pub timeline: BTreeMap<String, Vec<Histogram<u64>>>,
}

/// The light client's sign latency, alone and under the flood.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// Who flooded and who was timed.
    pub flooder: String,
    /// The light client.
    pub light: String,
    /// Sign latencies (µs) with no flood.
    pub alone: Histogram<u64>,
    /// Sign latencies (µs) while the flood ran.
    pub flooded: Histogram<u64>,
    /// Flooding digests answered.
    pub flood_ops: u64,
}

/// A latency histogram: 1 µs .. 100 s at 3 significant digits.
pub(crate) fn hist() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl Stats {
    pub(super) fn record(&mut self, transport: &str, op: &str, second: usize, us: u64) {
        let h = self
            .ops
            .entry((transport.into(), op.into()))
            .or_insert_with(hist);
        let _ = h.record(us.max(1));
        let tl = self.timeline.entry(transport.into()).or_default();
        while tl.len() <= second {
            tl.push(hist());
        }
        let _ = tl[second].record(us.max(1));
    }

    pub(super) fn error(&mut self, transport: &str, op: &str) {
        *self
            .errors
            .entry((transport.into(), op.into()))
            .or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Stats) {
        for (k, h) in other.ops {
            let _ = self.ops.entry(k).or_insert_with(hist).add(h);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (t, tl) in other.timeline {
            let mine = self.timeline.entry(t).or_default();
            for (i, h) in tl.into_iter().enumerate() {
                while mine.len() <= i {
                    mine.push(hist());
                }
                let _ = mine[i].add(h);
            }
        }
    }
}

pub(crate) struct Shared {
    pub(super) stop: AtomicBool,
    pub(super) ops: AtomicU64,
    // With --ops: operations taken by a client, finished or under way (see `reserve`).
    pub(super) reserved: AtomicU64,
    pub(super) problems_n: AtomicU64,
    pub(super) wrong: AtomicU64,
    pub(super) isolation: AtomicU64,
    pub(super) unexpected: AtomicU64,
    pub(super) faults: AtomicU64,
    pub(super) problems: Mutex<Vec<String>>,
    // identity -> labels it created (probed by the other identities).
    pub(super) labels: Mutex<BTreeMap<String, Vec<String>>>,
    pub(super) start: Instant,
    pub(super) max_ops: Option<u64>,
    // The restart fault: whether it runs, whether a restart is under way, how many finished.
    pub(super) restart_fault: bool,
    pub(super) restarting: AtomicBool,
    pub(super) restarts: AtomicU64,
    pub(super) flood: Mutex<Option<FloodReport>>,
}

impl Shared {
    pub(super) fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.problems_n.fetch_add(1, Ordering::Relaxed);
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() < 20 {
            p.push(what);
        }
    }

    pub(super) fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self
                .max_ops
                .is_some_and(|m| self.ops.load(Ordering::Relaxed) >= m)
    }

    /// Takes one of the `--ops` operations before a client starts it; false while every one
    /// is taken, so several clients never finish more than N between them.
    pub(super) fn reserve(&self) -> bool {
        match self.max_ops {
            None => true,
            Some(m) => self
                .reserved
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < m).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Gives back an operation that did not complete, for another attempt.
    pub(super) fn release(&self) {
        if self.max_ops.is_some() {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
