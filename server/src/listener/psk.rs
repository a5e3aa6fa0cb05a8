//! TLS 1.3 with a pre-shared key: the PSK identity names the client, the key proves it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ferrohsm_tls::psk::PskAcceptor;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::Transport;
use crate::error::ServerError;
use crate::session::{Conn, Shared, serve};

/// The TLS-PSK transport.
#[derive(Debug, Clone)]
pub struct TlsPsk {
    acceptor: PskAcceptor,
    // PSK identity -> configured client.
    clients: Arc<HashMap<Vec<u8>, Arc<str>>>,
}

impl TlsPsk {
    /// An acceptor knowing every configured client's PSK.
    pub fn new(shared: &Shared) -> Result<TlsPsk, ServerError> {
        let mut keys = HashMap::new();
        let mut clients = HashMap::new();
        for (client, cc) in shared.clients.iter() {
            if let Some((identity, key)) = &cc.psk {
                keys.insert(identity.as_bytes().to_vec(), key.clone());
                clients.insert(identity.as_bytes().to_vec(), Arc::from(client.as_str()));
            }
        }
        let acceptor = PskAcceptor::new(move |id| keys.get(id).cloned())
            .map_err(|e| ServerError::Config(format!("TLS-PSK listener: {e}")))?;
        Ok(TlsPsk {
            acceptor,
            clients: Arc::new(clients),
        })
    }
}

impl Transport for TlsPsk {
    const NAME: &'static str = "tls-psk";

    fn refuse(&self, shared: &Arc<Shared>, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let acceptor = self.acceptor.clone();
        let timeout = shared.handshake_timeout;
        let handshake = async move {
            acceptor
                .accept(stream, timeout)
                .await
                .ok()
                .map(|(tls, _)| tls)
        };
        super::refuse_after_handshake(handshake, slot);
    }

    fn start(
        &self,
        shared: &Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let shared = shared.clone();
        actix::spawn(async move {
            let (tls, identity) = match this.acceptor.accept(stream, shared.handshake_timeout).await
            {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::info!(%peer, reason = %e, "TLS-PSK handshake failed");
                    return;
                }
            };
            // The handshake only succeeds with a configured identity's key, so this lookup
            // cannot miss unless the config changed underneath; refuse quietly if it does.
            let Some(client) = this.clients.get(&identity).cloned() else {
                tracing::warn!(%peer, "TLS-PSK identity not configured");
                return;
            };
            let (rd, wr) = tokio::io::split(tls);
            let conn = Conn {
                peer: format!("tls-psk:{peer}"),
                proven: Some(client),
                session_id: None,
                slot,
            };
            serve(shared, rd, wr, conn);
        });
    }
}
