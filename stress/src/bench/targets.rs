//! The durable-key targets, as ratios measured so that drift on a shared machine hits both
//! sides alike, and the disk's fsync latency (the floor under a durable keygen).

use std::time::Instant;

use ferrohsm_client::profile::{Profile, Transport};
use hdrhistogram::Histogram;

use super::client::{Keys, client_loop};
use super::rows::{Baseline, BenchOp, BenchResult};

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
    /// The goal: `ratio >= goal`, or `ratio <= goal` when `at_most`.
    pub goal: f64,
    /// Whether the goal is an upper bound.
    pub at_most: bool,
}

impl Target {
    /// Whether the ratio meets the goal.
    pub fn met(&self) -> bool {
        if self.at_most {
            self.ratio <= self.goal
        } else {
            self.ratio >= self.goal
        }
    }
}

/// The every-core targets, from rows of this run: latency ratios to the raw floors and to
/// ping plus the in-process crypto, throughput ratios to the in-process baselines.
pub(super) fn every_core(results: &[BenchResult], baseline: &[Baseline]) -> Vec<Target> {
    let row = |t: &str, op: &str, inflight: usize, clients: usize| {
        results.iter().find(|r| {
            r.transport == t && r.op == op && r.inflight == inflight && r.clients == clients
        })
    };
    let base = |op: &str| baseline.iter().find(|b| b.op == op).map(|b| b.ops_per_sec);
    let mut out = Vec::new();
    let mut push = |name: String, transport: &str, inflight, ratio: f64, goal, at_most| {
        out.push(Target {
            name,
            transport: transport.into(),
            inflight,
            ratio,
            goal,
            at_most,
        })
    };
    // One request at a time, as fast as the wire allows: against a floor that sleeps in the
    // kernel between requests, and against one whose two sides poll (no wake-up paid).
    for (t, floor, goal) in [
        ("shm", "floor-shm", 4.0),
        ("tcp", "floor-tcp", 1.3),
        ("tcp", "floor-tcp-spin", 1.5),
        ("tls", "floor-tcp-spin", 2.0),
    ] {
        if let (Some(p), Some(f)) = (row(t, "ping", 1, 1), row("floor", floor, 1, 1)) {
            push(
                format!("ping p50 / {floor} p50"),
                t,
                1,
                p.p50_us / f.p50_us,
                goal,
                true,
            );
        }
    }
    // One request in flight: sign p50 <= ping p50 + 1.2 x one in-process sign.
    for t in ["tcp", "tls", "shm"] {
        for op in ["ed25519-sign", "p256-sign", "ml-dsa-65-sign"] {
            if let (Some(s), Some(p), Some(b)) = (row(t, op, 1, 1), row(t, "ping", 1, 1), base(op))
            {
                let budget = p.p50_us + 1.2 * 1e6 / b;
                push(
                    format!("{op} p50 / (ping p50 + 1.2 x in-process)"),
                    t,
                    1,
                    s.p50_us / budget,
                    1.0,
                    true,
                );
            }
        }
    }
    for (t, op, inflight, clients, goal) in [
        ("shm", "chacha20poly1305-encrypt-64", 16, 2, 0.25),
        ("shm", "chacha20poly1305-encrypt-16k", 16, 1, 0.5),
        ("tls", "chacha20poly1305-encrypt-16k", 16, 1, 0.35),
        ("shm", "ed25519-sign", 16, 2, 1.4),
        ("shm", "p256-sign", 16, 2, 1.4),
        ("shm", "ml-dsa-65-sign", 16, 2, 1.4),
    ] {
        if let Some(r) = row(t, op, inflight, clients).and_then(|r| r.ratio.map(|x| (r, x))) {
            push(
                format!("{op} x{clients} clients / in-process"),
                t,
                inflight,
                r.1,
                goal,
                false,
            );
        }
    }
    for r in results
        .iter()
        .filter(|r| r.op == "ping" && r.clients >= 1024)
    {
        push(
            format!("{} sessions ping p99 / p50", r.clients),
            &r.transport,
            1,
            r.p99_us / r.p50_us,
            10.0,
            true,
        );
    }
    out
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
        cpu_us_client: None,
        cpu_us_server: None,
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
        na += client_loop(
            profile,
            t,
            a,
            keys,
            inflight,
            slice,
            &format!("{tag}a{r}"),
            None,
        )?
        .done;
        nb += client_loop(
            profile,
            t,
            b,
            keys,
            inflight,
            slice,
            &format!("{tag}b{r}"),
            None,
        )?
        .done;
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
                at_most: false,
            });
        }
    }
    Ok(out)
}
