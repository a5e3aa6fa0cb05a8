//! The handshake's messages (the state machines that exchange them are in
//! [`crate::handshake`]).

use serde::{Deserialize, Serialize};

/// Handshake step 1: the client names itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u8,
    /// Configured client name to authenticate as.
    pub client: String,
}

/// Handshake step 2: the server's fresh challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Server-chosen session id.
    pub session_id: u64,
    /// 32 fresh random bytes.
    pub nonce: [u8; 32],
}

/// The answer to a hello: a challenge to sign, or, when the transport already proved the
/// client (TLS certificate or PSK), the welcome straight away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Sign this (plain TCP, shared memory).
    Challenge(Challenge),
    /// Session open (TLS).
    Welcome(Welcome),
}

/// Handshake step 3: the client's proof of its auth key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Ed25519 signature (64 bytes) over the handshake's transcript
    /// ([`crate::handshake::transcript`]).
    #[serde(with = "crate::wire::bytes")]
    pub signature: Vec<u8>,
}

/// Handshake step 4: the session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Session id (the same as in the challenge).
    pub session_id: u64,
    /// Largest body the server accepts.
    pub max_body: u32,
    /// How many requests may be in flight at once.
    pub window: u32,
}
