//! The server-wide byte budget for buffered requests and responses (`[limits] memory_mib`).
//!
//! A request is charged before its body is read: its frame plus a bound on its response
//! ([`cost`]), held until the response is on the wire. The total charged never exceeds the
//! budget, and each client may hold at most its share (the budget over the configured clients,
//! but never less than one largest request), so a client whose peers stop reading their
//! responses stalls only itself: its sessions' readers wait, everyone else is served.
//!
//! Unauthenticated connections are not charged here: their frames are capped at
//! `preauth_max_body` and their number at `max_handshakes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrohsm_proto::frame::HEADER_LEN;
use ferrohsm_proto::kind::Reply;
use ferrohsm_proto::{Header, Opcode};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The bytes a request may make the server hold: its frame and a bound on its response (the
/// kind's [`Reply`]; an unknown opcode is bounded like a small answer, since its answer is an
/// error).
pub fn cost(h: &Header, max_body: u32) -> usize {
    let body = h.body_len as usize;
    let reply = Opcode::from_u16(h.opcode).map_or(Reply::Small, |op| op.kind().reply);
    HEADER_LEN + body + reply.bound(body, HEADER_LEN + max_body as usize)
}

/// One client's bytes charged; each session holds its client's account, so charging takes no
/// lock and no lookup.
#[derive(Debug, Default)]
pub struct Account {
    used: AtomicUsize,
}

/// The budget; shared by every session.
#[derive(Debug)]
pub struct Budget {
    total: usize,
    per_client: usize,
    used: AtomicUsize,
    accounts: Mutex<HashMap<Arc<str>, Arc<Account>>>,
    // Readers waiting for bytes to be freed (a release wakes them only when there are some).
    waiting: AtomicUsize,
    freed: Notify,
}

/// Adds `n` to `v` unless that passes `max`.
fn add_within(v: &AtomicUsize, n: usize, max: usize) -> bool {
    v.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(n).filter(|t| *t <= max)
    })
    .is_ok()
}

impl Budget {
    /// `total` bytes for all sessions; each of `clients` configured clients may hold its
    /// share, and at least one largest request (`max_body` each way).
    pub fn new(total: usize, clients: usize, max_body: u32) -> Budget {
        let largest = 2 * (HEADER_LEN + max_body as usize) + 1024;
        let share = (total / clients.max(1)).max(largest).min(total);
        Budget {
            total,
            per_client: share,
            used: AtomicUsize::new(0),
            accounts: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes charged now, in all.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// `client`'s account (one per client, kept for the server's life: clients are configured).
    pub fn account(&self, client: &Arc<str>) -> Arc<Account> {
        self.accounts
            .lock()
            .entry(client.clone())
            .or_default()
            .clone()
    }

    /// Charges `n` bytes to `account` if that fits now, without waiting.
    pub fn try_charge(self: &Arc<Self>, account: &Arc<Account>, n: usize) -> Option<Charge> {
        // A request larger than a share is charged as a whole share (it waits for the
        // client's other requests to finish, never forever).
        let n = n.min(self.per_client);
        if !add_within(&account.used, n, self.per_client) {
            return None;
        }
        if !add_within(&self.used, n, self.total) {
            account.used.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(Charge {
            budget: self.clone(),
            account: account.clone(),
            n,
        })
    }

    /// Charges `n` bytes to `account`, waiting while that would exceed the budget or the
    /// client's share.
    pub async fn charge(self: &Arc<Self>, account: &Arc<Account>, n: usize) -> Charge {
        if let Some(c) = self.try_charge(account, n) {
            return c;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let charge = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(c) = self.try_charge(account, n) {
                break c;
            }
            freed.await;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        charge
    }

    fn release(&self, account: &Account, n: usize) {
        account.used.fetch_sub(n, Ordering::AcqRel);
        self.used.fetch_sub(n, Ordering::AcqRel);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// Bytes charged to a client, given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    account: Arc<Account>,
    n: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(&self.account, self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_wait_for_the_share_and_the_total_and_others_go_on() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // 4 MiB in all, two clients: 2 MiB each (at least one 1 KiB-body request each way).
        let b = Arc::new(Budget::new(4 << 20, 2, 1024));
        let (alice, bob) = (b.account(&Arc::from("alice")), b.account(&Arc::from("bob")));
        rt.block_on(async {
            let a1 = b.charge(&alice, 2 << 20).await;
            // alice is at her share: her next charge waits; bob's does not.
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), b.charge(&alice, 1))
                    .await;
            assert!(waiting.is_err(), "over her share, alice waits");
            let b1 = b.charge(&bob, 1 << 20).await;
            assert_eq!(b.used(), 3 << 20);
            // Once alice's response is written, her next request goes on.
            let b2 = b.clone();
            let a2 = tokio::spawn({
                let alice = alice.clone();
                async move { b2.charge(&alice, 1 << 20).await }
            });
            tokio::task::yield_now().await;
            drop(a1);
            let a2 = a2.await.unwrap();
            assert_eq!(b.used(), 2 << 20);
            drop((a2, b1));
            assert_eq!(b.used(), 0);
        });
    }
}
