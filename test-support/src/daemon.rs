//! A real `hsmd` process: a data directory made by the real `hsmd init` on free loopback
//! ports ([`Data`]), and the process serving it ([`Daemon`]), started one way: spawned, its
//! readiness line awaited with a deadline, its log kept in a file. A start is retried only when
//! hsmd says a port is already in use (a free port is only free until someone else binds it);
//! any other failure fails the test with hsmd's log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bins;

/// How long hsmd may take to print its readiness line (a debug build, a busy machine).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long hsmd may take to exit after a signal, or a command to finish.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A free loopback port (free until someone else binds it), never one this process handed out
/// before: the kernel may give a port just released to the next bind, and two of a test's
/// listeners, or two tests' hsmd, must not be told the same one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Loopback addresses for the three socket listeners, as `hsmd init` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub tcp: String,
    pub tls: String,
    pub tls_psk: String,
}

impl Ports {
    /// Three free ports.
    pub fn new() -> Ports {
        let a = || format!("127.0.0.1:{}", free_port());
        Ports {
            tcp: a(),
            tls: a(),
            tls_psk: a(),
        }
    }

    /// `--tcp A --tls B --tls-psk C`.
    pub fn args(&self) -> [&str; 6] {
        [
            "--tcp",
            &self.tcp,
            "--tls",
            &self.tls,
            "--tls-psk",
            &self.tls_psk,
        ]
    }

    /// The start of the line `hsmd` prints once it listens.
    pub fn ready_line(&self) -> String {
        format!(
            "hsmd: listening on tcp {}, tls {}, tls-psk {}",
            self.tcp, self.tls, self.tls_psk
        )
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

/// `hsmd` of this build, with no passphrase from the developer's environment.
pub fn hsmd_command() -> Command {
    hsmd_under(&[])
}

/// `hsmd` of this build run by `prefix` (`["prlimit", "--nofile=256:256", "--"]`), with no
/// passphrase from the developer's environment.
pub fn hsmd_under(prefix: &[&str]) -> Command {
    match prefix {
        [] => hsmd_at(&bins::hsmd()),
        [wrapper, rest @ ..] => {
            let mut c = Command::new(wrapper);
            c.args(rest).arg(bins::hsmd());
            quiet(c)
        }
    }
}

/// The `hsmd` at `path` (one a package installed, say), with no passphrase from the
/// developer's environment.
pub fn hsmd_at(path: &Path) -> Command {
    quiet(Command::new(path))
}

/// `c` without the developer's passphrases, logging warnings only.
fn quiet(mut c: Command) -> Command {
    c.env_remove("HSMD_PASSPHRASE")
        .env_remove("HSMD_NEW_PASSPHRASE")
        .env_remove("HSMD_STORE_PASSWORD")
        .env("RUST_LOG", "warn");
    c
}

/// Runs `hsmd ARGS` (with `env`) to its end, which must come within [`EXIT_DEADLINE`].
pub fn run_hsmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = hsmd_command();
    c.args(args).envs(env.iter().copied());
    output_within(&mut c, EXIT_DEADLINE)
}

/// Runs `hsmd ARGS` (with `env`), which must exit, not serve, within [`EXIT_DEADLINE`] (it
/// never printed its readiness line): its output.
fn not_served(args: &[&str], env: &[(&str, &str)]) -> Output {
    let o = run_hsmd(args, env);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("listening"), "hsmd served: {out}");
    o
}

/// Runs `hsmd ARGS` (with `env`), which must exit, not serve, within [`EXIT_DEADLINE`]: its
/// exit code and stderr.
pub fn fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let o = not_served(args, env);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `hsmd ARGS` (with `env`), which must be refused within [`EXIT_DEADLINE`] without
/// serving ([`crate::status::refused`]: exit 1, one stderr line): that line.
pub fn refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    crate::status::refused(&not_served(args, env))
}

/// `hsmctl --profile PROFILE` of this build.
pub fn hsmctl_command(profile: &Path) -> Command {
    let mut c = Command::new(bins::hsmctl());
    c.arg("--profile").arg(profile);
    c
}

pub use crate::process::{output_with_stdin, output_within};

/// `hsmctl hash-pin` of `pin` (typed with its newline): the PHC string.
pub fn hash_pin(pin: &str) -> String {
    let mut c = Command::new(bins::hsmctl());
    c.arg("hash-pin");
    let o = output_with_stdin(&mut c, format!("{pin}\n").as_bytes(), EXIT_DEADLINE);
    crate::status::ok(&o).trim().to_string()
}

/// `openssl ARGS` in `cwd`, which must succeed (check `ci::tool("openssl", ..)` first).
pub fn openssl(args: &[&str], cwd: &Path) -> Output {
    let mut c = Command::new("openssl");
    c.args(args).current_dir(cwd);
    let o = output_within(&mut c, EXIT_DEADLINE);
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `openssl pkeyutl -verify -rawin` of an Ed25519 signature, which must verify (in `cwd`).
pub fn ed25519_verifies(public: &str, msg: &str, sig: &str, cwd: &Path) {
    let args = ["pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin"];
    openssl(&[&args[..], &["-in", msg, "-sigfile", sig]].concat(), cwd);
}

/// Whether hsmd's log says one of its loopback ports was taken (`cannot listen on ADDR:
/// Address already in use`), and not, say, its shm socket path.
fn port_taken(log: &str) -> bool {
    log.lines().any(|l| {
        l.split_once("cannot listen on ").is_some_and(|(_, rest)| {
            rest.split_once(": ").is_some_and(|(addr, why)| {
                addr.parse::<std::net::SocketAddr>().is_ok()
                    && why.contains("Address already in use")
            })
        })
    })
}

/// Why a start failed.
#[derive(Debug)]
pub enum StartError {
    /// hsmd could not bind an address another process holds.
    AddressInUse(String),
    /// Anything else: hsmd's output and log.
    Failed(String),
}

/// A real `hsmd` process; killed on drop if still running.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// What hsmd printed on stdout up to its readiness line (that line last).
    pub lines: Vec<String>,
}

impl Daemon {
    /// Starts `hsmd ARGS` in `cwd` (with `env`), its log in `log`, and waits for its readiness
    /// line; any failure fails the test.
    pub fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Daemon {
        Daemon::spawn(cwd, args, env, log).unwrap_or_else(|e| panic!("hsmd did not start: {e:?}"))
    }

    /// Like [`Daemon::start`], returning why it failed.
    pub fn spawn(
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Daemon, StartError> {
        Daemon::spawn_under(&[], cwd, args, env, log)
    }

    /// [`Daemon::spawn`] with hsmd run by `prefix` (see [`hsmd_under`]).
    pub fn spawn_under(
        prefix: &[&str],
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Daemon, StartError> {
        Daemon::spawn_command(hsmd_under(prefix), cwd, args, env, log)
    }

    /// [`Daemon::spawn`] with hsmd run as `hsmd` says ([`hsmd_at`], [`hsmd_under`]).
    pub fn spawn_command(
        mut hsmd: Command,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Daemon, StartError> {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()));
        let mut child = hsmd
            .args(args)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start hsmd: {e}"));
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        // Lines arrive on a channel so the wait has a deadline; the reader keeps draining
        // stdout afterwards so hsmd never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = out;
            let mut line = Vec::new();
            loop {
                line.clear();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let _ = tx.send(text);
                    }
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let mut lines = Vec::new();
        let mut d = Daemon {
            child,
            log: log.to_path_buf(),
            lines: Vec::new(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("hsmd: listening on");
                    lines.push(line);
                    if ready {
                        d.lines = lines;
                        return Ok(d);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    d.kill_now();
                    return Err(StartError::Failed(format!(
                        "no readiness line within {START_DEADLINE:?}; stdout {lines:?}; log:\n{}",
                        d.log()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = d.wait_exit(EXIT_DEADLINE);
                    let log = d.log();
                    let why = format!("hsmd exited ({status}) before listening: {lines:?}\n{log}");
                    return Err(if port_taken(&log) {
                        StartError::AddressInUse(why)
                    } else {
                        StartError::Failed(why)
                    });
                }
            }
        }
    }

    /// The readiness line.
    pub fn ready_line(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or_default()
    }

    /// hsmd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What hsmd has logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(s.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit; a failure (with the log) if it outlives `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() >= deadline {
                self.kill_now();
                panic!(
                    "hsmd (pid {}) did not exit within {within:?}; log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (within [`EXIT_DEADLINE`]).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(EXIT_DEADLINE)
    }

    /// SIGINT, then the exit status (within [`EXIT_DEADLINE`]).
    pub fn interrupt(mut self) -> ExitStatus {
        self.signal("INT");
        self.wait_exit(EXIT_DEADLINE)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_now();
    }
}
