//! The lower layer: what a database must do for the key store, and nothing more.
//!
//! A backend stores and returns rows inside transactions, hands out ids and answers indexed
//! lookups. It holds no key, seals nothing, checks no tag and decides no policy: every row it
//! returns is raw (integers as the database holds them, blobs as stored), and the format layer
//! above (`format/`) validates, opens and authenticates it. So a backend that is wrong, or a
//! database edited by hand, can make a request fail with `key_store_integrity`, never make a
//! wrong answer.
//!
//! What every backend promises (written out in docs/storage.md):
//! - a write transaction is atomic and exclusive of other write transactions on the same
//!   database, from any process or node; [`Backend::commit`] returns only once it is durable;
//! - a read transaction sees one snapshot;
//! - `(owner, label)` is unique among keys, and [`Backend::claim_ids`] never hands out an id
//!   twice for one owner, even after the key is deleted;
//! - a savepoint marks each change; rolling back to it undoes what followed it, or, where
//!   the backend keeps savepoints as marks only (PostgreSQL: two round trips per change
//!   saved), succeeds only when nothing was written since and otherwise fails the batch. The
//!   format layer checks every change before it writes, so a refused change has written
//!   nothing.

use ferrohsm_proto::{KeyRef, KeyType, Label};

use crate::keys::audit::AuditRow;
use crate::keys::store::records::StoreError;

/// A key row as the database holds it, with its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Owning client.
    pub owner: String,
    /// Per-owner id.
    pub id: i64,
    /// Label.
    pub label: String,
    /// Type name (`ed25519`, ...).
    pub key_type: String,
    /// Usage bits.
    pub usage: i64,
    /// 1 when exportable, 0 when not.
    pub exportable: i64,
    /// Origin name.
    pub origin: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The current version.
    pub version: i64,
    /// Every version row, by version number.
    pub versions: Vec<VersionRow>,
}

/// One version row of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Version number.
    pub version: i64,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// Nonce, ciphertext and tag; `None` once retired.
    pub sealed: Option<Vec<u8>>,
}

/// A grant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// Owner of the key.
    pub owner: String,
    /// The key's id.
    pub id: i64,
    /// Who may use it.
    pub grantee: String,
    /// Operation bits.
    pub ops: i64,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The tag over every field, under the master key.
    pub tag: Vec<u8>,
}

/// A counter row (`value` and `created` hold the u64's bits: databases have signed integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    /// Owner.
    pub owner: String,
    /// Name.
    pub name: String,
    /// Value.
    pub value: i64,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The tag over every field, under the master key.
    pub tag: Vec<u8>,
}

/// Which keys of one owner a listing returns (every given field must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Exact label.
    pub label: Option<Label>,
    /// Exact id.
    pub id: Option<u32>,
    /// Type.
    pub key_type: Option<KeyType>,
}

/// The tables [`Backend::count_by_owner`] and [`Backend::count_owned`] count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    /// Keys.
    Keys,
    /// Counters.
    Counters,
    /// Grants (by the owner of the key granted).
    Grants,
}

impl Counted {
    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Counted::Keys => "keys",
            Counted::Counters => "counters",
            Counted::Grants => "grants",
        }
    }
}

/// One row of the change log of a database shared by several nodes: what a committed write
/// changed, so every other node drops or reloads what it holds in memory. It names rows; it
/// holds no key, no value and no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// Position in the log (assigned by the backend: consecutive, in commit order).
    pub seq: i64,
    /// The process that made the change ([`ChangeLog::instance`]).
    pub origin: String,
    /// What changed: `key-created`, `key-changed`, `key-deleted`, `grant`, `counter-created`.
    pub kind: String,
    /// The owner of the key, grant or counter.
    pub owner: String,
    /// The key's id (0 for a counter).
    pub id: i64,
    /// For a grant, the grantee (empty otherwise).
    pub grantee: String,
}

/// The change log of a database that several nodes share, and its notifications.
pub trait ChangeLog {
    /// This process's name in the log (its node name and a random part, so two processes
    /// never take each other's changes for their own).
    fn instance(&self) -> &str;
    /// In a read transaction: the last position in the log, and up to `limit` changes after
    /// `after`, oldest first.
    fn since(&mut self, after: i64, limit: usize) -> Result<(i64, Vec<ChangeRow>), StoreError>;
    /// Outside a transaction: waits up to `timeout` for a notification of a commit (`true`),
    /// subscribing first if this connection is not subscribed yet.
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError>;
    /// How many connections this handle has made: a new one may have missed notifications.
    fn connections(&self) -> u64;
}

/// A transaction's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// Reads only, from one snapshot.
    Read,
    /// Reads and writes, exclusive of other writers from the start.
    Write,
}

/// A database under the key store. Every call but [`Backend::begin`] and
/// [`Backend::reader`] runs inside a transaction that the format layer began; methods take
/// `&mut self` because each store thread owns its own handle.
pub trait Backend: Send {
    /// What this is, for messages: a path, or user, host, port and database (never a secret).
    fn describe(&self) -> String;
    /// Another handle on the same database, for another thread.
    fn reader(&self) -> Result<Box<dyn Backend>, StoreError>;
    /// Outside a transaction, at a clean stop: writes back into the main database what it
    /// keeps in side files, so the main file alone is complete (SQLite: the WAL, checkpointed
    /// and truncated to nothing). Nothing to do where there is no such file (PostgreSQL).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The change log, when other processes may write the same database (PostgreSQL): every
    /// node's caches follow it. `None` for a database one process holds (SQLite's lock).
    fn change_log(&mut self) -> Option<&mut dyn ChangeLog>;

    /// Begins a transaction.
    fn begin(&mut self, tx: Tx) -> Result<(), StoreError>;
    /// Commits it: durable when this returns `Ok`.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons it (a no-op outside a transaction; never fails the caller).
    fn rollback(&mut self);
    /// Marks a point that [`Backend::rollback_to_savepoint`] returns to.
    fn savepoint(&mut self) -> Result<(), StoreError>;
    /// Keeps what followed the last savepoint and forgets the point.
    fn release_savepoint(&mut self) -> Result<(), StoreError>;
    /// Undoes what followed the last savepoint and forgets the point.
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;

    /// One key of `owner` by id or label, with its versions.
    fn key(&mut self, owner: &str, key: &KeyRef) -> Result<Option<KeyRow>, StoreError>;
    /// Up to `limit` keys of `owner` matching `filter` with ids above `after`, by id, each
    /// with its versions; answered from indexes, not by reading every key.
    fn keys(
        &mut self,
        owner: &str,
        filter: &KeyFilter,
        after: u32,
        limit: usize,
    ) -> Result<Vec<KeyRow>, StoreError>;
    /// Whether `owner` has a key labelled `label`.
    fn label_in_use(&mut self, owner: &str, label: &str) -> Result<bool, StoreError>;
    /// How many rows of `table` each owner holds.
    fn count_by_owner(&mut self, table: Counted) -> Result<Vec<(String, i64)>, StoreError>;
    /// How many rows of `table` `owner` holds.
    fn count_owned(&mut self, table: Counted, owner: &str) -> Result<i64, StoreError>;
    /// For each new key `(owner, label)`, in order: the next id of its owner (from 1), never
    /// handed out before, even for a deleted key; `None` (and no id taken) when the owner
    /// already has a key with that label. The pairs are distinct.
    fn claim_ids(&mut self, keys: &[(&str, &str)]) -> Result<Vec<Option<i64>>, StoreError>;
    /// Inserts key rows with their version rows.
    fn insert_keys(&mut self, rows: &[KeyRow]) -> Result<(), StoreError>;
    /// Inserts one version row of key `(owner, id)`.
    fn insert_version(&mut self, owner: &str, id: i64, v: &VersionRow) -> Result<(), StoreError>;
    /// Replaces the sealed material of one version.
    fn set_sealed(
        &mut self,
        owner: &str,
        id: i64,
        version: i64,
        sealed: &[u8],
    ) -> Result<(), StoreError>;
    /// Deletes the material of every version below `below` (overwriting the bytes where the
    /// database can).
    fn retire_below(&mut self, owner: &str, id: i64, below: i64) -> Result<(), StoreError>;
    /// Sets a key's current version.
    fn set_version(&mut self, owner: &str, id: i64, version: i64) -> Result<(), StoreError>;
    /// Deletes a key with its versions and its grants.
    fn delete_key(&mut self, owner: &str, id: i64) -> Result<(), StoreError>;

    /// Every grant row.
    fn grants(&mut self) -> Result<Vec<GrantRow>, StoreError>;
    /// One grant row.
    fn grant(
        &mut self,
        owner: &str,
        id: i64,
        grantee: &str,
    ) -> Result<Option<GrantRow>, StoreError>;
    /// Inserts a grant, or replaces the one for the same `(owner, id, grantee)`.
    fn put_grant(&mut self, g: &GrantRow) -> Result<(), StoreError>;
    /// Deletes a grant; whether there was one.
    fn delete_grant(&mut self, owner: &str, id: i64, grantee: &str) -> Result<bool, StoreError>;

    /// A counter row (in a write transaction, no other writer can change it before the
    /// transaction ends: write transactions exclude each other).
    fn counter(&mut self, owner: &str, name: &str) -> Result<Option<CounterRow>, StoreError>;
    /// Inserts a counter, or replaces the value and tag of the one with the same name.
    fn put_counter(&mut self, c: &CounterRow) -> Result<(), StoreError>;

    /// A named metadata value.
    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a named metadata value.
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes a named metadata value.
    fn delete_meta(&mut self, name: &str) -> Result<(), StoreError>;

    /// The last audit entry's sequence number and hash.
    fn audit_last(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError>;
    /// Appends audit entries, in order.
    fn audit_append(&mut self, rows: &[AuditRow]) -> Result<(), StoreError>;
    /// Ends a write batch: its audit entries, its change-log rows and the new signed audit
    /// head (`meta` `audit_head`), written together where the database allows it (one
    /// statement on PostgreSQL). A backend with a change log appends the changes (their `seq`
    /// and `origin` set there, every listener notified at commit) and answers the last
    /// position written; one without ([`Backend::change_log`] is `None`) is never given any.
    fn finish(
        &mut self,
        audit: &[AuditRow],
        changes: &[ChangeRow],
        head: Option<&[u8]>,
    ) -> Result<i64, StoreError> {
        if !changes.is_empty() {
            return Err(StoreError::Backend(
                "this database keeps no change log".into(),
            ));
        }
        if !audit.is_empty() {
            self.audit_append(audit)?;
        }
        if let Some(h) = head {
            self.put_meta("audit_head", h)?;
        }
        Ok(0)
    }
    /// Every owner with its next id.
    fn owners(&mut self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Sets an owner's next id (a copy of a store keeps them, so ids are never reused).
    fn put_owner(&mut self, owner: &str, next_id: i64) -> Result<(), StoreError>;
    /// Every counter row.
    fn counters(&mut self) -> Result<Vec<CounterRow>, StoreError>;
    /// Every metadata value, by name.
    fn meta_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Whether the store holds no key, grant, counter, owner or audit entry (only the
    /// metadata `hsmd init` writes): a store a restore may fill.
    fn is_empty(&mut self) -> Result<bool, StoreError>;

    /// Every audit entry from `since`, by sequence number. A row whose fields do not fit is
    /// returned with what could be read, so verification names it as edited.
    fn audit_rows(&mut self, since: u64) -> Result<Vec<AuditRow>, StoreError>;
}
