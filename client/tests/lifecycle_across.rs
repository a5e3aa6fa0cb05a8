//! The key lifecycle over every transport (import, wrap and unwrap, grants, versions and
//! counters through `hsmctl --transport T`), and grants and revocations across restarts,
//! with the real `hsmd` and `hsmctl`.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_test_support::peer::TRANSPORT_NAMES;
use ferrohsm_test_support::status::assert_failed;
use ferrohsm_test_support::{Data, failed, ok};

#[test]
fn lifecycle_commands_work_on_every_transport() {
    let d = Data::init("alice,bob");
    d.client_setting(
        "alice",
        "trusted_wrap_keys = [\"wk-tcp\", \"wk-tls\", \"wk-tls-psk\", \"wk-shm\"]",
    );
    let _hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"over every transport").unwrap();
    std::fs::write(cwd.join("wrap.key"), [0x33u8; 32]).unwrap();
    for t in TRANSPORT_NAMES {
        let a = |args: &[&str]| d.ctl_over("alice", t, args, cwd);
        let bob = |args: &[&str]| d.ctl_over("bob", t, args, cwd);
        let (wk, sk, ek, c) = (
            format!("wk-{t}"),
            format!("sk-{t}"),
            format!("ek-{t}"),
            format!("c-{t}"),
        );
        // import
        ok(&a(&[
            "import",
            "--type",
            "aes256gcm",
            "--in",
            "wrap.key",
            "--label",
            &wk,
            "--usage",
            "wrap,unwrap",
        ]));
        let info: serde_json::Value =
            serde_json::from_str(&ok(&a(&["--json", "info", &wk]))).unwrap();
        assert_eq!(info["origin"], "imported", "{t}");
        // wrap and unwrap (a non-exportable key under a trusted wrap key)
        ok(&a(&["keygen", "--type", "ed25519", "--label", &sk]));
        let blob = format!("{sk}.blob");
        ok(&a(&["wrap", &sk, "--with", &wk, "--out", &blob]));
        let copy = format!("{sk}-copy");
        ok(&a(&[
            "unwrap", "--with", &wk, "--in", &blob, "--label", &copy,
        ]));
        assert_eq!(
            ok(&a(&["pubkey", &copy, "--pem"])),
            ok(&a(&["pubkey", &sk, "--pem"])),
            "{t}: the unwrapped key is the wrapped one"
        );
        // grant and revoke
        let theirs = format!("alice:{sk}");
        assert_eq!(
            ok(&a(&["grant", &sk, "--to", "bob", "--ops", "sign"])).trim(),
            "ok"
        );
        ok(&bob(&["sign", &theirs, "--in", "m", "--out", "bob.sig"]));
        ok(&a(&["verify", &sk, "--in", "m", "--sig", "bob.sig"]));
        ok(&a(&["revoke", &sk, "--from", "bob"]));
        assert_failed(
            &bob(&["sign", &theirs, "--in", "m", "--out", "no.sig"]),
            "key_not_found",
        );
        // rotate, rewrap, retire
        ok(&a(&["keygen", "--type", "aes256gcm", "--label", &ek]));
        ok(&a(&["encrypt", &ek, "--in", "m", "--out", "c1"]));
        assert_eq!(ok(&a(&["rotate", &ek])).trim(), format!("{ek} version 2"));
        ok(&a(&["rewrap", &ek, "--in", "c1", "--out", "c2"]));
        ok(&a(&["retire", &ek, "--below", "2"]));
        assert_failed(
            &a(&["decrypt", &ek, "--in", "c1", "--out", "p1"]),
            "decrypt_failed",
        );
        ok(&a(&["decrypt", &ek, "--in", "c2", "--out", "p2"]));
        assert_eq!(
            std::fs::read(cwd.join("p2")).unwrap(),
            b"over every transport"
        );
        // counters
        assert_eq!(ok(&a(&["counter", "create", &c])).trim(), "0");
        assert_eq!(ok(&a(&["counter", "inc", &c])).trim(), "1");
        assert_eq!(ok(&a(&["counter", "read", &c])).trim(), "1");
        assert_failed(&bob(&["counter", "read", &c]), "counter_not_found");
    }
}

#[test]
fn a_revoked_grant_stays_revoked_and_a_granted_one_stays_granted_across_restarts() {
    let d = Data::init("alice,bob");
    let hsmd = d.start();
    let w = tempfile::tempdir().unwrap();
    let cwd = w.path();
    std::fs::write(cwd.join("m"), b"granted across restarts").unwrap();
    let a = |args: &[&str]| d.ctl_over("alice", "tcp", args, cwd);
    let bob = |args: &[&str]| d.ctl_over("bob", "tcp", args, cwd);
    for l in ["kept", "revoked"] {
        ok(&a(&["keygen", "--type", "ed25519", "--label", l]));
        ok(&a(&["grant", l, "--to", "bob", "--ops", "sign"]));
        ok(&bob(&[
            "sign",
            &format!("alice:{l}"),
            "--in",
            "m",
            "--out",
            "s",
        ]));
    }
    ok(&a(&["revoke", "revoked", "--from", "bob"]));
    let check = |when: &str| {
        ok(&bob(&["sign", "alice:kept", "--in", "m", "--out", "s"]));
        ok(&a(&["verify", "kept", "--in", "m", "--sig", "s"]));
        let o = bob(&["sign", "alice:revoked", "--in", "m", "--out", "x"]);
        assert_eq!(failed(&o), "key_not_found", "{when}");
        let listed = ok(&bob(&["list", "--granted"]));
        let labels: Vec<&str> = listed
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect();
        assert_eq!(labels, ["alice:kept"], "{when}: {listed}");
    };
    check("before a restart");
    // A clean stop, then SIGKILL: both come back with the same grants.
    assert_eq!(hsmd.terminate().code(), Some(0));
    let hsmd = d.start();
    check("after SIGTERM and a restart");
    hsmd.kill();
    let _hsmd = d.start();
    check("after SIGKILL and a restart");
}
