//! The dispatcher: owns each request once the session has decoded it, and carries it one way.
//!
//! ```text
//!  session --request--> dispatch --(caller, key, op)--> KeyManager::authorize -> KeyHandle
//!                          |                                (no payload goes there)
//!                          +--(handle, payload)--> crypto pool -> result
//!                          |
//!                          +--(new key)--> KeyManager::create (durable before it answers)
//!                          v
//!                       response -> session -> transport
//! ```
//! [`inline`] answers on the session's thread what is cheaper than the hop to a worker (the
//! key from memory); [`dispatch`] does the rest. Both run keyed operations through one
//! [`KeyedOp`], so the two paths compute alike.
//! Nothing reaches back up: the key manager never sees a payload and never hands work back.
//! Every rule (usage, exportable, derivable types, random length) is asked of
//! [`crate::keys::policy`]; the crypto code only computes.

use std::sync::Arc;

use ferrohsm_proto::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::crypto::ops;
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::audit::Level;
use crate::keys::manager::Caller;
use crate::keys::material::KeyMaterial;
use crate::keys::{policy, wrap};
use crate::session::Shared;

mod keyed;
use keyed::KeyedOp;

/// Where a computation runs: on a crypto worker, or inline on the session's own arbiter
/// when it costs less than the hop to a worker and back (cheap operations on inputs up to
/// `inline_max` bytes; the threshold is measured in BENCHMARKS.md).
struct Compute<'a> {
    pool: &'a crate::crypto::pool::CryptoPool,
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

/// Runs `op` with `h` on this thread and, at `[audit] level = "all"`, records the use.
fn run_audited(
    shared: &Shared,
    caller: &Caller,
    op: &KeyedOp,
    h: &KeyHandle,
) -> Result<Response, OpError> {
    let r = guarded(|| op.run(h));
    let status = r.as_ref().err().map(|e| e.status);
    shared.km.audit_use(caller, op.requirement().op, h, status);
    r
}

/// Answers `request` at once, on the session's own thread, when that costs less than a hop to
/// a crypto worker and back: cheap operations (random, digest, AEAD, HMAC) on inputs up to
/// `inline_max` bytes, and signatures and verifications when nothing else of this session
/// waits (`alone`: one request in flight, so a worker would only add its wake-up to the
/// latency; with more in flight the pool spreads them over the cores). The key must be in
/// memory; otherwise, and for every other request, the request comes back (`Err`) to go
/// through [`dispatch`].
pub fn inline(
    shared: &Shared,
    caller: &Caller,
    request: Request,
    alone: bool,
) -> Result<Result<Response, OpError>, Request> {
    let max = shared.inline_max;
    match request {
        Request::Random { len } if len as usize <= max => Ok(policy::random_len(len)
            .and_then(|n| guarded(|| ops::random(n)))
            .map(Response::Bytes)),
        Request::Digest { alg, data } if data.len() <= max => {
            Ok(guarded(|| Ok(ops::digest(alg, &data))).map(Response::Bytes))
        }
        other => {
            let (key, op) = KeyedOp::split(other)?;
            if op.len() > max || !(alone || op.is_cheap()) {
                return Err(op.join(key));
            }
            match shared.km.authorize_now(caller, &key, op.requirement()) {
                Some(h) => Ok(h.and_then(|h| run_audited(shared, caller, &op, &h))),
                None => Err(op.join(key)),
            }
        }
    }
}

/// Serves one request of an authenticated caller (never a handshake message or ping).
pub async fn dispatch(
    shared: &Shared,
    caller: Caller,
    request: Request,
) -> Result<Response, OpError> {
    // Requests whose key bytes pass through this session thread (an export, a new key made
    // ready for the store); the others touch key bytes only on a worker, which wipes its own.
    let secret = matches!(
        request,
        Request::Export(_)
            | Request::Generate(_)
            | Request::Import { .. }
            | Request::Unwrap { .. }
            | Request::Derive { .. }
            | Request::Rotate(_)
            | Request::Wrap { .. }
    );
    let out = serve(shared, caller, request).await;
    if secret {
        // Wipe the frames this request's polls used, below here.
        crate::crypto::pool::scrub_session_stack();
    }
    out
}

async fn serve(shared: &Shared, caller: Caller, request: Request) -> Result<Response, OpError> {
    let km = &shared.km;
    let pool = &Compute {
        pool: &shared.pool,
        inline_max: shared.inline_max,
        client: &caller.client,
    };
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
        Request::Status => Ok(Response::Status(km.status().await)),
        Request::List(page) => km.list(&caller, page).await.map(Response::Keys),
        Request::ListGranted => km.list_granted(&caller).await.map(Response::Keys),
        Request::Find(query) => km.find(&caller, query).await.map(Response::Keys),
        Request::Info(key) => {
            let (h, access) = km.resolve(&caller, &key).await.inspect_err(|e| {
                km.deny(&caller, "info", &key, e);
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
                    h.material
                        .public_key()
                        .ok_or_else(|| OpError::internal("an asymmetric key has no public half"))
                })
                .await?;
            Ok(Response::PublicKey { key_type, bytes })
        }
        Request::Export(key) => {
            let h = km.authorize_owner(&caller, &key, policy::EXPORT).await?;
            // On record before the key leaves.
            km.record(&caller, "export", &h, String::new()).await?;
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
                km.deny(&caller, "wrap", &key, &e);
                return Err(e);
            }
            let t = target.clone();
            let detail = format!("with {}:{}", wrapper.owner, wrapper.info.id);
            let blob = pool.run(0, move || wrap::seal(&wrapper, &t)).await?;
            km.record(&caller, "wrap", &target, detail).await?;
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
                km.deny(&caller, "unwrap", &with, &e);
                return Err(e);
            }
            let new = policy::unwrapped(opened.key_type, opened.usage, opened.exportable, label)?;
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
        Request::Retire { key, below } => km.retire(&caller, &key, below).await.map(Response::Key),
        Request::CounterCreate(name) => km
            .counter_create(&caller, &name)
            .await
            .map(Response::Counter),
        Request::CounterRead(name) => km.counter_read(&caller, &name).await.map(Response::Counter),
        Request::CounterInc(name) => km.counter_inc(&caller, &name).await.map(Response::Counter),
        other => match KeyedOp::split(other) {
            Ok((key, op)) => {
                let h = km.authorize(&caller, &key, op.requirement()).await?;
                let (cheap, len, name) = (op.is_cheap(), op.len(), op.requirement().op);
                // Kept for the audit entry only when uses are audited.
                let used = (km.audit_level() == Level::All).then(|| h.clone());
                let work = move || op.run(&h);
                let r = if cheap {
                    pool.cheap(len, work).await
                } else {
                    pool.run(len, work).await
                };
                if let Some(used) = used {
                    km.audit_use(&caller, name, &used, r.as_ref().err().map(|e| e.status));
                }
                r
            }
            Err(other) => Err(OpError::new(
                Status::ProtocolViolation,
                format!("{:?} is not a key operation", other.opcode()),
            )),
        },
    }
}
