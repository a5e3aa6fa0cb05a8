//! Reading and writing the caller's memory (each function checks null pointers and
//! lengths), and the panic guard every entry point runs under.
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use cryptoki_sys::*;
use ferrohsm_proto::MAX_CONTEXT;

use crate::module::{self, Module, Rv, Session, lock};
use crate::ops::MechArgs;
use crate::session_ops::SignContext;
use crate::token::Template;

/// Runs one call: its answer, `CKR_GENERAL_ERROR` if it panicked.
pub(super) fn guard(f: impl FnOnce() -> Result<(), Rv>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Runs `f` with the module and session `h` locked for this call.
pub(super) fn with_session<T>(
    h: CK_SESSION_HANDLE,
    f: impl FnOnce(&Module, &mut Session) -> Result<T, Rv>,
) -> Result<T, Rv> {
    let m = module::get()?;
    let s = m.session(h)?;
    let mut s = lock(&s);
    f(&m, &mut s)
}

/// The caller's bytes `p[..len]`.
///
/// # Safety
/// `p` must be null or point to `len` readable bytes that stay valid for `'a`.
pub(super) unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Rv> {
    let len = usize::try_from(len).map_err(|_| CKR_ARGUMENTS_BAD)?;
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes (PKCS#11's contract
    // for every (pointer, length) pair it passes).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Copies the caller's attribute template (types and values).
///
/// # Safety
/// `p` must be null or point to `n` `CK_ATTRIBUTE`s whose values are readable.
pub(super) unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template, Rv> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let n = usize::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)?;
    // SAFETY: non-null and the caller passes `n` attributes.
    let attrs = unsafe { std::slice::from_raw_parts(p, n) };
    attrs
        .iter()
        .map(|a| {
            // SAFETY: each attribute's pValue points to ulValueLen bytes (or is null and 0).
            let v = unsafe { bytes(a.pValue as *const CK_BYTE, a.ulValueLen) }?;
            Ok((a.type_, v.to_vec()))
        })
        .collect()
}

/// Writes an output of `need` bytes by PKCS#11's rules: with no buffer, only its length
/// (the operation goes on); with a buffer too small, the length and
/// `CKR_BUFFER_TOO_SMALL` (the operation goes on); else `produce()`'s bytes.
///
/// # Safety
/// `len_p` must be null or writable; `out` null or `*len_p` writable bytes.
pub(super) unsafe fn output(
    out: *mut CK_BYTE,
    len_p: *mut CK_ULONG,
    need: usize,
    produce: impl FnOnce() -> Result<Vec<u8>, Rv>,
) -> Result<(), Rv> {
    if len_p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: `len_p` is non-null and the caller's writable length.
    let have = unsafe { *len_p };
    if out.is_null() {
        // SAFETY: as above.
        unsafe { *len_p = need as CK_ULONG };
        return Ok(());
    }
    if (have as usize) < need {
        // SAFETY: as above.
        unsafe { *len_p = need as CK_ULONG };
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    let v = zeroize::Zeroizing::new(produce()?);
    if v.len() > have as usize {
        return Err(CKR_GENERAL_ERROR);
    }
    // SAFETY: `out` holds `have >= v.len()` writable bytes (the caller's buffer), and cannot
    // overlap our own fresh vector.
    unsafe {
        std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len());
        *len_p = v.len() as CK_ULONG;
    }
    Ok(())
}

/// Reads a value of type `T` from a mechanism parameter of exactly its size.
///
/// # Safety
/// `m.pParameter` must be null or point to `m.ulParameterLen` readable bytes.
pub(super) unsafe fn param<T: Copy>(m: &CK_MECHANISM) -> Result<T, Rv> {
    if m.pParameter.is_null() || m.ulParameterLen as usize != std::mem::size_of::<T>() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    // SAFETY: non-null with exactly size_of::<T>() bytes; read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(m.pParameter as *const T) })
}

/// The mechanism and its parameters, copied out of the caller's `CK_MECHANISM`.
///
/// # Safety
/// `p` must be null or point to a valid `CK_MECHANISM` whose parameter is readable.
pub(super) unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<MechArgs, Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null; the caller passes a CK_MECHANISM.
    let m = unsafe { *p };
    let mut args = MechArgs {
        mech: m.mechanism,
        ..MechArgs::default()
    };
    match m.mechanism {
        CKM_AES_GCM => {
            // SAFETY: the parameter of CKM_AES_GCM is a CK_GCM_PARAMS.
            let g: CK_GCM_PARAMS = unsafe { param(&m) }?;
            // SAFETY: the IV and AAD are (pointer, length) pairs of the caller's.
            args.iv = Some(unsafe { bytes(g.pIv, g.ulIvLen) }?.to_vec());
            // SAFETY: as above.
            args.aad = unsafe { bytes(g.pAAD, g.ulAADLen) }?.to_vec();
            args.iv_addr = g.pIv as usize;
            args.tag_bits = Some(g.ulTagBits);
        }
        CKM_CHACHA20_POLY1305 => {
            // SAFETY: the parameter of CKM_CHACHA20_POLY1305 is this struct.
            let c: CK_SALSA20_CHACHA20_POLY1305_PARAMS = unsafe { param(&m) }?;
            // SAFETY: (pointer, length) pairs of the caller's.
            args.iv = Some(unsafe { bytes(c.pNonce, c.ulNonceLen) }?.to_vec());
            // SAFETY: as above.
            args.aad = unsafe { bytes(c.pAAD, c.ulAADLen) }?.to_vec();
            args.iv_addr = c.pNonce as usize;
        }
        CKM_EDDSA if !m.pParameter.is_null() => {
            // SAFETY: an optional CK_EDDSA_PARAMS.
            let e: CK_EDDSA_PARAMS = unsafe { param(&m) }?;
            args.eddsa_variant = e.phFlag != 0 || e.ulContextDataLen != 0;
        }
        CKM_ML_DSA if !m.pParameter.is_null() => {
            // SAFETY: an optional CK_SIGN_ADDITIONAL_CONTEXT.
            let c: CK_SIGN_ADDITIONAL_CONTEXT = unsafe { param(&m) }?;
            // Longer than FIPS 204 allows: refused before the caller's memory is read.
            if c.ulContextLen > MAX_CONTEXT as CK_ULONG {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the context is a (pointer, length) pair of the caller's.
            let context = unsafe { bytes(c.pContext, c.ulContextLen) }?.to_vec();
            args.ml_dsa = Some(SignContext {
                hedge: c.hedgeVariant,
                context,
            });
        }
        // ML-KEM has no parameter.
        CKM_ML_KEM if !m.pParameter.is_null() || m.ulParameterLen != 0 => {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        _ => {}
    }
    Ok(args)
}

/// Writes `nonce` into the caller's IV buffer at `addr` (AEAD encryption: hsmd chose it).
///
/// # Safety
/// `addr` must be the IV pointer of the `CK_MECHANISM` given to `C_EncryptInit`, pointing to
/// 12 writable bytes that the caller keeps valid until the encryption ends (as PKCS#11
/// requires of mechanism parameters for the length of an operation).
pub(super) unsafe fn write_nonce(addr: usize, nonce: &[u8; 12]) {
    if addr != 0 {
        // SAFETY: per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(nonce.as_ptr(), addr as *mut u8, nonce.len()) };
    }
}

/// Fills a fixed-size, blank-padded PKCS#11 text field.
pub(super) fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Writes one value through a caller's pointer.
///
/// # Safety
/// `p` must be null or writable for a `T`.
pub(super) unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null and writable per the contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Writes a list by PKCS#11's rules (no buffer: the count; too small: the count and
/// `CKR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `count` must be null or writable; `out` null or `*count` writable elements.
pub(super) unsafe fn list<T: Copy>(
    items: &[T],
    out: *mut T,
    count: *mut CK_ULONG,
) -> Result<(), Rv> {
    if count.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: `count` is non-null and writable.
    let have = unsafe { *count } as usize;
    // SAFETY: as above.
    unsafe { *count = items.len() as CK_ULONG };
    if out.is_null() {
        return Ok(());
    }
    if have < items.len() {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `out` has room for `have >= items.len()` elements.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len()) };
    Ok(())
}
