//! Policy: which key types and usage flags an operation needs. Checked by the key manager for
//! every operation, before any crypto job is queued.

use ferrohsm_proto::{KeyType, Status, Usage, UsageSet};

use crate::error::OpError;
use crate::keys::store::KeyEntry;

/// What an operation requires of its key.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// Verb for messages ("sign", "encrypt", ...).
    pub verb: &'static str,
    /// Usage flag the key must carry.
    pub usage: Usage,
    /// Key types the operation applies to.
    pub types: &'static [KeyType],
}

const SIGNERS: &[KeyType] = &[KeyType::Ed25519, KeyType::P256];
const AEADS: &[KeyType] = &[KeyType::ChaCha20Poly1305, KeyType::Aes256Gcm];

/// Sign.
pub const SIGN: Requirement = Requirement {
    verb: "sign",
    usage: Usage::Sign,
    types: SIGNERS,
};
/// Verify.
pub const VERIFY: Requirement = Requirement {
    verb: "verify",
    usage: Usage::Verify,
    types: SIGNERS,
};
/// Encrypt.
pub const ENCRYPT: Requirement = Requirement {
    verb: "encrypt",
    usage: Usage::Encrypt,
    types: AEADS,
};
/// Decrypt.
pub const DECRYPT: Requirement = Requirement {
    verb: "decrypt",
    usage: Usage::Decrypt,
    types: AEADS,
};
/// MAC compute and verify.
pub const MAC: Requirement = Requirement {
    verb: "mac",
    usage: Usage::Mac,
    types: &[KeyType::HmacSha256],
};
/// Derive.
pub const DERIVE: Requirement = Requirement {
    verb: "derive",
    usage: Usage::Derive,
    types: &[KeyType::X25519],
};

/// Checks that `entry` may be used for `req`: the type first, then the usage flag.
pub fn check(entry: &KeyEntry, req: Requirement) -> Result<(), OpError> {
    let t = entry.info.key_type;
    if !req.types.contains(&t) {
        return Err(OpError::new(
            Status::WrongKeyType,
            format!(
                "cannot {} with key {} of type {t}",
                req.verb, entry.info.label
            ),
        ));
    }
    if !entry.info.usage.contains(req.usage) {
        return Err(OpError::new(
            Status::UsageNotPermitted,
            format!(
                "key {} does not permit usage {}",
                entry.info.label,
                req.usage.name()
            ),
        ));
    }
    Ok(())
}

/// The usage set of a new key: the request's, which must be non-empty and fit the type, or
/// every usage that fits the type.
pub fn usage_for_new_key(t: KeyType, requested: Option<UsageSet>) -> Result<UsageSet, OpError> {
    let allowed = t.allowed_usage();
    match requested {
        None => Ok(allowed),
        Some(u) if u.is_empty() => Err(OpError::invalid("usage list is empty")),
        Some(u) if !u.is_subset(allowed) => Err(OpError::invalid(format!(
            "usage {} does not fit a {t} key (allowed: {})",
            u.names().join(","),
            allowed.names().join(",")
        ))),
        Some(u) => Ok(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrohsm_proto::Usage::*;

    #[test]
    fn new_key_usage_rules() {
        let ed = KeyType::Ed25519;
        assert_eq!(
            usage_for_new_key(ed, None).unwrap(),
            UsageSet::of(&[Sign, Verify])
        );
        assert_eq!(
            usage_for_new_key(ed, Some(UsageSet::of(&[Verify]))).unwrap(),
            UsageSet::of(&[Verify])
        );
        assert!(usage_for_new_key(ed, Some(UsageSet::of(&[Encrypt]))).is_err());
        assert!(usage_for_new_key(ed, Some(UsageSet::of(&[]))).is_err());
    }
}
