//! TLS transports with real handshakes on 127.0.0.1: identity bound to the credential, every
//! kind of bad credential refused (with the server still serving others), hostile bytes on
//! TLS ports, per-client limits, interop with the `openssl s_client` command line, and the
//! `allow_tls12` and `tls_names` settings of a real hsmd.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep};
use ferrohsm_proto::{Frame, FrameReader, KeyRef, KeyType, Request, Status};
use ferrohsm_test_support::certs::{Valid, client_cert, dev_ca};
use ferrohsm_test_support::connect::{connect_when_freed, refusal};
use ferrohsm_test_support::daemon::{EXIT_DEADLINE, hsmctl_command, output_within};
use ferrohsm_test_support::peer::{Ending, ending};
use ferrohsm_test_support::status::assert_exit;
use ferrohsm_test_support::{Data, TestServer, ci, status, wait};
use ferrohsm_tls::pki;

/// How long anything this file waits for may take on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn connect(p: &Profile, t: Transport) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(p, Some(t))
}

/// The error of a connection that must be refused (before or in the FerroHSM handshake).
fn refused(r: Result<BlockingClient, ClientError>) -> ClientError {
    match r {
        Err(e) => e,
        Ok(c) => panic!("connection was accepted: {c:?}"),
    }
}

/// `p` presenting another certificate (or none).
fn with_cert(p: &Profile, ident: Option<(PathBuf, PathBuf)>) -> Profile {
    let mut p = p.clone();
    p.tls.as_mut().unwrap().identity = ident;
    p
}

/// `hsmctl --profile P --transport T ping` with alice's profile file edited by `edit`.
fn hsmctl_ping_with(srv: &TestServer, transport: &str, edit: impl Fn(String) -> String) -> String {
    let path = srv.dir.path().join("clients/edited.toml");
    let text = std::fs::read_to_string(srv.profile_path("alice")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).unwrap();
    let mut c = hsmctl_command(&path);
    c.args(["--transport", transport, "ping"]);
    let o = output_within(&mut c, EXIT_DEADLINE);
    assert_exit(&o, 3);
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    let ca = dev_ca(srv.dir.path());
    let tls_msg = |p: &Profile| refused(connect(p, Transport::Tls)).to_string();

    // No client certificate at all.
    let e = tls_msg(&with_cert(&alice, None));
    assert!(
        e.contains("server rejected our certificate (CertificateRequired)"),
        "{e}"
    );

    // A certificate for alice from another CA.
    let evil = pki::new_ca("Evil CA").unwrap();
    let forged = client_cert(tmp.path(), &evil, &["alice"], Valid::Now, "evil");
    let e = tls_msg(&with_cert(&alice, Some(forged.clone())));
    assert!(
        e.contains("server rejected our certificate (UnknownCA)"),
        "{e}"
    );

    // An expired certificate from the right CA.
    let expired = client_cert(tmp.path(), &ca, &["alice"], Valid::Expired, "expired");
    let e = tls_msg(&with_cert(&alice, Some(expired)));
    assert!(
        e.contains("server rejected our certificate (CertificateExpired)"),
        "{e}"
    );

    // A valid certificate for a name that is not a configured client.
    let mallory = client_cert(tmp.path(), &ca, &["mallory"], Valid::Now, "mallory");
    let (s, m) = refusal(connect(&with_cert(&alice, Some(mallory)), Transport::Tls));
    assert_eq!(s, Status::AuthFailed, "{m}");
    assert!(m.contains("names no configured client"), "{m}");

    // Alice's profile presenting bob's certificate is never served as alice.
    let bobs = bob.tls.as_ref().unwrap().identity.clone();
    let (s, m) = refusal(connect(&with_cert(&alice, bobs), Transport::Tls));
    assert_eq!(s, Status::AuthFailed, "{m}");

    // PSK: unknown identity, wrong key, and alice's name with bob's PSK all fail; the first
    // two fail identically, so the server reveals no identities.
    let psk = |f: &dyn Fn(&mut ferrohsm_client::profile::PskProfile)| {
        let mut p = alice.clone();
        f(p.tls_psk.as_mut().unwrap());
        refused(connect(&p, Transport::TlsPsk))
    };
    let unknown = psk(&|p| p.identity = "mallory".into());
    let wrong_key = tmp.path().join("wrong.psk");
    std::fs::write(&wrong_key, "00".repeat(32)).unwrap();
    let wrong = psk(&|p| p.key_file = wrong_key.clone());
    let (unknown, wrong) = match (unknown, wrong) {
        (ClientError::Connection(u), ClientError::Connection(w)) => (u, w),
        other => panic!("expected two refused TLS-PSK handshakes, got {other:?}"),
    };
    assert!(
        unknown.contains("PSK rejected: unknown identity or wrong key"),
        "{unknown}"
    );
    assert_eq!(unknown, wrong);
    // Bob's identity and key, in alice's profile: the PSK proves bob, and the hello for
    // alice is refused.
    let bob_psk = bob.tls_psk.clone().unwrap();
    let mut crossed = alice.clone();
    crossed.tls_psk = Some(bob_psk);
    let (s, m) = refusal(connect(&crossed, Transport::TlsPsk));
    assert_eq!(s, Status::AuthFailed, "{m}");

    // Every refusal is exit code 3 in hsmctl: a foreign certificate, and a wrong PSK.
    let err = hsmctl_ping_with(&srv, "tls", |t| {
        t.replace("cert = \"alice.pem\"", &format!("cert = {:?}", forged.0))
            .replace("key = \"alice.tls.key\"", &format!("key = {:?}", forged.1))
    });
    assert!(err.contains("server rejected our certificate"), "{err}");
    let err = hsmctl_ping_with(&srv, "tls-psk", |t| {
        t.replace(
            "key_file = \"alice.psk\"",
            &format!("key_file = {wrong_key:?}"),
        )
    });
    assert!(err.contains("PSK rejected"), "{err}");

    // Through all that, both clients are served over both modes, still isolated.
    for t in [Transport::Tls, Transport::TlsPsk] {
        let a = connect(&alice, t).unwrap();
        a.ping().unwrap();
        let e = a.block_on(a.client().info(&KeyRef::Id(secret.id)));
        assert_eq!(status(e), Status::KeyNotFound);
        let b = connect(&bob, t).unwrap();
        let sig = b.sign(&KeyRef::Id(secret.id), b"m").unwrap();
        b.verify(&KeyRef::Id(secret.id), b"m", &sig).unwrap();
    }
}

#[test]
fn plain_bytes_and_stalled_handshakes_on_tls_ports_are_dropped() {
    let srv = TestServer::start_with(&["alice"], |c| {
        c.handshake_timeout = Duration::from_millis(400)
    });
    let b = srv.bound();
    for addr in [b.tls.unwrap(), b.tls_psk.unwrap()] {
        // Plain protocol bytes instead of a ClientHello, in one write: the server may drop
        // the connection on the first bytes, and a second write would then meet the reset.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let garbage = [
            &Request::Ping.to_frame(1).encode()[..],
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        .concat();
        s.write_all(&garbage).unwrap();
        assert_eq!(
            ending(&mut s, DEADLINE),
            Ending::Closed,
            "{addr}: garbage not dropped"
        );
        // Connected, then silent: dropped after the handshake timeout, not before.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        assert_eq!(
            ending(&mut s, DEADLINE),
            Ending::Closed,
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
        assert_eq!(
            ending(&mut s, DEADLINE),
            Ending::Closed,
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
    let (s, m) = refusal(connect(&alice, Transport::Tcp));
    assert_eq!(s, Status::Busy, "{m}");
    assert!(m.contains("alice"), "{m}");
    connect(&srv.profile("bob"), Transport::Tls)
        .unwrap()
        .ping()
        .unwrap();
    a1.ping().unwrap();
    drop(a2);
    // The slot comes back once the server has seen the close; until then, `busy`.
    connect_when_freed(&alice, Transport::Tcp, DEADLINE)
        .ping()
        .unwrap();
}

/// How an `openssl s_client` run against a FerroHSM port went.
#[derive(Debug)]
enum SClient {
    /// A frame came back for the hello it sent.
    Served(Frame),
    /// It exited, with nothing back: its status and everything it printed on stderr.
    Ended(ExitStatus, String),
    /// Still connected and quiet when the time was up (killed); what it printed on stderr.
    Silent(#[allow(dead_code, reason = "shown through Debug when a test fails")] String),
}

/// Runs `openssl s_client ARGS -quiet`, sends a hello for alice, and reports what happened.
fn s_client(args: &[&str]) -> SClient {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hello = ClientHandshake::new("alice").start().encode();
    // s_client may already have exited (a refused handshake); that shows below.
    let _ = child.stdin.as_mut().unwrap().write_all(&hello);
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut frames = FrameReader::new(1 << 20);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(Some(f)) = frames.next_frame() {
                let _ = tx.send(Some(f));
                return;
            }
            match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => frames.buffer().extend_from_slice(&buf[..n]),
            }
        }
    });
    let got = rx.recv_timeout(DEADLINE);
    let exited = match got {
        // stdout closed: s_client is exiting on its own.
        Ok(None) => Some(wait::eventually(
            "s_client, which closed its stdout, to exit",
            EXIT_DEADLINE,
            || child.try_wait().unwrap(),
        )),
        _ => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    let err = stderr.join().unwrap();
    match (got, exited) {
        (Ok(Some(f)), _) => SClient::Served(f),
        (Ok(None), Some(s)) => SClient::Ended(s, err),
        _ => SClient::Silent(err),
    }
}

/// Asserts that `s_client ARGS` got a welcome for alice's hello.
fn assert_welcomed(args: &[&str], what: &str) {
    match s_client(args) {
        SClient::Served(f) => {
            let mut hs = ClientHandshake::new("alice");
            hs.start();
            let step = hs.on_frame(&f, |_| Err("no challenge expected".into()));
            assert!(
                matches!(step, Ok(ClientStep::Done(_))),
                "{what}: no welcome: {step:?}"
            );
        }
        other => panic!("{what}: not served: {other:?}"),
    }
}

/// Asserts that `s_client ARGS` ended, unserved, with a TLS alert `alert` on stderr.
fn assert_alert(args: &[&str], alert: &str, what: &str) {
    match s_client(args) {
        SClient::Ended(status, err) => {
            // s_client exits 1 when the handshake fails (not 0, not a signal).
            assert_eq!(status.code(), Some(1), "{what}: s_client {status}: {err}");
            assert!(err.contains(alert), "{what}: expected `{alert}`: {err}");
        }
        other => panic!("{what}: expected the handshake refused with `{alert}`, got {other:?}"),
    }
}

/// `s_client` arguments for certificate TLS to `addr` (with alice's certificate if `cert`).
fn cert_args(dir: &Path, addr: &str, cert: bool) -> Vec<String> {
    let f = |p: &str| dir.join(p).display().to_string();
    let mut a: Vec<String> = [
        "-connect",
        addr,
        "-CAfile",
        &f("pki/ca.pem"),
        "-servername",
        "localhost",
        "-verify_return_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if cert {
        a.extend([
            "-cert".into(),
            f("clients/alice.pem"),
            "-key".into(),
            f("clients/alice.tls.key"),
        ]);
    }
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn openssl_s_client_interoperates_with_both_tls_modes() {
    if !ci::tool("openssl", "openssl") {
        return;
    }
    let srv = TestServer::start(&["alice"]);
    let b = srv.bound();
    let (tls, psk) = (b.tls.unwrap().to_string(), b.tls_psk.unwrap().to_string());
    let dir = srv.dir.path();

    assert_welcomed(
        &strs(&cert_args(dir, &tls, true)),
        "s_client with alice's certificate",
    );
    assert_alert(
        &strs(&cert_args(dir, &tls, false)),
        "alert certificate required",
        "s_client without a certificate",
    );

    let hex = std::fs::read_to_string(dir.join("clients/alice.psk"))
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
    assert_welcomed(&strs(&psk_args(&hex)), "s_client with alice's PSK");
    // A wrong key: the server refuses the handshake at once, not by going quiet.
    assert_alert(
        &strs(&psk_args(&"11".repeat(32))),
        "alert decrypt error",
        "s_client with a wrong PSK",
    );
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
        let (s, m) = refusal(connect(&bob, t));
        assert_eq!(s, Status::Busy, "{t:?}: {m}");
        assert!(m.contains("too many connections"), "{t:?}: {m}");
        held.ping().unwrap();
    }
}

#[test]
fn a_certificate_naming_two_clients_is_refused() {
    let srv = TestServer::start(&["alice", "bob"]);
    let tmp = tempfile::tempdir().unwrap();
    let ca = dev_ca(srv.dir.path());
    // CN alice, SANs alice and bob: the same CA, but the credential would mean two clients.
    let both = client_cert(tmp.path(), &ca, &["alice", "bob"], Valid::Now, "both");
    for who in ["alice", "bob"] {
        let p = with_cert(&srv.profile(who), Some(both.clone()));
        let (s, m) = refusal(connect(&p, Transport::Tls));
        assert_eq!(s, Status::AuthFailed, "{m}");
        assert!(m.contains("more than one configured client"), "{m}");
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

#[test]
fn allow_tls12_decides_whether_a_tls12_client_is_served() {
    if !ci::tool("openssl", "openssl") {
        return;
    }
    let data = Data::init("alice");
    let tls12 = |addr: &str| {
        let mut a = cert_args(&data.dir, addr, true);
        a.push("-tls1_2".into());
        a
    };
    let tls13 = |addr: &str| {
        let mut a = cert_args(&data.dir, addr, true);
        a.push("-tls1_3".into());
        a
    };

    // hsmd init writes allow_tls12 = false: a TLS 1.2-only client is refused in the
    // handshake, while TLS 1.3 is served.
    let text = std::fs::read_to_string(data.config()).unwrap();
    assert!(text.contains("allow_tls12 = false"), "{text}");
    let d = data.start();
    let addr = data.ports().tls;
    assert_alert(
        &strs(&tls12(&addr)),
        "alert protocol version",
        "TLS 1.2 with allow_tls12 = false",
    );
    assert_welcomed(&strs(&tls13(&addr)), "TLS 1.3 with allow_tls12 = false");
    assert_eq!(d.terminate().code(), Some(0));

    // allow_tls12 = true: the same TLS 1.2 client, with the same certificate, is served as
    // alice, and TLS 1.3 still is.
    data.set("tls", "allow_tls12", "true");
    let _d = data.start();
    let addr = data.ports().tls;
    assert_welcomed(&strs(&tls12(&addr)), "TLS 1.2 with allow_tls12 = true");
    assert_welcomed(&strs(&tls13(&addr)), "TLS 1.3 with allow_tls12 = true");
    // A TLS 1.2 client without a certificate is still refused.
    let mut no_cert = cert_args(&data.dir, &addr, false);
    no_cert.push("-tls1_2".into());
    assert_alert(
        &strs(&no_cert),
        "alert certificate required",
        "TLS 1.2 without a certificate",
    );
}

#[test]
fn tls_names_decide_which_certificates_mean_a_client() {
    let data = Data::init("alice,bob");
    let ca = dev_ca(&data.dir);
    let tmp = data.tmp();
    let svc = client_cert(tmp, &ca, &["alice-svc"], Valid::Now, "svc");
    let san = client_cert(tmp, &ca, &["other", "svc.example"], Valid::Now, "san");
    let two = client_cert(tmp, &ca, &["alice-svc", "bob"], Valid::Now, "two");
    let alice = data.load_profile("alice");
    let own = alice.tls.as_ref().unwrap().identity.clone();

    // hsmd init: alice's certificate names "alice", and nothing names "alice-svc".
    let d = data.start();
    let a = connect(&alice, Transport::Tls).unwrap();
    let key = a
        .generate(&"alices".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let (s, m) = refusal(connect(
        &with_cert(&alice, Some(svc.clone())),
        Transport::Tls,
    ));
    assert_eq!(s, Status::AuthFailed, "{m}");
    assert!(m.contains("names no configured client"), "{m}");
    drop(a);
    assert_eq!(d.terminate().code(), Some(0));

    // tls_names = ["alice-svc", "svc.example"]: those names (CN or SAN) mean alice, and the
    // name "alice" no longer does.
    data.set(
        "clients.alice",
        "tls_names",
        "[\"alice-svc\", \"svc.example\"]",
    );
    let _d = data.start();
    let alice = data.load_profile("alice");
    for (cert, what) in [(&svc, "CN alice-svc"), (&san, "SAN svc.example")] {
        let c = connect(&with_cert(&alice, Some(cert.clone())), Transport::Tls)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Served as alice: her key is there.
        let info = c.block_on(c.client().info(&KeyRef::Id(key.id))).unwrap();
        assert_eq!(info.label.to_string(), "alices", "{what}");
    }
    let (s, m) = refusal(connect(&with_cert(&alice, own), Transport::Tls));
    assert_eq!(s, Status::AuthFailed, "{m}");
    assert!(m.contains("names no configured client"), "{m}");
    let (s, m) = refusal(connect(&with_cert(&alice, Some(two)), Transport::Tls));
    assert_eq!(s, Status::AuthFailed, "{m}");
    assert!(m.contains("more than one configured client"), "{m}");
    // Bob is not affected.
    connect(&data.load_profile("bob"), Transport::Tls)
        .unwrap()
        .ping()
        .unwrap();
    drop(_d);

    // A name claimed by two clients: hsmd refuses to start, and says which.
    data.set("clients.bob", "tls_names", "[\"bob\", \"alice-svc\"]");
    let config = data.config();
    let (code, err) = data.fails(&["--config", &config], &[]);
    // A configuration hsmd cannot serve: exit 1 (README: "exits 1 ... with one line naming
    // the cause"; exit 3 is hsmctl's code for a connection it could not make).
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("hsmd: {config}: tls name \"alice-svc\" is claimed by clients alice and bob\n")
    );
}
