//! The entry points that hand out the functions: `C_GetFunctionList` (the PKCS#11 2.40 list)
//! and the PKCS#11 3.0 and 3.2 interfaces (`C_GetInterfaceList`, `C_GetInterface`), with the
//! function lists they point to.
#![allow(non_snake_case)]
#![allow(unsafe_code)]

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::ffi::{guard, list, put};
use super::{crypto, general, objects, unsupported, v3, v32};

/// The interface name PKCS#11 defines.
const NAME: &[u8] = b"PKCS 11\0";

/// The interfaces: 3.0 first (the default, which callers asking for no version get), then
/// 3.2 (3.0 and the KEM functions) and 2.40. All are fork-tolerant: a forked child reconnects
/// and never touches its parent's connections.
struct Interfaces([CK_INTERFACE; 3]);

// SAFETY: the pointers name static, never-written data (the name and the function lists), so
// sharing them between threads is sound.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTIONS_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: CKF_INTERFACE_FORK_SAFE,
    },
    CK_INTERFACE {
        pInterfaceName: NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTIONS_3_2 as *const CK_FUNCTION_LIST_3_2 as *mut c_void,
        flags: CKF_INTERFACE_FORK_SAFE,
    },
    CK_INTERFACE {
        pInterfaceName: NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTIONS as *const CK_FUNCTION_LIST as *mut c_void,
        flags: CKF_INTERFACE_FORK_SAFE,
    },
]);

/// The version of the function list an interface carries (every list starts with it).
fn version_of(i: &CK_INTERFACE) -> CK_VERSION {
    // SAFETY: every pFunctionList above points to a list whose first field is its version.
    unsafe { *(i.pFunctionList as *const CK_VERSION) }
}

/// `C_GetInterfaceList`.
///
/// # Safety
/// `count` must be writable; `out` null or room for `*count` interfaces.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(out: *mut CK_INTERFACE, count: *mut CK_ULONG) -> CK_RV {
    // SAFETY: per this function's contract.
    guard(|| unsafe { list(&INTERFACES.0, out, count) })
}

/// `C_GetInterface`: by name ("PKCS 11" or null), version (null: 3.0; 3.2 and 2.40 on
/// request) and flags.
///
/// # Safety
/// `name` null or a NUL-terminated string; `version` null or readable; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    out: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard(|| {
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if !name.is_null() {
            // SAFETY: a NUL-terminated string of the caller's.
            let n = unsafe { std::ffi::CStr::from_ptr(name as *const std::os::raw::c_char) };
            if n.to_bytes_with_nul() != NAME {
                return Err(CKR_ARGUMENTS_BAD);
            }
        }
        // SAFETY: null or the caller's readable version.
        let want = (!version.is_null()).then(|| unsafe { *version });
        let found = INTERFACES
            .0
            .iter()
            .find(|i| {
                let v = version_of(i);
                want.is_none_or(|w| w.major == v.major && w.minor == v.minor)
                    && i.flags & flags == flags
            })
            .ok_or(CKR_ARGUMENTS_BAD)?;
        // SAFETY: `out` is non-null and writable; the interface is static.
        unsafe { put(out, found as *const CK_INTERFACE as *mut CK_INTERFACE) }
    })
}

/// A function list: every PKCS#11 2.40 function, then `$extra` (the 3.x additions).
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

/// A PKCS#11 3.x function list: the 2.40 functions, the 3.0 ones, then `$extra` (3.2's).
macro_rules! function_list_3 {
    ($ty:ident, $major:expr, $minor:expr, { $($extra:ident: $val:expr,)* }) => {
        function_list!($ty, $major, $minor, {
            C_GetInterfaceList: C_GetInterfaceList,
            C_GetInterface: C_GetInterface,
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
            $($extra: $val,)*
        })
    };
}

/// The PKCS#11 3.0 list (`C_GetInterface`'s default): the 2.40 functions and the 3.0 ones.
static FUNCTIONS_3_0: CK_FUNCTION_LIST_3_0 = function_list_3!(CK_FUNCTION_LIST_3_0, 3, 0, {});

/// The PKCS#11 3.2 list: the 3.0 list, `C_EncapsulateKey` and `C_DecapsulateKey`, and 3.2's
/// other additions (not offered).
static FUNCTIONS_3_2: CK_FUNCTION_LIST_3_2 = function_list_3!(CK_FUNCTION_LIST_3_2, 3, 2, {
    C_EncapsulateKey: v32::C_EncapsulateKey,
    C_DecapsulateKey: v32::C_DecapsulateKey,
    C_VerifySignatureInit: unsupported::C_VerifySignatureInit,
    C_VerifySignature: unsupported::C_VerifySignature,
    C_VerifySignatureUpdate: unsupported::C_VerifySignatureUpdate,
    C_VerifySignatureFinal: unsupported::C_VerifySignatureFinal,
    C_GetSessionValidationFlags: unsupported::C_GetSessionValidationFlags,
    C_AsyncComplete: unsupported::C_AsyncComplete,
    C_AsyncGetID: unsupported::C_AsyncGetID,
    C_AsyncJoin: unsupported::C_AsyncJoin,
    C_WrapKeyAuthenticated: unsupported::C_WrapKeyAuthenticated,
    C_UnwrapKeyAuthenticated: unsupported::C_UnwrapKeyAuthenticated,
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
