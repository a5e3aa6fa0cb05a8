//! The connection's byte work: frames read through `proto`'s sans-IO [`FrameReader`] and
//! decoded in place, the writer and reader tasks, and the map of requests waiting for their
//! responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferrohsm_proto::message::{BodyError, decode_error};
use ferrohsm_proto::{ErrorBody, Frame, FrameReader, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;

/// A response, or why there is none.
pub(crate) type Reply = Result<Response, ClientError>;

/// Requests waiting for their response, and whether the connection has ended (after which
/// nothing will ever answer, so new requests must fail instead of waiting).
#[derive(Default)]
pub(crate) struct PendingState {
    pub(crate) map: HashMap<u64, oneshot::Sender<Reply>>,
    pub(crate) closed: Option<ClientError>,
}
pub(crate) type PendingMap = Arc<Mutex<PendingState>>;

pub(crate) fn closed() -> ClientError {
    ClientError::Connection("the server closed the connection".into())
}

/// A sent request whose answer will never come.
pub(crate) fn lost() -> ClientError {
    ClientError::ConnectionLost("the connection ended before the answer came".into())
}

fn protocol(e: BodyError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Reads until `frames` holds a whole frame, and hands its header and body (still in the
/// buffer) to `f` (the one sans-IO frame reader of `proto`).
async fn read_with<R: AsyncRead + Unpin, T>(
    rd: &mut R,
    frames: &mut FrameReader,
    f: impl Fn(&ferrohsm_proto::Header, &[u8]) -> T,
) -> Result<T, ClientError> {
    loop {
        if let Some(t) = frames
            .next_with(&f)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            return Ok(t);
        }
        let n = rd
            .read_buf(frames.buffer())
            .await
            .map_err(|e| ClientError::Connection(ferrohsm_tls::client::describe(&e)))?;
        if n == 0 {
            return Err(closed());
        }
    }
}

/// Reads the next whole frame (handshake phase).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    frames: &mut FrameReader,
) -> Result<Frame, ClientError> {
    read_with(rd, frames, |header, body| Frame {
        header: *header,
        body: body.to_vec(),
    })
    .await
}

/// Decodes a response from its header and body (still in the reader's buffer): an error frame
/// becomes `ClientError::Server`.
pub(crate) fn decode_reply(header: &ferrohsm_proto::Header, body: &[u8]) -> Reply {
    if header.is_error() {
        let body = decode_error(header.opcode, body).map_err(protocol)?;
        return Err(ClientError::Server(body));
    }
    Response::decode(header.opcode, body).map_err(protocol)
}

/// Reads the next response, decoded straight from the bytes read: its request id and reply.
async fn read_reply<R: AsyncRead + Unpin>(
    rd: &mut R,
    frames: &mut FrameReader,
) -> Result<(u64, Reply), ClientError> {
    read_with(rd, frames, |h, body| (h.request_id, decode_reply(h, body))).await
}

pub(crate) async fn send_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frame: &Frame,
) -> Result<(), ClientError> {
    let io = |e: std::io::Error| ClientError::Connection(ferrohsm_tls::client::describe(&e));
    wr.write_all(&frame.encode()).await.map_err(io)?;
    wr.flush().await.map_err(io)
}

pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut ready: Vec<Vec<u8>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut len = first.len();
        ready.push(first);
        // Coalesce pipelined requests into one write.
        while len < 256 * 1024 {
            match rx.try_recv() {
                Ok(w) => {
                    len += w.len();
                    ready.push(w);
                }
                Err(_) => break,
            }
        }
        // One request goes out from its own bytes; several are gathered into one write.
        let bytes: &[u8] = if let [one] = ready.as_slice() {
            one
        } else {
            buf.clear();
            for w in &ready {
                buf.extend_from_slice(w);
            }
            &buf
        };
        let written = wr.write_all(bytes).await.is_ok() && wr.flush().await.is_ok();
        // Requests carry plaintexts: none stays behind in these buffers.
        zeroize::Zeroize::zeroize(buf.as_mut_slice());
        for w in ready.iter_mut() {
            zeroize::Zeroize::zeroize(w);
        }
        ready.clear();
        if !written {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut frames: FrameReader,
    pending: PendingMap,
    max_body: u32,
) {
    // Responses may be a little larger than the request cap (a ciphertext adds 30 bytes).
    frames.set_max_body(max_body.saturating_add(4096));
    // Marks the connection closed and fails every waiting request, under one lock, so a
    // request submitted concurrently either sees `closed` or is failed here.
    let fail_all = |err: &dyn Fn() -> ClientError| {
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        p.closed = Some(err());
        for (_, tx) in p.map.drain() {
            // Those already sent: their outcome is unknown.
            let e = match err() {
                ClientError::Connection(m) => ClientError::ConnectionLost(m),
                other => other,
            };
            let _ = tx.send(Err(e));
        }
    };
    loop {
        let (rid, reply) = match read_reply(&mut rd, &mut frames).await {
            Ok(r) => r,
            Err(e) => {
                let msg = match e {
                    ClientError::Connection(m) => m,
                    other => other.to_string(),
                };
                fail_all(&|| ClientError::Connection(msg.clone()));
                return;
            }
        };
        if rid == 0 {
            // A connection-level error (the server is about to close).
            let body = match reply {
                Err(ClientError::Server(b)) => b,
                _ => ErrorBody::new(ferrohsm_proto::Status::MalformedFrame, "unexpected frame"),
            };
            fail_all(&|| ClientError::Server(body.clone()));
            return;
        }
        let tx = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(&rid);
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
}
