//! The lifecycle changes of the key manager: grants, versions (rotate, retire), counters, and
//! durable records of exports and wraps. Each is one mutation carried to the store's writer
//! with its audit entry; the in-memory views (cache, grants) change only once it is durable.

use std::sync::Arc;

use ferrohsm_proto::{KeyInfo, KeyRef, Label, Opcode, UsageSet};

use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::manager::{Caller, KeyManager, alarm, now};
use crate::keys::material::KeyMaterial;
use crate::keys::policy;
use crate::keys::quota::Resource;
use crate::keys::store::{Applied, Change, GrantRecord, Mutation, SESSION_ID_BASE, Store};

fn is_session(h: &KeyHandle) -> bool {
    h.info.id >= SESSION_ID_BASE
}

fn persistent_only(h: &KeyHandle, what: &str) -> Result<(), OpError> {
    if is_session(h) {
        return Err(OpError::invalid(format!(
            "key {} is a session key; only persistent keys can {what}",
            h.info.label
        )));
    }
    Ok(())
}

impl KeyManager {
    async fn change(
        &self,
        caller: &Caller,
        op: &'static str,
        key: String,
        detail: String,
        mutation: Mutation,
    ) -> Result<Applied, OpError> {
        let mut ev = self.event(caller, op, key);
        ev.detail = detail;
        Ok(self
            .store
            .write(Change {
                mutation,
                audit: Some(ev),
            })
            .await
            .inspect_err(alarm)?)
    }

    /// Records `op` on `h` durably before its result (an exported key, a wrap blob) is
    /// returned: the audit chain never misses a key leaving the HSM.
    pub async fn record(
        &self,
        caller: &Caller,
        op: &'static str,
        h: &KeyHandle,
        detail: String,
    ) -> Result<(), OpError> {
        let key = format!("{}:{}", h.owner, h.info.id);
        self.change(caller, op, key, detail, Mutation::Record)
            .await
            .map(|_| ())
    }

    /// Grants the caller's key to `to` for `ops`.
    pub async fn grant(
        &self,
        caller: &Caller,
        key: &KeyRef,
        to: &Label,
        ops: UsageSet,
    ) -> Result<(), OpError> {
        let h = self.authorize_owner(caller, key, policy::GRANT).await?;
        persistent_only(&h, "be granted")?;
        if to.as_str() == &*caller.client {
            return Err(OpError::invalid("a key cannot be granted to its owner"));
        }
        if !self.opts.clients.contains(to.as_str()) {
            return Err(OpError::invalid(format!(
                "no client named {to} is configured on this server"
            )));
        }
        let ops = policy::grant_ops(&h.info, ops)?;
        // A new grant takes a place in the owner's quota; replacing one does not.
        let replaces = self
            .grants
            .read()
            .get(to.as_str(), &caller.client, h.info.id)
            .is_some();
        let place = match replaces {
            true => None,
            false => Some(
                self.quotas
                    .reserve(&caller.client, Resource::Grant)
                    .inspect_err(|e| self.deny(caller, policy::GRANT.op, key, e))?,
            ),
        };
        let rec = GrantRecord {
            owner: caller.client.clone(),
            id: h.info.id,
            grantee: Arc::from(to.as_str()),
            ops,
            created: now(),
        };
        let detail = format!("to {to} ops {}", ops.names().join(","));
        let key_name = format!("{}:{}", h.owner, h.info.id);
        self.change(
            caller,
            policy::GRANT.op,
            key_name,
            detail,
            Mutation::Grant(rec.clone()),
        )
        .await?;
        if self.followed() {
            // The follower applies it, in log order with every other node's grants and
            // revokes, and counts it (the place taken here is given back).
            self.settle().await;
            return Ok(());
        }
        let new = self.grants.write().set(&rec);
        match (new, place) {
            (true, Some(place)) => place.keep(),
            // Revoked between the check and now: it counts all the same.
            (true, None) => self.quotas.add(&caller.client, Resource::Grant, 1),
            // Made by a concurrent grant of the same pair: that one holds the place.
            (false, _) => {}
        }
        Ok(())
    }

    /// The keys other clients granted to the caller, each with its `owner` and the granted
    /// operations as its usage. A granted key that no longer opens is left out (its owner's
    /// alarm names it).
    pub async fn list_granted(&self, caller: &Caller) -> Result<Vec<KeyInfo>, OpError> {
        let granted = if self.fresh() {
            self.grants.read().to(&caller.client)
        } else {
            // Memory is not confirmed: the grants as the store holds them (or store_failed).
            let me = caller.client.clone();
            let mut all = self
                .store
                .read(move |s: &mut Store, m| s.grants(m))
                .await?
                .into_iter()
                .filter(|g| g.grantee == me)
                .map(|g| (g.owner, g.id, g.ops))
                .collect::<Vec<_>>();
            all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            all
        };
        let mut out = Vec::with_capacity(granted.len());
        for (owner, id, ops) in granted {
            if let Ok(h) = self.lookup_persistent(&owner, &KeyRef::Id(id)).await {
                let mut info = h.info.clone();
                info.usage = ops;
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Withdraws the grant of the caller's key to `from`.
    pub async fn revoke(&self, caller: &Caller, key: &KeyRef, from: &Label) -> Result<(), OpError> {
        let h = self.authorize_owner(caller, key, policy::REVOKE).await?;
        let key_name = format!("{}:{}", h.owner, h.info.id);
        let m = Mutation::Revoke {
            owner: caller.client.clone(),
            id: h.info.id,
            grantee: Arc::from(from.as_str()),
        };
        self.change(
            caller,
            policy::REVOKE.op,
            key_name,
            format!("from {from}"),
            m,
        )
        .await?;
        if self.followed() {
            self.settle().await;
            return Ok(());
        }
        if self
            .grants
            .write()
            .remove(&caller.client, h.info.id, from.as_str())
        {
            self.quotas.release(&caller.client, Resource::Grant, 1);
        }
        Ok(())
    }

    /// Re-reads a key after a change to its versions (the cached handle is dropped first).
    async fn reload(&self, caller: &Caller, id: u32) -> Result<KeyInfo, OpError> {
        self.cache.lock().remove(&caller.client, id);
        let h = self
            .lookup_persistent(&caller.client, &KeyRef::Id(id))
            .await?;
        Ok(h.info.clone())
    }

    /// Adds a version made of `material` to the caller's key (already authorized for rotate)
    /// and makes it current.
    pub async fn rotate(
        &self,
        caller: &Caller,
        h: &KeyHandle,
        material: Box<KeyMaterial>,
    ) -> Result<KeyInfo, OpError> {
        persistent_only(h, "be rotated")?;
        let m = Mutation::Rotate {
            owner: caller.client.clone(),
            id: h.info.id,
            material,
        };
        let key_name = format!("{}:{}", h.owner, h.info.id);
        let detail = format!("version {}", h.info.current_version + 1);
        self.change(caller, policy::ROTATE.op, key_name, detail, m)
            .await?;
        self.reload(caller, h.info.id).await
    }

    /// Deletes the material of every version of the caller's key below `below`.
    pub async fn retire(
        &self,
        caller: &Caller,
        key: &KeyRef,
        below: u32,
    ) -> Result<KeyInfo, OpError> {
        let h = self.authorize_owner(caller, key, policy::RETIRE).await?;
        persistent_only(&h, "have versions retired")?;
        let m = Mutation::Retire {
            owner: caller.client.clone(),
            id: h.info.id,
            below,
        };
        let key_name = format!("{}:{}", h.owner, h.info.id);
        self.change(
            caller,
            policy::RETIRE.op,
            key_name,
            format!("below {below}"),
            m,
        )
        .await?;
        let id = h.info.id;
        drop(h);
        self.reload(caller, id).await
    }

    /// Creates a counter of the caller's at 0.
    pub async fn counter_create(&self, caller: &Caller, name: &Label) -> Result<u64, OpError> {
        let place = self
            .quotas
            .reserve(&caller.client, Resource::Counter)
            .inspect_err(|e| {
                self.deny(
                    caller,
                    Opcode::CounterCreate.kind().name,
                    &KeyRef::Label(name.clone()),
                    e,
                )
            })?;
        let m = Mutation::CounterCreate {
            owner: caller.client.clone(),
            name: name.clone(),
        };
        let key = format!("{}:{name}", caller.client);
        match self
            .change(
                caller,
                Opcode::CounterCreate.kind().name,
                key,
                String::new(),
                m,
            )
            .await?
        {
            Applied::Counter(v) => {
                place.keep();
                Ok(v)
            }
            _ => Err(OpError::internal("the store answered the wrong kind")),
        }
    }

    /// Increments a counter of the caller's; answers the new value once it is durable.
    pub async fn counter_inc(&self, caller: &Caller, name: &Label) -> Result<u64, OpError> {
        let m = Mutation::CounterInc {
            owner: caller.client.clone(),
            name: name.clone(),
        };
        let key = format!("{}:{name}", caller.client);
        match self
            .change(
                caller,
                Opcode::CounterInc.kind().name,
                key,
                String::new(),
                m,
            )
            .await?
        {
            Applied::Counter(v) => Ok(v),
            _ => Err(OpError::internal("the store answered the wrong kind")),
        }
    }

    /// A counter's value.
    pub async fn counter_read(&self, caller: &Caller, name: &Label) -> Result<u64, OpError> {
        let (owner, n) = (caller.client.clone(), name.clone());
        self.store
            .read(move |s: &mut Store, m| s.counter(m, &owner, &n))
            .await
            .inspect_err(alarm)?
            .ok_or_else(|| crate::keys::store::StoreError::NoCounter(name.clone()).into())
    }
}
