//! The `ferrohsm-tls` API on its own, over real loopback sockets: the development PKI
//! written and loaded back, the mutual-certificate handshake and the names it reports, every
//! kind of bad certificate refused on the side that must refuse it, `allow_tls12`, the
//! TLS 1.3 PSK server and client, and bad files refused with errors that name them.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrohsm_tls::TlsError;
use ferrohsm_tls::client;
use ferrohsm_tls::pki::{self, Issued, Role};
use ferrohsm_tls::psk::{self, Psk, PskAcceptor};
use ferrohsm_tls::server::{self, CertAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a handshake may take on a busy machine; only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

/// A development PKI in a temp dir: a CA, a server certificate for localhost, and alice's
/// client certificate, written as files the way `hsmd init` writes them.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::new_ca("Test CA").unwrap();
        let p = Pki { dir, ca };
        p.write("ca.pem", &p.ca.cert_pem);
        let server = p.issue(Role::Server, &["localhost"], pki::validity(30));
        p.write_issued("server", &server);
        let alice = p.issue(Role::Client, &["alice"], pki::validity(30));
        p.write_issued("alice", &alice);
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes NAME.pem and NAME.key.
    fn write_issued(&self, name: &str, c: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &c.cert_pem),
            self.write(&format!("{name}.key"), &c.key_pem),
        )
    }

    fn issue(
        &self,
        role: Role,
        names: &[&str],
        valid: (time::OffsetDateTime, time::OffsetDateTime),
    ) -> Issued {
        pki::issue(
            &self.ca.cert_pem,
            &self.ca.key_pem,
            role,
            names,
            valid.0,
            valid.1,
        )
        .unwrap()
    }

    fn acceptor(&self, allow_tls12: bool) -> CertAcceptor {
        CertAcceptor::new(
            &self.path("ca.pem"),
            &self.path("server.pem"),
            &self.path("server.key"),
            allow_tls12,
        )
        .unwrap()
    }

    /// A client config trusting this CA and presenting `NAME.pem`/`NAME.key`.
    fn client(&self, name: Option<&str>) -> Arc<rustls::ClientConfig> {
        let files = name.map(|n| {
            (
                self.path(&format!("{n}.pem")),
                self.path(&format!("{n}.key")),
            )
        });
        client::config(
            &self.path("ca.pem"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
    }
}

/// A loopback listener and a connected client socket, with the server's socket.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// The message of a handshake that must have failed as a handshake (not a file or a
/// configuration error).
fn handshake_error<T: std::fmt::Debug>(r: Result<T, TlsError>) -> String {
    match r {
        Err(TlsError::Handshake(m)) => m,
        other => panic!("expected a failed handshake, got {other:?}"),
    }
}

/// Runs a certificate handshake: the server's result, and the client's, which for TLS 1.3
/// includes one exchange (a rejected client certificate shows on the client's first read).
async fn cert_handshake(
    acceptor: &CertAcceptor,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> (Result<Vec<String>, TlsError>, Result<(), String>) {
    let (c, s) = pair().await;
    let server = async {
        let (mut stream, names) = acceptor.accept(s, DEADLINE).await?;
        let mut b = [0u8; 4];
        stream
            .read_exact(&mut b)
            .await
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        assert_eq!(&b, b"ping");
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        Ok(names)
    };
    let client = async {
        let mut stream = client::connect(config, server_name, c)
            .await
            .map_err(|e| e.to_string())?;
        let r: Result<(), std::io::Error> = async {
            stream.write_all(b"ping").await?;
            stream.flush().await?;
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).await?;
            assert_eq!(&b, b"pong");
            Ok(())
        }
        .await;
        r.map_err(|e| client::describe(&e))
    };
    tokio::time::timeout(DEADLINE, async { tokio::join!(server, client) })
        .await
        .expect("the handshake hung")
}

#[test]
fn the_development_pki_writes_files_that_load_back() {
    let p = Pki::new();
    assert_eq!(server::load_certs(&p.path("server.pem")).unwrap().len(), 1);
    server::load_key(&p.path("server.key")).unwrap();
    server::load_roots(&p.path("ca.pem")).unwrap();
    // A client certificate's names: the subject CN, then the DNS SANs.
    let der = server::load_certs(&p.path("alice.pem")).unwrap();
    assert_eq!(server::cert_names(der[0].as_ref()), ["alice", "alice"]);
    let two = p.issue(Role::Client, &["alice", "alice-svc"], pki::validity(1));
    let (cert, _) = p.write_issued("two", &two);
    let der = server::load_certs(&cert).unwrap();
    assert_eq!(
        server::cert_names(der[0].as_ref()),
        ["alice", "alice", "alice-svc"]
    );
    assert!(server::cert_names(b"not a certificate").is_empty());
    // The key never shows in Debug.
    let shown = format!("{:?}", p.ca);
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    // PSKs: 256 random bits as lowercase hex, which the PSK parser reads back.
    let (a, b) = (pki::new_psk_hex().unwrap(), pki::new_psk_hex().unwrap());
    assert_eq!(a.len(), 64);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(*a, *b);
    assert_eq!(psk::parse_psk_hex(&a).unwrap().len(), 32);
}

#[tokio::test]
async fn the_mutual_certificate_handshake_reports_the_client_names() {
    let p = Pki::new();
    let (server, client) =
        cert_handshake(&p.acceptor(false), p.client(Some("alice")), "localhost").await;
    assert_eq!(client, Ok(()));
    assert_eq!(server.unwrap(), ["alice", "alice"]);
}

#[tokio::test]
async fn client_certificates_the_server_must_refuse() {
    let p = Pki::new();
    let acceptor = p.acceptor(false);

    // From another CA, with the right name.
    let evil = pki::new_ca("Evil CA").unwrap();
    let forged = pki::issue(
        &evil.cert_pem,
        &evil.key_pem,
        Role::Client,
        &["alice"],
        pki::validity(30).0,
        pki::validity(30).1,
    )
    .unwrap();
    p.write_issued("forged", &forged);
    let (server, client) = cert_handshake(&acceptor, p.client(Some("forged")), "localhost").await;
    assert_eq!(
        handshake_error(server),
        "invalid peer certificate: UnknownIssuer"
    );
    assert_eq!(
        client,
        Err("server rejected our certificate (UnknownCA)".into())
    );

    // None at all.
    let (server, client) = cert_handshake(&acceptor, p.client(None), "localhost").await;
    assert_eq!(handshake_error(server), "peer sent no certificates");
    assert_eq!(
        client,
        Err("server rejected our certificate (CertificateRequired)".into())
    );

    // Expired, from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let old = p.issue(
        Role::Client,
        &["alice"],
        (
            now - Duration::from_secs(10 * 86_400),
            now - Duration::from_secs(86_400),
        ),
    );
    p.write_issued("old", &old);
    let (server, client) = cert_handshake(&acceptor, p.client(Some("old")), "localhost").await;
    let e = handshake_error(server);
    // (the times in the message are the clock's: only its shape is fixed)
    assert!(
        e.starts_with("invalid peer certificate: certificate expired: verification time ")
            && e.contains(" (UNIX), but certificate is not valid after ")
            && e.ends_with(" seconds ago)"),
        "{e}"
    );
    assert_eq!(
        client,
        Err("server rejected our certificate (CertificateExpired)".into())
    );

    // A server certificate used as a client certificate (serverAuth only).
    let (server, client) = cert_handshake(&acceptor, p.client(Some("server")), "localhost").await;
    assert_eq!(
        handshake_error(server),
        "invalid peer certificate: certificate does not allow extended key usage for client \
         authentication, allows server authentication"
    );
    // (client::describe does not count UnsupportedCertificate as a certificate rejection.)
    assert_eq!(
        client,
        Err("server ended the TLS handshake (UnsupportedCertificate)".into())
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_it_does_not_trust() {
    let p = Pki::new();
    let acceptor = p.acceptor(false);
    // The client trusts another CA.
    let other = pki::new_ca("Other CA").unwrap();
    let ca = p.write("other-ca.pem", &other.cert_pem);
    let config = client::config(&ca, Some((&p.path("alice.pem"), &p.path("alice.key")))).unwrap();
    let (server, client) = cert_handshake(&acceptor, config, "localhost").await;
    let c = client.unwrap_err();
    assert!(
        c.contains("server certificate not trusted: UnknownIssuer"),
        "{c}"
    );
    // The client ends the handshake with an alert that says why.
    assert_eq!(handshake_error(server), "received fatal alert: UnknownCA");
    // The right CA, the wrong name.
    let (server, client) = cert_handshake(&acceptor, p.client(Some("alice")), "hsm.example").await;
    let c = client.unwrap_err();
    assert!(
        c.contains("server certificate not trusted: NotValidForName"),
        "{c}"
    );
    assert_eq!(
        handshake_error(server),
        "received fatal alert: BadCertificate"
    );
    // Not a server name at all.
    let (c, _s) = pair().await;
    let e = client::connect(p.client(Some("alice")), "", c)
        .await
        .unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("invalid server name"), "{e}");
}

/// A client config that speaks only TLS 1.2, with alice's certificate.
fn tls12_only(p: &Pki) -> Arc<rustls::ClientConfig> {
    let c = rustls::ClientConfig::builder_with_provider(ferrohsm_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(server::load_roots(&p.path("ca.pem")).unwrap())
        .with_client_auth_cert(
            server::load_certs(&p.path("alice.pem")).unwrap(),
            server::load_key(&p.path("alice.key")).unwrap(),
        )
        .unwrap();
    Arc::new(c)
}

#[tokio::test]
async fn allow_tls12_decides_whether_a_tls12_client_is_accepted() {
    let p = Pki::new();
    // Off: refused on both sides for the protocol version.
    let (server, client) = cert_handshake(&p.acceptor(false), tls12_only(&p), "localhost").await;
    assert_eq!(
        handshake_error(server),
        "peer is incompatible: Tls12NotOfferedOrEnabled"
    );
    let c = client.unwrap_err();
    assert!(c.contains("ProtocolVersion"), "{c}");
    // On: the same client is served, and the names come through.
    let (server, client) = cert_handshake(&p.acceptor(true), tls12_only(&p), "localhost").await;
    assert_eq!(client, Ok(()));
    assert_eq!(server.unwrap(), ["alice", "alice"]);
    // On, a TLS 1.3 client still gets TLS 1.3.
    let (c, s) = pair().await;
    let acceptor = p.acceptor(true);
    let (server, client) = tokio::join!(
        acceptor.accept(s, DEADLINE),
        client::connect(p.client(Some("alice")), "localhost", c)
    );
    let stream = client.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The server side agrees: accepted, at TLS 1.3, with alice's names.
    let (stream, names) = server.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(names, ["alice", "alice"]);
}

#[tokio::test]
async fn a_silent_peer_ends_in_the_handshake_timeout() {
    let p = Pki::new();
    let (_c, s) = pair().await;
    let e = p
        .acceptor(false)
        .accept(s, Duration::from_millis(200))
        .await;
    assert_eq!(handshake_error(e), "handshake not finished within 200ms");
    let a = PskAcceptor::new(|_| None).unwrap();
    let (_c, s) = pair().await;
    let e = a.accept(s, Duration::from_millis(200)).await;
    assert_eq!(handshake_error(e), "handshake not finished within 200ms");
}

fn key(byte: u8) -> Psk {
    Psk::new(vec![byte; 32])
}

/// Runs a PSK handshake with an acceptor that knows alice (key 0x11), and one exchange.
async fn psk_handshake(
    identity: &str,
    k: Psk,
) -> (Result<Vec<u8>, TlsError>, Result<(), TlsError>) {
    let acceptor = PskAcceptor::new(|id| (id == b"alice").then(|| key(0x11))).unwrap();
    let ctx = psk::client_context(identity, k).unwrap();
    let (c, s) = pair().await;
    let server = async {
        let (mut stream, id) = acceptor.accept(s, DEADLINE).await?;
        let mut b = [0u8; 4];
        stream
            .read_exact(&mut b)
            .await
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        Ok(id)
    };
    let client = async {
        let mut stream = psk::connect(&ctx, c).await?;
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut b = [0u8; 4];
        stream
            .read_exact(&mut b)
            .await
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        assert_eq!(&b, b"pong");
        Ok(())
    };
    tokio::time::timeout(DEADLINE, async { tokio::join!(server, client) })
        .await
        .expect("the PSK handshake hung")
}

#[tokio::test]
async fn the_psk_server_names_the_identity_and_refuses_wrong_keys_alike() {
    let (server, client) = psk_handshake("alice", key(0x11)).await;
    client.unwrap();
    assert_eq!(server.unwrap(), b"alice");

    // A wrong key, and an unknown identity: refused on both sides, and the client cannot
    // tell the two apart.
    // The server fails both the same way: OpenSSL's "binder does not verify" (an unknown
    // identity is checked against a random decoy key).
    let (server, wrong) = psk_handshake("alice", key(0x22)).await;
    let s = handshake_error(server);
    assert!(
        s.starts_with("PSK handshake failed: error:") && s.contains(":binder does not verify:"),
        "{s}"
    );
    let (server, unknown) = psk_handshake("mallory", key(0x11)).await;
    assert_eq!(handshake_error(server), s);
    let (wrong, unknown) = (
        wrong.unwrap_err().to_string(),
        unknown.unwrap_err().to_string(),
    );
    assert_eq!(wrong, "PSK rejected: unknown identity or wrong key");
    assert_eq!(wrong, unknown);

    // Identities OpenSSL cannot carry are refused before any connection.
    for bad in ["", "nul\0byte", &"x".repeat(128)] {
        let e = psk::client_context(bad, key(1)).unwrap_err();
        assert!(matches!(e, TlsError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("invalid PSK identity"), "{e}");
    }
    psk::client_context(&"x".repeat(127), key(1)).unwrap();
}

#[test]
fn bad_files_are_refused_with_errors_that_name_them() {
    let p = Pki::new();
    let file_error = |e: TlsError, path: &Path, reason: &str| {
        let shown = e.to_string();
        assert!(matches!(e, TlsError::File { .. }), "{shown}");
        assert!(
            shown.starts_with(&format!("{}: ", path.display())) && shown.contains(reason),
            "{shown}: expected {reason:?}"
        );
    };
    let missing = p.path("missing.pem");
    file_error(
        server::load_certs(&missing).unwrap_err(),
        &missing,
        "No such file",
    );
    let text = p.write("text.pem", "hello, not PEM\n");
    file_error(
        server::load_certs(&text).unwrap_err(),
        &text,
        "no certificate in the file",
    );
    let broken = p.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    file_error(
        server::load_certs(&broken).unwrap_err(),
        &broken,
        "not a PEM certificate file",
    );
    // A certificate where a key belongs, and a key where a certificate belongs.
    file_error(
        server::load_key(&p.path("alice.pem")).unwrap_err(),
        &p.path("alice.pem"),
        "expected a PEM private key",
    );
    file_error(
        server::load_certs(&p.path("alice.key")).unwrap_err(),
        &p.path("alice.key"),
        "no certificate in the file",
    );
    // A server key that is not the certificate's.
    let e = CertAcceptor::new(
        &p.path("ca.pem"),
        &p.path("server.pem"),
        &p.path("alice.key"),
        false,
    )
    .unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("server certificate and key"), "{e}");
    let e = client::config(
        &p.path("ca.pem"),
        Some((&p.path("alice.pem"), &p.path("server.key"))),
    )
    .unwrap_err();
    assert!(e.to_string().contains("client certificate and key"), "{e}");

    // PSK files: hex, at least 16 bytes, surrounding whitespace ignored.
    assert_eq!(
        psk::parse_psk_hex(&format!("  {}\n", "ab".repeat(16)))
            .unwrap()
            .as_slice(),
        [0xab; 16]
    );
    for bad in [
        "ab".repeat(15),
        "abc".repeat(11),
        "zz".repeat(16),
        String::new(),
    ] {
        assert!(psk::parse_psk_hex(&bad).is_none(), "{bad:?} parsed");
    }
    let secretish = "0123456789abcdefxyz";
    let short = p.write("short.psk", secretish);
    let e = psk::load_psk(&short).unwrap_err();
    let shown = e.to_string();
    file_error(e, &short, "expected at least 32 hex digits");
    assert!(
        !shown.contains(secretish),
        "the PSK file's content leaked: {shown}"
    );
    let missing = p.path("missing.psk");
    file_error(
        psk::load_psk(&missing).unwrap_err(),
        &missing,
        "No such file",
    );
}
