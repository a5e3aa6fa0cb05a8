//! A bounded cache of opened persistent keys, least recently used out first, so hot keys are
//! not unsealed per request. Memory is bounded by the capacity, not by how many keys the
//! store holds: only cached keys have an entry, in both the id and the label index.
//!
//! Dropping an entry (eviction or delete) drops its `Arc<KeyHandle>`; the material zeroizes
//! when the last in-flight job holding it finishes.
//!
//! A fill races with a delete when the read started before the delete committed: the
//! `epoch`, bumped by every removal, tells a fill that started before the latest removal not
//! to insert what it read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferrohsm_proto::{KeyRef, Label};

use crate::keys::KeyHandle;

#[derive(Debug, Default)]
struct OwnerCache {
    by_id: HashMap<u32, (Arc<KeyHandle>, u64)>,
    by_label: HashMap<Label, u32>,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    tick: u64,
    epoch: u64,
    len: usize,
    owners: HashMap<Arc<str>, OwnerCache>,
    // tick of last use -> (owner, id): the smallest tick is evicted first.
    lru: BTreeMap<u64, (Arc<str>, u32)>,
}

impl Cache {
    /// A cache of at most `capacity` keys (0: nothing is cached).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            tick: 0,
            epoch: 0,
            len: 0,
            owners: HashMap::new(),
            lru: BTreeMap::new(),
        }
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The removal epoch; pass it back to [`Cache::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A cached key of `owner`, marked as just used.
    pub fn get(&mut self, owner: &str, key: &KeyRef) -> Option<Arc<KeyHandle>> {
        let o = self.owners.get_mut(owner)?;
        let id = match key {
            KeyRef::Id(id) => *id,
            KeyRef::Label(l) => *o.by_label.get(l)?,
            KeyRef::OwnerId(..) | KeyRef::OwnerLabel(..) => return None,
        };
        let (h, used) = o.by_id.get_mut(&id)?;
        self.tick += 1;
        if let Some(k) = self.lru.remove(used) {
            self.lru.insert(self.tick, k);
        }
        *used = self.tick;
        Some(h.clone())
    }

    /// Caches `h` unless a removal happened since `epoch` was read.
    pub fn insert(&mut self, h: Arc<KeyHandle>, epoch: u64) {
        crate::harden::protect(&*h);
        if self.capacity == 0 || epoch != self.epoch {
            return;
        }
        let owner = h.owner.clone();
        let id = h.info.id;
        self.tick += 1;
        let tick = self.tick;
        let o = self.owners.entry(owner.clone()).or_default();
        if let Some((_, old)) = o.by_id.insert(id, (h.clone(), tick)) {
            self.lru.remove(&old);
        } else {
            self.len += 1;
        }
        o.by_label.insert(h.info.label.clone(), id);
        self.lru.insert(tick, (owner, id));
        while self.len > self.capacity {
            let Some((_, (owner, id))) = self.lru.pop_first() else {
                break;
            };
            self.drop_entry(&owner, id);
        }
    }

    /// Removes a key (deleted) and bumps the epoch.
    pub fn remove(&mut self, owner: &str, id: u32) {
        self.epoch += 1;
        if let Some(used) = self
            .owners
            .get(owner)
            .and_then(|o| o.by_id.get(&id))
            .map(|(_, t)| *t)
        {
            self.lru.remove(&used);
            self.drop_entry(owner, id);
        }
    }

    /// Drops every key and bumps the epoch (changes may have been missed).
    pub fn clear(&mut self) {
        self.epoch += 1;
        self.owners.clear();
        self.lru.clear();
        self.len = 0;
    }

    fn drop_entry(&mut self, owner: &str, id: u32) {
        let Some(o) = self.owners.get_mut(owner) else {
            return;
        };
        if let Some((h, _)) = o.by_id.remove(&id) {
            self.len -= 1;
            if o.by_label.get(&h.info.label) == Some(&id) {
                o.by_label.remove(&h.info.label);
            }
        }
        if o.by_id.is_empty() {
            self.owners.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::material::KeyMaterial;
    use ferrohsm_proto::KeyType;

    fn handle(owner: &str, id: u32) -> Arc<KeyHandle> {
        let t = KeyType::HmacSha256;
        Arc::new(KeyHandle {
            owner: owner.into(),
            info: crate::keys::manager::test_info(
                id,
                &format!("k{id}"),
                t,
                t.allowed_usage(),
                false,
            ),
            material: KeyMaterial::generate(t).unwrap(),
            older: Vec::new(),
        })
    }

    #[test]
    fn bounded_lru_by_id_and_label_with_epochs() {
        let mut c = Cache::new(2);
        c.insert(handle("a", 1), c.epoch());
        c.insert(handle("a", 2), c.epoch());
        assert!(c.get("a", &KeyRef::Id(1)).is_some(), "1 is now most recent");
        c.insert(handle("b", 3), c.epoch());
        assert_eq!(c.len(), 2);
        assert!(
            c.get("a", &KeyRef::Id(2)).is_none(),
            "least recently used went first"
        );
        assert!(c.get("a", &"k1".parse().unwrap()).is_some());
        assert!(c.get("b", &KeyRef::Id(1)).is_none(), "owners are separate");
        let stale = c.epoch();
        c.remove("a", 1);
        assert!(c.get("a", &KeyRef::Id(1)).is_none());
        assert!(c.get("a", &"k1".parse().unwrap()).is_none());
        c.insert(handle("a", 1), stale);
        assert!(
            c.get("a", &KeyRef::Id(1)).is_none(),
            "a fill older than a delete is dropped"
        );
        let mut none = Cache::new(0);
        none.insert(handle("a", 1), none.epoch());
        assert!(none.is_empty());
    }
}
