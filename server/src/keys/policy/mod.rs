//! Policy: every rule about what may be done with a key lives here, so the key manager, the
//! dispatcher and the crypto code decide nothing themselves. Which key types and usage flags
//! an operation needs, what may be exported, which types may be derived and from what, the
//! usage of a new key, and the length of a random request.

use ferrohsm_proto::{KeyInfo, KeyRef, KeySpec, KeyType, Label, Opcode, Status, Usage, UsageSet};

use crate::error::OpError;
use crate::keys::store::Origin;

/// What an operation requires of its key.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// Verb for messages ("sign", "encrypt", ...).
    pub verb: &'static str,
    /// The hsmctl command name, for the audit log.
    pub op: &'static str,
    /// Usage flag the key must carry, if any.
    pub usage: Option<Usage>,
    /// A second usage flag the key must also carry (rewrap: decrypt and encrypt).
    pub also: Option<Usage>,
    /// Key types the operation applies to.
    pub types: &'static [KeyType],
    /// The key must be exportable.
    pub exportable: bool,
    /// Only the key's owner may do it (never through a grant).
    pub owner_only: bool,
}

const SIGNERS: &[KeyType] = &[
    KeyType::Ed25519,
    KeyType::P256,
    KeyType::MlDsa44,
    KeyType::MlDsa65,
    KeyType::MlDsa87,
];
const ML_DSA: &[KeyType] = &[KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87];
const ML_KEM: &[KeyType] = &[KeyType::MlKem512, KeyType::MlKem768, KeyType::MlKem1024];
const AEADS: &[KeyType] = &[KeyType::ChaCha20Poly1305, KeyType::Aes256Gcm];
const ASYMMETRIC: &[KeyType] = &[
    KeyType::Ed25519,
    KeyType::P256,
    KeyType::X25519,
    KeyType::MlDsa44,
    KeyType::MlDsa65,
    KeyType::MlDsa87,
    KeyType::MlKem512,
    KeyType::MlKem768,
    KeyType::MlKem1024,
];
/// Types a derive, an encapsulation or a decapsulation may produce.
const DERIVABLE: &[KeyType] = &[
    KeyType::ChaCha20Poly1305,
    KeyType::Aes256Gcm,
    KeyType::HmacSha256,
];

/// Types with versions (rotation): their outputs record the version that made them.
const VERSIONED: &[KeyType] = &[
    KeyType::ChaCha20Poly1305,
    KeyType::Aes256Gcm,
    KeyType::HmacSha256,
];
/// Operations a grant may give: using a key, never managing it.
pub const GRANTABLE: UsageSet = UsageSet::of_const(&[
    Usage::Sign,
    Usage::Verify,
    Usage::Encrypt,
    Usage::Decrypt,
    Usage::Mac,
    Usage::Derive,
    Usage::Encapsulate,
    Usage::Decapsulate,
]);

/// What the description of `op`'s kind says it needs of its key (its usage flags, whether only
/// the owner may do it, its name in the audit log), for key types `types`.
const fn of(op: Opcode, verb: &'static str, types: &'static [KeyType]) -> Requirement {
    let kind = op.kind();
    let (usage, also) = kind.key.usages();
    Requirement {
        verb,
        op: kind.name,
        usage,
        also,
        types,
        exportable: false,
        owner_only: kind.key.owner_only(),
    }
}

/// Sign.
pub const SIGN: Requirement = of(Opcode::Sign, "sign", SIGNERS);
/// Sign a digest (ECDSA only).
pub const SIGN_DIGEST: Requirement = of(Opcode::SignDigest, "sign a digest", &[KeyType::P256]);
/// Verify over a digest (ECDSA only).
pub const VERIFY_DIGEST: Requirement =
    of(Opcode::VerifyDigest, "verify a digest", &[KeyType::P256]);
/// Verify.
pub const VERIFY: Requirement = of(Opcode::Verify, "verify", SIGNERS);
/// Sign with a context string (ML-DSA only).
pub const SIGN_CONTEXT: Requirement = of(Opcode::SignContext, "sign with a context", ML_DSA);
/// Verify with a context string (ML-DSA only).
pub const VERIFY_CONTEXT: Requirement = of(Opcode::VerifyContext, "verify with a context", ML_DSA);
/// Encapsulate to a key (ML-KEM).
pub const ENCAPSULATE: Requirement = of(Opcode::Encapsulate, "encapsulate to", ML_KEM);
/// Decapsulate with a key (ML-KEM).
pub const DECAPSULATE: Requirement = of(Opcode::Decapsulate, "decapsulate with", ML_KEM);
/// Encrypt.
pub const ENCRYPT: Requirement = of(Opcode::Encrypt, "encrypt", AEADS);
/// Encrypt in the standard layout (PKCS#11).
pub const ENCRYPT_RAW: Requirement = of(Opcode::EncryptRaw, "encrypt", AEADS);
/// Decrypt.
pub const DECRYPT: Requirement = of(Opcode::Decrypt, "decrypt", AEADS);
/// Decrypt the standard layout (PKCS#11).
pub const DECRYPT_RAW: Requirement = of(Opcode::DecryptRaw, "decrypt", AEADS);
/// Re-encrypt under the current version: decrypt and encrypt.
pub const REWRAP: Requirement = of(Opcode::Rewrap, "rewrap", AEADS);
/// MAC compute.
pub const MAC: Requirement = of(Opcode::Mac, "mac", &[KeyType::HmacSha256]);
/// MAC verify.
pub const MAC_VERIFY: Requirement = of(Opcode::MacVerify, "mac", &[KeyType::HmacSha256]);
/// Derive.
pub const DERIVE: Requirement = of(Opcode::Derive, "derive", &[KeyType::X25519]);
/// Wrap another key with this one.
pub const WRAP: Requirement = of(Opcode::Wrap, "wrap with", &[KeyType::Aes256Gcm]);
/// Unwrap a blob with this key.
pub const UNWRAP: Requirement = of(Opcode::Unwrap, "unwrap with", &[KeyType::Aes256Gcm]);
/// Be wrapped (the key whose material leaves sealed): the caller's own key, any type, no
/// usage flag needed.
pub const WRAPPED: Requirement = Requirement {
    usage: None,
    also: None,
    ..of(Opcode::Wrap, "wrap", &KeyType::ALL)
};
/// Describe (info): any key of the caller's, or granted to the caller.
pub const DESCRIBE: Requirement = of(Opcode::Info, "describe", &KeyType::ALL);
/// Read the public half.
pub const PUBLIC_KEY: Requirement = of(Opcode::PublicKey, "read the public key of", ASYMMETRIC);
/// Export the raw secret.
pub const EXPORT: Requirement = Requirement {
    exportable: true,
    ..of(Opcode::Export, "export", &KeyType::ALL)
};
/// Delete.
pub const DELETE: Requirement = of(Opcode::Delete, "delete", &KeyType::ALL);
/// Grant to another client.
pub const GRANT: Requirement = of(Opcode::Grant, "grant", &KeyType::ALL);
/// Revoke a grant.
pub const REVOKE: Requirement = of(Opcode::Revoke, "revoke a grant of", &KeyType::ALL);
/// Add a version.
pub const ROTATE: Requirement = of(Opcode::Rotate, "rotate", VERSIONED);
/// Retire old versions.
pub const RETIRE: Requirement = of(Opcode::Retire, "retire versions of", VERSIONED);

/// Checks that `ops`, granted to the caller on `key`, cover `req`: only operations that use a
/// key can be granted, so an owner-only operation (export, delete, wrap, grant, rotate, ...) is
/// always refused; describing the key and reading its public half come with any grant.
pub fn check_granted(key: &KeyRef, ops: UsageSet, req: Requirement) -> Result<(), OpError> {
    let covered = |u: Option<Usage>| u.is_none_or(|u| ops.contains(u));
    if req.owner_only || req.exportable || !covered(req.usage) || !covered(req.also) {
        return Err(OpError::new(
            Status::UsageNotPermitted,
            format!(
                "cannot {} key {key}: it is granted to you for {} only",
                req.verb,
                ops.names().join(",")
            ),
        ));
    }
    Ok(())
}

/// The operations of a grant: non-empty, operations that use a key (never wrap or unwrap), and
/// usages the key itself has.
pub fn grant_ops(info: &KeyInfo, ops: UsageSet) -> Result<UsageSet, OpError> {
    if ops.is_empty() {
        return Err(OpError::invalid("--ops is empty"));
    }
    if !ops.is_subset(GRANTABLE) {
        return Err(OpError::invalid(format!(
            "only {} can be granted",
            GRANTABLE.names().join(", ")
        )));
    }
    if !ops.is_subset(info.usage) {
        return Err(OpError::new(
            Status::UsageNotPermitted,
            format!(
                "key {} permits only {}; a grant cannot add usages",
                info.label,
                info.usage.names().join(",")
            ),
        ));
    }
    Ok(ops)
}

/// Whether `target` may be wrapped under `wrapper`: an exportable key under any wrap key; a
/// non-exportable one only under a non-exportable wrap key that the server's config marks as
/// trusted for backup (`trusted`), so wrapping never launders a key out of the HSM. Unwrap
/// applies the same rule to the blob's recorded exportable flag.
pub fn may_wrap(
    target_exportable: bool,
    target: &str,
    wrapper: &KeyInfo,
    trusted: bool,
) -> Result<(), OpError> {
    if target_exportable {
        return Ok(());
    }
    if wrapper.exportable {
        return Err(OpError::new(
            Status::NotExportable,
            format!(
                "key {target} is not exportable, and wrap key {} is: it could be exported and \
                 the blob opened outside the HSM",
                wrapper.label
            ),
        ));
    }
    if !trusted {
        return Err(OpError::new(
            Status::NotExportable,
            format!(
                "key {target} is not exportable, and wrap key {} is not listed in this client's \
                 trusted_wrap_keys in hsmd.toml",
                wrapper.label
            ),
        ));
    }
    Ok(())
}

/// Checks that the key described by `info` may be used for `req`: the type first, then the
/// usage flag, then exportability.
pub fn check(info: &KeyInfo, req: Requirement) -> Result<(), OpError> {
    let t = info.key_type;
    if !req.types.contains(&t) {
        let msg = if req.types == ASYMMETRIC {
            format!("key {} of type {t} has no public key", info.label)
        } else {
            format!("cannot {} with key {} of type {t}", req.verb, info.label)
        };
        return Err(OpError::new(Status::WrongKeyType, msg));
    }
    for u in [req.usage, req.also].into_iter().flatten() {
        if !info.usage.contains(u) {
            return Err(OpError::new(
                Status::UsageNotPermitted,
                format!("key {} does not permit usage {}", info.label, u.name()),
            ));
        }
    }
    if req.exportable && !info.exportable {
        return Err(OpError::new(
            Status::NotExportable,
            format!("key {} is not exportable", info.label),
        ));
    }
    Ok(())
}

/// A new key, as policy allows it: everything the key manager needs to create it.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Type.
    pub key_type: KeyType,
    /// Label.
    pub label: Label,
    /// Resolved usages.
    pub usage: UsageSet,
    /// Exportable.
    pub exportable: bool,
    /// Session key (memory only) instead of persistent.
    pub session: bool,
    /// Where it comes from.
    pub origin: Origin,
    /// The operation that makes it, for the audit log (hsmctl's command name).
    pub made_by: &'static str,
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

/// A key to generate.
pub fn generated(spec: &KeySpec) -> Result<NewKey, OpError> {
    Ok(NewKey {
        key_type: spec.key_type,
        label: spec.label.clone(),
        usage: usage_for_new_key(spec.key_type, spec.usage)?,
        exportable: spec.exportable,
        session: spec.session,
        origin: Origin::Generated,
        made_by: Opcode::Generate.kind().name,
    })
}

/// A key to derive from `base` (already authorized for [`DERIVE`]). Only symmetric types may
/// be derived, and a derived key is never more exportable than its base: deriving again from
/// the same base and peer gives the same key, so an exportable copy would reveal the first.
pub fn derived(base: &KeyInfo, spec: &KeySpec) -> Result<NewKey, OpError> {
    if !DERIVABLE.contains(&spec.key_type) {
        return Err(OpError::invalid(format!(
            "cannot derive a {} key; expected chacha20poly1305, aes256gcm or hmac-sha256",
            spec.key_type
        )));
    }
    if spec.exportable && !base.exportable {
        return Err(OpError::new(
            Status::NotExportable,
            format!(
                "key {} is not exportable, so a key derived from it cannot be either",
                base.label
            ),
        ));
    }
    Ok(NewKey {
        origin: Origin::Derived,
        made_by: Opcode::Derive.kind().name,
        ..generated(spec)?
    })
}

/// The key an encapsulation makes (its 32-byte shared secret): a symmetric type, as for
/// derive. It may be exportable: the secret is fresh, and the peer learns it anyway.
pub fn encapsulated(spec: &KeySpec) -> Result<NewKey, OpError> {
    check_secret_type("an encapsulated", spec.key_type)?;
    Ok(NewKey {
        origin: Origin::Derived,
        made_by: Opcode::Encapsulate.kind().name,
        ..generated(spec)?
    })
}

/// The key a decapsulation with `base` (already authorized for [`DECAPSULATE`]) makes: a
/// symmetric type, never more exportable than `base`, by derive's reasoning: decapsulating
/// the same ciphertext again gives the same secret, so an exportable copy would reveal a
/// non-exportable key made before.
pub fn decapsulated(base: &KeyInfo, spec: &KeySpec) -> Result<NewKey, OpError> {
    check_secret_type("a decapsulated", spec.key_type)?;
    if spec.exportable && !base.exportable {
        return Err(OpError::new(
            Status::NotExportable,
            format!(
                "key {} is not exportable, so a key decapsulated with it cannot be either",
                base.label
            ),
        ));
    }
    Ok(NewKey {
        origin: Origin::Derived,
        made_by: Opcode::Decapsulate.kind().name,
        ..generated(spec)?
    })
}

fn check_secret_type(what: &str, t: KeyType) -> Result<(), OpError> {
    if DERIVABLE.contains(&t) {
        return Ok(());
    }
    Err(OpError::invalid(format!(
        "{what} secret cannot be a {t} key; expected aes256gcm, chacha20poly1305 or hmac-sha256"
    )))
}

/// A key to import.
pub fn imported(spec: &KeySpec) -> Result<NewKey, OpError> {
    Ok(NewKey {
        origin: Origin::Imported,
        made_by: Opcode::Import.kind().name,
        ..generated(spec)?
    })
}

/// A key to unwrap: type, usage and exportable exactly as the blob recorded them (never
/// widened), a label of the caller's choosing, origin `unwrapped`.
pub fn unwrapped(
    key_type: KeyType,
    usage: UsageSet,
    exportable: bool,
    label: Label,
) -> Result<NewKey, OpError> {
    if usage.is_empty() || !usage.is_subset(key_type.allowed_usage()) {
        return Err(OpError::invalid(format!(
            "the blob's usage {} does not fit a {key_type} key",
            usage.names().join(",")
        )));
    }
    Ok(NewKey {
        key_type,
        label,
        usage,
        exportable,
        session: false,
        origin: Origin::Unwrapped,
        made_by: Opcode::Unwrap.kind().name,
    })
}

impl NewKey {
    /// The hsmctl command that makes the key (for the audit log).
    pub fn op(&self) -> &'static str {
        self.made_by
    }
}

/// A random request's length: 1..=MAX_RANDOM bytes.
pub fn random_len(len: u32) -> Result<usize, OpError> {
    if len == 0 || len > ferrohsm_proto::MAX_RANDOM {
        return Err(OpError::invalid(format!(
            "random length {len} is out of range 1..={}",
            ferrohsm_proto::MAX_RANDOM
        )));
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests;
