//! The PostgreSQL helper itself: a cluster starts, keeps its data across a restart, survives
//! its sessions being ended, stops and starts again on the same port, and two clusters at once
//! stay apart. Skips outside CI when PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use ferrohsm_test_support::daemon::{EXIT_DEADLINE, output_within};
use ferrohsm_test_support::postgres::{self, Cluster};

#[test]
fn cluster_lifecycle() {
    let Some(pg) = Cluster::start() else { return };
    assert_eq!(pg.user(), "hsm");
    assert!(
        !format!("{pg:?}").contains(pg.password()),
        "Debug shows the password"
    );

    pg.create_database("t1");
    assert_eq!(pg.psql("t1", "SELECT 1"), "1");
    assert_eq!(pg.psql("t1", "SELECT current_user"), "hsm");
    pg.psql("t1", "CREATE TABLE k (id int PRIMARY KEY, v text NOT NULL)");
    pg.psql("t1", "INSERT INTO k VALUES (1, 'kept')");

    pg.restart();
    assert_eq!(pg.psql("t1", "SELECT v FROM k WHERE id = 1"), "kept");

    // No other session is open: a number (0) comes back, and the cluster still serves.
    let ended = pg.terminate_backends("t1");
    assert!(ended < 100, "ended {ended} sessions");
    assert_eq!(pg.psql("t1", "SELECT count(*) FROM k"), "1");

    let url = pg.url("t1");
    assert_eq!(url, format!("postgres://hsm@127.0.0.1:{}/t1", pg.port()));
    assert!(!url.contains(pg.password()), "URL carries the password");

    // The password is required over TCP: the wrong one is refused.
    let o = psql_with_password(&pg, "wrong", "t1");
    assert!(!o.status.success(), "psql logged in with a wrong password");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    pg.stop();
    let o = pg.try_psql("t1", "SELECT 1");
    assert!(!o.status.success(), "psql answered with the server stopped");

    pg.start_again();
    assert_eq!(pg.psql("t1", "SELECT v FROM k WHERE id = 1"), "kept");
    assert!(
        pg.log()
            .contains("database system is ready to accept connections"),
        "server log:\n{}",
        pg.log()
    );
}

#[test]
fn two_clusters_at_once() {
    let Some(a) = Cluster::start() else { return };
    let Some(b) = Cluster::start() else { return };
    assert_ne!(a.port(), b.port());
    assert_ne!(a.password(), b.password());
    a.create_database("only_in_a");
    assert_eq!(a.psql("postgres", "SELECT 1"), "1");
    assert_eq!(b.psql("postgres", "SELECT 1"), "1");
    assert_eq!(
        b.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'only_in_a'"
        ),
        "0"
    );
    // Each cluster's password is its own: a's does not open b.
    let o = psql_with_password(&b, a.password(), "postgres");
    assert!(!o.status.success(), "a's password opened b");
}

/// `psql -c 'SELECT 1'` against `pg` with `password` instead of the cluster's own.
fn psql_with_password(pg: &Cluster, password: &str, db: &str) -> Output {
    let psql = postgres::binaries().unwrap().join("psql");
    let mut c = Command::new(psql);
    c.args(["-X", "-At", "-h", "127.0.0.1", "-p"])
        .arg(pg.port().to_string())
        .args(["-U", pg.user(), "-d", db, "-c", "SELECT 1"])
        .env_remove("PGPASSFILE")
        .env("PGPASSWORD", password);
    output_within(&mut c, EXIT_DEADLINE)
}
