//! A real, private PostgreSQL cluster ([`Cluster`]): made by the real `initdb` in a temporary
//! directory, served by the real `postgres` on a free loopback port, stopped and removed on
//! drop. Tests of a PostgreSQL key store run against it, never against a mock.
//!
//! Started one way, like [`crate::daemon`]: every command has a deadline (a hung tool fails
//! the test instead of hanging it), the server log is kept in a file, and a start is retried
//! only when the port turned out to be taken. The superuser `hsm` logs in with a random
//! password over TCP on 127.0.0.1 (SCRAM); the password never appears on a command line or in
//! a URL. PostgreSQL refuses to run as root, so a root test process runs `initdb` and `pg_ctl`
//! as the `postgres` user (`setpriv`, else `runuser`) on a directory it hands to that user.
//!
//! ```text
//!   Cluster::start ──> initdb (as postgres when root) ──> postgresql.conf += port, socket dir
//!                  ──> pg_ctl start -w (retried on "Address already in use") ──> psql -h 127.0.0.1
//! ```

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ci;
use crate::daemon::{self, EXIT_DEADLINE};

/// The superuser every cluster is made with.
const USER: &str = "hsm";

/// How long `initdb` or a `pg_ctl` start, stop or restart may take: longer than the 60 s
/// `pg_ctl -t` waits itself, so pg_ctl reports its own timeout (with the log) first.
const PG_DEADLINE: Duration = Duration::from_secs(90);

/// The longest socket directory that still fits `/.s.PGSQL.65535` in a Unix socket path
/// (107 bytes), with room to spare.
const SOCKET_DIR_MAX: usize = 80;

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the highest version under
/// `/usr/lib/postgresql/*/bin` (Debian puts them there, off PATH), else `pg_config --bindir`.
pub fn binaries() -> Option<PathBuf> {
    let complete = |bin: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| bin.join(b).is_file())
    };
    let mut debian: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    if !ci::on_path("pg_config") {
        return None;
    }
    let o = daemon::output_within(Command::new("pg_config").arg("--bindir"), EXIT_DEADLINE);
    let bin = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    (o.status.success() && complete(&bin)).then_some(bin)
}

/// Who runs `initdb` and `pg_ctl`: this process's user, or (when this process is root, which
/// PostgreSQL refuses) the `postgres` user.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    Me,
    Setpriv { uid: u32, gid: u32 },
    Runuser,
}

impl RunAs {
    /// `program` as this user, in `cwd` (where the `postgres` user can be: the test's own
    /// directory may be closed to it), with no `PG*` variable from the developer's environment.
    fn command(self, program: &Path, cwd: &Path) -> Command {
        let mut c = match self {
            RunAs::Me => Command::new(program),
            RunAs::Setpriv { uid, gid } => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--"])
                    .arg(program);
                c
            }
            RunAs::Runuser => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
        };
        c.current_dir(cwd);
        without_pg_env(&mut c);
        c
    }
}

/// Removes every `PG*` variable (PGHOST, PGOPTIONS, PGSERVICE, PGDATA...) a developer's shell
/// may set: the cluster and its clients are configured by flags alone.
fn without_pg_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            c.env_remove(k);
        }
    }
}

/// Whether this process's effective uid is 0 (what PostgreSQL refuses, whatever the
/// capabilities: a container's root lacking some is still root to it).
fn euid_is_root() -> bool {
    ci::is_root()
        || std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1))
                .is_some_and(|e| e == "0")
        })
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != "postgres" {
            return None;
        }
        let (_, uid, gid) = (f.next()?, f.next()?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// 16 random bytes from /dev/urandom, as hex.
fn random_password() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the cluster's temporary directory goes: the usual temp dir, unless the `postgres`
/// user could not reach it (root's TMPDIR under /root) or the socket path would be too long
/// for a Unix socket; then /tmp.
fn temp_base(as_postgres: bool) -> PathBuf {
    let base = std::env::temp_dir();
    let reachable = !as_postgres
        || base
            .ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    // tempfile adds ".tmpXXXXXX" (10 bytes) and a slash.
    if reachable && base.as_os_str().len() + 11 <= SOCKET_DIR_MAX {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// Whether a failed start's log says the port was taken.
fn port_taken(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

/// Runs `c` to its end within `within`, never panicking (for drop): whether it succeeded.
fn succeeds_within(c: &mut Command, within: Duration) -> bool {
    let Ok(mut child) = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// A real PostgreSQL cluster of its own: a temporary directory (`data/`, the server `log`, the
/// Unix socket), a `postgres` server on 127.0.0.1 and a free port, and its superuser `hsm`.
/// Stopped (immediately: the data is thrown away) and removed on drop.
pub struct Cluster {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
    password: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.tmp.path())
            .field("bin", &self.bin)
            .field("run_as", &self.run_as)
            .field("port", &self.port)
            .field("user", &USER)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Cluster {
    /// Makes and starts a cluster: `initdb`, the settings, `pg_ctl start`. None (a one-line
    /// skip, or a failure under CI) when PostgreSQL is not installed; any other failure fails
    /// the test with the tool's output or the server log.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(None)
    }

    /// [`Cluster::start`] with TLS on: a server certificate for `names` (DNS names or IP
    /// addresses), issued by a CA of its own whose certificate is [`Cluster::ca`].
    pub fn start_tls(names: &[&str]) -> Option<Cluster> {
        Cluster::start_with(Some(names))
    }

    /// The CA certificate (PEM) that signed the server's certificate (a TLS cluster only).
    pub fn ca(&self) -> PathBuf {
        self.tmp.path().join("ca.pem")
    }

    fn start_with(tls: Option<&[&str]>) -> Option<Cluster> {
        let Some(bin) = binaries() else {
            ci::need(
                false,
                "PostgreSQL is not installed (Debian package postgresql)",
            );
            return None;
        };
        let root = euid_is_root();
        let (run_as, owner) = if root {
            let Some((uid, gid)) = postgres_user() else {
                ci::need(
                    false,
                    "running as root, and PostgreSQL refuses root, but there is no `postgres` \
                     user to run it as (Debian package postgresql makes one)",
                );
                return None;
            };
            let run_as = if ci::on_path("setpriv") {
                RunAs::Setpriv { uid, gid }
            } else if ci::on_path("runuser") {
                RunAs::Runuser
            } else {
                ci::need(
                    false,
                    "running as root, and PostgreSQL refuses root, but neither `setpriv` nor \
                     `runuser` is installed to run it as `postgres` (Debian package util-linux)",
                );
                return None;
            };
            (run_as, Some((uid, gid)))
        } else {
            (RunAs::Me, None)
        };
        let tmp = tempfile::Builder::new()
            .prefix("ferrohsm-pg-")
            .tempdir_in(temp_base(root))
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let pwfile = dir.join("pwfile");
        let password = random_password();
        std::fs::write(&pwfile, format!("{password}\n")).expect("write pwfile");
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .expect("chmod pwfile");
        if let Some((uid, gid)) = owner {
            for p in [&dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", p.display()));
            }
        }
        let data = dir.join("data");
        let mut initdb = run_as.command(&bin.join("initdb"), &dir);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        let o = daemon::output_within(&mut initdb, PG_DEADLINE);
        let _ = std::fs::remove_file(&pwfile);
        assert!(
            o.status.success(),
            "initdb failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let conf = data.join("postgresql.conf");
        let mut base = std::fs::read_to_string(&conf).expect("postgresql.conf");
        if let Some(names) = tls {
            use ferrohsm_tls::pki;
            let ca = pki::new_ca("FerroHSM test PostgreSQL CA").expect("CA");
            let (from, until) = pki::validity(30);
            let leaf = pki::issue(
                &ca.cert_pem,
                &ca.key_pem,
                pki::Role::Server,
                names,
                from,
                until,
            )
            .expect("server certificate");
            std::fs::write(dir.join("ca.pem"), &ca.cert_pem).expect("ca.pem");
            let (crt, key) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&crt, &leaf.cert_pem).expect("server.crt");
            std::fs::write(&key, leaf.key_pem.as_bytes()).expect("server.key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod server.key");
            if let Some((uid, gid)) = owner {
                for p in [&crt, &key] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
                }
            }
            base.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
        }
        let mut cluster = Cluster {
            tmp,
            bin,
            run_as,
            port: 0,
            password,
        };
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = daemon::free_port();
            // Written whole each time, so a retry replaces the port line rather than adding
            // one; the file keeps its owner. fsync stays on: durability tests need it real.
            let settings = format!(
                "\n# ferrohsm-test-support\nlisten_addresses = '127.0.0.1'\nport = {}\n\
                 unix_socket_directories = '{}'\nmax_connections = 100\nshared_buffers = 32MB\n",
                cluster.port,
                dir.display()
            );
            std::fs::write(&conf, format!("{base}{settings}")).expect("postgresql.conf");
            match cluster.pg_start() {
                Ok(()) => return Some(cluster),
                Err(why) => last = why,
            }
        }
        panic!("PostgreSQL found its port taken five times: {last}");
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (give it to clients apart from the URL).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The superuser: `hsm`.
    pub fn user(&self) -> &str {
        USER
    }

    /// `postgres://hsm@127.0.0.1:PORT/DB`, without the password: hsmd refuses URLs that carry
    /// one, so the password travels separately.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// `CREATE DATABASE "NAME"`.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        );
    }

    /// Runs `sql` in database `db` as the superuser over TCP; it must succeed within 30 s.
    /// Its stdout (unaligned, tuples only: `-At`) without the final newline.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let o = self.try_psql(db, sql);
        assert!(
            o.status.success(),
            "psql -d {db} -c {sql:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .trim_end_matches('\n')
            .to_string()
    }

    /// Like [`Cluster::psql`], returning the output whether or not it succeeded (a failure
    /// to connect is exit status 2). The password goes in `PGPASSWORD`, never on the command
    /// line, where `ps` would show it.
    pub fn try_psql(&self, db: &str, sql: &str) -> Output {
        let in_bin = self.bin.join("psql");
        let mut c = Command::new(if in_bin.is_file() {
            in_bin
        } else {
            PathBuf::from("psql")
        });
        without_pg_env(&mut c);
        c.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-U", USER, "-d", db, "-c", sql])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "10");
        daemon::output_within(&mut c, EXIT_DEADLINE)
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the data is flushed; it must succeed.
    pub fn stop(&self) {
        let o = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        self.check("pg_ctl stop", &o);
    }

    /// Starts the server again after [`Cluster::stop`], on the same port (URLs handed out stay
    /// right); it must succeed.
    pub fn start_again(&self) {
        if let Err(why) = self.pg_start() {
            panic!(
                "PostgreSQL did not start again on port {}: {why}",
                self.port
            );
        }
    }

    /// `pg_ctl restart -m fast`: every connection is dropped, the data survives.
    pub fn restart(&self) {
        let log = self.log_path();
        let o = self.pg_ctl(&[
            "-l",
            log.to_str().expect("utf-8 temp path"),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
        ]);
        self.check("pg_ctl restart", &o);
    }

    /// Ends every other session on database `db` (as a server crash or an administrator
    /// would); how many there were.
    pub fn terminate_backends(&self, db: &str) -> usize {
        let n = self.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.replace('\'', "''")
            ),
        );
        n.trim()
            .parse()
            .unwrap_or_else(|e| panic!("count {n:?}: {e}"))
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The cluster's temporary directory (`data/`, `log`, the Unix socket).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("log")
    }

    /// `pg_ctl -D DATA ARGS` as the cluster's owner, within [`PG_DEADLINE`].
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut c = self.pg_ctl_command();
        c.args(args);
        daemon::output_within(&mut c, PG_DEADLINE)
    }

    fn pg_ctl_command(&self) -> Command {
        let mut c = self.run_as.command(&self.bin.join("pg_ctl"), self.dir());
        c.arg("-D").arg(self.data());
        c
    }

    /// `pg_ctl start -w`: Ok once the server accepts connections; Err (why) when its port was
    /// taken; any other failure fails the test with the server log.
    fn pg_start(&self) -> Result<(), String> {
        let log = self.log_path();
        let before = std::fs::metadata(&log).map_or(0, |m| m.len());
        let o = self.pg_ctl(&[
            "-l",
            log.to_str().expect("utf-8 temp path"),
            "-w",
            "-t",
            "60",
            "start",
        ]);
        if o.status.success() {
            return Ok(());
        }
        // The log is appended to: only this start's part says why it failed.
        let all = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(
            all.get(usize::try_from(before).unwrap_or(0)..)
                .unwrap_or(&all),
        )
        .into_owned();
        let why = format!(
            "pg_ctl start failed ({}): {}{}\nserver log:\n{new}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(port_taken(&new), "PostgreSQL did not start: {why}");
        Err(why)
    }

    fn check(&self, what: &str, o: &Output) {
        assert!(
            o.status.success(),
            "{what} failed ({}): {}{}\nserver log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
    }

    /// Kills the postmaster of this cluster's data directory with SIGKILL, when `pg_ctl stop`
    /// could not stop it: only a process whose command line names this data directory.
    fn kill_postmaster(&self) {
        let data = self.data();
        let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            cmd.split(|&b| b == 0)
                .any(|arg| arg == data.as_os_str().as_encoded_bytes())
        });
        if ours {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Cluster {
    /// `pg_ctl stop -m immediate` (errors ignored: the server may be stopped already), then
    /// the directory goes. Never panics: a drop may run while a test is already failing.
    fn drop(&mut self) {
        let mut c = self.pg_ctl_command();
        c.args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if !succeeds_within(&mut c, PG_DEADLINE) {
            self.kill_postmaster();
        }
    }
}
