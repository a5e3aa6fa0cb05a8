//! A real `hsmd` with clients alice and bob, and the module configured for both: alice's
//! token needs PIN 1234 and reaches hsmd over TCP; bob's needs no PIN and goes over shared
//! memory. Shared by the tool tests and the consumer suite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../client/tests/support/daemon.rs"]
pub mod daemon;

use daemon::{Daemon, Ports};

/// alice's PIN.
pub const PIN: &str = "1234";

/// The directory of the test executable's build (`target/debug`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/NAME-HASH
    exe.parent()
        .and_then(Path::parent)
        .expect("build dir")
        .to_path_buf()
}

/// `hsmd`, built first if this test runs without the rest of the workspace.
pub fn hsmd_bin() -> PathBuf {
    built("hsmd", "ferrohsm-server", &["--bin", "hsmd"])
}

/// `hsmctl`.
pub fn hsmctl_bin() -> PathBuf {
    built("hsmctl", "ferrohsm-client", &["--bin", "hsmctl"])
}

fn built(name: &str, package: &str, target: &[&str]) -> PathBuf {
    let p = build_dir().join(name);
    if !p.exists() {
        let profile = build_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", package]).args(target);
        if profile.as_deref() == Some("release") {
            c.arg("--release");
        }
        assert!(c.status().expect("cargo").success(), "cannot build {name}");
    }
    p
}

/// The module: `libferrohsm_pkcs11.so` of this build. `cargo test` writes it to `deps/`,
/// `cargo build` beside it; the newer is this build's.
pub fn module_path() -> PathBuf {
    let dir = build_dir();
    [
        dir.join("deps/libferrohsm_pkcs11.so"),
        dir.join("libferrohsm_pkcs11.so"),
    ]
    .into_iter()
    .filter_map(|p| {
        let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
        Some((t, p))
    })
    .max_by_key(|(t, _)| *t)
    .map(|(_, p)| p)
    .unwrap_or_else(|| panic!("libferrohsm_pkcs11.so is not in {}", dir.display()))
}

/// Whether a command-line tool is installed; when it is not, a loud skip, and a failure
/// under CI=true (where .ci/run installs it).
pub fn have(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing under CI=true (.ci/run installs {package})"
        );
        eprintln!("SKIPPED: `{tool}` is not installed (Debian package {package})");
    }
    found
}

/// A running hsmd and the module's configuration for it.
pub struct Token {
    _tmp: tempfile::TempDir,
    /// The hsmd data directory.
    pub dir: PathBuf,
    /// The module's configuration file.
    pub config: PathBuf,
    /// Its listen addresses.
    pub ports: Ports,
    daemon: Option<Daemon>,
}

impl Token {
    /// `hsmd init` for alice and bob, hsmd started, the module's configuration written.
    pub fn start() -> Token {
        Token::start_with_timeout(5000)
    }

    /// Like `start`, with the module's `timeout_ms`.
    pub fn start_with_timeout(timeout_ms: u64) -> Token {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d");
        let (daemon, ports, _) = Daemon::init_and_start(
            &hsmd_bin(),
            tmp.path(),
            &dir,
            "alice,bob",
            &|_| {},
            Some(&tmp.path().join("hsmd.log")),
        );
        let hash = Command::new(hsmctl_bin())
            .arg("hash-pin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(format!("{PIN}\n").as_bytes())?;
                c.wait_with_output()
            })
            .expect("hsmctl hash-pin");
        assert!(hash.status.success());
        let hash = String::from_utf8(hash.stdout).expect("utf-8");
        // bob's slot over shm: his profile as init wrote it, with shm as the default.
        let bob = std::fs::read_to_string(dir.join("clients/bob.toml")).expect("profile");
        let bob = bob.replace("default_transport = \"tcp\"", "default_transport = \"shm\"");
        assert!(bob.contains("default_transport = \"shm\""), "{bob}");
        std::fs::write(dir.join("clients/bob-shm.toml"), bob).expect("profile");
        let config = tmp.path().join("pkcs11.toml");
        std::fs::write(
            &config,
            format!(
                "profiles = [\"d/clients/alice.toml\", \"d/clients/bob-shm.toml\"]\n\
                 timeout_ms = {timeout_ms}\n[pins]\nalice = \"{}\"\n",
                hash.trim()
            ),
        )
        .expect("module config");
        Token {
            _tmp: tmp,
            dir,
            config,
            ports,
            daemon: Some(daemon),
        }
    }

    /// A module configuration with one slot, `name` over `transport` (tcp, tls, tls-psk,
    /// shm), no PIN.
    pub fn config_over(&self, name: &str, transport: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.profile(name)).expect("profile");
        let text = text.replace(
            "default_transport = \"tcp\"",
            &format!("default_transport = \"{transport}\""),
        );
        let profile = self.dir.join(format!("clients/{name}-{transport}.toml"));
        std::fs::write(&profile, text).expect("profile");
        let config = self.path(&format!("pkcs11-{name}-{transport}.toml"));
        std::fs::write(&config, format!("profiles = [\"{}\"]\n", profile.display()))
            .expect("config");
        config
    }

    /// A client's profile.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{name}.toml"))
    }

    /// `hsmctl --profile NAME ARGS`.
    pub fn hsmctl(&self, name: &str, args: &[&str]) -> Output {
        Command::new(hsmctl_bin())
            .arg("--profile")
            .arg(self.profile(name))
            .args(args)
            .output()
            .expect("hsmctl runs")
    }

    /// A command with the module's configuration in its environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("FERROHSM_PKCS11_CONFIG", &self.config)
            .current_dir(self._tmp.path());
        c
    }

    /// A scratch path.
    pub fn path(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    /// hsmd's process id.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.child.id())
    }

    /// Sends hsmd a signal (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let s = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status()
                .expect("kill");
            assert!(s.success());
        }
    }

    /// Stops hsmd (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts hsmd again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        let config = self.dir.join("hsmd.toml");
        let (d, _) = Daemon::start(
            &hsmd_bin(),
            self._tmp.path(),
            &["--config", config.to_str().expect("utf-8 path")],
        );
        self.daemon = Some(d);
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to its end; its stdout, or a panic naming its stderr.
pub fn ok(c: &mut Command) -> String {
    run_ok(c).0
}

/// Like `ok`, with what the command wrote to stderr after its stdout (p11tool reports there).
pub fn ok_both(c: &mut Command) -> String {
    let (out, err) = run_ok(c);
    out + &err
}

fn run_ok(c: &mut Command) -> (String, String) {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?} failed ({}): {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
