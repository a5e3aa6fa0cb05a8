//! Usage flags: what a key may be used for, one bit each, and sets of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    /// Encapsulate a shared secret to the key's public half (ML-KEM).
    Encapsulate = 1 << 8,
    /// Decapsulate a ciphertext into a shared secret (ML-KEM).
    Decapsulate = 1 << 9,
}

impl Usage {
    /// Every usage, in display order.
    pub const ALL: [Usage; 10] = [
        Usage::Sign,
        Usage::Verify,
        Usage::Encrypt,
        Usage::Decrypt,
        Usage::Mac,
        Usage::Derive,
        Usage::Wrap,
        Usage::Unwrap,
        Usage::Encapsulate,
        Usage::Decapsulate,
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
            Usage::Encapsulate => "encapsulate",
            Usage::Decapsulate => "decapsulate",
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
    const KNOWN: u16 = 0x3ff;

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
