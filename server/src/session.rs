//! The session actor: one per connection, whatever the transport.
//!
//! ```text
//!  transport read half --> reader task --(Inbound + window ticket)--> Session actor
//!                          (decode frames,                           (handshake, identity,
//!                           wait for a window                         ping, dispatch)
//!                           ticket: backpressure)                          |
//!                                                            spawned request future:
//!                                                 dispatch: authorize -> pool -> (create)
//!                                                                          |
//!  transport write half <-- writer task <--------(Outbound + ticket)-------+
//! ```
//! A ticket (one window permit plus one global in-flight count) travels with each request
//! from the moment its frame is decoded until its response is on the wire. When the window is
//! full the reader stops reading the socket; when the client stops reading responses the
//! writer blocks, tickets are not returned and the reader stops too. Nothing is dropped and
//! memory stays bounded by the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use ferrohsm_proto::frame::Decoded;
use ferrohsm_proto::handshake::{Challenge, Hello, Welcome};
use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, Frame, FrameDecoder, Request, Response, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::auth::PendingProof;
use crate::config::ClientConfig;
use crate::crypto::pool::CryptoPool;
use crate::error::OpError;
use crate::keys::manager::{Caller, KeyManager};

/// Counts requests in flight across all sessions, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Waits until no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every session shares.
pub struct Shared {
    /// Configured clients.
    pub clients: Arc<std::collections::BTreeMap<String, ClientConfig>>,
    /// The key manager.
    pub km: Arc<KeyManager>,
    /// The crypto pool.
    pub pool: CryptoPool,
    /// Requests in flight per session.
    pub window: u32,
    /// Body cap.
    pub max_body: u32,
    /// Handshake deadline.
    pub handshake_timeout: std::time::Duration,
    /// Sessions per client, at most.
    pub max_per_client: usize,
    /// Global in-flight count.
    pub inflight: Arc<InFlight>,
    /// Flips to true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    next_session: AtomicU64,
    per_client: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Bundles the shared state from a validated config.
    pub fn new(
        config: &crate::Config,
        km: Arc<KeyManager>,
        pool: CryptoPool,
        shutdown: watch::Receiver<bool>,
    ) -> Shared {
        Shared {
            clients: Arc::new(config.clients.clone()),
            km,
            pool,
            window: config.window,
            max_body: config.max_body,
            handshake_timeout: config.handshake_timeout,
            max_per_client: config.max_connections_per_client,
            inflight: Arc::new(InFlight::default()),
            shutdown,
            next_session: AtomicU64::new(1),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh session id.
    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new session of `client`; refuses one over the per-client limit.
    fn enter_client(&self, client: &str) -> Result<(), OpError> {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client.to_owned()).or_insert(0);
        if *n >= self.max_per_client {
            return Err(OpError::new(
                Status::Busy,
                format!("client {client} already has {n} connections, the most allowed"),
            ));
        }
        *n += 1;
        Ok(())
    }

    fn leave_client(&self, client: &str) {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(client);
            }
        }
    }
}

/// What a transport knows about an accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The peer, for logs (`tcp:127.0.0.1:5000`, `shm:pid=..,uid=..`).
    pub peer: String,
    /// The client the transport's credential proved (TLS certificate, PSK, or the shm set-up
    /// handshake), or `None` when the client must answer a challenge in the session.
    pub proven: Option<Arc<str>>,
    /// A session id already announced to the client (shm), else a fresh one is taken.
    pub session_id: Option<u64>,
    /// The listener's connection slot, released when the connection ends.
    pub slot: OwnedSemaphorePermit,
}

/// Held from decode to write: one window slot and one global in-flight count.
#[derive(Debug)]
struct Ticket {
    _window: OwnedSemaphorePermit,
    _inflight: InFlightGuard,
}

#[derive(Debug)]
struct Outbound {
    frame: Frame,
    _ticket: Option<Ticket>,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Inbound {
    frame: Frame,
    ticket: Ticket,
}

/// Ends the session (peer closed, transport error, shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Close;

/// What a hello leads to.
enum Hello2 {
    /// Prove the name: sign this challenge.
    Challenge(Challenge),
    /// The transport proved the name already.
    Open(Caller),
}

enum State {
    AwaitHello,
    AwaitProof(PendingProof),
    Ready(Caller),
    Closed,
}

/// The session actor.
pub struct Session {
    id: u64,
    peer: String,
    shared: Arc<Shared>,
    state: State,
    // The client the transport already proved (TLS certificate or PSK), if any.
    proven: Option<Arc<str>>,
    out: mpsc::Sender<Outbound>,
    // Dropping this tells the reader task to stop.
    stop_reader: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.shared.handshake_timeout, |act, ctx| {
            if !matches!(act.state, State::Ready(_) | State::Closed) {
                tracing::info!(peer = %act.peer, "handshake timed out; closing");
                act.close(ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let State::Ready(caller) = std::mem::replace(&mut self.state, State::Closed) {
            tracing::debug!(peer = %self.peer, client = %caller.client, session = self.id, "session ended");
            self.shared.leave_client(&caller.client);
            self.shared.km.end_session(&caller);
        }
    }
}

impl Session {
    fn reply(
        &self,
        opcode: u16,
        request_id: u64,
        resp: Result<Response, OpError>,
        ticket: Option<Ticket>,
    ) {
        let frame = response_frame(opcode, request_id, resp);
        // Capacity is window + 2 and every ticketed frame holds a window permit, so this only
        // fails when the writer has gone (peer disconnected): then there is no one to tell.
        let _ = self.out.try_send(Outbound {
            frame,
            _ticket: ticket,
        });
    }

    fn close(&mut self, ctx: &mut Context<Self>) {
        self.stop_reader.take();
        ctx.stop();
    }

    /// Hello: on a transport that proved the client already, the name must match and the
    /// session opens; otherwise the client gets a fresh challenge.
    fn handle_hello(&mut self, h: Hello) -> Result<Hello2, OpError> {
        crate::auth::check_version(&h)?;
        if let Some(proven) = &self.proven {
            if h.client != **proven {
                tracing::info!(peer = %self.peer, proven = %proven, claimed = %h.client, "hello names another client than the TLS credential");
                return Err(OpError::new(
                    Status::AuthFailed,
                    format!(
                        "this connection's TLS credential does not belong to client {}",
                        h.client
                    ),
                ));
            }
            let client = proven.clone();
            return Ok(Hello2::Open(Caller {
                client,
                session: self.id,
            }));
        }
        let (pending, challenge) = crate::auth::challenge(&self.shared, self.id, h.client)?;
        self.state = State::AwaitProof(pending);
        Ok(Hello2::Challenge(challenge))
    }

    /// Opens the session for a proven caller: per-client limit, registration with the key
    /// manager (before any key operation of the session can run), then the welcome.
    fn open(
        &mut self,
        caller: Caller,
        opcode: u16,
        rid: u64,
        ticket: Ticket,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = self.shared.enter_client(&caller.client) {
            tracing::warn!(peer = %self.peer, client = %caller.client, "per-client connection limit reached");
            self.reply(opcode, rid, Err(e), Some(ticket));
            return self.close(ctx);
        }
        tracing::debug!(peer = %self.peer, client = %caller.client, session = self.id, "authenticated");
        self.shared.km.open_session(&caller);
        self.state = State::Ready(caller);
        let welcome = Welcome {
            session_id: self.id,
            max_body: self.shared.max_body,
            window: self.shared.window,
        };
        self.reply(opcode, rid, Ok(Response::Welcome(welcome)), Some(ticket));
    }

    fn handle_proof(&mut self, signature: &[u8]) -> Result<Caller, OpError> {
        let State::AwaitProof(pending) = &self.state else {
            return Err(OpError::new(
                Status::ProtocolViolation,
                "proof without hello",
            ));
        };
        let client = pending.verify(signature, &self.peer)?;
        Ok(Caller {
            client,
            session: self.id,
        })
    }
}

impl Handler<Close> for Session {
    type Result = ();
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.close(ctx);
    }
}

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        let Inbound { frame, ticket } = msg;
        let (opcode, rid) = (frame.header.opcode, frame.header.request_id);
        if matches!(self.state, State::Closed) {
            return;
        }
        if frame.header.flags != 0 {
            let e = OpError::new(Status::ProtocolViolation, "a client may only send requests");
            self.reply(opcode, rid, Err(e), Some(ticket));
            return self.close(ctx);
        }
        let request = match Request::decode(opcode, &frame.body) {
            Ok(r) => r,
            Err(e) => {
                // A body that does not decode means the peer is broken or hostile: answer, close.
                tracing::info!(peer = %self.peer, error = %e, "malformed request; closing");
                self.reply(
                    opcode,
                    rid,
                    Err(OpError::new(e.status(), e.to_string())),
                    Some(ticket),
                );
                return self.close(ctx);
            }
        };
        let caller = match (&self.state, request) {
            (State::AwaitHello, Request::Hello(h)) => {
                match self.handle_hello(h) {
                    Ok(Hello2::Challenge(c)) => {
                        self.reply(opcode, rid, Ok(Response::Challenge(c)), Some(ticket))
                    }
                    Ok(Hello2::Open(caller)) => self.open(caller, opcode, rid, ticket, ctx),
                    Err(e) => {
                        self.reply(opcode, rid, Err(e), Some(ticket));
                        self.close(ctx);
                    }
                }
                return;
            }
            (State::AwaitProof(_), Request::Proof(p)) => {
                match self.handle_proof(&p.signature) {
                    Ok(caller) => self.open(caller, opcode, rid, ticket, ctx),
                    Err(e) => {
                        self.reply(opcode, rid, Err(e), Some(ticket));
                        self.close(ctx);
                    }
                }
                return;
            }
            (State::Ready(_), Request::Hello(_) | Request::Proof(_)) => {
                let e = OpError::new(Status::ProtocolViolation, "already authenticated");
                self.reply(opcode, rid, Err(e), Some(ticket));
                return self.close(ctx);
            }
            (State::Ready(caller), request) => (caller.clone(), request),
            _ => {
                let e = OpError::new(
                    Status::ProtocolViolation,
                    "authenticate first (hello, proof)",
                );
                self.reply(opcode, rid, Err(e), Some(ticket));
                return self.close(ctx);
            }
        };
        let (caller, request) = caller;
        if request == Request::Ping {
            // Session-level: answered here, never reaching the key manager or the pool.
            return self.reply(opcode, rid, Ok(Response::Done), Some(ticket));
        }
        let shared = self.shared.clone();
        let out = self.out.clone();
        // Detached (not ctx.spawn): a request that started finishes even if the session
        // closes, so its response is written or its key insert refused cleanly.
        actix::spawn(async move {
            let resp = crate::dispatch::dispatch(&shared, caller, request).await;
            let frame = response_frame(opcode, rid, resp);
            let _ = out
                .send(Outbound {
                    frame,
                    _ticket: Some(ticket),
                })
                .await;
        });
    }
}

/// The frame answering `opcode` / `request_id`: the response, or the error with its status.
fn response_frame(opcode: u16, request_id: u64, resp: Result<Response, OpError>) -> Frame {
    match resp {
        Ok(r) => r.to_frame(opcode, request_id),
        Err(e) => error_frame(opcode, request_id, &e.to_body()),
    }
}

/// Serves one connection until it closes. The transport has already been accepted (and, for
/// TLS, handshaken); `peer` names it in logs; `proven` is the client the transport's credential
/// proved (TLS certificate or PSK), or `None` when the client must answer a challenge.
/// `conn_slot` is released when the connection ends.
pub fn serve<R, W>(shared: Arc<Shared>, rd: R, wr: W, conn: Conn)
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin + 'static,
{
    let Conn {
        peer,
        proven,
        session_id,
        slot: conn_slot,
    } = conn;
    let id = session_id.unwrap_or_else(|| shared.new_session_id());
    let (out_tx, out_rx) = mpsc::channel::<Outbound>(shared.window as usize + 2);
    let (stop_tx, stop_rx) = oneshot::channel();
    let session = Session {
        id,
        peer: peer.clone(),
        shared: shared.clone(),
        state: State::AwaitHello,
        proven,
        out: out_tx.clone(),
        stop_reader: Some(stop_tx),
    }
    .start();
    actix::spawn(write_loop(wr, out_rx, conn_slot));
    actix::spawn(read_loop(shared, rd, session, out_tx, stop_rx, peer));
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    rd: R,
    session: actix::Addr<Session>,
    out: mpsc::Sender<Outbound>,
    stop: oneshot::Receiver<()>,
    peer: String,
) {
    pump(&shared, rd, &session, &out, stop, &peer).await;
    // However reading ended (EOF, error, malformed frame, shutdown), the session ends with it;
    // if the session itself asked us to stop, it is gone already and this is a no-op.
    let _ = session.send(Close).await;
}

/// Reads frames and hands them to the session, one window ticket each, until the peer hangs
/// up, sends a malformed frame, the session stops us, or the server shuts down.
async fn pump<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut rd: R,
    session: &actix::Addr<Session>,
    out: &mpsc::Sender<Outbound>,
    mut stop: oneshot::Receiver<()>,
    peer: &str,
) {
    let decoder = FrameDecoder::new(shared.max_body);
    let window = Arc::new(Semaphore::new(shared.window as usize));
    let mut shutdown = shared.shutdown.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0usize;
    loop {
        // Hand over every whole frame already buffered.
        loop {
            match decoder.decode(&buf[start..]) {
                Ok(Decoded::Frame(frame, used)) => {
                    start += used;
                    let permit = tokio::select! {
                        p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        _ = &mut stop => return,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let ticket = Ticket {
                        _window: permit,
                        _inflight: shared.inflight.enter(),
                    };
                    if session.send(Inbound { frame, ticket }).await.is_err() {
                        return;
                    }
                }
                Ok(Decoded::Incomplete(need)) => {
                    buf.drain(..start);
                    start = 0;
                    buf.reserve(need.max(4096));
                    break;
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "malformed frame; closing connection");
                    let frame = error_frame(0, 0, &ErrorBody::new(e.status(), e.to_string()));
                    let _ = out
                        .send(Outbound {
                            frame,
                            _ticket: None,
                        })
                        .await;
                    return;
                }
            }
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = &mut stop => return,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    _slot: OwnedSemaphorePermit,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut done = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        first.frame.encode_into(&mut buf);
        done.push(first);
        // Coalesce whatever else is ready into one write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(o) => {
                    o.frame.encode_into(&mut buf);
                    done.push(o);
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        // Responses are on the wire: give their window slots back.
        done.clear();
    }
    let _ = wr.shutdown().await;
}
