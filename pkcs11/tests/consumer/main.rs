//! The module through a real PKCS#11 consumer, the Rust `cryptoki` crate, against a real
//! hsmd: sessions, login and logout, search, attributes, the mechanism list, every mechanism
//! single- and multi-part, bad input, many threads, a fork, hsmd stopped mid-session, and the
//! post-quantum keys with the 3.2 KEM functions (`pq.rs`, `kem.rs`).
//!
//! One test function for the whole suite: a process loads and initializes a PKCS#11 module
//! once at a time (a test that needs its own takes [`ONE_MODULE`]).
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]
#![allow(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod crypto;
mod faults;
mod kem;
mod mechanisms;
mod multipart;
mod objects;
mod pq;
mod raw;

use std::time::{Duration, Instant};

use ferrohsm_test_support::bins;

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
            | Attribute::Sign(v)
            | Attribute::Encapsulate(v)
            | Attribute::Decapsulate(v),
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

/// Held by each test for as long as it has the module initialized (one per process).
static ONE_MODULE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Finalizes the module when dropped, so a failed test leaves it uninitialized for the next
/// one (after a test's own C_Finalize this call is a harmless CKR_CRYPTOKI_NOT_INITIALIZED).
struct Finalize;

impl Drop for Finalize {
    fn drop(&mut self) {
        // SAFETY: C_Finalize with the null argument PKCS#11 requires.
        let _ = unsafe { raw::functions().C_Finalize.unwrap()(raw::null()) };
    }
}

/// The module of this build, initialized with `t`'s configuration.
fn load(t: &Token) -> Pkcs11 {
    // SAFETY: set while ONE_MODULE is held, before the module reads it in C_Initialize;
    // no other thread of these tests reads the environment meanwhile.
    unsafe { std::env::set_var("FERROHSM_PKCS11_CONFIG", &t.config) };
    let p11 = Pkcs11::new(bins::pkcs11_module()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialize");
    p11
}

#[test]
fn the_module_through_cryptoki() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|e| e.into_inner());
    let _finalize = Finalize;
    let mut t = Token::start_with_timeout(1500);
    let p11 = load(&t);
    assert_eq!(
        rv(p11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap_err()),
        RvError::CryptokiAlreadyInitialized
    );
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 2);
    let (alice, bob) = (slots[0], slots[1]);
    mechanisms::list_and_info(&[alice, bob]);
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
    multipart::verify(&s, p1, p1_pub, e1, e1_pub);
    multipart::decrypt(&t, &s);
    multipart::digest(&s);
    multipart::hmac(&t, &s);
    objects::objects_lifecycle(&t, &p11, alice, &s);
    crypto::bad_input(&p11, alice, &s, p1);
    faults::threads(&p11, alice, p1, p1_pub);
    faults::fork(&s, p1, p1_pub);
    objects::isolation(&t, &p11, bob);
    let bob_s = p11.open_ro_session(bob).expect("bob's session");
    let find_b1 = |class| {
        let found = bob_s
            .find_objects(&[Attribute::Label(b"b1".to_vec()), Attribute::Class(class)])
            .expect("find");
        assert_eq!(found.len(), 1, "one b1 of class {class:?}");
        found[0]
    };
    let (b1, b1_pub) = (
        find_b1(ObjectClass::PRIVATE_KEY),
        find_b1(ObjectClass::PUBLIC_KEY),
    );
    faults::hsmd_down(&mut t, &[(&s, p1, p1_pub), (&bob_s, b1, b1_pub)]);
    objects::logout(&p11, alice, &s);
    p11.finalize().expect("finalize");
}

/// PKCS#11's length convention: an `*Update` called with a NULL output only says how long
/// the output would be. The cryptoki crate asks that way before every `C_EncryptUpdate` and
/// `C_DecryptUpdate`; the module must take each part once, on the call with a buffer.
#[test]
fn multi_part_aead_through_cryptoki_takes_each_part_once() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|e| e.into_inner());
    let _finalize = Finalize;
    let t = Token::start();
    let p11 = load(&t);
    // bob's token: no PIN.
    let bob = p11.get_slots_with_token().expect("slots")[1];
    let s = p11.open_rw_session(bob).expect("session");
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"parts".to_vec()),
                // Exportable, so the ciphertext is also checked outside the token.
                Attribute::Extractable(true),
            ],
        )
        .expect("aes key");
    let plain = b"fed to the token in two parts".to_vec();
    let mut iv = [0u8; 12];
    let ct = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into()).expect("gcm")),
            key,
            &plain,
        )
        .expect("encrypt");
    let mut iv2 = iv;
    s.decrypt_init(
        &Mechanism::AesGcm(GcmParams::new(&mut iv2, b"", 128.into()).expect("gcm")),
        key,
    )
    .expect("init");
    let mut got = s.decrypt_update(&ct[..5]).expect("update");
    got.extend(s.decrypt_update(&ct[5..]).expect("update"));
    got.extend(s.decrypt_final().expect("final"));
    assert_eq!(got, plain);
    // Sealed in two parts: hsmd picks the nonce, which the final writes into the IV buffer
    // (kept alive with the mechanism until then).
    let mut nonce = [0u8; 12];
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut nonce, b"", 128.into()).expect("gcm"));
    s.encrypt_init(&gcm, key).expect("init");
    let mut sealed = s.encrypt_update(&plain[..5]).expect("update");
    sealed.extend(s.encrypt_update(&plain[5..]).expect("update"));
    sealed.extend(s.encrypt_final().expect("final"));
    drop(gcm);
    assert_ne!(nonce, [0u8; 12], "hsmd's nonce came back in the IV buffer");
    assert_eq!(sealed.len(), plain.len() + 16, "each part sealed once");
    // It opens to the plaintext: in the token, and outside it with the exported key.
    let mut iv3 = nonce;
    let opened = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv3, b"", 128.into()).expect("gcm")),
            key,
            &sealed,
        )
        .expect("the token opens the multi-part ciphertext");
    assert_eq!(opened, plain);
    let key_file = t.path("parts.key");
    t.hsmctl_ok(
        "bob",
        &[
            "export",
            "parts",
            "--out",
            key_file.to_str().expect("utf-8"),
        ],
    );
    let raw = std::fs::read(&key_file).expect("exported key");
    let k = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw).expect("key"),
    );
    let mut buf = sealed.clone();
    let opened = k
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            &mut buf,
        )
        .expect("ring opens the multi-part ciphertext");
    assert_eq!(opened, &plain[..]);
    drop(s);
    p11.finalize().expect("finalize");
}
