//! The SQLite backend: one file (`keys.db`), WAL with `synchronous=FULL` (a commit returns
//! only once it is on disk), `secure_delete` (a deleted row's bytes are overwritten), a schema
//! version in `PRAGMA user_version` with a migration list, and `STRICT` tables.
//!
//! ```text
//!  meta(name PK, value)             kdf, argon2 parameters and salt, wrapped master key
//!  owners(owner PK, next_id)        per-client id high-water mark: ids are never reused
//!  keys(owner, id, label, key_type, usage, exportable, origin, created, version, sealed)
//!       PRIMARY KEY (owner, id)     WITHOUT ROWID: rows clustered by owner, lookup by id
//!       UNIQUE (owner, label)       lookup by label, and label uniqueness in the store itself
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_proto::{KeyRef, Label};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{KeyRecord, KeyStore, MasterRecord, Mutation, SESSION_ID_BASE, Sealed, StoreError};
use crate::keys::seal::{Argon2Params, Kdf, MasterKey};
use row::{COLUMNS, RawRow, raw_row, select_one};

mod row;

/// Schema migrations; `MIGRATIONS[i]` takes `user_version` i to i + 1.
const MIGRATIONS: &[&str] = &["
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
"];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A connection to `keys.db`.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
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
        })
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

/// One mutation inside the batch transaction.
fn apply(tx: &Connection, master: &MasterKey, m: Mutation) -> Result<KeyRecord, StoreError> {
    match m {
        Mutation::Create { mut record, secret } => {
            let owner: &str = &record.owner;
            let taken: Option<i64> = tx
                .prepare_cached("SELECT id FROM keys WHERE owner = ?1 AND label = ?2")
                .and_then(|mut st| {
                    st.query_row(params![owner, record.label.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if taken.is_some() {
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
            let sealed = master
                .seal_record(&record, &secret)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.prepare_cached(&format!(
                "INSERT INTO keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
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
                    sealed,
                ])
            })
            .map_err(backend)?;
            Ok(record)
        }
        Mutation::Delete { owner, key } => {
            let row = select_one(tx, &owner, &key)?
                .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
            let s = row.parse()?;
            // A record that does not open is refused, even to its apparent owner: deleting
            // it would silently drop evidence of damage (or another client's moved key).
            master
                .open_record(&s.record, &s.sealed)
                .map_err(|e| StoreError::Integrity {
                    owner: s.record.owner.to_string(),
                    id: s.record.id,
                    reason: e.to_string(),
                })?;
            tx.prepare_cached("DELETE FROM keys WHERE owner = ?1 AND id = ?2")
                .and_then(|mut st| st.execute(params![&*owner, s.record.id]))
                .map_err(backend)?;
            Ok(s.record)
        }
    }
}

impl KeyStore for SqliteStore {
    fn commit(
        &mut self,
        master: &MasterKey,
        batch: Vec<Mutation>,
    ) -> Result<Vec<Result<KeyRecord, StoreError>>, StoreError> {
        let mut tx = self.conn.transaction().map_err(backend)?;
        let mut results = Vec::with_capacity(batch.len());
        for m in batch {
            // A savepoint per mutation: one that fails leaves no trace and does not affect
            // the others in the batch.
            let sp = tx.savepoint().map_err(backend)?;
            let r = apply(&sp, master, m);
            if r.is_ok() {
                sp.commit().map_err(backend)?;
            }
            results.push(r);
        }
        // synchronous=FULL: this returns once the WAL is on disk. One fsync for the batch.
        tx.commit().map_err(backend)?;
        Ok(results)
    }

    fn find(&mut self, owner: &str, key: &KeyRef) -> Result<Option<Sealed>, StoreError> {
        select_one(&self.conn, owner, key)?
            .map(RawRow::parse)
            .transpose()
    }

    fn label_in_use(&mut self, owner: &str, label: &Label) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM keys WHERE owner = ?1 AND label = ?2")
            .and_then(|mut st| st.exists(params![owner, label.as_str()]))
            .map_err(backend)
    }

    fn list(&mut self, owner: &str) -> Result<Vec<Result<Sealed, StoreError>>, StoreError> {
        let raw = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM keys WHERE owner = ?1 ORDER BY id"
            ))
            .and_then(|mut st| {
                st.query_map(params![owner], raw_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        // A damaged row is reported as such, not hidden: the caller raises the alarm.
        Ok(raw.into_iter().map(RawRow::parse).collect())
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
        let tx = self.conn.transaction().map_err(backend)?;
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
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::seal::{KeyFileSecret, Unlock};
    use crate::keys::store::Origin;
    use ferrohsm_proto::KeyType;
    use zeroize::Zeroizing;

    fn record(owner: &str, label: &str) -> KeyRecord {
        KeyRecord {
            owner: owner.into(),
            id: 0,
            label: label.parse().unwrap(),
            key_type: KeyType::HmacSha256,
            usage: KeyType::HmacSha256.allowed_usage(),
            exportable: false,
            origin: Origin::Generated,
            created: 1,
            version: 1,
        }
    }

    fn create(owner: &str, label: &str) -> Mutation {
        Mutation::Create {
            record: record(owner, label),
            secret: Zeroizing::new(vec![9; 32]),
        }
    }

    #[test]
    fn ids_labels_batches_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let master = MasterKey::generate().unwrap();
        let unlock = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
        let rec = MasterRecord {
            kdf: Kdf::KeyFile,
            wrapped: master.wrap(&Kdf::KeyFile, &unlock).unwrap(),
        };
        let mut s = SqliteStore::create(&path, &rec).unwrap();
        let r = s
            .commit(
                &master,
                vec![
                    create("alice", "a"),
                    create("alice", "a"),
                    create("bob", "a"),
                ],
            )
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap().id, 1);
        assert_eq!(
            r[1].as_ref().unwrap_err(),
            &StoreError::LabelInUse("a".parse().unwrap())
        );
        assert_eq!(r[2].as_ref().unwrap().id, 1, "ids are per owner");
        let del = Mutation::Delete {
            owner: "alice".into(),
            key: KeyRef::Id(1),
        };
        assert!(s.commit(&master, vec![del]).unwrap()[0].is_ok());
        let r = s.commit(&master, vec![create("alice", "a")]).unwrap();
        assert_eq!(r[0].as_ref().unwrap().id, 2, "a deleted id is never reused");
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.master_record().unwrap(), rec);
        let found = s.find("alice", &"a".parse().unwrap()).unwrap().unwrap();
        assert_eq!(found.record.id, 2);
        assert_eq!(
            &**master.open_record(&found.record, &found.sealed).unwrap(),
            &[9; 32]
        );
        assert!(s.find("carol", &KeyRef::Id(2)).unwrap().is_none());
        assert!(s.label_in_use("bob", &"a".parse().unwrap()).unwrap());
        assert_eq!(s.list("alice").unwrap().len(), 1);
        assert!(s.list("alice").unwrap()[0].is_ok());
        let mut rd = s.reader().unwrap();
        assert_eq!(rd.list("bob").unwrap().len(), 1);
        let r = rd.commit(&master, vec![create("bob", "z")]);
        assert!(r.is_err() || r.unwrap()[0].is_err(), "readers only read");
        assert!(!s.label_in_use("bob", &"z".parse().unwrap()).unwrap());
    }

    #[test]
    fn refuses_missing_foreign_and_newer_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SqliteStore::open(&dir.path().join("nope.db")).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x42; 8192]).unwrap();
        assert!(SqliteStore::open(&junk).is_err());
        let empty = dir.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let e = SqliteStore::open(&empty).unwrap_err().to_string();
        assert!(e.contains("not a FerroHSM key store"), "{e}");
        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
            .unwrap();
        let e = SqliteStore::open(&newer).unwrap_err().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }
}
