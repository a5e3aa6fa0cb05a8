//! A real `hsmd` process for tests, shared by the client and server test suites.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Free loopback addresses for the three listeners, as `hsmd init` flags.
pub struct Ports {
    pub tcp: String,
    pub tls: String,
    pub tls_psk: String,
}

impl Ports {
    pub fn new() -> Ports {
        let a = || format!("127.0.0.1:{}", free_port());
        Ports {
            tcp: a(),
            tls: a(),
            tls_psk: a(),
        }
    }

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

    /// The line `hsmd` prints once it listens.
    pub fn ready_line(&self) -> String {
        format!(
            "hsmd: listening on tcp {}, tls {}, tls-psk {}",
            self.tcp, self.tls, self.tls_psk
        )
    }
}

/// A real `hsmd` process; killed on drop if still running.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// Starts `hsmd ARGS` in `cwd` and waits for its "listening" line.
    pub fn start(bin: &Path, cwd: &Path, args: &[&str]) -> (Daemon, Vec<String>) {
        Daemon::spawn(bin, cwd, args, Stdio::inherit()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `hsmd init --dir DIR --clients CLIENTS` on free ports, `prepare(DIR)`, then `hsmd
    /// --config DIR/hsmd.toml`. Free ports are only free until someone else binds them, so a
    /// start that fails is retried with fresh ports.
    pub fn init_and_start(
        bin: &Path,
        cwd: &Path,
        dir: &Path,
        clients: &str,
        prepare: &dyn Fn(&Path),
        log: Option<&Path>,
    ) -> (Daemon, Ports, Vec<String>) {
        let mut last = String::new();
        for _ in 0..8 {
            let _ = std::fs::remove_dir_all(dir);
            let ports = Ports::new();
            let o = Command::new(bin)
                .args(["init", "--dir", dir.to_str().unwrap(), "--clients", clients])
                .args(ports.args())
                .env_remove("HSMD_PASSPHRASE")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "init: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            prepare(dir);
            let config = dir.join("hsmd.toml");
            let args = ["--config", config.to_str().unwrap()];
            let stderr = match log {
                Some(l) => Stdio::from(std::fs::File::create(l).expect("log file")),
                None => Stdio::inherit(),
            };
            match Daemon::spawn(bin, cwd, &args, stderr) {
                Ok((d, lines)) => return (d, ports, lines),
                Err(e) => last = e,
            }
        }
        panic!("hsmd never started: {last}");
    }

    /// Like `start`, with the daemon's log (stderr) going to `log`.
    pub fn start_logged(
        bin: &Path,
        cwd: &Path,
        args: &[&str],
        log: &Path,
    ) -> (Daemon, Vec<String>) {
        Daemon::start_logged_env(bin, cwd, args, log, &[])
    }

    /// `start_logged` with extra environment variables (`RUST_LOG=info`, say).
    pub fn start_logged_env(
        bin: &Path,
        cwd: &Path,
        args: &[&str],
        log: &Path,
        env: &[(&str, &str)],
    ) -> (Daemon, Vec<String>) {
        let file = std::fs::File::create(log).expect("log file");
        Daemon::spawn_env(bin, cwd, args, Stdio::from(file), env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, with extra environment variables (a passphrase, say).
    pub fn start_env(
        bin: &Path,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Daemon, Vec<String>) {
        Daemon::spawn_env(bin, cwd, args, Stdio::inherit(), env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(
        bin: &Path,
        cwd: &Path,
        args: &[&str],
        stderr: Stdio,
    ) -> Result<(Daemon, Vec<String>), String> {
        Daemon::spawn_env(bin, cwd, args, stderr, &[])
    }

    fn spawn_env(
        bin: &Path,
        cwd: &Path,
        args: &[&str],
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Result<(Daemon, Vec<String>), String> {
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(cwd)
            // Only what the test gives: a passphrase in the developer's shell must not leak in.
            .env_remove("HSMD_PASSPHRASE")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("hsmd starts");
        let mut lines = Vec::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(format!(
                    "hsmd exited before listening: {lines:?}, status {:?}",
                    child.wait()
                ));
            }
            lines.push(line.trim_end().to_string());
            if line.contains("listening on tcp") {
                break;
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Ok((Daemon { child }, lines))
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (must come within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "hsmd did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
