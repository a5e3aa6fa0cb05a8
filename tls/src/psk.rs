//! TLS 1.3 with an external pre-shared key, through OpenSSL (rustls has none).
//!
//! The server looks the client's PSK identity up through a callback. An unknown identity is
//! answered with a random per-process key rather than "no PSK", so the handshake fails exactly
//! as it does for a known identity with a wrong key: the server reveals no identities.

use std::pin::Pin;
use std::time::Duration;

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslVersion};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use zeroize::Zeroizing;

use crate::TlsError;

/// TLS 1.3 suites with SHA-256, the hash the PSK callbacks use.
const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

/// A PSK: raw key bytes, zeroized on drop.
pub type Psk = Zeroizing<Vec<u8>>;

fn ossl(what: &str) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError + '_ {
    move |e| TlsError::Config(format!("{what}: {e}"))
}

fn tls13_only(b: &mut SslContextBuilder) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(ossl("TLS version"))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(ossl("TLS version"))?;
    b.set_ciphersuites(SUITES).map_err(ossl("cipher suites"))
}

/// Parses a PSK file: hex, surrounding whitespace ignored, at least 16 bytes.
pub fn parse_psk_hex(text: &str) -> Option<Psk> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) || t.len() < 32 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.map(Zeroizing::new)
}

/// Reads a PSK file (`key_file` / `psk_file`).
pub fn load_psk(path: &std::path::Path) -> Result<Psk, TlsError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| crate::file_err(path, e))?);
    parse_psk_hex(&text)
        .ok_or_else(|| crate::file_err(path, "expected at least 32 hex digits (the PSK)"))
}

/// A TLS-PSK stream.
pub type PskStream = SslStream<TcpStream>;

/// Accepts TLS-PSK connections.
#[derive(Clone)]
pub struct PskAcceptor {
    ctx: SslContext,
    // Where the callback records the identity it accepted (OpenSSL's SSL_get_psk_identity
    // reports nothing for TLS 1.3).
    identity: Index<Ssl, Vec<u8>>,
}

impl std::fmt::Debug for PskAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskAcceptor").finish_non_exhaustive()
    }
}

impl PskAcceptor {
    /// `lookup` maps a PSK identity to its key (`None`: unknown identity).
    pub fn new<F>(lookup: F) -> Result<PskAcceptor, TlsError>
    where
        F: Fn(&[u8]) -> Option<Psk> + Send + Sync + 'static,
    {
        let mut decoy = Zeroizing::new(vec![0u8; 32]);
        openssl::rand::rand_bytes(&mut decoy).map_err(ossl("random"))?;
        let index = Ssl::new_ex_index::<Vec<u8>>().map_err(ossl("ex data"))?;
        let mut b = SslContext::builder(SslMethod::tls_server()).map_err(ossl("context"))?;
        tls13_only(&mut b)?;
        // No session tickets: every connection proves the PSK afresh.
        b.set_num_tickets(0).map_err(ossl("tickets"))?;
        b.set_psk_server_callback(move |ssl, identity, out| {
            let key = match identity.and_then(|id| lookup(id).map(|k| (id, k))) {
                Some((id, key)) => {
                    ssl.set_ex_data(index, id.to_vec());
                    key
                }
                None => decoy.clone(),
            };
            let n = key.len().min(out.len());
            out[..n].copy_from_slice(&key[..n]);
            Ok(n)
        });
        Ok(PskAcceptor {
            ctx: b.build(),
            identity: index,
        })
    }

    /// Runs the handshake (at most `timeout`); returns the stream and the PSK identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<(SslStream<TcpStream>, Vec<u8>), TlsError> {
        let ssl = Ssl::new(&self.ctx).map_err(ossl("session"))?;
        let mut s = SslStream::new(ssl, tcp).map_err(ossl("stream"))?;
        tokio::time::timeout(timeout, Pin::new(&mut s).accept())
            .await
            .map_err(|_| TlsError::Handshake(format!("handshake not finished within {timeout:?}")))?
            .map_err(|e| TlsError::Handshake(format!("PSK handshake failed: {e}")))?;
        let identity = s.ssl().ex_data(self.identity).cloned().unwrap_or_default();
        Ok((s, identity))
    }
}

/// A client context offering `identity` with `key`.
pub fn client_context(identity: &str, key: Psk) -> Result<SslContext, TlsError> {
    if identity.is_empty() || identity.len() > 127 || identity.contains('\0') {
        return Err(TlsError::Config(format!(
            "invalid PSK identity {identity:?}"
        )));
    }
    let id = identity.as_bytes().to_vec();
    let mut b = SslContext::builder(SslMethod::tls_client()).map_err(ossl("context"))?;
    tls13_only(&mut b)?;
    b.set_psk_client_callback(move |_ssl, _hint, id_out, psk_out| {
        // The identity is written NUL-terminated; both buffers are OpenSSL's, sized by it.
        if id.len() + 1 > id_out.len() || key.len() > psk_out.len() {
            return Ok(0);
        }
        id_out[..id.len()].copy_from_slice(&id);
        id_out[id.len()] = 0;
        psk_out[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    Ok(b.build())
}

/// Connects with a context from [`client_context`].
pub async fn connect(ctx: &SslContext, tcp: TcpStream) -> Result<SslStream<TcpStream>, TlsError> {
    let ssl = Ssl::new(ctx).map_err(ossl("session"))?;
    let mut s = SslStream::new(ssl, tcp).map_err(ossl("stream"))?;
    Pin::new(&mut s)
        .connect()
        .await
        .map_err(|_| TlsError::Handshake("PSK rejected: unknown identity or wrong key".into()))?;
    Ok(s)
}
