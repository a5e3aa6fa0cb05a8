//! What each request kind is, beyond its wire form: where the request path asks it. Every
//! kind is named in each answer (no wildcard), so a new kind cannot be added without deciding.

use super::Request;

impl Request {
    /// Whether the response can carry key bytes, plaintext or fresh random bytes: the
    /// server wipes it once written. Every kind is named here (no wildcard), so a new one
    /// cannot be added without deciding.
    pub fn secret_response(&self) -> bool {
        match self {
            Request::Export(_)
            | Request::Decrypt { .. }
            | Request::DecryptRaw { .. }
            | Request::Random { .. } => true,
            Request::Hello(_)
            | Request::Proof(_)
            | Request::Ping
            | Request::Status
            | Request::Digest { .. }
            | Request::Generate(_)
            | Request::List(_)
            | Request::ListGranted
            | Request::Find(_)
            | Request::Info(_)
            | Request::PublicKey(_)
            | Request::Delete(_)
            | Request::Sign { .. }
            | Request::Verify { .. }
            | Request::SignDigest { .. }
            | Request::VerifyDigest { .. }
            | Request::EncryptRaw { .. }
            | Request::Encrypt { .. }
            | Request::Mac { .. }
            | Request::MacVerify { .. }
            | Request::Derive { .. }
            | Request::Import { .. }
            | Request::Wrap { .. }
            | Request::Unwrap { .. }
            | Request::Grant { .. }
            | Request::Revoke { .. }
            | Request::Rotate(_)
            | Request::Retire { .. }
            | Request::Rewrap { .. }
            | Request::CounterCreate(_)
            | Request::CounterRead(_)
            | Request::CounterInc(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRef;

    #[test]
    fn responses_with_plaintext_key_bytes_or_random_bytes_are_secret() {
        let k = || KeyRef::Id(1);
        let secret = [
            Request::Export(k()),
            Request::Decrypt {
                key: k(),
                ciphertext: vec![],
                aad: vec![],
            },
            Request::Random { len: 32 },
            // The PKCS#11 module's C_Decrypt: once missed, so its plaintext was not wiped.
            Request::DecryptRaw {
                key: k(),
                nonce: vec![0; 12],
                ciphertext: vec![],
                aad: vec![],
            },
        ];
        for r in &secret {
            assert!(r.secret_response(), "{:?}", r.opcode());
        }
        let open = [
            Request::Ping,
            Request::PublicKey(k()),
            Request::Sign {
                key: k(),
                data: vec![],
            },
            Request::Delete(k()),
        ];
        for r in &open {
            assert!(!r.secret_response(), "{:?}", r.opcode());
        }
    }
}
