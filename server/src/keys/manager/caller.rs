//! Who is asking, and how the audit log names a key the caller names.

use std::sync::Arc;

use ferrohsm_proto::KeyRef;

/// Who is asking: the proven client name, its session and its transport.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Proven client name (the namespace).
    pub client: Arc<str>,
    /// Session id.
    pub session: u64,
    /// Transport name (tcp, tls, tls-psk, shm), for the audit log.
    pub transport: &'static str,
}

/// `key` as the audit log names it: always with its owner.
pub(crate) fn qualified(caller: &Caller, key: &KeyRef) -> String {
    match key.owner() {
        Some(_) => key.to_string(),
        None => format!("{}:{key}", caller.client),
    }
}
