//! Grants in memory: who may use which of another client's keys, for which operations. Loaded
//! from the store at start (each row's tag checked), changed only after the store made the
//! change durable, and read on every use of a granted key under a short read lock.

use std::collections::HashMap;
use std::sync::Arc;

use ferrohsm_proto::UsageSet;

use crate::keys::store::GrantRecord;

/// One grantee's grants: (owner, key id) -> operations.
type Granted = HashMap<(Arc<str>, u32), UsageSet>;

/// Every grant, by grantee.
#[derive(Debug, Default)]
pub struct Grants {
    by_grantee: HashMap<Arc<str>, Granted>,
}

impl Grants {
    /// From the store's rows.
    pub fn from_records(records: Vec<GrantRecord>) -> Grants {
        let mut g = Grants::default();
        for r in &records {
            g.set(r);
        }
        g
    }

    /// The operations `grantee` may do with `owner`'s key `id`.
    pub fn get(&self, grantee: &str, owner: &str, id: u32) -> Option<UsageSet> {
        self.by_grantee
            .get(grantee)?
            .get(&(Arc::from(owner), id))
            .copied()
    }

    /// Every grant to `grantee`: (owner, id, operations), by owner and id.
    pub fn to(&self, grantee: &str) -> Vec<(Arc<str>, u32, UsageSet)> {
        let mut out: Vec<_> = self
            .by_grantee
            .get(grantee)
            .map(|m| {
                m.iter()
                    .map(|((o, id), ops)| (o.clone(), *id, *ops))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// Adds or replaces a grant; whether it is new.
    pub fn set(&mut self, r: &GrantRecord) -> bool {
        self.by_grantee
            .entry(r.grantee.clone())
            .or_default()
            .insert((r.owner.clone(), r.id), r.ops)
            .is_none()
    }

    /// Removes one grant; whether there was one.
    pub fn remove(&mut self, owner: &str, id: u32, grantee: &str) -> bool {
        let Some(m) = self.by_grantee.get_mut(grantee) else {
            return false;
        };
        let had = m.remove(&(Arc::from(owner), id)).is_some();
        if m.is_empty() {
            self.by_grantee.remove(grantee);
        }
        had
    }

    /// Removes every grant of a deleted key; how many there were.
    pub fn remove_key(&mut self, owner: &str, id: u32) -> usize {
        let k = (Arc::from(owner), id);
        let mut n = 0;
        self.by_grantee.retain(|_, m| {
            n += usize::from(m.remove(&k).is_some());
            !m.is_empty()
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrohsm_proto::Usage;

    #[test]
    fn grants_by_grantee_owner_and_id() {
        let rec = |owner: &str, id, grantee: &str| GrantRecord {
            owner: owner.into(),
            id,
            grantee: grantee.into(),
            ops: UsageSet::of(&[Usage::Sign]),
            created: 0,
        };
        let mut g = Grants::from_records(vec![rec("alice", 1, "bob"), rec("alice", 2, "bob")]);
        assert!(g.get("bob", "alice", 1).is_some());
        assert!(g.get("carol", "alice", 1).is_none());
        assert!(g.get("bob", "alice", 3).is_none());
        g.remove("alice", 1, "bob");
        assert!(g.get("bob", "alice", 1).is_none());
        g.remove_key("alice", 2);
        assert!(g.get("bob", "alice", 2).is_none());
    }
}
