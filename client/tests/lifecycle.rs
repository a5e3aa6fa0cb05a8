//! The key lifecycle, end to end with the real `hsmd` and `hsmctl` binaries (and OpenSSL where
//! it can check the result): import, wrap and unwrap across two servers, grants, versions,
//! counters across SIGKILL, the audit chain against edits, and online backup and restore.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/store.rs"]
mod store;
mod support;

use ferrohsm_proto::{KeyType, Status};
use store::{Data, hsmctl_bin, hsmd_bin, label, ok, spec, sql, status};

/// `hsmctl --profile CLIENT --transport T ARGS` (in `cwd`).
fn ctl(d: &Data, who: &str, transport: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(hsmctl_bin())
        .arg("--profile")
        .arg(d.profile(who))
        .args(["--transport", transport])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// The status name of a failed hsmctl run (which must exit 1 and write one error line).
fn failed(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a server error: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("hsmctl: "), "{err}");
    err.trim_start_matches("hsmctl: ")
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn hsmd(args: &[&str]) -> Output {
    Command::new(hsmd_bin())
        .args(args)
        .env_remove("HSMD_PASSPHRASE")
        .output()
        .unwrap()
}

fn trust(d: &Data, client: &str, wrap_keys: &str) {
    let cfg = d.dir.join("hsmd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let section = format!("[clients.{client}]\n");
    let text = text.replace(
        &section,
        &format!("{section}trusted_wrap_keys = [{wrap_keys}]\n"),
    );
    std::fs::write(&cfg, text).unwrap();
}

fn openssl(args: &[&str], cwd: &Path) -> Output {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `openssl pkeyutl -verify -rawin` of an Ed25519 signature (in `cwd`).
fn ed25519_verifies(public: &str, msg: &str, sig: &str, cwd: &Path) {
    let args = ["pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin"];
    openssl(&[&args[..], &["-in", msg, "-sigfile", sig]].concat(), cwd);
}

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

#[test]
fn counters_never_repeat_across_sigkill() {
    let d = Data::init("alice,bob", &[]);
    let hsmd = d.start(&[]);
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    let a = |args: &[&str]| ctl(&d, "alice", "tcp", args, cwd);
    assert_eq!(ok(&a(&["counter", "create", "c"])).trim(), "0");
    assert_eq!(failed(&a(&["counter", "create", "c"])), "label_in_use");
    assert_eq!(failed(&a(&["counter", "inc", "nope"])), "counter_not_found");
    assert_eq!(
        failed(&ctl(&d, "bob", "shm", &["counter", "read", "c"], cwd)),
        "counter_not_found",
        "counters are per client"
    );
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (seen, stop, c) = (seen.clone(), stop.clone(), d.connect("alice"));
            std::thread::spawn(move || {
                let name = "c".parse().unwrap();
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    match c.block_on(c.client().counter_inc(&name)) {
                        Ok(v) => {
                            assert!(v > last, "a counter went from {last} to {v}");
                            last = v;
                            seen.fetch_max(v, Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    while seen.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    hsmd.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let max = seen.load(Ordering::SeqCst);
    let _hsmd = d.start(&[]);
    let next: u64 = ok(&a(&["counter", "inc", "c"])).trim().parse().unwrap();
    assert!(
        next > max,
        "after SIGKILL the counter gave {next}, but {max} was seen"
    );
    let read: u64 = ok(&a(&["counter", "read", "c"])).trim().parse().unwrap();
    assert_eq!(read, next);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&a(&["--json", "counter", "inc", "c"]))).unwrap();
    assert_eq!(json["value"], next + 1);
}

/// Runs `hsmd audit verify` (with a checkpoint): the first line of its stderr when it fails.
fn verify(d: &Data, checkpoint: Option<&Path>) -> Result<String, String> {
    let mut args = vec!["audit", "verify", "--config"];
    let config = d.config();
    args.push(&config);
    let cp;
    if let Some(c) = checkpoint {
        cp = c.display().to_string();
        args.extend(["--checkpoint", &cp]);
    }
    let o = hsmd(&args);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        assert_eq!(o.status.code(), Some(1));
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn audit_chain_names_the_first_broken_entry() {
    let d = Data::init("alice,bob", &[]);
    let hsmd_running = d.start(&[]);
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"audited").unwrap();
    let a = |args: &[&str]| ctl(&d, "alice", "tcp", args, cwd);
    ok(&a(&["keygen", "--type", "ed25519", "--label", "k"]));
    ok(&a(&[
        "keygen",
        "--type",
        "hmac-sha256",
        "--label",
        "x",
        "--exportable",
    ]));
    ok(&a(&["grant", "k", "--to", "bob", "--ops", "sign"]));
    ok(&a(&["export", "x", "--out", "x.key"]));
    ok(&a(&["counter", "create", "c"]));
    ok(&a(&["counter", "inc", "c"]));
    failed(&ctl(
        &d,
        "bob",
        "tcp",
        &["export", "alice:k", "--out", "no"],
        cwd,
    ));
    failed(&a(&["sign", "nope", "--in", "m", "--out", "no"]));
    // A failed login is a denial too.
    std::fs::write(
        cwd.join("mallory.key"),
        std::fs::read(d.dir.join("clients/bob.key")).unwrap(),
    )
    .unwrap();
    let prof = std::fs::read_to_string(d.profile("alice"))
        .unwrap()
        .replace("alice.key", "bob.key");
    std::fs::write(d.dir.join("clients/forged.toml"), prof).unwrap();
    let o = Command::new(hsmctl_bin())
        .args([
            "--profile",
            d.dir.join("clients/forged.toml").to_str().unwrap(),
            "ping",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    // Queued denials reach the log within the flush interval, while hsmd runs.
    std::thread::sleep(Duration::from_millis(600));
    let shown = hsmd(&["audit", "show", "--config", &d.config(), "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&ok(&shown).into_bytes()).unwrap();
    let rows = rows.as_array().unwrap();
    let ops: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["op"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    for want in [
        ("keygen", "ok"),
        ("grant", "ok"),
        ("export", "ok"),
        ("counter-create", "ok"),
        ("counter-inc", "ok"),
        ("export", "usage_not_permitted"),
        ("sign", "key_not_found"),
        ("login", "auth_failed"),
    ] {
        assert!(ops.contains(&want), "{want:?} missing from {ops:?}");
    }
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        for f in [
            "time",
            "client",
            "session",
            "transport",
            "op",
            "key",
            "status",
            "prev_hash",
            "hash",
        ] {
            assert!(!r[f].is_null(), "{f}");
        }
    }
    // No secret enters the log: not the exported key, not in any form.
    let key = std::fs::read(cwd.join("x.key")).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let text = serde_json::to_string(rows).unwrap();
    assert!(!text.contains(&hex));
    assert!(verify(&d, None).unwrap().contains("audit chain ok"));
    let cp = cwd.join("cp");
    let c = hsmd(&["audit", "checkpoint", "--config", &d.config()]);
    std::fs::write(&cp, ok(&c)).unwrap();
    assert!(verify(&d, Some(&cp)).is_ok());
    let since = hsmd(&[
        "audit",
        "show",
        "--config",
        &d.config(),
        "--json",
        "--since",
        "3",
    ]);
    let later: serde_json::Value = serde_json::from_str(&ok(&since)).unwrap();
    assert_eq!(later[0]["seq"], 3);
    assert_eq!(hsmd_running.terminate().code(), Some(0));
    let n = rows.len() as i64;

    // Each tampering, on a fresh copy of the store, is named by its entry.
    let pristine = std::fs::read(d.db()).unwrap();
    let tamper = |sql_text: &str| -> String {
        std::fs::write(d.db(), &pristine).unwrap();
        sql(&d).execute_batch(sql_text).unwrap();
        verify(&d, None).unwrap_err()
    };
    let e = tamper("UPDATE audit SET key = 'alice:99' WHERE seq = 4");
    assert!(e.contains("entry 4") && e.contains("edited"), "{e}");
    let e = tamper("DELETE FROM audit WHERE seq = 3");
    assert!(e.contains("entry 3"), "{e}");
    let e = tamper(
        "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
         UPDATE audit SET seq = 3 WHERE seq = -1;",
    );
    assert!(e.contains("entry 2"), "{e}");
    let e = tamper(&format!("DELETE FROM audit WHERE seq > {}", n - 2));
    assert!(e.contains("truncated"), "{e}");
    // A whole older store put back (consistent in itself): only the checkpoint tells.
    std::fs::write(d.db(), &pristine).unwrap();
    let hsmd_running = d.start(&[]);
    ok(&a(&["keygen", "--type", "ed25519", "--label", "k2"]));
    let c = hsmd(&["audit", "checkpoint", "--config", &d.config()]);
    let cp2 = cwd.join("cp2");
    std::fs::write(&cp2, ok(&c)).unwrap();
    assert_eq!(hsmd_running.terminate().code(), Some(0));
    std::fs::write(d.db(), &pristine).unwrap();
    assert!(verify(&d, None).is_ok());
    let e = verify(&d, Some(&cp2)).unwrap_err();
    assert!(e.contains("truncated after the checkpoint"), "{e}");
    assert!(verify(&d, Some(&cp)).is_ok());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn online_backup_while_keys_are_created_restores_every_acknowledged_key() {
    let d = Data::init("alice", &[]);
    let hsmd_running = d.start(&[]);
    let acked = Arc::new(acked::Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, c) = (acked.clone(), stop.clone(), d.connect("alice"));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let l = format!("k{i}");
                c.block_on(c.client().generate_spec(spec(KeyType::Ed25519, &l, false)))
                    .unwrap();
                acked.push(l);
                i += 1;
            }
        })
    };
    while acked.len() < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = acked.snapshot();
    let w = tempfile::tempdir().unwrap();
    let backup = w.path().join("b.db");
    let o = hsmd(&[
        "backup",
        "--config",
        &d.config(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    ok(&o);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        acked.len() > before.len(),
        "keys were being created during the backup"
    );
    let again = hsmd(&[
        "backup",
        "--config",
        &d.config(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "a backup never overwrites");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o077,
        0
    );

    // A new data directory: its own ports, the same master key file, no store.
    let two = Data::init("alice", &[]);
    for f in ["keys.db", "audit.pub", "master.key"] {
        std::fs::remove_file(two.dir.join(f)).unwrap();
    }
    std::fs::copy(d.dir.join("master.key"), two.dir.join("master.key")).unwrap();
    copy_dir(&d.dir.join("clients"), &two.dir.join("clients"));
    let keep_ports = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let text = text
            .replace(&d.ports.tcp, &two.ports.tcp)
            .replace(&d.ports.tls, &two.ports.tls)
            .replace(&d.ports.tls_psk, &two.ports.tls_psk)
            .replace(d.dir.to_str().unwrap(), two.dir.to_str().unwrap());
        std::fs::write(p, text).unwrap();
    };
    keep_ports(&two.dir.join("clients/alice.toml"));
    // The clients' keys and certificates are the first server's: so is its config's view.
    std::fs::copy(d.dir.join("hsmd.toml"), two.dir.join("hsmd.toml")).unwrap();
    keep_ports(&two.dir.join("hsmd.toml"));
    copy_dir(&d.dir.join("pki"), &two.dir.join("pki"));
    let restored = hsmd(&[
        "restore",
        "--config",
        &two.config(),
        "--in",
        backup.to_str().unwrap(),
    ]);
    assert!(ok(&restored).contains("restored"));
    let twice = hsmd(&[
        "restore",
        "--config",
        &two.config(),
        "--in",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(
        twice.status.code(),
        Some(1),
        "restore never replaces a store"
    );
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already holds a key store"));
    drop(hsmd_running);
    let _two_running = two.start(&[]);
    let c = two.connect("alice");
    for l in &before {
        let sig = c.sign(&label(l), b"restored").unwrap();
        c.verify(&label(l), b"restored", &sig).unwrap();
    }
    assert!(matches!(
        status(c.sign(&label("never-made"), b"x")),
        Status::KeyNotFound
    ));
    let v = hsmd(&["audit", "verify", "--config", &two.config()]);
    ok(&v);
}

/// A list of acknowledged labels shared between threads (std only).
mod acked {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<String>>);

    impl Acked {
        pub fn push(&self, l: String) {
            self.0.lock().unwrap().push(l);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn snapshot(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}
