//! The mechanisms the module offers, what each does and with which key type.

use cryptoki_sys::*;
use ferrohsm_proto::{Family, KeyType};

/// Every mechanism: (type, min key size, max key size, flags). EC sizes are in bits, the
/// symmetric ones in bytes, as PKCS#11 counts them; ML-DSA and ML-KEM sizes are the range of
/// their public keys in bytes (PKCS#11 3.2), read from the key-type table.
pub const ALL: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (
        CKM_EC_KEY_PAIR_GEN,
        256,
        256,
        CKF_GENERATE_KEY_PAIR | EC_FLAGS,
    ),
    (CKM_EC_EDWARDS_KEY_PAIR_GEN, 255, 255, CKF_GENERATE_KEY_PAIR),
    (CKM_ECDSA, 256, 256, CKF_SIGN | CKF_VERIFY | EC_FLAGS),
    (CKM_ECDSA_SHA256, 256, 256, CKF_SIGN | CKF_VERIFY | EC_FLAGS),
    (CKM_EDDSA, 255, 255, CKF_SIGN | CKF_VERIFY),
    (CKM_AES_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_AES_GCM, 32, 32, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_CHACHA20_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_CHACHA20_POLY1305, 32, 32, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_GENERIC_SECRET_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_SHA256_HMAC, 32, 32, CKF_SIGN | CKF_VERIFY),
    (CKM_SHA256, 0, 0, CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_DIGEST),
    (
        CKM_ML_DSA_KEY_PAIR_GEN,
        DSA_MIN,
        DSA_MAX,
        CKF_GENERATE_KEY_PAIR,
    ),
    (CKM_ML_DSA, DSA_MIN, DSA_MAX, CKF_SIGN | CKF_VERIFY),
    (
        CKM_ML_KEM_KEY_PAIR_GEN,
        KEM_MIN,
        KEM_MAX,
        CKF_GENERATE_KEY_PAIR,
    ),
    (
        CKM_ML_KEM,
        KEM_MIN,
        KEM_MAX,
        CKF_ENCAPSULATE | CKF_DECAPSULATE,
    ),
];

const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

/// The length of a type's raw public key (0 for a symmetric type).
const fn public_len(t: KeyType) -> CK_ULONG {
    match t.describe().public {
        Some(p) => p.len as CK_ULONG,
        None => 0,
    }
}

const DSA_MIN: CK_ULONG = public_len(KeyType::MlDsa44);
const DSA_MAX: CK_ULONG = public_len(KeyType::MlDsa87);
const KEM_MIN: CK_ULONG = public_len(KeyType::MlKem512);
const KEM_MAX: CK_ULONG = public_len(KeyType::MlKem1024);

/// The info of mechanism `m`, if offered.
pub fn info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    ALL.iter()
        .find(|(t, ..)| *t == m)
        .map(|&(_, min, max, flags)| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        })
}

/// The sign/verify, encrypt/decrypt and encapsulate/decapsulate mechanisms a key type works
/// with.
pub fn for_key(t: KeyType) -> &'static [CK_MECHANISM_TYPE] {
    match t {
        KeyType::P256 => &[CKM_ECDSA, CKM_ECDSA_SHA256],
        KeyType::Ed25519 => &[CKM_EDDSA],
        KeyType::Aes256Gcm => &[CKM_AES_GCM],
        KeyType::ChaCha20Poly1305 => &[CKM_CHACHA20_POLY1305],
        KeyType::HmacSha256 => &[CKM_SHA256_HMAC],
        // Derivation is not offered through the module.
        KeyType::X25519 => &[],
        KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => &[CKM_ML_DSA],
        KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => &[CKM_ML_KEM],
    }
}

/// The mechanism that generates a key type.
pub fn generator(t: KeyType) -> Option<CK_MECHANISM_TYPE> {
    Some(match t {
        KeyType::P256 => CKM_EC_KEY_PAIR_GEN,
        KeyType::Ed25519 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
        KeyType::Aes256Gcm => CKM_AES_KEY_GEN,
        KeyType::ChaCha20Poly1305 => CKM_CHACHA20_KEY_GEN,
        KeyType::HmacSha256 => CKM_GENERIC_SECRET_KEY_GEN,
        KeyType::X25519 => return None,
        KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => CKM_ML_DSA_KEY_PAIR_GEN,
        KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => CKM_ML_KEM_KEY_PAIR_GEN,
    })
}

/// The length of a signature (or MAC) a key of type `t` makes: ECDSA raw r||s and Ed25519
/// 64 bytes, HMAC-SHA256 32, ML-DSA its parameter set's (2420, 3309 or 4627). 0 for the
/// types that do not sign (no sign mechanism reaches them).
pub fn signature_len(t: KeyType) -> usize {
    match t.family() {
        Family::EcdsaP256 | Family::Ed25519 => 64,
        Family::Hmac => 32,
        Family::MlDsa { signature_len, .. } => signature_len,
        Family::X25519 | Family::Aead | Family::MlKem { .. } => 0,
    }
}

/// The ciphertext length of an ML-KEM type (None for the others).
pub fn ciphertext_len(t: KeyType) -> Option<usize> {
    match t.family() {
        Family::MlKem { ciphertext_len, .. } => Some(ciphertext_len),
        Family::EcdsaP256
        | Family::Ed25519
        | Family::Hmac
        | Family::MlDsa { .. }
        | Family::X25519
        | Family::Aead => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_quantum_sizes_come_from_the_key_type_table() {
        assert_eq!((DSA_MIN, DSA_MAX), (1312, 2592));
        assert_eq!((KEM_MIN, KEM_MAX), (800, 1568));
        assert_eq!(signature_len(KeyType::MlDsa65), 3309);
        assert_eq!(signature_len(KeyType::P256), 64);
        assert_eq!(ciphertext_len(KeyType::MlKem768), Some(1088));
        assert_eq!(ciphertext_len(KeyType::Ed25519), None);
        let kem = info(CKM_ML_KEM).unwrap();
        assert_eq!(kem.flags, CKF_ENCAPSULATE | CKF_DECAPSULATE);
    }
}
