//! From sealed records to usable keys, on the store threads: every version that still has
//! material must authenticate against its record and form a key of the recorded type.

use ferrohsm_proto::{KeyInfo, Lifetime, VersionInfo};

use crate::keys::handle::KeyHandle;
use crate::keys::material::KeyMaterial;
use crate::keys::seal::MasterKey;
use crate::keys::store::records::{KeyRecord, NewVersion, Sealed, StoreError};

/// The public description of a key with this record.
pub fn info_of(r: &KeyRecord, lifetime: Lifetime, versions: Vec<VersionInfo>) -> KeyInfo {
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

/// Opens a sealed record into a usable key.
pub fn open(master: &MasterKey, s: Sealed) -> Result<KeyHandle, StoreError> {
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

/// The key just stored as `record` (its id assigned) from the versions it was made of, built on
/// the store writer so that its material never crosses a session thread.
pub(super) fn created_handle(
    record: KeyRecord,
    versions: Vec<NewVersion>,
) -> Result<KeyHandle, StoreError> {
    let infos = versions
        .iter()
        .enumerate()
        .map(|(i, v)| VersionInfo {
            version: i as u32 + 1,
            created: v.created,
            retired: v.material.is_none(),
        })
        .collect();
    let mut live: Vec<(u32, KeyMaterial)> = versions
        .into_iter()
        .enumerate()
        .rev()
        .filter_map(|(i, v)| v.material.map(|m| (i as u32 + 1, *m)))
        .collect();
    if live.first().map(|(v, _)| *v) != Some(record.version) {
        return Err(StoreError::Invalid(
            "a new key's current version has no material".into(),
        ));
    }
    let (_, material) = live.remove(0);
    Ok(KeyHandle {
        owner: record.owner.clone(),
        info: info_of(&record, Lifetime::Persistent, infos),
        material,
        older: live,
    })
}
