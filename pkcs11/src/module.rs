//! The module's state between `C_Initialize` and `C_Finalize`: the slots (one per client
//! profile), the open sessions, and the lazy connection each session holds to hsmd (over shm
//! a [`SyncShm`] driven from the calling thread, otherwise the blocking client).
//!
//! Locks: the state itself is behind a read-write lock taken for the length of one call (a
//! read almost always); the session table behind a mutex held only to find or change an
//! entry; each session behind its own mutex for the call that uses it. So sessions of
//! different threads run in parallel, each on its own connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use cryptoki_sys::*;
use ferrohsm_client::connect::shm_sync::SyncShm;
use ferrohsm_client::pin::PinHash;
use ferrohsm_client::profile::Profile;
use ferrohsm_client::profile::Transport;
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{Request, Response, Status};

use crate::config::ModuleConfig;
use crate::object::Objects;
use crate::session_ops::Operations;

/// A PKCS#11 return value.
pub type Rv = CK_RV;

/// Locks a mutex whatever a panicking holder left (the data stay consistent: every change
/// under these locks is a single assignment or insertion).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

static STATE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

/// One slot and its token.
#[derive(Debug)]
pub struct Slot {
    /// The client profile; its name is the token label.
    pub profile: Profile,
    /// The PIN hash, when the token requires a login.
    pub pin: Option<PinHash>,
    /// Whether the user is logged in (for every session of this slot, as PKCS#11 has it).
    pub logged_in: AtomicBool,
    /// Consecutive wrong PINs; held for the whole of a login so guesses queue up.
    pub failures: Mutex<u32>,
    /// The objects seen so far, and their handles.
    pub objects: Mutex<Objects>,
}

impl Slot {
    /// Whether private objects may be used now.
    pub fn unlocked(&self) -> bool {
        self.pin.is_none() || self.logged_in.load(Ordering::Acquire)
    }
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Index of its slot.
    pub slot: usize,
    /// Opened read-write.
    pub rw: bool,
    conn: Option<Conn>,
    /// The active operations and search.
    pub ops: Operations,
}

/// A session's connection to hsmd: over shm, driven from the calling thread; over the
/// socket transports, the blocking client on its own small runtime.
#[derive(Debug)]
enum Conn {
    Shm(SyncShm),
    Socket(BlockingClient),
}

impl Conn {
    fn open(profile: &Profile, timeout: Duration) -> Result<Conn, ClientError> {
        Ok(match profile.default_transport {
            Transport::Shm => Conn::Shm(SyncShm::connect(profile, timeout)?),
            _ => Conn::Socket(BlockingClient::connect_within(profile, None, timeout)?),
        })
    }

    fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        match self {
            Conn::Shm(c) => c.call(req),
            Conn::Socket(c) => c.run(c.client().call(req)),
        }
    }
}

/// A session in the table: its slot and mode readable without waiting for the session.
#[derive(Debug)]
struct Entry {
    slot: usize,
    rw: bool,
    session: Arc<Mutex<Session>>,
}

/// Everything between `C_Initialize` and `C_Finalize`.
#[derive(Debug)]
pub struct Module {
    pid: AtomicU32,
    /// The slots, by slot id.
    pub slots: Vec<Slot>,
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, Entry>>,
    next_session: AtomicU64,
    /// Per-call limit on waiting for hsmd.
    pub timeout: Duration,
}

/// Starts the module with `config`. Starts no thread and no connection.
pub fn initialize(config: ModuleConfig) -> Result<(), Rv> {
    let mut state = STATE.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = state.as_ref() {
        if m.pid.load(Ordering::Relaxed) == std::process::id() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // A child after fork initializing again, as PKCS#11 asks: the parent's connections
        // belong to the parent and are left alone.
        if let Some(old) = state.take() {
            old.forget_connections();
            std::mem::forget(old);
        }
    }
    let slots = config
        .slots
        .into_iter()
        .map(|s| Slot {
            profile: s.profile,
            pin: s.pin,
            logged_in: AtomicBool::new(false),
            failures: Mutex::new(0),
            objects: Mutex::new(Objects::default()),
        })
        .collect();
    *state = Some(Arc::new(Module {
        pid: AtomicU32::new(std::process::id()),
        slots,
        sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        timeout: config.timeout,
    }));
    Ok(())
}

/// Ends the module: closes every session and its connection.
pub fn finalize() -> Result<(), Rv> {
    let m = STATE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
    if m.pid.load(Ordering::Relaxed) != std::process::id() {
        // Finalizing in a forked child: the connections are the parent's.
        m.forget_connections();
        std::mem::forget(m);
    }
    Ok(())
}

/// The running module, after any fork noticed.
pub fn get() -> Result<Arc<Module>, Rv> {
    let m = STATE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
    let me = std::process::id();
    if m.pid.swap(me, Ordering::AcqRel) != me {
        // This is a forked child using its parent's sessions: their connections (sockets,
        // shared rings, runtimes whose threads did not survive the fork) are the parent's,
        // so they are dropped without a goodbye; each session reconnects on next use.
        m.forget_connections();
    }
    Ok(m)
}

impl Module {
    /// The slot with id `id`.
    pub fn slot(&self, id: CK_SLOT_ID) -> Result<&Slot, Rv> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(CKR_SLOT_ID_INVALID)
    }

    /// Opens a session on slot `id` (no connection yet: the first call that needs hsmd makes
    /// it).
    pub fn open(&self, id: CK_SLOT_ID, rw: bool) -> Result<CK_SESSION_HANDLE, Rv> {
        self.slot(id)?;
        let h = self.next_session.fetch_add(1, Ordering::Relaxed);
        let s = Session {
            slot: id as usize,
            rw,
            conn: None,
            ops: Operations::default(),
        };
        let entry = Entry {
            slot: id as usize,
            rw,
            session: Arc::new(Mutex::new(s)),
        };
        lock(&self.sessions).insert(h, entry);
        Ok(h)
    }

    /// The session with handle `h`.
    pub fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Mutex<Session>>, Rv> {
        lock(&self.sessions)
            .get(&h)
            .map(|e| e.session.clone())
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// The slot of session `h` (without waiting for the session).
    pub fn slot_of(&self, h: CK_SESSION_HANDLE) -> Result<usize, Rv> {
        lock(&self.sessions)
            .get(&h)
            .map(|e| e.slot)
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// Closes a session (its connection, and with it its session objects, end).
    pub fn close(&self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        let e = lock(&self.sessions)
            .remove(&h)
            .ok_or(CKR_SESSION_HANDLE_INVALID)?;
        self.after_close(e.slot);
        Ok(())
    }

    /// Closes every session of slot `id`.
    pub fn close_all(&self, id: CK_SLOT_ID) -> Result<(), Rv> {
        self.slot(id)?;
        // Dropped (connections closed) after the table's lock is released.
        let closed: Vec<Entry> = {
            let mut all = lock(&self.sessions);
            let hs: Vec<_> = all
                .iter()
                .filter(|(_, e)| e.slot == id as usize)
                .map(|(h, _)| *h)
                .collect();
            hs.into_iter().filter_map(|h| all.remove(&h)).collect()
        };
        drop(closed);
        self.after_close(id as usize);
        Ok(())
    }

    /// PKCS#11: closing a slot's last session logs its user out.
    fn after_close(&self, slot: usize) {
        let any_left = lock(&self.sessions).values().any(|e| e.slot == slot);
        if !any_left {
            self.slots[slot].logged_in.store(false, Ordering::Release);
        }
    }

    /// Sessions open on slot `id`: (all, read-write).
    pub fn counts(&self, id: usize) -> (u64, u64) {
        let all = lock(&self.sessions);
        let mine: Vec<bool> = all
            .values()
            .filter(|e| e.slot == id)
            .map(|e| e.rw)
            .collect();
        (
            mine.len() as u64,
            mine.iter().filter(|rw| **rw).count() as u64,
        )
    }

    fn forget_connections(&self) {
        let all = lock(&self.sessions);
        for e in all.values() {
            // A session locked by a thread that did not survive the fork is left as it is.
            if let Ok(mut s) = e.session.try_lock()
                && let Some(c) = s.conn.take()
            {
                std::mem::forget(c);
            }
        }
    }
}

impl Session {
    /// Sends one request on this session's connection, connecting first if need be. A
    /// broken or silent connection is dropped (the next call reconnects) and answers
    /// `CKR_DEVICE_ERROR`; a server error status maps to its PKCS#11 code.
    pub fn request(&mut self, m: &Module, req: Request) -> Result<Response, Rv> {
        if self.conn.is_none() {
            let slot = &m.slots[self.slot];
            let c = Conn::open(&slot.profile, m.timeout).map_err(|_| CKR_DEVICE_ERROR)?;
            self.conn = Some(c);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(CKR_DEVICE_ERROR);
        };
        match conn.call(req) {
            Ok(v) => Ok(v),
            Err(ClientError::Server(b)) => Err(b.status().map_or(CKR_FUNCTION_FAILED, rv_of)),
            Err(ClientError::Local(_)) => Err(CKR_ARGUMENTS_BAD),
            Err(_) => {
                self.conn = None;
                Err(CKR_DEVICE_ERROR)
            }
        }
    }

    /// A request answered with bytes (a signature, a ciphertext, random bytes).
    pub fn bytes(&mut self, m: &Module, req: Request) -> Result<Vec<u8>, Rv> {
        match self.request(m, req)? {
            Response::Bytes(b) => Ok(b),
            _ => Err(CKR_DEVICE_ERROR),
        }
    }

    /// A request answered with nothing (a verification, a delete).
    pub fn done(&mut self, m: &Module, req: Request) -> Result<(), Rv> {
        match self.request(m, req)? {
            Response::Done => Ok(()),
            _ => Err(CKR_DEVICE_ERROR),
        }
    }

    /// A request answered with keys (a search page, the granted keys).
    pub fn keys(&mut self, m: &Module, req: Request) -> Result<Vec<ferrohsm_proto::KeyInfo>, Rv> {
        match self.request(m, req)? {
            Response::Keys(k) => Ok(k),
            _ => Err(CKR_DEVICE_ERROR),
        }
    }
}

/// The PKCS#11 code for an hsmd status.
pub fn rv_of(s: Status) -> Rv {
    match s {
        Status::KeyNotFound => CKR_KEY_HANDLE_INVALID,
        Status::LabelInUse => CKR_ATTRIBUTE_VALUE_INVALID,
        Status::UsageNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
        Status::NotExportable => CKR_KEY_UNEXTRACTABLE,
        Status::WrongKeyType => CKR_KEY_TYPE_INCONSISTENT,
        Status::InvalidArgument => CKR_ARGUMENTS_BAD,
        Status::QuotaExceeded => CKR_DEVICE_MEMORY,
        Status::BadSignature | Status::BadMac => CKR_SIGNATURE_INVALID,
        Status::DecryptFailed => CKR_ENCRYPTED_DATA_INVALID,
        Status::BodyTooLarge => CKR_DATA_LEN_RANGE,
        Status::Busy => CKR_FUNCTION_FAILED,
        _ => CKR_DEVICE_ERROR,
    }
}
