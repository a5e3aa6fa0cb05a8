//! The format over a real SQLite file: ids, labels, batches, versions, counters, grants, the
//! audit chain, and rows edited behind its back.
use std::path::Path;

use super::*;
use crate::keys::material::KeyMaterial;
use crate::keys::seal::{KeyFileSecret, Unlock};
use crate::keys::store::sqlite::SqliteBackend;
use crate::keys::store::{KeyRecord, Mutation, NewVersion, Origin};
use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

pub(crate) fn hmac(b: u8) -> Box<KeyMaterial> {
    Box::new(KeyMaterial::from_secret(KeyType::HmacSha256, &Zeroizing::new([b; 32])).unwrap())
}

/// A new HMAC key's record (the store assigns its id).
pub(crate) fn record(owner: &str, label: &str) -> KeyRecord {
    KeyRecord {
        owner: owner.into(),
        id: 0,
        label: label.parse().unwrap(),
        key_type: KeyType::HmacSha256,
        usage: KeyType::HmacSha256.allowed_usage(),
        exportable: false,
        origin: Origin::Generated,
        created: 1,
        version: 1,
    }
}

pub(crate) fn change(mutation: Mutation) -> Change {
    Change {
        mutation,
        audit: Some(AuditEvent {
            time_ms: 5,
            client: "alice".into(),
            session: 1,
            transport: "tcp",
            op: "keygen",
            key: String::new(),
            detail: String::new(),
            status: "",
        }),
    }
}

pub(crate) fn create(owner: &str, label: &str) -> Change {
    change(Mutation::Create {
        record: record(owner, label),
        versions: vec![NewVersion {
            created: 1,
            material: Some(hmac(9)),
        }],
    })
}

fn new_store(dir: &Path) -> (Store, MasterKey, MasterRecord) {
    let master = MasterKey::generate().unwrap();
    let unlock = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
    let rec = MasterRecord {
        kdf: Kdf::KeyFile,
        wrapped: master.wrap(&Kdf::KeyFile, &unlock).unwrap(),
    };
    let db = SqliteBackend::create(&dir.join("keys.db")).unwrap();
    let (s, _) = Store::create(Box::new(db), &master, &rec).unwrap();
    (s, master, rec)
}

fn open_store(path: &Path) -> Store {
    Store::new(Box::new(SqliteBackend::open(path).unwrap()))
}

pub(crate) fn id(r: &Result<Applied, StoreError>) -> u32 {
    match r {
        Ok(Applied::Key(k)) => k.id,
        Ok(Applied::Created(h)) => h.info.id,
        other => panic!("not a key: {other:?}"),
    }
}

fn counter(r: &Result<Applied, StoreError>) -> u64 {
    match r {
        Ok(Applied::Counter(v)) => *v,
        other => panic!("not a counter: {other:?}"),
    }
}

fn all() -> KeyFilter {
    KeyFilter::default()
}

/// On any backend: ids per owner from 1, a label used twice refused inside a batch without
/// failing the others, and a deleted key's id never handed out again (alice's key "a" ends
/// with id 2, bob's with id 1).
pub(crate) fn ids_labels_and_batches(s: &mut Store, master: &MasterKey) {
    let r = s
        .commit(
            master,
            vec![
                create("alice", "a"),
                create("alice", "a"),
                create("bob", "a"),
            ],
            vec![],
        )
        .unwrap();
    assert_eq!(id(&r[0]), 1);
    assert_eq!(
        r[1].as_ref().unwrap_err(),
        &StoreError::LabelInUse("a".parse().unwrap())
    );
    assert_eq!(id(&r[2]), 1, "ids are per owner");
    let del = change(Mutation::Delete {
        owner: "alice".into(),
        key: KeyRef::Id(1),
    });
    assert!(s.commit(master, vec![del], vec![]).unwrap()[0].is_ok());
    let r = s
        .commit(master, vec![create("alice", "a")], vec![])
        .unwrap();
    assert_eq!(id(&r[0]), 2, "a deleted id is never reused");
    // New keys of several owners in one batch, one of them refused: each owner's ids stay
    // consecutive, and a refused key takes no id.
    let r = s
        .commit(
            master,
            vec![
                create("alice", "b"),
                create("alice", "a"),
                create("bob", "b"),
                create("alice", "c"),
            ],
            vec![],
        )
        .unwrap();
    assert_eq!(id(&r[0]), 3);
    assert_eq!(
        r[1].as_ref().unwrap_err(),
        &StoreError::LabelInUse("a".parse().unwrap())
    );
    assert_eq!((id(&r[2]), id(&r[3])), (2, 4));
    for (owner, label, want) in [("alice", "b", 3), ("bob", "b", 2), ("alice", "c", 4)] {
        let found = s.find(owner, &label.parse().unwrap()).unwrap().unwrap();
        assert_eq!(found.record.id, want, "{owner}:{label}");
        assert!(master.open_record(&found.record, found.current()).is_ok());
    }
}

#[test]
fn ids_labels_batches_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let (mut s, master, rec) = new_store(dir.path());
    ids_labels_and_batches(&mut s, &master);
    drop(s);
    let mut s = open_store(&path);
    assert_eq!(s.master_record().unwrap(), rec);
    let found = s.find("alice", &"a".parse().unwrap()).unwrap().unwrap();
    assert_eq!(found.record.id, 2);
    assert_eq!(
        &**master.open_record(&found.record, found.current()).unwrap(),
        &[9; 32]
    );
    assert!(s.find("carol", &KeyRef::Id(2)).unwrap().is_none());
    assert!(s.label_in_use("bob", &"a".parse().unwrap()).unwrap());
    assert_eq!(s.list("alice", &all(), 0, 100).unwrap().len(), 3);
    assert!(s.list("alice", &all(), 0, 100).unwrap()[0].1.is_ok());
    let mut rd = s.reader().unwrap();
    assert_eq!(rd.list("bob", &all(), 0, 100).unwrap().len(), 2);
    let r = rd.commit(&master, vec![create("bob", "z")], vec![]);
    // The create itself fails inside its savepoint; its audit entry then cannot be written,
    // which fails the whole batch with SQLite's read-only refusal.
    assert!(
        matches!(&r, Err(StoreError::Backend(m)) if m.contains("readonly database")),
        "readers only read: {r:?}"
    );
    assert!(!s.label_in_use("bob", &"z".parse().unwrap()).unwrap());
    // Every change, failed ones too, is in the chain, and the chain verifies.
    let (rows, head, public) = s.audit_snapshot(1).unwrap();
    assert_eq!(rows.len(), 9);
    assert_eq!(rows[1].status, "label_in_use");
    assert_eq!(rows[0].key, "alice:1");
    crate::keys::audit::verify(rows, head.as_ref(), &public.unwrap(), None).unwrap();
}

#[test]
fn versions_counters_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, master, _) = new_store(dir.path());
    s.commit(&master, vec![create("alice", "m")], vec![])
        .unwrap();
    let rotate = change(Mutation::Rotate {
        owner: "alice".into(),
        id: 1,
        material: hmac(8),
    });
    let r = s.commit(&master, vec![rotate], vec![]).unwrap();
    assert!(matches!(&r[0], Ok(Applied::Key(k)) if k.version == 2));
    let found = s.find("alice", &KeyRef::Id(1)).unwrap().unwrap();
    assert_eq!(found.versions.len(), 2);
    let v1 = found.versions[0].sealed.clone().unwrap();
    assert_eq!(
        &**master.open_version(&found.record, 1, &v1).unwrap(),
        &[9; 32]
    );
    assert_eq!(
        master.open_record(&found.record.at_version(1), &v1),
        Err(crate::keys::seal::SealError::Record),
        "the old version was re-sealed as superseded"
    );
    assert_eq!(
        &**master.open_record(&found.record, found.current()).unwrap(),
        &[8; 32]
    );

    for below in [1, 3] {
        let bad = change(Mutation::Retire {
            owner: "alice".into(),
            id: 1,
            below,
        });
        let r = s.commit(&master, vec![bad], vec![]).unwrap();
        assert!(
            matches!(&r[0], Err(StoreError::Invalid(m))
                if m.starts_with(&format!("retire --below {below}: expected 2..=2"))),
            "{r:?}"
        );
    }
    let retire = change(Mutation::Retire {
        owner: "alice".into(),
        id: 1,
        below: 2,
    });
    assert!(s.commit(&master, vec![retire], vec![]).unwrap()[0].is_ok());
    let found = s.find("alice", &KeyRef::Id(1)).unwrap().unwrap();
    assert!(
        found.versions[0].sealed.is_none(),
        "retired material is deleted"
    );

    let name: Label = "c".parse().unwrap();
    let cc = change(Mutation::CounterCreate {
        owner: "alice".into(),
        name: name.clone(),
    });
    let inc = || {
        change(Mutation::CounterInc {
            owner: "alice".into(),
            name: name.clone(),
        })
    };
    assert_eq!(counter(&s.commit(&master, vec![cc], vec![]).unwrap()[0]), 0);
    let r = s.commit(&master, vec![inc(), inc()], vec![]).unwrap();
    assert_eq!(counter(&r[1]), 2);
    s.set_counter(&master, "alice", &name, u64::MAX - 1)
        .unwrap();
    let r = s.commit(&master, vec![inc(), inc()], vec![]).unwrap();
    assert_eq!(counter(&r[0]), u64::MAX);
    assert_eq!(
        r[1].as_ref().unwrap_err(),
        &StoreError::CounterOverflow(name.clone()),
        "never wraps"
    );
    assert_eq!(s.counter(&master, "alice", &name).unwrap(), Some(u64::MAX));
    // A counter edited in the file is refused.
    let file = rusqlite::Connection::open(dir.path().join("keys.db")).unwrap();
    file.execute("UPDATE counters SET value = 5", []).unwrap();
    assert!(matches!(
        s.counter(&master, "alice", &name),
        Err(StoreError::Integrity { .. })
    ));

    let g = GrantRecord {
        owner: "alice".into(),
        id: 1,
        grantee: "bob".into(),
        ops: ferrohsm_proto::UsageSet::of(&[ferrohsm_proto::Usage::Mac]),
        created: 3,
    };
    s.commit(&master, vec![change(Mutation::Grant(g.clone()))], vec![])
        .unwrap();
    assert_eq!(s.grants(&master).unwrap(), vec![g]);
    // A grant row edited (or inserted) in the file is never honoured.
    file.execute("UPDATE grants SET grantee = 'carol'", [])
        .unwrap();
    assert!(s.grants(&master).unwrap().is_empty());
    let (rows, head, public) = s.audit_snapshot(1).unwrap();
    crate::keys::audit::verify(rows, head.as_ref(), &public.unwrap(), None).unwrap();
}

#[test]
fn a_store_rolled_back_to_an_older_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, master, _) = new_store(dir.path());
    s.commit(&master, vec![create("alice", "m")], vec![])
        .unwrap();
    let rotate = |b: u8| {
        change(Mutation::Rotate {
            owner: "alice".into(),
            id: 1,
            material: hmac(b),
        })
    };
    s.commit(&master, vec![rotate(8)], vec![]).unwrap();
    // Someone with the file deletes the newest version and lowers the record to match.
    rusqlite::Connection::open(dir.path().join("keys.db"))
        .unwrap()
        .execute_batch("DELETE FROM key_versions WHERE version = 2; UPDATE keys SET version = 1;")
        .unwrap();
    let found = s.find("alice", &KeyRef::Id(1)).unwrap().unwrap();
    assert_eq!(
        master.open_version(&found.record, 1, found.current()),
        Err(crate::keys::seal::SealError::Record),
        "version 1 was sealed as superseded and cannot pass for the current one"
    );
    let r = s.commit(&master, vec![rotate(7)], vec![]).unwrap();
    assert!(matches!(r[0], Err(StoreError::Integrity { .. })), "{r:?}");
}

#[test]
fn a_search_opens_only_the_keys_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, master, _) = new_store(dir.path());
    // Two namespaces of different sizes: a lookup opens the same number of keys in both.
    for (owner, n) in [("alice", 10), ("bob", 2000)] {
        let batch = (0..n).map(|i| create(owner, &format!("k{i}"))).collect();
        for r in s.commit(&master, batch, vec![]).unwrap() {
            r.unwrap();
        }
    }
    let mut r = s.reader().unwrap();
    for (owner, n) in [("alice", 10u32), ("bob", 2000)] {
        let last = format!("k{}", n - 1);
        let by_label = KeyFilter {
            label: Some(last.parse().unwrap()),
            ..all()
        };
        let before = r.opened();
        let found = r.list_open(&master, owner, &by_label, 0, 100).unwrap();
        assert_eq!(found.len(), 1, "{owner}");
        let h = found[0].1.as_ref().unwrap();
        assert_eq!((h.info.id, h.info.label.as_str()), (n, last.as_str()));
        let by_id = KeyFilter {
            id: Some(n / 2),
            ..all()
        };
        let found = r.list_open(&master, owner, &by_id, 0, 100).unwrap();
        assert_eq!(found[0].1.as_ref().unwrap().info.id, n / 2);
        let by_type = KeyFilter {
            key_type: Some(KeyType::Ed25519),
            ..all()
        };
        assert!(
            r.list_open(&master, owner, &by_type, 0, 100)
                .unwrap()
                .is_empty()
        );
        let none = KeyFilter {
            label: Some("absent".parse().unwrap()),
            ..all()
        };
        assert!(
            r.list_open(&master, owner, &none, 0, 100)
                .unwrap()
                .is_empty()
        );
        let h = r
            .find_open(&master, owner, &KeyRef::Id(3))
            .unwrap()
            .unwrap();
        assert_eq!(h.info.id, 3);
        assert_eq!(
            r.opened() - before,
            3,
            "{owner}: one key per lookup that found one, whatever the namespace holds"
        );
        // A page of the whole namespace opens exactly the page.
        let page = r.list_open(&master, owner, &all(), 0, 7).unwrap();
        assert_eq!(page.len(), 7);
        assert_eq!(r.opened() - before, 10);
        let hmac = KeyFilter {
            key_type: Some(KeyType::HmacSha256),
            ..all()
        };
        let typed = r.list_open(&master, owner, &hmac, 5, 3).unwrap();
        let ids: Vec<u32> = typed.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![6, 7, 8], "{owner}: a typed page after id 5");
        assert_eq!(r.opened() - before, 13);
    }
}

#[test]
fn an_owner_out_of_ids_is_refused_alone_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, master, _) = new_store(dir.path());
    s.commit(&master, vec![create("carol", "first")], vec![])
        .unwrap();
    // As a store edited by hand (or 2^31 creations) would leave it.
    rusqlite::Connection::open(dir.path().join("keys.db"))
        .unwrap()
        .execute(
            "UPDATE owners SET next_id = 2147483648 WHERE owner = 'carol'",
            [],
        )
        .unwrap();
    let r = s
        .commit(
            &master,
            vec![create("carol", "more"), create("alice", "fine")],
            vec![],
        )
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap_err(), &StoreError::IdsExhausted);
    assert_eq!(id(&r[1]), 1, "the rest of the batch is made");
    assert!(!s.label_in_use("carol", &"more".parse().unwrap()).unwrap());
}
