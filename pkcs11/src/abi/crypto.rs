//! Sign, verify, encrypt, decrypt and digest.
#![allow(non_snake_case)]

use cryptoki_sys::*;

use super::ffi::{bytes, guard, mechanism, output, with_session, write_nonce};
use crate::module::{Module, Session};
use crate::ops;

/// `*Init`: reads the caller's mechanism, then starts the operation on the session.
///
/// # Safety
/// `mech` must be null or point to a valid `CK_MECHANISM`.
unsafe fn start(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    begin: impl FnOnce(&Module, &mut Session, &ops::MechArgs) -> Result<(), CK_RV>,
) -> CK_RV {
    guard(|| {
        // SAFETY: per this function's contract.
        let args = unsafe { mechanism(mech) }?;
        with_session(h, |m, s| begin(m, s, &args))
    })
}

/// `*Update`: hands the caller's bytes to the session's operation.
///
/// # Safety
/// `data` must be null or readable for `len`.
unsafe fn feed(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    take: impl FnOnce(&mut Session, &[u8]) -> Result<(), CK_RV>,
) -> CK_RV {
    guard(|| {
        // SAFETY: per this function's contract.
        let data = unsafe { bytes(data, len) }?;
        with_session(h, |_, s| take(s, data))
    })
}

/// `C_EncryptUpdate` / `C_DecryptUpdate`: gathered, nothing out until the final call. A NULL
/// output asks only for the output length (0): the part is not taken then, as callers such as
/// cryptoki ask first and pass the same part again with a buffer.
///
/// # Safety
/// `data` readable for `len`; `out_len` writable.
unsafe fn crypt_update(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    decrypt: bool,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input and output length.
        unsafe {
            let data = bytes(data, len)?;
            let part = if out.is_null() { &[][..] } else { data };
            with_session(h, |_, s| ops::crypt_update(s, decrypt, part))?;
            super::ffi::put(out_len, 0)
        }
    })
}

/// `C_SignInit`.
///
/// # Safety
/// `mech` must point to a valid `CK_MECHANISM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { start(h, mech, |m, s, args| ops::sign_init(m, s, args, key, false)) }
}

/// `C_Sign`: ECDSA as raw r||s, EdDSA 64 bytes, HMAC 32.
///
/// # Safety
/// `data` readable for `len`; `sig`/`sig_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input.
        let data = unsafe { bytes(data, len) }?;
        with_session(h, |m, s| {
            let need = ops::sign_len(s)?;
            // SAFETY: the caller's output buffer and length.
            unsafe { output(sig, sig_len, need, || ops::sign(m, s, Some(data))) }
        })
    })
}

/// `C_SignUpdate`.
///
/// # Safety
/// `data` readable for `len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { feed(h, data, len, |s, data| ops::sign_update(s, data, false)) }
}

/// `C_SignFinal`.
///
/// # Safety
/// `sig`/`sig_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        with_session(h, |m, s| {
            let need = ops::sign_len(s)?;
            // SAFETY: the caller's output buffer and length.
            unsafe { output(sig, sig_len, need, || ops::sign(m, s, None)) }
        })
    })
}

/// `C_VerifyInit`.
///
/// # Safety
/// `mech` must point to a valid `CK_MECHANISM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { start(h, mech, |m, s, args| ops::sign_init(m, s, args, key, true)) }
}

/// `C_Verify`.
///
/// # Safety
/// `data` and `sig` readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's inputs.
        let (data, sig) = unsafe { (bytes(data, len)?, bytes(sig, sig_len)?) };
        with_session(h, |m, s| ops::verify(m, s, Some(data), sig))
    })
}

/// `C_VerifyUpdate`.
///
/// # Safety
/// `data` readable for `len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { feed(h, data, len, |s, data| ops::sign_update(s, data, true)) }
}

/// `C_VerifyFinal`.
///
/// # Safety
/// `sig` readable for `sig_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyFinal(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input.
        let sig = unsafe { bytes(sig, sig_len) }?;
        with_session(h, |m, s| ops::verify(m, s, None, sig))
    })
}

/// `C_EncryptInit`: AES-GCM or ChaCha20-Poly1305; the IV must be a zeroed 12-byte buffer,
/// which receives hsmd's nonce when the encryption runs.
///
/// # Safety
/// `mech` must point to a valid `CK_MECHANISM` whose parameters stay valid until the
/// encryption ends.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe {
        start(h, mech, |m, s, args| {
            ops::crypt_init(m, s, args, key, false)
        })
    }
}

/// The last step of an encryption: ciphertext then tag out, the nonce into the caller's IV.
///
/// # Safety
/// `out`/`out_len` per PKCS#11's output rules; the IV buffer as `C_EncryptInit` requires.
unsafe fn encrypt_out(
    h: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), CK_RV> {
    with_session(h, |m, s| {
        let need = ops::crypt_len(s, false, data.map_or(0, <[u8]>::len))?;
        let produce = || {
            let sealed = ops::encrypt(m, s, data)?;
            // SAFETY: the IV buffer of this operation's mechanism (see C_EncryptInit).
            unsafe { write_nonce(sealed.iv_addr, &sealed.nonce) };
            Ok(sealed.out)
        };
        // SAFETY: the caller's output buffer and length.
        unsafe { output(out, out_len, need, produce) }
    })
}

/// `C_Encrypt`.
///
/// # Safety
/// `data` readable for `len`; `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input, output and IV, per this function's contract.
        unsafe {
            let data = bytes(data, len)?;
            encrypt_out(h, Some(data), out, out_len)
        }
    })
}

/// `C_EncryptUpdate`: the input is gathered; everything comes out of `C_EncryptFinal`.
///
/// # Safety
/// `data` readable for `len`; `out_len` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { crypt_update(h, data, len, out, out_len, false) }
}

/// `C_EncryptFinal`.
///
/// # Safety
/// `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    guard(|| unsafe { encrypt_out(h, None, out, out_len) })
}

/// `C_DecryptInit`: the caller's 12-byte IV or nonce is honoured.
///
/// # Safety
/// `mech` must point to a valid `CK_MECHANISM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { start(h, mech, |m, s, args| ops::crypt_init(m, s, args, key, true)) }
}

/// The last step of a decryption.
///
/// # Safety
/// `out`/`out_len` per PKCS#11's output rules.
unsafe fn decrypt_out(
    h: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), CK_RV> {
    with_session(h, |m, s| {
        let need = ops::crypt_len(s, true, data.map_or(0, <[u8]>::len))?;
        let produce = || ops::decrypt(m, s, data).map(|p| p.to_vec());
        // SAFETY: the caller's output buffer and length.
        unsafe { output(out, out_len, need, produce) }
    })
}

/// `C_Decrypt`.
///
/// # Safety
/// `data` readable for `len`; `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input and output.
        unsafe {
            let data = bytes(data, len)?;
            decrypt_out(h, Some(data), out, out_len)
        }
    })
}

/// `C_DecryptUpdate`: gathered; the plaintext comes out of `C_DecryptFinal` once the tag
/// checks.
///
/// # Safety
/// `data` readable for `len`; `out_len` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { crypt_update(h, data, len, out, out_len, true) }
}

/// `C_DecryptFinal`.
///
/// # Safety
/// `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    guard(|| unsafe { decrypt_out(h, None, out, out_len) })
}

/// `C_DigestInit`: SHA-256 or SHA-512.
///
/// # Safety
/// `mech` must point to a valid `CK_MECHANISM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestInit(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { start(h, mech, |_, s, args| ops::digest_init(s, args.mech)) }
}

/// `C_Digest`.
///
/// # Safety
/// `data` readable for `len`; `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's input.
        let data = unsafe { bytes(data, len) }?;
        with_session(h, |_, s| {
            let need = ops::digest_len(s)?;
            let produce = || ops::digest_once(s, data);
            // SAFETY: the caller's output buffer and length.
            unsafe { output(out, out_len, need, produce) }
        })
    })
}

/// `C_DigestUpdate`.
///
/// # Safety
/// `data` readable for `len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    // SAFETY: per this function's contract.
    unsafe { feed(h, data, len, ops::digest_update) }
}

/// `C_DigestFinal`.
///
/// # Safety
/// `out`/`out_len` per PKCS#11's output rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        with_session(h, |_, s| {
            let need = ops::digest_len(s)?;
            // SAFETY: the caller's output buffer and length.
            unsafe { output(out, out_len, need, || ops::digest_final(s)) }
        })
    })
}
