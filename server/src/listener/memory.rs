//! An in-memory transport: a `tokio::io::duplex` pipe served like a plain-TCP connection
//! (nothing proven by the transport; the client signs the challenge). For fuzzing the whole
//! front end and for tests that want no sockets; never exposed by `hsmd`'s configuration.
//!
//! Connections take a handshake place (source: the unspecified address) and, once
//! authenticated, a place among `max_connections` of their own, like any listener's.

use std::sync::Arc;

use tokio::io::DuplexStream;
use tokio::sync::{Semaphore, mpsc};

use crate::admission::{Admission, Slot, gate};
use crate::auth::Credential;
use crate::session::{Conn, Sessions, serve};

/// Bytes buffered in each direction of an in-memory connection.
pub const PIPE_BYTES: usize = 64 * 1024;

/// Hands in-memory connections to the running server; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryConnector(pub(crate) mpsc::Sender<DuplexStream>);

impl MemoryConnector {
    /// A new connection: the client's end of the pipe. `None` when the server is gone or
    /// too many connections are waiting to be taken.
    pub fn connect(&self) -> Option<DuplexStream> {
        let (client, server) = tokio::io::duplex(PIPE_BYTES);
        self.0.try_send(server).ok()?;
        Some(client)
    }
}

/// Serves the connections sent to `rx` until the server stops.
pub(crate) async fn accept(
    shared: Arc<Sessions>,
    admission: Arc<Admission>,
    mut rx: mpsc::Receiver<DuplexStream>,
) {
    let connections = Arc::new(Semaphore::new(admission.connections));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            s = rx.recv() => match s { Some(s) => s, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let source = gate::Source::ip(std::net::Ipv4Addr::UNSPECIFIED.into());
        let Some(handshake) = admission.handshakes.admit(source) else {
            continue;
        };
        let (sh, conns) = (shared.clone(), connections.clone());
        admission.arbiters.place(move |placement| async move {
            let slot = Slot::new(handshake, conns, placement);
            let (rd, wr) = tokio::io::split(stream);
            let conn = Conn {
                peer: "memory".into(),
                credential: Credential::Nothing,
                session_id: None,
                slot,
            };
            serve(sh, rd, wr, conn);
        });
    }
}
