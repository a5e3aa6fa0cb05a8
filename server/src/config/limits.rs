//! `[limits]`: what one client, or one unauthenticated peer, can make the server hold.
//!
//! ```toml
//! [limits]
//! max_keys_per_client = 10000      # persistent and session keys; over it: quota_exceeded
//! max_counters_per_client = 10000
//! max_grants_per_client = 10000    # grants a client made of its keys
//! memory_mib = 256                 # bytes of requests and responses buffered by all sessions
//! preauth_max_body = 4096          # largest frame body before a session is authenticated
//! max_handshakes = 256             # connections not yet authenticated, all listeners together
//! max_handshakes_per_source = 16   # of those, from one IP address (shm: one uid)
//! ```
//! `max_handshakes` (like `[server] max_connections`) is lowered at start to fit the
//! file-descriptor limit, with a warning: at most half the descriptors left after hsmd's own
//! go to connections in handshake (`admission::fit`).

use serde::Deserialize;

use super::parse::positive;
use crate::keys::quota;

/// The limits, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per-client quotas.
    pub quotas: quota::QuotaLimits,
    /// Bytes of requests and responses buffered by all sessions together, at most.
    pub memory: usize,
    /// Largest frame body before authentication.
    pub preauth_max_body: u32,
    /// Connections in handshake (TLS, hello, proof), all listeners together.
    pub max_handshakes: usize,
    /// Connections in handshake from one source (IP address; uid on the shm socket).
    pub max_handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            quotas: quota::QuotaLimits::default(),
            memory: 256 << 20,
            preauth_max_body: 4096,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_keys_per_client: Option<usize>,
    max_counters_per_client: Option<usize>,
    max_grants_per_client: Option<usize>,
    memory_mib: Option<usize>,
    preauth_max_body: Option<u32>,
    max_handshakes: Option<usize>,
    max_handshakes_per_source: Option<usize>,
}

impl RawLimits {
    /// Validates into [`Limits`]; `max_body` is the server's (authenticated) frame cap.
    pub(super) fn validate(self, max_body: u32) -> Result<Limits, String> {
        let d = Limits::default();
        let memory_mib = positive(self.memory_mib, d.memory >> 20, "limits.memory_mib")?;
        let memory = memory_mib
            .checked_mul(1 << 20)
            .ok_or("limits.memory_mib: too large")?;
        let preauth_max_body = positive(
            self.preauth_max_body,
            d.preauth_max_body,
            "limits.preauth_max_body",
        )?;
        if !(512..=max_body).contains(&preauth_max_body) {
            return Err(format!(
                "limits.preauth_max_body: expected 512 to server.max_body ({max_body}), got \
                 {preauth_max_body}"
            ));
        }
        // Every session must be able to buffer at least one largest frame each way.
        if memory < 4 * max_body as usize {
            return Err(format!(
                "limits.memory_mib: expected at least 4 x server.max_body ({} MiB)",
                (4 * max_body as usize).div_ceil(1 << 20)
            ));
        }
        let max_handshakes = positive(
            self.max_handshakes,
            d.max_handshakes,
            "limits.max_handshakes",
        )?;
        let per_source = positive(
            self.max_handshakes_per_source,
            d.max_handshakes_per_source,
            "limits.max_handshakes_per_source",
        )?;
        Ok(Limits {
            quotas: quota::QuotaLimits {
                keys: positive(
                    self.max_keys_per_client,
                    d.quotas.keys,
                    "limits.max_keys_per_client",
                )?,
                counters: positive(
                    self.max_counters_per_client,
                    d.quotas.counters,
                    "limits.max_counters_per_client",
                )?,
                grants: positive(
                    self.max_grants_per_client,
                    d.quotas.grants,
                    "limits.max_grants_per_client",
                )?,
            },
            memory,
            preauth_max_body,
            max_handshakes,
            max_handshakes_per_source: per_source.min(max_handshakes),
        })
    }
}
