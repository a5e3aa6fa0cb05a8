//! The module driven by the real tools from Debian's packages: pkcs11-tool (opensc), p11tool
//! (gnutls-bin), OpenSSL through the libp11 engine (libengine-pkcs11-openssl), ssh-keygen
//! (openssh-client). `.ci/run` installs them; a missing one fails under CI and is a one-line
//! skip elsewhere (`ci::tool`).
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use ferrohsm_test_support::ci;
use ferrohsm_test_support::daemon::{ed25519_verifies, openssl};
use support::{PIN, Token, fails, module, ok, ok_both};

/// `pkcs11-tool --module M ARGS` with the module's configuration.
fn p11(t: &Token, args: &[&str]) -> std::process::Command {
    let mut c = t.command("pkcs11-tool");
    c.arg("--module").arg(module()).args(args);
    c
}

fn sha256(t: &Token, input: &Path, out: &Path) {
    openssl(
        &["dgst", "-sha256", "-binary", "-out", utf8(out), utf8(input)],
        t.tmp(),
    );
}

/// A scratch path as a tool's argument.
fn utf8(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn pem(t: &Token, who: &str, key: &str) -> PathBuf {
    let path = t.path(&format!("{who}-{key}.pem"));
    let pem = t.hsmctl_ok(who, &["pubkey", key, "--pem"]);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    std::fs::write(&path, pem).expect("pem");
    path
}

#[test]
fn pkcs11_tool_lists_generates_signs_and_tests() {
    if !ci::tool("pkcs11-tool", "opensc") || !ci::tool("openssl", "openssl") {
        return;
    }
    let mut t = Token::start();
    let listed = ok(&mut p11(&t, &["-L"]));
    assert!(listed.contains("token label        : alice"), "{listed}");
    assert!(listed.contains("login required"), "{listed}");
    assert!(listed.contains("token label        : bob"), "{listed}");

    // Key generation needs the login on alice's token: refused as such, and no key made.
    let denied = fails(&mut p11(
        &t,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "p1",
        ],
    ));
    assert!(
        denied.contains("C_GenerateKeyPair failed: rv = CKR_USER_NOT_LOGGED_IN (0x101)"),
        "{denied}"
    );
    assert_eq!(t.hsmctl_ok("alice", &["list"]), "", "no key was made");
    for (kt, label) in [("EC:prime256v1", "p1"), ("EC:edwards25519", "e1")] {
        let out = ok(&mut p11(
            &t,
            &[
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                kt,
                "--label",
                label,
            ],
        ));
        assert!(out.contains(&format!("label:      {label}")), "{out}");
    }
    // hsmctl sees them, as persistent keys, and so does a restarted hsmd.
    t.restart();
    let list = t.hsmctl_ok("alice", &["list"]);
    // Every column but the last, the creation time.
    assert_eq!(
        list.lines()
            .map(|l| l.rsplit_once('\t').map_or(l, |(rest, _)| rest))
            .collect::<Vec<_>>(),
        [
            "1\tp1\tp256\tsign,verify\tnon-exportable\tpersistent",
            "2\te1\ted25519\tsign,verify\tnon-exportable\tpersistent",
        ],
        "{list}"
    );
    // Public objects are visible without a login; private ones only after it.
    let public = ok(&mut p11(&t, &["-O"]));
    assert!(
        public.contains("Public Key Object; EC") && !public.contains("Private Key"),
        "{public}"
    );
    let all = ok(&mut p11(&t, &["-O", "--login", "--pin", PIN]));
    assert!(all.contains("Private Key Object; EC_EDWARDS"), "{all}");
    assert!(all.contains("never extractable, local"), "{all}");

    // ECDSA over a digest this side computed, in OpenSSL's DER, verified by OpenSSL.
    let msg = t.path("msg");
    std::fs::write(&msg, b"signed through PKCS#11\n").expect("msg");
    let digest = t.path("msg.sha256");
    sha256(&t, &msg, &digest);
    let sig = t.path("sig.der");
    ok(p11(
        &t,
        &[
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            "0000000000000001",
            "--signature-format",
            "openssl",
        ],
    )
    .arg("--input-file")
    .arg(&digest)
    .arg("--output-file")
    .arg(&sig));
    let p1 = pem(&t, "alice", "p1");
    openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            utf8(&p1),
            "-signature",
            utf8(&sig),
            utf8(&msg),
        ],
        t.tmp(),
    );
    // EdDSA over the message, verified by OpenSSL.
    let sig = t.path("sig.ed");
    ok(p11(
        &t,
        &[
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--mechanism",
            "EDDSA",
            "--id",
            "0000000000000002",
        ],
    )
    .arg("--input-file")
    .arg(&msg)
    .arg("--output-file")
    .arg(&sig));
    assert_eq!(std::fs::metadata(&sig).expect("sig").len(), 64);
    let e1 = pem(&t, "alice", "e1");
    ed25519_verifies(utf8(&e1), utf8(&msg), utf8(&sig), t.tmp());

    // OpenSC's own self-test.
    let test = ok(&mut p11(&t, &["--test", "--login", "--pin", PIN]));
    assert!(test.contains("No errors"), "{test}");

    // A wrong PIN is refused as such.
    let err = fails(&mut p11(&t, &["--login", "--pin", "0000", "-O"]));
    assert!(
        err.contains("C_Login failed: rv = CKR_PIN_INCORRECT (0xa0)"),
        "{err}"
    );

    // bob's token shows none of alice's keys: it has no object at all.
    let bob = ok(&mut p11(&t, &["--slot", "1", "-O"]));
    assert!(!bob.contains("Object;"), "{bob}");
}

#[test]
fn p11tool_lists_and_test_signs() {
    if !ci::tool("p11tool", "gnutls-bin") || !ci::tool("pkcs11-tool", "opensc") {
        return;
    }
    let t = Token::start();
    for (kt, label) in [("EC:prime256v1", "p1"), ("EC:edwards25519", "e1")] {
        ok(&mut p11(
            &t,
            &[
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                kt,
                "--label",
                label,
            ],
        ));
    }
    let p11tool = |args: &[&str]| {
        let mut c = t.command("p11tool");
        c.arg("--provider")
            .arg(module())
            .env("GNUTLS_PIN", PIN)
            .args(args);
        c
    };
    let listed = ok(&mut p11tool(&[
        "--login",
        "--list-all",
        "pkcs11:token=alice",
    ]));
    for want in [
        "object=p1;type=private",
        "object=p1;type=public",
        "object=e1;type=private",
        "Public key (EC/ECDSA-SECP256R1)",
        "Public key (EdDSA (Ed25519))",
    ] {
        assert!(listed.contains(want), "{want} missing from {listed}");
    }
    let p256 = ok_both(&mut p11tool(&[
        "--login",
        "--test-sign",
        "pkcs11:token=alice;object=p1",
    ]));
    assert!(
        p256.contains("Verifying against public key in the token... ok"),
        "{p256}"
    );
    let ed = ok_both(&mut p11tool(&[
        "--login",
        "--test-sign",
        "--hash",
        "SHA512",
        "pkcs11:token=alice;object=e1",
    ]));
    assert!(
        ed.contains("Verifying against public key in the token... ok"),
        "{ed}"
    );
}

/// The libp11 engine beside Debian's OpenSSL 3.
fn engine() -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| Path::new(d).join("engines-3/pkcs11.so"))
    .find(|p| p.exists());
    let have = ci::need(
        found.is_some(),
        "the libp11 engine is not installed (Debian package libengine-pkcs11-openssl; \
         .ci/run installs it)",
    );
    found.filter(|_| have)
}

#[test]
fn openssl_signs_and_makes_a_certificate_through_the_libp11_engine() {
    if !ci::tool("openssl", "openssl") || !ci::tool("pkcs11-tool", "opensc") {
        return;
    }
    let Some(engine) = engine() else { return };
    let t = Token::start();
    // bob's token (no PIN) with one P-256 key: libp11 0.4.12 stops enumerating a token's
    // private keys at the first key type it does not know (Ed25519), see the README.
    ok(&mut p11(
        &t,
        &[
            "--slot",
            "1",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "web",
        ],
    ));
    let conf = t.path("openssl.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = init\n[init]\nengines = engines\n[engines]\npkcs11 = p11\n\
             [p11]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\ninit = 0\n\
             [req]\ndistinguished_name = dn\n[dn]\n",
            engine.display(),
            module()
        ),
    )
    .expect("openssl.cnf");
    let engine_openssl = |args: &[&str]| {
        let mut c = t.command("openssl");
        c.env("OPENSSL_CONF", &conf).args(args);
        c
    };
    let key = "pkcs11:token=bob;object=web;type=private";
    let msg = t.path("msg");
    std::fs::write(&msg, b"engine").expect("msg");
    let digest = t.path("msg.sha256");
    sha256(&t, &msg, &digest);
    let sig = t.path("sig");
    ok(engine_openssl(&[
        "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-sign", "-inkey", key,
    ])
    .arg("-in")
    .arg(&digest)
    .arg("-out")
    .arg(&sig));
    let web = pem(&t, "bob", "web");
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            utf8(&web),
            "-in",
            utf8(&digest),
            "-sigfile",
            utf8(&sig),
        ],
        t.tmp(),
    );
    let cert = t.path("cert.pem");
    ok(engine_openssl(&[
        "req",
        "-new",
        "-x509",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-key",
        key,
        "-subj",
        "/CN=ferrohsm-test",
        "-days",
        "30",
        "-sha256",
        "-out",
    ])
    .arg(&cert));
    openssl(&["verify", "-CAfile", utf8(&cert), utf8(&cert)], t.tmp());
    // The certificate carries the token's key.
    let in_cert = openssl(&["x509", "-noout", "-pubkey", "-in", utf8(&cert)], t.tmp()).stdout;
    let in_cert = String::from_utf8(in_cert).expect("PEM");
    assert_eq!(in_cert, std::fs::read_to_string(&web).expect("pem"));
}

#[test]
fn ssh_keygen_prints_the_p256_key_as_hsmctl_has_it() {
    if !ci::tool("ssh-keygen", "openssh-client") || !ci::tool("pkcs11-tool", "opensc") {
        return;
    }
    let t = Token::start();
    ok(&mut p11(
        &t,
        &[
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "ssh",
        ],
    ));
    // OpenSSH never logs in: the public objects are enough.
    let listed = ok(t.command("ssh-keygen").arg("-D").arg(module()));
    let line = listed
        .lines()
        .find(|l| l.starts_with("ecdsa-sha2-nistp256 "))
        .unwrap_or_else(|| panic!("no P-256 key in {listed}"));
    let pem = pem(&t, "alice", "ssh");
    let converted = ok(t
        .command("ssh-keygen")
        .args(["-i", "-m", "PKCS8", "-f"])
        .arg(&pem));
    let blob = |l: &str| l.split_whitespace().nth(1).map(str::to_owned);
    assert_eq!(
        blob(line),
        blob(converted.trim()),
        "{listed} vs {converted}"
    );
}

#[test]
fn every_transport_carries_the_module() {
    if !ci::tool("pkcs11-tool", "opensc") || !ci::tool("openssl", "openssl") {
        return;
    }
    let t = Token::start();
    let msg = t.path("msg");
    std::fs::write(&msg, b"over every transport").expect("msg");
    let digest = t.path("msg.sha256");
    sha256(&t, &msg, &digest);
    for (i, transport) in ferrohsm_test_support::peer::TRANSPORT_NAMES
        .into_iter()
        .enumerate()
    {
        let config = t.config_over("bob", transport);
        let tool = |args: &[&str]| {
            let mut c = p11(&t, args);
            c.env("FERROHSM_PKCS11_CONFIG", &config);
            c
        };
        let label = format!("k{i}");
        ok(&mut tool(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            &label,
        ]));
        let sig = t.path(&format!("sig-{transport}"));
        ok(tool(&[
            "--sign",
            "--mechanism",
            "ECDSA",
            "--signature-format",
            "openssl",
            "--id",
        ])
        .arg(format!("{:016x}", i + 1))
        .arg("--input-file")
        .arg(&digest)
        .arg("--output-file")
        .arg(&sig));
        let key = pem(&t, "bob", &label);
        openssl(
            &[
                "dgst",
                "-sha256",
                "-verify",
                utf8(&key),
                "-signature",
                utf8(&sig),
                utf8(&msg),
            ],
            t.tmp(),
        );
    }
}
