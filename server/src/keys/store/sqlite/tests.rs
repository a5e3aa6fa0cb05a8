//! The SQLite backend against real files: ids, labels, batches, versions, counters, grants,
//! the audit chain, and migration from the first schema.
use super::*;
use crate::keys::seal::{KeyFileSecret, Unlock};
use crate::keys::store::{KeyRecord, Mutation, Origin};
use ferrohsm_proto::KeyType;
use zeroize::Zeroizing;

fn record(owner: &str, label: &str) -> KeyRecord {
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

fn change(mutation: Mutation) -> Change {
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

fn create(owner: &str, label: &str) -> Change {
    change(Mutation::Create {
        record: record(owner, label),
        versions: vec![(1, Some(Zeroizing::new(vec![9; 32])))],
    })
}

fn new_store(dir: &Path) -> (SqliteStore, MasterKey, MasterRecord) {
    let master = MasterKey::generate().unwrap();
    let unlock = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
    let rec = MasterRecord {
        kdf: Kdf::KeyFile,
        wrapped: master.wrap(&Kdf::KeyFile, &unlock).unwrap(),
    };
    let mut s = SqliteStore::create(&dir.join("keys.db"), &rec).unwrap();
    s.ensure_audit_key(&master).unwrap();
    (s, master, rec)
}

fn id(r: &Result<Applied, StoreError>) -> u32 {
    match r {
        Ok(Applied::Key(k)) => k.id,
        other => panic!("not a key: {other:?}"),
    }
}

#[test]
fn ids_labels_batches_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let (mut s, master, rec) = new_store(dir.path());
    let r = s
        .commit(
            &master,
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
    assert!(s.commit(&master, vec![del], vec![]).unwrap()[0].is_ok());
    let r = s
        .commit(&master, vec![create("alice", "a")], vec![])
        .unwrap();
    assert_eq!(id(&r[0]), 2, "a deleted id is never reused");
    drop(s);
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.master_record().unwrap(), rec);
    let found = s.find("alice", &"a".parse().unwrap()).unwrap().unwrap();
    assert_eq!(found.record.id, 2);
    assert_eq!(
        &**master.open_record(&found.record, found.current()).unwrap(),
        &[9; 32]
    );
    assert!(s.find("carol", &KeyRef::Id(2)).unwrap().is_none());
    assert!(s.label_in_use("bob", &"a".parse().unwrap()).unwrap());
    assert_eq!(s.list("alice", 0, 100).unwrap().len(), 1);
    assert!(s.list("alice", 0, 100).unwrap()[0].1.is_ok());
    let mut rd = s.reader().unwrap();
    assert_eq!(rd.list("bob", 0, 100).unwrap().len(), 1);
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
    assert_eq!(rows.len(), 5);
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
        secret: Zeroizing::new(vec![8; 32]),
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
    assert_eq!(
        s.commit(&master, vec![cc], vec![]).unwrap()[0],
        Ok(Applied::Counter(0))
    );
    let r = s.commit(&master, vec![inc(), inc()], vec![]).unwrap();
    assert_eq!(r[1], Ok(Applied::Counter(2)));
    s.set_counter(&master, "alice", &name, u64::MAX - 1)
        .unwrap();
    let r = s.commit(&master, vec![inc(), inc()], vec![]).unwrap();
    assert_eq!(r[0], Ok(Applied::Counter(u64::MAX)));
    assert_eq!(
        r[1],
        Err(StoreError::CounterOverflow(name.clone())),
        "never wraps"
    );
    assert_eq!(s.counter(&master, "alice", &name).unwrap(), Some(u64::MAX));
    // A counter edited in the file is refused.
    s.conn.execute("UPDATE counters SET value = 5", []).unwrap();
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
    s.conn
        .execute("UPDATE grants SET grantee = 'carol'", [])
        .unwrap();
    assert!(s.grants(&master).unwrap().is_empty());
    let (rows, head, public) = s.audit_snapshot(1).unwrap();
    crate::keys::audit::verify(rows, head.as_ref(), &public.unwrap(), None).unwrap();
}

#[test]
fn a_version_1_store_migrates_and_its_keys_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let master = MasterKey::generate().unwrap();
    let rec = record("alice", "old");
    let rec = KeyRecord { id: 1, ..rec };
    let sealed = master.seal_record(&rec, &[7; 32]).unwrap();
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute(
            &format!("INSERT INTO keys ({COLUMNS}, sealed) VALUES ('alice', 1, 'old', 'hmac-sha256', 16, 0, 'generated', 1, 1, ?1)"),
            [&sealed],
        )
        .unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.commit().unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    let found = s.find("alice", &KeyRef::Id(1)).unwrap().unwrap();
    assert_eq!(
        &**master.open_record(&found.record, found.current()).unwrap(),
        &[7; 32]
    );
}

#[test]
fn refuses_missing_foreign_and_newer_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = SqliteStore::open(&dir.path().join("nope.db")).unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42; 8192]).unwrap();
    // SQLite refuses the file at the first PRAGMA (SQLITE_NOTADB), before the journal-mode
    // check that has the friendlier "not a readable SQLite database" message.
    let r = SqliteStore::open(&junk);
    assert!(
        matches!(&r, Err(StoreError::Open(m))
            if m.contains("junk.db") && m.ends_with("file is not a database")),
        "{r:?}"
    );
    let empty = dir.path().join("empty.db");
    Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let e = SqliteStore::open(&empty).unwrap_err().to_string();
    assert!(e.contains("not a FerroHSM key store"), "{e}");
    let newer = dir.path().join("newer.db");
    Connection::open(&newer)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
        .unwrap();
    let e = SqliteStore::open(&newer).unwrap_err().to_string();
    assert!(e.contains("schema version 99"), "{e}");
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
            secret: Zeroizing::new(vec![b; 32]),
        })
    };
    s.commit(&master, vec![rotate(8)], vec![]).unwrap();
    // Someone with the file deletes the newest version and lowers the record to match.
    s.conn
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
