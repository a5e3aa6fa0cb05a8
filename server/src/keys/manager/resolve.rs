//! Finding a key as a caller names it and deciding whether it may be used: the caller's
//! session keys, the cache, the store, and grants; on a store several nodes share, only what
//! the change log has confirmed (`keys/follow.rs`).

use std::sync::Arc;

use ferrohsm_proto::KeyRef;

use super::{Access, Caller, KeyManager, alarm};
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::policy::{self, Requirement};
use crate::keys::store::{SESSION_ID_BASE, Store};

impl KeyManager {
    /// Whether what is held in memory may be used without asking the store: always on a
    /// store this process alone writes; on a shared one, while the change log confirms it
    /// (`keys/follow.rs`).
    pub(crate) fn fresh(&self) -> bool {
        match &self.following {
            Some(f) => f.fresh(),
            // A shared store nobody follows is never confirmed.
            None => !self.store.shared(),
        }
    }

    /// Whether grants in memory are the follower's alone to change (a shared store).
    pub(crate) fn followed(&self) -> bool {
        self.store.shared()
    }

    /// Waits (at most `revalidate_ms`) until the follower has applied the last grant or
    /// revoke this node committed (by log position), so this node's answers after it
    /// reflect it.
    pub(crate) async fn settle(&self) {
        let Some(f) = &self.following else { return };
        let seq = self
            .store
            .stats
            .noted
            .load(std::sync::atomic::Ordering::Acquire);
        let deadline = std::time::Instant::now()
            + self
                .opts
                .revalidate
                .unwrap_or(crate::keys::store::postgres::DEFAULT_REVALIDATE);
        while !f.applied(seq) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_micros(500)).await;
        }
    }

    /// The caller's key, or a key granted to it, if it may be used for `req`. A denial is
    /// recorded in the audit chain.
    pub async fn authorize(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Result<Arc<KeyHandle>, OpError> {
        let r = match self.resolve(caller, key).await {
            Ok((h, access)) => check(&h, access, key, req).map(|_| h),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.deny(caller, req.op, key, e);
        }
        r
    }

    /// [`KeyManager::authorize`] when the answer is in memory (session keys, grants, the
    /// cache): `None` when the store would have to be read.
    pub fn authorize_now(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Option<Result<Arc<KeyHandle>, OpError>> {
        let r = match self.resolve_now(caller, key)? {
            Ok((h, access)) => check(&h, access, key, req).map(|_| h),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.deny(caller, req.op, key, e);
        }
        Some(r)
    }

    fn granted(&self, caller: &Caller, key: &KeyRef, h: &KeyHandle) -> Result<Access, OpError> {
        match self.grants.read().get(&caller.client, &h.owner, h.info.id) {
            Some(ops) => Ok(Access::Granted(ops)),
            None => Err(OpError::not_found(key)),
        }
    }

    /// [`KeyManager::granted`], with the grant read back from the store when memory is not
    /// confirmed.
    async fn granted_confirmed(
        &self,
        caller: &Caller,
        key: &KeyRef,
        h: &KeyHandle,
    ) -> Result<Access, OpError> {
        if self.fresh() {
            return self.granted(caller, key, h);
        }
        let (o, id, g) = (h.owner.clone(), h.info.id, caller.client.clone());
        let found = self
            .store
            .read(move |s: &mut Store, m| s.grant(m, &o, id, &g))
            .await
            .inspect_err(alarm)?;
        match found {
            Some(g) => Ok(Access::Granted(g.ops)),
            None => Err(OpError::not_found(key)),
        }
    }

    fn resolve_now(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Option<Result<(Arc<KeyHandle>, Access), OpError>> {
        if !self.fresh() {
            // Cached keys and grants must be confirmed by the store first (session keys are
            // this node's alone, but the slow path finds them too).
            return None;
        }
        match key.owner() {
            Some(o) if o.as_str() != &*caller.client => {
                let h = self.cache.lock().get(o.as_str(), &key.local())?;
                Some(self.granted(caller, key, &h).map(|a| (h, a)))
            }
            _ => {
                let local = key.local();
                let h = match self
                    .sessions
                    .lock()
                    .find(&caller.client, caller.session, &local)
                {
                    Some(h) => h,
                    None if matches!(*local, KeyRef::Id(id) if id >= SESSION_ID_BASE) => {
                        return Some(Err(OpError::not_found(key)));
                    }
                    None => self.cache.lock().get(&caller.client, &local)?,
                };
                Some(Ok((h, Access::Owner)))
            }
        }
    }

    /// Finds `key` as the caller names it: its own (session keys first), or another client's
    /// that is granted to it. Anything else is `key_not_found`, whatever the reason (no such
    /// key, not granted, damaged), so the answer reveals nothing about other clients.
    pub async fn resolve(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<(Arc<KeyHandle>, Access), OpError> {
        match key.owner() {
            Some(o) if o.as_str() != &*caller.client => {
                let owner: Arc<str> = Arc::from(o.as_str());
                let h = self
                    .lookup_persistent(&owner, &key.local())
                    .await
                    .map_err(|e| match e.status {
                        // The store cannot answer: say so (it tells nothing about the key).
                        ferrohsm_proto::Status::StoreFailed => e,
                        _ => OpError::not_found(key),
                    })?;
                let access = self.granted_confirmed(caller, key, &h).await?;
                Ok((h, access))
            }
            _ => {
                let local = key.local();
                if let Some(h) = self
                    .sessions
                    .lock()
                    .find(&caller.client, caller.session, &local)
                {
                    return Ok((h, Access::Owner));
                }
                if matches!(*local, KeyRef::Id(id) if id >= SESSION_ID_BASE) {
                    return Err(OpError::not_found(key));
                }
                let h = self.lookup_persistent(&caller.client, &local).await?;
                Ok((h, Access::Owner))
            }
        }
    }

    /// A persistent key of `owner`, from the cache or the store.
    pub(in crate::keys) async fn lookup_persistent(
        &self,
        owner: &Arc<str>,
        key: &KeyRef,
    ) -> Result<Arc<KeyHandle>, OpError> {
        let fresh = self.fresh();
        let epoch = {
            let mut c = self.cache.lock();
            if fresh && let Some(h) = c.get(owner, key) {
                return Ok(h);
            }
            c.epoch()
        };
        let (o, k) = (owner.clone(), key.clone());
        let found = self
            .store
            .read(move |s: &mut Store, m| s.find_open(m, &o, &k))
            .await
            .inspect_err(alarm)?;
        let h = Arc::new(found.ok_or_else(|| OpError::not_found(key))?);
        self.cache.lock().insert(h.clone(), epoch);
        Ok(h)
    }

    /// The answer to an owner-only operation on another client's key: `usage_not_permitted`
    /// when it is granted to the caller (who knows it exists), else `key_not_found`.
    pub(in crate::keys) async fn refuse_owner_only(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> OpError {
        let e = match self.resolve(caller, key).await {
            Ok((_, Access::Granted(ops))) => policy::check_granted(key, ops, req)
                .err()
                .unwrap_or_else(|| OpError::internal("an owner-only operation passed a grant")),
            Ok((_, Access::Owner)) => OpError::internal("a foreign key resolved as owned"),
            Err(e) => e,
        };
        self.deny(caller, req.op, key, &e);
        e
    }

    /// The caller's own key (never through a grant) for an owner-only operation.
    pub async fn authorize_owner(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Result<Arc<KeyHandle>, OpError> {
        if key.owner().is_some_and(|o| o.as_str() != &*caller.client) {
            return Err(self.refuse_owner_only(caller, key, req).await);
        }
        self.authorize(caller, &key.local(), req).await
    }
}

/// Whether `h`, reached through `access`, may be used for `req`.
fn check(h: &KeyHandle, access: Access, key: &KeyRef, req: Requirement) -> Result<(), OpError> {
    if let Access::Granted(ops) = access {
        policy::check_granted(key, ops, req)?;
    }
    policy::check(&h.info, req)
}
