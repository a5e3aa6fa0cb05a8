//! Client profiles (`D/clients/NAME.toml`, written by `hsmd init`). Paths inside a profile are
//! relative to the profile file.
//!
//! ```toml
//! name = "alice"
//! auth_key = "alice.key"          # Ed25519 PKCS#8 PEM (TCP)
//! default_transport = "tcp"       # tcp | tls | tls-psk | shm
//! connect_timeout_ms = 1000      # per address before the next is tried (the last: 5 s or more)
//! spin_us = 50                    # with one request out over TCP or TLS, look for its answer this
//!                                 # long before the thread may sleep (0: never; at most 10000)
//! [tcp]
//! addr = "127.0.0.1:7301"         # or a list, tried in turn: ["10.0.0.1:7301", "10.0.0.2:7301"]
//! [tls]
//! addr = "127.0.0.1:7302"         # a string or a list, as for [tcp]
//! server_name = "localhost"       # must match the server certificate
//! ca = "../pki/ca.pem"            # trust anchor for the server certificate
//! cert = "alice.pem"              # our client certificate and its key
//! key = "alice.tls.key"
//! [tls_psk]
//! addr = "127.0.0.1:7303"
//! identity = "alice"
//! key_file = "alice.psk"          # the PSK as hex
//! [shm]
//! socket = "../hsmd.sock"         # the server's shared-memory set-up socket
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ferrohsm_proto::pem;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::ClientError;

/// One address, or several (the nodes of a cluster, tried in turn).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAddrs {
    One(String),
    Many(Vec<String>),
}

impl RawAddrs {
    fn list(self, section: &str) -> Result<Vec<String>, String> {
        let list = match self {
            RawAddrs::One(a) => vec![a],
            RawAddrs::Many(l) => l,
        };
        if list.is_empty() {
            return Err(format!(
                "[{section}] addr: expected an address or a list of them"
            ));
        }
        Ok(list)
    }
}

/// Default `connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;

pub use ferrohsm_proto::spin::{DEFAULT_SPIN_US, MAX_SPIN_US};

#[derive(Debug, Deserialize)]
struct RawTcp {
    addr: RawAddrs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    addr: RawAddrs,
    server_name: Option<String>,
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPsk {
    addr: RawAddrs,
    identity: Option<String>,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShm {
    socket: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RawProfile {
    name: String,
    auth_key: Option<PathBuf>,
    default_transport: Option<String>,
    tcp: Option<RawTcp>,
    tls: Option<RawTls>,
    tls_psk: Option<RawPsk>,
    shm: Option<RawShm>,
    connect_timeout_ms: Option<u64>,
    spin_us: Option<u64>,
}

/// Certificate TLS settings of a profile (paths resolved).
#[derive(Debug, Clone)]
pub struct TlsProfile {
    /// Server addresses, tried in turn.
    pub addrs: Vec<String>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// CA for the server certificate.
    pub ca: PathBuf,
    /// Client certificate and key; `None` connects without one (the server will refuse).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// TLS-PSK settings of a profile (paths resolved).
#[derive(Debug, Clone)]
pub struct PskProfile {
    /// Server addresses, tried in turn.
    pub addrs: Vec<String>,
    /// PSK identity.
    pub identity: String,
    /// File holding the PSK as hex.
    pub key_file: PathBuf,
}

/// Transports a profile can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 (or 1.2) with mutual certificates.
    Tls,
    /// TLS 1.3 with a pre-shared key (OpenSSL).
    TlsPsk,
    /// Shared-memory rings on this host.
    Shm,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "tls-psk" => Ok(Transport::TlsPsk),
            "shm" => Ok(Transport::Shm),
            _ => Err(format!(
                "unknown transport {s:?}; expected tcp, tls, tls-psk or shm"
            )),
        }
    }
}

/// A client's name and auth key. `Debug` never prints the key.
#[derive(Clone)]
pub struct Identity {
    /// Client name.
    pub name: String,
    /// Ed25519 auth key (dalek zeroizes it on drop); needed on TCP, not on TLS.
    pub auth_key: Option<SigningKey>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("auth_key", &"..")
            .finish()
    }
}

impl Identity {
    /// Reads an Ed25519 PKCS#8 PEM private key file.
    pub fn from_key_file(name: &str, path: &Path) -> Result<Identity, ClientError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            ClientError::Local(format!("cannot read auth key {}: {e}", path.display()))
        })?);
        let der = Zeroizing::new(pem::pem_decode("PRIVATE KEY", &text).unwrap_or_default());
        let seed = Zeroizing::new(pem::parse_ed25519_pkcs8(&der).ok_or_else(|| {
            ClientError::Local(format!(
                "auth key {}: expected an Ed25519 PKCS#8 PEM private key",
                path.display()
            ))
        })?);
        Ok(Identity {
            name: name.to_owned(),
            auth_key: Some(SigningKey::from_bytes(&seed)),
        })
    }
}

/// A loaded profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file it came from.
    pub path: PathBuf,
    /// Client name.
    pub name: String,
    /// Auth key path (resolved).
    pub auth_key: Option<PathBuf>,
    /// Transport used when none is given.
    pub default_transport: Transport,
    /// TCP addresses, tried in turn.
    pub tcp_addrs: Option<Vec<String>>,
    /// Certificate TLS.
    pub tls: Option<TlsProfile>,
    /// TLS-PSK.
    pub tls_psk: Option<PskProfile>,
    /// Shared-memory set-up socket.
    pub shm_socket: Option<PathBuf>,
    /// How long one address may take to accept a connection before the next is tried.
    pub connect_timeout: std::time::Duration,
    /// How long a caller with one request out over TCP or TLS looks for its answer before its
    /// thread may sleep (zero: never).
    pub spin: std::time::Duration,
}

impl Profile {
    /// Loads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        let err = |m: String| ClientError::Local(format!("profile {}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let raw: RawProfile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let default_transport = match raw.default_transport {
            Some(t) => t
                .parse()
                .map_err(|m| err(format!("default_transport: {m}")))?,
            None => Transport::Tcp,
        };
        Ok(Profile {
            path: path.to_path_buf(),
            name: raw.name.clone(),
            auth_key: raw.auth_key.map(|p| dir.join(p)),
            default_transport,
            tcp_addrs: raw
                .tcp
                .map(|t| t.addr.list("tcp"))
                .transpose()
                .map_err(err)?,
            tls: match raw.tls {
                Some(t) => Some(TlsProfile {
                    addrs: t.addr.list("tls").map_err(err)?,
                    server_name: t.server_name.unwrap_or_else(|| "localhost".into()),
                    ca: dir.join(t.ca),
                    identity: match (t.cert, t.key) {
                        (Some(c), Some(k)) => Some((dir.join(c), dir.join(k))),
                        (None, None) => None,
                        _ => return Err(err("[tls]: cert and key go together".into())),
                    },
                }),
                None => None,
            },
            tls_psk: match raw.tls_psk {
                Some(p) => Some(PskProfile {
                    addrs: p.addr.list("tls_psk").map_err(err)?,
                    identity: p.identity.unwrap_or_else(|| raw.name.clone()),
                    key_file: dir.join(p.key_file),
                }),
                None => None,
            },
            shm_socket: raw.shm.map(|s| dir.join(s.socket)),
            connect_timeout: match raw.connect_timeout_ms {
                Some(0) => {
                    return Err(err(
                        "connect_timeout_ms: expected a positive number of milliseconds".into(),
                    ));
                }
                Some(ms) => std::time::Duration::from_millis(ms),
                None => std::time::Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            },
            spin: match raw.spin_us {
                Some(us) if us > MAX_SPIN_US => {
                    return Err(err(format!(
                        "spin_us: {us} is more than {MAX_SPIN_US} (10 ms of a core per request)"
                    )));
                }
                Some(us) => std::time::Duration::from_micros(us),
                None => std::time::Duration::from_micros(DEFAULT_SPIN_US),
            },
        })
    }

    /// The name alone, for transports whose credential proves it (TLS).
    pub fn name_only(&self) -> Identity {
        Identity {
            name: self.name.clone(),
            auth_key: None,
        }
    }

    /// The identity for challenge-response transports (TCP, shm).
    pub fn identity(&self) -> Result<Identity, ClientError> {
        let path = self.auth_key.as_ref().ok_or_else(|| {
            ClientError::Local(format!(
                "profile {}: auth_key is not set",
                self.path.display()
            ))
        })?;
        Identity::from_key_file(&self.name, path)
    }
}
