//! Plain TCP: the session proves the name with the Ed25519 auth key.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::client::Client;
use crate::error::ClientError;
use crate::profile::Identity;

/// Connects to `addr` (`host:port`) within `within` and authenticates as `id`.
pub async fn connect(addr: &str, within: Duration, id: &Identity) -> Result<Client, ClientError> {
    let (rd, wr) = tcp_stream(addr, within).await?.into_split();
    Client::handshake(rd, wr, id).await
}

/// Opens a TCP connection to `addr` within `within` (Nagle off).
pub(crate) async fn tcp_stream(addr: &str, within: Duration) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            ClientError::Connection(format!(
                "timed out connecting to {addr} (after {} ms)",
                within.as_millis()
            ))
        })?
        .map_err(|e| ClientError::Connection(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
