//! The module through a real PKCS#11 consumer, the Rust `cryptoki` crate, against a real
//! hsmd: sessions, login, search, attributes, every mechanism, bad input, many threads, a
//! fork, and hsmd stopped mid-session.
//!
//! One test function: a process loads and initializes a PKCS#11 module once.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]
#![allow(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod crypto;
mod faults;
mod objects;
mod raw;

use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use support::{PIN, Token};

const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

fn pin(p: &str) -> AuthPin {
    AuthPin::from(p)
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A P-256 or Ed25519 pair on the token; (public, private).
fn pair(s: &Session, ed: bool, label: &str, token: bool) -> (ObjectHandle, ObjectHandle) {
    let (mech, params) = if ed {
        (
            Mechanism::EccEdwardsKeyPairGen,
            b"\x13\x0cedwards25519".to_vec(),
        )
    } else {
        (Mechanism::EccKeyPairGen, P256_OID.to_vec())
    };
    s.generate_key_pair(
        &mech,
        &[
            Attribute::Token(token),
            Attribute::EcParams(params),
            Attribute::Verify(true),
            Attribute::Label(label.into()),
            // Ignored: hsmd assigns ids.
            Attribute::Id(vec![0xaa; 8]),
        ],
        &[
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Label(label.into()),
        ],
    )
    .expect("key pair")
}

fn bytes(s: &Session, o: ObjectHandle, a: AttributeType) -> Vec<u8> {
    let got = s.get_attributes(o, &[a]).expect("attribute");
    match got.into_iter().next() {
        Some(
            Attribute::EcPoint(v) | Attribute::EcParams(v) | Attribute::Id(v) | Attribute::Label(v),
        ) => v,
        other => panic!("{a:?}: {other:?}"),
    }
}

fn boolean(s: &Session, o: ObjectHandle, a: AttributeType) -> bool {
    let got = s.get_attributes(o, &[a]).expect("attribute");
    match got.into_iter().next() {
        Some(
            Attribute::Local(v)
            | Attribute::NeverExtractable(v)
            | Attribute::AlwaysSensitive(v)
            | Attribute::Sensitive(v)
            | Attribute::Extractable(v)
            | Attribute::Token(v)
            | Attribute::Sign(v),
        ) => v,
        other => panic!("{a:?}: {other:?}"),
    }
}

/// The raw point inside CKA_EC_POINT's OCTET STRING.
fn point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    let v = bytes(s, public, AttributeType::EcPoint);
    assert_eq!(v[0], 0x04, "an OCTET STRING");
    assert_eq!(v[1] as usize, v.len() - 2);
    v[2..].to_vec()
}

#[test]
fn the_module_through_cryptoki() {
    let mut t = Token::start_with_timeout(1500);
    // SAFETY: this binary's only test sets the variable before any thread of its own reads
    // the environment (the module reads it in C_Initialize, below).
    unsafe { std::env::set_var("FERROHSM_PKCS11_CONFIG", &t.config) };
    let p11 = Pkcs11::new(support::module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialize");
    assert_eq!(
        rv(p11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap_err()),
        RvError::CryptokiAlreadyInitialized
    );
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 2);
    let (alice, bob) = (slots[0], slots[1]);
    let info = p11.get_token_info(alice).expect("token info");
    assert_eq!(info.label(), "alice");
    assert!(info.login_required());
    assert!(
        !p11.get_token_info(bob)
            .expect("token info")
            .login_required()
    );

    let s = p11.open_rw_session(alice).expect("session");
    objects::sessions_and_login(&p11, alice, &s);
    let (p1_pub, p1) = pair(&s, false, "p1", true);
    let (e1_pub, e1) = pair(&s, true, "e1", true);
    objects::search(&s, p1, p1_pub, e1);
    objects::attributes(&s, p1, p1_pub);
    raw::batch_attributes(&s, p1);
    raw::raw_abi(&s, p1);
    raw::interfaces(&s, p1);
    raw::chacha_raw(&s);
    crypto::signatures(&s, p1, p1_pub, e1, e1_pub);
    crypto::symmetric(&t, &s);
    crypto::digests_and_random(&s);
    objects::objects_lifecycle(&t, &p11, alice, &s);
    crypto::bad_input(&p11, alice, &s, p1);
    faults::threads(&p11, alice, p1, p1_pub);
    faults::fork(&s, p1, p1_pub);
    objects::isolation(&t, &p11, bob);
    let bob_s = p11.open_ro_session(bob).expect("bob's session");
    let b1 = bob_s
        .find_objects(&[
            Attribute::Label(b"b1".to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .expect("find")[0];
    faults::hsmd_down(&mut t, &[(&s, p1), (&bob_s, b1)]);
    p11.finalize().expect("finalize");
}
