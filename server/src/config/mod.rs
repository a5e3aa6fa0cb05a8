//! `hsmd.toml`: parsed with serde, then validated into types. Errors name the file, the key and
//! what was expected.
//!
//! ```toml
//! [server]
//! workers = 0               # crypto worker threads; 0 = one per CPU
//! session_threads = 0       # session arbiters (sockets, framing, cheap ops); 0 = one per CPU
//! worker_nice = 0           # crypto workers run this much nicer than session threads
//! inline_max = 16384        # bytes up to which cheap ops (random, digest, AEAD, HMAC, and a
//!                           # lone sign/verify) run on the session's own thread instead of a
//!                           # crypto worker; 0 = never
//! spin_us = 50              # once all its answers are written, a TCP or TLS session looks for
//!                           # its next request this long before its thread may sleep; 0 = never
//! pool_queue = 1024         # crypto jobs queued or running per client, at most
//! window = 32               # requests in flight per session
//! max_body = 1048576        # largest frame body, bytes
//! max_connections = 1024    # authenticated sessions per listener (lowered to fit RLIMIT_NOFILE)
//! handshake_timeout_ms = 3000   # TLS handshake plus hello and proof, at most
//!
//! max_connections_per_client = 64
//! node = "hsm-a1b2"         # this node's name (hsmd init writes it; unique per database)
//!
//! [store]                         # the durable key store (created by hsmd init; store.rs)
//! path = "keys.db"                # SQLite, WAL, synchronous=FULL; or url = "postgres://..."
//! key_file = "master.key"         # development: wraps the master key; omit it for a
//!                                 # passphrase store (HSMD_PASSPHRASE or --passphrase-file)
//! cache_keys = 4096               # opened keys kept in memory, at most
//! readers = 2                     # store reader threads
//!
//! [tcp]
//! addr = "127.0.0.1:7301"
//! allow_insecure_remote = false   # plain TCP off loopback needs this
//!
//! [tls]                           # mutual-certificate TLS (rustls)
//! addr = "127.0.0.1:7302"
//! ca = "pki/ca.pem"               # client certificates must chain to this CA
//! cert = "pki/server.pem"         # server certificate chain
//! key = "pki/server.key"
//! allow_tls12 = false
//!
//! [tls_psk]                       # TLS 1.3 with a pre-shared key (OpenSSL)
//! addr = "127.0.0.1:7303"
//!
//! [shm]                           # shared memory for processes on this host
//! socket = "hsmd.sock"            # Unix socket where sessions are set up
//! mode = "0660"                   # socket file permissions: who may connect at all
//! ring_kib = 256                  # bytes per ring (power of two), per session
//!
//! [clients.alice]
//! auth_public_key = "<64 hex digits: the Ed25519 public half of clients/alice.key>"
//! tls_names = ["alice"]           # certificate CN/SAN names meaning alice (default: [name])
//! psk_identity = "alice"          # default: the client name
//! psk_file = "clients/alice.psk"  # the PSK as hex; no file, no PSK login
//! allowed_uids = [1000]           # shm: peer uids allowed for alice (absent: any uid)
//! trusted_wrap_keys = ["backup"]  # alice's non-exportable aes256gcm wrap keys (labels or
//!                                 # ids) that may wrap her non-exportable keys (backups)
//!
//! [limits]                       # see config/limits.rs: quotas, memory, pre-auth bounds
//! max_keys_per_client = 10000
//!
//! [metrics]                      # off unless listen is set (metrics/: GET /metrics, /health)
//! listen = "127.0.0.1:9301"
//!
//! [audit]
//! level = "changes"               # "changes": state changes and denials; "all": also every
//!                                 # sign, verify, encrypt, decrypt, mac, mac-verify, rewrap
//! ```
//! Paths are relative to the config file.

use parse::{existing, positive};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_proto::spin::{DEFAULT_SPIN_US, MAX_SPIN_US};

use crate::error::ServerError;

mod clients;
pub mod limits;
mod parse;
mod raw;
pub mod store;
pub use clients::{ClientConfig, decode_hex, encode_hex, validate_client_name};
use raw::RawConfig;
pub use store::{PASSWORD_VAR, StoreConfig};

/// Plain TCP listener settings.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Address to bind (port 0 picks a free port).
    pub addr: SocketAddr,
}

/// Certificate TLS listener settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Address to bind.
    pub addr: SocketAddr,
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Also accept TLS 1.2.
    pub allow_tls12: bool,
}

/// TLS-PSK listener settings.
#[derive(Debug, Clone)]
pub struct PskConfig {
    /// Address to bind.
    pub addr: SocketAddr,
}

/// Shared-memory listener settings.
#[derive(Debug, Clone)]
pub struct ShmConfig {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Socket file mode.
    pub mode: u32,
    /// Bytes per ring.
    pub ring_size: u32,
}

/// `[metrics]`: the HTTP endpoint for Prometheus and load balancers.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address to bind (`GET /metrics`, `GET /health`).
    pub listen: SocketAddr,
}

/// How hsmd writes its log (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (the default).
    Text,
    /// One JSON object per line (tracing's JSON formatter), for log shippers.
    Json,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Crypto worker threads.
    pub workers: usize,
    /// Session arbiters (threads that run sessions).
    pub session_threads: usize,
    /// Largest input a cheap operation runs inline on the session's thread (0: never).
    pub inline_max: usize,
    /// How long a socket session looks for its next request before its thread may sleep.
    pub spin: std::time::Duration,
    /// How much nicer (Linux nice increment) crypto workers run than session arbiters.
    pub worker_nice: i32,
    /// Crypto jobs queued or running, at most.
    pub pool_queue: usize,
    /// Requests in flight per session.
    pub window: u32,
    /// Largest accepted frame body.
    pub max_body: u32,
    /// Concurrent connections, at most.
    pub max_connections: usize,
    /// A connection that has not authenticated by then is closed.
    pub handshake_timeout: Duration,
    /// Concurrent sessions per client, at most.
    pub max_connections_per_client: usize,
    /// This node's name (`[server] node`), unique among the nodes sharing a database.
    pub node: Option<String>,
    /// The key store.
    pub store: Option<StoreConfig>,
    /// Plain TCP listener.
    pub tcp: Option<TcpConfig>,
    /// Certificate TLS listener.
    pub tls: Option<TlsConfig>,
    /// TLS-PSK listener.
    pub tls_psk: Option<PskConfig>,
    /// Shared-memory listener.
    pub shm: Option<ShmConfig>,
    /// Clients by name.
    pub clients: BTreeMap<String, ClientConfig>,
    /// How much goes into the audit chain.
    pub audit: crate::keys::audit::Level,
    /// `[log] format`: how hsmd writes its log lines.
    pub log_format: LogFormat,
    /// `[metrics]`: off unless `listen` is set.
    pub metrics: Option<MetricsConfig>,
    /// `[limits]`.
    pub limits: limits::Limits,
}

impl Config {
    /// A configuration with defaults and no listeners or clients (for tests and `init`).
    pub fn empty() -> Config {
        Config {
            workers: default_workers(),
            session_threads: default_workers(),
            inline_max: DEFAULT_INLINE_MAX,
            spin: DEFAULT_SPIN,
            worker_nice: DEFAULT_WORKER_NICE,
            pool_queue: 1024,
            window: 32,
            max_body: ferrohsm_proto::DEFAULT_MAX_BODY,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(3),
            limits: limits::Limits::default(),
            max_connections_per_client: 64,
            node: None,
            store: None,
            tcp: None,
            tls: None,
            tls_psk: None,
            shm: None,
            clients: BTreeMap::new(),
            audit: crate::keys::audit::Level::Changes,
            log_format: LogFormat::Text,
            metrics: None,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Config(format!("cannot read config {}: {e}", path.display()))
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ServerError> {
        let err = |msg: String| ServerError::Config(format!("{}: {msg}", path.display()));
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut c = Config::empty();
        let s = raw.server;
        if let Some(w) = s.workers {
            c.workers = if w == 0 { default_workers() } else { w };
        }
        if let Some(n) = s.session_threads {
            c.session_threads = if n == 0 {
                default_workers()
            } else {
                n.min(256)
            };
        }
        if let Some(n) = s.inline_max {
            c.inline_max = n;
        }
        if let Some(us) = s.spin_us {
            if us > MAX_SPIN_US {
                return Err(err(format!(
                    "server.spin_us: {us} is more than {MAX_SPIN_US} (10 ms of a core per request)"
                )));
            }
            c.spin = std::time::Duration::from_micros(us);
        }
        if let Some(n) = s.worker_nice {
            if !(0..=19).contains(&n) {
                return Err(err(format!(
                    "server.worker_nice: expected 0 to 19, got {n}"
                )));
            }
            c.worker_nice = n;
        }
        c.pool_queue = positive(s.pool_queue, c.pool_queue, "server.pool_queue").map_err(err)?;
        c.window = positive(s.window, c.window, "server.window").map_err(err)?;
        c.max_body = positive(s.max_body, c.max_body, "server.max_body").map_err(err)?;
        if c.max_body < 1024 {
            return Err(err("server.max_body: expected at least 1024 bytes".into()));
        }
        c.max_connections = positive(
            s.max_connections,
            c.max_connections,
            "server.max_connections",
        )
        .map_err(err)?;
        if let Some(ms) = s.handshake_timeout_ms {
            c.handshake_timeout = Duration::from_millis(
                positive(Some(ms), 1, "server.handshake_timeout_ms").map_err(err)?,
            );
        }
        c.limits = raw.limits.validate(c.max_body).map_err(err)?;
        c.max_connections_per_client = positive(
            s.max_connections_per_client,
            c.max_connections_per_client,
            "server.max_connections_per_client",
        )
        .map_err(err)?;
        if let Some(n) = &s.node {
            validate_client_name(n).map_err(|m| err(format!("server.node: {m}")))?;
        }
        c.node = s.node.clone();
        let dir = config_dir(path);
        if let Some(st) = raw.store {
            c.store = Some(
                st.validate(&dir, c.node.as_deref().unwrap_or(""))
                    .map_err(err)?,
            );
        }
        if let Some(t) = raw.tcp {
            let addr = parse_addr(&t.addr, "tcp.addr").map_err(err)?;
            if !addr.ip().is_loopback() && !t.allow_insecure_remote {
                return Err(err(format!(
                    "tcp.addr {addr} is not a loopback address; plain TCP is not confidential, \
                     so set tcp.allow_insecure_remote = true to allow it (or use TLS)"
                )));
            }
            c.tcp = Some(TcpConfig { addr });
        }
        if let Some(t) = raw.tls {
            let file = |p: PathBuf, key: &str| existing(&dir, p, &format!("tls.{key}"));
            c.tls = Some(TlsConfig {
                addr: parse_addr(&t.addr, "tls.addr").map_err(err)?,
                ca: file(t.ca, "ca").map_err(err)?,
                cert: file(t.cert, "cert").map_err(err)?,
                key: file(t.key, "key").map_err(err)?,
                allow_tls12: t.allow_tls12,
            });
        }
        if let Some(t) = raw.tls_psk {
            c.tls_psk = Some(PskConfig {
                addr: parse_addr(&t.addr, "tls_psk.addr").map_err(err)?,
            });
        }
        if let Some(t) = raw.shm {
            let mode = match t.mode.as_deref() {
                None => 0o660,
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        err(format!(
                            "shm.mode: expected octal permissions like \"0660\", got {m:?}"
                        ))
                    })?,
            };
            let kib = t.ring_kib.unwrap_or(256);
            let ring_size = kib.checked_mul(1024).filter(|r| {
                r.is_power_of_two()
                    && (ferrohsm_shm::segment::MIN_RING..=ferrohsm_shm::segment::MAX_RING)
                        .contains(r)
            });
            let ring_size = ring_size.ok_or_else(|| {
                err(format!(
                    "shm.ring_kib: expected a power of two from 4 to 65536, got {kib}"
                ))
            })?;
            c.shm = Some(ShmConfig {
                socket: dir.join(t.socket),
                mode,
                ring_size,
            });
        }
        c.clients = clients::parse(raw.clients, &dir).map_err(err)?;
        if let Some(listen) = raw.metrics.listen {
            c.metrics = Some(MetricsConfig {
                listen: parse_addr(&listen, "metrics.listen").map_err(err)?,
            });
        }
        c.log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(format!(
                    "log.format: expected \"text\" or \"json\", got {other:?}"
                )));
            }
        };
        c.audit = match raw.audit.level.as_deref() {
            None | Some("changes") => crate::keys::audit::Level::Changes,
            Some("all") => crate::keys::audit::Level::All,
            Some(other) => {
                return Err(err(format!(
                    "audit.level: expected \"changes\" or \"all\", got {other:?}"
                )));
            }
        };
        clients::check_unique(&c.clients).map_err(err)?;
        if c.store.is_none() {
            return Err(err(format!(
                "no [store] section: hsmd keeps its keys in a durable store; run `hsmd init \
                 --dir {} --clients ... --force` to add one (existing credentials are kept)",
                if dir.as_os_str().is_empty() {
                    ".".to_string()
                } else {
                    dir.display().to_string()
                }
            )));
        }
        if c.tcp.is_none() && c.tls.is_none() && c.tls_psk.is_none() && c.shm.is_none() {
            return Err(err(
                "no listener configured: expected a [tcp], [tls], [tls_psk] or [shm] section"
                    .into(),
            ));
        }
        Ok(c)
    }
}

fn parse_addr(s: &str, key: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{key}: expected an IP address and port, got {s:?}"))
}

/// Cheap operations on inputs up to this size run on the session's thread. Measured (see
/// BENCHMARKS.md): a hop to a crypto worker and back costs about 8 us here, the time
/// ChaCha20-Poly1305 takes for 19 KiB; at 16 KiB inline is as fast or faster at 1 and 16 in
/// flight, and HMAC (1.4 GB/s) costs at most about one and a half hops.
pub const DEFAULT_INLINE_MAX: usize = 16384;

/// How long a TCP or TLS session looks for its next request before its thread may sleep
/// (`[server] spin_us`; chosen by measurement, BENCHMARKS.md "Sessions that do not fall asleep").
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(DEFAULT_SPIN_US);

/// Crypto workers' nice increment. 0: measured on this project's 2-core machine (BENCHMARKS.md),
/// nicer workers removed 4 ms scheduling stalls in some runs but cost throughput in others, so
/// the default leaves the kernel's scheduling alone.
pub const DEFAULT_WORKER_NICE: i32 = 0;

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// The directory a config file lives in (for relative paths).
pub fn config_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests;
