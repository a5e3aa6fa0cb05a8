//! Connecting as a test needs to: waiting for a place to free up, and reading why a
//! connection was refused.
//!
//! A place (a session slot of a client, or of a listener) comes back only once the server has
//! seen the old session end, which takes a moment after the client side drops it. Until then
//! the server answers `busy` in the handshake, and nothing else: [`when_freed`] waits through
//! `busy` only, so a refusal of any other kind, or a broken connection, fails the test at once.

use std::time::Duration;

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::Status;

use crate::wait;

/// The server's status and message for a connection refused in the FerroHSM handshake (the
/// hello or the proof), which the client reports as [`ClientError::Auth`]. A panic if it was
/// accepted, refused without a status (a broken connection, a TLS alert), or with an unknown
/// status.
pub fn refusal<T>(r: Result<T, ClientError>) -> (Status, String) {
    match r {
        Err(ClientError::Auth(b)) => (
            b.status()
                .unwrap_or_else(|| panic!("unknown status {} in the refusal {b:?}", b.code)),
            b.message,
        ),
        Err(other) => panic!("expected a refusal in the handshake, got {other:?}"),
        Ok(_) => panic!("expected a refusal in the handshake, the connection was accepted"),
    }
}

/// Retries `attempt` until it succeeds, within `within`; meanwhile every attempt must be
/// refused with `busy` (any other error fails the test, naming `what` it waited for).
pub fn when_freed<T>(
    what: &str,
    within: Duration,
    mut attempt: impl FnMut() -> Result<T, ClientError>,
) -> T {
    wait::eventually(what, within, || match attempt() {
        Ok(c) => Some(c),
        Err(ClientError::Auth(b)) if b.status() == Some(Status::Busy) => None,
        Err(e) => panic!("waiting for {what}: expected `busy` or a session, got {e:?}"),
    })
}

/// A client of `p` over `t`, once the server has a place for it again (see [`when_freed`]).
pub fn connect_when_freed(p: &Profile, t: Transport, within: Duration) -> BlockingClient {
    when_freed(
        &format!("a place for {} over {t:?}", p.name),
        within,
        || BlockingClient::connect(p, Some(t)),
    )
}
