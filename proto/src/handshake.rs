//! The authentication handshake.
//!
//! ```text
//! client                                   server
//!   Hello { version, client }      ->
//!                                  <-      Challenge { session_id, nonce }   (fresh per connection)
//!   Proof { Ed25519 signature over transcript(client, session_id, nonce) } ->
//!                                  <-      Welcome { session_id, max_body, window }
//! ```
//! On TLS the credential has proved the client already: the server checks that the hello names
//! that client and answers it with the welcome directly (see [`HelloReply`]).
//! The signature covers a domain-separation prefix, the session id, the server's fresh nonce
//! and the client name, so a proof is good for exactly one connection and one name: replaying
//! it on another connection fails because that connection has another nonce.

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
    /// Ed25519 signature (64 bytes) over [`transcript`].
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

const DOMAIN: &[u8] = b"FerroHSM auth v1\0";

/// The bytes the client signs to prove its name for this session.
pub fn transcript(client: &str, session_id: u64, nonce: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(DOMAIN.len() + 8 + 32 + 2 + client.len());
    t.extend_from_slice(DOMAIN);
    t.extend_from_slice(&session_id.to_le_bytes());
    t.extend_from_slice(nonce);
    // Length-prefixed so that no two (nonce, name) pairs share a transcript.
    t.extend_from_slice(&(client.len() as u16).to_le_bytes());
    t.extend_from_slice(client.as_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_binds_every_field() {
        let n = [1u8; 32];
        let base = transcript("alice", 5, &n);
        assert_ne!(base, transcript("bob", 5, &n));
        assert_ne!(base, transcript("alice", 6, &n));
        assert_ne!(base, transcript("alice", 5, &[2u8; 32]));
        assert_eq!(base, transcript("alice", 5, &n));
    }
}
