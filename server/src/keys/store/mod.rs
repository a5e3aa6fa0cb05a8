//! The durable key store behind a trait, so a PostgreSQL backend can follow SQLite without
//! changing its callers.
//!
//! A backend stores [`KeyRecord`]s (the server-side description of a key) with their sealed
//! material, and a few named blobs of metadata (how the master key is wrapped). It assigns
//! ids, enforces `(owner, label)` uniqueness itself, and applies mutations in batches: one
//! durable transaction per batch (group commit), each mutation with its own result. It keeps
//! no state in the process that another node on the same database could not see.
//!
//! Every lookup is scoped by owner: there is no call that reaches another client's keys
//! without naming that client, so isolation does not depend on each caller checking an owner
//! field afterwards. Sealing and opening are the caller's (see `keys::seal`); the backend only
//! hands the master key to [`KeyStore::commit`] so that it can seal a record once its id is
//! known.

pub mod sqlite;

use std::sync::Arc;

use ferrohsm_proto::{KeyRef, KeyType, Label, UsageSet};
use zeroize::Zeroizing;

use crate::keys::seal::{Kdf, MasterKey};

/// Persistent ids are below this; session keys take ids from here up, so the two never
/// collide.
pub const SESSION_ID_BASE: u32 = 1 << 31;

/// Where a key came from; recorded so a relying party can tell a key that never left the
/// HSM from one that came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Generated inside hsmd.
    Generated,
    /// Derived inside hsmd from another key.
    Derived,
    /// Imported from outside.
    Imported,
    /// Unwrapped from a wrapped blob.
    Unwrapped,
}

impl Origin {
    /// Every origin.
    pub const ALL: [Origin; 4] = [
        Origin::Generated,
        Origin::Derived,
        Origin::Imported,
        Origin::Unwrapped,
    ];

    /// The stored and displayed name.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Derived => "derived",
            Origin::Imported => "imported",
            Origin::Unwrapped => "unwrapped",
        }
    }

    /// Parses a stored name.
    pub fn from_name(s: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// The server-side record of a persistent key (no material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Owning client.
    pub owner: Arc<str>,
    /// Per-owner id, assigned by the store, never reused.
    pub id: u32,
    /// Label, unique per owner.
    pub label: Label,
    /// Type.
    pub key_type: KeyType,
    /// Permitted usages.
    pub usage: UsageSet,
    /// Whether export may return the key bytes.
    pub exportable: bool,
    /// Where it came from.
    pub origin: Origin,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Record version (1 today; key versions arrive with rotation).
    pub version: u32,
}

/// A record and its sealed material, as read back.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The record.
    pub record: KeyRecord,
    /// Nonce, ciphertext and tag.
    pub sealed: Vec<u8>,
}

/// One change, applied inside a batch.
pub enum Mutation {
    /// Create a key: the store assigns `record.id`, seals `secret` under the master key, and
    /// refuses a label already in use.
    Create {
        /// The record (its `id` is ignored).
        record: KeyRecord,
        /// Secret bytes to seal.
        secret: Zeroizing<Vec<u8>>,
    },
    /// Delete a key, after checking that its record still opens (a damaged record is never
    /// dropped, not even by its apparent owner).
    Delete {
        /// Owner.
        owner: Arc<str>,
        /// Key.
        key: KeyRef,
    },
}

impl std::fmt::Debug for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mutation::Create { record, .. } => f
                .debug_struct("Create")
                .field("record", record)
                .finish_non_exhaustive(),
            Mutation::Delete { owner, key } => f
                .debug_struct("Delete")
                .field("owner", owner)
                .field("key", key)
                .finish(),
        }
    }
}

/// Why a store operation failed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The owner already has a key with that label.
    #[error("a key labelled {0} already exists")]
    LabelInUse(Label),
    /// No such key in the owner's namespace.
    #[error("no key {0}")]
    NotFound(String),
    /// The owner's id space is used up.
    #[error("key id space exhausted for this client")]
    IdsExhausted,
    /// A record failed its integrity check.
    #[error("key {owner}/{id} failed its integrity check: {reason}")]
    Integrity {
        /// Owner as stored.
        owner: String,
        /// Id as stored.
        id: u32,
        /// What failed (never secret).
        reason: String,
    },
    /// The database failed (I/O, disk full, locked, corrupt page).
    #[error("key store failure: {0}")]
    Backend(String),
    /// The store cannot be opened (missing, unknown schema, failed integrity check).
    #[error("{0}")]
    Open(String),
}

/// How the master key is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRecord {
    /// The KDF and its parameters.
    pub kdf: Kdf,
    /// The wrapped master key.
    pub wrapped: Vec<u8>,
}

/// A durable key store backend. Methods take `&mut self`: each store thread owns its own
/// handle (see [`KeyStore::reader`]).
pub trait KeyStore: Send {
    /// Applies `batch` in one durable transaction. The outer error means nothing was
    /// committed; otherwise each mutation has its own result and every `Ok` is durable.
    fn commit(
        &mut self,
        master: &MasterKey,
        batch: Vec<Mutation>,
    ) -> Result<Vec<Result<KeyRecord, StoreError>>, StoreError>;
    /// One key of `owner`, by id or label.
    fn find(&mut self, owner: &str, key: &KeyRef) -> Result<Option<Sealed>, StoreError>;
    /// Whether `owner` has a key labelled `label`.
    fn label_in_use(&mut self, owner: &str, label: &Label) -> Result<bool, StoreError>;
    /// Every key of `owner`, by id; a row whose fields do not validate is an `Err` of its own.
    fn list(&mut self, owner: &str) -> Result<Vec<Result<Sealed, StoreError>>, StoreError>;
    /// How the master key is stored.
    fn master_record(&mut self) -> Result<MasterRecord, StoreError>;
    /// Replaces the stored master key record in one transaction (passphrase change).
    fn replace_master_record(&mut self, rec: &MasterRecord) -> Result<(), StoreError>;
    /// Another handle on the same store, for another thread.
    fn reader(&self) -> Result<Box<dyn KeyStore>, StoreError>;
}
