//! The C ABI straight: bad pointers, the 3.x interfaces, ChaCha20-Poly1305 and batched
//! attributes, which the cryptoki crate does not reach.

use super::*;

/// The module's own function list (dlopen gives back the instance this process loaded).
pub(crate) fn functions() -> &'static CK_FUNCTION_LIST {
    // SAFETY: the module is a PKCS#11 library; the library stays loaded for the process
    // (leaked), so the list it hands out stays valid.
    unsafe {
        let lib = Box::leak(Box::new(
            libloading::Library::new(bins::pkcs11_module()).expect("dlopen"),
        ));
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList").expect("symbol");
        let mut list = std::ptr::null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        &*list
    }
}

pub(crate) fn null<T>() -> *mut T {
    std::ptr::null_mut()
}

/// Bad pointers and arguments straight at the C ABI: each a clear code, never a crash.
pub(crate) fn raw_abi(s: &Session, p1: ObjectHandle) {
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

/// The PKCS#11 3.0 and 3.2 interfaces: listed, found by name and version, and 3.0's two
/// session calls (3.2's are in `pq`).
pub(crate) fn interfaces(s: &Session, p1: ObjectHandle) {
    // SAFETY: the library stays loaded (see `functions`); the symbols have the PKCS#11
    // signatures and every pointer passed is valid or null.
    unsafe {
        let lib = Box::leak(Box::new(
            libloading::Library::new(bins::pkcs11_module()).expect("dlopen"),
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
        assert_eq!(n, 3);
        // 3.0 first (the default), then 3.2, then 2.40.
        let mut all = [CK_INTERFACE {
            pInterfaceName: null(),
            pFunctionList: null(),
            flags: 0,
        }; 3];
        assert_eq!(get_list(all.as_mut_ptr(), &mut n), CKR_OK);
        let versions: Vec<(u8, u8)> = all
            .iter()
            .map(|i| {
                let v = *(i.pFunctionList as *const CK_VERSION);
                (v.major, v.minor)
            })
            .collect();
        assert_eq!(versions, [(3, 0), (3, 2), (2, 40)]);
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
        // No version asked for: 3.0, the default.
        assert_eq!(get(null(), null(), &mut out, 0), CKR_OK);
        let default = &*((*out).pFunctionList as *const CK_FUNCTION_LIST_3_0);
        assert_eq!((default.version.major, default.version.minor), (3, 0));
        let mut v32 = CK_VERSION { major: 3, minor: 2 };
        assert_eq!(get(name.as_mut_ptr(), &mut v32, &mut out, 0), CKR_OK);
        let new = &*((*out).pFunctionList as *const CK_FUNCTION_LIST_3_2);
        assert_eq!((new.version.major, new.version.minor), (3, 2));
        assert!(new.C_EncapsulateKey.is_some() && new.C_LoginUser.is_some());
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
pub(crate) fn chacha_raw(s: &Session) {
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
        // Multi-part decryption: the updates give nothing back (nothing is released before
        // the tag checks), the final asks for the plaintext's length, then gives it.
        let mut multi = |ct: &mut [u8]| -> (CK_RV, Vec<u8>) {
            assert_eq!(f.C_DecryptInit.unwrap()(h, &mut m, key), CKR_OK);
            let (a, b) = ct.split_at_mut(10);
            for part in [a, b] {
                let mut none: CK_ULONG = 64;
                assert_eq!(
                    f.C_DecryptUpdate.unwrap()(
                        h,
                        part.as_mut_ptr(),
                        part.len() as CK_ULONG,
                        plain.as_mut_ptr(),
                        &mut none
                    ),
                    CKR_OK
                );
                assert_eq!(none, 0, "no plaintext before the tag is checked");
            }
            let mut need: CK_ULONG = 0;
            assert_eq!(f.C_DecryptFinal.unwrap()(h, null(), &mut need), CKR_OK);
            assert_eq!(need, 21, "ciphertext less the tag");
            let mut got = [0u8; 64];
            let mut glen: CK_ULONG = 64;
            let r = f.C_DecryptFinal.unwrap()(h, got.as_mut_ptr(), &mut glen);
            (r, got[..glen as usize].to_vec())
        };
        let mut sealed = out[..len as usize].to_vec();
        assert_eq!(
            multi(&mut sealed),
            (CKR_OK, b"twelve bytes and more".to_vec())
        );
        // A tampered tag: refused, and the operation is over.
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(multi(&mut sealed).0, CKR_ENCRYPTED_DATA_INVALID);
        plen = 64;
        assert_eq!(
            f.C_DecryptFinal.unwrap()(h, plain.as_mut_ptr(), &mut plen),
            CKR_OPERATION_NOT_INITIALIZED
        );
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
pub(crate) fn batch_attributes(s: &Session, p1: ObjectHandle) {
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
