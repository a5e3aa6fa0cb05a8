//! TLS to PostgreSQL (rustls), per the URL's `sslmode`, with libpq's meanings:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | as `require` |
//! | `require` | always | checked against `sslrootcert` when the URL gives one (as `verify-ca`), else not checked: encrypted, not authenticated |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the URL's host |
//!
//! `sslrootcert=/ABSOLUTE/PATH.pem` in the URL names the CA certificates (PEM); the verifying
//! modes need it. The client library (tokio-postgres) knows only `disable`, `prefer` and
//! `require`, so [`Tls::from_url`] takes the verifying modes and `sslrootcert` out of the URL
//! it hands on.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`prefer` or `require` without `sslrootcert`).
    Nothing,
    /// It chains to `sslrootcert`.
    Ca,
    /// It chains to `sslrootcert` and names the host.
    Full,
}

/// The TLS part of a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub mode: String,
    /// How the certificate is checked.
    pub verify: Verify,
    /// `sslrootcert`.
    pub root: Option<PathBuf>,
}

impl Tls {
    /// The URL's TLS settings, and the URL as the client library reads it (the verifying
    /// modes as `require`, `sslrootcert` left out). The error names the problem (never a
    /// password: the URL holds none).
    pub fn from_url(url: &str) -> Result<(Tls, String), String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = "prefer".to_string();
        let mut root = None;
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("sslmode", m)) => mode = m.to_string(),
                Some(("sslrootcert", p)) => {
                    let p = PathBuf::from(p);
                    if !p.is_absolute() {
                        return Err(format!(
                            "sslrootcert={} must be an absolute path (every node reads the same \
                             URL)",
                            p.display()
                        ));
                    }
                    root = Some(p);
                }
                _ => kept.push(kv.to_string()),
            }
        }
        let (client_mode, verify) = match (mode.as_str(), &root) {
            ("disable", _) => ("disable", Verify::Nothing),
            ("prefer", None) => ("prefer", Verify::Nothing),
            ("prefer", Some(_)) => ("prefer", Verify::Ca),
            ("require", None) => ("require", Verify::Nothing),
            ("require", Some(_)) => ("require", Verify::Ca),
            ("verify-ca" | "verify-full", None) => {
                return Err(format!(
                    "sslmode={mode} needs sslrootcert=/PATH/TO/CA.pem in the URL: the CA that \
                     signed the database's certificate"
                ));
            }
            ("verify-ca", Some(_)) => ("require", Verify::Ca),
            ("verify-full", Some(_)) => ("require", Verify::Full),
            (other, _) => {
                return Err(format!(
                    "sslmode={other} is not known: use disable, prefer, require, verify-ca or \
                     verify-full"
                ));
            }
        };
        kept.push(format!("sslmode={client_mode}"));
        Ok((
            Tls { mode, verify, root },
            format!("{base}?{}", kept.join("&")),
        ))
    }

    /// The connector for the client library.
    pub fn connector(&self) -> Result<Connector, String> {
        let provider = ferrohsm_tls::provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.root, self.verify) {
            (Some(root), Verify::Ca | Verify::Full) => {
                let roots = ferrohsm_tls::server::load_roots(root)
                    .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
                Arc::new(Checked {
                    webpki,
                    names: self.verify == Verify::Full,
                })
            }
            _ => Arc::new(Unchecked(provider.clone())),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Connector(Arc::new(config)))
    }
}

/// Chains to the roots; with `names`, also names the host.
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // verify-ca: the chain is what counts, not the name.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require` without `sslrootcert`: any certificate (libpq's meaning: encrypted, not
/// authenticated), though the handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Makes a rustls connection per database connection.
#[derive(Debug, Clone)]
pub struct Connector(Arc<ClientConfig>);

/// One connection's TLS set-up, for `domain`.
#[derive(Debug)]
pub struct Connect {
    config: Arc<ClientConfig>,
    domain: ServerName<'static>,
}

/// A TLS connection to the database.
#[derive(Debug)]
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            config: self.0.clone(),
            domain: ServerName::try_from(domain)?.to_owned(),
        })
    }
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let c = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { c.connect(self.domain, stream).await.map(Stream) })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_and_roots_are_read_from_the_url_and_bad_ones_refused() {
        let (t, url) = Tls::from_url("postgres://hsm@db/k").unwrap();
        assert_eq!((t.mode.as_str(), t.verify), ("prefer", Verify::Nothing));
        assert_eq!(url, "postgres://hsm@db/k?sslmode=prefer");
        let (t, url) = Tls::from_url(
            "postgres://hsm@db/k?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.verify, Verify::Full);
        assert_eq!(t.root.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(url, "postgres://hsm@db/k?connect_timeout=3&sslmode=require");
        let (t, _) = Tls::from_url("postgres://hsm@db/k?sslmode=require&sslrootcert=/c").unwrap();
        assert_eq!(t.verify, Verify::Ca);
        let (t, _) = Tls::from_url("postgres://hsm@db/k?sslmode=disable").unwrap();
        assert_eq!(t.verify, Verify::Nothing);
        for (url, want) in [
            ("postgres://hsm@db/k?sslmode=verify-ca", "needs sslrootcert"),
            (
                "postgres://hsm@db/k?sslmode=verify-full&sslrootcert=ca.pem",
                "absolute path",
            ),
            (
                "postgres://hsm@db/k?sslmode=allow",
                "sslmode=allow is not known",
            ),
        ] {
            let e = Tls::from_url(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
        }
    }
}
