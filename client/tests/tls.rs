//! TLS transports with real handshakes on 127.0.0.1: identity bound to the credential, every
//! kind of bad credential refused (with the server still serving others), hostile bytes on
//! TLS ports, per-client limits, and interop with the `openssl s_client` command line.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::Hello;
use ferrohsm_proto::{KeyRef, KeyType, PROTOCOL_VERSION, Request, Status};
use ferrohsm_tls::pki::{self, Role};
use support::TestServer;

fn connect(p: &Profile, t: Transport) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(p, Some(t))
}

/// The connection error text, or a panic if the connection was accepted.
fn refused(r: Result<BlockingClient, ClientError>) -> ClientError {
    match r {
        Ok(c) => match c.ping() {
            // TLS 1.3: a rejected client certificate can surface on the first exchange.
            Err(e) => e,
            Ok(()) => panic!("connection was accepted"),
        },
        Err(e) => e,
    }
}

/// Writes a certificate and key issued by `ca` for `name` into `dir`; returns their paths.
fn issue(
    dir: &Path,
    ca: (&str, &str),
    name: &str,
    valid: (time::OffsetDateTime, time::OffsetDateTime),
    tag: &str,
) -> (PathBuf, PathBuf) {
    let c = pki::issue(ca.0, ca.1, Role::Client, &[name], valid.0, valid.1).unwrap();
    let (cert, key) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, c.key_pem.as_bytes()).unwrap();
    (cert, key)
}

fn dev_ca(srv: &TestServer) -> (String, String) {
    let pki = srv.dir.path().join("pki");
    (
        std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        std::fs::read_to_string(pki.join("ca.key")).unwrap(),
    )
}

#[test]
fn bad_credentials_are_refused_and_others_keep_being_served() {
    let srv = TestServer::start(&["alice", "bob"]);
    let tmp = tempfile::tempdir().unwrap();
    let alice = srv.profile("alice");
    let bob = srv.profile("bob");
    let bob_client = connect(&bob, Transport::Tls).unwrap();
    let secret = bob_client
        .generate(&"bobs".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let (ca_cert, ca_key) = dev_ca(&srv);
    let with_cert = |ident: Option<(PathBuf, PathBuf)>| {
        let mut p = alice.clone();
        p.tls.as_mut().unwrap().identity = ident;
        p
    };
    let tls_msg = |p: &Profile| refused(connect(p, Transport::Tls)).to_string();

    // No client certificate at all.
    let e = tls_msg(&with_cert(None));
    assert!(e.contains("server rejected our certificate"), "{e}");

    // A certificate for alice from another CA.
    let evil = pki::new_ca("Evil CA").unwrap();
    let forged = issue(
        tmp.path(),
        (&evil.cert_pem, &evil.key_pem),
        "alice",
        pki::validity(30),
        "evil",
    );
    let e = tls_msg(&with_cert(Some(forged)));
    assert!(e.contains("server rejected our certificate"), "{e}");

    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let past = (
        now - Duration::from_secs(10 * 86_400),
        now - Duration::from_secs(86_400),
    );
    let expired = issue(tmp.path(), (&ca_cert, &ca_key), "alice", past, "expired");
    let e = tls_msg(&with_cert(Some(expired)));
    assert!(
        e.contains("server rejected our certificate") && e.contains("Expired"),
        "{e}"
    );

    // A valid certificate for a name that is not a configured client.
    let mallory = issue(
        tmp.path(),
        (&ca_cert, &ca_key),
        "mallory",
        pki::validity(30),
        "mallory",
    );
    match refused(connect(&with_cert(Some(mallory)), Transport::Tls)) {
        ClientError::Auth(b) => {
            assert_eq!(b.status(), Some(Status::AuthFailed));
            assert!(
                b.message.contains("names no configured client"),
                "{}",
                b.message
            );
        }
        other => panic!("expected auth_failed, got {other:?}"),
    }

    // Alice's profile presenting bob's certificate is never served as alice.
    let bobs = bob.tls.as_ref().unwrap().identity.clone();
    match refused(connect(&with_cert(bobs), Transport::Tls)) {
        ClientError::Auth(b) => assert_eq!(b.status(), Some(Status::AuthFailed)),
        other => panic!("expected auth_failed, got {other:?}"),
    }

    // PSK: unknown identity, wrong key, and alice's name with bob's PSK all fail; the first
    // two fail identically, so the server reveals no identities.
    let psk = |f: &dyn Fn(&mut ferrohsm_client::profile::PskProfile)| {
        let mut p = alice.clone();
        f(p.tls_psk.as_mut().unwrap());
        refused(connect(&p, Transport::TlsPsk)).to_string()
    };
    let unknown = psk(&|p| p.identity = "mallory".into());
    let wrong_key = tmp.path().join("wrong.psk");
    std::fs::write(&wrong_key, "00".repeat(32)).unwrap();
    let wrong = psk(&|p| p.key_file = wrong_key.clone());
    assert!(
        unknown.contains("PSK rejected: unknown identity or wrong key"),
        "{unknown}"
    );
    assert_eq!(unknown.replace("mallory", ""), wrong.replace("mallory", ""));
    let bob_psk = bob.tls_psk.clone().unwrap();
    let crossed = psk(&|p| *p = bob_psk.clone());
    assert!(crossed.contains("auth_failed"), "{crossed}");

    // Every refusal maps to exit code 3 in hsmctl.
    assert_eq!(ClientError::Connection(String::new()).exit_code(), 3);

    // Through all that, both clients are served over both modes, still isolated.
    for t in [Transport::Tls, Transport::TlsPsk] {
        let a = connect(&alice, t).unwrap();
        a.ping().unwrap();
        let e = a
            .block_on(a.client().info(&KeyRef::Id(secret.id)))
            .unwrap_err();
        assert_eq!(e.status(), Some(Status::KeyNotFound));
        let b = connect(&bob, t).unwrap();
        let sig = b.sign(&KeyRef::Id(secret.id), b"m").unwrap();
        b.verify(&KeyRef::Id(secret.id), b"m", &sig).unwrap();
    }
}

/// Reads until the server closes the connection; false if it is still open after `limit`.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn plain_bytes_and_stalled_handshakes_on_tls_ports_are_dropped() {
    let srv = TestServer::start_with(&["alice"], |c| {
        c.handshake_timeout = Duration::from_millis(400)
    });
    let b = srv.handle.as_ref().unwrap().bound.clone();
    for addr in [b.tls.unwrap(), b.tls_psk.unwrap()] {
        // Plain protocol bytes instead of a ClientHello.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&Request::Ping.to_frame(1).encode()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{addr}: garbage not dropped"
        );
        // Connected, then silent: dropped after the handshake timeout.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{addr}: idle handshake kept"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{addr}: closed before the timeout"
        );
        // Half a ClientHello, then silence.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{addr}: half handshake kept"
        );
    }
    let alice = srv.profile("alice");
    connect(&alice, Transport::Tls).unwrap().ping().unwrap();
    connect(&alice, Transport::TlsPsk).unwrap().ping().unwrap();
}

#[test]
fn per_client_connection_limit_applies_across_transports() {
    let srv = TestServer::start_with(&["alice", "bob"], |c| c.max_connections_per_client = 2);
    let alice = srv.profile("alice");
    let a1 = connect(&alice, Transport::Tls).unwrap();
    let a2 = connect(&alice, Transport::TlsPsk).unwrap();
    match refused(connect(&alice, Transport::Tcp)) {
        ClientError::Auth(b) => {
            assert_eq!(b.status(), Some(Status::Busy));
            assert!(b.message.contains("alice"), "{}", b.message);
        }
        other => panic!("expected busy, got {other:?}"),
    }
    connect(&srv.profile("bob"), Transport::Tls)
        .unwrap()
        .ping()
        .unwrap();
    a1.ping().unwrap();
    drop(a2);
    // The slot comes back once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect(&alice, Transport::Tcp).is_err() {
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `openssl s_client ARGS`, sends a protocol hello for alice, and reports whether a
/// FerroHSM frame came back, with everything s_client printed.
fn s_client(ossl: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(ossl)
        .arg("s_client")
        .args(args)
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "alice".into(),
    });
    let _ = child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&hello.to_frame(1).encode());
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"FHSM") {
                break;
            }
        }
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let got = reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let framed = got.windows(4).any(|w| w == b"FHSM");
    (
        framed,
        format!(
            "status {status}; stdout {:?}; stderr {err}",
            String::from_utf8_lossy(&got)
        ),
    )
}

#[test]
fn openssl_s_client_interoperates_with_both_tls_modes() {
    let Some(ossl) = support::openssl() else {
        return;
    };
    let srv = TestServer::start(&["alice"]);
    let b = srv.handle.as_ref().unwrap().bound.clone();
    let f = |p: &str| srv.dir.path().join(p).to_str().unwrap().to_string();
    let (tls, psk) = (b.tls.unwrap().to_string(), b.tls_psk.unwrap().to_string());
    let (ca, cert, key) = (
        f("pki/ca.pem"),
        f("clients/alice.pem"),
        f("clients/alice.tls.key"),
    );
    let base = [
        "-connect",
        &tls,
        "-CAfile",
        &ca,
        "-servername",
        "localhost",
        "-verify_return_error",
    ];

    let with_cert: Vec<&str> = base
        .iter()
        .copied()
        .chain(["-cert", &cert, "-key", &key])
        .collect();
    let (ok, log) = s_client(ossl, &with_cert);
    assert!(
        ok,
        "s_client with alice's certificate got no welcome: {log}"
    );
    let (ok, log) = s_client(ossl, &base);
    assert!(!ok, "s_client without a certificate was served: {log}");
    assert!(log.contains("alert"), "expected a TLS alert: {log}");

    let hex = std::fs::read_to_string(f("clients/alice.psk"))
        .unwrap()
        .trim()
        .to_string();
    let psk_args = |key: &str| -> Vec<String> {
        [
            "-connect",
            &psk,
            "-tls1_3",
            "-psk_identity",
            "alice",
            "-psk",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = psk_args(&hex);
    let (ok, log) = s_client(ossl, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "s_client with alice's PSK got no welcome: {log}");
    let wrong = psk_args(&"11".repeat(32));
    let (ok, log) = s_client(ossl, &wrong.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "s_client with a wrong PSK was served: {log}");
    // The server survived all of it.
    connect(&srv.profile("alice"), Transport::TlsPsk)
        .unwrap()
        .ping()
        .unwrap();
}

#[test]
fn listener_connection_limit_is_a_readable_busy_over_tls() {
    let srv = TestServer::start_with(&["alice", "bob"], |c| c.max_connections = 1);
    let (alice, bob) = (srv.profile("alice"), srv.profile("bob"));
    for t in [Transport::Tls, Transport::TlsPsk, Transport::Tcp] {
        let held = connect(&alice, t).unwrap();
        match refused(connect(&bob, t)) {
            ClientError::Auth(b) | ClientError::Server(b) => {
                assert_eq!(b.status(), Some(Status::Busy), "{t:?}: {b:?}");
                assert!(b.message.contains("too many connections"));
            }
            other => panic!("{t:?}: expected busy, got {other:?}"),
        }
        held.ping().unwrap();
    }
}

#[test]
fn a_certificate_naming_two_clients_is_refused() {
    let srv = TestServer::start(&["alice", "bob"]);
    let tmp = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = dev_ca(&srv);
    // CN alice, SANs alice and bob: the same CA, but the credential would mean two clients.
    let c = pki::issue(
        &ca_cert,
        &ca_key,
        Role::Client,
        &["alice", "bob"],
        pki::validity(30).0,
        pki::validity(30).1,
    )
    .unwrap();
    let (cert, key) = (tmp.path().join("both.pem"), tmp.path().join("both.key"));
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, c.key_pem.as_bytes()).unwrap();
    for who in ["alice", "bob"] {
        let mut p = srv.profile(who);
        p.tls.as_mut().unwrap().identity = Some((cert.clone(), key.clone()));
        match refused(connect(&p, Transport::Tls)) {
            ClientError::Auth(b) | ClientError::Server(b) => {
                assert_eq!(b.status(), Some(Status::AuthFailed), "{b:?}");
                assert!(
                    b.message.contains("more than one configured client"),
                    "{}",
                    b.message
                );
            }
            other => panic!("expected auth_failed, got {other:?}"),
        }
    }
    // Each client's own certificate still works.
    connect(&srv.profile("alice"), Transport::Tls)
        .unwrap()
        .ping()
        .unwrap();
    connect(&srv.profile("bob"), Transport::Tls)
        .unwrap()
        .ping()
        .unwrap();
}
