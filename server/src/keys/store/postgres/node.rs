//! A node of the cluster, as the database registers it.

/// A node of the cluster, as registered in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// `[server] node`.
    pub name: String,
    /// Listener addresses clients use ("" when the node has none).
    pub tcp: String,
    /// Certificate TLS.
    pub tls: String,
    /// TLS-PSK.
    pub tls_psk: String,
    /// Shared-memory socket path (per host).
    pub shm: String,
    /// Seconds since the Unix epoch.
    pub registered: i64,
}
