//! Ed25519 keys (RFC 8032): the 32-byte seed, aws-lc's expanded pair (which signs, 2x as fast
//! as ed25519-dalek here) and the public key decompressed once by ed25519-dalek (which
//! verifies, strictly). aws-lc keeps the pair in memory it allocated and clears it when freed.

use std::fmt;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use super::form::{KeyForm, SecretBytes, random_bytes, wrong_form};
use crate::error::OpError;

/// An Ed25519 key.
pub struct Ed25519Key {
    seed: SecretBytes,
    /// Expanded key pair used for signing.
    pub(crate) pair: Box<Ed25519KeyPair>,
    /// The public key, decompressed once, that verifies (strictly).
    pub(crate) public: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Key(..)")
    }
}

impl Ed25519Key {
    /// The key of the seed (RFC 8032's private key).
    pub fn from_seed(seed: &SecretBytes) -> Result<Ed25519Key, OpError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| OpError::internal("Ed25519 seed refused"))?;
        let public = ed25519_dalek::VerifyingKey::try_from(pair.public_key().as_ref())
            .map_err(|_| OpError::internal("Ed25519 public key does not decompress"))?;
        Ok(Ed25519Key {
            seed: Zeroizing::new(**seed),
            pair: Box::new(pair),
            public,
        })
    }
}

impl KeyForm for Ed25519Key {
    fn key_type(&self) -> KeyType {
        KeyType::Ed25519
    }

    fn generate(_: KeyType) -> Result<Ed25519Key, OpError> {
        Ed25519Key::from_seed(&random_bytes::<32>()?)
    }

    /// The seed.
    fn stored(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.seed.to_vec())
    }

    fn from_stored(_: KeyType, bytes: &[u8]) -> Option<Ed25519Key> {
        Ed25519Key::from_seed(&Zeroizing::new(bytes.try_into().ok()?)).ok()
    }

    fn exported(&self) -> Zeroizing<Vec<u8>> {
        self.stored()
    }

    fn public(&self) -> Option<Vec<u8>> {
        Some(self.public.to_bytes().to_vec())
    }

    /// PKCS#8 DER, as `openssl genpkey -algorithm ed25519` writes it.
    fn import(_: KeyType, bytes: &[u8]) -> Result<Ed25519Key, OpError> {
        let seed = ferrohsm_proto::pem::parse_ed25519_pkcs8(bytes)
            .map(Zeroizing::new)
            .ok_or_else(|| wrong_form("Ed25519"))?;
        Ed25519Key::from_seed(&seed)
    }
}
