//! Post-quantum operations: ML-DSA with a context string, ML-KEM encapsulation and
//! decapsulation (the shared secret stays in the HSM as a new key).

use ferrohsm_proto::{KeyInfo, KeyRef, KeySpec, Request, Response};

use crate::client::{Client, unexpected};
use crate::error::ClientError;

impl Client {
    /// Signs with a FIPS 204 context string (ML-DSA only; an empty context is a plain
    /// [`Client::sign`], which any signing key takes).
    pub async fn sign_with_context(
        &self,
        key: &KeyRef,
        data: Vec<u8>,
        context: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        if context.is_empty() {
            return self.sign(key, data).await;
        }
        self.bytes(Request::SignContext {
            key: key.clone(),
            data,
            context,
        })
        .await
    }

    /// Verifies a signature made with a context string (an empty one is a plain
    /// [`Client::verify`]); a bad signature is `Err(Server(bad_signature))`.
    pub async fn verify_with_context(
        &self,
        key: &KeyRef,
        data: Vec<u8>,
        signature: Vec<u8>,
        context: Vec<u8>,
    ) -> Result<(), ClientError> {
        if context.is_empty() {
            return self.verify(key, data, signature).await;
        }
        self.done(Request::VerifyContext {
            key: key.clone(),
            data,
            signature,
            context,
        })
        .await
    }

    /// ML-KEM: encapsulates to `key`; the ciphertext for its holder, and the new key (`spec`)
    /// holding the shared secret.
    pub async fn encapsulate(
        &self,
        key: &KeyRef,
        spec: KeySpec,
    ) -> Result<(Vec<u8>, KeyInfo), ClientError> {
        self.encapsulated(Request::Encapsulate {
            key: key.clone(),
            spec,
        })
        .await
    }

    /// ML-KEM: encapsulates to a peer's public key (SubjectPublicKeyInfo DER).
    pub async fn encapsulate_peer(
        &self,
        peer_spki: Vec<u8>,
        spec: KeySpec,
    ) -> Result<(Vec<u8>, KeyInfo), ClientError> {
        self.encapsulated(Request::EncapsulatePeer {
            peer: peer_spki,
            spec,
        })
        .await
    }

    /// ML-KEM: decapsulates `ciphertext` with `key` into a new key (`spec`).
    pub async fn decapsulate(
        &self,
        key: &KeyRef,
        ciphertext: Vec<u8>,
        spec: KeySpec,
    ) -> Result<KeyInfo, ClientError> {
        self.key(Request::Decapsulate {
            key: key.clone(),
            ciphertext,
            spec,
        })
        .await
    }

    async fn encapsulated(&self, req: Request) -> Result<(Vec<u8>, KeyInfo), ClientError> {
        match self.call(req).await? {
            Response::Encapsulated { ciphertext, key } => Ok((ciphertext, key)),
            other => Err(unexpected(other)),
        }
    }
}
