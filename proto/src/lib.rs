//! The FerroHSM wire protocol, sans-IO.
//!
//! This crate contains no networking code: no sockets, no async runtime, no TLS. It turns bytes
//! into typed frames and messages and back, and every transport (TCP, TLS, shared memory) and
//! both sides (server and client) use it the same way.
//!
//! ```text
//!  bytes from a transport                                  bytes to a transport
//!        |                                                        ^
//!        v                                                        |
//!  FrameDecoder::decode  -> Frame { header, body } -> Request::decode / Response::decode
//!  (header checked, body cap enforced before allocation)   Frame::encode <- Request::encode
//! ```
//!
//! Key types:
//! - [`frame`]: the fixed 20-byte little-endian [`frame::Header`] and the incremental
//!   [`frame::FrameDecoder`] that answers "need more bytes" until a whole frame is buffered.
//! - [`message`]: [`message::Request`] and [`message::Response`] bodies (postcard), and the value
//!   types that cannot hold invalid data ([`message::Label`], [`message::UsageSet`], ...).
//! - [`status`]: the stable numeric [`status::Status`] codes carried by error frames.
//! - [`handshake`]: hello / challenge / proof / welcome and the signed transcript.
//! - [`pem`]: SubjectPublicKeyInfo and PKCS#8 encodings of the key types, as OpenSSL reads them.
//! - [`spin`]: the budget of a side that looks for its peer's next frame before it sleeps.
#![forbid(unsafe_code)]

pub mod frame;
pub mod handshake;
mod limits;
pub mod message;
mod opcode;
pub mod pem;
pub mod spin;
pub mod status;
mod wire;

pub use frame::{Decoded, Frame, FrameDecoder, FrameError, FrameReader, Header, Opcode};
pub use limits::{DEFAULT_MAX_BODY, MAX_CONTEXT, MAX_RANDOM, PROTOCOL_VERSION};
pub use message::kind;
pub use message::{
    DigestAlg, Family, KeyInfo, KeyQuery, KeyRef, KeySpec, KeyType, Kind, Label, Lifetime,
    MAX_PAGE, Origin, Page, PublicForm, Request, Response, TypeInfo, Usage, UsageSet, VersionInfo,
};
pub use status::{ErrorBody, Status};
