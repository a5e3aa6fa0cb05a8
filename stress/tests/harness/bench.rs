//! `hsm-stress bench`: every field of the report, a running hsmd by profile, the lifecycle
//! and keygen benches and their targets.

use super::plot::assert_bench_plot;
use super::*;

#[test]
fn a_quick_bench_reports_every_field_and_plots_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (json_f, svg) = (tmp.path().join("bench.json"), tmp.path().join("b.svg"));
    let out = succeeds(
        stress()
            .args(["bench", "--spawn", "--quick"])
            // Not ed25519-sign: that would add the audit-cost rounds, which the lifecycle
            // bench below covers.
            .args(["--ops", "ping,chacha20poly1305-encrypt-64"])
            .args(["--inflight", "1,4", "--sessions", "6"])
            .args(["--json", utf8(&json_f), "--plot", utf8(&svg)]),
    );
    let r = json(&json_f);
    assert!(u(&r["cpus"]) >= 1);
    assert!(matches!(r["profile"].as_str(), Some("debug" | "release")));
    let all = r["results"].as_array().unwrap();
    // The raw floors are rows of their own, measured in the same run, with float latencies.
    let (floors, results): (Vec<_>, Vec<_>) = all.iter().partition(|x| x["transport"] == "floor");
    let mut floor_ops: Vec<_> = floors.iter().map(|x| x["op"].as_str().unwrap()).collect();
    floor_ops.sort();
    assert_eq!(
        floor_ops,
        ["floor-shm", "floor-tcp", "floor-tcp-spin"],
        "{out}"
    );
    for fl in &floors {
        let (p50, p99) = (f(&fl["p50_us"]), f(&fl["p99_us"]));
        assert!(p50 > 0.0 && p99 >= p50, "{fl}");
        assert!(f(&fl["ops_per_sec"]) > 0.0, "{fl}");
    }
    // The many-sessions row: every transport at once.
    let (many, results): (Vec<_>, Vec<_>) = results.into_iter().partition(|x| x["clients"] == 6);
    assert_eq!(many.len(), 1, "{out}");
    assert_eq!(many[0]["transport"], "tcp+tls+tls-psk+shm", "{out}");
    assert!(f(&many[0]["ops_per_sec"]) > 0.0, "{out}");
    assert_eq!(results.len(), 4 * 2 * 2, "{out}");
    for x in results {
        for field in [
            "transport",
            "op",
            "inflight",
            "clients",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "ratio",
        ] {
            assert!(x.get(field).is_some(), "missing {field} in {x}");
        }
        assert!(f(&x["ops_per_sec"]) > 0.0, "{x}");
        // Only ping has no in-process baseline.
        assert_eq!(x["ratio"].is_null(), x["op"] == "ping", "{x}");
        // The price of a request in CPU, on each side (the server was spawned: its id is known).
        assert!(f(&x["cpu_us_client"]) > 0.0, "{x}");
        assert!(f(&x["cpu_us_server"]) > 0.0, "{x}");
    }
    // The idle measurement ran over the default 64 idle sessions of every transport (how idle
    // hsmd stays is a performance bound: `stress_idle_sessions_leave_hsmd_idle`).
    let idle = r["idle"].as_array().unwrap();
    let mut idle_over: Vec<_> = idle
        .iter()
        .map(|i| i["transport"].as_str().unwrap())
        .collect();
    idle_over.sort();
    assert_eq!(idle_over, ["shm", "tcp", "tls", "tls-psk"], "{out}");
    for i in idle {
        assert_eq!(i["sessions"], 64, "{out}");
        assert!(
            f(&i["seconds"]) > 0.0 && f(&i["cpu_percent"]) >= 0.0,
            "{out}"
        );
    }
    let baseline = r["baseline"].as_array().unwrap();
    assert_eq!(baseline.len(), 1);
    assert_eq!(baseline[0]["op"], "chacha20poly1305-encrypt-64");
    assert!(f(&baseline[0]["ops_per_sec"]) > 0.0);
    assert_eq!(r["audit"].as_array().unwrap().len(), 0, "{out}");
    assert_bench_plot(&std::fs::read_to_string(&svg).unwrap(), &r);
}

#[test]
fn bench_measures_a_running_hsmd_given_by_a_profile() {
    let data = Data::init("alice");
    let _hsmd = data.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("bench.json");
    let out = succeeds(
        stress()
            .args([
                "bench",
                "--profile",
                utf8(&data.profile("alice")),
                "--quick",
            ])
            .args(["--transports", "tcp,tls-psk", "--ops", "ping,counter-inc"])
            .args(["--inflight", "1", "--json", utf8(&json_f)]),
    );
    let r = json(&json_f);
    let results = r["results"].as_array().unwrap();
    for t in ["tcp", "tls-psk"] {
        for op in ["ping", "counter-inc"] {
            let row = results
                .iter()
                .find(|x| x["transport"] == t && x["op"] == op && x["inflight"] == 1)
                .unwrap_or_else(|| panic!("no {op} over {t}: {out}"));
            assert!(f(&row["ops_per_sec"]) > 0.0, "{row}");
            // Its own CPU the client knows; the server's, not started here, it does not.
            assert!(f(&row["cpu_us_client"]) > 0.0, "{row}");
            assert!(row["cpu_us_server"].is_null(), "{row}");
        }
    }
    // Nothing of its own was started: no idle measurement, no second hsmd for the audit cost.
    assert_eq!(r["idle"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(r["audit"].as_array().unwrap().len(), 0, "{out}");
    // It ran against this hsmd, as alice: her `bench-counter` went up, and the persistent
    // keys the bench made are gone again.
    let hsm = data.connect("alice");
    let value = hsm
        .block_on(hsm.client().counter_read(&label_of("bench-counter")))
        .unwrap_or_else(|e| panic!("no bench-counter: {e}: {out}"));
    assert!(value > 0, "{out}");
    let left: Vec<String> = hsm
        .list()
        .unwrap()
        .iter()
        .map(|k| k.label.to_string())
        .collect();
    assert!(left.iter().all(|l| !l.starts_with("bench-")), "{left:?}");
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
            assert!(f(&row["ops_per_sec"]) > 0.0, "{row}");
            assert!(
                row["ratio"].is_null(),
                "a counter has no in-process baseline"
            );
        }
    }
    assert!(results.iter().any(|x| x["op"] == "fsync-4k"), "{out}");
    // --idle-sessions 0 skips the idle measurement.
    assert_eq!(r["idle"].as_array().unwrap().len(), 0, "{out}");
    let audit = r["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "{out}");
    let mut depths: Vec<u64> = audit.iter().map(|a| u(&a["inflight"])).collect();
    depths.sort();
    assert_eq!(depths, [1, 16], "{out}");
    for a in audit {
        assert_eq!(a["op"], "ed25519-sign");
        assert_eq!(a["transport"], "tcp");
        assert!(f(&a["changes_ops_per_sec"]) > 0.0, "{a}");
        assert!(f(&a["all_ops_per_sec"]) > 0.0, "{a}");
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
        assert!(f(&row(op)["ops_per_sec"]) > 0.0, "{out}");
        assert!(!row(op)["ratio"].is_null(), "{out}");
    }
    let floor = row("fsync-4k");
    assert_eq!(floor["transport"], "disk");
    assert!(f(&floor["p50_us"]) > 0.0, "{out}");
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{out}");
    for t in targets {
        assert!(f(&t["ratio"]) > 0.0 && f(&t["goal"]) > 0.0, "{t}");
        assert_eq!(t["met"].as_bool(), Some(met(t)), "{t}");
    }
    assert!(
        out.contains("target keygen-persistent / keygen-session over tcp at 16"),
        "{out}"
    );
}

#[test]
fn the_find_bench_compares_a_large_namespace_with_a_small_one_and_cleans_up() {
    let data = Data::init("alice");
    let _hsmd = data.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("bench.json");
    let out = succeeds(
        stress()
            .args([
                "bench",
                "--quick",
                "--profile",
                utf8(&data.profile("alice")),
            ])
            .args(["--transports", "tcp", "--ops", "ping", "--inflight", "1"])
            .args(["--idle-sessions", "0", "--find-keys", "300"])
            .args(["--json", utf8(&json_f)]),
    );
    let r = json(&json_f);
    let results = r["results"].as_array().unwrap();
    for op in [
        "find-id@10",
        "find-label@10",
        "find-id@300",
        "find-label@300",
    ] {
        let row = results
            .iter()
            .find(|x| x["op"] == op && x["transport"] == "tcp")
            .unwrap_or_else(|| panic!("no {op}: {out}"));
        assert!(f(&row["ops_per_sec"]) > 0.0, "{out}");
        assert!(f(&row["p99_us"]) >= f(&row["p50_us"]), "{out}");
    }
    let targets: Vec<&Value> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("find by"))
        .collect();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "find by id at 300 keys / at 10 keys",
            "find by label at 300 keys / at 10 keys"
        ],
        "{out}"
    );
    for t in targets {
        assert!(f(&t["ratio"]) > 0.0, "{t}");
        assert_eq!(t["met"].as_bool(), Some(met(t)), "{t}");
    }
    // Every key the bench made is gone again.
    let listed = data.ctl("alice", &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.trim(), "", "the bench left keys behind: {listed}");
}

/// Whether a target is met, by its own ratio, goal and direction.
fn met(t: &Value) -> bool {
    let (ratio, goal) = (f(&t["ratio"]), f(&t["goal"]));
    if t["at_most"].as_bool().unwrap() {
        ratio <= goal
    } else {
        ratio >= goal
    }
}

/// `hsm-stress bench --spawn --quick ARGS --json F`, which must succeed: its JSON report and
/// everything it printed.
fn spawned_bench(args: &[&str]) -> (Value, String) {
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("bench.json");
    let out = succeeds(
        stress()
            .args(["bench", "--spawn", "--quick"])
            .args(args)
            .args(["--json", utf8(&json_f)]),
    );
    (json(&json_f), out)
}

// Performance bounds: measured, never asserted in a default run.

/// 64 idle sessions over each transport leave the server idle (spinning is bounded to the spin
/// window after each request, then every side sleeps on its futex or its socket): a spinning
/// session would show as tens of percent of a core.
#[test]
#[ignore = "performance bound: run with --ignored on a quiet machine"]
fn stress_idle_sessions_leave_hsmd_idle() {
    let (r, out) = spawned_bench(&["--ops", "ping", "--inflight", "1"]);
    let idle = r["idle"].as_array().unwrap();
    assert_eq!(idle.len(), 4, "{out}");
    for i in idle {
        assert_eq!(i["sessions"], 64, "{out}");
        // Under 1% of a core per transport in the bench; a test on a shared machine allows more.
        assert!(f(&i["cpu_percent"]) < 5.0, "{out}");
    }
}

/// Durable increments share fsyncs: 16 in flight beat one at a time.
#[test]
#[ignore = "performance bound: run with --ignored on a quiet machine"]
fn stress_group_commit_makes_concurrent_counter_increments_faster() {
    let (r, out) = spawned_bench(&[
        "--transports",
        "tcp",
        "--ops",
        "counter-inc",
        "--inflight",
        "1,16",
        "--idle-sessions",
        "0",
    ]);
    let ops = |n: u64| {
        let row = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["op"] == "counter-inc" && x["inflight"] == n)
            .unwrap_or_else(|| panic!("no counter-inc at {n}: {out}"))
            .clone();
        f(&row["ops_per_sec"])
    };
    assert!(ops(16) > ops(1), "group commit: {out}");
}
