//! `hsm-stress bench --spawn --store-url`: nodes on a real PostgreSQL against SQLite, two
//! nodes against one, failover and invalidation, in one run, in a database the bench makes
//! and drops.

use ferrohsm_test_support::postgres::Cluster;

use super::*;

#[test]
fn the_cluster_bench_pairs_postgres_with_sqlite_and_times_failover_and_invalidation() {
    let Some(pg) = Cluster::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("bench.json");
    let out = succeeds(
        stress()
            .args(["bench", "--spawn", "--quick", "--transports", "tcp"])
            .args(["--ops", "ping", "--inflight", "1", "--idle-sessions", "0"])
            .args(["--store-url", &pg.url("postgres")])
            .args(["--json", utf8(&json_f)])
            .env("HSMD_STORE_PASSWORD", pg.password()),
    );
    let r = json(&json_f);
    let rows = r["results"].as_array().unwrap();
    let row = |op: &str, inflight: u64| {
        rows.iter()
            .find(|x| x["op"] == op && x["inflight"] == inflight)
            .unwrap_or_else(|| panic!("no row {op} at {inflight} in\n{out}"))
    };
    for (op, inflight) in [
        ("keygen-persistent (postgres)", 16),
        ("keygen-persistent (sqlite)", 16),
        ("counter-inc (postgres)", 1),
        ("ed25519-sign (postgres)", 16),
        ("keygen-persistent (two nodes)", 16),
        ("ed25519-sign (one node)", 16),
    ] {
        assert!(f(&row(op, inflight)["ops_per_sec"]) > 0.0, "{op}: {out}");
    }
    // The PostgreSQL rows carry their ratio to SQLite, measured in this run.
    let pg_keygen = row("keygen-persistent (postgres)", 16);
    let lite_keygen = row("keygen-persistent (sqlite)", 16);
    let ratio = f(&pg_keygen["ratio"]);
    let want = f(&pg_keygen["ops_per_sec"]) / f(&lite_keygen["ops_per_sec"]);
    assert!(
        (ratio - want).abs() < 1e-6 * want.max(1.0),
        "{ratio} vs {want}"
    );
    let targets = r["targets"].as_array().unwrap();
    for name in [
        "keygen-persistent postgres / sqlite",
        "keygen-persistent two nodes / one",
        "invalidation lag (ms): delete on node 1 to refusal on node 2, p99",
        "failover (ms): SIGKILL of node 1 to an answer from node 2, p50",
    ] {
        let t = targets
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no target {name} in\n{out}"));
        let v = f(&t["ratio"]);
        assert!(v.is_finite() && v > 0.0, "{name}: {t}");
    }
    // The bench's own database is gone again.
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'ferrohsm_bench_%'"
        ),
        "0"
    );
}

#[test]
fn a_run_over_two_nodes_with_restarts_and_faults_finds_nothing_wrong() {
    let Some(pg) = Cluster::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    // Two nodes on one database, the identities spread over them, each restarted in turn
    // under load: every worker then checks each persistent key it made, through either node.
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--nodes", "2", "--clients", "6"])
            .args(["--store-url", &pg.url("postgres"), "--duration", "6s"])
            .args(["--transports", "tcp,tls,tls-psk"])
            .args(["--faults", "restart,disconnect,slow"])
            .args(["--json", utf8(&json_f)])
            .env("HSMD_STORE_PASSWORD", pg.password()),
    );
    let r = json(&json_f);
    assert!(u(&r["restarts"]) >= 2, "both nodes restarted: {out}");
    assert_clean_run(&r, &out);
    assert!(u(&r["total_ops"]) > 0, "{out}");
    // More than one node needs the shared store.
    refused(
        stress().args(["run", "--spawn", "--nodes", "2", "--duration", "1s"]),
        1,
        "--nodes above 1 needs --store-url",
    );
}
