//! The SQLite backend: one file (`keys.db`), WAL with `synchronous=FULL` (a commit returns
//! only once it is on disk), `secure_delete` (a deleted row's bytes are overwritten), a schema
//! version in `PRAGMA user_version` with a migration list, and `STRICT` tables.
//!
//! ```text
//!  meta(name PK, value)             kdf, argon2 parameters and salt, wrapped master key;
//!                                   audit key (sealed), its public half, the signed head
//!  owners(owner PK, next_id)        per-client id high-water mark: ids are never reused
//!  keys(owner, id, label, key_type, usage, exportable, origin, created, version)
//!       PRIMARY KEY (owner, id)     WITHOUT ROWID: rows clustered by owner, lookup by id
//!       UNIQUE (owner, label)       lookup by label, and label uniqueness in the store itself
//!       version                     the current version
//!  key_versions(owner, id, version, created, sealed)   sealed: NULL once retired
//!  grants(owner, id, grantee, ops, created, tag)        tag: under the master key
//!  counters(owner, name, value, created, tag)           tag: under the master key
//!  audit(seq PK, time, client, session, transport, op, key, detail, status, prev_hash, hash)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_proto::{KeyRef, Label};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{
    Applied, AuditEvent, Change, GrantRecord, KeyStore, Listed, MasterRecord, Sealed, StoreError,
};
use crate::keys::audit::SignedHead;
use crate::keys::seal::{Argon2Params, Kdf, MasterKey};
use row::{COLUMNS, raw_row, select_one};

mod apply;
mod audit;
mod row;

pub use audit::AuditSnapshot;

/// Schema migrations; `MIGRATIONS[i]` takes `user_version` i to i + 1.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
CREATE TABLE owners (owner TEXT PRIMARY KEY, next_id INTEGER NOT NULL) STRICT;
CREATE TABLE keys (
    owner TEXT NOT NULL,
    id INTEGER NOT NULL,
    label TEXT NOT NULL,
    key_type TEXT NOT NULL,
    usage INTEGER NOT NULL,
    exportable INTEGER NOT NULL,
    origin TEXT NOT NULL,
    created INTEGER NOT NULL,
    version INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (owner, id)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX keys_by_label ON keys (owner, label);
",
    "
CREATE TABLE key_versions (
    owner TEXT NOT NULL,
    id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created INTEGER NOT NULL,
    sealed BLOB,
    PRIMARY KEY (owner, id, version)
) STRICT, WITHOUT ROWID;
INSERT INTO key_versions (owner, id, version, created, sealed)
    SELECT owner, id, 1, created, sealed FROM keys;
ALTER TABLE keys DROP COLUMN sealed;
CREATE TABLE grants (
    owner TEXT NOT NULL,
    id INTEGER NOT NULL,
    grantee TEXT NOT NULL,
    ops INTEGER NOT NULL,
    created INTEGER NOT NULL,
    tag BLOB NOT NULL,
    PRIMARY KEY (owner, id, grantee)
) STRICT, WITHOUT ROWID;
CREATE TABLE counters (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    created INTEGER NOT NULL,
    tag BLOB NOT NULL,
    PRIMARY KEY (owner, name)
) STRICT, WITHOUT ROWID;
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    client TEXT NOT NULL,
    session INTEGER NOT NULL,
    transport TEXT NOT NULL,
    op TEXT NOT NULL,
    key TEXT NOT NULL,
    detail TEXT NOT NULL,
    status TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A connection to `keys.db`.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    // The audit signing key, once unsealed (the writer signs the head at every commit).
    audit_key: Option<ed25519_dalek::SigningKey>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn connect(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Open(format!("cannot open key store {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(backend)?;
    let pragma = |name: &str, value: &str| {
        conn.pragma_update(None, name, value).map_err(|e| {
            StoreError::Open(format!("key store {}: PRAGMA {name}: {e}", path.display()))
        })
    };
    pragma("synchronous", "FULL")?;
    pragma("secure_delete", "ON")?;
    pragma("foreign_keys", "ON")?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| {
            StoreError::Open(format!(
                "key store {} is not a readable SQLite database: {e}",
                path.display()
            ))
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open(format!(
            "key store {}: cannot switch to WAL mode (got {mode})",
            path.display()
        )));
    }
    Ok(conn)
}

impl SqliteStore {
    /// Creates a new store at `path` (which must not exist) holding `master`.
    pub fn create(path: &Path, master: &MasterRecord) -> Result<SqliteStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Open(format!(
                "key store {} already exists",
                path.display()
            )));
        }
        // Created 0600 before SQLite opens it: SQLite gives its WAL and shm files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StoreError::Open(format!("cannot create key store {}: {e}", path.display()))
                })?;
        }
        let mut conn = connect(path, true)?;
        migrate(&mut conn, 0)?;
        let mut s = SqliteStore {
            conn,
            path: path.to_path_buf(),
            audit_key: None,
        };
        s.replace_master_record(master)?;
        Ok(s)
    }

    /// Opens an existing store: refuses a missing file, a file that fails SQLite's integrity
    /// check, and a schema this build does not know; applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open(format!(
                "key store {} does not exist (hsmd init creates it; if you moved the data \
                 directory, check the [store] path in hsmd.toml)",
                path.display()
            )));
        }
        let mut conn = connect(path, false)?;
        let damaged = |e: String| {
            StoreError::Open(format!(
                "key store {} failed its integrity check: {e}; refusing to start (restore it \
                 from a backup; it is never repaired automatically)",
                path.display()
            ))
        };
        let verdict: Vec<String> = conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| damaged(e.to_string()))?;
        if verdict.first().map(String::as_str) != Some("ok") {
            return Err(damaged(verdict.join("; ")));
        }
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| damaged(e.to_string()))?;
        if version == 0 {
            return Err(StoreError::Open(format!(
                "{} is not a FerroHSM key store (no schema)",
                path.display()
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "key store {} has schema version {version}, newer than this hsmd understands \
                 ({SCHEMA_VERSION}); refusing to start",
                path.display()
            )));
        }
        migrate(&mut conn, version)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            audit_key: None,
        })
    }

    /// Writes a consistent snapshot of the whole store to `out` (which must not exist), while
    /// other connections may be writing: SQLite's `VACUUM INTO` reads one snapshot.
    pub fn backup_to(&mut self, out: &Path) -> Result<(), StoreError> {
        let out_str = out.to_str().ok_or_else(|| {
            StoreError::Open(format!("backup path {} is not UTF-8", out.display()))
        })?;
        self.conn
            .execute("VACUUM INTO ?1", [out_str])
            .map_err(|e| StoreError::Backend(format!("backup to {}: {e}", out.display())))?;
        Ok(())
    }

    #[cfg(test)]
    fn set_counter(
        &mut self,
        master: &MasterKey,
        owner: &str,
        name: &Label,
        value: u64,
    ) -> Result<(), StoreError> {
        apply::set_counter_for_test(&self.conn, master, owner, name, value)
    }
}

/// Applies migrations from `from` to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, from: u32) -> Result<(), StoreError> {
    if from >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction().map_err(backend)?;
    for sql in &MIGRATIONS[from as usize..] {
        tx.execute_batch(sql).map_err(backend)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

impl KeyStore for SqliteStore {
    fn commit(
        &mut self,
        master: &MasterKey,
        batch: Vec<Change>,
        denials: Vec<AuditEvent>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        // The write lock from the start (IMMEDIATE): a deferred transaction that reads first
        // and then writes cannot wait out another process's write (`hsmd passwd`, a backup
        // tool); SQLite refuses its upgrade at once instead of using the busy timeout.
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let key = match self.audit_key.take() {
            Some(k) => k,
            None => audit::signing_key(&tx, master)?,
        };
        let mut head = audit::last(&tx)?;
        let start = head.0;
        let mut results = Vec::with_capacity(batch.len());
        for Change { mutation, audit } in batch {
            // A savepoint per mutation: one that fails leaves no trace and does not affect
            // the others in the batch; its audit entry records the failure.
            let sp = tx.savepoint().map_err(backend)?;
            let r = apply::apply(&sp, master, mutation);
            if r.is_ok() {
                sp.commit().map_err(backend)?;
            } else {
                drop(sp);
            }
            if let Some(mut e) = audit {
                e.status = match &r {
                    Ok(_) => "ok",
                    Err(err) => err.status().name(),
                };
                if let Ok(Applied::Key(rec)) = &r {
                    e.key = format!("{}:{}", rec.owner, rec.id);
                }
                audit::append(&tx, &mut head, &e)?;
            }
            results.push(r);
        }
        for e in &denials {
            audit::append(&tx, &mut head, e)?;
        }
        if head.0 != start {
            audit::put_head(&tx, &SignedHead::sign(&key, head.0, head.1))?;
        }
        // synchronous=FULL: this returns once the WAL is on disk. One fsync for the batch.
        let done = tx.commit().map_err(backend);
        self.audit_key = Some(key);
        done?;
        Ok(results)
    }

    fn grants(&mut self, master: &MasterKey) -> Result<Vec<GrantRecord>, StoreError> {
        let rows: Vec<(String, i64, String, i64, i64, Vec<u8>)> = self
            .conn
            .prepare("SELECT owner, id, grantee, ops, created, tag FROM grants")
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for (owner, id, grantee, ops, created, tag) in rows {
            let g = (|| {
                Some(GrantRecord {
                    owner: owner.as_str().into(),
                    id: u32::try_from(id).ok()?,
                    grantee: grantee.as_str().into(),
                    ops: u16::try_from(ops)
                        .ok()
                        .and_then(|o| ferrohsm_proto::UsageSet::try_from(o).ok())?,
                    created: u64::try_from(created).ok()?,
                })
            })();
            let valid = g.filter(|g| master.open_with(apply::grant_aad(g).bytes(), &tag).is_ok());
            match valid {
                Some(g) => out.push(g),
                // A grant that does not authenticate is never honoured; the alarm names it.
                None => tracing::error!(
                    client = %owner, id, grantee = %grantee,
                    "ALARM: a grant row failed its integrity check; it is ignored"
                ),
            }
        }
        Ok(out)
    }

    fn counter(
        &mut self,
        master: &MasterKey,
        owner: &str,
        name: &Label,
    ) -> Result<Option<u64>, StoreError> {
        Ok(apply::read_counter(&self.conn, master, owner, name)?.map(|(v, _)| v))
    }

    fn find(&mut self, owner: &str, key: &KeyRef) -> Result<Option<Sealed>, StoreError> {
        // The row and its versions from one snapshot: a delete committed between the two
        // reads would otherwise look like a row that lost its versions (an integrity alarm).
        let tx = self.conn.transaction().map_err(backend)?;
        let found = select_one(&tx, owner, key)?
            .map(|r| r.load(&tx))
            .transpose()?;
        tx.commit().map_err(backend)?;
        Ok(found)
    }

    fn label_in_use(&mut self, owner: &str, label: &Label) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM keys WHERE owner = ?1 AND label = ?2")
            .and_then(|mut st| st.exists(params![owner, label.as_str()]))
            .map_err(backend)
    }

    fn list(&mut self, owner: &str, after: u32, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One snapshot for the rows and their versions, as in `find`.
        let tx = self.conn.transaction().map_err(backend)?;
        let raw = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM keys WHERE owner = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .and_then(|mut st| {
                st.query_map(params![owner, after, limit], raw_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        // A damaged row is reported as such, not hidden: the caller raises the alarm.
        let listed = raw.into_iter().map(|r| (r.id(), r.load(&tx))).collect();
        tx.commit().map_err(backend)?;
        Ok(listed)
    }

    fn held(&mut self) -> Result<Vec<(String, usize, usize)>, StoreError> {
        let mut held: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for (table, counters) in [("keys", false), ("counters", true)] {
            let mut st = self
                .conn
                .prepare(&format!(
                    "SELECT owner, COUNT(*) FROM {table} GROUP BY owner"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(backend)?;
            for (owner, n) in rows {
                let e = held.entry(owner).or_default();
                let n = usize::try_from(n).unwrap_or(0);
                if counters { e.1 = n } else { e.0 = n }
            }
        }
        Ok(held.into_iter().map(|(o, (k, c))| (o, k, c)).collect())
    }

    fn master_record(&mut self) -> Result<MasterRecord, StoreError> {
        let get = |name: &str| -> Result<Option<Vec<u8>>, StoreError> {
            self.conn
                .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(backend)
        };
        let missing = |what: &str| {
            StoreError::Open(format!(
                "key store {} has no {what}: it is damaged or not a FerroHSM store",
                self.path.display()
            ))
        };
        let kdf_name = get("kdf")?.ok_or_else(|| missing("master key record"))?;
        let wrapped = get("wrapped_master")?.ok_or_else(|| missing("wrapped master key"))?;
        let kdf = match kdf_name.as_slice() {
            b"keyfile" => Kdf::KeyFile,
            b"argon2id" => {
                let p = get("argon2_params")?.ok_or_else(|| missing("argon2 parameters"))?;
                let salt = get("argon2_salt")?.ok_or_else(|| missing("argon2 salt"))?;
                let word = |i: usize| -> Option<u32> {
                    Some(u32::from_le_bytes(
                        p.get(4 * i..4 * i + 4)?.try_into().ok()?,
                    ))
                };
                let (Some(m_kib), Some(t), Some(pl), 12) = (word(0), word(1), word(2), p.len())
                else {
                    return Err(missing("valid argon2 parameters"));
                };
                Kdf::Argon2id {
                    params: Argon2Params { m_kib, t, p: pl },
                    salt: salt
                        .as_slice()
                        .try_into()
                        .map_err(|_| missing("valid argon2 salt"))?,
                }
            }
            other => {
                return Err(StoreError::Open(format!(
                    "key store {}: unknown master key protection {:?}",
                    self.path.display(),
                    String::from_utf8_lossy(other)
                )));
            }
        };
        Ok(MasterRecord { kdf, wrapped })
    }

    fn replace_master_record(&mut self, rec: &MasterRecord) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let put = |name: &str, value: &[u8]| {
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map_err(backend)
        };
        put("kdf", rec.kdf.name().as_bytes())?;
        put("wrapped_master", &rec.wrapped)?;
        match &rec.kdf {
            Kdf::KeyFile => {
                tx.execute(
                    "DELETE FROM meta WHERE name IN ('argon2_params', 'argon2_salt')",
                    [],
                )
                .map_err(backend)?;
            }
            Kdf::Argon2id { params, salt } => {
                let p: Vec<u8> = [params.m_kib, params.t, params.p]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                put("argon2_params", &p)?;
                put("argon2_salt", salt)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn reader(&self) -> Result<Box<dyn KeyStore>, StoreError> {
        let conn = connect(&self.path, false)?;
        conn.pragma_update(None, "query_only", "ON")
            .map_err(backend)?;
        Ok(Box::new(SqliteStore {
            conn,
            path: self.path.clone(),
            audit_key: None,
        }))
    }
}

#[cfg(test)]
mod tests;
