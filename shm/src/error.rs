//! The errors of this crate.

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// A system call failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The segment is not one of ours, or its header is inconsistent.
    #[error("invalid segment: {0}")]
    Invalid(String),
    /// The peer wrote indices that cannot be true; the session must end.
    #[error("ring corrupted by the peer: {0}")]
    Corrupt(String),
}

pub(crate) fn os(context: &'static str) -> impl FnOnce(rustix::io::Errno) -> ShmError {
    move |e| ShmError::Os {
        context,
        source: e.into(),
    }
}
