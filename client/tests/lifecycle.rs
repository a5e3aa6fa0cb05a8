//! The key lifecycle, end to end with the real `hsmd` and `hsmctl` binaries (and OpenSSL where
//! it can check the result): import, wrap and unwrap across two servers, grants, versions.
//! Counters, the audit chain and backups are in `lifecycle_store.rs`; the lifecycle over every
//! transport and across restarts in `lifecycle_across.rs`.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_test_support::daemon::{ed25519_verifies, openssl};
use ferrohsm_test_support::peer::TRANSPORT_NAMES;
use ferrohsm_test_support::status::{assert_failed, failed_with_message};
use ferrohsm_test_support::{Data, ci, failed, ok};

/// Whether `openssl` is here (a failure under CI, a one-line skip elsewhere).
fn have_openssl() -> bool {
    ci::tool("openssl", "openssl")
}

/// Adds `trusted_wrap_keys = [WRAP_KEYS]` to `client` in hsmd.toml.
fn trust(d: &Data, client: &str, wrap_keys: &str) {
    d.client_setting(client, &format!("trusted_wrap_keys = [{wrap_keys}]"));
}

#[test]
fn import_openssl_keys_and_sign_verifiably() {
    if !have_openssl() {
        return;
    }
    let d = Data::init("alice");
    let _hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    let a = |args: &[&str]| d.ctl_over("alice", "tcp", args, cwd);
    std::fs::write(cwd.join("m"), b"imported keys sign").unwrap();
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    for (alg, out) in [
        (&["-algorithm", "ed25519"][..], "ed.pem"),
        (&p256[..], "p.pem"),
        (&["-algorithm", "x25519"][..], "x.pem"),
    ] {
        openssl(&[&["genpkey"][..], alg, &["-out", out]].concat(), cwd);
    }
    for (t, f, l) in [
        ("ed25519", "ed.pem", "ied"),
        ("p256", "p.pem", "ip"),
        ("x25519", "x.pem", "ix"),
    ] {
        ok(&a(&["import", "--type", t, "--in", f, "--label", l]));
        let info: serde_json::Value =
            serde_json::from_str(&ok(&a(&["--json", "info", l]))).unwrap();
        assert_eq!(info["origin"], "imported");
        assert_eq!(info["exportable"], false);
        // The public key hsmd holds is the one OpenSSL derives from the file.
        let ours = ok(&a(&["pubkey", l, "--pem"]));
        let theirs = openssl(&["pkey", "-in", f, "-pubout"], cwd);
        assert_eq!(ours.trim(), String::from_utf8_lossy(&theirs.stdout).trim());
        std::fs::write(cwd.join(format!("{l}.pub")), theirs.stdout).unwrap();
    }
    ok(&a(&["sign", "ied", "--in", "m", "--out", "s1"]));
    ed25519_verifies("ied.pub", "m", "s1", cwd);
    ok(&a(&["sign", "ip", "--in", "m", "--out", "s2"]));
    let verify = [
        "dgst",
        "-sha256",
        "-verify",
        "ip.pub",
        "-signature",
        "s2",
        "m",
    ];
    openssl(&verify, cwd);
    // Bad input: the wrong type for the file, a symmetric key of the wrong length, a SEC1 key.
    let import = |t: &str, f: &str| a(&["import", "--type", t, "--in", f, "--label", "bad"]);
    assert_eq!(failed(&import("ed25519", "p.pem")), "invalid_argument");
    std::fs::write(cwd.join("short.key"), [7u8; 31]).unwrap();
    assert_eq!(
        failed(&import("aes256gcm", "short.key")),
        "invalid_argument"
    );
    let sec1 = [
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "sec1.pem",
    ];
    openssl(&sec1, cwd);
    let o = import("p256", "sec1.pem");
    assert_eq!(o.status.code(), Some(2), "a local usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("pkcs8"));
    let listed = ok(&a(&["list"]));
    assert!(!listed.contains("bad"), "a failed import writes nothing");
}

#[test]
fn wrap_on_one_server_unwrap_on_another() {
    if !have_openssl() {
        return;
    }
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    // The backup wrap key, made outside and imported (non-exportable) into both servers.
    std::fs::write(cwd.join("wrap.key"), [0x5au8; 32]).unwrap();
    std::fs::write(cwd.join("m"), b"wrapped keys sign the same").unwrap();
    let one = Data::init("alice,bob");
    let two = Data::init("alice");
    trust(&one, "alice", "\"backup\"");
    // "loose" (made exportable below) is trusted on two: trust never covers an exportable key.
    trust(&two, "alice", "\"backup\", \"loose\"");
    let (h1, h2) = (one.start(), two.start());
    for d in [&one, &two] {
        ok(&d.ctl_over(
            "alice",
            "tcp",
            &[
                "import",
                "--type",
                "aes256gcm",
                "--in",
                "wrap.key",
                "--label",
                "backup",
                "--usage",
                "wrap,unwrap",
            ],
            cwd,
        ));
    }
    let a = |args: &[&str]| one.ctl_over("alice", "tcp", args, cwd);
    ok(&a(&["keygen", "--type", "ed25519", "--label", "sk"]));
    ok(&a(&[
        "keygen",
        "--type",
        "aes256gcm",
        "--label",
        "plain",
        "--usage",
        "wrap,unwrap",
    ]));
    ok(&a(&[
        "keygen",
        "--type",
        "aes256gcm",
        "--label",
        "open",
        "--usage",
        "wrap,unwrap",
        "--exportable",
    ]));
    ok(&a(&[
        "keygen",
        "--type",
        "ed25519",
        "--label",
        "skx",
        "--exportable",
    ]));
    // A non-exportable key never leaves under an untrusted or an exportable wrap key.
    for with in ["plain", "open"] {
        let o = a(&["wrap", "sk", "--with", with, "--out", "no.blob"]);
        assert_eq!(failed(&o), "not_exportable");
        assert!(
            !cwd.join("no.blob").exists(),
            "a failed command writes no file"
        );
    }
    // An exportable key may go under any wrap key.
    ok(&a(&["wrap", "skx", "--with", "open", "--out", "skx.blob"]));
    // A wrap key is wrap-only: a signing key cannot wrap, and bob cannot use alice's.
    let o = a(&["wrap", "skx", "--with", "sk", "--out", "no.blob"]);
    assert_eq!(failed(&o), "wrong_key_type");
    ok(&a(&["wrap", "sk", "--with", "backup", "--out", "sk.blob"]));
    let blob = std::fs::read(cwd.join("sk.blob")).unwrap();
    assert!(blob.starts_with(b"FHSMWRAP"), "self-describing");
    let pem = ok(&a(&["pubkey", "sk", "--pem"]));
    std::fs::write(cwd.join("sk.pub"), pem).unwrap();

    let b = |args: &[&str]| two.ctl_over("alice", "shm", args, cwd);
    // Tampered: a flipped ciphertext byte, and a record edited to exportable.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    std::fs::write(cwd.join("bad1.blob"), &bad).unwrap();
    // The record edited in place, byte for byte (same length: only the flag changes).
    let (from, to) = (&b"\"exportable\":false"[..], &b"\"exportable\":true "[..]);
    let at = blob
        .windows(from.len())
        .position(|w| w == from)
        .expect("the record names exportable");
    let mut edited = blob.clone();
    edited[at..at + from.len()].copy_from_slice(to);
    std::fs::write(cwd.join("bad2.blob"), &edited).unwrap();
    // Both fail to authenticate: the record is the ciphertext's associated data, so it is
    // checked before it is read.
    for f in ["bad1.blob", "bad2.blob"] {
        let o = b(&["unwrap", "--with", "backup", "--in", f, "--label", "x"]);
        assert_failed(&o, "decrypt_failed");
    }
    let created = ok(&b(&[
        "unwrap", "--with", "backup", "--in", "sk.blob", "--label", "sk2",
    ]));
    assert!(created.ends_with(" sk2\n"), "{created}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&b(&["--json", "info", "sk2"]))).unwrap();
    assert_eq!(info["origin"], "unwrapped");
    assert_eq!(info["exportable"], false, "never widened");
    assert_eq!(info["usage"], serde_json::json!(["sign", "verify"]));
    ok(&b(&["sign", "sk2", "--in", "m", "--out", "sig"]));
    ed25519_verifies("sk.pub", "m", "sig", cwd);
    // Under another wrap key the blob does not open at all.
    ok(&b(&[
        "keygen",
        "--type",
        "aes256gcm",
        "--label",
        "other",
        "--usage",
        "wrap,unwrap",
    ]));
    let o = b(&[
        "unwrap", "--with", "other", "--in", "sk.blob", "--label", "sk3",
    ]);
    assert_failed(&o, "decrypt_failed");
    // Unwrapping keeps the blob's rule: the same wrap key material under a label server two
    // does not trust, or made exportable, opens the blob, and the non-exportable key in it
    // is refused.
    for (l, extra, why) in [
        (
            "untrusted",
            &[][..],
            "not listed in this client's trusted_wrap_keys",
        ),
        ("loose", &["--exportable"][..], "could be exported"),
    ] {
        let import = [
            "import",
            "--type",
            "aes256gcm",
            "--in",
            "wrap.key",
            "--label",
            l,
            "--usage",
            "wrap,unwrap",
        ];
        ok(&b(&[&import[..], extra].concat()));
        let o = b(&["unwrap", "--with", l, "--in", "sk.blob", "--label", "sk3"]);
        let (status, message) = failed_with_message(&o);
        assert_eq!(status, "not_exportable", "{message}");
        assert!(message.contains(why), "{l}: {message}");
    }
    let listed = ok(&b(&["list"]));
    assert!(!listed.contains("sk3"), "a refused unwrap makes nothing");
    drop((h1, h2));
}

#[test]
fn grants_share_exactly_what_was_granted() {
    let d = Data::init("alice,bob,carol");
    let hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"granted").unwrap();
    let a = |args: &[&str]| d.ctl_over("alice", "tcp", args, cwd);
    ok(&a(&["keygen", "--type", "ed25519", "--label", "k"]));
    ok(&a(&["keygen", "--type", "ed25519", "--label", "other"]));
    ok(&a(&[
        "keygen",
        "--type",
        "aes256gcm",
        "--label",
        "w",
        "--usage",
        "wrap,unwrap",
    ]));
    // Ops must fit the key and be grantable; the grantee must exist; never to oneself.
    assert_eq!(
        failed(&a(&["grant", "k", "--to", "bob", "--ops", "encrypt"])),
        "usage_not_permitted"
    );
    assert_eq!(
        failed(&a(&["grant", "w", "--to", "bob", "--ops", "wrap"])),
        "invalid_argument"
    );
    assert_eq!(
        failed(&a(&["grant", "k", "--to", "mallory", "--ops", "sign"])),
        "invalid_argument"
    );
    assert_eq!(
        failed(&a(&["grant", "k", "--to", "alice", "--ops", "sign"])),
        "invalid_argument"
    );
    assert_eq!(
        ok(&a(&["grant", "k", "--to", "bob", "--ops", "sign"])).trim(),
        "ok"
    );
    for t in TRANSPORT_NAMES {
        let bob = |args: &[&str]| d.ctl_over("bob", t, args, cwd);
        ok(&bob(&["sign", "alice:k", "--in", "m", "--out", "sig"]));
        ok(&bob(&["sign", "alice:1", "--in", "m", "--out", "sig1"]));
        // Only what was granted: not verify, and never an owner's operation.
        for args in [
            &["verify", "alice:k", "--in", "m", "--sig", "sig"][..],
            &["export", "alice:k", "--out", "x"],
            &["delete", "alice:k"],
            &["wrap", "alice:k", "--with", "alice:w", "--out", "x"],
            &["rotate", "alice:k"],
            &["grant", "alice:k", "--to", "carol", "--ops", "sign"],
            &["revoke", "alice:k", "--from", "bob"],
        ] {
            assert_eq!(failed(&bob(args)), "usage_not_permitted", "{t} {args:?}");
        }
        // Ungranted keys are exactly like keys that do not exist.
        let missing = bob(&["sign", "alice:nope", "--in", "m", "--out", "x"]);
        let other = bob(&["sign", "alice:other", "--in", "m", "--out", "x"]);
        assert_eq!(failed(&missing), "key_not_found");
        assert_eq!(
            String::from_utf8_lossy(&other.stderr).replace("other", "nope"),
            String::from_utf8_lossy(&missing.stderr)
        );
        assert!(!cwd.join("x").exists());
        // Carol was granted nothing.
        assert_eq!(
            failed(&d.ctl_over(
                "carol",
                t,
                &["sign", "alice:k", "--in", "m", "--out", "x"],
                cwd
            )),
            "key_not_found"
        );
    }
    let info: serde_json::Value = serde_json::from_str(&ok(&d.ctl_over(
        "bob",
        "tcp",
        &["--json", "info", "alice:k"],
        cwd,
    )))
    .unwrap();
    assert_eq!(info["owner"], "alice");
    assert_eq!(
        info["usage"],
        serde_json::json!(["sign"]),
        "usage as granted"
    );
    // Bob finds what was granted to him, and only that.
    let listed = ok(&d.ctl_over("bob", "tcp", &["list", "--granted"], cwd));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert!(
        lines[0].starts_with("alice:1\talice:k\ted25519\tsign\t"),
        "{listed}"
    );
    let none = ok(&d.ctl_over("carol", "tcp", &["list", "--granted"], cwd));
    assert!(none.trim().is_empty(), "{none}");
    let own = ok(&d.ctl_over("bob", "tcp", &["list"], cwd));
    assert!(own.trim().is_empty(), "own keys only: {own}");
    // The signature is alice's key's.
    ok(&a(&["verify", "k", "--in", "m", "--sig", "sig"]));
    // Grants persist.
    assert_eq!(hsmd.terminate().code(), Some(0));
    let hsmd = d.start();
    ok(&d.ctl_over(
        "bob",
        "tcp",
        &["sign", "alice:k", "--in", "m", "--out", "sig"],
        cwd,
    ));
    ok(&a(&["revoke", "k", "--from", "bob"]));
    assert_eq!(
        failed(&d.ctl_over(
            "bob",
            "tcp",
            &["sign", "alice:k", "--in", "m", "--out", "x"],
            cwd
        )),
        "key_not_found"
    );
    assert_eq!(
        failed(&a(&["revoke", "k", "--from", "bob"])),
        "key_not_found"
    );
    // Deleting a key ends its grants.
    ok(&a(&[
        "grant",
        "other",
        "--to",
        "bob",
        "--ops",
        "sign,verify",
    ]));
    ok(&d.ctl_over(
        "bob",
        "tcp",
        &["sign", "alice:other", "--in", "m", "--out", "s"],
        cwd,
    ));
    ok(&a(&["delete", "other"]));
    assert_eq!(
        failed(&d.ctl_over(
            "bob",
            "tcp",
            &["sign", "alice:2", "--in", "m", "--out", "x"],
            cwd
        )),
        "key_not_found"
    );
    drop(hsmd);
}

#[test]
fn versions_rotate_rewrap_and_retire() {
    if !have_openssl() {
        return;
    }
    let d = Data::init("alice");
    let _hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"versioned secret").unwrap();
    let a = |t: &str, args: &[&str]| d.ctl_over("alice", t, args, cwd);
    ok(&a(
        "tcp",
        &["keygen", "--type", "aes256gcm", "--label", "ek"],
    ));
    ok(&a(
        "tcp",
        &["encrypt", "ek", "--in", "m", "--out", "c1", "--aad", "ctx"],
    ));
    assert_eq!(ok(&a("shm", &["rotate", "ek"])).trim(), "ek version 2");
    ok(&a(
        "tls",
        &["encrypt", "ek", "--in", "m", "--out", "c2", "--aad", "ctx"],
    ));
    let version = |f: &str| {
        let c = std::fs::read(cwd.join(f)).unwrap();
        assert_eq!(c[0], 2, "ciphertext format 2");
        u32::from_be_bytes(c[2..6].try_into().unwrap())
    };
    assert_eq!((version("c1"), version("c2")), (1, 2));
    for c in ["c1", "c2"] {
        ok(&a(
            "tcp",
            &["decrypt", "ek", "--in", c, "--out", "p", "--aad", "ctx"],
        ));
        assert_eq!(std::fs::read(cwd.join("p")).unwrap(), b"versioned secret");
    }
    ok(&a(
        "tls-psk",
        &["rewrap", "ek", "--in", "c1", "--out", "c3", "--aad", "ctx"],
    ));
    assert_eq!(version("c3"), 2);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&a("tcp", &["--json", "info", "ek"]))).unwrap();
    assert_eq!(info["current_version"], 2);
    assert_eq!(info["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        failed(&a("tcp", &["retire", "ek", "--below", "3"])),
        "invalid_argument"
    );
    ok(&a("tcp", &["retire", "ek", "--below", "2"]));
    assert_eq!(
        failed(&a(
            "tcp",
            &["decrypt", "ek", "--in", "c1", "--out", "p1", "--aad", "ctx"]
        )),
        "decrypt_failed"
    );
    assert!(!cwd.join("p1").exists());
    ok(&a(
        "tcp",
        &["decrypt", "ek", "--in", "c3", "--out", "p", "--aad", "ctx"],
    ));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&a("tcp", &["--json", "info", "ek"]))).unwrap();
    assert_eq!(info["versions"][0]["retired"], true);
    assert_eq!(info["versions"][1]["retired"], false);

    // MAC: a raw HMAC tag (OpenSSL computes the same), any live version verifies.
    ok(&a(
        "tcp",
        &[
            "keygen",
            "--type",
            "hmac-sha256",
            "--label",
            "mk",
            "--exportable",
        ],
    ));
    ok(&a("tcp", &["mac", "mk", "--in", "m", "--out", "t1"]));
    ok(&a("tcp", &["export", "mk", "--out", "mk.key"]));
    let key_hex: String = std::fs::read(cwd.join("mk.key"))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let theirs = openssl(
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{key_hex}"),
            "-binary",
            "m",
        ],
        cwd,
    );
    assert_eq!(theirs.stdout, std::fs::read(cwd.join("t1")).unwrap());
    ok(&a("tcp", &["rotate", "mk"]));
    ok(&a("tcp", &["mac", "mk", "--in", "m", "--out", "t2"]));
    assert_ne!(
        std::fs::read(cwd.join("t1")).unwrap(),
        std::fs::read(cwd.join("t2")).unwrap()
    );
    ok(&a("tcp", &["mac-verify", "mk", "--in", "m", "--mac", "t1"]));
    ok(&a("tcp", &["mac-verify", "mk", "--in", "m", "--mac", "t2"]));
    ok(&a("tcp", &["retire", "mk", "--below", "2"]));
    assert_eq!(
        failed(&a("tcp", &["mac-verify", "mk", "--in", "m", "--mac", "t1"])),
        "bad_mac"
    );
    // Signing keys have no versions.
    ok(&a("tcp", &["keygen", "--type", "ed25519", "--label", "sk"]));
    assert_eq!(failed(&a("tcp", &["rotate", "sk"])), "wrong_key_type");
}
