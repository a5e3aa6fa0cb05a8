//! The format over a real PostgreSQL cluster started by the test: the same promises as over
//! SQLite (ids, labels, batches, versions, counters, grants, the audit chain, rows edited
//! behind its back), and the URL and schema refusals.

use std::time::Duration;

use ferrohsm_proto::{KeyRef, Label};
use ferrohsm_test_support::postgres::Cluster;

use super::*;
use crate::keys::seal::{Kdf, KeyFileSecret, MasterKey, Unlock};
use crate::keys::store::backend::KeyFilter;
use crate::keys::store::format::tests::{change, create, hmac, id, ids_labels_and_batches};
use crate::keys::store::{Applied, GrantRecord, MasterRecord, Mutation, Store};

fn settings(pg: &Cluster, db: &str) -> PgSettings {
    PgSettings {
        url: pg.url(db),
        password: Some(Zeroizing::new(pg.password().to_string())),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        revalidate: DEFAULT_REVALIDATE,
        instance: instance_name("test"),
    }
}

fn new_store(pg: &Cluster, db: &str) -> (Store, MasterKey, MasterRecord) {
    pg.create_database(db);
    let master = MasterKey::generate().unwrap();
    let unlock = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
    let rec = MasterRecord {
        kdf: Kdf::KeyFile,
        wrapped: master.wrap(&Kdf::KeyFile, &unlock).unwrap(),
    };
    let b = PgBackend::create(settings(pg, db), Duration::from_secs(10)).unwrap();
    let (s, _) = Store::create(Box::new(b), &master, &rec).unwrap();
    (s, master, rec)
}

#[test]
fn urls_with_a_password_or_missing_parts_are_refused_naming_only_the_place() {
    assert_eq!(
        check_url("postgres://hsm@db.example:6543/keys").unwrap(),
        "hsm@db.example:6543/keys"
    );
    assert_eq!(
        check_url("postgresql://hsm@127.0.0.1/keys").unwrap(),
        "hsm@127.0.0.1:5432/keys"
    );
    for (url, want) in [
        ("postgres://hsm:s3cret@db:5432/keys", "contains a password"),
        ("postgres://hsm:@db:5432/keys", "contains a password"),
        ("postgres://db:5432/keys", "must name a user"),
        (
            "postgres://hsm@db:5432",
            "must name a user, a host and a database",
        ),
        ("mysql://hsm@db/keys", "starts with postgres://"),
        (
            "postgres://hsm@db/keys?sslmode=allow",
            "sslmode=allow is not known",
        ),
        (
            "postgres://hsm@db/keys?sslmode=verify-full",
            "sslmode=verify-full needs sslrootcert",
        ),
    ] {
        let e = check_url(url).unwrap_err();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}

#[test]
fn the_format_holds_on_postgres() {
    let Some(pg) = Cluster::start() else { return };
    let (mut s, master, rec) = new_store(&pg, "format");
    ids_labels_and_batches(&mut s, &master);

    // Another connection (a reader, or another node) sees it all, and the master record.
    let mut other = Store::new(Box::new(
        PgBackend::open(settings(&pg, "format"), Duration::from_secs(10)).unwrap(),
    ));
    assert_eq!(other.master_record().unwrap(), rec);
    let h = other
        .find_open(&master, "alice", &KeyRef::Label("a".parse().unwrap()))
        .unwrap()
        .unwrap();
    assert_eq!(h.info.id, 2);
    assert!(other.label_in_use("bob", &"a".parse().unwrap()).unwrap());
    let all = KeyFilter::default();
    assert_eq!(other.list("alice", &all, 0, 100).unwrap().len(), 3);
    let by_label = KeyFilter {
        label: Some("a".parse().unwrap()),
        ..KeyFilter::default()
    };
    assert_eq!(
        other
            .list_open(&master, "bob", &by_label, 0, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        other.held().unwrap(),
        vec![("alice".to_string(), 3, 0), ("bob".to_string(), 2, 0)]
    );
    // The triggers' counts agree with the rows.
    assert_eq!(
        pg.psql(
            "format",
            "SELECT string_agg(owner || '=' || n, ',' ORDER BY owner) FROM held WHERE what = 'keys'"
        ),
        "alice=3,bob=2"
    );

    // Versions, counters, grants.
    let rotate = change(Mutation::Rotate {
        owner: "alice".into(),
        id: 2,
        material: hmac(8),
    });
    let r = s.commit(&master, vec![rotate], vec![]).unwrap();
    assert!(
        matches!(&r[0], Ok(Applied::Key(k)) if k.version == 2),
        "{r:?}"
    );
    let h = other
        .find_open(&master, "alice", &KeyRef::Id(2))
        .unwrap()
        .unwrap();
    assert_eq!(h.info.current_version, 2);
    assert_eq!(h.older.len(), 1);
    let name: Label = "c".parse().unwrap();
    let inc = || {
        change(Mutation::CounterInc {
            owner: "alice".into(),
            name: name.clone(),
        })
    };
    let cc = change(Mutation::CounterCreate {
        owner: "alice".into(),
        name: name.clone(),
    });
    let r = s.commit(&master, vec![cc, inc(), inc()], vec![]).unwrap();
    assert!(matches!(r[2], Ok(Applied::Counter(2))), "{r:?}");
    assert_eq!(other.counter(&master, "alice", &name).unwrap(), Some(2));
    let g = GrantRecord {
        owner: "alice".into(),
        id: 2,
        grantee: "bob".into(),
        ops: ferrohsm_proto::UsageSet::of(&[ferrohsm_proto::Usage::Mac]),
        created: 3,
    };
    s.commit(&master, vec![change(Mutation::Grant(g.clone()))], vec![])
        .unwrap();
    assert_eq!(other.grants(&master).unwrap(), vec![g]);

    // Every change is in the chain, which verifies.
    let (rows, head, public) = other.audit_snapshot(1).unwrap();
    assert_eq!(rows.len(), 14);
    assert_eq!(rows[1].status, "label_in_use");
    crate::keys::audit::verify(rows, head.as_ref(), &public.unwrap(), None).unwrap();

    // Rows edited in the database are refused, never honoured.
    pg.psql("format", "UPDATE counters SET value = 5");
    assert!(matches!(
        other.counter(&master, "alice", &name),
        Err(StoreError::Integrity { .. })
    ));
    pg.psql("format", "UPDATE grants SET grantee = 'carol'");
    assert!(other.grants(&master).unwrap().is_empty());
    pg.psql(
        "format",
        "UPDATE keys SET usage = usage # 1 WHERE owner = 'bob'",
    );
    assert!(matches!(
        other.find_open(&master, "bob", &KeyRef::Id(1)),
        Err(StoreError::Integrity { .. })
    ));
    pg.psql("format", "UPDATE audit SET op = 'sign' WHERE seq = 3");
    let (rows, head, public) = other.audit_snapshot(1).unwrap();
    let broken = crate::keys::audit::verify(rows, head.as_ref(), &public.unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(broken.contains("entry 3"), "{broken}");
}

#[test]
fn a_database_without_the_schema_or_with_a_newer_one_is_refused() {
    let Some(pg) = Cluster::start() else { return };
    pg.create_database("empty");
    let e = PgBackend::open(settings(&pg, "empty"), Duration::from_secs(10)).unwrap_err();
    assert!(
        e.to_string()
            .contains("is not a FerroHSM key store (no schema)"),
        "{e}"
    );
    let _ = new_store(&pg, "newer");
    let e = PgBackend::create(settings(&pg, "newer"), Duration::from_secs(10)).unwrap_err();
    assert!(
        e.to_string().contains("already holds a FerroHSM key store"),
        "{e}"
    );
    pg.psql("newer", "UPDATE ferrohsm_schema SET version = 99");
    let e = PgBackend::open(settings(&pg, "newer"), Duration::from_secs(10)).unwrap_err();
    assert!(e.to_string().contains("schema version 99, newer"), "{e}");
    // A wrong password: the place is named, the password never.
    let mut wrong = settings(&pg, "empty");
    wrong.password = Some(Zeroizing::new("not-the-password".into()));
    let e = PgBackend::open(wrong, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("hsm@127.0.0.1:{}/empty", pg.port())),
        "{e}"
    );
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        !e.contains("not-the-password") && !e.contains(pg.password()),
        "{e}"
    );
}

#[test]
fn a_broken_connection_fails_the_request_and_the_next_one_reconnects() {
    let Some(pg) = Cluster::start() else { return };
    let (mut s, master, _) = new_store(&pg, "broken");
    s.commit(&master, vec![create("alice", "a")], vec![])
        .unwrap();
    assert!(pg.terminate_backends("broken") >= 1);
    // The dead connection is noticed either at once (a new one is made) or by the first
    // statement on it, which fails as a store failure with nothing changed; either way the
    // next transaction succeeds, on a new connection.
    match s.commit(&master, vec![create("alice", "b")], vec![]) {
        Ok(r) => assert_eq!(id(&r[0]), 2),
        Err(StoreError::Backend(_)) => {
            assert!(!s.label_in_use("alice", &"b".parse().unwrap()).unwrap());
            let r = s
                .commit(&master, vec![create("alice", "b")], vec![])
                .unwrap();
            assert_eq!(id(&r[0]), 2);
        }
        Err(e) => panic!("{e:?}"),
    }
    pg.restart();
    let _ = s.label_in_use("alice", &"b".parse().unwrap());
    assert!(s.label_in_use("alice", &"b".parse().unwrap()).unwrap());
}

#[test]
fn the_change_log_tells_other_nodes_what_changed_and_the_database_counts_quotas() {
    use crate::keys::quota::QuotaLimits;
    use crate::keys::store::{Changed, Followed};
    let Some(pg) = Cluster::start() else { return };
    let (mut a, master, _) = new_store(&pg, "log");
    let mut b = Store::new(Box::new(
        PgBackend::open(settings(&pg, "log"), Duration::from_secs(10)).unwrap(),
    ));
    assert!(a.shared() && b.shared());
    let start = b.snapshot(&master).unwrap();
    assert_eq!(start.head, 0);
    // b listens before a commits: the commit is announced.
    assert!(!b.wait_change(Duration::from_millis(10)).unwrap());
    a.enforce_limits(QuotaLimits {
        keys: 2,
        counters: 10,
        grants: 10,
    });
    let r = a
        .commit(
            &master,
            vec![create("alice", "k1"), create("alice", "k2")],
            vec![],
        )
        .unwrap();
    let (k1, k2) = (id(&r[0]), id(&r[1]));
    assert!(b.wait_change(Duration::from_secs(10)).unwrap(), "NOTIFY");
    // A third key is over the quota the database counts, whatever a node's memory says.
    let r = a
        .commit(&master, vec![create("alice", "k3")], vec![])
        .unwrap();
    let e = r[0].as_ref().unwrap_err();
    assert_eq!(e.status(), ferrohsm_proto::Status::QuotaExceeded, "{e}");
    assert!(e.to_string().contains("max_keys_per_client"), "{e}");
    assert!(!a.label_in_use("alice", &"k3".parse().unwrap()).unwrap());
    let grant = GrantRecord {
        owner: "alice".into(),
        id: k1,
        grantee: "bob".into(),
        ops: ferrohsm_proto::UsageSet::of(&[ferrohsm_proto::Usage::Sign]),
        created: 1,
    };
    let delete = change(Mutation::Delete {
        owner: "alice".into(),
        key: KeyRef::Id(k2),
    });
    a.commit(
        &master,
        vec![change(Mutation::Grant(grant.clone())), delete],
        vec![],
    )
    .unwrap();
    let Followed::Changes {
        upto,
        head,
        changes,
    } = b.follow(&master, 0).unwrap()
    else {
        panic!("behind")
    };
    assert_eq!((upto, head), (4, 4));
    let want = vec![
        Changed::KeyCreated {
            owner: "alice".into(),
        },
        Changed::KeyCreated {
            owner: "alice".into(),
        },
        Changed::Grant {
            owner: "alice".into(),
            id: k1,
            grantee: "bob".into(),
            now: Some(grant.clone()),
        },
        Changed::KeyDeleted {
            owner: "alice".into(),
            id: k2,
        },
    ];
    let (what, own): (Vec<Changed>, Vec<bool>) = changes.into_iter().unzip();
    assert_eq!(what, want);
    assert_eq!(own, vec![false; 4], "another process's changes");
    // The writer sees the same changes, marked as its own.
    let Followed::Changes { changes, .. } = a.follow(&master, 0).unwrap() else {
        panic!("behind")
    };
    let (what, own): (Vec<Changed>, Vec<bool>) = changes.into_iter().unzip();
    assert_eq!(what, want);
    assert_eq!(own, vec![true; 4]);
    // A grant row edited in the database is no grant.
    pg.psql("log", "UPDATE grants SET ops = 65535");
    let Followed::Changes { changes, .. } = b.follow(&master, 2).unwrap() else {
        panic!("behind")
    };
    assert!(
        matches!(&changes[0], (Changed::Grant { now: None, .. }, false)),
        "{changes:?}"
    );
    // A position the log cannot explain (the database was replaced, or the log pruned past
    // it) means starting over.
    assert!(matches!(
        b.follow(&master, 99).unwrap(),
        Followed::Behind { head: 4 }
    ));
    pg.psql("log", "DELETE FROM changes WHERE seq = 3");
    assert!(matches!(
        b.follow(&master, 2).unwrap(),
        Followed::Behind { head: 4 }
    ));
}

#[test]
fn tls_to_the_database_follows_sslmode_and_sslrootcert() {
    // The server's certificate names 127.0.0.1 only.
    let Some(pg) = Cluster::start_tls(&["127.0.0.1"]) else {
        return;
    };
    pg.create_database("tls");
    let ca = pg.ca().display().to_string();
    let with = |host: &str, query: &str| PgSettings {
        url: format!("postgres://hsm@{host}:{}/tls?{query}", pg.port()),
        ..settings(&pg, "tls")
    };
    let encrypted = |pg: &Cluster| {
        pg.psql(
            "tls",
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'hsmd'",
        )
    };
    // verify-full: the chain and the name check out; the connection is encrypted.
    let full = with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let b = PgBackend::create(full, Duration::from_secs(10)).unwrap();
    assert_eq!(encrypted(&pg), "t");
    drop(b);
    // The name does not match (localhost): verify-full refuses, verify-ca accepts.
    let e = PgBackend::connect(
        with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    PgBackend::open(
        with("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        Duration::from_secs(10),
    )
    .unwrap();
    // Another CA: refused, naming the certificate.
    let other = std::env::temp_dir().join(format!("other-ca-{}.pem", std::process::id()));
    let o = ferrohsm_tls::pki::new_ca("someone else").unwrap();
    std::fs::write(&other, o.cert_pem).unwrap();
    let e = PgBackend::connect(
        with(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
        ),
        Duration::from_millis(300),
    )
    .unwrap_err();
    let _ = std::fs::remove_file(&other);
    assert!(e.to_string().contains("certificate"), "{e}");
    // require: encrypted without checking; disable: plain.
    let b = PgBackend::open(
        with("127.0.0.1", "sslmode=require"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(encrypted(&pg), "t");
    drop(b);
    let _b = PgBackend::open(
        with("127.0.0.1", "sslmode=disable"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(encrypted(&pg), "f");
}

#[test]
fn a_follower_drops_what_another_node_changed_and_fails_closed_without_the_database() {
    use std::sync::Arc;

    use parking_lot::{Mutex, RwLock};

    use crate::keys::cache::Cache;
    use crate::keys::follow::{Followers, start};
    use crate::keys::grants::Grants;
    use crate::keys::quota::{QuotaLimits, Quotas, Resource};
    use crate::keys::session_keys::SessionKeys;
    use ferrohsm_test_support::wait::until;

    let Some(pg) = Cluster::start() else { return };
    pg.create_database("fol");
    let unlock = Unlock::KeyFile(KeyFileSecret::generate().unwrap());
    let master = MasterKey::generate().unwrap();
    let wrapped = master.wrap(&Kdf::KeyFile, &unlock).unwrap();
    let rec = MasterRecord {
        kdf: Kdf::KeyFile,
        wrapped: wrapped.clone(),
    };
    let db = PgBackend::create(settings(&pg, "fol"), Duration::from_secs(10)).unwrap();
    let (mut a, _) = Store::create(Box::new(db), &master, &rec).unwrap();
    let r = a
        .commit(&master, vec![create("alice", "k")], vec![])
        .unwrap();
    let k = id(&r[0]);
    let grant = GrantRecord {
        owner: "alice".into(),
        id: k,
        grantee: "bob".into(),
        ops: ferrohsm_proto::UsageSet::of(&[ferrohsm_proto::Usage::Sign]),
        created: 1,
    };
    a.commit(&master, vec![change(Mutation::Grant(grant))], vec![])
        .unwrap();

    // Node b: its own handle and master key, the key cached, a follower.
    let mine = Arc::new(MasterKey::unwrap(&Kdf::KeyFile, &wrapped, &unlock).unwrap());
    let mut b = Store::new(Box::new(
        PgBackend::open(settings(&pg, "fol"), Duration::from_secs(10)).unwrap(),
    ));
    let h = b
        .find_open(&mine, "alice", &KeyRef::Id(k))
        .unwrap()
        .unwrap();
    let on = Followers {
        cache: Arc::new(Mutex::new(Cache::new(16))),
        grants: Arc::new(RwLock::new(Grants::default())),
        quotas: Arc::new(Quotas::new(QuotaLimits::default(), [])),
        sessions: Arc::new(Mutex::new(SessionKeys::default())),
    };
    let (cache, grants, quotas) = (on.cache.clone(), on.grants.clone(), on.quotas.clone());
    let f = start(b, mine, Duration::from_millis(1000), on).unwrap();
    let within = Duration::from_secs(10);
    // It starts from the database: the grant and the counts.
    until("the follower confirms", within, || f.fresh());
    assert!(grants.read().get("bob", "alice", k).is_some());
    assert_eq!(quotas.used("alice", Resource::Key), 1);
    let e = cache.lock().epoch();
    cache.lock().insert(Arc::new(h), e);
    assert!(cache.lock().get("alice", &KeyRef::Id(k)).is_some());

    // Revoked and deleted on node a: gone from node b's memory, counts followed.
    let revoke = change(Mutation::Revoke {
        owner: "alice".into(),
        id: k,
        grantee: "bob".into(),
    });
    let delete = change(Mutation::Delete {
        owner: "alice".into(),
        key: KeyRef::Id(k),
    });
    a.commit(&master, vec![revoke, delete], vec![]).unwrap();
    until("the follower drops the deleted key", within, || {
        cache.lock().get("alice", &KeyRef::Id(k)).is_none()
    });
    assert!(grants.read().get("bob", "alice", k).is_none());
    assert_eq!(quotas.used("alice", Resource::Key), 0);
    a.commit(&master, vec![create("alice", "k2")], vec![])
        .unwrap();
    until("the follower counts a new key", within, || {
        quotas.used("alice", Resource::Key) == 1
    });

    // Without the database nothing is confirmed after revalidate_ms; back, it is again.
    pg.stop();
    until("memory is no longer confirmed", within, || !f.fresh());
    pg.start_again();
    until("memory is confirmed again", within, || f.fresh());
}
