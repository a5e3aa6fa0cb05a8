//! The dispatcher: owns each request once the session has decoded it, splits it once, and
//! carries it one way down.
//!
//! ```text
//!  session --request--> Dispatcher::start (on the session's thread)
//!                          |  keyed: split into (key, operation) once; KeyManager::authorize_now
//!                          |  decides from memory when it can (no payload goes there)
//!                          +--> answered at once: cheap work, or a lone signature, inline
//!                          +--> Deferred --> Dispatcher::finish (a detached future)
//!                                         |  the key still to authorize: from the store, once
//!                                         +--(handle, payload)--> crypto pool -> result
//!                                         +--(new key)--> KeyManager::create (durable first)
//!                          v
//!                       response -> session -> transport
//! ```
//! What each kind needs (its key, where it runs, whether key bytes pass through this thread)
//! is read from its description in proto ([`ferrohsm_proto::Kind`]). A dispatcher holds the
//! key manager, the crypto pool and the inline limit, and nothing else. Nothing reaches back
//! up: the key manager never sees a payload and never hands work back. Every rule (usage,
//! exportable, derivable types, random length) is asked of [`crate::keys::policy`]; the crypto
//! code only computes.

use std::sync::Arc;

use ferrohsm_proto::kind::Cost;
use ferrohsm_proto::{KeyRef, Kind, Request, Response, Status};
use zeroize::Zeroizing;

use crate::crypto::pool::CryptoPool;
use crate::crypto::{kem, ops};
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::audit::Level;
use crate::keys::manager::{Caller, KeyManager};
use crate::keys::material::KeyMaterial;
use crate::keys::{policy, wrap};

mod keyed;
use keyed::KeyedOp;

/// Carries decoded requests of authenticated callers to the key manager and the crypto pool.
#[derive(Debug)]
pub struct Dispatcher {
    km: Arc<KeyManager>,
    pool: CryptoPool,
    // Inputs up to this many bytes run cheap operations on the session's thread (0: never).
    inline_max: usize,
}

/// What [`Dispatcher::start`] made of a request.
#[derive(Debug)]
pub enum Started {
    /// Answered on the session's own thread.
    Answered(Result<Response, OpError>),
    /// Waits for the store or a crypto worker: run it with [`Dispatcher::finish`].
    Later(Deferred),
}

/// A request on its way down, already split (and its key authorized when memory could decide).
pub struct Deferred {
    caller: Caller,
    kind: Kind,
    work: Remaining,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("op", &self.kind.name)
            .finish_non_exhaustive()
    }
}

enum Remaining {
    /// One computation with one key; `handle` is the key when memory authorized it.
    Keyed {
        key: KeyRef,
        op: KeyedOp,
        handle: Option<Arc<KeyHandle>>,
    },
    /// Everything else, served by [`Dispatcher::unkeyed`].
    Other(Request),
}

/// Where a computation runs: on a crypto worker, or inline on the session's own arbiter
/// when it costs less than the hop to a worker and back (cheap operations on inputs up to
/// `inline_max` bytes; the threshold is measured in BENCHMARKS.md).
struct Compute<'a> {
    pool: &'a CryptoPool,
    inline_max: usize,
    // Whose work it is, for the pool's fair schedule.
    client: &'a Arc<str>,
}

impl Compute<'_> {
    /// Runs `f` inline when `len` is small enough, else on the pool.
    async fn cheap<T, F>(&self, len: usize, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, OpError> + Send + 'static,
    {
        if len <= self.inline_max {
            guarded(f)
        } else {
            self.pool.run(self.client, len, f).await
        }
    }

    /// Always on the pool (signatures, key generation, derivation), `len` input bytes.
    async fn run<T, F>(&self, len: usize, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, OpError> + Send + 'static,
    {
        self.pool.run(self.client, len, f).await
    }
}

/// Runs `f` on this thread under the same panic guard a crypto worker uses; the stack it used
/// is wiped within [`crate::crypto::pool::SCRUB_PERIOD`] (a wipe per operation would cost
/// more than a small AEAD).
fn guarded<T>(f: impl FnOnce() -> Result<T, OpError>) -> Result<T, OpError> {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(OpError::internal("crypto operation panicked")));
    crate::crypto::pool::mark_dirty();
    out
}

impl Dispatcher {
    /// A dispatcher over `km` and `pool`, running cheap work on inputs up to `inline_max`
    /// bytes on the session's thread.
    pub fn new(km: Arc<KeyManager>, pool: CryptoPool, inline_max: usize) -> Dispatcher {
        Dispatcher {
            km,
            pool,
            inline_max,
        }
    }

    /// The key manager (sessions open and end through it; shutdown reads its store's
    /// figures).
    pub fn keys(&self) -> &Arc<KeyManager> {
        &self.km
    }

    /// The crypto pool (metrics read its queue).
    pub fn pool(&self) -> &CryptoPool {
        &self.pool
    }

    fn compute<'a>(&'a self, caller: &'a Caller) -> Compute<'a> {
        Compute {
            pool: &self.pool,
            inline_max: self.inline_max,
            client: &caller.client,
        }
    }

    /// Takes a request of an authenticated caller (never a handshake message or ping) on the
    /// session's thread. Answers at once what costs less than a hop to a crypto worker and
    /// back: cheap operations (random, digest, AEAD, HMAC) on inputs up to `inline_max` bytes,
    /// and signatures and verifications when nothing else of this session waits (`alone`: a
    /// worker would only add its wake-up to the latency; with more in flight the pool spreads
    /// them over the cores), when the key's authorization is decided from memory. Anything
    /// else becomes a [`Deferred`], split and (where memory could decide) authorized already.
    pub fn start(&self, caller: &Caller, request: Request, alone: bool) -> Started {
        let kind = request.kind();
        let max = self.inline_max;
        let later = |work| {
            Started::Later(Deferred {
                caller: caller.clone(),
                kind,
                work,
            })
        };
        match request {
            Request::Random { len } if len as usize <= max => Started::Answered(
                policy::random_len(len)
                    .and_then(|n| guarded(|| ops::random(n)))
                    .map(Response::Bytes),
            ),
            Request::Digest { alg, data } if data.len() <= max => {
                Started::Answered(guarded(|| Ok(ops::digest(alg, &data))).map(Response::Bytes))
            }
            other => match KeyedOp::split(other) {
                Ok((key, op)) => {
                    let handle = match self.km.authorize_now(caller, &key, op.requirement()) {
                        Some(Err(e)) => return Started::Answered(Err(e)),
                        Some(Ok(h)) => {
                            if op.len() <= max && (alone || kind.cost == Cost::Cheap) {
                                return Started::Answered(self.run_audited(caller, &op, &h));
                            }
                            Some(h)
                        }
                        None => None,
                    };
                    later(Remaining::Keyed { key, op, handle })
                }
                Err(other) => later(Remaining::Other(other)),
            },
        }
    }

    /// Runs a [`Deferred`] to its response.
    pub async fn finish(&self, job: Deferred) -> Result<Response, OpError> {
        let Deferred { caller, kind, work } = job;
        let out = match work {
            Remaining::Keyed { key, op, handle } => {
                self.keyed(&caller, kind, key, op, handle).await
            }
            Remaining::Other(request) => self.unkeyed(caller, request).await,
        };
        if kind.key_bytes {
            // Key bytes passed through this thread: wipe the frames this request's polls
            // used, below here. (The other kinds touch key bytes only on a worker, which
            // wipes its own.)
            crate::crypto::pool::scrub_session_stack();
        }
        out
    }

    /// Runs `op` with `h` on this thread and, at `[audit] level = "all"`, records the use.
    fn run_audited(
        &self,
        caller: &Caller,
        op: &KeyedOp,
        h: &KeyHandle,
    ) -> Result<Response, OpError> {
        let r = guarded(|| op.run(h));
        let status = r.as_ref().err().map(|e| e.status);
        self.km.audit_use(caller, op.requirement().op, h, status);
        r
    }

    /// A keyed operation: its key authorized from the store when memory could not decide,
    /// then computed inline or on the pool as its kind's cost says.
    async fn keyed(
        &self,
        caller: &Caller,
        kind: Kind,
        key: KeyRef,
        op: KeyedOp,
        handle: Option<Arc<KeyHandle>>,
    ) -> Result<Response, OpError> {
        let h = match handle {
            Some(h) => h,
            None => self.km.authorize(caller, &key, op.requirement()).await?,
        };
        let (len, name) = (op.len(), op.requirement().op);
        // Kept for the audit entry only when uses are audited.
        let used = (self.km.audit_level() == Level::All).then(|| h.clone());
        let work = move || op.run(&h);
        let pool = self.compute(caller);
        let r = if kind.cost == Cost::Cheap {
            pool.cheap(len, work).await
        } else {
            pool.run(len, work).await
        };
        if let Some(used) = used {
            self.km
                .audit_use(caller, name, &used, r.as_ref().err().map(|e| e.status));
        }
        r
    }

    /// Every request that is not one computation with one key.
    async fn unkeyed(&self, caller: Caller, request: Request) -> Result<Response, OpError> {
        let km = &self.km;
        let pool = &self.compute(&caller);
        let bytes = Response::Bytes;
        match request {
            Request::Random { len } => {
                let n = policy::random_len(len)?;
                pool.cheap(n, move || ops::random(n)).await.map(bytes)
            }
            Request::Digest { alg, data } => pool
                .cheap(data.len(), move || Ok(ops::digest(alg, &data)))
                .await
                .map(bytes),
            Request::Generate(spec) => {
                let new = policy::generated(&spec)?;
                let t = new.key_type;
                let material = pool
                    .run(0, move || KeyMaterial::generate(t).map(Box::new))
                    .await?;
                km.create(&caller, new, material).await.map(Response::Key)
            }
            Request::Derive { key, peer, spec } => {
                let base = km.authorize(&caller, &key, policy::DERIVE).await?;
                let new = policy::derived(&base.info, &spec)?;
                let t = new.key_type;
                let material = pool
                    .run(0, move || {
                        ops::derive(&base.material, &peer, t).map(Box::new)
                    })
                    .await?;
                km.create(&caller, new, material).await.map(Response::Key)
            }
            Request::Encapsulate { key, spec } => {
                let base = km.authorize(&caller, &key, policy::ENCAPSULATE).await?;
                let new = policy::encapsulated(&spec)?;
                let t = new.key_type;
                let (ciphertext, material) = pool
                    .run(0, move || {
                        kem::encapsulate(&base.material, t).map(|(c, m)| (c, Box::new(m)))
                    })
                    .await?;
                let key = km.create(&caller, new, material).await?;
                Ok(Response::Encapsulated { ciphertext, key })
            }
            Request::EncapsulatePeer { peer, spec } => {
                let new = policy::encapsulated(&spec)?;
                let t = new.key_type;
                let (ciphertext, material) = pool
                    .run(peer.len(), move || {
                        kem::encapsulate_peer(&peer, t).map(|(c, m)| (c, Box::new(m)))
                    })
                    .await?;
                let key = km.create(&caller, new, material).await?;
                Ok(Response::Encapsulated { ciphertext, key })
            }
            Request::Decapsulate {
                key,
                ciphertext,
                spec,
            } => {
                let base = km.authorize(&caller, &key, policy::DECAPSULATE).await?;
                let new = policy::decapsulated(&base.info, &spec)?;
                let t = new.key_type;
                let material = pool
                    .run(ciphertext.len(), move || {
                        kem::decapsulate(&base.material, &ciphertext, t).map(Box::new)
                    })
                    .await?;
                km.create(&caller, new, material).await.map(Response::Key)
            }
            Request::Status => Ok(Response::Status(km.status().await)),
            Request::List(page) => km.list(&caller, page).await.map(Response::Keys),
            Request::ListGranted => km.list_granted(&caller).await.map(Response::Keys),
            Request::Find(query) => km.find(&caller, query).await.map(Response::Keys),
            Request::Info(key) => {
                let (h, access) = km.resolve(&caller, &key).await.inspect_err(|e| {
                    km.deny(&caller, policy::DESCRIBE.op, &key, e);
                })?;
                let mut info = h.info.clone();
                // Through a grant, the key's usage is what was granted.
                if let crate::keys::manager::Access::Granted(ops) = access {
                    info.usage = ops;
                }
                Ok(Response::Key(info))
            }
            Request::PublicKey(key) => {
                let h = km.authorize(&caller, &key, policy::PUBLIC_KEY).await?;
                let key_type = h.info.key_type;
                // X25519 computes its public half (a scalar multiplication): on the pool.
                let bytes = pool
                    .run(0, move || {
                        h.material.public_key().ok_or_else(|| {
                            OpError::internal("an asymmetric key has no public half")
                        })
                    })
                    .await?;
                Ok(Response::PublicKey { key_type, bytes })
            }
            Request::Export(key) => {
                let h = km.authorize_owner(&caller, &key, policy::EXPORT).await?;
                // On record before the key leaves.
                km.record(&caller, policy::EXPORT.op, &h, String::new())
                    .await?;
                Ok(Response::Bytes(h.material.secret_bytes().to_vec()))
            }
            Request::Delete(key) => km.delete(&caller, &key).await.map(|_| Response::Done),
            Request::Import { spec, material } => {
                let material = Zeroizing::new(material);
                let new = policy::imported(&spec)?;
                let t = new.key_type;
                // P-256 checks the key pair (a scalar multiplication): on the pool.
                let m = pool
                    .run(0, move || KeyMaterial::import(t, &material).map(Box::new))
                    .await?;
                km.create(&caller, new, m).await.map(Response::Key)
            }
            Request::Wrap { key, with } => {
                let target = km.authorize_owner(&caller, &key, policy::WRAPPED).await?;
                let wrapper = km.authorize_owner(&caller, &with, policy::WRAP).await?;
                let trusted = km.trusts_wrap_key(&caller, &wrapper.info);
                if let Err(e) = policy::may_wrap(
                    target.info.exportable,
                    target.info.label.as_str(),
                    &wrapper.info,
                    trusted,
                ) {
                    km.deny(&caller, policy::WRAPPED.op, &key, &e);
                    return Err(e);
                }
                let t = target.clone();
                let detail = format!("with {}:{}", wrapper.owner, wrapper.info.id);
                let blob = pool.run(0, move || wrap::seal(&wrapper, &t)).await?;
                km.record(&caller, policy::WRAPPED.op, &target, detail)
                    .await?;
                Ok(Response::Bytes(blob))
            }
            Request::Unwrap { with, blob, label } => {
                let wrapper = km.authorize_owner(&caller, &with, policy::UNWRAP).await?;
                let w = wrapper.clone();
                let opened = pool.run(0, move || wrap::open(&w, &blob)).await?;
                let trusted = km.trusts_wrap_key(&caller, &wrapper.info);
                if let Err(e) =
                    policy::may_wrap(opened.exportable, label.as_str(), &wrapper.info, trusted)
                {
                    km.deny(&caller, policy::UNWRAP.op, &with, &e);
                    return Err(e);
                }
                let new =
                    policy::unwrapped(opened.key_type, opened.usage, opened.exportable, label)?;
                km.create_versions(&caller, new, opened.versions)
                    .await
                    .map(Response::Key)
            }
            Request::Grant { key, to, ops } => km
                .grant(&caller, &key, &to, ops)
                .await
                .map(|_| Response::Done),
            Request::Revoke { key, from } => km
                .revoke(&caller, &key, &from)
                .await
                .map(|_| Response::Done),
            Request::Rotate(key) => {
                let h = km.authorize_owner(&caller, &key, policy::ROTATE).await?;
                let t = h.info.key_type;
                let material = pool
                    .run(0, move || KeyMaterial::generate(t).map(Box::new))
                    .await?;
                km.rotate(&caller, &h, material).await.map(Response::Key)
            }
            Request::Retire { key, below } => {
                km.retire(&caller, &key, below).await.map(Response::Key)
            }
            Request::CounterCreate(name) => km
                .counter_create(&caller, &name)
                .await
                .map(Response::Counter),
            Request::CounterRead(name) => {
                km.counter_read(&caller, &name).await.map(Response::Counter)
            }
            Request::CounterInc(name) => {
                km.counter_inc(&caller, &name).await.map(Response::Counter)
            }
            other => Err(OpError::new(
                Status::ProtocolViolation,
                format!("{:?} is not served by the dispatcher", other.opcode()),
            )),
        }
    }
}
