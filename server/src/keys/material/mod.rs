//! Key material: every secret lives in a type that zeroizes on drop and whose `Debug` prints no
//! secret.
//!
//! A key family is one module implementing [`KeyForm`] (generate; the stored, exported and
//! public forms; import): [`ed25519`], [`p256`], [`x25519`], [`symmetric`], [`ml_dsa`],
//! [`ml_kem`]. [`KeyMaterial`] holds one key of any family, and `by_type!` below is the one
//! table from a key type to the module that makes it and the variant that holds it. A new
//! family is a module, a variant and a row there; the compiler then names every match that must
//! learn it (no arm over key types or material is a wildcard).
//!
//! Ed25519 and P-256 keep aws-lc's parsed key pair next to the zeroizing secret, so that
//! signing does not expand or re-validate the key every time: aws-lc signs Ed25519 2x and P-256
//! 1.1x as fast as the next best here (BENCHMARKS.md, "The fastest signing code"). aws-lc keeps
//! the pair in memory it allocated, and clears every allocation when it frees it.

use std::fmt;

use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use crate::error::OpError;

pub mod ed25519;
mod form;
pub mod ml_dsa;
pub mod ml_kem;
pub mod p256;
pub mod symmetric;
pub mod x25519;

pub use ed25519::Ed25519Key;
pub use form::{KeyForm, SecretBytes, random_bytes};
pub use ml_dsa::MlDsaKey;
pub use ml_kem::MlKemKey;
pub use p256::P256Key;
pub use symmetric::SymmetricKey;
pub use x25519::X25519Key;

/// The secret half of a key, of any family.
pub enum KeyMaterial {
    /// Ed25519.
    Ed25519(Box<Ed25519Key>),
    /// ECDSA P-256.
    P256(Box<P256Key>),
    /// X25519.
    X25519(X25519Key),
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305(SymmetricKey),
    /// AES-256-GCM.
    Aes256Gcm(SymmetricKey),
    /// HMAC-SHA256.
    HmacSha256(SymmetricKey),
    /// ML-DSA-44, -65 or -87.
    MlDsa(Box<MlDsaKey>),
    /// ML-KEM-512, -768 or -1024.
    MlKem(Box<MlKemKey>),
}

/// The one table: for key type `$t`, calls `$f` of the family module that makes keys of it
/// (a constructor of [`KeyForm`], which answers a `Result` or an `Option`) and wraps the key in
/// its variant.
macro_rules! by_type {
    ($t:expr, $f:ident($($arg:expr),*)) => {
        match $t {
            KeyType::Ed25519 => Ed25519Key::$f($($arg),*).map(|k| KeyMaterial::Ed25519(Box::new(k))),
            KeyType::P256 => P256Key::$f($($arg),*).map(|k| KeyMaterial::P256(Box::new(k))),
            KeyType::X25519 => X25519Key::$f($($arg),*).map(KeyMaterial::X25519),
            KeyType::ChaCha20Poly1305 => {
                SymmetricKey::$f($($arg),*).map(KeyMaterial::ChaCha20Poly1305)
            }
            KeyType::Aes256Gcm => SymmetricKey::$f($($arg),*).map(KeyMaterial::Aes256Gcm),
            KeyType::HmacSha256 => SymmetricKey::$f($($arg),*).map(KeyMaterial::HmacSha256),
            KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => {
                MlDsaKey::$f($($arg),*).map(|k| KeyMaterial::MlDsa(Box::new(k)))
            }
            KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => {
                MlKemKey::$f($($arg),*).map(|k| KeyMaterial::MlKem(Box::new(k)))
            }
        }
    };
}

/// Runs `$body` with `$k` the key inside `$m`, whatever its family.
macro_rules! each {
    ($m:expr, $k:ident => $body:expr) => {
        match $m {
            KeyMaterial::Ed25519($k) => $body,
            KeyMaterial::P256($k) => $body,
            KeyMaterial::X25519($k) => $body,
            KeyMaterial::ChaCha20Poly1305($k)
            | KeyMaterial::Aes256Gcm($k)
            | KeyMaterial::HmacSha256($k) => $body,
            KeyMaterial::MlDsa($k) => $body,
            KeyMaterial::MlKem($k) => $body,
        }
    };
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial::{}(..)", self.key_type().name())
    }
}

impl KeyMaterial {
    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        each!(self, k => k.key_type())
    }

    /// A fresh random key of type `t`. Runs on a crypto worker (P-256 needs a scalar
    /// multiplication, ML-DSA and ML-KEM expand their seeds).
    pub fn generate(t: KeyType) -> Result<KeyMaterial, OpError> {
        by_type!(t, generate(t))
    }

    /// Builds a key of a type made of 32 secret bytes (Ed25519, X25519 and the symmetric
    /// types) from them: derivation, a KEM's shared secret, tests.
    pub fn from_secret(t: KeyType, secret: &SecretBytes) -> Result<KeyMaterial, OpError> {
        Ok(match t {
            KeyType::Ed25519 => KeyMaterial::Ed25519(Box::new(Ed25519Key::from_seed(secret)?)),
            KeyType::X25519 => KeyMaterial::X25519(X25519Key::from_bytes(secret)),
            KeyType::ChaCha20Poly1305 => {
                KeyMaterial::ChaCha20Poly1305(SymmetricKey::new(t, secret))
            }
            KeyType::Aes256Gcm => KeyMaterial::Aes256Gcm(SymmetricKey::new(t, secret)),
            KeyType::HmacSha256 => KeyMaterial::HmacSha256(SymmetricKey::new(t, secret)),
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
        each!(self, k => k.public())
    }

    /// The raw secret bytes (for `export` of exportable keys only): the seed for Ed25519,
    /// ML-DSA and ML-KEM, the scalar for P-256 and X25519, the key for the symmetric types.
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        each!(self, k => k.exported())
    }

    /// The bytes sealed into the key store and carried by wrap: the secret, and for P-256 its
    /// public point after it (the pair is rebuilt from both halves, which must agree).
    pub fn to_stored(&self) -> Zeroizing<Vec<u8>> {
        each!(self, k => k.stored())
    }

    /// Rebuilds a key from [`KeyMaterial::to_stored`] bytes; `None` if they do not form a key
    /// of type `t` (for P-256, if the halves do not belong together).
    pub fn from_stored(t: KeyType, bytes: &[u8]) -> Option<KeyMaterial> {
        by_type!(t, from_stored(t, bytes))
    }

    /// A key brought in from outside: PKCS#8 DER for ed25519, p256 and x25519 (what `openssl
    /// genpkey` writes), exactly 32 raw bytes for the symmetric types, the raw seed or PKCS#8
    /// for ML-DSA and ML-KEM (each family's `import` says what it takes).
    pub fn import(t: KeyType, bytes: &[u8]) -> Result<KeyMaterial, OpError> {
        by_type!(t, import(t, bytes))
    }
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
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
        let KeyMaterial::P256(k) = KeyMaterial::generate(KeyType::P256).unwrap() else {
            panic!("wrong type")
        };
        let rebuilt = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            k.scalar(),
            k.pair.public_key().as_ref(),
        );
        assert!(
            rebuilt.is_ok(),
            "extracted scalar must belong to the public key"
        );
    }
}
