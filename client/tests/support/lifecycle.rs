//! What the lifecycle tests share: running hsmctl as a client over a transport, reading its
//! error status, running hsmd's admin commands, trusting a wrap key, and OpenSSL. Included by
//! `lifecycle.rs` and `lifecycle_store.rs` (beside `daemon.rs` and `store.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use crate::store::{Data, hsmctl_bin, hsmd_bin};

/// `hsmctl --profile CLIENT --transport T ARGS` (in `cwd`).
pub fn ctl(d: &Data, who: &str, transport: &str, args: &[&str], cwd: &Path) -> Output {
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
pub fn failed(o: &Output) -> String {
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

/// `hsmd ARGS` (no passphrase from the environment).
pub fn hsmd(args: &[&str]) -> Output {
    Command::new(hsmd_bin())
        .args(args)
        .env_remove("HSMD_PASSPHRASE")
        .output()
        .unwrap()
}

/// Adds `trusted_wrap_keys = [WRAP_KEYS]` to `client` in the server config.
pub fn trust(d: &Data, client: &str, wrap_keys: &str) {
    let cfg = d.dir.join("hsmd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let section = format!("[clients.{client}]\n");
    let text = text.replace(
        &section,
        &format!("{section}trusted_wrap_keys = [{wrap_keys}]\n"),
    );
    std::fs::write(&cfg, text).unwrap();
}

/// `openssl ARGS` in `cwd`, which must succeed.
pub fn openssl(args: &[&str], cwd: &Path) -> Output {
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
pub fn ed25519_verifies(public: &str, msg: &str, sig: &str, cwd: &Path) {
    let args = ["pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin"];
    openssl(&[&args[..], &["-in", msg, "-sigfile", sig]].concat(), cwd);
}
