//! Plain TCP: the client proves its name with the Ed25519 challenge in the session.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::Transport;
use crate::session::{Conn, Shared, serve};

/// The plain TCP transport.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Transport for Tcp {
    const NAME: &'static str = "tcp";

    fn start(
        &self,
        shared: &Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let (rd, wr) = stream.into_split();
        serve(
            shared.clone(),
            rd,
            wr,
            Conn {
                peer: format!("tcp:{peer}"),
                proven: None,
                session_id: None,
                slot,
            },
        );
    }
}
