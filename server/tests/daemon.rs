//! The real `hsmd` binary: `init`, serving from defaults, config errors, SIGTERM.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "../../client/tests/support/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use daemon::Daemon;
use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;

fn hsmd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hsmd"))
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(hsmd())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
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
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid client name"));
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
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read config missing.toml"));
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let (daemon, ports, lines) =
        Daemon::init_and_start(&hsmd(), tmp.path(), &d, "alice", &|_| {}, None);
    assert!(
        lines.last().unwrap().starts_with(&ports.ready_line()),
        "{lines:?}"
    );
    ping(&d.join("clients/alice.toml"));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn without_arguments_hsmd_initialises_hsm_data_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    if std::net::TcpListener::bind("127.0.0.1:7301").is_err() {
        eprintln!(
            "SKIPPED: port 7301 (hsmd's default) is busy on this machine; default start not checked"
        );
        return;
    }
    let (daemon, lines) = Daemon::start(&hsmd(), tmp.path(), &[]);
    let line = lines.last().unwrap();
    assert!(
        line.contains("127.0.0.1:7301")
            && line.contains("hsmctl --profile hsm-data/clients/default.toml ping"),
        "{line}"
    );
    let profile = tmp.path().join("hsm-data/clients/default.toml");
    ping(&profile);
    assert_eq!(daemon.terminate().code(), Some(0));
    // The second start reuses the directory and its keys.
    let (daemon, _) = Daemon::start(&hsmd(), tmp.path(), &[]);
    ping(&profile);
    assert_eq!(daemon.terminate().code(), Some(0));
}
