//! The post-quantum keys through the rest of the key lifecycle, as the classic ones go: they
//! survive a crash (SIGKILL) and come back from the store the same keys; wrap and unwrap carry
//! them; grants give sign, verify, encapsulate and decapsulate, and nothing more; encapsulated
//! and decapsulated secrets can be session keys; the quota counts them.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_client::BlockingClient;
use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Lifetime, Origin, Status, Usage, UsageSet};
use ferrohsm_test_support::keys::{label, label_of, spec};
use ferrohsm_test_support::{Data, status};

const DSA: [KeyType; 3] = [KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87];
const KEM: [KeyType; 3] = [KeyType::MlKem512, KeyType::MlKem768, KeyType::MlKem1024];

fn hmac(l: &str) -> KeySpec {
    KeySpec {
        exportable: true,
        ..spec(KeyType::HmacSha256, l)
    }
}

/// The secret of an exportable key.
fn secret(c: &BlockingClient, key: &KeyRef) -> Vec<u8> {
    c.run(c.client().export(key)).unwrap().to_vec()
}

#[test]
fn keys_survive_a_crash_and_wrap_and_unwrap_into_the_same_keys() {
    let d = Data::init("alice");
    d.client_setting("alice", "trusted_wrap_keys = [\"w\"]");
    let hsmd = d.start();
    let c = d.connect("alice");
    let a = c.client();
    c.run(a.generate_spec(spec(KeyType::Aes256Gcm, "w")))
        .unwrap();
    let mut made = Vec::new();
    for t in DSA.into_iter().chain(KEM) {
        let l = t.name().to_string();
        c.run(a.generate_spec(KeySpec {
            exportable: true,
            ..spec(t, &l)
        }))
        .unwrap();
        let (_, public) = c.run(a.public_key(&label(&l))).unwrap();
        made.push((t, l, public));
    }
    // Made before the crash: a signature, and a ciphertext to each KEM key.
    let msg = b"before the crash".to_vec();
    let mut before = Vec::new();
    for (t, l, _) in &made {
        let out = if t.is_ml_dsa() {
            c.run(a.sign(&label(l), msg.clone())).unwrap()
        } else {
            let (ct, k) = c
                .run(a.encapsulate(&label(l), hmac(&format!("{l}-s"))))
                .unwrap();
            before.push((l.clone(), secret(&c, &KeyRef::Id(k.id))));
            ct
        };
        before.push((l.clone(), out));
    }
    drop(c);
    hsmd.kill();
    let _hsmd = d.start();
    let c = d.connect("alice");
    let a = c.client();
    for (t, l, public) in &made {
        // The key read back from the store is the same key: same public half, verifies what
        // it signed, decapsulates what was sent to it.
        assert_eq!(&c.run(a.public_key(&label(l))).unwrap().1, public, "{t}");
        let outs: Vec<_> = before
            .iter()
            .filter(|(x, _)| x == l)
            .map(|(_, v)| v)
            .collect();
        if t.is_ml_dsa() {
            c.run(a.verify(&label(l), msg.clone(), outs[0].clone()))
                .unwrap();
        } else {
            let (want, ct) = (outs[0], outs[1]);
            let k = c
                .run(a.decapsulate(&label(l), ct.clone(), hmac(&format!("{l}-d"))))
                .unwrap();
            assert_eq!(&secret(&c, &KeyRef::Id(k.id)), want, "{t} after the crash");
        }
        // Wrapped and unwrapped under another label: the same key again.
        let blob = c.run(a.wrap(&label(l), &label("w"))).unwrap();
        let copy = format!("{l}-copy");
        let info = c
            .run(a.unwrap(&label("w"), blob.clone(), label_of(&copy)))
            .unwrap();
        assert_eq!(info.key_type, *t);
        assert_eq!(info.origin, Origin::Unwrapped);
        assert_eq!(&c.run(a.public_key(&label(&copy))).unwrap().1, public);
        assert_eq!(secret(&c, &label(&copy)), secret(&c, &label(l)), "{t}");
        // A damaged blob is refused, never opened into some other key.
        let mut bad = blob;
        let n = bad.len();
        bad[n - 20] ^= 1;
        let s = status(c.run(a.unwrap(&label("w"), bad, label_of(&format!("{l}-bad")))));
        assert_eq!(s, Status::DecryptFailed, "{t}");
    }
}

#[test]
fn grants_give_use_and_never_management() {
    let d = Data::init("alice,bob");
    let _hsmd = d.start();
    let (ca, cb) = (d.connect("alice"), d.connect("bob"));
    let (a, b) = (ca.client(), cb.client());
    let bob = label_of("bob");
    ca.run(a.generate_spec(spec(KeyType::MlDsa65, "dsa")))
        .unwrap();
    ca.run(a.generate_spec(KeySpec {
        exportable: true,
        ..spec(KeyType::MlKem768, "kem")
    }))
    .unwrap();
    // Nothing before a grant.
    let dsa = label("dsa").with_owner(&label_of("alice"));
    let kem = label("kem").with_owner(&label_of("alice"));
    assert_eq!(
        status(cb.run(b.sign(&dsa, b"m".to_vec()))),
        Status::KeyNotFound
    );
    ca.run(a.grant(&label("dsa"), &bob, UsageSet::of(&[Usage::Sign])))
        .unwrap();
    ca.run(a.grant(&label("kem"), &bob, UsageSet::of(&[Usage::Decapsulate])))
        .unwrap();
    // Bob signs with a context; Alice verifies it with the same context.
    let sig = cb
        .run(b.sign_with_context(&dsa, b"m".to_vec(), b"ctx".to_vec()))
        .unwrap();
    ca.run(a.verify_with_context(&label("dsa"), b"m".to_vec(), sig.clone(), b"ctx".to_vec()))
        .unwrap();
    // Granted sign only: not verify.
    assert_eq!(
        status(cb.run(b.verify(&dsa, b"m".to_vec(), sig))),
        Status::UsageNotPermitted
    );
    // Alice encapsulates to her key; Bob decapsulates into a key of his own, which holds the
    // same secret (his is not exportable: Alice's is, but a grant gives no export; he proves
    // it by use).
    let (ct, mine) = ca.run(a.encapsulate(&label("kem"), hmac("mine"))).unwrap();
    let his = cb
        .run(b.decapsulate(&kem, ct, spec(KeyType::HmacSha256, "his")))
        .unwrap();
    assert_eq!(his.owner.as_str(), "bob");
    assert_eq!(his.origin, Origin::Derived);
    let tag = ca.run(a.mac(&KeyRef::Id(mine.id), b"x".to_vec())).unwrap();
    cb.run(b.mac_verify(&KeyRef::Id(his.id), b"x".to_vec(), tag))
        .unwrap();
    // Granted decapsulate only: not encapsulate; never export, grant or delete.
    assert_eq!(
        status(cb.run(b.encapsulate(&kem, hmac("x")))),
        Status::UsageNotPermitted
    );
    assert_eq!(status(cb.run(b.export(&kem))), Status::UsageNotPermitted);
    assert_eq!(status(cb.run(b.delete(&kem))), Status::UsageNotPermitted);
    // A grant cannot add a usage the key lacks.
    assert_eq!(
        status(ca.run(a.grant(&label("dsa"), &bob, UsageSet::of(&[Usage::Decapsulate])))),
        Status::UsageNotPermitted
    );
    // Revoked: gone.
    ca.run(a.revoke(&label("kem"), &bob)).unwrap();
    let (ct, _) = ca.run(a.encapsulate(&label("kem"), hmac("mine2"))).unwrap();
    assert_eq!(
        status(cb.run(b.decapsulate(&kem, ct, spec(KeyType::HmacSha256, "his2")))),
        Status::KeyNotFound
    );
}

#[test]
fn kem_secrets_can_be_session_keys_and_keys_with_fewer_usages() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    let c = d.connect("alice");
    let a = c.client();
    // An ML-KEM key that may only decapsulate.
    let only = UsageSet::of(&[Usage::Decapsulate]);
    c.run(a.generate_spec(KeySpec {
        usage: Some(only),
        ..spec(KeyType::MlKem1024, "d")
    }))
    .unwrap();
    assert_eq!(
        status(c.run(a.encapsulate(&label("d"), hmac("e")))),
        Status::UsageNotPermitted
    );
    // Usages of other families do not fit.
    assert_eq!(
        status(c.run(a.generate_spec(KeySpec {
            usage: Some(UsageSet::of(&[Usage::Sign])),
            ..spec(KeyType::MlKem768, "s")
        }))),
        Status::InvalidArgument
    );
    assert_eq!(
        status(c.run(a.generate_spec(KeySpec {
            usage: Some(UsageSet::of(&[Usage::Decapsulate])),
            ..spec(KeyType::MlDsa44, "s")
        }))),
        Status::InvalidArgument
    );
    // Session keys from both sides of an encapsulation vanish with the connection.
    c.run(a.generate_spec(spec(KeyType::MlKem768, "k")))
        .unwrap();
    let session = |l: &str| KeySpec {
        session: true,
        ..spec(KeyType::ChaCha20Poly1305, l)
    };
    let (ct, e) = c.run(a.encapsulate(&label("k"), session("e"))).unwrap();
    let dk = c
        .run(a.decapsulate(&label("k"), ct, session("dk")))
        .unwrap();
    assert_eq!(e.lifetime, Lifetime::Session);
    assert_eq!(dk.lifetime, Lifetime::Session);
    let sealed = c
        .run(a.encrypt(&label("e"), b"between sessions".to_vec(), vec![]))
        .unwrap();
    let opened = c.run(a.decrypt(&label("dk"), sealed, vec![])).unwrap();
    assert_eq!(&opened[..], b"between sessions");
    drop(c);
    let c = d.connect("alice");
    assert_eq!(
        status(c.run(c.client().info(&label("e")))),
        Status::KeyNotFound
    );
    assert_eq!(
        status(c.run(c.client().info(&label("dk")))),
        Status::KeyNotFound
    );
}

#[test]
fn kem_keys_are_audited_counted_and_refused_where_they_do_not_fit() {
    let d = Data::init("alice");
    d.set("limits", "max_keys_per_client", "4");
    let _hsmd = d.start();
    let c = d.connect("alice");
    let a = c.client();
    c.run(a.generate_spec(spec(KeyType::MlKem768, "k")))
        .unwrap();
    c.run(a.generate_spec(spec(KeyType::MlDsa44, "s"))).unwrap();
    // Not a key agreement: derive with an ML-KEM key is the wrong type, and so is a KEM
    // operation with an ML-DSA key or a signature with an ML-KEM key.
    let hmac_spec = |l: &str| spec(KeyType::HmacSha256, l);
    assert_eq!(
        status(c.run(a.derive(&label("k"), vec![9; 32], hmac_spec("d")))),
        Status::WrongKeyType
    );
    assert_eq!(
        status(c.run(a.encapsulate(&label("s"), hmac_spec("e")))),
        Status::WrongKeyType
    );
    assert_eq!(
        status(c.run(a.sign(&label("k"), b"m".to_vec()))),
        Status::WrongKeyType
    );
    // The quota counts a KEM's new keys like any other: the third and fourth keys fit, the
    // fifth not, and the refused one leaves no key behind.
    let (ct, _) = c.run(a.encapsulate(&label("k"), hmac_spec("e1"))).unwrap();
    c.run(a.decapsulate(&label("k"), ct.clone(), hmac_spec("e2")))
        .unwrap();
    assert_eq!(
        status(c.run(a.decapsulate(&label("k"), ct, hmac_spec("e3")))),
        Status::QuotaExceeded
    );
    assert_eq!(c.run(a.list()).unwrap().len(), 4);
    // The audit chain names the operations that made keys, with their outcome (a denial
    // reaches the log in the background: wait for it, with a deadline).
    let ops = |d: &Data| -> Vec<(String, String)> {
        let shown = d.admin(&["audit", "show", "--json"], &[]);
        let rows: serde_json::Value =
            serde_json::from_str(&ferrohsm_test_support::ok(&shown)).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter_map(|r| Some((r["op"].as_str()?.into(), r["status"].as_str()?.into())))
            .collect()
    };
    let want = [
        ("encapsulate", "ok"),
        ("decapsulate", "ok"),
        ("decapsulate", "quota_exceeded"),
    ];
    let has_all = |seen: &[(String, String)]| {
        want.iter()
            .all(|(o, s)| seen.iter().any(|(a, b)| a == o && b == s))
    };
    let seen = ferrohsm_test_support::wait::eventually(
        "the KEM operations in the audit log",
        std::time::Duration::from_secs(30),
        || {
            let seen = ops(&d);
            has_all(&seen).then_some(seen)
        },
    );
    assert!(has_all(&seen), "{seen:?}");
    let v = ferrohsm_test_support::ok(&d.admin(&["audit", "verify"], &[]));
    assert!(v.starts_with("audit chain ok: "), "{v}");
}
