//! Secrets in memory: after `delete`, no copy of an exported key's bytes is left anywhere in
//! the real `hsmd` process (heap, freed blocks, worker and session stacks), read through
//! `/proc/PID/mem`; core dumps are off and memory is locked.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/store.rs"]
mod store;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Transport;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request};
use store::Data;

/// Every readable, writable mapping of `pid` (heap, stacks, anonymous memory), read whole.
/// `None` when the kernel refuses (not root, no CAP_SYS_PTRACE over a non-dumpable process).
fn memory(pid: u32) -> Option<Vec<Vec<u8>>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            if std::env::var("SCAN_DEBUG").is_ok() {
                eprintln!("region {}: {line}", out.len());
            }
            out.push(buf);
        }
    }
    Some(out)
}

fn found(regions: &[Vec<u8>], needle: &[u8]) -> usize {
    regions
        .iter()
        .map(|r| r.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn after_delete_no_copy_of_an_exported_key_remains_in_hsmd_memory() {
    let d = Data::init("alice", &[]);
    let daemon = d.start(&[]);
    let pid = daemon.child.id();
    // Core dumps off, memory locked (this machine runs as root: mlockall is allowed).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let Some(_) = memory(pid) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot read /proc/{pid}/mem under CI=true"
        );
        eprintln!("SKIPPED: /proc/{pid}/mem is not readable here (needs root or CAP_SYS_PTRACE)");
        return;
    };
    let locked = status_field(pid, "VmLck:");
    eprintln!("hsmd VmLck: {locked}");

    let types = [
        KeyType::HmacSha256,
        KeyType::Aes256Gcm,
        KeyType::ChaCha20Poly1305,
        KeyType::Ed25519,
        KeyType::P256,
        KeyType::X25519,
    ];
    let mut secrets = Vec::new();
    for transport in [Transport::Tcp, Transport::Shm] {
        let c = BlockingClient::connect(
            &ferrohsm_client::profile::Profile::load(&d.profile("alice")).unwrap(),
            Some(transport),
        )
        .unwrap();
        for (i, t) in types.iter().enumerate() {
            let label = format!("x{i}-{transport:?}");
            let spec = KeySpec {
                key_type: *t,
                label: label.parse().unwrap(),
                usage: None,
                exportable: true,
                session: false,
            };
            let k = c.block_on(c.client().generate_spec(spec)).unwrap();
            let key = KeyRef::Id(k.id);
            // Use it alone (inline) and pipelined (on the crypto workers), small and large.
            for data in [vec![1u8; 32], vec![2u8; 64 * 1024]] {
                let req = match t {
                    KeyType::HmacSha256 => Request::Mac {
                        key: key.clone(),
                        data,
                    },
                    KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 => Request::Encrypt {
                        key: key.clone(),
                        plaintext: data,
                        aad: Vec::new(),
                    },
                    KeyType::Ed25519 | KeyType::P256 => Request::Sign {
                        key: key.clone(),
                        data,
                    },
                    KeyType::X25519 => Request::Derive {
                        key: key.clone(),
                        peer: vec![9; 32],
                        spec: KeySpec {
                            key_type: KeyType::HmacSha256,
                            label: format!("d{i}-{transport:?}-{}", data.len())
                                .parse()
                                .unwrap(),
                            usage: None,
                            exportable: false,
                            session: true,
                        },
                    },
                    _ => unreachable!(),
                };
                assert!(c.call(req.clone()).is_ok());
                assert!(
                    c.pipeline(vec![req.clone(), req])
                        .iter()
                        .all(|r| r.is_ok() || *t == KeyType::X25519)
                );
            }
            let bytes = c.block_on(c.client().export(&key)).unwrap();
            secrets.push((format!("{t:?} over {transport:?}"), bytes.to_vec(), key));
        }
        // Positive control: while the keys live, the scan finds their bytes in hsmd.
        let regions = memory(pid).unwrap();
        let (name, hmac, _) = &secrets[secrets.len() - types.len()];
        assert!(
            found(&regions, hmac) > 0,
            "the scanner cannot see {name}'s live key"
        );
        for (_, _, key) in &secrets[secrets.len() - types.len()..] {
            c.block_on(c.client().delete(key)).unwrap();
        }
    }
    // The deleted keys' handles go when the last job holding them ends.
    std::thread::sleep(Duration::from_millis(300));
    let regions = memory(pid).unwrap();
    let left: Vec<String> = secrets
        .iter()
        .filter(|(_, b, _)| found(&regions, b) > 0)
        .map(|(n, b, _)| {
            format!(
                "{n}: {} copies in regions {:?}",
                found(&regions, b),
                regions
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| found(std::slice::from_ref(r), b) > 0)
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    if std::env::var("SCAN_DEBUG").is_ok() {
        for (n, b, _) in &secrets {
            for (i, r) in regions.iter().enumerate() {
                for (off, w) in r.windows(b.len()).enumerate() {
                    if w == b.as_slice() {
                        eprintln!("{n}: region {i} offset from top {}", r.len() - off);
                    }
                }
            }
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            eprintln!(
                "task {:?} {} syscall {}",
                t.file_name(),
                comm.trim(),
                sc.trim()
            );
        }
    }
    assert!(
        left.is_empty(),
        "key bytes left in hsmd after delete: {left:?}"
    );
    drop(daemon);
}
