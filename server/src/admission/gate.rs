//! Connections in handshake, kept apart from authenticated sessions.
//!
//! Every accepted connection, on every listener, holds a handshake place until it
//! authenticates or closes. Places are bounded per source (`max_handshakes_per_source`: an IP
//! address, or a uid on the shm socket) and server-wide (`max_handshakes`). At a limit:
//!
//! - per source: the source's oldest handshake is evicted (closed) if it has waited at least
//!   the minimum age (no real handshake takes that long), else the newcomer is refused;
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
        self.admit_at(source, Instant::now())
    }

    /// [`Handshakes::admit`] at `now` (the ages that decide an eviction are measured from
    /// it; tests pass times far apart rather than sleeping).
    fn admit_at(self: &Arc<Self>, source: Source, now: Instant) -> Option<Handshake> {
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

    /// Times far apart, against a minimum age of 10 s: "young" is a second or two old, "old"
    /// is ten minutes old, whatever the machine's speed.
    const MIN_AGE: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn old_handshakes_make_room_young_ones_are_kept_and_the_biggest_source_pays() {
        let g = Arc::new(Handshakes::new(4, 2, MIN_AGE));
        let t0 = Instant::now();
        let later = t0 + secs(600);
        let a = Source::ip("10.0.0.1".parse().unwrap());
        let b = Source::ip("::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(b, Source::ip("10.0.0.2".parse().unwrap()));
        let c = Source::Uid(1000);
        let a1 = g.admit_at(a, t0).unwrap();
        let a2 = g.admit_at(a, t0).unwrap();
        // a is at its limit and both are a second old: a third from a is refused, nothing
        // evicted, and the refusal took no place.
        assert!(g.admit_at(a, t0 + secs(1)).is_none());
        assert!(!evicted(&a1) && !evicted(&a2));
        assert_eq!(g.len(), 2);
        // Ten minutes on: a's oldest (only it) makes room for a's newcomer.
        let a3 = g.admit_at(a, later).unwrap();
        assert!(evicted(&a1) && !evicted(&a2));
        assert_eq!(g.len(), 2);
        let b1 = g.admit_at(b, later).unwrap();
        let c1 = g.admit_at(c, later).unwrap();
        assert_eq!(g.len(), 4);
        // Server-wide limit: a holds the most places (b's newcomer ties it, and a tie goes to
        // another source), so a's oldest, a2, goes, not b's or c's.
        let b2 = g.admit_at(b, later + secs(1)).unwrap();
        assert!(evicted(&a2) && !evicted(&a3) && !evicted(&b1) && !evicted(&c1));
        assert_eq!(g.len(), 4);
        // Full again, and every place is at most two seconds old: a newcomer is refused.
        assert!(g.admit_at(Source::Uid(7), later + secs(2)).is_none());
        assert!(!evicted(&a3) && !evicted(&b1) && !evicted(&b2) && !evicted(&c1));
        drop((a1, a2, a3, b1, b2, c1));
        assert!(g.is_empty());
    }

    #[test]
    fn a_handshake_becomes_evictable_exactly_at_the_minimum_age() {
        let g = Arc::new(Handshakes::new(8, 1, MIN_AGE));
        let a = Source::Uid(1);
        let t0 = Instant::now();
        let first = g.admit_at(a, t0).unwrap();
        let just_under = t0 + MIN_AGE - Duration::from_millis(1);
        assert!(g.admit_at(a, just_under).is_none());
        assert!(!evicted(&first));
        let second = g.admit_at(a, t0 + MIN_AGE).unwrap();
        assert!(evicted(&first) && !evicted(&second));
        assert_eq!(g.len(), 1);
    }

    #[tokio::test]
    async fn an_evicted_handshake_is_told() {
        let g = Arc::new(Handshakes::new(8, 1, MIN_AGE));
        let t0 = Instant::now();
        let first = g.admit_at(Source::Uid(1), t0).unwrap();
        let told = first.eviction();
        let waiting = tokio::spawn(async move { told.wait().await });
        let _second = g.admit_at(Source::Uid(1), t0 + secs(600)).unwrap();
        tokio::time::timeout(secs(30), waiting)
            .await
            .expect("the evicted handshake's wait ends")
            .unwrap();
    }
}
