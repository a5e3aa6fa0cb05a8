//! Local checks of what the server returned: signatures with the public key (by another
//! implementation than hsmd's for each type), MACs recomputed with the exported key, KEM
//! secrets made here and compared, plaintexts compared, listings compared with what the
//! client made.

use std::collections::HashSet;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ML_DSA_44, ML_DSA_65, ML_DSA_87};
use aws_lc_rs::signature::{UnparsedPublicKey, VerificationAlgorithm};
use ferrohsm_proto::{KeyInfo, KeyType};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A signature over `msg` by the `t` key whose raw public key is `public` (with an empty
/// context for ML-DSA). Ed25519 by ed25519-dalek (strict); P-256 and ML-DSA by aws-lc (hsmd
/// signs ML-DSA with libcrux). Types that do not sign: never.
pub fn signature_ok(t: KeyType, public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let with = |alg: &'static dyn VerificationAlgorithm| {
        UnparsedPublicKey::new(alg, public).verify(msg, sig).is_ok()
    };
    match t {
        KeyType::Ed25519 => {
            let Ok(pk) = <[u8; 32]>::try_from(public) else {
                return false;
            };
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
                return false;
            };
            ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| vk.verify_strict(msg, &s).is_ok())
        }
        KeyType::P256 => with(&ECDSA_P256_SHA256_ASN1),
        KeyType::MlDsa44 => with(&ML_DSA_44),
        KeyType::MlDsa65 => with(&ML_DSA_65),
        KeyType::MlDsa87 => with(&ML_DSA_87),
        KeyType::X25519
        | KeyType::ChaCha20Poly1305
        | KeyType::Aes256Gcm
        | KeyType::HmacSha256
        | KeyType::MlKem512
        | KeyType::MlKem768
        | KeyType::MlKem1024 => false,
    }
}

/// Encapsulates to the `t` key whose raw public key is `public`, here (aws-lc): the
/// ciphertext and the secret hsmd must decapsulate it to. `None` for types that do not
/// encapsulate, or a public key that does not parse.
pub fn encapsulate(t: KeyType, public: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use aws_lc_rs::kem::{EncapsulationKey, ML_KEM_512, ML_KEM_768, ML_KEM_1024};
    let alg = match t {
        KeyType::MlKem512 => &ML_KEM_512,
        KeyType::MlKem768 => &ML_KEM_768,
        KeyType::MlKem1024 => &ML_KEM_1024,
        KeyType::Ed25519
        | KeyType::P256
        | KeyType::X25519
        | KeyType::ChaCha20Poly1305
        | KeyType::Aes256Gcm
        | KeyType::HmacSha256
        | KeyType::MlDsa44
        | KeyType::MlDsa65
        | KeyType::MlDsa87 => return None,
    };
    let (ct, ss) = EncapsulationKey::new(alg, public)
        .ok()?
        .encapsulate()
        .ok()?;
    Some((ct.as_ref().to_vec(), ss.as_ref().to_vec()))
}

/// HMAC-SHA256 of `data` under `key`, recomputed here.
pub fn mac_ok(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).is_ok_and(|mut m| {
        m.update(data);
        m.verify_slice(tag).is_ok()
    })
}

/// `n` random bytes: the right length, and not all zero (for n >= 16 that is a broken RNG).
pub fn random_ok(n: usize, bytes: &[u8]) -> bool {
    bytes.len() == n && (n < 16 || bytes.iter().any(|b| *b != 0))
}

/// What a listing showed, against what this client knows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListCheck {
    /// Our live keys missing from the listing (a wrong result).
    pub missing: Vec<String>,
    /// Keys with another identity's label prefix in our listing (an isolation violation).
    pub foreign: Vec<String>,
}

/// Every label in `mine` must be listed; no label may start with a prefix in `others`.
pub fn check_list(mine: &HashSet<String>, listed: &[KeyInfo], others: &[String]) -> ListCheck {
    let seen: HashSet<&str> = listed.iter().map(|k| k.label.as_str()).collect();
    let mut missing: Vec<String> = mine
        .iter()
        .filter(|l| !seen.contains(l.as_str()))
        .cloned()
        .collect();
    missing.sort();
    let foreign = listed
        .iter()
        .map(|k| k.label.as_str())
        .filter(|l| others.iter().any(|p| l.starts_with(p.as_str())))
        .map(str::to_owned)
        .collect();
    ListCheck { missing, foreign }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use ferrohsm_proto::KeyType;

    #[test]
    fn a_wrong_signature_is_caught() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let pk = sk.verifying_key().to_bytes();
        let sig = sk.sign(b"msg").to_bytes();
        let ed = KeyType::Ed25519;
        assert!(signature_ok(ed, &pk, b"msg", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!signature_ok(ed, &pk, b"msg", &bad));
        assert!(!signature_ok(ed, &pk, b"other", &sig));
        assert!(!signature_ok(ed, &pk[1..], b"msg", &sig));
        assert!(!signature_ok(KeyType::MlDsa44, &pk, b"msg", &sig));
    }

    #[test]
    fn ml_dsa_signatures_are_checked_by_their_parameter_set() {
        use aws_lc_rs::signature::{KeyPair as _, ML_DSA_65_SIGNING, PqdsaKeyPair};
        let k = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).unwrap();
        let mut sig = vec![0; ML_DSA_65_SIGNING.signature_len()];
        let n = k.sign(b"msg", &mut sig).unwrap();
        sig.truncate(n);
        let pk = k.public_key().as_ref().to_vec();
        assert!(signature_ok(KeyType::MlDsa65, &pk, b"msg", &sig));
        assert!(!signature_ok(KeyType::MlDsa65, &pk, b"msG", &sig));
        assert!(!signature_ok(KeyType::MlDsa44, &pk, b"msg", &sig));
        assert!(!signature_ok(KeyType::MlDsa87, &pk, b"msg", &sig));
        sig[7] ^= 1;
        assert!(!signature_ok(KeyType::MlDsa65, &pk, b"msg", &sig));
    }

    #[test]
    fn local_encapsulations_decapsulate_to_their_secret() {
        use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, ML_KEM_768};
        let dk = DecapsulationKey::generate(&ML_KEM_768).unwrap();
        let ek = dk.encapsulation_key().unwrap();
        let pk = ek.key_bytes().unwrap().as_ref().to_vec();
        let (ct, ss) = encapsulate(KeyType::MlKem768, &pk).unwrap();
        let back = dk.decapsulate(Ciphertext::from(&ct[..])).unwrap();
        assert_eq!(back.as_ref(), &ss[..]);
        assert!(encapsulate(KeyType::MlKem512, &pk).is_none());
        assert!(encapsulate(KeyType::Ed25519, &pk).is_none());
    }

    #[test]
    fn a_wrong_mac_or_random_is_caught() {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&[1; 32]).unwrap();
        m.update(b"data");
        let tag = m.finalize().into_bytes().to_vec();
        assert!(mac_ok(&[1; 32], b"data", &tag));
        assert!(!mac_ok(&[2; 32], b"data", &tag));
        assert!(!mac_ok(&[1; 32], b"datA", &tag));
        assert!(random_ok(32, &[5; 32]));
        assert!(!random_ok(32, &[0; 32]) && !random_ok(32, &[5; 31]));
    }

    #[test]
    fn listings_catch_missing_and_foreign_keys() {
        let info = |l: &str| {
            KeyInfo::generated(
                "a".parse().unwrap(),
                1,
                l.parse().unwrap(),
                KeyType::Ed25519,
            )
        };
        let mine: HashSet<String> = ["a-1".to_string(), "a-2".to_string()].into();
        let ok = check_list(&mine, &[info("a-1"), info("a-2")], &["b-".into()]);
        assert_eq!(ok, ListCheck::default());
        let bad = check_list(&mine, &[info("a-1"), info("b-9")], &["b-".into()]);
        assert_eq!(bad.missing, ["a-2"]);
        assert_eq!(bad.foreign, ["b-9"]);
    }
}
