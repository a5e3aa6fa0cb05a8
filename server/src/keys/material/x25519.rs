//! X25519 keys (RFC 7748), by x25519-dalek (which zeroizes the secret on drop).

use std::fmt;

use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use super::form::{KeyForm, SecretBytes, random_bytes, wrong_form};
use crate::error::OpError;

/// An X25519 key.
pub struct X25519Key(x25519_dalek::StaticSecret);

impl fmt::Debug for X25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("X25519Key(..)")
    }
}

impl X25519Key {
    /// The key of 32 secret bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: &SecretBytes) -> X25519Key {
        X25519Key(x25519_dalek::StaticSecret::from(**bytes))
    }

    /// The secret, for the exchange.
    pub(crate) fn secret(&self) -> &x25519_dalek::StaticSecret {
        &self.0
    }
}

impl KeyForm for X25519Key {
    fn key_type(&self) -> KeyType {
        KeyType::X25519
    }

    fn generate(_: KeyType) -> Result<X25519Key, OpError> {
        Ok(X25519Key::from_bytes(&random_bytes::<32>()?))
    }

    fn stored(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    fn from_stored(_: KeyType, bytes: &[u8]) -> Option<X25519Key> {
        Some(X25519Key::from_bytes(&Zeroizing::new(
            bytes.try_into().ok()?,
        )))
    }

    fn exported(&self) -> Zeroizing<Vec<u8>> {
        self.stored()
    }

    /// Computed (a scalar multiplication): callers run it on a crypto worker.
    fn public(&self) -> Option<Vec<u8>> {
        Some(x25519_dalek::PublicKey::from(&self.0).to_bytes().to_vec())
    }

    /// PKCS#8 DER, as `openssl genpkey -algorithm x25519` writes it.
    fn import(_: KeyType, bytes: &[u8]) -> Result<X25519Key, OpError> {
        let k = ferrohsm_proto::pem::parse_x25519_pkcs8(bytes)
            .map(Zeroizing::new)
            .ok_or_else(|| wrong_form("X25519"))?;
        Ok(X25519Key::from_bytes(&k))
    }
}
