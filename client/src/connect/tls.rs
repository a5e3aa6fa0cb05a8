//! Mutual-certificate TLS: the client certificate proves the name.

use std::time::Duration;

use crate::client::Client;
use crate::error::ClientError;
use crate::profile::{Identity, TlsProfile};

/// Connects to `addr` over TLS with the profile's CA, server name and client certificate.
pub async fn connect(
    t: &TlsProfile,
    addr: &str,
    within: Duration,
    id: &Identity,
) -> Result<Client, ClientError> {
    let (rd, wr) = tokio::io::split(stream(t, addr, within).await?);
    Client::handshake(rd, wr, id).await
}

/// The TLS stream to `addr`, handshaken, before any FerroHSM frame.
pub async fn stream(
    t: &TlsProfile,
    addr: &str,
    within: Duration,
) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + use<>, ClientError> {
    let identity = t.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let config = ferrohsm_tls::client::config(&t.ca, identity)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let tcp = super::tcp::tcp_stream(addr, within).await?;
    ferrohsm_tls::client::connect(config, &t.server_name, tcp)
        .await
        .map_err(|e| ClientError::Connection(format!("TLS to {addr}: {e}")))
}
