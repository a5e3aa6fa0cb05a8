//! The functions the module does not offer: each answers at once with the code PKCS#11
//! gives for it. Listed in the README's PKCS#11 section.
#![allow(non_snake_case)]

use std::os::raw::c_void;

use cryptoki_sys::*;

macro_rules! unsupported {
    ($($(#[$doc:meta])* $name:ident($($ty:ty),*) => $rv:expr;)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// Reads none of its arguments.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($(_: $ty),*) -> CK_RV {
                $rv
            }
        )*
    };
}

unsupported! {
    /// Tokens are made by `hsmd init`, not by PKCS#11.
    C_InitToken(CK_SLOT_ID, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PINs are set in the module's configuration (`hsmctl hash-pin`).
    C_InitPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PINs are set in the module's configuration (`hsmctl hash-pin`).
    C_SetPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Operation state is not exportable.
    C_GetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Operation state is not importable.
    C_SetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Keys are generated in hsmd (import goes through `hsmctl import`).
    C_CreateObject(CK_SESSION_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Keys are not copied.
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// hsmd keys are immutable (CKA_MODIFIABLE is false).
    C_SetAttributeValue(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG) => CKR_ACTION_PROHIBITED;
    /// Not offered.
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// No mechanism with recovery is offered.
    C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// No mechanism with recovery is offered.
    C_SignRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// No mechanism with recovery is offered.
    C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// No mechanism with recovery is offered.
    C_VerifyRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Dual-function operations are not offered.
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Dual-function operations are not offered.
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Dual-function operations are not offered.
    C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Dual-function operations are not offered.
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// hsmd's wrap blobs are reached through `hsmctl wrap`, not PKCS#11 wrapping.
    C_WrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_WrapKey`.
    C_UnwrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// X25519 derivation goes through `hsmctl derive`.
    C_DeriveKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// Legacy: functions never run in parallel with their caller.
    C_GetFunctionStatus(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL;
    /// Legacy: functions never run in parallel with their caller.
    C_CancelFunction(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL;
    /// Tokens are never inserted or removed.
    C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, *mut c_void) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.0 message-based encryption is not offered.
    C_MessageEncryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageEncryptInit`.
    C_EncryptMessage(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageEncryptInit`.
    C_EncryptMessageBegin(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageEncryptInit`.
    C_EncryptMessageNext(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG, CK_FLAGS) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageEncryptInit`.
    C_MessageEncryptFinal(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.0 message-based decryption is not offered.
    C_MessageDecryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageDecryptInit`.
    C_DecryptMessage(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageDecryptInit`.
    C_DecryptMessageBegin(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageDecryptInit`.
    C_DecryptMessageNext(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG, CK_FLAGS) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageDecryptInit`.
    C_MessageDecryptFinal(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.0 message-based signing is not offered.
    C_MessageSignInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageSignInit`.
    C_SignMessage(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageSignInit`.
    C_SignMessageBegin(CK_SESSION_HANDLE, *mut c_void, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageSignInit`.
    C_SignMessageNext(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageSignInit`.
    C_MessageSignFinal(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.0 message-based verification is not offered.
    C_MessageVerifyInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageVerifyInit`.
    C_VerifyMessage(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageVerifyInit`.
    C_VerifyMessageBegin(CK_SESSION_HANDLE, *mut c_void, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageVerifyInit`.
    C_VerifyMessageNext(CK_SESSION_HANDLE, *mut c_void, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_MessageVerifyInit`.
    C_MessageVerifyFinal(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.2 verification with the signature given first is not offered.
    C_VerifySignatureInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_VerifySignatureInit`.
    C_VerifySignature(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_VerifySignatureInit`.
    C_VerifySignatureUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_VerifySignatureInit`.
    C_VerifySignatureFinal(CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
    /// The module keeps no validation (FIPS) state.
    C_GetSessionValidationFlags(CK_SESSION_HANDLE, CK_SESSION_VALIDATION_FLAGS_TYPE, *mut CK_FLAGS) => CKR_FUNCTION_NOT_SUPPORTED;
    /// PKCS#11 3.2 asynchronous operations are not offered.
    C_AsyncComplete(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, *mut CK_ASYNC_DATA) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_AsyncComplete`.
    C_AsyncGetID(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_AsyncComplete`.
    C_AsyncJoin(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_BYTE, CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_WrapKey`.
    C_WrapKeyAuthenticated(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) => CKR_FUNCTION_NOT_SUPPORTED;
    /// See `C_WrapKey`.
    C_UnwrapKeyAuthenticated(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_BYTE, CK_ULONG, *mut CK_OBJECT_HANDLE) => CKR_FUNCTION_NOT_SUPPORTED;
}
