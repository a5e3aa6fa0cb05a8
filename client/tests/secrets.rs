//! Secrets in memory: after `delete`, no copy of an exported key's bytes is left anywhere in
//! the real `hsmd` process (heap, freed blocks, worker and session stacks), read through
//! `/proc/PID/mem`; core dumps are off and memory is locked.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::ClientError;
use ferrohsm_client::profile::Transport;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request};
use ferrohsm_test_support::peer::{proc_status_kib, rss_kib};
use ferrohsm_test_support::{Data, ci, spec, wait};

/// How long the deleted keys' last jobs may take to end on a busy machine (a hang guard).
const DEADLINE: Duration = Duration::from_secs(30);

/// One mapping: its `/proc/PID/maps` line and its bytes.
type Region = (String, Vec<u8>);

/// The `[start, end)` addresses and permissions of a `/proc/PID/maps` line.
fn mapping(line: &str) -> (u64, u64, &str) {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    let (a, b) = range
        .split_once('-')
        .unwrap_or_else(|| panic!("a maps line without a range: {line}"));
    let hex = |x: &str| u64::from_str_radix(x, 16).unwrap_or_else(|e| panic!("{line}: {e}"));
    (hex(a), hex(b), perms)
}

/// Whether a mapping is one the scan must read: the heap, a thread stack, or anonymous
/// memory (where the allocator and the threads keep everything a request touched).
fn matters(line: &str) -> bool {
    let path = line.split_whitespace().nth(5);
    matches!(path, None | Some("[heap]")) || path.is_some_and(|p| p.starts_with("[stack"))
}

/// Every readable, writable mapping of `pid` (heap, stacks, anonymous memory), read whole.
/// `None` when the kernel refuses (not root, no CAP_SYS_PTRACE over a non-dumpable process).
/// A mapping that cannot be read fails the scan, naming it, unless it was unmapped while the
/// scan ran (a thread ended, an allocation was freed); at least one heap or anonymous mapping
/// must have been read.
fn memory(pid: u32) -> Option<Vec<Region>> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).ok()?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for line in maps.lines() {
        let (a, b, perms) = mapping(line);
        if !perms.starts_with("rw") {
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        match mem
            .seek(SeekFrom::Start(a))
            .and_then(|_| mem.read_exact(&mut buf))
        {
            Ok(()) => out.push((line.to_string(), buf)),
            Err(e) => unreadable.push((line.to_string(), e)),
        }
    }
    // A mapping still there, at the same place, after its read failed: unreadable.
    if !unreadable.is_empty() {
        let now = std::fs::read_to_string(&maps_path).expect("hsmd's maps");
        let still: Vec<String> = unreadable
            .iter()
            .filter(|(line, _)| now.lines().any(|l| mapping(l).0 == mapping(line).0))
            .map(|(line, e)| format!("{line}: {e}"))
            .collect();
        assert!(
            still.is_empty(),
            "the scan could not read {} of hsmd's mappings: {still:#?}",
            still.len()
        );
    }
    assert!(
        out.iter().any(|(line, _)| matters(line)),
        "the scan read no heap or anonymous mapping of hsmd; read: {:#?}",
        out.iter().map(|(l, _)| l).collect::<Vec<_>>()
    );
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
    // Where copies are left is printed as it changes (shown if the wait fails).
    let mut last = Vec::new();
    wait::until("no copy of a deleted key in hsmd", DEADLINE, || {
        let left = leftovers(pid, &secrets);
        if left != last {
            eprintln!("key bytes left in hsmd after delete: {left:#?}");
            last = left;
        }
        last.is_empty()
    });
    drop(daemon);
}
