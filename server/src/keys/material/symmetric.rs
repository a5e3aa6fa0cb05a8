//! Symmetric keys: ChaCha20-Poly1305, AES-256-GCM and HMAC-SHA256, 32 secret bytes each (ring
//! and RustCrypto take them as they are, in [`crate::crypto::ops`]).

use std::fmt;

use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use super::form::{KeyForm, SecretBytes, random_bytes};
use crate::error::OpError;

/// A symmetric key and its type.
pub struct SymmetricKey {
    key_type: KeyType,
    bytes: SecretBytes,
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SymmetricKey({})", self.key_type)
    }
}

impl AsRef<[u8]> for SymmetricKey {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

impl SymmetricKey {
    /// A key of type `t` of these bytes.
    pub fn new(t: KeyType, bytes: &SecretBytes) -> SymmetricKey {
        SymmetricKey {
            key_type: t,
            bytes: Zeroizing::new(**bytes),
        }
    }
}

impl KeyForm for SymmetricKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn generate(t: KeyType) -> Result<SymmetricKey, OpError> {
        Ok(SymmetricKey::new(t, &random_bytes::<32>()?))
    }

    fn stored(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.bytes.to_vec())
    }

    fn from_stored(t: KeyType, bytes: &[u8]) -> Option<SymmetricKey> {
        Some(SymmetricKey::new(
            t,
            &Zeroizing::new(bytes.try_into().ok()?),
        ))
    }

    fn exported(&self) -> Zeroizing<Vec<u8>> {
        self.stored()
    }

    fn public(&self) -> Option<Vec<u8>> {
        None
    }

    /// Exactly 32 raw bytes.
    fn import(t: KeyType, bytes: &[u8]) -> Result<SymmetricKey, OpError> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| {
            OpError::invalid(format!(
                "a {t} key is exactly 32 raw bytes; the input has {}",
                bytes.len()
            ))
        })?;
        Ok(SymmetricKey::new(t, &Zeroizing::new(raw)))
    }
}
