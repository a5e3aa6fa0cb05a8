//! Store errors as the answers clients get, and the alarm for a damaged record.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
use ferrohsm_proto::KeyInfo;
#[cfg(test)]
use ferrohsm_proto::UsageSet;

use crate::error::OpError;
use crate::keys::store::StoreError;

/// Logs the alarm for a record that failed its integrity check (never its contents).
pub(crate) fn alarm(e: &StoreError) {
    if let StoreError::Integrity { owner, id, reason } = e {
        tracing::error!(client = %owner, id, %reason, "ALARM: key store integrity failure; the record is refused until an operator restores it");
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A persistent key's description, for tests.
#[cfg(test)]
pub(crate) fn test_info(
    id: u32,
    label: &str,
    t: ferrohsm_proto::KeyType,
    usage: UsageSet,
    exportable: bool,
) -> KeyInfo {
    KeyInfo {
        usage,
        exportable,
        ..KeyInfo::generated(
            "alice".parse().expect("label"),
            id,
            label.parse().expect("test label"),
            t,
        )
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> OpError {
        let status = e.status();
        match e {
            StoreError::NotFound(k) => OpError::new(status, format!("no key {k}")),
            StoreError::Integrity { id: 0, reason, .. } => OpError::new(
                status,
                format!("{reason}; it is refused until an operator restores the store"),
            ),
            StoreError::Integrity { id, .. } => OpError::new(
                status,
                format!(
                    "key {id} failed its integrity check in the key store; it is refused until \
                     an operator restores it"
                ),
            ),
            StoreError::Backend(_) | StoreError::Open(_) => {
                tracing::error!(error = %e, "key store failure");
                OpError::new(
                    status,
                    "the key store could not complete the request; nothing was changed",
                )
            }
            other => OpError::new(status, other.to_string()),
        }
    }
}
