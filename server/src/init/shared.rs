//! What `hsmd init` and `hsmd init --join` share: the options, the report, the node name,
//! and writing files safely.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::validate_client_name;
use crate::error::ServerError;
use crate::keys::seal::Passphrase;

/// Default plain TCP address.
pub const DEFAULT_TCP: &str = "127.0.0.1:7301";
/// Default certificate TLS address.
pub const DEFAULT_TLS: &str = "127.0.0.1:7302";
/// Default TLS-PSK address.
pub const DEFAULT_TLS_PSK: &str = "127.0.0.1:7303";
/// How long development leaf certificates last.
pub(super) const LEAF_DAYS: u64 = 825;

/// What to initialise.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Target directory.
    pub dir: PathBuf,
    /// Client names.
    pub clients: Vec<String>,
    /// Plain TCP address.
    pub tcp: SocketAddr,
    /// Certificate TLS address.
    pub tls: SocketAddr,
    /// TLS-PSK address.
    pub tls_psk: SocketAddr,
    /// Shared-memory socket (default `DIR/hsmd.sock`).
    pub shm_socket: Option<PathBuf>,
    /// Re-initialise a non-empty directory (keeping existing keys).
    pub force: bool,
    /// Protect a new key store with this passphrase instead of a key file.
    pub passphrase: Option<Passphrase>,
    /// Keep the key store in this PostgreSQL database (`postgres://USER@HOST:PORT/DB`, no
    /// password: that comes from `HSMD_STORE_PASSWORD`) instead of `D/keys.db`.
    pub store_url: Option<String>,
    /// This node's name (default: the directory's name and four random hex digits; with
    /// `force`, the name the old config had).
    pub node: Option<String>,
    /// Make one more node of the cluster this data directory belongs to (`join.rs`).
    pub join: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The config file.
    pub config: PathBuf,
    /// Profile paths by client.
    pub profiles: Vec<(String, PathBuf)>,
}

pub(super) fn io_err(ctx: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |e| ServerError::io(ctx, e)
}

/// This node's name: `--node`, else (with `force`) the one the old config had, else the
/// directory's name (made a valid name) and four random hex digits.
pub(super) fn node_name(opts: &InitOptions) -> Result<String, ServerError> {
    if let Some(n) = &opts.node {
        validate_client_name(n).map_err(|m| ServerError::Init(format!("--node: {m}")))?;
        return Ok(n.clone());
    }
    if opts.force
        && let Some(n) = fs::read_to_string(opts.dir.join("hsmd.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("server")?.get("node")?.as_str().map(String::from))
    {
        return Ok(n);
    }
    let name = opts
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut base: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_alphabetic()) {
        base = format!("node{base}");
    }
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).map_err(|_| ServerError::Init("the OS random source failed".into()))?;
    let node = format!("{}-{:02x}{:02x}", base.trim_end_matches('-'), r[0], r[1]);
    validate_client_name(&node).map_err(|m| ServerError::Init(format!("node name: {m}")))?;
    Ok(node)
}

/// Creates a new secret file with `mode` from the start (never briefly world-readable).
pub(super) fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), ServerError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    f.write_all(data)
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    f.sync_all()
        .map_err(io_err(format!("cannot sync {}", path.display())))
}

/// Replaces `path` with `data` (written to a temporary file, synced, renamed).
pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    f.write_all(data)
        .map_err(io_err(format!("cannot write {}", tmp.display())))?;
    f.sync_all()
        .map_err(io_err(format!("cannot sync {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("cannot write {}", path.display())))
}
