//! The reader and writer tasks of a session: frames in (one window ticket each, so a full
//! window stops reading the socket), frames out (coalesced into few writes).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, FrameError, FrameReader, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::budget::{self, Charge};
use super::messages::{Close, Inbound, Outbound, Ticket};
use super::shared::Sessions;

/// A session's reader task: what it needs besides the socket.
pub(super) struct Reader {
    pub(super) shared: Arc<Sessions>,
    // The session actor: its requests, and the order to close.
    pub(super) inbound: actix::Recipient<Inbound>,
    pub(super) close: actix::Recipient<Close>,
    pub(super) out: mpsc::Sender<Outbound>,
    pub(super) peer: String,
    // The transport's place among the metrics' transports.
    pub(super) transport: usize,
    pub(super) authed: Arc<OnceLock<Arc<str>>>,
    // How long to look for the next request before the thread may sleep (zero: not at all).
    pub(super) spin: std::time::Duration,
}

impl Reader {
    pub(super) async fn run<R: AsyncRead + Unpin>(self, rd: R, mut stop: oneshot::Receiver<()>) {
        if let Some((rd, frames)) = self.pump(rd, &mut stop).await {
            self.refuse_while_draining(rd, frames, stop).await;
        }
        // However reading ended (EOF, error, malformed frame, shutdown), the session ends
        // with it; if the session itself asked us to stop, it is gone already and this is a
        // no-op.
        let _ = self.close.send(Close).await;
    }

    /// Reads frames and hands them to the session, one window ticket each, until the peer
    /// hangs up, sends a malformed frame, the session stops us, or the server shuts down.
    ///
    /// Before authentication a frame body may be at most `preauth_max_body` bytes. After it,
    /// each frame is charged to the memory budget as soon as its header is here and before
    /// its body is read: a client over its share is simply not read from until its earlier
    /// responses are written.
    ///
    /// Returns the socket and what is buffered when the server starts to shut down, so the
    /// requests still arriving are answered `shutting_down` rather than dropped.
    async fn pump<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        stop: &mut oneshot::Receiver<()>,
    ) -> Option<(R, FrameReader)> {
        let shared = &self.shared;
        let mut frames = FrameReader::new(shared.preauth_max_body);
        // The client's budget account, once authenticated.
        let mut client: Option<Arc<budget::Account>> = None;
        // The charge for the frame whose header is buffered.
        let mut charge: Option<Charge> = None;
        let window = Arc::new(Semaphore::new(shared.window as usize));
        let mut shutdown = shared.shutdown.clone();
        // When the frames in hand were read (or last waited for): the start of their
        // duration in the metrics. One clock read serves every frame of one read that is
        // handed on without waiting (a clock read costs about what the rest of a ping's
        // bookkeeping does).
        let mut read_at: Option<Instant> = None;
        loop {
            // Hand over every whole frame already buffered.
            loop {
                if client.is_none()
                    && let Some(c) = self.authed.get()
                {
                    frames.set_max_body(shared.max_body);
                    client = Some(shared.budget.account(c));
                }
                // Only an authenticated session with no charge in hand looks at the header.
                if let (Some(c), None) = (&client, &charge)
                    && let Some(h) = frames.peek_header()
                {
                    let n = budget::cost(&h, shared.max_body);
                    // A charge that had to wait starts the frame's time again.
                    let mut waited = false;
                    let charged = async {
                        match shared.budget.try_charge(c, n) {
                            Some(c) => c,
                            None => {
                                waited = true;
                                shared.budget.charge(c, n).await
                            }
                        }
                    };
                    charge = tokio::select! {
                        c = charged => Some(c),
                        _ = &mut *stop => return None,
                        _ = shutdown.wait_for(|s| *s) => return Some((rd, frames)),
                    };
                    if waited {
                        read_at = None;
                    }
                }
                let decoded = frames
                    .next_with(|h, body| (*h, ferrohsm_proto::Request::decode(h.opcode, body)));
                match decoded {
                    Ok(Some((header, request))) => {
                        let permit = match window.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                read_at = None;
                                None
                            }
                        };
                        let permit = match permit {
                            Some(p) => p,
                            None => tokio::select! {
                                p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return None },
                                _ = &mut *stop => return None,
                                _ = shutdown.wait_for(|s| *s) => {
                                    self.refuse(header.opcode, header.request_id).await;
                                    return Some((rd, frames));
                                }
                            },
                        };
                        let at = *read_at.get_or_insert_with(Instant::now);
                        let ticket = Ticket::new(at, permit, &shared.inflight, charge.take());
                        let more = frames.frame_ready();
                        let inbound = Inbound {
                            header,
                            request,
                            ticket,
                            more,
                        };
                        if self.inbound.send(inbound).await.is_err() {
                            return None;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.refuse_frame(e, client.is_none()).await;
                        return None;
                    }
                }
            }
            frames.shrink();
            // Look for the next request without sleeping only for an authenticated session
            // (an unauthenticated peer gets no core) once every answer of it is written (a
            // client waiting for nothing is about to send); with requests in flight their
            // answers come anyway, and the core is the workers'.
            let spin = if client.is_some() && window.available_permits() == shared.window as usize {
                self.spin
            } else {
                std::time::Duration::ZERO
            };
            let n = tokio::select! {
                r = read_spinning(&mut rd, frames.buffer(), spin) => r,
                _ = &mut *stop => return None,
                _ = shutdown.wait_for(|s| *s) => return Some((rd, frames)),
            };
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => read_at = None,
            }
        }
    }

    /// While the server drains: every whole frame that arrives is answered `shutting_down`
    /// (none is dispatched), until the peer hangs up, sends a malformed frame, or the session
    /// ends with the server. The refusals take no window ticket: they hold nothing in flight.
    async fn refuse_while_draining<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        mut frames: FrameReader,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            loop {
                match frames.next_with(|h, _| *h) {
                    Ok(Some(h)) => self.refuse(h.opcode, h.request_id).await,
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            frames.shrink();
            let n = tokio::select! {
                r = rd.read_buf(frames.buffer()) => r,
                _ = &mut stop => return,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Answers one request `shutting_down`.
    async fn refuse(&self, opcode: u16, request_id: u64) {
        let status = Some(Status::ShuttingDown);
        (self.shared.metrics).answered(opcode, self.transport, status, Instant::now());
        let body = ErrorBody::new(
            Status::ShuttingDown,
            "hsmd is shutting down: it takes no new work",
        );
        let _ = self
            .out
            .send(Outbound {
                wire: error_frame(opcode, request_id, &body).encode(),
                secret: false,
                _ticket: None,
            })
            .await;
    }

    /// Answers a frame that cannot be read (bad header, too large) with its status; the
    /// connection then closes.
    async fn refuse_frame(&self, e: FrameError, preauth: bool) {
        let mut message = e.to_string();
        if preauth && matches!(e, FrameError::BodyTooLarge { .. }) {
            message.push_str(" allowed before authentication");
        }
        tracing::info!(peer = %self.peer, error = %message, "malformed frame; closing connection");
        // Its operation is unknown: the header did not read (or its body was not taken).
        let unknown = u16::MAX;
        (self.shared.metrics).answered(unknown, self.transport, Some(e.status()), Instant::now());
        let frame = error_frame(0, 0, &ErrorBody::new(e.status(), message));
        let _ = self
            .out
            .send(Outbound {
                wire: frame.encode(),
                secret: false,
                _ticket: None,
            })
            .await;
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    slot: crate::admission::Slot,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut done: Vec<Outbound> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut len = first.wire.len();
        done.push(first);
        // Coalesce whatever else is ready into one write.
        while len < 256 * 1024 {
            match rx.try_recv() {
                Ok(o) => {
                    len += o.wire.len();
                    done.push(o);
                }
                Err(_) => break,
            }
        }
        // One response goes out from its own bytes; several are gathered into one write.
        let bytes: &[u8] = if let [one] = done.as_slice() {
            &one.wire
        } else {
            buf.clear();
            for o in &done {
                buf.extend_from_slice(&o.wire);
            }
            &buf
        };
        let written = wr.write_all(bytes).await.is_ok() && wr.flush().await.is_ok();
        // Secret bytes (exported keys, plaintexts, random) do not outlive their write: not in
        // this reused buffer, and not in the responses (an `Outbound` wipes itself on drop).
        if done.iter().any(|o| o.secret) {
            zeroize::Zeroize::zeroize(buf.as_mut_slice());
        }
        // Responses are on the wire: give their window slots back.
        done.clear();
        if !written {
            break;
        }
    }
    // The slot is free before the peer can see the close, so a client that saw its old
    // connection end never finds the slot still taken (listener and session may run on
    // different threads).
    drop(slot);
    let _ = wr.shutdown().await;
}

/// Reads into `buf`, first looking for up to `spin` without letting the thread sleep: the read
/// is polled, and each look that finds nothing yields to the arbiter's other tasks. A yielded
/// turn makes the runtime poll its sockets without waiting, so a request that arrives within
/// the window is read at once instead of after a wake-up (tens of microseconds on a virtual
/// machine). Every few looks the thread also gives its core away ([`ferrohsm_proto::spin`]), so
/// on a busy machine the peer or a crypto worker runs instead. After the window, or with
/// `spin` zero, it waits for readiness as usual, so an idle session costs nothing.
async fn read_spinning<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    spin: std::time::Duration,
) -> std::io::Result<usize> {
    let read = rd.read_buf(buf);
    tokio::pin!(read);
    let mut looks = ferrohsm_proto::spin::Looks::new(spin);
    while looks.again() {
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(r) = polled {
            return r;
        }
        tokio::task::yield_now().await;
    }
    read.await
}
