//! Per-client quotas: how many keys (persistent and session), counters and grants each client
//! may hold. A creation reserves its place before it reaches the store and gives it back if it
//! fails, so concurrent creations of one client can never overshoot the limit, and one client
//! at its limit never slows or refuses another.
//!
//! Counts start from what the store holds at start-up and then follow every change the store
//! made durable (a deleted key also gives back its grants).

use std::collections::HashMap;
use std::sync::Arc;

use ferrohsm_proto::Status;
use parking_lot::Mutex;

use crate::error::OpError;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Keys, persistent and session.
    Key,
    /// Monotonic counters.
    Counter,
    /// Grants the client made of its keys to others.
    Grant,
}

impl Resource {
    fn index(self) -> usize {
        self as usize
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Key => "keys",
            Resource::Counter => "counters",
            Resource::Grant => "grants",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Resource::Key => "max_keys_per_client",
            Resource::Counter => "max_counters_per_client",
            Resource::Grant => "max_grants_per_client",
        }
    }
}

/// The limits, per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Keys (persistent and session).
    pub keys: usize,
    /// Counters.
    pub counters: usize,
    /// Grants made.
    pub grants: usize,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        QuotaLimits {
            keys: 10_000,
            counters: 10_000,
            grants: 10_000,
        }
    }
}

impl QuotaLimits {
    fn of(&self, kind: Resource) -> usize {
        match kind {
            Resource::Key => self.keys,
            Resource::Counter => self.counters,
            Resource::Grant => self.grants,
        }
    }
}

/// Every client's counts against the limits.
#[derive(Debug)]
pub struct Quotas {
    limits: QuotaLimits,
    used: Mutex<HashMap<Arc<str>, [usize; 3]>>,
}

impl Quotas {
    /// Quotas with `limits`, starting from `held` (client, kind, count) as the store holds.
    pub fn new(
        limits: QuotaLimits,
        held: impl IntoIterator<Item = (Arc<str>, Resource, usize)>,
    ) -> Quotas {
        let mut used: HashMap<Arc<str>, [usize; 3]> = HashMap::new();
        for (client, kind, n) in held {
            used.entry(client).or_default()[kind.index()] += n;
        }
        Quotas {
            limits,
            used: Mutex::new(used),
        }
    }

    /// How many of `kind` `client` holds (reservations included).
    pub fn used(&self, client: &str, kind: Resource) -> usize {
        self.used.lock().get(client).map_or(0, |u| u[kind.index()])
    }

    /// Takes one place of `kind` for `client`, or `quota_exceeded` naming the limit. The place
    /// is given back when the reservation drops, unless it is [`Reservation::keep`]t.
    pub fn reserve(
        self: &Arc<Self>,
        client: &Arc<str>,
        kind: Resource,
    ) -> Result<Reservation, OpError> {
        let limit = self.limits.of(kind);
        let mut used = self.used.lock();
        let n = &mut used.entry(client.clone()).or_default()[kind.index()];
        if *n >= limit {
            return Err(OpError::new(
                Status::QuotaExceeded,
                format!(
                    "too many {} for client {client}: it holds {n}, the most allowed \
                     ({} in [limits])",
                    kind.plural(),
                    kind.setting()
                ),
            ));
        }
        *n += 1;
        Ok(Reservation {
            quotas: self.clone(),
            client: client.clone(),
            kind,
            kept: false,
        })
    }

    /// Starts the counts over from `held` (after changes by other nodes may have been
    /// missed). Creations in flight keep their places only in the database's own count.
    pub fn rebase(&self, held: impl IntoIterator<Item = (Arc<str>, Resource, usize)>) {
        let mut used: HashMap<Arc<str>, [usize; 3]> = HashMap::new();
        for (client, kind, n) in held {
            used.entry(client).or_default()[kind.index()] += n;
        }
        *self.used.lock() = used;
    }

    /// Counts `n` places without the limit check (a change already made durable).
    pub fn add(&self, client: &Arc<str>, kind: Resource, n: usize) {
        self.used.lock().entry(client.clone()).or_default()[kind.index()] += n;
    }

    /// Gives back `n` places (a deleted key, an ended session's keys, revoked grants).
    pub fn release(&self, client: &str, kind: Resource, n: usize) {
        if n == 0 {
            return;
        }
        let mut used = self.used.lock();
        if let Some(u) = used.get_mut(client) {
            u[kind.index()] = u[kind.index()].saturating_sub(n);
            if u.iter().all(|c| *c == 0) {
                used.remove(client);
            }
        }
    }
}

/// One place taken; given back on drop unless kept.
#[derive(Debug)]
pub struct Reservation {
    quotas: Arc<Quotas>,
    client: Arc<str>,
    kind: Resource,
    kept: bool,
}

impl Reservation {
    /// The creation succeeded: the place stays taken.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.quotas.release(&self.client, self.kind, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_keep_release_and_the_limit_per_client() {
        let limits = QuotaLimits {
            keys: 2,
            counters: 1,
            grants: 1,
        };
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let q = Arc::new(Quotas::new(limits, [(alice.clone(), Resource::Key, 1)]));
        q.reserve(&alice, Resource::Key).unwrap().keep();
        let e = q.reserve(&alice, Resource::Key).unwrap_err();
        assert_eq!(e.status, Status::QuotaExceeded);
        assert!(
            e.message.contains("too many keys for client alice"),
            "{}",
            e.message
        );
        assert!(e.message.contains("max_keys_per_client"), "{}", e.message);
        // Another client and another kind are unaffected.
        q.reserve(&bob, Resource::Key).unwrap().keep();
        q.reserve(&alice, Resource::Counter).unwrap().keep();
        // A reservation dropped without keep gives its place back.
        q.release(&alice, Resource::Key, 1);
        drop(q.reserve(&alice, Resource::Key).unwrap());
        assert_eq!(q.used("alice", Resource::Key), 1);
        q.reserve(&alice, Resource::Key).unwrap().keep();
        assert_eq!(q.used("alice", Resource::Key), 2);
        q.release(&alice, Resource::Key, 5);
        assert_eq!(q.used("alice", Resource::Key), 0);
    }
}
