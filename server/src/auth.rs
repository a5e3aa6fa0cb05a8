//! The Ed25519 challenge-response that proves a client's name on transports without a TLS
//! credential (plain TCP in the session; shared memory on its set-up socket).

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use ferrohsm_proto::handshake::{Challenge, Hello, transcript};
use ferrohsm_proto::{PROTOCOL_VERSION, Status};

use crate::error::OpError;
use crate::session::Shared;

/// Refuses a hello of another protocol version.
pub fn check_version(h: &Hello) -> Result<(), OpError> {
    if h.version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(OpError::new(
        Status::UnsupportedVersion,
        format!(
            "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
            h.version
        ),
    ))
}

/// A challenge sent, waiting for its proof.
pub struct PendingProof {
    client: String,
    session_id: u64,
    nonce: [u8; 32],
    key: Option<Box<VerifyingKey>>,
}

impl std::fmt::Debug for PendingProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingProof")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// A fresh challenge for `client`. An unknown name gets one too (and fails at the proof), so
/// the handshake reveals no client names.
pub fn challenge(
    shared: &Shared,
    session_id: u64,
    client: String,
) -> Result<(PendingProof, Challenge), OpError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|_| OpError::internal("OS random source failed"))?;
    let key = shared
        .clients
        .get(&client)
        .and_then(|c| c.auth_key)
        .map(Box::new);
    Ok((
        PendingProof {
            client,
            session_id,
            nonce,
            key,
        },
        Challenge { session_id, nonce },
    ))
}

impl PendingProof {
    /// Checks the signature over this challenge's transcript; the proven client name on
    /// success. Every failure reads the same, whatever the cause.
    pub fn verify(&self, signature: &[u8], peer: &str) -> Result<Arc<str>, OpError> {
        let t = transcript(&self.client, self.session_id, &self.nonce);
        let ok = self.key.as_ref().is_some_and(|k| {
            ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify_strict(&t, &sig).is_ok())
        });
        if !ok {
            tracing::info!(%peer, claimed = %self.client, "authentication failed");
            return Err(OpError::new(
                Status::AuthFailed,
                "authentication failed: unknown client or proof not made with its auth key for this session",
            ));
        }
        Ok(Arc::from(self.client.as_str()))
    }
}
