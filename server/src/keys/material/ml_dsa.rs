//! ML-DSA (FIPS 204) keys: ML-DSA-44, -65 and -87, by libcrux-ml-dsa (BENCHMARKS.md,
//! "Post-quantum implementations": it takes a context string and the signing randomness from
//! the caller, and builds keys from the 32-byte seed ξ).
//!
//! A key is its seed; the expanded signing key and the public key are computed from it once
//! (at generation, import, or when the store is read) and kept beside it. The seed is what the
//! store seals, wrap carries and export writes. Signing is pure ML-DSA, hedged: each signature
//! draws 32 fresh bytes from the OS, so two signatures of one message differ.

use std::fmt;

use ferrohsm_proto::{KeyType, Status};
use libcrux_ml_dsa::{MLDSASignature, ml_dsa_44, ml_dsa_65, ml_dsa_87};
use zeroize::{Zeroize as _, Zeroizing};

use super::form::{KeyForm, SeedKey, random_bytes, seed_of};
use crate::error::OpError;

use ferrohsm_proto::MAX_CONTEXT;

/// The expanded key pair of one parameter set.
enum Pair {
    L44(Box<ml_dsa_44::MLDSA44KeyPair>),
    L65(Box<ml_dsa_65::MLDSA65KeyPair>),
    L87(Box<ml_dsa_87::MLDSA87KeyPair>),
}

/// Runs `$body` with `$p` the pair of `$pair`'s parameter set, and `$m` (when named) its
/// libcrux module.
macro_rules! with_level {
    ($pair:expr, $p:ident => $body:expr) => {
        match $pair {
            Pair::L44($p) => $body,
            Pair::L65($p) => $body,
            Pair::L87($p) => $body,
        }
    };
    ($pair:expr, $m:ident, $p:ident => $body:expr) => {
        match $pair {
            Pair::L44($p) => {
                use libcrux_ml_dsa::ml_dsa_44 as $m;
                $body
            }
            Pair::L65($p) => {
                use libcrux_ml_dsa::ml_dsa_65 as $m;
                $body
            }
            Pair::L87($p) => {
                use libcrux_ml_dsa::ml_dsa_87 as $m;
                $body
            }
        }
    };
}

/// An ML-DSA key: the seed, and the pair expanded from it.
pub struct MlDsaKey {
    key_type: KeyType,
    seed: Zeroizing<[u8; 32]>,
    pair: Pair,
}

impl Drop for MlDsaKey {
    fn drop(&mut self) {
        // libcrux's key types are plain arrays: clear the expanded signing key ourselves.
        with_level!(&mut self.pair, p => p.signing_key.as_mut_slice().zeroize());
    }
}

impl fmt::Debug for MlDsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlDsaKey({})", self.key_type)
    }
}

impl MlDsaKey {
    /// The key of type `t` that the seed ξ makes (FIPS 204 ML-DSA.KeyGen_internal).
    pub fn from_seed(t: KeyType, seed: &[u8; 32]) -> Result<MlDsaKey, OpError> {
        let pair = match t {
            KeyType::MlDsa44 => Pair::L44(Box::new(ml_dsa_44::generate_key_pair(*seed))),
            KeyType::MlDsa65 => Pair::L65(Box::new(ml_dsa_65::generate_key_pair(*seed))),
            KeyType::MlDsa87 => Pair::L87(Box::new(ml_dsa_87::generate_key_pair(*seed))),
            KeyType::Ed25519
            | KeyType::P256
            | KeyType::X25519
            | KeyType::ChaCha20Poly1305
            | KeyType::Aes256Gcm
            | KeyType::HmacSha256
            | KeyType::MlKem512
            | KeyType::MlKem768
            | KeyType::MlKem1024 => {
                return Err(OpError::internal(format!("{t} is not an ML-DSA type")));
            }
        };
        Ok(MlDsaKey {
            key_type: t,
            seed: Zeroizing::new(*seed),
            pair,
        })
    }

    /// The expanded signing key (FIPS 204 sk encoding), to check a PKCS#8 `both` document.
    fn expanded(&self) -> &[u8] {
        with_level!(&self.pair, p => p.signing_key.as_slice())
    }

    /// The expanded signing key, for tests elsewhere in this module tree.
    #[cfg(test)]
    pub(super) fn expanded_for_test(&self) -> Vec<u8> {
        self.expanded().to_vec()
    }

    /// A hedged pure ML-DSA signature of `data` under `context` (at most 255 bytes).
    pub fn sign(&self, data: &[u8], context: &[u8]) -> Result<Vec<u8>, OpError> {
        check_context(context)?;
        let rnd = random_bytes::<32>()?;
        with_level!(&self.pair, m, p => m::sign(&p.signing_key, data, context, *rnd)
            .map(|s| s.as_slice().to_vec()))
        .map_err(|_| OpError::internal("ML-DSA signing failed"))
    }

    /// Verifies a signature of `data` under `context`.
    pub fn verify(&self, data: &[u8], context: &[u8], sig: &[u8]) -> Result<(), OpError> {
        check_context(context)?;
        let bad = || OpError::new(Status::BadSignature, "signature does not verify");
        with_level!(&self.pair, m, p => {
            let sig = MLDSASignature::new(sig.try_into().map_err(|_| bad())?);
            m::verify(&p.verification_key, data, context, &sig).map_err(|_| bad())
        })
    }
}

/// A context string of more than 255 bytes is the caller's mistake (FIPS 204 allows no more).
pub fn check_context(context: &[u8]) -> Result<(), OpError> {
    if context.len() > MAX_CONTEXT {
        return Err(OpError::invalid(format!(
            "an ML-DSA context is at most {MAX_CONTEXT} bytes; this one has {}",
            context.len()
        )));
    }
    Ok(())
}

impl KeyForm for MlDsaKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn generate(t: KeyType) -> Result<MlDsaKey, OpError> {
        MlDsaKey::from_seed(t, &*random_bytes::<32>()?)
    }

    fn stored(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.seed.to_vec())
    }

    fn from_stored(t: KeyType, bytes: &[u8]) -> Option<MlDsaKey> {
        let seed = Zeroizing::new(<[u8; 32]>::try_from(bytes).ok()?);
        MlDsaKey::from_seed(t, &seed).ok()
    }

    fn exported(&self) -> Zeroizing<Vec<u8>> {
        self.stored()
    }

    fn public(&self) -> Option<Vec<u8>> {
        Some(self.public_raw())
    }

    /// The raw 32-byte seed, or PKCS#8 by [`seed_of`]'s rules.
    fn import(t: KeyType, bytes: &[u8]) -> Result<MlDsaKey, OpError> {
        seed_of::<32, MlDsaKey>(t, bytes)
    }
}

impl SeedKey for MlDsaKey {
    fn from_seed_bytes(t: KeyType, seed: &[u8]) -> Result<MlDsaKey, OpError> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.try_into()
                .map_err(|_| OpError::internal("an ML-DSA seed is 32 bytes"))?,
        );
        MlDsaKey::from_seed(t, &seed)
    }

    fn expanded_secret(&self) -> Result<Zeroizing<Vec<u8>>, OpError> {
        Ok(Zeroizing::new(self.expanded().to_vec()))
    }

    fn public_raw(&self) -> Vec<u8> {
        with_level!(&self.pair, p => p.verification_key.as_slice().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSA: [KeyType; 3] = [KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87];

    #[test]
    fn signatures_are_hedged_and_bound_to_message_and_context() {
        for t in DSA {
            let k = MlDsaKey::generate(t).unwrap();
            let sig_len = match t.family() {
                ferrohsm_proto::Family::MlDsa { signature_len, .. } => signature_len,
                other => panic!("{other:?}"),
            };
            let a = k.sign(b"m", b"").unwrap();
            let b = k.sign(b"m", b"").unwrap();
            assert_eq!(a.len(), sig_len);
            assert_ne!(a, b, "{t}: hedged signatures differ");
            k.verify(b"m", b"", &a).unwrap();
            k.verify(b"m", b"", &b).unwrap();
            let c = k.sign(b"m", b"ctx").unwrap();
            k.verify(b"m", b"ctx", &c).unwrap();
            let bad =
                |r: Result<(), OpError>| assert_eq!(r.unwrap_err().status, Status::BadSignature);
            bad(k.verify(b"m", b"", &c));
            bad(k.verify(b"m", b"ctx2", &c));
            bad(k.verify(b"n", b"", &a));
            bad(k.verify(b"m", b"", &a[1..]));
            let mut flipped = a.clone();
            flipped[10] ^= 1;
            bad(k.verify(b"m", b"", &flipped));
            assert_eq!(
                k.sign(b"m", &[0; 256]).unwrap_err().status,
                Status::InvalidArgument
            );
            k.sign(b"m", &[0; 255]).unwrap();
            assert_eq!(k.public().unwrap().len(), t.describe().public.unwrap().len);
        }
    }

    #[test]
    fn seeds_round_trip_and_documents_are_checked() {
        for t in DSA {
            let k = MlDsaKey::generate(t).unwrap();
            let back = MlDsaKey::from_stored(t, &k.stored()).unwrap();
            assert_eq!(back.public(), k.public());
            assert!(MlDsaKey::from_stored(t, &k.stored()[1..]).is_none());
            let doc = ferrohsm_proto::pem::pq_seed_pkcs8(t, &k.exported()).unwrap();
            assert_eq!(MlDsaKey::import(t, &doc).unwrap().public(), k.public());
            assert_eq!(
                MlDsaKey::import(t, &k.exported()).unwrap().public(),
                k.public()
            );
            let other = if t == KeyType::MlDsa44 {
                KeyType::MlDsa65
            } else {
                KeyType::MlDsa44
            };
            let e = MlDsaKey::import(other, &doc).unwrap_err();
            assert!(e.message.contains("not ml-dsa"), "{e:?}");
            let e = MlDsaKey::import(t, &[0; 33]).unwrap_err();
            assert!(e.message.contains("32-byte raw seed"), "{e:?}");
        }
    }
}
