//! The session actor: one per connection, whatever the transport, on the session arbiter the
//! listener placed the connection on (the actor, its reader and writer tasks and its request
//! futures all share that one thread).
//!
//! ```text
//!  transport read half --> reader task --(Inbound + window ticket)--> Session actor
//!   (io.rs)                (decode requests in                       (login.rs: the one login
//!                           place, wait for a                         of every transport; ping;
//!                           window ticket)                            Dispatcher::start: cheap
//!                                                                     ops, a lone signature)
//!                                                                          |  otherwise Deferred
//!                                                            spawned request future:
//!                                          Dispatcher::finish: authorize -> pool -> (create)
//!                                                                          |
//!  transport write half <-- writer task <--------(Outbound + ticket)-------+
//! ```
//! A ticket (one window permit plus one global in-flight count) travels with each request
//! from the moment its frame is decoded until its response is on the wire. When the window is
//! full the reader stops reading the socket; when the client stops reading responses the
//! writer blocks, tickets are not returned and the reader stops too. Nothing is dropped and
//! memory stays bounded by the window.
//!
//! `shared.rs` holds what every session shares (the dispatcher, the authenticator, limits,
//! the memory budget, the in-flight count); `messages.rs` what moves between the reader, the
//! actor and the writer; `io.rs` the reader and writer tasks that move frames.

pub mod budget;
mod io;
pub mod login;
mod messages;
mod shared;

use std::sync::Arc;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use ferrohsm_proto::handshake::{ServerStep, Welcome};
use ferrohsm_proto::kind::Cost;
use ferrohsm_proto::message::error_frame_into;
use ferrohsm_proto::{Request, Response, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::Started;
use crate::error::OpError;
use crate::keys::manager::Caller;
use login::Login;
use messages::{Close, Inbound, Outbound, Ticket};
pub use shared::{Conn, InFlight, Sessions};

enum State {
    /// Hello and proof: the one login every transport runs.
    Handshake(Login),
    Ready(Caller),
    Closed,
}

/// The session actor.
pub struct Session {
    id: u64,
    peer: String,
    // The transport's place among the metrics' transports.
    transport: usize,
    shared: Arc<Sessions>,
    state: State,
    out: mpsc::Sender<Outbound>,
    // Requests of this session running detached (waiting for the store or a worker). The
    // session and its request futures share one arbiter thread, so a plain Rc counts them.
    detached: std::rc::Rc<std::cell::Cell<usize>>,
    // Dropping this tells the reader task to stop.
    stop_reader: Option<oneshot::Sender<()>>,
    // Set once authenticated: the reader then lifts the pre-authentication frame cap and
    // charges the client's requests to the memory budget.
    authed: Arc<std::sync::OnceLock<Arc<str>>>,
    // The connection's places (handshake, then session).
    slot: crate::admission::Slot,
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
            if matches!(act.state, State::Handshake(_)) {
                act.refused(crate::metrics::Refusal::Timeout);
                crate::logsafe::limited(
                    "handshake-timeout",
                    crate::logsafe::source_of(&act.peer),
                    format_args!("{}: handshake timed out; closing", act.peer),
                );
                act.close(ctx);
            }
        });
        // Evicted while still in handshake (newer connections needed the place): close.
        let slot = self.slot.clone();
        ctx.spawn(
            async move { slot.evicted().await }
                .into_actor(self)
                .map(|_, act, ctx| {
                    if matches!(act.state, State::Handshake(_)) {
                        act.refused(crate::metrics::Refusal::Evicted);
                        act.close(ctx);
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let State::Ready(caller) = std::mem::replace(&mut self.state, State::Closed) {
            tracing::debug!(peer = %self.peer, client = %caller.client, session = self.id, "session ended");
            self.shared.leave_client(&caller.client);
            self.shared.dispatcher.keys().end_session(&caller);
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
        self.reply_secret(opcode, request_id, resp, ticket, false)
    }

    fn reply_secret(
        &self,
        opcode: u16,
        request_id: u64,
        resp: Result<Response, OpError>,
        ticket: Option<Ticket>,
        secret: bool,
    ) {
        if let Some(t) = &ticket {
            let status = resp.as_ref().err().map(|e| e.status);
            (self.shared.metrics).answered(opcode, self.transport, status, t.started);
        }
        let wire = response_wire(opcode, request_id, resp, secret);
        // Capacity is window + 2 and every ticketed frame holds a window permit, so this only
        // fails when the writer has gone (peer disconnected): then there is no one to tell.
        let _ = self.out.try_send(Outbound {
            wire,
            secret,
            _ticket: ticket,
        });
    }

    /// Counts this connection as one that did not become a session.
    fn refused(&self, why: crate::metrics::Refusal) {
        let transport = crate::metrics::TRANSPORTS[self.transport];
        self.shared.metrics.refused(transport, why);
    }

    fn close(&mut self, ctx: &mut Context<Self>) {
        self.stop_reader.take();
        ctx.stop();
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
        if let Err(e) = self.slot.authenticate() {
            crate::logsafe::limited(
                "connection-limit",
                crate::logsafe::source_of(&self.peer),
                format_args!(
                    "{}: connection limit reached; refusing client {}",
                    self.peer, caller.client
                ),
            );
            self.refused(crate::metrics::Refusal::ConnectionLimit);
            self.reply(opcode, rid, Err(e), Some(ticket));
            return self.close(ctx);
        }
        if let Err(e) = self.shared.enter_client(&caller.client) {
            self.refused(crate::metrics::Refusal::ConnectionLimit);
            tracing::warn!(peer = %self.peer, client = %caller.client, "per-client connection limit reached");
            self.reply(opcode, rid, Err(e), Some(ticket));
            return self.close(ctx);
        }
        tracing::debug!(peer = %self.peer, client = %caller.client, session = self.id, "authenticated");
        self.shared.dispatcher.keys().open_session(&caller);
        let _ = self.authed.set(caller.client.clone());
        self.state = State::Ready(caller);
        let welcome = Welcome {
            session_id: self.id,
            max_body: self.shared.max_body,
            window: self.shared.window,
        };
        self.reply(opcode, rid, Ok(Response::Welcome(welcome)), Some(ticket));
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
        let Inbound {
            header,
            request,
            ticket,
            more,
        } = msg;
        let (opcode, rid) = (header.opcode, header.request_id);
        if matches!(self.state, State::Closed) {
            return;
        }
        if header.flags != 0 {
            let e = OpError::new(Status::ProtocolViolation, "a client may only send requests");
            self.reply(opcode, rid, Err(e), Some(ticket));
            return self.close(ctx);
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                // A body that does not decode means the peer is broken or hostile: answer, close.
                crate::logsafe::limited(
                    "malformed",
                    crate::logsafe::source_of(&self.peer),
                    format_args!(
                        "{}: malformed request; closing: {}",
                        self.peer,
                        crate::logsafe::Escaped(&e.to_string())
                    ),
                );
                self.reply(
                    opcode,
                    rid,
                    Err(OpError::new(e.status(), e.to_string())),
                    Some(ticket),
                );
                return self.close(ctx);
            }
        };
        // What the session answers itself is the description's `Cost::Session`: the login's
        // hello and proof, and ping (the only one of them once the session is open).
        let kind = request.kind();
        let caller = match &mut self.state {
            State::Ready(caller) if kind.cost != Cost::Session || request == Request::Ping => {
                caller.clone()
            }
            State::Ready(_) => {
                let e = OpError::new(Status::ProtocolViolation, "already authenticated");
                self.reply(opcode, rid, Err(e), Some(ticket));
                return self.close(ctx);
            }
            State::Handshake(login) => {
                let transport = login.credential().transport();
                match login.step(&self.shared, &self.peer, request) {
                    Ok(ServerStep::Challenge(c)) => {
                        self.reply(opcode, rid, Ok(Response::Challenge(c)), Some(ticket))
                    }
                    Ok(ServerStep::Open(client)) => {
                        let caller = Caller {
                            client,
                            session: self.id,
                            transport,
                        };
                        self.open(caller, opcode, rid, ticket, ctx)
                    }
                    Err(e) => {
                        self.refused(crate::metrics::Refusal::AuthFailed);
                        self.reply(opcode, rid, Err(e), Some(ticket));
                        self.close(ctx);
                    }
                }
                return;
            }
            State::Closed => return,
        };
        if kind.cost == Cost::Session {
            // Ping: answered here, never reaching the key manager or the pool.
            return self.reply(opcode, rid, Ok(Response::Done), Some(ticket));
        }
        // Plaintext, key bytes or random bytes: wiped once written (the PKCS#11 module's raw
        // decryption was missing from the list this replaced).
        let secret = kind.secret_response();
        // Cheap work, and a lone signature, is answered right here (no task, no hop).
        let alone = !more && self.detached.get() == 0;
        let deferred = match self.shared.dispatcher.start(&caller, request, alone) {
            Started::Answered(resp) => {
                return self.reply_secret(opcode, rid, resp, Some(ticket), secret);
            }
            Started::Later(deferred) => deferred,
        };
        let dispatcher = self.shared.dispatcher.clone();
        let (metrics, transport) = (self.shared.metrics.clone(), self.transport);
        let out = self.out.clone();
        let detached = Detached::enter(&self.detached);
        // Detached (not ctx.spawn): a request that started finishes even if the session
        // closes, so its response is written or its key insert refused cleanly.
        actix::spawn(async move {
            let resp = dispatcher.finish(deferred).await;
            let status = resp.as_ref().err().map(|e| e.status);
            metrics.answered(opcode, transport, status, ticket.started);
            let wire = response_wire(opcode, rid, resp, secret);
            drop(detached);
            let _ = out
                .send(Outbound {
                    wire,
                    secret,
                    _ticket: Some(ticket),
                })
                .await;
        });
    }
}

/// Counts one detached request of a session while it runs.
struct Detached(std::rc::Rc<std::cell::Cell<usize>>);

impl Detached {
    fn enter(n: &std::rc::Rc<std::cell::Cell<usize>>) -> Detached {
        n.set(n.get() + 1);
        Detached(n.clone())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The wire bytes of the frame answering `opcode` / `request_id`: the response, or the error
/// with its status. A `secret` response's bytes are wiped once encoded.
fn response_wire(
    opcode: u16,
    request_id: u64,
    resp: Result<Response, OpError>,
    secret: bool,
) -> Vec<u8> {
    match resp {
        Ok(r) => {
            let room = match &r {
                Response::Bytes(b) => b.len() + 32,
                _ => 256,
            };
            let mut wire = Vec::with_capacity(room);
            r.encode_into(opcode, request_id, &mut wire);
            if let (true, Response::Bytes(mut b)) = (secret, r) {
                zeroize::Zeroize::zeroize(&mut b);
            }
            wire
        }
        Err(e) => {
            let mut wire = Vec::with_capacity(128);
            error_frame_into(opcode, request_id, &e.to_body(), &mut wire);
            wire
        }
    }
}

/// Serves one connection until it closes: starts its session actor, reader and writer on the
/// current arbiter. The transport has already accepted the connection (and, for TLS, run its
/// handshake); `conn` says who the peer is, what the transport proved, and holds the
/// connection's places, given back when it ends.
pub fn serve<R, W>(shared: Arc<Sessions>, rd: R, wr: W, conn: Conn)
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin + 'static,
{
    let Conn {
        peer,
        credential,
        session_id,
        slot: conn_slot,
    } = conn;
    let credential_spins = !matches!(credential, crate::auth::Credential::ShmSession { .. });
    let transport = crate::metrics::transport(credential.transport());
    // A credential that names no configured client (a certificate or PSK identity nobody
    // has) is refused before any hello.
    if let Err(why) = shared.auth.identify(&credential) {
        tracing::warn!(%peer, "{why}");
        (shared.metrics).refused(
            credential.transport(),
            crate::metrics::Refusal::UnknownCredential,
        );
        // The connection keeps its place until the refusal is written, or the handshake
        // deadline passes.
        let within = shared.handshake_timeout;
        actix::spawn(async move {
            let _ = tokio::time::timeout(within, login::refuse(wr, Status::AuthFailed, why)).await;
            drop(conn_slot);
        });
        return;
    }
    let id = session_id.unwrap_or_else(|| shared.new_session_id());
    let (out_tx, out_rx) = mpsc::channel::<Outbound>(shared.window as usize + 2);
    let (stop_tx, stop_rx) = oneshot::channel();
    let authed = Arc::new(std::sync::OnceLock::new());
    let session = Session {
        authed: authed.clone(),
        slot: conn_slot.clone(),
        id,
        transport,
        peer: peer.clone(),
        shared: shared.clone(),
        state: State::Handshake(Login::new(id, credential)),
        out: out_tx.clone(),
        detached: std::rc::Rc::default(),
        stop_reader: Some(stop_tx),
    }
    .start();
    actix::spawn(io::write_loop(wr, out_rx, conn_slot));
    // Shared memory has its own spinning (its rings are polled); sockets look here.
    let spin = if credential_spins {
        shared.spin
    } else {
        std::time::Duration::ZERO
    };
    let reader = io::Reader {
        spin,
        shared,
        inbound: session.clone().recipient(),
        close: session.recipient(),
        out: out_tx,
        peer,
        transport,
        authed,
    };
    actix::spawn(reader.run(rd, stop_rx));
}
