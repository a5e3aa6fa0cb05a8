//! `hsm-stress` itself, end to end, on this build's binaries: short runs over every transport
//! with every fault must find nothing wrong, `run` against a running `hsmd` with several
//! identities and an exact operation count, the flood fault, benches against a spawned and a
//! running `hsmd`, and the reports and charts they write, checked against what the README says.
//!
//! Default tests assert outcomes, never speed: a performance claim lives in an `#[ignore]`
//! test named `stress_*` (`cargo test -p ferrohsm-stress -- --ignored stress_`).
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ferrohsm_proto::Status;
use ferrohsm_test_support::daemon::output_within;
use ferrohsm_test_support::keys::label_of;
use ferrohsm_test_support::{Data, bins, status};
use serde_json::Value;

/// How long one `hsm-stress` command may take: its own few seconds, plus a debug build's
/// start-up on a machine busy with other tests.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

fn stress() -> Command {
    Command::new(bins::hsm_stress())
}

/// Runs `hsm-stress` to its end (within [`RUN_DEADLINE`]): its output and everything it
/// printed, for failure messages.
fn run(c: &mut Command) -> (Output, String) {
    run_within(c, RUN_DEADLINE)
}

/// Runs `hsm-stress` with a deadline of `within` (a hang is the failure these look for).
fn run_within(c: &mut Command, within: Duration) -> (Output, String) {
    let o = output_within(c, within);
    let out = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o, out)
}

/// Runs `hsm-stress`, which must succeed; everything it printed.
fn succeeds(c: &mut Command) -> String {
    let (o, out) = run(c);
    assert!(o.status.success(), "hsm-stress failed:\n{out}");
    out
}

/// Runs `hsm-stress`, which must fail with `code` and print `line` on stderr.
fn refused(c: &mut Command, code: i32, line: &str) {
    let (o, out) = run(c);
    assert_eq!(o.status.code(), Some(code), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().any(|l| l.contains(line)), "{line:?} in\n{out}");
}

fn json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The run report's verdict: nothing wrong, and its counts agree with each other: every
/// operation is in one (transport, op) row, and the per-transport totals add up to the same.
fn assert_clean_run(r: &Value, out: &str) {
    assert_eq!(r["wrong_results"], 0, "{out}");
    assert_eq!(r["isolation_violations"], 0, "{out}");
    assert_eq!(r["unexpected_errors"], 0, "{out}");
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{out}");
    let total = u(&r["total_ops"]);
    let rows: u64 = r["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| u(&x["count"]))
        .sum();
    assert_eq!(rows, total, "operation rows vs total_ops: {out}");
    let per_transport: u64 = r["transports"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| u(&t["count"]))
        .sum();
    assert_eq!(per_transport, total, "transport totals vs total_ops: {out}");
    for (t, p) in r["transports"].as_object().unwrap() {
        assert!(u(&p["p99_us"]) >= u(&p["p50_us"]), "{t}: {out}");
    }
}

/// How many operations of kind `op` the run report counts, over every transport.
fn op_count(r: &Value, op: &str) -> u64 {
    r["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["op"] == op)
        .map(|x| u(&x["count"]))
        .sum()
}

/// The `points` of an SVG `<polyline>` line, as (x, y).
fn points(line: &str) -> Vec<(f64, f64)> {
    let p = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    p.split_whitespace()
        .map(|xy| {
            let (x, y) = xy.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// The text of an SVG `<text>` line.
fn text_of(line: &str) -> &str {
    line.split('>').nth(1).unwrap().split('<').next().unwrap()
}

/// The run chart (`--plot`), checked against the README ("an SVG of throughput and p99 over
/// time") and the JSON report of the same run: two charts, operations per second and p99
/// latency, each with one line per transport over the run's seconds; the throughput line of
/// each transport, read back from its pixels, adds up to that transport's operation count.
fn assert_run_plot(svg: &str, r: &Value, out: &str) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"), "{svg}");
    let lines: Vec<&str> = svg.lines().collect();
    let titles: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("<text") && l.contains("(max "))
        .map(|l| text_of(l))
        .collect();
    assert_eq!(titles.len(), 2, "{svg}");
    assert!(
        titles[0].starts_with("operations per second (max "),
        "{svg}"
    );
    assert!(titles[1].starts_with("p99 latency (us) (max "), "{svg}");
    let max = |t: &str| -> f64 {
        t.rsplit("(max ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap()
    };
    // Each polyline is followed by its legend: the transport's name.
    let series: Vec<(&str, Vec<(f64, f64)>)> = lines
        .windows(2)
        .filter(|w| w[0].starts_with("<polyline"))
        .map(|w| (text_of(w[1]), points(w[0])))
        .collect();
    let transports: Vec<&str> = r["transports"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(!transports.is_empty(), "{out}");
    let n = transports.len();
    assert_eq!(
        series.len(),
        2 * n,
        "one line per transport in each chart: {svg}"
    );
    let seconds = f(&r["elapsed_s"]).ceil() as usize + 1;
    // Chart geometry (report.rs): 800 x 260 per chart, 50 px padding, the plot area 220 px
    // high starting 40 px (first chart) or 320 px (second) from the top.
    let (left, right, height) = (50.0, 750.0, 220.0);
    for (chart, top) in [(0, 40.0), (1, 320.0)] {
        let lines = &series[chart * n..(chart + 1) * n];
        let names: Vec<&str> = lines.iter().map(|(t, _)| *t).collect();
        assert_eq!(names, transports, "legends of chart {chart}: {svg}");
        let m = max(titles[chart]);
        let mut highest = f64::MAX;
        for (t, pts) in lines {
            assert!(
                !pts.is_empty() && pts.len() <= seconds,
                "{t}: {} points in a {seconds} s run: {svg}",
                pts.len()
            );
            assert_eq!(pts[0].0, left, "{t}: {svg}");
            assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "{t}: {svg}");
            for &(x, y) in pts {
                assert!((left..=right).contains(&x), "{t}: x {x}: {svg}");
                assert!((top..=top + height).contains(&y), "{t}: y {y}: {svg}");
                highest = highest.min(y);
            }
            if chart == 0 {
                // Operations per second, back from the pixels (rounded to 0.1 px).
                let sum: f64 = pts
                    .iter()
                    .map(|&(_, y)| m * (1.0 - (y - top) / height))
                    .sum();
                let want = u(&r["transports"][*t]["count"]) as f64;
                let slack = pts.len() as f64 * (m * 0.05 / height + 0.5);
                assert!(
                    (sum - want).abs() <= slack,
                    "{t}: the throughput line adds up to {sum:.1}, the report counts {want}: {svg}"
                );
            }
        }
        // The title's maximum is the highest point of the chart.
        assert_eq!(highest, top, "chart {chart} peaks at its top: {svg}");
    }
}

/// The bench chart (`--plot`): one bar per result row, labelled `TRANSPORT OP xINFLIGHT
/// cCLIENTS`, its length proportional to the row's ops/s, and a black tick at the in-process
/// baseline of its op.
fn assert_bench_plot(svg: &str, r: &Value) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"), "{svg}");
    let rows = r["results"].as_array().unwrap();
    let baseline = r["baseline"].as_array().unwrap();
    let lines: Vec<&str> = svg.lines().collect();
    let bars: Vec<(&str, f64)> = lines
        .windows(2)
        .filter(|w| w[0].starts_with("<text x=\"4\"") && w[1].starts_with("<rect"))
        .map(|w| {
            let width = w[1]
                .split("width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (text_of(w[0]), width.parse().unwrap())
        })
        .collect();
    assert_eq!(bars.len(), rows.len(), "one bar per result: {svg}");
    let max = rows
        .iter()
        .map(|x| f(&x["ops_per_sec"]))
        .chain(baseline.iter().map(|b| f(&b["ops_per_sec"])))
        .fold(1.0, f64::max);
    for ((label, width), x) in bars.iter().zip(rows) {
        let want = format!(
            "{} {} x{} c{}",
            x["transport"].as_str().unwrap(),
            x["op"].as_str().unwrap(),
            x["inflight"],
            x["clients"]
        );
        assert_eq!(*label, want, "{svg}");
        let expect = f(&x["ops_per_sec"]) / max * (900.0 - 260.0 - 80.0);
        assert!(
            (width - expect).abs() <= 0.1,
            "{want}: {width} px, expected {expect:.2}"
        );
    }
    let with_baseline = rows
        .iter()
        .filter(|x| baseline.iter().any(|b| b["op"] == x["op"]))
        .count();
    let ticks = lines
        .iter()
        .filter(|l| l.starts_with("<line") && l.contains("stroke=\"black\""))
        .count();
    assert_eq!(
        ticks, with_baseline,
        "a baseline tick per row with one: {svg}"
    );
}

#[test]
fn a_short_run_with_faults_finds_nothing_wrong_and_plots_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (json_f, svg) = (tmp.path().join("run.json"), tmp.path().join("run.svg"));
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--clients", "8", "--duration", "3s"])
            .args(["--transports", "tcp,tls,tls-psk,shm"])
            .args(["--faults", "disconnect,reconnect,malformed,slow"])
            .args(["--json", s(&json_f), "--plot", s(&svg)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    assert!(u(&r["fault_events"]) > 0, "{out}");
    for t in ["tcp", "tls", "tls-psk", "shm"] {
        assert!(
            u(&r["transports"][t]["count"]) > 0,
            "no operations over {t}: {out}"
        );
    }
    // A spawned server reports its peak memory.
    assert!(u(&r["server_peak_rss_kib"]) > 0, "{out}");
    assert_run_plot(&std::fs::read_to_string(&svg).unwrap(), &r, &out);
}

#[test]
fn keys_survive_graceful_restarts_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    // The restart fault restarts hsmd after each second of load, so a 3 s run restarts it
    // at least once; every worker then checks that each persistent key it made is there.
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--clients", "6", "--duration", "3s"])
            .args(["--transports", "tcp,tls,shm"])
            .args(["--faults", "restart,disconnect"])
            .args(["--json", s(&json_f)]),
    );
    let r = json(&json_f);
    assert!(u(&r["restarts"]) >= 1, "no restart happened: {out}");
    assert_clean_run(&r, &out);
    assert!(u(&r["total_ops"]) > 0, "{out}");
    // Without a server of its own to restart, the fault is refused up front.
    refused(
        stress().args(["run", "--profiles", s(tmp.path()), "--faults", "restart"]),
        1,
        "hsm-stress: the restart fault needs --spawn (it restarts the hsmd it started)",
    );
}

#[test]
fn run_spreads_clients_over_every_profile_as_separate_identities() {
    let data = Data::init("alice,bob,carol");
    let _hsmd = data.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    let clients = data.dir.join("clients");
    let out = succeeds(
        stress()
            .args(["run", "--profiles", s(&clients), "--clients", "6"])
            .args(["--ops", "300", "--transports", "tcp,tls-psk"])
            .args(["--json", s(&json_f)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    // Every identity's keys were probed by the others, and nothing was reachable.
    assert!(op_count(&r, "probe") > 0, "{out}");
    // Client i runs as profile i mod 3 (sorted: alice, bob, carol) and keeps a counter
    // `NAME-wI-TAG-ctr` in its own identity's namespace, which no other identity sees.
    let tag = r["run_tag"].as_str().unwrap();
    assert_eq!(tag.len(), 8, "{out}");
    for (k, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let hsm = data.connect(name);
        for i in 0..6 {
            let owner = ["alice", "bob", "carol"][i % 3];
            let counter = label_of(&format!("{owner}-w{i}-{tag}-ctr"));
            let read = hsm.block_on(hsm.client().counter_read(&counter));
            if i % 3 == k {
                read.unwrap_or_else(|e| panic!("{name}: {counter}: {e}: {out}"));
            } else {
                assert_eq!(status(read), Status::CounterNotFound, "{name}: {counter}");
            }
        }
    }
}

#[test]
fn run_with_ops_stops_after_exactly_that_many_operations() {
    let data = Data::init("alice,bob");
    let _hsmd = data.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    let out = succeeds(
        stress()
            .args(["run", "--profiles", s(&data.dir.join("clients"))])
            .args(["--clients", "1", "--ops", "57", "--transports", "tcp"])
            .args(["--json", s(&json_f)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    assert_eq!(u(&r["total_ops"]), 57, "{out}");
    assert!(out.contains("\n57 ops in "), "{out}");
}

#[test]
fn run_with_ops_and_several_clients_stops_after_exactly_that_many_operations() {
    let data = Data::init("alice,bob");
    let _hsmd = data.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    for _ in 0..5 {
        let out = succeeds(
            stress()
                .args(["run", "--profiles", s(&data.dir.join("clients"))])
                .args(["--clients", "8", "--ops", "50", "--transports", "tcp"])
                .args(["--json", s(&json_f)]),
        );
        assert_eq!(u(&json(&json_f)["total_ops"]), 50, "{out}");
    }
}

#[test]
fn run_against_a_running_hsmd_can_be_repeated() {
    let data = Data::init("alice,bob");
    let _hsmd = data.start();
    let clients = data.dir.join("clients");
    let tmp = tempfile::tempdir().unwrap();
    let mut tags = Vec::new();
    for round in 0..2 {
        let json_f = tmp.path().join(format!("run{round}.json"));
        let (o, out) = run_within(
            stress()
                .args(["run", "--profiles", s(&clients), "--clients", "2"])
                .args(["--ops", "40", "--transports", "tcp"])
                .args(["--json", s(&json_f)]),
            Duration::from_secs(60),
        );
        assert!(o.status.success(), "round {round}: {out}");
        let r = json(&json_f);
        assert_clean_run(&r, &out);
        assert_eq!(u(&r["total_ops"]), 40, "round {round}: {out}");
        tags.push(r["run_tag"].as_str().unwrap().to_string());
    }
    assert_ne!(tags[0], tags[1], "each run has its own tag");
}

#[test]
fn run_with_ops_ends_when_no_client_can_connect() {
    let data = Data::init("alice");
    let _hsmd = data.start();
    // The profile alone, without the key files it names.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(data.profile("alice"), tmp.path().join("alice.toml")).unwrap();
    let (o, out) = run_within(
        stress()
            .args(["run", "--profiles", s(tmp.path()), "--clients", "2"])
            .args(["--ops", "30", "--transports", "tcp"]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("cannot connect"), "{out}");
}

#[test]
fn concurrent_deletes_and_reads_of_one_identity_raise_no_integrity_alarm() {
    // Six clients of one identity: each deletes keys it made while the others list.
    for round in 0..3 {
        let data = Data::init("alice");
        let hsmd = data.start();
        let out = succeeds(
            stress()
                .args(["run", "--profiles", s(&data.dir.join("clients"))])
                .args([
                    "--clients",
                    "6",
                    "--ops",
                    "600",
                    "--transports",
                    "tcp,tls-psk",
                ]),
        );
        let log = hsmd.log();
        assert!(!log.contains("ALARM"), "round {round}: {log}\n{out}");
    }
}

#[test]
fn the_flood_fault_times_the_last_identity_alone_and_under_the_first_ones_flood() {
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    // Two identities (s0, s1): s0 floods, s1 is the light client.
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--clients", "2", "--duration", "3s"])
            .args(["--transports", "tcp", "--faults", "flood"])
            .args(["--json", s(&json_f)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    let fl = &r["flood"];
    assert_eq!(fl["flooder"], "s0", "{out}");
    assert_eq!(fl["light"], "s1", "{out}");
    assert!(u(&fl["light_alone_samples"]) > 0, "{out}");
    assert!(u(&fl["light_flooded_samples"]) > 0, "{out}");
    assert!(u(&fl["flood_digests"]) > 0, "the flood ran: {out}");
    for phase in ["alone", "flooded"] {
        let p50 = u(&fl[format!("light_{phase}_p50_us")]);
        let p99 = u(&fl[format!("light_{phase}_p99_us")]);
        assert!(p50 > 0 && p99 >= p50, "{phase}: {out}");
    }
    // The table says the same, with the flood's shape (16 sessions of 512 KiB digests).
    let line = out
        .lines()
        .find(|l| l.starts_with("flood: s1 light-client signs (2 in flight)"))
        .unwrap_or_else(|| panic!("no flood line: {out}"));
    let digests = format!(
        "while s0 flooded ({} digests of 512 KiB from 16 sessions",
        fl["flood_digests"]
    );
    assert!(line.contains(&digests), "{line}");
    // It times one light client in one process: refused with --procs.
    refused(
        stress()
            .args(["run", "--spawn", "--procs", "2", "--clients", "2"])
            .args(["--duration", "1s", "--faults", "flood"]),
        1,
        "the flood fault cannot run with --procs",
    );
}

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
            .args(["--json", s(&json_f), "--plot", s(&svg)]),
    );
    let r = json(&json_f);
    assert!(u(&r["cpus"]) >= 1);
    assert!(matches!(r["profile"].as_str(), Some("debug" | "release")));
    let all = r["results"].as_array().unwrap();
    // The raw floors are rows of their own, measured in the same run, with float latencies.
    let (floors, results): (Vec<_>, Vec<_>) = all.iter().partition(|x| x["transport"] == "floor");
    let mut floor_ops: Vec<_> = floors.iter().map(|x| x["op"].as_str().unwrap()).collect();
    floor_ops.sort();
    assert_eq!(floor_ops, ["floor-shm", "floor-tcp"], "{out}");
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
    }
    // The idle measurement ran over the default 64 idle shm sessions (how idle hsmd stays
    // is a performance bound: `stress_idle_shm_sessions_leave_hsmd_idle`).
    let idle = &r["idle"];
    assert_eq!(idle["sessions"], 64, "{out}");
    assert!(
        f(&idle["seconds"]) > 0.0 && f(&idle["cpu_percent"]) >= 0.0,
        "{out}"
    );
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
            .args(["bench", "--profile", s(&data.profile("alice")), "--quick"])
            .args(["--transports", "tcp,tls-psk", "--ops", "ping,counter-inc"])
            .args(["--inflight", "1", "--json", s(&json_f)]),
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
        }
    }
    // Nothing of its own was started: no idle measurement, no second hsmd for the audit cost.
    assert!(r["idle"].is_null(), "{out}");
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
    assert!(r["idle"].is_null(), "{out}");
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

/// Whether a target is met, by its own ratio, goal and direction.
fn met(t: &Value) -> bool {
    let (ratio, goal) = (f(&t["ratio"]), f(&t["goal"]));
    if t["at_most"].as_bool().unwrap() {
        ratio <= goal
    } else {
        ratio >= goal
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    // Neither --profiles nor --spawn.
    refused(stress().args(["run"]), 2, "--profiles");
    refused(
        stress().args(["bench", "--spawn", "--ops", "rsa-sign"]),
        2,
        "unknown op",
    );
    refused(
        stress().args(["run", "--spawn", "--faults", "melt"]),
        2,
        "unknown fault \"melt\"",
    );
}

#[test]
fn clients_in_separate_processes_merge_into_one_report() {
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--procs", "3", "--clients", "6"])
            .args(["--duration", "2s", "--transports", "shm,tcp"])
            .args(["--faults", "disconnect,malformed"])
            .args(["--json", s(&json_f)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    assert!(u(&r["fault_events"]) > 0, "{out}");
    // Both transports' histograms came back from the children and merged.
    for t in ["shm", "tcp"] {
        assert!(
            u(&r["transports"][t]["count"]) > 0,
            "no operations over {t}: {out}"
        );
    }
    // The restart fault needs one process that owns the server's clients.
    refused(
        stress()
            .args(["run", "--spawn", "--procs", "2", "--clients", "2"])
            .args(["--duration", "1s", "--faults", "restart"]),
        1,
        "cannot run with --procs",
    );
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
            .args(["--json", s(&json_f)]),
    );
    (json(&json_f), out)
}

// Performance bounds: measured, never asserted in a default run.

/// 64 idle shm sessions leave the server idle (spinning is bounded to the spin window after
/// each request, then every side sleeps on its futex): a spinning session would show as tens
/// of percent of a core.
#[test]
#[ignore = "performance bound: run with --ignored on a quiet machine"]
fn stress_idle_shm_sessions_leave_hsmd_idle() {
    let (r, out) = spawned_bench(&["--transports", "shm", "--ops", "ping", "--inflight", "1"]);
    assert_eq!(r["idle"]["sessions"], 64, "{out}");
    assert!(f(&r["idle"]["cpu_percent"]) < 20.0, "{out}");
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
