//! The writes of a batch in as few round trips as PostgreSQL allows: each one costs a trip
//! across the network and a wake-up on both sides, and the store writer waits for each in
//! turn. A new key is two statements (its id with the label check, then the row with every
//! version); a batch's audit entries are one statement, and its change-log rows with their
//! notification one more.

use super::PgBackend;
use crate::keys::audit::AuditRow;
use crate::keys::store::StoreError;
use crate::keys::store::backend::{ChangeRow, KeyRow};

impl PgBackend {
    /// The next id of `owner` unless the label is taken, in one statement.
    pub(super) fn claim_id_now(
        &mut self,
        owner: &str,
        label: &str,
    ) -> Result<Option<i64>, StoreError> {
        let wrote = self.wrote;
        let rows = self.query(
            "WITH taken AS (SELECT EXISTS (SELECT 1 FROM keys WHERE owner = $1 AND label = $2) \
             AS t), \
             claimed AS (INSERT INTO owners (owner, next_id) SELECT $1, 2 FROM taken WHERE NOT t \
             ON CONFLICT (owner) DO UPDATE SET next_id = owners.next_id + 1 \
             RETURNING next_id - 1 AS id) \
             SELECT (SELECT id FROM claimed)",
            &[&owner, &label],
        )?;
        let id = self
            .rows(rows, |r| r.try_get::<_, Option<i64>>(0))?
            .into_iter()
            .next()
            .flatten();
        // Only a claimed id is a write (a taken label changed nothing).
        self.wrote = wrote || id.is_some();
        Ok(id)
    }

    /// A key row with every version, in one statement.
    pub(super) fn insert_key_now(&mut self, row: &KeyRow) -> Result<(), StoreError> {
        let versions: Vec<i64> = row.versions.iter().map(|v| v.version).collect();
        let created: Vec<i64> = row.versions.iter().map(|v| v.created).collect();
        let sealed: Vec<Option<&[u8]>> = row.versions.iter().map(|v| v.sealed.as_deref()).collect();
        self.execute(
            "WITH k AS (INSERT INTO keys (owner, id, label, key_type, usage, exportable, origin, \
             created, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)) \
             INSERT INTO key_versions (owner, id, version, created, sealed) \
             SELECT $1, $2, v, c, s FROM unnest($10::BIGINT[], $11::BIGINT[], $12::BYTEA[]) \
             AS u(v, c, s)",
            &[
                &row.owner,
                &row.id,
                &row.label,
                &row.key_type,
                &row.usage,
                &row.exportable,
                &row.origin,
                &row.created,
                &row.version,
                &versions,
                &created,
                &sealed,
            ],
        )?;
        Ok(())
    }

    /// Audit rows, in order, in one statement.
    pub(super) fn audit_append_now(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let int =
            |f: fn(&AuditRow) -> u64| -> Vec<i64> { rows.iter().map(|r| f(r) as i64).collect() };
        let text = |f: fn(&AuditRow) -> &str| -> Vec<&str> { rows.iter().map(f).collect() };
        let (seq, time, session) = (int(|r| r.seq), int(|r| r.time_ms), int(|r| r.session));
        let (client, transport, op) =
            (text(|r| &r.client), text(|r| &r.transport), text(|r| &r.op));
        let (key, detail, status) = (text(|r| &r.key), text(|r| &r.detail), text(|r| &r.status));
        let prev: Vec<&[u8]> = rows.iter().map(|r| &r.prev_hash[..]).collect();
        let hash: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        self.execute(
            "INSERT INTO audit (seq, time, client, session, transport, op, key, detail, status, \
             prev_hash, hash) \
             SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], \
             $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BYTEA[], \
             $11::BYTEA[])",
            &[
                &seq, &time, &client, &session, &transport, &op, &key, &detail, &status, &prev,
                &hash,
            ],
        )?;
        Ok(())
    }

    /// Change-log rows, in order, with consecutive positions after the last, and the
    /// notification (delivered at commit), in one statement.
    pub(super) fn note_now(&mut self, changes: &[ChangeRow]) -> Result<i64, StoreError> {
        let origin = self.settings.instance.clone();
        let kind: Vec<&str> = changes.iter().map(|c| c.kind.as_str()).collect();
        let owner: Vec<&str> = changes.iter().map(|c| c.owner.as_str()).collect();
        let id: Vec<i64> = changes.iter().map(|c| c.id).collect();
        let grantee: Vec<&str> = changes.iter().map(|c| c.grantee.as_str()).collect();
        // The notification names the writer, so its own follower need not look (it applied
        // these when they committed) - unless a grant changed: grants are applied by the
        // follower alone, on every node, so then every node looks (an empty name).
        let grants = changes
            .iter()
            .any(|c| matches!(c.kind.as_str(), "grant" | "revoke"));
        let from = if grants { "" } else { origin.as_str() };
        // Under the write lock: no other transaction appends until this one ends.
        let rows = self.query(
            "WITH base AS (SELECT COALESCE(MAX(seq), 0) AS m FROM changes), \
             added AS (INSERT INTO changes (seq, origin, kind, owner, id, grantee) \
             SELECT base.m + u.n, $1, u.kind, u.owner, u.id, u.grantee FROM base, \
             unnest($2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[]) WITH ORDINALITY \
             AS u(kind, owner, id, grantee, n) RETURNING seq) \
             SELECT (SELECT MAX(seq) FROM added), pg_notify('ferrohsm_changes', $6)",
            &[&origin, &kind, &owner, &id, &grantee, &from],
        )?;
        let last = self
            .rows(rows, |r| r.try_get::<_, Option<i64>>(0))?
            .into_iter()
            .next()
            .flatten()
            .unwrap_or(0);
        Ok(last)
    }
}
