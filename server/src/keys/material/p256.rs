//! ECDSA P-256 keys: the 32-byte scalar beside aws-lc's parsed pair (which signs, 1.1x as fast
//! as ring here), and OpenSSL's form of the key for caller-made digests, made on first use.

use std::fmt;

use aws_lc_rs::encoding::AsBigEndian as _;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

use super::form::{KeyForm, SecretBytes, wrong_form};
use crate::error::OpError;

/// A P-256 key.
pub struct P256Key {
    scalar: SecretBytes,
    /// Parsed key pair used for signing.
    pub(crate) pair: Box<EcdsaKeyPair>,
    /// The OpenSSL key that signs caller-made digests ([`crate::crypto::sign::sign_digest`]),
    /// made on first use; OpenSSL clears its scalar when the key is freed.
    prehash: std::sync::OnceLock<openssl::ec::EcKey<openssl::pkey::Private>>,
}

impl fmt::Debug for P256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P256Key(..)")
    }
}

impl P256Key {
    /// The key of aws-lc's pair: its scalar taken out, big-endian in 32 bytes (`None` if it
    /// does not fit, which a valid P-256 scalar always does).
    fn with_scalar(pair: EcdsaKeyPair) -> Option<P256Key> {
        let bin = pair.private_key().as_be_bytes().ok()?;
        let be: &[u8] = bin.as_ref();
        let mut scalar = Zeroizing::new([0u8; 32]);
        let pad = 32usize.checked_sub(be.len())?;
        scalar[pad..].copy_from_slice(be);
        Some(P256Key {
            scalar,
            pair: Box::new(pair),
            prehash: std::sync::OnceLock::new(),
        })
    }

    /// The private scalar, big-endian.
    #[cfg(test)]
    pub(crate) fn scalar(&self) -> &[u8] {
        self.scalar.as_ref()
    }

    /// The OpenSSL form of the key, which signs and verifies digests (made on first use, then
    /// kept with the key).
    pub fn digest_key(&self) -> Option<&openssl::ec::EcKeyRef<openssl::pkey::Private>> {
        use openssl::bn::{BigNum, BigNumContext};
        use openssl::ec::{EcGroup, EcKey, EcPoint};
        if let Some(k) = self.prehash.get() {
            return Some(k);
        }
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).ok()?;
        let mut ctx = BigNumContext::new_secure().ok()?;
        let d = BigNum::from_slice(self.scalar.as_ref()).ok()?;
        let q = EcPoint::from_bytes(&group, self.pair.public_key().as_ref(), &mut ctx).ok()?;
        let k = EcKey::from_private_components(&group, &d, &q).ok()?;
        k.check_key().ok()?;
        Some(self.prehash.get_or_init(|| k))
    }
}

impl KeyForm for P256Key {
    fn key_type(&self) -> KeyType {
        KeyType::P256
    }

    /// A scalar multiplication: callers run it on a crypto worker.
    fn generate(_: KeyType) -> Result<P256Key, OpError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| OpError::internal("P-256 key generation failed"))?;
        P256Key::with_scalar(pair).ok_or_else(|| OpError::internal("P-256 scalar too long"))
    }

    /// The 32-byte scalar, then the 65-byte public point (the pair is rebuilt from both
    /// halves, which must agree).
    fn stored(&self) -> Zeroizing<Vec<u8>> {
        let mut out = self.exported();
        out.extend_from_slice(self.pair.public_key().as_ref());
        out
    }

    fn from_stored(_: KeyType, bytes: &[u8]) -> Option<P256Key> {
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
        Some(P256Key {
            scalar,
            pair: Box::new(pair),
            prehash: std::sync::OnceLock::new(),
        })
    }

    /// The scalar.
    fn exported(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.scalar.to_vec())
    }

    /// The uncompressed point (65 bytes).
    fn public(&self) -> Option<Vec<u8>> {
        Some(self.pair.public_key().as_ref().to_vec())
    }

    /// PKCS#8 DER. aws-lc takes PKCS#8 v1 or v2 with the named curve (or its explicit
    /// parameters), with or without the public key: computed when absent, and when present
    /// checked to belong to the secret; it checks the document (curve, scalar range) before
    /// the scalar is taken out of it.
    fn import(_: KeyType, bytes: &[u8]) -> Result<P256Key, OpError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, bytes)
            .map_err(|_| wrong_form("P-256"))?;
        P256Key::with_scalar(pair).ok_or_else(|| wrong_form("P-256"))
    }
}
