//! Rows as a backend returns them, validated into typed records: a field out of range is an
//! integrity failure of that one row, never a panic or a silently corrected value.

use std::sync::Arc;

use ferrohsm_proto::{KeyType, Label, UsageSet};

use crate::keys::store::backend::KeyRow;
use crate::keys::store::records::{
    KeyRecord, Origin, SESSION_ID_BASE, Sealed, SealedVersion, StoreError,
};

/// The stored id of a row, for naming it (out of range reads as `u32::MAX`, which
/// [`parse`] refuses).
pub(super) fn id_of(row: &KeyRow) -> u32 {
    u32::try_from(row.id).unwrap_or(u32::MAX)
}

/// A record as stored.
pub(super) fn key_row(record: &KeyRecord) -> KeyRow {
    KeyRow {
        owner: record.owner.to_string(),
        id: i64::from(record.id),
        label: record.label.as_str().to_string(),
        key_type: record.key_type.name().to_string(),
        usage: i64::from(u16::from(record.usage)),
        exportable: i64::from(record.exportable),
        origin: record.origin.name().to_string(),
        created: i64::try_from(record.created).unwrap_or(i64::MAX),
        version: i64::from(record.version),
        versions: Vec::new(),
    }
}

/// Validates every field into a typed record; anything out of range is an integrity failure
/// of this one row. The versions must be 1..=current, and the current one must have its
/// material.
pub(super) fn parse(row: KeyRow) -> Result<Sealed, StoreError> {
    let id = id_of(&row);
    let bad = |reason: String| StoreError::Integrity {
        owner: row.owner.clone(),
        id,
        reason,
    };
    let label: Label = row
        .label
        .parse()
        .map_err(|_| bad("the stored label is not a valid label".into()))?;
    let key_type: KeyType = row
        .key_type
        .parse()
        .map_err(|_| bad(format!("unknown stored key type {:?}", row.key_type)))?;
    let usage = u16::try_from(row.usage)
        .ok()
        .and_then(|u| UsageSet::try_from(u).ok())
        .ok_or_else(|| bad(format!("stored usage bits {} are invalid", row.usage)))?;
    let origin = Origin::from_name(&row.origin)
        .ok_or_else(|| bad(format!("unknown stored origin {:?}", row.origin)))?;
    if !(1..i64::from(SESSION_ID_BASE)).contains(&row.id) {
        return Err(bad(format!("stored id {} is out of range", row.id)));
    }
    let record = KeyRecord {
        owner: Arc::from(row.owner.as_str()),
        id,
        label,
        key_type,
        usage,
        exportable: match row.exportable {
            0 => false,
            1 => true,
            v => return Err(bad(format!("stored exportable flag {v} is invalid"))),
        },
        origin,
        created: u64::try_from(row.created)
            .map_err(|_| bad("stored creation time is negative".into()))?,
        version: u32::try_from(row.version)
            .map_err(|_| bad("stored version is out of range".into()))?,
    };
    let n = row.versions.len();
    let mut out = Vec::with_capacity(n);
    for (i, v) in row.versions.iter().enumerate() {
        if v.version != i as i64 + 1 {
            return Err(bad(format!(
                "key version {} is missing from the store",
                i + 1
            )));
        }
        out.push(SealedVersion {
            version: i as u32 + 1,
            created: u64::try_from(v.created)
                .map_err(|_| bad("a version's creation time is negative".into()))?,
            sealed: v.sealed.clone(),
        });
    }
    if n as u64 != u64::from(record.version) {
        return Err(bad(format!(
            "the record's current version is {} but the store holds {n} versions",
            record.version
        )));
    }
    if out.last().is_none_or(|v| v.sealed.is_none()) {
        return Err(bad("the current version has no material".into()));
    }
    Ok(Sealed {
        record,
        versions: out,
    })
}
