//! Client side of certificate TLS (rustls): verifies the server against the profile's CA and
//! server name, and presents the client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::server::{load_certs, load_key, load_roots};
use crate::{TlsError, provider};

/// A client configuration: trust `ca`, present `cert`/`key` when given (TLS 1.3 and 1.2).
pub fn config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Runs the handshake as a client of `server_name`.
pub async fn connect(
    config: Arc<ClientConfig>,
    server_name: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsError::Config(format!("invalid server name {server_name:?}")))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError::Handshake(describe(&e)))
}

/// Plain words for a TLS failure seen as an I/O error (during the handshake or, in TLS 1.3,
/// on the first read, when the server rejects our certificate after its Finished).
pub fn describe(e: &std::io::Error) -> String {
    use rustls::{AlertDescription as A, Error as R};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<R>()) else {
        return e.to_string();
    };
    match tls {
        R::AlertReceived(
            a @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::AccessDenied
            | A::DecryptError),
        ) => format!("server rejected our certificate ({a:?})"),
        R::AlertReceived(a) => format!("server ended the TLS handshake ({a:?})"),
        R::InvalidCertificate(c) => format!("server certificate not trusted: {c:?}"),
        other => format!("TLS error: {other}"),
    }
}
