//! Mutual-certificate TLS: the client certificate (chained to the client CA) names the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ferrohsm_proto::Status;
use ferrohsm_tls::server::CertAcceptor;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::{Transport, refuse};
use crate::session::{Conn, Shared, serve};

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

impl Transport for CertTls {
    const NAME: &'static str = "tls";

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
            let (tls, names) = match this.acceptor.accept(stream, shared.handshake_timeout).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::info!(%peer, reason = %e, "TLS handshake failed");
                    return;
                }
            };
            let (rd, wr) = tokio::io::split(tls);
            match this.client_for(&names) {
                Some(client) => {
                    let conn = Conn {
                        peer: format!("tls:{peer}"),
                        proven: Some(client),
                        session_id: None,
                        slot,
                    };
                    serve(shared, rd, wr, conn)
                }
                None => {
                    tracing::warn!(%peer, ?names, "client certificate names no configured client");
                    refuse(
                        wr,
                        Status::AuthFailed,
                        "the client certificate names no configured client",
                    )
                    .await;
                }
            }
        });
    }
}
