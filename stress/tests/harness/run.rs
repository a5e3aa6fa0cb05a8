//! `hsm-stress run`: faults, restarts, several identities, exact counts, the flood, several
//! processes.

use super::plot::assert_run_plot;
use super::*;

#[test]
fn a_short_run_with_faults_finds_nothing_wrong_and_plots_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (json_f, svg) = (tmp.path().join("run.json"), tmp.path().join("run.svg"));
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--clients", "8", "--duration", "3s"])
            .args(["--transports", "tcp,tls,tls-psk,shm"])
            .args(["--faults", "disconnect,reconnect,malformed,slow"])
            .args(["--json", utf8(&json_f), "--plot", utf8(&svg)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    assert!(u(&r["fault_events"]) > 0, "{out}");
    for t in ferrohsm_test_support::peer::TRANSPORT_NAMES {
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
            .args(["--json", utf8(&json_f)]),
    );
    let r = json(&json_f);
    assert!(u(&r["restarts"]) >= 1, "no restart happened: {out}");
    assert_clean_run(&r, &out);
    assert!(u(&r["total_ops"]) > 0, "{out}");
    // Without a server of its own to restart, the fault is refused up front.
    refused(
        stress().args(["run", "--profiles", utf8(tmp.path()), "--faults", "restart"]),
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
            .args(["run", "--profiles", utf8(&clients), "--clients", "6"])
            .args(["--ops", "400", "--transports", "tcp,tls-psk"])
            .args(["--json", utf8(&json_f)]),
    );
    let r = json(&json_f);
    assert_clean_run(&r, &out);
    // Every identity's keys (ML-DSA and ML-KEM among them) were probed by the others, and
    // nothing was reachable; ML-KEM secrets were compared (a wrong one fails the clean run).
    assert!(op_count(&r, "probe") > 0, "{out}");
    assert!(op_count(&r, "kem") > 0, "{out}");
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
            .args(["run", "--profiles", utf8(&data.dir.join("clients"))])
            .args(["--clients", "1", "--ops", "57", "--transports", "tcp"])
            .args(["--json", utf8(&json_f)]),
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
                .args(["run", "--profiles", utf8(&data.dir.join("clients"))])
                .args(["--clients", "8", "--ops", "50", "--transports", "tcp"])
                .args(["--json", utf8(&json_f)]),
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
                .args(["run", "--profiles", utf8(&clients), "--clients", "2"])
                .args(["--ops", "40", "--transports", "tcp"])
                .args(["--json", utf8(&json_f)]),
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
            .args(["run", "--profiles", utf8(tmp.path()), "--clients", "2"])
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
                .args(["run", "--profiles", utf8(&data.dir.join("clients"))])
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
            .args(["--json", utf8(&json_f)]),
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
fn clients_in_separate_processes_merge_into_one_report() {
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    let out = succeeds(
        stress()
            .args(["run", "--spawn", "--procs", "3", "--clients", "6"])
            .args(["--duration", "2s", "--transports", "shm,tcp"])
            .args(["--faults", "disconnect,malformed"])
            .args(["--json", utf8(&json_f)]),
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
