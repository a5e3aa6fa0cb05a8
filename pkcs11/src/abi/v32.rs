//! The two PKCS#11 3.2 functions the module offers: `C_EncapsulateKey` and
//! `C_DecapsulateKey` (ML-KEM), in the argument order of the 3.2 headers.
#![allow(non_snake_case)]

use cryptoki_sys::*;

use super::ffi::{bytes, guard, mechanism, output, put, template, with_session};
use crate::kem;

/// `C_EncapsulateKey`: a new secret key from an ML-KEM public key, and the ciphertext for
/// the private key's holder. A NULL `ct` asks only for the ciphertext's length (no key is
/// made); too small a buffer gets the length and `CKR_BUFFER_TOO_SMALL` (no key is made).
///
/// # Safety
/// `mech` null or a valid `CK_MECHANISM`; `t` null or `n` readable attributes; `ct` null or
/// `*ct_len` writable bytes; `ct_len` and `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncapsulateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ct: *mut CK_BYTE,
    ct_len: *mut CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        // The handle must have somewhere to go before a key is made.
        if ct_len.is_null() || (out.is_null() && !ct.is_null()) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller's mechanism and template.
        let (args, t) = unsafe { (mechanism(mech)?, template(t, n)?) };
        let made = with_session(h, |m, s| {
            let e = kem::prepare_encapsulate(m, s, &args, key, &t)?;
            let mut made = None;
            let need = e.ciphertext_len;
            let produce = || {
                let (ciphertext, handle) = kem::encapsulate(m, s, e)?;
                made = Some(handle);
                Ok(ciphertext)
            };
            // SAFETY: the caller's ciphertext buffer and its length.
            unsafe { output(ct, ct_len, need, produce) }?;
            Ok(made)
        })?;
        match made {
            // SAFETY: `out` was checked non-null for a call with a buffer.
            Some(handle) => unsafe { put(out, handle) },
            None => Ok(()),
        }
    })
}

/// `C_DecapsulateKey`: a new secret key from an ML-KEM private key and a ciphertext.
///
/// # Safety
/// `mech` null or a valid `CK_MECHANISM`; `t` null or `n` readable attributes; `ct` null or
/// `ct_len` readable bytes; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecapsulateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    ct: *mut CK_BYTE,
    ct_len: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller's mechanism, template and ciphertext.
        let (args, t, ct) = unsafe { (mechanism(mech)?, template(t, n)?, bytes(ct, ct_len)?) };
        let handle = with_session(h, |m, s| kem::decapsulate(m, s, &args, key, &t, ct))?;
        // SAFETY: checked non-null, the caller's writable handle.
        unsafe { put(out, handle) }
    })
}
