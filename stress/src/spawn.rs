//! `--spawn`: a real `hsmd` on loopback with fresh credentials, stopped (SIGTERM) on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A database made for this run, dropped when this is.
pub struct Scratch {
    admin: postgres::Client,
    name: String,
}

impl Scratch {
    /// `CREATE DATABASE ferrohsm_bench_PID_RAND` on `url`'s server; its URL.
    pub fn create(url: &str) -> Result<(Scratch, String), String> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| format!("--store-url {url}: {e}"))?;
        if let Ok(p) = std::env::var("HSMD_STORE_PASSWORD") {
            config.password(p);
        }
        config.connect_timeout(Duration::from_secs(5));
        let mut admin = config
            .connect(postgres::NoTls)
            .map_err(|e| format!("cannot reach the database of --store-url {url}: {e}"))?;
        let mut r = [0u8; 3];
        getrandom::fill(&mut r).map_err(|e| e.to_string())?;
        let name = format!(
            "ferrohsm_bench_{}_{:02x}{:02x}{:02x}",
            std::process::id(),
            r[0],
            r[1],
            r[2]
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| {
                format!("cannot create a database for the bench (CREATEDB needed): {e}")
            })?;
        let base = url.split('?').next().unwrap_or(url);
        let cut = base.rfind('/').unwrap_or(base.len());
        let query = url.strip_prefix(base).unwrap_or("");
        let own = format!("{}/{name}{query}", &base[..cut]);
        Ok((Scratch { admin, name }, own))
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Several spawned nodes on one PostgreSQL database of their own (the first made by
/// `hsmd init --store-url`, the others joined to it), or one node on SQLite.
#[derive(Debug)]
pub struct Nodes {
    /// The nodes, first one first.
    pub nodes: Vec<Spawned>,
    next: usize,
    // Dropped last: the nodes stop before their database goes.
    _db: Option<Scratch>,
}

impl Nodes {
    /// `n` nodes with `clients` identities; on a database of their own on `url`'s server
    /// when given (else one node on SQLite).
    pub fn start(
        hsmd: &Path,
        clients: usize,
        server_extra: &str,
        url: Option<&str>,
        n: usize,
    ) -> Result<Nodes, String> {
        let Some(url) = url else {
            if n > 1 {
                return Err(
                    "--nodes above 1 needs --store-url (nodes share a PostgreSQL store)".into(),
                );
            }
            return Ok(Nodes {
                nodes: vec![Spawned::start(hsmd, clients, server_extra)?],
                next: 0,
                _db: None,
            });
        };
        let (db, own) = Scratch::create(url)?;
        let first = Spawned::start_postgres(hsmd, clients, server_extra, &own)?;
        let mut nodes = vec![first];
        for _ in 1..n.max(1) {
            let joined = nodes[0].join(server_extra)?;
            nodes.push(joined);
        }
        Ok(Nodes {
            nodes,
            next: 0,
            _db: Some(db),
        })
    }

    /// One profile per identity, spread over the nodes (identity `i` through node `i mod n`,
    /// whose profile lists that node first and the others after it).
    pub fn profiles(&self) -> Vec<PathBuf> {
        let first = &self.nodes[0];
        first
            .clients
            .iter()
            .enumerate()
            .map(|(i, name)| self.nodes[i % self.nodes.len()].profile(name))
            .collect()
    }

    /// Restarts the nodes gracefully in turn, one per call.
    pub fn restart_next(&mut self) -> Result<(), String> {
        let i = self.next % self.nodes.len();
        self.next += 1;
        self.nodes[i].restart()
    }

    /// Stops every node; the first exit code that is not 0, else 0.
    pub fn stop(&mut self) -> Option<i32> {
        let codes: Vec<Option<i32>> = self.nodes.iter_mut().map(Spawned::stop).collect();
        codes.into_iter().find(|c| *c != Some(0)).unwrap_or(Some(0))
    }
}

/// How a spawned node's data directory is made.
enum Init<'a> {
    /// `--clients s0,s1,...` (and `--store-url URL`).
    Clients(usize, Option<&'a str>),
    /// `--join D`.
    Join(&'a Path),
}

/// A running `hsmd` started by us.
pub struct Spawned {
    child: Child,
    hsmd: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
    /// Client names, each with a profile in `clients/`.
    pub clients: Vec<String>,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The `hsmd` beside the running executable.
pub fn default_hsmd() -> PathBuf {
    std::env::current_exe()
        .map(|p| p.with_file_name("hsmd"))
        .unwrap_or_else(|_| "hsmd".into())
}

impl Spawned {
    /// `hsmd init` with `clients` identities in a temporary directory, then `hsmd --config`
    /// (with `extra` TOML lines appended to `[server]`), waiting until it listens.
    pub fn start(hsmd: &Path, clients: usize, server_extra: &str) -> Result<Spawned, String> {
        Spawned::start_with(hsmd, clients, server_extra, "")
    }

    /// Like [`Spawned::start`], with `audit_extra` TOML lines (`level = "all"`) replacing
    /// the keys init wrote in `[audit]`.
    pub fn start_with(
        hsmd: &Path,
        clients: usize,
        server_extra: &str,
        audit_extra: &str,
    ) -> Result<Spawned, String> {
        Spawned::start_init(
            hsmd,
            &Init::Clients(clients, None),
            server_extra,
            audit_extra,
        )
    }

    /// Like [`Spawned::start`], with the key store in the PostgreSQL database `url` (its
    /// password from `HSMD_STORE_PASSWORD` in this process's environment).
    pub fn start_postgres(
        hsmd: &Path,
        clients: usize,
        server_extra: &str,
        url: &str,
    ) -> Result<Spawned, String> {
        Spawned::start_init(hsmd, &Init::Clients(clients, Some(url)), server_extra, "")
    }

    /// One more node of this one's cluster (`hsmd init --join`), started; this node's
    /// profiles now list both, this node first.
    pub fn join(&self, server_extra: &str) -> Result<Spawned, String> {
        let mut s =
            Spawned::start_init(&self.hsmd, &Init::Join(&self.data_dir()), server_extra, "")?;
        s.clients = self.clients.clone();
        Ok(s)
    }

    fn start_init(
        hsmd: &Path,
        init: &Init<'_>,
        server_extra: &str,
        audit_extra: &str,
    ) -> Result<Spawned, String> {
        // A port found free may be taken before hsmd binds it: try again with fresh ones.
        let mut last = String::new();
        for _ in 0..5 {
            match Spawned::try_start(hsmd, init, server_extra, audit_extra) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(
        hsmd: &Path,
        init: &Init<'_>,
        server_extra: &str,
        audit_extra: &str,
    ) -> Result<Spawned, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let (tcp, tls, psk) = (addr(free_port()?), addr(free_port()?), addr(free_port()?));
        let d = dir.path().join("hsm");
        let mut args = vec!["init".to_string(), "--dir".into(), d.display().to_string()];
        let names: Vec<String> = match init {
            Init::Clients(n, url) => {
                let names: Vec<String> = (0..(*n).max(1)).map(|i| format!("s{i}")).collect();
                args.extend(["--clients".into(), names.join(",")]);
                if let Some(url) = url {
                    args.extend(["--store-url".into(), url.to_string()]);
                }
                names
            }
            Init::Join(from) => {
                args.extend(["--join".into(), from.display().to_string()]);
                Vec::new()
            }
        };
        args.extend([
            "--tcp".into(),
            tcp,
            "--tls".into(),
            tls,
            "--tls-psk".into(),
            psk,
        ]);
        let o = Command::new(hsmd)
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", hsmd.display()))?;
        if !o.status.success() {
            return Err(format!(
                "hsmd init failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let config = d.join("hsmd.toml");
        let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        let text = with_settings(&text, "[server]", server_extra);
        let text = with_settings(&text, "[audit]", audit_extra);
        let text = with_settings(&text, "[limits]", SPAWNED_LIMITS);
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let child = launch(hsmd, &config)?;
        Ok(Spawned {
            child,
            hsmd: hsmd.to_path_buf(),
            config,
            dir,
            clients: names,
        })
    }

    /// Stops `hsmd` gracefully (it must exit 0) and starts it again on the same data
    /// directory and ports.
    pub fn restart(&mut self) -> Result<(), String> {
        match self.stop() {
            Some(0) => {}
            other => {
                return Err(format!(
                    "hsmd did not stop cleanly for a restart: {other:?}"
                ));
            }
        }
        self.relaunch()
    }

    /// The profile of client `name`.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("hsm/clients")
            .join(format!("{name}.toml"))
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("hsm")
    }

    /// The directory of client profiles.
    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.path().join("hsm/clients")
    }

    /// The server's process id (for its peak RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a host that dies: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `hsmd` again on the same data directory and ports (after [`Spawned::kill`]);
    /// the ports were just released, so it retries briefly if the kernel has not let go yet.
    pub fn relaunch(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..20 {
            match launch(&self.hsmd, &self.config) {
                Ok(c) => {
                    self.child = c;
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// SIGTERM and wait (SIGKILL after 10 s); the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hsmd --config CONFIG` and waits until it listens.
/// `config` with each `key = value` line of `extra` set in its `[server]` section: a key `hsmd
/// init` already wrote is replaced (TOML refuses a key twice), a new one is added.
/// A spawned server measures throughput, not the quota: a durable keygen bench makes tens of
/// thousands of keys in its two seconds (and deletes them after), past the default 10,000 per
/// client. Servers without a `[limits]` section (older builds) are left as they are.
const SPAWNED_LIMITS: &str = "max_keys_per_client = 1000000";

fn with_settings(config: &str, section: &str, extra: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let mut lines: Vec<String> = config.lines().map(String::from).collect();
    // A header may carry a comment (`[limits]   # see SECURITY.md`).
    let header = |l: &str| l.split('#').next().unwrap_or("").trim().to_string();
    let start = lines.iter().position(|l| header(l) == section);
    for setting in extra.lines().filter(|l| l.contains('=')) {
        let Some(start) = start else { break };
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .map_or(lines.len(), |i| start + 1 + i);
        match (start + 1..end).find(|&i| key(&lines[i]) == key(setting)) {
            Some(i) => lines[i] = setting.to_string(),
            None => lines.insert(start + 1, setting.to_string()),
        }
    }
    lines.join("\n") + "\n"
}

fn launch(hsmd: &Path, config: &Path) -> Result<Child, String> {
    let mut child = Command::new(hsmd)
        .args(["--config", &config.display().to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", hsmd.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(l)) if l.contains("listening on") => {}
        _ => {
            let _ = child.kill();
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            let _ = child.wait();
            return Err(format!("hsmd did not start: {}", why.trim()));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    // Keep draining stderr, so a chatty hsmd never blocks on a full pipe.
    if let Some(e) = child.stderr.take() {
        std::thread::spawn(move || for _ in BufReader::new(e).lines() {});
    }
    Ok(child)
}

/// Peak resident memory of a process in KiB (VmHWM), where /proc tells.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_settings_replace_or_add_within_server_only() {
        let c = "# x\n[server]\nworkers = 0 # c\nwindow = 32\n\n[store]\nwindow = 1\n";
        let out = super::with_settings(c, "[server]", "window = 8\ninline_max = 0");
        assert_eq!(
            out,
            "# x\n[server]\ninline_max = 0\nworkers = 0 # c\nwindow = 8\n\n[store]\nwindow = 1\n"
        );
    }
}
