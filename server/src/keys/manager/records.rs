//! From stored records to key handles, and from store errors to the answers clients get.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
use ferrohsm_proto::UsageSet;
use ferrohsm_proto::{KeyInfo, Lifetime, VersionInfo};

use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::material::KeyMaterial;
use crate::keys::seal::MasterKey;
use crate::keys::store::{KeyRecord, Sealed, StoreError};

pub(crate) fn info_of(r: &KeyRecord, lifetime: Lifetime, versions: Vec<VersionInfo>) -> KeyInfo {
    KeyInfo {
        id: r.id,
        label: r.label.clone(),
        key_type: r.key_type,
        usage: r.usage,
        exportable: r.exportable,
        lifetime,
        created: r.created,
        // Owners are configured client names, which are valid labels.
        owner: r.owner.parse().unwrap_or_else(|_| r.label.clone()),
        origin: r.origin,
        current_version: r.version,
        versions,
    }
}

/// Logs the alarm for a record that failed its integrity check (never its contents).
pub(crate) fn alarm(e: &StoreError) {
    if let StoreError::Integrity { owner, id, reason } = e {
        tracing::error!(client = %owner, id, %reason, "ALARM: key store integrity failure; the record is refused until an operator restores it");
    }
}

/// Opens a sealed record into a usable key (on a store thread): every version that still has
/// material must authenticate against the record.
pub(crate) fn open(master: &MasterKey, s: Sealed) -> Result<KeyHandle, StoreError> {
    let bad = |reason: &str| StoreError::Integrity {
        owner: s.record.owner.to_string(),
        id: s.record.id,
        reason: reason.into(),
    };
    let mut materials = Vec::new();
    for v in s.versions.iter().rev() {
        let Some(sealed) = &v.sealed else { continue };
        let bytes = master
            .open_version(&s.record, v.version, sealed)
            .map_err(|_| bad("the sealed material does not authenticate against its record"))?;
        let material = KeyMaterial::from_stored(s.record.key_type, &bytes)
            .ok_or_else(|| bad("the material does not form a key of the recorded type"))?;
        materials.push((v.version, material));
    }
    let versions = s
        .versions
        .iter()
        .map(|v| VersionInfo {
            version: v.version,
            created: v.created,
            retired: v.sealed.is_none(),
        })
        .collect();
    let mut live = materials.into_iter();
    let (_, material) = live
        .next()
        .ok_or_else(|| bad("the current version has no material"))?;
    Ok(KeyHandle {
        owner: s.record.owner.clone(),
        info: info_of(&s.record, Lifetime::Persistent, versions),
        material,
        older: live.collect(),
    })
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
