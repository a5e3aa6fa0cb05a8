//! The command-line contract, end to end: the real `hsmd` binary (init, serve, SIGTERM) and the
//! real `hsmctl` binary, with OpenSSL checking what they produce.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support/daemon.rs"]
mod daemon;
mod support;

use daemon::Daemon;

fn hsmctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hsmctl"))
}

fn hsmd_bin() -> PathBuf {
    let p = hsmctl_bin().with_file_name("hsmd");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

struct Ctl {
    profile: PathBuf,
    transport: &'static str,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(hsmctl_bin())
            .arg("--profile")
            .arg(&self.profile)
            .args(["--transport", self.transport])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "hsmctl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim_end().to_string()
    }

    /// Runs and expects exit code `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "hsmctl {args:?}: {err}");
        assert!(o.stdout.is_empty(), "nothing on stdout after a failure");
        err
    }
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

fn setup(transport: &'static str) -> (tempfile::TempDir, Daemon, Ctl, Ctl) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hsm");
    let (d, ports, lines) =
        Daemon::init_and_start(&hsmd_bin(), tmp.path(), &dir, "alice,bob", &|_| {}, None);
    assert!(
        lines.last().unwrap().starts_with(&ports.ready_line()),
        "{lines:?}"
    );
    let alice = Ctl {
        profile: dir.join("clients/alice.toml"),
        transport,
    };
    let bob = Ctl {
        profile: dir.join("clients/bob.toml"),
        transport,
    };
    (tmp, d, alice, bob)
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
    let (tmp, daemon, alice, bob) = setup(transport);
    let t = |name: &str| tmp.path().join(name);
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
    alice.fails(&["random", "0"], 1);
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
    let err = alice.fails(&["keygen", "--type", "ed25519", "--label", "ed"], 1);
    assert!(err.starts_with("hsmctl: label_in_use (21): "), "{err}");
    // --session keys die with hsmctl's connection
    alice.ok(&[
        "keygen",
        "--type",
        "hmac-sha256",
        "--label",
        "gone",
        "--session",
    ]);
    alice.fails(&["info", "gone"], 1);

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
        let (sig, _) = sign_and_export_pem(&alice, key, tmp.path());
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
    let err = alice.fails(
        &["verify", "ed", "--in", &p("other"), "--sig", &p("ed.sig")],
        1,
    );
    assert!(err.starts_with("hsmctl: bad_signature (30): "), "{err}");

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
        let err = alice.fails(
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
            1,
        );
        assert!(err.starts_with("hsmctl: decrypt_failed (31): "), "{err}");
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
    alice.fails(
        &["mac-verify", "hm", "--in", &p("other"), "--mac", &p("tag")],
        1,
    );

    // export only exportable keys; raw bytes
    alice.ok(&["export", "ec", "--out", &p("ec.raw")]);
    assert_eq!(std::fs::read(t("ec.raw")).unwrap().len(), 32);
    let err = alice.fails(&["export", "ed", "--out", &p("ed.raw")], 1);
    assert!(err.starts_with("hsmctl: not_exportable (23): "), "{err}");
    assert!(!t("ed.raw").exists());

    // isolation through the CLI: bob (who has no keys yet) sees none of alice's keys, by id
    // or label
    for key in ["ed", "1", "ec", "2"] {
        let err = bob.fails(&["info", key], 1);
        assert!(err.starts_with("hsmctl: key_not_found (20): "), "{err}");
        bob.fails(&["sign", key, "--in", &p("msg"), "--out", &p("bsig")], 1);
        bob.fails(&["export", key, "--out", &p("bexp")], 1);
        bob.fails(&["delete", key], 1);
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
    alice.fails(
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

    // usage enforcement
    alice.ok(&[
        "keygen", "--type", "ed25519", "--label", "vo", "--usage", "verify",
    ]);
    let err = alice.fails(&["sign", "vo", "--in", &p("msg"), "--out", &p("vsig")], 1);
    assert!(
        err.starts_with("hsmctl: usage_not_permitted (22): "),
        "{err}"
    );

    // delete
    assert_eq!(alice.ok(&["delete", "hm"]), "ok");
    alice.fails(&["info", "hm"], 1);

    // usage errors exit 2: bad flags, bad key type, bad label, missing input file
    alice.fails(&["keygen", "--type", "rsa", "--label", "r"], 2);
    alice.fails(&["keygen", "--type", "ed25519", "--label", "9bad"], 2);
    alice.fails(
        &["sign", "ed", "--in", &p("does-not-exist"), "--out", &p("x")],
        2,
    );
    alice.fails(&["frobnicate"], 2);

    // a wrong auth key is an authentication failure: exit 3 (TLS variants: see tests/tls.rs)
    let forged = tmp.path().join("hsm/clients/forged.toml");
    let text = std::fs::read_to_string(&alice.profile)
        .unwrap()
        .replace("alice.key", "bob.key");
    std::fs::write(&forged, text).unwrap();
    let err = Ctl {
        profile: forged,
        transport: "tcp",
    }
    .fails(&["ping"], 3);
    assert!(err.starts_with("hsmctl: auth_failed (10): "), "{err}");

    // graceful stop: SIGTERM -> exit 0; then connecting fails with exit 3
    assert_eq!(daemon.terminate().code(), Some(0));
    let err = alice.fails(&["ping"], 3);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn openssl_verifies_signatures_and_reads_keys() {
    let Some(ossl) = support::openssl() else {
        return;
    };
    let (tmp, _daemon, alice, _) = setup("tcp");
    let t = |name: &str| tmp.path().join(name);
    let p = |name: &str| t(name).to_str().unwrap().to_string();
    std::fs::write(t("msg"), b"interop with the real openssl\n").unwrap();
    alice.ok(&["keygen", "--type", "ed25519", "--label", "ed"]);
    alice.ok(&["keygen", "--type", "p256", "--label", "ec"]);
    for key in ["ed", "ec"] {
        sign_and_export_pem(&alice, key, tmp.path());
    }
    let run = |args: &[&str]| Command::new(ossl).args(args).output().unwrap();
    let ed = run(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &p("ed.pem"),
        "-rawin",
        "-in",
        &p("msg"),
        "-sigfile",
        &p("ed.sig"),
    ]);
    assert!(
        ed.status.success(),
        "openssl rejected the Ed25519 signature: {ed:?}"
    );
    let ec = run(&[
        "dgst",
        "-sha256",
        "-verify",
        &p("ec.pem"),
        "-signature",
        &p("ec.sig"),
        &p("msg"),
    ]);
    assert!(
        ec.status.success(),
        "openssl rejected the P-256 signature: {ec:?}"
    );
    // A signature over other data must fail in OpenSSL too (the check can fail).
    std::fs::write(t("other"), b"different").unwrap();
    let bad = run(&[
        "dgst",
        "-sha256",
        "-verify",
        &p("ec.pem"),
        "-signature",
        &p("ec.sig"),
        &p("other"),
    ]);
    assert!(!bad.status.success());
    // OpenSSL-made signatures verify in hsmctl? The reverse direction: an Ed25519 key made by
    // OpenSSL is not importable yet, so check that OpenSSL reads our client auth key instead.
    let key = run(&[
        "pkey",
        "-in",
        tmp.path().join("hsm/clients/alice.key").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(
        key.status.success() && String::from_utf8_lossy(&key.stdout).contains("ED25519"),
        "{key:?}"
    );
    // The X25519 public key PEM is read by OpenSSL as X25519.
    alice.ok(&["keygen", "--type", "x25519", "--label", "xa"]);
    std::fs::write(t("xa.pem"), alice.ok(&["pubkey", "xa", "--pem"]) + "\n").unwrap();
    let x = run(&["pkey", "-pubin", "-in", &p("xa.pem"), "-noout", "-text"]);
    assert!(
        x.status.success() && String::from_utf8_lossy(&x.stdout).contains("X25519"),
        "{x:?}"
    );
}
