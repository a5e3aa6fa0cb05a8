//! ML-KEM (FIPS 203) keys: ML-KEM-512, -768 and -1024. aws-lc encapsulates and decapsulates
//! (BENCHMARKS.md, "Post-quantum implementations": the fastest here); its safe API cannot make
//! a key from a seed, so RustCrypto `ml-kem` expands the 64-byte seed `d || z` into the
//! decapsulation key aws-lc takes (at generation, import, and when the store is read: the
//! expansion is byte-identical in both, checked in BENCHMARKS.md and below).
//!
//! A key is its seed: what the store seals, wrap carries and export writes.

use std::fmt;

use aws_lc_rs::kem::{
    Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_512, ML_KEM_768, ML_KEM_1024,
};
use ferrohsm_proto::{Family, KeyType};
use ml_kem::KeyExport as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::form::{KeyForm, SeedKey, random_bytes, seed_of};
use crate::error::OpError;

/// The shared secret of an encapsulation: 32 bytes, which become a new key.
pub type SharedSecret = Zeroizing<[u8; 32]>;

/// An ML-KEM key: the seed, aws-lc's decapsulation key, and the public key.
pub struct MlKemKey {
    key_type: KeyType,
    seed: Zeroizing<[u8; 64]>,
    dk: DecapsulationKey,
    public: Vec<u8>,
}

impl fmt::Debug for MlKemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlKemKey({})", self.key_type)
    }
}

/// An ML-KEM parameter set: the one place a key type is mapped to it (every other match in
/// this module is over the three sets alone).
#[derive(Clone, Copy)]
enum Level {
    L512,
    L768,
    L1024,
}

fn level(t: KeyType) -> Result<Level, OpError> {
    Ok(match t {
        KeyType::MlKem512 => Level::L512,
        KeyType::MlKem768 => Level::L768,
        KeyType::MlKem1024 => Level::L1024,
        KeyType::Ed25519
        | KeyType::P256
        | KeyType::X25519
        | KeyType::ChaCha20Poly1305
        | KeyType::Aes256Gcm
        | KeyType::HmacSha256
        | KeyType::MlDsa44
        | KeyType::MlDsa65
        | KeyType::MlDsa87 => {
            return Err(OpError::internal(format!("{t} is not an ML-KEM type")));
        }
    })
}

fn algorithm(t: KeyType) -> Result<&'static aws_lc_rs::kem::Algorithm, OpError> {
    Ok(match level(t)? {
        Level::L512 => &ML_KEM_512,
        Level::L768 => &ML_KEM_768,
        Level::L1024 => &ML_KEM_1024,
    })
}

/// FIPS 203 ML-KEM.KeyGen_internal(d, z) by RustCrypto: the expanded decapsulation key and
/// the encapsulation key.
fn expand(t: KeyType, seed: &[u8; 64]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), OpError> {
    // The expanded form is "legacy" to RustCrypto (deprecated), and exactly what aws-lc
    // takes.
    #[allow(deprecated)]
    fn export<K: ml_kem::ExpandedKeyEncoding>(dk: &K) -> Zeroizing<Vec<u8>> {
        let mut expanded = dk.to_expanded_bytes();
        let out = Zeroizing::new(expanded.to_vec());
        expanded.as_mut_slice().zeroize();
        out
    }
    macro_rules! run {
        ($dk:ty) => {{
            let dk = <$dk>::from_seed((*seed).into());
            (export(&dk), dk.encapsulation_key().to_bytes().to_vec())
        }};
    }
    Ok(match level(t)? {
        Level::L512 => run!(ml_kem::DecapsulationKey512),
        Level::L768 => run!(ml_kem::DecapsulationKey768),
        Level::L1024 => run!(ml_kem::DecapsulationKey1024),
    })
}

impl MlKemKey {
    /// The key of type `t` that the seed `d || z` makes.
    pub fn from_seed(t: KeyType, seed: &[u8; 64]) -> Result<MlKemKey, OpError> {
        let alg = algorithm(t)?;
        let (expanded, public) = expand(t, seed)?;
        let dk = DecapsulationKey::new(alg, &expanded)
            .map_err(|_| OpError::internal("aws-lc refused an expanded ML-KEM key"))?;
        Ok(MlKemKey {
            key_type: t,
            seed: Zeroizing::new(*seed),
            dk,
            public,
        })
    }

    /// Decapsulates `ciphertext` (of exactly the parameter set's length: anything else is an
    /// invalid argument). A tampered ciphertext of the right length gives FIPS 203's implicit
    /// rejection secret, never an error.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<SharedSecret, OpError> {
        check_ciphertext(self.key_type, ciphertext)?;
        let ss = self
            .dk
            .decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| OpError::internal("ML-KEM decapsulation failed"))?;
        secret32(ss.as_ref())
    }

    /// Encapsulates to this key's public half (made here from the seed: no input check
    /// needed, unlike a peer's in [`encapsulate_to`]).
    pub fn encapsulate(&self) -> Result<(Vec<u8>, SharedSecret), OpError> {
        let ek = EncapsulationKey::new(algorithm(self.key_type)?, &self.public)
            .map_err(|_| OpError::internal("aws-lc refused an ML-KEM public key it made"))?;
        let (ct, ss) = ek
            .encapsulate()
            .map_err(|_| OpError::internal("ML-KEM encapsulation failed"))?;
        Ok((ct.as_ref().to_vec(), secret32(ss.as_ref())?))
    }
}

fn check_ciphertext(t: KeyType, ciphertext: &[u8]) -> Result<(), OpError> {
    let Family::MlKem { ciphertext_len, .. } = t.family() else {
        return Err(OpError::internal(format!("{t} is not an ML-KEM type")));
    };
    if ciphertext.len() != ciphertext_len {
        return Err(OpError::invalid(format!(
            "an {t} ciphertext is {ciphertext_len} bytes; this one has {}",
            ciphertext.len()
        )));
    }
    Ok(())
}

fn secret32(bytes: &[u8]) -> Result<SharedSecret, OpError> {
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(OpError::internal("ML-KEM shared secret is not 32 bytes"));
    }
    out.copy_from_slice(bytes);
    Ok(out)
}

/// Encapsulates to a raw ML-KEM public key of type `t` (one held here, or a peer's): the
/// ciphertext and the shared secret. A public key that fails FIPS 203's input check (its
/// length, or a coefficient not reduced mod q) is an invalid argument.
pub fn encapsulate_to(t: KeyType, public: &[u8]) -> Result<(Vec<u8>, SharedSecret), OpError> {
    use ml_kem::TryKeyInit as _;
    let alg = algorithm(t)?;
    let refused = || OpError::invalid(format!("the peer key is not a valid {t} public key"));
    // aws-lc checks only the length here: RustCrypto applies FIPS 203's modulus check first.
    let valid = match level(t)? {
        Level::L512 => ml_kem::EncapsulationKey512::new_from_slice(public).is_ok(),
        Level::L768 => ml_kem::EncapsulationKey768::new_from_slice(public).is_ok(),
        Level::L1024 => ml_kem::EncapsulationKey1024::new_from_slice(public).is_ok(),
    };
    if !valid {
        return Err(refused());
    }
    let ek = EncapsulationKey::new(alg, public).map_err(|_| refused())?;
    let (ct, ss) = ek
        .encapsulate()
        .map_err(|_| OpError::internal("ML-KEM encapsulation failed"))?;
    Ok((ct.as_ref().to_vec(), secret32(ss.as_ref())?))
}

impl KeyForm for MlKemKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn generate(t: KeyType) -> Result<MlKemKey, OpError> {
        MlKemKey::from_seed(t, &*random_bytes::<64>()?)
    }

    fn stored(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.seed.to_vec())
    }

    fn from_stored(t: KeyType, bytes: &[u8]) -> Option<MlKemKey> {
        let seed = Zeroizing::new(<[u8; 64]>::try_from(bytes).ok()?);
        MlKemKey::from_seed(t, &seed).ok()
    }

    fn exported(&self) -> Zeroizing<Vec<u8>> {
        self.stored()
    }

    fn public(&self) -> Option<Vec<u8>> {
        Some(self.public_raw())
    }

    /// The raw 64-byte seed `d || z`, or PKCS#8 by [`seed_of`]'s rules.
    fn import(t: KeyType, bytes: &[u8]) -> Result<MlKemKey, OpError> {
        seed_of::<64, MlKemKey>(t, bytes)
    }
}

impl SeedKey for MlKemKey {
    fn from_seed_bytes(t: KeyType, seed: &[u8]) -> Result<MlKemKey, OpError> {
        let seed: Zeroizing<[u8; 64]> = Zeroizing::new(
            seed.try_into()
                .map_err(|_| OpError::internal("an ML-KEM seed is 64 bytes"))?,
        );
        MlKemKey::from_seed(t, &seed)
    }

    /// aws-lc's copy of the expanded decapsulation key.
    fn expanded_secret(&self) -> Result<Zeroizing<Vec<u8>>, OpError> {
        let bytes = self
            .dk
            .key_bytes()
            .map_err(|_| OpError::internal("aws-lc did not give the ML-KEM key's bytes"))?;
        Ok(Zeroizing::new(bytes.as_ref().to_vec()))
    }

    fn public_raw(&self) -> Vec<u8> {
        self.public.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrohsm_proto::Status;

    const KEM: [KeyType; 3] = [KeyType::MlKem512, KeyType::MlKem768, KeyType::MlKem1024];

    #[test]
    fn secrets_agree_and_tampering_is_implicitly_rejected() {
        for t in KEM {
            let k = MlKemKey::generate(t).unwrap();
            let (ct, ss) = k.encapsulate().unwrap();
            assert_eq!(*k.decapsulate(&ct).unwrap(), *ss);
            let (ct2, ss2) = encapsulate_to(t, &k.public().unwrap()).unwrap();
            assert_ne!(ct, ct2);
            assert_ne!(*ss, *ss2);
            assert_eq!(*k.decapsulate(&ct2).unwrap(), *ss2);
            // Tampered: a secret, not an error, and not the real one; the same every time.
            let mut bad = ct.clone();
            bad[0] ^= 1;
            let r1 = k.decapsulate(&bad).unwrap();
            assert_ne!(*r1, *ss);
            assert_eq!(*k.decapsulate(&bad).unwrap(), *r1);
            // The wrong length is the caller's error.
            let e = k.decapsulate(&ct[1..]).unwrap_err();
            assert_eq!(e.status, Status::InvalidArgument);
            assert!(e.message.contains("ciphertext"), "{e:?}");
            // A public key of the wrong length, or with a coefficient >= q, is refused.
            assert!(encapsulate_to(t, &k.public().unwrap()[1..]).is_err());
            let mut unreduced = k.public().unwrap();
            unreduced[0] = 0xff;
            unreduced[1] |= 0x0f;
            assert_eq!(
                encapsulate_to(t, &unreduced).unwrap_err().status,
                Status::InvalidArgument
            );
        }
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let n = content.len();
        let mut out = vec![tag];
        match n {
            0..0x80 => out.push(n as u8),
            0x80..0x100 => out.extend([0x81, n as u8]),
            _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A PKCS#8 document of type `t` holding `key` (the private-key CHOICE, encoded).
    fn document(t: KeyType, key: &[u8]) -> Vec<u8> {
        let alg = t.describe().public.unwrap().algorithm;
        tlv(
            0x30,
            &[&[0x02, 0x01, 0x00][..], alg, &tlv(0x04, key)].concat(),
        )
    }

    /// The `both` form imports when its halves agree and is refused, naming them, when they
    /// do not; the `expandedKey` form is refused by name. For both families.
    #[test]
    fn both_and_expanded_forms() {
        use super::super::MlDsaKey;
        for t in [KeyType::MlKem768, KeyType::MlDsa65] {
            let (seed, expanded) = if t.is_ml_kem() {
                let k = MlKemKey::generate(t).unwrap();
                let seed = k.exported().to_vec();
                let dk = expand(t, &seed.clone().try_into().unwrap()).unwrap().0;
                (seed, dk.to_vec())
            } else {
                let seed = [7u8; 32];
                let k = MlDsaKey::from_seed(t, &seed).unwrap();
                let doc = ferrohsm_proto::pem::pq_seed_pkcs8(t, &seed).unwrap();
                assert_eq!(MlDsaKey::import(t, &doc).unwrap().public(), k.public());
                (seed.to_vec(), k.expanded_for_test())
            };
            let import = |doc: &[u8]| -> Result<Vec<u8>, OpError> {
                if t.is_ml_kem() {
                    MlKemKey::import(t, doc).map(|k| k.public().unwrap())
                } else {
                    MlDsaKey::import(t, doc).map(|k| k.public().unwrap())
                }
            };
            let both =
                |e: &[u8]| document(t, &tlv(0x30, &[tlv(0x04, &seed), tlv(0x04, e)].concat()));
            let want = import(&seed).unwrap();
            assert_eq!(import(&both(&expanded)).unwrap(), want, "{t}: both");
            let mut other = expanded.clone();
            other[100] ^= 1;
            let e = import(&both(&other)).unwrap_err();
            assert_eq!(e.status, Status::InvalidArgument);
            assert!(e.message.contains("disagree"), "{t}: {e:?}");
            let e = import(&document(t, &tlv(0x04, &expanded))).unwrap_err();
            assert!(e.message.contains("expandedKey form"), "{t}: {e:?}");
            // A version 2 document's public key must be the seed's.
            let v2 = |public: &[u8]| {
                let alg = t.describe().public.unwrap().algorithm;
                let key = tlv(0x04, &tlv(0x80, &seed));
                let bits = tlv(0x81, &[&[0u8][..], public].concat());
                tlv(0x30, &[&[0x02, 0x01, 0x01][..], alg, &key, &bits].concat())
            };
            assert_eq!(import(&v2(&want)).unwrap(), want, "{t}: v2");
            let mut wrong = want.clone();
            wrong[3] ^= 1;
            let e = import(&v2(&wrong)).unwrap_err();
            assert!(e.message.contains("publicKey disagree"), "{t}: {e:?}");
            // A seed of the wrong length inside the document.
            let e = import(&document(t, &tlv(0x80, &seed[1..]))).unwrap_err();
            assert!(e.message.contains("PKCS#8 seed"), "{t}: {e:?}");
        }
    }

    /// The stored seed makes the same key again: its public key, and a key that decapsulates
    /// what the first one's public key was sent (aws-lc decapsulating with RustCrypto's
    /// expansion; pyca's OpenSSL checks the same from outside in client/tests/pq.rs).
    #[test]
    fn seeds_round_trip_and_documents_are_checked() {
        for t in KEM {
            let k = MlKemKey::generate(t).unwrap();
            let back = MlKemKey::from_stored(t, &k.stored()).unwrap();
            assert_eq!(back.public().unwrap(), k.public().unwrap());
            let (ct, ss) = back.encapsulate().unwrap();
            assert_eq!(*k.decapsulate(&ct).unwrap(), *ss);
            assert!(MlKemKey::from_stored(t, &k.stored()[1..]).is_none());
            let doc = ferrohsm_proto::pem::pq_seed_pkcs8(t, &k.exported()).unwrap();
            assert_eq!(MlKemKey::import(t, &doc).unwrap().public(), k.public());
            assert_eq!(
                MlKemKey::import(t, &k.exported()).unwrap().public(),
                k.public()
            );
            let e = MlKemKey::import(t, &[0; 32]).unwrap_err();
            assert!(e.message.contains("64-byte raw seed"), "{e:?}");
        }
    }
}
