//! A data directory made by the real `hsmd init`, and the ways the durable-store tests start,
//! refuse, reach and tamper with it. Included by `durable.rs` and `at_rest.rs` (beside
//! `daemon.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;
use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Status};

use crate::daemon::{self, Daemon};

pub fn hsmctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hsmctl"))
}

pub fn hsmd_bin() -> PathBuf {
    hsmctl_bin().with_file_name("hsmd")
}

/// A data directory made by the real `hsmd init`, and a way to (re)start `hsmd` on it.
pub struct Data {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub ports: daemon::Ports,
}

impl Data {
    /// `hsmd init` (with `env`, e.g. a passphrase) on free ports.
    pub fn init(clients: &str, env: &[(&str, &str)]) -> Data {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let ports = daemon::Ports::new();
        let o = Command::new(hsmd_bin())
            .args(["init", "--dir", dir.to_str().unwrap(), "--clients", clients])
            .args(ports.args())
            .env_remove("HSMD_PASSPHRASE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Data {
            _tmp: tmp,
            dir,
            ports,
        }
    }

    pub fn config(&self) -> String {
        self.dir.join("hsmd.toml").display().to_string()
    }

    pub fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let (d, lines) =
            Daemon::start_env(&hsmd_bin(), &self.dir, &["--config", &self.config()], env);
        assert!(lines.last().unwrap().starts_with(&self.ports.ready_line()));
        d
    }

    /// Runs `hsmd ARGS`, which must exit (not serve) within 20 s.
    pub fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        let mut child = Command::new(hsmd_bin())
            .args(args)
            .env_remove("HSMD_PASSPHRASE")
            .env_remove("HSMD_NEW_PASSPHRASE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "hsmd kept running: {args:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("listening"), "hsmd served: {out}");
        // Nothing listens on its port either.
        assert!(std::net::TcpStream::connect(&self.ports.tcp).is_err());
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{name}.toml"))
    }

    pub fn connect(&self, name: &str) -> BlockingClient {
        BlockingClient::connect(&Profile::load(&self.profile(name)).unwrap(), None).unwrap()
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(hsmctl_bin())
            .arg("--profile")
            .arg(self.profile("alice"))
            .args(args)
            .output()
            .unwrap()
    }
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn label(s: &str) -> KeyRef {
    KeyRef::Label(s.parse().unwrap())
}

pub fn spec(t: KeyType, l: &str, exportable: bool) -> KeySpec {
    KeySpec {
        key_type: t,
        label: l.parse().unwrap(),
        usage: None,
        exportable,
        session: false,
    }
}

pub fn status<T: std::fmt::Debug>(r: Result<T, ferrohsm_client::ClientError>) -> Status {
    r.unwrap_err().status().unwrap()
}

/// Opens keys.db directly, as an attacker with the file would.
pub fn sql(d: &Data) -> rusqlite::Connection {
    rusqlite::Connection::open(d.db()).unwrap()
}

impl Data {
    /// Like `fails`, while another hsmd holds the ports: only checks the exit.
    pub fn fails_while_running(&self, args: &[&str]) -> (Option<i32>, String) {
        let o = Command::new(hsmd_bin()).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

pub trait InfoOk {
    fn info_ok(&self, l: &str);
}

impl InfoOk for BlockingClient {
    fn info_ok(&self, l: &str) {
        self.block_on(self.client().info(&label(l))).unwrap();
    }
}
