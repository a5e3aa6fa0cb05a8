//! Failure statuses end to end, through the real `hsmd` and `hsmctl`: `store_failed` when the
//! store cannot commit (its filesystem is full), `counter_overflow` for a counter at 2^64-1,
//! and a commit that waits for another writer of the store rather than failing.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferrohsm_server::keys::seal::{Fields, Unlock};
use ferrohsm_server::keys::{open_store, read_key_file};
use ferrohsm_test_support::daemon::{EXIT_DEADLINE, output_within};
use ferrohsm_test_support::files::utf8;
use ferrohsm_test_support::status::{assert_failed, failed_with_message, ok};
use ferrohsm_test_support::{Data, ci};

/// A small tmpfs mounted over a directory for the life of the guard (the directory's files
/// are copied onto it with their modes, and back off it when it is unmounted).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn over(dir: &Path, size: &str) -> Tmpfs {
        let stash = dir.with_extension("stash");
        run("cp", &["-a", utf8(dir), utf8(&stash)]);
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                utf8(dir),
            ],
        );
        let t = Tmpfs {
            at: dir.to_path_buf(),
        };
        run("cp", &["-a", &format!("{}/.", utf8(&stash)), utf8(dir)]);
        std::fs::remove_dir_all(&stash).unwrap();
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: unmounted even if a process still holds a file on it. Checked, unless the test
        // is already failing (a second panic in a drop would abort the run).
        let at = utf8(&self.at);
        let o = std::panic::catch_unwind(|| within("umount", &["-l", at]));
        if !std::thread::panicking() {
            let o = o.unwrap_or_else(|_| panic!("umount -l {at} did not finish"));
            assert!(
                o.status.success(),
                "umount -l {at}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Runs `cmd ARGS` to its end within [`EXIT_DEADLINE`] (a failure otherwise).
fn within(cmd: &str, args: &[&str]) -> Output {
    output_within(Command::new(cmd).args(args), EXIT_DEADLINE)
}

/// Runs `cmd ARGS`, which must succeed within [`EXIT_DEADLINE`].
fn run(cmd: &str, args: &[&str]) {
    let o = within(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fills the filesystem holding `path` (a new file there) to its last byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for size in [chunk.len(), 4096, 1] {
        while f.write_all(&chunk[..size]).is_ok() {}
    }
    let full = f.write_all(&[0]).and_then(|_| f.sync_all());
    assert_eq!(
        full.map_err(|e| e.raw_os_error()),
        Err(Some(28)),
        "the filesystem is not full (ENOSPC expected)"
    );
}

#[test]
fn a_full_disk_answers_store_failed_and_changes_nothing() {
    if !ci::root("mounts a 16 MiB tmpfs under the data directory to fill it") {
        return;
    }
    if !ci::tool("mount", "mount") {
        return;
    }
    let d = Data::init("alice");
    let fs = Tmpfs::over(&d.dir, "16m");
    let daemon = d.start();
    assert_eq!(
        ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s1"])),
        "1 s1\n"
    );
    let filler = d.dir.join("filler");
    fill(&filler);

    // Nothing can be committed: creating a key, a counter, deleting one answer store_failed.
    let (status, message) =
        failed_with_message(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s2"]));
    assert_eq!(status, "store_failed", "{message}");
    assert!(!message.is_empty());
    assert_failed(&d.ctl("alice", &["counter", "create", "c"]), "store_failed");
    assert_failed(&d.ctl("alice", &["delete", "s1"]), "store_failed");
    // What is already there keeps working.
    let m = d.path("m");
    std::fs::write(&m, b"hello").unwrap();
    let sig = d.path("sig");
    ok(&d.ctl(
        "alice",
        &["sign", "s1", "--in", utf8(&m), "--out", utf8(&sig)],
    ));

    // Room again: nothing of the failed changes happened, and the next ones work.
    std::fs::remove_file(&filler).unwrap();
    let list = ok(&d.ctl("alice", &["list"]));
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.starts_with("1\ts1\t"), "{list}");
    assert_failed(
        &d.ctl("alice", &["counter", "read", "c"]),
        "counter_not_found",
    );
    assert_eq!(
        ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "s2"])),
        "2 s2\n"
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    // And it all survives a restart.
    let daemon = d.start();
    let list = ok(&d.ctl("alice", &["list"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(
        ok(&d.ctl(
            "alice",
            &["verify", "s1", "--in", utf8(&m), "--sig", utf8(&sig)]
        )),
        "ok\n"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    drop(fs);
}

/// A counter name that appears nowhere else in an answer.
const COUNTER: &str = "odometer";

/// Sets counter `name` of `owner` to `value` in a stopped store, with a valid tag: what the
/// store itself would write, made with its master key (from the key file).
fn set_counter(d: &Data, owner: &str, name: &str, value: u64) {
    let unlock = Unlock::KeyFile(read_key_file(&d.dir.join("master.key")).unwrap());
    let (store, master) = open_store(&d.db(), &unlock).unwrap();
    drop(store);
    let c = rusqlite::Connection::open(d.db()).unwrap();
    let created: i64 = c
        .query_row(
            "SELECT created FROM counters WHERE owner = ?1 AND name = ?2",
            [owner, name],
            |r| r.get(0),
        )
        .unwrap();
    let aad = Fields::new(b"FerroHSM counter v1\0")
        .var(owner.as_bytes())
        .var(name.as_bytes())
        .fixed(&value.to_le_bytes())
        .fixed(&(created as u64).to_le_bytes());
    let tag = master.seal_with(aad.bytes(), b"").unwrap();
    let n = c
        .execute(
            "UPDATE counters SET value = ?1, tag = ?2 WHERE owner = ?3 AND name = ?4",
            rusqlite::params![value as i64, tag, owner, name],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_counter_at_its_maximum_answers_counter_overflow_and_stays_there() {
    let d = Data::init("alice");
    let daemon = d.start();
    assert_eq!(ok(&d.ctl("alice", &["counter", "create", COUNTER])), "0\n");
    assert_eq!(ok(&d.ctl("alice", &["counter", "inc", COUNTER])), "1\n");
    assert_eq!(daemon.terminate().code(), Some(0));

    set_counter(&d, "alice", COUNTER, u64::MAX - 1);
    let daemon = d.start();
    assert_eq!(
        ok(&d.ctl("alice", &["counter", "read", COUNTER])),
        format!("{}\n", u64::MAX - 1)
    );
    assert_eq!(
        ok(&d.ctl("alice", &["counter", "inc", COUNTER])),
        format!("{}\n", u64::MAX)
    );
    let (status, message) = failed_with_message(&d.ctl("alice", &["counter", "inc", COUNTER]));
    assert_eq!(status, "counter_overflow", "{message}");
    // The message names the counter (a name no other part of the message could contain).
    assert_eq!(
        message,
        format!(
            "counter {COUNTER} is at its maximum ({}) and never wraps",
            u64::MAX
        )
    );
    // It never wraps, not even after a restart.
    assert_eq!(
        ok(&d.ctl("alice", &["counter", "read", COUNTER])),
        format!("{}\n", u64::MAX)
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    let daemon = d.start();
    assert_failed(
        &d.ctl("alice", &["counter", "inc", COUNTER]),
        "counter_overflow",
    );
    assert_eq!(
        ok(&d.ctl("alice", &["counter", "read", COUNTER])),
        format!("{}\n", u64::MAX)
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// Another process writing to keys.db (`hsmd passwd`, an operator's SQLite tool) makes hsmd's
/// commit wait for its lock, within the store's busy timeout, instead of answering
/// `store_failed` at once.
#[test]
fn a_commit_waits_for_another_writer_of_the_store() {
    let d = Data::init("alice");
    let daemon = d.start();
    ok(&d.ctl(
        "alice",
        &["keygen", "--type", "ed25519", "--label", "before"],
    ));
    // An outside writer takes the store's write lock and holds it.
    let mut outside = d.sql();
    let tx = outside
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ctl = {
        let profile = d.profile("alice");
        std::thread::spawn(move || {
            let mut c = ferrohsm_test_support::daemon::hsmctl_command(&profile);
            c.args(["keygen", "--type", "ed25519", "--label", "during"]);
            let o = output_within(&mut c, EXIT_DEADLINE);
            let _ = done_tx.send(());
            o
        })
    };
    // While the lock is held the keygen is not answered (before the fix it failed at once
    // with store_failed); then the lock goes and the keygen completes.
    assert_eq!(
        done_rx.recv_timeout(std::time::Duration::from_millis(1500)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "the keygen was answered while another process held the write lock: {:?}",
        ctl.join().unwrap()
    );
    tx.rollback().unwrap();
    let o = ctl.join().unwrap();
    assert_eq!(ok(&o), "2 during\n");
    let list = ok(&d.ctl("alice", &["list"]));
    assert_eq!(
        list.lines()
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect::<Vec<_>>(),
        ["before", "during"],
        "{list}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}
