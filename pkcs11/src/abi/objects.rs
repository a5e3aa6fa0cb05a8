//! Object functions: search, attributes, key generation and deletion, random.
#![allow(non_snake_case)]

use cryptoki_sys::*;

use super::ffi::{guard, mechanism, put, template, with_session};
use crate::keygen;
use crate::object::Value;
use crate::token;

/// `C_FindObjectsInit`.
///
/// # Safety
/// `t` must be null or point to `n` readable attributes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's template.
        let t = unsafe { template(t, n) }?;
        with_session(h, |m, s| token::find_init(m, s, t))
    })
}

/// `C_FindObjects`.
///
/// # Safety
/// `out` must have room for `max` handles; `count` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        if count.is_null() || (out.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = with_session(h, |_, s| {
            let left = s.ops.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
            let n = left.len().min(max as usize);
            Ok(left.drain(..n).collect::<Vec<_>>())
        })?;
        // SAFETY: `out` has room for `max >= found.len()` handles; `count` is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(found.as_ptr(), out, found.len());
            put(count, found.len() as CK_ULONG)
        }
    })
}

/// `C_FindObjectsFinal`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        with_session(h, |_, s| {
            s.ops
                .find
                .take()
                .map(|_| ())
                .ok_or(CKR_OPERATION_NOT_INITIALIZED)
        })
    })
}

/// `C_GetAttributeValue`: every attribute answered, each failing one marked unavailable;
/// the call's code is the gravest of them (sensitive, then invalid, then too small).
///
/// # Safety
/// `t` must point to `n` attributes, each buffer writable for its length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        if t.is_null() && n > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if n == 0 {
            return with_session(h, |m, s| token::attributes(m, s, o, &[]).map(|_| ()));
        }
        // SAFETY: non-null, `n` attributes of the caller's.
        let attrs = unsafe { std::slice::from_raw_parts_mut(t, n as usize) };
        let types: Vec<CK_ATTRIBUTE_TYPE> = attrs.iter().map(|a| a.type_).collect();
        let values = with_session(h, |m, s| token::attributes(m, s, o, &types))?;
        let (mut sensitive, mut invalid, mut small) = (false, false, false);
        for (a, v) in attrs.iter_mut().zip(values) {
            let bytes: &[u8] = match &v {
                Value::Bytes(v) => v,
                Value::Secret(v) => v,
                Value::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    sensitive = true;
                    continue;
                }
                Value::Invalid | Value::NeedsPublic | Value::NeedsSecret => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    invalid = true;
                    continue;
                }
            };
            if a.pValue.is_null() {
                a.ulValueLen = bytes.len() as CK_ULONG;
            } else if a.ulValueLen as usize >= bytes.len() {
                // SAFETY: the caller's buffer holds ulValueLen >= bytes.len() bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), a.pValue as *mut u8, bytes.len())
                };
                a.ulValueLen = bytes.len() as CK_ULONG;
            } else {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                small = true;
            }
        }
        match (sensitive, invalid, small) {
            (true, ..) => Err(CKR_ATTRIBUTE_SENSITIVE),
            (_, true, _) => Err(CKR_ATTRIBUTE_TYPE_INVALID),
            (.., true) => Err(CKR_BUFFER_TOO_SMALL),
            _ => Ok(()),
        }
    })
}

/// `C_GetObjectSize`: not known (the key lives in hsmd).
///
/// # Safety
/// `size` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        with_session(h, |m, s| token::attributes(m, s, o, &[]))?;
        // SAFETY: the caller's writable length.
        unsafe { put(size, CK_UNAVAILABLE_INFORMATION) }
    })
}

/// `C_GenerateKeyPair`.
///
/// # Safety
/// Pointers as PKCS#11 defines them; the handles' pointers writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pub_t: *mut CK_ATTRIBUTE,
    pub_n: CK_ULONG,
    priv_t: *mut CK_ATTRIBUTE,
    priv_n: CK_ULONG,
    pub_out: *mut CK_OBJECT_HANDLE,
    priv_out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        if pub_out.is_null() || priv_out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller's mechanism and templates.
        let (args, public, private) = unsafe {
            (
                mechanism(mech)?,
                template(pub_t, pub_n)?,
                template(priv_t, priv_n)?,
            )
        };
        let (p, k) = with_session(h, |m, s| {
            keygen::generate_key_pair(m, s, args.mech, &public, &private)
        })?;
        // SAFETY: both checked non-null, the caller's writable handles.
        unsafe {
            put(pub_out, p)?;
            put(priv_out, k)
        }
    })
}

/// `C_GenerateKey`.
///
/// # Safety
/// Pointers as PKCS#11 defines them; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller's mechanism and template.
        let (args, t) = unsafe { (mechanism(mech)?, template(t, n)?) };
        let k = with_session(h, |m, s| keygen::generate_key(m, s, args.mech, &t))?;
        // SAFETY: checked non-null.
        unsafe { put(out, k) }
    })
}

/// `C_DestroyObject`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    guard(|| with_session(h, |m, s| token::destroy(m, s, o)))
}

/// `C_SeedRandom`: hsmd's generator takes no seed.
///
/// # Safety
/// Reads no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SeedRandom(
    h: CK_SESSION_HANDLE,
    _seed: *mut CK_BYTE,
    _len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        with_session(h, |_, _| Ok(()))?;
        Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
    })
}

/// `C_GenerateRandom`.
///
/// # Safety
/// `out` must be writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateRandom(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        if out.is_null() && len > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let r = with_session(h, |m, s| token::random(m, s, len as usize))?;
        // SAFETY: `out` holds `len == r.len()` writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), out, r.len()) };
        Ok(())
    })
}
