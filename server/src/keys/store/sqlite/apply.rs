//! Each mutation inside the batch transaction (its own savepoint; see `commit`). Grant and
//! counter rows carry a tag under the master key over every field, so a row edited or
//! inserted in the database file is refused, never honoured.

use ferrohsm_proto::{KeyRef, KeyType, Label};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use super::backend;
use super::row::{COLUMNS, select_one};
use crate::keys::seal::{Fields, MasterKey};
use crate::keys::store::{
    Applied, GrantRecord, KeyRecord, Mutation, SESSION_ID_BASE, Sealed, StoreError,
};

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

/// The key row, with its current version checked to open: a record that does not open is
/// refused even to its apparent owner, so no change ever builds on damaged data.
fn checked_key(
    tx: &Connection,
    master: &MasterKey,
    owner: &str,
    key: &KeyRef,
) -> Result<Sealed, StoreError> {
    let row = select_one(tx, owner, key)?.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
    let s = row.load(tx)?;
    master
        .open_version(&s.record, s.record.version, s.current())
        .map_err(|e| integrity(owner, s.record.id, e.to_string()))?;
    Ok(s)
}

/// Inserts version `v` of `record`'s key (sealed as current when `v` is `record.version`).
fn insert_version(
    tx: &Connection,
    master: &MasterKey,
    record: &KeyRecord,
    v: u32,
    created: u64,
    secret: &[u8],
) -> Result<(), StoreError> {
    let sealed = master
        .seal_version(record, v, secret)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO key_versions (owner, id, version, created, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            &*record.owner,
            record.id,
            v,
            i64::try_from(created).unwrap_or(i64::MAX),
            sealed
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn create(
    tx: &Connection,
    master: &MasterKey,
    mut record: KeyRecord,
    versions: &[(u64, Option<Zeroizing<Vec<u8>>>)],
) -> Result<Applied, StoreError> {
    if versions.last().is_none_or(|(_, m)| m.is_none()) {
        return Err(StoreError::Invalid(
            "a new key's current version has no material".into(),
        ));
    }
    let owner: &str = &record.owner.clone();
    let taken = tx
        .prepare_cached("SELECT 1 FROM keys WHERE owner = ?1 AND label = ?2")
        .and_then(|mut st| st.exists(params![owner, record.label.as_str()]))
        .map_err(backend)?;
    if taken {
        return Err(StoreError::LabelInUse(record.label.clone()));
    }
    tx.prepare_cached(
        "INSERT INTO owners (owner, next_id) VALUES (?1, 1) ON CONFLICT (owner) DO NOTHING",
    )
    .and_then(|mut st| st.execute(params![owner]))
    .map_err(backend)?;
    let id: i64 = tx
        .prepare_cached(
            "UPDATE owners SET next_id = next_id + 1 WHERE owner = ?1 RETURNING next_id - 1",
        )
        .and_then(|mut st| st.query_row(params![owner], |r| r.get(0)))
        .map_err(backend)?;
    record.id = u32::try_from(id)
        .ok()
        .filter(|id| *id < SESSION_ID_BASE)
        .ok_or(StoreError::IdsExhausted)?;
    record.version = versions.len() as u32;
    tx.prepare_cached(&format!(
        "INSERT INTO keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            owner,
            record.id,
            record.label.as_str(),
            record.key_type.name(),
            u16::from(record.usage),
            record.exportable,
            record.origin.name(),
            i64::try_from(record.created).unwrap_or(i64::MAX),
            record.version,
        ])
    })
    .map_err(backend)?;
    for (i, (created, secret)) in versions.iter().enumerate() {
        let v = record.at_version(i as u32 + 1);
        match secret {
            Some(secret) => insert_version(tx, master, &record, v.version, *created, secret)?,
            None => {
                tx.prepare_cached(
                    "INSERT INTO key_versions (owner, id, version, created, sealed) \
                     VALUES (?1, ?2, ?3, ?4, NULL)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        &*v.owner,
                        v.id,
                        v.version,
                        i64::try_from(*created).unwrap_or(i64::MAX)
                    ])
                })
                .map_err(backend)?;
            }
        }
    }
    Ok(Applied::Key(record))
}

fn delete(
    tx: &Connection,
    master: &MasterKey,
    owner: &str,
    key: &KeyRef,
) -> Result<Applied, StoreError> {
    let s = checked_key(tx, master, owner, key)?;
    let id = s.record.id;
    for sql in [
        "DELETE FROM key_versions WHERE owner = ?1 AND id = ?2",
        "DELETE FROM grants WHERE owner = ?1 AND id = ?2",
        "DELETE FROM keys WHERE owner = ?1 AND id = ?2",
    ] {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute(params![owner, id]))
            .map_err(backend)?;
    }
    Ok(Applied::Key(s.record))
}

/// Key types whose material may have versions (their outputs record the version).
const ROTATABLE: [KeyType; 3] = [
    KeyType::ChaCha20Poly1305,
    KeyType::Aes256Gcm,
    KeyType::HmacSha256,
];

fn rotate(
    tx: &Connection,
    master: &MasterKey,
    owner: &str,
    id: u32,
    secret: &[u8],
) -> Result<Applied, StoreError> {
    let s = checked_key(tx, master, owner, &KeyRef::Id(id))?;
    if !ROTATABLE.contains(&s.record.key_type) {
        return Err(StoreError::Invalid(format!(
            "a {} key cannot be rotated; only encryption and MAC keys have versions",
            s.record.key_type
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
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "UPDATE key_versions SET sealed = ?4 WHERE owner = ?1 AND id = ?2 AND version = ?3",
    )
    .and_then(|mut st| st.execute(params![owner, id, s.record.version, resealed]))
    .map_err(backend)?;
    insert_version(tx, master, &record, next, now(), secret)?;
    tx.prepare_cached("UPDATE keys SET version = ?3 WHERE owner = ?1 AND id = ?2")
        .and_then(|mut st| st.execute(params![owner, id, next]))
        .map_err(backend)?;
    Ok(Applied::Key(record))
}

fn retire(
    tx: &Connection,
    master: &MasterKey,
    owner: &str,
    id: u32,
    below: u32,
) -> Result<Applied, StoreError> {
    let s = checked_key(tx, master, owner, &KeyRef::Id(id))?;
    let current = s.record.version;
    if below < 2 || below > current {
        return Err(StoreError::Invalid(format!(
            "retire --below {below}: expected 2..={current} (the current version, {current}, \
             is never retired)"
        )));
    }
    // secure_delete is on: the sealed bytes are overwritten in the file, not just unlinked.
    tx.prepare_cached(
        "UPDATE key_versions SET sealed = NULL WHERE owner = ?1 AND id = ?2 AND version < ?3",
    )
    .and_then(|mut st| st.execute(params![owner, id, below]))
    .map_err(backend)?;
    Ok(Applied::Key(s.record))
}

fn grant(tx: &Connection, master: &MasterKey, g: GrantRecord) -> Result<Applied, StoreError> {
    checked_key(tx, master, &g.owner, &KeyRef::Id(g.id))?;
    let tag = master
        .seal_with(grant_aad(&g).bytes(), b"")
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO grants (owner, id, grantee, ops, created, tag) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (owner, id, grantee) DO UPDATE SET ops = excluded.ops, \
         created = excluded.created, tag = excluded.tag",
    )
    .and_then(|mut st| {
        st.execute(params![
            &*g.owner,
            g.id,
            &*g.grantee,
            u16::from(g.ops),
            i64::try_from(g.created).unwrap_or(i64::MAX),
            tag
        ])
    })
    .map_err(backend)?;
    Ok(Applied::Done)
}

fn revoke(tx: &Connection, owner: &str, id: u32, grantee: &str) -> Result<Applied, StoreError> {
    let n = tx
        .prepare_cached("DELETE FROM grants WHERE owner = ?1 AND id = ?2 AND grantee = ?3")
        .and_then(|mut st| st.execute(params![owner, id, grantee]))
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::NoGrant(id.to_string(), grantee.into()));
    }
    Ok(Applied::Done)
}

/// A counter's value and creation time, its tag checked.
pub(super) fn read_counter(
    conn: &Connection,
    master: &MasterKey,
    owner: &str,
    name: &Label,
) -> Result<Option<(u64, u64)>, StoreError> {
    let row: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached("SELECT value, created, tag FROM counters WHERE owner = ?1 AND name = ?2")
        .and_then(|mut st| {
            st.query_row(params![owner, name.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let Some((value, created, tag)) = row else {
        return Ok(None);
    };
    // Stored as the i64 with the same bits: SQLite integers are signed.
    let (value, created) = (value as u64, created as u64);
    master
        .open_with(
            counter_aad(owner, name.as_str(), value, created).bytes(),
            &tag,
        )
        .map_err(|_| {
            integrity(
                owner,
                0,
                format!("counter {name} does not authenticate (edited in the database)"),
            )
        })?;
    Ok(Some((value, created)))
}

fn write_counter(
    tx: &Connection,
    master: &MasterKey,
    owner: &str,
    name: &Label,
    value: u64,
    created: u64,
) -> Result<(), StoreError> {
    let tag = master
        .seal_with(
            counter_aad(owner, name.as_str(), value, created).bytes(),
            b"",
        )
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO counters (owner, name, value, created, tag) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value, tag = excluded.tag",
    )
    .and_then(|mut st| {
        st.execute(params![
            owner,
            name.as_str(),
            value as i64,
            created as i64,
            tag
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// One mutation inside the batch transaction.
pub(super) fn apply(
    tx: &Connection,
    master: &MasterKey,
    m: Mutation,
) -> Result<Applied, StoreError> {
    match m {
        Mutation::Create { record, versions } => create(tx, master, record, &versions),
        Mutation::Delete { owner, key } => delete(tx, master, &owner, &key),
        Mutation::Rotate { owner, id, secret } => rotate(tx, master, &owner, id, &secret),
        Mutation::Retire { owner, id, below } => retire(tx, master, &owner, id, below),
        Mutation::Grant(g) => grant(tx, master, g),
        Mutation::Revoke { owner, id, grantee } => revoke(tx, &owner, id, &grantee),
        Mutation::CounterCreate { owner, name } => {
            if read_counter(tx, master, &owner, &name)?.is_some() {
                return Err(StoreError::CounterExists(name));
            }
            write_counter(tx, master, &owner, &name, 0, now())?;
            Ok(Applied::Counter(0))
        }
        Mutation::CounterInc { owner, name } => {
            let (value, created) = read_counter(tx, master, &owner, &name)?
                .ok_or(StoreError::NoCounter(name.clone()))?;
            let next = value
                .checked_add(1)
                .ok_or_else(|| StoreError::CounterOverflow(name.clone()))?;
            write_counter(tx, master, &owner, &name, next, created)?;
            Ok(Applied::Counter(next))
        }
        Mutation::Record => Ok(Applied::Done),
    }
}

#[cfg(test)]
pub(super) fn set_counter_for_test(
    conn: &Connection,
    master: &MasterKey,
    owner: &str,
    name: &Label,
    value: u64,
) -> Result<(), StoreError> {
    write_counter(conn, master, owner, name, value, now())
}
