//! systemd readiness: the real `hsmd`, started with `NOTIFY_SOCKET` naming a datagram socket
//! the test holds, sends `READY=1` (with its pid and a status) once it serves, and
//! `STOPPING=1` when SIGTERM makes it drain, in that order; and the unit file it ships is one a
//! security daemon deserves, checked by `systemd-analyze verify` where that command exists.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::{Data, ci};

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn hsmd_notifies_ready_then_stopping() {
    let d = Data::init("alice");
    let path = d.tmp().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let hsmd = d.start_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let ready = recv(&sock);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}");
    assert!(
        lines.contains(&format!("MAINPID={}", hsmd.pid()).as_str()),
        "{ready}"
    );
    let status = lines.iter().find(|l| l.starts_with("STATUS=")).unwrap();
    assert!(
        status.starts_with("STATUS=serving on ") && status.contains("tcp"),
        "{ready}"
    );
    // It really serves when it says so.
    assert_eq!(ok(&d.ctl("alice", &["ping"])).trim(), "ok");
    let exit = hsmd.terminate();
    assert!(exit.success(), "{exit:?}");
    let stopping = recv(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    // Nothing after that: one READY, one STOPPING.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "a third notification");
}

#[test]
fn hsmd_reaches_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt as _;
    let d = Data::init("alice");
    let name = format!("ferrohsm-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let hsmd = d.start_env(&[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(recv(&sock).lines().any(|l| l == "READY=1"));
    assert!(hsmd.terminate().success());
    assert!(recv(&sock).lines().any(|l| l == "STOPPING=1"));
}

const UNIT: &str = include_str!("../../packaging/hsmd.service");

#[test]
fn the_unit_is_a_hardened_notify_service() {
    let has = |line: &str| UNIT.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "User=ferrohsm",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ferrohsm /run/ferrohsm",
        "PrivateTmp=yes",
        "LimitCORE=0",
        "LimitMEMLOCK=infinity",
        "CapabilityBoundingSet=CAP_IPC_LOCK",
        "AmbientCapabilities=CAP_IPC_LOCK",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RuntimeDirectory=ferrohsm",
        "ExecStart=/usr/bin/hsmd --config /var/lib/ferrohsm/hsmd.toml",
    ] {
        assert!(has(line), "the unit lacks {line:?}");
    }
    // The unit passes systemd-analyze's check (with ExecStart pointed at this build's hsmd,
    // since the unit names the installed path).
    if !ci::tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hsmd = ferrohsm_test_support::bins::hsmd();
    let unit = UNIT.replace("/usr/bin/hsmd", hsmd.to_str().unwrap());
    let path = dir.path().join("hsmd.service");
    std::fs::write(&path, unit).unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Only this unit's own lines count: a container without a running systemd complains
    // about other units and the manager itself.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("hsmd.service")).collect();
    assert!(o.status.success() || ours.is_empty(), "{err}");
    assert!(ours.is_empty(), "{err}");
}
