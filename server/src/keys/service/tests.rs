//! The writer's audit queue under a held commit.

use std::collections::HashMap;
use std::sync::mpsc;

use ferrohsm_proto::KeyRef;

use super::*;
use crate::keys::audit::AuditRow;
use crate::keys::store::backend::{
    Backend, ChangeLog, Counted, CounterRow, GrantRow, KeyFilter, KeyRow, Tx, VersionRow,
};

/// An audit entry as written: operation, detail, status.
type Entry = (String, String, String);
/// What one commit held: how many changes, and the audit entries written with them.
type Committed = (usize, Vec<Entry>);

/// A backend that keeps the audit entries of a transaction in memory, reports them at
/// commit, then holds the writer inside the commit until `hold` (the sender of `held`) is
/// dropped: the test fills the audit queue while the writer is busy.
struct HeldBackend {
    committed: mpsc::Sender<Committed>,
    held: Receiver<()>,
    meta: HashMap<String, Vec<u8>>,
    changes: usize,
    entries: Vec<AuditRow>,
    last: Option<(i64, Vec<u8>)>,
}

impl Backend for HeldBackend {
    fn describe(&self) -> String {
        "held".into()
    }
    fn reader(&self) -> Result<Box<dyn Backend>, StoreError> {
        Ok(Box::new(HeldBackend {
            committed: self.committed.clone(),
            held: self.held.clone(),
            meta: HashMap::new(),
            changes: 0,
            entries: Vec::new(),
            last: None,
        }))
    }
    fn change_log(&mut self) -> Option<&mut dyn ChangeLog> {
        None
    }
    fn begin(&mut self, _: Tx) -> Result<(), StoreError> {
        self.changes = 0;
        self.entries.clear();
        Ok(())
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        if self.changes == 0 && self.entries.is_empty() {
            // Making the audit key, before the service starts.
            return Ok(());
        }
        let entries = self
            .entries
            .drain(..)
            .map(|r| (r.op.clone(), r.detail.clone(), r.status.clone()))
            .collect();
        let _ = self.committed.send((self.changes, entries));
        // Returns at once when the sender is gone (the gate is open).
        let _ = self.held.recv();
        Ok(())
    }
    fn rollback(&mut self) {}
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.changes += 1;
        Ok(())
    }
    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name).cloned())
    }
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name.into(), value.to_vec());
        Ok(())
    }
    fn delete_meta(&mut self, name: &str) -> Result<(), StoreError> {
        self.meta.remove(name);
        Ok(())
    }
    fn audit_last(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self.last.clone())
    }
    fn audit_append(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        for row in rows {
            self.last = Some((row.seq as i64, row.hash.to_vec()));
            self.entries.push(row.clone());
        }
        Ok(())
    }
    fn key(&mut self, _: &str, _: &KeyRef) -> Result<Option<KeyRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn keys(
        &mut self,
        _: &str,
        _: &KeyFilter,
        _: u32,
        _: usize,
    ) -> Result<Vec<KeyRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn label_in_use(&mut self, _: &str, _: &str) -> Result<bool, StoreError> {
        unreachable!("the writer only commits")
    }
    fn count_by_owner(&mut self, _: Counted) -> Result<Vec<(String, i64)>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn count_owned(&mut self, _: Counted, _: &str) -> Result<i64, StoreError> {
        unreachable!("the writer only commits")
    }
    fn claim_ids(&mut self, _: &[(&str, &str)]) -> Result<Vec<Option<i64>>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn insert_keys(&mut self, _: &[KeyRow]) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn insert_version(&mut self, _: &str, _: i64, _: &VersionRow) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn set_sealed(&mut self, _: &str, _: i64, _: i64, _: &[u8]) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn retire_below(&mut self, _: &str, _: i64, _: i64) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn set_version(&mut self, _: &str, _: i64, _: i64) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn delete_key(&mut self, _: &str, _: i64) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn grants(&mut self) -> Result<Vec<GrantRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn grant(&mut self, _: &str, _: i64, _: &str) -> Result<Option<GrantRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn put_grant(&mut self, _: &GrantRow) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn delete_grant(&mut self, _: &str, _: i64, _: &str) -> Result<bool, StoreError> {
        unreachable!("the writer only commits")
    }
    fn counter(&mut self, _: &str, _: &str) -> Result<Option<CounterRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn put_counter(&mut self, _: &CounterRow) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn audit_rows(&mut self, _: u64) -> Result<Vec<AuditRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn owners(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn put_owner(&mut self, _: &str, _: i64) -> Result<(), StoreError> {
        unreachable!("the writer only commits")
    }
    fn counters(&mut self) -> Result<Vec<CounterRow>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn meta_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        unreachable!("the writer only commits")
    }
    fn is_empty(&mut self) -> Result<bool, StoreError> {
        unreachable!("the writer only commits")
    }
}

fn denied(i: usize) -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        client: "mallory".into(),
        session: 1,
        transport: "tcp",
        op: "sign",
        key: "alice:k".into(),
        detail: format!("entry {i}"),
        status: "key_not_found",
    }
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_full_audit_queue_counts_what_it_drops_and_commits_the_count() {
    let (committed_tx, committed) = mpsc::channel();
    let (hold, held) = crossbeam_channel::bounded::<()>(0);
    let store = Store::new(Box::new(HeldBackend {
        committed: committed_tx,
        held,
        meta: HashMap::new(),
        changes: 0,
        entries: Vec::new(),
        last: None,
    }));
    let mut store = store;
    let master = MasterKey::generate().unwrap();
    store.ensure_audit_key(&master).unwrap();
    let s = StoreService::start(store, master, 1).unwrap();
    let entry = |i: usize| -> Entry {
        let e = denied(i);
        (e.op.to_string(), e.detail, e.status.to_string())
    };
    // One entry, committed on its own after at most AUDIT_FLUSH; the writer then sits in
    // that commit, so everything queued next waits.
    s.audit_later(denied(0));
    let (n, first) = committed
        .recv_timeout(WAIT)
        .expect("the first entry's commit");
    assert_eq!(n, 0);
    assert_eq!(first, vec![entry(0)]);
    // The queue's bound, and three more, while the writer is held.
    for i in 1..=AUDIT_CAP + 3 {
        s.audit_later(denied(i));
    }
    assert!(
        committed.try_recv().is_err(),
        "nothing commits while the writer is held"
    );
    drop(hold);
    // The queue reaching AUDIT_QUEUE asked for a commit at once (one empty `Record`
    // change); it carries every entry the bound kept, then the count of the rest.
    let (n, second) = committed.recv_timeout(WAIT).expect("the queue's commit");
    assert_eq!(n, 1, "one flush request for the full queue");
    assert_eq!(second.len(), AUDIT_CAP + 1);
    let (overflow, kept) = second.split_last().unwrap();
    assert_eq!(kept.first(), Some(&entry(1)));
    assert_eq!(
        kept.last(),
        Some(&entry(AUDIT_CAP)),
        "the newest three went"
    );
    assert!(kept.iter().all(|e| e.0 == "sign"));
    assert_eq!(
        overflow,
        &(
            "audit-overflow".to_string(),
            "3 entries dropped: the audit queue was full".to_string(),
            "dropped".to_string()
        )
    );
    // The count starts again from zero: the next entry commits alone.
    s.audit_later(denied(0));
    let (n, third) = committed
        .recv_timeout(WAIT)
        .expect("the next entry's commit");
    assert_eq!((n, third), (0, vec![entry(0)]));
}
