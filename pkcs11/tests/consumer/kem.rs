//! `C_EncapsulateKey` and `C_DecapsulateKey` straight at the module's PKCS#11 3.2 function
//! list (cryptoki's default interface is 3.0, which has neither), with every length
//! convention and bad argument, the template rules and hsmd's.

use std::mem::size_of;
use std::os::raw::c_void;

use cryptoki::object::MlKemParameterSetType;

use super::pq::value;
use super::raw::null;
use super::*;

const MSG: &[u8] = b"keyed by a KEM secret";

/// The module's PKCS#11 3.2 function list, by `C_GetInterface("PKCS 11", {3, 2})`.
fn functions_3_2() -> &'static CK_FUNCTION_LIST_3_2 {
    // SAFETY: the module is a PKCS#11 library kept loaded for the process (leaked), so the
    // static list it hands out stays valid; every pointer passed is a live local.
    unsafe {
        let lib = Box::leak(Box::new(
            libloading::Library::new(bins::pkcs11_module()).expect("dlopen"),
        ));
        type Get = unsafe extern "C" fn(
            *mut CK_UTF8CHAR,
            *mut CK_VERSION,
            *mut *mut CK_INTERFACE,
            CK_FLAGS,
        ) -> CK_RV;
        let get: libloading::Symbol<Get> = lib.get(b"C_GetInterface").expect("symbol");
        let mut name = *b"PKCS 11\0";
        let mut version = CK_VERSION { major: 3, minor: 2 };
        let mut out: *mut CK_INTERFACE = null();
        assert_eq!(get(name.as_mut_ptr(), &mut version, &mut out, 0), CKR_OK);
        &*((*out).pFunctionList as *const CK_FUNCTION_LIST_3_2)
    }
}

/// A template entry pointing at `v` (which must outlive its use).
fn attr<T>(t: CK_ATTRIBUTE_TYPE, v: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: t,
        pValue: v as *const T as *mut c_void,
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// A handle the module returned at the raw ABI, for the cryptoki calls.
fn obj(h: CK_OBJECT_HANDLE) -> ObjectHandle {
    // SAFETY: a handle the module just returned for an object of this session's token.
    unsafe { ObjectHandle::new_from_raw(h) }
}

/// C_EncapsulateKey and C_DecapsulateKey at the 3.2 ABI.
pub(crate) fn encapsulation(
    t: &Token,
    p11: &Pkcs11,
    slot: Slot,
    s: &Session,
    dsa_public: ObjectHandle,
) {
    let set = Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into());
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[set.clone(), Attribute::Encapsulate(true)],
            &[Attribute::Decapsulate(true), Attribute::Extractable(true)],
        )
        .expect("ML-KEM pair");
    assert_eq!(value(s, public).len(), 1184);
    assert!(boolean(s, public, AttributeType::Encapsulate));
    assert!(boolean(s, private, AttributeType::Decapsulate));
    let (public, private, dsa_public) = (public.handle(), private.handle(), dsa_public.handle());
    let f = functions_3_2();
    let encapsulate = f.C_EncapsulateKey.expect("listed");
    let decapsulate = f.C_DecapsulateKey.expect("listed");
    let h = s.handle();
    let secrets = || {
        s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .expect("find")
            .len()
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ML_KEM,
        pParameter: null(),
        ulParameterLen: 0,
    };
    let (aes, chacha, hmac, ec) = (CKK_AES, CKK_CHACHA20, CKK_GENERIC_SECRET, CKK_EC);
    let (yes, no): (CK_BBOOL, CK_BBOOL) = (1, 0);
    let short: CK_ULONG = 16;
    let mut readable = [
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_EXTRACTABLE, &yes),
        attr(CKA_SENSITIVE, &no),
    ];
    let mut ct = [0u8; 1088];
    let (mut len, mut key): (CK_ULONG, CK_OBJECT_HANDLE) = (0, 0);
    // SAFETY: every pointer is to a live local of the size given, or null where the module
    // must refuse it (or, for the ciphertext, answer the length) without touching memory.
    unsafe {
        let enc = |mech: *mut CK_MECHANISM,
                   k: CK_OBJECT_HANDLE,
                   tpl: &mut [CK_ATTRIBUTE],
                   out: *mut u8,
                   len: *mut CK_ULONG,
                   key: *mut CK_OBJECT_HANDLE| {
            encapsulate(
                h,
                mech,
                k,
                tpl.as_mut_ptr(),
                tpl.len() as CK_ULONG,
                out,
                len,
                key,
            )
        };
        let before = secrets();
        // A length query and too small a buffer: the length, and no key made.
        assert_eq!(
            enc(&mut mech, public, &mut readable, null(), &mut len, &mut key),
            CKR_OK
        );
        assert_eq!(len, 1088);
        len = 100;
        assert_eq!(
            enc(
                &mut mech,
                public,
                &mut readable,
                ct.as_mut_ptr(),
                &mut len,
                &mut key
            ),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(len, 1088);
        assert_eq!(secrets(), before, "no key from a length query");
        // Bad pointers.
        let p = ct.as_mut_ptr();
        assert_eq!(
            enc(&mut mech, public, &mut readable, p, null(), &mut key),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            enc(&mut mech, public, &mut readable, p, &mut len, null()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            enc(null(), public, &mut readable, p, &mut len, &mut key),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            encapsulate(h, &mut mech, public, null(), 3, p, &mut len, &mut key),
            CKR_ARGUMENTS_BAD
        );
        // The mechanism, its (absent) parameter, the key.
        let mut wrong = CK_MECHANISM {
            mechanism: CKM_ML_DSA,
            ..mech
        };
        assert_eq!(
            enc(&mut wrong, public, &mut readable, p, &mut len, &mut key),
            CKR_MECHANISM_INVALID
        );
        let mut with_param = CK_MECHANISM {
            pParameter: (&raw mut len).cast(),
            ulParameterLen: size_of::<CK_ULONG>() as CK_ULONG,
            ..mech
        };
        assert_eq!(
            enc(
                &mut with_param,
                public,
                &mut readable,
                p,
                &mut len,
                &mut key
            ),
            CKR_MECHANISM_PARAM_INVALID
        );
        for other in [private, dsa_public] {
            assert_eq!(
                enc(&mut mech, other, &mut readable, p, &mut len, &mut key),
                CKR_KEY_TYPE_INCONSISTENT
            );
        }
        // Templates: no key type, one hsmd cannot keep a secret as, a short AES key,
        // extractable and sensitive.
        for (tpl, want) in [
            (
                &mut [attr(CKA_EXTRACTABLE, &yes)][..],
                CKR_TEMPLATE_INCOMPLETE,
            ),
            (
                &mut [attr(CKA_KEY_TYPE, &ec)][..],
                CKR_TEMPLATE_INCONSISTENT,
            ),
            (
                &mut [attr(CKA_KEY_TYPE, &aes), attr(CKA_VALUE_LEN, &short)][..],
                CKR_ATTRIBUTE_VALUE_INVALID,
            ),
            (
                &mut [
                    attr(CKA_KEY_TYPE, &aes),
                    attr(CKA_EXTRACTABLE, &yes),
                    attr(CKA_SENSITIVE, &yes),
                ][..],
                CKR_TEMPLATE_INCONSISTENT,
            ),
        ] {
            assert_eq!(enc(&mut mech, public, tpl, p, &mut len, &mut key), want);
        }
        assert_eq!(secrets(), before, "no key from a refused call");

        // Encapsulated: a readable AES key and the ciphertext.
        len = ct.len() as CK_ULONG;
        assert_eq!(
            enc(&mut mech, public, &mut readable, p, &mut len, &mut key),
            CKR_OK
        );
        assert_eq!(len, 1088);
        assert_eq!(secrets(), before + 1);
        let secret = value(s, obj(key));
        assert_eq!(secret.len(), 32);
        assert!(!boolean(s, obj(key), AttributeType::Sensitive));
        assert!(!boolean(s, obj(key), AttributeType::Local));

        let dec = move |k: CK_OBJECT_HANDLE, tpl: &mut [CK_ATTRIBUTE], ct: *mut u8, n: usize| {
            let (mut out, mut mech) = (0, mech);
            let rv = decapsulate(
                h,
                &mut mech,
                k,
                tpl.as_mut_ptr(),
                tpl.len() as CK_ULONG,
                ct,
                n as CK_ULONG,
                &mut out,
            );
            (rv, out)
        };
        // Decapsulated as AES, ChaCha20 and HMAC keys: the same secret each time.
        for kt in [&aes, &chacha, &hmac] {
            let mut tpl = [readable[0], readable[1], readable[2]];
            tpl[0] = attr(CKA_KEY_TYPE, kt);
            let (rv, k) = dec(private, &mut tpl, p, ct.len());
            assert_eq!(rv, CKR_OK);
            assert_eq!(value(s, obj(k)), secret);
            if kt == &hmac {
                // Usable as the HMAC key it is: the MAC agrees with ring's over the secret.
                let mac = s.sign(&Mechanism::Sha256Hmac, obj(k), MSG).expect("mac");
                let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                assert_eq!(mac, ring::hmac::sign(&ring_key, MSG).as_ref());
            }
        }
        // Tampered: FIPS 203's implicit rejection, another secret and no error.
        ct[5] ^= 1;
        let (rv, k) = dec(private, &mut readable, p, ct.len());
        assert_eq!(rv, CKR_OK);
        assert_ne!(value(s, obj(k)), secret);
        ct[5] ^= 1;
        // Wrong lengths, bad pointers, the public object.
        assert_eq!(
            dec(private, &mut readable, p, 1087).0,
            CKR_WRAPPED_KEY_LEN_RANGE
        );
        assert_eq!(
            dec(private, &mut readable, p, 0).0,
            CKR_WRAPPED_KEY_LEN_RANGE
        );
        assert_eq!(
            dec(private, &mut readable, null(), 1088).0,
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            dec(public, &mut readable, p, 1088).0,
            CKR_KEY_TYPE_INCONSISTENT
        );
        assert_eq!(
            decapsulate(
                h,
                &mut mech,
                private,
                readable.as_mut_ptr(),
                3,
                p,
                1088,
                null()
            ),
            CKR_ARGUMENTS_BAD
        );
        // By default the new key is sensitive and not extractable.
        let (rv, k) = dec(private, &mut [attr(CKA_KEY_TYPE, &aes)], p, ct.len());
        assert_eq!(rv, CKR_OK);
        assert!(boolean(s, obj(k), AttributeType::Sensitive));
        assert!(!boolean(s, obj(k), AttributeType::Extractable));

        // hsmd's rules, through the module: a non-extractable ML-KEM key gives no extractable
        // secret; one without decapsulate usage decapsulates nothing.
        let (kept_public, kept) = s
            .generate_key_pair(&Mechanism::MlKemKeyPairGen, std::slice::from_ref(&set), &[])
            .expect("ML-KEM pair");
        let (_, unusable) = s
            .generate_key_pair(
                &Mechanism::MlKemKeyPairGen,
                std::slice::from_ref(&set),
                &[Attribute::Decapsulate(false)],
            )
            .expect("ML-KEM pair");
        assert!(!boolean(s, unusable, AttributeType::Decapsulate));
        let (kept_public, kept, unusable) =
            (kept_public.handle(), kept.handle(), unusable.handle());
        let mut kept_ct = [0u8; 1088];
        len = 1088;
        assert_eq!(
            enc(
                &mut mech,
                kept_public,
                &mut [attr(CKA_KEY_TYPE, &aes)],
                kept_ct.as_mut_ptr(),
                &mut len,
                &mut key
            ),
            CKR_OK
        );
        assert_eq!(
            dec(kept, &mut readable, kept_ct.as_mut_ptr(), 1088).0,
            CKR_TEMPLATE_INCONSISTENT
        );
        let (rv, k) = dec(
            kept,
            &mut [attr(CKA_KEY_TYPE, &aes)],
            kept_ct.as_mut_ptr(),
            1088,
        );
        assert_eq!(rv, CKR_OK);
        assert!(!boolean(s, obj(k), AttributeType::Extractable));
        assert_eq!(
            dec(
                unusable,
                &mut [attr(CKA_KEY_TYPE, &aes)],
                kept_ct.as_mut_ptr(),
                1088
            )
            .0,
            CKR_KEY_FUNCTION_NOT_PERMITTED
        );

        // A token key wants a read-write session; it is hsmd's, under its label.
        let label = *b"kem-shared";
        let mut stored = [
            attr(CKA_KEY_TYPE, &aes),
            attr(CKA_TOKEN, &yes),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_ptr() as *mut c_void,
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        let ro = p11.open_ro_session(slot).expect("read-only session");
        len = 1088;
        assert_eq!(
            encapsulate(
                ro.handle(),
                &mut mech,
                public,
                stored.as_mut_ptr(),
                3,
                p,
                &mut len,
                &mut key
            ),
            CKR_SESSION_READ_ONLY
        );
        drop(ro);
        assert_eq!(
            enc(&mut mech, public, &mut stored, p, &mut len, &mut key),
            CKR_OK
        );
        assert!(boolean(s, obj(key), AttributeType::Token));

        // 3.2's other additions are not offered.
        assert_eq!(
            f.C_VerifySignatureInit.expect("listed")(h, &mut mech, public, p, 1088),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(
            f.C_AsyncJoin.expect("listed")(h, null(), 0, null(), 0),
            CKR_FUNCTION_NOT_SUPPORTED
        );
    }
    let list = t.hsmctl_ok("bob", &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("\tkem-shared\taes256gcm\t") && l.contains("\tpersistent")),
        "{list}"
    );
    assert!(list.contains("\tdsa-3\tml-dsa-87\t"), "{list}");
}
