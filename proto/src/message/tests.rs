//! Round trips, refusals and fuzzed bodies for every message.

use super::*;
use crate::status::Status;
use proptest::prelude::*;

#[test]
fn in_place_encoding_matches_frames() {
    let cases = [
        (Response::Bytes(vec![7; 300]), Opcode::Sign),
        (Response::Done, Opcode::Ping),
        (
            Response::Welcome(Welcome {
                session_id: 3,
                max_body: 9,
                window: 2,
            }),
            Opcode::Hello,
        ),
        (
            Response::PublicKey {
                key_type: KeyType::Ed25519,
                bytes: vec![1; 32],
            },
            Opcode::PublicKey,
        ),
    ];
    for (r, op) in cases {
        let mut out = vec![0xee];
        r.encode_into(op as u16, 42, &mut out);
        assert_eq!(
            out[1..],
            r.to_frame(op as u16, 42).encode()[..],
            "{}",
            r.kind()
        );
    }
    let reqs = [
        Request::Ping,
        Request::Sign {
            key: KeyRef::Id(3),
            data: vec![5; 100],
        },
        Request::Encrypt {
            key: KeyRef::Id(4),
            plaintext: vec![6; 1000],
            aad: vec![1],
        },
    ];
    for r in reqs {
        let mut out = Vec::new();
        r.encode_into(77, &mut out);
        assert_eq!(out, r.to_frame(77).encode());
    }
    let e = ErrorBody::new(Status::KeyNotFound, "no");
    let mut out = Vec::new();
    error_frame_into(5, 6, &e, &mut out);
    assert_eq!(out, error_frame(5, 6, &e).encode());
}

fn label() -> impl Strategy<Value = Label> {
    "[A-Za-z][A-Za-z0-9._-]{0,63}".prop_map(|s| s.parse().expect("regex matches label rule"))
}
fn key_ref() -> impl Strategy<Value = KeyRef> {
    prop_oneof![
        any::<u32>().prop_map(KeyRef::Id),
        label().prop_map(KeyRef::Label),
        (label(), any::<u32>()).prop_map(|(o, id)| KeyRef::OwnerId(o, id)),
        (label(), label()).prop_map(|(o, l)| KeyRef::OwnerLabel(o, l)),
    ]
}
fn usage() -> impl Strategy<Value = UsageSet> {
    (0u16..256).prop_map(|u| UsageSet::try_from(u).expect("bits in range"))
}
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}
fn spec() -> impl Strategy<Value = KeySpec> {
    (
        0..6usize,
        label(),
        proptest::option::of(0u16..256),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(t, label, u, exportable, session)| KeySpec {
            key_type: KeyType::ALL[t],
            label,
            usage: u.map(|u| UsageSet::try_from(u).expect("bits in range")),
            exportable,
            session,
        })
}
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::List(Page::default())),
        (any::<Option<u32>>(), any::<Option<u32>>())
            .prop_map(|(after, limit)| Request::List(Page { after, limit })),
        Just(Request::ListGranted),
        Just(Request::Status),
        any::<u32>().prop_map(|len| Request::Random { len }),
        bytes().prop_map(|data| Request::Digest {
            alg: DigestAlg::Sha512,
            data
        }),
        spec().prop_map(Request::Generate),
        key_ref().prop_map(Request::Info),
        key_ref().prop_map(Request::Delete),
        (key_ref(), bytes()).prop_map(|(key, data)| Request::Sign { key, data }),
        (key_ref(), bytes(), bytes()).prop_map(|(key, data, signature)| Request::Verify {
            key,
            data,
            signature
        }),
        (key_ref(), bytes(), bytes()).prop_map(|(key, plaintext, aad)| Request::Encrypt {
            key,
            plaintext,
            aad
        }),
        (key_ref(), bytes(), spec()).prop_map(|(key, peer, spec)| Request::Derive {
            key,
            peer,
            spec
        }),
        (spec(), bytes()).prop_map(|(spec, material)| Request::Import { spec, material }),
        (key_ref(), key_ref()).prop_map(|(key, with)| Request::Wrap { key, with }),
        (key_ref(), bytes(), label()).prop_map(|(with, blob, label)| Request::Unwrap {
            with,
            blob,
            label
        }),
        (key_ref(), label(), usage()).prop_map(|(key, to, ops)| Request::Grant { key, to, ops }),
        (key_ref(), label()).prop_map(|(key, from)| Request::Revoke { key, from }),
        key_ref().prop_map(Request::Rotate),
        (key_ref(), any::<u32>()).prop_map(|(key, below)| Request::Retire { key, below }),
        (key_ref(), bytes(), bytes()).prop_map(|(key, ciphertext, aad)| Request::Rewrap {
            key,
            ciphertext,
            aad
        }),
        (key_ref(), bytes()).prop_map(|(key, digest)| Request::SignDigest { key, digest }),
        (key_ref(), bytes(), bytes()).prop_map(|(key, digest, signature)| {
            Request::VerifyDigest {
                key,
                digest,
                signature,
            }
        }),
        (key_ref(), bytes(), bytes()).prop_map(|(key, plaintext, aad)| Request::EncryptRaw {
            key,
            plaintext,
            aad
        }),
        (key_ref(), bytes(), bytes(), bytes()).prop_map(|(key, nonce, ciphertext, aad)| {
            Request::DecryptRaw {
                key,
                nonce,
                ciphertext,
                aad,
            }
        }),
        (
            proptest::option::of(label()),
            proptest::option::of(any::<u32>()),
            any::<Option<u32>>()
        )
            .prop_map(|(label, id, after)| Request::Find(KeyQuery {
                label,
                id,
                key_type: Some(KeyType::P256),
                page: Page { after, limit: None },
            })),
        label().prop_map(Request::CounterCreate),
        label().prop_map(Request::CounterRead),
        label().prop_map(Request::CounterInc),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request(), id: u64) {
        let frame = req.to_frame(id);
        let back = Request::decode(frame.header.opcode, &frame.body).unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn garbage_bodies_never_panic(op in 0u16..80, body in bytes()) {
        let _ = Request::decode(op, &body);
        let _ = Response::decode(op, &body);
    }
}

#[test]
fn a_full_page_has_a_next_a_short_one_none() {
    let key = |id| {
        KeyInfo::generated(
            "alice".parse().unwrap(),
            id,
            "k".parse().unwrap(),
            KeyType::P256,
        )
    };
    let two = Page {
        after: None,
        limit: Some(2),
    };
    assert_eq!(
        two.next(&[key(3), key(9)]),
        Some(Page {
            after: Some(9),
            limit: Some(2)
        })
    );
    assert_eq!(two.next(&[key(3)]), None);
    assert_eq!(two.next(&[]), None);
    assert_eq!(Page::FIRST.next(&[key(1)]), None);
}

#[test]
fn responses_round_trip() {
    let info = KeyInfo {
        lifetime: Lifetime::Session,
        created: 1_700_000_000,
        origin: Origin::Imported,
        current_version: 2,
        versions: vec![
            VersionInfo {
                version: 1,
                created: 1,
                retired: true,
            },
            VersionInfo {
                version: 2,
                created: 2,
                retired: false,
            },
        ],
        ..KeyInfo::generated(
            "alice".parse().unwrap(),
            7,
            "k1".parse().unwrap(),
            KeyType::P256,
        )
    };
    let cases = [
        (Opcode::Ping, Response::Done),
        (
            Opcode::Hello,
            Response::Challenge(Challenge {
                session_id: 3,
                nonce: [7; 32],
            }),
        ),
        (
            Opcode::Hello,
            Response::Welcome(Welcome {
                session_id: 3,
                max_body: 9,
                window: 2,
            }),
        ),
        (
            Opcode::Proof,
            Response::Welcome(Welcome {
                session_id: 4,
                max_body: 9,
                window: 2,
            }),
        ),
        (Opcode::Sign, Response::Bytes(vec![1, 2, 3])),
        (Opcode::Info, Response::Key(info.clone())),
        (
            Opcode::List,
            Response::Keys(vec![info.clone(), info.clone()]),
        ),
        (Opcode::Rotate, Response::Key(info)),
        (Opcode::CounterInc, Response::Counter(u64::MAX)),
        (Opcode::Wrap, Response::Bytes(vec![4; 9])),
        (Opcode::Grant, Response::Done),
        (
            Opcode::PublicKey,
            Response::PublicKey {
                key_type: KeyType::X25519,
                bytes: vec![9; 32],
            },
        ),
    ];
    for (op, resp) in cases {
        let f = resp.to_frame(op as u16, 1);
        assert_eq!(Response::decode(op as u16, &f.body).unwrap(), resp);
    }
}

#[test]
fn malformed_bodies_are_refused() {
    // Trailing bytes after a valid body.
    let mut body = Request::Info(KeyRef::Id(3)).encode_body();
    body.push(0);
    assert!(matches!(
        Request::decode(Opcode::Info as u16, &body),
        Err(BodyError::Malformed { .. })
    ));
    // A body where none belongs.
    assert!(Request::decode(Opcode::Ping as u16, &[1]).is_err());
    // Truncated.
    let body = Request::Sign {
        key: KeyRef::Id(1),
        data: vec![1; 10],
    }
    .encode_body();
    assert!(Request::decode(Opcode::Sign as u16, &body[..body.len() - 1]).is_err());
    // Unknown opcode and server-only opcodes.
    assert_eq!(
        Request::decode(999, &[]),
        Err(BodyError::UnknownOpcode(999))
    );
    assert_eq!(
        Request::decode(Opcode::Welcome as u16, &[]),
        Err(BodyError::UnknownOpcode(4))
    );
    // An invalid label smuggled in the body is refused while decoding.
    let mut body = postcard::to_stdvec(&1u32).unwrap(); // enum tag 1 = Label
    body.extend(postcard::to_stdvec("9bad").unwrap());
    assert!(Request::decode(Opcode::Info as u16, &body).is_err());
    // Unknown usage bits.
    assert!(UsageSet::try_from(0x400).is_err());
    assert!(UsageSet::try_from(0x3ff).is_ok());
}

#[test]
fn labels_and_refs() {
    assert!("a".parse::<Label>().is_ok());
    assert!("Key_1.2-x".parse::<Label>().is_ok());
    assert!("1abc".parse::<Label>().is_err());
    assert!("".parse::<Label>().is_err());
    assert!("a b".parse::<Label>().is_err());
    assert!(format!("a{}", "b".repeat(63)).parse::<Label>().is_ok());
    assert!(format!("a{}", "b".repeat(64)).parse::<Label>().is_err());
    assert_eq!("42".parse::<KeyRef>().unwrap(), KeyRef::Id(42));
    assert!(matches!("k42".parse::<KeyRef>().unwrap(), KeyRef::Label(_)));
    assert!("99999999999".parse::<KeyRef>().is_err());
    let granted: KeyRef = "alice:k1".parse().unwrap();
    assert_eq!(granted.owner().map(Label::as_str), Some("alice"));
    assert_eq!(*granted.local(), KeyRef::Label("k1".parse().unwrap()));
    assert_eq!(granted.to_string(), "alice:k1");
    assert_eq!(
        "alice:7".parse::<KeyRef>().unwrap(),
        KeyRef::OwnerId("alice".parse().unwrap(), 7)
    );
    assert!("alice:".parse::<KeyRef>().is_err());
    assert!(":k".parse::<KeyRef>().is_err());
    assert!(
        "alice:b:c".parse::<KeyRef>().is_err(),
        "labels cannot contain ':'"
    );
    assert_eq!(
        "sign,verify".parse::<UsageSet>().unwrap(),
        KeyType::Ed25519.allowed_usage()
    );
    assert!("sign,fly".parse::<UsageSet>().is_err());
}
