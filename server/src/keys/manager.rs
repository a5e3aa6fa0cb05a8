//! The key manager: namespaces, authorization and key creation, over the session keys, the
//! cache and the store threads.
//!
//! It serves authorization as a concurrent read path (a short lock on the session keys and
//! on the cache; on a miss, a read on a store thread) rather than as one actor's mailbox, so
//! it never becomes the serial point of the server; mutations stay ordered by the store's
//! single writer. No request payload ever reaches it: the dispatcher asks it to
//! [`KeyManager::authorize`] a `(caller, key, operation)` and gets back a [`KeyHandle`], runs
//! the crypto itself, and for a new key asks it to [`KeyManager::create`] the result, which
//! answers only once the key is durable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferrohsm_proto::{KeyInfo, KeyRef, Lifetime, Status};
use parking_lot::Mutex;

use crate::error::OpError;
use crate::keys::cache::Cache;
use crate::keys::material::KeyMaterial;
use crate::keys::policy::{self, NewKey, Requirement};
use crate::keys::service::StoreService;
use crate::keys::session_keys::SessionKeys;
use crate::keys::store::{KeyRecord, KeyStore, Mutation, SESSION_ID_BASE, Sealed, StoreError};
use crate::keys::{KeyHandle, seal::MasterKey};

/// Who is asking: the proven client name and its session.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Proven client name (the namespace).
    pub client: Arc<str>,
    /// Session id.
    pub session: u64,
}

/// The key manager; shared by every session.
pub struct KeyManager {
    store: StoreService,
    cache: Mutex<Cache>,
    sessions: Mutex<SessionKeys>,
    // Held for the manager's life: this process's exclusive claim on the store.
    _lock: std::fs::File,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

fn info_of(r: &KeyRecord, lifetime: Lifetime) -> KeyInfo {
    KeyInfo {
        id: r.id,
        label: r.label.clone(),
        key_type: r.key_type,
        usage: r.usage,
        exportable: r.exportable,
        lifetime,
        created: r.created,
    }
}

/// Logs the alarm for a record that failed its integrity check (never its contents).
fn alarm(e: &StoreError) {
    if let StoreError::Integrity { owner, id, reason } = e {
        tracing::error!(client = %owner, id, %reason, "ALARM: key store integrity failure; the key is refused until an operator restores it");
    }
}

/// Opens a sealed record into a usable key (on a store thread).
fn open(master: &MasterKey, s: Sealed) -> Result<KeyHandle, StoreError> {
    let bad = |reason: &str| StoreError::Integrity {
        owner: s.record.owner.to_string(),
        id: s.record.id,
        reason: reason.into(),
    };
    let bytes = master
        .open_record(&s.record, &s.sealed)
        .map_err(|_| bad("the sealed material does not authenticate against its record"))?;
    let material = KeyMaterial::from_stored(s.record.key_type, &bytes)
        .ok_or_else(|| bad("the material does not form a key of the recorded type"))?;
    Ok(KeyHandle {
        owner: s.record.owner.clone(),
        info: info_of(&s.record, Lifetime::Persistent),
        origin: s.record.origin,
        material,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl KeyManager {
    /// A manager over the running store service, caching up to `cache_keys` opened keys;
    /// `lock` is the store's claim from [`crate::keys::lock_store`].
    pub fn new(store: StoreService, cache_keys: usize, lock: std::fs::File) -> KeyManager {
        KeyManager {
            store,
            cache: Mutex::new(Cache::new(cache_keys)),
            sessions: Mutex::new(SessionKeys::default()),
            _lock: lock,
        }
    }

    /// The store service (for its counters).
    pub fn store(&self) -> &StoreService {
        &self.store
    }

    /// A session opened (after authentication).
    pub fn open_session(&self, caller: &Caller) {
        self.sessions.lock().open(caller.session);
    }

    /// A session ended: its session keys are dropped.
    pub fn end_session(&self, caller: &Caller) {
        let n = self.sessions.lock().end(&caller.client, caller.session);
        if n > 0 {
            tracing::debug!(client = %caller.client, session = caller.session, keys = n, "session keys dropped");
        }
    }

    /// The caller's key, if it may be used for `req`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Result<Arc<KeyHandle>, OpError> {
        let h = self.lookup(caller, key).await?;
        policy::check(&h.info, req)?;
        Ok(h)
    }

    /// [`KeyManager::authorize`] when the answer is in memory (session keys, the cache):
    /// `None` when the store would have to be read.
    pub fn authorize_now(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Option<Result<Arc<KeyHandle>, OpError>> {
        let h = match self.sessions.lock().find(&caller.client, key) {
            Some(h) => h,
            None if matches!(key, KeyRef::Id(id) if *id >= SESSION_ID_BASE) => {
                return Some(Err(OpError::not_found(key)));
            }
            None => self.cache.lock().get(&caller.client, key)?,
        };
        Some(policy::check(&h.info, req).map(|_| h))
    }

    async fn lookup(&self, caller: &Caller, key: &KeyRef) -> Result<Arc<KeyHandle>, OpError> {
        if let Some(h) = self.sessions.lock().find(&caller.client, key) {
            return Ok(h);
        }
        if matches!(key, KeyRef::Id(id) if *id >= SESSION_ID_BASE) {
            return Err(OpError::not_found(key));
        }
        let epoch = {
            let mut c = self.cache.lock();
            if let Some(h) = c.get(&caller.client, key) {
                return Ok(h);
            }
            c.epoch()
        };
        let (owner, k) = (caller.client.clone(), key.clone());
        let found = self
            .store
            .read(move |s: &mut dyn KeyStore, m| match s.find(&owner, &k)? {
                Some(sealed) => open(m, sealed).map(Some),
                None => Ok(None),
            })
            .await
            .inspect_err(alarm)?;
        let h = Arc::new(found.ok_or_else(|| OpError::not_found(key))?);
        self.cache.lock().insert(h.clone(), epoch);
        Ok(h)
    }

    /// Stores a new key made by the pool: session keys in memory, persistent keys in the
    /// store (answering once durable).
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewKey,
        material: KeyMaterial,
    ) -> Result<KeyInfo, OpError> {
        self.sessions.lock().reserve(&caller.client, &new.label)?;
        let out = self.create_reserved(caller, &new, material).await;
        self.sessions.lock().release(&caller.client, &new.label);
        out
    }

    async fn create_reserved(
        &self,
        caller: &Caller,
        new: &NewKey,
        material: KeyMaterial,
    ) -> Result<KeyInfo, OpError> {
        let record = KeyRecord {
            owner: caller.client.clone(),
            id: 0,
            label: new.label.clone(),
            key_type: new.key_type,
            usage: new.usage,
            exportable: new.exportable,
            origin: new.origin,
            created: now(),
            version: 1,
        };
        if new.session {
            let (owner, label) = (caller.client.clone(), new.label.clone());
            let taken = self
                .store
                .read(move |s: &mut dyn KeyStore, _| s.label_in_use(&owner, &label))
                .await?;
            if taken {
                return Err(StoreError::LabelInUse(new.label.clone()).into());
            }
            let h = KeyHandle {
                owner: caller.client.clone(),
                info: info_of(&record, Lifetime::Session),
                origin: new.origin,
                material,
            };
            let h = self.sessions.lock().insert(caller.session, h)?;
            return Ok(h.info.clone());
        }
        let epoch = self.cache.lock().epoch();
        let secret = material.to_stored();
        let record = self
            .store
            .write(Mutation::Create { record, secret })
            .await?;
        tracing::debug!(client = %caller.client, id = record.id, key_type = %record.key_type, "key stored");
        let h = Arc::new(KeyHandle {
            owner: caller.client.clone(),
            info: info_of(&record, Lifetime::Persistent),
            origin: record.origin,
            material,
        });
        // A key just made is hot: cache it, so its first use does not unseal it.
        self.cache.lock().insert(h.clone(), epoch);
        Ok(h.info.clone())
    }

    /// Deletes a key of the caller's; a persistent key is gone from disk before this answers.
    pub async fn delete(&self, caller: &Caller, key: &KeyRef) -> Result<(), OpError> {
        if self.sessions.lock().remove(&caller.client, key).is_some() {
            return Ok(());
        }
        if matches!(key, KeyRef::Id(id) if *id >= SESSION_ID_BASE) {
            return Err(OpError::not_found(key));
        }
        let record = self
            .store
            .write(Mutation::Delete {
                owner: caller.client.clone(),
                key: key.clone(),
            })
            .await
            .inspect_err(alarm)?;
        self.cache.lock().remove(&caller.client, record.id);
        Ok(())
    }

    /// The caller's keys: persistent ones (each record's seal checked), then session keys.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<KeyInfo>, OpError> {
        let owner = caller.client.clone();
        let mut keys = self
            .store
            .read(move |s: &mut dyn KeyStore, m| {
                let mut out = Vec::new();
                for r in s.list(&owner)? {
                    // A damaged record is not shown as if it were a usable key; the alarm
                    // names it and it stays in the store, untouched, for the operator.
                    match r.and_then(|s| {
                        m.open_record(&s.record, &s.sealed)
                            .map_err(|e| StoreError::Integrity {
                                owner: s.record.owner.to_string(),
                                id: s.record.id,
                                reason: e.to_string(),
                            })?;
                        Ok(s.record)
                    }) {
                        Ok(rec) => out.push(info_of(&rec, Lifetime::Persistent)),
                        Err(e) => alarm(&e),
                    }
                }
                Ok(out)
            })
            .await?;
        keys.extend(self.sessions.lock().list(&caller.client));
        Ok(keys)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> OpError {
        match e {
            StoreError::LabelInUse(_) => OpError::new(Status::LabelInUse, e.to_string()),
            StoreError::NotFound(k) => OpError::new(Status::KeyNotFound, format!("no key {k}")),
            StoreError::IdsExhausted => OpError::new(Status::Busy, e.to_string()),
            StoreError::Integrity { id, .. } => OpError::new(
                Status::KeyStoreIntegrity,
                format!(
                    "key {id} failed its integrity check in the key store; it is refused until \
                     an operator restores it"
                ),
            ),
            StoreError::Backend(_) | StoreError::Open(_) => {
                tracing::error!(error = %e, "key store failure");
                OpError::new(
                    Status::StoreFailed,
                    "the key store could not complete the request; nothing was changed",
                )
            }
        }
    }
}
