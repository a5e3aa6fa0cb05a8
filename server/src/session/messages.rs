//! What moves between a session's reader, its actor and its writer: a request with its
//! ticket (the window slot, the in-flight count and the memory charge it holds until its
//! answer is written), an answer on its way out, and the order to close.

use std::sync::Arc;

use actix::Message;
use ferrohsm_proto::message::BodyError;
use ferrohsm_proto::{Header, Request};
use tokio::sync::OwnedSemaphorePermit;

use super::budget;
use super::shared::{InFlight, InFlightGuard};

/// Held from decode to write: one window slot, one global in-flight count, and (once the
/// session is authenticated) the request's bytes charged to the memory budget.
#[derive(Debug)]
pub(super) struct Ticket {
    // When the request's frame was read (its duration in the metrics starts here).
    pub(super) started: std::time::Instant,
    _window: OwnedSemaphorePermit,
    _inflight: InFlightGuard,
    _charge: Option<budget::Charge>,
}

impl Ticket {
    pub(super) fn new(
        started: std::time::Instant,
        window: OwnedSemaphorePermit,
        inflight: &Arc<InFlight>,
        charge: Option<budget::Charge>,
    ) -> Ticket {
        Ticket {
            started,
            _window: window,
            _inflight: inflight.enter(),
            _charge: charge,
        }
    }
}

#[derive(Debug)]
pub(super) struct Outbound {
    // The whole response frame, encoded in place.
    pub(super) wire: Vec<u8>,
    // The body carries secret bytes (exported key, plaintext, random): wiped when this is
    // dropped, whether it was written or its writer was gone; the writer also wipes its own
    // buffer after writing it.
    pub(super) secret: bool,
    pub(super) _ticket: Option<Ticket>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.wire);
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Inbound {
    pub(super) header: Header,
    // The body, decoded by the reader straight from the bytes it read.
    pub(super) request: Result<Request, BodyError>,
    pub(super) ticket: Ticket,
    // Another whole frame was already buffered behind this one.
    pub(super) more: bool,
}

/// Ends the session (peer closed, transport error, shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Close;
