//! Hostile and broken peers: wrong credentials, replayed proofs, garbage bytes, protocol
//! violations, clients that never read. Each must get a clear status (or a clean close) and
//! must not disturb anyone else.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::Identity;
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep, Hello, Proof};
use ferrohsm_proto::message::decode_error;
use ferrohsm_proto::{Frame, KeyRef, KeyType, PROTOCOL_VERSION, Request, Status};
use support::{TestServer, closed_by_server, read_frame, send};

fn error_status(f: &Frame) -> Status {
    assert!(f.header.is_error(), "expected an error frame, got {f:?}");
    decode_error(f.header.opcode, &f.body)
        .unwrap()
        .status()
        .unwrap()
}

fn hello(s: &mut std::net::TcpStream, name: &str) {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client: name.into(),
    };
    send(s, &Request::Hello(hello).to_frame(1));
}

/// Handshakes on a raw socket with the protocol's client state machine; returns the socket,
/// the proof it sent (for replay attempts) and the bytes read past the last frame.
fn raw_login(srv: &TestServer, id: &Identity) -> (std::net::TcpStream, Vec<u8>, Vec<u8>) {
    let mut s = srv.raw();
    let mut buf = Vec::new();
    let mut hs = ClientHandshake::new(&id.name);
    send(&mut s, &hs.start());
    let f = read_frame(&mut s, &mut buf).expect("challenge");
    let mut signature = Vec::new();
    let step = hs
        .on_frame(&f, |t| {
            signature = ed25519_dalek::Signer::sign(id.auth_key.as_ref().unwrap(), t)
                .to_bytes()
                .to_vec();
            Ok(signature.clone())
        })
        .unwrap();
    let ClientStep::Send(proof) = step else {
        panic!("expected a proof to send")
    };
    send(&mut s, &proof);
    (s, signature, buf)
}

fn alice_identity(srv: &TestServer) -> Identity {
    srv.profile("alice").identity().unwrap()
}

#[test]
fn wrong_key_and_unknown_client_are_refused_alike() {
    let srv = TestServer::start(&["alice", "bob"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let login = |id: Identity| {
        rt.block_on(ferrohsm_client::connect::tcp::connect(
            &srv.addr.to_string(),
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
        match login(id) {
            Err(ClientError::Auth(body)) => {
                assert_eq!(body.status(), Some(Status::AuthFailed));
                messages.push(body.message);
            }
            other => panic!("expected an auth failure, got {other:?}"),
        }
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "refusals must not reveal which names exist"
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
    let (mut first, proof, mut buf) = raw_login(&srv, &id);
    let welcome = read_frame(&mut first, &mut buf).unwrap();
    assert!(!welcome.header.is_error());
    // Same proof on a fresh connection: the new challenge differs, so it must fail.
    let mut s = srv.raw();
    let mut buf2 = Vec::new();
    hello(&mut s, "alice");
    read_frame(&mut s, &mut buf2).unwrap();
    send(
        &mut s,
        &Request::Proof(Proof {
            signature: proof.clone(),
        })
        .to_frame(2),
    );
    assert_eq!(
        error_status(&read_frame(&mut s, &mut buf2).unwrap()),
        Status::AuthFailed
    );
    assert!(closed_by_server(&mut s));
    // And a second proof on the authenticated connection is a protocol violation.
    send(
        &mut first,
        &Request::Proof(Proof { signature: proof }).to_frame(3),
    );
    assert_eq!(
        error_status(&read_frame(&mut first, &mut buf).unwrap()),
        Status::ProtocolViolation
    );
    assert!(closed_by_server(&mut first));
}

#[test]
fn key_operations_before_authentication_are_refused() {
    let srv = TestServer::start(&["alice"]);
    let mut s = srv.raw();
    send(&mut s, &Request::List(Default::default()).to_frame(5));
    let mut buf = Vec::new();
    let f = read_frame(&mut s, &mut buf).unwrap();
    assert_eq!(f.header.request_id, 5);
    assert_eq!(error_status(&f), Status::ProtocolViolation);
    assert!(closed_by_server(&mut s));
    // Old protocol version in the hello.
    let mut s = srv.raw();
    send(
        &mut s,
        &Request::Hello(Hello {
            version: 99,
            client: "alice".into(),
        })
        .to_frame(1),
    );
    assert_eq!(
        error_status(&read_frame(&mut s, &mut Vec::new()).unwrap()),
        Status::UnsupportedVersion
    );
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
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        error_status(&read_frame(&mut s, &mut Vec::new()).unwrap()),
        Status::MalformedFrame
    );
    assert!(closed_by_server(&mut s));

    // A header announcing a body over the cap: refused before the body is sent.
    let mut s = srv.raw();
    let mut bytes = Request::Ping.to_frame(1).encode();
    bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&bytes).unwrap();
    assert_eq!(
        error_status(&read_frame(&mut s, &mut Vec::new()).unwrap()),
        Status::BodyTooLarge
    );
    assert!(closed_by_server(&mut s));

    // After authenticating: an unknown opcode, then a truncated body.
    for bad in [Frame::new(0, 999, 7, vec![]), {
        let mut f = Request::Sign {
            key: KeyRef::Id(1),
            data: vec![1; 10],
        }
        .to_frame(7);
        f.body.truncate(5);
        Frame::new(0, f.header.opcode, 7, f.body)
    }] {
        let (mut s, _, mut buf) = raw_login(&srv, &alice_identity(&srv));
        read_frame(&mut s, &mut buf).unwrap();
        send(&mut s, &bad);
        let f = read_frame(&mut s, &mut buf).unwrap();
        assert_eq!(f.header.request_id, 7);
        assert!(matches!(
            error_status(&f),
            Status::UnknownOpcode | Status::MalformedBody
        ));
        assert!(closed_by_server(&mut s));
    }

    // Half a frame, then hang up.
    let mut s = srv.raw();
    s.write_all(&Request::Ping.to_frame(1).encode()[..7])
        .unwrap();
    drop(s);

    // The established session never noticed.
    let sig = alice.sign(&"k".parse().unwrap(), b"still here").unwrap();
    alice
        .verify(&"k".parse().unwrap(), b"still here", &sig)
        .unwrap();
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let srv = TestServer::start_with(&["alice", "bob"], |c| c.window = 4);
    let bob = srv.connect("bob");
    bob.generate(&"k".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let (mut s, _, _) = raw_login(&srv, &alice_identity(&srv));
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
        match s.write_all(&batch) {
            Ok(()) => sent += 1024,
            Err(_) => break true,
        }
    };
    assert!(
        blocked,
        "server kept reading from a client that never reads ({sent} requests)"
    );
    let t = Instant::now();
    for _ in 0..50 {
        bob.ping().unwrap();
    }
    let sig = bob.sign(&"k".parse().unwrap(), b"m").unwrap();
    bob.verify(&"k".parse().unwrap(), b"m", &sig).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bob was stalled by alice"
    );
}

#[test]
fn idle_unauthenticated_connections_time_out_and_never_take_session_places() {
    let srv = TestServer::start_with(&["alice"], |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.max_connections = 2;
    });
    let mut idle = srv.raw();
    let t = Instant::now();
    assert!(
        closed_by_server(&mut idle),
        "idle connection must be closed"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Idle unauthenticated sockets hold handshake places, not session places: with more of
    // them open than max_connections, real clients still log in, up to max_connections.
    let _idle: Vec<_> = (0..5).map(|_| srv.raw()).collect();
    std::thread::sleep(Duration::from_millis(50));
    let a = srv.connect("alice");
    let b = srv.connect("alice");
    // A third session is over the listener's limit: a readable busy.
    match BlockingClient::connect(&srv.profile("alice"), None) {
        Err(ClientError::Auth(e)) => {
            assert_eq!(e.status(), Some(Status::Busy), "{e:?}");
            assert!(e.message.contains("too many connections"), "{}", e.message);
        }
        other => panic!("expected busy, got {other:?}"),
    }
    a.ping().unwrap();
    b.ping().unwrap();
}
