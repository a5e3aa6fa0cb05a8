//! ML-KEM encapsulation and decapsulation into a new key's material: the 32-byte shared
//! secret becomes an AES-256-GCM, ChaCha20-Poly1305 or HMAC-SHA256 key, byte for byte (no
//! KDF). Runs on a crypto worker thread.

use ferrohsm_proto::KeyType;

use super::ops::wrong_type;
use crate::error::OpError;
use crate::keys::material::{KeyMaterial, MlKemKey, ml_kem};

fn ml_kem_key<'a>(key: &'a KeyMaterial, op: &str) -> Result<&'a MlKemKey, OpError> {
    match key {
        KeyMaterial::MlKem(k) => Ok(k),
        other @ (KeyMaterial::Ed25519 { .. }
        | KeyMaterial::P256 { .. }
        | KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlDsa(_)) => Err(wrong_type(op, other.key_type())),
    }
}

/// Encapsulates to `key`'s public half: the ciphertext, and the secret as a key of type `t`.
pub fn encapsulate(key: &KeyMaterial, t: KeyType) -> Result<(Vec<u8>, KeyMaterial), OpError> {
    let (ct, ss) = ml_kem_key(key, "encapsulate")?.encapsulate()?;
    Ok((ct, KeyMaterial::from_secret(t, &ss)?))
}

/// Encapsulates to a peer's ML-KEM public key, given as SubjectPublicKeyInfo DER.
pub fn encapsulate_peer(spki: &[u8], t: KeyType) -> Result<(Vec<u8>, KeyMaterial), OpError> {
    let (peer_type, raw) = ferrohsm_proto::pem::parse_spki(spki)
        .filter(|(pt, _)| pt.is_ml_kem())
        .ok_or_else(|| {
            OpError::invalid(
                "the peer key is not an ML-KEM public key (a SubjectPublicKeyInfo of \
                 ml-kem-512, ml-kem-768 or ml-kem-1024)",
            )
        })?;
    let (ct, ss) = ml_kem::encapsulate_to(peer_type, &raw)?;
    Ok((ct, KeyMaterial::from_secret(t, &ss)?))
}

/// Decapsulates `ciphertext` with `key`: the secret as a key of type `t`.
pub fn decapsulate(
    key: &KeyMaterial,
    ciphertext: &[u8],
    t: KeyType,
) -> Result<KeyMaterial, OpError> {
    let ss = ml_kem_key(key, "decapsulate")?.decapsulate(ciphertext)?;
    KeyMaterial::from_secret(t, &ss)
}
