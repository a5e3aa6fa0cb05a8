//! Mutual-certificate TLS: the handshake proves a client certificate chained to the client CA;
//! its names ([`Credential::Certificate`]) name the client.

use std::future::Future;
use std::time::Duration;

use ferrohsm_tls::TlsError;
use ferrohsm_tls::server::CertAcceptor;
use tokio::net::TcpStream;

use super::TlsHandshake;
use crate::auth::Credential;

/// The certificate TLS transport.
#[derive(Debug, Clone)]
pub struct CertTls {
    acceptor: CertAcceptor,
}

impl CertTls {
    /// The transport over a configured acceptor.
    pub fn new(acceptor: CertAcceptor) -> CertTls {
        CertTls { acceptor }
    }
}

impl TlsHandshake for CertTls {
    const NAME: &'static str = "tls";
    type Stream = ferrohsm_tls::server::ServerStream;

    fn handshake(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Self::Stream, Credential), TlsError>> + 'static {
        let acceptor = self.acceptor.clone();
        async move {
            let (s, names) = acceptor.accept(tcp, timeout).await?;
            Ok((s, Credential::Certificate(names)))
        }
    }
}
