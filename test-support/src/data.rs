//! A data directory made by the real `hsmd init`, and the ways to start hsmd on it, run
//! hsmctl and `hsmd` admin commands against it and read its files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;

use crate::daemon::*;

/// Numbers the logs of the hsmd processes a test process starts.
static LOGS: AtomicUsize = AtomicUsize::new(0);

/// A data directory made by the real `hsmd init` on free ports, and the ways to start hsmd
/// on it, run hsmctl against it and read its files.
#[derive(Debug)]
pub struct Data {
    tmp: tempfile::TempDir,
    /// The data directory (`hsmd.toml`, `keys.db`, `clients/`).
    pub dir: PathBuf,
    ports: Mutex<Ports>,
}

impl Data {
    /// `hsmd init --dir D --clients CLIENTS` on free ports.
    pub fn init(clients: &str) -> Data {
        Data::init_with(clients, &[], &[])
    }

    /// `hsmd init` with extra arguments (`--shm-socket P`) and environment (a passphrase).
    pub fn init_with(clients: &str, args: &[&str], env: &[(&str, &str)]) -> Data {
        Data::made(&[&["--clients", clients][..], args].concat(), env)
    }

    /// `hsmd init --dir D2 --join D` on free ports (with extra arguments and environment):
    /// one more node of this node's cluster.
    pub fn join(&self, args: &[&str], env: &[(&str, &str)]) -> Data {
        let from = self.dir.to_str().expect("utf-8 temp path");
        Data::made(&[&["--join", from][..], args].concat(), env)
    }

    /// `hsmd init --dir D ARGS` on free ports, which must succeed.
    fn made(args: &[&str], env: &[(&str, &str)]) -> Data {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d");
        let ports = Ports::new();
        let dir_s = dir.to_str().expect("utf-8 temp path");
        let o = run_hsmd(
            &[&["init", "--dir", dir_s][..], &ports.args(), args].concat(),
            env,
        );
        crate::status::ok(&o);
        Data {
            tmp,
            dir,
            ports: Mutex::new(ports),
        }
    }

    /// The listen addresses hsmd.toml and the profiles name now.
    pub fn ports(&self) -> Ports {
        self.ports.lock().expect("ports").clone()
    }

    /// A scratch directory beside the data directory (removed with it).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `D/hsmd.toml`.
    pub fn config(&self) -> String {
        self.dir.join("hsmd.toml").display().to_string()
    }

    /// `D/keys.db`.
    pub fn db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    /// A client's profile.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{name}.toml"))
    }

    /// A client's profile, loaded.
    pub fn load_profile(&self, name: &str) -> Profile {
        Profile::load(&self.profile(name)).expect("profile loads")
    }

    /// keys.db opened directly, as an attacker with the file would.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).expect("open keys.db")
    }

    /// A client connected over its profile's default transport.
    pub fn connect(&self, name: &str) -> BlockingClient {
        BlockingClient::connect(&self.load_profile(name), None).expect("client connects")
    }

    /// `hsmd --config D/hsmd.toml`.
    pub fn start(&self) -> Daemon {
        self.start_with(&[], &[])
    }

    /// `hsmd --config D/hsmd.toml` with environment (a passphrase).
    pub fn start_env(&self, env: &[(&str, &str)]) -> Daemon {
        self.start_with(&[], env)
    }

    /// `hsmd --config D/hsmd.toml ARGS` with `env`, in the scratch directory. When hsmd finds
    /// a port taken, the configuration and profiles move to fresh ports and it starts again.
    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.start_under(&[], args, env)
    }

    /// [`Data::start_with`] with hsmd run by `prefix` (see [`hsmd_under`]).
    pub fn start_under(&self, prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let config = self.config();
        let args = [&["--config", config.as_str()][..], args].concat();
        let mut last = String::new();
        for _ in 0..5 {
            let n = LOGS.fetch_add(1, Ordering::Relaxed);
            let log = self.path(&format!("hsmd-{n}.log"));
            match Daemon::spawn_under(prefix, self.tmp.path(), &args, env, &log) {
                Ok(d) => {
                    let want = self.ports().ready_line();
                    assert!(
                        d.ready_line().starts_with(&want),
                        "readiness line {:?}, expected {want:?}",
                        d.ready_line()
                    );
                    return d;
                }
                Err(StartError::AddressInUse(why)) => {
                    last = why;
                    self.move_ports();
                }
                Err(StartError::Failed(why)) => panic!("hsmd did not start: {why}"),
            }
        }
        panic!("hsmd found its ports taken five times: {last}");
    }

    /// Rewrites hsmd.toml and every profile onto fresh ports.
    fn move_ports(&self) {
        let mut ports = self.ports.lock().expect("ports");
        let new = Ports::new();
        let mut files = vec![self.dir.join("hsmd.toml")];
        if let Ok(rd) = std::fs::read_dir(self.dir.join("clients")) {
            files.extend(
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml")),
            );
        }
        for f in files {
            let text = std::fs::read_to_string(&f).expect("config file");
            let text = text
                .replace(&format!("\"{}\"", ports.tcp), &format!("\"{}\"", new.tcp))
                .replace(&format!("\"{}\"", ports.tls), &format!("\"{}\"", new.tls))
                .replace(
                    &format!("\"{}\"", ports.tls_psk),
                    &format!("\"{}\"", new.tls_psk),
                );
            std::fs::write(&f, text).expect("config file");
        }
        *ports = new;
    }

    /// [`fails`] (`ARGS` name this directory's files, e.g. `--config D/hsmd.toml`).
    pub fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        fails(args, env)
    }

    /// [`refuses`] (`ARGS` name this directory's files, e.g. `--config D/hsmd.toml`).
    pub fn refuses(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        refuses(args, env)
    }

    /// `hsmd SUB... --config D/hsmd.toml` with `env` (`audit verify`, `backup --out F`, ...).
    pub fn admin(&self, sub: &[&str], env: &[(&str, &str)]) -> Output {
        let config = self.config();
        run_hsmd(&[sub, &["--config", config.as_str()]].concat(), env)
    }

    /// `hsmctl --profile WHO ARGS` over the profile's default transport.
    pub fn ctl(&self, who: &str, args: &[&str]) -> Output {
        let mut c = hsmctl_command(&self.profile(who));
        c.args(args).current_dir(self.tmp.path());
        output_within(&mut c, EXIT_DEADLINE)
    }

    /// `hsmctl --profile WHO export LABEL --out LABEL.raw` (which must succeed), read back.
    pub fn exported(&self, who: &str, label: &str) -> Vec<u8> {
        let out = format!("{label}.raw");
        crate::status::ok(&self.ctl(who, &["export", label, "--out", &out]));
        std::fs::read(self.tmp().join(out)).expect("the exported file")
    }

    /// `hsmctl --profile WHO --transport T ARGS` (run in `cwd`).
    pub fn ctl_over(&self, who: &str, transport: &str, args: &[&str], cwd: &Path) -> Output {
        let mut c = hsmctl_command(&self.profile(who));
        c.args(["--transport", transport])
            .args(args)
            .current_dir(cwd);
        output_within(&mut c, EXIT_DEADLINE)
    }

    /// Adds `LINE` to the `[clients.CLIENT]` table of hsmd.toml (read at the next start).
    pub fn client_setting(&self, client: &str, line: &str) {
        let cfg = self.dir.join("hsmd.toml");
        let text = std::fs::read_to_string(&cfg).expect("hsmd.toml");
        let section = format!("[clients.{client}]\n");
        assert!(text.contains(&section), "no {section} in hsmd.toml");
        let text = text.replace(&section, &format!("{section}{line}\n"));
        std::fs::write(&cfg, text).expect("hsmd.toml");
    }

    /// Sets `KEY = VALUE` (TOML) in `[SECTION]` of hsmd.toml, replacing an existing value.
    pub fn set(&self, section: &str, key: &str, value: &str) {
        let cfg = self.dir.join("hsmd.toml");
        let mut t: toml::Table = std::fs::read_to_string(&cfg)
            .expect("hsmd.toml")
            .parse()
            .expect("hsmd.toml parses");
        let v: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .expect("a TOML value")
            .remove("v")
            .expect("v");
        let mut table = &mut t;
        for part in section.split('.').filter(|s| !s.is_empty()) {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} is not a table"));
        }
        table.insert(key.into(), v);
        std::fs::write(&cfg, t.to_string()).expect("hsmd.toml");
    }
}
