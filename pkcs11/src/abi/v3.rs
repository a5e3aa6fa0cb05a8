//! The PKCS#11 3.0 interface: `C_GetInterfaceList`, `C_GetInterface`, and the two 3.0
//! session functions the module offers (`C_LoginUser`, `C_SessionCancel`).
#![allow(non_snake_case)]

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{FUNCTIONS, FUNCTIONS_3_0, bytes, guard, list, put};
use crate::module::{self, lock};
use crate::token;

/// The interface name PKCS#11 defines.
const NAME: &[u8] = b"PKCS 11\0";

/// The interfaces: 3.0 first (the default), then 2.40. Both are fork-tolerant: a forked child
/// reconnects and never touches its parent's connections.
struct Interfaces([CK_INTERFACE; 2]);

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
        pFunctionList: &FUNCTIONS as *const CK_FUNCTION_LIST as *mut c_void,
        flags: CKF_INTERFACE_FORK_SAFE,
    },
]);

/// The version of the function list an interface carries (both lists start with it).
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

/// `C_GetInterface`: by name ("PKCS 11" or null), version (null: 3.0) and flags.
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

/// `C_LoginUser`: `C_Login` with a user name, which must be the token's client name (or
/// empty).
///
/// # Safety
/// `pin` and `user_name` null or readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_LoginUser(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    user_name: *mut CK_UTF8CHAR,
    name_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's (pointer, length) pairs.
        let (pin, given) = unsafe { (bytes(pin, pin_len)?, bytes(user_name, name_len)?) };
        let pin = zeroize::Zeroizing::new(pin.to_vec());
        let m = module::get()?;
        let slot = &m.slots[m.slot_of(h)?];
        if !given.is_empty() && given != slot.profile.name.as_bytes() {
            return Err(CKR_USER_TYPE_INVALID);
        }
        token::login(slot, user, &pin, m.timeout)
    })
}

/// `C_SessionCancel`: ends the session's active operations named by `flags`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    guard(|| {
        let m = module::get()?;
        let s = m.session(h)?;
        let mut s = lock(&s);
        let ops = &mut s.ops;
        if flags & CKF_SIGN != 0 {
            ops.sign = None;
        }
        if flags & CKF_VERIFY != 0 {
            ops.verify = None;
        }
        if flags & CKF_ENCRYPT != 0 {
            ops.encrypt = None;
        }
        if flags & CKF_DECRYPT != 0 {
            ops.decrypt = None;
        }
        if flags & CKF_DIGEST != 0 {
            ops.digest = None;
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            ops.find = None;
        }
        Ok(())
    })
}
