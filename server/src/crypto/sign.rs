//! Signatures: the fastest code measured here for each algorithm (BENCHMARKS.md, "The fastest
//! signing code"): aws-lc signs Ed25519 (2x ed25519-dalek) and P-256 (1.1x ring) and verifies
//! P-256; ed25519-dalek verifies Ed25519 (strictly, a little faster than aws-lc); OpenSSL
//! signs and verifies caller-made P-256 digests; libcrux signs and verifies ML-DSA, with or
//! without a context string (BENCHMARKS.md, "Post-quantum implementations"). Runs on a crypto
//! worker thread, or inline for a lone request.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use ferrohsm_proto::Status;

use super::ops::wrong_type;
use crate::error::OpError;
use crate::keys::material::KeyMaterial;

/// Signs `data`: Ed25519 raw 64 bytes, ECDSA P-256/SHA-256 DER, ML-DSA (hedged, empty
/// context) in FIPS 204's encoding.
pub fn sign(key: &KeyMaterial, data: &[u8]) -> Result<Vec<u8>, OpError> {
    match key {
        KeyMaterial::MlDsa(k) => k.sign(data, &[]),
        KeyMaterial::Ed25519(k) => Ok(k.pair.sign(data).as_ref().to_vec()),
        // aws-lc draws the nonce's randomness itself (the argument is ring's API).
        KeyMaterial::P256(k) => k
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), data)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| OpError::internal("P-256 signing failed")),
        other @ (KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlKem(_)) => Err(wrong_type("sign", other.key_type())),
    }
}

/// The ML-DSA key of a request that carries a context string: only ML-DSA takes one.
fn with_context<'a>(
    key: &'a KeyMaterial,
    op: &str,
) -> Result<&'a crate::keys::material::MlDsaKey, OpError> {
    match key {
        KeyMaterial::MlDsa(k) => Ok(k),
        other @ (KeyMaterial::Ed25519 { .. }
        | KeyMaterial::P256 { .. }
        | KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlKem(_)) => Err(OpError::new(
            Status::WrongKeyType,
            format!(
                "cannot {op} with a context using a {} key: only ML-DSA takes a context",
                other.key_type()
            ),
        )),
    }
}

/// ML-DSA over `data` with a FIPS 204 context string (at most 255 bytes).
pub fn sign_context(key: &KeyMaterial, data: &[u8], context: &[u8]) -> Result<Vec<u8>, OpError> {
    with_context(key, "sign")?.sign(data, context)
}

/// Verifies an ML-DSA signature made with a context string.
pub fn verify_context(
    key: &KeyMaterial,
    data: &[u8],
    context: &[u8],
    sig: &[u8],
) -> Result<(), OpError> {
    with_context(key, "verify")?.verify(data, context, sig)
}

/// Verifies a signature made by [`sign`] (or by OpenSSL with the same key).
pub fn verify(key: &KeyMaterial, data: &[u8], sig: &[u8]) -> Result<(), OpError> {
    let bad = || OpError::new(Status::BadSignature, "signature does not verify");
    match key {
        KeyMaterial::Ed25519(k) => {
            let public = &k.public;
            let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| bad())?;
            public.verify_strict(data, &sig).map_err(|_| bad())
        }
        KeyMaterial::P256 { .. } => {
            let public = key.public_key().unwrap_or_default();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public)
                .verify(data, sig)
                .map_err(|_| bad())
        }
        KeyMaterial::MlDsa(k) => k.verify(data, &[], sig),
        other @ (KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlKem(_)) => Err(wrong_type("verify", other.key_type())),
    }
}

/// The digest lengths ECDSA P-256 signs: half the curve size up to SHA-512's (ECDSA uses the
/// leftmost 256 bits of longer ones).
const DIGEST_LENS: std::ops::RangeInclusive<usize> = 16..=64;

fn check_digest(digest: &[u8]) -> Result<(), OpError> {
    if DIGEST_LENS.contains(&digest.len()) {
        Ok(())
    } else {
        Err(OpError::invalid(format!(
            "a digest of {} bytes cannot be signed: expected 16 to 64 bytes",
            digest.len()
        )))
    }
}

/// ECDSA P-256 over a digest the caller computed (16 to 64 bytes, of any hash), DER like
/// [`sign`]. OpenSSL signs: it takes digest bytes as they are, is linked already (for
/// TLS-PSK), and is 5-9x faster here than the pure-Rust p256 crate.
pub fn sign_digest(key: &KeyMaterial, digest: &[u8]) -> Result<Vec<u8>, OpError> {
    let signer = match key {
        KeyMaterial::P256(k) => k
            .digest_key()
            .ok_or_else(|| OpError::internal("P-256 scalar does not parse"))?,
        other @ (KeyMaterial::Ed25519 { .. }
        | KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlDsa(_)
        | KeyMaterial::MlKem(_)) => {
            return Err(wrong_type("sign a digest", other.key_type()));
        }
    };
    check_digest(digest)?;
    openssl::ecdsa::EcdsaSig::sign(digest, signer)
        .and_then(|s| s.to_der())
        .map_err(|_| OpError::internal("P-256 digest signing failed"))
}

/// Verifies a DER ECDSA P-256 signature over a digest.
pub fn verify_digest(key: &KeyMaterial, digest: &[u8], sig: &[u8]) -> Result<(), OpError> {
    let bad = || OpError::new(Status::BadSignature, "signature does not verify");
    let KeyMaterial::P256(k) = key else {
        return Err(wrong_type("verify a digest", key.key_type()));
    };
    check_digest(digest)?;
    let k = k
        .digest_key()
        .ok_or_else(|| OpError::internal("P-256 key does not parse"))?;
    let parsed = openssl::ecdsa::EcdsaSig::from_der(sig).map_err(|_| bad())?;
    // Only the one canonical DER encoding of a signature is accepted.
    if parsed.to_der().map_err(|_| bad())? != sig {
        return Err(bad());
    }
    match parsed.verify(digest, k) {
        Ok(true) => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use ferrohsm_proto::{DigestAlg, KeyType};

    use super::*;

    fn key(t: KeyType) -> KeyMaterial {
        KeyMaterial::generate(t).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Ed25519 is deterministic: the backend that signs now (aws-lc) gives byte for byte what
    /// the one before it (ed25519-dalek) gave, for RFC 8032's first test vector and for many
    /// seeds and message lengths.
    #[test]
    fn ed25519_signatures_are_byte_identical_to_the_previous_backend() {
        use ed25519_dalek::Signer as _;
        let rfc = KeyMaterial::from_secret(
            KeyType::Ed25519,
            &zeroize::Zeroizing::new(
                hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                    .try_into()
                    .unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(
            sign(&rfc, b"").unwrap(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
        for i in 0u8..64 {
            let seed: [u8; 32] = super::super::ops::digest(DigestAlg::Sha256, &[i])
                .try_into()
                .unwrap();
            let k =
                KeyMaterial::from_secret(KeyType::Ed25519, &zeroize::Zeroizing::new(seed)).unwrap();
            let before = ed25519_dalek::SigningKey::from_bytes(&seed);
            assert_eq!(
                k.public_key().unwrap(),
                before.verifying_key().to_bytes().to_vec()
            );
            for len in [0usize, 1, 32, 200, 4096] {
                let msg = vec![i; len];
                assert_eq!(
                    sign(&k, &msg).unwrap(),
                    before.sign(&msg).to_bytes().to_vec(),
                    "seed {i}, {len} bytes"
                );
            }
        }
    }

    /// P-256 signatures (randomised) verify under the implementations that signed and
    /// verified before: ring, and OpenSSL.
    #[test]
    fn p256_signatures_verify_under_ring_and_openssl() {
        let k = key(KeyType::P256);
        let public = k.public_key().unwrap();
        let KeyMaterial::P256(p) = &k else {
            panic!("not P-256")
        };
        let ossl = p.digest_key().unwrap();
        for len in [0usize, 32, 1000] {
            let msg = vec![7u8; len];
            let sig = sign(&k, &msg).unwrap();
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &public,
            )
            .verify(&msg, &sig)
            .unwrap();
            let digest = super::super::ops::digest(DigestAlg::Sha256, &msg);
            let parsed = openssl::ecdsa::EcdsaSig::from_der(&sig).unwrap();
            assert!(parsed.verify(&digest, ossl).unwrap(), "{len} bytes");
            // Hedged: the same message twice, two signatures.
            assert_ne!(sign(&k, &msg).unwrap(), sig);
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        for t in [KeyType::Ed25519, KeyType::P256] {
            let k = key(t);
            let sig = sign(&k, b"msg").unwrap();
            verify(&k, b"msg", &sig).unwrap();
            assert_eq!(
                verify(&k, b"msh", &sig).unwrap_err().status,
                Status::BadSignature
            );
            assert_eq!(
                verify(&k, b"msg", &sig[1..]).unwrap_err().status,
                Status::BadSignature
            );
        }
        assert_eq!(
            sign(&key(KeyType::X25519), b"m").unwrap_err().status,
            Status::WrongKeyType
        );
    }

    #[test]
    fn digest_signatures_match_message_signatures() {
        let k = key(KeyType::P256);
        let msg = b"the message";
        let digest = super::super::ops::digest(DigestAlg::Sha256, msg);
        // Either way round: a digest signature verifies as a message signature and back.
        let by_digest = sign_digest(&k, &digest).unwrap();
        verify(&k, msg, &by_digest).unwrap();
        let by_message = sign(&k, msg).unwrap();
        verify_digest(&k, &digest, &by_message).unwrap();
        let mut other = digest.clone();
        other[0] ^= 1;
        assert_eq!(
            verify_digest(&k, &other, &by_digest).unwrap_err().status,
            Status::BadSignature
        );
        assert_eq!(
            sign_digest(&k, &[0; 15]).unwrap_err().status,
            Status::InvalidArgument
        );
        assert_eq!(
            sign_digest(&key(KeyType::Ed25519), &digest)
                .unwrap_err()
                .status,
            Status::WrongKeyType
        );
    }
}
