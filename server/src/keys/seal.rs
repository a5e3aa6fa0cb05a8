//! Encryption at rest: the master key, how it is wrapped, and how each key record is sealed.
//!
//! ```text
//!  passphrase --argon2id(salt, m, t, p)--\
//!  key file (32 random bytes, hex) -------+--> KEK --AEAD--> wrapped master key (in keys.db)
//!                                                               |
//!  master key (32 random bytes) <----------- unwrap ------------+
//!      |
//!      +--AEAD(nonce, aad = the whole record)--> sealed material (one per key row)
//! ```
//! Both AEADs are ChaCha20-Poly1305 with a random 96-bit nonce. The associated data of a sealed
//! key is a canonical encoding of its whole record (owner, id, label, type, usage, exportable,
//! origin, created, version), so a row that was edited, moved to another owner, or whose
//! material was swapped with another row's fails to open. The associated data of the wrapped
//! master key names the KDF and its parameters, so they cannot be downgraded either.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::keys::store::records::KeyRecord;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a wrapped master key: nonce, 32 bytes, tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;
const RECORD_AAD_TAG: &[u8] = b"FerroHSM key record v1\0";
const MASTER_AAD_TAG: &[u8] = b"FerroHSM master key v1\0";

/// Argon2id cost used for new passphrase stores: 64 MiB, 3 passes, one lane (about 0.2 s on
/// one core of this project's reference machine; the parameters live in the store, so they
/// can be raised later without breaking old stores).
pub const ARGON2_DEFAULT: Argon2Params = Argon2Params {
    m_kib: 64 * 1024,
    t: 3,
    p: 1,
};

/// A passphrase, zeroized on drop and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (a trailing newline, as files and `echo` add, is not part of it).
    pub fn new(mut s: String) -> Passphrase {
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        Passphrase(Zeroizing::new(s))
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

/// How the master key is wrapped, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    /// By the 32 bytes of a key file.
    KeyFile,
    /// By a key derived from a passphrase.
    Argon2id {
        /// Cost.
        params: Argon2Params,
        /// 16 random bytes.
        salt: [u8; 16],
    },
}

impl Kdf {
    /// A fresh passphrase KDF with a random salt.
    pub fn new_argon2id() -> Result<Kdf, SealError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| SealError::Random)?;
        Ok(Kdf::Argon2id {
            params: ARGON2_DEFAULT,
            salt,
        })
    }

    /// The short name stored in `meta.kdf`.
    pub fn name(&self) -> &'static str {
        match self {
            Kdf::KeyFile => "keyfile",
            Kdf::Argon2id { .. } => "argon2id",
        }
    }

    /// Canonical bytes (associated data of the wrapped master key).
    fn encode(&self) -> Vec<u8> {
        let mut out = self.name().as_bytes().to_vec();
        if let Kdf::Argon2id { params, salt } = self {
            out.push(0);
            for v in [params.m_kib, params.t, params.p] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(salt);
        }
        out
    }
}

/// What unlocks the master key.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// The contents of the key file.
    KeyFile(KeyFileSecret),
    /// A passphrase.
    Passphrase(Passphrase),
}

/// The 32 bytes of a key file.
#[derive(Clone)]
pub struct KeyFileSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for KeyFileSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFileSecret(..)")
    }
}

impl KeyFileSecret {
    /// A new random key-file secret.
    pub fn generate() -> Result<KeyFileSecret, SealError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|_| SealError::Random)?;
        Ok(KeyFileSecret(k))
    }

    /// Parses the file's text: 64 hex digits, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Option<KeyFileSecret> {
        let t = text.trim();
        if t.len() != 64 {
            return None;
        }
        let mut k = Zeroizing::new([0u8; 32]);
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KeyFileSecret(k))
    }

    /// The file's text.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(65));
        for b in self.0.iter() {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
        s
    }
}

/// Why sealing or unsealing failed. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The OS random source failed.
    #[error("the OS random source failed")]
    Random,
    /// The KDF failed (bad parameters).
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The wrapped master key did not open under this passphrase or key file.
    #[error("the master key did not unwrap")]
    WrongUnlock,
    /// The unlock secret does not match how the store is protected.
    #[error("the store is protected by {stored}, but a {given} was given")]
    WrongKind {
        /// What the store uses.
        stored: &'static str,
        /// What was given.
        given: &'static str,
    },
    /// A sealed record did not authenticate.
    #[error("the sealed material does not authenticate against its record")]
    Record,
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Kdf("bad AEAD key".into()))
}

fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| SealError::Record)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

/// The key-encryption key for `kdf` from `unlock`.
fn kek(kdf: &Kdf, unlock: &Unlock) -> Result<Zeroizing<[u8; 32]>, SealError> {
    match (kdf, unlock) {
        (Kdf::KeyFile, Unlock::KeyFile(k)) => Ok(k.0.clone()),
        (Kdf::Argon2id { params, salt }, Unlock::Passphrase(p)) => {
            let params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
                .map_err(|e| SealError::Kdf(e.to_string()))?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; 32]);
            a.hash_password_into(p.bytes(), salt, out.as_mut())
                .map_err(|e| SealError::Kdf(e.to_string()))?;
            Ok(out)
        }
        (Kdf::KeyFile, Unlock::Passphrase(_)) => Err(SealError::WrongKind {
            stored: "a key file",
            given: "passphrase",
        }),
        (Kdf::Argon2id { .. }, Unlock::KeyFile(_)) => Err(SealError::WrongKind {
            stored: "a passphrase",
            given: "key file",
        }),
    }
}

/// The master key. Never leaves this process; `Debug` prints nothing of it.
pub struct MasterKey {
    raw: Zeroizing<[u8; 32]>,
    aead: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<MasterKey, SealError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|_| SealError::Random)?;
        MasterKey::from_raw(raw)
    }

    fn from_raw(raw: Zeroizing<[u8; 32]>) -> Result<MasterKey, SealError> {
        let aead = aead(&raw)?;
        Ok(MasterKey { raw, aead })
    }

    /// Wraps this master key for storage under `kdf` / `unlock`.
    pub fn wrap(&self, kdf: &Kdf, unlock: &Unlock) -> Result<Vec<u8>, SealError> {
        let kek = aead(&*kek(kdf, unlock)?)?;
        let aad = [MASTER_AAD_TAG, &kdf.encode()].concat();
        seal(&kek, &aad, self.raw.as_ref())
    }

    /// Unwraps a stored master key.
    pub fn unwrap(kdf: &Kdf, wrapped: &[u8], unlock: &Unlock) -> Result<MasterKey, SealError> {
        let kek = aead(&*kek(kdf, unlock)?)?;
        let aad = [MASTER_AAD_TAG, &kdf.encode()].concat();
        let plain = open(&kek, &aad, wrapped).ok_or(SealError::WrongUnlock)?;
        let raw: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| SealError::WrongUnlock)?;
        MasterKey::from_raw(Zeroizing::new(raw))
    }

    /// Seals a key's secret bytes to its record (the current version's material: `rec`'s
    /// `version` is that version).
    pub fn seal_record(&self, rec: &KeyRecord, secret: &[u8]) -> Result<Vec<u8>, SealError> {
        seal(&self.aead, &record_aad(rec), secret)
    }

    /// Seals the material of version `v` of `rec`'s key: sealed as current when `v` is the
    /// record's version, else as superseded. A rotation re-seals the old current version as
    /// superseded, so a store rolled back by deleting the newest version (and lowering the
    /// record's version) fails to open instead of silently encrypting under an old version.
    pub fn seal_version(
        &self,
        rec: &KeyRecord,
        v: u32,
        secret: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        seal(&self.aead, &version_aad(rec, v), secret)
    }

    /// Opens what [`MasterKey::seal_version`] sealed.
    pub fn open_version(
        &self,
        rec: &KeyRecord,
        v: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open(&self.aead, &version_aad(rec, v), sealed).ok_or(SealError::Record)
    }

    /// Opens a sealed record; fails if the material or any field of the record was changed.
    pub fn open_record(
        &self,
        rec: &KeyRecord,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open(&self.aead, &record_aad(rec), sealed).ok_or(SealError::Record)
    }
}

impl MasterKey {
    /// Seals `plain` under the master key with associated data `aad` (the audit key, and with
    /// an empty `plain` the tags that authenticate grant and counter rows).
    pub fn seal_with(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        seal(&self.aead, aad, plain)
    }

    /// Opens what [`MasterKey::seal_with`] sealed to `aad`.
    pub fn open_with(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open(&self.aead, aad, sealed).ok_or(SealError::Record)
    }
}

/// Builds canonical associated data: a domain tag, then fields (variable ones length-prefixed).
#[derive(Debug)]
pub struct Fields(Vec<u8>);

impl Fields {
    /// Starts with a domain tag (`b"FerroHSM grant v1\0"`).
    pub fn new(tag: &[u8]) -> Fields {
        Fields(tag.to_vec())
    }

    /// A variable-length field.
    pub fn var(mut self, b: &[u8]) -> Fields {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }

    /// A fixed-length field.
    pub fn fixed(mut self, b: &[u8]) -> Fields {
        self.0.extend_from_slice(b);
        self
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The associated data of version `v`'s material: the record at version `v`, marked superseded
/// unless `v` is the record's current version (a current version's AAD is the record's own, so
/// stores from before key versions open unchanged).
fn version_aad(rec: &KeyRecord, v: u32) -> Vec<u8> {
    let mut aad = record_aad(&rec.at_version(v));
    if v != rec.version {
        aad.extend_from_slice(SUPERSEDED_TAG);
    }
    aad
}

const SUPERSEDED_TAG: &[u8] = b"superseded\0";

/// Canonical associated data of a record: every field, length-prefixed where variable.
fn record_aad(r: &KeyRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(RECORD_AAD_TAG);
    let var = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    var(&mut out, r.owner.as_bytes());
    out.extend_from_slice(&r.id.to_le_bytes());
    var(&mut out, r.label.as_str().as_bytes());
    var(&mut out, r.key_type.name().as_bytes());
    out.extend_from_slice(&u16::from(r.usage).to_le_bytes());
    out.push(u8::from(r.exportable));
    var(&mut out, r.origin.name().as_bytes());
    out.extend_from_slice(&r.created.to_le_bytes());
    out.extend_from_slice(&r.version.to_le_bytes());
    out
}

/// How the master key is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRecord {
    /// The KDF and its parameters.
    pub kdf: Kdf,
    /// The wrapped master key.
    pub wrapped: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::store::records::Origin;
    use ferrohsm_proto::KeyType;

    fn rec(owner: &str, id: u32) -> KeyRecord {
        KeyRecord {
            owner: owner.into(),
            id,
            label: "k".parse().unwrap(),
            key_type: KeyType::Ed25519,
            usage: KeyType::Ed25519.allowed_usage(),
            exportable: false,
            origin: Origin::Generated,
            created: 5,
            version: 1,
        }
    }

    #[test]
    fn records_open_only_unchanged() {
        let m = MasterKey::generate().unwrap();
        let r = rec("alice", 1);
        let s = m.seal_record(&r, &[7; 32]).unwrap();
        assert_eq!(&**m.open_record(&r, &s).unwrap(), &[7; 32]);
        for changed in [
            rec("bob", 1),
            rec("alice", 2),
            KeyRecord {
                exportable: true,
                ..rec("alice", 1)
            },
            KeyRecord {
                created: 6,
                ..rec("alice", 1)
            },
            KeyRecord {
                origin: Origin::Imported,
                ..rec("alice", 1)
            },
        ] {
            assert_eq!(m.open_record(&changed, &s), Err(SealError::Record));
        }
        let mut flipped = s.clone();
        flipped[20] ^= 1;
        // Every cause is the one `Record` error (no message): a flipped byte, a sealed blob
        // shorter than nonce and tag, another master key.
        assert_eq!(m.open_record(&r, &flipped), Err(SealError::Record));
        assert_eq!(m.open_record(&r, &s[..20]), Err(SealError::Record));
        let other = MasterKey::generate().unwrap();
        assert_eq!(other.open_record(&r, &s), Err(SealError::Record));
        assert_eq!(format!("{m:?}"), "MasterKey(..)");
    }

    #[test]
    fn master_key_wraps_under_key_file_and_passphrase() {
        let m = MasterKey::generate().unwrap();
        let kf = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
        let w = m.wrap(&Kdf::KeyFile, &kf).unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        let back = MasterKey::unwrap(&Kdf::KeyFile, &w, &kf).unwrap();
        assert_eq!(*back.raw, *m.raw);
        let wrong = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
        assert_eq!(
            MasterKey::unwrap(&Kdf::KeyFile, &w, &wrong).unwrap_err(),
            SealError::WrongUnlock
        );
        // Cheap parameters: this test checks the plumbing, not the cost.
        let kdf = Kdf::Argon2id {
            params: Argon2Params {
                m_kib: 64,
                t: 1,
                p: 1,
            },
            salt: [3; 16],
        };
        let pass = Unlock::Passphrase(Passphrase::new("correct horse\n".into()));
        let w = m.wrap(&kdf, &pass).unwrap();
        assert!(MasterKey::unwrap(&kdf, &w, &pass).is_ok());
        let bad = Unlock::Passphrase(Passphrase::new("wrong".into()));
        assert_eq!(
            MasterKey::unwrap(&kdf, &w, &bad).unwrap_err(),
            SealError::WrongUnlock
        );
        // Lowering the recorded cost makes the wrapped key fail to open.
        let weaker = Kdf::Argon2id {
            params: Argon2Params {
                m_kib: 32,
                t: 1,
                p: 1,
            },
            salt: [3; 16],
        };
        // Valid parameters (not a `Kdf` error): the KEK differs, so the unwrap fails.
        assert_eq!(
            MasterKey::unwrap(&weaker, &w, &pass).unwrap_err(),
            SealError::WrongUnlock
        );
        assert_eq!(
            MasterKey::unwrap(&Kdf::KeyFile, &w, &pass).unwrap_err(),
            SealError::WrongKind {
                stored: "a key file",
                given: "passphrase",
            }
        );
        let t = KeyFileSecret::generate().unwrap().to_text();
        assert!(KeyFileSecret::parse(&t).is_some());
        assert!(KeyFileSecret::parse("abcd").is_none());
        assert_eq!(format!("{pass:?}"), "Passphrase(Passphrase(..))");
    }
}
