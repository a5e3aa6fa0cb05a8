//! New keys, several at once: the creates that follow each other in a batch are checked one
//! by one (material, quota), their ids claimed together with their label checks, sealed, and
//! written together, so a batch of new keys costs the database two statements, not two per
//! key (`postgres/batch.rs`).

use std::sync::Arc;

use super::apply::{sealing, stored_time};
use super::follow::Counts;
use super::open::created_handle;
use super::rows::key_row;
use crate::keys::quota::QuotaLimits;
use crate::keys::seal::MasterKey;
use crate::keys::store::backend::{Backend, VersionRow};
use crate::keys::store::records::{Applied, KeyRecord, NewVersion, SESSION_ID_BASE, StoreError};

/// One new key's outcome before it is written.
enum Step {
    Refused(StoreError),
    Claimed(KeyRecord, Vec<NewVersion>),
}

/// Creates `keys` in order. Before anything is written, each key's quota place is taken in
/// `counts` (or the key refused); a key refused later (its label in use) gives its place
/// back. Each key has its own result, refused before any write; the outer error means
/// something failed after the writes began (the batch is abandoned).
pub(super) fn create_run(
    db: &mut dyn Backend,
    master: &MasterKey,
    keys: Vec<(KeyRecord, Vec<NewVersion>)>,
    counts: &mut Counts,
    limits: Option<&QuotaLimits>,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    let mut steps = Vec::with_capacity(keys.len());
    let mut asked: Vec<(Arc<str>, String)> = Vec::new();
    for (record, versions) in keys {
        if versions.last().is_none_or(|v| v.material.is_none()) {
            steps.push(Step::Refused(StoreError::Invalid(
                "a new key's current version has no material".into(),
            )));
            continue;
        }
        // A label asked for twice in one batch: the second is in use once the first is made.
        if asked
            .iter()
            .any(|(o, l)| *o == record.owner && l == record.label.as_str())
        {
            steps.push(Step::Refused(StoreError::LabelInUse(record.label.clone())));
            continue;
        }
        if let Err(e) = counts.take_key(db, limits, &record.owner) {
            steps.push(Step::Refused(e));
            continue;
        }
        asked.push((record.owner.clone(), record.label.to_string()));
        steps.push(Step::Claimed(record, versions));
    }
    let pairs: Vec<(&str, &str)> = asked.iter().map(|(o, l)| (&**o, l.as_str())).collect();
    let mut ids = db.claim_ids(&pairs)?.into_iter();
    let mut rows = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let (mut record, versions) = match step {
            Step::Refused(e) => {
                out.push(Err(e));
                continue;
            }
            Step::Claimed(r, v) => (r, v),
        };
        let Some(id) = ids.next().flatten() else {
            counts.give_back(&record.owner);
            out.push(Err(StoreError::LabelInUse(record.label.clone())));
            continue;
        };
        let Some(id) = u32::try_from(id).ok().filter(|id| *id < SESSION_ID_BASE) else {
            // The owner's ids are used up: the id taken is never handed out anyway.
            counts.give_back(&record.owner);
            out.push(Err(StoreError::IdsExhausted));
            continue;
        };
        // From here nothing may fail alone: an error now abandons the batch.
        record.id = id;
        record.version = versions.len() as u32;
        let mut row = key_row(&record);
        for (i, v) in versions.iter().enumerate() {
            let n = i as u32 + 1;
            // The material's stored form exists only here, on the store writer, until sealed.
            let sealed = match &v.material {
                Some(m) => Some(
                    master
                        .seal_version(&record, n, &m.to_stored())
                        .map_err(sealing)?,
                ),
                None => None,
            };
            row.versions.push(VersionRow {
                version: i64::from(n),
                created: stored_time(v.created),
                sealed,
            });
        }
        rows.push(row);
        out.push(Ok(Applied::Created(Arc::new(created_handle(
            record, versions,
        )?))));
    }
    db.insert_keys(&rows)?;
    Ok(out)
}
