//! Plain TCP: nothing proven by the transport; the client proves its name with the Ed25519
//! challenge in the session.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::Transport;
use crate::admission::Slot;
use crate::auth::Credential;
use crate::session::{Conn, Sessions, serve};

/// The plain TCP transport.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Transport for Tcp {
    const NAME: &'static str = "tcp";
    type Listen = TcpListener;

    async fn start(self, shared: Arc<Sessions>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        let (rd, wr) = stream.into_split();
        let conn = Conn {
            peer: format!("tcp:{peer}"),
            credential: Credential::Nothing,
            session_id: None,
            slot,
        };
        serve(shared, rd, wr, conn);
    }
}
