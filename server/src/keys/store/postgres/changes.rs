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
use crate::keys::store::backend::{ChangeLog, ChangeRow};
use crate::keys::store::records::StoreError;

/// The notification channel (batch.rs sends on it).
const CHANNEL: &str = "ferrohsm_changes";
/// Changes kept in the log (older ones are deleted as new ones are written).
pub const KEEP: i64 = 100_000;
/// The log is pruned when a batch passes a position that is a multiple of this.
const PRUNE_EVERY: i64 = 1024;

impl PgBackend {
    /// Prunes the log when the `n` rows up to `last` passed a multiple of [`PRUNE_EVERY`].
    pub(super) fn pruned(&mut self, last: i64, n: usize) -> Result<(), StoreError> {
        let first = last - n as i64 + 1;
        if (first - 1) / PRUNE_EVERY != last / PRUNE_EVERY {
            self.execute("DELETE FROM changes WHERE seq <= $1", &[&(last - KEEP)])?;
        }
        Ok(())
    }
}

impl ChangeLog for PgBackend {
    fn instance(&self) -> &str {
        &self.settings.instance
    }

    fn since(&mut self, after: i64, limit: usize) -> Result<(i64, Vec<ChangeRow>), StoreError> {
        // The head and the rows after `after`, in one statement (one snapshot, one round
        // trip): a row with a NULL position when there is nothing after it.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(
            "SELECT h.head, c.seq, c.origin, c.kind, c.owner, c.id, c.grantee \
             FROM (SELECT COALESCE(MAX(seq), 0) AS head FROM changes) h \
             LEFT JOIN LATERAL (SELECT * FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2) c \
             ON TRUE ORDER BY c.seq",
            &[&after, &limit],
        )?;
        let read = self.rows(rows, |r| {
            let head: i64 = r.try_get(0)?;
            let change = match r.try_get::<_, Option<i64>>(1)? {
                None => None,
                Some(seq) => Some(ChangeRow {
                    seq,
                    origin: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    owner: r.try_get(4)?,
                    id: r.try_get(5)?,
                    grantee: r.try_get(6)?,
                }),
            };
            Ok((head, change))
        })?;
        let head = read.first().map_or(0, |(h, _)| *h);
        Ok((head, read.into_iter().filter_map(|(_, c)| c).collect()))
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        if self.listening != Some(self.connections) || self.client.is_none() {
            // A new connection is not subscribed: subscribe before waiting on it.
            self.exec(&format!("LISTEN {CHANNEL}"))?;
            self.listening = Some(self.connections);
        }
        let what = self.what.clone();
        let me = self.settings.instance.clone();
        let r = {
            let c = self.client()?;
            let mut n = c.notifications();
            // Another process's commit, or any commit that changed a grant (an empty name);
            // this process's own other commits are skipped (batch.rs).
            let theirs = |p: &str| p != me;
            let first = n.timeout_iter(timeout).next();
            match first {
                // Take whatever else has arrived, without waiting: one look covers them all.
                Ok(Some(note)) => n.iter().fold(theirs(note.payload()), |any, x| {
                    Ok(any || theirs(x.payload()))
                }),
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
