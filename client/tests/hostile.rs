//! Hostile and broken peers: wrong credentials, replayed proofs, garbage bytes, protocol
//! violations, clients that never read. Each must get its one status (and, where the protocol
//! says so, a close: [`Ending::Closed`], never a connection merely gone quiet) and must not
//! disturb anyone else.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrohsm_client::profile::Identity;
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::{Hello, Proof};
use ferrohsm_proto::{Frame, KeyRef, KeyType, Opcode, Request, Status};
use ferrohsm_test_support::connect::refusal;
use ferrohsm_test_support::peer::{Ending, Tcp, header, hello, rt, status_of, tcp_queues};
use ferrohsm_test_support::{TestServer, label, status, wait};

/// How long a close, an answer or a condition may take on a busy machine (a hang guard).
const DEADLINE: Duration = Duration::from_secs(20);

fn alice_identity(srv: &TestServer) -> Identity {
    srv.profile("alice").identity().unwrap()
}

/// The next frame, which must come.
fn answer(s: &mut Tcp) -> Frame {
    s.frame(DEADLINE).expect("an answer before the deadline")
}

#[test]
fn wrong_key_and_unknown_client_are_refused_alike() {
    let srv = TestServer::start(&["alice", "bob"]);
    let rt = rt();
    let login = |id: Identity| {
        rt.block_on(ferrohsm_client::connect::tcp::connect(
            &srv.addr.to_string(),
            std::time::Duration::from_secs(5),
            &id,
        ))
    };
    let wrong_key = Identity {
        name: "alice".into(),
        auth_key: Some(ed25519_dalek::SigningKey::from_bytes(&[7; 32])),
    };
    let bobs_key_as_alice = Identity {
        name: "alice".into(),
        ..srv.profile("bob").identity().unwrap()
    };
    let unknown = Identity {
        name: "mallory".into(),
        ..alice_identity(&srv)
    };
    let mut messages = Vec::new();
    for id in [wrong_key, bobs_key_as_alice, unknown] {
        let (s, m) = refusal(login(id));
        assert_eq!(s, Status::AuthFailed, "{m}");
        messages.push(m);
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "refusals must not reveal which names exist: {messages:?}"
    );
    assert_eq!(
        ClientError::Auth(ferrohsm_proto::ErrorBody::new(Status::AuthFailed, "")).exit_code(),
        3
    );
    srv.connect("alice").ping().unwrap();
}

#[test]
fn a_replayed_proof_is_refused() {
    let srv = TestServer::start(&["alice"]);
    let id = alice_identity(&srv);
    let mut first = srv.raw();
    let proof = first.login(&id);
    // Same proof on a fresh connection: the new challenge differs, so it must fail.
    let mut s = srv.raw();
    assert!(s.send(&hello("alice").to_frame(1)));
    let challenge = answer(&mut s);
    assert!(!challenge.header.is_error(), "a challenge: {challenge:?}");
    assert!(
        s.send(
            &Request::Proof(Proof {
                signature: proof.clone(),
            })
            .to_frame(2)
        )
    );
    assert_eq!(status_of(&answer(&mut s)), Status::AuthFailed);
    assert_eq!(s.ending(DEADLINE), Ending::Closed);
    // And a second proof on the authenticated connection is a protocol violation.
    assert!(first.send(&Request::Proof(Proof { signature: proof }).to_frame(3)));
    assert_eq!(status_of(&answer(&mut first)), Status::ProtocolViolation);
    assert_eq!(first.ending(DEADLINE), Ending::Closed);
}

#[test]
fn key_operations_before_authentication_are_refused() {
    let srv = TestServer::start(&["alice"]);
    let mut s = srv.raw();
    assert!(s.send(&Request::List(Default::default()).to_frame(5)));
    let f = answer(&mut s);
    assert_eq!(f.header.request_id, 5);
    assert_eq!(status_of(&f), Status::ProtocolViolation);
    assert_eq!(s.ending(DEADLINE), Ending::Closed);
    // Old protocol version in the hello.
    let mut s = srv.raw();
    assert!(
        s.send(
            &Request::Hello(Hello {
                version: 99,
                client: "alice".into(),
            })
            .to_frame(1)
        )
    );
    assert_eq!(status_of(&answer(&mut s)), Status::UnsupportedVersion);
    assert_eq!(s.ending(DEADLINE), Ending::Closed);
}

#[test]
fn garbage_and_malformed_frames_close_only_that_connection() {
    let srv = TestServer::start(&["alice"]);
    let alice = srv.connect("alice");
    alice
        .generate(&"k".parse().unwrap(), KeyType::Ed25519)
        .unwrap();

    // Plain garbage (an HTTP request) on the socket.
    let mut s = srv.raw();
    assert!(s.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(status_of(&answer(&mut s)), Status::MalformedFrame);
    assert_eq!(s.ending(DEADLINE), Ending::Closed);

    // A header announcing a body over the cap: refused before the body is sent.
    let mut s = srv.raw();
    assert!(s.send_bytes(&header(Opcode::Ping as u16, 1, u32::MAX)));
    assert_eq!(status_of(&answer(&mut s)), Status::BodyTooLarge);
    assert_eq!(s.ending(DEADLINE), Ending::Closed);

    // After authenticating: an unknown opcode, then a truncated body; each closes the session
    // with its own status (session/io.rs: both are frame-level faults).
    let truncated = {
        let f = Request::Sign {
            key: KeyRef::Id(1),
            data: vec![1; 10],
        }
        .to_frame(7);
        Frame::new(0, f.header.opcode, 7, f.body[..5].to_vec())
    };
    for (bad, want) in [
        (Frame::new(0, 999, 7, vec![]), Status::UnknownOpcode),
        (truncated, Status::MalformedBody),
    ] {
        let mut s = srv.raw();
        s.login(&alice_identity(&srv));
        assert!(s.send(&bad));
        let f = answer(&mut s);
        assert_eq!(f.header.request_id, 7);
        assert_eq!(status_of(&f), want, "{bad:?}");
        assert_eq!(s.ending(DEADLINE), Ending::Closed, "{want:?}");
    }

    // Half a frame, then hang up.
    let mut s = srv.raw();
    assert!(s.send_bytes(&Request::Ping.to_frame(1).encode()[..7]));
    drop(s);

    // The established session never noticed.
    let sig = alice.sign(&label("k"), b"still here").unwrap();
    alice.verify(&label("k"), b"still here", &sig).unwrap();
    assert_eq!(
        status(alice.verify(&label("k"), b"not signed", &sig)),
        Status::BadSignature
    );
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let srv = TestServer::start_with(&["alice", "bob"], |c| c.window = 4);
    let bob = srv.connect("bob");
    bob.generate(&"k".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let mut alice = srv.raw();
    alice.login(&alice_identity(&srv));
    let s = &mut alice.s;
    // Pipelined requests with large responses that alice never reads. Her unread responses
    // fill the socket, the server's writer blocks, her window stays full and the server must
    // stop reading her requests, so our writes eventually block. A server that kept reading
    // (buffering requests in memory) would accept everything we write.
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let batch: Vec<u8> = (0..1024u64)
        .flat_map(|i| Request::Random { len: 65536 }.to_frame(10 + i).encode())
        .collect();
    let mut sent = 0usize;
    let start = Instant::now();
    let blocked = loop {
        if start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        match std::io::Write::write_all(s, &batch) {
            Ok(()) => sent += 1024,
            Err(_) => break true,
        }
    };
    assert!(
        blocked,
        "server kept reading from a client that never reads ({sent} requests)"
    );
    // The push-back is real: requests wait unread in the server's socket, and responses wait
    // unread in alice's.
    let (mine, server) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    wait::until("the server to stop reading alice", DEADLINE, || {
        tcp_queues(server, mine).is_some_and(|(_, rx)| rx > 0)
            && tcp_queues(mine, server).is_some_and(|(_, rx)| rx > 0)
    });
    // bob is served, correctly, while alice stays stuck (the client's timeout guards a hang).
    let bob = BlockingClient::connect_within(&srv.profile("bob"), None, DEADLINE).unwrap();
    for _ in 0..50 {
        bob.ping().unwrap();
    }
    let sig = bob.sign(&label("k"), b"m").unwrap();
    bob.verify(&label("k"), b"m", &sig).unwrap();
}

#[test]
fn an_idle_unauthenticated_connection_times_out() {
    let srv = TestServer::start_with(&["alice"], |c| {
        c.handshake_timeout = Duration::from_millis(300);
    });
    let mut idle = srv.raw();
    assert_eq!(
        idle.ending(DEADLINE),
        Ending::Closed,
        "an idle connection must be closed"
    );
    // A connection in its handshake is cut off too; a session opened before it is not.
    let alice = srv.connect("alice");
    let mut half = srv.raw();
    assert!(half.send(&hello("alice").to_frame(1)));
    let challenge = answer(&mut half);
    assert!(!challenge.header.is_error(), "a challenge: {challenge:?}");
    assert_eq!(half.ending(DEADLINE), Ending::Closed);
    alice.ping().unwrap();
}

#[test]
fn idle_unauthenticated_connections_never_take_session_places() {
    // A handshake timeout far beyond the test, so the idle sockets stay for all of it.
    let srv = TestServer::start_with(&["alice"], |c| {
        c.handshake_timeout = Duration::from_secs(600);
        c.max_connections = 2;
    });
    // More idle unauthenticated sockets than max_connections, each with half a hello the
    // server has read (so it accepted them and holds them in their handshake).
    let hello = hello("alice").to_frame(1).encode();
    let idle: Vec<Tcp> = (0..5)
        .map(|_| {
            let mut s = srv.raw();
            assert!(s.send_bytes(&hello[..hello.len() - 1]));
            s
        })
        .collect();
    wait::until("the server to read every idle socket", DEADLINE, || {
        idle.iter().all(|s| {
            let (mine, server) = (s.s.local_addr().unwrap(), s.s.peer_addr().unwrap());
            tcp_queues(server, mine) == Some((0, 0)) && tcp_queues(mine, server) == Some((0, 0))
        })
    });
    // Real clients still log in, up to max_connections.
    let a = srv.connect("alice");
    let b = srv.connect("alice");
    // A third session is over the listener's limit: a readable busy.
    let (s, m) = refusal(BlockingClient::connect(&srv.profile("alice"), None));
    assert_eq!(s, Status::Busy, "{m}");
    assert!(m.contains("too many connections"), "{m}");
    a.ping().unwrap();
    b.ping().unwrap();
    // The idle sockets were still held, established on hsmd's side and unanswered, all along.
    for s in &idle {
        let (mine, server) = (s.s.local_addr().unwrap(), s.s.peer_addr().unwrap());
        assert_eq!(
            tcp_queues(server, mine),
            Some((0, 0)),
            "{mine} no longer held by hsmd"
        );
        assert_eq!(
            tcp_queues(mine, server),
            Some((0, 0)),
            "{mine}: hsmd answered it"
        );
    }
}
