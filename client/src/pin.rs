//! PINs for the PKCS#11 module: `hsmctl hash-pin` makes an argon2id PHC string, the module
//! checks a PIN against it. The PIN only gates the module's own sessions; the client's
//! identity towards hsmd is still its profile's credential.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use zeroize::Zeroizing;

use crate::error::ClientError;

/// Longest PIN accepted (PKCS#11 tokens announce it as `ulMaxPinLen`).
pub const MAX_PIN_LEN: usize = 256;

/// The argon2id PHC string of `pin` (default parameters: 19 MiB, 2 passes), with a fresh
/// random salt.
pub fn hash_pin(pin: &[u8]) -> Result<String, ClientError> {
    if pin.is_empty() || pin.len() > MAX_PIN_LEN {
        return Err(ClientError::Local(format!(
            "a PIN of {} bytes: expected 1 to {MAX_PIN_LEN}",
            pin.len()
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| ClientError::Local(format!("no randomness for the salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ClientError::Local(format!("salt encoding: {e}")))?;
    argon2::Argon2::default()
        .hash_password(pin, &salt)
        .map(|h| h.to_string())
        .map_err(|e| ClientError::Local(format!("argon2id: {e}")))
}

/// A parsed PIN hash, checked once when the module loads its configuration.
#[derive(Debug, Clone)]
pub struct PinHash(String);

impl PinHash {
    /// Parses a PHC string; only argon2id is accepted.
    pub fn parse(phc: &str) -> Result<PinHash, String> {
        let h = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
        if h.algorithm.as_str() != "argon2id" {
            return Err(format!(
                "the PIN hash uses {}, expected argon2id (made by `hsmctl hash-pin`)",
                h.algorithm
            ));
        }
        Ok(PinHash(phc.to_owned()))
    }

    /// Whether `pin` is the PIN (argon2id's own constant-time comparison).
    pub fn verify(&self, pin: &[u8]) -> bool {
        let pin = Zeroizing::new(pin.to_vec());
        match PasswordHash::new(&self.0) {
            Ok(h) => argon2::Argon2::default().verify_password(&pin, &h).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = PinHash::parse(&hash_pin(b"1234").unwrap()).unwrap();
        assert!(h.verify(b"1234"));
        assert!(!h.verify(b"1235"));
        assert!(!h.verify(b""));
        assert_eq!(
            PinHash::parse("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA")
                .unwrap_err(),
            "the PIN hash uses argon2i, expected argon2id (made by `hsmctl hash-pin`)"
        );
        assert_eq!(
            PinHash::parse("1234").unwrap_err(),
            "not a PHC string: password hash string missing field"
        );
        for pin in [&b""[..], &[b'1'; MAX_PIN_LEN + 1]] {
            match hash_pin(pin) {
                Err(ClientError::Local(m)) => assert_eq!(
                    m,
                    format!("a PIN of {} bytes: expected 1 to 256", pin.len())
                ),
                other => panic!("a PIN of {} bytes: {other:?}", pin.len()),
            }
        }
    }
}
