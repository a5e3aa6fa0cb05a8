//! Mutual-certificate TLS: the client certificate (chained to the client CA) names the client.

use std::collections::HashMap;
use std::sync::Arc;

use std::future::Future;
use std::time::Duration;

use ferrohsm_tls::TlsError;
use ferrohsm_tls::server::CertAcceptor;
use tokio::net::TcpStream;

use super::Handshake;
use crate::session::Shared;

/// The certificate TLS transport.
#[derive(Debug, Clone)]
pub struct CertTls {
    acceptor: CertAcceptor,
    // Certificate name (CN or DNS SAN) -> configured client.
    names: Arc<HashMap<String, Arc<str>>>,
}

impl CertTls {
    /// Maps every configured client's `tls_names` to it.
    pub fn new(acceptor: CertAcceptor, shared: &Shared) -> CertTls {
        let mut names = HashMap::new();
        for (client, cc) in shared.clients.iter() {
            let client: Arc<str> = Arc::from(client.as_str());
            for n in &cc.tls_names {
                names.insert(n.clone(), client.clone());
            }
        }
        CertTls {
            acceptor,
            names: Arc::new(names),
        }
    }

    /// The client a certificate's names identify: the first name (CN, then SANs) that maps to
    /// a configured client.
    fn client_for(&self, cert_names: &[String]) -> Option<Arc<str>> {
        cert_names.iter().find_map(|n| self.names.get(n).cloned())
    }
}

impl Handshake for CertTls {
    const NAME: &'static str = "tls";
    type Stream = ferrohsm_tls::server::ServerStream;
    type Credential = Vec<String>;

    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Self::Stream, Vec<String>), TlsError>> + 'static {
        let acceptor = self.acceptor.clone();
        async move { acceptor.accept(tcp, timeout).await }
    }

    fn identify(&self, names: Vec<String>) -> Result<Arc<str>, &'static str> {
        self.client_for(&names)
            .ok_or("the client certificate names no configured client")
    }
}
