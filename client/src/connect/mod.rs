//! Transports on the client side. Each one produces a byte stream; [`crate::Client::handshake`]
//! does the rest.

pub mod tcp;

use crate::profile::{Profile, Transport};
use crate::{Client, ClientError};

/// Connects and authenticates with `profile` over `transport` (default: the profile's).
pub async fn connect(
    profile: &Profile,
    transport: Option<Transport>,
) -> Result<Client, ClientError> {
    match transport.unwrap_or(profile.default_transport) {
        Transport::Tcp => {
            let addr = profile.tcp_addr.as_deref().ok_or_else(|| {
                ClientError::Local(format!("profile {}: no [tcp] addr", profile.path.display()))
            })?;
            tcp::connect(addr, &profile.identity()?).await
        }
        other => Err(ClientError::Local(format!(
            "transport {other:?} is not available in this build yet"
        ))),
    }
}
