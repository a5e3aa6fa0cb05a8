//! The value types messages carry: labels, key references, key types, usages, key info and
//! specs. Each refuses invalid values while deserializing, so a decoded message is a valid one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A key label: `[A-Za-z][A-Za-z0-9._-]{0,63}`, so a label never looks like a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && s.len() <= 64 {
            Ok(Label(s))
        } else {
            Err(format!(
                "invalid label {:?}: expected a letter then up to 63 of [A-Za-z0-9._-]",
                s.chars().take(80).collect::<String>()
            ))
        }
    }
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Label::try_from(s.to_owned())
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key named by its per-client numeric id or by its label; a key another client granted is
/// named `OWNER:ID` or `OWNER:LABEL` (labels and client names cannot contain `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyRef {
    /// Numeric id (per client).
    Id(u32),
    /// Label.
    Label(Label),
    /// `OWNER:ID`: another client's key, by id.
    OwnerId(Label, u32),
    /// `OWNER:LABEL`: another client's key, by label.
    OwnerLabel(Label, Label),
}

impl KeyRef {
    /// The owner named in the reference, if any.
    pub fn owner(&self) -> Option<&Label> {
        match self {
            KeyRef::OwnerId(o, _) | KeyRef::OwnerLabel(o, _) => Some(o),
            _ => None,
        }
    }

    /// The reference inside its owner's namespace (the owner part dropped); borrowed, with
    /// no copy, when it names no owner (the common case, on every request).
    pub fn local(&self) -> std::borrow::Cow<'_, KeyRef> {
        use std::borrow::Cow;
        match self {
            KeyRef::OwnerId(_, id) => Cow::Owned(KeyRef::Id(*id)),
            KeyRef::OwnerLabel(_, l) => Cow::Owned(KeyRef::Label(l.clone())),
            other => Cow::Borrowed(other),
        }
    }

    /// The same key named with an owner (`owner:key`).
    pub fn with_owner(&self, owner: &Label) -> KeyRef {
        match &*self.local() {
            KeyRef::Id(id) => KeyRef::OwnerId(owner.clone(), *id),
            KeyRef::Label(l) => KeyRef::OwnerLabel(owner.clone(), l.clone()),
            other => other.clone(),
        }
    }
}

fn local_ref(s: &str) -> Result<KeyRef, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u32>()
            .map(KeyRef::Id)
            .map_err(|_| format!("key id {s} is out of range"))
    } else {
        s.parse::<Label>().map(KeyRef::Label)
    }
}

impl FromStr for KeyRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None => local_ref(s),
            Some((owner, key)) => {
                let owner: Label = owner
                    .parse()
                    .map_err(|e| format!("in {s:?}, the owner is not a client name: {e}"))?;
                Ok(local_ref(key)?.with_owner(&owner))
            }
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Id(id) => write!(f, "{id}"),
            KeyRef::Label(l) => write!(f, "{l}"),
            KeyRef::OwnerId(o, id) => write!(f, "{o}:{id}"),
            KeyRef::OwnerLabel(o, l) => write!(f, "{o}:{l}"),
        }
    }
}

/// Key types. Not `#[non_exhaustive]`, on purpose: every crate of the workspace matches it
/// without a wildcard, so a new type is a compile error wherever it needs handling instead of
/// a quiet `wrong_key_type` in a place nobody remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// Ed25519 signing key.
    Ed25519,
    /// ECDSA P-256 with SHA-256 signing key.
    P256,
    /// X25519 key agreement key.
    X25519,
    /// ChaCha20-Poly1305 AEAD key.
    ChaCha20Poly1305,
    /// AES-256-GCM AEAD key.
    Aes256Gcm,
    /// HMAC-SHA256 key.
    HmacSha256,
}

impl KeyType {
    /// Every key type.
    pub const ALL: [KeyType; 6] = [
        KeyType::Ed25519,
        KeyType::P256,
        KeyType::X25519,
        KeyType::ChaCha20Poly1305,
        KeyType::Aes256Gcm,
        KeyType::HmacSha256,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
            KeyType::X25519 => "x25519",
            KeyType::ChaCha20Poly1305 => "chacha20poly1305",
            KeyType::Aes256Gcm => "aes256gcm",
            KeyType::HmacSha256 => "hmac-sha256",
        }
    }

    /// The usages that make sense for this type; also the default set.
    pub fn allowed_usage(self) -> UsageSet {
        use Usage::*;
        match self {
            KeyType::Ed25519 | KeyType::P256 => UsageSet::of(&[Sign, Verify]),
            KeyType::X25519 => UsageSet::of(&[Derive]),
            KeyType::ChaCha20Poly1305 | KeyType::Aes256Gcm => {
                UsageSet::of(&[Encrypt, Decrypt, Wrap, Unwrap])
            }
            KeyType::HmacSha256 => UsageSet::of(&[Mac]),
        }
    }

    /// Whether the type has a public half.
    pub fn is_asymmetric(self) -> bool {
        matches!(self, KeyType::Ed25519 | KeyType::P256 | KeyType::X25519)
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyType::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "unknown key type {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One usage flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Usage {
    /// Make signatures.
    Sign = 1 << 0,
    /// Check signatures.
    Verify = 1 << 1,
    /// AEAD encrypt.
    Encrypt = 1 << 2,
    /// AEAD decrypt.
    Decrypt = 1 << 3,
    /// HMAC compute and verify.
    Mac = 1 << 4,
    /// Key agreement into a new key.
    Derive = 1 << 5,
    /// Wrap other keys.
    Wrap = 1 << 6,
    /// Unwrap keys.
    Unwrap = 1 << 7,
}

impl Usage {
    /// Every usage, in display order.
    pub const ALL: [Usage; 8] = [
        Usage::Sign,
        Usage::Verify,
        Usage::Encrypt,
        Usage::Decrypt,
        Usage::Mac,
        Usage::Derive,
        Usage::Wrap,
        Usage::Unwrap,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Usage::Sign => "sign",
            Usage::Verify => "verify",
            Usage::Encrypt => "encrypt",
            Usage::Decrypt => "decrypt",
            Usage::Mac => "mac",
            Usage::Derive => "derive",
            Usage::Wrap => "wrap",
            Usage::Unwrap => "unwrap",
        }
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Usage::ALL
            .iter()
            .copied()
            .find(|u| u.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Usage::ALL.iter().map(|u| u.name()).collect();
                format!("unknown usage {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// A set of usage flags; only known bits can be held.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct UsageSet(u16);

impl UsageSet {
    const KNOWN: u16 = 0xff;

    /// The set of the given usages.
    pub fn of(usages: &[Usage]) -> UsageSet {
        UsageSet(usages.iter().fold(0, |acc, u| acc | *u as u16))
    }

    /// [`UsageSet::of`] in a constant.
    pub const fn of_const(usages: &[Usage]) -> UsageSet {
        let mut bits = 0;
        let mut i = 0;
        while i < usages.len() {
            bits |= usages[i] as u16;
            i += 1;
        }
        UsageSet(bits)
    }

    /// Whether `u` is in the set.
    pub fn contains(self, u: Usage) -> bool {
        self.0 & u as u16 != 0
    }

    /// Whether every usage of `self` is in `other`.
    pub fn is_subset(self, other: UsageSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The usages in display order.
    pub fn iter(self) -> impl Iterator<Item = Usage> {
        Usage::ALL.into_iter().filter(move |u| self.contains(*u))
    }

    /// The names in display order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Usage::name).collect()
    }
}

impl TryFrom<u16> for UsageSet {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        if v & !Self::KNOWN == 0 {
            Ok(UsageSet(v))
        } else {
            Err(format!("unknown usage bits {v:#06x}"))
        }
    }
}

impl From<UsageSet> for u16 {
    fn from(u: UsageSet) -> u16 {
        u.0
    }
}

impl FromStr for UsageSet {
    type Err = String;
    /// Parses `sign,verify`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usages = s
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<Vec<Usage>, _>>()?;
        Ok(UsageSet::of(&usages))
    }
}

impl fmt::Debug for UsageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// How long a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lifetime {
    /// Until deleted.
    Persistent,
    /// Until the session that created it ends.
    Session,
}

impl Lifetime {
    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Lifetime::Persistent => "persistent",
            Lifetime::Session => "session",
        }
    }
}

/// Digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DigestAlg {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl FromStr for DigestAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha256" => Ok(DigestAlg::Sha256),
            "sha512" => Ok(DigestAlg::Sha512),
            _ => Err(format!("unknown digest {s:?}; expected sha256 or sha512")),
        }
    }
}

/// Public description of a key (never any key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Per-client numeric id.
    pub id: u32,
    /// Label, unique per client.
    pub label: Label,
    /// Type.
    pub key_type: KeyType,
    /// Permitted usages.
    pub usage: UsageSet,
    /// Whether `export` may return the key bytes.
    pub exportable: bool,
    /// Lifetime.
    pub lifetime: Lifetime,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Owning client (another client's name for a key granted to the caller).
    pub owner: Label,
    /// Where it came from.
    pub origin: Origin,
    /// The version encrypt and mac use (1 until the key is rotated).
    pub current_version: u32,
    /// Every version, oldest first (one for keys that never rotated).
    pub versions: Vec<VersionInfo>,
}

impl KeyInfo {
    /// A key as generation makes it: `owner`'s persistent, non-exportable key `id` of type
    /// `key_type`, with every usage the type allows, at version 1, created at time 0. A start
    /// for descriptions made by hand (tests, mocks); change fields with struct update syntax:
    /// `KeyInfo { exportable: true, ..KeyInfo::generated(owner, 7, label, KeyType::P256) }`.
    pub fn generated(owner: Label, id: u32, label: Label, key_type: KeyType) -> KeyInfo {
        KeyInfo {
            id,
            label,
            key_type,
            usage: key_type.allowed_usage(),
            exportable: false,
            lifetime: Lifetime::Persistent,
            created: 0,
            owner,
            origin: Origin::Generated,
            current_version: 1,
            versions: vec![VersionInfo {
                version: 1,
                created: 0,
                retired: false,
            }],
        }
    }
}

/// Parameters of a new key (generate or derive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// Type of the new key.
    pub key_type: KeyType,
    /// Label of the new key.
    pub label: Label,
    /// Usages; `None` means every usage that fits the type.
    pub usage: Option<UsageSet>,
    /// Whether the key may be exported.
    pub exportable: bool,
    /// Session key (vanishes with the connection) instead of persistent.
    pub session: bool,
}

/// Where a key came from, so a relying party can tell a key that never left the HSM from one
/// that came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// Generated inside hsmd.
    Generated,
    /// Derived inside hsmd from another key.
    Derived,
    /// Imported from outside.
    Imported,
    /// Unwrapped from a wrapped blob.
    Unwrapped,
}

impl Origin {
    /// Every origin.
    pub const ALL: [Origin; 4] = [
        Origin::Generated,
        Origin::Derived,
        Origin::Imported,
        Origin::Unwrapped,
    ];

    /// The stored and displayed name.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Derived => "derived",
            Origin::Imported => "imported",
            Origin::Unwrapped => "unwrapped",
        }
    }

    /// Parses a stored or displayed name.
    pub fn from_name(s: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// One version of a key's material (encryption and MAC keys gain versions by rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
    /// Retired: its material is deleted; ciphertexts and MACs it made no longer verify.
    pub retired: bool,
}

/// The most keys one `list` page may ask for (and the page size when a request names none).
pub const MAX_PAGE: u32 = 1000;

/// Which page of a listing: the keys with ids above `after` (none: from the first), at most
/// `limit` of them (none: [`MAX_PAGE`]; more than [`MAX_PAGE`] is refused). A page shorter
/// than its limit is the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The id of the last key of the previous page.
    pub after: Option<u32>,
    /// Most keys in this page.
    pub limit: Option<u32>,
}

impl Page {
    /// The first page of the largest size, for callers that fetch every page.
    pub const FIRST: Page = Page {
        after: None,
        limit: Some(MAX_PAGE),
    };

    /// The page after this one, given this one's keys; `None` when this one was the last
    /// (shorter than its limit).
    pub fn next(&self, keys: &[KeyInfo]) -> Option<Page> {
        let limit = self.limit.unwrap_or(MAX_PAGE) as usize;
        let last = keys.last()?;
        (keys.len() >= limit).then_some(Page {
            after: Some(last.id),
            limit: self.limit,
        })
    }
}

/// A search among the caller's own keys (persistent, then this connection's session keys):
/// every field given must match. Paged like a listing; a page shorter than its limit is the
/// last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyQuery {
    /// Exact label.
    pub label: Option<Label>,
    /// Exact id.
    pub id: Option<u32>,
    /// Key type.
    pub key_type: Option<KeyType>,
    /// Which page of the matches.
    pub page: Page,
}

impl KeyQuery {
    /// Whether `k` matches (the page aside).
    pub fn matches(&self, k: &KeyInfo) -> bool {
        self.label.as_ref().is_none_or(|l| *l == k.label)
            && self.id.is_none_or(|id| id == k.id)
            && self.key_type.is_none_or(|t| t == k.key_type)
    }
}

/// What `hsmctl status` shows: this node, its store, and its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `[server] node` (empty when the config names none).
    pub node: String,
    /// hsmd's version.
    pub version: String,
    /// Seconds since hsmd started.
    pub uptime_s: u64,
    /// `sqlite` or `postgres`.
    pub store_backend: String,
    /// Whether the store answered a read within its timeout just now.
    pub store_reachable: bool,
    /// Open sessions per transport: tcp, tls, tls-psk, shm.
    pub sessions: [u64; 4],
}
