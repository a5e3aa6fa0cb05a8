//! Response bodies and the shared codec; requests are in `request.rs`, the value types they
//! carry in `types.rs`, the tests in `tests.rs`.
//!
//! Each message kind has its own opcode; its body is the postcard encoding of the variant's
//! payload. Decoding is driven by the opcode and rejects trailing bytes, and the value types
//! ([`Label`], [`UsageSet`], [`KeyRef`]) refuse invalid values while deserializing, so a decoded
//! message is a valid one.

use crate::frame::{FLAG_ERROR, FLAG_RESPONSE, Frame, Opcode};
use crate::status::ErrorBody;
use crate::wire::{Buf, Raw};
use body::{empty_body, from_body, to_body, to_body_into};
use hello::{Challenge, HelloReply, Welcome};

pub mod body;
pub mod hello;
mod key_type;
pub mod kind;
mod request;
mod types;
mod usage;
pub use body::{BodyError, decode_error};
pub use key_type::{Family, KeyType, PublicForm, TypeInfo};
pub use kind::Kind;
pub use request::Request;
pub use types::*;

/// A successful response. Which variant answers which opcode is fixed (see [`Response::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Handshake step 2.
    Challenge(Challenge),
    /// Handshake step 4.
    Welcome(Welcome),
    /// Success with nothing to return (ping, delete, verify, mac-verify).
    Done,
    /// Bytes (random, digest, signature, ciphertext, plaintext, MAC, exported key).
    Bytes(Vec<u8>),
    /// One key (generate, derive, info).
    Key(KeyInfo),
    /// Every key (list).
    Keys(Vec<KeyInfo>),
    /// A raw public key and its type.
    PublicKey {
        /// Key type.
        key_type: KeyType,
        /// Raw public key (Ed25519/X25519 32 bytes; P-256 65-byte uncompressed point).
        bytes: Vec<u8>,
    },
    /// A counter's value (counter create, read, inc).
    Counter(u64),
    /// An encapsulation: the ciphertext for the peer, and the new key holding the shared
    /// secret.
    Encapsulated {
        /// The ML-KEM ciphertext.
        ciphertext: Vec<u8>,
        /// The new key.
        key: KeyInfo,
    },
    /// The node's status.
    Status(NodeStatus),
}

impl Response {
    /// The postcard body of this response.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body_into(&mut out);
        out
    }

    /// Appends the postcard body of this response to `out`.
    fn encode_body_into(&self, out: &mut Vec<u8>) {
        match self {
            Response::Challenge(c) => to_body_into(&HelloReply::Challenge(c.clone()), out),
            Response::Welcome(w) => to_body_into(w, out),
            Response::Done => {}
            Response::Bytes(b) => to_body_into(&Raw(b), out),
            Response::Key(k) => to_body_into(k, out),
            Response::Keys(k) => to_body_into(k, out),
            Response::PublicKey { key_type, bytes } => to_body_into(&(key_type, Raw(bytes)), out),
            Response::Counter(v) => to_body_into(v, out),
            Response::Status(s) => to_body_into(s, out),
            Response::Encapsulated { ciphertext, key } => {
                to_body_into(&(Raw(ciphertext), key), out)
            }
        }
    }

    /// Appends the whole response frame answering `opcode` / `request_id` to `out`, the body
    /// written in place (the same bytes as [`Response::to_frame`] encodes).
    pub fn encode_into(&self, opcode: u16, request_id: u64, out: &mut Vec<u8>) {
        Frame::encode_with(FLAG_RESPONSE, opcode, request_id, out, |out| match self {
            Response::Welcome(w) if opcode == Opcode::Hello as u16 => {
                to_body_into(&HelloReply::Welcome(w.clone()), out)
            }
            other => other.encode_body_into(out),
        })
    }

    /// What kind of response this is, without its contents (for error messages: a response
    /// may carry key material or plaintext, so it is never formatted whole).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Challenge(_) => "challenge",
            Response::Welcome(_) => "welcome",
            Response::Done => "done",
            Response::Bytes(_) => "bytes",
            Response::Key(_) => "key info",
            Response::Keys(_) => "key list",
            Response::PublicKey { .. } => "public key",
            Response::Counter(_) => "counter",
            Response::Status(_) => "status",
            Response::Encapsulated { .. } => "encapsulation",
        }
    }

    /// A response frame answering `opcode` / `request_id`.
    pub fn to_frame(&self, opcode: u16, request_id: u64) -> Frame {
        let body = match self {
            // A hello is answered by a HelloReply: a challenge, or (when the transport already
            // proved the client) the welcome itself.
            Response::Welcome(w) if opcode == Opcode::Hello as u16 => {
                to_body(&HelloReply::Welcome(w.clone()))
            }
            other => other.encode_body(),
        };
        Frame::new(FLAG_RESPONSE, opcode, request_id, body)
    }

    /// Decodes a successful response to a request with `opcode`.
    pub fn decode(opcode: u16, body: &[u8]) -> Result<Response, BodyError> {
        use kind::Answer;
        let op = Opcode::from_u16(opcode).ok_or(BodyError::UnknownOpcode(opcode))?;
        Ok(match op.kind().answer {
            Answer::Hello => match from_body(opcode, body)? {
                HelloReply::Challenge(c) => Response::Challenge(c),
                HelloReply::Welcome(w) => Response::Welcome(w),
            },
            Answer::Welcome => Response::Welcome(from_body(opcode, body)?),
            Answer::Done => empty_body(opcode, body).map(|_| Response::Done)?,
            Answer::Bytes(_) => Response::Bytes(from_body::<Buf>(opcode, body)?.0),
            Answer::Key => Response::Key(from_body(opcode, body)?),
            Answer::Counter => Response::Counter(from_body(opcode, body)?),
            Answer::Keys => Response::Keys(from_body(opcode, body)?),
            Answer::PublicKey => {
                let (key_type, Buf(bytes)) = from_body(opcode, body)?;
                Response::PublicKey { key_type, bytes }
            }
            Answer::Status => Response::Status(from_body(opcode, body)?),
            Answer::Encapsulated => {
                let (Buf(ciphertext), key) = from_body(opcode, body)?;
                Response::Encapsulated { ciphertext, key }
            }
            Answer::Nothing => return Err(BodyError::UnknownOpcode(opcode)),
        })
    }
}

/// An error frame answering `opcode` / `request_id`.
pub fn error_frame(opcode: u16, request_id: u64, err: &ErrorBody) -> Frame {
    Frame::new(FLAG_RESPONSE | FLAG_ERROR, opcode, request_id, to_body(err))
}

/// Appends the error frame answering `opcode` / `request_id` to `out`.
pub fn error_frame_into(opcode: u16, request_id: u64, err: &ErrorBody, out: &mut Vec<u8>) {
    Frame::encode_with(FLAG_RESPONSE | FLAG_ERROR, opcode, request_id, out, |out| {
        to_body_into(err, out)
    })
}

#[cfg(test)]
mod tests;
