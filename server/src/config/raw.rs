//! `hsmd.toml` as serde reads it, before validation (see `mod.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) workers: Option<usize>,
    pub(super) session_threads: Option<usize>,
    pub(super) inline_max: Option<usize>,
    pub(super) spin_us: Option<u64>,
    pub(super) worker_nice: Option<i32>,
    pub(super) pool_queue: Option<usize>,
    pub(super) window: Option<u32>,
    pub(super) max_body: Option<u32>,
    pub(super) max_connections: Option<usize>,
    pub(super) handshake_timeout_ms: Option<u64>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) node: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) addr: String,
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) allow_tls12: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPsk {
    pub(super) addr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShm {
    pub(super) socket: PathBuf,
    pub(super) mode: Option<String>,
    pub(super) ring_kib: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcp {
    pub(super) addr: String,
    #[serde(default)]
    pub(super) allow_insecure_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) auth_public_key: Option<String>,
    pub(super) tls_names: Option<Vec<String>>,
    pub(super) psk_identity: Option<String>,
    pub(super) psk_file: Option<PathBuf>,
    pub(super) allowed_uids: Option<Vec<u32>>,
    pub(super) trusted_wrap_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) store: Option<super::store::RawStore>,
    pub(super) tcp: Option<RawTcp>,
    pub(super) tls: Option<RawTls>,
    pub(super) tls_psk: Option<RawPsk>,
    pub(super) shm: Option<RawShm>,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) limits: super::limits::RawLimits,
}
