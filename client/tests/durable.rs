//! Durable keys, with the real `hsmd` and `hsmctl` binaries and real SQLite files: restarts,
//! SIGKILL mid-write, tampered records, passphrases and key files, what is on disk, and a
//! store of 100,000 keys.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/daemon.rs"]
mod daemon;
mod support;

use daemon::Daemon;
use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;
use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Status};

fn hsmctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hsmctl"))
}

fn hsmd_bin() -> PathBuf {
    hsmctl_bin().with_file_name("hsmd")
}

/// A data directory made by the real `hsmd init`, and a way to (re)start `hsmd` on it.
struct Data {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ports: daemon::Ports,
}

impl Data {
    /// `hsmd init` (with `env`, e.g. a passphrase) on free ports.
    fn init(clients: &str, env: &[(&str, &str)]) -> Data {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let ports = daemon::Ports::new();
        let o = Command::new(hsmd_bin())
            .args(["init", "--dir", dir.to_str().unwrap(), "--clients", clients])
            .args(ports.args())
            .env_remove("HSMD_PASSPHRASE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Data {
            _tmp: tmp,
            dir,
            ports,
        }
    }

    fn config(&self) -> String {
        self.dir.join("hsmd.toml").display().to_string()
    }

    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let (d, lines) =
            Daemon::start_env(&hsmd_bin(), &self.dir, &["--config", &self.config()], env);
        assert!(lines.last().unwrap().starts_with(&self.ports.ready_line()));
        d
    }

    /// Runs `hsmd ARGS`, which must exit (not serve) within 20 s.
    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        let mut child = Command::new(hsmd_bin())
            .args(args)
            .env_remove("HSMD_PASSPHRASE")
            .env_remove("HSMD_NEW_PASSPHRASE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "hsmd kept running: {args:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("listening"), "hsmd served: {out}");
        // Nothing listens on its port either.
        assert!(std::net::TcpStream::connect(&self.ports.tcp).is_err());
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{name}.toml"))
    }

    fn connect(&self, name: &str) -> BlockingClient {
        BlockingClient::connect(&Profile::load(&self.profile(name)).unwrap(), None).unwrap()
    }

    fn db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(hsmctl_bin())
            .arg("--profile")
            .arg(self.profile("alice"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn label(s: &str) -> KeyRef {
    KeyRef::Label(s.parse().unwrap())
}

fn spec(t: KeyType, l: &str, exportable: bool) -> KeySpec {
    KeySpec {
        key_type: t,
        label: l.parse().unwrap(),
        usage: None,
        exportable,
        session: false,
    }
}

fn status<T: std::fmt::Debug>(r: Result<T, ferrohsm_client::ClientError>) -> Status {
    r.unwrap_err().status().unwrap()
}

#[test]
fn keys_survive_a_restart_and_sign_with_the_same_key() {
    let d = Data::init("alice", &[]);
    let daemon = d.start(&[]);
    let w = |n: &str| d.dir.join(n).display().to_string();
    std::fs::write(w("msg"), b"signed before and after a restart\n").unwrap();
    let made = ok(&d.ctl(&["keygen", "--type", "ed25519", "--label", "signer"]));
    ok(&d.ctl(&[
        "keygen", "--type", "p256", "--label", "ec", "--usage", "sign",
    ]));
    ok(&d.ctl(&["keygen", "--type", "hmac-sha256", "--label", "m"]));
    ok(&d.ctl(&["keygen", "--type", "ed25519", "--label", "gone"]));
    ok(&d.ctl(&["delete", "gone"]));
    ok(&d.ctl(&["keygen", "--type", "ed25519", "--label", "tmp", "--session"]));
    ok(&d.ctl(&["pubkey", "signer", "--pem"]));
    std::fs::write(w("pub.pem"), ok(&d.ctl(&["pubkey", "signer", "--pem"]))).unwrap();
    ok(&d.ctl(&["sign", "signer", "--in", &w("msg"), "--out", &w("sig1")]));
    ok(&d.ctl(&["mac", "m", "--in", &w("msg"), "--out", &w("mac1")]));
    let before = ok(&d.ctl(&["--json", "list"]));
    assert_eq!(daemon.terminate().code(), Some(0));

    let daemon = d.start(&[]);
    let after = ok(&d.ctl(&["--json", "list"]));
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
    ok(&d.ctl(&["sign", "signer", "--in", &w("msg"), "--out", &w("sig2")]));
    ok(&d.ctl(&["mac-verify", "m", "--in", &w("msg"), "--mac", &w("mac1")]));
    let next = ok(&d.ctl(&["keygen", "--type", "ed25519", "--label", "later"]));
    assert_eq!(
        next.split_whitespace().next(),
        Some("5"),
        "deleted id 4 is never reused"
    );
    if let Some(ossl) = support::openssl() {
        for sig in ["sig1", "sig2"] {
            let o = Command::new(ossl)
                .args([
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-inkey",
                    &w("pub.pem"),
                    "-rawin",
                ])
                .args(["-in", &w("msg"), "-sigfile", &w(sig)])
                .output()
                .unwrap();
            assert!(o.status.success(), "openssl rejected {sig}: {o:?}");
        }
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// What load clients saw acknowledged: label -> (id, public key), and deleted labels.
#[derive(Default)]
struct Acked {
    made: BTreeMap<String, (u32, Vec<u8>)>,
    deleted: std::collections::BTreeSet<String>,
}

fn crash_cycles(cycles: u32) {
    let d = Data::init("alice,bob", &[]);
    let acked = Arc::new(Mutex::new(Acked::default()));
    for cycle in 0..cycles {
        let daemon = d.start(&[]);
        let mut threads = Vec::new();
        for (t, who) in ["alice", "alice", "bob", "bob"].into_iter().enumerate() {
            let (acked, profile) = (acked.clone(), d.profile(who));
            threads.push(std::thread::spawn(move || {
                let hsm = BlockingClient::connect(&Profile::load(&profile).unwrap(), None).unwrap();
                let c = hsm.client();
                for i in 0u32.. {
                    let l = format!("{who}-c{cycle}-t{t}-{i}");
                    let Ok(k) = hsm.block_on(c.generate_spec(spec(KeyType::Ed25519, &l, false)))
                    else {
                        return;
                    };
                    let Ok((_, pk)) = hsm.block_on(c.public_key(&KeyRef::Id(k.id))) else {
                        return;
                    };
                    acked.lock().unwrap().made.insert(l.clone(), (k.id, pk));
                    if i % 3 == 2 {
                        let victim = format!("{who}-c{cycle}-t{t}-{}", i - 1);
                        if hsm.block_on(c.delete(&label(&victim))).is_err() {
                            // Cut off mid-delete: it may or may not have happened.
                            acked.lock().unwrap().made.remove(&victim);
                            return;
                        }
                        acked.lock().unwrap().deleted.insert(victim);
                    }
                }
            }));
        }
        // Kill at a different moment each cycle, mid-write: once this cycle's clients have had
        // something acknowledged (a loaded machine may take a while to connect them).
        let tag = format!("-c{cycle}-");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !acked.lock().unwrap().made.keys().any(|l| l.contains(&tag)) {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: nothing was acknowledged"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_millis(50 + u64::from(nanos % 400)));
        daemon.kill();
        for t in threads {
            t.join().unwrap();
        }
        // The store opens, and holds exactly what was acknowledged.
        let daemon = d.start(&[]);
        let a = acked.lock().unwrap();
        assert!(!a.made.is_empty(), "cycle {cycle}: nothing was created");
        for who in ["alice", "bob"] {
            let hsm = d.connect(who);
            let listed: BTreeMap<String, u32> = hsm
                .list()
                .unwrap()
                .into_iter()
                .map(|k| (k.label.to_string(), k.id))
                .collect();
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
                assert_eq!(&now, pk, "key {l} changed");
                let sig = hsm.sign(&KeyRef::Id(*id), b"still works").unwrap();
                hsm.verify(&KeyRef::Id(*id), b"still works", &sig).unwrap();
            }
        }
        drop(a);
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

/// Opens keys.db directly, as an attacker with the file would.
fn sql(d: &Data) -> rusqlite::Connection {
    rusqlite::Connection::open(d.db()).unwrap()
}

#[test]
fn tampered_records_are_refused_and_every_other_key_still_works() {
    let d = Data::init("alice,bob", &[]);
    let daemon = d.start(&[]);
    let (a, b) = (d.connect("alice"), d.connect("bob"));
    // alice: flip 1, swapa 2, swapb 3, moved 4, fine 5, traded 6; bob: bobs 1, five deleted
    // (2..6, never reused), bobtraded 7.
    for l in ["flip", "swapa", "swapb", "moved", "fine", "traded"] {
        a.block_on(a.client().generate_spec(spec(KeyType::Ed25519, l, false)))
            .unwrap();
    }
    for l in ["bobs", "f2", "f3", "f4", "f5", "f6", "bobtraded"] {
        b.block_on(b.client().generate_spec(spec(KeyType::Ed25519, l, false)))
            .unwrap();
    }
    for l in ["f2", "f3", "f4", "f5", "f6"] {
        b.block_on(b.client().delete(&label(l))).unwrap();
    }
    let fine_sig = a.sign(&label("fine"), b"m").unwrap();
    drop((a, b));
    assert_eq!(daemon.terminate().code(), Some(0));

    let db = sql(&d);
    let blob = |l: &str| -> Vec<u8> {
        db.query_row("SELECT sealed FROM keys WHERE label = ?1", [l], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let set = |l: &str, v: &[u8]| {
        db.execute(
            "UPDATE keys SET sealed = ?1 WHERE label = ?2",
            rusqlite::params![v, l],
        )
        .unwrap();
    };
    // A byte flipped in one sealed record.
    let mut f = blob("flip");
    f[20] ^= 1;
    set("flip", &f);
    // Two records' material swapped.
    let (sa, sb) = (blob("swapa"), blob("swapb"));
    set("swapa", &sb);
    set("swapb", &sa);
    // Two records' owners swapped (alice has no id 7, bob no id 6).
    db.execute_batch(
        "UPDATE keys SET owner = 'tmp' WHERE owner = 'alice' AND label = 'traded';
         UPDATE keys SET owner = 'alice' WHERE owner = 'bob' AND label = 'bobtraded';
         UPDATE keys SET owner = 'bob' WHERE owner = 'tmp';",
    )
    .unwrap();
    // A record moved to another owner (bob has no key with that id).
    db.execute(
        "UPDATE keys SET owner = 'bob', id = 99 WHERE owner = 'alice' AND label = 'moved'",
        [],
    )
    .unwrap();
    drop(db);

    let daemon = d.start(&[]);
    let (a, b) = (d.connect("alice"), d.connect("bob"));
    for l in ["flip", "swapa", "swapb"] {
        assert_eq!(
            status(a.sign(&label(l), b"m")),
            Status::KeyStoreIntegrity,
            "{l} must be refused"
        );
        assert_eq!(
            status(a.block_on(a.client().info(&label(l)))),
            Status::KeyStoreIntegrity
        );
    }
    // Swapped owners: each side finds a record that is not its own, and refuses it.
    assert_eq!(
        status(a.sign(&label("bobtraded"), b"m")),
        Status::KeyStoreIntegrity
    );
    assert_eq!(
        status(b.sign(&label("traded"), b"m")),
        Status::KeyStoreIntegrity
    );
    assert_eq!(status(a.sign(&label("traded"), b"m")), Status::KeyNotFound);
    // The moved key is neither alice's any more nor usable by bob.
    assert_eq!(status(a.sign(&label("moved"), b"m")), Status::KeyNotFound);
    assert_eq!(
        status(b.sign(&label("moved"), b"m")),
        Status::KeyStoreIntegrity
    );
    assert_eq!(
        status(b.sign(&KeyRef::Id(99), b"m")),
        Status::KeyStoreIntegrity
    );
    // A damaged record is never dropped, not even by an explicit delete.
    assert_eq!(
        status(a.block_on(a.client().delete(&label("flip")))),
        Status::KeyStoreIntegrity
    );
    assert_eq!(
        status(b.block_on(b.client().delete(&KeyRef::Id(99)))),
        Status::KeyStoreIntegrity
    );
    // Every other key keeps working, with its own material.
    let sig = a.sign(&label("fine"), b"m").unwrap();
    assert_eq!(
        sig, fine_sig,
        "Ed25519 is deterministic: the same key signed"
    );
    b.sign(&label("bobs"), b"m").unwrap();
    let listed: Vec<String> = a
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label.to_string())
        .collect();
    assert_eq!(listed, ["fine"]);
    assert_eq!(
        b.list()
            .unwrap()
            .into_iter()
            .map(|k| k.label.to_string())
            .collect::<Vec<_>>(),
        ["bobs"]
    );
    drop((a, b));
    assert_eq!(daemon.terminate().code(), Some(0));
    // Still there, untouched, for the operator.
    let n: i64 = sql(&d)
        .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 8);
}

#[test]
fn a_damaged_or_foreign_store_refuses_to_start() {
    let d = Data::init("alice", &[]);
    let daemon = d.start(&[]);
    let a = d.connect("alice");
    for i in 0..200 {
        a.generate(&format!("k{i}").parse().unwrap(), KeyType::HmacSha256)
            .unwrap();
    }
    drop(a);
    assert_eq!(daemon.terminate().code(), Some(0));
    let cfg = d.config();
    let pristine = std::fs::read(d.db()).unwrap();
    let _ = std::fs::remove_file(d.dir.join("keys.db-wal"));
    let _ = std::fs::remove_file(d.dir.join("keys.db-shm"));

    // A second hsmd on a store in use is refused.
    let daemon = d.start(&[]);
    let (code, err) = d.fails_while_running(&["--config", &cfg]);
    assert_eq!(code, Some(1));
    assert!(err.contains("in use by another hsmd"), "{err}");
    assert_eq!(daemon.terminate().code(), Some(0));

    // Truncated.
    std::fs::write(d.db(), &pristine[..pristine.len() / 2]).unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("keys.db") && (err.contains("integrity") || err.contains("malformed")),
        "{err}"
    );
    // A schema from a newer hsmd.
    std::fs::write(d.db(), &pristine).unwrap();
    sql(&d).execute_batch("PRAGMA user_version = 7").unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("schema version 7"), "{err}");
    // Missing (for example after moving the data directory without it).
    std::fs::remove_file(d.db()).unwrap();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("keys.db") && err.contains("hsmd init"),
        "{err}"
    );
}

impl Data {
    /// Like `fails`, while another hsmd holds the ports: only checks the exit.
    fn fails_while_running(&self, args: &[&str]) -> (Option<i32>, String) {
        let o = Command::new(hsmd_bin()).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

#[test]
fn a_passphrase_store_opens_only_with_its_passphrase() {
    let env = [("HSMD_PASSPHRASE", "correct horse battery")];
    let d = Data::init("alice", &env);
    assert!(
        !d.dir.join("master.key").exists(),
        "a passphrase store has no key file"
    );
    let cfg = d.config();
    let daemon = d.start(&env);
    let a = d.connect("alice");
    a.generate(&"k".parse().unwrap(), KeyType::Ed25519).unwrap();
    drop(a);
    assert_eq!(daemon.terminate().code(), Some(0));

    let t = Instant::now();
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
    assert!(t.elapsed() < Duration::from_secs(30));

    // --passphrase-file (a trailing newline is not part of it).
    let pf = d.dir.join("pass.txt");
    std::fs::write(&pf, "correct horse battery\n").unwrap();
    let pfs = pf.to_str().unwrap();
    let daemon = {
        let (dm, _) = Daemon::start_env(
            &hsmd_bin(),
            &d.dir,
            &["--config", &cfg, "--passphrase-file", pfs],
            &[],
        );
        dm
    };
    d.connect("alice").info_ok("k");
    assert_eq!(daemon.terminate().code(), Some(0));

    // passwd re-wraps the master key: the old passphrase stops working, the keys stay.
    let o = Command::new(hsmd_bin())
        .args(["passwd", "--config", &cfg])
        .envs([
            ("HSMD_PASSPHRASE", "correct horse battery"),
            ("HSMD_NEW_PASSPHRASE", "new one"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(hsmd_bin())
        .args(["passwd", "--config", &cfg])
        .envs([
            ("HSMD_PASSPHRASE", "correct horse battery"),
            ("HSMD_NEW_PASSPHRASE", "x"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "the old passphrase no longer unlocks"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"));
    let (code, _) = d.fails(&["--config", &cfg], &env);
    assert_eq!(code, Some(1));
    let daemon = d.start(&[("HSMD_PASSPHRASE", "new one")]);
    d.connect("alice").info_ok("k");
    assert_eq!(daemon.terminate().code(), Some(0));

    // init --passphrase-file makes a passphrase store too; a key-file store is never
    // silently left as it is when a passphrase is asked for.
    let k = Data::init("alice", &[]);
    let init = |dir: &Path, extra: &[&str]| {
        Command::new(hsmd_bin())
            .args(["init", "--dir", dir.to_str().unwrap(), "--clients", "alice"])
            .args(extra)
            .env_remove("HSMD_PASSPHRASE")
            .output()
            .unwrap()
    };
    let o = init(&k.dir, &["--force", "--passphrase-file", pfs]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("protected by the key file"));
    let fresh = d.dir.parent().unwrap().join("fresh");
    assert!(init(&fresh, &["--passphrase-file", pfs]).status.success());
    assert!(!fresh.join("master.key").exists());
    let cfg = fresh.join("hsmd.toml").display().to_string();
    let (code, err) = d.fails(&["--config", &cfg], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("passphrase"), "{err}");
}

trait InfoOk {
    fn info_ok(&self, l: &str);
}

impl InfoOk for BlockingClient {
    fn info_ok(&self, l: &str) {
        self.block_on(self.client().info(&label(l))).unwrap();
    }
}

#[test]
fn a_missing_or_wrong_key_file_or_unreadable_store_refuses_to_start() {
    let d = Data::init("alice", &[]);
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
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        // Root reads anything, so run hsmd as nobody: the data directory (0700, root's) is
        // then unreadable to it.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(d.dir.parent().unwrap(), 0o755).unwrap();
        mode(&d.dir, 0o700).unwrap();
        match Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(hsmd_bin())
            .args(["--config", &cfg])
            .output()
        {
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                assert_eq!(o.status.code(), Some(1), "{err}");
                assert!(
                    err.contains("hsmd.toml") && err.contains("ermission denied"),
                    "{err}"
                );
                assert!(!String::from_utf8_lossy(&o.stdout).contains("listening"));
            }
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "setpriv missing"
                );
                eprintln!("SKIPPED: setpriv is missing ({e}); unreadable data dir not checked");
            }
        }
    } else {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d.db(), std::fs::Permissions::from_mode(0o000)).unwrap();
        let (code, err) = d.fails(&["--config", &cfg], &[]);
        assert_eq!(code, Some(1));
        assert!(err.contains("keys.db"), "{err}");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn no_file_in_the_data_directory_holds_a_key_in_plaintext() {
    let d = Data::init("alice", &[]);
    let daemon = d.start(&[]);
    let a = d.connect("alice");
    let c = a.client();
    let mut secrets = Vec::new();
    for (i, t) in KeyType::ALL.into_iter().enumerate() {
        for n in 0..20 {
            let l = format!("x{i}-{n}");
            a.block_on(c.generate_spec(spec(t, &l, true))).unwrap();
            secrets.push((
                l.clone(),
                a.block_on(c.export(&label(&l))).unwrap().to_vec(),
            ));
        }
    }
    // Deleted keys too: secure_delete overwrites their rows.
    for (l, _) in secrets.iter().step_by(3) {
        a.block_on(c.delete(&label(l))).unwrap();
    }
    let scan = |when: &str| {
        let files = files_under(&d.dir);
        assert!(files.iter().any(|f| f.ends_with("keys.db")));
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            for (l, s) in &secrets {
                assert_eq!(s.len(), 32);
                assert!(
                    !contains(&bytes, s),
                    "{when}: {} holds the plaintext of {l}",
                    f.display()
                );
            }
        }
    };
    scan("while running (WAL present)");
    drop(a);
    assert_eq!(daemon.terminate().code(), Some(0));
    scan("after shutdown");
}

#[test]
fn a_hundred_thousand_keys_start_fast_and_memory_follows_the_cache() {
    const N: u32 = 100_000;
    let d = Data::init("alice", &[]);
    // Fill the store through the server's own store code (a real SQLite file, sealed records),
    // which is much faster than 100,000 keygens over the wire.
    {
        use ferrohsm_server::keys::store::{KeyRecord, KeyStore, Mutation, Origin};
        let unlock =
            ferrohsm_server::keys::unlock_for(&d.db(), Some(&d.dir.join("master.key")), None)
                .unwrap();
        let (mut store, master) = ferrohsm_server::keys::open_store(&d.db(), &unlock).unwrap();
        let material = ferrohsm_server::keys::material::KeyMaterial::generate(KeyType::Ed25519)
            .unwrap()
            .to_stored();
        for chunk in 0..N / 10_000 {
            let batch = (0..10_000)
                .map(|i| Mutation::Create {
                    record: KeyRecord {
                        owner: "alice".into(),
                        id: 0,
                        label: format!("k{}", chunk * 10_000 + i).parse().unwrap(),
                        key_type: KeyType::Ed25519,
                        usage: KeyType::Ed25519.allowed_usage(),
                        exportable: false,
                        origin: Origin::Generated,
                        created: 1,
                        version: 1,
                    },
                    secret: material.clone(),
                })
                .collect();
            for r in store.commit(&master, batch).unwrap() {
                r.unwrap();
            }
        }
    }
    let cfg = d.dir.join("hsmd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("cache_keys = 4096", "cache_keys = 256")).unwrap();
    let t = Instant::now();
    let daemon = d.start(&[]);
    let started = t.elapsed();
    assert!(
        started < Duration::from_secs(2),
        "hsmd took {started:?} to start with {N} keys"
    );
    let a = d.connect("alice");
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // Sign with 3,000 different keys (far more than the cache holds), by label and by id.
    let mut x: u32 = 12345;
    let mut after_first = 0;
    for i in 0..3000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let k = x % N;
        let key = if i % 2 == 0 {
            label(&format!("k{k}"))
        } else {
            KeyRef::Id(k + 1)
        };
        let sig = a.sign(&key, b"hundred thousand").unwrap();
        assert_eq!(sig.len(), 64);
        if i == 500 {
            after_first = rss();
        }
    }
    let end = rss();
    // 100,000 opened keys would take tens of MiB; with 256 cached the growth after the first
    // 500 signatures stays small.
    assert!(
        end < 64 * 1024,
        "RSS {end} KiB: are all {N} keys in memory?"
    );
    assert!(
        end < after_first + 8 * 1024,
        "RSS grew from {after_first} KiB to {end} KiB while touching 2,500 more keys"
    );
    eprintln!("{N} keys: started in {started:?}; RSS {after_first} KiB -> {end} KiB");
    drop(a);
    assert_eq!(daemon.terminate().code(), Some(0));
}
