//! Secrets in memory: after `delete`, no copy of an exported key's bytes is left anywhere in
//! the real `hsmd` process (heap, freed blocks, worker and session stacks), read through
//! `/proc/PID/mem`; nor of any response the request kinds' description marks secret (random
//! bytes, plaintexts: the PKCS#11 module's raw decryption too) once it is written; core dumps
//! are off and memory is locked.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::ClientError;
use ferrohsm_client::profile::Transport;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Opcode, Request, Response};
use ferrohsm_server::crypto::ops;
use ferrohsm_server::keys::material::KeyMaterial;
use ferrohsm_test_support::memory::{copies, leftovers, memory};
use ferrohsm_test_support::peer::{Tcp, proc_status_kib, request, rss_kib};
use ferrohsm_test_support::{Data, ci, spec, wait};

/// How long the deleted keys' last jobs may take to end on a busy machine (a hang guard).
const DEADLINE: Duration = Duration::from_secs(30);

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
        KeyType::MlDsa87,
        KeyType::MlKem768,
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
                        KeyType::Ed25519
                        | KeyType::P256
                        | KeyType::MlDsa44
                        | KeyType::MlDsa65
                        | KeyType::MlDsa87 => Request::Sign {
                            key: key.clone(),
                            data,
                        },
                        KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024 => {
                            Request::Decapsulate {
                                key: key.clone(),
                                // Implicit rejection: a secret all the same.
                                ciphertext: vec![7; 1088],
                                spec: KeySpec {
                                    key_type: KeyType::HmacSha256,
                                    label: format!("k{i}-{transport:?}-{n}").parse().unwrap(),
                                    usage: None,
                                    exportable: false,
                                    session: true,
                                },
                            }
                        }
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
        // And an ML-DSA key's expanded secret (which the scan below looks for).
        let (name, seed, _) = secrets[secrets.len() - types.len()..]
            .iter()
            .find(|(n, ..)| n.starts_with("MlDsa87"))
            .unwrap();
        let seed: [u8; 32] = seed.as_slice().try_into().unwrap();
        let k = libcrux_ml_dsa::ml_dsa_87::generate_key_pair(seed);
        assert!(
            !copies(&regions, &k.signing_key.as_slice()[32..64]).is_empty(),
            "the scanner cannot see {name}'s live expanded key"
        );
        for (_, _, key) in &secrets[secrets.len() - types.len()..] {
            c.block_on(c.client().delete(key)).unwrap();
        }
    }
    // An ML-DSA key (ML-DSA-87: the largest working set) is its seed and the expanded signing key libcrux signs with (which
    // libcrux itself never clears): look for the expanded key's secret parts too, K (bytes
    // 32..64) and the start of s1 (from byte 128).
    let expanded: Vec<_> = secrets
        .iter()
        .filter(|(name, ..)| name.starts_with("MlDsa87"))
        .flat_map(|(name, seed, key)| {
            let seed: [u8; 32] = seed.as_slice().try_into().unwrap();
            let k = libcrux_ml_dsa::ml_dsa_87::generate_key_pair(seed);
            let sk = k.signing_key.as_slice();
            [
                (format!("{name}: K"), sk[32..64].to_vec(), key.clone()),
                (format!("{name}: s1"), sk[128..160].to_vec(), key.clone()),
            ]
        })
        .collect();
    assert_eq!(expanded.len(), 4, "ML-DSA keys over both transports");
    secrets.extend(expanded);
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

/// The secret bytes one request's response carries, checked against what was sent where the
/// test knows it.
fn answered(r: Result<Response, ClientError>, want: Option<&[u8]>, what: &str) -> Vec<u8> {
    match r {
        Ok(Response::Bytes(b)) => {
            if let Some(want) = want {
                assert_eq!(b, want, "{what}: the wrong plaintext");
            }
            b
        }
        Ok(other) => panic!("{what}: answered {}", other.kind()),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Bytes in each secret answer: large enough that a pipelined batch fills the socket and the
/// writer gathers responses into its reused buffer.
const SIZE: usize = 4096;
/// Plaintext bytes per answer to the reader that stops reading: small enough that the writer
/// gathers several into its reused buffer.
const HELD: usize = 16 * 1024;
/// Plaintext bytes of each of the held reader's first answers: 8 of them are more than the
/// kernel's socket buffers hold, so the answers behind them wait in hsmd.
const PROBE: usize = 512 * 1024;
/// Secret requests pipelined at once.
const BATCH: usize = 24;

/// 64 bytes from the middle of an answer: what the scan looks for.
fn middle(b: &[u8]) -> Vec<u8> {
    assert_eq!(b.len(), SIZE, "a secret answer of {} bytes", b.len());
    b[SIZE / 2..SIZE / 2 + 64].to_vec()
}

#[test]
fn no_secret_response_leaves_its_bytes_in_hsmd_memory_after_its_write() {
    if !ci::root("reading hsmd's memory through /proc/PID/mem") {
        return;
    }
    let d = Data::init("alice");
    let daemon = d.start();
    let pid = daemon.pid();
    // A key whose bytes the test knows, so it can encrypt without hsmd: hsmd then sees each
    // plaintext only in the response it writes.
    let key_bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let local = KeyMaterial::import(KeyType::Aes256Gcm, &key_bytes).unwrap();
    let mut secrets: Vec<(String, Vec<u8>, KeyRef)> = Vec::new();
    // The sessions stay open through the scan: a writer's reused buffer lives as long as its
    // session (a closed one's memory is freed, and hsmd wipes every block it frees).
    let mut open = Vec::new();
    for transport in [
        Transport::Tcp,
        Transport::Shm,
        Transport::Tls,
        Transport::TlsPsk,
    ] {
        let c = BlockingClient::connect(
            &ferrohsm_client::profile::Profile::load(&d.profile("alice")).unwrap(),
            Some(transport),
        )
        .unwrap();
        let k = c
            .call(Request::Import {
                spec: spec(KeyType::Aes256Gcm, &format!("known-{transport:?}")),
                material: key_bytes.clone(),
            })
            .unwrap();
        let Response::Key(k) = k else {
            panic!("import answered {}", k.kind())
        };
        let key = KeyRef::Id(k.id);
        // The kinds known to answer with plaintext or random bytes (whatever the description
        // says of them), and every kind the description marks secret: a new one fails until it
        // has a driver.
        let known = [Opcode::Random, Opcode::Decrypt, Opcode::DecryptRaw];
        let marked = Opcode::ALL
            .into_iter()
            .filter(|op| op.kind().secret_response() && !known.contains(op));
        let kinds: Vec<Opcode> = known.into_iter().chain(marked).collect();
        for op in kinds {
            // Distinct plaintexts of SIZE bytes, so each copy found names its request (the scan looks
            // for a window in the middle: a freed block's first bytes are the allocator's).
            let plain = |n: usize| -> Vec<u8> {
                format!("{op:?} over {transport:?}, plaintext number {n:03}. ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(SIZE)
                    .collect()
            };
            let request = |n: usize| -> Request {
                match op {
                    Opcode::Decrypt => Request::Decrypt {
                        key: key.clone(),
                        ciphertext: ops::encrypt(&local, 1, &plain(n), b"").unwrap(),
                        aad: Vec::new(),
                    },
                    // The PKCS#11 module's C_Decrypt sends exactly this.
                    Opcode::DecryptRaw => {
                        let sealed = ops::encrypt_raw(&local, &plain(n), b"").unwrap();
                        Request::DecryptRaw {
                            key: key.clone(),
                            nonce: sealed[..12].to_vec(),
                            ciphertext: sealed[12..].to_vec(),
                            aad: Vec::new(),
                        }
                    }
                    Opcode::Random => Request::Random { len: SIZE as u32 },
                    other => panic!("no driver for the secret kind {other:?}: add one"),
                }
            };
            if op == Opcode::Export {
                // An export's bytes are the key's own, which live in hsmd as long as the key
                // does: the test above exports, deletes and then scans.
                continue;
            }
            let known = |n: usize| (op != Opcode::Random).then(|| plain(n));
            // Alone (inline on the session's thread), then pipelined between other requests, so
            // the writer gathers several responses into one buffer.
            let what = format!("{op:?} over {transport:?}");
            let b = answered(c.call(request(0)), known(0).as_deref(), &what);
            secrets.push((format!("{what}, alone"), middle(&b), key.clone()));
            let mut batch = Vec::new();
            for n in 1..=BATCH {
                batch.push(request(n));
                batch.push(Request::Ping);
            }
            for (i, r) in c.pipeline(batch).into_iter().enumerate() {
                if i % 2 == 1 {
                    assert!(matches!(r, Ok(Response::Done)), "{what}: ping {r:?}");
                    continue;
                }
                let n = i / 2 + 1;
                let b = answered(r, known(n).as_deref(), &format!("{what} #{n}"));
                secrets.push((format!("{what}, pipelined #{n}"), middle(&b), key.clone()));
            }
        }
        open.push(c);
    }
    // A reader that stops reading. Its first answers are too big for the socket buffers, so
    // hsmd's writer blocks on them in user space while the small answers behind them complete
    // and queue; once the reader reads, the writer gathers the small ones into its reused
    // buffer, several per write: the case the wipe of that buffer is for.
    let p = ferrohsm_client::profile::Profile::load(&d.profile("alice")).unwrap();
    let mut held = Tcp::connect(&p.tcp_addrs.as_ref().unwrap()[0]);
    held.login(&p.identity().unwrap());
    let key = KeyRef::Label("known-Tcp".parse().unwrap());
    let plain = |n: usize, size: usize| -> Vec<u8> {
        format!("held reader, plaintext number {n:03} of {size}. ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(size)
            .collect()
    };
    let window = |b: &[u8]| b[b.len() / 2..b.len() / 2 + 64].to_vec();
    // (request id, plaintext): 8 big, then 24 small; 32 in all, the session's window.
    let batch: Vec<(u64, Vec<u8>)> = (0..32)
        .map(|n| (100 + n as u64, plain(n, if n < 8 { PROBE } else { HELD })))
        .collect();
    for (id, text) in &batch {
        let sealed = ops::encrypt_raw(&local, text, b"").unwrap();
        let r = Request::DecryptRaw {
            key: key.clone(),
            nonce: sealed[..12].to_vec(),
            ciphertext: sealed[12..].to_vec(),
            aad: Vec::new(),
        };
        assert!(held.send_bytes(&request(r, *id)), "send #{id}");
    }
    // Positive control: the small answers wait in hsmd behind the big ones, and the scan sees
    // them there.
    let small: Vec<(String, Vec<u8>, KeyRef)> = batch[8..]
        .iter()
        .map(|(id, t)| (format!("held reader #{id}"), window(t), key.clone()))
        .collect();
    wait::until(
        "the scan to see a small answer waiting to be written",
        DEADLINE,
        || leftovers(pid, &small).len() >= 2,
    );
    for n in 0..32 {
        let f = held
            .frame(DEADLINE)
            .unwrap_or_else(|| panic!("no answer #{n} for the held reader"));
        let body = match Response::decode(f.header.opcode, &f.body) {
            Ok(Response::Bytes(b)) => b,
            other => panic!("held reader #{n}: {other:?}"),
        };
        let (id, text) = &batch[(f.header.request_id - 100) as usize];
        assert!(body == *text, "held reader #{id}: the wrong plaintext");
        secrets.push((format!("held reader #{id}"), window(&body), key.clone()));
    }
    assert!(
        secrets.len() >= 4 * 3 * (BATCH + 1),
        "only {} secret responses were made",
        secrets.len()
    );
    let mut last = Vec::new();
    wait::until("no copy of a secret response in hsmd", DEADLINE, || {
        let left = leftovers(pid, &secrets);
        if left != last {
            eprintln!("secret response bytes left in hsmd: {left:#?}");
            last = left;
        }
        last.is_empty()
    });
    drop((open, held));
    drop(daemon);
}
