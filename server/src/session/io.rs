//! The reader and writer tasks of a session: frames in (one window ticket each, so a full
//! window stops reading the socket), frames out (coalesced into few writes).

use std::sync::Arc;

use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, FrameReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Close, Inbound, Outbound, Session, Shared, Ticket};

pub(super) async fn read_loop<R: AsyncRead + Unpin>(
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
    let mut frames = FrameReader::new(shared.max_body);
    let window = Arc::new(Semaphore::new(shared.window as usize));
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Hand over every whole frame already buffered.
        loop {
            let decoded =
                frames.next_with(|h, body| (*h, ferrohsm_proto::Request::decode(h.opcode, body)));
            match decoded {
                Ok(Some((header, request))) => {
                    let permit = tokio::select! {
                        p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        _ = &mut stop => return,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let ticket = Ticket::new(permit, &shared.inflight);
                    let more = frames.frame_ready();
                    if session
                        .send(Inbound {
                            header,
                            request,
                            ticket,
                            more,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "malformed frame; closing connection");
                    let frame = error_frame(0, 0, &ErrorBody::new(e.status(), e.to_string()));
                    let _ = out
                        .send(Outbound {
                            wire: frame.encode(),
                            secret: false,
                            _ticket: None,
                        })
                        .await;
                    return;
                }
            }
        }
        let n = tokio::select! {
            r = rd.read_buf(frames.buffer()) => r,
            _ = &mut stop => return,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    slot: crate::listener::Slot,
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
