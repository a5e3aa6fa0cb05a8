//! Rows as SQLite returns them, validated into typed records: a field out of range is an
//! integrity failure of that one row, never a panic or a silently corrected value.

use std::sync::Arc;

use ferrohsm_proto::{KeyRef, KeyType, Label, UsageSet};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::backend;
use crate::keys::store::{KeyRecord, Origin, SESSION_ID_BASE, Sealed, SealedVersion, StoreError};

/// The key table's columns, in the order [`raw_row`] reads them.
pub(super) const COLUMNS: &str =
    "owner, id, label, key_type, usage, exportable, origin, created, version";

/// One key row of `owner`, by id or label.
pub(super) fn select_one(
    conn: &Connection,
    owner: &str,
    key: &KeyRef,
) -> Result<Option<RawRow>, StoreError> {
    let row = match key {
        KeyRef::Id(id) | KeyRef::OwnerId(_, id) => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM keys WHERE owner = ?1 AND id = ?2"
            ))
            .and_then(|mut st| st.query_row(params![owner, id], raw_row).optional()),
        KeyRef::Label(l) | KeyRef::OwnerLabel(_, l) => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM keys WHERE owner = ?1 AND label = ?2"
            ))
            .and_then(|mut st| st.query_row(params![owner, l.as_str()], raw_row).optional()),
    };
    row.map_err(backend)
}

/// A row as SQLite returned it, before validation.
pub(super) struct RawRow {
    owner: String,
    id: i64,
    label: String,
    key_type: String,
    usage: i64,
    exportable: i64,
    origin: String,
    created: i64,
    version: i64,
}

/// One key version row, before validation.
pub(super) struct RawVersion {
    version: i64,
    created: i64,
    sealed: Option<Vec<u8>>,
}

/// The version rows of key `(owner, id)`, oldest first.
pub(super) fn versions_of(
    conn: &Connection,
    owner: &str,
    id: i64,
) -> Result<Vec<RawVersion>, StoreError> {
    conn.prepare_cached(
        "SELECT version, created, sealed FROM key_versions WHERE owner = ?1 AND id = ?2 \
         ORDER BY version",
    )
    .and_then(|mut st| {
        st.query_map(params![owner, id], |r| {
            Ok(RawVersion {
                version: r.get(0)?,
                created: r.get(1)?,
                sealed: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(backend)
}

pub(super) fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        owner: r.get(0)?,
        id: r.get(1)?,
        label: r.get(2)?,
        key_type: r.get(3)?,
        usage: r.get(4)?,
        exportable: r.get(5)?,
        origin: r.get(6)?,
        created: r.get(7)?,
        version: r.get(8)?,
    })
}

impl RawRow {
    /// The row's id (out of range reads as `u32::MAX`, which `parse` refuses).
    pub(super) fn id(&self) -> u32 {
        u32::try_from(self.id).unwrap_or(u32::MAX)
    }

    /// Reads the row's versions and validates everything.
    pub(super) fn load(self, conn: &Connection) -> Result<Sealed, StoreError> {
        let versions = versions_of(conn, &self.owner, self.id)?;
        self.parse(versions)
    }

    /// Validates every field into a typed record; anything out of range is an integrity
    /// failure of this one row. The versions must be 1..=current, and the current one must
    /// have its material.
    pub(super) fn parse(self, versions: Vec<RawVersion>) -> Result<Sealed, StoreError> {
        let id = u32::try_from(self.id).unwrap_or(u32::MAX);
        let bad = |reason: String| StoreError::Integrity {
            owner: self.owner.clone(),
            id,
            reason,
        };
        let label: Label = self
            .label
            .parse()
            .map_err(|_| bad("the stored label is not a valid label".into()))?;
        let key_type: KeyType = self
            .key_type
            .parse()
            .map_err(|_| bad(format!("unknown stored key type {:?}", self.key_type)))?;
        let usage = u16::try_from(self.usage)
            .ok()
            .and_then(|u| UsageSet::try_from(u).ok())
            .ok_or_else(|| bad(format!("stored usage bits {} are invalid", self.usage)))?;
        let origin = Origin::from_name(&self.origin)
            .ok_or_else(|| bad(format!("unknown stored origin {:?}", self.origin)))?;
        if !(1..i64::from(SESSION_ID_BASE)).contains(&self.id) {
            return Err(bad(format!("stored id {} is out of range", self.id)));
        }
        let record = KeyRecord {
            owner: Arc::from(self.owner.as_str()),
            id,
            label,
            key_type,
            usage,
            exportable: match self.exportable {
                0 => false,
                1 => true,
                v => return Err(bad(format!("stored exportable flag {v} is invalid"))),
            },
            origin,
            created: u64::try_from(self.created)
                .map_err(|_| bad("stored creation time is negative".into()))?,
            version: u32::try_from(self.version)
                .map_err(|_| bad("stored version is out of range".into()))?,
        };
        let n = versions.len();
        let mut out = Vec::with_capacity(n);
        for (i, v) in versions.into_iter().enumerate() {
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
                sealed: v.sealed,
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
}
