//! The audit chain in the store: the audit key (sealed under the master key), each entry
//! chained to the one before, and the head signed at every commit.

use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::store::Store;
use crate::keys::audit::{AuditRow, GENESIS, SignedHead};
use crate::keys::seal::MasterKey;
use crate::keys::store::backend::{Backend, Counted, Tx};
use crate::keys::store::records::{AuditEvent, StoreError};

/// The audit log, the signed head and the audit public key, as one snapshot read them.
pub type AuditSnapshot = (
    Vec<AuditRow>,
    Option<SignedHead>,
    Option<ed25519_dalek::VerifyingKey>,
);

impl Store {
    /// Keys stored, and audit entries in the chain (its last sequence number: the chain
    /// starts at 1 and has no gaps).
    pub fn stored(&mut self) -> Result<(u64, u64), StoreError> {
        self.in_tx(Tx::Read, |db| {
            let keys: i64 = db
                .count_by_owner(Counted::Keys)?
                .into_iter()
                .map(|(_, n)| n)
                .sum();
            let audit = last(db)?.0;
            Ok((u64::try_from(keys).unwrap_or(0), audit))
        })
    }

    /// The audit key's public half, creating the audit key (sealed under `master`) if this
    /// store has none yet.
    pub fn ensure_audit_key(
        &mut self,
        master: &MasterKey,
    ) -> Result<ed25519_dalek::VerifyingKey, StoreError> {
        let key = self.in_tx(Tx::Write, |db| signing_key(db, master, true))?;
        let public = key.verifying_key();
        self.audit_key = Some(key);
        Ok(public)
    }

    /// The audit log from `since`, the signed head and the audit public key, read in one
    /// snapshot (consistent while hsmd appends).
    pub fn audit_snapshot(&mut self, since: u64) -> Result<AuditSnapshot, StoreError> {
        self.in_tx(Tx::Read, |db| {
            let rows = db.audit_rows(since)?;
            let head = head(db)?;
            let public = public_key(db)?;
            Ok((rows, head, public))
        })
    }

    /// The signed head, signed now by the audit key (for a checkpoint).
    pub fn sign_head(&mut self, master: &MasterKey) -> Result<SignedHead, StoreError> {
        let (last, key) = self.in_tx(Tx::Read, |db| {
            Ok((last(db)?, signing_key(db, master, false)?))
        })?;
        Ok(SignedHead::sign(&key, last.0, last.1))
    }
}

const AUDIT_KEY_AAD: &[u8] = b"FerroHSM audit key v1\0";

fn damaged(what: &str) -> StoreError {
    StoreError::Open(format!(
        "the key store's {what} is damaged; refusing to use it (restore the store from a backup)"
    ))
}

/// The audit key's public half as stored (no secret needed).
pub(super) fn public_key(db: &mut dyn Backend) -> Result<Option<VerifyingKey>, StoreError> {
    let Some(b) = db.meta("audit_pub")? else {
        return Ok(None);
    };
    let raw: [u8; 32] = b.try_into().map_err(|_| damaged("audit public key"))?;
    VerifyingKey::from_bytes(&raw)
        .map(Some)
        .map_err(|_| damaged("audit public key"))
}

/// The audit signing key, unsealed; created (in the current write transaction) if the store has none.
pub(super) fn signing_key(
    db: &mut dyn Backend,
    master: &MasterKey,
    create: bool,
) -> Result<SigningKey, StoreError> {
    match db.meta("audit_key")? {
        Some(sealed) => {
            let seed = master
                .open_with(AUDIT_KEY_AAD, &sealed)
                .map_err(|_| damaged("audit key"))?;
            let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
                seed.as_slice()
                    .try_into()
                    .map_err(|_| damaged("audit key"))?,
            );
            let key = SigningKey::from_bytes(&seed);
            if public_key(db)? != Some(key.verifying_key()) {
                return Err(damaged("audit public key"));
            }
            Ok(key)
        }
        // Made only when a store is opened for serving (a store from before the audit
        // chain); a key that disappears while serving is damage, never replaced.
        None if !create => Err(damaged("audit key (it is missing)")),
        None => {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut())
                .map_err(|_| StoreError::Backend("OS random source failed".into()))?;
            let key = SigningKey::from_bytes(&seed);
            let sealed = master
                .seal_with(AUDIT_KEY_AAD, seed.as_ref())
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            db.put_meta("audit_key", &sealed)?;
            db.put_meta("audit_pub", key.verifying_key().as_bytes())?;
            Ok(key)
        }
    }
}

/// The last entry's sequence number and hash (`(0, GENESIS)` for an empty log).
pub(super) fn last(db: &mut dyn Backend) -> Result<(u64, [u8; 32]), StoreError> {
    match db.audit_last()? {
        None => Ok((0, GENESIS)),
        Some((seq, hash)) => Ok((
            u64::try_from(seq).map_err(|_| damaged("audit log"))?,
            hash.try_into().map_err(|_| damaged("audit log"))?,
        )),
    }
}

/// Chains `e` after `head`, which becomes the new entry; the row joins `out`, written with
/// the rest of its batch.
pub(super) fn append(out: &mut Vec<AuditRow>, head: &mut (u64, [u8; 32]), e: &AuditEvent) {
    let row = AuditRow::chain(e, head.0 + 1, head.1);
    *head = (row.seq, row.hash);
    out.push(row);
}

/// The signed head as stored.
pub(super) fn head(db: &mut dyn Backend) -> Result<Option<SignedHead>, StoreError> {
    db.meta("audit_head")?
        .map(|b| SignedHead::from_bytes(&b).ok_or_else(|| damaged("signed audit head")))
        .transpose()
}
