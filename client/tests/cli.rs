//! The command-line contract, end to end: the real `hsmd` binary (init, serve, SIGTERM) and the
//! real `hsmctl` binary, with OpenSSL checking what they produce.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use ferrohsm_test_support::daemon::{
    EXIT_DEADLINE, ed25519_verifies, hsmctl_command, openssl, output_within,
};
use ferrohsm_test_support::status::{assert_exit, assert_failed};
use ferrohsm_test_support::{Daemon, Data, ci};

/// `hsmctl` as one client over one transport.
struct Ctl<'a> {
    data: &'a Data,
    who: &'static str,
    transport: &'static str,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.data
            .ctl_over(self.who, self.transport, args, self.data.tmp())
    }

    /// Runs and expects success; returns trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        ferrohsm_test_support::ok(&self.run(args))
            .trim_end()
            .to_string()
    }

    /// Runs and expects the server's refusal `status` (exit 1), with nothing on stdout.
    fn refused(&self, args: &[&str], status: &str) {
        let o = self.run(args);
        assert_failed(&o, status);
        assert!(
            o.stdout.is_empty(),
            "hsmctl {args:?}: stdout after a failure"
        );
    }

    /// Runs and expects exit code `code` (2 usage, 3 connection); returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        assert_exit(&o, code);
        assert!(
            o.stdout.is_empty(),
            "hsmctl {args:?}: stdout after a failure"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// The first line of a command's stderr.
fn first_line(err: &str) -> &str {
    err.lines().next().unwrap_or_default()
}

/// Signs DIR/msg with `key` into DIR/KEY.sig and writes its public key to DIR/KEY.pem.
fn sign_and_export_pem(ctl: &Ctl, key: &str, dir: &Path) -> (String, String) {
    let path = |ext: &str| {
        dir.join(format!("{key}.{ext}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let msg = dir.join("msg").to_str().unwrap().to_string();
    ctl.ok(&["sign", key, "--in", &msg, "--out", &path("sig")]);
    std::fs::write(path("pem"), ctl.ok(&["pubkey", key, "--pem"]) + "\n").unwrap();
    (path("sig"), path("pem"))
}

/// A data directory for alice and bob, and hsmd serving it.
fn setup() -> (Data, Daemon) {
    let data = Data::init("alice,bob");
    let d = data.start();
    (data, d)
}

fn ctl<'a>(data: &'a Data, who: &'static str, transport: &'static str) -> Ctl<'a> {
    Ctl {
        data,
        who,
        transport,
    }
}

#[test]
fn every_foundation_command_over_tcp() {
    every_foundation_command_over("tcp");
}

#[test]
fn every_foundation_command_over_tls() {
    every_foundation_command_over("tls");
}

#[test]
fn every_foundation_command_over_tls_psk() {
    every_foundation_command_over("tls-psk");
}

#[test]
fn every_foundation_command_over_shm() {
    every_foundation_command_over("shm");
}

/// The whole command-line contract through the real binaries, over one transport.
fn every_foundation_command_over(transport: &'static str) {
    let (data, daemon) = setup();
    let (alice, bob) = (ctl(&data, "alice", transport), ctl(&data, "bob", transport));
    let t = |name: &str| data.path(name);
    let p = |name: &str| t(name).to_str().unwrap().to_string();
    std::fs::write(t("msg"), b"the quick brown fox\n").unwrap();

    assert_eq!(alice.ok(&["ping"]), "ok");
    let r = alice.ok(&["random", "16"]);
    assert!(
        r.len() == 32
            && r.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{r}"
    );
    alice.refused(&["random", "0"], "invalid_argument");
    let d = alice.ok(&["digest", "--alg", "sha256", "--in", &p("msg")]);
    assert_eq!(d.len(), 64);
    assert_eq!(
        alice
            .ok(&["digest", "--alg", "sha512", "--in", &p("msg")])
            .len(),
        128
    );

    // keygen prints "<id> <label>"
    assert_eq!(
        alice.ok(&["keygen", "--type", "ed25519", "--label", "ed"]),
        "1 ed"
    );
    assert_eq!(
        alice.ok(&["keygen", "--type", "p256", "--label", "ec", "--exportable"]),
        "2 ec"
    );
    alice.ok(&["keygen", "--type", "x25519", "--label", "xa"]);
    alice.ok(&["keygen", "--type", "chacha20poly1305", "--label", "cc"]);
    alice.ok(&["keygen", "--type", "aes256gcm", "--label", "ag"]);
    alice.ok(&["keygen", "--type", "hmac-sha256", "--label", "hm"]);
    alice.refused(
        &["keygen", "--type", "ed25519", "--label", "ed"],
        "label_in_use",
    );
    // --session keys die with hsmctl's connection
    alice.ok(&[
        "keygen",
        "--type",
        "hmac-sha256",
        "--label",
        "gone",
        "--session",
    ]);
    alice.refused(&["info", "gone"], "key_not_found");

    // info / list JSON fields
    let info: serde_json::Value =
        serde_json::from_str(&alice.ok(&["--json", "info", "ec"])).unwrap();
    assert_eq!(info["id"], 2);
    assert_eq!(info["label"], "ec");
    assert_eq!(info["type"], "p256");
    assert_eq!(info["usage"], serde_json::json!(["sign", "verify"]));
    assert_eq!(info["exportable"], true);
    assert_eq!(info["lifetime"], "persistent");
    let created = info["created"].as_str().unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
    let list: serde_json::Value = serde_json::from_str(&alice.ok(&["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 6);
    assert_eq!(alice.ok(&["info", "2"]), alice.ok(&["info", "ec"]));

    // sign / verify, both curves
    for key in ["ed", "ec"] {
        let (sig, _) = sign_and_export_pem(&alice, key, data.tmp());
        assert_eq!(
            alice.ok(&["verify", key, "--in", &p("msg"), "--sig", &sig]),
            "ok"
        );
        let pem = alice.ok(&["pubkey", key, "--pem"]);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
        std::fs::write(t(&format!("{key}.pem")), format!("{pem}\n")).unwrap();
    }
    assert_eq!(std::fs::read(t("ed.sig")).unwrap().len(), 64);
    assert_eq!(alice.ok(&["pubkey", "ed"]).len(), 64);
    std::fs::write(t("other"), b"another message").unwrap();
    alice.refused(
        &["verify", "ed", "--in", &p("other"), "--sig", &p("ed.sig")],
        "bad_signature",
    );

    // AEAD; a wrong AAD fails and writes no output file
    for key in ["cc", "ag"] {
        alice.ok(&[
            "encrypt",
            key,
            "--in",
            &p("msg"),
            "--out",
            &p("ct"),
            "--aad",
            "ctx",
        ]);
        alice.ok(&[
            "decrypt",
            key,
            "--in",
            &p("ct"),
            "--out",
            &p("pt"),
            "--aad",
            "ctx",
        ]);
        assert_eq!(
            std::fs::read(t("pt")).unwrap(),
            std::fs::read(t("msg")).unwrap()
        );
        alice.refused(
            &[
                "decrypt",
                key,
                "--in",
                &p("ct"),
                "--out",
                &p("nope"),
                "--aad",
                "xtc",
            ],
            "decrypt_failed",
        );
        assert!(
            !t("nope").exists(),
            "a failed command writes no output file"
        );
    }

    // MAC
    alice.ok(&["mac", "hm", "--in", &p("msg"), "--out", &p("tag")]);
    assert_eq!(
        alice.ok(&["mac-verify", "hm", "--in", &p("msg"), "--mac", &p("tag")]),
        "ok"
    );
    alice.refused(
        &["mac-verify", "hm", "--in", &p("other"), "--mac", &p("tag")],
        "bad_mac",
    );

    // export only exportable keys; raw bytes
    alice.ok(&["export", "ec", "--out", &p("ec.raw")]);
    assert_eq!(std::fs::read(t("ec.raw")).unwrap().len(), 32);
    alice.refused(&["export", "ed", "--out", &p("ed.raw")], "not_exportable");
    assert!(!t("ed.raw").exists());

    // isolation through the CLI: bob (who has no keys yet) sees none of alice's keys, by id
    // or label
    for key in ["ed", "1", "ec", "2"] {
        bob.refused(&["info", key], "key_not_found");
        bob.refused(
            &["sign", key, "--in", &p("msg"), "--out", &p("bsig")],
            "key_not_found",
        );
        bob.refused(&["export", key, "--out", &p("bexp")], "key_not_found");
        bob.refused(&["delete", key], "key_not_found");
    }
    assert!(!t("bsig").exists() && !t("bexp").exists());

    // derive: alice and bob agree on an HMAC key via X25519 + HKDF
    bob.ok(&["keygen", "--type", "x25519", "--label", "xb"]);
    std::fs::write(t("xa.pem"), alice.ok(&["pubkey", "xa", "--pem"]) + "\n").unwrap();
    std::fs::write(t("xb.pem"), bob.ok(&["pubkey", "xb", "--pem"]) + "\n").unwrap();
    alice.ok(&[
        "derive",
        "xa",
        "--peer",
        &p("xb.pem"),
        "--type",
        "hmac-sha256",
        "--label",
        "shared",
    ]);
    bob.ok(&[
        "derive",
        "xb",
        "--peer",
        &p("xa.pem"),
        "--type",
        "hmac-sha256",
        "--label",
        "shared",
    ]);
    alice.ok(&["mac", "shared", "--in", &p("msg"), "--out", &p("atag")]);
    assert_eq!(
        bob.ok(&[
            "mac-verify",
            "shared",
            "--in",
            &p("msg"),
            "--mac",
            &p("atag")
        ]),
        "ok"
    );
    // An Ed25519 key where the X25519 peer belongs: a usage error that names the file.
    let err = alice.fails(
        &[
            "derive",
            "xa",
            "--peer",
            &p("ed.pem"),
            "--type",
            "hmac-sha256",
            "--label",
            "z",
        ],
        2,
    );
    assert_eq!(
        err,
        format!(
            "hsmctl: {}: expected an X25519 public key in SubjectPublicKeyInfo PEM\n",
            p("ed.pem")
        )
    );

    // usage enforcement
    alice.ok(&[
        "keygen", "--type", "ed25519", "--label", "vo", "--usage", "verify",
    ]);
    alice.refused(
        &["sign", "vo", "--in", &p("msg"), "--out", &p("vsig")],
        "usage_not_permitted",
    );

    // delete
    assert_eq!(alice.ok(&["delete", "hm"]), "ok");
    alice.refused(&["info", "hm"], "key_not_found");

    // usage errors exit 2: bad flags, bad key type, bad label, missing input file
    // (clap's errors: the line naming the problem, then a hint; hsmctl's own: one line)
    let err = alice.fails(&["keygen", "--type", "rsa", "--label", "r"], 2);
    assert!(
        first_line(&err).starts_with(
            "error: invalid value 'rsa' for '--type <KEY_TYPE>': unknown key type \"rsa\"; \
             expected one of ed25519,"
        ),
        "{err}"
    );
    let err = alice.fails(&["keygen", "--type", "ed25519", "--label", "9bad"], 2);
    assert_eq!(
        first_line(&err),
        "error: invalid value '9bad' for '--label <LABEL>': invalid label \"9bad\": \
         expected a letter then up to 63 of [A-Za-z0-9._-]",
        "{err}"
    );
    let err = alice.fails(
        &["sign", "ed", "--in", &p("does-not-exist"), "--out", &p("x")],
        2,
    );
    assert_eq!(
        err,
        format!(
            "hsmctl: cannot read {}: No such file or directory (os error 2)\n",
            p("does-not-exist")
        )
    );
    assert!(!t("x").exists(), "a failed command writes no output file");
    let err = alice.fails(&["frobnicate"], 2);
    assert_eq!(
        first_line(&err),
        "error: unrecognized subcommand 'frobnicate'",
        "{err}"
    );

    // a wrong auth key is an authentication failure: exit 3 (TLS variants: see tests/tls.rs)
    let forged = data.dir.join("clients/forged.toml");
    let text = std::fs::read_to_string(data.profile("alice"))
        .unwrap()
        .replace("alice.key", "bob.key");
    std::fs::write(&forged, text).unwrap();
    let mut c = hsmctl_command(&forged);
    c.args(["--transport", "tcp", "ping"]);
    let o = output_within(&mut c, EXIT_DEADLINE);
    assert_exit(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("hsmctl: auth_failed (10): "), "{err}");

    // graceful stop: SIGTERM -> exit 0; then connecting fails with exit 3
    assert_eq!(daemon.terminate().code(), Some(0));
    let err = alice.fails(&["ping"], 3);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn openssl_verifies_signatures_and_reads_keys() {
    if !ci::tool("openssl", "openssl") {
        return;
    }
    let (data, _daemon) = setup();
    let alice = ctl(&data, "alice", "tcp");
    let t = |name: &str| data.path(name);
    let p = |name: &str| t(name).to_str().unwrap().to_string();
    std::fs::write(t("msg"), b"interop with the real openssl\n").unwrap();
    alice.ok(&["keygen", "--type", "ed25519", "--label", "ed"]);
    alice.ok(&["keygen", "--type", "p256", "--label", "ec"]);
    for key in ["ed", "ec"] {
        sign_and_export_pem(&alice, key, data.tmp());
    }
    let dir = data.tmp();
    ed25519_verifies(&p("ed.pem"), &p("msg"), &p("ed.sig"), dir);
    let ec = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            &p("ec.pem"),
            "-signature",
            &p("ec.sig"),
            &p("msg"),
        ],
        dir,
    );
    assert_eq!(String::from_utf8_lossy(&ec.stdout), "Verified OK\n");
    // A signature over other data fails in OpenSSL too, the way OpenSSL reports a bad
    // signature (exit 1, "Verification failure"), not by some other error.
    std::fs::write(t("other"), b"different").unwrap();
    let mut c = Command::new("openssl");
    c.args([
        "dgst",
        "-sha256",
        "-verify",
        &p("ec.pem"),
        "-signature",
        &p("ec.sig"),
        &p("other"),
    ])
    .current_dir(dir);
    let bad = output_within(&mut c, EXIT_DEADLINE);
    assert_exit(&bad, 1);
    assert_eq!(
        String::from_utf8_lossy(&bad.stdout),
        "Verification failure\n"
    );
    // OpenSSL-made signatures verify in hsmctl? The reverse direction: an Ed25519 key made by
    // OpenSSL is not importable yet, so check that OpenSSL reads our client auth key instead.
    let key = openssl(
        &[
            "pkey",
            "-in",
            data.dir.join("clients/alice.key").to_str().unwrap(),
            "-noout",
            "-text",
        ],
        dir,
    );
    let text = String::from_utf8_lossy(&key.stdout);
    assert!(text.starts_with("ED25519 Private-Key:"), "{text}");
    // The X25519 public key PEM is read by OpenSSL as X25519.
    alice.ok(&["keygen", "--type", "x25519", "--label", "xa"]);
    std::fs::write(t("xa.pem"), alice.ok(&["pubkey", "xa", "--pem"]) + "\n").unwrap();
    let x = openssl(
        &["pkey", "-pubin", "-in", &p("xa.pem"), "-noout", "-text"],
        dir,
    );
    let text = String::from_utf8_lossy(&x.stdout);
    assert!(text.starts_with("X25519 Public-Key:"), "{text}");
}
