//! The value types messages carry: labels, key references, key types, usages, key info and
//! specs. Each refuses invalid values while deserializing, so a decoded message is a valid one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::key_type::KeyType;
pub use super::usage::{Usage, UsageSet};

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
