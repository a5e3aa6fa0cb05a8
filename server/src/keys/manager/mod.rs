//! The key manager: namespaces, grants, authorization and key creation, over the session keys,
//! the cache and the store threads.
//!
//! It serves authorization as a concurrent read path (a short lock on the session keys, the
//! grants and the cache; on a miss, a read on a store thread) rather than as one actor's
//! mailbox, so it never becomes the serial point of the server; mutations stay ordered by the
//! store's single writer. No request payload ever reaches it: the dispatcher asks it to
//! [`KeyManager::authorize`] a `(caller, key, operation)` and gets back a [`KeyHandle`], runs
//! the crypto itself, and for a new key asks it to [`KeyManager::create`] the result, which
//! answers only once the key is durable. Every denial is queued for the audit chain here, where
//! it is decided; every change carries its audit entry into the store's transaction
//! (`resolve.rs` finds and authorizes keys; `keys/lifecycle.rs` has the lifecycle changes).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ferrohsm_proto::{KeyInfo, KeyQuery, KeyRef, Lifetime, MAX_PAGE, Page, UsageSet, VersionInfo};
use parking_lot::{Mutex, RwLock};

use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::audit::Level;
use crate::keys::cache::Cache;
use crate::keys::follow::{Followers, Following};
use crate::keys::grants::Grants;
use crate::keys::material::KeyMaterial;
use crate::keys::policy::{self, NewKey};
use crate::keys::quota::{Quotas, Resource};
use crate::keys::service::StoreService;
use crate::keys::session_keys::SessionKeys;
use crate::keys::store::backend::KeyFilter;
use crate::keys::store::format::open::info_of;
use crate::keys::store::{
    Change, GrantRecord, KeyRecord, Mutation, NewVersion, SESSION_ID_BASE, Store, StoreError,
};

mod audit;
mod caller;
mod node;
mod records;
mod resolve;
mod status;

pub use caller::Caller;
pub use node::NodeInfo;

use caller::qualified;
#[cfg(test)]
pub(crate) use records::test_info;
pub(crate) use records::{alarm, now};

/// What the manager needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ManagerOptions {
    /// How much is audited.
    pub audit: Level,
    /// Configured client names (who a key may be granted to).
    pub clients: BTreeSet<String>,
    /// Per client, its wrap keys trusted for wrapping non-exportable keys (labels or ids).
    pub trusted_wrap_keys: HashMap<String, Vec<KeyRef>>,
    /// On a store several nodes share: how long memory is used without the database
    /// confirming it (`[store] revalidate_ms`).
    pub revalidate: Option<std::time::Duration>,
}

/// How the caller reaches a key.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// It is the caller's.
    Owner,
    /// Another client granted these operations.
    Granted(UsageSet),
}

/// The key manager; shared by every session.
pub struct KeyManager {
    pub(super) store: StoreService,
    pub(super) cache: Arc<Mutex<Cache>>,
    pub(super) sessions: Arc<Mutex<SessionKeys>>,
    pub(super) grants: Arc<RwLock<Grants>>,
    pub(super) opts: ManagerOptions,
    pub(super) quotas: Arc<Quotas>,
    pub(super) node: NodeInfo,
    // Other nodes' changes, followed (a store several nodes share).
    following: Option<Arc<Following>>,
    // Held for the manager's life: this process's claim on the store.
    _claim: crate::keys::StoreClaim,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// A manager over the running store service, caching up to `cache_keys` opened keys;
    /// `claim` is this process's claim on the store ([`crate::keys::StoreClaim`]); `grants` as
    /// loaded from the store; `quotas` counting what the store holds. On a store that other
    /// nodes write, a thread follows their changes (`keys/follow.rs`).
    pub fn new(
        store: StoreService,
        cache_keys: usize,
        claim: crate::keys::StoreClaim,
        grants: Vec<GrantRecord>,
        opts: ManagerOptions,
        quotas: Quotas,
        node: NodeInfo,
    ) -> std::io::Result<KeyManager> {
        let quotas = Arc::new(quotas);
        let cache = Arc::new(Mutex::new(Cache::new(cache_keys)));
        let sessions = Arc::new(Mutex::new(SessionKeys::default()));
        let grants = Arc::new(RwLock::new(Grants::from_records(grants)));
        let following = match store.take_follower() {
            Some((handle, master)) => Some(crate::keys::follow::start(
                handle,
                master,
                opts.revalidate
                    .unwrap_or(crate::keys::store::postgres::DEFAULT_REVALIDATE),
                Followers {
                    cache: cache.clone(),
                    grants: grants.clone(),
                    quotas: quotas.clone(),
                    sessions: sessions.clone(),
                },
            )?),
            None => None,
        };
        Ok(KeyManager {
            quotas,
            store,
            cache,
            sessions,
            grants,
            opts,
            node,
            following,
            _claim: claim,
        })
    }

    /// On a store several nodes share: waits up to `within` for the follower's first look
    /// of the change log, so a node serves only once it follows the others (a key cached
    /// before that look would be dropped by it). `true` at once on a store of its own.
    pub fn wait_following(&self, within: std::time::Duration) -> bool {
        self.following
            .as_ref()
            .is_none_or(|f| f.wait_first_look(within))
    }

    /// This node's name, backend and sessions open.
    pub fn node_info(&self) -> &NodeInfo {
        &self.node
    }

    /// The store service (for its counters).
    pub fn store(&self) -> &StoreService {
        &self.store
    }

    /// How much is audited.
    pub fn audit_level(&self) -> Level {
        self.opts.audit
    }

    /// A session opened (after authentication).
    pub fn open_session(&self, caller: &Caller) {
        self.sessions.lock().open(caller.session);
        self.node.opened(caller);
    }

    /// A session ended: its session keys are dropped (and their places in the quota freed).
    pub fn end_session(&self, caller: &Caller) {
        self.node.ended(caller);
        let n = self.sessions.lock().end(&caller.client, caller.session);
        self.quotas.release(&caller.client, Resource::Key, n);
        if n > 0 {
            tracing::debug!(client = %caller.client, session = caller.session, keys = n, "session keys dropped");
        }
    }

    /// Whether `info` (a wrap key of `caller`'s) is trusted for wrapping non-exportable keys.
    pub fn trusts_wrap_key(&self, caller: &Caller, info: &KeyInfo) -> bool {
        self.opts
            .trusted_wrap_keys
            .get(&*caller.client)
            .is_some_and(|list| {
                list.iter().any(|k| match k {
                    KeyRef::Id(id) => *id == info.id,
                    KeyRef::Label(l) => *l == info.label,
                    _ => false,
                })
            })
    }

    /// Stores a new key: session keys in memory, persistent keys in the store (answering
    /// once durable, with its audit entry in the same transaction).
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewKey,
        material: Box<KeyMaterial>,
    ) -> Result<KeyInfo, OpError> {
        let version = NewVersion {
            created: now(),
            material: Some(material),
        };
        self.create_versions(caller, new, vec![version]).await
    }

    /// [`KeyManager::create`] with a history of versions, oldest first (an unwrapped key keeps
    /// the versions it was wrapped with; retired ones have no material). The last must have
    /// material.
    pub async fn create_versions(
        &self,
        caller: &Caller,
        new: NewKey,
        versions: Vec<NewVersion>,
    ) -> Result<KeyInfo, OpError> {
        let place = self
            .quotas
            .reserve(&caller.client, Resource::Key)
            .inspect_err(|e| {
                self.deny(caller, new.op(), &KeyRef::Label(new.label.clone()), e);
            })?;
        self.sessions.lock().reserve(&caller.client, &new.label)?;
        let out = self.create_reserved(caller, &new, versions).await;
        self.sessions.lock().release(&caller.client, &new.label);
        if out.is_ok() {
            place.keep();
        }
        out
    }

    async fn create_reserved(
        &self,
        caller: &Caller,
        new: &NewKey,
        mut versions: Vec<NewVersion>,
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
            version: versions.len() as u32,
        };
        if versions.last().is_none_or(|v| v.material.is_none()) {
            return Err(OpError::internal("a new key without material"));
        }
        if new.session {
            let Some(NewVersion {
                material: Some(material),
                ..
            }) = versions.pop()
            else {
                return Err(OpError::internal("a new key without material"));
            };
            if !versions.is_empty() {
                return Err(OpError::invalid("a session key has one version"));
            }
            let (owner, label) = (caller.client.clone(), new.label.clone());
            let taken = self
                .store
                .read(move |s: &mut Store, _| s.label_in_use(&owner, &label))
                .await?;
            if taken {
                return Err(StoreError::LabelInUse(new.label.clone()).into());
            }
            let h = KeyHandle {
                owner: caller.client.clone(),
                info: info_of(
                    &record,
                    Lifetime::Session,
                    vec![VersionInfo {
                        version: 1,
                        created: record.created,
                        retired: false,
                    }],
                ),
                material: *material,
                older: Vec::new(),
            };
            let h = self.sessions.lock().insert(caller.session, h)?;
            // Memory only, so no transaction to join: the entry joins the next commit.
            let mut ev = self.event(caller, new.op(), format!("{}:{}", caller.client, h.info.id));
            ev.detail = "session key".into();
            ev.status = "ok";
            self.store.audit_later(ev);
            return Ok(h.info.clone());
        }
        // The current version is made now (an unwrapped key's older versions keep their
        // times from the blob).
        if let Some(current) = versions.last_mut() {
            current.created = record.created;
        }
        let epoch = self.cache.lock().epoch();
        let mut ev = self.event(caller, new.op(), format!("{}:{}", caller.client, new.label));
        ev.detail = format!("{} {}", new.key_type, new.origin.name());
        // The writer seals the material and builds the key's handle: its bytes go from the
        // worker that made it to the store thread, never through this one.
        let h = self
            .store
            .write(Change {
                mutation: Mutation::Create { record, versions },
                audit: Some(ev),
            })
            .await?
            .created()?;
        tracing::debug!(client = %caller.client, id = h.info.id, key_type = %h.info.key_type, "key stored");
        // A key just made is hot: cache it, so its first use does not unseal it.
        self.cache.lock().insert(h.clone(), epoch);
        Ok(h.info.clone())
    }

    /// Deletes a key of the caller's; a persistent key is gone from disk (with its versions
    /// and grants) before this answers.
    pub async fn delete(&self, caller: &Caller, key: &KeyRef) -> Result<(), OpError> {
        if key.owner().is_some_and(|o| o.as_str() != &*caller.client) {
            return Err(self.refuse_owner_only(caller, key, policy::DELETE).await);
        }
        let local = key.local();
        if self
            .sessions
            .lock()
            .remove(&caller.client, caller.session, &local)
            .is_some()
        {
            self.quotas.release(&caller.client, Resource::Key, 1);
            return Ok(());
        }
        if matches!(*local, KeyRef::Id(id) if id >= SESSION_ID_BASE) {
            let e = OpError::not_found(key);
            self.deny(caller, policy::DELETE.op, key, &e);
            return Err(e);
        }
        let ev = self.event(caller, policy::DELETE.op, qualified(caller, key));
        let record = self
            .store
            .write(Change {
                mutation: Mutation::Delete {
                    owner: caller.client.clone(),
                    key: local.into_owned(),
                },
                audit: Some(ev),
            })
            .await
            .inspect_err(alarm)?
            .record()?;
        self.cache.lock().remove(&caller.client, record.id);
        let grants = self.grants.write().remove_key(&caller.client, record.id);
        self.quotas.release(&caller.client, Resource::Key, 1);
        self.quotas.release(&caller.client, Resource::Grant, grants);
        Ok(())
    }

    /// One page of the caller's keys, by id: persistent ones (each record's seal checked),
    /// then this session's session keys (their ids are all above persistent ones). A page
    /// shorter than its limit is the last.
    pub async fn list(&self, caller: &Caller, page: Page) -> Result<Vec<KeyInfo>, OpError> {
        self.list_matching(caller, page, KeyFilter::default(), |_| true)
            .await
    }

    /// One page of the caller's keys that match `query` (as [`KeyManager::list`] pages: a
    /// page shorter than its limit is the last).
    pub async fn find(&self, caller: &Caller, query: KeyQuery) -> Result<Vec<KeyInfo>, OpError> {
        let filter = KeyFilter {
            label: query.label.clone(),
            id: query.id,
            key_type: query.key_type,
        };
        let page = query.page;
        self.list_matching(caller, page, filter, move |k| query.matches(k))
            .await
    }

    async fn list_matching(
        &self,
        caller: &Caller,
        page: Page,
        filter: KeyFilter,
        keep: impl Fn(&KeyInfo) -> bool + Clone + Send + 'static,
    ) -> Result<Vec<KeyInfo>, OpError> {
        let limit = page.limit.unwrap_or(MAX_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(OpError::invalid(format!(
                "list limit {limit} is out of range: expected 1 to {MAX_PAGE}"
            )));
        }
        let limit = limit as usize;
        let after = page.after.unwrap_or(0);
        let mut keys = Vec::new();
        if after < SESSION_ID_BASE {
            let owner = caller.client.clone();
            keys = self
                .store
                .read(move |s: &mut Store, m| {
                    let mut out = Vec::with_capacity(limit.min(64));
                    let mut cursor = after;
                    // The backend returns only matching rows (from its indexes), so only they
                    // are unsealed. A damaged record is not shown as if it were a usable key
                    // (the alarm names it and it stays in the store, untouched, for the
                    // operator), and it does not shorten the page: a short page means the last.
                    while out.len() < limit {
                        let rows = s.list_open(m, &owner, &filter, cursor, limit - out.len())?;
                        let Some((last, _)) = rows.last() else { break };
                        cursor = *last;
                        for (_, r) in rows {
                            match r {
                                Ok(h) => out.push(h.info),
                                Err(e) => alarm(&e),
                            }
                        }
                    }
                    Ok(out)
                })
                .await?;
        }
        if keys.len() < limit {
            let after = after.max(SESSION_ID_BASE - 1);
            let more = self.sessions.lock().list(
                &caller.client,
                caller.session,
                after,
                limit - keys.len(),
                keep,
            );
            keys.extend(more);
        }
        Ok(keys)
    }
}
