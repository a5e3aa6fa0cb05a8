//! Connections in handshake, kept apart from authenticated sessions.
//!
//! Every accepted connection, on every listener, holds a handshake place until it
//! authenticates or closes. Places are bounded server-wide (`max_handshakes`) and per source
//! (`max_handshakes_per_source`: an IP address, or a uid on the shm socket), and they are never
//! refused: when the limit is reached the *oldest* handshake (of that source, or overall) is
//! evicted and closed. So idle or slow unauthenticated peers cannot lock a real client out: its
//! handshake takes milliseconds, theirs are the old ones. Authenticated sessions hold a
//! separate place, the listener's `max_connections`, taken at authentication.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Where a connection comes from, for the per-source limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A TCP peer's address (an IPv4-mapped IPv6 address counts as the IPv4 one).
    Ip(IpAddr),
    /// A Unix-socket peer's uid.
    Uid(u32),
}

impl Source {
    /// The source of a TCP peer.
    pub fn ip(ip: IpAddr) -> Source {
        Source::Ip(ip.to_canonical())
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

/// Tells one handshake it was evicted.
#[derive(Debug, Default)]
pub struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once this handshake is evicted.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.evicted.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    // Oldest first.
    all: BTreeMap<u64, (Source, Arc<Eviction>)>,
    by_source: HashMap<Source, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Eviction>> {
        let (source, ev) = self.all.remove(&id)?;
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        Some(ev)
    }
}

/// Every connection in handshake; shared by all listeners.
#[derive(Debug)]
pub struct Handshakes {
    max: usize,
    per_source: usize,
    table: Mutex<Table>,
}

impl Handshakes {
    /// At most `max` handshakes, `per_source` from one source.
    pub fn new(max: usize, per_source: usize) -> Handshakes {
        Handshakes {
            max: max.max(1),
            per_source: per_source.clamp(1, max.max(1)),
            table: Mutex::new(Table::default()),
        }
    }

    /// How many connections are in handshake now.
    pub fn len(&self) -> usize {
        self.table.lock().all.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place for a new connection from `source`, evicting the oldest handshake of the same
    /// source (or, at the server-wide limit, the oldest of all) to make room.
    pub fn admit(self: &Arc<Self>, source: Source) -> Handshake {
        let mut t = self.table.lock();
        let mut evicted = Vec::new();
        if t.by_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            let oldest = t
                .all
                .iter()
                .find(|(_, (s, _))| *s == source)
                .map(|(id, _)| *id);
            evicted.extend(oldest.and_then(|id| t.remove(id)));
        }
        while t.all.len() >= self.max {
            let Some(id) = t.all.keys().next().copied() else {
                break;
            };
            evicted.extend(t.remove(id));
        }
        let id = t.next;
        t.next += 1;
        let ev = Arc::new(Eviction::default());
        t.all.insert(id, (source, ev.clone()));
        *t.by_source.entry(source).or_insert(0) += 1;
        drop(t);
        if !evicted.is_empty() {
            crate::logsafe::limited(
                "handshake-evicted",
                &source.to_string(),
                format_args!("too many connections in handshake; closed the oldest"),
            );
        }
        for e in evicted {
            e.evict();
        }
        Handshake {
            gate: self.clone(),
            id,
            eviction: ev,
        }
    }
}

/// One connection's handshake place; freed on drop (authenticated or closed).
#[derive(Debug)]
pub struct Handshake {
    gate: Arc<Handshakes>,
    id: u64,
    eviction: Arc<Eviction>,
}

impl Handshake {
    /// What tells this handshake it was evicted.
    pub fn eviction(&self) -> Arc<Eviction> {
        self.eviction.clone()
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.gate.table.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_of_a_source_and_then_of_all_is_evicted() {
        let g = Arc::new(Handshakes::new(3, 2));
        let a = Source::ip("10.0.0.1".parse().unwrap());
        let b = Source::ip("::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(b, Source::ip("10.0.0.2".parse().unwrap()));
        let a1 = g.admit(a);
        let a2 = g.admit(a);
        let a3 = g.admit(a);
        assert!(
            a1.eviction.evicted.load(Ordering::SeqCst),
            "a's oldest made room"
        );
        assert!(!a2.eviction.evicted.load(Ordering::SeqCst));
        assert_eq!(g.len(), 2);
        let b1 = g.admit(b);
        assert_eq!(g.len(), 3);
        let b2 = g.admit(b);
        // Server-wide limit: the oldest of all (a2) goes.
        assert!(a2.eviction.evicted.load(Ordering::SeqCst));
        assert!(!a3.eviction.evicted.load(Ordering::SeqCst));
        assert!(!b1.eviction.evicted.load(Ordering::SeqCst));
        drop((a1, a2, b2));
        assert_eq!(g.len(), 2);
        drop((a3, b1));
        assert!(g.is_empty());
    }
}
