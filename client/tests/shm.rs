//! The shared-memory transport with real separate processes: several client processes at
//! once, a client killed mid-request, a client of a disallowed uid, and hostile clients that
//! scribble on their ring, try to resize the segment, or stop reading.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep};
use ferrohsm_proto::{FrameReader, KeyType, Request, Response, Status};
use ferrohsm_shm::segment::offsets;
use ferrohsm_shm::{Segment, ShmStream, Side};
use ferrohsm_test_support::connect::{connect_when_freed, refusal, when_freed};
use ferrohsm_test_support::daemon::{EXIT_DEADLINE, output_within};
use ferrohsm_test_support::peer::{Ending, Raw, hello, rt};
use ferrohsm_test_support::{Data, TestServer, bins, ci, label, spec, status, wait};

/// The environment variables that make the ignored `child_process_entry` a client process.
const CHILD: &str = "FERROHSM_TEST_CHILD";
const CHILD_PROFILE: &str = "FERROHSM_TEST_PROFILE";
const CHILD_OTHERS: &str = "FERROHSM_TEST_OTHERS";

/// `EPERM` on Linux (asm-generic/errno-base.h): what a resize forbidden by a seal returns.
const EPERM: i32 = 1;

/// How long anything this file waits for may take on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn shm(p: &Profile) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(p, Some(Transport::Shm))
}

/// This test binary, re-run as a separate client process in `mode`: the ignored
/// `child_process_entry`, selected exactly, with the mode in the environment.
fn child(mode: &str, profile: &Path, others: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "child_process_entry",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD, mode)
    .env(CHILD_PROFILE, profile)
    .env(CHILD_OTHERS, others);
    c
}

/// Not a test: the entry point of the client processes that
/// `several_client_processes_use_shm_at_once` and `a_client_killed_mid_request_frees_its_session`
/// start (this binary, with [`CHILD`] set). libtest can only run it as an ignored test; run by
/// hand (`--ignored`, `--include-ignored`) it fails, saying so, rather than pass having done
/// nothing.
#[test]
#[ignore = "not a test: the client process the shm tests start (with FERROHSM_TEST_CHILD set)"]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD) else {
        panic!(
            "child_process_entry is not a test but the client process the shm tests start \
             ({CHILD} unset): nothing was tested"
        );
    };
    let profile = Profile::load(Path::new(&std::env::var(CHILD_PROFILE).unwrap())).unwrap();
    let others = std::env::var(CHILD_OTHERS).unwrap();
    let hsm = shm(&profile).unwrap();
    let me = profile.name.clone();
    match mode.as_str() {
        "worker" => worker(&hsm, &me, &others),
        "load" => {
            hsm.generate(&"load".parse().unwrap(), KeyType::Ed25519)
                .unwrap();
            let batch = || {
                let reqs = (0..64)
                    .map(|_| Request::Sign {
                        key: label("load"),
                        data: vec![7; 64],
                    })
                    .collect();
                for r in hsm.pipeline(reqs) {
                    r.unwrap();
                }
            };
            // One whole batch served, then say so and keep the pipeline full until killed.
            batch();
            println!("SIGNING");
            std::io::stdout().flush().unwrap();
            loop {
                batch();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Keys of its own, every result checked locally, and no access to anyone else's keys.
fn worker(hsm: &BlockingClient, me: &str, others: &str) {
    let c = hsm.client();
    hsm.block_on(async {
        c.generate_spec(spec(KeyType::Ed25519, &format!("sig-{me}")))
            .await
            .unwrap();
        c.generate_spec(spec(KeyType::ChaCha20Poly1305, &format!("aead-{me}")))
            .await
            .unwrap();
        let (_, public) = c.public_key(&label(&format!("sig-{me}"))).await.unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
        for i in 0..200u32 {
            let msg = format!("{me} message {i}").into_bytes();
            let sig = c
                .sign(&label(&format!("sig-{me}")), msg.clone())
                .await
                .unwrap();
            let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
            vk.verify_strict(&msg, &sig)
                .expect("signature made over shm verifies locally");
            let ct = c
                .encrypt(&label(&format!("aead-{me}")), msg.clone(), vec![])
                .await
                .unwrap();
            let pt = c
                .decrypt(&label(&format!("aead-{me}")), ct, vec![])
                .await
                .unwrap();
            assert_eq!(&*pt, &msg[..]);
        }
        for other in others.split(',').filter(|o| !o.is_empty() && *o != me) {
            let e = c.sign(&label(&format!("sig-{other}")), vec![1]).await;
            assert_eq!(status(e), Status::KeyNotFound, "{me} reached {other}'s key");
        }
        let mine: Vec<String> = c
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.label.to_string())
            .collect();
        assert_eq!(mine, [format!("sig-{me}"), format!("aead-{me}")]);
    });
}

#[test]
fn several_client_processes_use_shm_at_once() {
    let names = ["c0", "c1", "c2", "c3"];
    let srv = TestServer::start(&names);
    let others = names.join(",");
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            let mut c = child("worker", &srv.profile_path(n), &others);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            (
                n,
                std::thread::spawn(move || output_within(&mut c, 2 * DEADLINE)),
            )
        })
        .collect();
    for (n, c) in children {
        let out = c.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "client process {n} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The child ran the worker, not an empty or filtered-out test.
        assert!(
            stdout.contains("test child_process_entry ... ok"),
            "client process {n} did not run the worker: {stdout}"
        );
    }
}

#[test]
fn a_client_killed_mid_request_frees_its_session() {
    let srv = TestServer::start_with(&["victim", "bystander"], |c| {
        c.max_connections_per_client = 1
    });
    let victim = srv.profile("victim");
    let bystander = shm(&srv.profile("bystander")).unwrap();
    bystander
        .generate(&"b".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let mut proc = child("load", &srv.profile_path("victim"), "")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // libtest prints its own lines first; wait (with a deadline) for the child's line saying
    // a whole pipelined batch was served and the next ones are in flight, and keep draining.
    let out = BufReader::new(proc.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if line.trim_end().ends_with("SIGNING") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(DEADLINE).is_err() {
        let _ = proc.kill();
        panic!("the load process never started signing (it exited, or took over {DEADLINE:?})");
    }
    // While it holds victim's only slot, another victim session is refused...
    let (s, m) = refusal(shm(&victim));
    assert_eq!(s, Status::Busy, "{m}");
    proc.kill().unwrap(); // SIGKILL, requests in flight
    proc.wait().unwrap();
    // ...and once the server sees the process gone it ends that session: the slot comes back.
    let again = connect_when_freed(&victim, Transport::Shm, DEADLINE);
    again.ping().unwrap();
    let sig = bystander.sign(&label("b"), b"m").unwrap();
    bystander.verify(&label("b"), b"m", &sig).unwrap();
}

/// The server hangs up the set-up socket within `within` (it ended the session), or not.
fn set_up_socket_ending(
    s: tokio::net::UnixStream,
    rt: &tokio::runtime::Runtime,
    within: Duration,
) -> Ending {
    let mut raw = Raw {
        s: Box::new(s),
        frames: FrameReader::new(1 << 16),
    };
    rt.block_on(raw.ending(within))
}

/// A second mapping of a session's segment, to watch what both sides publish in it.
fn view(seg: &Segment) -> Segment {
    Segment::open(seg.fd().try_clone_to_owned().unwrap()).unwrap()
}

#[test]
fn hostile_shm_clients_end_only_their_own_session() {
    let srv = TestServer::start(&["alice", "bob"]);
    let alice = srv.profile("alice");
    let id = alice.identity().unwrap();
    let socket = alice.shm_socket.clone().unwrap();
    let bob = shm(&srv.profile("bob")).unwrap();
    bob.generate(&"k".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let rt = rt();
    let set_up = || {
        rt.block_on(ferrohsm_client::connect::shm::set_up(&socket, &id))
            .unwrap()
    };
    let bell = |seg: &Segment| ferrohsm_shm::doorbell::ring(seg.bells(Side::Client).1);

    // 1. Impossible indices: a head 2^64-1 bytes ahead of the server's tail.
    let (s, seg) = set_up();
    seg.write_bytes(offsets::REQ_HEAD, &u64::MAX.to_ne_bytes());
    bell(&seg);
    assert_eq!(
        set_up_socket_ending(s, &rt, DEADLINE),
        Ending::Closed,
        "corrupt indices did not end the session"
    );

    // 2. Valid indices, garbage bytes: the protocol decoder refuses them.
    let (s, seg) = set_up();
    seg.write_bytes(offsets::REQ_DATA, b"GET / HTTP/1.1\r\nHost: hsm\r\n\r\n...");
    seg.write_bytes(offsets::REQ_HEAD, &32u64.to_ne_bytes());
    bell(&seg);
    assert_eq!(
        set_up_socket_ending(s, &rt, DEADLINE),
        Ending::Closed,
        "garbage frames did not end the session"
    );

    // 3. Resizing the segment is refused by the seals, both ways.
    let (s3, seg) = set_up();
    let file = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    let size = file.metadata().unwrap().len();
    // Linux refuses a resize that a seal forbids with EPERM (mm/shmem.c, shmem_setattr).
    for (to, what) in [(64, "shrinking"), (1 << 30, "growing")] {
        assert_ne!(to, size, "{what} to the segment's own size changes nothing");
        let e = file
            .set_len(to)
            .expect_err(&format!("{what} a sealed memfd must fail"));
        assert_eq!(e.raw_os_error(), Some(EPERM), "{what} a sealed memfd: {e}");
    }
    assert_eq!(
        file.metadata().unwrap().len(),
        size,
        "the segment's size changed"
    );

    // 4. Ringing both doorbells without writing: a wake-up each, nothing else. The server
    //    reads nothing, writes nothing, keeps the session, and answers the first real frame.
    for _ in 0..20_000 {
        bell(&seg);
        ferrohsm_shm::doorbell::ring(seg.bells(Side::Client).0);
    }
    let mut s3 = Raw {
        s: Box::new(s3),
        frames: FrameReader::new(1 << 16),
    };
    assert_eq!(
        rt.block_on(s3.ending(Duration::from_millis(300))),
        Ending::Silent,
        "the doorbell flood ended the session"
    );
    assert_eq!(
        ferrohsm_shm::stream::start_positions(&seg, Side::Server),
        (0, 0),
        "the server consumed or produced ring bytes without a frame being written"
    );
    let (rd, wr, _closer) =
        ShmStream::start(seg, Side::Client, ferrohsm_shm::Waiting::InTask).unwrap();
    let mut rings = Raw {
        s: Box::new(tokio::io::join(rd, wr)),
        frames: FrameReader::new(1 << 16),
    };
    let mut hs = ClientHandshake::new("alice");
    let welcome = rt.block_on(async {
        assert!(rings.send(&hs.start().encode()).await);
        rings.frame(DEADLINE).await
    });
    let welcome = welcome.expect("no answer to a hello after the doorbell flood");
    let step = hs.on_frame(&welcome, |_| Err("no challenge".into()));
    assert!(
        matches!(step, Ok(ClientStep::Done(_))),
        "the hello after the doorbell flood got no welcome: {step:?}"
    );

    // 5. A client that sends requests but never reads the responses: the response ring fills,
    //    the server stops taking requests, and our writes stall with the request ring full.
    //    Nobody else notices.
    let (_s5, seg5) = set_up();
    let watch = view(&seg5);
    let (_rd, mut wr, _closer) =
        ShmStream::start(seg5, Side::Client, ferrohsm_shm::Waiting::Watcher).unwrap();
    let frame = Request::Random { len: 65536 }.to_frame(2).encode();
    // Stalled: no room for another request, and none for another 64 KiB response.
    let both_rings_full = || {
        let (resp, req) = watch.rings(Side::Client);
        let head = ferrohsm_shm::stream::start_positions(&watch, Side::Client).1;
        req.writable(head).unwrap() < frame.len() && resp.readable(0).unwrap() + 65536 > resp.size()
    };
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&hello("alice").to_frame(1).encode())
            .await
            .unwrap();
        // 100,000 requests are ~3 MB, far more than the 256 KiB request ring: they can only
        // all go out if the server keeps taking requests it cannot answer.
        let flood = async {
            for _ in 0..100_000 {
                wr.write_all(&frame).await.unwrap();
            }
        };
        let stalled = async {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while !both_rings_full() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the rings never filled within {DEADLINE:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = flood => panic!("the server kept reading from a client that never reads"),
            _ = stalled => {}
        }
    });

    // Through all of it, bob (and a well-behaved alice) are served.
    let sig = bob.sign(&label("k"), b"still fine").unwrap();
    bob.verify(&label("k"), b"still fine", &sig).unwrap();
    shm(&alice).unwrap().ping().unwrap();
}

/// Copies a file and makes it readable by everyone (a test key, for the other uid).
fn world_readable(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_client_of_a_disallowed_uid_is_refused_by_the_uid_check() {
    use std::os::unix::fs::PermissionsExt as _;
    if !ci::root("the uid check needs root to run a client as another uid")
        || !ci::tool("setpriv", "util-linux")
    {
        return;
    }
    // hsmd init allows the uid that ran it (root) for alice.
    let data = Data::init("alice");
    data.set("shm", "mode", "\"0666\"");
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    // Every uid can reach the socket and alice's credentials, so that only the server's uid
    // check can refuse.
    mode(data.tmp(), 0o755);
    mode(&data.dir, 0o755);
    let open = data.path("open");
    std::fs::create_dir(&open).unwrap();
    mode(&open, 0o755);
    world_readable(&data.dir.join("clients/alice.key"), &open.join("alice.key"));
    let profile = open.join("alice.toml");
    std::fs::write(
        &profile,
        format!(
            "name = \"alice\"\nauth_key = \"alice.key\"\n[shm]\nsocket = {:?}\n",
            data.dir.join("hsmd.sock")
        ),
    )
    .unwrap();
    mode(&profile, 0o644);
    let hsmctl = bins::hsmctl();
    let ping = |extra: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(extra)
            .arg(&hsmctl)
            .arg("--profile")
            .arg(&profile)
            .args(["--transport", "shm", "ping"]);
        output_within(&mut c, EXIT_DEADLINE)
    };
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];

    let daemon = data.start();
    // As root (uid 0, the uid that ran init): allowed.
    assert_eq!(ferrohsm_test_support::ok(&ping(&[])).trim(), "ok");
    // As nobody: refused by the server, with a readable status naming the uid.
    let refused = ping(&nobody);
    let err = String::from_utf8_lossy(&refused.stderr);
    ferrohsm_test_support::status::assert_exit(&refused, 3);
    assert!(
        err.contains("peer_not_allowed (11)") && err.contains("uid 65534"),
        "{err}"
    );
    wait::until("hsmd to log the refused uid", DEADLINE, || {
        daemon.log().contains("peer uid not allowed")
    });
    assert!(daemon.log().contains("65534"), "{}", daemon.log());
    assert_eq!(daemon.terminate().code(), Some(0));

    // The same files and socket with uid 65534 allowed: served. So the refusal above was
    // the uid check and nothing else (permissions, paths).
    data.set("clients.alice", "allowed_uids", "[0, 65534]");
    let _daemon = data.start();
    assert_eq!(ferrohsm_test_support::ok(&ping(&nobody)).trim(), "ok");
}

#[test]
fn dropping_a_client_ends_its_shm_session() {
    let srv = TestServer::start_with(&["alice"], |c| c.max_connections_per_client = 1);
    let alice = srv.profile("alice");
    for _ in 0..20 {
        // Each connection must be gone from the server before the next one fits.
        let c = connect_when_freed(&alice, Transport::Shm, DEADLINE);
        c.ping().unwrap();
    }
}

#[test]
fn the_shm_set_up_socket_has_the_same_connection_limit_and_readable_refusal() {
    let srv = TestServer::start_with(&["alice"], |c| c.max_connections = 2);
    let p = srv.profile("alice");
    let (a, b) = (shm(&p).unwrap(), shm(&p).unwrap());
    // Over the listener's limit: a readable `busy`, not a silent close or a hang.
    let (s, m) = refusal(shm(&p));
    assert_eq!(s, Status::Busy, "{m}");
    assert!(m.contains("too many connections"), "{m}");
    // The limit is per listener: TCP still has room.
    let tcp = BlockingClient::connect(&p, Some(Transport::Tcp)).unwrap();
    tcp.ping().unwrap();
    a.ping().unwrap();
    // A session that ends gives its slot back.
    drop(b);
    connect_when_freed(&p, Transport::Shm, DEADLINE)
        .ping()
        .unwrap();
}

#[test]
fn the_synchronous_shm_client() {
    use ferrohsm_client::connect::shm_sync::SyncShm;
    let mut srv = TestServer::start_with(&["alice"], |c| c.max_connections_per_client = 3);
    let alice = srv.profile("alice");
    // Calls give up after this long; every answer below must come well before, so an error
    // that names this timeout is a hang.
    let t = DEADLINE;
    let mut c = SyncShm::connect(&alice, t).unwrap();
    assert!(c.welcome().session_id > 0);
    for _ in 0..500 {
        assert_eq!(c.call(Request::Ping).unwrap(), Response::Done);
    }
    assert!(matches!(
        c.call(Request::Generate(spec(KeyType::P256, "k"))).unwrap(),
        Response::Key(_)
    ));
    // Frames much larger than the rings: both directions wrap many times and wait for room.
    c.call(Request::Generate(spec(KeyType::Aes256Gcm, "a")))
        .unwrap();
    let big: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    let Response::Bytes(sealed) = c
        .call(Request::Encrypt {
            key: label("a"),
            plaintext: big.clone(),
            aad: Vec::new(),
        })
        .unwrap()
    else {
        panic!("not bytes")
    };
    let Response::Bytes(back) = c
        .call(Request::Decrypt {
            key: label("a"),
            ciphertext: sealed,
            aad: Vec::new(),
        })
        .unwrap()
    else {
        panic!("not bytes")
    };
    assert_eq!(back, big);
    // An error status is the server's, and the session goes on.
    assert_eq!(
        status(c.call(Request::Info(label("nope")))),
        Status::KeyNotFound
    );
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Done);
    // Two threads, each with its own session, signing at once: every signature verifies.
    std::thread::scope(|s| {
        for _ in 0..2 {
            let alice = &alice;
            s.spawn(move || {
                let mut c = SyncShm::connect(alice, t).unwrap();
                for i in 0..300u32 {
                    let data = i.to_be_bytes().to_vec();
                    let Response::Bytes(sig) = c
                        .call(Request::Sign {
                            key: label("k"),
                            data: data.clone(),
                        })
                        .unwrap()
                    else {
                        panic!("not bytes")
                    };
                    let ok = c.call(Request::Verify {
                        key: label("k"),
                        data,
                        signature: sig,
                    });
                    assert_eq!(ok.unwrap(), Response::Done);
                }
            });
        }
    });
    // Dropping a session ends it on the server: all three places come back.
    drop(c);
    let mut again = Vec::new();
    while again.len() < 3 {
        again.push(when_freed("the dropped sessions to end", DEADLINE, || {
            SyncShm::connect(&alice, t)
        }));
    }
    let mut c = again.pop().unwrap();
    // hsmd gone: the client sees the socket close, rather than waiting out its timeout.
    srv.handle.take().unwrap().shutdown().unwrap();
    match c.call(Request::Ping) {
        // Sent before the close was seen (its answer lost), or refused as the connection
        // had already ended: either way promptly, and naming the close.
        Err(ClientError::Connection(m) | ClientError::ConnectionLost(m)) => {
            assert!(m.contains("the server closed the connection"), "{m}")
        }
        other => panic!("expected the closed connection, got {other:?}"),
    }
}
