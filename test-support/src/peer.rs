//! Peers by hand: raw streams on every transport before any frame, a login done with the
//! protocol's own state machine, frames read with a deadline, and [`Ending`], which tells a
//! connection the server closed from one that merely went quiet.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferrohsm_client::connect::{RawStream, open_stream};
use ferrohsm_client::profile::{Identity, Profile, Transport};
use ferrohsm_proto::handshake::{ClientHandshake, ClientStep, Hello};
use ferrohsm_proto::{Frame, FrameReader, PROTOCOL_VERSION, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::status::{message_of, status_of};

/// Every transport.
pub const ALL: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::TlsPsk,
    Transport::Shm,
];

/// Every transport, as `hsmctl --transport` and the profiles name it.
pub const TRANSPORT_NAMES: [&str; 4] = ["tcp", "tls", "tls-psk", "shm"];

/// How a wait for the server to close a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server closed the connection (end of stream, or reset).
    Closed,
    /// The connection was still open, and quiet, when the wait ran out.
    Silent,
}

/// A raw stream and what was read past the last frame.
pub struct Raw {
    pub s: Box<dyn RawStream>,
    pub frames: FrameReader,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Raw(..)")
    }
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
        let f = raw.frame(Duration::from_secs(10)).await.expect("welcome");
        match hs.on_frame(&f, |_| Err("no challenge expected on the rings".into())) {
            Ok(ClientStep::Done(_)) => raw,
            other => panic!("shm session did not open: {other:?}"),
        }
    }

    /// Writes and flushes; false if the stream is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok() && self.s.flush().await.is_ok()
    }

    /// The next frame within `within`; `None` on close or timeout.
    pub async fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.frames.next_frame() {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed frame: {e}"),
            }
            let n = tokio::time::timeout_at(deadline, self.s.read_buf(self.frames.buffer())).await;
            match n {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// How the stream ends within `within` (frames before the end are skipped).
    pub async fn ending(&mut self, within: Duration) -> Ending {
        let deadline = tokio::time::Instant::now() + within;
        let mut b = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ending::Closed,
                Ok(Ok(_)) => {}
                Err(_) => return Ending::Silent,
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
                .frame(Duration::from_secs(10))
                .await
                .expect("login reply");
            let step = hs.on_frame(&f, |t| Ok(prove(&id, t))).expect("login step");
            match step {
                ClientStep::Send(next) => out = next,
                ClientStep::Done(_) => return raw,
            }
        }
    }
}

/// The signature over a login challenge with `id`'s auth key.
pub fn prove(id: &Identity, challenge: &[u8]) -> Vec<u8> {
    let key = id.auth_key.as_ref().expect("auth key");
    ed25519_dalek::Signer::sign(key, challenge)
        .to_bytes()
        .to_vec()
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

/// An encoded request frame.
pub fn request(r: Request, id: u64) -> Vec<u8> {
    r.to_frame(id).encode()
}

/// A hello for `name` at this protocol version.
pub fn hello(name: &str) -> Request {
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: name.into(),
    })
}

/// A tokio runtime for a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A blocking TCP connection with the bytes read past its last frame.
#[derive(Debug)]
pub struct Tcp {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Tcp {
    /// Connects to `addr`.
    pub fn connect(addr: impl std::net::ToSocketAddrs) -> Tcp {
        Tcp {
            s: TcpStream::connect(addr).expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Sends a frame; false if the stream is gone.
    pub fn send(&mut self, f: &Frame) -> bool {
        self.s.write_all(&f.encode()).is_ok()
    }

    /// Sends bytes; false if the stream is gone.
    pub fn send_bytes(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).is_ok()
    }

    /// The next frame within `within`; `None` on close or timeout.
    pub fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        let mut frames = FrameReader::with_bytes(4 << 20, std::mem::take(&mut self.buf));
        let got = loop {
            match frames.next_frame() {
                Ok(Some(f)) => break Some(f),
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed frame: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.s.set_read_timeout(Some(left)).expect("read timeout");
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => frames.buffer().extend_from_slice(&chunk[..n]),
            }
        };
        self.buf = frames.into_bytes();
        got
    }

    /// How the connection ends within `within` (frames before the end are skipped).
    pub fn ending(&mut self, within: Duration) -> Ending {
        ending(&mut self.s, within)
    }

    /// Logs in as `id` by hand; the proof sent (for replays).
    pub fn login(&mut self, id: &Identity) -> Vec<u8> {
        let mut hs = ClientHandshake::new(&id.name);
        assert!(self.send(&hs.start()), "send hello");
        let mut proof = Vec::new();
        loop {
            let f = self.frame(Duration::from_secs(10)).expect("login reply");
            let step = hs
                .on_frame(&f, |t| {
                    proof = prove(id, t);
                    Ok(proof.clone())
                })
                .expect("login step");
            match step {
                ClientStep::Send(next) => assert!(self.send(&next), "send proof"),
                ClientStep::Done(_) => return proof,
            }
        }
    }
}

/// How a blocking stream ends within `within`: [`Ending::Closed`] on end of stream or a
/// reset, [`Ending::Silent`] if it is still open when the time is up (data is skipped).
pub fn ending(s: &mut (impl Read + AsTcp), within: Duration) -> Ending {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::Silent;
        }
        s.tcp().set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ending::Closed,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ending::Silent;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ending::Closed,
        }
    }
}

/// The TCP socket under a blocking stream (to set its read timeout).
pub trait AsTcp {
    fn tcp(&self) -> &TcpStream;
}

impl AsTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// `(tx_queue, rx_queue)` of the TCP socket from `local` to `remote`, from `/proc/net/tcp`:
/// bytes sent and not yet acknowledged, and bytes received that its owner has not read.
/// `None` unless that socket is established (not closed, not closing).
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let addr = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints the address as the in-memory (network-order) word.
        Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
    };
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || addr(f[1])? != local || addr(f[2])? != remote || f[3] != "01" {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// The queues of the server's end of a client's TCP socket.
pub fn server_queues(s: &TcpStream) -> Option<(u64, u64)> {
    tcp_queues(s.peer_addr().ok()?, s.local_addr().ok()?)
}

fn would_block(r: std::io::Result<usize>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The sockets of `tcp` that the server has not closed, for a server that says nothing until
/// the peer does (before a hello): a look without waiting finds nothing to read.
pub fn open_tcp(tcp: &[TcpStream]) -> Vec<&TcpStream> {
    tcp.iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let r = s.peek(&mut [0u8; 1]);
            s.set_nonblocking(false).expect("blocking");
            would_block(r)
        })
        .collect()
}

/// How many of `unix` the server has not closed, for a server that says nothing until the
/// peer does (so the read takes nothing away).
pub fn open_unix(unix: &[std::os::unix::net::UnixStream]) -> usize {
    unix.iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let r = (&mut &**s).read(&mut [0u8; 1]);
            s.set_nonblocking(false).expect("blocking");
            would_block(r)
        })
        .count()
}

/// Waits until the server holds exactly `places` of the idle `tcp` sockets and `places` of
/// the idle `unix` ones, and has closed every other (so it accepted them all: none waits in a
/// listen backlog), then checks the TCP ones it holds are established on its side. For a
/// handshake gate with `places` per source, filled by far more idle sockets than that.
pub fn wait_gate_full(
    tcp: &[TcpStream],
    unix: &[std::os::unix::net::UnixStream],
    places: usize,
    within: std::time::Duration,
) {
    crate::wait::until(
        &format!("the server to hold {places} idle sockets per source"),
        within,
        || open_tcp(tcp).len() == places && open_unix(unix) == places,
    );
    for s in open_tcp(tcp) {
        assert!(
            server_queues(s).is_some(),
            "{:?} is open here but not established on the server's side",
            s.local_addr()
        );
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmLck`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
