//! Hardening, server-wide: each test performs an attack from the issue against the real `hsmd`
//! binary, shows the attack really happened, and checks that a healthy client is still served
//! correctly and memory stays bounded.
//! - pre-authentication frames are capped, on every transport;
//! - clients that never read their responses stay within the memory budget;
//! - idle unauthenticated sockets never lock out a real client;
//! - one client's flood of large jobs does not stall another client's signatures;
//! - peer-supplied strings cannot forge or flood the log;
//! - a failed login answers the same, in about the same time, for an unknown name as for a
//!   known one.
//!
//! No test here asserts a wall-clock bound: deadlines only guard against a hang, and timings
//! are compared with each other (ratios of medians), never with a constant.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::{KeyRef, KeyType, Opcode, Request, Status};
use ferrohsm_test_support::connect::{gets_in, healthy};
use ferrohsm_test_support::peer::{
    ALL, Ending, Raw, Tcp, header, hello, rss_kib, rt, status_of, wait_gate_full,
};
use ferrohsm_test_support::peer::{message_of, request, server_queues};
use ferrohsm_test_support::{Data, wait};

/// How long an answer or a condition may take on a busy machine (a hang guard, not a bound).
const DEADLINE: Duration = Duration::from_secs(30);

/// These tests measure memory and time of one `hsmd` each: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `hsmd init` with `[limits]` values set (`key`, TOML value).
fn data_with(clients: &str, limits: &[(&str, &str)]) -> Data {
    let d = Data::init(clients);
    for (k, v) in limits {
        d.set("limits", k, v);
    }
    d
}

/// A median of durations.
fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    v[v.len() / 2]
}

#[test]
fn preauth_frames_are_capped_on_every_transport() {
    let _serial = serial();
    // Room for all 200 unfinished hellos below from one address.
    let d = data_with(
        "alice",
        &[
            ("max_handshakes", "256"),
            ("max_handshakes_per_source", "256"),
        ],
    );
    // They stay for the whole test, not cut off by the handshake timeout.
    d.set("server", "handshake_timeout_ms", "600000");
    let daemon = d.start();
    let p = d.load_profile("alice");
    let rt = rt();
    for t in ALL {
        rt.block_on(async {
            // A hello announcing 1 MiB: refused at its header, before any body byte is read.
            let mut raw = Raw::open(&p, t).await;
            assert!(raw.send(&header(Opcode::Hello as u16, 1, 1 << 20)).await);
            let f = raw
                .frame(DEADLINE)
                .await
                .unwrap_or_else(|| panic!("{t:?}: no answer"));
            assert_eq!(status_of(&f), Status::BodyTooLarge, "{t:?}");
            assert!(message_of(&f).contains("4096"), "{t:?}: {}", message_of(&f));
            assert_eq!(raw.ending(DEADLINE).await, Ending::Closed, "{t:?}");
        });
    }
    // 200 sockets each holding an unfinished hello of the largest allowed size cost little.
    let before = rss_kib(daemon.pid());
    let mut held = Vec::new();
    for i in 0..200u64 {
        let mut s = std::net::TcpStream::connect(&d.ports().tcp).unwrap();
        s.write_all(&header(Opcode::Hello as u16, i, 4096)).unwrap();
        s.write_all(&[b'x'; 1000]).unwrap();
        held.push(s);
    }
    // The pressure is real: hsmd accepted every socket, read its half hello (nothing waits
    // unread on its side) and holds it open.
    wait::until("hsmd to read all 200 half hellos", DEADLINE, || {
        held.iter().all(|s| server_queues(s) == Some((0, 0)))
    });
    let grown = rss_kib(daemon.pid()).saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "200 unfinished hellos grew hsmd by {grown} KiB"
    );
    healthy(&p, Transport::Tcp, None, DEADLINE, "alice");
    // hsmd still holds every one of them (its end of each socket is open).
    assert!(
        held.iter().all(|s| server_queues(s).is_some()),
        "hsmd dropped an unfinished hello"
    );
    drop(held);
}

/// Authenticated sessions that each send `n` encrypts of `size` bytes and never read a reply;
/// each with the count of requests its writer got into the socket.
fn never_read(
    p: &Profile,
    sessions: usize,
    n: usize,
    size: usize,
) -> Vec<(std::net::TcpStream, Arc<AtomicUsize>)> {
    let hsm = BlockingClient::connect(p, Some(Transport::Tcp)).unwrap();
    let k = hsm
        .generate(&"flood-aead".parse().unwrap(), KeyType::ChaCha20Poly1305)
        .unwrap();
    let frame = request(
        Request::Encrypt {
            key: KeyRef::Id(k.id),
            plaintext: vec![7; size],
            aad: Vec::new(),
        },
        9,
    );
    let id = p.identity().unwrap();
    let mut out = Vec::new();
    for _ in 0..sessions {
        // Written from a thread until the server stops reading it.
        let mut s = Tcp::connect(&p.tcp_addrs.as_ref().unwrap()[0]);
        s.login(&id);
        let (f, written) = (frame.clone(), Arc::new(AtomicUsize::new(0)));
        let (mut w, count) = (s.s.try_clone().unwrap(), written.clone());
        std::thread::spawn(move || {
            for _ in 0..n {
                if w.write_all(&f).is_err() {
                    break;
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        out.push((s.s, written));
    }
    out
}

#[test]
fn clients_that_never_read_stay_within_the_memory_budget() {
    let _serial = serial();
    // 32 MiB for all sessions; alice and bob get 16 MiB each.
    let d = data_with("alice,bob", &[("memory_mib", "32")]);
    let daemon = d.start();
    let pid = daemon.pid();
    let (alice, bob) = (d.load_profile("alice"), d.load_profile("bob"));
    healthy(&bob, Transport::Tcp, None, DEADLINE, "bob");
    let before = rss_kib(pid);
    // 16 sessions x 32 encrypts of 1 MB, never read: 512 MB of replies if nothing bounded them.
    let (sessions, n) = (16, 32);
    let held = never_read(&alice, sessions, n, 1_000_000);
    let written = || {
        held.iter()
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    // The pressure is real: alice offered more than her 16 MiB share, and hsmd stopped
    // reading every one of her sessions (requests wait unread on its side of each socket).
    wait::until(
        "hsmd to stop reading all of alice's sessions",
        DEADLINE,
        || {
            written() > 16
                && held
                    .iter()
                    .all(|(s, _)| server_queues(s).is_some_and(|(_, rx)| rx > 0))
        },
    );
    let grown = rss_kib(pid).saturating_sub(before);
    // Budget (alice's share, 16 MiB) + one frame buffer per session + slack for the allocator.
    assert!(
        grown < 80 * 1024,
        "hsmd grew by {grown} KiB while alice never read"
    );
    // bob is served, correctly, large requests included.
    let c = BlockingClient::connect_within(&bob, Some(Transport::Tcp), DEADLINE).unwrap();
    let k = c
        .generate(&"bob-aead".parse().unwrap(), KeyType::ChaCha20Poly1305)
        .unwrap();
    let plain: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let ct = c
        .block_on(
            c.client()
                .encrypt(&KeyRef::Id(k.id), plain.clone(), Vec::new()),
        )
        .unwrap();
    assert!(ct.len() > plain.len());
    let back = c
        .block_on(c.client().decrypt(&KeyRef::Id(k.id), ct, Vec::new()))
        .unwrap();
    assert!(*back == plain, "bob's round trip changed his data");
    healthy(&bob, Transport::Shm, None, DEADLINE, "bob");
    // And alice is still held back: no writer got all its requests in.
    for (i, (_, c)) in held.iter().enumerate() {
        let c = c.load(Ordering::SeqCst);
        assert!(c < n, "session {i} of alice wrote all {c} requests");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 80 * 1024, "hsmd grew by {grown} KiB by the end");
    drop(held);
}

#[test]
fn idle_unauthenticated_sockets_never_lock_out_a_real_client() {
    let _serial = serial();
    let d = data_with(
        "alice",
        &[
            ("max_handshakes", "64"),
            ("max_handshakes_per_source", "16"),
        ],
    );
    // Idle sockets never time out during the test: only the gate's eviction can let alice in.
    d.set("server", "handshake_timeout_ms", "600000");
    let daemon = d.start();
    let p = d.load_profile("alice");
    let ports = d.ports();
    // Far more idle sockets than handshake places (and than max_connections), on TCP, TLS and
    // the shm set-up socket, from the client's own address and uid, some with half a hello.
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    let sock = p
        .shm_socket
        .clone()
        .expect("alice's profile names the shm socket");
    for i in 0..300u64 {
        let mut s = std::net::TcpStream::connect(&ports.tcp).unwrap();
        if i % 2 == 0 {
            // A socket the gate refused may already be closed: that write may fail.
            let _ = s.write_all(&header(Opcode::Hello as u16, i, 100));
        }
        tcp.push(s);
        tcp.push(std::net::TcpStream::connect(&ports.tls).unwrap());
        unix.push(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    }
    // The gate is full: hsmd holds exactly its 16 places per source (127.0.0.1 for TCP and
    // TLS, alice's uid for shm) with idle sockets and has closed every other one.
    wait_gate_full(&tcp, &unix, 16, DEADLINE);
    // Once the idle sockets are older than any real handshake takes, a real client displaces
    // one: until then the gate refuses it by closing at once (a connection error, nothing else).
    for t in ALL {
        gets_in(&p, t, DEADLINE);
    }
    // Attackers on other addresses reconnect as fast as they can: they only ever displace
    // each other, never the real client's handshake.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let churn: Vec<_> = (2..6u8)
        .map(|n| {
            let (addr, stop, made) = (ports.tcp.clone(), stop.clone(), made.clone());
            std::thread::spawn(move || {
                let rt = rt();
                let addr: SocketAddr = addr.parse().unwrap();
                let from: SocketAddr = format!("127.0.0.{n}:0").parse().unwrap();
                rt.block_on(async {
                    let mut held = std::collections::VecDeque::new();
                    while !stop.load(Ordering::Relaxed) {
                        let s = tokio::net::TcpSocket::new_v4().unwrap();
                        s.bind(from).unwrap();
                        if let Ok(c) = s.connect(addr).await {
                            held.push_back(c);
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                        if held.len() > 100 {
                            held.pop_front();
                        }
                    }
                })
            })
        })
        .collect();
    wait::until("the attackers to be churning", DEADLINE, || {
        made.load(Ordering::Relaxed) > 100
    });
    let at_start = made.load(Ordering::Relaxed);
    for _ in 0..5 {
        healthy(&p, Transport::Tcp, None, DEADLINE, "alice");
    }
    stop.store(true, Ordering::Relaxed);
    for c in churn {
        c.join().unwrap();
    }
    // The attack went on while alice was served.
    let made = made.load(Ordering::Relaxed);
    assert!(
        made > at_start,
        "the attackers made no connection while alice logged in ({made})"
    );
    drop((tcp, unix));
    drop(daemon);
}

/// alice's sessions in the flooding test.
const FLOOD_SESSIONS: usize = 32;

#[test]
fn a_flooding_client_does_not_stall_another_clients_signatures() {
    let _serial = serial();
    let d = Data::init("alice,bob");
    // One crypto worker, and a flood of small signatures (cheap to read, costly to compute):
    // the worker pool is the bottleneck, so the order it takes jobs in is what bob sees.
    d.set("server", "workers", "1");
    d.set("server", "max_connections_per_client", "64");
    let daemon = d.start();
    // alice keeps 32 sessions of 32 P-256 signatures queued on the pool; bob signs.
    let alice = d.load_profile("alice");
    let flood_key = {
        let c = BlockingClient::connect_within(&alice, Some(Transport::Tcp), DEADLINE).unwrap();
        c.generate(&"flood".parse().unwrap(), KeyType::P256)
            .unwrap()
            .id
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    // Connected one after another: logins at once would meet the handshake gate.
    let sessions: Vec<BlockingClient> = (0..FLOOD_SESSIONS)
        .map(|_| BlockingClient::connect_within(&alice, Some(Transport::Tcp), DEADLINE).unwrap())
        .collect();
    for c in sessions {
        let (stop, done) = (stop.clone(), done.clone());
        flood.push(std::thread::spawn(move || {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reqs = (0..32u8)
                    .map(|i| Request::Sign {
                        key: KeyRef::Id(flood_key),
                        data: vec![i],
                    })
                    .collect();
                let t = Instant::now();
                let r = c.pipeline(reqs);
                // Every job of the flood is served: it really ran.
                assert!(r.iter().all(|r| r.is_ok()), "alice's flood failed: {r:?}");
                times.push(t.elapsed());
                done.fetch_add(1, Ordering::SeqCst);
            }
            times
        }));
    }
    // The flood is under way: its first pipelines came back, the next ones are queued.
    wait::until("alice's flood to be running", DEADLINE, || {
        done.load(Ordering::SeqCst) >= FLOOD_SESSIONS
    });
    let before = done.load(Ordering::SeqCst);
    let bob =
        BlockingClient::connect_within(&d.load_profile("bob"), Some(Transport::Tcp), DEADLINE)
            .unwrap();
    let k = bob.generate(&"b".parse().unwrap(), KeyType::P256).unwrap();
    let mut times = Vec::new();
    for i in 0..40u8 {
        // Two in flight: they go to the pool, behind alice's backlog if it were one queue.
        let t = Instant::now();
        let r = bob.pipeline(vec![
            Request::Sign {
                key: KeyRef::Id(k.id),
                data: vec![i],
            },
            Request::Sign {
                key: KeyRef::Id(k.id),
                data: vec![i, 1],
            },
        ]);
        times.push(t.elapsed());
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    }
    // The flood went on all the while bob signed.
    let during = done.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::Relaxed);
    let alice_times: Vec<Duration> = flood
        .into_iter()
        .flat_map(|f| f.join().expect("a flood thread failed"))
        .collect();
    assert!(during > 0, "alice's flood stalled while bob signed");
    // With one FIFO, bob's pair waits behind alice's whole backlog (up to 32 x 32 signatures):
    // about as long as one of her pipelines, which waits behind the same backlog. Fair turns
    // put it behind a job or two of hers.
    let (bob_median, alice_median) = (median(times), median(alice_times));
    eprintln!("bob's median sign pair {bob_median:?}, alice's median pipeline {alice_median:?}");
    // Measured here: one FIFO puts bob at 0.8-0.9 of alice's median; the fair pool at
    // 0.04-0.25, under load too. The line is drawn between, with room on both sides.
    assert!(
        bob_median * 2 < alice_median,
        "bob's median sign pair {bob_median:?} against alice's median pipeline {alice_median:?}"
    );
    drop(daemon);
}

/// Hello naming `name`, then a proof that cannot be right: the answer's status and message,
/// and the time from proof to answer.
fn failed_login(addr: &str, name: &str) -> (Status, String, Duration) {
    let mut s = Tcp::connect(addr);
    s.s.set_nodelay(true).unwrap();
    assert!(s.send(&hello(name).to_frame(1)));
    let challenge = s.frame(DEADLINE).expect("a challenge");
    assert!(
        !challenge.header.is_error(),
        "an unknown name gets a challenge like a known one"
    );
    let proof = Request::Proof(ferrohsm_proto::handshake::Proof {
        signature: vec![0x42; 64],
    });
    let t = Instant::now();
    assert!(s.send(&proof.to_frame(2)));
    let answer = s.frame(DEADLINE).expect("an answer");
    let took = t.elapsed();
    assert_eq!(s.ending(DEADLINE), Ending::Closed);
    (status_of(&answer), message_of(&answer), took)
}

#[test]
fn a_failed_login_answers_the_same_for_an_unknown_name_as_for_a_known_one() {
    let _serial = serial();
    let d = Data::init("alice");
    let daemon = d.start();
    let tcp = d.ports().tcp;
    // The same challenge, status and message, every time; the timings interleaved, so both
    // see the same machine. The decoy key's cost itself is measured without the network in
    // the way in server/src/auth.rs; here the band is wide, and catches a refusal that skips
    // or adds work the size of the network round trip.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..41 {
        let (s1, m1, t1) = failed_login(&tcp, "alice");
        let (s2, m2, t2) = failed_login(&tcp, &format!("nobody{i}"));
        assert_eq!((s1, s2), (Status::AuthFailed, Status::AuthFailed));
        assert_eq!(m1, m2);
        known.push(t1);
        unknown.push(t2);
    }
    let (k, u) = (median(known), median(unknown));
    let ratio = u.as_secs_f64() / k.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown/known median = {ratio:.3} ({u:?} / {k:?})"
    );
    drop(daemon);
}

#[test]
fn peer_strings_cannot_forge_or_flood_the_log() {
    peer_strings_in_the_log(false);
}

/// The same with `[log] format = "json"`: every line is one JSON object, the escaped name is a
/// string value inside one, and the flood is as rate limited as in text.
#[test]
fn peer_strings_cannot_forge_or_flood_the_json_log() {
    peer_strings_in_the_log(true);
}

fn peer_strings_in_the_log(json: bool) {
    let _serial = serial();
    let d = Data::init("alice");
    if json {
        d.set("log", "format", "\"json\"");
    }
    let daemon = d.start_env(&[("RUST_LOG", "info")]);
    let log = daemon.log_path().to_path_buf();
    let tcp = d.ports().tcp;
    let forged = format!("eve\nINFO hsmd: forged line\u{1b}[2J{}", "x".repeat(3000));
    for _ in 0..200 {
        let (s, _, _) = failed_login(&tcp, &forged);
        assert_eq!(s, Status::AuthFailed);
    }
    healthy(
        &d.load_profile("alice"),
        Transport::Tcp,
        None,
        DEADLINE,
        "alice",
    );
    drop(daemon);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("INFO hsmd: forged line")),
        "a forged line reached the log"
    );
    let failures = text
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .count();
    assert!(
        (1..=10).contains(&failures),
        "{failures} failure lines for 200 attempts from one source"
    );
    assert!(text.len() < 20_000, "the log grew to {} bytes", text.len());
    if !json {
        assert!(
            text.contains("eve\\nINFO"),
            "the name is shown escaped: {text}"
        );
        return;
    }
    // Every line is a JSON object with a level and fields; the name is in one of them,
    // escaped (a backslash and an n, never a newline).
    let mut named = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        named |= v["fields"]
            .as_object()
            .unwrap()
            .values()
            .any(|f| f.as_str().is_some_and(|s| s.contains("eve\\nINFO")));
    }
    assert!(named, "the escaped name is in a field: {text}");
}
