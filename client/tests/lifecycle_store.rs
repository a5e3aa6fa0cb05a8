//! The lifecycle's durable state, end to end with the real binaries: counters across SIGKILL,
//! the audit chain against edits, deletions, swaps and a rolled-back store, and online backup
//! and restore while keys are being created.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferrohsm_client::ClientError;
use ferrohsm_proto::{KeyType, Status};
use ferrohsm_test_support::daemon::{EXIT_DEADLINE, hsmctl_command, output_within};
use ferrohsm_test_support::files::copy_dir;
use ferrohsm_test_support::status::{assert_exit, assert_failed};
use ferrohsm_test_support::{Data, Ports, failed, label, ok, spec, status, wait};

#[test]
fn counters_never_repeat_across_sigkill() {
    let d = Data::init("alice,bob");
    let hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    let a = |args: &[&str]| d.ctl_over("alice", "tcp", args, cwd);
    assert_eq!(ok(&a(&["counter", "create", "c"])).trim(), "0");
    assert_eq!(failed(&a(&["counter", "create", "c"])), "label_in_use");
    assert_eq!(failed(&a(&["counter", "inc", "nope"])), "counter_not_found");
    assert_eq!(
        failed(&d.ctl_over("bob", "shm", &["counter", "read", "c"], cwd)),
        "counter_not_found",
        "counters are per client"
    );
    let seen = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (seen, killed, c) = (seen.clone(), killed.clone(), d.connect("alice"));
            std::thread::spawn(move || {
                let name = "c".parse().unwrap();
                let mut last = 0;
                // Until the kill cuts the connection: any other error fails the test.
                loop {
                    match c.block_on(c.client().counter_inc(&name)) {
                        Ok(v) => {
                            assert!(v > last, "a counter went from {last} to {v}");
                            last = v;
                            seen.fetch_max(v, Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert!(
                                killed.load(Ordering::SeqCst)
                                    && matches!(
                                        e,
                                        ClientError::Connection(_) | ClientError::ConnectionLost(_)
                                    ),
                                "counter inc failed, and not because hsmd was killed: {e:?}"
                            );
                            return last;
                        }
                    }
                }
            })
        })
        .collect();
    wait::until(
        "50 increments acknowledged",
        Duration::from_secs(60),
        || seen.load(Ordering::SeqCst) >= 50,
    );
    killed.store(true, Ordering::SeqCst);
    hsmd.kill();
    for t in threads {
        let last = t.join().expect("a worker saw an error other than the kill");
        assert!(last > 0, "every worker had an increment acknowledged");
    }
    let max = seen.load(Ordering::SeqCst);
    let _hsmd = d.start();
    let next: u64 = ok(&a(&["counter", "inc", "c"])).trim().parse().unwrap();
    assert!(
        next > max,
        "after SIGKILL the counter gave {next}, but {max} was seen"
    );
    let read: u64 = ok(&a(&["counter", "read", "c"])).trim().parse().unwrap();
    assert_eq!(read, next);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&a(&["--json", "counter", "inc", "c"]))).unwrap();
    assert_eq!(json["value"], next + 1);
}

/// Runs `hsmd audit verify` (with a checkpoint): its stdout when the chain verifies, its
/// stderr when it fails (exit 1).
fn verify(d: &Data, checkpoint: Option<&Path>) -> Result<String, String> {
    let mut args = vec!["audit", "verify"];
    let cp;
    if let Some(c) = checkpoint {
        cp = c.display().to_string();
        args.extend(["--checkpoint", &cp]);
    }
    let o = d.admin(&args, &[]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn audit_chain_names_the_first_broken_entry() {
    let d = Data::init("alice,bob");
    let hsmd_running = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"audited").unwrap();
    let a = |args: &[&str]| d.ctl_over("alice", "tcp", args, cwd);
    ok(&a(&["keygen", "--type", "ed25519", "--label", "k"]));
    ok(&a(&[
        "keygen",
        "--type",
        "hmac-sha256",
        "--label",
        "x",
        "--exportable",
    ]));
    ok(&a(&["grant", "k", "--to", "bob", "--ops", "sign"]));
    ok(&a(&["export", "x", "--out", "x.key"]));
    ok(&a(&["counter", "create", "c"]));
    ok(&a(&["counter", "inc", "c"]));
    assert_failed(
        &d.ctl_over("bob", "tcp", &["export", "alice:k", "--out", "no"], cwd),
        "usage_not_permitted",
    );
    assert_failed(
        &a(&["sign", "nope", "--in", "m", "--out", "no"]),
        "key_not_found",
    );
    // A failed login is a denial too.
    std::fs::write(
        cwd.join("mallory.key"),
        std::fs::read(d.dir.join("clients/bob.key")).unwrap(),
    )
    .unwrap();
    let prof = std::fs::read_to_string(d.profile("alice"))
        .unwrap()
        .replace("alice.key", "bob.key");
    std::fs::write(d.dir.join("clients/forged.toml"), prof).unwrap();
    let forged = d.dir.join("clients/forged.toml");
    let mut c = hsmctl_command(&forged);
    c.arg("ping");
    assert_exit(&output_within(&mut c, EXIT_DEADLINE), 3);
    // And on the shm set-up socket.
    let mut c = hsmctl_command(&forged);
    c.args(["--transport", "shm", "ping"]);
    assert_exit(&output_within(&mut c, EXIT_DEADLINE), 3);
    // Queued denials reach the log within the flush interval, while hsmd runs.
    let want = [
        ("keygen", "ok"),
        ("grant", "ok"),
        ("export", "ok"),
        ("counter-create", "ok"),
        ("counter-inc", "ok"),
        ("export", "usage_not_permitted"),
        ("sign", "key_not_found"),
        ("login", "auth_failed"),
    ];
    let logged = |rows: &serde_json::Value| -> Vec<(String, String, String)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (f("op"), f("status"), f("transport"))
            })
            .collect()
    };
    let complete = |rows: &serde_json::Value| {
        let l = logged(rows);
        let has = |op: &str, st: &str, t: Option<&str>| {
            l.iter()
                .any(|(o, s, tr)| o == op && s == st && t.is_none_or(|t| t == tr))
        };
        want.iter().all(|(o, s)| has(o, s, None))
            && has("login", "auth_failed", Some("tcp"))
            && has("login", "auth_failed", Some("shm"))
    };
    let rows: serde_json::Value = wait::eventually(
        "the denials to reach the audit log",
        Duration::from_secs(30),
        || {
            let shown = d.admin(&["audit", "show", "--json"], &[]);
            let rows: serde_json::Value = serde_json::from_str(&ok(&shown)).unwrap();
            complete(&rows).then_some(rows)
        },
    );
    let rows = rows.as_array().unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        for f in [
            "time",
            "client",
            "session",
            "transport",
            "op",
            "key",
            "status",
            "prev_hash",
            "hash",
        ] {
            assert!(!r[f].is_null(), "{f}");
        }
    }
    // No secret enters the log: not the exported key, not in any form.
    let key = std::fs::read(cwd.join("x.key")).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let text = serde_json::to_string(rows).unwrap();
    assert!(!text.contains(&hex));
    assert!(verify(&d, None).unwrap().contains("audit chain ok"));
    let cp = cwd.join("cp");
    let c = d.admin(&["audit", "checkpoint"], &[]);
    std::fs::write(&cp, ok(&c)).unwrap();
    assert!(verify(&d, Some(&cp)).is_ok());
    let since = d.admin(&["audit", "show", "--json", "--since", "3"], &[]);
    let later: serde_json::Value = serde_json::from_str(&ok(&since)).unwrap();
    assert_eq!(later[0]["seq"], 3);
    assert_eq!(hsmd_running.terminate().code(), Some(0));
    let n = rows.len() as i64;

    // Each tampering, on a fresh copy of the store, is named by its entry.
    let pristine = std::fs::read(d.db()).unwrap();
    let tamper = |sql_text: &str| -> String {
        std::fs::write(d.db(), &pristine).unwrap();
        d.sql().execute_batch(sql_text).unwrap();
        verify(&d, None).unwrap_err()
    };
    let e = tamper("UPDATE audit SET key = 'alice:99' WHERE seq = 4");
    assert!(e.contains("entry 4") && e.contains("edited"), "{e}");
    let e = tamper("DELETE FROM audit WHERE seq = 3");
    assert!(e.contains("entry 3"), "{e}");
    let e = tamper(
        "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
         UPDATE audit SET seq = 3 WHERE seq = -1;",
    );
    assert!(e.contains("entry 2"), "{e}");
    let e = tamper(&format!("DELETE FROM audit WHERE seq > {}", n - 2));
    assert!(e.contains("truncated"), "{e}");
    // A whole older store put back (consistent in itself): only the checkpoint tells.
    std::fs::write(d.db(), &pristine).unwrap();
    let hsmd_running = d.start();
    ok(&a(&["keygen", "--type", "ed25519", "--label", "k2"]));
    let c = d.admin(&["audit", "checkpoint"], &[]);
    let cp2 = cwd.join("cp2");
    std::fs::write(&cp2, ok(&c)).unwrap();
    assert_eq!(hsmd_running.terminate().code(), Some(0));
    std::fs::write(d.db(), &pristine).unwrap();
    assert!(verify(&d, None).is_ok());
    let e = verify(&d, Some(&cp2)).unwrap_err();
    assert!(e.contains("truncated after the checkpoint"), "{e}");
    assert!(verify(&d, Some(&cp)).is_ok());
}

/// Rewrites the listen addresses of `from` to those of `to` in a config file or profile (the
/// quoted `"127.0.0.1:PORT"` strings). Data's own port move is for one data directory moving
/// to fresh ports; here files copied from one data directory take another's ports.
fn move_ports(file: &Path, from: &Ports, to: &Ports) {
    let mut text = std::fs::read_to_string(file).unwrap();
    for (a, b) in [
        (&from.tcp, &to.tcp),
        (&from.tls, &to.tls),
        (&from.tls_psk, &to.tls_psk),
    ] {
        let (a, b) = (format!("\"{a}\""), format!("\"{b}\""));
        assert!(text.contains(&a), "{} names no {a}", file.display());
        text = text.replace(&a, &b);
    }
    std::fs::write(file, text).unwrap();
}

#[test]
fn online_backup_while_keys_are_created_restores_a_consistent_snapshot() {
    let d = Data::init("alice");
    let hsmd_running = d.start();
    let acked = Arc::new(acked::Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    // One writer: its keys are committed, and acknowledged, in the order it made them.
    let writer = {
        let (acked, stop, c) = (acked.clone(), stop.clone(), d.connect("alice"));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let l = format!("k{i}");
                c.block_on(c.client().generate_spec(spec(KeyType::Ed25519, &l)))
                    .unwrap();
                acked.push(l);
                i += 1;
            }
        })
    };
    wait::until("20 keys acknowledged", Duration::from_secs(60), || {
        acked.len() >= 20
    });
    let w = tempfile::tempdir().unwrap();
    let backup = w.path().join("b.db");
    let backup_s = backup.to_str().unwrap();
    // Keys acknowledged before the backup started must be in it; keys acknowledged while it
    // ran (before it returned) may be: the snapshot (VACUUM INTO) is taken somewhere in
    // between. Keys acknowledged after it returned are not counted as made during it.
    let before = acked.snapshot();
    let o = d.admin(&["backup", "--out", backup_s], &[]);
    let at_return = acked.snapshot();
    ok(&o);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let all = acked.snapshot();
    assert!(
        at_return.len() > before.len(),
        "no key was acknowledged while the backup ran ({} before it, {} when it returned)",
        before.len(),
        at_return.len()
    );
    let again = d.admin(&["backup", "--out", backup_s], &[]);
    assert_eq!(again.status.code(), Some(1), "a backup never overwrites");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o077,
        0
    );

    // A new data directory, as on a new machine (README): hsmd.toml, clients/, pki/ and
    // master.key copied, no store; on its own ports, since both run on this host.
    let two = Data::init("alice");
    for f in ["keys.db", "audit.pub", "master.key"] {
        std::fs::remove_file(two.dir.join(f)).unwrap();
    }
    std::fs::copy(d.dir.join("master.key"), two.dir.join("master.key")).unwrap();
    copy_dir(&d.dir.join("clients"), &two.dir.join("clients"));
    std::fs::copy(d.dir.join("hsmd.toml"), two.dir.join("hsmd.toml")).unwrap();
    copy_dir(&d.dir.join("pki"), &two.dir.join("pki"));
    let (p1, p2) = (d.ports(), two.ports());
    move_ports(&two.dir.join("clients/alice.toml"), &p1, &p2);
    move_ports(&two.dir.join("hsmd.toml"), &p1, &p2);
    let restored = two.admin(&["restore", "--in", backup_s], &[]);
    assert!(ok(&restored).contains("restored"));
    let twice = two.admin(&["restore", "--in", backup_s], &[]);
    assert_eq!(
        twice.status.code(),
        Some(1),
        "restore never replaces a store"
    );
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already holds a key store"));
    drop(hsmd_running);
    let _two_running = two.start();
    let c = two.connect("alice");
    // A consistent snapshot of one writer's keys: the first m it made, for some m no smaller
    // than what was acknowledged when the backup started.
    let mut listed: Vec<String> = c
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label.to_string())
        .collect();
    let index = |l: &str| -> usize {
        all.iter()
            .position(|a| a == l)
            .unwrap_or_else(|| panic!("the backup holds {l}, which was never acknowledged"))
    };
    listed.sort_by_key(|l| index(l));
    let m = listed.len();
    assert_eq!(
        listed[..],
        all[..m],
        "the backup is not the writer's first {m} keys"
    );
    assert!(
        m >= before.len(),
        "the backup holds {m} keys; {} were acknowledged before it started",
        before.len()
    );
    for l in &listed {
        let sig = c.sign(&label(l), b"restored").unwrap();
        c.verify(&label(l), b"restored", &sig).unwrap();
    }
    if let Some(first_missing) = all.get(m) {
        assert_eq!(
            status(c.sign(&label(first_missing), b"x")),
            Status::KeyNotFound
        );
    }
    assert_eq!(
        status(c.sign(&label("never-made"), b"x")),
        Status::KeyNotFound
    );
    ok(&two.admin(&["audit", "verify"], &[]));
}

/// A list of acknowledged labels shared between threads (std only).
mod acked {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<String>>);

    impl Acked {
        pub fn push(&self, l: String) {
            self.0.lock().unwrap().push(l);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn snapshot(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}
