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
//!       INDEX (owner, key_type, id) lookup by type
//!       version                     the current version
//!  key_versions(owner, id, version, created, sealed)   sealed: NULL once retired
//!  grants(owner, id, grantee, ops, created, tag)        tag: under the master key
//!  counters(owner, name, value, created, tag)           tag: under the master key
//!  audit(seq PK, time, client, session, transport, op, key, detail, status, prev_hash, hash)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::OpenFlags;

use super::backend::{Backend, Tx};
use super::records::StoreError;

mod rows;

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
    // find --type answers from an index too.
    "
CREATE INDEX keys_by_type ON keys (owner, key_type, id);
",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A connection to `keys.db`. Holds no key and checks no tag: the format layer above does.
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
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

impl SqliteBackend {
    /// Creates a new, empty store at `path` (which must not exist), with the current schema.
    pub fn create(path: &Path) -> Result<SqliteBackend, StoreError> {
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
        Ok(SqliteBackend {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing store: refuses a missing file, a file that fails SQLite's integrity
    /// check, and a schema this build does not know; applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
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
        Ok(SqliteBackend {
            conn,
            path: path.to_path_buf(),
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

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(backend)
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

/// Transactions, as SQL statements on the one connection (the format layer pairs them).
impl SqliteBackend {
    fn tx_begin(&mut self, tx: Tx) -> Result<(), StoreError> {
        // Never inside a transaction a failure left open.
        self.tx_rollback();
        // A write takes the lock at the start (IMMEDIATE): a deferred transaction that reads
        // first and then writes cannot wait out another process's write (`hsmd passwd`, a
        // backup tool); SQLite refuses its upgrade at once instead of using the busy timeout.
        self.exec(match tx {
            Tx::Read => "BEGIN DEFERRED",
            Tx::Write => "BEGIN IMMEDIATE",
        })
    }

    fn tx_commit(&mut self) -> Result<(), StoreError> {
        // synchronous=FULL: this returns once the WAL is on disk. One fsync per transaction.
        self.exec("COMMIT")
    }

    fn tx_rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Reopens `path` for reading only.
fn reader(path: &Path) -> Result<Box<dyn Backend>, StoreError> {
    let conn = connect(path, false)?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(backend)?;
    Ok(Box::new(SqliteBackend {
        conn,
        path: path.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests;
