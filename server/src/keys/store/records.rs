//! What the store keeps and answers: key records and their sealed versions, grants, audit
//! events, the changes a batch makes and what it applied, and the store's errors.

use std::sync::Arc;

use ferrohsm_proto::{KeyRef, KeyType, Label, UsageSet};

use crate::keys::handle::KeyHandle;
use crate::keys::material::KeyMaterial;

/// Persistent ids are below this; session keys take ids from here up, so the two never
/// collide.
pub const SESSION_ID_BASE: u32 = 1 << 31;

pub use ferrohsm_proto::Origin;

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
    /// The current version (1 until the key is rotated). Each version's material is sealed
    /// to this record with `version` set to that version's number.
    pub version: u32,
}

impl KeyRecord {
    /// The record as version `v`'s material is sealed to.
    pub fn at_version(&self, v: u32) -> KeyRecord {
        KeyRecord {
            version: v,
            ..self.clone()
        }
    }
}

/// One version of a key's material, as stored.
#[derive(Debug, Clone)]
pub struct SealedVersion {
    /// Version number.
    pub version: u32,
    /// When it was made (seconds since the Unix epoch).
    pub created: u64,
    /// Nonce, ciphertext and tag; `None` once retired (the material is deleted).
    pub sealed: Option<Vec<u8>>,
}

/// A record and its sealed material, as read back.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The record.
    pub record: KeyRecord,
    /// Every version, oldest first; the last is the current one and always has material.
    pub versions: Vec<SealedVersion>,
}

impl Sealed {
    /// The current version's sealed material.
    pub fn current(&self) -> &[u8] {
        self.versions
            .last()
            .and_then(|v| v.sealed.as_deref())
            .unwrap_or_default()
    }
}

/// A grant: `grantee` may use `owner`'s key `id` for `ops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Owner of the key.
    pub owner: Arc<str>,
    /// The key's id.
    pub id: u32,
    /// The client it is granted to.
    pub grantee: Arc<str>,
    /// Operations granted.
    pub ops: UsageSet,
    /// When it was granted.
    pub created: u64,
}

/// One audit entry before it is chained: who did what to which key, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Client (the proven name; for a failed login, the name it claimed, escaped).
    pub client: Arc<str>,
    /// Session id (0 when there is none).
    pub session: u64,
    /// tcp, tls, tls-psk, shm.
    pub transport: &'static str,
    /// The hsmctl command name (keygen, grant, counter-inc, login, ...).
    pub op: &'static str,
    /// `owner:id` (or the reference as given, when it did not resolve; empty when none).
    pub key: String,
    /// What else identifies the change (a grantee and operations, a version), never a secret.
    pub detail: String,
    /// `ok`, or the status name of the failure.
    pub status: &'static str,
}

/// What a committed mutation produced.
#[derive(Debug, Clone)]
pub enum Applied {
    /// A new key, opened and ready for the cache (built on the store writer).
    Created(Arc<KeyHandle>),
    /// The key's record (delete, rotate, retire).
    Key(KeyRecord),
    /// A counter's new value.
    Counter(u64),
    /// Nothing to return (grant, revoke, record).
    Done,
}

impl Applied {
    fn wrong_kind() -> StoreError {
        StoreError::Backend("the store answered the wrong kind".into())
    }

    /// The record, for mutations that answer one.
    pub fn record(self) -> Result<KeyRecord, StoreError> {
        match self {
            Applied::Key(r) => Ok(r),
            _ => Err(Applied::wrong_kind()),
        }
    }

    /// The new key, for a create.
    pub fn created(self) -> Result<Arc<KeyHandle>, StoreError> {
        match self {
            Applied::Created(h) => Ok(h),
            _ => Err(Applied::wrong_kind()),
        }
    }
}

/// One version of a new key: when it was made, and its material (`None`: retired).
#[derive(Debug)]
pub struct NewVersion {
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Boxed where it was made (a crypto worker), so only a pointer crosses the session thread
    /// on its way to the store writer, which seals it.
    pub material: Option<Box<KeyMaterial>>,
}

/// A mutation and its audit entry, appended in the same transaction (its status filled in
/// from the mutation's result).
#[derive(Debug)]
pub struct Change {
    /// The change.
    pub mutation: Mutation,
    /// Its audit entry.
    pub audit: Option<AuditEvent>,
}

/// One change, applied inside a batch.
pub enum Mutation {
    /// Create a key: the store assigns `record.id`, seals each version's material under the
    /// master key, and refuses a label already in use.
    Create {
        /// The record (its `id` is ignored; its `version` is the number of versions).
        record: KeyRecord,
        /// Every version oldest first; the last is current and has material.
        versions: Vec<NewVersion>,
    },
    /// Delete a key, after checking that its record still opens (a damaged record is never
    /// dropped, not even by its apparent owner).
    Delete {
        /// Owner.
        owner: Arc<str>,
        /// Key.
        key: KeyRef,
    },
    /// Add a version to a key (after checking its record opens) and make it current.
    Rotate {
        /// Owner.
        owner: Arc<str>,
        /// Key id.
        id: u32,
        /// The new version's material.
        material: Box<KeyMaterial>,
    },
    /// Delete the material of every version below `below` (the current one is never retired).
    Retire {
        /// Owner.
        owner: Arc<str>,
        /// Key id.
        id: u32,
        /// Lowest version kept.
        below: u32,
    },
    /// Grant (or replace the grant of) a key to another client.
    Grant(GrantRecord),
    /// Withdraw a grant.
    Revoke {
        /// Owner.
        owner: Arc<str>,
        /// Key id.
        id: u32,
        /// Whose grant ends.
        grantee: Arc<str>,
    },
    /// Create a counter at 0.
    CounterCreate {
        /// Owner.
        owner: Arc<str>,
        /// Name.
        name: Label,
    },
    /// Increment a counter; refused at u64::MAX.
    CounterInc {
        /// Owner.
        owner: Arc<str>,
        /// Name.
        name: Label,
    },
    /// No change: only the audit entry (export and wrap are recorded durably before the
    /// key or blob is returned).
    Record,
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
            Mutation::Rotate { owner, id, .. } => f
                .debug_struct("Rotate")
                .field("owner", owner)
                .field("id", id)
                .finish_non_exhaustive(),
            Mutation::Retire { owner, id, below } => f
                .debug_struct("Retire")
                .field("owner", owner)
                .field("id", id)
                .field("below", below)
                .finish(),
            Mutation::Grant(g) => f.debug_tuple("Grant").field(g).finish(),
            Mutation::Revoke { owner, id, grantee } => f
                .debug_struct("Revoke")
                .field("owner", owner)
                .field("id", id)
                .field("grantee", grantee)
                .finish(),
            Mutation::CounterCreate { owner, name } => f
                .debug_struct("CounterCreate")
                .field("owner", owner)
                .field("name", name)
                .finish(),
            Mutation::CounterInc { owner, name } => f
                .debug_struct("CounterInc")
                .field("owner", owner)
                .field("name", name)
                .finish(),
            Mutation::Record => f.write_str("Record"),
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
    /// No such grant.
    #[error("key {0} is not granted to {1}")]
    NoGrant(String, String),
    /// A counter of that name already exists.
    #[error("a counter named {0} already exists")]
    CounterExists(Label),
    /// No counter of that name.
    #[error("no counter {0}")]
    NoCounter(Label),
    /// The counter is at u64::MAX.
    #[error("counter {0} is at its maximum (18446744073709551615) and never wraps")]
    CounterOverflow(Label),
    /// The request does not fit the key (rotate a signing key, retire the current version).
    #[error("{0}")]
    Invalid(String),
    /// A client is at a quota that the database counts (several nodes share it).
    #[error("{0}")]
    Quota(String),
    /// The database failed (I/O, disk full, locked, corrupt page).
    #[error("key store failure: {0}")]
    Backend(String),
    /// The store cannot be opened (missing, unknown schema, failed integrity check).
    #[error("{0}")]
    Open(String),
}

impl StoreError {
    /// The wire status this error answers with.
    pub fn status(&self) -> ferrohsm_proto::Status {
        use ferrohsm_proto::Status;
        match self {
            StoreError::LabelInUse(_) | StoreError::CounterExists(_) => Status::LabelInUse,
            StoreError::NotFound(_) | StoreError::NoGrant(..) => Status::KeyNotFound,
            StoreError::NoCounter(_) => Status::CounterNotFound,
            StoreError::CounterOverflow(_) => Status::CounterOverflow,
            StoreError::Invalid(_) => Status::InvalidArgument,
            StoreError::IdsExhausted => Status::Busy,
            StoreError::Quota(_) => Status::QuotaExceeded,
            StoreError::Integrity { .. } => Status::KeyStoreIntegrity,
            StoreError::Backend(_) | StoreError::Open(_) => Status::StoreFailed,
        }
    }
}

/// What another node changed, as a node following the change log learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// A key was created (it counts against its owner's quota).
    KeyCreated {
        /// Owner.
        owner: Arc<str>,
    },
    /// A key was rotated or had versions retired: what is cached of it is stale.
    KeyChanged {
        /// Owner.
        owner: Arc<str>,
        /// Key id.
        id: u32,
    },
    /// A key was deleted, with its grants.
    KeyDeleted {
        /// Owner.
        owner: Arc<str>,
        /// Key id.
        id: u32,
    },
    /// A grant was made, changed or revoked; `now` is what the database holds now (its tag
    /// checked), `None` when there is no grant (or none that authenticates).
    Grant {
        /// Owner of the key.
        owner: Arc<str>,
        /// Key id.
        id: u32,
        /// Grantee.
        grantee: Arc<str>,
        /// The grant as it stands.
        now: Option<GrantRecord>,
    },
    /// A counter was created (it counts against its owner's quota).
    CounterCreated {
        /// Owner.
        owner: Arc<str>,
    },
}

/// One look at the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Other nodes' changes after the position asked for, up to `upto` (when `upto < head`,
    /// there is more to read).
    Changes {
        /// The last position read.
        upto: i64,
        /// The log's last position.
        head: i64,
        /// What changed, each with whether this process made it (its own changes are
        /// applied again where that is idempotent: a commit whose answer was lost still
        /// invalidates; counts are not taken twice).
        changes: Vec<(Changed, bool)>,
    },
    /// The log cannot say what changed since the position asked for (it was pruned past it,
    /// or the database was replaced): everything held in memory must be reloaded.
    Behind {
        /// The log's last position.
        head: i64,
    },
}

/// One row of a listing: its id, and the key or why its row does not validate.
pub type Listed = (u32, Result<Sealed, StoreError>);
