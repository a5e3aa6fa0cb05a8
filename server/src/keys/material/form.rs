//! What every key family provides ([`KeyForm`]), and what the seed-based families share:
//! random seeds and their PKCS#8 documents.

use ferrohsm_proto::pem::{PqPrivateKey, parse_pq_pkcs8};
use ferrohsm_proto::{KeyType, Status};
use zeroize::Zeroizing;

use crate::error::OpError;

/// 32 secret bytes: a symmetric key, an Ed25519 seed, a scalar.
pub type SecretBytes = Zeroizing<[u8; 32]>;

/// The input is not a private key of the family in PKCS#8.
pub(crate) fn wrong_form(what: &str) -> OpError {
    OpError::invalid(format!(
        "the input is not a {what} private key in PKCS#8 (as `openssl genpkey` writes it)"
    ))
}

/// What hsmd asks of a key of any family: implemented once per family module.
pub trait KeyForm: Sized {
    /// The key's type.
    fn key_type(&self) -> KeyType;
    /// A fresh random key of type `t`.
    fn generate(t: KeyType) -> Result<Self, OpError>;
    /// The bytes the store seals and wrap carries.
    fn stored(&self) -> Zeroizing<Vec<u8>>;
    /// The key from [`KeyForm::stored`] bytes; `None` if they do not make one of type `t`.
    fn from_stored(t: KeyType, bytes: &[u8]) -> Option<Self>;
    /// The secret `export` writes.
    fn exported(&self) -> Zeroizing<Vec<u8>>;
    /// The raw public key (`None` for symmetric types).
    fn public(&self) -> Option<Vec<u8>>;
    /// A key brought in from outside, in the forms the type takes.
    fn import(t: KeyType, bytes: &[u8]) -> Result<Self, OpError>;
}

/// `N` bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, OpError> {
    let mut s = Zeroizing::new([0u8; N]);
    getrandom::fill(s.as_mut()).map_err(|_| OpError::internal("OS random source failed"))?;
    Ok(s)
}

/// What a seed-based family gives [`seed_of`] to check a document against: the key its seed
/// makes, that key's expanded secret and its public key.
pub(crate) trait SeedKey: Sized {
    /// The key of type `t` that `seed` makes.
    fn from_seed_bytes(t: KeyType, seed: &[u8]) -> Result<Self, OpError>;
    /// Its expanded secret key (FIPS 203/204 encoding).
    fn expanded_secret(&self) -> Result<Zeroizing<Vec<u8>>, OpError>;
    /// Its raw public key.
    fn public_raw(&self) -> Vec<u8>;
}

/// A seed-based key brought in from outside: exactly `N` bytes are the raw seed; anything else
/// must be an ML-DSA or ML-KEM PKCS#8 document for type `t` (DER; hsmctl removes PEM armour)
/// in the `seed` form, or `both` when its expanded half is the one the seed makes; the
/// `expandedKey` form is refused (the seed, which is what hsmd keeps and exports, cannot be
/// recovered from it). A public key in a version 2 document must be the seed's.
pub(crate) fn seed_of<const N: usize, K: SeedKey>(t: KeyType, bytes: &[u8]) -> Result<K, OpError> {
    if bytes.len() == N {
        return K::from_seed_bytes(t, bytes);
    }
    let Some(doc) = parse_pq_pkcs8(bytes) else {
        return Err(OpError::invalid(format!(
            "the input is not an {t} private key: expected the {N}-byte raw seed, or PKCS#8 \
             (PEM or DER) in the seed or both form"
        )));
    };
    let found = doc.key_type;
    if found != t {
        return Err(OpError::invalid(format!(
            "the PKCS#8 document holds an {found} key, not {t}"
        )));
    }
    let (seed, expanded) = match doc.private {
        PqPrivateKey::Seed(seed) => (seed, None),
        PqPrivateKey::Both { seed, expanded } => (seed, Some(expanded)),
        PqPrivateKey::Expanded => {
            return Err(OpError::invalid(format!(
                "the PKCS#8 document holds the {t} key in the expandedKey form, which is \
                 refused: the seed cannot be recovered from it; give the seed or both form"
            )));
        }
    };
    if seed.len() != N {
        return Err(OpError::invalid(format!(
            "the PKCS#8 seed of an {t} key is {N} bytes; this one has {}",
            seed.len()
        )));
    }
    let key = K::from_seed_bytes(t, &seed)?;
    if let Some(expanded) = expanded {
        let ours = key.expanded_secret()?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&expanded, &ours).is_err() {
            return Err(halves_disagree(t, "expandedKey"));
        }
    }
    if doc.public.is_some_and(|p| p != key.public_raw()) {
        return Err(halves_disagree(t, "publicKey"));
    }
    Ok(key)
}

/// The parts of a document describe different keys.
fn halves_disagree(t: KeyType, what: &str) -> OpError {
    OpError::new(
        Status::InvalidArgument,
        format!("the PKCS#8 document's seed and {what} disagree: they are not one {t} key"),
    )
}
