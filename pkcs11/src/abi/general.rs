//! Library, slot, token, mechanism and session functions.
#![allow(non_snake_case)]

use std::os::raw::c_void;
use std::sync::atomic::Ordering;

use cryptoki_sys::*;
use sha2::Digest as _;

use super::ffi::{bytes, guard, list, pad, put, with_session};
use crate::module::{self, lock};
use crate::{config, mech, token};

/// `C_Initialize`: reads the configuration. No thread and no connection is started here.
///
/// # Safety
/// `args` must be null or point to a `CK_C_INITIALIZE_ARGS`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        if !args.is_null() {
            // SAFETY: non-null, and PKCS#11 passes a CK_C_INITIALIZE_ARGS here.
            let a = unsafe { *(args as *const CK_C_INITIALIZE_ARGS) };
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // The module always locks with the operating system's primitives; an
            // application's own mutex functions (which p11-kit passes without
            // CKF_OS_LOCKING_OK) are not needed for that, so they are accepted and unused.
            // CKF_LIBRARY_CANT_CREATE_OS_THREADS (p11-kit always sets it) is honoured: a
            // session starts no thread (shm is driven from the calling thread; TCP and TLS
            // to a numeric address need no resolver thread).
        }
        let loaded = config::locate().and_then(|p| config::load(&p));
        match loaded {
            Ok(c) => module::initialize(c),
            Err(e) => {
                // PKCS#11 has no channel for why; stderr (never stdout) is the only one.
                eprintln!("ferrohsm-pkcs11: {e}");
                Err(CKR_GENERAL_ERROR)
            }
        }
    })
}

/// `C_Finalize`.
///
/// # Safety
/// `reserved` must be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        module::finalize()
    })
}

/// `C_GetInfo`.
///
/// # Safety
/// `info` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        module::get()?;
        let i = CK_INFO {
            cryptokiVersion: CK_VERSION {
                major: 2,
                minor: 40,
            },
            manufacturerID: pad("FerroHSM"),
            flags: 0,
            libraryDescription: pad("FerroHSM PKCS#11 module"),
            libraryVersion: CK_VERSION { major: 0, minor: 1 },
        };
        // SAFETY: the caller's writable CK_INFO (null is refused).
        unsafe { put(info, i) }
    })
}

/// `C_GetSlotList`: one slot per profile, each with its token present.
///
/// # Safety
/// `count` must be writable; `out` null or room for `*count` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotList(
    _present: CK_BBOOL,
    out: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module::get()?;
        let ids: Vec<CK_SLOT_ID> = (0..m.slots.len() as CK_SLOT_ID).collect();
        // SAFETY: per this function's contract.
        unsafe { list(&ids, out, count) }
    })
}

/// `C_GetSlotInfo`.
///
/// # Safety
/// `info` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotInfo(id: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let m = module::get()?;
        let slot = m.slot(id)?;
        let i = CK_SLOT_INFO {
            slotDescription: pad(&format!("FerroHSM client {}", slot.profile.name)),
            manufacturerID: pad("FerroHSM"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
        };
        // SAFETY: the caller's writable CK_SLOT_INFO.
        unsafe { put(info, i) }
    })
}

/// `C_GetTokenInfo`: the token label is the client name.
///
/// # Safety
/// `info` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetTokenInfo(id: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let m = module::get()?;
        let slot = m.slot(id)?;
        let (sessions, rw) = m.counts(id as usize);
        let mut flags = CKF_RNG | CKF_TOKEN_INITIALIZED;
        if slot.pin.is_some() {
            flags |= CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED;
            if *lock(&slot.failures) > 0 {
                flags |= CKF_USER_PIN_COUNT_LOW;
            }
        }
        let serial: String = sha2::Sha256::digest(slot.profile.name.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let i = CK_TOKEN_INFO {
            label: pad(&slot.profile.name),
            manufacturerID: pad("FerroHSM"),
            model: pad("hsmd"),
            serialNumber: pad(&serial),
            flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw,
            ulMaxPinLen: ferrohsm_client::pin::MAX_PIN_LEN as CK_ULONG,
            ulMinPinLen: 1,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
            utcTime: [b' '; 16],
        };
        // SAFETY: the caller's writable CK_TOKEN_INFO.
        unsafe { put(info, i) }
    })
}

/// `C_GetMechanismList`.
///
/// # Safety
/// `count` must be writable; `out` null or room for `*count` types.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismList(
    id: CK_SLOT_ID,
    out: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        module::get()?.slot(id)?;
        let all: Vec<CK_MECHANISM_TYPE> = mech::ALL.iter().map(|m| m.0).collect();
        // SAFETY: per this function's contract.
        unsafe { list(&all, out, count) }
    })
}

/// `C_GetMechanismInfo`.
///
/// # Safety
/// `info` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismInfo(
    id: CK_SLOT_ID,
    m: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        module::get()?.slot(id)?;
        let i = mech::info(m).ok_or(CKR_MECHANISM_INVALID)?;
        // SAFETY: the caller's writable CK_MECHANISM_INFO.
        unsafe { put(info, i) }
    })
}

/// `C_OpenSession`. Sessions are serial (PKCS#11 requires the flag); notifications are not
/// sent.
///
/// # Safety
/// `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_OpenSession(
    id: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let h = module::get()?.open(id, flags & CKF_RW_SESSION != 0)?;
        // SAFETY: checked non-null; the caller's writable handle.
        unsafe { put(out, h) }
    })
}

/// `C_CloseSession`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module::get()?.close(h))
}

/// `C_CloseAllSessions`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseAllSessions(id: CK_SLOT_ID) -> CK_RV {
    guard(|| module::get()?.close_all(id))
}

/// `C_GetSessionInfo`.
///
/// # Safety
/// `info` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSessionInfo(
    h: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    guard(|| {
        let i = with_session(h, |m, s| {
            let user = m.slots[s.slot].logged_in.load(Ordering::Acquire);
            let state = match (s.rw, user) {
                (true, true) => CKS_RW_USER_FUNCTIONS,
                (true, false) => CKS_RW_PUBLIC_SESSION,
                (false, true) => CKS_RO_USER_FUNCTIONS,
                (false, false) => CKS_RO_PUBLIC_SESSION,
            };
            Ok(CK_SESSION_INFO {
                slotID: s.slot as CK_SLOT_ID,
                state,
                flags: CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 },
                ulDeviceError: 0,
            })
        })?;
        // SAFETY: the caller's writable CK_SESSION_INFO.
        unsafe { put(info, i) }
    })
}

/// `C_Login`.
///
/// # Safety
/// `pin` must be null or point to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: the caller's (pointer, length) pair.
        let pin = zeroize::Zeroizing::new(unsafe { bytes(pin, len) }?.to_vec());
        let m = module::get()?;
        let slot = m.slot_of(h)?;
        token::login(&m.slots[slot], user, &pin, m.timeout)
    })
}

/// `C_Logout`.
///
/// # Safety
/// Takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        let m = module::get()?;
        let slot = m.slot_of(h)?;
        token::logout(&m.slots[slot])
    })
}
