//! The key lifecycle, end to end with the real `hsmd` and `hsmctl` binaries (and OpenSSL where
//! it can check the result): import, wrap and unwrap across two servers, grants, versions.
//! Counters, the audit chain and backups are in `lifecycle_store.rs`.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/lifecycle.rs"]
mod lifecycle;
#[path = "support/store.rs"]
mod store;

use lifecycle::{ctl, ed25519_verifies, failed, openssl, trust};
use store::{Data, ok};

#[test]
fn import_openssl_keys_and_sign_verifiably() {
    let d = Data::init("alice", &[]);
    let _hsmd = d.start(&[]);
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    let a = |args: &[&str]| ctl(&d, "alice", "tcp", args, cwd);
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
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    // The backup wrap key, made outside and imported (non-exportable) into both servers.
    std::fs::write(cwd.join("wrap.key"), [0x5au8; 32]).unwrap();
    std::fs::write(cwd.join("m"), b"wrapped keys sign the same").unwrap();
    let one = Data::init("alice,bob", &[]);
    let two = Data::init("alice", &[]);
    trust(&one, "alice", "\"backup\"");
    trust(&two, "alice", "\"backup\"");
    let (h1, h2) = (one.start(&[]), two.start(&[]));
    for d in [&one, &two] {
        ok(&ctl(
            d,
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
    let a = |args: &[&str]| ctl(&one, "alice", "tcp", args, cwd);
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
    ok(&a(&["pubkey", "sk", "--pem"]));
    let pem = ok(&a(&["pubkey", "sk", "--pem"]));
    std::fs::write(cwd.join("sk.pub"), pem).unwrap();

    let b = |args: &[&str]| ctl(&two, "alice", "shm", args, cwd);
    // Tampered: a flipped ciphertext byte, and a record edited to exportable.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    std::fs::write(cwd.join("bad1.blob"), &bad).unwrap();
    let text =
        String::from_utf8_lossy(&blob).replace("\"exportable\":false", "\"exportable\":true ");
    assert_ne!(text.as_bytes(), &blob[..]);
    std::fs::write(cwd.join("bad2.blob"), text.as_bytes()).unwrap();
    for f in ["bad1.blob", "bad2.blob"] {
        let o = b(&["unwrap", "--with", "backup", "--in", f, "--label", "x"]);
        assert!(["decrypt_failed", "invalid_argument"].contains(&failed(&o).as_str()));
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
    // Unwrapping keeps the blob's rule: under a wrap key server two does not trust, refused.
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
    assert!(["decrypt_failed", "not_exportable"].contains(&failed(&o).as_str()));
    drop((h1, h2));
}

#[test]
fn grants_share_exactly_what_was_granted() {
    let d = Data::init("alice,bob,carol", &[]);
    let hsmd = d.start(&[]);
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"granted").unwrap();
    let a = |args: &[&str]| ctl(&d, "alice", "tcp", args, cwd);
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
    for t in ["tcp", "tls", "tls-psk", "shm"] {
        let bob = |args: &[&str]| ctl(&d, "bob", t, args, cwd);
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
            failed(&ctl(
                &d,
                "carol",
                t,
                &["sign", "alice:k", "--in", "m", "--out", "x"],
                cwd
            )),
            "key_not_found"
        );
    }
    let info: serde_json::Value = serde_json::from_str(&ok(&ctl(
        &d,
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
    let listed = ok(&ctl(&d, "bob", "tcp", &["list", "--granted"], cwd));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert!(
        lines[0].starts_with("alice:1\talice:k\ted25519\tsign\t"),
        "{listed}"
    );
    let none = ok(&ctl(&d, "carol", "tcp", &["list", "--granted"], cwd));
    assert!(none.trim().is_empty(), "{none}");
    let own = ok(&ctl(&d, "bob", "tcp", &["list"], cwd));
    assert!(own.trim().is_empty(), "own keys only: {own}");
    // The signature is alice's key's.
    ok(&a(&["verify", "k", "--in", "m", "--sig", "sig"]));
    // Grants persist.
    assert_eq!(hsmd.terminate().code(), Some(0));
    let hsmd = d.start(&[]);
    ok(&ctl(
        &d,
        "bob",
        "tcp",
        &["sign", "alice:k", "--in", "m", "--out", "sig"],
        cwd,
    ));
    ok(&a(&["revoke", "k", "--from", "bob"]));
    assert_eq!(
        failed(&ctl(
            &d,
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
    ok(&ctl(
        &d,
        "bob",
        "tcp",
        &["sign", "alice:other", "--in", "m", "--out", "s"],
        cwd,
    ));
    ok(&a(&["delete", "other"]));
    assert_eq!(
        failed(&ctl(
            &d,
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
    let d = Data::init("alice", &[]);
    let _hsmd = d.start(&[]);
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"versioned secret").unwrap();
    let a = |t: &str, args: &[&str]| ctl(&d, "alice", t, args, cwd);
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
