//! Session keys: in memory only, never written to disk, gone with their session, and visible
//! only to the session (connection) that made them: another connection of the same client
//! finds none of them. Labels stay one namespace per client across session keys (of every
//! connection) and persistent keys, so a label never means two keys; the per-client label
//! reservations keep it so while a creation is in progress.
//!
//! Session key ids start at [`SESSION_ID_BASE`], so they can never collide with a persistent
//! key's id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ferrohsm_proto::{KeyInfo, KeyRef, Label, Status};

use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::store::SESSION_ID_BASE;

#[derive(Debug, Default)]
struct ClientKeys {
    by_id: BTreeMap<u32, (u64, Arc<KeyHandle>)>,
    by_label: HashMap<Label, u32>,
    reserved: HashSet<Label>,
}

impl ClientKeys {
    fn id_of(&self, key: &KeyRef) -> Option<u32> {
        match key {
            KeyRef::Id(id) => Some(*id),
            KeyRef::Label(l) => self.by_label.get(l).copied(),
            KeyRef::OwnerId(..) | KeyRef::OwnerLabel(..) => None,
        }
    }
}

/// Session keys of every client, and which sessions are live.
#[derive(Debug, Default)]
pub struct SessionKeys {
    live: HashSet<u64>,
    clients: HashMap<Arc<str>, ClientKeys>,
    // Per client, the session key ids handed out so far in this process: kept when the
    // client's keys are all gone, so an id never names two keys (a handle that silently
    // changed meaning would be the classic HSM confusion). One entry per configured client.
    issued: HashMap<Arc<str>, u32>,
}

fn label_in_use(label: &Label) -> OpError {
    OpError::new(
        Status::LabelInUse,
        format!("a key labelled {label} already exists"),
    )
}

impl SessionKeys {
    /// A session opened.
    pub fn open(&mut self, session: u64) {
        self.live.insert(session);
    }

    /// A session ended: its keys are dropped (and zeroize once no job holds them); returns
    /// how many.
    pub fn end(&mut self, client: &str, session: u64) -> usize {
        self.live.remove(&session);
        let Some(c) = self.clients.get_mut(client) else {
            return 0;
        };
        let doomed: Vec<u32> = c
            .by_id
            .iter()
            .filter(|(_, (s, _))| *s == session)
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            if let Some((_, h)) = c.by_id.remove(id) {
                c.by_label.remove(&h.info.label);
            }
        }
        doomed.len()
    }

    /// How many session keys each client holds (they count against its key quota).
    pub fn counts(&self) -> Vec<(Arc<str>, usize)> {
        self.clients
            .iter()
            .map(|(c, k)| (c.clone(), k.by_id.len()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// A session key of `client` made by `session`.
    pub fn find(&self, client: &str, session: u64, key: &KeyRef) -> Option<Arc<KeyHandle>> {
        let c = self.clients.get(client)?;
        let id = c.id_of(key)?;
        c.by_id
            .get(&id)
            .filter(|(s, _)| *s == session)
            .map(|(_, h)| h.clone())
    }

    /// Reserves `label` for a creation in progress; refuses one held by a session key or by
    /// another creation in progress.
    pub fn reserve(&mut self, client: &Arc<str>, label: &Label) -> Result<(), OpError> {
        let c = self.clients.entry(client.clone()).or_default();
        if c.by_label.contains_key(label) || !c.reserved.insert(label.clone()) {
            return Err(label_in_use(label));
        }
        Ok(())
    }

    /// Ends a reservation.
    pub fn release(&mut self, client: &str, label: &Label) {
        if let Some(c) = self.clients.get_mut(client) {
            c.reserved.remove(label);
            if c.by_id.is_empty() && c.reserved.is_empty() {
                self.clients.remove(client);
            }
        }
    }

    /// Stores a session key under a reserved label, assigning its id.
    pub fn insert(&mut self, session: u64, mut h: KeyHandle) -> Result<Arc<KeyHandle>, OpError> {
        if !self.live.contains(&session) {
            return Err(OpError::new(Status::ShuttingDown, "the session ended"));
        }
        let issued = self.issued.entry(h.owner.clone()).or_default();
        let next = issued
            .checked_add(1)
            .filter(|n| *n <= u32::MAX - SESSION_ID_BASE);
        let Some(next) = next else {
            return Err(OpError::new(
                Status::Busy,
                "session key ids exhausted for this client until hsmd restarts (2^31 per \
                 client; an id is never reused)",
            ));
        };
        *issued = next;
        // Ids are never reused, so a client that makes session keys without end runs out
        // (2^31, then `busy` until a restart): say so long before.
        const LEFT_WARNINGS: [u32; 3] = [1 << 30, 1 << 26, 1 << 20];
        let left = u32::MAX - SESSION_ID_BASE - next;
        if LEFT_WARNINGS.contains(&left) {
            tracing::warn!(
                client = %h.owner,
                left,
                "this client's session key ids are running out (ids are never reused; a \
                 restart of hsmd makes them available again)"
            );
        }
        let id = SESSION_ID_BASE + next - 1;
        let c = self.clients.entry(h.owner.clone()).or_default();
        h.info.id = id;
        let h = Arc::new(h);
        crate::harden::protect(&*h);
        c.by_label.insert(h.info.label.clone(), id);
        c.by_id.insert(id, (session, h.clone()));
        Ok(h)
    }

    /// Removes a session key of `client` made by `session`.
    pub fn remove(&mut self, client: &str, session: u64, key: &KeyRef) -> Option<Arc<KeyHandle>> {
        let c = self.clients.get_mut(client)?;
        let id = c.id_of(key)?;
        if c.by_id.get(&id).is_none_or(|(s, _)| *s != session) {
            return None;
        }
        let (_, h) = c.by_id.remove(&id)?;
        c.by_label.remove(&h.info.label);
        Some(h)
    }

    /// Up to `limit` session keys of `client` made by `session`, ids above `after`, by id.
    pub fn list(
        &self,
        client: &str,
        session: u64,
        after: u32,
        limit: usize,
        keep: impl Fn(&KeyInfo) -> bool,
    ) -> Vec<KeyInfo> {
        let Some(c) = self.clients.get(client) else {
            return Vec::new();
        };
        c.by_id
            .range(after.saturating_add(1)..)
            .filter(|(_, (s, h))| *s == session && keep(&h.info))
            .take(limit)
            .map(|(_, (_, h))| h.info.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::material::KeyMaterial;
    use ferrohsm_proto::KeyType;

    fn key(owner: &str, label: &str) -> KeyHandle {
        let t = KeyType::HmacSha256;
        KeyHandle {
            owner: owner.into(),
            info: crate::keys::manager::test_info(0, label, t, t.allowed_usage(), false),
            material: KeyMaterial::generate(t).unwrap(),
            older: Vec::new(),
        }
    }

    #[test]
    fn a_session_key_id_is_never_reused_after_a_delete_or_a_closed_session() {
        let mut s = SessionKeys::default();
        let alice: Arc<str> = Arc::from("alice");
        s.open(1);
        let a = s.insert(1, key("alice", "a")).unwrap().info.id;
        assert_eq!(a, SESSION_ID_BASE);
        // Deleted: the client holds no session key any more, and the next one is new.
        assert!(s.remove("alice", 1, &KeyRef::Id(a)).is_some());
        let b = s.insert(1, key("alice", "b")).unwrap().info.id;
        assert_ne!(a, b);
        // The session closes and another opens: still new ids.
        assert_eq!(s.end(&alice, 1), 1);
        s.open(2);
        let c = s.insert(2, key("alice", "c")).unwrap().info.id;
        assert!(c > b, "{c} after {b}");
        assert!(s.find("alice", 2, &KeyRef::Id(a)).is_none());
        // Another client counts on its own.
        let d = s.insert(2, key("bob", "d")).unwrap().info.id;
        assert_eq!(d, SESSION_ID_BASE);
    }
}
