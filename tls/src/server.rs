//! Server side of certificate TLS (rustls): requires a client certificate chained to the
//! configured client CA and reports the names in it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::{TlsError, file_err, provider, read};

/// Certificates in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = zeroize::Zeroizing::new(read(path)?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| file_err(path, "expected a PEM private key"))
}

/// A trust store holding every certificate of a PEM file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| file_err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A server-side certificate-TLS stream.
pub type ServerStream = TlsStream<TcpStream>;

/// Accepts certificate-TLS connections.
#[derive(Clone)]
pub struct CertAcceptor {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for CertAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAcceptor").finish_non_exhaustive()
    }
}

impl CertAcceptor {
    /// Server certificate chain `cert` with key `key`; client certificates must chain to
    /// `client_ca`. TLS 1.3 only unless `allow_tls12`.
    pub fn new(
        client_ca: &Path,
        cert: &Path,
        key: &Path,
        allow_tls12: bool,
    ) -> Result<CertAcceptor, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(load_roots(client_ca)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
        Ok(CertAcceptor {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the handshake (at most `timeout`) and returns the stream and the names in the
    /// client's certificate: subject common names first, then DNS SANs.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, Vec<String>), TlsError> {
        let stream = tokio::time::timeout(timeout, self.acceptor.accept(tcp))
            .await
            .map_err(|_| TlsError::Handshake(format!("handshake not finished within {timeout:?}")))?
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        let names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| cert_names(leaf.as_ref()))
            .unwrap_or_default();
        Ok((stream, names))
    }
}

/// Subject CNs, then DNS SANs, of a DER certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}
