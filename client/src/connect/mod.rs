//! Transports on the client side. Each one produces an authenticated byte stream;
//! [`crate::Client::handshake`] does the rest.

pub mod psk;
pub mod shm;
pub mod shm_sync;
pub mod tcp;
pub mod tls;

use std::time::Duration;

use crate::client::Client;
use crate::error::ClientError;
use crate::profile::{Profile, Transport};

/// The least time the last address to try gets to accept a connection.
const LAST_ADDRESS: Duration = Duration::from_secs(5);

/// Tries `addrs` in turn with `attempt` and answers the first that succeeds. A single address
/// keeps its own error; when several all fail, a node that answered and refused (credentials,
/// TLS) says more than those that are down, else the error names every address and why.
///
/// Each address but the last gets `within` to accept the connection; the last (or only) one,
/// with nothing left to fail over to, gets at least [`LAST_ADDRESS`], so a node whose accept
/// queue is briefly full (a SYN retried after a second) still lets its clients in.
async fn each<T, F, Fut>(
    addrs: &[String],
    within: Duration,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut(String, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut failures = Vec::with_capacity(addrs.len());
    for (i, a) in addrs.iter().enumerate() {
        let within = if i + 1 == addrs.len() {
            within.max(LAST_ADDRESS)
        } else {
            within
        };
        match attempt(a.clone(), within).await {
            Ok(v) => return Ok(v),
            Err(e) if addrs.len() == 1 => return Err(e),
            Err(e) => failures.push((a, e)),
        }
    }
    if let Some(at) = failures
        .iter()
        .position(|(_, e)| !matches!(e, ClientError::Connection(_)))
    {
        return Err(failures.swap_remove(at).1);
    }
    let each: Vec<String> = failures
        .iter()
        .map(|(a, e)| match e {
            ClientError::Connection(m) => m.clone(),
            other => format!("{a}: {other}"),
        })
        .collect();
    Err(ClientError::Connection(format!(
        "no node answered ({})",
        each.join("; ")
    )))
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
    let within = profile.connect_timeout;
    Ok(match transport {
        Transport::Tcp => {
            let addrs = profile
                .tcp_addrs
                .as_deref()
                .ok_or_else(|| missing(profile, "tcp"))?;
            Box::new(
                each(
                    addrs,
                    within,
                    |a, w| async move { tcp::tcp_stream(&a, w).await },
                )
                .await?,
            )
        }
        Transport::Tls => {
            let t = profile
                .tls
                .as_ref()
                .ok_or_else(|| missing(profile, "tls"))?;
            Box::new(
                each(&t.addrs, within, |a, w| async move {
                    tls::stream(t, &a, w).await
                })
                .await?,
            )
        }
        Transport::TlsPsk => {
            let p = profile
                .tls_psk
                .as_ref()
                .ok_or_else(|| missing(profile, "tls_psk"))?;
            Box::new(
                each(&p.addrs, within, |a, w| async move {
                    psk::stream(p, &a, w).await
                })
                .await?,
            )
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
    let within = profile.connect_timeout;
    let client = match transport.unwrap_or(profile.default_transport) {
        Transport::Tcp => {
            let addrs = profile
                .tcp_addrs
                .as_deref()
                .ok_or_else(|| missing(profile, "tcp"))?;
            let id = profile.identity()?;
            each(addrs, within, |a, w| {
                let id = &id;
                async move { tcp::connect(&a, w, id).await }
            })
            .await
        }
        Transport::Tls => {
            let t = profile
                .tls
                .as_ref()
                .ok_or_else(|| missing(profile, "tls"))?;
            let id = profile.name_only();
            each(&t.addrs, within, |a, w| {
                let id = &id;
                async move { tls::connect(t, &a, w, id).await }
            })
            .await
        }
        Transport::TlsPsk => {
            let p = profile
                .tls_psk
                .as_ref()
                .ok_or_else(|| missing(profile, "tls_psk"))?;
            let id = profile.name_only();
            each(&p.addrs, within, |a, w| {
                let id = &id;
                async move { psk::connect(p, &a, w, id).await }
            })
            .await
        }
        Transport::Shm => {
            let socket = profile
                .shm_socket
                .as_ref()
                .ok_or_else(|| missing(profile, "shm"))?;
            // The rings spin on their own: `spin_us` is for the socket transports.
            return shm::connect(socket, &profile.identity()?).await;
        }
    }?;
    client.set_spin(profile.spin);
    Ok(client)
}
