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

/// Descriptors kept for everything but connections: the store, logs, the listeners, the
/// runtimes' own (epoll, eventfd) on every thread.
pub const RESERVED_FDS: usize = 64;

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

/// The places that fit in `nofile` descriptors (after [`RESERVED_FDS`] and the runtime's own
/// descriptors, `threads` threads at 4 each): a connection in handshake holds one descriptor
/// (its socket) and gets at most half of the room; each listener's sessions
/// (`per_connection` descriptors each: a shm session holds its set-up socket and its
/// segment) share the other half; and one source holds at most a quarter of the handshake
/// places, so a flood from a few addresses always leaves places that eviction can give to
/// another. Configured limits are only ever lowered.
pub fn fit(
    nofile: u64,
    threads: usize,
    listeners: usize,
    per_connection: usize,
    configured: Fitted,
) -> Fitted {
    let room = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FDS + 4 * threads);
    let handshakes = configured.handshakes.min(room / 2).max(1);
    let rest = room.saturating_sub(handshakes);
    let connections = configured
        .connections
        .min(rest / (listeners.max(1) * per_connection.max(1)))
        .max(1);
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
        // Plenty of descriptors: the configuration stands.
        assert_eq!(fit(1 << 20, 2, 4, 3, DEFAULTS), DEFAULTS);
        // 1024: room 1024 - 64 - 8 = 952; 256 handshakes; (952 - 256) / 12 = 58 sessions.
        assert_eq!(
            fit(1024, 2, 4, 3, DEFAULTS),
            Fitted {
                connections: 58,
                handshakes: 256,
                per_source: 16
            }
        );
        // 256: room 184; 92 handshakes (half); 92 / 12 = 7 sessions; 16 per source.
        let low = fit(256, 2, 4, 3, DEFAULTS);
        assert_eq!(
            low,
            Fitted {
                connections: 7,
                handshakes: 92,
                per_source: 16
            }
        );
        // Every place together fits.
        assert!(RESERVED_FDS + 8 + low.handshakes + 4 * 3 * low.connections <= 256);
        // 128: room 56; 28 handshakes, so 16 from one source at most still fits.
        assert_eq!(fit(128, 2, 4, 3, DEFAULTS).handshakes, 28);
        // 96: room 24; 12 handshakes, all of them from one source at most.
        assert_eq!(fit(96, 2, 4, 3, DEFAULTS).per_source, 12);
        // Nothing left: one of each, never zero.
        assert_eq!(
            fit(10, 2, 4, 3, DEFAULTS),
            Fitted {
                connections: 1,
                handshakes: 1,
                per_source: 1
            }
        );
    }
}
