//! A node whose key store is in PostgreSQL, as an operator runs it: `hsmd init --store-url`
//! on a real cluster this test starts, `hsmd` serving from it and keeping every key across a
//! restart, the audit chain verified from the database, `hsmd passwd` on it, an SQLite node
//! moved into PostgreSQL by backup and restore (and back), and every refusal
//! (a password in the URL, an unreachable or foreign database, a readable password file),
//! each naming the place and never the password.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use ferrohsm_client::BlockingClient;
use ferrohsm_proto::{KeyRef, KeyType, Status};
use ferrohsm_test_support::daemon::{free_port, refuses};
use ferrohsm_test_support::keys::assert_signs;
use ferrohsm_test_support::postgres::Cluster;
use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::{Data, spec, status};

const PASSWORD: &str = "HSMD_STORE_PASSWORD";

/// How long a call may wait for hsmd's answer while the database is away (a hang guard, not a
/// bound: hsmd answers `store_failed` after its own connect timeout).
const ANSWER: Duration = Duration::from_secs(30);

/// `hsmd init --store-url` of a new database `db` on `pg`, the password from the environment.
fn init(pg: &Cluster, db: &str, extra: &[&str], env: &[(&str, &str)]) -> Data {
    pg.create_database(db);
    let url = pg.url(db);
    let env = [&[(PASSWORD, pg.password())][..], env].concat();
    Data::init_with(
        "alice,bob",
        &[&["--store-url", url.as_str()][..], extra].concat(),
        &env,
    )
}

fn counter(c: &BlockingClient, inc: bool) -> u64 {
    let name = "c".parse().unwrap();
    let r = if inc {
        c.block_on(c.client().counter_inc(&name))
    } else {
        c.block_on(c.client().counter_create(&name))
    };
    r.unwrap()
}

#[test]
fn a_node_on_postgres_serves_keys_that_survive_its_restart() {
    let Some(pg) = Cluster::start() else { return };
    let d = init(&pg, "hsm", &[], &[]);
    // The database password is kept 0600 beside the config, never in it; no SQLite file.
    let pw = d.dir.join("store.password");
    assert_eq!(
        std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&pw).unwrap().trim_end(),
        pg.password()
    );
    let config = std::fs::read_to_string(d.config()).unwrap();
    assert!(
        config.contains(&format!("url = \"{}\"", pg.url("hsm"))),
        "{config}"
    );
    assert!(!config.contains(pg.password()), "{config}");
    assert!(!d.db().exists(), "a PostgreSQL node writes no keys.db");
    // The node is registered in the database under its name, with its addresses.
    let node: toml::Table = config.parse().unwrap();
    let name = node["server"]["node"].as_str().unwrap();
    let tcp = node["tcp"]["addr"].as_str().unwrap();
    assert_eq!(
        pg.psql("hsm", "SELECT name || ' ' || tcp FROM nodes"),
        format!("{name} {tcp}")
    );
    assert!(d.dir.join("audit.pub").exists());

    // Cached keys stay usable for a long while without the database (the multi-node tests
    // show the default second, failing closed).
    d.set("store", "revalidate_ms", "600000");
    let hsmd = d.start();
    let alice = d.connect("alice");
    let k = alice
        .generate(&"signer".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    assert_eq!(counter(&alice, false), 0);
    assert_eq!(counter(&alice, true), 1);
    assert_signs(&alice, &KeyRef::Id(k.id));
    drop(alice);
    // The rows are in the database: the record in the clear, the material sealed.
    assert_eq!(
        pg.psql("hsm", "SELECT owner || ':' || id || ':' || label FROM keys"),
        format!("alice:{}:signer", k.id)
    );
    assert_eq!(
        pg.psql("hsm", "SELECT length(sealed) FROM key_versions"),
        (12 + 32 + 16).to_string()
    );
    assert_eq!(hsmd.terminate().code(), Some(0));

    // Restarted (the password from its file), the key and the counter are still there. Every
    // call of this client is bounded by ANSWER: without the database below, a hang fails.
    let _hsmd = d.start();
    let alice = BlockingClient::connect_within(&d.load_profile("alice"), None, ANSWER).unwrap();
    assert_signs(&alice, &KeyRef::Label("signer".parse().unwrap()));
    assert_eq!(counter(&alice, true), 2);
    // bob's namespace is still his own.
    let bob = d.connect("bob");
    assert!(bob.list().unwrap().is_empty());

    // The database goes away: what needs it answers store_failed rather than hanging (within
    // ANSWER), the session stays, and a cached key still signs.
    pg.stop();
    let later = || {
        alice.run(
            alice
                .client()
                .generate_spec(spec(KeyType::Ed25519, "later")),
        )
    };
    assert_eq!(status(later()), Status::StoreFailed);
    assert_signs(&alice, &KeyRef::Label("signer".parse().unwrap()));
    // Status still answers (exit 0; hsmctl runs within its deadline), saying the store is
    // unreachable.
    let out = ok(&d.ctl("alice", &["--json", "status"]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["store"]["backend"], "postgres", "{out}");
    assert_eq!(st["store"]["reachable"], false, "{out}");
    // Back, and the node recovers by itself: the next change succeeds.
    pg.start_again();
    ferrohsm_test_support::wait::until(
        "a keygen after the database is back",
        Duration::from_secs(10),
        || later().is_ok(),
    );
    assert_signs(&alice, &KeyRef::Label("later".parse().unwrap()));
    let out = ok(&d.ctl("alice", &["--json", "status"]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["store"]["reachable"], true, "{out}");
    drop((alice, bob));

    // The audit chain verifies from the database, with every change in it.
    let v = d.admin(&["audit", "verify"], &[]);
    let out = ok(&v);
    assert!(out.starts_with("audit chain ok: "), "{out}");
    let show = ok(&d.admin(&["audit", "show"], &[]));
    for op in ["keygen", "counter-create", "counter-inc"] {
        assert!(show.contains(op), "{op} missing from the audit log: {show}");
    }
    // An entry edited in the database is named.
    pg.psql("hsm", "UPDATE audit SET client = 'mallory' WHERE seq = 1");
    let v = d.admin(&["audit", "verify"], &[]);
    assert_eq!(v.status.code(), Some(1));
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(err.contains("entry 1"), "{err}");
}

#[test]
fn passwd_rewraps_the_master_key_in_the_database() {
    let Some(pg) = Cluster::start() else { return };
    let pass = [("HSMD_PASSPHRASE", "first pass")];
    let d = init(&pg, "hsm", &[], &pass);
    assert!(!d.dir.join("master.key").exists());
    let hsmd = d.start_env(&pass);
    let k = d
        .connect("alice")
        .generate(&"k".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    assert_eq!(hsmd.terminate().code(), Some(0));
    let new = [
        ("HSMD_PASSPHRASE", "first pass"),
        ("HSMD_NEW_PASSPHRASE", "second pass"),
    ];
    let out = ok(&d.admin(&["passwd"], &new));
    assert!(out.contains(&pg.url("hsm")), "{out}");
    let err = d.refuses(&["--config", &d.config()], &pass);
    assert!(
        err.contains("does not unlock the key store") && err.contains(&pg.url("hsm")),
        "{err}"
    );
    let _hsmd = d.start_env(&[("HSMD_PASSPHRASE", "second pass")]);
    assert_signs(&d.connect("alice"), &KeyRef::Id(k.id));
}

#[test]
fn bad_urls_and_databases_are_refused_naming_the_place_and_never_the_password() {
    let Some(pg) = Cluster::start() else { return };
    let place = |db: &str| format!("hsm@127.0.0.1:{}/{db}", pg.port());

    // A password in the URL: refused at init, before anything is written.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let with_pw = format!("postgres://hsm:{}@127.0.0.1:{}/x", pg.password(), pg.port());
    let args = ["init", "--dir", dir.to_str().unwrap(), "--clients", "alice"];
    let err = refuses(&[&args[..], &["--store-url", &with_pw]].concat(), &[]);
    assert!(
        err.contains("contains a password") && err.contains(&place("x")),
        "{err}"
    );
    assert!(!err.contains(pg.password()), "{err}");
    assert!(!dir.join("hsmd.toml").exists());

    // A database that already holds a store: refused, naming the way to add a node.
    let d = init(&pg, "taken", &[], &[]);
    let dir2 = tmp.path().join("d2");
    let args2 = [
        "init",
        "--dir",
        dir2.to_str().unwrap(),
        "--clients",
        "alice",
    ];
    let err = refuses(
        &[&args2[..], &["--store-url", &pg.url("taken")]].concat(),
        &[(PASSWORD, pg.password())],
    );
    assert!(err.contains("already holds a FerroHSM key store"), "{err}");

    // A password in the URL of a config: refused at start.
    d.set("store", "url", &format!("{with_pw:?}"));
    let err = d.refuses(&["--config", &d.config()], &[]);
    assert!(err.contains("contains a password"), "{err}");
    assert!(!err.contains(pg.password()), "{err}");

    // A database without the schema.
    pg.create_database("empty");
    d.set("store", "url", &format!("{:?}", pg.url("empty")));
    let err = d.refuses(&["--config", &d.config()], &[]);
    assert!(
        err.contains(&place("empty")) && err.contains("(no schema)"),
        "{err}"
    );

    // A password file others can read.
    d.set("store", "url", &format!("{:?}", pg.url("taken")));
    let pw = d.dir.join("store.password");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = d.refuses(&["--config", &d.config()], &[]);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A wrong password, from the environment (which overrides the file).
    let err = d.refuses(&["--config", &d.config()], &[(PASSWORD, "wrong")]);
    assert!(
        err.contains(&place("taken")) && err.contains("password authentication failed"),
        "{err}"
    );

    // Nothing listening: hsmd retries for connect_timeout_ms, then exits 1 naming the place.
    let closed = free_port();
    d.set(
        "store",
        "url",
        &format!("\"postgres://hsm@127.0.0.1:{closed}/taken\""),
    );
    d.set("store", "connect_timeout_ms", "1000");
    let t0 = Instant::now();
    let err = d.refuses(&["--config", &d.config()], &[]);
    let took = t0.elapsed();
    assert!(
        err.contains(&format!("hsm@127.0.0.1:{closed}/taken"))
            && err.contains("within 1000 ms")
            && err.contains("Connection refused"),
        "{err}"
    );
    assert!(took >= Duration::from_millis(1000), "it retried: {took:?}");
}

#[test]
fn an_sqlite_node_grows_into_postgres_by_backup_and_restore_and_back() {
    let Some(pg) = Cluster::start() else { return };
    // A single SQLite node with keys, versions, a grant, a counter and an audit log.
    let lite = Data::init("alice,bob");
    let hsmd = lite.start();
    ok(&lite.ctl(
        "alice",
        &["keygen", "--type", "ed25519", "--label", "signer"],
    ));
    ok(&lite.ctl(
        "alice",
        &["keygen", "--type", "hmac-sha256", "--label", "mac"],
    ));
    ok(&lite.ctl("alice", &["rotate", "mac"]));
    ok(&lite.ctl(
        "alice",
        &["grant", "signer", "--to", "bob", "--ops", "sign"],
    ));
    ok(&lite.ctl("alice", &["counter", "create", "c"]));
    ok(&lite.ctl("alice", &["counter", "inc", "c"]));
    let pem = ok(&lite.ctl("alice", &["pubkey", "signer", "--pem"]));
    let listed = ok(&lite.ctl("alice", &["--json", "list"]));
    assert_eq!(hsmd.terminate().code(), Some(0));
    let backup = lite.path("lite.backup").display().to_string();
    ok(&lite.admin(&["backup", "--out", &backup], &[]));

    // A PostgreSQL node opened by the same master key file; its fresh store takes the backup.
    let grown = init(&pg, "grown", &[], &[]);
    std::fs::copy(lite.dir.join("master.key"), grown.dir.join("master.key")).unwrap();
    let out = ok(&grown.admin(&["restore", "--in", &backup], &[]));
    assert!(
        out.starts_with(&format!("hsmd: restored {backup} into {}", pg.url("grown")))
            && out.contains("audit chain verified"),
        "{out}"
    );
    assert!(!grown.dir.join("keys.db.restore-tmp").exists());
    // Restoring again is refused: the store now holds keys.
    let again = grown.admin(&["restore", "--in", &backup], &[]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("never replaces a store that holds anything"),
        "{err}"
    );

    let hsmd = grown.start();
    // The same keys, ids, labels, versions and counter; the same key signs.
    assert_eq!(ok(&grown.ctl("alice", &["--json", "list"])), listed);
    assert_eq!(ok(&grown.ctl("alice", &["pubkey", "signer", "--pem"])), pem);
    let alice = grown.connect("alice");
    assert_signs(&alice, &KeyRef::Label("signer".parse().unwrap()));
    assert_eq!(counter(&alice, true), 2);
    // bob's grant came along.
    let granted = ok(&grown.ctl("bob", &["list", "--granted"]));
    assert!(granted.contains("alice:signer"), "{granted}");
    drop(alice);
    assert_eq!(hsmd.terminate().code(), Some(0));
    let v = ok(&grown.admin(&["audit", "verify"], &[]));
    assert!(v.starts_with("audit chain ok: "), "{v}");

    // And back: a backup of the PostgreSQL store is the same portable SQLite file.
    let from_pg = grown.path("pg.backup").display().to_string();
    let out = ok(&grown.admin(&["backup", "--out", &from_pg], &[]));
    assert!(out.contains(&pg.url("grown")), "{out}");
    let mode = std::fs::metadata(&from_pg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let back = Data::init("alice,bob");
    for f in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let _ = std::fs::remove_file(back.dir.join(f));
    }
    std::fs::copy(lite.dir.join("master.key"), back.dir.join("master.key")).unwrap();
    ok(&back.admin(&["restore", "--in", &from_pg], &[]));
    let _hsmd = back.start();
    assert_eq!(ok(&back.ctl("alice", &["pubkey", "signer", "--pem"])), pem);
    assert_eq!(counter(&back.connect("alice"), true), 3);
}

#[test]
fn hsm_stress_finds_nothing_wrong_on_a_postgres_node_under_faults() {
    let Some(pg) = Cluster::start() else { return };
    let d = init(&pg, "stress", &[], &[]);
    d.set("limits", "max_keys_per_client", "1000000");
    let _hsmd = d.start();
    let tmp = tempfile::tempdir().unwrap();
    let json_f = tmp.path().join("run.json");
    let mut c = std::process::Command::new(ferrohsm_test_support::bins::hsm_stress());
    c.args(["run", "--profiles", d.dir.join("clients").to_str().unwrap()])
        .args([
            "--clients",
            "6",
            "--duration",
            "5s",
            "--transports",
            "tcp,tls,tls-psk,shm",
        ])
        .args(["--faults", "disconnect,reconnect,malformed,slow"])
        .args(["--json", json_f.to_str().unwrap()]);
    let o = ferrohsm_test_support::daemon::output_within(&mut c, Duration::from_secs(300));
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_f).unwrap()).unwrap();
    assert!(r["total_ops"].as_u64().unwrap() > 0, "{out}");
    for field in ["wrong_results", "isolation_violations", "unexpected_errors"] {
        assert_eq!(r[field], 0, "{field}: {out}");
    }
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{out}");
    // Everything it changed is in the audit chain, which verifies from the database.
    let v = ok(&d.admin(&["audit", "verify"], &[]));
    assert!(v.starts_with("audit chain ok: "), "{v}");
}
