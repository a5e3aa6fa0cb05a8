//! The durable-key targets, as ratios measured so that drift on a shared machine hits both
//! sides alike, and the disk's fsync latency (the floor under a durable keygen).

use std::time::Instant;

use ferrohsm_client::profile::{Profile, Transport};
use hdrhistogram::Histogram;

use super::{BenchOp, BenchResult, Keys, client_loop};

/// A target of the durable-keys issue, as a ratio measured in this run.
#[derive(Debug, Clone)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// Transport and in-flight depth it was measured at.
    pub transport: String,
    /// Requests in flight.
    pub inflight: usize,
    /// The measured ratio.
    pub ratio: f64,
    /// The goal: `ratio >= goal`.
    pub goal: f64,
}

/// The disk's fsync latency: 4 KiB written and `sync_data`ed, `n` times, in `dir`.
pub(super) fn fsync_floor(dir: &std::path::Path, n: usize) -> Result<BenchResult, String> {
    use std::io::{Seek, Write};
    let file = tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("fsync floor: {e}"))?;
    let mut f = file.as_file();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let block = [0xa5u8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        f.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| e.to_string())?;
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
    }
    Ok(BenchResult {
        transport: "disk".into(),
        op: "fsync-4k".into(),
        inflight: 1,
        clients: 1,
        ops_per_sec: n as f64 / start.elapsed().as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        ratio: None,
    })
}

/// The pairs the durable-keys issue sets targets for: (name, a, b, goal for a / b, in-flight
/// depths it applies to; `None`: every depth measured).
const PAIRS: [(&str, BenchOp, BenchOp, f64, Option<usize>); 2] = [
    (
        "keygen-persistent / keygen-session",
        BenchOp::KeygenPersistent,
        BenchOp::KeygenSession,
        0.3,
        Some(16),
    ),
    (
        "ed25519-sign (persistent, cached) / ed25519-sign-session",
        BenchOp::Ed25519Sign,
        BenchOp::Ed25519SignSession,
        0.95,
        None,
    ),
];

/// Measures `a` and `b` on one client in alternating slices (`rounds` of each), so that the
/// drift of a shared machine lands on both alike; returns a's throughput over b's.
#[allow(clippy::too_many_arguments)]
fn paired(
    profile: &Profile,
    t: Transport,
    keys: &Keys,
    (a, b): (BenchOp, BenchOp),
    inflight: usize,
    slice: f64,
    rounds: usize,
    tag: &str,
) -> Result<f64, String> {
    let (mut na, mut nb) = (0u64, 0u64);
    for r in 0..rounds {
        na += client_loop(profile, t, a, keys, inflight, slice, &format!("{tag}a{r}"))?.0;
        nb += client_loop(profile, t, b, keys, inflight, slice, &format!("{tag}b{r}"))?.0;
    }
    Ok(na as f64 / nb.max(1) as f64)
}

/// The targets that apply to `ops` over transport `t`, each measured paired.
pub(super) fn measure(
    profile: &Profile,
    t: Transport,
    keys: &Keys,
    ops: &[BenchOp],
    inflights: &[usize],
    secs: f64,
) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (name, a, b, goal, only) in PAIRS {
        if !(ops.contains(&a) && ops.contains(&b)) {
            continue;
        }
        let depths: Vec<usize> = match only {
            Some(d) => vec![d],
            None => inflights.to_vec(),
        };
        for inflight in depths {
            let tag = format!("p{}-{inflight}-", crate::transport_name(t));
            // Eight slices of a quarter of a measurement each: twice a row's time in all.
            let ratio = paired(profile, t, keys, (a, b), inflight, secs / 4.0, 4, &tag)?;
            out.push(Target {
                name: name.into(),
                transport: crate::transport_name(t).into(),
                inflight,
                ratio,
                goal,
            });
        }
    }
    Ok(out)
}
