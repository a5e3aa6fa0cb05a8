//! The bad-input matrix: every row, over every transport, against the real `hsmd`. Each row
//! sends one kind of bad input and expects a status (with or without the connection closing)
//! or a close; after it a healthy client must be served within a second. At the end `hsmd`'s
//! memory must still be bounded, after thousands of idle connections too.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/peer.rs"]
mod peer;
#[path = "support/store.rs"]
mod store;

use std::time::{Duration, Instant};

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::handshake::{Hello, Proof};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Opcode, Request, Status};
use peer::{ALL, Raw, header, rss_kib, rt, status_of};
use store::Data;

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An error frame with this status, then the server closes the connection.
    Closes(Status),
    /// An error frame with this status; the session goes on (a ping still answers).
    Answers(Status),
    /// Every request answered without an error (as many answers as given).
    Served(usize),
    /// The server closes the connection, with or without a word.
    Closed,
}

/// When a row's bytes are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    /// On a fresh connection, before any hello.
    Fresh,
    /// After the hello, before the proof (plain TCP and the shm set-up socket only).
    MidHandshake,
    /// On an authenticated session.
    Session,
}

struct Keys {
    aead: KeyRef,
    ed: KeyRef,
}

fn req(r: Request, id: u64) -> Vec<u8> {
    r.to_frame(id).encode()
}

fn hello(name: &str) -> Request {
    Request::Hello(Hello {
        version: ferrohsm_proto::PROTOCOL_VERSION,
        client: name.into(),
    })
}

type Row = (&'static str, When, fn(&Keys) -> Vec<u8>, Expect);

fn rows() -> Vec<Row> {
    vec![
        (
            "truncated frame, then the end of input",
            When::Fresh,
            |_| header(Opcode::Ping as u16, 1, 0)[..9].to_vec(),
            Expect::Closed,
        ),
        (
            "oversize frame before authentication",
            When::Fresh,
            |_| header(Opcode::Hello as u16, 1, 1 << 20),
            Expect::Closes(Status::BodyTooLarge),
        ),
        (
            "oversize frame in a session",
            When::Session,
            |_| header(Opcode::Sign as u16, 1, 2 << 20),
            Expect::Closes(Status::BodyTooLarge),
        ),
        (
            "bad magic",
            When::Fresh,
            |_| b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            Expect::Closes(Status::MalformedFrame),
        ),
        (
            "bad version",
            When::Fresh,
            |_| {
                let mut h = header(Opcode::Ping as u16, 1, 0);
                h[4] = 99;
                h
            },
            Expect::Closes(Status::UnsupportedVersion),
        ),
        (
            "reserved flag bits",
            When::Session,
            |_| {
                let mut h = header(Opcode::Ping as u16, 1, 0);
                h[5] = 0x80;
                h
            },
            Expect::Closes(Status::MalformedFrame),
        ),
        (
            "unknown opcode",
            When::Session,
            |_| header(0x7777, 1, 0),
            Expect::Closes(Status::UnknownOpcode),
        ),
        (
            "a request before the handshake",
            When::Fresh,
            |_| req(Request::Ping, 1),
            Expect::Closes(Status::ProtocolViolation),
        ),
        (
            "a request during the handshake",
            When::MidHandshake,
            |k| {
                req(
                    Request::Sign {
                        key: k.ed.clone(),
                        data: vec![1],
                    },
                    2,
                )
            },
            Expect::Closes(Status::ProtocolViolation),
        ),
        (
            "a proof before any hello",
            When::Fresh,
            |_| {
                req(
                    Request::Proof(Proof {
                        signature: vec![0; 64],
                    }),
                    1,
                )
            },
            Expect::Closes(Status::ProtocolViolation),
        ),
        (
            "a second handshake",
            When::Session,
            |_| req(hello("alice"), 9),
            Expect::Closes(Status::ProtocolViolation),
        ),
        (
            "reused request ids (each answered)",
            When::Session,
            |_| {
                [
                    req(Request::Ping, 5),
                    req(Request::Ping, 5),
                    req(Request::Random { len: 8 }, 5),
                ]
                .concat()
            },
            Expect::Served(3),
        ),
        (
            "a body that does not decode",
            When::Session,
            |_| {
                let mut f = header(Opcode::Sign as u16, 1, 3);
                f.extend_from_slice(&[0xff, 0xff, 0xff]);
                f
            },
            Expect::Closes(Status::MalformedBody),
        ),
        (
            "wrong key type",
            When::Session,
            |k| {
                req(
                    Request::Sign {
                        key: k.aead.clone(),
                        data: vec![1],
                    },
                    1,
                )
            },
            Expect::Answers(Status::WrongKeyType),
        ),
        (
            "empty input",
            When::Session,
            |k| {
                [
                    req(
                        Request::Sign {
                            key: k.ed.clone(),
                            data: Vec::new(),
                        },
                        1,
                    ),
                    req(
                        Request::Encrypt {
                            key: k.aead.clone(),
                            plaintext: Vec::new(),
                            aad: Vec::new(),
                        },
                        2,
                    ),
                ]
                .concat()
            },
            Expect::Served(2),
        ),
        (
            "oversize input",
            When::Session,
            |_| req(Request::Random { len: 1 << 20 }, 1),
            Expect::Answers(Status::InvalidArgument),
        ),
        (
            "invalid signature",
            When::Session,
            |k| {
                req(
                    Request::Verify {
                        key: k.ed.clone(),
                        data: vec![1],
                        signature: vec![7; 64],
                    },
                    1,
                )
            },
            Expect::Answers(Status::BadSignature),
        ),
        (
            "invalid ciphertext",
            When::Session,
            |k| {
                req(
                    Request::Decrypt {
                        key: k.aead.clone(),
                        ciphertext: vec![2; 60],
                        aad: Vec::new(),
                    },
                    1,
                )
            },
            Expect::Answers(Status::DecryptFailed),
        ),
        (
            "an unknown key",
            When::Session,
            |_| {
                req(
                    Request::Sign {
                        key: "nobody-has-this".parse().unwrap(),
                        data: vec![1],
                    },
                    1,
                )
            },
            Expect::Answers(Status::KeyNotFound),
        ),
    ]
}

fn profile(d: &Data) -> Profile {
    Profile::load(&d.profile("alice")).unwrap()
}

fn healthy(p: &Profile, t: Transport, what: &str) {
    let start = Instant::now();
    let c = BlockingClient::connect(p, Some(t))
        .unwrap_or_else(|e| panic!("{what} over {t:?}: healthy client refused: {e}"));
    c.sign(&"ed".parse().unwrap(), b"still served").unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{what} over {t:?}: the healthy client took {:?}",
        start.elapsed()
    );
}

async fn run_row(p: &Profile, t: Transport, keys: &Keys, row: &Row) -> Result<(), String> {
    let (name, when, bytes, expect) = row;
    let mut raw = match when {
        When::Fresh => Raw::open(p, t).await,
        When::Session => Raw::session(p, t).await,
        When::MidHandshake => {
            let mut raw = Raw::open(p, t).await;
            assert!(raw.send(&req(hello("alice"), 1)).await);
            let c = raw
                .frame(Duration::from_secs(2))
                .await
                .ok_or("no challenge")?;
            if c.header.is_error() {
                return Err(format!("hello refused: {:?}", status_of(&c)));
            }
            raw
        }
    };
    let _ = raw.send(&bytes(keys)).await;
    if *expect == Expect::Closed {
        // The end of our input (truncated frame): the server must not hang on to it.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut raw.s).await;
    }
    let got = |f: Option<ferrohsm_proto::Frame>| f.ok_or_else(|| format!("{name}: no answer"));
    match expect {
        Expect::Closes(s) => {
            let f = got(raw.frame(Duration::from_secs(2)).await)?;
            if status_of(&f) != *s {
                return Err(format!("{name}: expected {s:?}, got {:?}", status_of(&f)));
            }
            if !raw.closed(Duration::from_secs(2)).await {
                return Err(format!("{name}: the connection stayed open"));
            }
        }
        Expect::Answers(s) => {
            let f = got(raw.frame(Duration::from_secs(2)).await)?;
            if status_of(&f) != *s {
                return Err(format!("{name}: expected {s:?}, got {:?}", status_of(&f)));
            }
            assert!(raw.send(&req(Request::Ping, 77)).await);
            let pong = got(raw.frame(Duration::from_secs(2)).await)?;
            if pong.header.is_error() || pong.header.request_id != 77 {
                return Err(format!("{name}: the session did not go on"));
            }
        }
        Expect::Served(n) => {
            for _ in 0..*n {
                let f = got(raw.frame(Duration::from_secs(2)).await)?;
                if f.header.is_error() {
                    return Err(format!("{name}: refused with {:?}", status_of(&f)));
                }
            }
        }
        Expect::Closed => {
            if !raw.closed(Duration::from_secs(5)).await {
                return Err(format!("{name}: the connection was not closed"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_over_every_transport_gets_its_answer_and_harms_no_one() {
    let d = Data::init("alice", &[]);
    // A short handshake timeout, so the slowloris row finishes quickly.
    let path = d.dir.join("hsmd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("handshake_timeout_ms = 3000", "handshake_timeout_ms = 1000"),
    )
    .unwrap();
    let daemon = d.start(&[]);
    let pid = daemon.child.id();
    let p = profile(&d);
    let setup = BlockingClient::connect(&p, Some(Transport::Tcp)).unwrap();
    let ed = setup
        .generate(&"ed".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let spec = KeySpec {
        key_type: KeyType::ChaCha20Poly1305,
        label: "aead".parse().unwrap(),
        usage: None,
        exportable: false,
        session: false,
    };
    let aead = setup.block_on(setup.client().generate_spec(spec)).unwrap();
    let keys = Keys {
        aead: KeyRef::Id(aead.id),
        ed: KeyRef::Id(ed.id),
    };
    let before = rss_kib(pid);
    let rt = rt();
    let mut failures = Vec::new();
    for t in ALL {
        for row in rows() {
            // The TLS transports prove the name in the TLS handshake: there is no proof step.
            if row.1 == When::MidHandshake && matches!(t, Transport::Tls | Transport::TlsPsk) {
                continue;
            }
            if let Err(e) = rt.block_on(run_row(&p, t, &keys, &row)) {
                failures.push(format!("{t:?}: {e}"));
            }
            healthy(&p, t, row.0);
        }
        // Slowloris: a hello one byte at a time, slower than the handshake timeout allows.
        let closed = rt.block_on(async {
            let mut raw = Raw::open(&p, t).await;
            let bytes = req(hello("alice"), 1);
            let start = Instant::now();
            for b in &bytes {
                if !raw.send(std::slice::from_ref(b)).await {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                if start.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            raw.closed(Duration::from_secs(3)).await;
            start.elapsed()
        });
        if closed > Duration::from_secs(4) {
            failures.push(format!("{t:?}: slowloris was not cut off ({closed:?})"));
        }
        healthy(&p, t, "slowloris");
    }
    // Thousands of idle connections, on every listener.
    let mut idle: Vec<Box<dyn std::any::Any>> = Vec::new();
    for _ in 0..700 {
        idle.push(Box::new(
            std::net::TcpStream::connect(&d.ports.tcp).unwrap(),
        ));
        idle.push(Box::new(
            std::net::TcpStream::connect(&d.ports.tls).unwrap(),
        ));
        idle.push(Box::new(
            std::net::TcpStream::connect(&d.ports.tls_psk).unwrap(),
        ));
        idle.push(Box::new(
            std::os::unix::net::UnixStream::connect(p.shm_socket.as_ref().unwrap()).unwrap(),
        ));
    }
    std::thread::sleep(Duration::from_millis(1200));
    for t in ALL {
        healthy(&p, t, "2,800 idle connections");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    drop(idle);
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        grown < 64 * 1024,
        "hsmd grew by {grown} KiB over the matrix"
    );
    drop(daemon);
}
