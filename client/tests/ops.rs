//! Every operation through the client library against a real server on 127.0.0.1:0.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrohsm_client::ClientError;
use ferrohsm_proto::{DigestAlg, KeyRef, KeyType, Lifetime, Request, Status, Usage, UsageSet};
use ferrohsm_test_support::peer::{Ending, status_of};
use ferrohsm_test_support::{TestServer, label, spec, status, wait};

#[test]
fn every_operation_works_and_fails_cleanly() {
    let srv = TestServer::start(&["alice", "bob"]);
    let hsm = srv.connect("alice");
    let c = hsm.client();
    hsm.ping().unwrap();
    hsm.block_on(async {
        // random, digest
        assert_eq!(c.random(32).await.unwrap().len(), 32);
        assert_ne!(c.random(32).await.unwrap(), c.random(32).await.unwrap());
        assert_eq!(status(c.random(0).await), Status::InvalidArgument);
        assert_eq!(status(c.random(65537).await), Status::InvalidArgument);
        let d = c.digest(DigestAlg::Sha256, b"abc".to_vec()).await.unwrap();
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(c.digest(DigestAlg::Sha512, vec![]).await.unwrap().len(), 64);

        // generate + info for every type, default usages
        for (i, t) in KeyType::ALL.into_iter().enumerate() {
            let k = c.generate_spec(spec(t, &format!("k{i}"))).await.unwrap();
            assert_eq!(k.key_type, t);
            assert_eq!(k.usage, t.allowed_usage());
            assert_eq!(k.lifetime, Lifetime::Persistent);
            assert!(!k.exportable);
            assert_eq!(c.info(&KeyRef::Id(k.id)).await.unwrap(), k);
            let pk = c.public_key(&KeyRef::Id(k.id)).await;
            if t.is_asymmetric() {
                assert!(!pk.unwrap().1.is_empty(), "{t:?}");
            } else {
                assert_eq!(status(pk), Status::WrongKeyType, "{t:?}");
            }
        }
        assert_eq!(
            status(c.generate_spec(spec(KeyType::Ed25519, "k0")).await),
            Status::LabelInUse
        );
        assert_eq!(c.list().await.unwrap().len(), KeyType::ALL.len());

        // sign / verify
        for l in ["k0", "k1"] {
            let sig = c.sign(&label(l), b"msg".to_vec()).await.unwrap();
            c.verify(&label(l), b"msg".to_vec(), sig.clone())
                .await
                .unwrap();
            assert_eq!(
                status(c.verify(&label(l), b"msG".to_vec(), sig).await),
                Status::BadSignature
            );
        }
        assert_eq!(c.sign(&label("k0"), vec![]).await.unwrap().len(), 64);

        // AEAD with and without AAD; tamper, wrong AAD, wrong key all fail to authenticate
        for l in ["k3", "k4"] {
            let ct = c
                .encrypt(&label(l), b"secret".to_vec(), b"ctx".to_vec())
                .await
                .unwrap();
            assert_eq!(
                &*c.decrypt(&label(l), ct.clone(), b"ctx".to_vec())
                    .await
                    .unwrap(),
                b"secret"
            );
            assert_eq!(
                status(c.decrypt(&label(l), ct.clone(), vec![]).await),
                Status::DecryptFailed
            );
            let mut bad = ct.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(
                status(c.decrypt(&label(l), bad, b"ctx".to_vec()).await),
                Status::DecryptFailed
            );
            let other = if l == "k3" { "k4" } else { "k3" };
            assert_eq!(
                status(c.decrypt(&label(other), ct, b"ctx".to_vec()).await),
                Status::DecryptFailed
            );
            let ct = c.encrypt(&label(l), vec![], vec![]).await.unwrap();
            assert!(c.decrypt(&label(l), ct, vec![]).await.unwrap().is_empty());
        }

        // MAC
        let tag = c.mac(&label("k5"), b"data".to_vec()).await.unwrap();
        c.mac_verify(&label("k5"), b"data".to_vec(), tag.clone())
            .await
            .unwrap();
        assert_eq!(
            status(c.mac_verify(&label("k5"), b"dat".to_vec(), tag).await),
            Status::BadMac
        );

        // wrong key types
        assert_eq!(
            status(c.sign(&label("k5"), vec![]).await),
            Status::WrongKeyType
        );
        assert_eq!(
            status(c.encrypt(&label("k0"), vec![], vec![]).await),
            Status::WrongKeyType
        );
        assert_eq!(
            status(c.public_key(&label("k3")).await),
            Status::WrongKeyType
        );

        // export only when exportable; delete
        assert_eq!(status(c.export(&label("k3")).await), Status::NotExportable);
        let mut s = spec(KeyType::Aes256Gcm, "exp");
        s.exportable = true;
        c.generate_spec(s).await.unwrap();
        assert_eq!(c.export(&label("exp")).await.unwrap().len(), 32);
        c.delete(&label("exp")).await.unwrap();
        assert_eq!(status(c.info(&label("exp")).await), Status::KeyNotFound);
        assert_eq!(status(c.delete(&label("exp")).await), Status::KeyNotFound);
    });
}

#[test]
fn derive_agrees_across_clients_and_secret_stays_inside() {
    let srv = TestServer::start(&["alice", "bob"]);
    let (a, b) = (srv.connect("alice"), srv.connect("bob"));
    let mut out = Vec::new();
    // The bases are exportable: a derived key is never more exportable than its base.
    for me in [&a, &b] {
        let mut s = spec(KeyType::X25519, "x");
        s.exportable = true;
        me.block_on(me.client().generate_spec(s)).unwrap();
    }
    for (me, other) in [(&a, &b), (&b, &a)] {
        let (_, peer) = other
            .block_on(other.client().public_key(&label("x")))
            .unwrap();
        let mut s = spec(KeyType::HmacSha256, "shared");
        s.exportable = true;
        let k = me
            .block_on(me.client().derive(&label("x"), peer, s))
            .unwrap();
        assert_eq!(k.key_type, KeyType::HmacSha256);
        out.push(me.block_on(me.client().export(&label("shared"))).unwrap());
    }
    assert_eq!(out[0], out[1], "both sides derive the same key");
    let c = a.client();
    // Exportability cannot be laundered through derive: from a non-exportable base, an
    // exportable derived key is refused (the same base and peer give the same key).
    a.generate(&"locked".parse().unwrap(), KeyType::X25519)
        .unwrap();
    let (_, peer) = b.block_on(b.client().public_key(&label("x"))).unwrap();
    let mut s = spec(KeyType::HmacSha256, "leak");
    s.exportable = true;
    assert_eq!(
        status(a.block_on(c.derive(&label("locked"), peer.clone(), s))),
        Status::NotExportable
    );
    a.block_on(c.derive(&label("locked"), peer, spec(KeyType::HmacSha256, "kept")))
        .unwrap();
    assert_eq!(
        status(a.block_on(c.export(&label("kept")))),
        Status::NotExportable
    );
    assert_eq!(
        status(a.block_on(c.derive(&label("x"), vec![0; 32], spec(KeyType::Aes256Gcm, "lo")))),
        Status::InvalidArgument
    );
    assert_eq!(
        status(a.block_on(c.derive(&label("x"), vec![1; 5], spec(KeyType::Aes256Gcm, "sh")))),
        Status::InvalidArgument
    );
    assert_eq!(
        status(a.block_on(c.derive(&label("x"), vec![9; 32], spec(KeyType::Ed25519, "ed")))),
        Status::InvalidArgument
    );
    assert_eq!(
        status(a.block_on(c.derive(&label("shared"), vec![9; 32], spec(KeyType::Aes256Gcm, "w")))),
        Status::WrongKeyType
    );
}

#[test]
fn usage_flags_are_enforced() {
    let srv = TestServer::start(&["alice"]);
    let hsm = srv.connect("alice");
    let c = hsm.client();
    hsm.block_on(async {
        let mut s = spec(KeyType::Ed25519, "vonly");
        s.usage = Some(UsageSet::of(&[Usage::Verify]));
        let k = c.generate_spec(s).await.unwrap();
        assert_eq!(k.usage.names(), ["verify"]);
        assert_eq!(
            status(c.sign(&label("vonly"), b"m".to_vec()).await),
            Status::UsageNotPermitted
        );
        let mut s = spec(KeyType::ChaCha20Poly1305, "donly");
        s.usage = Some(UsageSet::of(&[Usage::Decrypt]));
        c.generate_spec(s).await.unwrap();
        assert_eq!(
            status(c.encrypt(&label("donly"), vec![1], vec![]).await),
            Status::UsageNotPermitted
        );
        let mut s = spec(KeyType::Aes256Gcm, "bad");
        s.usage = Some(UsageSet::of(&[Usage::Sign]));
        assert_eq!(status(c.generate_spec(s).await), Status::InvalidArgument);
        let mut s = spec(KeyType::X25519, "x");
        s.usage = Some(UsageSet::of(&[]));
        assert_eq!(status(c.generate_spec(s).await), Status::InvalidArgument);
    });
}

#[test]
fn clients_cannot_reach_each_others_keys() {
    let srv = TestServer::start(&["alice", "bob"]);
    let (a, b) = (srv.connect("alice"), srv.connect("bob"));
    let mut s = spec(KeyType::Ed25519, "alice-key");
    s.exportable = true;
    let k = a.block_on(a.client().generate_spec(s)).unwrap();
    let bc = b.client();
    assert!(b.list().unwrap().is_empty());
    for key in [KeyRef::Id(k.id), label("alice-key")] {
        b.block_on(async {
            assert_eq!(status(bc.info(&key).await), Status::KeyNotFound);
            assert_eq!(
                status(bc.sign(&key, b"m".to_vec()).await),
                Status::KeyNotFound
            );
            assert_eq!(status(bc.export(&key).await), Status::KeyNotFound);
            assert_eq!(status(bc.public_key(&key).await), Status::KeyNotFound);
            assert_eq!(status(bc.delete(&key).await), Status::KeyNotFound);
        });
    }
    // Exactly the answer for a key that does not exist anywhere: no existence oracle.
    let theirs = b
        .block_on(bc.info(&KeyRef::Id(k.id)))
        .unwrap_err()
        .to_string();
    let nobody = b
        .block_on(bc.info(&KeyRef::Id(k.id + 1000)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        theirs.replace(&k.id.to_string(), "N"),
        nobody.replace(&(k.id + 1000).to_string(), "N")
    );
    // Bob may use the same label and gets his own id space.
    let bk = b
        .generate(&"alice-key".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    assert_eq!(bk.id, k.id, "ids are per client");
    // Alice's key survived every attempt.
    let sig = a.sign(&KeyRef::Id(k.id), b"m").unwrap();
    a.verify(&KeyRef::Id(k.id), b"m", &sig).unwrap();
    assert_eq!(
        status(b.verify(&KeyRef::Id(bk.id), b"m", &sig)),
        Status::BadSignature
    );
}

#[test]
fn session_keys_vanish_with_their_connection() {
    let srv = TestServer::start(&["alice"]);
    let keeper = srv.connect("alice");
    {
        let short = srv.connect("alice");
        let mut s = spec(KeyType::HmacSha256, "temp");
        s.session = true;
        let k = short.block_on(short.client().generate_spec(s)).unwrap();
        assert_eq!(k.lifetime, Lifetime::Session);
        // Only its own connection sees a session key; the label stays taken for the client.
        assert_eq!(
            keeper
                .block_on(keeper.client().info(&label("temp")))
                .unwrap_err()
                .status(),
            Some(Status::KeyNotFound)
        );
        assert_eq!(
            keeper
                .generate(&"temp".parse().unwrap(), KeyType::HmacSha256)
                .unwrap_err()
                .status(),
            Some(Status::LabelInUse)
        );
    }
    // The session ends when the server sees the connection go: wait for that, then the
    // label is free. Any answer but "still in use" fails at once.
    wait::until(
        "the session key to go with its connection",
        Duration::from_secs(30),
        || match keeper.generate(&"temp".parse().unwrap(), KeyType::HmacSha256) {
            Ok(_) => true,
            Err(e) if e.status() == Some(Status::LabelInUse) => false,
            Err(e) => panic!("generate failed: {e}"),
        },
    );
    // The label is free again for a persistent key: it is one now.
    assert_eq!(
        keeper
            .block_on(keeper.client().info(&label("temp")))
            .unwrap()
            .lifetime,
        Lifetime::Persistent
    );
}

#[test]
fn pipelined_requests_all_answer_correctly() {
    let srv = TestServer::start_with(&["alice"], |c| c.window = 8);
    let hsm = srv.connect("alice");
    assert_eq!(hsm.client().welcome().window, 8);
    hsm.generate(&"s".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    // Mixed slow (P-256 keygen) and fast (ping, sign) requests, far more than the window.
    let mut reqs = Vec::new();
    for i in 0..300u32 {
        reqs.push(match i % 3 {
            0 => Request::Sign {
                key: label("s"),
                data: i.to_le_bytes().to_vec(),
            },
            1 => Request::Ping,
            _ => Request::Random { len: i + 1 },
        });
    }
    let out = hsm.pipeline(reqs);
    assert_eq!(out.len(), 300);
    for (i, r) in out.into_iter().enumerate() {
        let i = i as u32;
        match (i % 3, r.unwrap()) {
            (0, ferrohsm_proto::Response::Bytes(sig)) => {
                hsm.verify(&label("s"), &i.to_le_bytes(), &sig).unwrap()
            }
            (1, ferrohsm_proto::Response::Done) => {}
            (2, ferrohsm_proto::Response::Bytes(b)) => assert_eq!(b.len() as u32, i + 1),
            (_, other) => panic!("request {i} got {other:?}"),
        }
    }
}

#[test]
fn oversized_request_is_refused_locally_and_by_server() {
    let srv = TestServer::start_with(&["alice"], |c| c.max_body = 4096);
    let hsm = srv.connect("alice");
    let e = hsm
        .block_on(hsm.client().digest(DigestAlg::Sha256, vec![0; 8192]))
        .unwrap_err();
    assert!(matches!(e, ClientError::Local(_)), "{e:?}");
    assert!(e.to_string().contains("4096"), "{e}");
    hsm.ping().unwrap();
    // A peer that sends it anyway, logged in: the server answers body_too_large and closes.
    let mut raw = srv.raw();
    raw.login(&srv.profile("alice").identity().unwrap());
    let big = Request::Digest {
        alg: DigestAlg::Sha256,
        data: vec![0; 8192],
    };
    assert!(raw.send(&big.to_frame(7)));
    let f = raw
        .frame(Duration::from_secs(10))
        .expect("an answer to the oversized frame");
    assert_eq!(status_of(&f), Status::BodyTooLarge);
    assert_eq!(raw.ending(Duration::from_secs(10)), Ending::Closed);
    // Other connections are unaffected.
    hsm.ping().unwrap();
}

#[test]
fn shutdown_finishes_requests_already_in_flight() {
    // P-256 verifications: small frames the session reads at once, slow work for the one
    // crypto worker, so many are still queued when the shutdown begins.
    const JOBS: u64 = 500;
    const PING: u64 = 1000;
    let mut srv = TestServer::start_with(&["alice"], |c| {
        c.window = 512;
        c.workers = 1;
    });
    let hsm = srv.connect("alice");
    let key = KeyRef::Id(
        hsm.generate(&"p".parse().unwrap(), KeyType::P256)
            .unwrap()
            .id,
    );
    let signature = hsm.sign(&key, b"in flight").unwrap();
    let done = |f: &ferrohsm_proto::Frame, what: &str| {
        assert!(!f.header.is_error(), "{what}: {}", status_of(f));
        assert_eq!(
            ferrohsm_proto::Response::decode(f.header.opcode, &f.body).unwrap(),
            ferrohsm_proto::Response::Done,
            "{what}"
        );
    };
    // One session by hand, so every answer is seen in the order hsmd wrote it.
    let mut raw = srv.raw();
    raw.login(&srv.profile("alice").identity().unwrap());
    let wait = Duration::from_secs(30);
    let mut jobs = Vec::new();
    for id in 1..=JOBS {
        let req = Request::Verify {
            key: key.clone(),
            data: b"in flight".to_vec(),
            signature: signature.clone(),
        };
        jobs.extend(req.to_frame(id).encode());
    }
    // A ping after the jobs is answered by the session itself, once it has read (taken in)
    // every one of them.
    jobs.extend(Request::Ping.to_frame(PING).encode());
    assert!(raw.send_bytes(&jobs));
    let mut answered = std::collections::BTreeSet::new();
    let mut job = |f: &ferrohsm_proto::Frame| {
        let id = f.header.request_id;
        assert!((1..=JOBS).contains(&id), "an answer to no request: {f:?}");
        done(f, &format!("verification {id}"));
        assert!(answered.insert(id), "verification {id} answered twice");
        answered.len()
    };
    let mut at_ping = 0;
    loop {
        let f = raw.frame(wait).expect("the ping's answer");
        if f.header.request_id == PING {
            done(&f, "the ping");
            break;
        }
        at_ping = job(&f);
    }
    // Shutdown begins. Probes (pings) follow, one at a time, until one is refused
    // `shutting_down`: from then on hsmd was shutting down, so a job answered after that
    // refusal was still in flight when the shutdown began.
    let handle = srv.handle.take().unwrap();
    let stopper = std::thread::spawn(move || handle.shutdown());
    let mut probe = PING + 1;
    assert!(raw.send(&Request::Ping.to_frame(probe)));
    let mut refused = false;
    let mut after_refusal = 0;
    let mut total = at_ping;
    while total < JOBS as usize || !refused {
        let f = raw.frame(wait).unwrap_or_else(|| {
            panic!("the connection ended with {total} of {JOBS} verifications answered")
        });
        if f.header.request_id == probe {
            assert!(!refused, "a probe after the refusal: {f:?}");
            if f.header.is_error() {
                assert_eq!(status_of(&f), Status::ShuttingDown, "probe {probe}");
                refused = true;
            } else {
                done(&f, &format!("probe {probe}, before the shutdown"));
                probe += 1;
                assert!(raw.send(&Request::Ping.to_frame(probe)));
            }
            continue;
        }
        total = job(&f);
        if refused {
            after_refusal += 1;
        }
    }
    assert!(
        after_refusal > 0,
        "every verification was answered before hsmd refused new work ({at_ping} of {JOBS} \
         were answered when the ping came back): none was shown in flight during the shutdown"
    );
    // Every request read before the shutdown was answered, and correctly; then hsmd closes
    // the connection.
    assert_eq!(raw.ending(wait), Ending::Closed);
    stopper.join().unwrap().unwrap();
}
