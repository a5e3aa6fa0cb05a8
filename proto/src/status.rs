//! Stable wire status codes. Numbers never change meaning once released; new codes are added.

use serde::{Deserialize, Serialize};

/// Status of a failed request, as carried in an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Status {
    /// A frame header was invalid (magic, reserved bits, length). The connection is closed.
    MalformedFrame = 1,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion = 2,
    /// The opcode is not one this side knows.
    UnknownOpcode = 3,
    /// The body is larger than the negotiated cap.
    BodyTooLarge = 4,
    /// The body did not decode into the message its opcode names.
    MalformedBody = 5,
    /// A message arrived that is not allowed in the current state (e.g. a key operation before
    /// authentication).
    ProtocolViolation = 6,
    /// Authentication failed: unknown client, wrong key, or a proof not made for this session.
    AuthFailed = 10,
    /// The peer's transport credentials are not allowed for this client.
    PeerNotAllowed = 11,
    /// No such key in the caller's namespace (also the answer for other clients' keys).
    KeyNotFound = 20,
    /// The caller already has a key with that label.
    LabelInUse = 21,
    /// The key's usage flags do not permit the operation.
    UsageNotPermitted = 22,
    /// The key is not exportable.
    NotExportable = 23,
    /// The operation does not apply to the key's type.
    WrongKeyType = 24,
    /// An argument is out of range or malformed (size, usage for a type, peer key, ...).
    InvalidArgument = 25,
    /// A counter is at its maximum (u64): it never wraps.
    CounterOverflow = 26,
    /// No counter of that name in the caller's namespace.
    CounterNotFound = 27,
    /// A per-client limit (keys, counters, grants) is reached; the message names the limit.
    QuotaExceeded = 28,
    /// The signature did not verify.
    BadSignature = 30,
    /// The ciphertext, tag or associated data did not authenticate.
    DecryptFailed = 31,
    /// The MAC did not verify.
    BadMac = 32,
    /// A server limit was reached (connections, keys); try later.
    Busy = 40,
    /// The server is shutting down and takes no new work.
    ShuttingDown = 41,
    /// An internal server error; details are in the server log.
    Internal = 50,
    /// The key's stored record failed its integrity check (edited, moved, swapped or
    /// truncated): the key is refused, never repaired. Other keys keep working.
    KeyStoreIntegrity = 51,
    /// The key store could not make the change durable (disk full, I/O error); nothing was
    /// changed.
    StoreFailed = 52,
}

impl Status {
    /// Every status, for tables and tests.
    pub const ALL: [Status; 25] = [
        Status::MalformedFrame,
        Status::UnsupportedVersion,
        Status::UnknownOpcode,
        Status::BodyTooLarge,
        Status::MalformedBody,
        Status::ProtocolViolation,
        Status::AuthFailed,
        Status::PeerNotAllowed,
        Status::KeyNotFound,
        Status::LabelInUse,
        Status::UsageNotPermitted,
        Status::NotExportable,
        Status::WrongKeyType,
        Status::InvalidArgument,
        Status::CounterOverflow,
        Status::CounterNotFound,
        Status::QuotaExceeded,
        Status::BadSignature,
        Status::DecryptFailed,
        Status::BadMac,
        Status::Busy,
        Status::ShuttingDown,
        Status::Internal,
        Status::KeyStoreIntegrity,
        Status::StoreFailed,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Looks a code up; `None` for codes this version does not know.
    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| s.code() == code)
    }

    /// Stable snake_case name, used in CLI error lines and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::MalformedFrame => "malformed_frame",
            Status::UnsupportedVersion => "unsupported_version",
            Status::UnknownOpcode => "unknown_opcode",
            Status::BodyTooLarge => "body_too_large",
            Status::MalformedBody => "malformed_body",
            Status::ProtocolViolation => "protocol_violation",
            Status::AuthFailed => "auth_failed",
            Status::PeerNotAllowed => "peer_not_allowed",
            Status::KeyNotFound => "key_not_found",
            Status::LabelInUse => "label_in_use",
            Status::UsageNotPermitted => "usage_not_permitted",
            Status::NotExportable => "not_exportable",
            Status::WrongKeyType => "wrong_key_type",
            Status::InvalidArgument => "invalid_argument",
            Status::CounterOverflow => "counter_overflow",
            Status::CounterNotFound => "counter_not_found",
            Status::QuotaExceeded => "quota_exceeded",
            Status::BadSignature => "bad_signature",
            Status::DecryptFailed => "decrypt_failed",
            Status::BadMac => "bad_mac",
            Status::Busy => "busy",
            Status::ShuttingDown => "shutting_down",
            Status::Internal => "internal",
            Status::KeyStoreIntegrity => "key_store_integrity",
            Status::StoreFailed => "store_failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Body of an error frame: a status code (kept numeric so unknown future codes survive) and a
/// human-readable message. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Numeric status code.
    pub code: u16,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body from a known status.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        ErrorBody {
            code: status.code(),
            message: message.into(),
        }
    }

    /// The status, if this version knows the code.
    pub fn status(&self) -> Option<Status> {
        Status::from_code(self.code)
    }

    /// `name (code)`, with `unknown` for codes this version does not know.
    pub fn label(&self) -> String {
        match self.status() {
            Some(s) => s.to_string(),
            None => format!("unknown ({})", self.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for s in Status::ALL {
            assert!(seen.insert(s.code()), "duplicate code {}", s.code());
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Status::KeyNotFound.code(), 20);
    }
}
