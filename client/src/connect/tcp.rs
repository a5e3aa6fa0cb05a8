//! Plain TCP: the session proves the name with the Ed25519 auth key.

use std::time::Duration;

use crate::profile::Identity;
use crate::{Client, ClientError};

/// Connects to `addr` (`host:port`) within `within` and authenticates as `id`.
pub async fn connect(addr: &str, within: Duration, id: &Identity) -> Result<Client, ClientError> {
    let (rd, wr) = super::tcp_stream(addr, within).await?.into_split();
    Client::handshake(rd, wr, id).await
}
