//! The requests made for interoperable callers (the PKCS#11 module first), through the client
//! library against a real server: ECDSA over a caller's digest, AEAD in the standard layout,
//! key search; and `hsmctl hash-pin`.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrohsm_client::pin::PinHash;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{
    DigestAlg, KeyQuery, KeyRef, KeyType, MAX_PAGE, Page, Request, Response, Status, Usage,
    UsageSet,
};
use ferrohsm_test_support::daemon::{output_with_stdin, output_within};
use ferrohsm_test_support::{TestServer, bins, label, ok, status};

fn spec(t: KeyType, l: &str, usage: Option<&[Usage]>) -> KeySpec {
    KeySpec {
        usage: usage.map(UsageSet::of),
        ..ferrohsm_test_support::spec(t, l)
    }
}

#[test]
fn ecdsa_over_a_callers_digest() {
    let srv = TestServer::start(&["alice", "bob"]);
    let hsm = srv.connect("alice");
    let c = hsm.client();
    hsm.block_on(async {
        c.generate_spec(spec(KeyType::P256, "p", None))
            .await
            .unwrap();
        let msg = b"the message".to_vec();
        let digest = c.digest(DigestAlg::Sha256, msg.clone()).await.unwrap();
        // Both ways round: a digest signature is a message signature, and back.
        let by_digest = c.sign_digest(&label("p"), digest.clone()).await.unwrap();
        c.verify(&label("p"), msg.clone(), by_digest.clone())
            .await
            .unwrap();
        let by_message = c.sign(&label("p"), msg.clone()).await.unwrap();
        c.verify_digest(&label("p"), digest.clone(), by_message)
            .await
            .unwrap();
        let mut other = digest.clone();
        other[0] ^= 1;
        let bad = c.verify_digest(&label("p"), other, by_digest.clone()).await;
        assert_eq!(status(bad), Status::BadSignature);
        // A non-canonical DER encoding (a needless leading zero) is refused.
        let mut padded = by_digest.clone();
        padded[1] += 1;
        padded[3] += 1;
        padded.insert(4, 0);
        let bad = c.verify_digest(&label("p"), digest.clone(), padded).await;
        assert_eq!(status(bad), Status::BadSignature);
        // SHA-512 digests are signed too (their leftmost 256 bits, as ECDSA prescribes).
        let long = c.digest(DigestAlg::Sha512, msg.clone()).await.unwrap();
        let sig = c.sign_digest(&label("p"), long.clone()).await.unwrap();
        c.verify_digest(&label("p"), long, sig).await.unwrap();
        for n in [0usize, 15, 65] {
            let r = c.sign_digest(&label("p"), vec![1; n]).await;
            assert_eq!(status(r), Status::InvalidArgument, "{n} bytes");
        }
        // Not for Ed25519, not without the sign usage, not for an unknown key.
        c.generate_spec(spec(KeyType::Ed25519, "e", None))
            .await
            .unwrap();
        let r = c.sign_digest(&label("e"), digest.clone()).await;
        assert_eq!(status(r), Status::WrongKeyType);
        c.generate_spec(spec(KeyType::P256, "v", Some(&[Usage::Verify])))
            .await
            .unwrap();
        let r = c.sign_digest(&label("v"), digest.clone()).await;
        assert_eq!(status(r), Status::UsageNotPermitted);
        let r = c.sign_digest(&label("nope"), digest.clone()).await;
        assert_eq!(status(r), Status::KeyNotFound);
        // Through a grant, as for any signature.
        c.grant(
            &label("p"),
            &"bob".parse().unwrap(),
            UsageSet::of(&[Usage::Sign]),
        )
        .await
        .unwrap();
    });
    let bob = srv.connect("bob");
    let granted: KeyRef = "alice:p".parse().unwrap();
    let digest = vec![7u8; 32];
    let sig = bob
        .block_on(bob.client().sign_digest(&granted, digest.clone()))
        .unwrap();
    hsm.block_on(c.verify_digest(&label("p"), digest, sig))
        .unwrap();
}

#[test]
fn aead_in_the_standard_layout() {
    let srv = TestServer::start(&["alice"]);
    let hsm = srv.connect("alice");
    let c = hsm.client();
    hsm.block_on(async {
        for t in [KeyType::Aes256Gcm, KeyType::ChaCha20Poly1305] {
            let name = format!("k-{}", t.name());
            let k = label(&name);
            c.generate_spec(spec(t, &name, None)).await.unwrap();
            let out = c
                .encrypt_raw(&k, b"plain".to_vec(), b"aad".to_vec())
                .await
                .unwrap();
            assert_eq!(out.len(), 12 + 5 + 16);
            let (nonce, sealed) = out.split_at(12);
            let back = c
                .decrypt_raw(&k, nonce.to_vec(), sealed.to_vec(), b"aad".to_vec())
                .await
                .unwrap();
            assert_eq!(&back[..], b"plain");
            // Every nonce is fresh.
            let again = c
                .encrypt_raw(&k, b"plain".to_vec(), b"aad".to_vec())
                .await
                .unwrap();
            assert_ne!(&again[..12], nonce);
            let r = c
                .decrypt_raw(&k, nonce.to_vec(), sealed.to_vec(), b"other".to_vec())
                .await;
            assert_eq!(status(r), Status::DecryptFailed);
            let r = c
                .decrypt_raw(&k, vec![0; 11], sealed.to_vec(), b"aad".to_vec())
                .await;
            assert_eq!(status(r), Status::InvalidArgument);
            let r = c
                .decrypt_raw(&k, nonce.to_vec(), vec![0; 15], Vec::new())
                .await;
            assert_eq!(status(r), Status::InvalidArgument);
            // After a rotation the old version still opens it, until it is retired.
            let rotated = c.rotate(&k).await.unwrap();
            assert_eq!(rotated.current_version, 2);
            let back = c
                .decrypt_raw(&k, nonce.to_vec(), sealed.to_vec(), b"aad".to_vec())
                .await
                .unwrap();
            assert_eq!(&back[..], b"plain");
            c.retire(&k, 2).await.unwrap();
            let r = c
                .decrypt_raw(&k, nonce.to_vec(), sealed.to_vec(), b"aad".to_vec())
                .await;
            assert_eq!(status(r), Status::DecryptFailed);
            // The self-describing format is a different one: it does not open here.
            let framed = c.encrypt(&k, b"plain".to_vec(), Vec::new()).await.unwrap();
            let r = c
                .decrypt_raw(
                    &k,
                    framed[6..18].to_vec(),
                    framed[18..].to_vec(),
                    Vec::new(),
                )
                .await;
            assert_eq!(status(r), Status::DecryptFailed);
        }
        c.generate_spec(spec(KeyType::HmacSha256, "m", None))
            .await
            .unwrap();
        let r = c.encrypt_raw(&label("m"), b"x".to_vec(), Vec::new()).await;
        assert_eq!(status(r), Status::WrongKeyType);
    });
}

#[test]
fn search_by_label_id_and_type() {
    let srv = TestServer::start(&["alice", "bob"]);
    let hsm = srv.connect("alice");
    let c = hsm.client();
    hsm.block_on(async {
        for i in 0..30 {
            let t = [KeyType::P256, KeyType::Ed25519, KeyType::Aes256Gcm][i % 3];
            c.generate_spec(spec(t, &format!("k{i}"), None))
                .await
                .unwrap();
        }
        let by_type = c
            .find(KeyQuery {
                key_type: Some(KeyType::Ed25519),
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(by_type.len(), 10);
        assert!(by_type.iter().all(|k| k.key_type == KeyType::Ed25519));
        let by_label = c
            .find(KeyQuery {
                label: Some("k7".parse().unwrap()),
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(by_label.len(), 1);
        let id = by_label[0].id;
        let by_id = c
            .find(KeyQuery {
                id: Some(id),
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(by_id, by_label);
        // Every field must match.
        let none = c
            .find(KeyQuery {
                id: Some(id),
                key_type: Some(KeyType::Aes256Gcm),
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty(), "k7 is an Ed25519 key");
        // Pages of 4 among the matches: every P-256 key once, in id order.
        let mut seen = Vec::new();
        let mut after = None;
        // Ten P-256 keys: three pages, the last one short. A server that never ends the
        // listing fails here instead of looping.
        for page_no in 0.. {
            assert!(page_no < 4, "more pages than ten keys need: {seen:?}");
            let r = c
                .call(Request::Find(KeyQuery {
                    key_type: Some(KeyType::P256),
                    page: Page {
                        after,
                        limit: Some(4),
                    },
                    ..KeyQuery::default()
                }))
                .await
                .unwrap();
            let Response::Keys(page) = r else {
                panic!("{r:?}")
            };
            assert!(page.len() <= 4);
            after = page.last().map(|k| k.id);
            let last = page.len() < 4;
            seen.extend(page.into_iter().map(|k| k.label.to_string()));
            if last {
                break;
            }
        }
        let want: Vec<String> = (0..30).step_by(3).map(|i| format!("k{i}")).collect();
        assert_eq!(seen, want);
        let r = c
            .call(Request::Find(KeyQuery {
                page: Page {
                    after: None,
                    limit: Some(MAX_PAGE + 1),
                },
                ..KeyQuery::default()
            }))
            .await;
        assert_eq!(status(r), Status::InvalidArgument);
    });
    // Another client's search sees none of them.
    let bob = srv.connect("bob");
    let found = bob
        .block_on(bob.client().find(KeyQuery::default()))
        .unwrap();
    assert!(found.is_empty());
}

#[test]
fn hsmctl_hash_pin() {
    let hash = |input: &[u8]| {
        let mut c = std::process::Command::new(bins::hsmctl());
        c.arg("hash-pin");
        output_with_stdin(&mut c, input, Duration::from_secs(60))
    };
    let phc = ok(&hash(b"1234\n"));
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    let h = PinHash::parse(phc.trim()).unwrap();
    assert!(
        h.verify(b"1234"),
        "the trailing newline is not part of the PIN"
    );
    assert!(!h.verify(b"1234\n"));
    // Fresh salt each time: a second hash of the same PIN (here without a newline) is another
    // valid hash of it, and a different string.
    let again = ok(&hash(b"1234"));
    let h2 = PinHash::parse(again.trim()).unwrap();
    assert!(h2.verify(b"1234"), "{again}");
    assert!(!h2.verify(b"12345"), "{again}");
    assert_ne!(again, phc);
    // An empty PIN is refused (exit 2, a message).
    let o = hash(b"\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("PIN"));
    // Every other command still needs a profile.
    let o = output_within(
        std::process::Command::new(bins::hsmctl()).arg("list"),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--profile"));
}
