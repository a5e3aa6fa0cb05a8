//! Session key ids never change meaning: within one hsmd process, an id names at most one
//! session key, across deletes, closed connections, reconnects and other transports, and a
//! handle of a key that is gone answers `key_not_found`, never another key.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Transport;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Status};
use ferrohsm_test_support::{Data, spec, status};

fn session_key(c: &BlockingClient, label: &str) -> u32 {
    let spec = KeySpec {
        session: true,
        ..spec(KeyType::Ed25519, label)
    };
    let k = c.block_on(c.client().generate_spec(spec)).unwrap();
    assert!(k.id >= 1 << 31, "{label}: session key id {}", k.id);
    k.id
}

/// The key `id` names now, by its signature: `Err` with the status when it names none.
fn signs(c: &BlockingClient, id: u32) -> Result<Vec<u8>, Status> {
    let r = c.block_on(c.client().sign(&KeyRef::Id(id), b"which key?".to_vec()));
    r.map_err(|e| status(Err::<(), _>(e)))
}

#[test]
fn a_session_key_id_is_never_reused_across_deletes_closes_and_reconnects() {
    let d = Data::init("alice");
    let _daemon = d.start();
    let profile = d.load_profile("alice");
    let mut seen: HashSet<u32> = HashSet::new();
    let mut fresh = |id: u32, what: &str| {
        assert!(seen.insert(id), "{what}: id {id} was handed out before");
    };
    // Within one connection: a key made after a delete gets a new id, and the deleted one's
    // id is refused rather than naming the new key.
    let c = BlockingClient::connect(&profile, Some(Transport::Tcp)).unwrap();
    let first = session_key(&c, "s1");
    fresh(first, "first");
    c.block_on(c.client().delete(&KeyRef::Id(first))).unwrap();
    let second = session_key(&c, "s2");
    fresh(second, "after a delete");
    assert_eq!(signs(&c, first), Err(Status::KeyNotFound));
    assert!(signs(&c, second).is_ok());
    // A connection that closes takes its session keys with it; the next connection's keys
    // have new ids, on this transport and on another.
    drop(c);
    for t in [
        Transport::Tcp,
        Transport::Shm,
        Transport::Tls,
        Transport::TlsPsk,
    ] {
        let c = BlockingClient::connect(&profile, Some(t)).unwrap();
        let id = session_key(&c, "s");
        fresh(id, &format!("after a reconnect over {t:?}"));
        for old in [first, second] {
            assert_eq!(signs(&c, old), Err(Status::KeyNotFound), "{t:?}: {old}");
        }
        let again = session_key(&c, "t");
        fresh(again, &format!("second over {t:?}"));
        // Two connections open at once never share an id either.
        let other = BlockingClient::connect(&profile, Some(Transport::Tcp)).unwrap();
        fresh(session_key(&other, "u"), &format!("beside {t:?}"));
        assert_eq!(signs(&other, id), Err(Status::KeyNotFound), "{t:?}");
    }
    assert_eq!(seen.len(), 2 + 4 * 3);
}
