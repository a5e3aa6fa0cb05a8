//! `hsm-stress bench`: per transport, operation, in-flight depth and client count: ops/s and
//! p50/p99 latency, next to the same crypto done in-process on one thread in the same run.
//!
//! ```text
//!  bench() -- per transport, op, clients, in-flight: client_loop() on N threads -> a row
//!          \- targets.rs: paired ratios for the durable-key targets, the disk's fsync floor
//!          \- baseline.rs: the same crypto in-process on one thread
//!          \- floors.rs: raw TCP echo and spinning shared-memory round trips
//!          \- client.rs: one client: its keys, requests kept in flight, latencies
//!          \- audit.rs: sign throughput at audit level "all" against "changes"
//!          \- search.rs: find by id and label among N keys against among 10
//!          \- cluster.rs: PostgreSQL nodes against SQLite, two nodes, failover, invalidation
//! ```
//! On a shared machine one in-process sample is not enough, so the baselines and floors are
//! sampled several times, interleaved with the transport rows (before the first transport and
//! after each one), and the median of the samples is reported and used for every ratio.

mod audit;
mod baseline;
mod client;
pub mod cluster;
mod cpu;
mod floors;
mod rows;
mod scale;
mod search;
mod targets;

pub use audit::AuditCost;
pub use floors::shm_echo_child;
pub use scale::Idle;

pub use baseline::in_process;
pub use targets::Target;

pub(crate) use client::{Measured, client_loop, keys, rt};
pub use rows::{Baseline, BenchOp, BenchResult};

use std::path::PathBuf;

use ferrohsm_client::ClientError;
use ferrohsm_client::profile::{Profile, Transport};

use crate::transport_name;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The client profile.
    pub profile: PathBuf,
    /// Transports.
    pub transports: Vec<Transport>,
    /// Operations.
    pub ops: Vec<BenchOp>,
    /// In-flight depths.
    pub inflight: Vec<usize>,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Timed seconds per measurement (a tenth more is warm-up).
    pub secs: f64,
    /// Where to measure the disk's fsync latency (the floor under persistent keygen): the
    /// server's data directory when known, else the system temp directory.
    pub fsync_dir: Option<PathBuf>,
    /// The `hsm-stress` binary, run as the echo child of the `floor-shm` row; `None` leaves
    /// that row out.
    pub floor_exe: Option<PathBuf>,
    /// Also measure ping with this many concurrent sessions spread over the transports.
    pub sessions: Option<usize>,
    /// The server's process id and how many idle sessions to hold over each transport while
    /// measuring its CPU use (a spawned server; `None` skips the measurement).
    pub idle: Option<(u32, usize)>,
    /// A profile of a second server running `[audit] level = "all"`: sign throughput is
    /// compared against the main one (`changes`); `None` skips it.
    pub audit_all: Option<PathBuf>,
    /// Measure `find` by id and by label in a namespace of this many keys against one of 10
    /// (over the first transport); `None` skips it.
    pub find_keys: Option<usize>,
    /// The clients' spin time, instead of the profile's `spin_us`.
    pub client_spin: Option<std::time::Duration>,
    /// The server's process id (a spawned server): each row then reports the server's CPU
    /// time per request beside the clients'.
    pub server: Option<u32>,
}

/// Everything measured in one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// CPUs of this machine.
    pub cpus: usize,
    /// `debug` or `release`.
    pub profile: &'static str,
    /// Over the transports.
    pub results: Vec<BenchResult>,
    /// In-process.
    pub baseline: Vec<Baseline>,
    /// The durable-key targets, each measured as a paired ratio.
    pub targets: Vec<Target>,
    /// CPU use of the idle server holding idle sessions, per transport, when measured.
    pub idle: Vec<Idle>,
    /// Sign throughput at audit level "all" against "changes", when measured.
    pub audit: Vec<AuditCost>,
}

/// The CPU time the clients of one row measured over their timed parts.
#[derive(Default)]
struct Cpu {
    clients: Option<std::time::Duration>,
    /// The server's, as each client saw it (over nearly the same span), and how many saw it.
    server: Option<(std::time::Duration, u32)>,
    /// A client that could not tell its own.
    unknown: bool,
}

impl Cpu {
    fn add(&mut self, m: &Measured) {
        match m.cpu_client {
            Some(c) => *self.clients.get_or_insert_default() += c,
            None => self.unknown = true,
        }
        if let Some(s) = m.cpu_server {
            let (sum, n) = self.server.get_or_insert_default();
            *sum += s;
            *n += 1;
        }
    }

    /// Microseconds of CPU per request: the clients' together, and the server's (the mean of
    /// what each client saw).
    fn per_request(&self, requests: u64) -> (Option<f64>, Option<f64>) {
        if requests == 0 || self.unknown {
            return (None, None);
        }
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / requests as f64;
        (
            self.clients.map(us),
            self.server.map(|(sum, n)| us(sum / n.max(1))),
        )
    }
}

/// Baseline and floor samples, taken between the transport rows.
#[derive(Default)]
struct Samples {
    baseline: Vec<(BenchOp, Vec<f64>)>,
    floors: Vec<Vec<BenchResult>>,
}

impl Samples {
    /// One sample of every baseline and floor, `secs` each.
    fn take(&mut self, opts: &BenchOptions, secs: f64) -> Result<(), String> {
        for &op in &opts.ops {
            if let Some(v) = in_process(op, secs) {
                match self.baseline.iter_mut().find(|(o, _)| *o == op) {
                    Some((_, vs)) => vs.push(v),
                    None => self.baseline.push((op, vec![v])),
                }
            }
        }
        let mut floors = vec![floors::floor_tcp(secs)?, floors::floor_tcp_spin(secs)?];
        if let Some(exe) = &opts.floor_exe {
            floors.push(floors::floor_shm(exe, secs)?);
        }
        for (i, f) in floors.into_iter().enumerate() {
            match self.floors.get_mut(i) {
                Some(v) => v.push(f),
                None => self.floors.push(vec![f]),
            }
        }
        Ok(())
    }

    /// The medians: baselines by throughput, floors by median latency.
    fn medians(mut self) -> (Vec<Baseline>, Vec<BenchResult>) {
        let baseline = self
            .baseline
            .iter_mut()
            .map(|(op, vs)| {
                vs.sort_by(f64::total_cmp);
                Baseline {
                    op: op.name().into(),
                    ops_per_sec: vs[vs.len() / 2],
                }
            })
            .collect();
        let floors = self
            .floors
            .iter_mut()
            .filter_map(|rows| {
                rows.sort_by(|a, b| a.p50_us.total_cmp(&b.p50_us));
                rows.get(rows.len() / 2).cloned()
            })
            .collect();
        (baseline, floors)
    }
}

/// Measures every combination, with the in-process baselines and raw floors sampled before
/// the first transport and after each one.
pub fn bench(opts: &BenchOptions) -> Result<BenchReport, String> {
    let mut profile = Profile::load(&opts.profile).map_err(|e| e.to_string())?;
    if let Some(spin) = opts.client_spin {
        profile.spin = spin;
    }
    let mut results = Vec::new();
    let mut targets = Vec::new();
    let mut samples = Samples::default();
    let sample_secs = (opts.secs / 4.0).clamp(0.05, 0.5);
    samples.take(opts, sample_secs)?;
    for &t in &opts.transports {
        let rt = rt()?;
        let setup = rt.block_on(async {
            let c = ferrohsm_client::connect::connect(&profile, Some(t)).await?;
            let k = keys(&c, transport_name(t)).await?;
            Ok::<_, ClientError>((c, k))
        });
        let (setup_client, keys) = setup.map_err(|e| format!("{}: {e}", transport_name(t)))?;
        for &op in &opts.ops {
            for &clients in &opts.clients {
                for &inflight in &opts.inflight {
                    let handles: Vec<_> = (0..clients.max(1))
                        .map(|i| {
                            let (p, k) = (profile.clone(), keys.clone());
                            let secs = opts.secs;
                            let tag = format!("{}-{inflight}-{i}", transport_name(t));
                            let server = opts.server;
                            std::thread::spawn(move || {
                                client_loop(&p, t, op, &k, inflight.max(1), secs, &tag, server)
                            })
                        })
                        .collect();
                    let mut total = 0u64;
                    let mut h = floors::ns_histogram()?;
                    let mut cpu = Cpu::default();
                    for j in handles {
                        let m = j
                            .join()
                            .map_err(|_| "bench client panicked".to_string())??;
                        total += m.done;
                        let _ = h.add(&m.latencies);
                        cpu.add(&m);
                    }
                    let (cpu_us_client, cpu_us_server) = cpu.per_request(total);
                    results.push(BenchResult {
                        transport: transport_name(t).into(),
                        op: op.name().into(),
                        inflight,
                        clients,
                        ops_per_sec: total as f64 / opts.secs,
                        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
                        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
                        ratio: None,
                        cpu_us_client,
                        cpu_us_server,
                    });
                }
            }
        }
        targets.extend(targets::measure(
            &profile,
            t,
            &keys,
            &opts.ops,
            &opts.inflight,
            opts.secs,
        )?);
        // Leave the server as we found it.
        rt.block_on(async {
            for k in keys.all() {
                let _ = setup_client.delete(k).await;
            }
        });
        drop(setup_client);
        samples.take(opts, sample_secs)?;
    }
    if let (Some(n), Some(&t)) = (opts.find_keys, opts.transports.first()) {
        let (rows, found) = search::find_scale(&profile, t, n, opts.secs)?;
        results.extend(rows);
        targets.extend(found);
    }
    if let Some(n) = opts.sessions {
        results.push(scale::sessions(&profile, &opts.transports, n, opts.secs)?);
    }
    let mut idle = Vec::new();
    if let Some((pid, n)) = opts.idle {
        let secs = if opts.secs < 1.0 { 1.0 } else { 3.0 };
        for &t in &opts.transports {
            idle.push(scale::idle_cpu(&profile, t, pid, n, secs)?);
        }
    }
    let (baseline, floor_rows) = samples.medians();
    for r in &mut results {
        r.ratio = baseline
            .iter()
            .find(|b| b.op == r.op)
            .map(|b| r.ops_per_sec / b.ops_per_sec);
    }
    results.extend(floor_rows);
    targets.extend(targets::every_core(&results, &baseline));
    let audit = match &opts.audit_all {
        Some(all) if opts.ops.contains(&BenchOp::Ed25519Sign) => {
            let mut all = Profile::load(all).map_err(|e| e.to_string())?;
            // Both sides of the comparison spin alike.
            all.spin = profile.spin;
            audit::audit_cost(&profile, &all, &opts.inflight, opts.secs)?
        }
        _ => Vec::new(),
    };
    if opts.ops.contains(&BenchOp::KeygenPersistent) || opts.ops.contains(&BenchOp::CounterInc) {
        let dir = opts.fsync_dir.clone().unwrap_or_else(std::env::temp_dir);
        results.push(targets::fsync_floor(
            &dir,
            if opts.secs < 1.0 { 50 } else { 300 },
        )?);
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    Ok(BenchReport {
        cpus,
        profile,
        results,
        baseline,
        targets,
        idle,
        audit,
    })
}
