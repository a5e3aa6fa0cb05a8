//! hsmd keys as PKCS#11 objects: handles, and the attributes each object answers.
//!
//! An asymmetric key is two objects (private and public), a symmetric key one (secret). A
//! handle is `(index + 1) << 2 | class`, the index into the slot's table of keys seen, so
//! a handle stays valid for as long as the module runs.

use std::collections::HashMap;

use cryptoki_sys::*;
use ferrohsm_proto::{KeyInfo, KeyRef, KeyType, Label, Lifetime, Origin, Usage};
use sha2::Digest as _;

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
#[derive(Debug, PartialEq, Eq)]
pub enum Value {
    /// The value's bytes as PKCS#11 lays them out.
    Bytes(Vec<u8>),
    /// The object has no such attribute.
    Invalid,
    /// The attribute exists but is never revealed (a secret value).
    Sensitive,
    /// The attribute needs the public key, not fetched yet.
    NeedsPublic,
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
        _ => {}
    }
    let ec = |a: CK_ATTRIBUTE_TYPE| match a {
        CKA_EC_PARAMS => {
            encoding::params_of(t).map_or(Value::Invalid, |p| Value::Bytes(p.to_vec()))
        }
        CKA_EC_POINT => {
            public().map_or(Value::NeedsPublic, |p| Value::Bytes(encoding::ec_point(p)))
        }
        CKA_PUBLIC_KEY_INFO => public().map_or(Value::NeedsPublic, |p| {
            ferrohsm_proto::pem::spki_der(t, p).map_or(Value::Invalid, Value::Bytes)
        }),
        _ => Value::Invalid,
    };
    // Never out: a key's secret bytes.
    let sensitive = || b(true);
    let always_sensitive = info.origin != Origin::Imported;
    let never_extractable =
        !info.exportable && matches!(info.origin, Origin::Generated | Origin::Derived);
    match class {
        Class::Public => match a {
            CKA_SUBJECT => Value::Bytes(Vec::new()),
            CKA_VERIFY => b(uses(Usage::Verify)),
            CKA_ENCRYPT | CKA_VERIFY_RECOVER | CKA_WRAP | CKA_TRUSTED => b(false),
            other => ec(other),
        },
        Class::Private => match a {
            CKA_SUBJECT => Value::Bytes(Vec::new()),
            CKA_SENSITIVE => sensitive(),
            CKA_SIGN => b(uses(Usage::Sign)),
            CKA_DECRYPT
            | CKA_SIGN_RECOVER
            | CKA_UNWRAP
            | CKA_WRAP_WITH_TRUSTED
            | CKA_ALWAYS_AUTHENTICATE => b(false),
            CKA_EXTRACTABLE => b(info.exportable),
            CKA_ALWAYS_SENSITIVE => b(always_sensitive),
            CKA_NEVER_EXTRACTABLE => b(never_extractable),
            CKA_VALUE => Value::Sensitive,
            other => ec(other),
        },
        Class::Secret => match a {
            CKA_SENSITIVE => sensitive(),
            CKA_ENCRYPT => b(uses(Usage::Encrypt)),
            CKA_DECRYPT => b(uses(Usage::Decrypt)),
            CKA_SIGN | CKA_VERIFY => b(uses(Usage::Mac)),
            CKA_WRAP | CKA_UNWRAP | CKA_WRAP_WITH_TRUSTED | CKA_TRUSTED => b(false),
            CKA_EXTRACTABLE => b(info.exportable),
            CKA_ALWAYS_SENSITIVE => b(always_sensitive),
            CKA_NEVER_EXTRACTABLE => b(never_extractable),
            CKA_VALUE_LEN => ul(32),
            CKA_VALUE => Value::Sensitive,
            _ => Value::Invalid,
        },
    }
}

/// Whether an attribute needs the public key.
pub fn needs_public(a: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(a, CKA_EC_POINT | CKA_PUBLIC_KEY_INFO)
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
}
