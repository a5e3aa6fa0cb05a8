//! Process hardening for `hsmd` (the binary calls [`process`] before it opens the store): no
//! core dumps and no ptrace by other users (`PR_SET_DUMPABLE 0`, `RLIMIT_CORE 0`), memory
//! locked (`mlockall`), and the soft file-descriptor limit raised to the hard one.
//!
//! Where the memory-lock limit refuses `mlockall`, the pages holding key material are locked
//! one by one instead (up to [`MAX_PROTECTED_PAGES`]), with one warning. Either way those pages
//! are marked `MADV_DONTDUMP`. The library alone (tests, embedding) changes none of this: only
//! [`process`] turns it on.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Key pages marked at most (each mark may split a kernel memory area; the count bounds it).
pub const MAX_PROTECTED_PAGES: usize = 4096;

const OFF: u8 = 0;
const DONTDUMP: u8 = 1;
const LOCK_AND_DONTDUMP: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(OFF);
static PROTECTED: AtomicUsize = AtomicUsize::new(0);

/// What [`process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardened {
    /// Core dumps and ptrace by others are off.
    pub undumpable: bool,
    /// All memory is locked (`mlockall`); otherwise key pages are locked one by one.
    pub memory_locked: bool,
    /// The soft file-descriptor limit now.
    pub nofile: u64,
}

/// Hardens this process; see the module documentation. Failures are logged, never fatal:
/// the server still serves, and says what it could not do.
pub fn process() -> Hardened {
    let undumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .is_ok()
            & setrlimit(
                Resource::Core,
                Rlimit {
                    current: Some(0),
                    maximum: Some(0),
                },
            )
            .is_ok();
    if !undumpable {
        tracing::warn!("could not disable core dumps; key material could reach a core file");
    }
    let nofile = raise(Resource::Nofile);
    let memlock = raise(Resource::Memlock);
    let can_lock = memlock == u64::MAX
        || rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::IPC_LOCK)
        });
    let flags = rustix::mm::MlockAllFlags::CURRENT
        | rustix::mm::MlockAllFlags::FUTURE
        | rustix::mm::MlockAllFlags::ONFAULT;
    let memory_locked = can_lock && rustix::mm::mlockall(flags).is_ok();
    if memory_locked {
        MODE.store(DONTDUMP, Ordering::SeqCst);
    } else {
        MODE.store(LOCK_AND_DONTDUMP, Ordering::SeqCst);
        tracing::warn!(
            memlock_kib = memlock / 1024,
            "memory is not locked (the memory-lock limit refuses mlockall; raise it, e.g. \
             LimitMEMLOCK=infinity, or grant CAP_IPC_LOCK): only pages holding key material \
             are locked, as far as the limit allows"
        );
    }
    Hardened {
        undumpable,
        memory_locked,
        nofile,
    }
}

/// Raises a soft limit to its hard limit; the soft limit after (`u64::MAX`: unlimited).
fn raise(r: Resource) -> u64 {
    let lim = getrlimit(r);
    if lim.current != lim.maximum {
        let _ = setrlimit(
            r,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
    getrlimit(r).current.unwrap_or(u64::MAX)
}

/// Locks (where `mlockall` did not) and leaves out of core dumps the pages holding `v`, a value
/// with key material in it; a no-op until [`process`] ran, and after [`MAX_PROTECTED_PAGES`].
pub fn protect<T>(v: &T) {
    let mode = MODE.load(Ordering::Relaxed);
    if mode == OFF || PROTECTED.fetch_add(1, Ordering::Relaxed) >= MAX_PROTECTED_PAGES {
        return;
    }
    if let Err(e) = ferrohsm_shm::pages::protect_value(v, mode == LOCK_AND_DONTDUMP) {
        // Once: after the first refusal the limit is reached, so stop asking.
        if PROTECTED.swap(MAX_PROTECTED_PAGES, Ordering::Relaxed) < MAX_PROTECTED_PAGES {
            tracing::warn!(error = %e, "cannot lock more key pages; the memory-lock limit is reached");
        }
    }
}
