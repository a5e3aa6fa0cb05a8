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

use ferrohsm_proto::{KeyRef, Request, Response, Status};
use zeroize::Zeroizing;

use crate::crypto::ops;
use crate::error::OpError;
use crate::keys::manager::Caller;
use crate::keys::material::KeyMaterial;
use crate::keys::policy;
use crate::session::Shared;

/// Where a computation runs: on a crypto worker, or inline on the session's own arbiter
/// when it costs less than the hop to a worker and back (cheap operations on inputs up to
/// `inline_max` bytes; the threshold is measured in BENCHMARKS.md).
struct Compute<'a> {
    pool: &'a crate::crypto::pool::CryptoPool,
    inline_max: usize,
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
            self.pool.run(f).await
        }
    }

    /// Always on the pool (signatures, key generation, derivation).
    async fn run<T, F>(&self, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, OpError> + Send + 'static,
    {
        self.pool.run(f).await
    }
}

/// Runs `f` on this thread under the same panic guard a crypto worker uses.
fn guarded<T>(f: impl FnOnce() -> Result<T, OpError>) -> Result<T, OpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(OpError::internal("crypto operation panicked")))
}

/// The operations whose whole work is one computation with one key: the payload taken out of
/// the request, so the inline path and the pooled path run the very same code.
enum KeyedOp {
    Sign {
        data: Vec<u8>,
    },
    Verify {
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    Encrypt {
        plaintext: Zeroizing<Vec<u8>>,
        aad: Vec<u8>,
    },
    Decrypt {
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
    Mac {
        data: Vec<u8>,
    },
    MacVerify {
        data: Vec<u8>,
        mac: Vec<u8>,
    },
}

impl KeyedOp {
    /// The key and the operation of a keyed request; any other request comes back.
    fn split(request: Request) -> Result<(KeyRef, KeyedOp), Request> {
        Ok(match request {
            Request::Sign { key, data } => (key, KeyedOp::Sign { data }),
            Request::Verify {
                key,
                data,
                signature,
            } => (key, KeyedOp::Verify { data, signature }),
            Request::Encrypt {
                key,
                plaintext,
                aad,
            } => (
                key,
                KeyedOp::Encrypt {
                    plaintext: Zeroizing::new(plaintext),
                    aad,
                },
            ),
            Request::Decrypt {
                key,
                ciphertext,
                aad,
            } => (key, KeyedOp::Decrypt { ciphertext, aad }),
            Request::Mac { key, data } => (key, KeyedOp::Mac { data }),
            Request::MacVerify { key, data, mac } => (key, KeyedOp::MacVerify { data, mac }),
            other => return Err(other),
        })
    }

    /// The request again (when the inline path hands it on).
    fn join(self, key: KeyRef) -> Request {
        match self {
            KeyedOp::Sign { data } => Request::Sign { key, data },
            KeyedOp::Verify { data, signature } => Request::Verify {
                key,
                data,
                signature,
            },
            KeyedOp::Encrypt { mut plaintext, aad } => Request::Encrypt {
                key,
                plaintext: std::mem::take(&mut *plaintext),
                aad,
            },
            KeyedOp::Decrypt { ciphertext, aad } => Request::Decrypt {
                key,
                ciphertext,
                aad,
            },
            KeyedOp::Mac { data } => Request::Mac { key, data },
            KeyedOp::MacVerify { data, mac } => Request::MacVerify { key, data, mac },
        }
    }

    /// What the operation requires of its key.
    fn requirement(&self) -> policy::Requirement {
        match self {
            KeyedOp::Sign { .. } => policy::SIGN,
            KeyedOp::Verify { .. } => policy::VERIFY,
            KeyedOp::Encrypt { .. } => policy::ENCRYPT,
            KeyedOp::Decrypt { .. } => policy::DECRYPT,
            KeyedOp::Mac { .. } | KeyedOp::MacVerify { .. } => policy::MAC,
        }
    }

    /// Bytes the computation reads (what `inline_max` bounds).
    fn len(&self) -> usize {
        match self {
            KeyedOp::Sign { data }
            | KeyedOp::Verify { data, .. }
            | KeyedOp::Mac { data }
            | KeyedOp::MacVerify { data, .. } => data.len(),
            KeyedOp::Encrypt { plaintext, aad } => plaintext.len() + aad.len(),
            KeyedOp::Decrypt { ciphertext, aad } => ciphertext.len() + aad.len(),
        }
    }

    /// Cheap per byte (AEAD, HMAC): inline up to `inline_max` whatever else is in flight.
    /// Signatures are not: inline only when they are the session's only request.
    fn is_cheap(&self) -> bool {
        !matches!(self, KeyedOp::Sign { .. } | KeyedOp::Verify { .. })
    }

    fn run(&self, key: &KeyMaterial) -> Result<Response, OpError> {
        match self {
            KeyedOp::Sign { data } => ops::sign(key, data).map(Response::Bytes),
            KeyedOp::Verify { data, signature } => {
                ops::verify(key, data, signature).map(|_| Response::Done)
            }
            KeyedOp::Encrypt { plaintext, aad } => {
                ops::encrypt(key, plaintext, aad).map(Response::Bytes)
            }
            // The plaintext leaves its zeroizing buffer only to be encoded into the response
            // (which the session wipes once written).
            KeyedOp::Decrypt { ciphertext, aad } => {
                ops::decrypt(key, ciphertext, aad).map(|p| Response::Bytes(p.to_vec()))
            }
            KeyedOp::Mac { data } => ops::mac(key, data).map(Response::Bytes),
            KeyedOp::MacVerify { data, mac } => {
                ops::mac_verify(key, data, mac).map(|_| Response::Done)
            }
        }
    }
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
                Some(h) => Ok(h.and_then(|h| guarded(|| op.run(&h.material)))),
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
    let km = &shared.km;
    let pool = &Compute {
        pool: &shared.pool,
        inline_max: shared.inline_max,
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
            let material = pool.run(move || KeyMaterial::generate(t)).await?;
            km.create(&caller, new, material).await.map(Response::Key)
        }
        Request::Derive { key, peer, spec } => {
            let base = km.authorize(&caller, &key, policy::DERIVE).await?;
            let new = policy::derived(&base.info, &spec)?;
            let t = new.key_type;
            let material = pool
                .run(move || ops::derive(&base.material, &peer, t))
                .await?;
            km.create(&caller, new, material).await.map(Response::Key)
        }
        Request::List => km.list(&caller).await.map(Response::Keys),
        Request::Info(key) => {
            let h = km.authorize(&caller, &key, policy::DESCRIBE).await?;
            Ok(Response::Key(h.info.clone()))
        }
        Request::PublicKey(key) => {
            let h = km.authorize(&caller, &key, policy::PUBLIC_KEY).await?;
            let key_type = h.info.key_type;
            // X25519 computes its public half (a scalar multiplication): on the pool.
            let bytes = pool
                .run(move || {
                    h.material
                        .public_key()
                        .ok_or_else(|| OpError::internal("an asymmetric key has no public half"))
                })
                .await?;
            Ok(Response::PublicKey { key_type, bytes })
        }
        Request::Export(key) => {
            let h = km.authorize(&caller, &key, policy::EXPORT).await?;
            Ok(Response::Bytes(h.material.secret_bytes().to_vec()))
        }
        Request::Delete(key) => km.delete(&caller, &key).await.map(|_| Response::Done),
        other => match KeyedOp::split(other) {
            Ok((key, op)) => {
                let h = km.authorize(&caller, &key, op.requirement()).await?;
                let (cheap, len) = (op.is_cheap(), op.len());
                let work = move || op.run(&h.material);
                if cheap {
                    pool.cheap(len, work).await
                } else {
                    pool.run(work).await
                }
            }
            Err(other) => Err(OpError::new(
                Status::ProtocolViolation,
                format!("{:?} is not a key operation", other.opcode()),
            )),
        },
    }
}
