//! Harness over the whole server front end: a real server (real store, real key manager and
//! crypto pool, every session actor) fed each input as the byte stream of one in-memory
//! connection. With the first byte odd, the connection logs in as a real client first, so the
//! input reaches every authenticated request; even, the input is all a stranger sends.
//!
//! Shared by the AFL target `frontend` and the regression test in
//! `server/tests/fuzz_corpus.rs`. A finding is a panic: an `internal` status in any answer, a
//! connection that does not close within seconds after the input ends, or a crash.
#![allow(dead_code)]

use std::time::Duration;

use ferrohsm_proto::handshake::{ClientHandshake, ClientStep};
use ferrohsm_proto::message::decode_error;
use ferrohsm_proto::{FrameReader, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A running server and what a client needs to log in.
pub struct Server {
    _dir: tempfile::TempDir,
    handle: ferrohsm_server::ServerHandle,
    key: ed25519_dalek::SigningKey,
    rt: tokio::runtime::Runtime,
}

impl Server {
    /// `hsmd init` for client `alice` in a temporary directory (on tmpfs when there is one:
    /// fsync there is free), then the server, in this process.
    pub fn start() -> Server {
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let report = ferrohsm_server::init::init(&ferrohsm_server::init::InitOptions {
            dir: dir.path().to_path_buf(),
            clients: vec!["alice".into()],
            tcp: "127.0.0.1:0".parse().expect("addr"),
            tls: "127.0.0.1:0".parse().expect("addr"),
            tls_psk: "127.0.0.1:0".parse().expect("addr"),
            shm_socket: None,
            force: false,
            passphrase: None,
            store_url: None,
            node: None,
            join: None,
        })
        .expect("hsmd init");
        let config = ferrohsm_server::Config::load(&report.config).expect("config");
        let handle = ferrohsm_server::start(config).expect("server starts");
        let profile =
            ferrohsm_client::profile::Profile::load(&dir.path().join("clients/alice.toml"))
                .expect("profile");
        let key = profile
            .identity()
            .expect("identity")
            .auth_key
            .expect("auth key");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Server {
            _dir: dir,
            handle,
            key,
            rt,
        }
    }

    /// One connection: (login,) the input, the end of input; every answer is read until the
    /// server closes. How many frames the server answered with (login excluded).
    pub fn feed(&self, data: &[u8]) -> usize {
        let Some((&mode, input)) = data.split_first() else {
            return 0;
        };
        let connector = self
            .handle
            .bound
            .memory
            .as_ref()
            .expect("in-memory connections");
        // Each connection is closed before the next is made: the hand-over queue never fills.
        let mut s = connector
            .connect()
            .expect("the server takes an in-memory connection");
        self.rt.block_on(async {
            let mut frames = FrameReader::new(4 << 20);
            if mode & 1 == 1 && !self.login(&mut s, &mut frames).await {
                panic!("a real client could not log in");
            }
            // Written from a task while answers are read, so a full pipe cannot deadlock.
            let (mut rd, mut wr) = tokio::io::split(s);
            let input = input.to_vec();
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(&input).await;
                let _ = wr.shutdown().await;
            });
            let mut answers = 0;
            let read = async {
                loop {
                    while let Ok(Some(f)) = frames.next_frame() {
                        answers += 1;
                        if f.header.is_error()
                            && let Ok(b) = decode_error(f.header.opcode, &f.body)
                        {
                            assert_ne!(
                                b.status(),
                                Some(Status::Internal),
                                "internal error answering opcode {}: {}",
                                f.header.opcode,
                                b.message
                            );
                        }
                    }
                    match rd.read_buf(frames.buffer()).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .is_err()
            {
                panic!("the connection did not close within 10 s of the end of input");
            }
            let _ = writer.await;
            answers
        })
    }

    async fn login(&self, s: &mut DuplexStream, frames: &mut FrameReader) -> bool {
        let mut hs = ClientHandshake::new("alice");
        let mut out = hs.start();
        loop {
            if s.write_all(&out.encode()).await.is_err() {
                return false;
            }
            let f = loop {
                if let Ok(Some(f)) = frames.next_frame() {
                    break f;
                }
                match s.read_buf(frames.buffer()).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            };
            let sign = |t: &[u8]| {
                Ok(ed25519_dalek::Signer::sign(&self.key, t)
                    .to_bytes()
                    .to_vec())
            };
            match hs.on_frame(&f, sign) {
                Ok(ClientStep::Send(next)) => out = next,
                Ok(ClientStep::Done(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}
