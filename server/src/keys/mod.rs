//! Keys: material (zeroizing secrets), policy, the key manager, and the durable store under it.
//!
//! ```text
//!  manager/        KeyManager, a concurrent read path (no actor): resolve.rs finds a key as a
//!     |            caller names it and authorizes (caller, key, requirement) -> KeyHandle;
//!     |            lifecycle.rs creates, deletes, rotates, grants; audit.rs, records.rs, status.rs
//!     |   \--------- session_keys.rs  session keys, memory only; ids never reused
//!     |   \--------- cache.rs         bounded LRU of opened persistent keys
//!     |   \--------- grants.rs, quota.rs   grants and per-client quotas in memory
//!     |   \--------- follow.rs        on a shared (PostgreSQL) store: the change-log follower
//!     v
//!  service.rs      store threads: one writer (group commit), readers (find, list, open)
//!     v
//!  store/format/   the at-rest format: sealing, row tags, audit chain, row validation
//!  store/backend   the Backend trait: rows in transactions; sqlite/ (keys.db), postgres/
//!  seal.rs         master key (wrapped by argon2id passphrase or key file); AEAD
//!  audit/          the hash-chained audit log's entries and checkpoints
//!  policy/         every rule about what may be done with a key
//!  wrap.rs         wrapped-key blobs
//! ```

pub mod audit;
pub mod cache;
pub mod follow;
pub mod grants;
pub mod handle;
pub mod lifecycle;
pub mod manager;
pub mod material;
pub mod policy;
pub mod quota;
pub mod seal;
pub mod service;
pub mod session_keys;
pub mod store;
pub mod wrap;

use std::path::Path;
use std::sync::Arc;

pub use handle::KeyHandle;

use crate::config::StoreConfig;
use crate::error::ServerError;
use seal::MasterRecord;
use seal::{Kdf, KeyFileSecret, MasterKey, Passphrase, SealError, Unlock};
use store::Store;
use store::postgres::{PgBackend, PgSettings};
use store::sqlite::SqliteBackend;

/// Reads a key file: 64 hex digits.
pub fn read_key_file(path: &Path) -> Result<KeyFileSecret, ServerError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        ServerError::Store(format!("cannot read key file {}: {e}", path.display()))
    })?);
    KeyFileSecret::parse(&text).ok_or_else(|| {
        ServerError::Store(format!(
            "key file {} is not 64 hex digits; it is not a FerroHSM master key file",
            path.display()
        ))
    })
}

fn unlock_error(db: &Path, e: SealError) -> ServerError {
    ServerError::Store(match e {
        SealError::WrongUnlock => format!(
            "the passphrase or key file does not unlock the key store {}: wrong passphrase, \
             or not this store's key file",
            db.display()
        ),
        SealError::WrongKind { stored, given } => format!(
            "the key store {} is protected by {stored}, but hsmd.toml gives a {given} \
             (for a passphrase store, remove key_file from [store] and set HSMD_PASSPHRASE \
             or --passphrase-file)",
            db.display()
        ),
        other => format!("cannot unlock the key store {}: {other}", db.display()),
    })
}

/// What unlocks a store: the key file if one is configured, else the passphrase.
pub fn unlock_for(
    db: &Path,
    key_file: Option<&Path>,
    passphrase: Option<&Passphrase>,
) -> Result<Unlock, ServerError> {
    match (key_file, passphrase) {
        (Some(f), _) => Ok(Unlock::KeyFile(read_key_file(f)?)),
        (None, Some(p)) if !p.is_empty() => Ok(Unlock::Passphrase(p.clone())),
        (None, Some(_)) => Err(ServerError::Store(format!(
            "the passphrase for the key store {} is empty",
            db.display()
        ))),
        (None, None) => Err(ServerError::Store(format!(
            "the key store {} is protected by a passphrase: set HSMD_PASSPHRASE or pass \
             --passphrase-file FILE",
            db.display()
        ))),
    }
}

fn store_err(e: store::StoreError) -> ServerError {
    ServerError::Store(e.to_string())
}

/// This process's claim on its store, held while it serves: the SQLite file's lock (one
/// process per file), or a PostgreSQL connection holding the serve lock shared with every
/// other node of this version (an earlier version, which held it alone and wrote no change
/// log, cannot serve beside them).
#[derive(Debug)]
pub enum StoreClaim {
    /// A lock on `keys.db`.
    File(std::fs::File),
    /// A thread holding the database's serve lock on a connection of its own (stopped when
    /// this is dropped).
    Database(Arc<std::sync::atomic::AtomicBool>),
}

impl Drop for StoreClaim {
    fn drop(&mut self) {
        if let StoreClaim::Database(stop) = self {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Claims the store `st` names for this process.
pub fn claim(st: &StoreConfig) -> Result<StoreClaim, ServerError> {
    match &st.postgres {
        None => Ok(StoreClaim::File(lock_store(&st.path)?)),
        Some(pg) => {
            let c = PgBackend::claim(pg.clone(), pg.connect_timeout).map_err(store_err)?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            PgBackend::hold_claim(pg.clone(), c, stop.clone()).map_err(|e| ServerError::Io {
                context: "cannot start the store claim thread".into(),
                source: e,
            })?;
            Ok(StoreClaim::Database(stop))
        }
    }
}

/// Takes this process's exclusive claim on the store at `db` (held while the returned file is
/// open): a second `hsmd` on the same data directory is refused instead of serving keys from
/// a cache the first one could invalidate.
pub fn lock_store(db: &Path) -> Result<std::fs::File, ServerError> {
    let f = std::fs::File::open(db).map_err(|e| {
        ServerError::Store(format!(
            "cannot open key store {}: {e}{}",
            db.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                " (hsmd init creates it; if you moved the data directory, check the [store] \
                 path in hsmd.toml)"
            } else {
                ""
            }
        ))
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Store(format!(
            "key store {} is in use by another hsmd process",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ServerError::Store(format!(
            "cannot lock key store {}: {e}",
            db.display()
        ))),
    }
}

/// Folds the WAL back into the store file (best effort: a reader still in a transaction
/// leaves it for the next open).
pub fn checkpoint(db: &Path) {
    match rusqlite::Connection::open(db).and_then(|c| {
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    }) {
        Ok(0) => {}
        Ok(_) => {
            tracing::info!(store = %db.display(), "WAL checkpoint deferred: a reader was busy")
        }
        Err(e) => tracing::warn!(store = %db.display(), error = %e, "WAL checkpoint failed"),
    }
}

/// Opens the SQLite store at `db` (its master key still wrapped).
pub fn open_sqlite(db: &Path) -> Result<Store, ServerError> {
    let backend = SqliteBackend::open(db).map_err(store_err)?;
    Ok(Store::new(Box::new(backend)))
}

/// Opens the store at `db` and unwraps its master key with `unlock`.
pub fn open_store(db: &Path, unlock: &Unlock) -> Result<(Store, MasterKey), ServerError> {
    unlock_store(open_sqlite(db)?, unlock)
}

/// Opens the store `st` names, an SQLite file or a PostgreSQL database (retrying a database
/// that does not answer for its `connect_timeout_ms`), its master key still wrapped.
pub fn open_configured(st: &StoreConfig) -> Result<Store, ServerError> {
    match &st.postgres {
        None => open_sqlite(&st.path),
        Some(pg) => {
            let b = PgBackend::open(pg.clone(), pg.connect_timeout).map_err(store_err)?;
            Ok(Store::new(Box::new(b)))
        }
    }
}

/// Unwraps the master key of an opened store with `unlock`.
pub fn unlock_store(mut s: Store, unlock: &Unlock) -> Result<(Store, MasterKey), ServerError> {
    let rec = s.master_record().map_err(store_err)?;
    let what = s.describe();
    let master = MasterKey::unwrap(&rec.kdf, &rec.wrapped, unlock)
        .map_err(|e| unlock_error(Path::new(&what), e))?;
    Ok((s, master))
}

/// What unlocks the store `st` names.
pub fn unlock_configured(st: &StoreConfig) -> Result<Unlock, ServerError> {
    unlock_for(
        Path::new(&st.describe()),
        st.key_file.as_deref(),
        st.passphrase.as_ref(),
    )
}

/// A new master key wrapped for `unlock`, and how it is wrapped.
fn new_master(unlock: &Unlock) -> Result<(MasterKey, MasterRecord), ServerError> {
    let seal_err = |e: SealError| ServerError::Store(e.to_string());
    let kdf = match unlock {
        Unlock::KeyFile(_) => Kdf::KeyFile,
        Unlock::Passphrase(_) => Kdf::new_argon2id().map_err(seal_err)?,
    };
    let master = MasterKey::generate().map_err(seal_err)?;
    let wrapped = master.wrap(&kdf, unlock).map_err(seal_err)?;
    Ok((master, MasterRecord { kdf, wrapped }))
}

/// Creates the schema in the empty PostgreSQL database of `pg` with a fresh master key
/// wrapped for `unlock`; answers the audit key's public half.
pub fn create_postgres(
    pg: &PgSettings,
    unlock: &Unlock,
) -> Result<ed25519_dalek::VerifyingKey, ServerError> {
    let (master, rec) = new_master(unlock)?;
    let backend = PgBackend::create(pg.clone(), pg.connect_timeout).map_err(store_err)?;
    let (_, public) = Store::create(Box::new(backend), &master, &rec).map_err(store_err)?;
    Ok(public)
}

/// Creates a new store at `db` with a fresh master key wrapped for `unlock`.
pub fn create_store(db: &Path, unlock: &Unlock) -> Result<(), ServerError> {
    let (master, rec) = new_master(unlock)?;
    let backend = SqliteBackend::create(db).map_err(store_err)?;
    let (_, public) = Store::create(Box::new(backend), &master, &rec).map_err(store_err)?;
    write_audit_pub(db, &public)?;
    Ok(())
}

/// Where the audit public key is written: `audit.pub` next to the store.
pub fn audit_pub_path(db: &Path) -> std::path::PathBuf {
    db.with_file_name("audit.pub")
}

/// Writes the audit public key (SubjectPublicKeyInfo PEM, as OpenSSL reads it) next to the
/// store, unless the same key is already there.
pub fn write_audit_pub(db: &Path, public: &ed25519_dalek::VerifyingKey) -> Result<(), ServerError> {
    let path = audit_pub_path(db);
    let der = ferrohsm_proto::pem::spki_der(ferrohsm_proto::KeyType::Ed25519, public.as_bytes())
        .ok_or_else(|| ServerError::Store("cannot encode the audit public key".into()))?;
    let pem = ferrohsm_proto::pem::pem_encode("PUBLIC KEY", &der);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == pem) {
        return Ok(());
    }
    std::fs::write(&path, pem).map_err(|e| ServerError::Io {
        context: format!("cannot write {}", path.display()),
        source: e,
    })
}

/// At start: `audit.pub` next to the store must be the store's audit key (written if it is
/// missing). A store whose audit key changed is refused: its chain could have been replaced
/// whole by someone with the database.
pub fn check_audit_pub(db: &Path, public: &ed25519_dalek::VerifyingKey) -> Result<(), ServerError> {
    if !audit_pub_path(db).exists() {
        return write_audit_pub(db, public);
    }
    if read_audit_pub(db)? != *public {
        return Err(ServerError::Store(format!(
            "{} does not match the key store's audit key: the store's audit key was replaced, \
             or this is another store; refusing to start (restore the store, or remove \
             audit.pub only if you know why it changed)",
            audit_pub_path(db).display()
        )));
    }
    Ok(())
}

/// Reads `audit.pub` next to the store.
pub fn read_audit_pub(db: &Path) -> Result<ed25519_dalek::VerifyingKey, ServerError> {
    let path = audit_pub_path(db);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ServerError::Store(format!("cannot read {}: {e}", path.display())))?;
    ferrohsm_proto::pem::pem_decode("PUBLIC KEY", &text)
        .and_then(|der| ferrohsm_proto::pem::parse_spki(&der))
        .filter(|(t, _)| *t == ferrohsm_proto::KeyType::Ed25519)
        .and_then(|(_, raw)| <[u8; 32]>::try_from(raw).ok())
        .and_then(|raw| ed25519_dalek::VerifyingKey::from_bytes(&raw).ok())
        .ok_or_else(|| {
            ServerError::Store(format!(
                "{} is not an Ed25519 public key in SubjectPublicKeyInfo PEM",
                path.display()
            ))
        })
}

/// How an existing store's master key is protected (`keyfile` or `argon2id`).
pub fn store_kdf(mut s: Store) -> Result<&'static str, ServerError> {
    Ok(s.master_record().map_err(store_err)?.kdf.name())
}

/// Changes a passphrase store's passphrase: the master key is re-wrapped under a new salt, in
/// one transaction; no key record changes. On a PostgreSQL store this is once for every node.
pub fn change_passphrase(
    st: &StoreConfig,
    old: &Passphrase,
    new: &Passphrase,
) -> Result<(), ServerError> {
    if new.is_empty() {
        return Err(ServerError::Store("the new passphrase is empty".into()));
    }
    let (mut s, master) = unlock_store(open_configured(st)?, &Unlock::Passphrase(old.clone()))?;
    let seal_err = |e: SealError| ServerError::Store(e.to_string());
    let kdf = Kdf::new_argon2id().map_err(seal_err)?;
    let wrapped = master
        .wrap(&kdf, &Unlock::Passphrase(new.clone()))
        .map_err(seal_err)?;
    s.replace_master_record(&MasterRecord { kdf, wrapped })
        .map_err(store_err)
}
