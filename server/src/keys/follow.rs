//! A node of a store that several nodes share follows the others' changes, so what it holds
//! in memory (opened keys, grants, quota counts) never outlives a change made elsewhere:
//!
//! ```text
//!  another node: commit ──> change log row + NOTIFY ──> this node's follower thread:
//!                                                        read the log from its position,
//!                                                        drop cached keys, re-read grants,
//!                                                        count quotas; confirm the time
//! ```
//! The follower looks at the log on every notification and at least four times per
//! `[store] revalidate_ms`. Each look that the database answers confirms everything in memory
//! as of when the look began. When no look has succeeded for `revalidate_ms` (the database or
//! the follower's connection is away), a cached key is not used without a read of the
//! database, and a grant is read back too: the node fails closed, answering `store_failed`
//! while it cannot confirm. A new follower connection (the old one broke, so notifications may
//! have been lost) drops every cached key; a log that cannot say what changed (pruned past
//! the follower's position, or a database replaced) reloads everything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::keys::cache::Cache;
use crate::keys::grants::Grants;
use crate::keys::quota::{Quotas, Resource};
use crate::keys::seal::MasterKey;
use crate::keys::session_keys::SessionKeys;
use crate::keys::store::{Changed, Followed, Store, StoreError};

/// How recently the database confirmed what this node holds in memory.
#[derive(Debug)]
pub struct Following {
    base: Instant,
    // Microseconds after `base` when the last successful look began, plus one (0: never).
    confirmed: AtomicU64,
    // The change-log position applied so far.
    applied: AtomicU64,
    revalidate: Duration,
}

impl Following {
    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether every change up to log position `seq` is applied.
    pub fn applied(&self, seq: u64) -> bool {
        self.applied.load(Ordering::Acquire) >= seq
    }

    /// Waits up to `within` for the follower's first look (which drops whatever was cached
    /// before it); whether it came.
    pub fn wait_first_look(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while self.confirmed.load(Ordering::Acquire) == 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Whether memory was confirmed within `revalidate_ms`: cached keys and grants may be
    /// used without asking the database.
    pub fn fresh(&self) -> bool {
        match self.confirmed.load(Ordering::Acquire) {
            0 => false,
            at => self.now_us().saturating_sub(at - 1) <= self.revalidate.as_micros() as u64,
        }
    }
}

/// What the follower keeps up to date.
#[derive(Debug)]
pub struct Followers {
    /// Opened persistent keys.
    pub cache: Arc<Mutex<Cache>>,
    /// Grants.
    pub grants: Arc<RwLock<Grants>>,
    /// Quota counts.
    pub quotas: Arc<Quotas>,
    /// Session keys (they count against quotas).
    pub sessions: Arc<Mutex<SessionKeys>>,
}

/// Starts following on `store`'s handle; the thread ends once the returned [`Following`] is
/// dropped.
pub fn start(
    store: Store,
    master: Arc<MasterKey>,
    revalidate: Duration,
    on: Followers,
) -> std::io::Result<Arc<Following>> {
    let following = Arc::new(Following {
        base: Instant::now(),
        confirmed: AtomicU64::new(0),
        applied: AtomicU64::new(0),
        revalidate,
    });
    let weak = Arc::downgrade(&following);
    std::thread::Builder::new()
        .name("hsm-store-f".into())
        .spawn(move || run(store, &master, &on, &weak))?;
    Ok(following)
}

fn run(mut store: Store, master: &MasterKey, on: &Followers, following: &Weak<Following>) {
    let mut pos = None;
    let mut connections = 0;
    let mut failing = false;
    loop {
        let Some(f) = following.upgrade() else { return };
        let wait = (f.revalidate / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let began = f.now_us();
        if pos.is_none() {
            // A reload: nothing counts as applied until it is done.
            f.applied.store(0, Ordering::Release);
        }
        match look(&mut store, master, on, &mut pos, &f.applied) {
            Ok(()) => {
                if let Some(p) = pos {
                    f.applied
                        .store(u64::try_from(p).unwrap_or(0), Ordering::Release);
                }
                f.confirmed.store(began + 1, Ordering::Release);
                if std::mem::take(&mut failing) {
                    tracing::info!("following the other nodes' changes again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, revalidate_ms = f.revalidate.as_millis() as u64, "cannot read the change log; cached keys are not used once unconfirmed for revalidate_ms");
                }
            }
        }
        drop(f);
        // Until another process's commit is announced (this process's own are skipped), or
        // the time for the next look comes.
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match store.wait_change(left) {
                Ok(false) if !left.is_zero() => continue,
                Ok(_) => break,
                Err(_) => {
                    // The database is away: try again after a pause, not in a busy loop.
                    std::thread::sleep(left);
                    break;
                }
            }
        }
        let now = store.connections();
        if now != connections {
            // A new connection may have missed notifications, or reach another database (a
            // standby promoted after losing commits can hand out the same log positions
            // again): start over from the database.
            if connections != 0 {
                pos = None;
                // Positions may be handed out again from a lower head: nothing counts as
                // applied until the reload.
                if let Some(f) = following.upgrade() {
                    f.applied.store(0, Ordering::Release);
                }
                tracing::info!(
                    "the change log connection was replaced; reloading from the database"
                );
            }
            connections = now;
        }
    }
}

/// Reads the log from `pos` to its end and applies it (or reloads when it cannot say).
fn look(
    store: &mut Store,
    master: &MasterKey,
    on: &Followers,
    pos: &mut Option<i64>,
    applied: &AtomicU64,
) -> Result<(), StoreError> {
    loop {
        let Some(after) = *pos else {
            let snap = store.snapshot(master)?;
            reload(on, snap.grants, snap.held);
            *pos = Some(snap.head);
            return Ok(());
        };
        match store.follow(master, after)? {
            Followed::Behind { head } => {
                applied.store(0, Ordering::Release);
                tracing::warn!(
                    position = after,
                    head,
                    "the change log cannot say what changed since this node last looked; reloading"
                );
                *pos = None;
            }
            Followed::Changes {
                upto,
                head,
                changes,
            } => {
                for (c, own) in changes {
                    apply(on, c, own);
                }
                *pos = Some(upto);
                if upto >= head {
                    return Ok(());
                }
            }
        }
    }
}

fn reload(
    on: &Followers,
    grants: Vec<crate::keys::store::GrantRecord>,
    held: Vec<(String, usize, usize)>,
) {
    on.cache.lock().clear();
    let mut counts: Vec<(Arc<str>, Resource, usize)> = Vec::new();
    for (owner, keys, counters) in held {
        let owner: Arc<str> = Arc::from(owner);
        counts.push((owner.clone(), Resource::Key, keys));
        counts.push((owner, Resource::Counter, counters));
    }
    counts.extend(grants.iter().map(|g| (g.owner.clone(), Resource::Grant, 1)));
    counts.extend(
        on.sessions
            .lock()
            .counts()
            .into_iter()
            .map(|(c, n)| (c, Resource::Key, n)),
    );
    // Grants first, then counts: both from one snapshot of the database.
    *on.grants.write() = Grants::from_records(grants);
    on.quotas.rebase(counts);
}

/// Applies one change. This process's own changes were counted when they committed, so
/// only their idempotent effects are applied again (a cache entry or grant dropped twice is
/// dropped once): a commit whose answer was lost (the connection broke after `COMMIT`) still
/// invalidates.
fn apply(on: &Followers, c: Changed, own: bool) {
    match c {
        Changed::KeyCreated { owner } => {
            if !own {
                on.quotas.add(&owner, Resource::Key, 1);
            }
        }
        Changed::KeyChanged { owner, id } => on.cache.lock().remove(&owner, id),
        Changed::KeyDeleted { owner, id } => {
            on.cache.lock().remove(&owner, id);
            let grants = on.grants.write().remove_key(&owner, id);
            if !own {
                on.quotas.release(&owner, Resource::Key, 1);
            }
            on.quotas.release(&owner, Resource::Grant, grants);
        }
        // On a shared store only the follower changes grants (the manager waits for it after
        // its own grant or revoke), in log order, from what the database holds.
        Changed::Grant {
            owner,
            id,
            grantee,
            now,
        } => match now {
            Some(g) => {
                if on.grants.write().set(&g) {
                    on.quotas.add(&owner, Resource::Grant, 1);
                }
            }
            None => {
                if on.grants.write().remove(&owner, id, &grantee) {
                    on.quotas.release(&owner, Resource::Grant, 1);
                }
            }
        },
        Changed::CounterCreated { owner } => {
            if !own {
                on.quotas.add(&owner, Resource::Counter, 1);
            }
        }
    }
}
