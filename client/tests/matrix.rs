//! The bad-input matrix: every row, over every transport, against the real `hsmd`. Each row
//! sends one kind of bad input and expects a status (with or without the connection closing)
//! or a close; after it a healthy client must still be served, correctly. At the end `hsmd`'s
//! memory must still be bounded, after thousands of idle connections too. Deadlines only guard
//! against a hang: nothing here asserts how fast an answer comes.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::Proof;
use ferrohsm_proto::{KeyRef, KeyType, Opcode, Request, Status};
use ferrohsm_test_support::connect::{healthy, served};
use ferrohsm_test_support::peer::status_of;
use ferrohsm_test_support::peer::{
    ALL, Ending, Raw, header, hello, request as req, rss_kib, rt, wait_gate_full,
};
use ferrohsm_test_support::{Data, label, spec, wait};

/// How long an answer, a close or a condition may take on a busy machine (a hang guard).
const DEADLINE: Duration = Duration::from_secs(20);

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An error frame with this status, then the server closes the connection.
    Closes(Status),
    /// An error frame with this status; the session goes on (a ping still answers).
    Answers(Status),
    /// Every request answered without an error (as many answers as given).
    Served(usize),
    /// The server closes the connection without a word (the peer's input ended mid-frame:
    /// there is no frame to answer).
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

async fn run_row(p: &Profile, t: Transport, keys: &Keys, row: &Row) -> Result<(), String> {
    let (name, when, bytes, expect) = row;
    // The shm set-up socket answers a peer that hangs up mid-frame with a protocol violation
    // ("peer hung up", listener/shm.rs) before closing; the stream listeners close silently.
    let expect = &match (expect, t) {
        (Expect::Closed, Transport::Shm) => Expect::Closes(Status::ProtocolViolation),
        (e, _) => *e,
    };
    let mut raw = match when {
        When::Fresh => Raw::open(p, t).await,
        When::Session => Raw::session(p, t).await,
        When::MidHandshake => {
            let mut raw = Raw::open(p, t).await;
            assert!(raw.send(&req(hello("alice"), 1)).await);
            let c = raw.frame(DEADLINE).await.ok_or("no challenge")?;
            if c.header.is_error() {
                return Err(format!("hello refused: {:?}", status_of(&c)));
            }
            raw
        }
    };
    let sent = bytes(keys);
    if !raw.send(&sent).await {
        return Err(format!("{name}: could not send the row's bytes"));
    }
    if row.3 == Expect::Closed {
        // The end of our input (truncated frame): the server must not hang on to it.
        tokio::io::AsyncWriteExt::shutdown(&mut raw.s)
            .await
            .map_err(|e| format!("{name}: shutdown: {e}"))?;
    }
    let got = |f: Option<ferrohsm_proto::Frame>| f.ok_or_else(|| format!("{name}: no answer"));
    let status = |f: &ferrohsm_proto::Frame| {
        if f.header.is_error() {
            Ok(status_of(f))
        } else {
            Err(format!("{name}: expected an error, got {f:?}"))
        }
    };
    match expect {
        Expect::Closes(s) => {
            let f = got(raw.frame(DEADLINE).await)?;
            if status(&f)? != *s {
                return Err(format!("{name}: expected {s:?}, got {:?}", status_of(&f)));
            }
            if raw.ending(DEADLINE).await != Ending::Closed {
                return Err(format!("{name}: the connection stayed open"));
            }
        }
        Expect::Answers(s) => {
            let f = got(raw.frame(DEADLINE).await)?;
            if status(&f)? != *s {
                return Err(format!("{name}: expected {s:?}, got {:?}", status_of(&f)));
            }
            if !raw.send(&req(Request::Ping, 77)).await {
                return Err(format!("{name}: the session was closed"));
            }
            let pong = got(raw.frame(DEADLINE).await)?;
            if pong.header.is_error() || pong.header.request_id != 77 {
                return Err(format!("{name}: the session did not go on: {pong:?}"));
            }
        }
        Expect::Served(n) => {
            // Each request answered (in any order: pipelined requests run side by side), the
            // answers' ids those of the requests (reused or not).
            let mut frames = ferrohsm_proto::FrameReader::new(1 << 20);
            frames.buffer().extend_from_slice(&sent);
            let mut asked = Vec::new();
            while let Ok(Some(f)) = frames.next_frame() {
                asked.push((f.header.opcode, f.header.request_id));
            }
            assert_eq!(asked.len(), *n, "{name}: the row's requests");
            let mut answered = Vec::new();
            for _ in 0..*n {
                let f = got(raw.frame(DEADLINE).await)?;
                if f.header.is_error() {
                    return Err(format!("{name}: refused with {:?}", status_of(&f)));
                }
                answered.push((f.header.opcode, f.header.request_id));
            }
            asked.sort();
            answered.sort();
            if asked != answered {
                return Err(format!("{name}: asked {asked:?}, answered {answered:?}"));
            }
        }
        Expect::Closed => {
            if let Some(f) = raw.frame(DEADLINE).await {
                return Err(format!(
                    "{name}: expected a close without a word, got {f:?}"
                ));
            }
            // `frame` ends on a close or at its deadline: only a close ends the stream now.
            if raw.ending(Duration::from_millis(10)).await != Ending::Closed {
                return Err(format!("{name}: the connection was not closed"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_over_every_transport_gets_its_answer_and_harms_no_one() {
    let d = Data::init("alice");
    // A short handshake timeout, so the slowloris row finishes quickly.
    d.set("server", "handshake_timeout_ms", "1000");
    // At info, hsmd logs each handshake it cuts off for taking too long.
    let daemon = d.start_env(&[("RUST_LOG", "info")]);
    let pid = daemon.pid();
    let p = d.load_profile("alice");
    let setup = BlockingClient::connect(&p, Some(Transport::Tcp)).unwrap();
    let ed = setup
        .generate(&"ed".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let aead = setup
        .block_on(
            setup
                .client()
                .generate_spec(spec(KeyType::ChaCha20Poly1305, "aead")),
        )
        .unwrap();
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
            healthy(&p, t, Some(&label("ed")), DEADLINE, row.0);
        }
        // Slowloris: a hello (of the largest size allowed before login) one byte every
        // 100 ms, each byte well within the 1 s handshake timeout of the one before. The
        // timeout counts from the connection, not from the last byte: the server closes the
        // connection while the bytes are still coming, long before the hello could end, and
        // logs that the handshake timed out (no other reason to close it).
        let timeouts_before = timeouts(&daemon.log());
        let cut = rt.block_on(async {
            let mut raw = Raw::open(&p, t).await;
            let mut bytes = header(Opcode::Hello as u16, 1, 4096);
            bytes.resize(bytes.len() + 4096, b'x');
            for (i, b) in bytes.iter().enumerate().take(300) {
                if !raw.send(std::slice::from_ref(b)).await {
                    return Some(i);
                }
                if raw.ending(Duration::from_millis(100)).await == Ending::Closed {
                    return Some(i + 1);
                }
            }
            None
        });
        match cut {
            None => failures.push(format!("{t:?}: slowloris was not cut off after 300 bytes")),
            Some(_) => wait::until(
                &format!("hsmd to log the slowloris's handshake timeout over {t:?}"),
                DEADLINE,
                || timeouts(&daemon.log()) > timeouts_before,
            ),
        }
        healthy(&p, t, Some(&label("ed")), DEADLINE, "slowloris");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    drop(setup);
    assert_eq!(daemon.terminate().code(), Some(0));
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

    // Thousands of idle connections, on every listener, to an hsmd whose handshakes do not
    // time out during the test: only the gate can make room for a real client.
    d.set("server", "handshake_timeout_ms", "600000");
    let daemon = d.start();
    let pid = daemon.pid();
    let before = rss_kib(pid);
    let ports = d.ports();
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for _ in 0..700 {
        for addr in [&ports.tcp, &ports.tls, &ports.tls_psk] {
            tcp.push(std::net::TcpStream::connect(addr).unwrap());
        }
        unix.push(std::os::unix::net::UnixStream::connect(p.shm_socket.as_ref().unwrap()).unwrap());
    }
    // The gate is full: hsmd holds exactly its 16 places per source (127.0.0.1 for the three
    // TCP listeners, alice's uid for shm) with idle sockets and has closed every other one.
    wait_gate_full(&tcp, &unix, 16, DEADLINE);
    // A real client gets in on each listener once the idle sockets are older than any real
    // handshake (until then the gate refuses it by closing at once).
    for t in ALL {
        wait::eventually(
            &format!("alice to get in over {t:?}"),
            DEADLINE,
            || match served(&p, t, Some(&label("ed")), DEADLINE) {
                Ok(()) => Some(()),
                Err(ClientError::Connection(_) | ClientError::ConnectionLost(_)) => None,
                Err(e) => panic!("2,800 idle connections, over {t:?}: {e}"),
            },
        );
    }
    let grown = rss_kib(pid).saturating_sub(before);
    drop((tcp, unix));
    assert!(
        grown < 64 * 1024,
        "hsmd grew by {grown} KiB with 2,800 idle connections"
    );
    drop(daemon);
}

/// How many handshakes hsmd's log says it cut off for taking too long (a session's hello,
/// and the shm set-up socket's).
fn timeouts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("handshake timed out; closing"))
        .count()
}
