//! TLS 1.3 with a pre-shared key: the PSK identity names the client, the key proves it.

use std::collections::HashMap;
use std::sync::Arc;

use std::future::Future;
use std::time::Duration;

use ferrohsm_tls::TlsError;
use ferrohsm_tls::psk::PskAcceptor;
use tokio::net::TcpStream;

use super::Handshake;
use crate::error::ServerError;
use crate::session::Shared;

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

impl Handshake for TlsPsk {
    const NAME: &'static str = "tls-psk";
    type Stream = ferrohsm_tls::psk::PskStream;
    type Credential = Vec<u8>;

    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Self::Stream, Vec<u8>), TlsError>> + 'static {
        let acceptor = self.acceptor.clone();
        async move { acceptor.accept(tcp, timeout).await }
    }

    /// The handshake only succeeds with a configured identity's key, so this lookup cannot
    /// miss unless the configuration changed underneath.
    fn identify(&self, identity: Vec<u8>) -> Result<Arc<str>, &'static str> {
        self.clients
            .get(&identity)
            .cloned()
            .ok_or("TLS-PSK identity not configured")
    }
}
