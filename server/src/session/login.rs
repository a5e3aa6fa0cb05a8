//! A login, as every transport runs it: proto's one server handshake machine (hello,
//! challenge, proof), the one [`Authenticator`](crate::auth::Authenticator) deciding what the
//! transport's credential and the client's proof mean, and the audit entry of a refused login.
//! The session actor runs it on the session's own stream; the shared-memory set-up runs it on
//! the set-up socket (`over_stream`) before the rings exist. No transport logs in a client
//! or audits a login itself.

use std::sync::Arc;

use ferrohsm_proto::handshake::{ServerHandshake, ServerStep};
use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, Frame, FrameReader, Request, Response, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::shared::Sessions;
use crate::auth::{Connection, Credential, PendingProof};
use crate::error::OpError;

/// One connection's login, from hello to an open session or a refusal.
#[derive(Debug)]
pub(crate) struct Login {
    hs: ServerHandshake<PendingProof>,
    session_id: u64,
    // What the transport proved.
    credential: Credential,
    // The name a hello claimed (before it is proven), for the audit entry of a refusal.
    claimed: Option<String>,
}

impl Login {
    pub(crate) fn new(session_id: u64, credential: Credential) -> Login {
        Login {
            hs: ServerHandshake::new(session_id),
            session_id,
            credential,
            claimed: None,
        }
    }

    /// What the transport proved.
    pub(crate) fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The next step after `request` (a hello or a proof); a refused login is audited.
    pub(crate) fn step(
        &mut self,
        shared: &Sessions,
        peer: &str,
        request: Request,
    ) -> Result<ServerStep<Arc<str>>, OpError> {
        if let Request::Hello(h) = &request {
            self.claimed = Some(h.client.chars().take(64).collect());
        }
        let conn = Connection {
            auth: &shared.auth,
            credential: &self.credential,
            peer,
        };
        let step = self.hs.on_request(&conn, request);
        if let Err(e) = &step
            && matches!(e.status, Status::AuthFailed | Status::PeerNotAllowed)
        {
            shared.dispatcher.keys().deny_login(
                self.claimed.as_deref().unwrap_or(""),
                self.session_id,
                self.credential.transport(),
                e.status,
            );
        }
        step
    }
}

/// Where a login over a stream ended: the request that ended it (its opcode and id), and the
/// client it proved, or why not.
pub(crate) type Outcome = (Result<Arc<str>, OpError>, u16, u64);

/// Runs a whole login on `s`, answering each challenge, until the client is proven or
/// refused. The caller writes the last answer (a welcome with what it sets up, or the
/// refusal). Frames are capped at `preauth_max_body`, as on a session.
pub(crate) async fn over_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Sessions,
    s: &mut S,
    login: &mut Login,
    peer: &str,
) -> Outcome {
    let mut frames = FrameReader::new(shared.preauth_max_body);
    let transport = crate::metrics::transport(login.credential().transport());
    loop {
        let f = match read_frame(s, &mut frames).await {
            Ok(f) => f,
            Err(e) => return (Err(e), 0, 0),
        };
        let (op, rid) = (f.header.opcode, f.header.request_id);
        // Each answer here is counted like a session's; the last one (the welcome, or the
        // refusal that replaces it) is counted by the caller, which writes it.
        let read_at = std::time::Instant::now();
        let count = |status| shared.metrics.answered(op, transport, status, read_at);
        let request = match Request::decode(op, &f.body) {
            Ok(r) => r,
            Err(e) => return (Err(OpError::new(e.status(), e.to_string())), op, rid),
        };
        match login.step(shared, peer, request) {
            Ok(ServerStep::Challenge(c)) => {
                count(None);
                let frame = Response::Challenge(c).to_frame(op, rid).encode();
                if s.write_all(&frame).await.is_err() {
                    return (Err(OpError::internal("write failed")), op, rid);
                }
            }
            Ok(ServerStep::Open(client)) => return (Ok(client), op, rid),
            Err(e) => return (Err(e), op, rid),
        }
    }
}

/// Reads one frame.
async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    frames: &mut FrameReader,
) -> Result<Frame, OpError> {
    loop {
        match frames.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(OpError::new(e.status(), e.to_string())),
        }
        match s.read_buf(frames.buffer()).await {
            Ok(0) | Err(_) => return Err(OpError::new(Status::ProtocolViolation, "peer hung up")),
            Ok(_) => {}
        }
    }
}

/// Tells a refused peer why, in one error frame, then closes.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(mut wr: W, status: Status, message: &str) {
    let frame = error_frame(0, 0, &ErrorBody::new(status, message));
    let _ = wr.write_all(&frame.encode()).await;
    let _ = wr.shutdown().await;
}
