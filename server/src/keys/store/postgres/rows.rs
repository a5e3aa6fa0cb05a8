//! [`Backend`] for PostgreSQL: rows in and out, as stored, through statements prepared once
//! per connection.

use ferrohsm_proto::KeyRef;
use postgres::Row;
use postgres::types::ToSql;

use super::PgBackend;
use crate::keys::audit::AuditRow;
use crate::keys::store::backend::{
    Backend, ChangeLog, ChangeRow, Counted, CounterRow, GrantRow, KeyFilter, KeyRow, Tx, VersionRow,
};
use crate::keys::store::records::StoreError;

/// The key table's columns, in the order [`key_row`] reads them.
const COLUMNS: &str = "owner, id, label, key_type, usage, exportable, origin, created, version";

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn key_row(r: &Row) -> Result<KeyRow, postgres::Error> {
    Ok(KeyRow {
        owner: r.try_get(0)?,
        id: r.try_get(1)?,
        label: r.try_get(2)?,
        key_type: r.try_get(3)?,
        usage: r.try_get(4)?,
        exportable: r.try_get(5)?,
        origin: r.try_get(6)?,
        created: r.try_get(7)?,
        version: r.try_get(8)?,
        versions: Vec::new(),
    })
}

impl PgBackend {
    pub(super) fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        let what = self.what.clone();
        let r = self.client()?.query(&st, params);
        let rows = r.map_err(|e| self.failed(&what, e))?;
        // Anything but a plain read may have written (a caller that knows better, the id
        // claim, says so itself).
        if !sql.trim_start().starts_with("SELECT") {
            self.wrote = true;
        }
        Ok(rows)
    }

    pub(super) fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        let what = self.what.clone();
        let r = self.client()?.execute(&st, params);
        let n = r.map_err(|e| self.failed(&what, e))?;
        self.wrote |= n > 0;
        Ok(n)
    }

    /// Converts each row, a column of the wrong type being a store failure.
    pub(super) fn rows<T>(
        &self,
        rows: Vec<Row>,
        f: impl Fn(&Row) -> Result<T, postgres::Error>,
    ) -> Result<Vec<T>, StoreError> {
        rows.iter()
            .map(|r| f(r).map_err(|e| super::refused(&self.what, &e)))
            .collect()
    }

    fn with_versions(&mut self, mut row: KeyRow) -> Result<KeyRow, StoreError> {
        let rows = self.query(
            "SELECT version, created, sealed FROM key_versions WHERE owner = $1 AND id = $2 \
             ORDER BY version",
            &[&row.owner, &row.id],
        )?;
        row.versions = self.rows(rows, |r| {
            Ok(VersionRow {
                version: r.try_get(0)?,
                created: r.try_get(1)?,
                sealed: r.try_get(2)?,
            })
        })?;
        Ok(row)
    }
}

impl Backend for PgBackend {
    fn describe(&self) -> String {
        format!("postgres://{}", self.what)
    }

    fn change_log(&mut self) -> Option<&mut dyn ChangeLog> {
        Some(self)
    }

    fn reader(&self) -> Result<Box<dyn Backend>, StoreError> {
        // Connected at its first transaction, on its own thread.
        Ok(Box::new(PgBackend::new(self.settings.clone())?))
    }

    fn begin(&mut self, tx: Tx) -> Result<(), StoreError> {
        self.tx_begin(tx)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        // synchronous_commit (on by default): COMMIT returns once the WAL is flushed.
        self.tx_commit()
    }

    fn rollback(&mut self) {
        self.tx_rollback()
    }

    // Savepoints are marks in memory, not statements (two round trips per change saved): the
    // format layer checks every change before it writes, so a change it refuses has written
    // nothing, and there is nothing to undo. A change that fails after writing (a statement
    // error, which also aborts the transaction) cannot be undone alone: the whole batch is
    // refused and rolled back.
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.wrote = false;
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        if self.wrote || self.tx_failed {
            return Err(StoreError::Backend(format!(
                "database {}: a change failed after it began writing; nothing in its batch was \
                 committed",
                self.what
            )));
        }
        Ok(())
    }

    fn key(&mut self, owner: &str, key: &KeyRef) -> Result<Option<KeyRow>, StoreError> {
        let rows = match key {
            KeyRef::Id(id) | KeyRef::OwnerId(_, id) => self.query(
                &format!("SELECT {COLUMNS} FROM keys WHERE owner = $1 AND id = $2"),
                &[&owner, &i64::from(*id)],
            )?,
            KeyRef::Label(l) | KeyRef::OwnerLabel(_, l) => self.query(
                &format!("SELECT {COLUMNS} FROM keys WHERE owner = $1 AND label = $2"),
                &[&owner, &l.as_str()],
            )?,
        };
        let row = self.rows(rows, key_row)?.into_iter().next();
        row.map(|r| self.with_versions(r)).transpose()
    }

    fn keys(
        &mut self,
        owner: &str,
        filter: &KeyFilter,
        after: u32,
        limit: usize,
    ) -> Result<Vec<KeyRow>, StoreError> {
        let (after, limit) = (i64::from(after), i64::try_from(limit).unwrap_or(i64::MAX));
        let label = filter.label.as_ref().map(|l| l.as_str().to_string());
        let id = filter.id.map(i64::from);
        let key_type = filter.key_type.map(|t| t.name().to_string());
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&owner, &after, &limit];
        // One statement per combination of filters, each answered by the primary key or an
        // index: (owner, id), (owner, label), (owner, key_type, id).
        let mut sql = format!("SELECT {COLUMNS} FROM keys WHERE owner = $1 AND id > $2");
        if let Some(id) = &id {
            params.push(id);
            sql.push_str(&format!(" AND id = ${}", params.len()));
        }
        if let Some(l) = &label {
            params.push(l);
            sql.push_str(&format!(" AND label = ${}", params.len()));
        }
        if let Some(t) = &key_type {
            params.push(t);
            sql.push_str(&format!(" AND key_type = ${}", params.len()));
        }
        sql.push_str(" ORDER BY id LIMIT $3");
        let rows = self.query(&sql, &params)?;
        let mut rows = self.rows(rows, key_row)?;
        if rows.is_empty() {
            return Ok(rows);
        }
        // Every returned key's versions in one round trip, not one each.
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let versions = self.query(
            "SELECT id, version, created, sealed FROM key_versions WHERE owner = $1 \
             AND id = ANY($2) ORDER BY id, version",
            &[&owner, &ids],
        )?;
        let versions = self.rows(versions, |r| {
            Ok((
                r.try_get::<_, i64>(0)?,
                VersionRow {
                    version: r.try_get(1)?,
                    created: r.try_get(2)?,
                    sealed: r.try_get(3)?,
                },
            ))
        })?;
        let mut by_id: std::collections::HashMap<i64, Vec<VersionRow>> = Default::default();
        for (id, v) in versions {
            by_id.entry(id).or_default().push(v);
        }
        for r in &mut rows {
            r.versions = by_id.remove(&r.id).unwrap_or_default();
        }
        Ok(rows)
    }

    fn label_in_use(&mut self, owner: &str, label: &str) -> Result<bool, StoreError> {
        let rows = self.query(
            "SELECT 1 FROM keys WHERE owner = $1 AND label = $2",
            &[&owner, &label],
        )?;
        Ok(!rows.is_empty())
    }

    fn count_by_owner(&mut self, table: Counted) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = format!(
            "SELECT owner, COUNT(*) FROM {} GROUP BY owner",
            table.table()
        );
        let rows = self.query(&sql, &[])?;
        self.rows(rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
    }

    fn count_owned(&mut self, table: Counted, owner: &str) -> Result<i64, StoreError> {
        // Kept by triggers (schema 4): one row, however many the owner holds.
        let rows = self.query(
            "SELECT COALESCE((SELECT n FROM held WHERE owner = $1 AND what = $2), 0)",
            &[&owner, &table.table()],
        )?;
        self.rows(rows, |r| r.try_get::<_, i64>(0))
            .map(|v| v.first().copied().unwrap_or(0))
    }

    fn claim_ids(&mut self, keys: &[(&str, &str)]) -> Result<Vec<Option<i64>>, StoreError> {
        self.claim_ids_now(keys)
    }

    fn insert_keys(&mut self, rows: &[KeyRow]) -> Result<(), StoreError> {
        self.insert_keys_now(rows)
    }

    fn insert_version(&mut self, owner: &str, id: i64, v: &VersionRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO key_versions (owner, id, version, created, sealed) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&owner, &id, &v.version, &v.created, &v.sealed],
        )?;
        Ok(())
    }

    fn set_sealed(
        &mut self,
        owner: &str,
        id: i64,
        version: i64,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE key_versions SET sealed = $4 WHERE owner = $1 AND id = $2 AND version = $3",
            &[&owner, &id, &version, &sealed],
        )?;
        Ok(())
    }

    fn retire_below(&mut self, owner: &str, id: i64, below: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE key_versions SET sealed = NULL WHERE owner = $1 AND id = $2 AND version < $3",
            &[&owner, &id, &below],
        )?;
        Ok(())
    }

    fn set_version(&mut self, owner: &str, id: i64, version: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE keys SET version = $3 WHERE owner = $1 AND id = $2",
            &[&owner, &id, &version],
        )?;
        Ok(())
    }

    fn delete_key(&mut self, owner: &str, id: i64) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM key_versions WHERE owner = $1 AND id = $2",
            "DELETE FROM grants WHERE owner = $1 AND id = $2",
            "DELETE FROM keys WHERE owner = $1 AND id = $2",
        ] {
            self.execute(sql, &[&owner, &id])?;
        }
        Ok(())
    }

    fn grant(
        &mut self,
        owner: &str,
        id: i64,
        grantee: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        let rows = self.query(
            "SELECT ops, created, tag FROM grants WHERE owner = $1 AND id = $2 AND grantee = $3",
            &[&owner, &id, &grantee],
        )?;
        let found = self.rows(rows, |r| {
            Ok(GrantRow {
                owner: owner.to_string(),
                id,
                grantee: grantee.to_string(),
                ops: r.try_get(0)?,
                created: r.try_get(1)?,
                tag: r.try_get(2)?,
            })
        })?;
        Ok(found.into_iter().next())
    }

    fn grants(&mut self) -> Result<Vec<GrantRow>, StoreError> {
        let rows = self.query(
            "SELECT owner, id, grantee, ops, created, tag FROM grants",
            &[],
        )?;
        self.rows(rows, |r| {
            Ok(GrantRow {
                owner: r.try_get(0)?,
                id: r.try_get(1)?,
                grantee: r.try_get(2)?,
                ops: r.try_get(3)?,
                created: r.try_get(4)?,
                tag: r.try_get(5)?,
            })
        })
    }

    fn put_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO grants (owner, id, grantee, ops, created, tag) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (owner, id, grantee) DO UPDATE SET ops = excluded.ops, \
             created = excluded.created, tag = excluded.tag",
            &[&g.owner, &g.id, &g.grantee, &g.ops, &g.created, &g.tag],
        )?;
        Ok(())
    }

    fn delete_grant(&mut self, owner: &str, id: i64, grantee: &str) -> Result<bool, StoreError> {
        let n = self.execute(
            "DELETE FROM grants WHERE owner = $1 AND id = $2 AND grantee = $3",
            &[&owner, &id, &grantee],
        )?;
        Ok(n > 0)
    }

    fn counter(&mut self, owner: &str, name: &str) -> Result<Option<CounterRow>, StoreError> {
        let rows = self.query(
            "SELECT value, created, tag FROM counters WHERE owner = $1 AND name = $2",
            &[&owner, &name],
        )?;
        Ok(self
            .rows(rows, |r| {
                Ok(CounterRow {
                    owner: owner.to_string(),
                    name: name.to_string(),
                    value: r.try_get(0)?,
                    created: r.try_get(1)?,
                    tag: r.try_get(2)?,
                })
            })?
            .into_iter()
            .next())
    }

    fn put_counter(&mut self, c: &CounterRow) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO counters (owner, name, value, created, tag) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value, tag = excluded.tag",
            &[&c.owner, &c.name, &c.value, &c.created, &c.tag],
        )?;
        Ok(())
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query("SELECT value FROM meta WHERE name = $1", &[&name])?;
        Ok(self
            .rows(rows, |r| r.try_get::<_, Vec<u8>>(0))?
            .into_iter()
            .next())
    }

    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )?;
        Ok(())
    }

    fn delete_meta(&mut self, name: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM meta WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn audit_last(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        if let Some(head) = self.audit_head.take() {
            return Ok(head);
        }
        let rows = self.query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
        Ok(self
            .rows(rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))?
            .into_iter()
            .next())
    }

    fn audit_append(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.audit_head = None;
        self.audit_append_now(rows)
    }

    fn finish(
        &mut self,
        audit: &[AuditRow],
        changes: &[ChangeRow],
        head: Option<&[u8]>,
    ) -> Result<i64, StoreError> {
        self.audit_head = None;
        self.finish_now(audit, changes, head)
    }

    fn owners(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self.query("SELECT owner, next_id FROM owners ORDER BY owner", &[])?;
        self.rows(rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
    }

    fn put_owner(&mut self, owner: &str, next_id: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO owners (owner, next_id) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET next_id = excluded.next_id",
            &[&owner, &next_id],
        )?;
        Ok(())
    }

    fn counters(&mut self) -> Result<Vec<CounterRow>, StoreError> {
        let rows = self.query("SELECT owner, name, value, created, tag FROM counters", &[])?;
        self.rows(rows, |r| {
            Ok(CounterRow {
                owner: r.try_get(0)?,
                name: r.try_get(1)?,
                value: r.try_get(2)?,
                created: r.try_get(3)?,
                tag: r.try_get(4)?,
            })
        })
    }

    fn meta_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.query("SELECT name, value FROM meta ORDER BY name", &[])?;
        self.rows(rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
    }

    fn is_empty(&mut self) -> Result<bool, StoreError> {
        for table in ["owners", "keys", "grants", "counters", "audit"] {
            let rows = self.query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])?;
            if !rows.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn audit_rows(&mut self, since: u64) -> Result<Vec<AuditRow>, StoreError> {
        let since = since.min(i64::MAX as u64) as i64;
        let rows = self.query(
            "SELECT seq, time, client, session, transport, op, key, detail, status, prev_hash, \
             hash FROM audit WHERE seq >= $1 ORDER BY seq",
            &[&since],
        )?;
        self.rows(rows, |r| {
            Ok(AuditRow {
                seq: r.try_get::<_, i64>(0)? as u64,
                time_ms: r.try_get::<_, i64>(1)? as u64,
                client: r.try_get(2)?,
                session: r.try_get::<_, i64>(3)? as u64,
                transport: r.try_get(4)?,
                op: r.try_get(5)?,
                key: r.try_get(6)?,
                detail: r.try_get(7)?,
                status: r.try_get(8)?,
                prev_hash: AuditRow::hash_as_read(r.try_get(9)?),
                hash: AuditRow::hash_as_read(r.try_get(10)?),
            })
        })
    }
}
