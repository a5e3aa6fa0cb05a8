//! The client's error type and how it maps to `hsmctl` exit codes.

use ferrohsm_proto::{ErrorBody, Status};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{}: {}", .0.label(), .0.message)]
    Server(ErrorBody),
    /// The server refused the handshake (unknown client, wrong key, ...).
    #[error("{}: {}", .0.label(), .0.message)]
    Auth(ErrorBody),
    /// Could not reach the server, or the connection ended before the request was sent.
    #[error("connection: {0}")]
    Connection(String),
    /// The connection was lost after the request was sent and before its answer: whether the
    /// server carried it out is unknown, so a request that changes state is never sent again
    /// by the library (hsmctl prints `hsmctl: connection_lost: ...` and exits 3).
    #[error("connection_lost: {0}")]
    ConnectionLost(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Local input (profile, key file, argument) is unusable.
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The server status, if the server answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server(b) | ClientError::Auth(b) => b.status(),
            _ => None,
        }
    }

    /// `hsmctl` exit code: 1 server error status, 2 usage/local error, 3 connection,
    /// TLS or authentication failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Server(_) => 1,
            ClientError::Local(_) => 2,
            ClientError::Auth(_)
            | ClientError::Connection(_)
            | ClientError::ConnectionLost(_)
            | ClientError::Protocol(_) => 3,
        }
    }
}
