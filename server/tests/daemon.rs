//! The real `hsmd` binary: `init`, serving from defaults, config errors, SIGTERM.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;
use ferrohsm_test_support::daemon::{self, Daemon, EXIT_DEADLINE};
use ferrohsm_test_support::files::contents_under;
use ferrohsm_test_support::{Data, wait};

fn run(cwd: &Path, args: &[&str]) -> Output {
    let mut c = daemon::hsmd_command();
    c.args(args).current_dir(cwd);
    daemon::output_within(&mut c, EXIT_DEADLINE)
}

fn ping(profile: &Path) {
    let p = Profile::load(profile).unwrap();
    BlockingClient::connect(&p, None).unwrap().ping().unwrap();
}

#[test]
fn init_refuses_a_non_empty_dir_without_force_and_force_keeps_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let ds = d.to_str().unwrap();
    let init = |extra: &[&str]| {
        let mut args = vec!["init", "--dir", ds, "--clients", "alice"];
        args.extend_from_slice(extra);
        run(tmp.path(), &args)
    };
    assert!(init(&[]).status.success());
    let key = std::fs::read(d.join("clients/alice.key")).unwrap();
    let again = init(&[]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert!(init(&["--force"]).status.success());
    assert_eq!(
        std::fs::read(d.join("clients/alice.key")).unwrap(),
        key,
        "--force keeps keys"
    );
    assert_eq!(
        init(&["--force", "--tcp", "not-an-address"]).status.code(),
        Some(2)
    );
    let bad = init(&["--force", "--clients", "9lives"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "hsmd: --clients: invalid client name \"9lives\": expected a letter then up to 63 of \
         [A-Za-z0-9._-]\n"
    );
    // An existing empty directory is accepted.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        run(
            tmp.path(),
            &["init", "--dir", empty.to_str().unwrap(), "--clients", "a"]
        )
        .status
        .success()
    );
}

#[test]
fn bad_configs_are_refused_with_the_file_and_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[tcp]\naddr = \"0.0.0.0:7301\"\n", "allow_insecure_remote"),
        ("[tcp]\naddr = \"localhost\"\n", "tcp.addr"),
        (
            "[server]\nwindow = 0\n[tcp]\naddr = \"127.0.0.1:0\"\n",
            "server.window",
        ),
        (
            "[tcp]\naddr = \"127.0.0.1:0\"\n[clients.a]\nauth_public_key = \"zz\"\n",
            "clients.a.auth_public_key",
        ),
        ("[tcp]\naddr = \"127.0.0.1:0\"\ntypo = 1\n", "typo"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = run(tmp.path(), &["--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("c{i}.toml")) && err.contains(needle),
            "{err}"
        );
    }
    let o = run(tmp.path(), &["--config", "missing.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let enoent = std::io::Error::from_raw_os_error(2);
    assert_eq!(
        err,
        format!("hsmd: cannot read config missing.toml: {enoent}\n")
    );
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let d = Data::init("alice");
    let daemon = d.start();
    ping(&d.profile("alice"));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn without_arguments_hsmd_initialises_hsm_data_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    // hsmd's defaults are fixed ports (7301-7303): this test waits for them to be free, and
    // fails (never skips) if something else keeps one.
    for port in [7301, 7302, 7303] {
        wait::until(
            &format!("port {port} (an hsmd default) to be free"),
            Duration::from_secs(30),
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        );
    }
    let log = tmp.path().join("hsmd.log");
    let daemon = Daemon::start(tmp.path(), &[], &[], &log);
    let line = daemon.ready_line().to_string();
    assert!(
        line.contains("127.0.0.1:7301")
            && line.ends_with(" --profile hsm-data/clients/default.toml ping"),
        "{line}"
    );
    // The command it names runs from where hsmd was started: here the hsmctl built beside
    // it (by its path, since this directory is not above it and it is not on PATH).
    let command = line.split_once("connect with: ").unwrap().1;
    let beside = ferrohsm_test_support::bins::hsmd().with_file_name("hsmctl");
    assert!(command.starts_with(beside.to_str().unwrap()), "{line}");
    let o = std::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok", "{o:?}");
    let profile = tmp.path().join("hsm-data/clients/default.toml");
    ping(&profile);
    assert_eq!(daemon.terminate().code(), Some(0));
    // An hsmd with no hsmctl beside it (as `cargo run --release --bin hsmd` builds it) names
    // the cargo command that builds and runs hsmctl.
    let alone = tmp.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(ferrohsm_test_support::bins::hsmd(), alone.join("hsmd")).unwrap();
    // (Run through sh, which gets this build's hsmd as $0 and execs the copy instead.)
    let script = format!("exec '{}' \"$@\"", alone.join("hsmd").display());
    let daemon = Daemon::spawn_under(&["sh", "-c", &script], tmp.path(), &[], &[], &log)
        .unwrap_or_else(|e| panic!("the lone hsmd did not start: {e:?}"));
    assert!(
        daemon.ready_line().ends_with(
            "connect with: cargo run --release --bin hsmctl -- --profile \
             hsm-data/clients/default.toml ping"
        ),
        "{}",
        daemon.ready_line()
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    // The second start reuses the directory and its keys.
    let daemon = Daemon::start(tmp.path(), &[], &[], &log);
    ping(&profile);
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn init_force_adds_a_client_and_hsmd_serves_both() {
    let d = Data::init("alice");
    let daemon = d.start();
    let ctl_ok = |who: &str, args: &[&str]| ferrohsm_test_support::ok(&d.ctl(who, args));
    assert_eq!(
        ctl_ok("alice", &["keygen", "--type", "ed25519", "--label", "s1"]),
        "1 s1\n"
    );
    let m = d.path("m");
    std::fs::write(&m, b"signed before bob came").unwrap();
    let (m, sig) = (m.display().to_string(), d.path("sig").display().to_string());
    ctl_ok("alice", &["sign", "s1", "--in", &m, "--out", &sig]);
    assert_eq!(daemon.terminate().code(), Some(0));
    let alice: Vec<_> = contents_under(&d.dir.join("clients"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("alice."))
        .collect();
    let pki = contents_under(&d.dir.join("pki"));
    let master = std::fs::read(d.dir.join("master.key")).unwrap();

    let ports = d.ports();
    let dir = d.dir.display().to_string();
    let o = daemon::run_hsmd(
        &[
            &[
                "init",
                "--dir",
                dir.as_str(),
                "--clients",
                "alice,bob",
                "--force",
            ][..],
            &ports.args(),
        ]
        .concat(),
        &[],
    );
    let out = ferrohsm_test_support::ok(&o);
    assert!(out.contains("client bob: hsmctl --profile "), "{out}");
    // alice's credentials, the PKI and the master key are kept byte for byte.
    let now: Vec<_> = contents_under(&d.dir.join("clients"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("alice."))
        .collect();
    assert_eq!(now, alice, "alice's credentials changed");
    assert_eq!(contents_under(&d.dir.join("pki")), pki, "the PKI changed");
    assert_eq!(std::fs::read(d.dir.join("master.key")).unwrap(), master);
    assert!(d.profile("bob").exists());

    let daemon = d.start();
    // alice's key is still hers and still verifies what it signed.
    assert_eq!(
        ctl_ok("alice", &["verify", "s1", "--in", &m, "--sig", &sig]),
        "ok\n"
    );
    // bob's profile works on every transport (shm on the socket init writes by default,
    // D/hsmd.sock), in his own namespace.
    assert!(
        d.dir.join("hsmd.sock").exists(),
        "no shm socket in {}",
        d.dir.display()
    );
    for t in ferrohsm_test_support::peer::TRANSPORT_NAMES {
        let o = d.ctl_over("bob", t, &["ping"], d.tmp());
        ferrohsm_test_support::ok(&o);
    }
    assert_eq!(
        ctl_ok("bob", &["keygen", "--type", "ed25519", "--label", "s1"]),
        "1 s1\n"
    );
    let bob_sig = d.path("bob.sig").display().to_string();
    ctl_ok("bob", &["sign", "s1", "--in", &m, "--out", &bob_sig]);
    ferrohsm_test_support::status::assert_failed(
        &d.ctl("bob", &["verify", "s1", "--in", &m, "--sig", &sig]),
        "bad_signature",
    );
    ferrohsm_test_support::status::assert_failed(
        &d.ctl("bob", &["info", "alice:1"]),
        "key_not_found",
    );
    assert_eq!(ctl_ok("alice", &["list"]).lines().count(), 1);
    assert_eq!(ctl_ok("bob", &["list"]).lines().count(), 1);
    assert_eq!(daemon.terminate().code(), Some(0));
}
