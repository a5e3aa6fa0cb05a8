//! The upper layer of the store: the at-rest format, the same over every backend
//! (docs/storage.md writes it out).
//!
//! ```text
//!  Store (this layer)      seals each key version to its record; tags grant and counter rows;
//!                          chains and signs the audit log; validates every row read back;
//!                          runs each batch as one transaction with a savepoint per change
//!      |  raw rows, inside transactions it begins and ends
//!  Backend (backend.rs)    sqlite/ (keys.db); holds no key, checks nothing
//! ```
//! A backend can lose or refuse a write, but whatever it returns passes through here: a row
//! that was edited, moved, swapped or rolled back fails to open or authenticate and is refused
//! with `key_store_integrity`, never used.

use ferrohsm_proto::{KeyRef, Label};

use crate::keys::audit::SignedHead;
use crate::keys::handle::KeyHandle;
use crate::keys::seal::{Argon2Params, Kdf, MasterKey, MasterRecord};
use crate::keys::store::backend::{Backend, KeyFilter, Tx};
use crate::keys::store::records::{
    Applied, AuditEvent, Change, GrantRecord, Listed, Mutation, Sealed, StoreError,
};

mod apply;
mod audit;
mod copy;
mod create;
mod follow;
pub mod open;
mod rows;
mod store;

pub use audit::AuditSnapshot;
pub use follow::Snapshot;
pub use store::Store;

/// One key of a listing, opened: its id, and the key or why it does not open.
pub type OpenedKey = (u32, Result<KeyHandle, StoreError>);

impl Store {
    /// The store on an opened backend.
    pub fn new(db: Box<dyn Backend>) -> Store {
        Store {
            db,
            audit_key: None,
            opened: 0,
            limits: None,
            noted: 0,
        }
    }

    /// A new store on an empty backend: records how `master` is wrapped and creates the audit
    /// key; answers the audit key's public half.
    pub fn create(
        db: Box<dyn Backend>,
        master: &MasterKey,
        rec: &MasterRecord,
    ) -> Result<(Store, ed25519_dalek::VerifyingKey), StoreError> {
        let mut s = Store::new(db);
        let place = s.describe();
        // In one write transaction, refusing a store already there: two inits racing on one
        // empty database cannot both write a master key.
        let key = s.in_tx(Tx::Write, |db| {
            if db.meta("wrapped_master")?.is_some() {
                return Err(StoreError::Open(format!(
                    "{place} already holds a FerroHSM key store"
                )));
            }
            put_master_record(db, rec)?;
            audit::signing_key(db, master, true)
        })?;
        let public = key.verifying_key();
        s.audit_key = Some(key);
        Ok((s, public))
    }

    /// What the backend is, for messages.
    pub fn describe(&self) -> String {
        self.db.describe()
    }

    /// Another handle on the same store, for another thread.
    pub fn reader(&self) -> Result<Store, StoreError> {
        Ok(Store::new(self.db.reader()?))
    }

    /// Runs `f` in one transaction of kind `tx`: committed when it succeeds, rolled back when
    /// it or the commit fails.
    fn in_tx<T>(
        &mut self,
        tx: Tx,
        f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Rolled back unless committed: on an error, a failed begin (a PostgreSQL write that
        // began but could not take its lock), or a panic that the store thread catches.
        struct Open<'a>(&'a mut dyn Backend, bool);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.rollback();
                }
            }
        }
        let mut open = Open(self.db.as_mut(), false);
        open.0.begin(tx)?;
        let v = f(&mut *open.0)?;
        open.0.commit()?;
        open.1 = true;
        Ok(v)
    }

    /// Applies `batch` in one durable transaction, with each change's audit entry and then
    /// the queued `denials` appended to the audit chain in the same transaction. The outer
    /// error means nothing was committed; otherwise each change has its own result and every
    /// `Ok` is durable.
    pub fn commit(
        &mut self,
        master: &MasterKey,
        batch: Vec<Change>,
        denials: Vec<AuditEvent>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let key = match self.audit_key.take() {
            Some(k) => k,
            None => self.in_tx(Tx::Read, |db| audit::signing_key(db, master, false))?,
        };
        let limits = self.limits;
        let out = self.in_tx(Tx::Write, |db| {
            let mut head = audit::last(db)?;
            let start = head.0;
            let mut results = Vec::with_capacity(batch.len());
            // The audit rows and change-log rows of the batch, written together at its end.
            let (mut entries, mut changes) = (Vec::new(), Vec::new());
            let mut counts = follow::Counts::default();
            let mut batch = batch.into_iter().peekable();
            while let Some(first) = batch.next() {
                // New keys that follow each other are made together (create.rs).
                if matches!(first.mutation, Mutation::Create { .. }) {
                    let mut run = vec![first];
                    while let Some(next) =
                        batch.next_if(|c| matches!(c.mutation, Mutation::Create { .. }))
                    {
                        run.push(next);
                    }
                    let mut keys = Vec::with_capacity(run.len());
                    let mut after = Vec::with_capacity(run.len());
                    for c in run {
                        let note = follow::noted(&c.mutation);
                        match c.mutation {
                            Mutation::Create { record, versions } => keys.push((record, versions)),
                            _ => unreachable!("only creates are in the run"),
                        }
                        after.push((note, c.audit));
                    }
                    db.savepoint()?;
                    let made = create::create_run(db, master, keys, &mut counts, limits.as_ref())?;
                    db.release_savepoint()?;
                    for (r, (note, audit)) in made.into_iter().zip(after) {
                        if let (Ok(applied), Some(row)) = (&r, note) {
                            counts.record(db, row, applied, &mut changes);
                        }
                        if let Some(e) = audit {
                            audit::append(&mut entries, &mut head, &audited(e, &r));
                        }
                        results.push(r);
                    }
                    continue;
                }
                let Change { mutation, audit } = first;
                // A savepoint per mutation: one that fails leaves no trace and does not affect
                // the others in the batch; its audit entry records the failure. Every change
                // is checked before it writes anything, so a refusal never needs the database
                // to undo writes (PostgreSQL's savepoints are marks, not statements).
                db.savepoint()?;
                let note = follow::noted(&mutation);
                let r = counts
                    .check(db, limits.as_ref(), &mutation)
                    .and_then(|()| apply::apply(db, master, mutation));
                if let (Ok(applied), Some(row)) = (&r, note) {
                    counts.record(db, row, applied, &mut changes);
                }
                if r.is_ok() {
                    db.release_savepoint()?;
                } else {
                    db.rollback_to_savepoint()?;
                }
                if let Some(e) = audit {
                    audit::append(&mut entries, &mut head, &audited(e, &r));
                }
                results.push(r);
            }
            for e in &denials {
                audit::append(&mut entries, &mut head, e);
            }
            // The batch's audit entries, change-log rows and signed head, together.
            let signed =
                (head.0 != start).then(|| SignedHead::sign(&key, head.0, head.1).to_bytes());
            let grants = changes
                .iter()
                .any(|c| matches!(c.kind.as_str(), "grant" | "revoke"));
            let noted = db.finish(&entries, &changes, signed.as_deref())?;
            Ok((results, if grants { noted } else { 0 }))
        });
        // Kept whatever happened: the key does not change with a failed commit.
        self.audit_key = Some(key);
        let (results, noted) = out?;
        if noted > 0 {
            self.noted = noted;
        }
        Ok(results)
    }

    /// The change-log position of this handle's last commit that changed a grant (0: none
    /// yet): what a grant or revoke waits for the follower to apply.
    pub fn noted(&self) -> i64 {
        self.noted
    }

    /// Every grant, each checked against its tag (a grant that does not authenticate is never
    /// honoured; its alarm names it).
    pub fn grants(&mut self, master: &MasterKey) -> Result<Vec<GrantRecord>, StoreError> {
        self.in_tx(Tx::Read, |db| apply::grants(db, master))
    }

    /// A counter's value (its tag checked).
    pub fn counter(
        &mut self,
        master: &MasterKey,
        owner: &str,
        name: &Label,
    ) -> Result<Option<u64>, StoreError> {
        self.in_tx(Tx::Read, |db| {
            Ok(apply::read_counter(db, master, owner, name.as_str())?.map(|(v, _)| v))
        })
    }

    /// One key of `owner`, by id or label, still sealed (the row and its versions from one
    /// snapshot: a delete committed between two reads would otherwise look like a row that
    /// lost its versions).
    pub fn find(&mut self, owner: &str, key: &KeyRef) -> Result<Option<Sealed>, StoreError> {
        self.in_tx(Tx::Read, |db| {
            db.key(owner, key)?.map(rows::parse).transpose()
        })
    }

    /// One key of `owner`, opened.
    pub fn find_open(
        &mut self,
        master: &MasterKey,
        owner: &str,
        key: &KeyRef,
    ) -> Result<Option<KeyHandle>, StoreError> {
        let found = self.find(owner, key)?;
        self.opened += u64::from(found.is_some());
        found.map(|s| open::open(master, s)).transpose()
    }

    /// [`Store::list`], each key opened (a damaged one is an `Err` of its own).
    pub fn list_open(
        &mut self,
        master: &MasterKey,
        owner: &str,
        filter: &KeyFilter,
        after: u32,
        limit: usize,
    ) -> Result<Vec<OpenedKey>, StoreError> {
        let rows = self.list(owner, filter, after, limit)?;
        self.opened += rows.len() as u64;
        Ok(rows
            .into_iter()
            .map(|(id, r)| (id, r.and_then(|s| open::open(master, s))))
            .collect())
    }

    /// One read, to learn whether the store answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.in_tx(Tx::Read, |db| db.meta("kdf").map(|_| ()))
    }

    /// How many keys this handle has opened.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Whether `owner` has a key labelled `label`.
    pub fn label_in_use(&mut self, owner: &str, label: &Label) -> Result<bool, StoreError> {
        self.in_tx(Tx::Read, |db| db.label_in_use(owner, label.as_str()))
    }

    /// Up to `limit` keys of `owner` matching `filter` with ids above `after`, by id, each with
    /// its id; a row whose fields do not validate is an `Err` of its own. Only the rows
    /// returned are read: the backend answers from its indexes.
    pub fn list(
        &mut self,
        owner: &str,
        filter: &KeyFilter,
        after: u32,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        self.in_tx(Tx::Read, |db| {
            Ok(db
                .keys(owner, filter, after, limit)?
                .into_iter()
                .map(|r| (rows::id_of(&r), rows::parse(r)))
                .collect())
        })
    }

    /// How many keys and counters each owner holds (the quotas' starting counts).
    pub fn held(&mut self) -> Result<Vec<(String, usize, usize)>, StoreError> {
        self.in_tx(Tx::Read, follow::held)
    }

    /// How the master key is stored.
    pub fn master_record(&mut self) -> Result<MasterRecord, StoreError> {
        let place = self.db.describe();
        self.in_tx(Tx::Read, |db| master_record(db, &place))
    }

    /// Replaces the stored master key record in one transaction (passphrase change).
    pub fn replace_master_record(&mut self, rec: &MasterRecord) -> Result<(), StoreError> {
        self.in_tx(Tx::Write, |db| put_master_record(db, rec))
    }

    /// Writes a counter's value with its tag, as an operator's repair tool would (tests only).
    #[cfg(test)]
    pub(crate) fn set_counter(
        &mut self,
        master: &MasterKey,
        owner: &str,
        name: &Label,
        value: u64,
    ) -> Result<(), StoreError> {
        self.in_tx(Tx::Write, |db| {
            let created = apply::read_counter(db, master, owner, name.as_str())?
                .map_or(0, |(_, created)| created);
            apply::write_counter(db, master, owner, name.as_str(), value, created)
        })
    }
}

/// A change's audit entry with its outcome: `ok` or the failure's status, and the key it made
/// or changed.
fn audited(mut e: AuditEvent, r: &Result<Applied, StoreError>) -> AuditEvent {
    e.status = match r {
        Ok(_) => "ok",
        Err(err) => err.status().name(),
    };
    match r {
        Ok(Applied::Key(rec)) => e.key = format!("{}:{}", rec.owner, rec.id),
        Ok(Applied::Created(h)) => e.key = format!("{}:{}", h.owner, h.info.id),
        _ => {}
    }
    e
}

fn put_master_record(db: &mut dyn Backend, rec: &MasterRecord) -> Result<(), StoreError> {
    db.put_meta("kdf", rec.kdf.name().as_bytes())?;
    db.put_meta("wrapped_master", &rec.wrapped)?;
    match &rec.kdf {
        Kdf::KeyFile => {
            db.delete_meta("argon2_params")?;
            db.delete_meta("argon2_salt")
        }
        Kdf::Argon2id { params, salt } => {
            let p: Vec<u8> = [params.m_kib, params.t, params.p]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            db.put_meta("argon2_params", &p)?;
            db.put_meta("argon2_salt", salt)
        }
    }
}

fn master_record(db: &mut dyn Backend, place: &str) -> Result<MasterRecord, StoreError> {
    let missing = |what: &str| {
        StoreError::Open(format!(
            "key store {place} has no {what}: it is damaged or not a FerroHSM store"
        ))
    };
    let kdf_name = db
        .meta("kdf")?
        .ok_or_else(|| missing("master key record"))?;
    let wrapped = db
        .meta("wrapped_master")?
        .ok_or_else(|| missing("wrapped master key"))?;
    let kdf = match kdf_name.as_slice() {
        b"keyfile" => Kdf::KeyFile,
        b"argon2id" => {
            let p = db
                .meta("argon2_params")?
                .ok_or_else(|| missing("argon2 parameters"))?;
            let salt = db
                .meta("argon2_salt")?
                .ok_or_else(|| missing("argon2 salt"))?;
            let word = |i: usize| -> Option<u32> {
                Some(u32::from_le_bytes(
                    p.get(4 * i..4 * i + 4)?.try_into().ok()?,
                ))
            };
            let (Some(m_kib), Some(t), Some(pl), 12) = (word(0), word(1), word(2), p.len()) else {
                return Err(missing("valid argon2 parameters"));
            };
            Kdf::Argon2id {
                params: Argon2Params { m_kib, t, p: pl },
                salt: salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| missing("valid argon2 salt"))?,
            }
        }
        other => {
            return Err(StoreError::Open(format!(
                "key store {place}: unknown master key protection {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    Ok(MasterRecord { kdf, wrapped })
}

#[cfg(test)]
pub(crate) mod tests;
