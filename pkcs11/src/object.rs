//! hsmd keys as PKCS#11 objects: handles, and the attributes each object answers.
//!
//! An asymmetric key is two objects (private and public), a symmetric key one (secret). A
//! handle is `(index + 1) << 2 | class`, the index into the slot's table of keys seen, so
//! a handle stays valid for as long as the module runs.

use std::collections::HashMap;

use cryptoki_sys::*;
use ferrohsm_proto::{KeyInfo, KeyRef, KeyType, Label, Lifetime, Origin, Usage};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::encoding;
use crate::mech;

/// The three object classes a key shows as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The private half of an asymmetric key.
    Private = 1,
    /// The public half.
    Public = 2,
    /// A symmetric key.
    Secret = 3,
}

impl Class {
    /// CKA_CLASS.
    pub fn ck(self) -> CK_OBJECT_CLASS {
        match self {
            Class::Private => CKO_PRIVATE_KEY,
            Class::Public => CKO_PUBLIC_KEY,
            Class::Secret => CKO_SECRET_KEY,
        }
    }
}

/// The objects a key type shows as.
pub fn classes(t: KeyType) -> &'static [Class] {
    if t.is_asymmetric() {
        &[Class::Private, Class::Public]
    } else {
        &[Class::Secret]
    }
}

/// A key seen on the token.
#[derive(Debug, Clone)]
pub struct Known {
    /// What hsmd says of it (for a granted key: its owner, usage as granted).
    pub info: KeyInfo,
    /// Granted by another client (not the token's own).
    pub granted: bool,
    /// The raw public key, once fetched.
    pub public: Option<Vec<u8>>,
}

impl Known {
    /// How hsmd names the key for this client.
    pub fn key_ref(&self) -> KeyRef {
        if self.granted {
            KeyRef::OwnerId(self.info.owner.clone(), self.info.id)
        } else {
            KeyRef::Id(self.info.id)
        }
    }

    /// CKA_LABEL: the label, `OWNER:LABEL` for a granted key.
    pub fn label(&self) -> String {
        if self.granted {
            format!("{}:{}", self.info.owner, self.info.label)
        } else {
            self.info.label.to_string()
        }
    }

    /// CKA_ID: the key id as 8 bytes big-endian. A granted key's id is another client's, so
    /// its high half is a hash of the owner's name with the top bit set: never the id of one
    /// of the token's own keys.
    pub fn ck_id(&self) -> [u8; 8] {
        let high = if self.granted {
            owner_tag(&self.info.owner)
        } else {
            0
        };
        ((u64::from(high) << 32) | u64::from(self.info.id)).to_be_bytes()
    }
}

/// The high half of a granted key's CKA_ID.
pub fn owner_tag(owner: &Label) -> u32 {
    let h = sha2::Sha256::digest(owner.as_str().as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) | 0x8000_0000
}

/// Keys seen on one token, by (owner if granted, id).
#[derive(Debug, Default)]
pub struct Objects {
    keys: Vec<Known>,
    index: HashMap<(Option<Label>, u32), usize>,
}

impl Objects {
    /// Records what hsmd said of a key (keeping a fetched public key) and returns its index.
    pub fn learn(&mut self, info: KeyInfo, granted: bool) -> usize {
        let key = (granted.then(|| info.owner.clone()), info.id);
        match self.index.get(&key) {
            Some(&i) => {
                self.keys[i].info = info;
                i
            }
            None => {
                self.keys.push(Known {
                    info,
                    granted,
                    public: None,
                });
                self.index.insert(key, self.keys.len() - 1);
                self.keys.len() - 1
            }
        }
    }

    /// The key at `index`.
    pub fn get(&self, index: usize) -> Option<&Known> {
        self.keys.get(index)
    }

    /// Stores a key's public half.
    pub fn set_public(&mut self, index: usize, public: Vec<u8>) {
        if let Some(k) = self.keys.get_mut(index) {
            k.public = Some(public);
        }
    }

    /// Forgets a deleted key (its handles then answer CKR_OBJECT_HANDLE_INVALID).
    pub fn forget(&mut self, index: usize) {
        if let Some(k) = self.keys.get(index) {
            let key = (k.granted.then(|| k.info.owner.clone()), k.info.id);
            self.index.remove(&key);
        }
    }

    /// The object handle `h` names: its key's index, its class and the key, if the handle
    /// decodes, the key is still known and has an object of that class.
    pub fn object(&self, h: CK_OBJECT_HANDLE) -> Option<(usize, Class, Known)> {
        let (index, class) = decode(h)?;
        let k = self.keys.get(index).filter(|_| self.live(index))?;
        classes(k.info.key_type)
            .contains(&class)
            .then(|| (index, class, k.clone()))
    }

    /// Whether the key at `index` is still known.
    fn live(&self, index: usize) -> bool {
        self.keys.get(index).is_some_and(|k| {
            let key = (k.granted.then(|| k.info.owner.clone()), k.info.id);
            self.index.get(&key) == Some(&index)
        })
    }
}

/// The handle of object `class` of the key at `index`.
pub fn handle(index: usize, class: Class) -> CK_OBJECT_HANDLE {
    ((index as u64 + 1) << 2) | class as u64
}

/// The key index and class a handle names.
pub fn decode(h: CK_OBJECT_HANDLE) -> Option<(usize, Class)> {
    let class = match h & 3 {
        1 => Class::Private,
        2 => Class::Public,
        3 => Class::Secret,
        _ => return None,
    };
    let index = usize::try_from(h >> 2).ok()?.checked_sub(1)?;
    Some((index, class))
}

/// An attribute's answer.
#[derive(PartialEq, Eq)]
pub enum Value {
    /// The value's bytes as PKCS#11 lays them out.
    Bytes(Vec<u8>),
    /// An exportable secret key's bytes, read from hsmd for this answer (wiped when dropped).
    Secret(Zeroizing<Vec<u8>>),
    /// The object has no such attribute.
    Invalid,
    /// The attribute exists but is never revealed (a secret value).
    Sensitive,
    /// The attribute needs the public key, not fetched yet.
    NeedsPublic,
    /// The attribute is the key's secret value, which hsmd exports to its owner.
    NeedsSecret,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            // Never the secret itself.
            Value::Secret(_) => f.write_str("Secret(..)"),
            Value::Invalid => f.write_str("Invalid"),
            Value::Sensitive => f.write_str("Sensitive"),
            Value::NeedsPublic => f.write_str("NeedsPublic"),
            Value::NeedsSecret => f.write_str("NeedsSecret"),
        }
    }
}

fn b(v: bool) -> Value {
    Value::Bytes(vec![u8::from(v)])
}
fn ul(v: CK_ULONG) -> Value {
    Value::Bytes(v.to_ne_bytes().to_vec())
}

/// CKA_KEY_TYPE of a key type.
pub fn ck_key_type(t: KeyType) -> CK_KEY_TYPE {
    match t {
        KeyType::P256 => CKK_EC,
        KeyType::Ed25519 => CKK_EC_EDWARDS,
        KeyType::X25519 => CKK_EC_MONTGOMERY,
        KeyType::Aes256Gcm => CKK_AES,
        KeyType::ChaCha20Poly1305 => CKK_CHACHA20,
        KeyType::HmacSha256 => CKK_GENERIC_SECRET,
        KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87 => CKK_ML_DSA,
        KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => CKK_ML_KEM,
    }
}

/// CKA_PARAMETER_SET of a key type (ML-DSA and ML-KEM; None for the others).
pub fn parameter_set(t: KeyType) -> Option<CK_ULONG> {
    match t {
        KeyType::MlDsa44 => Some(CKP_ML_DSA_44),
        KeyType::MlDsa65 => Some(CKP_ML_DSA_65),
        KeyType::MlDsa87 => Some(CKP_ML_DSA_87),
        KeyType::MlKem512 => Some(CKP_ML_KEM_512),
        KeyType::MlKem768 => Some(CKP_ML_KEM_768),
        KeyType::MlKem1024 => Some(CKP_ML_KEM_1024),
        KeyType::P256
        | KeyType::Ed25519
        | KeyType::X25519
        | KeyType::Aes256Gcm
        | KeyType::ChaCha20Poly1305
        | KeyType::HmacSha256 => None,
    }
}

/// The key types a CKA_KEY_TYPE names (several: one per parameter set of ML-DSA and ML-KEM).
pub fn key_types_of(k: CK_KEY_TYPE) -> impl Iterator<Item = KeyType> {
    KeyType::ALL
        .into_iter()
        .filter(move |t| ck_key_type(*t) == k)
}

/// The key type of CKA_KEY_TYPE `k` with CKA_PARAMETER_SET `set`, if there is one.
pub fn key_type_of_set(k: CK_KEY_TYPE, set: CK_ULONG) -> Option<KeyType> {
    key_types_of(k).find(|t| parameter_set(*t) == Some(set))
}

/// The value of attribute `a` of object `class` of key `k`.
pub fn attribute(k: &Known, class: Class, a: CK_ATTRIBUTE_TYPE) -> Value {
    let info = &k.info;
    let t = info.key_type;
    let uses = |u: Usage| info.usage.contains(u);
    let public = || k.public.as_ref();
    // Attributes every key object has.
    match a {
        CKA_CLASS => return ul(class.ck()),
        CKA_TOKEN => return b(info.lifetime == Lifetime::Persistent),
        CKA_PRIVATE => return b(class != Class::Public),
        CKA_MODIFIABLE | CKA_COPYABLE => return b(false),
        CKA_DESTROYABLE => return b(!k.granted && class != Class::Public),
        CKA_LABEL => return Value::Bytes(k.label().into_bytes()),
        CKA_KEY_TYPE => return ul(ck_key_type(t)),
        CKA_ID => return Value::Bytes(k.ck_id().to_vec()),
        CKA_START_DATE | CKA_END_DATE => return Value::Bytes(Vec::new()),
        CKA_DERIVE => return b(uses(Usage::Derive)),
        CKA_LOCAL => return b(info.origin == Origin::Generated),
        CKA_KEY_GEN_MECHANISM => {
            return ul(match (info.origin, mech::generator(t)) {
                (Origin::Generated, Some(m)) => m,
                _ => CK_UNAVAILABLE_INFORMATION,
            });
        }
        CKA_ALLOWED_MECHANISMS => {
            let ms = mech::for_key(t);
            return Value::Bytes(ms.iter().flat_map(|m| m.to_ne_bytes()).collect());
        }
        CKA_PARAMETER_SET => return parameter_set(t).map_or(Value::Invalid, ul),
        _ => {}
    }
    // The curve attributes, on elliptic-curve keys only.
    let curve = encoding::params_of(t);
    let ec = |a: CK_ATTRIBUTE_TYPE| match (a, curve) {
        (CKA_EC_PARAMS, Some(p)) => Value::Bytes(p.to_vec()),
        (CKA_EC_POINT, Some(_)) => {
            public().map_or(Value::NeedsPublic, |p| Value::Bytes(encoding::ec_point(p)))
        }
        (CKA_PUBLIC_KEY_INFO, _) => public().map_or(Value::NeedsPublic, |p| {
            ferrohsm_proto::pem::spki_der(t, p).map_or(Value::Invalid, Value::Bytes)
        }),
        _ => Value::Invalid,
    };
    // Never out: an asymmetric key's private half.
    let sensitive = || b(true);
    let always_sensitive = info.origin != Origin::Imported;
    let never_extractable =
        !info.exportable && matches!(info.origin, Origin::Generated | Origin::Derived);
    match class {
        Class::Public => match a {
            CKA_SUBJECT => Value::Bytes(Vec::new()),
            CKA_VERIFY => b(uses(Usage::Verify)),
            CKA_ENCAPSULATE => b(uses(Usage::Encapsulate)),
            CKA_ENCRYPT | CKA_VERIFY_RECOVER | CKA_WRAP | CKA_TRUSTED => b(false),
            // ML-DSA and ML-KEM: the raw FIPS 204/203 public key (EC keys have CKA_EC_POINT).
            CKA_VALUE if curve.is_none() => {
                public().map_or(Value::NeedsPublic, |p| Value::Bytes(p.clone()))
            }
            other => ec(other),
        },
        Class::Private => match a {
            CKA_SUBJECT => Value::Bytes(Vec::new()),
            CKA_SENSITIVE => sensitive(),
            CKA_SIGN => b(uses(Usage::Sign)),
            CKA_DECAPSULATE => b(uses(Usage::Decapsulate)),
            CKA_DECRYPT
            | CKA_SIGN_RECOVER
            | CKA_UNWRAP
            | CKA_WRAP_WITH_TRUSTED
            | CKA_ALWAYS_AUTHENTICATE => b(false),
            CKA_EXTRACTABLE => b(info.exportable),
            CKA_ALWAYS_SENSITIVE => b(always_sensitive),
            CKA_NEVER_EXTRACTABLE => b(never_extractable),
            CKA_VALUE => Value::Sensitive,
            CKA_SEED if curve.is_none() => Value::Sensitive,
            other => ec(other),
        },
        // A secret key is sensitive, as it always was, except an exportable KEM or
        // key-agreement secret (origin "derived"), whose CKA_VALUE is read through hsmd's
        // export (never for a granted key): PKCS#11 3.2 makes such a key extractable and
        // non-sensitive when the template asks. A derived key is also known to the peer: never
        // "always sensitive" or "never extractable" (PKCS#11 3.2, C_EncapsulateKey).
        Class::Secret => {
            let shared = info.origin == Origin::Derived;
            let readable = info.exportable && !k.granted && shared;
            match a {
                CKA_SENSITIVE => b(!readable),
                CKA_ENCRYPT => b(uses(Usage::Encrypt)),
                CKA_DECRYPT => b(uses(Usage::Decrypt)),
                CKA_SIGN | CKA_VERIFY => b(uses(Usage::Mac)),
                CKA_WRAP | CKA_UNWRAP | CKA_WRAP_WITH_TRUSTED | CKA_TRUSTED => b(false),
                CKA_EXTRACTABLE => b(info.exportable),
                CKA_ALWAYS_SENSITIVE => b(always_sensitive && !shared && !info.exportable),
                CKA_NEVER_EXTRACTABLE => b(never_extractable && !shared),
                CKA_VALUE_LEN => ul(t.describe().secret_len as CK_ULONG),
                CKA_VALUE if readable => Value::NeedsSecret,
                CKA_VALUE => Value::Sensitive,
                _ => Value::Invalid,
            }
        }
    }
}

/// Whether attribute `a` of an object of `class` needs the key's public half.
pub fn needs_public(class: Class, a: CK_ATTRIBUTE_TYPE) -> bool {
    match a {
        CKA_EC_POINT | CKA_PUBLIC_KEY_INFO => class != Class::Secret,
        CKA_VALUE => class == Class::Public,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(t: KeyType, granted: bool) -> Known {
        Known {
            info: KeyInfo::generated("alice".parse().unwrap(), 7, "k".parse().unwrap(), t),
            granted,
            public: None,
        }
    }

    #[test]
    fn handles_round_trip_and_zero_is_none() {
        for i in [0usize, 1, 1000] {
            for c in [Class::Private, Class::Public, Class::Secret] {
                assert_eq!(decode(handle(i, c)), Some((i, c)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(4), None);
        assert_eq!(decode(1), None);
    }

    #[test]
    fn ids_and_sensitivity() {
        let own = known(KeyType::P256, false);
        assert_eq!(own.ck_id(), [0, 0, 0, 0, 0, 0, 0, 7]);
        let granted = known(KeyType::P256, true);
        assert!(granted.ck_id()[0] & 0x80 != 0);
        assert_eq!(attribute(&own, Class::Private, CKA_VALUE), Value::Sensitive);
        assert_eq!(
            attribute(&own, Class::Public, CKA_EC_POINT),
            Value::NeedsPublic
        );
        assert_eq!(
            attribute(&own, Class::Public, CKA_VALUE_LEN),
            Value::Invalid
        );
        assert_eq!(
            attribute(&own, Class::Private, CKA_NEVER_EXTRACTABLE),
            b(true)
        );
        assert_eq!(
            attribute(&granted, Class::Private, CKA_DESTROYABLE),
            b(false)
        );
        assert_eq!(
            attribute(&own, Class::Private, CKA_EC_PARAMS),
            Value::Bytes(encoding::P256_PARAMS.to_vec())
        );
    }

    #[test]
    fn post_quantum_objects() {
        let mut k = known(KeyType::MlDsa65, false);
        assert_eq!(attribute(&k, Class::Public, CKA_KEY_TYPE), ul(CKK_ML_DSA));
        assert_eq!(
            attribute(&k, Class::Private, CKA_PARAMETER_SET),
            ul(CKP_ML_DSA_65)
        );
        assert_eq!(attribute(&k, Class::Public, CKA_VALUE), Value::NeedsPublic);
        assert_eq!(attribute(&k, Class::Public, CKA_EC_POINT), Value::Invalid);
        assert_eq!(attribute(&k, Class::Public, CKA_EC_PARAMS), Value::Invalid);
        k.public = Some(vec![7; 1952]);
        assert_eq!(
            attribute(&k, Class::Public, CKA_VALUE),
            Value::Bytes(vec![7; 1952])
        );
        assert_eq!(attribute(&k, Class::Private, CKA_VALUE), Value::Sensitive);
        assert_eq!(attribute(&k, Class::Private, CKA_SEED), Value::Sensitive);
        assert_eq!(attribute(&k, Class::Private, CKA_SIGN), b(true));
        assert_eq!(attribute(&k, Class::Public, CKA_ENCAPSULATE), b(false));
        let kem = known(KeyType::MlKem1024, false);
        assert_eq!(attribute(&kem, Class::Public, CKA_ENCAPSULATE), b(true));
        assert_eq!(attribute(&kem, Class::Private, CKA_DECAPSULATE), b(true));
        assert_eq!(attribute(&kem, Class::Private, CKA_SIGN), b(false));
        assert_eq!(
            attribute(&kem, Class::Public, CKA_PARAMETER_SET),
            ul(CKP_ML_KEM_1024)
        );
        // EC keys keep their attributes: no parameter set, seed or public CKA_VALUE.
        let ec = known(KeyType::P256, false);
        assert_eq!(
            attribute(&ec, Class::Public, CKA_PARAMETER_SET),
            Value::Invalid
        );
        assert_eq!(attribute(&ec, Class::Private, CKA_SEED), Value::Invalid);
        assert_eq!(attribute(&ec, Class::Public, CKA_VALUE), Value::Invalid);
        assert!(needs_public(Class::Public, CKA_VALUE));
        assert!(!needs_public(Class::Private, CKA_VALUE));
        assert!(!needs_public(Class::Secret, CKA_EC_POINT));
        // One CKK, one type per parameter set.
        assert_eq!(key_types_of(CKK_ML_KEM).count(), 3);
        assert_eq!(
            key_type_of_set(CKK_ML_DSA, CKP_ML_DSA_87),
            Some(KeyType::MlDsa87)
        );
        assert_eq!(key_type_of_set(CKK_ML_DSA, 4), None);
    }

    #[test]
    fn exportable_kem_secrets_are_readable_and_not_sensitive() {
        // A generated key stays sensitive, exportable or not (as before PKCS#11 3.2).
        let mut g = known(KeyType::Aes256Gcm, false);
        assert_eq!(attribute(&g, Class::Secret, CKA_VALUE), Value::Sensitive);
        assert_eq!(attribute(&g, Class::Secret, CKA_SENSITIVE), b(true));
        assert_eq!(attribute(&g, Class::Secret, CKA_ALWAYS_SENSITIVE), b(true));
        g.info.exportable = true;
        assert_eq!(attribute(&g, Class::Secret, CKA_VALUE), Value::Sensitive);
        assert_eq!(attribute(&g, Class::Secret, CKA_SENSITIVE), b(true));
        assert_eq!(attribute(&g, Class::Secret, CKA_EXTRACTABLE), b(true));
        // A KEM secret made exportable is readable.
        let mut k = known(KeyType::Aes256Gcm, false);
        k.info.origin = Origin::Derived;
        k.info.exportable = true;
        assert_eq!(attribute(&k, Class::Secret, CKA_VALUE), Value::NeedsSecret);
        assert_eq!(attribute(&k, Class::Secret, CKA_SENSITIVE), b(false));
        assert_eq!(attribute(&k, Class::Secret, CKA_ALWAYS_SENSITIVE), b(false));
        assert_eq!(attribute(&k, Class::Secret, CKA_EXTRACTABLE), b(true));
        // A granted key is its owner's to export.
        k.granted = true;
        assert_eq!(attribute(&k, Class::Secret, CKA_VALUE), Value::Sensitive);
        // A KEM secret is known to the peer too.
        let mut d = known(KeyType::HmacSha256, false);
        d.info.origin = Origin::Derived;
        assert_eq!(attribute(&d, Class::Secret, CKA_ALWAYS_SENSITIVE), b(false));
        assert_eq!(
            attribute(&d, Class::Secret, CKA_NEVER_EXTRACTABLE),
            b(false)
        );
        assert_eq!(attribute(&d, Class::Secret, CKA_SENSITIVE), b(true));
        assert_eq!(
            format!("{:?}", Value::Secret(Zeroizing::new(vec![1]))),
            "Secret(..)"
        );
    }
}
