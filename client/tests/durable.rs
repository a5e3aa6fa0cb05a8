//! Durable keys, with the real `hsmd` and `hsmctl` binaries and real SQLite files: restarts,
//! SIGKILL mid-write, passphrases and key files. (What is on disk, tampering and a store of
//! 100,000 keys: `at_rest.rs`.)
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{KeyRef, KeyType};
use ferrohsm_test_support::daemon::run_hsmd;
use ferrohsm_test_support::{Data, ci, label, ok, spec, wait};

/// `hsmctl --profile alice ARGS`, its stdout (it must succeed).
fn alice(d: &Data, args: &[&str]) -> String {
    ok(&d.ctl("alice", args))
}

#[test]
fn keys_survive_a_restart_and_sign_with_the_same_key() {
    let d = Data::init("alice");
    let daemon = d.start();
    let w = |n: &str| d.path(n).display().to_string();
    std::fs::write(w("msg"), b"signed before and after a restart\n").unwrap();
    let made = alice(&d, &["keygen", "--type", "ed25519", "--label", "signer"]);
    alice(
        &d,
        &[
            "keygen", "--type", "p256", "--label", "ec", "--usage", "sign",
        ],
    );
    alice(&d, &["keygen", "--type", "hmac-sha256", "--label", "m"]);
    alice(&d, &["keygen", "--type", "ed25519", "--label", "gone"]);
    alice(&d, &["delete", "gone"]);
    alice(
        &d,
        &["keygen", "--type", "ed25519", "--label", "tmp", "--session"],
    );
    std::fs::write(w("pub.pem"), alice(&d, &["pubkey", "signer", "--pem"])).unwrap();
    alice(
        &d,
        &["sign", "signer", "--in", &w("msg"), "--out", &w("sig1")],
    );
    alice(&d, &["mac", "m", "--in", &w("msg"), "--out", &w("mac1")]);
    let before = alice(&d, &["--json", "list"]);
    assert_eq!(daemon.terminate().code(), Some(0));

    let daemon = d.start();
    let after = alice(&d, &["--json", "list"]);
    assert_eq!(
        after, before,
        "ids, labels, types, usage and created survive"
    );
    let keys: serde_json::Value = serde_json::from_str(&after).unwrap();
    let labels: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["signer", "ec", "m"],
        "session and deleted keys are gone"
    );
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["lifetime"] == "persistent")
    );
    assert_eq!(made.split_whitespace().next(), Some("1"));
    assert_eq!(
        alice(&d, &["pubkey", "signer", "--pem"]),
        std::fs::read_to_string(w("pub.pem")).unwrap(),
        "the same key after the restart"
    );
    alice(
        &d,
        &["sign", "signer", "--in", &w("msg"), "--out", &w("sig2")],
    );
    alice(
        &d,
        &["mac-verify", "m", "--in", &w("msg"), "--mac", &w("mac1")],
    );
    let next = alice(&d, &["keygen", "--type", "ed25519", "--label", "later"]);
    assert_eq!(
        next.split_whitespace().next(),
        Some("5"),
        "deleted id 4 is never reused"
    );
    // Ed25519 is deterministic: the same key gives the same signature before and after.
    assert_eq!(
        std::fs::read(w("sig1")).unwrap(),
        std::fs::read(w("sig2")).unwrap()
    );
    if ci::tool("openssl", "openssl") {
        for sig in ["sig1", "sig2"] {
            ferrohsm_test_support::daemon::ed25519_verifies(
                &w("pub.pem"),
                &w("msg"),
                &w(sig),
                Path::new("/"),
            );
        }
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// What load clients saw acknowledged: label -> (id, public key), deleted labels, and the
/// changes cut off by the kill (they may or may not have happened).
#[derive(Default)]
struct Acked {
    made: BTreeMap<String, (u32, Option<Vec<u8>>)>,
    deleted: BTreeSet<String>,
    maybe: BTreeSet<String>,
    /// Acknowledged changes (creations and deletions) per worker in the current cycle.
    changes: Vec<u64>,
}

/// A worker's call failed: fine only if hsmd was killed and the connection died with it.
fn cut_off(killed: &AtomicBool, what: &str, e: ClientError) {
    assert!(
        killed.load(Ordering::SeqCst)
            && matches!(
                e,
                ClientError::Connection(_) | ClientError::ConnectionLost(_)
            ),
        "{what} failed, and not because hsmd was killed: {e:?}"
    );
}

fn crash_cycles(cycles: u32) {
    let d = Data::init("alice,bob");
    // A hundred cycles keep more keys than the default quota: this test is about durability.
    d.set("limits", "max_keys_per_client", "1000000");
    let acked = Arc::new(Mutex::new(Acked::default()));
    for cycle in 0..cycles {
        let daemon = d.start();
        let killed = Arc::new(AtomicBool::new(false));
        let workers = ["alice", "alice", "bob", "bob"];
        acked.lock().unwrap().changes = vec![0; workers.len()];
        let mut threads = Vec::new();
        for (t, who) in workers.into_iter().enumerate() {
            let (acked, killed) = (acked.clone(), killed.clone());
            // Connected before the kill can come: a failed connect fails the test.
            let hsm = d.connect(who);
            threads.push(std::thread::spawn(move || {
                let c = hsm.client();
                for i in 0u32.. {
                    let l = format!("{who}-c{cycle}-t{t}-{i}");
                    let k = match hsm.block_on(c.generate_spec(spec(KeyType::Ed25519, &l))) {
                        Ok(k) => k,
                        Err(e) => {
                            acked.lock().unwrap().maybe.insert(l.clone());
                            return cut_off(&killed, &format!("keygen {l}"), e);
                        }
                    };
                    {
                        let mut a = acked.lock().unwrap();
                        a.made.insert(l.clone(), (k.id, None));
                        a.changes[t] += 1;
                    }
                    match hsm.block_on(c.public_key(&KeyRef::Id(k.id))) {
                        Ok((_, pk)) => {
                            acked.lock().unwrap().made.get_mut(&l).unwrap().1 = Some(pk);
                        }
                        Err(e) => return cut_off(&killed, &format!("pubkey {l}"), e),
                    }
                    if i % 3 == 2 {
                        let victim = format!("{who}-c{cycle}-t{t}-{}", i - 1);
                        if let Err(e) = hsm.block_on(c.delete(&label(&victim))) {
                            // Cut off mid-delete: it may or may not have happened.
                            let mut a = acked.lock().unwrap();
                            a.made.remove(&victim);
                            a.maybe.insert(victim.clone());
                            drop(a);
                            return cut_off(&killed, &format!("delete {victim}"), e);
                        }
                        let mut a = acked.lock().unwrap();
                        a.deleted.insert(victim);
                        a.changes[t] += 1;
                    }
                }
            }));
        }
        // Kill at a different moment each cycle, mid-write: once every worker of this cycle
        // has had a change acknowledged (a loaded machine may take a while).
        wait::until(
            &format!("cycle {cycle}: a change acknowledged to every worker"),
            Duration::from_secs(60),
            || acked.lock().unwrap().changes.iter().all(|&n| n > 0),
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_millis(50 + u64::from(nanos % 400)));
        killed.store(true, Ordering::SeqCst);
        daemon.kill();
        for t in threads {
            t.join().expect("a worker saw an error other than the kill");
        }
        // The store opens, and holds exactly what was acknowledged.
        let daemon = d.start();
        let a = acked.lock().unwrap();
        let changes: u64 = a.changes.iter().sum();
        assert!(
            a.changes.iter().all(|&n| n > 0),
            "cycle {cycle}: every worker had changes acknowledged: {:?}",
            a.changes
        );
        for who in ["alice", "bob"] {
            let hsm = d.connect(who);
            let listed: BTreeMap<String, u32> = hsm
                .list()
                .unwrap()
                .into_iter()
                .map(|k| (k.label.to_string(), k.id))
                .collect();
            // Nothing appears that no one asked for: every key listed was acknowledged, or
            // was in flight when hsmd died.
            for l in listed.keys() {
                assert!(
                    (a.made.contains_key(l) && !a.deleted.contains(l)) || a.maybe.contains(l),
                    "cycle {cycle}: {l} is in the store but was never acknowledged"
                );
            }
            for (l, (id, pk)) in a.made.iter().filter(|(l, _)| l.starts_with(who)) {
                if a.deleted.contains(l) {
                    assert!(
                        !listed.contains_key(l),
                        "acknowledged delete of {l} came back"
                    );
                    continue;
                }
                assert_eq!(listed.get(l), Some(id), "acknowledged key {l} lost");
                if !l.contains(&format!("-c{cycle}-")) {
                    continue; // checked in full in its own cycle; listed again here
                }
                let (_, now) = hsm
                    .block_on(hsm.client().public_key(&KeyRef::Id(*id)))
                    .unwrap();
                if let Some(pk) = pk {
                    assert_eq!(&now, pk, "key {l} changed");
                }
                let sig = hsm.sign(&KeyRef::Id(*id), b"still works").unwrap();
                hsm.verify(&KeyRef::Id(*id), b"still works", &sig).unwrap();
            }
        }
        drop(a);
        assert!(changes > 0, "cycle {cycle}: nothing was acknowledged");
        assert_eq!(daemon.terminate().code(), Some(0));
    }
}

#[test]
fn sigkill_mid_write_never_loses_an_acknowledged_change() {
    crash_cycles(3);
}

#[test]
#[ignore = "long: 100 SIGKILL cycles (run with --ignored)"]
fn stress_sigkill_cycles() {
    crash_cycles(100);
}

#[test]
fn a_passphrase_store_opens_only_with_its_passphrase() {
    let env = [("HSMD_PASSPHRASE", "correct horse battery")];
    let d = Data::init_with("alice", &[], &env);
    assert!(
        !d.dir.join("master.key").exists(),
        "a passphrase store has no key file"
    );
    let cfg = d.config();
    let daemon = d.start_env(&env);
    let a = d.connect("alice");
    a.generate(&"k".parse().unwrap(), KeyType::Ed25519).unwrap();
    drop(a);
    assert_eq!(daemon.terminate().code(), Some(0));

    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("passphrase") && err.contains("HSMD_PASSPHRASE"),
        "{err}"
    );
    let (code, err) = d.fails(&["--config", &cfg], &[("HSMD_PASSPHRASE", "wrong")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("wrong passphrase"), "{err}");
    let (code, err) = d.fails(&["--config", &cfg], &[("HSMD_PASSPHRASE", "")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("passphrase") && err.contains("empty"), "{err}");

    // --passphrase-file (a trailing newline is not part of it).
    let pf = d.path("pass.txt");
    std::fs::write(&pf, "correct horse battery\n").unwrap();
    let pfs = pf.to_str().unwrap();
    let daemon = d.start_with(&["--passphrase-file", pfs], &[]);
    info_ok(&d.connect("alice"), "k");
    assert_eq!(daemon.terminate().code(), Some(0));

    // passwd re-wraps the master key: the old passphrase stops working, the keys stay.
    ok(&run_hsmd(
        &["passwd", "--config", &cfg],
        &[
            ("HSMD_PASSPHRASE", "correct horse battery"),
            ("HSMD_NEW_PASSPHRASE", "new one"),
        ],
    ));
    let o = run_hsmd(
        &["passwd", "--config", &cfg],
        &[
            ("HSMD_PASSPHRASE", "correct horse battery"),
            ("HSMD_NEW_PASSPHRASE", "x"),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "the old passphrase no longer unlocks"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"));
    let (code, err) = d.fails(&["--config", &cfg], &env);
    assert_eq!(code, Some(1));
    assert!(err.contains("wrong passphrase"), "{err}");
    let daemon = d.start_env(&[("HSMD_PASSPHRASE", "new one")]);
    info_ok(&d.connect("alice"), "k");
    assert_eq!(daemon.terminate().code(), Some(0));

    // init --passphrase-file makes a passphrase store too; a key-file store is never
    // silently left as it is when a passphrase is asked for.
    let k = Data::init("alice");
    let init = |dir: &Path, extra: &[&str]| {
        run_hsmd(
            &[
                &["init", "--dir", dir.to_str().unwrap(), "--clients", "alice"][..],
                extra,
            ]
            .concat(),
            &[],
        )
    };
    let o = init(&k.dir, &["--force", "--passphrase-file", pfs]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("protected by the key file"));
    let fresh = d.path("fresh");
    ok(&init(&fresh, &["--passphrase-file", pfs]));
    assert!(!fresh.join("master.key").exists());
    let cfg = fresh.join("hsmd.toml").display().to_string();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("passphrase"), "{err}");
}

/// `info` on `l` succeeds.
fn info_ok(hsm: &BlockingClient, l: &str) {
    hsm.block_on(hsm.client().info(&label(l))).unwrap();
}

#[test]
fn a_missing_or_wrong_key_file_or_unreadable_store_refuses_to_start() {
    let d = Data::init("alice");
    let cfg = d.config();
    let kf = d.dir.join("master.key");
    let good = std::fs::read(&kf).unwrap();
    std::fs::remove_file(&kf).unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("master.key"), "{err}");
    std::fs::write(&kf, "not hex\n").unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("master.key") && err.contains("64 hex"),
        "{err}"
    );
    std::fs::write(&kf, format!("{}\n", "ab".repeat(32))).unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not unlock"), "{err}");
    // A key file given to a passphrase store (and vice versa) names the mismatch.
    let (code, err) = d.fails(&["--config", &cfg], &[("HSMD_PASSPHRASE", "p")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not unlock"), "{err}");
    std::fs::write(&kf, &good).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    if ci::ignores_file_modes() {
        // This process reads anything, so run hsmd as nobody: the data directory (0700,
        // root's) is then unreadable to it.
        if !ci::root("runs hsmd as another user") || !ci::tool("setpriv", "util-linux") {
            return;
        }
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(d.dir.parent().unwrap(), 0o755).unwrap();
        mode(&d.dir, 0o700).unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .env_remove("HSMD_PASSPHRASE")
            .arg(ferrohsm_test_support::bins::hsmd())
            .args(["--config", &cfg]);
        let o = ferrohsm_test_support::daemon::output_within(
            &mut c,
            ferrohsm_test_support::daemon::EXIT_DEADLINE,
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("hsmd.toml") && err.contains("ermission denied"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&o.stdout).contains("listening"));
    } else {
        std::fs::set_permissions(d.db(), std::fs::Permissions::from_mode(0o000)).unwrap();
        let (code, err) = d.fails(&["--config", &cfg], &[]);
        assert_eq!(code, Some(1));
        assert!(err.contains("keys.db"), "{err}");
    }
}
