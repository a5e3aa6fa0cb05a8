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

use ferrohsm_proto::frame::HEADER_LEN;
use ferrohsm_proto::{Header, MAX_RANDOM, Opcode};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The bytes a request may make the server hold: its frame and a bound on its response.
pub fn cost(h: &Header, max_body: u32) -> usize {
    let body = h.body_len as usize;
    let frame = HEADER_LEN + body;
    let response = match Opcode::from_u16(h.opcode) {
        // Output about as large as the input (a signature, a MAC, a ciphertext, a plaintext).
        Some(
            Opcode::Sign
            | Opcode::Verify
            | Opcode::Mac
            | Opcode::MacVerify
            | Opcode::Encrypt
            | Opcode::Decrypt
            | Opcode::Rewrap
            | Opcode::Digest,
        ) => body + 1024,
        Some(Opcode::Random) => MAX_RANDOM as usize + 1024,
        // Answers that can be as large as a frame may be.
        Some(Opcode::List | Opcode::ListGranted | Opcode::Wrap) => HEADER_LEN + max_body as usize,
        // Key descriptions, public keys, exports, errors.
        _ => 64 * 1024,
    };
    frame + response
}

#[derive(Debug, Default)]
struct Used {
    total: usize,
    by_client: HashMap<Arc<str>, usize>,
}

/// The budget; shared by every session.
#[derive(Debug)]
pub struct Budget {
    total: usize,
    per_client: usize,
    used: Mutex<Used>,
    freed: Notify,
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
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
        }
    }

    /// What one client may hold.
    pub fn share(&self) -> usize {
        self.per_client
    }

    /// Bytes charged now, in all.
    pub fn used(&self) -> usize {
        self.used.lock().total
    }

    fn try_charge(self: &Arc<Self>, client: &Arc<str>, n: usize) -> Option<Charge> {
        // A request larger than a share is charged as a whole share (it waits for the
        // client's other requests to finish, never forever).
        let n = n.min(self.per_client);
        let mut used = self.used.lock();
        let mine = used.by_client.get(client).copied().unwrap_or(0);
        if used.total + n > self.total || mine + n > self.per_client {
            return None;
        }
        used.total += n;
        *used.by_client.entry(client.clone()).or_insert(0) += n;
        Some(Charge {
            budget: self.clone(),
            client: client.clone(),
            n,
        })
    }

    /// Charges `n` bytes to `client`, waiting while that would exceed the budget or the
    /// client's share.
    pub async fn charge(self: &Arc<Self>, client: &Arc<str>, n: usize) -> Charge {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(c) = self.try_charge(client, n) {
                return c;
            }
            freed.await;
        }
    }

    fn release(&self, client: &str, n: usize) {
        {
            let mut used = self.used.lock();
            used.total = used.total.saturating_sub(n);
            if let Some(m) = used.by_client.get_mut(client) {
                *m = m.saturating_sub(n);
                if *m == 0 {
                    used.by_client.remove(client);
                }
            }
        }
        self.freed.notify_waiters();
    }
}

/// Bytes charged to a client, given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    client: Arc<str>,
    n: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(&self.client, self.n);
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
        let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
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
