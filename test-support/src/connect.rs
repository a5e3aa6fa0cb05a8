//! Connecting as a test needs to: waiting for a place to free up, reading why a connection
//! was refused, and checking that a healthy client is still served, correctly.
//!
//! A place (a session slot of a client, or of a listener) comes back only once the server has
//! seen the old session end, which takes a moment after the client side drops it. Until then
//! the server answers `busy` in the handshake, and nothing else: [`when_freed`] waits through
//! `busy` only, so a refusal of any other kind, or a broken connection, fails the test at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{KeyRef, KeyType, Status};

use crate::keys::{assert_signs, spec};
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

/// Whether a healthy client of `p` over `t` is served, and correctly: it connects, then signs
/// with `key` (with `None`, with a new Ed25519 key it makes first, which shows the store still
/// takes writes), and the signature verifies and does not verify other data
/// ([`assert_signs`]). The connection and every call are bounded by `within`, so a hang fails
/// the test. `Err` is the connection's error when the client could not get in; anything wrong
/// after that fails the test.
pub fn served(
    p: &Profile,
    t: Transport,
    key: Option<&KeyRef>,
    within: Duration,
) -> Result<(), ClientError> {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let c = BlockingClient::connect_within(p, Some(t), within)?;
    let made;
    let key = match key {
        Some(k) => k,
        None => {
            let label = format!("healthy-{}", MADE.fetch_add(1, Ordering::Relaxed));
            let k = c
                .run(c.client().generate_spec(spec(KeyType::Ed25519, &label)))
                .unwrap_or_else(|e| panic!("{} over {t:?}: keygen: {e}", p.name));
            made = KeyRef::Id(k.id);
            &made
        }
    };
    assert_signs(&c, key);
    Ok(())
}

/// [`served`], which must succeed: `what` names the situation in the failure.
pub fn healthy(p: &Profile, t: Transport, key: Option<&KeyRef>, within: Duration, what: &str) {
    served(p, t, key, within)
        .unwrap_or_else(|e| panic!("{what} over {t:?}: a healthy client was not served: {e}"));
}

/// Waits (up to `within`) until `p` gets in over `t` and is served ([`served`]): while a full
/// handshake gate refuses it by closing at once (a connection error), it tries again; any
/// other failure fails the test.
pub fn gets_in(p: &Profile, t: Transport, within: Duration) {
    wait::eventually(
        &format!("{} to get in over {t:?}", p.name),
        within,
        || match served(p, t, None, within) {
            Ok(()) => Some(()),
            Err(ClientError::Connection(_) | ClientError::ConnectionLost(_)) => None,
            Err(e) => panic!("{} over {t:?}: {e}", p.name),
        },
    );
}
