//! The table test: every kind is described, and the description's parts agree with each other.

use super::*;
use crate::handshake::{Hello, Proof};
use crate::message::{DigestAlg, KeyQuery, KeyRef, KeySpec, KeyType, Label, Page, UsageSet};

/// One request of every kind. The match in `every_variant` names each variant, so a new one
/// does not compile until it has a sample here.
fn samples() -> Vec<Request> {
    let k = || KeyRef::Id(1);
    let label: Label = "l".parse().unwrap();
    let spec = KeySpec {
        label: label.clone(),
        key_type: KeyType::Ed25519,
        usage: None,
        exportable: false,
        session: false,
    };
    vec![
        Request::Hello(Hello {
            version: 1,
            client: "c".into(),
        }),
        Request::Proof(Proof {
            signature: vec![0; 64],
        }),
        Request::Ping,
        Request::Status,
        Request::Random { len: 1 },
        Request::Digest {
            alg: DigestAlg::Sha256,
            data: vec![],
        },
        Request::Generate(spec.clone()),
        Request::List(Page::FIRST),
        Request::ListGranted,
        Request::Find(KeyQuery::default()),
        Request::Info(k()),
        Request::PublicKey(k()),
        Request::Export(k()),
        Request::Delete(k()),
        Request::Sign {
            key: k(),
            data: vec![],
        },
        Request::Verify {
            key: k(),
            data: vec![],
            signature: vec![],
        },
        Request::SignDigest {
            key: k(),
            digest: vec![],
        },
        Request::VerifyDigest {
            key: k(),
            digest: vec![],
            signature: vec![],
        },
        Request::EncryptRaw {
            key: k(),
            plaintext: vec![],
            aad: vec![],
        },
        Request::DecryptRaw {
            key: k(),
            nonce: vec![0; 12],
            ciphertext: vec![],
            aad: vec![],
        },
        Request::Encrypt {
            key: k(),
            plaintext: vec![],
            aad: vec![],
        },
        Request::Decrypt {
            key: k(),
            ciphertext: vec![],
            aad: vec![],
        },
        Request::Mac {
            key: k(),
            data: vec![],
        },
        Request::MacVerify {
            key: k(),
            data: vec![],
            mac: vec![],
        },
        Request::Derive {
            key: k(),
            peer: vec![],
            spec: spec.clone(),
        },
        Request::SignContext {
            key: k(),
            data: vec![],
            context: vec![1],
        },
        Request::VerifyContext {
            key: k(),
            data: vec![],
            signature: vec![],
            context: vec![1],
        },
        Request::Encapsulate {
            key: k(),
            spec: spec.clone(),
        },
        Request::EncapsulatePeer {
            peer: vec![],
            spec: spec.clone(),
        },
        Request::Decapsulate {
            key: k(),
            ciphertext: vec![],
            spec: spec.clone(),
        },
        Request::Import {
            spec,
            material: vec![],
        },
        Request::Wrap {
            key: k(),
            with: k(),
        },
        Request::Unwrap {
            with: k(),
            blob: vec![],
            label: label.clone(),
        },
        Request::Grant {
            key: k(),
            to: label.clone(),
            ops: UsageSet::of(&[Usage::Sign]),
        },
        Request::Revoke {
            key: k(),
            from: label.clone(),
        },
        Request::Rotate(k()),
        Request::Retire { key: k(), below: 1 },
        Request::Rewrap {
            key: k(),
            ciphertext: vec![],
            aad: vec![],
        },
        Request::CounterCreate(label.clone()),
        Request::CounterRead(label.clone()),
        Request::CounterInc(label),
    ]
}

#[allow(dead_code)]
fn every_variant(r: &Request) {
    match r {
        Request::Hello(_)
        | Request::Proof(_)
        | Request::Ping
        | Request::Status
        | Request::Random { .. }
        | Request::Digest { .. }
        | Request::Generate(_)
        | Request::List(_)
        | Request::ListGranted
        | Request::Find(_)
        | Request::Info(_)
        | Request::PublicKey(_)
        | Request::Export(_)
        | Request::Delete(_)
        | Request::Sign { .. }
        | Request::Verify { .. }
        | Request::SignDigest { .. }
        | Request::VerifyDigest { .. }
        | Request::EncryptRaw { .. }
        | Request::DecryptRaw { .. }
        | Request::Encrypt { .. }
        | Request::Decrypt { .. }
        | Request::Mac { .. }
        | Request::MacVerify { .. }
        | Request::Derive { .. }
        | Request::SignContext { .. }
        | Request::VerifyContext { .. }
        | Request::Encapsulate { .. }
        | Request::EncapsulatePeer { .. }
        | Request::Decapsulate { .. }
        | Request::Import { .. }
        | Request::Wrap { .. }
        | Request::Unwrap { .. }
        | Request::Grant { .. }
        | Request::Revoke { .. }
        | Request::Rotate(_)
        | Request::Retire { .. }
        | Request::Rewrap { .. }
        | Request::CounterCreate(_)
        | Request::CounterRead(_)
        | Request::CounterInc(_) => {}
    }
}

#[test]
fn every_opcode_has_its_own_description_and_every_request_kind_a_sample() {
    let requests: Vec<Opcode> = samples().iter().map(Request::opcode).collect();
    for op in Opcode::ALL {
        let kind = op.kind();
        assert_eq!(kind.opcode, op);
        assert!(
            !kind.name.is_empty()
                && kind
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'),
            "{op:?}: name {:?}",
            kind.name
        );
        let is_request = requests.contains(&op);
        assert_eq!(
            kind.answer == Answer::Nothing,
            !is_request,
            "{op:?}: only the server's own messages answer nothing"
        );
    }
    assert_eq!(requests.len(), Opcode::ALL.len() - 2, "one sample per kind");
    for r in samples() {
        assert_eq!(r.kind(), Kind::of(r.opcode()));
        // The sample is a real request of its kind: it survives the wire.
        let f = r.to_frame(1);
        assert_eq!(Request::decode(f.header.opcode, &f.body).unwrap(), r);
    }
}

#[test]
fn responses_with_plaintext_key_bytes_or_random_bytes_are_secret_and_no_others() {
    let secret: Vec<Opcode> = Opcode::ALL
        .into_iter()
        .filter(|op| op.kind().secret_response())
        .collect();
    // The PKCS#11 module's C_Decrypt (DecryptRaw) was once missed, so its plaintext was not
    // wiped.
    assert_eq!(
        secret,
        [
            Opcode::Random,
            Opcode::Export,
            Opcode::Decrypt,
            Opcode::DecryptRaw
        ]
    );
    for op in Opcode::ALL {
        let kind = op.kind();
        if let Answer::Bytes(b) = kind.answer {
            assert_eq!(
                kind.secret_response(),
                matches!(b, Bytes::Plaintext | Bytes::KeyBytes | Bytes::Random),
                "{op:?}"
            );
        } else {
            assert!(!kind.secret_response(), "{op:?}");
        }
    }
}

#[test]
fn the_parts_of_each_description_agree() {
    for op in Opcode::ALL {
        let k = op.kind();
        match k.cost {
            // The session answers these itself: no key, no store, no worker.
            Cost::Session => {
                assert_eq!(k.key, KeyUse::None, "{op:?}");
                assert!(!k.changes_state && !k.key_bytes, "{op:?}");
            }
            // Run inline after one authorization by usage, sized like their input.
            Cost::Cheap | Cost::Signature => {
                assert!(
                    matches!(k.key, KeyUse::None | KeyUse::Uses(_) | KeyUse::UsesBoth(..)),
                    "{op:?}"
                );
                assert!(
                    matches!(k.reply, Reply::AsRequest | Reply::Signed | Reply::Random),
                    "{op:?}"
                );
                assert!(!k.changes_state && !k.key_bytes, "{op:?}");
            }
            // A pooled kind that stores something makes new key material.
            Cost::Pooled => assert!(!k.changes_state || k.key_bytes, "{op:?}"),
            Cost::Store => {}
        }
        // Lists and wrapped keys can be as large as a frame.
        if matches!(k.answer, Answer::Keys | Answer::Bytes(Bytes::Wrapped)) {
            assert_eq!(k.reply, Reply::Frame, "{op:?}");
        }
        // Key bytes leave only the caller's own key, and pass through the session's thread.
        if k.answer == Answer::Bytes(Bytes::KeyBytes) {
            assert!(k.key.owner_only() && k.key_bytes, "{op:?}");
        }
        // Every kind that changes a key the caller names is the owner's alone, except
        // derive, encapsulate and decapsulate, which make a new key of the caller's from a
        // key it may only use.
        let makes_from_a_used_key = [Opcode::Derive, Opcode::Encapsulate, Opcode::Decapsulate];
        if k.changes_state && k.key != KeyUse::None && !makes_from_a_used_key.contains(&op) {
            assert!(k.key.owner_only(), "{op:?}");
        }
    }
}

#[test]
fn a_response_bound_covers_what_it_names() {
    assert_eq!(Reply::AsRequest.bound(100, 1 << 20), 1124);
    assert_eq!(
        Reply::Random.bound(4, 1 << 20),
        crate::MAX_RANDOM as usize + 1024
    );
    assert_eq!(Reply::Signed.bound(100, 1 << 20), 100 + 4627 + 1024);
    assert_eq!(Reply::Frame.bound(4, 1 << 20), 1 << 20);
    assert_eq!(Reply::Small.bound(4, 1 << 20), 64 * 1024);
}
