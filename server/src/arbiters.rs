//! Session arbiters: N threads, each an actix arbiter (a single-threaded tokio runtime), that
//! own the sessions placed on them: their sockets or rings, framing, the session actor and the
//! cheap operations that run inline.
//!
//! A tokio stream belongs to the runtime it was registered with, so a listener hands a
//! connection over as its std socket and the arbiter registers it again (the acceptor/worker
//! model). A new connection goes to the arbiter with the fewest live connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::{Arbiter, ArbiterHandle};

/// The session arbiters of one server.
pub struct SessionArbiters {
    arbiters: Vec<(ArbiterHandle, Arc<AtomicUsize>)>,
    // Taken by `stop` to join the threads.
    threads: parking_lot::Mutex<Vec<Arbiter>>,
}

impl std::fmt::Debug for SessionArbiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let load: Vec<usize> = self
            .arbiters
            .iter()
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .collect();
        f.debug_struct("SessionArbiters")
            .field("load", &load)
            .finish()
    }
}

/// Counts one connection on its arbiter until dropped.
#[derive(Debug)]
pub struct Placement(Arc<AtomicUsize>);

impl Drop for Placement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionArbiters {
    /// Starts `n` arbiter threads (at least one). Must run inside an actix system.
    pub fn start(n: usize) -> SessionArbiters {
        let threads: Vec<Arbiter> = (0..n.max(1)).map(|_| Arbiter::new()).collect();
        // Each wipes its stack shortly after inline key work (see `crypto::pool`).
        for a in &threads {
            a.spawn(async {
                let mut tick = tokio::time::interval(crate::crypto::pool::SCRUB_PERIOD);
                loop {
                    tick.tick().await;
                    crate::crypto::pool::scrub_if_dirty();
                }
            });
        }
        let arbiters = threads
            .iter()
            .map(|a| (a.handle(), Arc::new(AtomicUsize::new(0))))
            .collect();
        SessionArbiters {
            arbiters,
            threads: parking_lot::Mutex::new(threads),
        }
    }

    /// How many arbiters run.
    pub fn len(&self) -> usize {
        self.arbiters.len()
    }

    /// Always false: there is at least one arbiter.
    pub fn is_empty(&self) -> bool {
        self.arbiters.is_empty()
    }

    /// Runs `fut` on the least-loaded arbiter; the placement counts the connection there until
    /// it is dropped (hand it to the session).
    pub fn place<F>(&self, fut: impl FnOnce(Placement) -> F + Send + 'static) -> bool
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        let Some((arbiter, load)) = self
            .arbiters
            .iter()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
        else {
            return false;
        };
        load.fetch_add(1, Ordering::Relaxed);
        let placement = Placement(load.clone());
        arbiter.spawn_fn(move || {
            actix::spawn(fut(placement));
        })
    }

    /// Stops every arbiter and waits for its thread (once; later calls do nothing).
    pub fn stop(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for a in &threads {
            a.stop();
        }
        for a in threads {
            let _ = a.join();
        }
    }
}
