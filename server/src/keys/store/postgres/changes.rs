//! The change log several nodes follow: each write transaction appends what it changed to
//! `changes` (under the write lock, so positions are consecutive and in commit order) and
//! sends `NOTIFY ferrohsm_changes`, delivered when it commits. A node listens on a connection
//! of its own and reads the log from the last position it applied, so a notification that
//! never arrived (a dropped connection) costs latency, never a missed change; the log keeps
//! the last [`KEEP`] changes, and a node further behind than that starts over from the
//! database.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::PgBackend;
use crate::keys::store::StoreError;
use crate::keys::store::backend::{ChangeLog, ChangeRow};

/// The notification channel (batch.rs sends on it).
const CHANNEL: &str = "ferrohsm_changes";
/// Changes kept in the log (older ones are deleted as new ones are written).
pub const KEEP: i64 = 100_000;
/// The log is pruned when a batch passes a position that is a multiple of this.
const PRUNE_EVERY: i64 = 1024;

impl ChangeLog for PgBackend {
    fn instance(&self) -> &str {
        &self.settings.instance
    }

    fn note(&mut self, changes: &[ChangeRow]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // The rows and the NOTIFY (delivered at commit) in one statement (batch.rs).
        let last = self.note_now(changes)?;
        let first = last - changes.len() as i64 + 1;
        if (first - 1) / PRUNE_EVERY != last / PRUNE_EVERY {
            self.execute("DELETE FROM changes WHERE seq <= $1", &[&(last - KEEP)])?;
        }
        Ok(())
    }

    fn since(&mut self, after: i64, limit: usize) -> Result<(i64, Vec<ChangeRow>), StoreError> {
        let rows = self.query("SELECT COALESCE(MAX(seq), 0) FROM changes", &[])?;
        let head = self
            .rows(rows, |r| r.try_get::<_, i64>(0))?
            .first()
            .copied()
            .unwrap_or(0);
        if head <= after {
            return Ok((head, Vec::new()));
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(
            "SELECT seq, origin, kind, owner, id, grantee FROM changes WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
            &[&after, &limit],
        )?;
        let changes = self.rows(rows, |r| {
            Ok(ChangeRow {
                seq: r.try_get(0)?,
                origin: r.try_get(1)?,
                kind: r.try_get(2)?,
                owner: r.try_get(3)?,
                id: r.try_get(4)?,
                grantee: r.try_get(5)?,
            })
        })?;
        Ok((head, changes))
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        if self.listening != Some(self.connections) || self.client.is_none() {
            // A new connection is not subscribed: subscribe before waiting on it.
            self.exec(&format!("LISTEN {CHANNEL}"))?;
            self.listening = Some(self.connections);
        }
        let what = self.what.clone();
        let r = {
            let c = self.client()?;
            let mut n = c.notifications();
            let first = n.timeout_iter(timeout).next();
            // Take whatever else has arrived, without waiting: one look covers them all.
            match first {
                Ok(Some(_)) => n.iter().count().map(|_| true),
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            }
        };
        r.map_err(|e| self.failed(&what, e))
    }

    fn connections(&self) -> u64 {
        self.connections
    }
}
