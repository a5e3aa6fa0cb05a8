//! A whole store copied into another, row for row, across backends: how `hsmd backup` writes
//! a PostgreSQL store to a portable SQLite file, and how `hsmd restore` moves an SQLite backup
//! into a PostgreSQL store (a single node growing into several).

use super::store::Store;
use crate::keys::store::backend::{Backend, KeyFilter, Tx};
use crate::keys::store::records::StoreError;

/// Keys read per page while copying.
const PAGE: usize = 1000;

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Keys.
    pub keys: usize,
    /// Audit entries.
    pub audit: usize,
}

impl Store {
    /// Copies every row of this store into `to`, an empty store (only the metadata `hsmd
    /// init` writes) of any backend: one snapshot read here, one write transaction there.
    /// Owners with their next ids, keys with every version, grants, counters, the metadata
    /// (the wrapped master key, the audit key, the signed head) and the audit log, byte for
    /// byte: nothing is opened or sealed again, so the copy opens with the same master key
    /// and its audit chain verifies as the original's does.
    pub fn copy_into(&mut self, to: &mut Store) -> Result<Copied, StoreError> {
        let place = to.describe();
        self.in_tx(Tx::Read, |src| {
            to.in_tx(Tx::Write, |dst| {
                if !dst.is_empty()? {
                    return Err(StoreError::Open(format!(
                        "{place} already holds keys, grants, counters or audit entries; a \
                         restore never replaces a store that holds anything"
                    )));
                }
                copy(src, dst)
            })
        })
    }
}

fn copy(src: &mut dyn Backend, dst: &mut dyn Backend) -> Result<Copied, StoreError> {
    let meta = src.meta_all()?;
    for (name, _) in dst.meta_all()? {
        if !meta.iter().any(|(n, _)| *n == name) {
            dst.delete_meta(&name)?;
        }
    }
    for (name, value) in &meta {
        dst.put_meta(name, value)?;
    }
    let mut keys = 0;
    for (owner, next_id) in src.owners()? {
        dst.put_owner(&owner, next_id)?;
        let mut after = 0u32;
        loop {
            let page = src.keys(&owner, &KeyFilter::default(), after, PAGE)?;
            let Some(last) = page.last() else { break };
            after = u32::try_from(last.id).map_err(|_| {
                StoreError::Backend(format!("key {owner}/{} has an id out of range", last.id))
            })?;
            for row in &page {
                dst.insert_keys(std::slice::from_ref(row))?;
            }
            keys += page.len();
        }
    }
    for g in src.grants()? {
        dst.put_grant(&g)?;
    }
    for c in src.counters()? {
        dst.put_counter(&c)?;
    }
    let entries = src.audit_rows(0)?;
    for chunk in entries.chunks(1024) {
        dst.audit_append(chunk)?;
    }
    Ok(Copied {
        keys,
        audit: entries.len(),
    })
}
