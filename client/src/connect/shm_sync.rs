//! A synchronous shared-memory session for blocking callers (the PKCS#11 module): a request
//! goes into the ring and its response comes out of it on the calling thread, with no
//! runtime, no watcher thread and no task wake-up in between. The set-up (socket login and
//! segment hand-off) is the async client's; the socket then stays open as the liveness signal.
//!
//! Waiting for a response: spin on the ring for [`SPIN`] (yielding the core every few looks,
//! so the server's threads get it on a busy machine), then sleep on this side's futex bell,
//! which the server rings when it sees a sleeper. Each sleep lasts at most [`NAP`], after
//! which the socket is checked (hsmd gone: an error) and the caller's deadline.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ferrohsm_proto::handshake::{ClientHandshake, ClientStep, Welcome};
use ferrohsm_proto::{Frame, FrameReader, Request, Response};
use ferrohsm_shm::{Segment, Side, doorbell, stream::start_positions};

use crate::blocking::{block_within, late, runtime};
use crate::client::handshake_error;
use crate::error::ClientError;
use crate::io::decode_reply;
use crate::profile::Profile;

/// How long a wait spins before sleeping.
pub const SPIN: Duration = Duration::from_micros(50);
/// While spinning, the core is given away every this many looks.
const YIELD_EVERY: u32 = 4;
/// The longest single sleep on the bell before the socket and the deadline are checked.
pub const NAP: Duration = Duration::from_millis(20);

fn conn(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// One authenticated shared-memory session, driven from the calling thread.
pub struct SyncShm {
    seg: Segment,
    sock: UnixStream,
    tail: u64,
    head: u64,
    frames: FrameReader,
    chunk: Vec<u8>,
    next_id: u64,
    welcome: Welcome,
    timeout: Duration,
}

impl std::fmt::Debug for SyncShm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncShm")
            .field("session", &self.welcome.session_id)
            .finish_non_exhaustive()
    }
}

impl SyncShm {
    /// Logs in over the profile's shm socket and opens the session; every step, and every
    /// later call, gives up after `timeout`.
    pub fn connect(profile: &Profile, timeout: Duration) -> Result<SyncShm, ClientError> {
        let socket = profile.shm_socket.as_ref().ok_or_else(|| {
            ClientError::Local(format!(
                "profile {}: no [shm] section",
                profile.path.display()
            ))
        })?;
        let id = profile.identity()?;
        // The set-up is the async client's, on a runtime that lives only for it.
        let rt = runtime()?;
        let (sock, seg) = block_within(&rt, Some(timeout), super::shm::set_up(socket, &id))?;
        let sock = sock.into_std().map_err(conn)?;
        drop(rt);
        sock.set_nonblocking(true).map_err(conn)?;
        let (tail, head) = start_positions(&seg, Side::Client);
        let mut me = SyncShm {
            seg,
            sock,
            tail,
            head,
            frames: FrameReader::new(ferrohsm_proto::DEFAULT_MAX_BODY),
            chunk: vec![0; 16 * 1024],
            next_id: 1,
            welcome: Welcome {
                session_id: 0,
                max_body: 0,
                window: 1,
            },
            timeout,
        };
        // The name was proven on the socket: the ring handshake is hello, then welcome.
        let deadline = Instant::now() + timeout;
        let mut hs = ClientHandshake::new(&id.name);
        let mut out = hs.start();
        me.welcome = loop {
            me.send(&out.encode(), deadline)?;
            let f = me.recv(deadline, |h, b| Frame {
                header: *h,
                body: b.to_vec(),
            })?;
            match hs
                .on_frame(&f, |_| Err("a challenge on the ring".into()))
                .map_err(handshake_error)?
            {
                ClientStep::Send(next) => out = next,
                ClientStep::Done(w) => break w,
            }
        };
        Ok(me)
    }

    /// Session id and limits the server granted.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request and waits for its response (or the timeout).
    pub fn call(&mut self, mut req: Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let id = self.next_id;
        self.next_id += 1;
        let mut wire = zeroize::Zeroizing::new(Vec::new());
        req.encode_into(id, &mut wire);
        req.wipe();
        let body_len = wire.len() - ferrohsm_proto::frame::HEADER_LEN;
        if body_len > self.welcome.max_body as usize {
            return Err(ClientError::Local(format!(
                "request of {body_len} bytes exceeds the server's limit of {} bytes",
                self.welcome.max_body
            )));
        }
        self.send(&wire, deadline)?;
        loop {
            let (rid, reply) = self.recv(deadline, |h, b| (h.request_id, decode_reply(h, b)))?;
            // Only one request is ever in flight here; anything else is stale.
            if rid == id {
                return reply;
            }
        }
    }

    fn closed(&self) -> bool {
        let mut b = [0u8; 1];
        match (&self.sock).read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Waits (spin, then sleep) until `ready()` or the deadline; errors if hsmd went away.
    fn wait(&self, deadline: Instant, ready: impl Fn() -> bool) -> Result<(), ClientError> {
        let start = Instant::now();
        let mut looks = 0u32;
        while start.elapsed() < SPIN {
            if ready() {
                return Ok(());
            }
            looks = looks.wrapping_add(1);
            if looks.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let (mine, _) = self.seg.bells(Side::Client);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(late(self.timeout));
            }
            if doorbell::wait(mine, NAP.min(deadline - now), false, &ready) {
                return Ok(());
            }
            if self.closed() {
                return Err(conn("the server closed the connection"));
            }
        }
    }

    fn send(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), ClientError> {
        while !bytes.is_empty() {
            let (_, tx) = self.seg.rings(Side::Client);
            let n = tx.write(&mut self.head, bytes).map_err(conn)?;
            if n > 0 {
                bytes = &bytes[n..];
                doorbell::ring(self.seg.bells(Side::Client).1);
                continue;
            }
            let head = self.head;
            let seg = &self.seg;
            self.wait(deadline, || {
                seg.rings(Side::Client)
                    .1
                    .writable(head)
                    .map_or(true, |n| n > 0)
            })?;
        }
        Ok(())
    }

    fn recv<T>(
        &mut self,
        deadline: Instant,
        f: impl Fn(&ferrohsm_proto::Header, &[u8]) -> T,
    ) -> Result<T, ClientError> {
        loop {
            if let Some(t) = self
                .frames
                .next_with(&f)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(t);
            }
            let (rx, _) = self.seg.rings(Side::Client);
            let n = rx.read(&mut self.tail, &mut self.chunk).map_err(conn)?;
            if n > 0 {
                self.frames.buffer().extend_from_slice(&self.chunk[..n]);
                // A response may carry a plaintext or key bytes: no copy stays here.
                zeroize::Zeroize::zeroize(&mut self.chunk[..n]);
                // The server may be waiting for room.
                doorbell::ring(self.seg.bells(Side::Client).1);
                continue;
            }
            let tail = self.tail;
            let seg = &self.seg;
            self.wait(deadline, || {
                seg.rings(Side::Client)
                    .0
                    .readable(tail)
                    .map_or(true, |n| n > 0)
            })?;
        }
    }
}
