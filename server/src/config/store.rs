//! `[store]`: where the key store is (an SQLite file, or a PostgreSQL database shared by
//! several nodes), what unwraps its master key, and how long the database may take.
//!
//! ```toml
//! [store]
//! path = "keys.db"                # SQLite (the default), or instead:
//! # url = "postgres://hsm@db.example:5432/ferrohsm"   # never with a password in it
//! # password_file = "store.password"                  # mode 0600; or HSMD_STORE_PASSWORD
//! # timeout_ms = 2000             # a request that needs the database fails within this
//! # connect_timeout_ms = 5000     # at start, hsmd retries this long, then exits 1
//! # revalidate_ms = 1000          # a cached key the database has not confirmed for this
//! #                               # long is checked again before use (fail closed)
//! key_file = "master.key"
//! cache_keys = 4096
//! readers = 2
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keys::store::postgres::{DEFAULT_REVALIDATE, PgSettings, check_url, instance_name};

/// The environment variable that holds the database password.
pub const PASSWORD_VAR: &str = "HSMD_STORE_PASSWORD";
/// Default `[store] timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// Default `[store] connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cache_keys: Option<usize>,
    readers: Option<usize>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    revalidate_ms: Option<u64>,
}

/// The durable key store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file. With a PostgreSQL store nothing is stored here, and only its
    /// directory is used (`audit.pub` is written beside it).
    pub path: PathBuf,
    /// The PostgreSQL database, when the store is there.
    pub postgres: Option<PgSettings>,
    /// The key file that wraps the master key; `None`: a passphrase does.
    pub key_file: Option<PathBuf>,
    /// Opened keys cached in memory, at most.
    pub cache_keys: usize,
    /// Store reader threads.
    pub readers: usize,
    /// The passphrase (from `HSMD_PASSPHRASE` or `--passphrase-file`, never from the file).
    pub passphrase: Option<crate::keys::seal::Passphrase>,
}

impl StoreConfig {
    /// Where the store is, for an unauthenticated reader (`/health`): its file, or
    /// `HOST:PORT/DB` (no user, no options).
    pub fn place(&self) -> String {
        match &self.postgres {
            Some(pg) => crate::keys::store::postgres::check_url(&pg.url)
                .ok()
                .and_then(|what| what.split_once('@').map(|(_, at)| at.to_string()))
                .unwrap_or_else(|| "postgres".into()),
            None => self.path.display().to_string(),
        }
    }

    /// The store's name in messages: its file, or `postgres://USER@HOST:PORT/DB`.
    pub fn describe(&self) -> String {
        match &self.postgres {
            Some(pg) => pg.url.clone(),
            None => self.path.display().to_string(),
        }
    }
}

fn millis(v: Option<u64>, default: u64, key: &str) -> Result<Duration, String> {
    match v {
        Some(0) => Err(format!(
            "store.{key}: expected a positive number of milliseconds"
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    }
}

impl RawStore {
    /// Validates `[store]` of a config in `dir`.
    pub(super) fn validate(self, dir: &Path, node: &str) -> Result<StoreConfig, String> {
        let postgres = match self.url {
            Some(url) => {
                if self.path.is_some() {
                    return Err(
                        "store: give either path (SQLite) or url (PostgreSQL), not both".into(),
                    );
                }
                check_url(&url).map_err(|e| format!("store.url: {e}"))?;
                Some(PgSettings {
                    url,
                    password: password(dir, self.password_file)?,
                    timeout: millis(self.timeout_ms, DEFAULT_TIMEOUT_MS, "timeout_ms")?,
                    connect_timeout: millis(
                        self.connect_timeout_ms,
                        DEFAULT_CONNECT_TIMEOUT_MS,
                        "connect_timeout_ms",
                    )?,
                    revalidate: millis(
                        self.revalidate_ms,
                        DEFAULT_REVALIDATE.as_millis() as u64,
                        "revalidate_ms",
                    )?,
                    instance: instance_name(node),
                })
            }
            None => {
                for (set, key) in [
                    (self.password_file.is_some(), "password_file"),
                    (self.timeout_ms.is_some(), "timeout_ms"),
                    (self.connect_timeout_ms.is_some(), "connect_timeout_ms"),
                    (self.revalidate_ms.is_some(), "revalidate_ms"),
                ] {
                    if set {
                        return Err(format!(
                            "store.{key} is a setting of a PostgreSQL store (store.url)"
                        ));
                    }
                }
                None
            }
        };
        Ok(StoreConfig {
            path: dir.join(self.path.unwrap_or_else(|| "keys.db".into())),
            postgres,
            key_file: self.key_file.map(|f| dir.join(f)),
            cache_keys: self.cache_keys.unwrap_or(4096),
            readers: super::parse::positive(self.readers, 2, "store.readers")?,
            passphrase: None,
        })
    }
}

/// `HSMD_STORE_PASSWORD`, if set.
pub fn password_from_env() -> Result<Option<Zeroizing<String>>, String> {
    std::env::var_os(PASSWORD_VAR)
        .map(|v| {
            v.into_string()
                .map(Zeroizing::new)
                .map_err(|_| format!("{PASSWORD_VAR} is not UTF-8"))
        })
        .transpose()
}

/// The database password: `HSMD_STORE_PASSWORD` if set, else the password file (which must
/// not be readable by others), else none (the database trusts this host or user).
fn password(dir: &Path, file: Option<PathBuf>) -> Result<Option<Zeroizing<String>>, String> {
    if let Some(v) = password_from_env()? {
        return Ok(Some(v));
    }
    let Some(file) = file else { return Ok(None) };
    let path = dir.join(file);
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("store.password_file: cannot read {}: {e}", path.display()))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "store.password_file: {} has mode {mode:04o}; it must be readable by its owner \
             only (chmod 600)",
            path.display()
        ));
    }
    let mut text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| format!("store.password_file: cannot read {}: {e}", path.display()))?,
    );
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    Ok(Some(text))
}
