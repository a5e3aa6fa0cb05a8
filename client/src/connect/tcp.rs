//! Plain TCP.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::profile::Identity;
use crate::{Client, ClientError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` (`host:port`) and authenticates as `id`.
pub async fn connect(addr: &str, id: &Identity) -> Result<Client, ClientError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connection(format!("timed out connecting to {addr}")))?
        .map_err(|e| ClientError::Connection(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    Client::handshake(rd, wr, id).await
}
