//! The mechanisms the module offers, what each does and with which key type.

use cryptoki_sys::*;
use ferrohsm_proto::KeyType;

/// Every mechanism: (type, min key size, max key size, flags). EC sizes are in bits, the
/// symmetric ones in bytes, as PKCS#11 counts them.
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
];

const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

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

/// The sign/verify and encrypt/decrypt mechanisms a key type works with.
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

/// The length of a signature (or MAC) by mechanism.
pub fn signature_len(m: CK_MECHANISM_TYPE) -> usize {
    match m {
        CKM_SHA256_HMAC => 32,
        _ => 64,
    }
}
