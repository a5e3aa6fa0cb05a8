//! Local checks of what the server returned: signatures with the public key, MACs recomputed
//! with the exported key, plaintexts compared, listings compared with what the client made.

use std::collections::HashSet;

use ferrohsm_proto::KeyInfo;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// An Ed25519 signature over `msg` by `public` (32 bytes).
pub fn signature_ok(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(pk) = <[u8; 32]>::try_from(public) else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| vk.verify_strict(msg, &s).is_ok())
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
        assert!(signature_ok(&pk, b"msg", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!signature_ok(&pk, b"msg", &bad));
        assert!(!signature_ok(&pk, b"other", &sig));
        assert!(!signature_ok(&pk[1..], b"msg", &sig));
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
