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
pub fn assert_signs(c: &BlockingClient, key: &KeyRef) {
    let sig = c.sign(key, b"still served").expect("sign");
    c.verify(key, b"still served", &sig).expect("verify");
    assert_eq!(
        crate::status(c.verify(key, b"other data", &sig)),
        Status::BadSignature
    );
}
