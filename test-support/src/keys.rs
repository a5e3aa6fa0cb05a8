//! Key specs and references as tests write them.

use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Label};

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
