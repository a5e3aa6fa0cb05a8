//! Errors: [`OpError`] answers one request (mapped to a wire status at the session boundary);
//! [`ServerError`] stops the server from starting.

use ferrohsm_proto::{ErrorBody, Status};

/// A failed operation: a wire status and a message that never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Wire status.
    pub status: Status,
    /// Human-readable message.
    pub message: String,
}

impl OpError {
    /// An error with the given status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        OpError {
            status,
            message: message.into(),
        }
    }

    /// The uniform "not found" answer: identical for a missing key and another client's key,
    /// so it is no existence oracle.
    pub fn not_found(key: &impl std::fmt::Display) -> Self {
        OpError::new(Status::KeyNotFound, format!("no key {key}"))
    }

    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        OpError::new(Status::InvalidArgument, message)
    }

    /// An internal error (details belong in the log, not here).
    pub fn internal(message: impl Into<String>) -> Self {
        OpError::new(Status::Internal, message)
    }

    /// The wire form.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.status, self.message.clone())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for OpError {}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration file is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// `hsmd init` refused or failed.
    #[error("{0}")]
    Init(String),
    /// The key store cannot be opened or unlocked.
    #[error("{0}")]
    Store(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// OS error.
        source: std::io::Error,
    },
}

impl ServerError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }
}
