//! Several nodes on one database: each commit writes what it changed to the backend's change
//! log ([`ChangeLog`]), the database counts the quotas (no node's memory knows what the others
//! hold), and a node reads the log to learn what the others changed. The log names rows only;
//! a grant it names is read back here with its tag checked, so a log row edited by hand can
//! make a node drop a cached key or re-read a grant, never honour one that does not
//! authenticate.

use std::sync::Arc;
use std::time::Duration;

use super::apply;
use super::store::Store;
use crate::keys::quota::QuotaLimits;
use crate::keys::seal::MasterKey;
use crate::keys::store::backend::{Backend, ChangeRow, Counted, Tx};
use crate::keys::store::records::{Applied, Changed, Followed, GrantRecord, Mutation, StoreError};

/// Where a node following the change log starts ([`Store::snapshot`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The change log's last position.
    pub head: i64,
    /// Every grant that authenticates.
    pub grants: Vec<GrantRecord>,
    /// (owner, keys, counters) held.
    pub held: Vec<(String, usize, usize)>,
}

/// Changes read from the log in one look, at most.
const PAGE: usize = 4096;

/// What a mutation will change, for the log (its id filled in from the result).
pub(super) fn noted(m: &Mutation) -> Option<ChangeRow> {
    let row = |kind: &str, owner: &str, id: u32, grantee: &str| ChangeRow {
        seq: 0,
        origin: String::new(),
        kind: kind.into(),
        owner: owner.into(),
        id: i64::from(id),
        grantee: grantee.into(),
    };
    Some(match m {
        Mutation::Create { record, .. } => row("key-created", &record.owner, 0, ""),
        Mutation::Delete { owner, .. } => row("key-deleted", owner, 0, ""),
        Mutation::Rotate { owner, id, .. } | Mutation::Retire { owner, id, .. } => {
            row("key-changed", owner, *id, "")
        }
        Mutation::Grant(g) => row("grant", &g.owner, g.id, &g.grantee),
        Mutation::Revoke { owner, id, grantee } => row("revoke", owner, *id, grantee),
        Mutation::CounterCreate { owner, .. } => row("counter-created", owner, 0, ""),
        Mutation::CounterInc { .. } | Mutation::Record => return None,
    })
}

/// The quota counts a batch has read, kept up to date by its own changes (one read per owner
/// and table per batch, not one per change).
#[derive(Debug, Default)]
pub(super) struct Counts(std::collections::HashMap<(Counted, String), i64>);

impl Counts {
    /// Before `m` is applied, in the write transaction: the quota it would count against,
    /// checked against what the database holds when several nodes share it (under the write
    /// lock every node's commits are in order, so the count is exact). Checked before any
    /// write, so a refusal leaves nothing to undo.
    pub(super) fn check(
        &mut self,
        db: &mut dyn Backend,
        limits: Option<&QuotaLimits>,
        m: &Mutation,
    ) -> Result<(), StoreError> {
        let Some(limits) = limits else { return Ok(()) };
        if db.change_log().is_none() {
            return Ok(());
        }
        let (table, owner, limit) = match m {
            // A new key takes its place in create.rs (`Counts::take_key`).
            Mutation::CounterCreate { owner, .. } => (Counted::Counters, owner, limits.counters),
            // Replacing a grant takes no new place.
            Mutation::Grant(g) => {
                if db.grant(&g.owner, i64::from(g.id), &g.grantee)?.is_some() {
                    return Ok(());
                }
                (Counted::Grants, &g.owner, limits.grants)
            }
            _ => return Ok(()),
        };
        self.room(db, table, owner, limit)
    }

    /// A place for one more new key of `owner`, taken now (given back by
    /// [`Counts::give_back`] if the key is not made after all).
    pub(super) fn take_key(
        &mut self,
        db: &mut dyn Backend,
        limits: Option<&QuotaLimits>,
        owner: &str,
    ) -> Result<(), StoreError> {
        if let Some(limits) = limits
            && db.change_log().is_some()
        {
            self.room(db, Counted::Keys, owner, limits.keys)?;
        }
        self.add(Counted::Keys, owner, 1);
        Ok(())
    }

    /// Gives back a place [`Counts::take_key`] took.
    pub(super) fn give_back(&mut self, owner: &str) {
        self.add(Counted::Keys, owner, -1);
    }

    fn room(
        &mut self,
        db: &mut dyn Backend,
        table: Counted,
        owner: &str,
        limit: usize,
    ) -> Result<(), StoreError> {
        let key = (table, owner.to_string());
        let held = match self.0.get(&key) {
            Some(n) => *n,
            None => {
                let n = db.count_owned(table, owner)?;
                self.0.insert(key, n);
                n
            }
        };
        if usize::try_from(held).unwrap_or(usize::MAX) >= limit {
            return Err(StoreError::Quota(format!(
                "too many {} for client {owner}: the cluster holds {held}, the most allowed \
                 ({} in [limits])",
                table.table(),
                match table {
                    Counted::Keys => "max_keys_per_client",
                    Counted::Counters => "max_counters_per_client",
                    Counted::Grants => "max_grants_per_client",
                }
            )));
        }
        Ok(())
    }

    fn add(&mut self, table: Counted, owner: &str, n: i64) {
        if let Some(c) = self.0.get_mut(&(table, owner.to_string())) {
            *c += n;
        }
    }

    /// After a change succeeded: what it adds to the counts (or, where the count is not
    /// known here, forgets it, to be read again). A new key's place was taken already.
    fn applied(&mut self, row: &ChangeRow) {
        match row.kind.as_str() {
            "counter-created" => self.add(Counted::Counters, &row.owner, 1),
            "key-deleted" => {
                self.add(Counted::Keys, &row.owner, -1);
                // Its grants went with it.
                self.0.remove(&(Counted::Grants, row.owner.clone()));
            }
            "grant" | "revoke" => {
                self.0.remove(&(Counted::Grants, row.owner.clone()));
            }
            _ => {}
        }
    }

    /// After `applied` succeeded in the write transaction: its row for the change log (when
    /// several nodes share the database), written with the rest of the batch.
    pub(super) fn record(
        &mut self,
        db: &mut dyn Backend,
        mut row: ChangeRow,
        applied: &Applied,
        out: &mut Vec<ChangeRow>,
    ) {
        if db.change_log().is_none() {
            return;
        }
        match applied {
            Applied::Created(h) => row.id = i64::from(h.info.id),
            Applied::Key(r) => row.id = i64::from(r.id),
            Applied::Counter(_) | Applied::Done => {}
        }
        self.applied(&row);
        out.push(row);
    }
}

impl Store {
    /// Whether other processes write the same database (its changes must be followed).
    pub fn shared(&mut self) -> bool {
        self.db.change_log().is_some()
    }

    /// Counts the quotas in the database at every creation (a store several nodes share).
    pub fn enforce_limits(&mut self, limits: QuotaLimits) {
        self.limits = Some(limits);
    }

    /// How many connections this handle has made (a new one may have missed notifications).
    pub fn connections(&mut self) -> u64 {
        self.db.change_log().map_or(0, |l| l.connections())
    }

    /// Waits up to `timeout` for another commit to be announced (`false`: none was). A store
    /// that nobody else writes only sleeps.
    pub fn wait_change(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        match self.db.change_log() {
            Some(log) => log.wait(timeout),
            None => {
                std::thread::sleep(timeout);
                Ok(false)
            }
        }
    }

    /// In one snapshot: the change log's last position, every grant (each tag checked) and
    /// how many keys and counters each owner holds: where a node following the log starts.
    pub fn snapshot(&mut self, master: &MasterKey) -> Result<Snapshot, StoreError> {
        self.in_tx(Tx::Read, |db| {
            let head = match db.change_log() {
                Some(log) => log.since(i64::MAX, 0)?.0,
                None => 0,
            };
            Ok(Snapshot {
                head,
                grants: apply::grants(db, master)?,
                held: held(db)?,
            })
        })
    }

    /// One grant as the database holds it now (`None`: none, or one that does not
    /// authenticate).
    pub fn grant(
        &mut self,
        master: &MasterKey,
        owner: &str,
        id: u32,
        grantee: &str,
    ) -> Result<Option<GrantRecord>, StoreError> {
        self.in_tx(Tx::Read, |db| {
            Ok(db
                .grant(owner, i64::from(id), grantee)?
                .and_then(|row| apply::grant_of(master, row)))
        })
    }

    /// What other processes changed after position `after` of the change log, in one
    /// snapshot (grants read back and checked).
    pub fn follow(&mut self, master: &MasterKey, after: i64) -> Result<Followed, StoreError> {
        self.in_tx(Tx::Read, |db| {
            let Some(log) = db.change_log() else {
                return Ok(Followed::Changes {
                    upto: after,
                    head: after,
                    changes: Vec::new(),
                });
            };
            let me = log.instance().to_string();
            let (head, rows) = log.since(after, PAGE)?;
            if head < after || (head > after && rows.first().is_none_or(|r| r.seq != after + 1)) {
                return Ok(Followed::Behind { head });
            }
            let upto = rows.last().map_or(head, |r| r.seq);
            let mut changes = Vec::with_capacity(rows.len());
            for r in rows {
                let own = r.origin == me;
                match changed(db, master, r)? {
                    Some(c) => changes.push((c, own)),
                    // A kind this build does not know (a newer node wrote it): start over.
                    None => return Ok(Followed::Behind { head }),
                }
            }
            Ok(Followed::Changes {
                upto,
                head,
                changes,
            })
        })
    }
}

/// A log row as a change (`None`: a row this build cannot read).
fn changed(
    db: &mut dyn Backend,
    master: &MasterKey,
    r: ChangeRow,
) -> Result<Option<Changed>, StoreError> {
    let owner: Arc<str> = Arc::from(r.owner.as_str());
    let Ok(id) = u32::try_from(r.id) else {
        return Ok(None);
    };
    Ok(Some(match r.kind.as_str() {
        "key-created" => Changed::KeyCreated { owner },
        "key-changed" => Changed::KeyChanged { owner, id },
        "key-deleted" => Changed::KeyDeleted { owner, id },
        "grant" | "revoke" => {
            // A row that does not authenticate is no grant.
            let now = db
                .grant(&r.owner, r.id, &r.grantee)?
                .and_then(|row| apply::grant_of(master, row));
            Changed::Grant {
                owner,
                id,
                grantee: Arc::from(r.grantee.as_str()),
                now,
            }
        }
        "counter-created" => Changed::CounterCreated { owner },
        _ => return Ok(None),
    }))
}

/// (owner, keys, counters) for every owner that holds any.
pub(super) fn held(db: &mut dyn Backend) -> Result<Vec<(String, usize, usize)>, StoreError> {
    let mut held: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for (owner, n) in db.count_by_owner(Counted::Keys)? {
        held.entry(owner).or_default().0 = usize::try_from(n).unwrap_or(0);
    }
    for (owner, n) in db.count_by_owner(Counted::Counters)? {
        held.entry(owner).or_default().1 = usize::try_from(n).unwrap_or(0);
    }
    Ok(held.into_iter().map(|(o, (k, c))| (o, k, c)).collect())
}
