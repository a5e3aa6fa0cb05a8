//! Admission: who may hold a connection, and how many may. A leaf module that the listeners
//! (which take places as they accept) and the sessions (which give them back, or trade a
//! handshake place for a session place when they authenticate) both use; it knows nothing of
//! either.
//!
//! - [`gate`]: the handshake places, bounded per source and server-wide, with eviction of the
//!   oldest idle handshake of the biggest source.
//! - [`Slot`]: one connection's places (its handshake place, then one of its listener's
//!   `max_connections`) and its arbiter placement, released when the connection ends.
//! - [`fit`]: the descriptor budget: the places, handshakes included, fitted to
//!   `RLIMIT_NOFILE`, so that unauthenticated sockets can never take the descriptors an
//!   authenticated client of any transport needs.

pub mod gate;

use std::sync::Arc;

use ferrohsm_proto::Status;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::arbiters::{Placement, SessionArbiters};
use crate::error::OpError;

/// What every listener shares to admit a connection: the handshake places, the session
/// arbiters a connection is placed on, and how many sessions each listener may hold.
#[derive(Debug)]
pub struct Admission {
    /// Connections in handshake, on every listener.
    pub handshakes: Arc<gate::Handshakes>,
    /// The session threads.
    pub arbiters: Arc<SessionArbiters>,
    /// Authenticated sessions per listener.
    pub connections: usize,
}

/// Descriptors kept for everything but connections and threads: logs, the listeners, the
/// signal and timer plumbing, a PostgreSQL connection or two.
pub const RESERVED_FDS: usize = 64;

/// The descriptors hsmd holds besides its connections: [`RESERVED_FDS`], two per session
/// arbiter (its runtime's epoll and eventfd; the crypto workers are plain threads and hold
/// none) and four per store thread (an SQLite connection's database, WAL and shared-memory
/// files, or a PostgreSQL socket).
pub fn reserved(arbiters: usize, store_threads: usize) -> usize {
    RESERVED_FDS
        .saturating_add(arbiters.saturating_mul(2))
        .saturating_add(store_threads.saturating_mul(4))
}

/// The places, fitted to the descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// Authenticated sessions per listener.
    pub connections: usize,
    /// Connections in handshake, every listener together.
    pub handshakes: usize,
    /// Of those, from one source.
    pub per_source: usize,
}

/// The places that fit in `nofile` descriptors, `reserved` of them kept (see [`reserved`]):
/// a connection in handshake holds one descriptor (its socket) and gets at most half of the
/// room; each listener's sessions (`per_connection` descriptors each: a shm session holds its
/// set-up socket and its segment) share the other half. One source holds at most every
/// handshake place, so at most half the descriptors, and a newcomer from another source evicts
/// the oldest idle handshake of the biggest source (see [`gate`]) instead of finding no
/// descriptor to be accepted with, which would lock every transport out. Configured limits
/// are only ever lowered, and never below one.
pub fn fit(
    nofile: u64,
    reserved: usize,
    listeners: usize,
    per_connection: usize,
    configured: Fitted,
) -> Fitted {
    let room = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved);
    let handshakes = configured.handshakes.min(room / 2).max(1);
    let rest = room.saturating_sub(handshakes);
    let each = listeners.max(1).saturating_mul(per_connection.max(1));
    let connections = configured.connections.min(rest / each).max(1);
    let per_source = configured.per_source.min(handshakes);
    Fitted {
        connections,
        handshakes,
        per_source,
    }
}

/// A connection's places: its handshake place until it authenticates, then one of its
/// listener's `max_connections`; and its arbiter's load count. Shared by the session and its
/// writer; released when the connection ends.
#[derive(Debug, Clone)]
pub struct Slot(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    eviction: Arc<gate::Eviction>,
    connections: Arc<Semaphore>,
    places: parking_lot::Mutex<Places>,
    _placement: Placement,
}

#[derive(Debug)]
struct Places {
    handshake: Option<gate::Handshake>,
    session: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub(crate) fn new(
        handshake: gate::Handshake,
        connections: Arc<Semaphore>,
        placement: Placement,
    ) -> Slot {
        Slot(Arc::new(SlotInner {
            eviction: handshake.eviction(),
            connections,
            places: parking_lot::Mutex::new(Places {
                handshake: Some(handshake),
                session: None,
            }),
            _placement: placement,
        }))
    }

    /// The connection authenticated: it takes one of the listener's session places (or is
    /// refused with `busy`) and gives back its handshake place. Idempotent.
    pub fn authenticate(&self) -> Result<(), OpError> {
        let mut p = self.0.places.lock();
        if p.session.is_none() {
            let permit = self
                .0
                .connections
                .clone()
                .try_acquire_owned()
                .map_err(|_| {
                    OpError::new(
                        Status::Busy,
                        "too many connections: this listener's max_connections sessions are open",
                    )
                })?;
            p.session = Some(permit);
        }
        p.handshake = None;
        Ok(())
    }

    /// Resolves if the connection, still in handshake, is evicted to make room for a newer one.
    pub async fn evicted(&self) {
        let ev = self.0.eviction.clone();
        if self.0.places.lock().handshake.is_none() {
            return std::future::pending().await;
        }
        ev.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Fitted = Fitted {
        connections: 1024,
        handshakes: 256,
        per_source: 16,
    };

    #[test]
    fn places_fit_the_descriptors_and_handshakes_never_take_more_than_half() {
        // 2 session arbiters and 3 store threads (this machine): 64 + 4 + 12 = 80 kept.
        let kept = reserved(2, 3);
        assert_eq!(kept, 80);
        // Plenty of descriptors: the configuration stands.
        assert_eq!(fit(1 << 20, kept, 4, 3, DEFAULTS), DEFAULTS);
        // 1024: room 944; 256 handshakes; (944 - 256) / 12 = 57 sessions per listener.
        assert_eq!(
            fit(1024, kept, 4, 3, DEFAULTS),
            Fitted {
                connections: 57,
                handshakes: 256,
                per_source: 16
            }
        );
        // 256: room 176; 88 handshakes (half); 88 / 12 = 7 sessions; 16 per source.
        let low = fit(256, kept, 4, 3, DEFAULTS);
        assert_eq!(
            low,
            Fitted {
                connections: 7,
                handshakes: 88,
                per_source: 16
            }
        );
        // Every place together fits.
        assert!(kept + low.handshakes + 4 * 3 * low.connections <= 256);
        // 120: room 40; 20 handshakes, so 16 from one source still fits; at 100, 10 in all,
        // and one source may hold them all.
        assert_eq!(fit(120, kept, 4, 3, DEFAULTS).handshakes, 20);
        assert_eq!(fit(100, kept, 4, 3, DEFAULTS).per_source, 10);
        // A big machine: 64 arbiters and 3 store threads keep 204; 1024 leaves 820, so 256
        // handshakes and (820 - 256) / 12 = 47 sessions per listener.
        assert_eq!(
            fit(1024, reserved(64, 3), 4, 3, DEFAULTS),
            Fitted {
                connections: 47,
                handshakes: 256,
                per_source: 16
            }
        );
        // Nothing left, or absurd inputs: one of each, never zero, no overflow.
        let one = Fitted {
            connections: 1,
            handshakes: 1,
            per_source: 1,
        };
        assert_eq!(fit(10, kept, 4, 3, DEFAULTS), one);
        assert_eq!(
            fit(1 << 20, reserved(usize::MAX, usize::MAX), 4, 3, DEFAULTS),
            one
        );
        assert_eq!(
            fit(u64::MAX, 0, usize::MAX, usize::MAX, DEFAULTS).connections,
            1
        );
    }
}
