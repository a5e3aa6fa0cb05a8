//! The writes of a batch in as few round trips as PostgreSQL allows: each one costs a trip
//! across the network and a wake-up on both sides, and the store writer waits for each in
//! turn. A write transaction begins, takes the lock and reads the audit head in one trip;
//! the new keys of a batch are two statements (their ids with the label checks, then the rows
//! with every version); and the batch ends with one statement for its audit entries, its
//! change-log rows with their notification, and the signed head.

use postgres::SimpleQueryMessage;

use super::{PgBackend, WRITE_LOCK};
use crate::keys::audit::AuditRow;
use crate::keys::store::backend::{ChangeRow, KeyRow};
use crate::keys::store::records::StoreError;

impl PgBackend {
    /// For every new key of a batch, its owner's next id unless its label is taken, in one
    /// statement: free labels are numbered per owner in request order, and each owner's
    /// `next_id` moves past them all at once.
    pub(super) fn claim_ids_now(
        &mut self,
        keys: &[(&str, &str)],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let owners: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let labels: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let wrote = self.wrote;
        let rows = self.query(
            "WITH req AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY \
             AS r(owner, label, n)), \
             free AS (SELECT r.owner, r.n, \
             row_number() OVER (PARTITION BY r.owner ORDER BY r.n) AS k FROM req r \
             WHERE NOT EXISTS (SELECT 1 FROM keys WHERE keys.owner = r.owner \
             AND keys.label = r.label)), \
             per AS (SELECT owner, COUNT(*) AS c FROM free GROUP BY owner), \
             bumped AS (INSERT INTO owners (owner, next_id) SELECT owner, 1 + c FROM per \
             ON CONFLICT (owner) DO UPDATE SET next_id = owners.next_id + excluded.next_id - 1 \
             RETURNING owner, next_id) \
             SELECT b.next_id - p.c + f.k - 1 FROM req r \
             LEFT JOIN free f ON f.n = r.n LEFT JOIN per p ON p.owner = f.owner \
             LEFT JOIN bumped b ON b.owner = f.owner ORDER BY r.n",
            &[&owners, &labels],
        )?;
        let ids = self.rows(rows, |r| r.try_get::<_, Option<i64>>(0))?;
        if ids.len() != keys.len() {
            return Err(StoreError::Backend(format!(
                "database {}: {} ids answered for {} new keys",
                self.what,
                ids.len(),
                keys.len()
            )));
        }
        // Only a claimed id is a write (a taken label changed nothing).
        self.wrote = wrote || ids.iter().any(Option::is_some);
        Ok(ids)
    }

    /// Key rows with every version, in one statement.
    pub(super) fn insert_keys_now(&mut self, rows: &[KeyRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&KeyRow) -> &str| -> Vec<&str> { rows.iter().map(f).collect() };
        let int = |f: fn(&KeyRow) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
        let (owner, label, key_type, origin) = (
            col(|r| &r.owner),
            col(|r| &r.label),
            col(|r| &r.key_type),
            col(|r| &r.origin),
        );
        let (id, usage, exportable) = (int(|r| r.id), int(|r| r.usage), int(|r| r.exportable));
        let (created, version) = (int(|r| r.created), int(|r| r.version));
        let all = || {
            rows.iter()
                .flat_map(|r| r.versions.iter().map(move |v| (r, v)))
        };
        let v_owner: Vec<&str> = all().map(|(r, _)| r.owner.as_str()).collect();
        let v_id: Vec<i64> = all().map(|(r, _)| r.id).collect();
        let v_version: Vec<i64> = all().map(|(_, v)| v.version).collect();
        let v_created: Vec<i64> = all().map(|(_, v)| v.created).collect();
        let v_sealed: Vec<Option<&[u8]>> = all().map(|(_, v)| v.sealed.as_deref()).collect();
        self.execute(
            "WITH k AS (INSERT INTO keys (owner, id, label, key_type, usage, exportable, origin, \
             created, version) SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], \
             $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BIGINT[], $9::BIGINT[])) \
             INSERT INTO key_versions (owner, id, version, created, sealed) \
             SELECT * FROM unnest($10::TEXT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], \
             $14::BYTEA[])",
            &[
                &owner,
                &id,
                &label,
                &key_type,
                &usage,
                &exportable,
                &origin,
                &created,
                &version,
                &v_owner,
                &v_id,
                &v_version,
                &v_created,
                &v_sealed,
            ],
        )?;
        Ok(())
    }

    /// Audit rows, in order, in one statement.
    pub(super) fn audit_append_now(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.finish_now(rows, &[], None).map(|_| ())
    }

    /// Begins a write transaction, takes the write lock and (with `head`) reads the audit
    /// log's last entry, the batch's first question, in one round trip.
    pub(super) fn begin_write(&mut self, head: bool) -> Result<(), StoreError> {
        let what = self.what.clone();
        let read = if head {
            "; SELECT seq, encode(hash, 'hex') FROM audit ORDER BY seq DESC LIMIT 1"
        } else {
            ""
        };
        let r = self.client()?.simple_query(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK}){read}"
        ));
        let messages = r.map_err(|e| self.failed(&what, e))?;
        let damaged =
            || StoreError::Backend(format!("database {what}: the audit head is unreadable"));
        let mut last = None;
        for m in messages {
            // The lock's row has one column; the audit head's has two.
            if let SimpleQueryMessage::Row(row) = m
                && row.len() == 2
            {
                let seq = row
                    .get(0)
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(damaged)?;
                let hash = row
                    .get(1)
                    .and_then(crate::config::decode_hex)
                    .ok_or_else(damaged)?;
                last = Some((seq, hash));
            }
        }
        self.audit_head = head.then_some(last);
        Ok(())
    }

    /// A batch's audit rows, change-log rows (with their notification) and signed head, in
    /// one statement; the last log position written (0: none).
    pub(super) fn finish_now(
        &mut self,
        audit: &[AuditRow],
        changes: &[ChangeRow],
        head: Option<&[u8]>,
    ) -> Result<i64, StoreError> {
        let int =
            |f: fn(&AuditRow) -> u64| -> Vec<i64> { audit.iter().map(|r| f(r) as i64).collect() };
        let text = |f: fn(&AuditRow) -> &str| -> Vec<&str> { audit.iter().map(f).collect() };
        let (seq, time, session) = (int(|r| r.seq), int(|r| r.time_ms), int(|r| r.session));
        let (client, transport, op) =
            (text(|r| &r.client), text(|r| &r.transport), text(|r| &r.op));
        let (key, detail, status) = (text(|r| &r.key), text(|r| &r.detail), text(|r| &r.status));
        let prev: Vec<&[u8]> = audit.iter().map(|r| &r.prev_hash[..]).collect();
        let hash: Vec<&[u8]> = audit.iter().map(|r| &r.hash[..]).collect();
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
        let rows = self.query(
            "WITH a AS (INSERT INTO audit (seq, time, client, session, transport, op, key, \
             detail, status, prev_hash, hash) \
             SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], \
             $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BYTEA[], \
             $11::BYTEA[])), \
             h AS (INSERT INTO meta (name, value) SELECT 'audit_head', $12::BYTEA \
             WHERE $12::BYTEA IS NOT NULL \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value), \
             base AS (SELECT COALESCE(MAX(seq), 0) AS m FROM changes), \
             added AS (INSERT INTO changes (seq, origin, kind, owner, id, grantee) \
             SELECT base.m + u.n, $13, u.kind, u.owner, u.id, u.grantee FROM base, \
             unnest($14::TEXT[], $15::TEXT[], $16::BIGINT[], $17::TEXT[]) WITH ORDINALITY \
             AS u(kind, owner, id, grantee, n) RETURNING seq) \
             SELECT (SELECT MAX(seq) FROM added), \
             (SELECT pg_notify('ferrohsm_changes', $18) WHERE cardinality($14::TEXT[]) > 0)",
            &[
                &seq, &time, &client, &session, &transport, &op, &key, &detail, &status, &prev,
                &hash, &head, &origin, &kind, &owner, &id, &grantee, &from,
            ],
        )?;
        let last = self
            .rows(rows, |r| r.try_get::<_, Option<i64>>(0))?
            .into_iter()
            .next()
            .flatten()
            .unwrap_or(0);
        if last > 0 {
            self.pruned(last, changes.len())?;
        }
        Ok(last)
    }
}
