//! A real `hsmd` with clients alice and bob, and the module configured for both: alice's
//! token needs PIN 1234 and reaches hsmd over TCP; bob's needs no PIN and goes over shared
//! memory. Shared by the tool tests and the consumer suite; everything else (this build's
//! binaries and module, hsmd started with a deadline, the CI rule for tools) comes from
//! `ferrohsm_test_support`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferrohsm_test_support::daemon::{self, Daemon, output_within};
use ferrohsm_test_support::data::Data;
use ferrohsm_test_support::{bins, status};

/// alice's PIN.
pub const PIN: &str = "1234";

/// How long one run of an outside tool (pkcs11-tool, p11tool, openssl, ssh-keygen) may take
/// against a debug hsmd on a busy machine; only a hang guard.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// The PKCS#11 module of this build, as a string for tools' arguments.
pub fn module() -> String {
    bins::pkcs11_module().display().to_string()
}

/// A running hsmd and the module's configuration for it.
#[derive(Debug)]
pub struct Token {
    /// hsmd's data directory, made by the real `hsmd init`.
    pub data: Data,
    /// The hsmd data directory (`data.dir`).
    pub dir: PathBuf,
    /// The module's configuration file.
    pub config: PathBuf,
    daemon: Option<Daemon>,
}

impl Token {
    /// `hsmd init` for alice and bob, hsmd started, the module's configuration written.
    pub fn start() -> Token {
        Token::start_with_timeout(5000)
    }

    /// Like `start`, with the module's `timeout_ms`.
    pub fn start_with_timeout(timeout_ms: u64) -> Token {
        let data = Data::init("alice,bob");
        let daemon = data.start();
        let dir = data.dir.clone();
        let hash = daemon::hash_pin(PIN);
        assert!(hash.starts_with('$'), "a PHC string: {hash}");
        // bob's slot over shm: his profile as init wrote it, with shm as the default.
        let bob = std::fs::read_to_string(data.profile("bob")).expect("profile");
        let bob = bob.replace("default_transport = \"tcp\"", "default_transport = \"shm\"");
        assert!(bob.contains("default_transport = \"shm\""), "{bob}");
        std::fs::write(dir.join("clients/bob-shm.toml"), bob).expect("profile");
        let config = data.path("pkcs11.toml");
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
            data,
            dir,
            config,
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
        assert!(
            text.contains(&format!("default_transport = \"{transport}\"")),
            "{text}"
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
        self.data.profile(name)
    }

    /// `hsmctl --profile NAME ARGS`, which may fail (see [`Token::hsmctl_ok`]).
    pub fn hsmctl(&self, name: &str, args: &[&str]) -> Output {
        self.data.ctl(name, args)
    }

    /// `hsmctl --profile NAME ARGS`, which must succeed; its stdout.
    pub fn hsmctl_ok(&self, name: &str, args: &[&str]) -> String {
        status::ok(&self.hsmctl(name, args))
    }

    /// A command with the module's configuration in its environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("FERROHSM_PKCS11_CONFIG", &self.config)
            .current_dir(self.data.tmp());
        c
    }

    /// A scratch path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.data.path(name)
    }

    /// The scratch directory (the module's configuration names profiles relative to it).
    pub fn tmp(&self) -> &Path {
        self.data.tmp()
    }

    /// Sends hsmd a signal (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        self.daemon.as_ref().expect("hsmd is running").signal(sig);
    }

    /// hsmd's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("hsmd is running").pid()
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
        self.daemon = Some(self.data.start());
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to its end (within [`TOOL_DEADLINE`]); its stdout, or a panic naming its
/// output.
pub fn ok(c: &mut Command) -> String {
    status::ok(&output_within(c, TOOL_DEADLINE))
}

/// Like `ok`, with what the command wrote to stderr after its stdout (p11tool reports there).
pub fn ok_both(c: &mut Command) -> String {
    let o = output_within(c, TOOL_DEADLINE);
    let out = status::ok(&o);
    out + &String::from_utf8_lossy(&o.stderr)
}

/// Runs a command that must fail (exit 1, as the PKCS#11 tools do on an error); its stderr.
pub fn fails(c: &mut Command) -> String {
    let o = output_within(c, TOOL_DEADLINE);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{c:?}: expected a failure\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}
