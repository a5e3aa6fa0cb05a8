//! Key specs and references as tests write them.

use ferrohsm_client::BlockingClient;
use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Label, Status};

/// A label (which must be valid).
pub fn label_of(s: &str) -> Label {
    s.parse()
        .unwrap_or_else(|e| panic!("invalid label {s:?}: {e:?}"))
}

/// A key named by its label.
pub fn label(s: &str) -> KeyRef {
    KeyRef::Label(label_of(s))
}

/// A persistent, non-exportable key of type `t` with the type's default usage; change fields
/// with `KeySpec { exportable: true, ..spec(t, l) }`.
pub fn spec(t: KeyType, l: &str) -> KeySpec {
    KeySpec {
        key_type: t,
        label: label_of(l),
        usage: None,
        exportable: false,
        session: false,
    }
}

/// `c` signs with `key` correctly: the signature verifies, and does not verify other data.
/// Each call is bounded by the client's timeout if it has one
/// ([`BlockingClient::connect_within`]): a hang then fails the test.
pub fn assert_signs(c: &BlockingClient, key: &KeyRef) {
    let data = b"still served".to_vec();
    let sig = c.run(c.client().sign(key, data.clone())).expect("sign");
    c.run(c.client().verify(key, data, sig.clone()))
        .expect("verify");
    assert_eq!(
        crate::status(c.run(c.client().verify(key, b"other data".to_vec(), sig))),
        Status::BadSignature
    );
}
