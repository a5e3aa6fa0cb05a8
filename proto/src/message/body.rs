//! The body codec every message shares: postcard, decoded whole (trailing bytes refused), and
//! why a body did not decode.

use serde::{Serialize, de::DeserializeOwned};

use crate::status::{ErrorBody, Status};

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The opcode is not a request (or response) this side knows.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// The body does not decode into the opcode's message.
    #[error("malformed body for opcode {opcode}: {reason}")]
    Malformed {
        /// Opcode.
        opcode: u16,
        /// Decoder's explanation.
        reason: String,
    },
}

impl BodyError {
    /// The wire status for this error.
    pub fn status(&self) -> Status {
        match self {
            BodyError::UnknownOpcode(_) => Status::UnknownOpcode,
            BodyError::Malformed { .. } => Status::MalformedBody,
        }
    }
}

/// Appends to a borrowed buffer (postcard's `to_extend` wants an `Extend` by value).
pub(crate) struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

/// Appends `v`'s postcard encoding to `out`.
pub(crate) fn to_body_into<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    // Invariant: serializing our own message types cannot fail (no maps with non-string keys,
    // no unsupported types); an empty body would be refused by the peer.
    let _ = postcard::to_extend(v, Append(out));
}

pub(crate) fn to_body<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    to_body_into(v, &mut out);
    out
}

/// Decodes a whole body as `T`, refusing trailing bytes.
pub(crate) fn from_body<T: DeserializeOwned>(opcode: u16, body: &[u8]) -> Result<T, BodyError> {
    let malformed = |reason: String| BodyError::Malformed { opcode, reason };
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

pub(crate) fn empty_body(opcode: u16, body: &[u8]) -> Result<(), BodyError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(BodyError::Malformed {
            opcode,
            reason: format!("{} trailing bytes", body.len()),
        })
    }
}

/// Decodes an error frame body.
pub fn decode_error(opcode: u16, body: &[u8]) -> Result<ErrorBody, BodyError> {
    from_body(opcode, body)
}
