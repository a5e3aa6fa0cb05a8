//! Hostile-peer helpers over every transport: raw streams (before any frame), a login done by
//! hand with the protocol's state machine, reading one frame with a deadline, and the memory
//! of a real `hsmd` process.
#![allow(dead_code)]

use std::time::Duration;

use ferrohsm_client::connect::{RawStream, open_stream};
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep};
use ferrohsm_proto::message::decode_error;
use ferrohsm_proto::{Frame, FrameReader, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every transport.
pub const ALL: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::TlsPsk,
    Transport::Shm,
];

/// A raw stream and what was read past the last frame.
pub struct Raw {
    pub s: Box<dyn RawStream>,
    pub frames: FrameReader,
}

impl Raw {
    /// The transport's stream, nothing sent yet (for shm: the set-up socket).
    pub async fn open(p: &Profile, t: Transport) -> Raw {
        Raw {
            s: open_stream(p, t).await.expect("open stream"),
            frames: FrameReader::new(4 << 20),
        }
    }

    /// An authenticated session's raw stream on `t`: for TCP and TLS the login by hand on the
    /// stream; for shm the set-up socket's login, then the hello on the rings.
    pub async fn session(p: &Profile, t: Transport) -> Raw {
        if t != Transport::Shm {
            return Raw::login(p, t).await;
        }
        let socket = p.shm_socket.as_ref().expect("shm socket");
        let id = p.identity().expect("identity");
        let (sock, seg) = ferrohsm_client::connect::shm::set_up(socket, &id)
            .await
            .expect("shm set-up");
        let (rd, wr, closer) = ferrohsm_shm::ShmStream::start(
            seg,
            ferrohsm_shm::Side::Client,
            ferrohsm_shm::Waiting::InTask,
        )
        .expect("rings");
        // The server ends a session by closing the set-up socket: end the rings with it, as
        // the client library does, so a close shows as the end of the stream.
        let mut sock = sock;
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            tokio::select! {
                _ = async { while matches!(sock.read(&mut b).await, Ok(n) if n > 0) {} } => closer.close(),
                _ = closer.closed() => {}
            }
        });
        let mut raw = Raw {
            s: Box::new(tokio::io::join(rd, wr)),
            frames: FrameReader::new(4 << 20),
        };
        let mut hs = ClientHandshake::new(&id.name);
        assert!(raw.send(&hs.start().encode()).await);
        let f = raw.frame(Duration::from_secs(5)).await.expect("welcome");
        match hs.on_frame(&f, |_| Err("no challenge expected on the rings".into())) {
            Ok(ClientStep::Done(_)) => raw,
            other => panic!("shm session did not open: {other:?}"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok() && self.s.flush().await.is_ok()
    }

    /// The next frame within `within`; `None` on close or timeout.
    pub async fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(f)) = self.frames.next_frame() {
                return Some(f);
            }
            let n = tokio::time::timeout_at(deadline, self.s.read_buf(self.frames.buffer())).await;
            match n {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Whether the server closes the stream within `within` (frames before it are skipped).
    pub async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut b = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Hello and proof by hand (TCP and shm prove with the auth key; TLS by the credential).
    /// For shm this authenticates the set-up socket only.
    pub async fn login(p: &Profile, t: Transport) -> Raw {
        let mut raw = Raw::open(p, t).await;
        let id = p.identity().expect("identity");
        let mut hs = ClientHandshake::new(&id.name);
        let mut out = hs.start();
        loop {
            assert!(raw.send(&out.encode()).await, "send during login");
            let f = raw
                .frame(Duration::from_secs(5))
                .await
                .expect("login reply");
            let step = hs
                .on_frame(&f, |t| {
                    let key = id.auth_key.as_ref().expect("auth key");
                    Ok(ed25519_dalek::Signer::sign(key, t).to_bytes().to_vec())
                })
                .expect("login step");
            match step {
                ClientStep::Send(next) => out = next,
                ClientStep::Done(_) => return raw,
            }
        }
    }
}

/// The status of an error frame.
pub fn status_of(f: &Frame) -> Status {
    assert!(f.header.is_error(), "expected an error frame, got {f:?}");
    decode_error(f.header.opcode, &f.body)
        .expect("error body")
        .status()
        .expect("known status")
}

/// The message of an error frame.
pub fn message_of(f: &Frame) -> String {
    decode_error(f.header.opcode, &f.body)
        .expect("error body")
        .message
}

/// A frame header by hand: magic, version, flags, opcode, request id, body length.
pub fn header(opcode: u16, request_id: u64, body_len: u32) -> Vec<u8> {
    let mut h = Frame {
        header: ferrohsm_proto::Header {
            opcode,
            request_id,
            flags: 0,
            body_len: 0,
        },
        body: Vec::new(),
    }
    .encode();
    h[16..20].copy_from_slice(&body_len.to_le_bytes());
    h
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A tokio runtime for a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
