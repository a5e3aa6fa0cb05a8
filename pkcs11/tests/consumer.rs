//! The module through a real PKCS#11 consumer, the Rust `cryptoki` crate, against a real
//! hsmd: sessions, login, search, attributes, every mechanism, bad input, many threads, a
//! fork, and hsmd stopped mid-session.
//!
//! One test function: a process loads and initializes a PKCS#11 module once.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]
#![allow(unsafe_code)]

mod support;

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
    sessions_and_login(&p11, alice, &s);
    let (p1_pub, p1) = pair(&s, false, "p1", true);
    let (e1_pub, e1) = pair(&s, true, "e1", true);
    search(&s, p1, p1_pub, e1);
    attributes(&s, p1, p1_pub);
    batch_attributes(&s, p1);
    raw_abi(&s, p1);
    interfaces(&s, p1);
    chacha_raw(&s);
    signatures(&s, p1, p1_pub, e1, e1_pub);
    symmetric(&t, &s);
    digests_and_random(&s);
    objects_lifecycle(&t, &p11, alice, &s);
    bad_input(&p11, alice, &s, p1);
    threads(&p11, alice, p1, p1_pub);
    fork(&s, p1, p1_pub);
    isolation(&t, &p11, bob);
    let bob_s = p11.open_ro_session(bob).expect("bob's session");
    let b1 = bob_s
        .find_objects(&[
            Attribute::Label(b"b1".to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .expect("find")[0];
    hsmd_down(&mut t, &[(&s, p1), (&bob_s, b1)]);
    p11.finalize().expect("finalize");
}

fn sessions_and_login(p11: &Pkcs11, alice: Slot, s: &Session) {
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
    // Wrong PINs: refused, each slower than the last.
    let t0 = Instant::now();
    assert_eq!(
        rv(s.login(UserType::User, Some(&pin("0000"))).unwrap_err()),
        RvError::PinIncorrect
    );
    let first = t0.elapsed();
    let t1 = Instant::now();
    assert_eq!(
        rv(s.login(UserType::User, Some(&pin("1111"))).unwrap_err()),
        RvError::PinIncorrect
    );
    assert!(
        t1.elapsed() >= Duration::from_millis(200),
        "second wrong PIN after {:?}",
        t1.elapsed()
    );
    assert!(first >= Duration::from_millis(100));
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

fn search(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle, e1: ObjectHandle) {
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

fn attributes(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle) {
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

/// The module's own function list (dlopen gives back the instance this process loaded).
fn functions() -> &'static CK_FUNCTION_LIST {
    // SAFETY: the module is a PKCS#11 library; the library stays loaded for the process
    // (leaked), so the list it hands out stays valid.
    unsafe {
        let lib = Box::leak(Box::new(
            libloading::Library::new(support::module_path()).expect("dlopen"),
        ));
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList").expect("symbol");
        let mut list = std::ptr::null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        &*list
    }
}

fn null<T>() -> *mut T {
    std::ptr::null_mut()
}

/// Bad pointers and arguments straight at the C ABI: each a clear code, never a crash.
fn raw_abi(s: &Session, p1: ObjectHandle) {
    let f = functions();
    let h = s.handle();
    // SAFETY: every call below passes either valid pointers or null(), which the module must
    // refuse without touching memory.
    unsafe {
        assert_eq!(
            f.C_GetSlotList.unwrap()(0, null(), null()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(f.C_GetInfo.unwrap()(null()), CKR_ARGUMENTS_BAD);
        assert_eq!(f.C_Finalize.unwrap()(8 as *mut _), CKR_ARGUMENTS_BAD);
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: 8 as *mut _,
        };
        assert_eq!(
            f.C_Initialize.unwrap()((&raw mut args).cast()),
            CKR_ARGUMENTS_BAD
        );
        let mut out = 0;
        assert_eq!(
            f.C_OpenSession.unwrap()(0, 0, null(), None, &mut out),
            CKR_SESSION_PARALLEL_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_OpenSession.unwrap()(0, CKF_SERIAL_SESSION, null(), None, null()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_CloseSession.unwrap()(0xdead),
            CKR_SESSION_HANDLE_INVALID
        );
        let mut n: CK_ULONG = 0;
        let mut found = [0 as CK_OBJECT_HANDLE; 4];
        assert_eq!(
            f.C_FindObjects.unwrap()(h, found.as_mut_ptr(), 4, &mut n),
            CKR_OPERATION_NOT_INITIALIZED
        );
        assert_eq!(
            f.C_FindObjectsInit.unwrap()(h, null(), 3),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_Login.unwrap()(h, CKU_USER, null(), 4),
            CKR_ARGUMENTS_BAD
        );
        // A mechanism parameter of the wrong size.
        let mut gcm = CK_GCM_PARAMS {
            pIv: null(),
            ulIvLen: 0,
            ulIvBits: 0,
            pAAD: null(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&raw mut gcm).cast(),
            ulParameterLen: 7,
        };
        assert_eq!(
            f.C_EncryptInit.unwrap()(h, &mut m, p1.handle()),
            CKR_MECHANISM_PARAM_INVALID
        );
        assert_eq!(
            f.C_SignInit.unwrap()(h, null(), p1.handle()),
            CKR_ARGUMENTS_BAD
        );
        // Output rules: the length first, then too small (the operation goes on), then done.
        let mut ecdsa = CK_MECHANISM {
            mechanism: CKM_ECDSA,
            pParameter: null(),
            ulParameterLen: 0,
        };
        assert_eq!(f.C_SignInit.unwrap()(h, &mut ecdsa, p1.handle()), CKR_OK);
        let mut digest = [5u8; 32];
        let mut len: CK_ULONG = 0;
        assert_eq!(
            f.C_Sign.unwrap()(h, digest.as_mut_ptr(), 32, null(), &mut len),
            CKR_OK
        );
        assert_eq!(len, 64);
        let mut sig = [0u8; 64];
        len = 10;
        assert_eq!(
            f.C_Sign.unwrap()(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(len, 64);
        assert_eq!(
            f.C_Sign.unwrap()(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), null()),
            CKR_ARGUMENTS_BAD
        );
        len = 64;
        assert_eq!(
            f.C_Sign.unwrap()(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_OK
        );
        assert_eq!(len, 64);
        // Done: a second C_Sign has no operation.
        assert_eq!(
            f.C_Sign.unwrap()(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_OPERATION_NOT_INITIALIZED
        );
        // Random of zero bytes is fine; of some bytes into null() is not.
        assert_eq!(f.C_GenerateRandom.unwrap()(h, null(), 0), CKR_OK);
        assert_eq!(
            f.C_GenerateRandom.unwrap()(h, null(), 16),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_WrapKey.unwrap()(h, &mut ecdsa, 1, 1, null(), &mut len),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(f.C_CancelFunction.unwrap()(h), CKR_FUNCTION_NOT_PARALLEL);
    }
}

/// The PKCS#11 3.0 interface: listed, found by name and version, and its two session calls.
fn interfaces(s: &Session, p1: ObjectHandle) {
    // SAFETY: the library stays loaded (see `functions`); the symbols have the PKCS#11
    // signatures and every pointer passed is valid or null.
    unsafe {
        let lib = Box::leak(Box::new(
            libloading::Library::new(support::module_path()).expect("dlopen"),
        ));
        type GetList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
        type Get = unsafe extern "C" fn(
            *mut CK_UTF8CHAR,
            *mut CK_VERSION,
            *mut *mut CK_INTERFACE,
            CK_FLAGS,
        ) -> CK_RV;
        let get_list: libloading::Symbol<GetList> = lib.get(b"C_GetInterfaceList").expect("symbol");
        let get: libloading::Symbol<Get> = lib.get(b"C_GetInterface").expect("symbol");
        let mut n: CK_ULONG = 0;
        assert_eq!(get_list(null(), &mut n), CKR_OK);
        assert_eq!(n, 2);
        let mut name = *b"PKCS 11\0";
        let mut out: *mut CK_INTERFACE = null();
        let mut v3 = CK_VERSION { major: 3, minor: 0 };
        assert_eq!(
            get(
                name.as_mut_ptr(),
                &mut v3,
                &mut out,
                CKF_INTERFACE_FORK_SAFE
            ),
            CKR_OK
        );
        let list = &*((*out).pFunctionList as *const CK_FUNCTION_LIST_3_0);
        assert_eq!((list.version.major, list.version.minor), (3, 0));
        let mut v2 = CK_VERSION {
            major: 2,
            minor: 40,
        };
        assert_eq!(get(null(), &mut v2, &mut out, 0), CKR_OK);
        let old = &*((*out).pFunctionList as *const CK_FUNCTION_LIST);
        assert_eq!((old.version.major, old.version.minor), (2, 40));
        let mut other = *b"Vendor\0";
        assert_eq!(
            get(other.as_mut_ptr(), null(), &mut out, 0),
            CKR_ARGUMENTS_BAD
        );
        let mut v9 = CK_VERSION { major: 9, minor: 9 };
        assert_eq!(get(null(), &mut v9, &mut out, 0), CKR_ARGUMENTS_BAD);
        // C_SessionCancel ends an active operation.
        s.sign_init(&Mechanism::Ecdsa, p1).expect("init");
        assert_eq!(
            list.C_SessionCancel.expect("listed")(s.handle(), CKF_SIGN),
            CKR_OK
        );
        assert_eq!(
            rv(s.sign_final().unwrap_err()),
            RvError::OperationNotInitialized
        );
        // C_LoginUser names the token's client; another name is refused.
        let mut pin = *b"1234";
        let mut who = *b"mallory";
        let login_user = list.C_LoginUser.expect("listed");
        assert_eq!(
            login_user(
                s.handle(),
                CKU_USER,
                pin.as_mut_ptr(),
                4,
                who.as_mut_ptr(),
                7
            ),
            CKR_USER_TYPE_INVALID
        );
        let mut alice = *b"alice";
        assert_eq!(
            login_user(
                s.handle(),
                CKU_USER,
                pin.as_mut_ptr(),
                4,
                alice.as_mut_ptr(),
                5
            ),
            CKR_USER_ALREADY_LOGGED_IN
        );
        // The message-based functions are not offered.
        assert_eq!(
            list.C_MessageSignFinal.expect("listed")(s.handle()),
            CKR_FUNCTION_NOT_SUPPORTED
        );
    }
}

/// ChaCha20-Poly1305 (which the cryptoki crate has no mechanism for) at the raw ABI, and a
/// multi-part encryption.
fn chacha_raw(s: &Session) {
    let f = functions();
    let h = s.handle();
    // SAFETY: valid session handle; every pointer is to a live local of the right size.
    unsafe {
        let mut keygen = CK_MECHANISM {
            mechanism: CKM_CHACHA20_KEY_GEN,
            pParameter: null(),
            ulParameterLen: 0,
        };
        let mut label = *b"c1";
        let mut yes: CK_BBOOL = 1;
        let mut t = [
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: 2,
            },
            CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: (&raw mut yes).cast(),
                ulValueLen: 1,
            },
        ];
        let mut key: CK_OBJECT_HANDLE = 0;
        assert_eq!(
            f.C_GenerateKey.unwrap()(h, &mut keygen, t.as_mut_ptr(), 2, &mut key),
            CKR_OK
        );
        let mut nonce = [0u8; 12];
        let mut aad = *b"header";
        let mut params = CK_SALSA20_CHACHA20_POLY1305_PARAMS {
            pNonce: nonce.as_mut_ptr(),
            ulNonceLen: 12,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 6,
        };
        let mut m = CK_MECHANISM {
            mechanism: CKM_CHACHA20_POLY1305,
            pParameter: (&raw mut params).cast(),
            ulParameterLen: std::mem::size_of::<CK_SALSA20_CHACHA20_POLY1305_PARAMS>() as CK_ULONG,
        };
        // Multi-part: the updates give nothing back, the final everything.
        assert_eq!(f.C_EncryptInit.unwrap()(h, &mut m, key), CKR_OK);
        let mut part1 = *b"twelve bytes";
        let mut part2 = *b" and more";
        let mut out = [0u8; 64];
        let mut len: CK_ULONG = 64;
        assert_eq!(
            f.C_EncryptUpdate.unwrap()(h, part1.as_mut_ptr(), 12, out.as_mut_ptr(), &mut len),
            CKR_OK
        );
        assert_eq!(len, 0);
        len = 64;
        assert_eq!(
            f.C_EncryptUpdate.unwrap()(h, part2.as_mut_ptr(), 9, out.as_mut_ptr(), &mut len),
            CKR_OK
        );
        len = 64;
        assert_eq!(
            f.C_EncryptFinal.unwrap()(h, out.as_mut_ptr(), &mut len),
            CKR_OK
        );
        assert_eq!(len, 21 + 16);
        assert_ne!(nonce, [0u8; 12], "hsmd's nonce in the caller's buffer");
        // Single-part decryption with that nonce and AAD.
        assert_eq!(f.C_DecryptInit.unwrap()(h, &mut m, key), CKR_OK);
        let mut plain = [0u8; 64];
        let mut plen: CK_ULONG = 64;
        assert_eq!(
            f.C_Decrypt.unwrap()(h, out.as_mut_ptr(), len, plain.as_mut_ptr(), &mut plen),
            CKR_OK
        );
        assert_eq!(&plain[..plen as usize], b"twelve bytes and more");
        // Another AAD does not open it.
        let mut other_aad = *b"Header";
        let mut other = CK_SALSA20_CHACHA20_POLY1305_PARAMS {
            pNonce: nonce.as_mut_ptr(),
            ulNonceLen: 12,
            pAAD: other_aad.as_mut_ptr(),
            ulAADLen: 6,
        };
        let mut m2 = CK_MECHANISM {
            mechanism: CKM_CHACHA20_POLY1305,
            pParameter: (&raw mut other).cast(),
            ulParameterLen: std::mem::size_of::<CK_SALSA20_CHACHA20_POLY1305_PARAMS>() as CK_ULONG,
        };
        assert_eq!(f.C_DecryptInit.unwrap()(h, &mut m2, key), CKR_OK);
        plen = 64;
        assert_eq!(
            f.C_Decrypt.unwrap()(h, out.as_mut_ptr(), len, plain.as_mut_ptr(), &mut plen),
            CKR_ENCRYPTED_DATA_INVALID
        );
        // An AES mechanism on a ChaCha20 key is refused.
        let mut iv = [0u8; 12];
        let mut gcm = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: null(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut aes = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&raw mut gcm).cast(),
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        assert_eq!(
            f.C_EncryptInit.unwrap()(h, &mut aes, key),
            CKR_KEY_TYPE_INCONSISTENT
        );
    }
}

/// One C_GetAttributeValue with a valid, an invalid and a too-small attribute: each
/// answered on its own, the call's code naming the worst.
fn batch_attributes(s: &Session, p1: ObjectHandle) {
    let list = functions();
    let get_attr = list.C_GetAttributeValue.expect("listed");
    let mut label = [0u8; 16];
    let mut id = [0u8; 8];
    let mut modulus = [0u8; 16];
    let mut small = [0u8; 1];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr().cast(),
            ulValueLen: 16,
        },
        CK_ATTRIBUTE {
            type_: CKA_MODULUS,
            pValue: modulus.as_mut_ptr().cast(),
            ulValueLen: 16,
        },
        CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr().cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_EC_PARAMS,
            pValue: small.as_mut_ptr().cast(),
            ulValueLen: 1,
        },
    ];
    // SAFETY: valid session and object handles, four attributes with their own buffers.
    let r = unsafe { get_attr(s.handle(), p1.handle(), t.as_mut_ptr(), t.len() as CK_ULONG) };
    assert_eq!(r, CKR_ATTRIBUTE_TYPE_INVALID);
    assert_eq!(t[0].ulValueLen, 2);
    assert_eq!(&label[..2], b"p1");
    assert_eq!(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(t[2].ulValueLen, 8);
    assert_eq!(id, [0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(t[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    // Only the too-small one: CKR_BUFFER_TOO_SMALL.
    let mut one = [CK_ATTRIBUTE {
        type_: CKA_EC_PARAMS,
        pValue: small.as_mut_ptr().cast(),
        ulValueLen: 1,
    }];
    // SAFETY: as above.
    let r = unsafe { get_attr(s.handle(), p1.handle(), one.as_mut_ptr(), 1) };
    assert_eq!(r, CKR_BUFFER_TOO_SMALL);
    // A handle that names nothing.
    // SAFETY: as above.
    let r = unsafe { get_attr(s.handle(), 0xfff0 | 1, one.as_mut_ptr(), 1) };
    assert_eq!(r, CKR_OBJECT_HANDLE_INVALID);
}

fn signatures(
    s: &Session,
    p1: ObjectHandle,
    p1_pub: ObjectHandle,
    e1: ObjectHandle,
    e1_pub: ObjectHandle,
) {
    let msg = b"signed through cryptoki";
    let digest = sha256(msg);
    // ECDSA over our digest: raw r||s, verified here with the token's public key.
    let sig = s.sign(&Mechanism::Ecdsa, p1, &digest).expect("sign");
    assert_eq!(sig.len(), 64);
    // ring checks r||s over the message, whose SHA-256 is the digest we signed.
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point(s, p1_pub),
    )
    .verify(msg, &sig)
    .expect("verifies outside the token");
    s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig)
        .expect("verify");
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert_eq!(
        rv(s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &bad)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
    // ECDSA-SHA256 over the message, multi-part; the digest form verifies it.
    s.sign_init(&Mechanism::EcdsaSha256, p1).expect("init");
    s.sign_update(&msg[..5]).expect("update");
    s.sign_update(&msg[5..]).expect("update");
    let sig2 = s.sign_final().expect("final");
    s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig2)
        .expect("same digest");
    // EdDSA over the message, checked with ed25519-dalek.
    let ed = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = s.sign(&ed, e1, msg).expect("sign");
    let pk: [u8; 32] = point(s, e1_pub).try_into().expect("32 bytes");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("key");
    vk.verify_strict(
        msg,
        &ed25519_dalek::Signature::from_slice(&sig).expect("sig"),
    )
    .expect("verifies outside the token");
    s.verify(&ed, e1_pub, msg, &sig).expect("verify");
    // A key and mechanism that do not go together.
    assert_eq!(
        rv(s.sign(&ed, p1, msg).unwrap_err()),
        RvError::KeyTypeInconsistent
    );
    // Ed25519ph is not offered.
    let ph = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ph(&[])));
    assert_eq!(
        rv(s.sign(&ph, e1, msg).unwrap_err()),
        RvError::MechanismParamInvalid
    );
}

fn symmetric(t: &Token, s: &Session) {
    // An exportable AES key, so the ciphertext can be checked outside the token.
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"a1".to_vec()),
                Attribute::Extractable(true),
            ],
        )
        .expect("aes key");
    let plain = b"sealed by hsmd".to_vec();
    let mut iv = [0u8; 12];
    let ct = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).expect("gcm")),
            aes,
            &plain,
        )
        .expect("encrypt");
    assert_eq!(ct.len(), plain.len() + 16);
    assert_ne!(iv, [0u8; 12], "hsmd's nonce came back in the IV buffer");
    // Standard AES-GCM: opened with the exported key by ring.
    let key_file = t.path("a1.key");
    let o = t.hsmctl(
        "alice",
        &["export", "a1", "--out", key_file.to_str().expect("utf-8")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let raw = std::fs::read(&key_file).expect("key");
    let k = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw).expect("key"),
    );
    let mut buf = ct.clone();
    let opened = k
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(iv),
            ring::aead::Aad::from(b"aad"),
            &mut buf,
        )
        .expect("standard layout");
    assert_eq!(opened, plain);
    // And by the token, with the caller's IV.
    let mut iv2 = iv;
    let back = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv2, b"aad", 128.into()).expect("gcm")),
            aes,
            &ct,
        )
        .expect("decrypt");
    assert_eq!(back, plain);
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    let mut iv3 = iv;
    let e = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv3, b"aad", 128.into()).expect("gcm")),
            aes,
            &tampered,
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::EncryptedDataInvalid);
    // A caller-chosen IV for encryption is refused: hsmd picks every nonce.
    let mut chosen = [7u8; 12];
    let e = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut chosen, b"", 128.into()).expect("gcm")),
            aes,
            &plain,
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::MechanismParamInvalid);
    // HMAC-SHA256.
    let mac = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"m1".to_vec()),
            ],
        )
        .expect("hmac key");
    let tag = s.sign(&Mechanism::Sha256Hmac, mac, b"data").expect("mac");
    assert_eq!(tag.len(), 32);
    s.verify(&Mechanism::Sha256Hmac, mac, b"data", &tag)
        .expect("mac verify");
    assert_eq!(
        rv(s.verify(&Mechanism::Sha256Hmac, mac, b"datA", &tag)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
}

fn digests_and_random(s: &Session) {
    let d = s.digest(&Mechanism::Sha256, b"abc").expect("digest");
    assert_eq!(d, sha256(b"abc"));
    let d = s.digest(&Mechanism::Sha512, b"abc").expect("digest");
    assert_eq!(
        d,
        ring::digest::digest(&ring::digest::SHA512, b"abc").as_ref()
    );
    let a = s.generate_random_vec(100_000).expect("random");
    let b = s.generate_random_vec(100_000).expect("random");
    assert_eq!(a.len(), 100_000);
    assert_ne!(a, b);
    assert!(a.iter().any(|x| *x != 0));
    assert_eq!(
        rv(s.seed_random(b"seed").unwrap_err()),
        RvError::RandomSeedNotSupported
    );
}

fn objects_lifecycle(t: &Token, p11: &Pkcs11, alice: Slot, s: &Session) {
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
    let list = String::from_utf8(t.hsmctl("alice", &["list"]).stdout).expect("utf-8");
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
    // Destroying: the public half alone is refused; the private half deletes the key.
    let (gone_pub, gone) = pair(s, false, "gone", true);
    assert_eq!(
        rv(s.destroy_object(gone_pub).unwrap_err()),
        RvError::ActionProhibited
    );
    s.destroy_object(gone).expect("destroy");
    let list = String::from_utf8(t.hsmctl("alice", &["list"]).stdout).expect("utf-8");
    assert!(!list.contains("gone"), "{list}");
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, gone, &[1; 32]).unwrap_err()),
        RvError::KeyHandleInvalid
    );
    // Attributes never change.
    let e = s
        .update_attributes(gone_pub, &[Attribute::Label(b"x".to_vec())])
        .unwrap_err();
    assert!(matches!(
        rv(e),
        RvError::ActionProhibited | RvError::ObjectHandleInvalid
    ));
}

fn bad_input(p11: &Pkcs11, alice: Slot, s: &Session, p1: ObjectHandle) {
    // A digest too short for ECDSA.
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, p1, &[1; 15]).unwrap_err()),
        RvError::DataLenRange
    );
    // A mechanism the module does not have.
    assert_eq!(
        rv(s.sign(&Mechanism::Sha1, p1, b"x").unwrap_err()),
        RvError::MechanismInvalid
    );
    // Unknown handles.
    let nothing = unsafe {
        // SAFETY: an ObjectHandle is a plain integer; this one names no object.
        std::mem::transmute::<CK_OBJECT_HANDLE, ObjectHandle>(0x7777_0001)
    };
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, nothing, &[1; 32]).unwrap_err()),
        RvError::KeyHandleInvalid
    );
    // Operations not started, and one started twice.
    assert_eq!(
        rv(s.sign_final().unwrap_err()),
        RvError::OperationNotInitialized
    );
    s.sign_init(&Mechanism::Ecdsa, p1).expect("init");
    assert_eq!(
        rv(s.sign_init(&Mechanism::Ecdsa, p1).unwrap_err()),
        RvError::OperationActive
    );
    assert_eq!(
        rv(s.sign_update(b"x").unwrap_err()),
        RvError::FunctionNotSupported
    );
    // Functions the module does not offer.
    assert_eq!(
        rv(
            s.create_object(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .unwrap_err()
        ),
        RvError::FunctionNotSupported
    );
    assert_eq!(
        rv(p11
            .get_slot_info(unsafe {
                // SAFETY: a Slot is a plain integer; slot 9 does not exist.
                std::mem::transmute::<CK_SLOT_ID, Slot>(9)
            })
            .unwrap_err()),
        RvError::SlotIdInvalid
    );
    let _ = alice;
}

fn threads(p11: &Pkcs11, alice: Slot, p1: ObjectHandle, p1_pub: ObjectHandle) {
    let done: Vec<usize> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                sc.spawn(move || {
                    let s = p11.open_ro_session(alice).expect("session");
                    let mut ok = 0;
                    for j in 0..25u8 {
                        let digest = sha256(&[i as u8, j]);
                        let sig = s.sign(&Mechanism::Ecdsa, p1, &digest).expect("sign");
                        s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig)
                            .expect("verify");
                        ok += 1;
                    }
                    ok
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(done.iter().sum::<usize>(), 200);
}

fn fork(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle) {
    let digest = sha256(b"before the fork");
    s.sign(&Mechanism::Ecdsa, p1, &digest)
        .expect("parent signs");
    // SAFETY: the child only makes PKCS#11 calls through the module (whose fork handling is
    // what is tested) and leaves with _exit, running no destructor of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = match s.sign(&Mechanism::Ecdsa, p1, &digest) {
            Ok(sig) if s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig).is_ok() => 0,
            _ => 1,
        };
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child signed: {status}"
    );
    // The parent's own connection was left alone.
    s.sign(&Mechanism::Ecdsa, p1, &digest)
        .expect("parent signs after the fork");
}

fn isolation(t: &Token, p11: &Pkcs11, bob: Slot) {
    let s = p11.open_rw_session(bob).expect("bob's session");
    assert!(
        s.find_objects(&[]).expect("find").is_empty(),
        "bob sees none of alice's keys"
    );
    let o = t.hsmctl(
        "alice",
        &["grant", "p1", "--to", "bob", "--ops", "sign,verify"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
    fork(&s, b, b_pub);
    s.close().expect("close");
}

fn hsmd_down(t: &mut Token, sessions: &[(&Session, ObjectHandle)]) {
    let digest = sha256(b"down");
    // Over TCP (alice) and shared memory (bob) alike.
    for (s, k) in sessions {
        s.sign(&Mechanism::Ecdsa, *k, &digest)
            .expect("signs while hsmd runs");
    }
    // hsmd frozen: each call gives up after timeout_ms (1500) with a device error.
    t.signal("STOP");
    for (s, k) in sessions {
        let t0 = Instant::now();
        let e = s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(rv(e), RvError::DeviceError);
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
    }
    t.signal("CONT");
    // hsmd killed: soon, a device error; restarted: each session reconnects.
    t.stop();
    for (s, k) in sessions {
        let t0 = Instant::now();
        assert_eq!(
            rv(s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err()),
            RvError::DeviceError
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    t.restart();
    for (s, k) in sessions {
        let sig = s
            .sign(&Mechanism::Ecdsa, *k, &digest)
            .expect("signs after hsmd restarts");
        assert_eq!(sig.len(), 64);
    }
}
