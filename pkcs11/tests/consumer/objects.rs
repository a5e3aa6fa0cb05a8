//! Sessions, login, search, attributes, object life cycle and isolation between tokens.

use super::*;

/// The module's delay for the `failures`-th wrong PIN in a row, as pkcs11/src/token.rs
/// promises it: 100 ms, doubling, at most 5 s (and never past `timeout_ms`, which is above
/// the first few in these tests).
fn pin_delay(failures: u32) -> Duration {
    Duration::from_millis(100 << (failures - 1).min(6)).min(Duration::from_secs(5))
}

/// `C_Login` with a wrong PIN: its code and how long the answer took.
fn wrong_pin(s: &Session, wrong: &str) -> (RvError, Duration) {
    let t0 = Instant::now();
    let e = s.login(UserType::User, Some(&pin(wrong))).unwrap_err();
    (rv(e), t0.elapsed())
}

pub(crate) fn sessions_and_login(p11: &Pkcs11, alice: Slot, s: &Session) {
    // Before login: no private object, no key generation.
    assert!(
        s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .expect("find")
            .is_empty()
    );
    let e = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256_OID.to_vec())],
            &[],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::UserNotLoggedIn);
    // Wrong PINs: each refused as such, and each answer held back at least the module's
    // delay for that many failures in a row (pkcs11/src/token.rs `pin_delay`, whose doubling
    // schedule is unit-tested there). Only the lower bound is asserted: the delay is a sleep,
    // so it cannot come early, while the Argon2 check beside it takes what the machine gives.
    // That each answer is slower than the last is `stress_wrong_pins_each_slower_than_the_last`.
    for (n, wrong) in ["0000", "1111", "2222"].into_iter().enumerate() {
        let (r, waited) = wrong_pin(s, wrong);
        assert_eq!(r, RvError::PinIncorrect, "wrong PIN {wrong}");
        let delay = pin_delay(n as u32 + 1);
        assert!(
            waited >= delay,
            "wrong PIN number {} answered after {waited:?}, before its delay {delay:?}",
            n + 1
        );
    }
    assert!(
        p11.get_token_info(alice)
            .expect("info")
            .user_pin_count_low()
    );
    assert_eq!(
        rv(s.login(UserType::So, Some(&pin(PIN))).unwrap_err()),
        RvError::UserTypeInvalid
    );
    s.login(UserType::User, Some(&pin(PIN))).expect("login");
    assert_eq!(
        rv(s.login(UserType::User, Some(&pin(PIN))).unwrap_err()),
        RvError::UserAlreadyLoggedIn
    );
    assert!(
        !p11.get_token_info(alice)
            .expect("info")
            .user_pin_count_low()
    );
    // The login is the application's: a second session is logged in too.
    let other = p11.open_ro_session(alice).expect("session");
    assert_eq!(
        other.get_session_info().expect("info").session_state(),
        cryptoki::session::SessionState::RoUser
    );
    other.close().expect("close");
}

pub(crate) fn search(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle, e1: ObjectHandle) {
    let by_label = s
        .find_objects(&[Attribute::Label(b"p1".to_vec())])
        .expect("find");
    assert_eq!(by_label.len(), 2);
    assert!(by_label.contains(&p1) && by_label.contains(&p1_pub));
    let id = bytes(s, p1, AttributeType::Id);
    assert_eq!(
        id,
        vec![0, 0, 0, 0, 0, 0, 0, 1],
        "hsmd's id, not the template's"
    );
    let by_id = s
        .find_objects(&[
            Attribute::Id(id),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .expect("find");
    assert_eq!(by_id, vec![p1]);
    let eddsa = s
        .find_objects(&[
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .expect("find");
    assert_eq!(eddsa, vec![e1]);
    assert!(
        s.find_objects(&[Attribute::Label(b"nope".to_vec())])
            .expect("find")
            .is_empty()
    );
    assert!(
        s.find_objects(&[Attribute::Label(b"bad label!".to_vec())])
            .expect("find")
            .is_empty()
    );
    let all = s.find_objects(&[]).expect("find");
    assert_eq!(all.len(), 4, "two pairs");
}

pub(crate) fn attributes(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle) {
    assert!(boolean(s, p1, AttributeType::Local));
    assert!(boolean(s, p1, AttributeType::NeverExtractable));
    assert!(boolean(s, p1, AttributeType::AlwaysSensitive));
    assert!(boolean(s, p1, AttributeType::Sensitive));
    assert!(!boolean(s, p1, AttributeType::Extractable));
    assert!(boolean(s, p1, AttributeType::Token));
    assert_eq!(bytes(s, p1, AttributeType::EcParams), P256_OID);
    assert_eq!(bytes(s, p1_pub, AttributeType::EcParams), P256_OID);
    let pt = point(s, p1_pub);
    assert_eq!(pt.len(), 65);
    assert_eq!(pt[0], 0x04, "uncompressed");
    let info = s
        .get_attribute_info(
            p1,
            &[
                AttributeType::Value,
                AttributeType::Modulus,
                AttributeType::Label,
            ],
        )
        .expect("info");
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{:?}", info[0]);
    assert!(
        matches!(info[1], AttributeInfo::TypeInvalid),
        "{:?}",
        info[1]
    );
    assert!(
        matches!(info[2], AttributeInfo::Available(2)),
        "{:?}",
        info[2]
    );
}

pub(crate) fn objects_lifecycle(t: &Token, p11: &Pkcs11, alice: Slot, s: &Session) {
    // A session object lives as long as its session, and never reaches the store.
    let other = p11.open_rw_session(alice).expect("session");
    let (_, k) = pair(&other, false, "temp", false);
    assert!(!boolean(&other, k, AttributeType::Token));
    assert_eq!(
        other
            .find_objects(&[Attribute::Label(b"temp".to_vec())])
            .expect("find")
            .len(),
        2
    );
    let list = t.hsmctl_ok("alice", &["list"]);
    assert!(list.contains("\tp1\t"), "{list}");
    assert!(!list.contains("temp"), "{list}");
    other.close().expect("close");
    assert!(
        s.find_objects(&[Attribute::Label(b"temp".to_vec())])
            .expect("find")
            .is_empty()
    );
    // Read-only sessions make no token objects.
    let ro = p11.open_ro_session(alice).expect("session");
    let e = ro
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256_OID.to_vec()),
            ],
            &[Attribute::Token(true)],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::SessionReadOnly);
    ro.close().expect("close");
    // Attributes never change (C_SetAttributeValue: CKR_ACTION_PROHIBITED), on either half.
    let (gone_pub, gone) = pair(s, false, "gone", true);
    for o in [gone_pub, gone] {
        assert_eq!(
            rv(s.update_attributes(o, &[Attribute::Label(b"x".to_vec())])
                .unwrap_err()),
            RvError::ActionProhibited
        );
        assert_eq!(bytes(s, o, AttributeType::Label), b"gone");
    }
    // Destroying: the public half alone is refused; the private half deletes the key, and
    // both objects are gone.
    assert_eq!(
        rv(s.destroy_object(gone_pub).unwrap_err()),
        RvError::ActionProhibited
    );
    assert!(t.hsmctl_ok("alice", &["list"]).contains("\tgone\t"));
    s.destroy_object(gone).expect("destroy");
    let list = t.hsmctl_ok("alice", &["list"]);
    assert!(!list.contains("gone"), "{list}");
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, gone, &[1; 32]).unwrap_err()),
        RvError::KeyHandleInvalid
    );
    assert_eq!(
        rv(s.get_attributes(gone_pub, &[AttributeType::Label])
            .unwrap_err()),
        RvError::ObjectHandleInvalid
    );
    assert!(
        s.find_objects(&[Attribute::Label(b"gone".to_vec())])
            .expect("find")
            .is_empty()
    );
}

/// C_Logout: the login ends for every session of the application, objects that need it
/// become unusable, each with its exact code, public ones stay usable; a new login brings
/// the private ones back.
pub(crate) fn logout(p11: &Pkcs11, alice: Slot, s: &Session) {
    let private_key = |s: &Session, label: &[u8], class| {
        s.find_objects(&[Attribute::Label(label.to_vec()), Attribute::Class(class)])
            .expect("find")
    };
    let p1 = private_key(s, b"p1", ObjectClass::PRIVATE_KEY);
    let p1_pub = private_key(s, b"p1", ObjectClass::PUBLIC_KEY);
    let a1 = private_key(s, b"a1", ObjectClass::SECRET_KEY);
    assert_eq!((p1.len(), p1_pub.len(), a1.len()), (1, 1, 1));
    let (p1, p1_pub, a1) = (p1[0], p1_pub[0], a1[0]);
    let digest = sha256(b"before the logout");
    let sig = s.sign(&Mechanism::Ecdsa, p1, &digest).expect("sign");
    let other = p11.open_ro_session(alice).expect("session");
    assert_eq!(
        other.get_session_info().expect("info").session_state(),
        cryptoki::session::SessionState::RoUser
    );

    s.logout().expect("logout");
    // Every session of the application is logged out, not only the one that asked.
    assert_eq!(
        s.get_session_info().expect("info").session_state(),
        cryptoki::session::SessionState::RwPublic
    );
    assert_eq!(
        other.get_session_info().expect("info").session_state(),
        cryptoki::session::SessionState::RoPublic
    );
    for sess in [s, &other] {
        assert_eq!(
            rv(sess.sign(&Mechanism::Ecdsa, p1, &digest).unwrap_err()),
            RvError::UserNotLoggedIn
        );
    }
    let mut iv = [0u8; 12];
    assert_eq!(
        rv(s.encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into()).expect("gcm")),
            a1,
            b"x"
        )
        .unwrap_err()),
        RvError::UserNotLoggedIn
    );
    assert_eq!(
        rv(s.get_attributes(p1, &[AttributeType::Label]).unwrap_err()),
        RvError::ObjectHandleInvalid
    );
    assert_eq!(
        rv(s.destroy_object(p1).unwrap_err()),
        RvError::UserNotLoggedIn
    );
    assert_eq!(
        rv(s.generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into())]
        )
        .unwrap_err()),
        RvError::UserNotLoggedIn
    );
    // Searches find only public objects.
    assert_eq!(
        s.find_objects(&[Attribute::Label(b"p1".to_vec())])
            .expect("find"),
        vec![p1_pub]
    );
    assert!(
        s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .expect("find")
            .is_empty()
    );
    // The public half still verifies.
    s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig)
        .expect("verify without a login");
    // Logged out already.
    assert_eq!(rv(s.logout().unwrap_err()), RvError::UserNotLoggedIn);
    assert_eq!(rv(other.logout().unwrap_err()), RvError::UserNotLoggedIn);
    other.close().expect("close");

    // A new login: the private key is found and signs again.
    s.login(UserType::User, Some(&pin(PIN))).expect("login");
    let again = private_key(s, b"p1", ObjectClass::PRIVATE_KEY);
    assert_eq!(again.len(), 1);
    s.sign(&Mechanism::Ecdsa, again[0], &digest)
        .expect("signs after a new login");
}

pub(crate) fn isolation(t: &Token, p11: &Pkcs11, bob: Slot) {
    let s = p11.open_rw_session(bob).expect("bob's session");
    assert!(
        s.find_objects(&[]).expect("find").is_empty(),
        "bob sees none of alice's keys"
    );
    t.hsmctl_ok(
        "alice",
        &["grant", "p1", "--to", "bob", "--ops", "sign,verify"],
    );
    let found = s
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(bytes(&s, found[0], AttributeType::Label), b"alice:p1");
    let id = bytes(&s, found[0], AttributeType::Id);
    assert!(
        id[0] & 0x80 != 0,
        "a granted key's id never looks like one of bob's own"
    );
    let digest = sha256(b"granted");
    let sig = s
        .sign(&Mechanism::Ecdsa, found[0], &digest)
        .expect("sign through the grant");
    assert_eq!(sig.len(), 64);
    assert_eq!(
        rv(s.destroy_object(found[0]).unwrap_err()),
        RvError::ActionProhibited
    );
    // bob's slot goes over shared memory: his own key, and a fork with a live shm session.
    let (b_pub, b) = pair(&s, false, "b1", true);
    super::faults::fork(&s, b, b_pub);
    s.close().expect("close");
}

/// Each wrong PIN in a row is answered more slowly than the one before, by about the
/// module's added delay (100 ms, then 200 ms): medians over many rounds, each round three
/// wrong PINs then the right one (which resets the count), with half the expected gap as the
/// band, so a busy machine's Argon2 time does not decide it.
#[test]
#[ignore = "stress: about 12 s of timed logins"]
fn stress_wrong_pins_each_slower_than_the_last() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|e| e.into_inner());
    let _finalize = Finalize;
    let t = Token::start();
    let p11 = load(&t);
    let alice = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_ro_session(alice).expect("session");
    const ROUNDS: usize = 15;
    let mut samples = [const { Vec::new() }; 3];
    for _ in 0..ROUNDS {
        for (n, wrong) in ["0000", "1111", "2222"].into_iter().enumerate() {
            let (r, waited) = wrong_pin(&s, wrong);
            assert_eq!(r, RvError::PinIncorrect);
            samples[n].push(waited);
        }
        s.login(UserType::User, Some(&pin(PIN))).expect("login");
        s.logout().expect("logout");
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let m: Vec<Duration> = samples.iter_mut().map(median).collect();
    for n in 1..3 {
        let gap = pin_delay(n as u32 + 1) - pin_delay(n as u32);
        assert!(
            m[n] >= m[n - 1] + gap / 2,
            "wrong PIN {} (median {:?}) is not {gap:?} slower than wrong PIN {} (median {:?}); \
             medians {m:?}",
            n + 1,
            m[n],
            n,
            m[n - 1]
        );
    }
    drop(s);
    p11.finalize().expect("finalize");
}
