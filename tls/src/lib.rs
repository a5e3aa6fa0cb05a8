//! TLS for FerroHSM, both sides: configurations and stream set-up, no key logic.
//!
//! Two stacks, on purpose:
//! - **Certificates** use rustls 0.23 with the ring provider only (default features off, so
//!   aws-lc is never compiled and there is no runtime provider ambiguity): TLS 1.3 (1.2 only
//!   when configured), and a client-certificate verifier that requires a chain to the
//!   configured client CA.
//! - **Pre-shared keys** use OpenSSL (the `openssl` crate, built from source by its vendored
//!   feature): rustls has no external-PSK support (rustls issue #174). OpenSSL's TLS 1.2-style
//!   PSK callbacks also serve TLS 1.3 with SHA-256 cipher suites, which is what we offer:
//!   TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256, with (EC)DHE (psk_dhe_ke).
//!
//! ```text
//!  server: TcpStream --[server::CertAcceptor]--> stream + peer names (CN, SANs)
//!          TcpStream --[psk::PskAcceptor]------> stream + PSK identity
//!  client: TcpStream --[client::connect_cert / psk::connect]--> stream
//! ```
//! What the names and identities *mean* (which configured client they are) is the server's
//! business, not this crate's. [`pki`] makes the development PKI that `hsmd init` writes.
#![forbid(unsafe_code)]

pub mod client;
pub mod pki;
pub mod psk;
pub mod server;

use std::path::Path;

/// Errors of this crate. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or PSK file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The handshake failed.
    #[error("{0}")]
    Handshake(String),
}

pub(crate) fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads a file (for PEM inputs).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_err(path, e))
}

/// The ring crypto provider: the only one this workspace compiles.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
