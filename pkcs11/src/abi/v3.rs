//! The two PKCS#11 3.0 session functions the module offers (`C_LoginUser`,
//! `C_SessionCancel`).
#![allow(non_snake_case)]

use cryptoki_sys::*;

use super::ffi::{bytes, guard};
use crate::module::{self, lock};
use crate::token;

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
