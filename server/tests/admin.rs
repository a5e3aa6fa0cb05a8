//! The real `hsmd` administration commands, as an operator runs them: `hsmd passwd`, `hsmd
//! backup` / `hsmd restore` (and every refusal of restore), `hsmd audit show` in text and JSON,
//! and `[audit] level = "all"` entries read back.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ferrohsm_test_support::status::{assert_failed, ok, refused};
use ferrohsm_test_support::{Data, wait};

const PASS: &str = "HSMD_PASSPHRASE";
const NEW_PASS: &str = "HSMD_NEW_PASSPHRASE";

/// Writes `text` to a file beside the data directory; its path.
fn file(d: &Data, name: &str, text: &str) -> String {
    let p = d.path(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `hsmctl sign KEY` of `msg` by `who`: the signature file.
fn sign(d: &Data, who: &str, key: &str, msg: &str, sig: &str) -> String {
    let m = file(d, msg, "a message to sign\n");
    let s = d.path(sig).display().to_string();
    ok(&d.ctl(who, &["sign", key, "--in", &m, "--out", &s]));
    s
}

fn verify(d: &Data, who: &str, key: &str, msg: &str, sig: &str) -> Output {
    let m = d.path(msg).display().to_string();
    d.ctl(who, &["verify", key, "--in", &m, "--sig", sig])
}

const UNLOCK_REFUSED: &str = "the passphrase or key file does not unlock the key store";

#[test]
fn passwd_changes_the_passphrase_from_files_and_env_and_refuses_what_it_must() {
    let d = Data::init_with("alice", &[], &[(PASS, "first pass")]);
    let db = d.db().display().to_string();
    let old_file = file(&d, "old.pass", "first pass\n");
    let new_file = file(&d, "new.pass", "second pass\n");

    // While hsmd serves this store, passwd re-wraps the master key (no lock on the store:
    // only the wrapped master key row changes) and the running hsmd is unaffected.
    let daemon = d.start_env(&[(PASS, "first pass")]);
    assert_eq!(
        ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s1"])),
        "1 s1\n"
    );
    let o = d.admin(
        &[
            "passwd",
            "--passphrase-file",
            &old_file,
            "--new-passphrase-file",
            &new_file,
        ],
        &[],
    );
    assert_eq!(ok(&o), format!("hsmd: passphrase changed for {db}\n"));
    let sig = sign(&d, "alice", "s1", "m", "s1.sig");
    assert_eq!(ok(&verify(&d, "alice", "s1", "m", &sig)), "ok\n");
    assert_eq!(
        ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s2"])),
        "2 s2\n"
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    // The next start needs the new passphrase (the trailing newline of the file is not part
    // of it): the old one is refused, with the cause named.
    let (code, err) = d.fails(&["--config", &d.config()], &[(PASS, "first pass")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(UNLOCK_REFUSED) && err.contains(&db), "{err}");

    // A wrong current passphrase is refused, and the store keeps the second one: the new one
    // given to the refused passwd does not open it.
    let o = d.admin(
        &["passwd"],
        &[(PASS, "not the pass"), (NEW_PASS, "third pass")],
    );
    let err = refused(&o);
    assert!(
        err.starts_with("hsmd: ") && err.contains(UNLOCK_REFUSED),
        "{err}"
    );
    let (code, err) = d.fails(&["--config", &d.config()], &[(PASS, "third pass")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(UNLOCK_REFUSED), "{err}");

    // Missing passphrases are named.
    let err = refused(&d.admin(&["passwd"], &[(NEW_PASS, "third pass")]));
    assert_eq!(
        err,
        "hsmd: no current passphrase: set HSMD_PASSPHRASE or pass --passphrase-file"
    );
    let err = refused(&d.admin(&["passwd"], &[(PASS, "second pass")]));
    assert_eq!(
        err,
        "hsmd: no new passphrase: set HSMD_NEW_PASSPHRASE or pass --new-passphrase-file"
    );

    // From the environment: second -> third; then only the third opens it, and every key
    // made before signs as before.
    let o = d.admin(
        &["passwd"],
        &[(PASS, "second pass"), (NEW_PASS, "third pass")],
    );
    assert_eq!(ok(&o), format!("hsmd: passphrase changed for {db}\n"));
    let (code, err) = d.fails(&["--config", &d.config()], &[(PASS, "second pass")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(UNLOCK_REFUSED), "{err}");
    let daemon = d.start_env(&[(PASS, "third pass")]);
    assert_eq!(ok(&verify(&d, "alice", "s1", "m", &sig)), "ok\n");
    sign(&d, "alice", "s2", "m", "s2.sig");
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn passwd_refuses_a_key_file_store_and_leaves_it_as_it_was() {
    let d = Data::init("alice");
    let before = std::fs::read(d.db()).unwrap();
    let o = d.admin(&["passwd"], &[(PASS, "a"), (NEW_PASS, "b")]);
    assert_eq!(
        refused(&o),
        format!(
            "hsmd: the key store {} is protected by a key file, not a passphrase",
            d.db().display()
        )
    );
    assert_eq!(std::fs::read(d.db()).unwrap(), before, "keys.db changed");
    // The key file still opens it.
    let daemon = d.start();
    ok(&d.ctl("alice", &["ping"]));
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// Neither the store nor any leftover of a restore is in `d`'s data directory.
fn assert_no_store(d: &Data) {
    let names: Vec<String> = std::fs::read_dir(&d.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("keys.db"))
        .collect();
    assert!(names.is_empty(), "left in the data directory: {names:?}");
}

/// Edits entry 1 of the audit chain in a store file (as an attacker with the file would).
fn break_audit_chain(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let n = c
        .execute(
            "UPDATE audit SET detail = 'p256 generated' WHERE seq = 1",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "no audit entry 1 to edit");
    // Fold the edit into the file itself, so the copy holds it without a WAL.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap();
}

#[test]
fn restore_refuses_what_is_not_this_stores_backup_and_restores_one_that_is() {
    let a = Data::init("alice");
    let other = Data::init("alice");
    // A key, a signature, and a backup taken while hsmd serves.
    let daemon = a.start();
    assert_eq!(
        ok(&a.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s1"])),
        "1 s1\n"
    );
    let sig = sign(&a, "alice", "s1", "m", "s1.sig");
    let backup = a.path("a.bak").display().to_string();
    let o = a.admin(&["backup", "--out", &backup], &[]);
    assert!(ok(&o).starts_with("hsmd: backup of "), "{o:?}");
    // The backup never overwrites a file.
    let err = refused(&a.admin(&["backup", "--out", &backup], &[]));
    assert!(
        err.contains("already exists; a backup never overwrites a file"),
        "{err}"
    );
    assert_eq!(a.ctl("alice", &["delete", "s1"]).status.code(), Some(0));
    assert_eq!(daemon.terminate().code(), Some(0));

    // A data directory that holds a store is never replaced.
    let before = std::fs::read(other.db()).unwrap();
    let err = refused(&other.admin(&["restore", "--in", &backup], &[]));
    assert_eq!(
        err,
        format!(
            "hsmd: {} already holds a key store; restore never replaces one (restore into a \
             new data directory, or move the old store away first)",
            other.db().display()
        )
    );
    assert_eq!(std::fs::read(other.db()).unwrap(), before);
    let other_backup = other.path("other.bak").display().to_string();
    ok(&other.admin(&["backup", "--out", &other_backup], &[]));

    // The restore target: a's data directory without its store (hsmd.toml, master.key,
    // clients/ and pki/ kept, as the README's "new machine" recipe has it).
    for suffix in ["", "-wal", "-shm"] {
        let p = a.dir.join(format!("keys.db{suffix}"));
        if p.exists() {
            std::fs::rename(&p, a.path(&format!("moved-keys.db{suffix}"))).unwrap();
        }
    }
    assert_no_store(&a);

    // Missing input.
    let missing = a.path("missing.bak").display().to_string();
    let err = refused(&a.admin(&["restore", "--in", &missing], &[]));
    assert_eq!(err, format!("hsmd: backup {missing} does not exist"));
    assert_no_store(&a);

    // Foreign files: bytes that are not SQLite, and an SQLite database that is not a store.
    let junk = a.path("junk.bak");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let junk = junk.display().to_string();
    let err = refused(&a.admin(&["restore", "--in", &junk], &[]));
    assert!(
        err.starts_with(&format!("hsmd: backup {junk}: ")) && err.contains("not a database"),
        "{err}"
    );
    assert_no_store(&a);
    let foreign = a.path("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let foreign = foreign.display().to_string();
    let err = refused(&a.admin(&["restore", "--in", &foreign], &[]));
    // The backup is checked as a copy beside the store (`keys.db.restore-tmp`), which the
    // reason names: a database with no FerroHSM schema.
    assert_eq!(
        err,
        format!(
            "hsmd: backup {foreign}: {} is not a FerroHSM key store (no schema)",
            a.dir.join("keys.db.restore-tmp").display()
        )
    );
    assert_no_store(&a);

    // Another data directory's backup: a's key file does not open its master key.
    let err = refused(&a.admin(&["restore", "--in", &other_backup], &[]));
    assert!(
        err.starts_with(&format!("hsmd: backup {other_backup}: ")) && err.contains(UNLOCK_REFUSED),
        "{err}"
    );
    assert_no_store(&a);

    // a's own backup with an edited audit entry.
    let broken = a.path("broken.bak");
    std::fs::copy(&backup, &broken).unwrap();
    break_audit_chain(&broken);
    let broken = broken.display().to_string();
    let err = refused(&a.admin(&["restore", "--in", &broken], &[]));
    assert!(
        err.starts_with(&format!("hsmd: backup {broken}: "))
            && err.contains("entry 1")
            && err.ends_with("; refusing to restore it"),
        "{err}"
    );
    assert_no_store(&a);

    // An interrupted restore left its temporary file and its WAL: the next restore replaces
    // them.
    let leftover = a.dir.join("keys.db.restore-tmp");
    std::fs::write(&leftover, b"half a backup").unwrap();
    for side in ["keys.db.restore-tmp-wal", "keys.db.restore-tmp-shm"] {
        std::fs::write(a.dir.join(side), b"a stale side file").unwrap();
    }
    let o = a.admin(&["restore", "--in", &backup], &[]);
    let out = ok(&o);
    assert!(
        out.starts_with(&format!(
            "hsmd: restored {backup} into {} (audit chain verified, ",
            a.db().display()
        )),
        "{out}"
    );
    for name in [
        "keys.db.restore-tmp",
        "keys.db.restore-tmp-wal",
        "keys.db.restore-tmp-shm",
    ] {
        assert!(!a.dir.join(name).exists(), "{name} is still there");
    }
    assert!(a.db().exists());

    // The restored store opens with the same key file; the key deleted after the backup is
    // back and signs as before; the chain verifies.
    let daemon = a.start();
    assert_eq!(ok(&verify(&a, "alice", "s1", "m", &sig)), "ok\n");
    sign(&a, "alice", "s1", "m", "s1-again.sig");
    assert_eq!(daemon.terminate().code(), Some(0));
    assert!(ok(&a.admin(&["audit", "verify"], &[])).starts_with("audit chain ok: "));
}

/// `hsmd audit show` lines: seq, time, client, session, transport, op, key, detail, status,
/// hash.
fn audit_lines(d: &Data, since: Option<&str>) -> Vec<Vec<String>> {
    let mut sub = vec!["audit", "show"];
    if let Some(n) = since {
        sub.extend(["--since", n]);
    }
    ok(&d.admin(&sub, &[]))
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn ops(lines: &[Vec<String>]) -> Vec<(String, String)> {
    lines.iter().map(|l| (l[5].clone(), l[8].clone())).collect()
}

#[test]
fn audit_show_prints_every_change_and_level_all_adds_each_use() {
    let d = Data::init("alice");
    let daemon = d.start();
    assert_eq!(
        ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s1"])),
        "1 s1\n"
    );
    let sig = sign(&d, "alice", "s1", "m", "s1.sig");
    assert_eq!(ok(&verify(&d, "alice", "s1", "m", &sig)), "ok\n");
    assert_eq!(ok(&d.ctl("alice", &["counter", "create", "c"])), "0\n");
    assert_eq!(ok(&d.ctl("alice", &["counter", "inc", "c"])), "1\n");
    // A denied request joins the next commit or a flush: wait for it.
    assert_failed(&d.ctl("alice", &["delete", "nope"]), "key_not_found");
    let lines = wait::eventually(
        "the denied delete in the audit log",
        Duration::from_secs(20),
        || {
            let l = audit_lines(&d, None);
            (l.len() >= 4).then_some(l)
        },
    );
    assert_eq!(
        ops(&lines),
        [
            ("keygen", "ok"),
            ("counter-create", "ok"),
            ("counter-inc", "ok"),
            ("delete", "key_not_found"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{lines:?}"
    );
    let mut prev_session = String::new();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.len(), 10, "ten tab-separated fields: {l:?}");
        assert_eq!(l[0], (i + 1).to_string(), "sequence numbers from 1: {l:?}");
        // RFC 3339 UTC with milliseconds: 2026-01-02T03:04:05.678Z
        let t = &l[1];
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == ".",
            "time {t:?}"
        );
        assert_eq!(l[2], "alice");
        assert!(
            l[3].parse::<u64>().is_ok() && l[3] != prev_session,
            "one session per hsmctl run: {l:?}"
        );
        prev_session = l[3].clone();
        assert_eq!(l[4], "tcp");
        assert_eq!(l[9].len(), 64, "hash: {l:?}");
        assert!(l[9].bytes().all(|b| b.is_ascii_hexdigit()), "hash: {l:?}");
    }
    assert_eq!(lines[0][6], "alice:1");
    assert_eq!(lines[0][7], "ed25519 generated");
    assert_eq!(lines[1][6], "alice:c");
    assert_eq!(lines[1][7], "-");
    // --since starts at that entry; --json links each entry to the one before.
    let since = audit_lines(&d, Some("3"));
    assert_eq!(since, lines[2..].to_vec());
    let json: serde_json::Value =
        serde_json::from_str(&ok(&d.admin(&["audit", "show", "--json"], &[]))).unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), lines.len());
    for (e, l) in entries.iter().zip(&lines) {
        assert_eq!(e["seq"].as_u64().unwrap().to_string(), l[0]);
        assert_eq!(e["op"], l[5].as_str());
        assert_eq!(e["hash"], l[9].as_str());
    }
    for w in entries.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"], "chained: {w:?}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));

    // [audit] level = "all": every sign and verify is recorded too.
    d.set("audit", "level", "\"all\"");
    let daemon = d.start();
    let sig = sign(&d, "alice", "s1", "m", "s1-all.sig");
    assert_eq!(ok(&verify(&d, "alice", "s1", "m", &sig)), "ok\n");
    let bad = file(&d, "other", "another message\n");
    assert_failed(
        &d.ctl("alice", &["verify", "s1", "--in", &bad, "--sig", &sig]),
        "bad_signature",
    );
    let uses = wait::eventually("sign and verify entries", Duration::from_secs(20), || {
        let l = audit_lines(&d, Some("5"));
        (l.len() >= 3).then_some(l)
    });
    assert_eq!(
        ops(&uses),
        [
            ("sign", "ok"),
            ("verify", "ok"),
            ("verify", "bad_signature")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{uses:?}"
    );
    for l in &uses {
        assert_eq!(l[6], "alice:1", "{l:?}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));
    // Nothing was recorded for the sign and verify made at the default level.
    assert_eq!(audit_lines(&d, None).len(), 7);
    assert!(ok(&d.admin(&["audit", "verify"], &[])).starts_with("audit chain ok: 7 entries"));
}
