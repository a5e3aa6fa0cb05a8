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
use ferrohsm_test_support::files::utf8;
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

mod bench;
mod cluster;
mod plot;
mod run;

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
