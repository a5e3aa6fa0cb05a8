//! The audit table, the audit key and the signed head, in SQLite.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use super::{SqliteStore, backend};
use crate::keys::audit::{AuditRow, GENESIS, SignedHead};
use crate::keys::seal::MasterKey;
use crate::keys::store::{AuditEvent, StoreError};

/// The audit log, the signed head and the audit public key, as one snapshot read them.
pub type AuditSnapshot = (
    Vec<AuditRow>,
    Option<SignedHead>,
    Option<ed25519_dalek::VerifyingKey>,
);

impl SqliteStore {
    /// The audit key's public half, creating the audit key (sealed under `master`) if this
    /// store has none yet.
    pub fn ensure_audit_key(
        &mut self,
        master: &MasterKey,
    ) -> Result<ed25519_dalek::VerifyingKey, StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let key = signing_key(&tx, master)?;
        tx.commit().map_err(backend)?;
        let public = key.verifying_key();
        self.audit_key = Some(key);
        Ok(public)
    }

    /// The audit log from `since`, the signed head and the audit public key, read in one
    /// snapshot (consistent while hsmd appends).
    pub fn audit_snapshot(&mut self, since: u64) -> Result<AuditSnapshot, StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let rows = rows(&tx, since)?;
        let head = head(&tx)?;
        let public = public_key(&tx)?;
        tx.finish().map_err(backend)?;
        Ok((rows, head, public))
    }

    /// The signed head, signed now by the audit key (for a checkpoint).
    pub fn sign_head(&mut self, master: &MasterKey) -> Result<SignedHead, StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let last = last(&tx)?;
        let key = signing_key(&tx, master)?;
        tx.finish().map_err(backend)?;
        Ok(SignedHead::sign(&key, last.0, last.1))
    }
}

const AUDIT_KEY_AAD: &[u8] = b"FerroHSM audit key v1\0";

fn meta(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .map_err(backend)
}

fn put_meta(conn: &Connection, name: &str, value: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut st| st.execute(params![name, value]))
    .map_err(backend)?;
    Ok(())
}

fn damaged(what: &str) -> StoreError {
    StoreError::Open(format!(
        "the key store's {what} is damaged; refusing to use it (restore the store from a backup)"
    ))
}

/// The audit key's public half as stored (no secret needed).
pub(super) fn public_key(conn: &Connection) -> Result<Option<VerifyingKey>, StoreError> {
    let Some(b) = meta(conn, "audit_pub")? else {
        return Ok(None);
    };
    let raw: [u8; 32] = b.try_into().map_err(|_| damaged("audit public key"))?;
    VerifyingKey::from_bytes(&raw)
        .map(Some)
        .map_err(|_| damaged("audit public key"))
}

/// The audit signing key, unsealed; created (in `conn`'s transaction) if the store has none.
pub(super) fn signing_key(conn: &Connection, master: &MasterKey) -> Result<SigningKey, StoreError> {
    match meta(conn, "audit_key")? {
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
            if public_key(conn)? != Some(key.verifying_key()) {
                return Err(damaged("audit public key"));
            }
            Ok(key)
        }
        None => {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut())
                .map_err(|_| StoreError::Backend("OS random source failed".into()))?;
            let key = SigningKey::from_bytes(&seed);
            let sealed = master
                .seal_with(AUDIT_KEY_AAD, seed.as_ref())
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            put_meta(conn, "audit_key", &sealed)?;
            put_meta(conn, "audit_pub", key.verifying_key().as_bytes())?;
            Ok(key)
        }
    }
}

/// The last entry's sequence number and hash (`(0, GENESIS)` for an empty log).
pub(super) fn last(conn: &Connection) -> Result<(u64, [u8; 32]), StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(backend)?;
    match row {
        None => Ok((0, GENESIS)),
        Some((seq, hash)) => Ok((
            u64::try_from(seq).map_err(|_| damaged("audit log"))?,
            hash.try_into().map_err(|_| damaged("audit log"))?,
        )),
    }
}

/// Appends `e` after `head`, which becomes the new entry.
pub(super) fn append(
    conn: &Connection,
    head: &mut (u64, [u8; 32]),
    e: &AuditEvent,
) -> Result<(), StoreError> {
    let row = AuditRow::chain(e, head.0 + 1, head.1);
    conn.prepare_cached(
        "INSERT INTO audit (seq, time, client, session, transport, op, key, detail, status, \
         prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            row.seq as i64,
            row.time_ms as i64,
            row.client,
            row.session as i64,
            row.transport,
            row.op,
            row.key,
            row.detail,
            row.status,
            &row.prev_hash[..],
            &row.hash[..]
        ])
    })
    .map_err(backend)?;
    *head = (row.seq, row.hash);
    Ok(())
}

/// Stores the signed head.
pub(super) fn put_head(conn: &Connection, head: &SignedHead) -> Result<(), StoreError> {
    put_meta(conn, "audit_head", &head.to_bytes())
}

/// The signed head as stored.
pub(super) fn head(conn: &Connection) -> Result<Option<SignedHead>, StoreError> {
    meta(conn, "audit_head")?
        .map(|b| SignedHead::from_bytes(&b).ok_or_else(|| damaged("signed audit head")))
        .transpose()
}

/// Every entry from `since`, by sequence number. A row whose fields do not fit is returned
/// with what could be read, so `verify` names it as edited rather than failing to read.
pub(super) fn rows(conn: &Connection, since: u64) -> Result<Vec<AuditRow>, StoreError> {
    let fix = |b: Vec<u8>| -> [u8; 32] {
        let mut out = [0u8; 32];
        let n = b.len().min(32);
        out[..n].copy_from_slice(&b[..n]);
        out
    };
    conn.prepare(
        "SELECT seq, time, client, session, transport, op, key, detail, status, prev_hash, \
         hash FROM audit WHERE seq >= ?1 ORDER BY seq",
    )
    .and_then(|mut st| {
        st.query_map(params![since.min(i64::MAX as u64) as i64], |r| {
            Ok(AuditRow {
                seq: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                client: r.get(2)?,
                session: r.get::<_, i64>(3)? as u64,
                transport: r.get(4)?,
                op: r.get(5)?,
                key: r.get(6)?,
                detail: r.get(7)?,
                status: r.get(8)?,
                prev_hash: fix(r.get(9)?),
                hash: fix(r.get(10)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(backend)
}
