//! Descriptors: under a low `RLIMIT_NOFILE`, hsmd fits its handshake places to the limit as it
//! fits its sessions, so a flood of idle unauthenticated sockets can never take every
//! descriptor: hsmd keeps accepting, evicts the oldest idle handshake of the biggest source,
//! and a real client gets in over every transport.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ferrohsm_proto::Opcode;
use ferrohsm_test_support::connect::gets_in;
use ferrohsm_test_support::peer::{ALL, header};
use ferrohsm_test_support::{Data, ci, wait};

const DEADLINE: Duration = Duration::from_secs(30);
const NOFILE: u64 = 256;

/// Descriptors `pid` holds open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_sockets_under_a_low_descriptor_limit_never_lock_out_a_client_of_any_transport() {
    if !ci::tool("prlimit", "util-linux") {
        return;
    }
    let d = Data::init("alice");
    // Idle sockets are never cut by the handshake timeout here: only the gate's eviction can
    // make room.
    d.set("server", "handshake_timeout_ms", "600000");
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let daemon = d.start_under(&["prlimit", &limit, "--"], &[], &[]);
    let pid = daemon.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(NOFILE.to_string().as_str()),
        "{line}"
    );
    // hsmd says what it fitted: fewer handshake places than the 256 configured.
    let log = daemon.log();
    let fitted = log
        .lines()
        .find(|l| l.contains("connection limits lowered to fit the file-descriptor limit"))
        .unwrap_or_else(|| panic!("hsmd did not fit its limits; log:\n{log}"));
    let places: usize = fitted
        .split("max_handshakes=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no max_handshakes in {fitted}"));
    assert!(places < 128, "{fitted}");
    // 300 idle sockets from 40 addresses (fewer than max_handshakes_per_source from each, so
    // only the server-wide limit holds them), half of them with half a hello: more than the
    // descriptors hsmd has.
    let p = d.load_profile("alice");
    let tcp: SocketAddr = d.ports().tcp.parse().unwrap();
    let before = open_fds(pid);
    let mut flood = Vec::new();
    for i in 0..300u64 {
        let from: SocketAddr = format!("127.0.0.{}:0", 2 + i % 40).parse().unwrap();
        flood.push(socket_from(from, tcp));
    }
    for (i, s) in flood.iter_mut().enumerate() {
        if i % 2 == 0 {
            // A socket the gate already closed may refuse the write.
            let _ = s.write_all(&header(Opcode::Hello as u16, i as u64, 100));
        }
    }
    // hsmd took a socket for every handshake place (one descriptor each) and no more: the
    // rest were evicted or refused, none left it short of descriptors.
    wait::until("hsmd to fill its handshake places", DEADLINE, || {
        open_fds(pid) >= before + places
    });
    let held = open_fds(pid) - before;
    assert!(
        held <= places + 4,
        "hsmd holds {held} descriptors for {places} handshake places"
    );
    // A real client gets in over every transport: the gate evicts an idle socket for it once
    // the idle ones are older than any real handshake takes.
    for t in ALL {
        gets_in(&p, t, DEADLINE);
    }
    let fds = open_fds(pid);
    assert!(fds < NOFILE as usize, "hsmd holds {fds} descriptors");
    let log = daemon.log();
    assert!(
        !log.contains("accept failed"),
        "hsmd ran out of descriptors:\n{log}"
    );
    drop(flood);
}

/// A TCP connection to `to` from the address of `from` (any port).
fn socket_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let rt = ferrohsm_test_support::peer::rt();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(from).unwrap();
        let s = s.connect(to).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}
