//! Transports on the client side. Each one produces an authenticated byte stream;
//! [`crate::Client::handshake`] does the rest.

pub mod psk;
pub mod shm;
pub mod shm_sync;
pub mod tcp;
pub mod tls;

use std::time::Duration;

use tokio::net::TcpStream;

use crate::profile::{Profile, Transport};
use crate::{Client, ClientError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection (bounded wait, Nagle off).
pub(crate) async fn tcp_stream(addr: &str) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connection(format!("timed out connecting to {addr}")))?
        .map_err(|e| ClientError::Connection(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn missing(profile: &Profile, section: &str) -> ClientError {
    ClientError::Local(format!(
        "profile {}: no [{section}] section",
        profile.path.display()
    ))
}

/// A byte stream to the server, before any FerroHSM frame.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

/// Opens `transport`'s stream and nothing more: TCP; TLS with the profile's certificate or
/// PSK, handshaken; for shm, the set-up socket (where hello and proof go). For tools and tests
/// that speak the protocol by hand (hostile peers, bad-input matrices).
pub async fn open_stream(
    profile: &Profile,
    transport: Transport,
) -> Result<Box<dyn RawStream>, ClientError> {
    Ok(match transport {
        Transport::Tcp => {
            let addr = profile
                .tcp_addr
                .as_deref()
                .ok_or_else(|| missing(profile, "tcp"))?;
            Box::new(tcp_stream(addr).await?)
        }
        Transport::Tls => {
            let t = profile
                .tls
                .as_ref()
                .ok_or_else(|| missing(profile, "tls"))?;
            Box::new(tls::stream(t).await?)
        }
        Transport::TlsPsk => {
            let p = profile
                .tls_psk
                .as_ref()
                .ok_or_else(|| missing(profile, "tls_psk"))?;
            Box::new(psk::stream(p).await?)
        }
        Transport::Shm => {
            let socket = profile
                .shm_socket
                .as_ref()
                .ok_or_else(|| missing(profile, "shm"))?;
            Box::new(tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                ClientError::Connection(format!("cannot connect to {}: {e}", socket.display()))
            })?)
        }
    })
}

/// Connects and authenticates with `profile` over `transport` (default: the profile's).
pub async fn connect(
    profile: &Profile,
    transport: Option<Transport>,
) -> Result<Client, ClientError> {
    match transport.unwrap_or(profile.default_transport) {
        Transport::Tcp => {
            let addr = profile
                .tcp_addr
                .as_deref()
                .ok_or_else(|| missing(profile, "tcp"))?;
            tcp::connect(addr, &profile.identity()?).await
        }
        Transport::Tls => {
            let t = profile
                .tls
                .as_ref()
                .ok_or_else(|| missing(profile, "tls"))?;
            tls::connect(t, &profile.name_only()).await
        }
        Transport::TlsPsk => {
            let p = profile
                .tls_psk
                .as_ref()
                .ok_or_else(|| missing(profile, "tls_psk"))?;
            psk::connect(p, &profile.name_only()).await
        }
        Transport::Shm => {
            let socket = profile
                .shm_socket
                .as_ref()
                .ok_or_else(|| missing(profile, "shm"))?;
            shm::connect(socket, &profile.identity()?).await
        }
    }
}
