//! Where `hsmctl --out` writes: `-` is stdout; a new path or a regular file is replaced whole
//! (through a temporary file and a rename); a symlink (`/dev/stdout`), a character device
//! (`/dev/null`) or a FIFO is written in place and never replaced, so `--out /dev/null` as
//! root can no longer turn the device node into a file.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_test_support::daemon::hsmctl_command;
use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::{Data, ci};
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;
use std::process::Stdio;

/// The files in `dir`, by name (a temporary file left behind would show here).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The Ed25519 signature of `msg` (deterministic: the same bytes every time).
fn reference(d: &Data) -> Vec<u8> {
    ok(&d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "ref.sig"]));
    std::fs::read(d.tmp().join("ref.sig")).unwrap()
}

#[test]
fn out_dash_is_stdout_and_json_with_it_is_a_usage_error() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    std::fs::write(d.tmp().join("msg"), b"to stdout").unwrap();
    ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "ed"]));
    let want = reference(&d);
    let o = d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "-"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, want);
    // What a command prints besides its result goes to stderr then.
    ok(&d.ctl(
        "alice",
        &[
            "keygen",
            "--type",
            "aes256gcm",
            "--label",
            "a",
            "--exportable",
        ],
    ));
    let o = d.ctl("alice", &["encrypt", "a", "--in", "msg", "--out", "-"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        o.stdout.len(),
        6 + 12 + 9 + 16,
        "the ciphertext alone on stdout"
    );
    let o = d.ctl("alice", &["export", "a", "--out", "-"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout.len(), 32);
    ok(&d.ctl("alice", &["keygen", "--type", "ml-kem-768", "--label", "k"]));
    let o = d.ctl(
        "alice",
        &[
            "encapsulate",
            "k",
            "--out",
            "-",
            "--type",
            "hmac-sha256",
            "--label",
            "s",
        ],
    );
    assert!(o.status.success());
    assert_eq!(o.stdout.len(), 1088, "the ciphertext alone on stdout");
    assert!(String::from_utf8_lossy(&o.stderr).trim().ends_with(" s"));
    // --json and --out - both want stdout.
    let o = d.ctl(
        "alice",
        &["--json", "sign", "ed", "--in", "msg", "--out", "-"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--json cannot be used with --out -"),
        "{o:?}"
    );
    // A regular file is still replaced whole, leaving no temporary file.
    std::fs::write(d.tmp().join("old.sig"), vec![0xaa; 1000]).unwrap();
    ok(&d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "old.sig"]));
    assert_eq!(std::fs::read(d.tmp().join("old.sig")).unwrap(), want);
    assert!(!names(d.tmp()).iter().any(|n| n.contains("hsmctl-tmp")));
}

#[test]
fn a_fifo_and_dev_stdout_are_written_in_place() {
    if !ci::tool("mkfifo", "coreutils") {
        return;
    }
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    std::fs::write(dir.join("msg"), b"through a pipe").unwrap();
    ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "ed"]));
    let want = reference(&d);

    // A FIFO: a reader on the other end gets the signature, and the FIFO stays a FIFO.
    let fifo = dir.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(fifo).unwrap()));
    }
    ok(&d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "pipe"]));
    let read = rx.recv_timeout(std::time::Duration::from_secs(30));
    if read.is_err() {
        // Nothing was written into the FIFO: open its other end, so the reader ends, then fail.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    assert_eq!(read.expect("the FIFO's reader got nothing"), want);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // /dev/stdout, with stdout redirected to a file: the signature lands in the file.
    let captured = dir.join("captured");
    let mut c = hsmctl_command(&d.profile("alice"));
    c.args(["sign", "ed", "--in", "msg", "--out", "/dev/stdout"])
        .current_dir(dir)
        .stdout(Stdio::from(std::fs::File::create(&captured).unwrap()));
    // (Not through output_within, which would pipe stdout: hsmctl's own timeouts bound it.)
    let status = c.status().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(&captured).unwrap(), want);
    assert!(
        std::fs::symlink_metadata("/dev/stdout")
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // /dev/stdout is stdout: a `>>` redirection keeps appending, and what the command prints
    // besides its result (encapsulate's `<id> <label>`) goes to stderr, not over the result.
    let appended = dir.join("appended");
    std::fs::write(&appended, b"before|").unwrap();
    let mut c = hsmctl_command(&d.profile("alice"));
    c.args(["sign", "ed", "--in", "msg", "--out", "/dev/stdout"])
        .current_dir(dir)
        .stdout(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&appended)
                .unwrap(),
        ));
    assert!(c.status().unwrap().success());
    assert_eq!(
        std::fs::read(&appended).unwrap(),
        [&b"before|"[..], &want].concat()
    );
    ok(&d.ctl("alice", &["keygen", "--type", "ml-kem-768", "--label", "k"]));
    let ct = dir.join("ct");
    let mut c = hsmctl_command(&d.profile("alice"));
    c.args([
        "encapsulate",
        "k",
        "--out",
        "/dev/stdout",
        "--type",
        "aes256gcm",
        "--label",
        "s",
    ])
    .current_dir(dir)
    .stdout(Stdio::from(std::fs::File::create(&ct).unwrap()))
    .stderr(Stdio::piped());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(&ct).unwrap().len(),
        1088,
        "the ciphertext alone"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).trim().ends_with(" s"),
        "{o:?}"
    );
    // A symlink that leads nowhere, or to a directory, stops an encapsulation before any key is
    // made (the ciphertext would be lost).
    std::os::unix::fs::symlink("nowhere/ct", dir.join("dangling")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("here")).unwrap();
    for (out, why) in [
        ("dangling", "leads nowhere"),
        ("here", "leads to a directory"),
    ] {
        let o = d.ctl(
            "alice",
            &[
                "encapsulate",
                "k",
                "--out",
                out,
                "--type",
                "aes256gcm",
                "--label",
                "lost",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(why), "{o:?}");
    }
    assert_eq!(
        ferrohsm_test_support::status::failed(&d.ctl("alice", &["info", "lost"])),
        "key_not_found"
    );
    // A symlink to a regular file is written through, whole (the longer old content gone).
    std::fs::write(dir.join("target.sig"), vec![0xbb; 1000]).unwrap();
    std::os::unix::fs::symlink("target.sig", dir.join("link.sig")).unwrap();
    ok(&d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "link.sig"]));
    assert_eq!(std::fs::read(dir.join("target.sig")).unwrap(), want);
    assert!(
        std::fs::symlink_metadata(dir.join("link.sig"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!names(dir).iter().any(|n| n.contains("hsmctl-tmp")));
}

/// `--out` a character device, as root: the device node is written to (here /dev/null's
/// numbers, made in a temporary directory, so it swallows the bytes) and stays a device.
#[test]
fn a_character_device_stays_a_device() {
    if !ci::root("mknod needs root") {
        return;
    }
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    std::fs::write(dir.join("msg"), b"into the void").unwrap();
    ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "ed"]));
    let made = std::process::Command::new("mknod")
        .arg(dir.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success());
    let before = names(dir);
    ok(&d.ctl("alice", &["sign", "ed", "--in", "msg", "--out", "null"]));
    ok(&d.ctl("alice", &["keygen", "--type", "ml-kem-512", "--label", "k"]));
    ok(&d.ctl(
        "alice",
        &[
            "encapsulate",
            "k",
            "--out",
            "null",
            "--type",
            "aes256gcm",
            "--label",
            "s",
        ],
    ));
    let m = std::fs::symlink_metadata(dir.join("null")).unwrap();
    assert!(m.file_type().is_char_device(), "{m:?}");
    assert_eq!(
        std::fs::read(dir.join("null")).unwrap(),
        b"",
        "still /dev/null"
    );
    assert_eq!(names(dir), before, "no file made beside it");
}
