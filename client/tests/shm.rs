//! The shared-memory transport with real separate processes: several client processes at
//! once, a client killed mid-request, a client of a disallowed uid, and hostile clients that
//! scribble on their ring, try to resize the segment, or stop reading.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "support/daemon.rs"]
mod daemon;
mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request, Status};
use ferrohsm_shm::segment::offsets;
use ferrohsm_shm::{ShmStream, Side};
use support::TestServer;

const CHILD: &str = "FERROHSM_TEST_CHILD";
const CHILD_PROFILE: &str = "FERROHSM_TEST_PROFILE";
const CHILD_OTHERS: &str = "FERROHSM_TEST_OTHERS";

fn shm(p: &Profile) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(p, Some(Transport::Shm))
}

fn label(s: &str) -> KeyRef {
    KeyRef::Label(s.parse().unwrap())
}

/// This test binary, re-run as a separate client process in `mode`.
fn child(mode: &str, profile: &Path, others: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
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

/// Entry point of the child processes; a no-op in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
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
            println!("READY");
            std::io::stdout().flush().unwrap();
            loop {
                let reqs = (0..64)
                    .map(|_| Request::Sign {
                        key: label("load"),
                        data: vec![7; 64],
                    })
                    .collect();
                for r in hsm.pipeline(reqs) {
                    r.unwrap();
                }
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Keys of its own, every result checked locally, and no access to anyone else's keys.
fn worker(hsm: &BlockingClient, me: &str, others: &str) {
    let c = hsm.client();
    hsm.block_on(async {
        let spec = |t, l: &str| KeySpec {
            key_type: t,
            label: l.parse().unwrap(),
            usage: None,
            exportable: false,
            session: false,
        };
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
            let e = c
                .sign(&label(&format!("sig-{other}")), vec![1])
                .await
                .unwrap_err();
            assert_eq!(
                e.status(),
                Some(Status::KeyNotFound),
                "{me} reached {other}'s key"
            );
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
            child("worker", &srv.profile_path(n), &others)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, c) in names.iter().zip(children) {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "client process {n} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
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
    // libtest prints its own lines first; wait for ours, then keep draining the pipe.
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    let mut line = String::new();
    while !line.trim_end().ends_with("READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "load process exited early"
        );
    }
    std::thread::spawn(move || for _ in out.lines() {});
    std::thread::sleep(Duration::from_millis(200)); // mid-stream: requests in flight
    // While it holds victim's only slot, another victim session is refused...
    match shm(&victim) {
        Err(ClientError::Auth(b)) => assert_eq!(b.status(), Some(Status::Busy)),
        other => panic!("expected busy, got {other:?}"),
    }
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
    // ...and within a second of the kill the server has ended that session.
    let t = Instant::now();
    let again = loop {
        match shm(&victim) {
            Ok(c) => break c,
            Err(_) if t.elapsed() < Duration::from_secs(1) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("session of the killed client not freed after 1 s: {e}"),
        }
    };
    again.ping().unwrap();
    let sig = bystander.sign(&label("b"), b"m").unwrap();
    bystander.verify(&label("b"), b"m", &sig).unwrap();
}

/// Waits until the server closes the set-up socket (it ended the session).
fn server_hangs_up(s: &mut tokio::net::UnixStream, rt: &tokio::runtime::Runtime) -> bool {
    use tokio::io::AsyncReadExt;
    rt.block_on(async {
        let mut b = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
        })
        .await
        .is_ok()
    })
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set_up = || {
        rt.block_on(ferrohsm_client::connect::shm::set_up(&socket, &id))
            .unwrap()
    };
    let bell =
        |seg: &ferrohsm_shm::Segment| ferrohsm_shm::doorbell::ring(seg.bells(Side::Client).1);

    // 1. Impossible indices: a head 2^64-1 bytes ahead of the server's tail.
    let (mut s, seg) = set_up();
    seg.write_bytes(offsets::REQ_HEAD, &u64::MAX.to_ne_bytes());
    bell(&seg);
    assert!(
        server_hangs_up(&mut s, &rt),
        "corrupt indices did not end the session"
    );

    // 2. Valid indices, garbage bytes: the protocol decoder refuses them.
    let (mut s, seg) = set_up();
    seg.write_bytes(offsets::REQ_DATA, b"GET / HTTP/1.1\r\nHost: hsm\r\n\r\n...");
    seg.write_bytes(offsets::REQ_HEAD, &32u64.to_ne_bytes());
    bell(&seg);
    assert!(
        server_hangs_up(&mut s, &rt),
        "garbage frames did not end the session"
    );

    // 3. Resizing the segment is refused by the seals, both ways.
    let (_s, seg) = set_up();
    let file = std::fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    assert!(
        file.set_len(64).is_err(),
        "shrinking a sealed memfd must fail"
    );
    assert!(
        file.set_len(1 << 30).is_err(),
        "growing a sealed memfd must fail"
    );

    // 4. Ringing the doorbell without writing: a wake-up each, nothing else.
    for _ in 0..20_000 {
        bell(&seg);
        ferrohsm_shm::doorbell::ring(seg.bells(Side::Client).0);
    }

    // 5. A client that sends requests but never reads the responses: the response ring fills,
    //    the server stops reading it, and our writes stall. Nobody else notices.
    let (_s5, seg5) = set_up();
    let (_rd, mut wr, _closer) =
        ShmStream::start(seg5, Side::Client, ferrohsm_shm::Waiting::Watcher).unwrap();
    let hello = Request::Hello(ferrohsm_proto::handshake::Hello {
        version: ferrohsm_proto::PROTOCOL_VERSION,
        client: "alice".into(),
    });
    let stalled = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&hello.to_frame(1).encode()).await.unwrap();
        let frame = Request::Random { len: 65536 }.to_frame(2).encode();
        tokio::time::timeout(Duration::from_secs(3), async {
            for _ in 0..100_000 {
                wr.write_all(&frame).await.unwrap();
            }
        })
        .await
        .is_err()
    });
    assert!(
        stalled,
        "the server kept reading from a client that never reads"
    );

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
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !is_root || !setpriv {
        assert!(
            std::env::var("CI").as_deref() != Ok("true") || !is_root,
            "setpriv missing under CI=true"
        );
        eprintln!("SKIPPED: the uid check needs root and setpriv to run a client as another uid");
        return;
    }
    // A directory every uid can traverse, so that only the server's uid check can refuse.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("hsm");
    let hsmd = PathBuf::from(env!("CARGO_BIN_EXE_hsmctl")).with_file_name("hsmd");
    let open = tmp.path().join("open");
    let prepare = |dir: &Path| {
        let config = dir.join("hsmd.toml");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("mode = \"0660\"", "mode = \"0666\"");
        std::fs::write(&config, text).unwrap();
        // A copy of alice's profile and key that uid 65534 can read.
        let _ = std::fs::remove_dir_all(&open);
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        world_readable(&dir.join("clients/alice.key"), &open.join("alice.key"));
        let profile = format!(
            "name = \"alice\"\nauth_key = \"alice.key\"\n[shm]\nsocket = {:?}\n",
            dir.join("hsmd.sock")
        );
        std::fs::write(open.join("alice.toml"), profile).unwrap();
        std::fs::set_permissions(
            open.join("alice.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        for d in [dir, &dir.join("clients")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    };
    let log = tmp.path().join("hsmd.log");
    let (_daemon, _, _) =
        daemon::Daemon::init_and_start(&hsmd, tmp.path(), &dir, "alice", &prepare, Some(&log));
    let hsmctl = env!("CARGO_BIN_EXE_hsmctl");
    let ping = |extra: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(extra).args([
            hsmctl,
            "--profile",
            open.join("alice.toml").to_str().unwrap(),
            "--transport",
            "shm",
            "ping",
        ]);
        c.output().unwrap()
    };
    // As root (uid 0, the uid that ran init): allowed.
    let ok = ping(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // As nobody: the socket and key are reachable, so the refusal can only be the uid check.
    let refused = ping(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{err}");
    assert!(
        err.contains("peer_not_allowed (11)") && err.contains("uid 65534"),
        "{err}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("peer uid not allowed") && logged.contains("65534"),
        "{logged}"
    );
}

#[test]
fn dropping_a_client_ends_its_shm_session() {
    let srv = TestServer::start_with(&["alice"], |c| c.max_connections_per_client = 1);
    let alice = srv.profile("alice");
    for _ in 0..20 {
        // Each connection must be gone from the server before the next one fits.
        let t = Instant::now();
        let c = loop {
            match shm(&alice) {
                Ok(c) => break c,
                Err(_) if t.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("previous session still open after 2 s: {e}"),
            }
        };
        c.ping().unwrap();
    }
}

#[test]
fn the_shm_set_up_socket_has_the_same_connection_limit_and_readable_refusal() {
    let srv = TestServer::start_with(&["alice"], |c| c.max_connections = 2);
    let p = srv.profile("alice");
    let (a, b) = (shm(&p).unwrap(), shm(&p).unwrap());
    // Over the listener's limit: a readable `busy`, not a silent close or a hang.
    match shm(&p) {
        Err(ClientError::Auth(e)) => {
            assert_eq!(e.status(), Some(Status::Busy));
            assert!(e.message.contains("too many connections"), "{}", e.message);
        }
        other => panic!("expected busy, got {other:?}"),
    }
    // The limit is per listener: TCP still has room.
    let tcp = BlockingClient::connect(&p, Some(Transport::Tcp)).unwrap();
    tcp.ping().unwrap();
    a.ping().unwrap();
    // A session that ends gives its slot back.
    drop(b);
    let t = Instant::now();
    let c = loop {
        match shm(&p) {
            Ok(c) => break c,
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the freed slot was not reused: {e}"),
        }
    };
    c.ping().unwrap();
}

#[test]
fn the_synchronous_shm_client() {
    use ferrohsm_client::connect::shm_sync::SyncShm;
    use ferrohsm_proto::Response;
    let mut srv = TestServer::start_with(&["alice"], |c| c.max_connections_per_client = 3);
    let alice = srv.profile("alice");
    let t = Duration::from_secs(2);
    let mut c = SyncShm::connect(&alice, t).unwrap();
    assert!(c.welcome().session_id > 0);
    for _ in 0..500 {
        assert_eq!(c.call(Request::Ping).unwrap(), Response::Done);
    }
    let spec = KeySpec {
        key_type: KeyType::P256,
        label: "k".parse().unwrap(),
        usage: None,
        exportable: false,
        session: false,
    };
    assert!(matches!(
        c.call(Request::Generate(spec)).unwrap(),
        Response::Key(_)
    ));
    // Frames much larger than the rings: both directions wrap many times and wait for room.
    c.call(Request::Generate(KeySpec {
        key_type: KeyType::Aes256Gcm,
        label: "a".parse().unwrap(),
        usage: None,
        exportable: false,
        session: false,
    }))
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
    let e = c.call(Request::Info(label("nope"))).unwrap_err();
    assert_eq!(e.status(), Some(Status::KeyNotFound));
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
    let started = Instant::now();
    let mut again = Vec::new();
    while again.len() < 3 {
        match SyncShm::connect(&alice, t) {
            Ok(c) => again.push(c),
            Err(_) if started.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("a dropped session is still open after 2 s: {e}"),
        }
    }
    let mut c = again.pop().unwrap();
    // hsmd gone: an error soon, not a hang.
    srv.handle.take().unwrap().shutdown().unwrap();
    let t0 = Instant::now();
    let e = c.call(Request::Ping).unwrap_err();
    assert!(matches!(e, ClientError::Connection(_)), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}
