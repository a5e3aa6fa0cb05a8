//! Connections in handshake, kept apart from authenticated sessions.
//!
//! Every accepted connection, on every listener, holds a handshake place until it
//! authenticates or closes. Places are bounded per source (`max_handshakes_per_source`: an IP
//! address, or a uid on the shm socket) and server-wide (`max_handshakes`). At a limit:
//!
//! - per source: the source's oldest handshake is evicted (closed) if it has waited at least
//!   [`Handshakes::min_age`] (no real handshake takes that long), else the newcomer is refused;
//! - server-wide: the oldest handshake of the source holding the most places is evicted on
//!   the same terms, so a source with few places (a real client) is never the one to go.
//!
//! So idle or slow unauthenticated peers cannot lock a real client out, and a peer reconnecting
//! as fast as it can only ever displaces itself, or other connections from its own address;
//! a new handshake is never cut short before `min_age`. Authenticated sessions hold a separate
//! place, the listener's `max_connections`, taken at authentication.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    all: BTreeMap<u64, (Source, Instant, Arc<Eviction>)>,
    by_source: HashMap<Source, usize>,
}

impl Table {
    /// The oldest handshake of `source`, if it is at least `min_age` old.
    fn evictable(&self, source: Source, min_age: Duration, now: Instant) -> Option<u64> {
        let (id, (_, since, _)) = self.all.iter().find(|(_, (s, _, _))| *s == source)?;
        (now.duration_since(*since) >= min_age).then_some(*id)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Eviction>> {
        let (source, _, ev) = self.all.remove(&id)?;
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
    min_age: Duration,
    table: Mutex<Table>,
}

impl Handshakes {
    /// At most `max` handshakes, `per_source` from one source; none evicted before `min_age`.
    pub fn new(max: usize, per_source: usize, min_age: Duration) -> Handshakes {
        Handshakes {
            max: max.max(1),
            per_source: per_source.clamp(1, max.max(1)),
            min_age,
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

    /// A place for a new connection from `source`, evicting an old handshake to make room
    /// (see the module documentation); `None` when the newcomer is refused.
    pub fn admit(self: &Arc<Self>, source: Source) -> Option<Handshake> {
        let now = Instant::now();
        let mut t = self.table.lock();
        let mut evicted = Vec::new();
        if t.by_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            let id = t.evictable(source, self.min_age, now);
            match id.and_then(|id| t.remove(id)) {
                Some(ev) => evicted.push(ev),
                None => return self.refused(t, source),
            }
        }
        if t.all.len() >= self.max {
            // The source with the most places gives one up (the newcomer counted with its own
            // source; on a tie another source goes first), if it has one old enough.
            let mine = t.by_source.get(&source).copied().unwrap_or(0) + 1;
            let mut order: Vec<(Source, usize)> = t
                .by_source
                .iter()
                .map(|(s, n)| (*s, *n + usize::from(*s == source)))
                .collect();
            if !t.by_source.contains_key(&source) {
                order.push((source, 1));
            }
            order.sort_by_key(|(s, n)| (std::cmp::Reverse(*n), *s == source));
            let id = order
                .iter()
                .take_while(|(_, n)| *n >= mine)
                .find_map(|(s, _)| t.evictable(*s, self.min_age, now));
            match id.and_then(|id| t.remove(id)) {
                Some(ev) => evicted.push(ev),
                None => return self.refused(t, source),
            }
        }
        let id = t.next;
        t.next += 1;
        let ev = Arc::new(Eviction::default());
        t.all.insert(id, (source, now, ev.clone()));
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
        Some(Handshake {
            gate: self.clone(),
            id,
            eviction: ev,
        })
    }

    fn refused(&self, t: parking_lot::MutexGuard<'_, Table>, source: Source) -> Option<Handshake> {
        drop(t);
        crate::logsafe::limited(
            "handshake-refused",
            &source.to_string(),
            format_args!("too many new connections in handshake from this source; refused one"),
        );
        None
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

    fn evicted(h: &Handshake) -> bool {
        h.eviction.evicted.load(Ordering::SeqCst)
    }

    #[test]
    fn old_handshakes_make_room_young_ones_are_kept_and_the_biggest_source_pays() {
        let age = Duration::from_millis(30);
        let g = Arc::new(Handshakes::new(4, 2, age));
        let a = Source::ip("10.0.0.1".parse().unwrap());
        let b = Source::ip("::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(b, Source::ip("10.0.0.2".parse().unwrap()));
        let c = Source::Uid(1000);
        let a1 = g.admit(a).unwrap();
        let a2 = g.admit(a).unwrap();
        // a is at its limit and both are young: a third from a is refused, nothing evicted.
        assert!(g.admit(a).is_none());
        assert!(!evicted(&a1) && !evicted(&a2));
        std::thread::sleep(age * 2);
        // Old now: a's oldest makes room for a's newcomer.
        let a3 = g.admit(a).unwrap();
        assert!(evicted(&a1) && !evicted(&a2));
        let b1 = g.admit(b).unwrap();
        let c1 = g.admit(c).unwrap();
        assert_eq!(g.len(), 4);
        // Server-wide limit: a holds the most places, so a (its oldest, a2) goes, not b or c.
        let b2 = g.admit(b).unwrap();
        assert!(evicted(&a2) && !evicted(&a3) && !evicted(&b1) && !evicted(&c1));
        // Full again, and the biggest sources' places are all young: refused.
        assert!(g.admit(Source::Uid(7)).is_none());
        drop((a1, a2, a3, b1, b2, c1));
        assert!(g.is_empty());
    }
}
