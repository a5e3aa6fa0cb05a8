//! Key material: every secret lives in a type that zeroizes on drop and whose `Debug` prints no
//! secret.
//!
//! Ed25519 and P-256 keep aws-lc's parsed key pair next to the zeroizing secret, so that
//! signing does not expand or re-validate the key every time: aws-lc signs Ed25519 2x and P-256
//! 1.1x as fast as the next best here (BENCHMARKS.md, "The fastest signing code"). aws-lc keeps
//! the pair in memory it allocated, and clears every allocation when it frees it.
//!
//! The post-quantum types are one module each ([`ml_dsa`], [`ml_kem`]), behind [`KeyForm`]:
//! what hsmd asks of any key (generate, the stored, exported and public forms, import). A new
//! family is a module implementing it and one variant here; the compiler then names every
//! match that must learn it (no arm over key types or material is a wildcard).

use std::fmt;

use aws_lc_rs::encoding::AsBigEndian as _;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use crate::error::OpError;

mod form;
pub mod ml_dsa;
pub mod ml_kem;

pub use form::{KeyForm, random_bytes};
pub use ml_dsa::MlDsaKey;
pub use ml_kem::MlKemKey;

/// Secret bytes of a symmetric key.
pub type SecretBytes = Zeroizing<[u8; 32]>;

/// The secret half of a key.
pub enum KeyMaterial {
    /// Ed25519: the 32-byte seed, aws-lc's expanded pair and the public key.
    Ed25519 {
        /// The seed (RFC 8032's private key).
        seed: SecretBytes,
        /// Expanded key pair used for signing.
        pair: Box<Ed25519KeyPair>,
        /// The public key, decompressed once, that verifies (strictly).
        public: ed25519_dalek::VerifyingKey,
    },
    /// ECDSA P-256: the 32-byte scalar and aws-lc's parsed pair.
    P256 {
        /// Private scalar.
        scalar: SecretBytes,
        /// Parsed key pair used for signing.
        pair: Box<EcdsaKeyPair>,
        /// The OpenSSL key that signs caller-made digests
        /// ([`crate::crypto::sign::sign_digest`]), made on first use;
        /// OpenSSL clears its scalar when the key is freed.
        prehash: std::sync::OnceLock<openssl::ec::EcKey<openssl::pkey::Private>>,
    },
    /// X25519 (dalek zeroizes on drop).
    X25519(x25519_dalek::StaticSecret),
    /// ChaCha20-Poly1305 key.
    ChaCha20Poly1305(SecretBytes),
    /// AES-256-GCM key.
    Aes256Gcm(SecretBytes),
    /// HMAC-SHA256 key.
    HmacSha256(SecretBytes),
    /// ML-DSA-44, -65 or -87.
    MlDsa(Box<MlDsaKey>),
    /// ML-KEM-512, -768 or -1024.
    MlKem(Box<MlKemKey>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial::{}(..)", self.key_type().name())
    }
}

impl KeyMaterial {
    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            KeyMaterial::Ed25519 { .. } => KeyType::Ed25519,
            KeyMaterial::P256 { .. } => KeyType::P256,
            KeyMaterial::X25519(_) => KeyType::X25519,
            KeyMaterial::ChaCha20Poly1305(_) => KeyType::ChaCha20Poly1305,
            KeyMaterial::Aes256Gcm(_) => KeyType::Aes256Gcm,
            KeyMaterial::HmacSha256(_) => KeyType::HmacSha256,
            KeyMaterial::MlDsa(k) => k.key_type(),
            KeyMaterial::MlKem(k) => k.key_type(),
        }
    }

    /// A fresh random key of type `t`. Runs on a crypto worker (P-256 needs a scalar
    /// multiplication).
    pub fn generate(t: KeyType) -> Result<KeyMaterial, OpError> {
        match t {
            KeyType::P256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(|_| OpError::internal("P-256 key generation failed"))?;
                p256_with_scalar(pair).ok_or_else(|| OpError::internal("P-256 scalar too long"))
            }
            KeyType::Ed25519
            | KeyType::X25519
            | KeyType::ChaCha20Poly1305
            | KeyType::Aes256Gcm
            | KeyType::HmacSha256 => KeyMaterial::from_secret(t, &random_secret()?),
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                MlDsaKey::generate(t).map(|k| KeyMaterial::MlDsa(Box::new(k)))
            }
            KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => {
                MlKemKey::generate(t).map(|k| KeyMaterial::MlKem(Box::new(k)))
            }
        }
    }

    /// Builds a key of a type made of 32 secret bytes (Ed25519, X25519 and the symmetric
    /// types) from them: generation, derivation, a decapsulated secret.
    pub fn from_secret(t: KeyType, secret: &SecretBytes) -> Result<KeyMaterial, OpError> {
        let bytes = Zeroizing::new(**secret);
        Ok(match t {
            KeyType::Ed25519 => {
                let pair = Ed25519KeyPair::from_seed_unchecked(bytes.as_ref())
                    .map_err(|_| OpError::internal("Ed25519 seed refused"))?;
                let public = ed25519_dalek::VerifyingKey::try_from(pair.public_key().as_ref())
                    .map_err(|_| OpError::internal("Ed25519 public key does not decompress"))?;
                KeyMaterial::Ed25519 {
                    seed: bytes,
                    pair: Box::new(pair),
                    public,
                }
            }
            KeyType::X25519 => KeyMaterial::X25519(x25519_dalek::StaticSecret::from(*bytes)),
            KeyType::ChaCha20Poly1305 => KeyMaterial::ChaCha20Poly1305(bytes),
            KeyType::Aes256Gcm => KeyMaterial::Aes256Gcm(bytes),
            KeyType::HmacSha256 => KeyMaterial::HmacSha256(bytes),
            KeyType::P256
            | KeyType::MlDsa44
            | KeyType::MlDsa65
            | KeyType::MlDsa87
            | KeyType::MlKem512
            | KeyType::MlKem768
            | KeyType::MlKem1024 => {
                return Err(OpError::invalid(format!(
                    "a {t} key cannot be made from 32 secret bytes"
                )));
            }
        })
    }

    /// The raw public key, for asymmetric types.
    pub fn public_key(&self) -> Option<Vec<u8>> {
        match self {
            KeyMaterial::Ed25519 { public, .. } => Some(public.to_bytes().to_vec()),
            KeyMaterial::P256 { pair, .. } => Some(pair.public_key().as_ref().to_vec()),
            KeyMaterial::X25519(k) => Some(x25519_dalek::PublicKey::from(k).to_bytes().to_vec()),
            KeyMaterial::MlDsa(k) => Some(k.public()),
            KeyMaterial::MlKem(k) => Some(k.public()),
            KeyMaterial::ChaCha20Poly1305(_)
            | KeyMaterial::Aes256Gcm(_)
            | KeyMaterial::HmacSha256(_) => None,
        }
    }

    /// The OpenSSL form of a P-256 key, which signs and verifies digests (made on first use,
    /// then kept with the key).
    pub fn digest_key(&self) -> Option<&openssl::ec::EcKeyRef<openssl::pkey::Private>> {
        use openssl::bn::{BigNum, BigNumContext};
        use openssl::ec::{EcGroup, EcKey, EcPoint};
        let KeyMaterial::P256 {
            scalar,
            pair,
            prehash,
        } = self
        else {
            return None;
        };
        if let Some(k) = prehash.get() {
            return Some(k);
        }
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).ok()?;
        let mut ctx = BigNumContext::new_secure().ok()?;
        let d = BigNum::from_slice(scalar.as_ref()).ok()?;
        let q = EcPoint::from_bytes(&group, pair.public_key().as_ref(), &mut ctx).ok()?;
        let k = EcKey::from_private_components(&group, &d, &q).ok()?;
        k.check_key().ok()?;
        Some(prehash.get_or_init(|| k))
    }

    /// The raw secret bytes (for `export` of exportable keys only): the seed for Ed25519
    /// and the post-quantum types.
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            KeyMaterial::MlDsa(k) => return k.exported(),
            KeyMaterial::MlKem(k) => return k.exported(),
            KeyMaterial::Ed25519 { seed, .. } => seed.to_vec(),
            KeyMaterial::P256 { scalar, .. } => scalar.to_vec(),
            KeyMaterial::X25519(k) => k.to_bytes().to_vec(),
            KeyMaterial::ChaCha20Poly1305(k)
            | KeyMaterial::Aes256Gcm(k)
            | KeyMaterial::HmacSha256(k) => k.to_vec(),
        })
    }
}

impl KeyMaterial {
    /// The bytes sealed into the key store: the 32-byte secret, and for P-256 the 65-byte
    /// public point after it (the pair is rebuilt from both halves, which must agree); the
    /// seed for the post-quantum types.
    pub fn to_stored(&self) -> Zeroizing<Vec<u8>> {
        match self {
            KeyMaterial::MlDsa(k) => return k.stored(),
            KeyMaterial::MlKem(k) => return k.stored(),
            _ => {}
        }
        let mut out = self.secret_bytes();
        if let KeyMaterial::P256 { pair, .. } = self {
            out.extend_from_slice(pair.public_key().as_ref());
        }
        out
    }

    /// Rebuilds a key from [`KeyMaterial::to_stored`] bytes; `None` if they do not form a key
    /// of type `t` (for P-256, if the halves do not belong together).
    pub fn from_stored(t: KeyType, bytes: &[u8]) -> Option<KeyMaterial> {
        match t {
            KeyType::P256 => {
                if bytes.len() != 32 + 65 {
                    return None;
                }
                let (secret, public) = bytes.split_at(32);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    secret,
                    public,
                )
                .ok()?;
                let mut scalar = Zeroizing::new([0u8; 32]);
                scalar.copy_from_slice(secret);
                Some(KeyMaterial::P256 {
                    scalar,
                    pair: Box::new(pair),
                    prehash: std::sync::OnceLock::new(),
                })
            }
            KeyType::Ed25519
            | KeyType::X25519
            | KeyType::ChaCha20Poly1305
            | KeyType::Aes256Gcm
            | KeyType::HmacSha256 => {
                let secret: [u8; 32] = bytes.try_into().ok()?;
                KeyMaterial::from_secret(t, &Zeroizing::new(secret)).ok()
            }
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                MlDsaKey::from_stored(t, bytes).map(|k| KeyMaterial::MlDsa(Box::new(k)))
            }
            KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => {
                MlKemKey::from_stored(t, bytes).map(|k| KeyMaterial::MlKem(Box::new(k)))
            }
        }
    }
}

impl KeyMaterial {
    /// A key brought in from outside: PKCS#8 DER for ed25519, p256 and x25519 (what `openssl
    /// genpkey` writes), exactly 32 raw bytes for the symmetric types. For P-256, aws-lc takes
    /// PKCS#8 v1 or v2 with the named curve (or its explicit parameters), with or without the
    /// public key: computed when absent, and when present checked to belong to the secret.
    pub fn import(t: KeyType, bytes: &[u8]) -> Result<KeyMaterial, OpError> {
        let pkcs8 = |what: &str| {
            OpError::invalid(format!(
                "the input is not a {what} private key in PKCS#8 (as `openssl genpkey` writes it)"
            ))
        };
        match t {
            KeyType::Ed25519 => {
                let seed = ferrohsm_proto::pem::parse_ed25519_pkcs8(bytes)
                    .map(Zeroizing::new)
                    .ok_or_else(|| pkcs8("Ed25519"))?;
                KeyMaterial::from_secret(t, &seed)
            }
            KeyType::X25519 => {
                let k = ferrohsm_proto::pem::parse_x25519_pkcs8(bytes)
                    .map(Zeroizing::new)
                    .ok_or_else(|| pkcs8("X25519"))?;
                KeyMaterial::from_secret(t, &k)
            }
            KeyType::P256 => {
                // aws-lc checks the document (curve, scalar range, that a public key given in
                // it belongs) before we take the scalar out of it.
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, bytes)
                    .map_err(|_| pkcs8("P-256"))?;
                p256_with_scalar(pair).ok_or_else(|| pkcs8("P-256"))
            }
            KeyType::ChaCha20Poly1305 | KeyType::Aes256Gcm | KeyType::HmacSha256 => {
                let raw: [u8; 32] = bytes.try_into().map_err(|_| {
                    OpError::invalid(format!(
                        "a {t} key is exactly 32 raw bytes; the input has {}",
                        bytes.len()
                    ))
                })?;
                KeyMaterial::from_secret(t, &Zeroizing::new(raw))
            }
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                MlDsaKey::import(t, bytes).map(|k| KeyMaterial::MlDsa(Box::new(k)))
            }
            KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => {
                MlKemKey::import(t, bytes).map(|k| KeyMaterial::MlKem(Box::new(k)))
            }
        }
    }
}

/// A P-256 key from aws-lc's pair: its scalar taken out, big-endian in 32 bytes (`None` if it
/// does not fit, which a valid P-256 scalar always does).
fn p256_with_scalar(pair: EcdsaKeyPair) -> Option<KeyMaterial> {
    let bin = pair.private_key().as_be_bytes().ok()?;
    let be: &[u8] = bin.as_ref();
    let mut scalar = Zeroizing::new([0u8; 32]);
    let pad = 32usize.checked_sub(be.len())?;
    scalar[pad..].copy_from_slice(be);
    Some(KeyMaterial::P256 {
        scalar,
        pair: Box::new(pair),
        prehash: std::sync::OnceLock::new(),
    })
}

/// 32 bytes from the OS CSPRNG.
pub fn random_secret() -> Result<SecretBytes, OpError> {
    random_bytes::<32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret() {
        for t in KeyType::ALL {
            let k = KeyMaterial::generate(t).unwrap();
            let dbg = format!("{k:?}");
            assert_eq!(dbg, format!("KeyMaterial::{}(..)", t.name()));
            assert_eq!(k.key_type(), t);
            assert_eq!(k.secret_bytes().len(), t.describe().secret_len);
            assert_eq!(k.public_key().is_some(), t.is_asymmetric());
        }
    }

    #[test]
    fn stored_bytes_rebuild_the_same_key() {
        for t in KeyType::ALL {
            let k = KeyMaterial::generate(t).unwrap();
            let back = KeyMaterial::from_stored(t, &k.to_stored()).unwrap();
            assert_eq!(back.public_key(), k.public_key());
            assert_eq!(*back.secret_bytes(), *k.secret_bytes());
            assert!(KeyMaterial::from_stored(t, &k.to_stored()[1..]).is_none());
        }
        let a = KeyMaterial::generate(KeyType::P256).unwrap().to_stored();
        let b = KeyMaterial::generate(KeyType::P256).unwrap().to_stored();
        let mixed = [&a[..32], &b[32..]].concat();
        assert!(KeyMaterial::from_stored(KeyType::P256, &mixed).is_none());
    }

    /// What `openssl genpkey` writes imports, keeping its public key; a document whose public
    /// key belongs to another key, a key on another curve, and damaged documents are refused.
    #[test]
    fn p256_import_takes_openssl_keys_and_refuses_what_does_not_belong() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        let pkcs8 = |nid: Nid| {
            let k = EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap();
            let public = k
                .public_key()
                .to_bytes(
                    k.group(),
                    openssl::ec::PointConversionForm::UNCOMPRESSED,
                    &mut openssl::bn::BigNumContext::new().unwrap(),
                )
                .unwrap();
            let der = openssl::pkey::PKey::from_ec_key(k)
                .unwrap()
                .private_key_to_pkcs8()
                .unwrap();
            (der, public)
        };
        let (a, a_public) = pkcs8(Nid::X9_62_PRIME256V1);
        let k = KeyMaterial::import(KeyType::P256, &a).unwrap();
        assert_eq!(k.public_key().unwrap(), a_public);
        // The halves of the stored form belong together.
        assert!(KeyMaterial::from_stored(KeyType::P256, &k.to_stored()).is_some());
        // A's secret with B's public key (the point closes the document).
        let (b, b_public) = pkcs8(Nid::X9_62_PRIME256V1);
        assert!(b.ends_with(&b_public) && a.ends_with(&a_public));
        let mixed = [&a[..a.len() - 65], &b_public[..]].concat();
        let refused = |bytes: &[u8], what: &str| {
            let e = KeyMaterial::import(KeyType::P256, bytes).unwrap_err();
            assert_eq!(e.status, ferrohsm_proto::Status::InvalidArgument, "{what}");
            assert!(
                e.message.contains("P-256 private key in PKCS#8"),
                "{what}: {e:?}"
            );
        };
        refused(&mixed, "another key's public key");
        refused(&pkcs8(Nid::SECP384R1).0, "a P-384 key");
        refused(&a[..a.len() - 1], "a truncated document");
        refused(b"", "nothing");
        refused(&[0x30; 64], "garbage");
    }

    #[test]
    fn p256_scalar_matches_public_key() {
        let KeyMaterial::P256 { scalar, pair, .. } = KeyMaterial::generate(KeyType::P256).unwrap()
        else {
            panic!("wrong type")
        };
        let rebuilt = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            scalar.as_ref(),
            pair.public_key().as_ref(),
        );
        assert!(
            rebuilt.is_ok(),
            "extracted scalar must belong to the public key"
        );
    }
}
