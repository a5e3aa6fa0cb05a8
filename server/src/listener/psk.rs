//! TLS 1.3 with a pre-shared key: the PSK identity names the client, the key proves it.

use std::collections::{BTreeMap, HashMap};

use std::future::Future;
use std::time::Duration;

use ferrohsm_tls::TlsError;
use ferrohsm_tls::psk::PskAcceptor;
use tokio::net::TcpStream;

use super::TlsHandshake;
use crate::auth::Credential;
use crate::config::ClientConfig;
use crate::error::ServerError;

/// The TLS-PSK transport.
#[derive(Debug, Clone)]
pub struct TlsPsk {
    acceptor: PskAcceptor,
}

impl TlsPsk {
    /// An acceptor knowing every configured client's PSK.
    pub fn new(clients: &BTreeMap<String, ClientConfig>) -> Result<TlsPsk, ServerError> {
        let keys: HashMap<Vec<u8>, _> = clients
            .values()
            .filter_map(|cc| cc.psk.as_ref())
            .map(|(identity, key)| (identity.as_bytes().to_vec(), key.clone()))
            .collect();
        let acceptor = PskAcceptor::new(move |id| keys.get(id).cloned())
            .map_err(|e| ServerError::Config(format!("TLS-PSK listener: {e}")))?;
        Ok(TlsPsk { acceptor })
    }
}

impl TlsHandshake for TlsPsk {
    const NAME: &'static str = "tls-psk";
    type Stream = ferrohsm_tls::psk::PskStream;

    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Self::Stream, Credential), TlsError>> + 'static {
        let acceptor = self.acceptor.clone();
        async move {
            let (s, identity) = acceptor.accept(tcp, timeout).await?;
            Ok((s, Credential::PskIdentity(identity)))
        }
    }
}
