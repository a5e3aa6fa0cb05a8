//! Each mutation inside the batch transaction (its own savepoint; see `Store::commit`): the
//! sealing of every version's material to its record, and the tags of grant and counter rows
//! under the master key over every field, so a row edited or inserted in the database is
//! refused, never honoured.

use ferrohsm_proto::{KeyRef, KeyType};

use super::rows::parse;
use crate::keys::material::KeyMaterial;
use crate::keys::seal::{Fields, MasterKey};
use crate::keys::store::backend::{Backend, CounterRow, GrantRow, VersionRow};
use crate::keys::store::records::{Applied, GrantRecord, Mutation, Sealed, StoreError};

/// Key types whose material may have versions (their outputs record the version).
const ROTATABLE: [KeyType; 3] = [
    KeyType::ChaCha20Poly1305,
    KeyType::Aes256Gcm,
    KeyType::HmacSha256,
];

/// Canonical associated data of a grant row.
pub(super) fn grant_aad(g: &GrantRecord) -> Fields {
    Fields::new(b"FerroHSM grant v1\0")
        .var(g.owner.as_bytes())
        .fixed(&g.id.to_le_bytes())
        .var(g.grantee.as_bytes())
        .fixed(&u16::from(g.ops).to_le_bytes())
        .fixed(&g.created.to_le_bytes())
}

/// Canonical associated data of a counter row.
pub(super) fn counter_aad(owner: &str, name: &str, value: u64, created: u64) -> Fields {
    Fields::new(b"FerroHSM counter v1\0")
        .var(owner.as_bytes())
        .var(name.as_bytes())
        .fixed(&value.to_le_bytes())
        .fixed(&created.to_le_bytes())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn integrity(owner: &str, id: u32, reason: impl Into<String>) -> StoreError {
    StoreError::Integrity {
        owner: owner.into(),
        id,
        reason: reason.into(),
    }
}

pub(super) fn sealing(e: crate::keys::seal::SealError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The key row, with its current version checked to open: a record that does not open is
/// refused even to its apparent owner, so no change ever builds on damaged data.
fn checked_key(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    key: &KeyRef,
) -> Result<Sealed, StoreError> {
    let row = db
        .key(owner, key)?
        .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
    let s = parse(row)?;
    master
        .open_version(&s.record, s.record.version, s.current())
        .map_err(|e| integrity(owner, s.record.id, e.to_string()))?;
    Ok(s)
}

pub(super) fn stored_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn delete(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    key: &KeyRef,
) -> Result<Applied, StoreError> {
    let s = checked_key(db, master, owner, key)?;
    db.delete_key(owner, i64::from(s.record.id))?;
    Ok(Applied::Key(s.record))
}

fn rotate(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    id: u32,
    material: &KeyMaterial,
) -> Result<Applied, StoreError> {
    let s = checked_key(db, master, owner, &KeyRef::Id(id))?;
    if !ROTATABLE.contains(&s.record.key_type) {
        return Err(StoreError::Invalid(format!(
            "a {} key cannot be rotated; only encryption and MAC keys have versions",
            s.record.key_type
        )));
    }
    if material.key_type() != s.record.key_type {
        return Err(StoreError::Invalid(format!(
            "a {} key cannot take {} material",
            s.record.key_type,
            material.key_type()
        )));
    }
    let next = s
        .record
        .version
        .checked_add(1)
        .ok_or_else(|| StoreError::Invalid("the key has no version numbers left".into()))?;
    let record = s.record.at_version(next);
    // The old current version is re-sealed as superseded, in the same transaction.
    let old = master
        .open_version(&s.record, s.record.version, s.current())
        .map_err(|e| integrity(owner, id, e.to_string()))?;
    let resealed = master
        .seal_version(&record, s.record.version, &old)
        .map_err(sealing)?;
    let sealed = master
        .seal_version(&record, next, &material.to_stored())
        .map_err(sealing)?;
    let id64 = i64::from(id);
    db.set_sealed(owner, id64, i64::from(s.record.version), &resealed)?;
    db.insert_version(
        owner,
        id64,
        &VersionRow {
            version: i64::from(next),
            created: stored_time(now()),
            sealed: Some(sealed),
        },
    )?;
    db.set_version(owner, id64, i64::from(next))?;
    Ok(Applied::Key(record))
}

fn retire(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    id: u32,
    below: u32,
) -> Result<Applied, StoreError> {
    let s = checked_key(db, master, owner, &KeyRef::Id(id))?;
    let current = s.record.version;
    if below < 2 || below > current {
        return Err(StoreError::Invalid(format!(
            "retire --below {below}: expected 2..={current} (the current version, {current}, \
             is never retired)"
        )));
    }
    db.retire_below(owner, i64::from(id), i64::from(below))?;
    Ok(Applied::Key(s.record))
}

fn grant(db: &mut dyn Backend, master: &MasterKey, g: GrantRecord) -> Result<Applied, StoreError> {
    checked_key(db, master, &g.owner, &KeyRef::Id(g.id))?;
    let tag = master
        .seal_with(grant_aad(&g).bytes(), b"")
        .map_err(sealing)?;
    db.put_grant(&GrantRow {
        owner: g.owner.to_string(),
        id: i64::from(g.id),
        grantee: g.grantee.to_string(),
        ops: i64::from(u16::from(g.ops)),
        created: stored_time(g.created),
        tag,
    })?;
    Ok(Applied::Done)
}

/// Every grant whose tag authenticates; any other is never honoured, and its alarm names it.
pub(super) fn grants(
    db: &mut dyn Backend,
    master: &MasterKey,
) -> Result<Vec<GrantRecord>, StoreError> {
    Ok(db
        .grants()?
        .into_iter()
        .filter_map(|row| grant_of(master, row))
        .collect())
}

/// A grant row as a record, if its fields fit and its tag authenticates (else its alarm
/// names it, and it is never honoured).
pub(super) fn grant_of(master: &MasterKey, row: GrantRow) -> Option<GrantRecord> {
    let g = (|| {
        Some(GrantRecord {
            owner: row.owner.as_str().into(),
            id: u32::try_from(row.id).ok()?,
            grantee: row.grantee.as_str().into(),
            ops: u16::try_from(row.ops)
                .ok()
                .and_then(|o| ferrohsm_proto::UsageSet::try_from(o).ok())?,
            created: u64::try_from(row.created).ok()?,
        })
    })();
    let g = g.filter(|g| master.open_with(grant_aad(g).bytes(), &row.tag).is_ok());
    if g.is_none() {
        tracing::error!(
            client = %row.owner, id = row.id, grantee = %row.grantee,
            "ALARM: a grant row failed its integrity check; it is ignored"
        );
    }
    g
}

fn revoke(
    db: &mut dyn Backend,
    owner: &str,
    id: u32,
    grantee: &str,
) -> Result<Applied, StoreError> {
    if !db.delete_grant(owner, i64::from(id), grantee)? {
        return Err(StoreError::NoGrant(id.to_string(), grantee.into()));
    }
    Ok(Applied::Done)
}

/// A counter's value and creation time, its tag checked.
pub(super) fn read_counter(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    name: &str,
) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(row) = db.counter(owner, name)? else {
        return Ok(None);
    };
    // Stored as the i64 with the same bits: databases have signed integers.
    let (value, created) = (row.value as u64, row.created as u64);
    master
        .open_with(counter_aad(owner, name, value, created).bytes(), &row.tag)
        .map_err(|_| {
            integrity(
                owner,
                0,
                format!("counter {name} does not authenticate (edited in the database)"),
            )
        })?;
    Ok(Some((value, created)))
}

/// Writes a counter's value with its tag.
pub(super) fn write_counter(
    db: &mut dyn Backend,
    master: &MasterKey,
    owner: &str,
    name: &str,
    value: u64,
    created: u64,
) -> Result<(), StoreError> {
    let tag = master
        .seal_with(counter_aad(owner, name, value, created).bytes(), b"")
        .map_err(sealing)?;
    db.put_counter(&CounterRow {
        owner: owner.to_string(),
        name: name.to_string(),
        value: value as i64,
        created: created as i64,
        tag,
    })
}

/// One mutation inside the batch transaction.
pub(super) fn apply(
    db: &mut dyn Backend,
    master: &MasterKey,
    m: Mutation,
) -> Result<Applied, StoreError> {
    match m {
        // Every create goes through create.rs with its quota (`Store::commit`).
        Mutation::Create { .. } => Err(StoreError::Backend(
            "a new key is made with the others of its batch".into(),
        )),
        Mutation::Delete { owner, key } => delete(db, master, &owner, &key),
        Mutation::Rotate {
            owner,
            id,
            material,
        } => rotate(db, master, &owner, id, &material),
        Mutation::Retire { owner, id, below } => retire(db, master, &owner, id, below),
        Mutation::Grant(g) => grant(db, master, g),
        Mutation::Revoke { owner, id, grantee } => revoke(db, &owner, id, &grantee),
        Mutation::CounterCreate { owner, name } => {
            if read_counter(db, master, &owner, name.as_str())?.is_some() {
                return Err(StoreError::CounterExists(name));
            }
            write_counter(db, master, &owner, name.as_str(), 0, now())?;
            Ok(Applied::Counter(0))
        }
        Mutation::CounterInc { owner, name } => {
            let (value, created) = read_counter(db, master, &owner, name.as_str())?
                .ok_or(StoreError::NoCounter(name.clone()))?;
            let next = value
                .checked_add(1)
                .ok_or_else(|| StoreError::CounterOverflow(name.clone()))?;
            write_counter(db, master, &owner, name.as_str(), next, created)?;
            Ok(Applied::Counter(next))
        }
        Mutation::Record => Ok(Applied::Done),
    }
}
