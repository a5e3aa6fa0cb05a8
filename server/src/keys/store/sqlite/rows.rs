//! [`Backend`] for SQLite: rows in and out, as stored. Every statement is prepared once per
//! connection (`prepare_cached`).

use ferrohsm_proto::KeyRef;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SqliteBackend, backend};
use crate::keys::audit::AuditRow;
use crate::keys::store::backend::{
    Backend, ChangeLog, Counted, CounterRow, GrantRow, KeyFilter, KeyRow, Tx, VersionRow,
};
use crate::keys::store::records::StoreError;

/// The key table's columns, in the order [`key_row`] reads them.
pub(super) const COLUMNS: &str =
    "owner, id, label, key_type, usage, exportable, origin, created, version";

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        owner: r.get(0)?,
        id: r.get(1)?,
        label: r.get(2)?,
        key_type: r.get(3)?,
        usage: r.get(4)?,
        exportable: r.get(5)?,
        origin: r.get(6)?,
        created: r.get(7)?,
        version: r.get(8)?,
        versions: Vec::new(),
    })
}

/// The version rows of key `(owner, id)`, oldest first.
fn versions_of(conn: &Connection, owner: &str, id: i64) -> Result<Vec<VersionRow>, StoreError> {
    conn.prepare_cached(
        "SELECT version, created, sealed FROM key_versions WHERE owner = ?1 AND id = ?2 \
         ORDER BY version",
    )
    .and_then(|mut st| {
        st.query_map(params![owner, id], |r| {
            Ok(VersionRow {
                version: r.get(0)?,
                created: r.get(1)?,
                sealed: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(backend)
}

fn with_versions(conn: &Connection, mut row: KeyRow) -> Result<KeyRow, StoreError> {
    row.versions = versions_of(conn, &row.owner, row.id)?;
    Ok(row)
}

fn execute(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute(p))
        .map_err(backend)
}

impl SqliteBackend {
    fn claim_id(&mut self, owner: &str, label: &str) -> Result<Option<i64>, StoreError> {
        if self.label_in_use(owner, label)? {
            return Ok(None);
        }
        execute(
            &self.conn,
            "INSERT INTO owners (owner, next_id) VALUES (?1, 1) ON CONFLICT (owner) DO NOTHING",
            params![owner],
        )?;
        self.conn
            .prepare_cached(
                "UPDATE owners SET next_id = next_id + 1 WHERE owner = ?1 RETURNING next_id - 1",
            )
            .and_then(|mut st| st.query_row(params![owner], |r| r.get(0)))
            .map(Some)
            .map_err(backend)
    }

    fn insert_key(&mut self, row: &KeyRow) -> Result<(), StoreError> {
        execute(
            &self.conn,
            &format!("INSERT INTO keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                row.owner,
                row.id,
                row.label,
                row.key_type,
                row.usage,
                row.exportable,
                row.origin,
                row.created,
                row.version,
            ],
        )?;
        for v in &row.versions {
            self.insert_version(&row.owner, row.id, v)?;
        }
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn change_log(&mut self) -> Option<&mut dyn ChangeLog> {
        // One process holds the file (its lock): there is nobody to tell.
        None
    }

    fn reader(&self) -> Result<Box<dyn Backend>, StoreError> {
        super::reader(&self.path)
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`: every committed page back in keys.db and the WAL
    /// emptied; a checkpoint another connection kept from finishing (busy) is an error.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let (busy, log, done): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| {
                StoreError::Backend(format!("checkpoint of {}: {e}", self.path.display()))
            })?;
        if busy != 0 || done < log {
            return Err(StoreError::Backend(format!(
                "checkpoint of {}: {done} of {log} WAL pages written back (busy)",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn begin(&mut self, tx: Tx) -> Result<(), StoreError> {
        self.tx_begin(tx)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.tx_commit()
    }

    fn rollback(&mut self) {
        self.tx_rollback()
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("SAVEPOINT change")
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("RELEASE change")
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("ROLLBACK TO change; RELEASE change")
    }

    fn key(&mut self, owner: &str, key: &KeyRef) -> Result<Option<KeyRow>, StoreError> {
        let conn = &self.conn;
        let row = match key {
            KeyRef::Id(id) | KeyRef::OwnerId(_, id) => conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM keys WHERE owner = ?1 AND id = ?2"
                ))
                .and_then(|mut st| st.query_row(params![owner, id], key_row).optional()),
            KeyRef::Label(l) | KeyRef::OwnerLabel(_, l) => conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM keys WHERE owner = ?1 AND label = ?2"
                ))
                .and_then(|mut st| st.query_row(params![owner, l.as_str()], key_row).optional()),
        }
        .map_err(backend)?;
        row.map(|r| with_versions(conn, r)).transpose()
    }

    fn keys(
        &mut self,
        owner: &str,
        filter: &KeyFilter,
        after: u32,
        limit: usize,
    ) -> Result<Vec<KeyRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One statement per combination of filters, each answered by the primary key or an
        // index: (owner, id), (owner, label), (owner, key_type, id).
        let mut sql = format!("SELECT {COLUMNS} FROM keys WHERE owner = :owner AND id > :after");
        if filter.id.is_some() {
            sql.push_str(" AND id = :id");
        }
        if filter.label.is_some() {
            sql.push_str(" AND label = :label");
        }
        if filter.key_type.is_some() {
            sql.push_str(" AND key_type = :key_type");
        }
        sql.push_str(" ORDER BY id LIMIT :limit");
        let conn = &self.conn;
        let mut st = conn.prepare_cached(&sql).map_err(backend)?;
        let mut p: Vec<(&str, &dyn rusqlite::ToSql)> =
            vec![(":owner", &owner), (":after", &after), (":limit", &limit)];
        let label = filter.label.as_ref().map(|l| l.as_str());
        let key_type = filter.key_type.map(|t| t.name());
        if let Some(id) = &filter.id {
            p.push((":id", id));
        }
        if let Some(l) = &label {
            p.push((":label", l));
        }
        if let Some(t) = &key_type {
            p.push((":key_type", t));
        }
        let rows = st
            .query_map(p.as_slice(), key_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(backend)?;
        rows.into_iter().map(|r| with_versions(conn, r)).collect()
    }

    fn label_in_use(&mut self, owner: &str, label: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM keys WHERE owner = ?1 AND label = ?2")
            .and_then(|mut st| st.exists(params![owner, label]))
            .map_err(backend)
    }

    fn count_by_owner(&mut self, table: Counted) -> Result<Vec<(String, i64)>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT owner, COUNT(*) FROM {} GROUP BY owner",
                table.table()
            ))
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }

    fn count_owned(&mut self, table: Counted, owner: &str) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM {} WHERE owner = ?1",
                table.table()
            ))
            .and_then(|mut st| st.query_row([owner], |r| r.get(0)))
            .map_err(backend)
    }

    fn claim_ids(&mut self, keys: &[(&str, &str)]) -> Result<Vec<Option<i64>>, StoreError> {
        keys.iter()
            .map(|(owner, label)| self.claim_id(owner, label))
            .collect()
    }

    fn insert_keys(&mut self, rows: &[KeyRow]) -> Result<(), StoreError> {
        rows.iter().try_for_each(|r| self.insert_key(r))
    }

    fn insert_version(&mut self, owner: &str, id: i64, v: &VersionRow) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "INSERT INTO key_versions (owner, id, version, created, sealed) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![owner, id, v.version, v.created, v.sealed],
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
        execute(
            &self.conn,
            "UPDATE key_versions SET sealed = ?4 WHERE owner = ?1 AND id = ?2 AND version = ?3",
            params![owner, id, version, sealed],
        )?;
        Ok(())
    }

    fn retire_below(&mut self, owner: &str, id: i64, below: i64) -> Result<(), StoreError> {
        // secure_delete is on: the sealed bytes are overwritten in the file, not just unlinked.
        execute(
            &self.conn,
            "UPDATE key_versions SET sealed = NULL WHERE owner = ?1 AND id = ?2 AND version < ?3",
            params![owner, id, below],
        )?;
        Ok(())
    }

    fn set_version(&mut self, owner: &str, id: i64, version: i64) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "UPDATE keys SET version = ?3 WHERE owner = ?1 AND id = ?2",
            params![owner, id, version],
        )?;
        Ok(())
    }

    fn delete_key(&mut self, owner: &str, id: i64) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM key_versions WHERE owner = ?1 AND id = ?2",
            "DELETE FROM grants WHERE owner = ?1 AND id = ?2",
            "DELETE FROM keys WHERE owner = ?1 AND id = ?2",
        ] {
            execute(&self.conn, sql, params![owner, id])?;
        }
        Ok(())
    }

    fn grant(
        &mut self,
        owner: &str,
        id: i64,
        grantee: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT ops, created, tag FROM grants WHERE owner = ?1 AND id = ?2 AND grantee = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![owner, id, grantee], |r| {
                    Ok(GrantRow {
                        owner: owner.to_string(),
                        id,
                        grantee: grantee.to_string(),
                        ops: r.get(0)?,
                        created: r.get(1)?,
                        tag: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(backend)
    }

    fn grants(&mut self) -> Result<Vec<GrantRow>, StoreError> {
        self.conn
            .prepare_cached("SELECT owner, id, grantee, ops, created, tag FROM grants")
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok(GrantRow {
                        owner: r.get(0)?,
                        id: r.get(1)?,
                        grantee: r.get(2)?,
                        ops: r.get(3)?,
                        created: r.get(4)?,
                        tag: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }

    fn put_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "INSERT INTO grants (owner, id, grantee, ops, created, tag) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (owner, id, grantee) DO UPDATE SET ops = excluded.ops, \
             created = excluded.created, tag = excluded.tag",
            params![g.owner, g.id, g.grantee, g.ops, g.created, g.tag],
        )?;
        Ok(())
    }

    fn delete_grant(&mut self, owner: &str, id: i64, grantee: &str) -> Result<bool, StoreError> {
        let n = execute(
            &self.conn,
            "DELETE FROM grants WHERE owner = ?1 AND id = ?2 AND grantee = ?3",
            params![owner, id, grantee],
        )?;
        Ok(n > 0)
    }

    fn counter(&mut self, owner: &str, name: &str) -> Result<Option<CounterRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT value, created, tag FROM counters WHERE owner = ?1 AND name = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![owner, name], |r| {
                    Ok(CounterRow {
                        owner: owner.to_string(),
                        name: name.to_string(),
                        value: r.get(0)?,
                        created: r.get(1)?,
                        tag: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(backend)
    }

    fn put_counter(&mut self, c: &CounterRow) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "INSERT INTO counters (owner, name, value, created, tag) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value, tag = excluded.tag",
            params![c.owner, c.name, c.value, c.created, c.tag],
        )?;
        Ok(())
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE name = ?1")
            .and_then(|mut st| st.query_row([name], |r| r.get(0)).optional())
            .map_err(backend)
    }

    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "INSERT INTO meta (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    fn delete_meta(&mut self, name: &str) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "DELETE FROM meta WHERE name = ?1",
            params![name],
        )?;
        Ok(())
    }

    fn audit_last(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        self.conn
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(backend)
    }

    fn audit_append(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        for row in rows {
            execute(
                &self.conn,
                "INSERT INTO audit (seq, time, client, session, transport, op, key, detail, \
                 status, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
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
                ],
            )?;
        }
        Ok(())
    }

    fn owners(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        self.conn
            .prepare_cached("SELECT owner, next_id FROM owners ORDER BY owner")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }

    fn put_owner(&mut self, owner: &str, next_id: i64) -> Result<(), StoreError> {
        execute(
            &self.conn,
            "INSERT INTO owners (owner, next_id) VALUES (?1, ?2) \
             ON CONFLICT (owner) DO UPDATE SET next_id = excluded.next_id",
            params![owner, next_id],
        )?;
        Ok(())
    }

    fn counters(&mut self) -> Result<Vec<CounterRow>, StoreError> {
        self.conn
            .prepare_cached("SELECT owner, name, value, created, tag FROM counters")
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok(CounterRow {
                        owner: r.get(0)?,
                        name: r.get(1)?,
                        value: r.get(2)?,
                        created: r.get(3)?,
                        tag: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }

    fn meta_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.conn
            .prepare_cached("SELECT name, value FROM meta ORDER BY name")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }

    fn is_empty(&mut self) -> Result<bool, StoreError> {
        for table in ["owners", "keys", "grants", "counters", "audit"] {
            let any = self
                .conn
                .prepare(&format!("SELECT 1 FROM {table} LIMIT 1"))
                .and_then(|mut st| st.exists([]))
                .map_err(backend)?;
            if any {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn audit_rows(&mut self, since: u64) -> Result<Vec<AuditRow>, StoreError> {
        self.conn
            .prepare(
                "SELECT seq, time, client, session, transport, op, key, detail, status, \
                 prev_hash, hash FROM audit WHERE seq >= ?1 ORDER BY seq",
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
                        prev_hash: AuditRow::hash_as_read(r.get(9)?),
                        hash: AuditRow::hash_as_read(r.get(10)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
    }
}
