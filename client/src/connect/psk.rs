//! TLS 1.3 with a pre-shared key: the PSK proves the name.

use std::time::Duration;

use crate::client::Client;
use crate::error::ClientError;
use crate::profile::{Identity, PskProfile};

/// Connects to `addr` over TLS-PSK with the profile's identity and key file.
pub async fn connect(
    p: &PskProfile,
    addr: &str,
    within: Duration,
    id: &Identity,
) -> Result<Client, ClientError> {
    let (rd, wr) = tokio::io::split(stream(p, addr, within).await?);
    Client::handshake(rd, wr, id).await
}

/// The TLS-PSK stream to `addr`, handshaken, before any FerroHSM frame.
pub async fn stream(
    p: &PskProfile,
    addr: &str,
    within: Duration,
) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + use<>, ClientError> {
    let key =
        ferrohsm_tls::psk::load_psk(&p.key_file).map_err(|e| ClientError::Local(e.to_string()))?;
    let ctx = ferrohsm_tls::psk::client_context(&p.identity, key)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let tcp = super::tcp::tcp_stream(addr, within).await?;
    ferrohsm_tls::psk::connect(&ctx, tcp)
        .await
        .map_err(|e| ClientError::Connection(format!("TLS-PSK to {addr}: {e}")))
}
