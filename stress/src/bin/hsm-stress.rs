//! `hsm-stress`: thin CLI over the `ferrohsm_stress` library.
//!
//! Exit status: 0 when every result checked out; 1 on any wrong result, isolation violation or
//! unexpected error (run) or a failed measurement (bench); 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrohsm_stress::bench::{BenchOp, BenchOptions};
use ferrohsm_stress::run::{Fault, Restarter, RunOptions};
use ferrohsm_stress::spawn::{Spawned, default_hsmd, peak_rss_kib};
use ferrohsm_stress::{ALL_TRANSPORTS, parse_duration, parse_transports, report};

#[derive(Debug, Parser)]
#[command(
    name = "hsm-stress",
    version,
    about = "Load, faults, verification and benchmarks for FerroHSM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Server {
    /// Start the hsmd beside this binary on loopback with fresh credentials.
    #[arg(long)]
    spawn: bool,
    /// The hsmd to spawn (default: beside hsm-stress).
    #[arg(long, value_name = "PATH")]
    hsmd: Option<PathBuf>,
    /// Transports (default: all four).
    #[arg(long, value_parser = parse_transports)]
    transports: Option<std::vec::Vec<ferrohsm_client::profile::Transport>>,
    /// Write the report as JSON.
    #[arg(long, value_name = "F")]
    json: Option<PathBuf>,
    /// Write an SVG chart.
    #[arg(long, value_name = "F.svg")]
    plot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Concurrent clients with a mix of operations, all results verified, faults on the side.
    Run {
        /// Every *.toml client profile in DIR is one identity.
        #[arg(long, value_name = "DIR", required_unless_present = "spawn")]
        profiles: Option<PathBuf>,
        #[command(flatten)]
        server: Server,
        /// Client connections.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// How long (30s, 500ms, 2m); default 10s unless --ops is given.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Stop after this many operations.
        #[arg(long)]
        ops: Option<u64>,
        /// Faults: disconnect,reconnect,malformed,slow,restart (restart needs --spawn).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<Fault>,
    },
    /// Per-operation throughput and latency over each transport, against in-process crypto.
    Bench {
        /// Client profile of a running server.
        #[arg(long, value_name = "FILE", required_unless_present = "spawn")]
        profile: Option<PathBuf>,
        #[command(flatten)]
        server: Server,
        /// Operations (default: all).
        #[arg(long, value_delimiter = ',')]
        ops: Vec<BenchOp>,
        /// Requests in flight per client.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        inflight: Vec<usize>,
        /// Client counts.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        clients: Vec<usize>,
        /// Short measurements (0.3 s each instead of 2 s).
        #[arg(long)]
        quick: bool,
    },
    /// The echo child of bench's floor-shm row (started by bench itself).
    #[command(hide = true)]
    FloorShmEcho {
        /// Where bench hands over the segment.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn write(path: &Option<PathBuf>, text: &str) -> Result<(), String> {
    match path {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        }
        None => Ok(()),
    }
}

fn spawn(server: &Server, clients: usize) -> Result<Option<Spawned>, String> {
    if !server.spawn {
        return Ok(None);
    }
    let hsmd = server.hsmd.clone().unwrap_or_else(default_hsmd);
    // Room for every client and fault connection of a big run.
    Spawned::start(&hsmd, clients, "max_connections_per_client = 4096").map(Some)
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hsm-stress: {e}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<bool, String> {
    match cli.command {
        Command::Run {
            profiles,
            server,
            clients,
            duration,
            ops,
            faults,
        } => {
            let spawned = spawn(&server, 4.min(clients.max(1)))?
                .map(|s| std::sync::Arc::new(std::sync::Mutex::new(s)));
            let lock = |s: &std::sync::Arc<std::sync::Mutex<Spawned>>| {
                s.lock().unwrap_or_else(|p| p.into_inner()).profiles_dir()
            };
            let dir = match (&spawned, profiles) {
                (Some(s), _) => lock(s),
                (None, Some(d)) => d,
                (None, None) => return Err("give --profiles DIR or --spawn".into()),
            };
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            let opts = RunOptions {
                profiles: paths,
                transports: server.transports.clone().unwrap_or(ALL_TRANSPORTS.to_vec()),
                clients,
                duration: duration.or(if ops.is_none() {
                    Some(std::time::Duration::from_secs(10))
                } else {
                    None
                }),
                ops,
                faults,
                progress: true,
                restart: spawned.clone().map(|s| {
                    Restarter(std::sync::Arc::new(move || {
                        s.lock().unwrap_or_else(|p| p.into_inner()).restart()
                    }))
                }),
            };
            let outcome = ferrohsm_stress::run::run(&opts)?;
            let rss = spawned
                .as_ref()
                .and_then(|s| peak_rss_kib(s.lock().unwrap_or_else(|p| p.into_inner()).pid()));
            println!("{}", report::run_table(&outcome));
            if let Some(kib) = rss {
                println!("hsmd peak RSS: {} MiB", kib / 1024);
            }
            for p in &outcome.problems {
                eprintln!("problem: {p}");
            }
            write(&server.json, &report::run_json(&outcome, rss).to_string())?;
            write(&server.plot, &report::run_svg(&outcome))?;
            if let Some(s) = spawned {
                let code = s.lock().unwrap_or_else(|p| p.into_inner()).stop();
                if code != Some(0) {
                    return Err(format!("hsmd did not stop cleanly (exit {code:?})"));
                }
            }
            Ok(outcome.wrong_results == 0
                && outcome.isolation_violations == 0
                && outcome.unexpected_errors == 0)
        }
        Command::Bench {
            profile,
            server,
            ops,
            inflight,
            clients,
            quick,
        } => {
            let spawned = spawn(&server, 1)?;
            let profile = match (&spawned, profile) {
                (Some(s), _) => s.profile(&s.clients[0]),
                (None, Some(p)) => p,
                (None, None) => return Err("give --profile FILE or --spawn".into()),
            };
            let opts = BenchOptions {
                profile,
                transports: server.transports.clone().unwrap_or(ALL_TRANSPORTS.to_vec()),
                ops: if ops.is_empty() {
                    BenchOp::ALL.to_vec()
                } else {
                    ops
                },
                inflight,
                clients,
                secs: if quick { 0.3 } else { 2.0 },
                fsync_dir: spawned.as_ref().map(|s| s.data_dir()),
                floor_exe: std::env::current_exe().ok(),
            };
            let r = ferrohsm_stress::bench::bench(&opts)?;
            print!("{}", report::bench_table(&r));
            write(&server.json, &report::bench_json(&r).to_string())?;
            write(&server.plot, &report::bench_svg(&r))?;
            Ok(true)
        }
        Command::FloorShmEcho { socket } => {
            ferrohsm_stress::bench::shm_echo_child(&socket)?;
            Ok(true)
        }
    }
}
