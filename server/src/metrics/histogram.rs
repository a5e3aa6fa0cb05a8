//! A Prometheus histogram over fixed bucket bounds: one relaxed atomic add for the bucket and
//! one for the sum per observation. The count is the buckets' total, so a scrape never sees a
//! count that disagrees with its buckets.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Observations in integer units (nanoseconds, items), rendered divided by `unit`.
#[derive(Debug)]
pub struct Histogram {
    // Upper bounds (inclusive), ascending, in the integer unit.
    bounds: &'static [u64],
    // One per bound, then the overflow bucket (+Inf).
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    // What one rendered unit is (1e9 for nanoseconds shown as seconds, 1 for counts).
    unit: f64,
}

/// Request and commit durations, in nanoseconds: 25 us to 10 s.
pub const SECONDS: &[u64] = &[
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Changes committed together: 1 to the writer's batch bound (512).
pub const BATCH: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

impl Histogram {
    /// An empty histogram over `bounds`; observations are shown divided by `unit`.
    pub fn new(bounds: &'static [u64], unit: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            unit,
        }
    }

    /// A duration histogram, in seconds.
    pub fn seconds() -> Histogram {
        Histogram::new(SECONDS, 1e9)
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (nanoseconds, saturating).
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Adds this histogram's counts into `into` (bucket by bucket, then the sum).
    pub(super) fn add_to(&self, into: &mut Vec<u64>) {
        into.resize(self.buckets.len() + 1, 0);
        for (acc, b) in into.iter_mut().zip(self.buckets.iter()) {
            *acc += b.load(Ordering::Relaxed);
        }
        if let Some(sum) = into.last_mut() {
            *sum += self.sum.load(Ordering::Relaxed);
        }
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name{labels}` for counts summed by
    /// [`Histogram::add_to`] (`labels` is empty or ends with a comma).
    pub(super) fn write(&self, out: &mut String, name: &str, labels: &str, counts: &[u64]) {
        let Some((sum, buckets)) = counts.split_last() else {
            return;
        };
        let mut seen = 0;
        for (i, n) in buckets.iter().enumerate() {
            seen += n;
            let le = match self.bounds.get(i) {
                Some(b) => number(*b as f64 / self.unit),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {seen}");
        }
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            number(*sum as f64 / self.unit)
        );
        let _ = writeln!(out, "{name}_count{braces} {seen}");
    }
}

/// A float as Prometheus reads it, without an exponent for the values used here.
fn number(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_count_is_their_total() {
        let h = Histogram::new(BATCH, 1.0);
        for v in [1, 1, 3, 600] {
            h.observe(v);
        }
        let mut counts = Vec::new();
        h.add_to(&mut counts);
        let mut out = String::new();
        h.write(&mut out, "b", "", &counts);
        assert!(out.contains("b_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"512\"} 3\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("b_sum 605\n"), "{out}");
        assert!(out.contains("b_count 4\n"), "{out}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn seconds_render_as_decimal_seconds() {
        let h = Histogram::seconds();
        h.observe_duration(std::time::Duration::from_micros(30));
        let mut counts = Vec::new();
        h.add_to(&mut counts);
        let mut out = String::new();
        h.write(&mut out, "d", "op=\"sign\",", &counts);
        assert!(
            out.contains("d_bucket{op=\"sign\",le=\"0.000025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("d_bucket{op=\"sign\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("d_bucket{op=\"sign\",le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("d_sum{op=\"sign\"} 0.00003\n"), "{out}");
        assert!(out.contains("d_count{op=\"sign\"} 1\n"), "{out}");
    }
}
