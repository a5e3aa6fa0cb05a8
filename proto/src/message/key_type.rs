//! Key types: the wire enum and, in one table ([`KeyType::describe`]), everything the
//! protocol knows of each type: its name, family, usages, public half (length and the
//! SubjectPublicKeyInfo algorithm), and the length of the secret that export writes.
//!
//! [`KeyType`] is not `#[non_exhaustive]`, on purpose: every crate of the workspace matches it
//! without a wildcard, so a new type is a row here and then a compile error wherever it needs
//! handling, instead of a quiet `wrong_key_type` in a place nobody remembered. Variants are
//! encoded by position: new ones go at the end.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::usage::{Usage, UsageSet};

/// Key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// Ed25519 signing key.
    Ed25519,
    /// ECDSA P-256 with SHA-256 signing key.
    P256,
    /// X25519 key agreement key.
    X25519,
    /// ChaCha20-Poly1305 AEAD key.
    ChaCha20Poly1305,
    /// AES-256-GCM AEAD key.
    Aes256Gcm,
    /// HMAC-SHA256 key.
    HmacSha256,
    /// ML-DSA-44 (FIPS 204) signing key.
    MlDsa44,
    /// ML-DSA-65 (FIPS 204) signing key.
    MlDsa65,
    /// ML-DSA-87 (FIPS 204) signing key.
    MlDsa87,
    /// ML-KEM-512 (FIPS 203) key encapsulation key.
    MlKem512,
    /// ML-KEM-768 (FIPS 203) key encapsulation key.
    MlKem768,
    /// ML-KEM-1024 (FIPS 203) key encapsulation key.
    MlKem1024,
}

/// The algorithm family of a key type, with what a caller needs of its parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Ed25519 (RFC 8032), 64-byte signatures.
    Ed25519,
    /// ECDSA P-256 with SHA-256, DER signatures.
    EcdsaP256,
    /// X25519 key agreement.
    X25519,
    /// An AEAD (ChaCha20-Poly1305, AES-256-GCM).
    Aead,
    /// HMAC-SHA256.
    Hmac,
    /// ML-DSA (FIPS 204), pure mode.
    MlDsa {
        /// 44, 65 or 87.
        level: u16,
        /// Signature length in bytes.
        signature_len: usize,
    },
    /// ML-KEM (FIPS 203).
    MlKem {
        /// 512, 768 or 1024.
        level: u16,
        /// Ciphertext length in bytes.
        ciphertext_len: usize,
    },
}

/// The public half of an asymmetric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicForm {
    /// Length of the raw public key (Ed25519, X25519: 32; P-256: the 65-byte uncompressed
    /// point; ML-DSA and ML-KEM: the FIPS 203/204 encoding).
    pub len: usize,
    /// The DER AlgorithmIdentifier of its SubjectPublicKeyInfo (RFC 8410, RFC 5480, and the
    /// NIST OIDs under 2.16.840.1.101.3.4.3 and .4.4 for ML-DSA and ML-KEM).
    pub algorithm: &'static [u8],
}

/// Everything the protocol knows of one key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    /// The name on the command line, in JSON and in the store.
    pub name: &'static str,
    /// Family and parameter set.
    pub family: Family,
    /// The usages that make sense for the type; also the default set.
    pub usage: UsageSet,
    /// The public half, for asymmetric types.
    pub public: Option<PublicForm>,
    /// Length of the secret `export` writes and a raw import takes: the key for symmetric
    /// types, the seed for Ed25519 and ML-DSA (32), the scalar for P-256 and X25519, and
    /// `d || z` for ML-KEM (64).
    pub secret_len: usize,
}

const SIGN_VERIFY: UsageSet = UsageSet::of_const(&[Usage::Sign, Usage::Verify]);
const AEAD_USAGE: UsageSet =
    UsageSet::of_const(&[Usage::Encrypt, Usage::Decrypt, Usage::Wrap, Usage::Unwrap]);
const KEM_USAGE: UsageSet = UsageSet::of_const(&[Usage::Encapsulate, Usage::Decapsulate]);

const fn public(len: usize, algorithm: &'static [u8]) -> Option<PublicForm> {
    Some(PublicForm { len, algorithm })
}

// AlgorithmIdentifier DER: SEQUENCE { OID } (no parameters, as RFC 8410 and the NIST
// ML-DSA/ML-KEM profiles require), or for P-256 SEQUENCE { id-ecPublicKey, prime256v1 }.
const ED25519_ALG: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
const X25519_ALG: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e];
const P256_ALG: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
macro_rules! nist_alg {
    ($arc:expr, $last:expr) => {
        &[
            0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, $arc, $last,
        ]
    };
}
const ML_DSA_44_ALG: &[u8] = nist_alg!(0x03, 0x11);
const ML_DSA_65_ALG: &[u8] = nist_alg!(0x03, 0x12);
const ML_DSA_87_ALG: &[u8] = nist_alg!(0x03, 0x13);
const ML_KEM_512_ALG: &[u8] = nist_alg!(0x04, 0x01);
const ML_KEM_768_ALG: &[u8] = nist_alg!(0x04, 0x02);
const ML_KEM_1024_ALG: &[u8] = nist_alg!(0x04, 0x03);

const fn row(
    name: &'static str,
    family: Family,
    usage: UsageSet,
    public: Option<PublicForm>,
    secret_len: usize,
) -> TypeInfo {
    TypeInfo {
        name,
        family,
        usage,
        public,
        secret_len,
    }
}

const fn dsa(level: u16, signature_len: usize) -> Family {
    Family::MlDsa {
        level,
        signature_len,
    }
}

const fn kem(level: u16, ciphertext_len: usize) -> Family {
    Family::MlKem {
        level,
        ciphertext_len,
    }
}

impl KeyType {
    /// Every key type, in wire order.
    pub const ALL: [KeyType; 12] = [
        KeyType::Ed25519,
        KeyType::P256,
        KeyType::X25519,
        KeyType::ChaCha20Poly1305,
        KeyType::Aes256Gcm,
        KeyType::HmacSha256,
        KeyType::MlDsa44,
        KeyType::MlDsa65,
        KeyType::MlDsa87,
        KeyType::MlKem512,
        KeyType::MlKem768,
        KeyType::MlKem1024,
    ];

    /// The one table: this type's row.
    pub const fn describe(self) -> TypeInfo {
        use Family as F;
        match self {
            KeyType::Ed25519 => row(
                "ed25519",
                F::Ed25519,
                SIGN_VERIFY,
                public(32, ED25519_ALG),
                32,
            ),
            KeyType::P256 => row("p256", F::EcdsaP256, SIGN_VERIFY, public(65, P256_ALG), 32),
            KeyType::X25519 => row(
                "x25519",
                F::X25519,
                UsageSet::of_const(&[Usage::Derive]),
                public(32, X25519_ALG),
                32,
            ),
            KeyType::ChaCha20Poly1305 => row("chacha20poly1305", F::Aead, AEAD_USAGE, None, 32),
            KeyType::Aes256Gcm => row("aes256gcm", F::Aead, AEAD_USAGE, None, 32),
            KeyType::HmacSha256 => row(
                "hmac-sha256",
                F::Hmac,
                UsageSet::of_const(&[Usage::Mac]),
                None,
                32,
            ),
            KeyType::MlDsa44 => row(
                "ml-dsa-44",
                dsa(44, 2420),
                SIGN_VERIFY,
                public(1312, ML_DSA_44_ALG),
                32,
            ),
            KeyType::MlDsa65 => row(
                "ml-dsa-65",
                dsa(65, 3309),
                SIGN_VERIFY,
                public(1952, ML_DSA_65_ALG),
                32,
            ),
            KeyType::MlDsa87 => row(
                "ml-dsa-87",
                dsa(87, 4627),
                SIGN_VERIFY,
                public(2592, ML_DSA_87_ALG),
                32,
            ),
            KeyType::MlKem512 => row(
                "ml-kem-512",
                kem(512, 768),
                KEM_USAGE,
                public(800, ML_KEM_512_ALG),
                64,
            ),
            KeyType::MlKem768 => row(
                "ml-kem-768",
                kem(768, 1088),
                KEM_USAGE,
                public(1184, ML_KEM_768_ALG),
                64,
            ),
            KeyType::MlKem1024 => row(
                "ml-kem-1024",
                kem(1024, 1568),
                KEM_USAGE,
                public(1568, ML_KEM_1024_ALG),
                64,
            ),
        }
    }

    /// The name used on the command line, in JSON and in the store.
    pub const fn name(self) -> &'static str {
        self.describe().name
    }

    /// The usages that make sense for this type; also the default set.
    pub const fn allowed_usage(self) -> UsageSet {
        self.describe().usage
    }

    /// Whether the type has a public half.
    pub const fn is_asymmetric(self) -> bool {
        self.describe().public.is_some()
    }

    /// The family and parameter set.
    pub const fn family(self) -> Family {
        self.describe().family
    }

    /// Whether it is an ML-DSA type.
    pub const fn is_ml_dsa(self) -> bool {
        matches!(self.family(), Family::MlDsa { .. })
    }

    /// Whether it is an ML-KEM type.
    pub const fn is_ml_kem(self) -> bool {
        matches!(self.family(), Family::MlKem { .. })
    }

    /// The types of one family (`Family::MlDsa` of any level stands for every ML-DSA type).
    pub fn of_family(like: Family) -> impl Iterator<Item = KeyType> {
        KeyType::ALL
            .into_iter()
            .filter(move |t| std::mem::discriminant(&t.family()) == std::mem::discriminant(&like))
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyType::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "unknown key type {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Postcard encodes a variant by position: the first six keep the numbers they always
    /// had, so stored and wired keys of the old types read the same.
    #[test]
    fn wire_positions_never_move() {
        for (i, t) in KeyType::ALL.iter().enumerate() {
            let bytes = postcard::to_allocvec(t).unwrap();
            assert_eq!(bytes, vec![i as u8], "{t}");
            assert_eq!(t.name().parse::<KeyType>().unwrap(), *t);
        }
        assert_eq!(KeyType::HmacSha256.name(), "hmac-sha256");
        assert_eq!(
            postcard::to_allocvec(&KeyType::HmacSha256).unwrap(),
            vec![5]
        );
    }

    #[test]
    fn names_are_unique_and_families_consistent() {
        let mut names: Vec<_> = KeyType::ALL.iter().map(|t| t.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KeyType::ALL.len());
        assert_eq!(KeyType::of_family(Family::Aead).count(), 2);
        let dsa: Vec<_> = KeyType::of_family(Family::MlDsa {
            level: 0,
            signature_len: 0,
        })
        .collect();
        assert_eq!(dsa, [KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87]);
        for t in KeyType::ALL {
            let d = t.describe();
            assert_eq!(d.public.is_some(), t.is_asymmetric());
            assert!(!d.usage.is_empty());
            if t.is_ml_kem() {
                assert_eq!(d.secret_len, 64);
            }
        }
    }
}
