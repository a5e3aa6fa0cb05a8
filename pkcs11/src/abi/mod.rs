//! The C ABI: `C_GetFunctionList` and every function it lists. This is the only place that
//! reads or writes the caller's memory; each function turns its pointers into Rust values
//! (checking for null and lengths), calls the safe core, and writes the answer back. Every
//! entry catches panics (a panic answers `CKR_GENERAL_ERROR`, never unwinds into C).
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use cryptoki_sys::*;

use crate::module::{self, Module, Rv, Session, lock};
use crate::ops::MechArgs;
use crate::token::Template;

mod crypto;
mod general;
mod objects;
mod unsupported;
mod v3;

/// Runs one call: its answer, `CKR_GENERAL_ERROR` if it panicked.
fn guard(f: impl FnOnce() -> Result<(), Rv>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Runs `f` with the module and session `h` locked for this call.
fn with_session<T>(
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
unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Rv> {
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
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template, Rv> {
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
unsafe fn output(
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
unsafe fn param<T: Copy>(m: &CK_MECHANISM) -> Result<T, Rv> {
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
unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<MechArgs, Rv> {
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
unsafe fn write_nonce(addr: usize, nonce: &[u8; 12]) {
    if addr != 0 {
        // SAFETY: per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(nonce.as_ptr(), addr as *mut u8, nonce.len()) };
    }
}

/// Fills a fixed-size, blank-padded PKCS#11 text field.
fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
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
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Rv> {
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
unsafe fn list<T: Copy>(items: &[T], out: *mut T, count: *mut CK_ULONG) -> Result<(), Rv> {
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

/// A function list: every PKCS#11 2.40 function, then `$extra` (the 3.0 additions).
macro_rules! function_list {
    ($ty:ident, $major:expr, $minor:expr, { $($extra:ident: $val:expr,)* }) => {
        $ty {
            version: CK_VERSION { major: $major, minor: $minor },
            C_Initialize: Some(general::C_Initialize),
            C_Finalize: Some(general::C_Finalize),
            C_GetInfo: Some(general::C_GetInfo),
            C_GetFunctionList: Some(C_GetFunctionList),
            C_GetSlotList: Some(general::C_GetSlotList),
            C_GetSlotInfo: Some(general::C_GetSlotInfo),
            C_GetTokenInfo: Some(general::C_GetTokenInfo),
            C_GetMechanismList: Some(general::C_GetMechanismList),
            C_GetMechanismInfo: Some(general::C_GetMechanismInfo),
            C_InitToken: Some(unsupported::C_InitToken),
            C_InitPIN: Some(unsupported::C_InitPIN),
            C_SetPIN: Some(unsupported::C_SetPIN),
            C_OpenSession: Some(general::C_OpenSession),
            C_CloseSession: Some(general::C_CloseSession),
            C_CloseAllSessions: Some(general::C_CloseAllSessions),
            C_GetSessionInfo: Some(general::C_GetSessionInfo),
            C_GetOperationState: Some(unsupported::C_GetOperationState),
            C_SetOperationState: Some(unsupported::C_SetOperationState),
            C_Login: Some(general::C_Login),
            C_Logout: Some(general::C_Logout),
            C_CreateObject: Some(unsupported::C_CreateObject),
            C_CopyObject: Some(unsupported::C_CopyObject),
            C_DestroyObject: Some(objects::C_DestroyObject),
            C_GetObjectSize: Some(objects::C_GetObjectSize),
            C_GetAttributeValue: Some(objects::C_GetAttributeValue),
            C_SetAttributeValue: Some(unsupported::C_SetAttributeValue),
            C_FindObjectsInit: Some(objects::C_FindObjectsInit),
            C_FindObjects: Some(objects::C_FindObjects),
            C_FindObjectsFinal: Some(objects::C_FindObjectsFinal),
            C_EncryptInit: Some(crypto::C_EncryptInit),
            C_Encrypt: Some(crypto::C_Encrypt),
            C_EncryptUpdate: Some(crypto::C_EncryptUpdate),
            C_EncryptFinal: Some(crypto::C_EncryptFinal),
            C_DecryptInit: Some(crypto::C_DecryptInit),
            C_Decrypt: Some(crypto::C_Decrypt),
            C_DecryptUpdate: Some(crypto::C_DecryptUpdate),
            C_DecryptFinal: Some(crypto::C_DecryptFinal),
            C_DigestInit: Some(crypto::C_DigestInit),
            C_Digest: Some(crypto::C_Digest),
            C_DigestUpdate: Some(crypto::C_DigestUpdate),
            C_DigestKey: Some(unsupported::C_DigestKey),
            C_DigestFinal: Some(crypto::C_DigestFinal),
            C_SignInit: Some(crypto::C_SignInit),
            C_Sign: Some(crypto::C_Sign),
            C_SignUpdate: Some(crypto::C_SignUpdate),
            C_SignFinal: Some(crypto::C_SignFinal),
            C_SignRecoverInit: Some(unsupported::C_SignRecoverInit),
            C_SignRecover: Some(unsupported::C_SignRecover),
            C_VerifyInit: Some(crypto::C_VerifyInit),
            C_Verify: Some(crypto::C_Verify),
            C_VerifyUpdate: Some(crypto::C_VerifyUpdate),
            C_VerifyFinal: Some(crypto::C_VerifyFinal),
            C_VerifyRecoverInit: Some(unsupported::C_VerifyRecoverInit),
            C_VerifyRecover: Some(unsupported::C_VerifyRecover),
            C_DigestEncryptUpdate: Some(unsupported::C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(unsupported::C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(unsupported::C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(unsupported::C_DecryptVerifyUpdate),
            C_GenerateKey: Some(objects::C_GenerateKey),
            C_GenerateKeyPair: Some(objects::C_GenerateKeyPair),
            C_WrapKey: Some(unsupported::C_WrapKey),
            C_UnwrapKey: Some(unsupported::C_UnwrapKey),
            C_DeriveKey: Some(unsupported::C_DeriveKey),
            C_SeedRandom: Some(objects::C_SeedRandom),
            C_GenerateRandom: Some(objects::C_GenerateRandom),
            C_GetFunctionStatus: Some(unsupported::C_GetFunctionStatus),
            C_CancelFunction: Some(unsupported::C_CancelFunction),
            C_WaitForSlotEvent: Some(unsupported::C_WaitForSlotEvent),
            $($extra: Some($val),)*
        }
    };
}

/// The PKCS#11 2.40 list (`C_GetFunctionList`).
static FUNCTIONS: CK_FUNCTION_LIST = function_list!(CK_FUNCTION_LIST, 2, 40, {});

/// The PKCS#11 3.0 list (`C_GetInterface`): the same functions, and the 3.0 ones.
static FUNCTIONS_3_0: CK_FUNCTION_LIST_3_0 = function_list!(CK_FUNCTION_LIST_3_0, 3, 0, {
    C_GetInterfaceList: v3::C_GetInterfaceList,
    C_GetInterface: v3::C_GetInterface,
    C_LoginUser: v3::C_LoginUser,
    C_SessionCancel: v3::C_SessionCancel,
    C_MessageEncryptInit: unsupported::C_MessageEncryptInit,
    C_EncryptMessage: unsupported::C_EncryptMessage,
    C_EncryptMessageBegin: unsupported::C_EncryptMessageBegin,
    C_EncryptMessageNext: unsupported::C_EncryptMessageNext,
    C_MessageEncryptFinal: unsupported::C_MessageEncryptFinal,
    C_MessageDecryptInit: unsupported::C_MessageDecryptInit,
    C_DecryptMessage: unsupported::C_DecryptMessage,
    C_DecryptMessageBegin: unsupported::C_DecryptMessageBegin,
    C_DecryptMessageNext: unsupported::C_DecryptMessageNext,
    C_MessageDecryptFinal: unsupported::C_MessageDecryptFinal,
    C_MessageSignInit: unsupported::C_MessageSignInit,
    C_SignMessage: unsupported::C_SignMessage,
    C_SignMessageBegin: unsupported::C_SignMessageBegin,
    C_SignMessageNext: unsupported::C_SignMessageNext,
    C_MessageSignFinal: unsupported::C_MessageSignFinal,
    C_MessageVerifyInit: unsupported::C_MessageVerifyInit,
    C_VerifyMessage: unsupported::C_VerifyMessage,
    C_VerifyMessageBegin: unsupported::C_VerifyMessageBegin,
    C_VerifyMessageNext: unsupported::C_VerifyMessageNext,
    C_MessageVerifyFinal: unsupported::C_MessageVerifyFinal,
});

/// The module's entry point: the PKCS#11 2.40 function list.
///
/// # Safety
/// `pp` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        // SAFETY: `pp` is null (refused) or the caller's writable pointer; the list is a
        // static that callers only read.
        unsafe {
            put(
                pp,
                &FUNCTIONS as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST,
            )
        }
    })
}
