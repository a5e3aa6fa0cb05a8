//! Secrets in memory: after `delete`, no copy of an exported key's bytes is left anywhere in
//! the real `hsmd` process (heap, freed blocks, worker and session stacks), read through
//! `/proc/PID/mem`; core dumps are off and memory is locked.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use ferrohsm_client::BlockingClient;
use ferrohsm_client::ClientError;
use ferrohsm_client::profile::Transport;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request};
use ferrohsm_test_support::peer::{proc_status_kib, rss_kib};
use ferrohsm_test_support::{Data, ci, spec};

/// How long the deleted keys' last jobs may take to end on a busy machine (a hang guard).
const DEADLINE: Duration = Duration::from_secs(30);

/// One mapping: its `/proc/PID/maps` line and its bytes.
type Region = (String, Vec<u8>);

/// Every readable, writable mapping of `pid` (heap, stacks, anonymous memory), read whole.
/// `None` when the kernel refuses (not root, no CAP_SYS_PTRACE over a non-dumpable process).
fn memory(pid: u32) -> Option<Vec<Region>> {
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
            out.push((line.to_string(), buf));
        }
    }
    Some(out)
}

/// Where `needle` is: each copy as (mapping, bytes below the mapping's top: the depth on a
/// thread stack).
fn copies(regions: &[Region], needle: &[u8]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (line, r) in regions {
        for (off, w) in r.windows(needle.len()).enumerate() {
            if w == needle {
                out.push((line.clone(), r.len() - off));
            }
        }
    }
    out
}

/// Where each secret still has a copy in `pid`'s memory, one line each.
fn leftovers(pid: u32, secrets: &[(String, Vec<u8>, KeyRef)]) -> Vec<String> {
    let regions = memory(pid).expect("hsmd's memory is readable");
    // Each copy left names its mapping and its depth below the mapping's top (on a thread
    // stack, how deep the frame that left it was).
    secrets
        .iter()
        .flat_map(|(n, b, _)| copies(&regions, b).into_iter().map(move |c| (n, c)))
        .map(|(n, (line, depth))| format!("{n}: {depth} bytes below the top of {line}"))
        .collect()
}

/// A reply that must be a success.
fn served<T>(r: Result<T, ClientError>, what: &str) {
    if let Err(e) = r {
        panic!("{what}: {e}");
    }
}

#[test]
fn after_delete_no_copy_of_an_exported_key_remains_in_hsmd_memory() {
    // hsmd makes itself undumpable: only root (CAP_SYS_PTRACE) reads its memory, and only
    // root (CAP_IPC_LOCK) may lock all of it.
    if !ci::root("reading hsmd's memory through /proc/PID/mem, and mlockall") {
        return;
    }
    let d = Data::init("alice");
    let daemon = d.start();
    let pid = daemon.pid();
    // Core dumps off.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    // All memory locked (mlockall, current and future): every resident page is locked.
    let (locked, resident) = (proc_status_kib(pid, "VmLck"), rss_kib(pid));
    assert!(
        locked > 0 && locked >= resident,
        "hsmd locked {locked} KiB of {resident} KiB resident; log:\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("memory is not locked"),
        "{}",
        daemon.log()
    );
    assert!(
        memory(pid).is_some(),
        "/proc/{pid}/mem is not readable as root"
    );

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
                exportable: true,
                ..spec(*t, &label)
            };
            let k = c.block_on(c.client().generate_spec(spec)).unwrap();
            let key = KeyRef::Id(k.id);
            // Use it alone (inline) and pipelined (on the crypto workers), small and large;
            // each derived key gets its own label, so every request must succeed.
            let mut n = 0;
            for data in [vec![1u8; 32], vec![2u8; 64 * 1024]] {
                let mut req = || {
                    n += 1;
                    let data = data.clone();
                    match t {
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
                                label: format!("d{i}-{transport:?}-{n}").parse().unwrap(),
                                usage: None,
                                exportable: false,
                                session: true,
                            },
                        },
                        _ => unreachable!(),
                    }
                };
                let what = format!("{t:?} over {transport:?}, {} bytes", data.len());
                served(c.call(req()), &what);
                for r in c.pipeline(vec![req(), req()]) {
                    served(r, &format!("{what}, pipelined"));
                }
            }
            let bytes = c.block_on(c.client().export(&key)).unwrap();
            secrets.push((format!("{t:?} over {transport:?}"), bytes.to_vec(), key));
        }
        // Positive control: while the keys live, the scan finds their bytes in hsmd.
        let regions = memory(pid).unwrap();
        let (name, hmac, _) = &secrets[secrets.len() - types.len()];
        assert!(
            !copies(&regions, hmac).is_empty(),
            "the scanner cannot see {name}'s live key"
        );
        for (_, _, key) in &secrets[secrets.len() - types.len()..] {
            c.block_on(c.client().delete(key)).unwrap();
        }
    }
    // The deleted keys' handles go when the last job holding them ends: wait for that, with a
    // deadline, then the scan must find nothing.
    let deadline = Instant::now() + DEADLINE;
    let left = loop {
        let left = leftovers(pid, &secrets);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        left.is_empty(),
        "key bytes left in hsmd after delete: {left:?}"
    );
    drop(daemon);
}
