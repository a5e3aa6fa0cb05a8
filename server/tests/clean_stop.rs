//! A clean stop leaves nothing behind but complete files: after SIGTERM the WAL is
//! checkpointed (a copy of `keys.db` alone holds every key acknowledged), and the shm socket
//! file is gone. At start, a socket file left by a crashed hsmd is replaced, but one another
//! running hsmd answers on is not.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_proto::KeyType;
use ferrohsm_test_support::Data;
use ferrohsm_test_support::status::ok;

#[test]
fn after_sigterm_keys_db_alone_is_complete_and_the_socket_is_gone() {
    let d = Data::init("alice");
    let hsmd = d.start();
    let socket = d.dir.join("hsmd.sock");
    assert!(socket.exists());
    let c = d.connect("alice");
    for i in 0..20 {
        c.generate(&format!("k{i}").parse().unwrap(), KeyType::Ed25519)
            .unwrap();
    }
    // While it runs, the WAL holds the commits (so the check below is not empty).
    let wal = d.dir.join("keys.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    drop(c);
    assert!(hsmd.terminate().success());
    assert_eq!(
        std::fs::metadata(&wal).map_or(0, |m| m.len()),
        0,
        "the WAL was checkpointed and truncated"
    );
    assert!(!socket.exists(), "the shm socket file was removed");
    // keys.db copied alone (no -wal beside it) holds every key.
    let copy = d.tmp().join("copy.db");
    std::fs::copy(d.db(), &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    // And hsmd starts again from it, with every key.
    let _again = d.start();
    assert_eq!(d.connect("alice").list().unwrap().len(), 20);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let d = Data::init("alice");
    let socket = d.dir.join("hsmd.sock");
    // What a crashed hsmd leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let _hsmd = d.start();
    assert_eq!(
        ok(&d.ctl_over("alice", "shm", &["ping"], d.tmp())).trim(),
        "ok"
    );
    // A second hsmd (its own data directory) configured for the same socket is refused while
    // the first answers on it, naming the socket; the first keeps serving over it.
    let other = Data::init_with("bob", &["--shm-socket", socket.to_str().unwrap()], &[]);
    let err = other.refuses(&["--config", &other.config()], &[]);
    assert!(
        err.contains("is in use") && err.contains(socket.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        ok(&d.ctl_over("alice", "shm", &["ping"], d.tmp())).trim(),
        "ok"
    );
}

/// Of two hsmd starting at once on one stale socket file, only the one holding the lock beside
/// it replaces the file: here the test holds that lock, and hsmd is refused, naming it, with
/// the stale file left alone; once the lock is free hsmd takes it.
#[test]
fn the_lock_beside_the_socket_decides_who_replaces_a_stale_one() {
    let d = Data::init("alice");
    let socket = d.dir.join("hsmd.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let lock_path = d.dir.join("hsmd.sock.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let err = d.refuses(&["--config", &d.config()], &[]);
    assert!(
        err.contains("is in use") && err.contains(lock_path.to_str().unwrap()),
        "{err}"
    );
    assert!(
        socket.exists(),
        "the stale socket was left for the lock's holder"
    );
    drop(lock);
    let hsmd = d.start();
    assert_eq!(
        ok(&d.ctl_over("alice", "shm", &["ping"], d.tmp())).trim(),
        "ok"
    );
    assert!(hsmd.terminate().success());
    assert!(!socket.exists());
    // The lock file stays: removing it would let two later starts lock two different files.
    assert!(lock_path.exists());
}

/// In this process, with another connection to the database held open across the stop: the
/// WAL is empty when the stop returns. (Removing hsmd's explicit checkpoint did not make this
/// fail on this machine: something else, not yet found, also empties the WAL at the stop. The
/// test guards the outcome, not the mechanism.)
#[test]
fn the_stop_itself_checkpoints_the_wal() {
    let mut s = ferrohsm_test_support::TestServer::start(&["alice"]);
    let c = s.connect("alice");
    for i in 0..20 {
        c.generate(&format!("k{i}").parse().unwrap(), KeyType::Ed25519)
            .unwrap();
    }
    drop(c);
    let wal = s.dir.path().join("keys.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let held = rusqlite::Connection::open_with_flags(
        s.dir.path().join("keys.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    // A read opens the WAL for this connection too.
    let n: i64 = held
        .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    s.handle.take().unwrap().shutdown().unwrap();
    assert_eq!(
        std::fs::metadata(&wal).map_or(0, |m| m.len()),
        0,
        "the WAL holds commits after the stop returned"
    );
    drop(held);
}
