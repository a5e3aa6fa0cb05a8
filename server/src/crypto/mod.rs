//! Crypto: the algorithms ([`ops`]), the bounded worker pool ([`pool`]), and [`CryptoJob`], the
//! unit of work the key manager hands back to a session for the pool to run.

pub mod ops;
pub mod pool;

use std::sync::Arc;

use ferrohsm_proto::{DigestAlg, KeySpec, Response, UsageSet};

use crate::error::OpError;
use crate::keys::material::KeyMaterial;

/// One piece of crypto work, with everything it needs (policy already checked).
#[derive(Debug)]
pub enum CryptoJob {
    /// Random bytes.
    Random(u32),
    /// Digest.
    Digest(DigestAlg, Vec<u8>),
    /// Sign.
    Sign(Arc<KeyMaterial>, Vec<u8>),
    /// Verify.
    Verify(Arc<KeyMaterial>, Vec<u8>, Vec<u8>),
    /// AEAD encrypt (plaintext, aad).
    Encrypt(Arc<KeyMaterial>, zeroize::Zeroizing<Vec<u8>>, Vec<u8>),
    /// AEAD decrypt (ciphertext, aad).
    Decrypt(Arc<KeyMaterial>, Vec<u8>, Vec<u8>),
    /// HMAC.
    Mac(Arc<KeyMaterial>, Vec<u8>),
    /// HMAC verify.
    MacVerify(Arc<KeyMaterial>, Vec<u8>, Vec<u8>),
    /// Generate a key for `spec` with the resolved usage.
    Generate(KeySpec, UsageSet),
    /// X25519 + HKDF into a key for `spec`.
    Derive(Arc<KeyMaterial>, Vec<u8>, KeySpec, UsageSet),
}

/// What a job produced.
#[derive(Debug)]
pub enum JobOutput {
    /// A finished response.
    Response(Response),
    /// A new key for the key manager to store.
    NewKey(KeySpec, UsageSet, Box<KeyMaterial>),
}

impl CryptoJob {
    /// Runs the job (on a pool worker).
    pub fn run(self) -> Result<JobOutput, OpError> {
        let bytes = |b: Vec<u8>| Ok(JobOutput::Response(Response::Bytes(b)));
        let done = || Ok(JobOutput::Response(Response::Done));
        match self {
            CryptoJob::Random(n) => bytes(ops::random(n)?),
            CryptoJob::Digest(alg, data) => bytes(ops::digest(alg, &data)),
            CryptoJob::Sign(k, data) => bytes(ops::sign(&k, &data)?),
            CryptoJob::Verify(k, data, sig) => ops::verify(&k, &data, &sig).and_then(|_| done()),
            CryptoJob::Encrypt(k, pt, aad) => bytes(ops::encrypt(&k, &pt, &aad)?),
            // The plaintext leaves the zeroizing buffer only to be encoded into the response.
            CryptoJob::Decrypt(k, ct, aad) => bytes(ops::decrypt(&k, &ct, &aad)?.to_vec()),
            CryptoJob::Mac(k, data) => bytes(ops::mac(&k, &data)?),
            CryptoJob::MacVerify(k, data, tag) => {
                ops::mac_verify(&k, &data, &tag).and_then(|_| done())
            }
            CryptoJob::Generate(spec, usage) => {
                let m = KeyMaterial::generate(spec.key_type)?;
                Ok(JobOutput::NewKey(spec, usage, Box::new(m)))
            }
            CryptoJob::Derive(k, peer, spec, usage) => {
                let m = ops::derive(&k, &peer, spec.key_type)?;
                Ok(JobOutput::NewKey(spec, usage, Box::new(m)))
            }
        }
    }
}
