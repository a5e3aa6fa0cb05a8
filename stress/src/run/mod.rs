//! `hsm-stress run`: many clients, a weighted mix of operations, every result checked locally,
//! isolation probes between identities, and faults on the side.

//!
//! ```text
//!  run() --spawns--> worker.rs: one thread per client (connection, identity, checked ops)
//!        \-spawns--> faults.rs: one thread per fault, beside the load
//!  procs.rs: `--procs N` runs the clients as N child processes and merges their outcomes
//!  Shared: counters, problems, the labels each identity made (for isolation probes)
//! ```

mod faults;
mod flood;
pub mod procs;
mod shared;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};

pub use faults::Fault;
use faults::run_fault;
use shared::Shared;
pub use shared::{FloodReport, Restarter, Stats};
use worker::run_worker;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// One profile per identity.
    pub profiles: Vec<PathBuf>,
    /// Transports, spread over the clients.
    pub transports: Vec<Transport>,
    /// Client threads (each its own connection).
    pub clients: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many operations in total.
    pub ops: Option<u64>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Show a progress bar.
    pub progress: bool,
    /// Restarts the server gracefully (the `restart` fault; only for a server we started).
    pub restart: Option<Restarter>,
    /// The index of this run's first client among all processes of a `--procs` run (labels,
    /// identities and transports follow the global index), 0 otherwise.
    pub first_client: usize,
    /// A tag unique to this run (shared by a `--procs` run's processes), in every label it
    /// makes: a run repeats against the same server without meeting its earlier labels.
    pub run_tag: String,
}

/// A fresh run tag: 8 random hex digits.
pub fn new_run_tag() -> String {
    let mut b = [0u8; 4];
    // A tag from the clock if the system's randomness fails: it need only differ per run.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes per digest of the flood fault.
pub fn flood_bytes() -> usize {
    flood::FLOOD_BYTES
}

/// Sessions of the flood fault's flooder.
pub fn flood_sessions() -> usize {
    flood::FLOOD_SESSIONS
}

/// The verdict and the numbers.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The run's tag (in every label it made).
    pub run_tag: String,
    /// Operations completed (checked).
    pub total_ops: u64,
    /// Results that failed a local check.
    pub wrong_results: u64,
    /// Another identity's key was reachable.
    pub isolation_violations: u64,
    /// Errors that no operation should produce.
    pub unexpected_errors: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
    /// Fault events injected.
    pub fault_events: u64,
    /// Graceful restarts of the server (the `restart` fault).
    pub restarts: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latencies.
    pub stats: Stats,
    /// The flood fault's measurements.
    pub flood: Option<FloodReport>,
}

/// Runs the load until the duration or operation count is reached.
pub fn run(opts: &RunOptions) -> Result<Outcome, String> {
    let restart_fault = opts.faults.contains(&Fault::Restart);
    if restart_fault && opts.restart.is_none() {
        return Err("the restart fault needs --spawn (it restarts the hsmd it started)".into());
    }
    let profiles: Vec<Profile> = opts
        .profiles
        .iter()
        .map(|p| Profile::load(p).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if profiles.is_empty() || opts.transports.is_empty() {
        return Err("need at least one profile and one transport".into());
    }

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        reserved: AtomicU64::new(0),
        problems_n: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        isolation: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        problems: Mutex::new(Vec::new()),
        labels: Mutex::new(BTreeMap::new()),
        start: Instant::now(),
        max_ops: opts.ops,
        restart_fault,
        restarting: AtomicBool::new(false),
        restarts: AtomicU64::new(0),
        flood: Mutex::new(None),
    });
    let mut workers = Vec::new();
    for i in opts.first_client..opts.first_client + opts.clients.max(1) {
        let p = profiles[i % profiles.len()].clone();
        let t = opts.transports[i % opts.transports.len()];
        // Prefixes of the other identities' labels (isolation probes and listing checks).
        let others = profiles
            .iter()
            .filter(|o| o.name != p.name)
            .map(|o| format!("{}-w", o.name))
            .collect();
        let sh = shared.clone();
        let tag = opts.run_tag.clone();
        workers.push(std::thread::spawn(move || {
            run_worker(i, p, t, tag, others, sh)
        }));
    }
    let faults: Vec<_> = opts
        .faults
        .iter()
        .map(|f| {
            let (f, p, t, sh) = (
                *f,
                profiles.clone(),
                opts.transports.clone(),
                shared.clone(),
            );
            let restart = opts.restart.clone();
            std::thread::spawn(move || run_fault(f, p, t, sh, restart))
        })
        .collect();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.ops.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let ops = shared.ops.load(Ordering::Relaxed);
        if let Some(b) = &bar {
            let rate = (ops - last.1) as f64 / last.0.elapsed().as_secs_f64();
            b.set_message(format!(
                "{ops} ops, {rate:.0} ops/s, {} problems, {} fault events",
                shared.problems_n.load(Ordering::Relaxed),
                shared.faults.load(Ordering::Relaxed)
            ));
            b.tick();
            last = (Instant::now(), ops);
        }
        if opts.duration.is_some_and(|d| shared.start.elapsed() >= d) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        // Done, or every client has given up (none could connect or set up): an --ops run
        // must not wait for operations nobody will make.
        if shared.done() || workers.iter().all(|w| w.is_finished()) {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    let mut stats = Stats::default();
    for w in workers {
        stats.merge(
            w.join()
                .map_err(|_| "a client thread panicked".to_string())?,
        );
    }
    for f in faults {
        let _ = f.join();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let problems = shared
        .problems
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        run_tag: opts.run_tag.clone(),
        total_ops: shared.ops.load(Ordering::Relaxed),
        wrong_results: shared.wrong.load(Ordering::Relaxed),
        isolation_violations: shared.isolation.load(Ordering::Relaxed),
        unexpected_errors: shared.unexpected.load(Ordering::Relaxed),
        problems,
        fault_events: shared.faults.load(Ordering::Relaxed),
        restarts: shared.restarts.load(Ordering::Relaxed),
        elapsed: shared.start.elapsed(),
        stats,
        flood: shared
            .flood
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    })
}
