//! `hsm-stress`: thin CLI over the `ferrohsm_stress` library.
//!
//! Exit status: 0 when every result checked out; 1 on any wrong result, isolation violation or
//! unexpected error (run) or a failed measurement (bench); 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrohsm_stress::bench::{BenchOp, BenchOptions};
use ferrohsm_stress::run::{Fault, Restarter, RunOptions};
use ferrohsm_stress::spawn::{Nodes, Spawned, default_hsmd, peak_rss_kib};
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
    /// With --spawn: keep the spawned nodes' keys in PostgreSQL, in a database the run makes
    /// (and drops) on this server (postgres://USER@HOST:PORT/DB; password from
    /// HSMD_STORE_PASSWORD; CREATEDB needed). bench also measures PostgreSQL against SQLite,
    /// two nodes against one, failover and invalidation.
    #[arg(long, value_name = "URL", requires = "spawn")]
    store_url: Option<String>,
    /// (run) With --spawn --store-url: this many nodes, the identities spread over them, each
    /// profile listing every node (the restart fault restarts them in turn).
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: usize,
    /// A `[server]` setting for the spawned hsmd, as TOML (`inline_max = 0`); repeatable.
    #[arg(long = "server-set", value_name = "KEY=VALUE")]
    server_set: Vec<String>,
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
        /// Run the clients as N separate processes and merge their reports.
        #[arg(long, default_value_t = 1)]
        procs: usize,
        /// (child of --procs) the global index of this process's first client.
        #[arg(long, hide = true, default_value_t = 0)]
        first_client: usize,
        /// (child of --procs) write the whole outcome here for the parent to merge.
        #[arg(long, hide = true, value_name = "F")]
        outcome_json: Option<PathBuf>,
        /// (child of --procs) the run's tag, shared by every process of the run.
        #[arg(long, hide = true, value_name = "TAG")]
        run_tag: Option<String>,
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
        /// Also measure ping with N concurrent sessions spread over the transports.
        #[arg(long, value_name = "N")]
        sessions: Option<usize>,
        /// Idle sessions held over each transport while measuring the spawned server's idle
        /// CPU use (0: skip).
        #[arg(long, value_name = "N", default_value_t = 64)]
        idle_sessions: usize,
        /// Also measure find by id and by label among N keys against among 10 (the keys are
        /// made and deleted by the bench; the client's key quota must allow N + 10).
        #[arg(long, value_name = "N")]
        find_keys: Option<usize>,
        /// The clients' spin time in microseconds, instead of the profile's `spin_us` (0: the
        /// clients never spin).
        #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=10_000))]
        client_spin_us: Option<u64>,
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

/// The nodes `run --spawn` starts: one, or `--nodes N` on PostgreSQL.
fn spawn_nodes(server: &Server, clients: usize) -> Result<Option<Nodes>, String> {
    if !server.spawn {
        return Ok(None);
    }
    let hsmd = server.hsmd.clone().unwrap_or_else(default_hsmd);
    let mut extra = vec!["max_connections_per_client = 4096".to_string()];
    extra.extend(server.server_set.iter().cloned());
    Nodes::start(
        &hsmd,
        clients,
        &extra.join("\n"),
        server.store_url.as_deref(),
        server.nodes,
    )
    .map(Some)
}

fn spawn(server: &Server, clients: usize) -> Result<Option<Spawned>, String> {
    if !server.spawn {
        return Ok(None);
    }
    let hsmd = server.hsmd.clone().unwrap_or_else(default_hsmd);
    // Room for every client and fault connection of a big run.
    let mut extra = vec!["max_connections_per_client = 4096".to_string()];
    extra.extend(server.server_set.iter().cloned());
    Spawned::start(&hsmd, clients, &extra.join("\n")).map(Some)
}

/// What every child of a `--procs` run shares.
struct ChildRun<'a> {
    profiles: &'a std::path::Path,
    transports: &'a [ferrohsm_client::profile::Transport],
    duration: Option<std::time::Duration>,
    ops: Option<u64>,
    faults: &'a [Fault],
    run_tag: &'a str,
}

/// Runs `clients` as `procs` child processes of this binary and merges their outcomes. The
/// faults run in the first child only, so a run injects as many as a single-process one.
fn run_procs(
    c: &ChildRun<'_>,
    clients: usize,
    procs: usize,
) -> Result<ferrohsm_stress::run::Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let names: Vec<&str> = c
        .transports
        .iter()
        .map(|t| ferrohsm_stress::transport_name(*t))
        .collect();
    let shares = ferrohsm_stress::run::procs::shares(clients, procs);
    let mut children = Vec::new();
    for (k, (first, n)) in shares.iter().enumerate() {
        let out = tmp.path().join(format!("child-{k}.json"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run")
            .arg("--profiles")
            .arg(c.profiles)
            .args(["--transports", &names.join(",")])
            .args(["--clients", &n.to_string()])
            .args(["--first-client", &first.to_string()])
            .args(["--run-tag", c.run_tag])
            .arg("--outcome-json")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(d) = c.duration {
            cmd.args(["--duration", &format!("{}ms", d.as_millis().max(1))]);
        }
        if let Some(total) = c.ops {
            // Each child's share of the operations, in proportion to its clients.
            let mine = (total * *n as u64).div_ceil(clients.max(1) as u64).max(1);
            cmd.args(["--ops", &mine.to_string()]);
        }
        if k == 0 && !c.faults.is_empty() {
            let f: Vec<String> = c.faults.iter().map(|f| f.name().to_string()).collect();
            cmd.args(["--faults", &f.join(",")]);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start client process {k}: {e}"))?;
        children.push((k, child, out));
    }
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (k, mut child, out) in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        match std::fs::read(&out) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("client process {k}: {e}"))?;
                outcomes.push(ferrohsm_stress::run::procs::load(&v)?);
            }
            Err(_) => failed.push(format!(
                "client process {k} exited with {status} and no report"
            )),
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    Ok(ferrohsm_stress::run::procs::merge(outcomes))
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
            procs,
            first_client,
            outcome_json,
            run_tag,
        } => {
            let run_tag = run_tag.unwrap_or_else(ferrohsm_stress::run::new_run_tag);
            let spawned = spawn_nodes(&server, 4.min(clients.max(1)))?
                .map(|s| std::sync::Arc::new(std::sync::Mutex::new(s)));
            let lock = |s: &std::sync::Arc<std::sync::Mutex<Nodes>>| {
                let n = s.lock().unwrap_or_else(|p| p.into_inner());
                (n.nodes[0].profiles_dir(), n.profiles())
            };
            let (dir, paths) = match (&spawned, profiles) {
                (Some(s), _) => lock(s),
                (None, Some(d)) => {
                    let mut paths: Vec<PathBuf> = std::fs::read_dir(&d)
                        .map_err(|e| format!("cannot read {}: {e}", d.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    paths.sort();
                    (d, paths)
                }
                (None, None) => return Err("give --profiles DIR or --spawn".into()),
            };
            let duration = duration.or(if ops.is_none() {
                Some(std::time::Duration::from_secs(10))
            } else {
                None
            });
            let transports = server.transports.clone().unwrap_or(ALL_TRANSPORTS.to_vec());
            let outcome = if procs > 1 {
                if faults.contains(&Fault::Restart) {
                    return Err("the restart fault cannot run with --procs yet: it restarts the hsmd under every process's clients".into());
                }
                if faults.contains(&Fault::Flood) {
                    return Err("the flood fault cannot run with --procs: it times one light client in one process".into());
                }
                let child = ChildRun {
                    profiles: &dir,
                    transports: &transports,
                    duration,
                    ops,
                    faults: &faults,
                    run_tag: &run_tag,
                };
                run_procs(&child, clients, procs)?
            } else {
                let opts = RunOptions {
                    profiles: paths,
                    transports,
                    clients,
                    duration,
                    ops,
                    faults,
                    progress: outcome_json.is_none(),
                    restart: spawned.clone().map(|s| {
                        Restarter(std::sync::Arc::new(move || {
                            s.lock().unwrap_or_else(|p| p.into_inner()).restart_next()
                        }))
                    }),
                    first_client,
                    run_tag,
                };
                ferrohsm_stress::run::run(&opts)?
            };
            if let Some(f) = &outcome_json {
                // A child of --procs: the parent reports.
                let dump = ferrohsm_stress::run::procs::dump(&outcome).to_string();
                write(&Some(f.clone()), &dump)?;
                return Ok(true);
            }
            let rss = spawned.as_ref().and_then(|s| {
                peak_rss_kib(s.lock().unwrap_or_else(|p| p.into_inner()).nodes[0].pid())
            });
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
            sessions,
            idle_sessions,
            find_keys,
            client_spin_us,
        } => {
            let spawned = spawn(&server, 1)?;
            // A second spawned server at `[audit] level = "all"`, to measure what it costs.
            let audit_all = match &spawned {
                Some(_) => {
                    let hsmd = server.hsmd.clone().unwrap_or_else(default_hsmd);
                    let extra = server.server_set.join("\n");
                    Some(Spawned::start_with(&hsmd, 1, &extra, "level = \"all\"")?)
                }
                None => None,
            };
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
                sessions,
                idle: spawned
                    .as_ref()
                    .filter(|_| idle_sessions > 0)
                    .map(|s| (s.pid(), idle_sessions)),
                audit_all: audit_all.as_ref().map(|s| s.profile(&s.clients[0])),
                find_keys,
                client_spin: client_spin_us.map(std::time::Duration::from_micros),
                server: spawned.as_ref().map(|s| s.pid()),
            };
            let mut r = ferrohsm_stress::bench::bench(&opts)?;
            if let Some(url) = server.store_url.clone() {
                let (rows, targets) = ferrohsm_stress::bench::cluster::measure(
                    &ferrohsm_stress::bench::cluster::ClusterOptions {
                        hsmd: server.hsmd.clone().unwrap_or_else(default_hsmd),
                        url,
                        secs: opts.secs,
                        failovers: if quick { 3 } else { 10 },
                        invalidations: if quick { 20 } else { 100 },
                    },
                )?;
                r.results.extend(rows);
                r.targets.extend(targets);
            }
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
