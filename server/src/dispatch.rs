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
//! Nothing reaches back up: the key manager never sees a payload and never hands work back.
//! Every rule (usage, exportable, derivable types, random length) is asked of
//! [`crate::keys::policy`]; the crypto code only computes.

use ferrohsm_proto::{Request, Response, Status};

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
    let (km, max) = (&shared.km, shared.inline_max);
    let bytes = Response::Bytes;
    match request {
        Request::Random { len } if len as usize <= max => Ok(policy::random_len(len)
            .and_then(|n| guarded(|| ops::random(n)))
            .map(bytes)),
        Request::Digest { alg, data } if data.len() <= max => {
            Ok(guarded(|| Ok(ops::digest(alg, &data))).map(bytes))
        }
        Request::Encrypt {
            key,
            plaintext,
            aad,
        } if plaintext.len() + aad.len() <= max => {
            let mut plaintext = zeroize::Zeroizing::new(plaintext);
            match km.authorize_now(caller, &key, policy::ENCRYPT) {
                Some(h) => Ok(h
                    .and_then(|h| guarded(|| ops::encrypt(&h.material, &plaintext, &aad)))
                    .map(bytes)),
                None => Err(Request::Encrypt {
                    key,
                    plaintext: std::mem::take(&mut *plaintext),
                    aad,
                }),
            }
        }
        Request::Decrypt {
            key,
            ciphertext,
            aad,
        } if ciphertext.len() + aad.len() <= max => {
            match km.authorize_now(caller, &key, policy::DECRYPT) {
                Some(h) => Ok(h
                    .and_then(|h| {
                        guarded(|| ops::decrypt(&h.material, &ciphertext, &aad).map(|p| p.to_vec()))
                    })
                    .map(bytes)),
                None => Err(Request::Decrypt {
                    key,
                    ciphertext,
                    aad,
                }),
            }
        }
        Request::Mac { key, data } if data.len() <= max => {
            match km.authorize_now(caller, &key, policy::MAC) {
                Some(h) => Ok(h
                    .and_then(|h| guarded(|| ops::mac(&h.material, &data)))
                    .map(bytes)),
                None => Err(Request::Mac { key, data }),
            }
        }
        Request::MacVerify { key, data, mac } if data.len() <= max => {
            match km.authorize_now(caller, &key, policy::MAC) {
                Some(h) => Ok(h
                    .and_then(|h| guarded(|| ops::mac_verify(&h.material, &data, &mac)))
                    .map(|_| Response::Done)),
                None => Err(Request::MacVerify { key, data, mac }),
            }
        }
        Request::Sign { key, data } if alone && data.len() <= max => {
            match km.authorize_now(caller, &key, policy::SIGN) {
                Some(h) => Ok(h
                    .and_then(|h| guarded(|| ops::sign(&h.material, &data)))
                    .map(bytes)),
                None => Err(Request::Sign { key, data }),
            }
        }
        Request::Verify {
            key,
            data,
            signature,
        } if alone && data.len() <= max => match km.authorize_now(caller, &key, policy::VERIFY) {
            Some(h) => Ok(h
                .and_then(|h| guarded(|| ops::verify(&h.material, &data, &signature)))
                .map(|_| Response::Done)),
            None => Err(Request::Verify {
                key,
                data,
                signature,
            }),
        },
        other => Err(other),
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
    let done = |_| Response::Done;
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
        Request::Sign { key, data } => {
            let h = km.authorize(&caller, &key, policy::SIGN).await?;
            pool.run(move || ops::sign(&h.material, &data))
                .await
                .map(bytes)
        }
        Request::Verify {
            key,
            data,
            signature,
        } => {
            let h = km.authorize(&caller, &key, policy::VERIFY).await?;
            pool.run(move || ops::verify(&h.material, &data, &signature))
                .await
                .map(done)
        }
        Request::Encrypt {
            key,
            plaintext,
            aad,
        } => {
            let h = km.authorize(&caller, &key, policy::ENCRYPT).await?;
            let plaintext = zeroize::Zeroizing::new(plaintext);
            let n = plaintext.len() + aad.len();
            pool.cheap(n, move || ops::encrypt(&h.material, &plaintext, &aad))
                .await
                .map(bytes)
        }
        Request::Decrypt {
            key,
            ciphertext,
            aad,
        } => {
            let h = km.authorize(&caller, &key, policy::DECRYPT).await?;
            // The plaintext leaves its zeroizing buffer only to be encoded into the response.
            let n = ciphertext.len() + aad.len();
            pool.cheap(n, move || {
                ops::decrypt(&h.material, &ciphertext, &aad).map(|p| p.to_vec())
            })
            .await
            .map(bytes)
        }
        Request::Mac { key, data } => {
            let h = km.authorize(&caller, &key, policy::MAC).await?;
            pool.cheap(data.len(), move || ops::mac(&h.material, &data))
                .await
                .map(bytes)
        }
        Request::MacVerify { key, data, mac } => {
            let h = km.authorize(&caller, &key, policy::MAC).await?;
            pool.cheap(data.len(), move || {
                ops::mac_verify(&h.material, &data, &mac)
            })
            .await
            .map(done)
        }
        other => Err(OpError::new(
            Status::ProtocolViolation,
            format!("{:?} is not a key operation", other.opcode()),
        )),
    }
}
