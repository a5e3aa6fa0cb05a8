//! The SQLite backend against real files: migration from the first schema, and files that
//! are not a store of this build.
use ferrohsm_proto::KeyRef;
use rusqlite::Connection;

use super::*;
use crate::keys::seal::MasterKey;
use crate::keys::store::format::tests::record;
use crate::keys::store::{KeyRecord, Store};

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
            &format!("INSERT INTO keys ({}, sealed) VALUES ('alice', 1, 'old', 'hmac-sha256', 16, 0, 'generated', 1, 1, ?1)", rows::COLUMNS),
            [&sealed],
        )
        .unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.commit().unwrap();
    }
    let mut s = Store::new(Box::new(SqliteBackend::open(&path).unwrap()));
    let found = s.find("alice", &KeyRef::Id(1)).unwrap().unwrap();
    assert_eq!(
        &**master.open_record(&found.record, found.current()).unwrap(),
        &[7; 32]
    );
}

#[test]
fn refuses_missing_foreign_and_newer_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = SqliteBackend::open(&dir.path().join("nope.db")).unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42; 8192]).unwrap();
    // SQLite refuses the file at the first PRAGMA (SQLITE_NOTADB), before the journal-mode
    // check that has the friendlier "not a readable SQLite database" message.
    let r = SqliteBackend::open(&junk);
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
    let e = SqliteBackend::open(&empty).unwrap_err().to_string();
    assert!(e.contains("not a FerroHSM key store"), "{e}");
    let newer = dir.path().join("newer.db");
    Connection::open(&newer)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
        .unwrap();
    let e = SqliteBackend::open(&newer).unwrap_err().to_string();
    assert!(e.contains("schema version 99"), "{e}");
}
