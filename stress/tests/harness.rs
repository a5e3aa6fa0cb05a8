//! `hsm-stress` itself, end to end: a short run over every transport with every fault on
//! must find nothing wrong, and a quick bench must produce the documented report.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn stress() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsm-stress"))
}

/// `hsm-stress bench --spawn --quick ARGS --json F`, which must succeed: its JSON report and
/// everything it printed.
fn spawned_bench(args: &[&str]) -> (serde_json::Value, String) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let o = stress()
        .args(["bench", "--spawn", "--quick"])
        .args(args)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "hsm-stress bench failed:\n{out}");
    let r = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (r, out)
}

#[test]
fn a_short_run_with_faults_finds_nothing_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let (json, svg) = (tmp.path().join("run.json"), tmp.path().join("run.svg"));
    let o = stress()
        .args(["run", "--spawn", "--clients", "8", "--duration", "3s"])
        .args([
            "--transports",
            "tcp,tls,tls-psk,shm",
            "--faults",
            "disconnect,reconnect,malformed,slow",
        ])
        .args([
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "hsm-stress run failed:\n{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["wrong_results"], 0, "{out}");
    assert_eq!(r["isolation_violations"], 0, "{out}");
    assert_eq!(r["unexpected_errors"], 0, "{out}");
    assert!(r["total_ops"].as_u64().unwrap() > 20, "{out}");
    assert!(r["fault_events"].as_u64().unwrap() > 0, "{out}");
    for t in ["tcp", "tls", "tls-psk", "shm"] {
        let p = &r["transports"][t];
        assert!(
            p["count"].as_u64().unwrap() > 0,
            "no operations over {t}: {out}"
        );
        assert!(p["p99_us"].as_u64().unwrap() >= p["p50_us"].as_u64().unwrap());
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("polyline"),
        "{plot}"
    );
}

#[test]
fn keys_survive_graceful_restarts_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("run.json");
    let o = stress()
        .args(["run", "--spawn", "--clients", "6", "--duration", "4s"])
        .args([
            "--transports",
            "tcp,tls,shm",
            "--faults",
            "restart,disconnect",
        ])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "hsm-stress run failed:\n{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(r["restarts"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(r["wrong_results"], 0, "{out}");
    assert_eq!(r["unexpected_errors"], 0, "{out}");
    assert!(r["total_ops"].as_u64().unwrap() > 20, "{out}");
    // Without a server of its own to restart, the fault is refused up front.
    let o = stress()
        .args([
            "run",
            "--profiles",
            tmp.path().to_str().unwrap(),
            "--faults",
            "restart",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("restart fault needs --spawn"));
}

#[test]
fn a_quick_bench_reports_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let o = stress()
        .args([
            "bench",
            "--spawn",
            "--quick",
            "--ops",
            "ping,ed25519-sign",
            "--inflight",
            "1,4",
            "--sessions",
            "6",
        ])
        .args([
            "--json",
            json.to_str().unwrap(),
            "--plot",
            tmp.path().join("b.svg").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "hsm-stress bench failed:\n{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(r["cpus"].as_u64().unwrap() >= 1);
    assert!(matches!(r["profile"].as_str(), Some("debug" | "release")));
    let all = r["results"].as_array().unwrap();
    // The raw floors are rows of their own, measured in the same run, with float latencies.
    let (floors, results): (Vec<_>, Vec<_>) = all.iter().partition(|x| x["transport"] == "floor");
    let mut floor_ops: Vec<_> = floors.iter().map(|x| x["op"].as_str().unwrap()).collect();
    floor_ops.sort();
    assert_eq!(floor_ops, ["floor-shm", "floor-tcp"], "{out}");
    for f in &floors {
        let (p50, p99) = (f["p50_us"].as_f64().unwrap(), f["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50, "{f}");
        assert!(f["ops_per_sec"].as_f64().unwrap() > 0.0, "{f}");
    }
    // The many-sessions row: every transport at once.
    let (many, results): (Vec<_>, Vec<_>) = results.into_iter().partition(|x| x["clients"] == 6);
    assert_eq!(many.len(), 1, "{out}");
    assert_eq!(many[0]["transport"], "tcp+tls+tls-psk+shm", "{out}");
    assert!(many[0]["ops_per_sec"].as_f64().unwrap() > 0.0, "{out}");
    assert_eq!(results.len(), 4 * 2 * 2, "{out}");
    for x in results {
        for f in [
            "transport",
            "op",
            "inflight",
            "clients",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "ratio",
        ] {
            assert!(x.get(f).is_some(), "missing {f} in {x}");
        }
        assert!(x["ops_per_sec"].as_f64().unwrap() > 0.0, "{x}");
        // Only ping has no in-process baseline.
        assert_eq!(x["ratio"].is_null(), x["op"] == "ping", "{x}");
    }
    // 64 idle shm sessions must leave the server idle (spinning is bounded to the spin window
    // after each request, then every side sleeps on its futex): a spinning session would show
    // as tens of percent of a core.
    let idle = &r["idle"];
    assert_eq!(idle["sessions"], 64, "{out}");
    assert!(idle["cpu_percent"].as_f64().unwrap() < 20.0, "{out}");
    let baseline = r["baseline"].as_array().unwrap();
    assert_eq!(baseline.len(), 1);
    assert_eq!(baseline[0]["op"], "ed25519-sign");
    assert!(baseline[0]["ops_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_lifecycle_bench_reports_counter_increments_and_the_audit_cost() {
    let (r, out) = spawned_bench(&[
        "--transports",
        "tcp,shm",
        "--ops",
        "counter-inc,ed25519-sign",
        "--inflight",
        "1,16",
        "--idle-sessions",
        "0",
    ]);
    let results = r["results"].as_array().unwrap();
    for t in ["tcp", "shm"] {
        for n in [1, 16] {
            let row = results
                .iter()
                .find(|x| x["op"] == "counter-inc" && x["transport"] == t && x["inflight"] == n)
                .unwrap_or_else(|| panic!("no counter-inc {t} {n}: {out}"));
            assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
            assert!(
                row["ratio"].is_null(),
                "a counter has no in-process baseline"
            );
        }
    }
    // Durable increments share fsyncs: 16 in flight beat one at a time.
    let ops = |n: u64| {
        results
            .iter()
            .find(|x| x["op"] == "counter-inc" && x["transport"] == "tcp" && x["inflight"] == n)
            .unwrap()["ops_per_sec"]
            .as_f64()
            .unwrap()
    };
    assert!(ops(16) > ops(1), "group commit: {out}");
    assert!(results.iter().any(|x| x["op"] == "fsync-4k"), "{out}");
    let audit = r["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "{out}");
    for a in audit {
        assert_eq!(a["op"], "ed25519-sign");
        assert!(a["changes_ops_per_sec"].as_f64().unwrap() > 0.0, "{a}");
        assert!(a["all_ops_per_sec"].as_f64().unwrap() > 0.0, "{a}");
    }
    assert!(out.contains("audit level all vs changes"), "{out}");
}

#[test]
fn the_keygen_bench_reports_the_fsync_floor_and_the_durable_key_targets() {
    let (r, out) = spawned_bench(&[
        "--transports",
        "tcp",
        "--ops",
        "keygen-persistent,keygen-session,ed25519-sign,ed25519-sign-session",
        "--inflight",
        "16",
    ]);
    let results = r["results"].as_array().unwrap();
    let row = |op: &str| {
        results
            .iter()
            .find(|x| x["op"] == op)
            .unwrap_or_else(|| panic!("no {op}: {out}"))
    };
    for op in [
        "keygen-persistent",
        "keygen-session",
        "ed25519-sign-session",
    ] {
        assert!(row(op)["ops_per_sec"].as_f64().unwrap() > 0.0, "{out}");
        assert!(!row(op)["ratio"].is_null(), "{out}");
    }
    let floor = row("fsync-4k");
    assert_eq!(floor["transport"], "disk");
    assert!(floor["p50_us"].as_f64().unwrap() >= 1.0);
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{out}");
    for t in targets {
        assert!(t["ratio"].as_f64().unwrap() > 0.0 && t["goal"].as_f64().unwrap() > 0.0);
    }
    assert!(
        out.contains("target keygen-persistent / keygen-session over tcp at 16"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_nonzero_with_a_message() {
    let o = stress().args(["run"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = stress()
        .args(["bench", "--spawn", "--ops", "rsa-sign"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown op"));
}

#[test]
fn clients_in_separate_processes_merge_into_one_report() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("run.json");
    let o = stress()
        .args(["run", "--spawn", "--procs", "3", "--clients", "6"])
        .args(["--duration", "2s", "--transports", "shm,tcp"])
        .args(["--faults", "disconnect,malformed"])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "hsm-stress run --procs failed:\n{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["wrong_results"], 0, "{out}");
    assert_eq!(r["isolation_violations"], 0, "{out}");
    assert_eq!(r["unexpected_errors"], 0, "{out}");
    assert!(r["fault_events"].as_u64().unwrap() > 0, "{out}");
    // Both transports' histograms came back from the children and merged.
    let total: u64 = ["shm", "tcp"]
        .iter()
        .map(|t| r["transports"][t]["count"].as_u64().unwrap())
        .sum();
    assert!(total > 20, "{out}");
    assert!(
        r["transports"]["shm"]["count"].as_u64().unwrap() > 0,
        "{out}"
    );
    // The restart fault needs one process that owns the server's clients.
    let o = stress()
        .args(["run", "--spawn", "--procs", "2", "--clients", "2"])
        .args(["--duration", "1s", "--faults", "restart"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot run with --procs"));
}
