//! Several hsmd nodes on one real PostgreSQL, as an operator runs them: `hsmd init
//! --store-url` for the first, `hsmd init --join` for the next, each serving on its own
//! ports. Every line of the consistency contract (docs/storage.md, the README's table) is
//! shown here with real processes: a key made on one node is usable on the other at once; a
//! delete, a revoke or a grant reaches the other node; counters, ids, labels and quotas hold
//! across nodes; the audit chain covers both; a node that loses the database (stopped,
//! restarted with `pg_ctl restart -m fast`, or its connections terminated) fails closed and
//! recovers by itself; a node SIGKILLed under load loses nothing acknowledged.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_proto::{KeyRef, KeyType, Status, Usage, UsageSet};
use ferrohsm_test_support::Data;
use ferrohsm_test_support::keys::{assert_signs, label, label_of};
use ferrohsm_test_support::postgres::Cluster;
use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::wait::until;

const PASSWORD: &str = "HSMD_STORE_PASSWORD";

/// A first node on a new database `db`, and a second joined to it.
fn two_nodes(pg: &Cluster, db: &str) -> (Data, Data) {
    pg.create_database(db);
    let url = pg.url(db);
    let d1 = Data::init_with(
        "alice,bob",
        &["--store-url", url.as_str()],
        &[(PASSWORD, pg.password())],
    );
    let d2 = d1.join(&[], &[]);
    (d1, d2)
}

fn status_of(e: &ferrohsm_client::ClientError) -> Option<Status> {
    e.status()
}

fn sign(c: &BlockingClient, k: &KeyRef) -> Result<Vec<u8>, ferrohsm_client::ClientError> {
    c.sign(k, b"cluster")
}

/// Waits (up to 15 s) until signing with `k` is refused, and checks it is refused with `want`.
fn refused_within(c: &BlockingClient, k: &KeyRef, want: Status, what: &str) {
    until(what, Duration::from_secs(15), || match sign(c, k) {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(status_of(&e), Some(want), "{what}: {e}");
            true
        }
    });
}

fn inc(c: &BlockingClient, name: &str) -> u64 {
    c.block_on(c.client().counter_inc(&label_of(name))).unwrap()
}

#[test]
fn a_joined_node_serves_the_same_keys_counters_ids_labels_and_audit() {
    let Some(pg) = Cluster::start() else { return };
    let (d1, d2) = two_nodes(&pg, "two");

    // What the join wrote: D's secrets copied 0600, D's CA key not copied, a server
    // certificate of its own, and profiles listing both nodes, this node first.
    for f in [
        "store.password",
        "master.key",
        "clients/alice.key",
        "clients/alice.psk",
    ] {
        let mode = std::fs::metadata(d2.dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(!d2.dir.join("pki/ca.key").exists());
    assert_ne!(
        std::fs::read(d1.dir.join("pki/server.pem")).unwrap(),
        std::fs::read(d2.dir.join("pki/server.pem")).unwrap()
    );
    let (p1, p2) = (d1.load_profile("alice"), d2.load_profile("alice"));
    let (a1, a2) = (d1.ports().tcp, d2.ports().tcp);
    let addrs = |p: &ferrohsm_client::profile::Profile| -> Vec<String> {
        p.tcp_addrs.clone().unwrap_or_default()
    };
    assert_eq!(addrs(&p1), vec![a1.clone(), a2.clone()]);
    assert_eq!(addrs(&p2), vec![a2.clone(), a1.clone()]);
    assert_eq!(
        pg.psql("two", "SELECT count(*) FROM nodes"),
        "2",
        "both nodes registered"
    );

    let _n1 = d1.start();
    let _n2 = d2.start();
    // Every transport of the joined node answers (its own certificate, D's CA).
    for t in ["tcp", "tls", "tls-psk", "shm"] {
        let out = ok(&d2.ctl_over("alice", t, &["--json", "status"], d2.tmp()));
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(st["store"]["backend"], "postgres", "{t}: {out}");
    }
    let (alice1, alice2) = (d1.connect("alice"), d2.connect("alice"));

    // Made on one node, usable on the other at once.
    let k = alice1.generate(&label_of("k"), KeyType::Ed25519).unwrap();
    assert_signs(&alice2, &KeyRef::Id(k.id));
    let k2 = alice2.generate(&label_of("k2"), KeyType::Ed25519).unwrap();
    assert_eq!(
        k2.id,
        k.id + 1,
        "ids come from the database, never repeated"
    );
    // Labels stay unique per client across nodes.
    let e = alice1
        .generate(&label_of("k2"), KeyType::Ed25519)
        .unwrap_err();
    assert_eq!(status_of(&e), Some(Status::LabelInUse), "{e}");

    // A counter incremented on either node adds exactly one, never repeating.
    alice1
        .block_on(alice1.client().counter_create(&label_of("c")))
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { &alice1 } else { &alice2 };
        seen.push(inc(c, "c"));
    }
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>());

    // The audit chain holds every node's changes, and verifies whole from either node.
    drop((alice1, alice2));
    for d in [&d1, &d2] {
        let out = ok(&d.admin(&["audit", "verify"], &[]));
        assert!(out.starts_with("audit chain ok: "), "{out}");
    }
    let show = ok(&d2.admin(&["audit", "show", "--json"], &[]));
    let entries: serde_json::Value = serde_json::from_str(&show).unwrap();
    let keygens = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "keygen" && e["status"] == "ok")
        .count();
    assert_eq!(keygens, 2, "{show}");
    let incs = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "counter-inc")
        .count();
    assert_eq!(incs, 20, "{show}");
}

#[test]
fn deletes_grants_revokes_and_quotas_reach_every_node() {
    let Some(pg) = Cluster::start() else { return };
    let (d1, d2) = two_nodes(&pg, "follow");
    for d in [&d1, &d2] {
        d.set("limits", "max_keys_per_client", "3");
    }
    let (_n1, _n2) = (d1.start(), d2.start());
    let (alice1, alice2) = (d1.connect("alice"), d2.connect("alice"));
    let bob2 = d2.connect("bob");

    // Cached on node 2, deleted on node 1: node 2 stops using it.
    let k = alice1
        .generate(&label_of("gone"), KeyType::Ed25519)
        .unwrap();
    let id = KeyRef::Id(k.id);
    sign(&alice2, &id).unwrap();
    alice1.block_on(alice1.client().delete(&id)).unwrap();
    // The contract's bound is revalidate_ms (1 s), and the bench measures the lag; here the
    // refusal must come at all, within the wait's generous deadline.
    refused_within(
        &alice2,
        &id,
        Status::KeyNotFound,
        "node 2 refuses the deleted key",
    );

    // Granted on node 1: bob uses it on node 2; revoked on node 1: bob is refused on node 2.
    let g = alice1
        .generate(&label_of("shared"), KeyType::Ed25519)
        .unwrap();
    let as_bob = KeyRef::OwnerId(label_of("alice"), g.id);
    let e = sign(&bob2, &as_bob).unwrap_err();
    assert_eq!(status_of(&e), Some(Status::KeyNotFound), "{e}");
    alice1
        .block_on(alice1.client().grant(
            &KeyRef::Id(g.id),
            &label_of("bob"),
            UsageSet::of(&[Usage::Sign]),
        ))
        .unwrap();
    // On the node that made it, the grant holds as soon as it is acknowledged.
    let bob1 = d1.connect("bob");
    sign(&bob1, &as_bob).unwrap();
    until(
        "bob signs on node 2 with the grant",
        Duration::from_secs(10),
        || sign(&bob2, &as_bob).is_ok(),
    );
    alice1
        .block_on(alice1.client().revoke(&KeyRef::Id(g.id), &label_of("bob")))
        .unwrap();
    let e = sign(&bob1, &as_bob).unwrap_err();
    assert_eq!(status_of(&e), Some(Status::KeyNotFound), "{e}");
    refused_within(
        &bob2,
        &as_bob,
        Status::KeyNotFound,
        "bob is refused on node 2 after the revoke",
    );

    // Rotated on node 1 (the version node 2 had cached is stale): node 2 sees version 2.
    let r = alice1
        .generate(&label_of("aead"), KeyType::Aes256Gcm)
        .unwrap();
    let rid = KeyRef::Id(r.id);
    assert_eq!(
        alice2
            .block_on(alice2.client().info(&rid))
            .unwrap()
            .versions
            .len(),
        1
    );
    alice1.block_on(alice1.client().rotate(&rid)).unwrap();
    until(
        "node 2 sees the new version",
        Duration::from_secs(10),
        || {
            alice2
                .block_on(alice2.client().info(&rid))
                .unwrap()
                .versions
                .len()
                == 2
        },
    );
    alice1.block_on(alice1.client().delete(&rid)).unwrap();

    // The quota (3 keys) holds across nodes: alice holds 1 ("shared"); two more anywhere,
    // then no more on either node.
    alice2.generate(&label_of("q1"), KeyType::Ed25519).unwrap();
    alice1.generate(&label_of("q2"), KeyType::Ed25519).unwrap();
    for c in [&alice1, &alice2] {
        let e = c.generate(&label_of("q3"), KeyType::Ed25519).unwrap_err();
        assert_eq!(status_of(&e), Some(Status::QuotaExceeded), "{e}");
    }
    // A delete on one node frees a place on the other.
    alice1
        .block_on(alice1.client().delete(&label("q1")))
        .unwrap();
    until(
        "node 2 counts the freed place",
        Duration::from_secs(10),
        || alice2.generate(&label_of("q3"), KeyType::Ed25519).is_ok(),
    );
    assert_eq!(
        pg.psql("follow", "SELECT count(*) FROM keys WHERE owner = 'alice'"),
        "3"
    );
}

#[test]
fn a_node_that_loses_the_database_fails_closed_and_recovers() {
    let Some(pg) = Cluster::start() else { return };
    let (d1, d2) = two_nodes(&pg, "outage");
    let (_n1, _n2) = (d1.start(), d2.start());
    let (alice1, alice2) = (d1.connect("alice"), d2.connect("alice"));
    let k = alice1.generate(&label_of("k"), KeyType::Ed25519).unwrap();
    let id = KeyRef::Id(k.id);
    sign(&alice2, &id).unwrap();

    // Connections ended by the database: both nodes carry on (the next request reconnects).
    assert!(pg.terminate_backends("outage") > 0);
    until(
        "node 2 signs after its connections ended",
        Duration::from_secs(10),
        || sign(&alice2, &id).is_ok(),
    );
    // A delete while node 2's follower reconnects still reaches it.
    pg.terminate_backends("outage");
    // The delete may meet a connection that is still being ended (store_failed, or an
    // answer lost with it): tried until acknowledged, or found done.
    until(
        "node 1 deletes the key",
        Duration::from_secs(10),
        || match alice1.block_on(alice1.client().delete(&id)) {
            Ok(()) => true,
            Err(e) if status_of(&e) == Some(Status::KeyNotFound) => true,
            Err(e) => {
                assert_eq!(status_of(&e), Some(Status::StoreFailed), "{e}");
                false
            }
        },
    );
    until(
        "node 2 refuses the key deleted meanwhile",
        Duration::from_secs(10),
        || sign(&alice2, &id).is_err_and(|e| status_of(&e) == Some(Status::KeyNotFound)),
    );

    let k = alice1.generate(&label_of("k2"), KeyType::Ed25519).unwrap();
    let id = KeyRef::Id(k.id);
    sign(&alice2, &id).unwrap();
    // The database goes away. Within revalidate_ms (1 s) the cached key may still sign;
    // after it, nothing the database cannot confirm is used: store_failed, and the session
    // stays open.
    pg.stop();
    refused_within(
        &alice2,
        &id,
        Status::StoreFailed,
        "node 2 stops using the unconfirmed key",
    );
    alice2.ping().unwrap();
    // Back: both nodes recover by themselves, nothing acknowledged is lost.
    pg.start_again();
    until("node 2 signs again", Duration::from_secs(15), || {
        sign(&alice2, &id).is_ok()
    });
    until("node 1 makes keys again", Duration::from_secs(15), || {
        alice1
            .generate(&label_of("after"), KeyType::Ed25519)
            .is_ok()
    });
    assert_signs(&alice2, &label("after"));

    // pg_ctl restart -m fast: every connection ends at once; both nodes carry on by
    // themselves, and a delete made after it still reaches the other node.
    pg.restart();
    until(
        "node 1 makes keys after the restart",
        Duration::from_secs(15),
        || {
            alice1
                .generate(&label_of("restarted"), KeyType::Ed25519)
                .is_ok()
        },
    );
    until(
        "node 2 signs after the restart",
        Duration::from_secs(15),
        || sign(&alice2, &label("restarted")).is_ok(),
    );
    alice1
        .block_on(alice1.client().delete(&label("restarted")))
        .unwrap();
    refused_within(
        &alice2,
        &label("restarted"),
        Status::KeyNotFound,
        "node 2 refuses a key deleted after the restart",
    );
}

#[test]
fn join_refuses_what_is_not_a_cluster_node() {
    let Some(pg) = Cluster::start() else { return };
    // An SQLite node cannot be joined: one process holds its store.
    let lite = Data::init("alice");
    let d2 = lite.tmp().join("d2");
    let ports = ferrohsm_test_support::daemon::Ports::new();
    let args = |from: &std::path::Path| -> Vec<String> {
        [
            "init",
            "--dir",
            d2.to_str().unwrap(),
            "--join",
            from.to_str().unwrap(),
        ]
        .iter()
        .map(ToString::to_string)
        .chain(ports.args().iter().map(ToString::to_string))
        .collect()
    };
    let run = |a: &[String], env: &[(&str, &str)]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ferrohsm_test_support::daemon::run_hsmd(&a, env)
    };
    let o = run(&args(&lite.dir), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("keeps its keys in SQLite"), "{err}");
    // Not a node's directory at all.
    let o = run(&args(lite.tmp()), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a node's data directory"), "{err}");
    assert!(!d2.join("hsmd.toml").exists());
    // --join with --clients is a usage error; without the listener addresses too.
    let mut with_clients = args(&lite.dir);
    with_clients.extend(["--clients".into(), "carol".into()]);
    assert_eq!(run(&with_clients, &[]).status.code(), Some(2));
    let short: Vec<String> = args(&lite.dir)[..5].to_vec();
    assert_eq!(run(&short, &[]).status.code(), Some(2));

    // A passphrase cluster: the join needs the same passphrase.
    pg.create_database("pass");
    let url = pg.url("pass");
    let pass = [(PASSWORD, pg.password()), ("HSMD_PASSPHRASE", "right")];
    let d1 = Data::init_with("alice", &["--store-url", url.as_str()], &pass);
    let o = run(&args(&d1.dir), &[("HSMD_PASSPHRASE", "wrong")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--join"), "{err}");
    assert!(!d2.join("hsmd.toml").exists(), "nothing written");
    assert_eq!(pg.psql("pass", "SELECT count(*) FROM nodes"), "1");
    let joined = d1.join(&[], &[("HSMD_PASSPHRASE", "right")]);
    assert!(!joined.dir.join("master.key").exists());
    // An hsmd of an earlier version held the database alone and wrote no change log: while
    // one serves (its lock held here), no node of this version starts beside it.
    let mut old = postgres::Config::new();
    old.host("127.0.0.1")
        .port(pg.port())
        .user(pg.user())
        .password(pg.password())
        .dbname("pass");
    let mut old = old.connect(postgres::NoTls).unwrap();
    old.execute("SELECT pg_advisory_lock($1)", &[&0x4665_7272_6f53_5256_i64])
        .unwrap();
    let (code, err) = joined.fails(
        &["--config", &joined.config()],
        &[("HSMD_PASSPHRASE", "right")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("earlier version"), "{err}");
    drop(old);
    let _n = joined.start_env(&[("HSMD_PASSPHRASE", "right")]);
    assert!(joined.connect("alice").list().unwrap().is_empty());
}

/// One client's run through a failover profile: the keys and counter values it was told
/// about, and how many requests ended in `connection_lost` (unknown outcome).
#[derive(Debug, Default)]
struct Acknowledged {
    keys: Vec<String>,
    values: Vec<u64>,
    lost: usize,
}

#[test]
fn a_killed_node_loses_nothing_acknowledged_and_clients_carry_on_with_the_other() {
    let Some(pg) = Cluster::start() else { return };
    let (d1, d2) = two_nodes(&pg, "kill");
    let n1 = d1.start();
    let _n2 = d2.start();
    let first = d1.connect("alice");
    first
        .block_on(first.client().counter_create(&label_of("c")))
        .unwrap();
    drop(first);
    let profile = d1.load_profile("alice");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const OPS: usize = 60;
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (profile, done) = (profile.clone(), done.clone());
            std::thread::spawn(move || {
                let mut ack = Acknowledged::default();
                let mut c = BlockingClient::connect(&profile, None).unwrap();
                for i in 0..OPS {
                    let name = format!("w{w}-{i}");
                    let r = c
                        .generate(&label_of(&name), KeyType::Ed25519)
                        .map(|_| ack.keys.push(name))
                        .and_then(|()| {
                            c.block_on(c.client().counter_inc(&label_of("c")))
                                .map(|v| ack.values.push(v))
                        });
                    match r {
                        Ok(()) => {}
                        Err(ferrohsm_client::ClientError::ConnectionLost(_)) => {
                            ack.lost += 1;
                            // The profile's next node answers.
                            c = BlockingClient::connect(&profile, None).unwrap();
                        }
                        Err(e) => panic!("worker {w} op {i}: {e}"),
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ack
            })
        })
        .collect();
    until("the clients are under way", Duration::from_secs(30), || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= OPS / 2
    });
    n1.kill();
    let acks: Vec<Acknowledged> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    // Every acknowledged key is in the store, and each counter value was answered once,
    // each client's increasing.
    let alice = d2.connect("alice");
    let mut stored = std::collections::BTreeSet::new();
    let mut after = None;
    loop {
        let page = alice
            .block_on(alice.client().list_page(ferrohsm_proto::Page {
                after,
                limit: Some(100),
            }))
            .unwrap();
        stored.extend(page.iter().map(|k| k.label.to_string()));
        match page.last() {
            Some(k) if page.len() == 100 => after = Some(k.id),
            _ => break,
        }
    }
    let mut values: Vec<u64> = Vec::new();
    for a in &acks {
        for k in &a.keys {
            assert!(stored.contains(k), "acknowledged key {k} lost");
        }
        assert!(a.values.windows(2).all(|w| w[0] < w[1]), "{:?}", a.values);
        values.extend(&a.values);
    }
    let n = values.len();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), n, "a counter value was answered twice");
    let last = inc(&alice, "c");
    assert!(values.iter().all(|v| *v < last), "{last} after {values:?}");
    // Unknown outcomes are at most one per lost connection.
    let lost: usize = acks.iter().map(|a| a.lost).sum();
    assert!(lost <= 2, "{acks:?}");
    eprintln!(
        "killed node 1 mid-run: {} keys and {n} counter values acknowledged, {lost} lost connections",
        stored.len()
    );
}
