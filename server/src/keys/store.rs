//! Key storage behind a trait, so durable storage can replace the in-memory store.
//!
//! Every lookup is scoped by client name: there is no call that reaches another client's keys,
//! so isolation does not depend on each caller remembering to check an owner field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferrohsm_proto::{KeyInfo, KeyRef, Label, Lifetime, Status};

use crate::error::OpError;
use crate::keys::material::KeyMaterial;

/// One stored key.
#[derive(Debug)]
pub struct KeyEntry {
    /// Public description.
    pub info: KeyInfo,
    /// The session that owns a session key.
    pub session: Option<u64>,
    /// The secret; shared with in-flight crypto jobs, zeroized when the last holder drops it.
    pub material: Arc<KeyMaterial>,
}

/// A key about to be stored; the store assigns the id.
#[derive(Debug)]
pub struct NewKey {
    /// Description without id.
    pub info: KeyInfo,
    /// Owning session, for session keys.
    pub session: Option<u64>,
    /// The secret.
    pub material: Arc<KeyMaterial>,
}

/// Per-client key storage.
pub trait KeyStore: Send {
    /// Stores a key, assigning a fresh per-client id; refuses a label already in use.
    fn insert(&mut self, client: &str, key: NewKey) -> Result<Arc<KeyEntry>, OpError>;
    /// Looks a key up in `client`'s namespace.
    fn find(&self, client: &str, key: &KeyRef) -> Option<Arc<KeyEntry>>;
    /// Whether `client` has a key labelled `label`.
    fn label_in_use(&self, client: &str, label: &Label) -> bool;
    /// `client`'s keys, by id.
    fn list(&self, client: &str) -> Vec<KeyInfo>;
    /// Removes a key from `client`'s namespace.
    fn remove(&mut self, client: &str, key: &KeyRef) -> Option<Arc<KeyEntry>>;
    /// Removes every session key of `session`; returns how many.
    fn remove_session(&mut self, client: &str, session: u64) -> usize;
}

#[derive(Debug, Default)]
struct ClientKeys {
    next_id: u32,
    by_id: BTreeMap<u32, Arc<KeyEntry>>,
    by_label: HashMap<Label, u32>,
}

impl ClientKeys {
    fn id_of(&self, key: &KeyRef) -> Option<u32> {
        match key {
            KeyRef::Id(id) => self.by_id.contains_key(id).then_some(*id),
            KeyRef::Label(l) => self.by_label.get(l).copied(),
        }
    }
}

/// Keys in memory (lost at exit). Ids are never reused within a run.
#[derive(Debug, Default)]
pub struct MemoryStore {
    clients: HashMap<String, ClientKeys>,
}

impl KeyStore for MemoryStore {
    fn insert(&mut self, client: &str, key: NewKey) -> Result<Arc<KeyEntry>, OpError> {
        let keys = self.clients.entry(client.to_owned()).or_default();
        if keys.by_label.contains_key(&key.info.label) {
            return Err(OpError::new(
                Status::LabelInUse,
                format!("a key labelled {} already exists", key.info.label),
            ));
        }
        keys.next_id = keys
            .next_id
            .checked_add(1)
            .ok_or_else(|| OpError::new(Status::Busy, "key id space exhausted for this client"))?;
        let id = keys.next_id;
        let mut info = key.info;
        info.id = id;
        info.lifetime = if key.session.is_some() {
            Lifetime::Session
        } else {
            Lifetime::Persistent
        };
        let entry = Arc::new(KeyEntry {
            info,
            session: key.session,
            material: key.material,
        });
        keys.by_label.insert(entry.info.label.clone(), id);
        keys.by_id.insert(id, entry.clone());
        Ok(entry)
    }

    fn find(&self, client: &str, key: &KeyRef) -> Option<Arc<KeyEntry>> {
        let keys = self.clients.get(client)?;
        keys.by_id.get(&keys.id_of(key)?).cloned()
    }

    fn label_in_use(&self, client: &str, label: &Label) -> bool {
        self.clients
            .get(client)
            .is_some_and(|k| k.by_label.contains_key(label))
    }

    fn list(&self, client: &str) -> Vec<KeyInfo> {
        self.clients
            .get(client)
            .map(|k| k.by_id.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default()
    }

    fn remove(&mut self, client: &str, key: &KeyRef) -> Option<Arc<KeyEntry>> {
        let keys = self.clients.get_mut(client)?;
        let id = keys.id_of(key)?;
        let entry = keys.by_id.remove(&id)?;
        keys.by_label.remove(&entry.info.label);
        Some(entry)
    }

    fn remove_session(&mut self, client: &str, session: u64) -> usize {
        let Some(keys) = self.clients.get_mut(client) else {
            return 0;
        };
        let doomed: Vec<u32> = keys
            .by_id
            .values()
            .filter(|e| e.session == Some(session))
            .map(|e| e.info.id)
            .collect();
        for id in &doomed {
            if let Some(e) = keys.by_id.remove(id) {
                keys.by_label.remove(&e.info.label);
            }
        }
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrohsm_proto::KeyType;

    fn new_key(label: &str, session: Option<u64>) -> NewKey {
        NewKey {
            info: KeyInfo {
                id: 0,
                label: label.parse().unwrap(),
                key_type: KeyType::HmacSha256,
                usage: KeyType::HmacSha256.allowed_usage(),
                exportable: false,
                lifetime: Lifetime::Persistent,
                created: 0,
            },
            session,
            material: Arc::new(KeyMaterial::generate(KeyType::HmacSha256).unwrap()),
        }
    }

    #[test]
    fn namespaces_labels_ids_and_sessions() {
        let mut s = MemoryStore::default();
        let a1 = s.insert("alice", new_key("k", None)).unwrap();
        assert_eq!(a1.info.id, 1);
        let b1 = s.insert("bob", new_key("k", None)).unwrap();
        assert_eq!(b1.info.id, 1, "ids are per client");
        assert_eq!(
            s.insert("alice", new_key("k", None)).unwrap_err().status,
            Status::LabelInUse
        );
        let a2 = s.insert("alice", new_key("s", Some(9))).unwrap();
        assert_eq!(a2.info.lifetime, Lifetime::Session);
        assert!(s.find("carol", &KeyRef::Id(1)).is_none());
        assert_eq!(s.list("alice").len(), 2);
        assert_eq!(s.remove_session("alice", 9), 1);
        assert!(s.find("alice", &"s".parse().unwrap()).is_none());
        assert!(s.remove("alice", &KeyRef::Id(1)).is_some());
        assert!(
            s.find("bob", &KeyRef::Id(1)).is_some(),
            "bob's key untouched"
        );
        let a3 = s.insert("alice", new_key("k", None)).unwrap();
        assert_eq!(a3.info.id, 3, "ids are not reused");
    }
}
