//! Plain TCP: the session proves the name with the Ed25519 auth key.

use crate::profile::Identity;
use crate::{Client, ClientError};

/// Connects to `addr` (`host:port`) and authenticates as `id`.
pub async fn connect(addr: &str, id: &Identity) -> Result<Client, ClientError> {
    let (rd, wr) = super::tcp_stream(addr).await?.into_split();
    Client::handshake(rd, wr, id).await
}
