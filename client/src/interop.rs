//! Operations in the layouts other standards use (PKCS#11 first): ECDSA over a caller's
//! digest, AEAD as nonce-ciphertext-tag, and key search.

use ferrohsm_proto::{KeyInfo, KeyQuery, KeyRef, Page, Request, Response};

use crate::client::{Client, unexpected};
use crate::error::ClientError;

impl Client {
    /// ECDSA P-256 over a digest the caller computed; DER, as [`Client::sign`] makes.
    pub async fn sign_digest(&self, key: &KeyRef, digest: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::SignDigest {
            key: key.clone(),
            digest,
        })
        .await
    }

    /// Verifies a DER ECDSA signature over a digest; a bad one is `Err(Server(bad_signature))`.
    pub async fn verify_digest(
        &self,
        key: &KeyRef,
        digest: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.done(Request::VerifyDigest {
            key: key.clone(),
            digest,
            signature,
        })
        .await
    }

    /// AEAD encrypts into the standard layout: the server's 12-byte nonce, then the
    /// ciphertext and the 16-byte tag (only `aad` authenticated).
    pub async fn encrypt_raw(
        &self,
        key: &KeyRef,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::EncryptRaw {
            key: key.clone(),
            plaintext,
            aad,
        })
        .await
    }

    /// AEAD decrypts ciphertext-then-tag made with `nonce`.
    pub async fn decrypt_raw(
        &self,
        key: &KeyRef,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        self.bytes(Request::DecryptRaw {
            key: key.clone(),
            nonce,
            ciphertext,
            aad,
        })
        .await
        .map(zeroize::Zeroizing::new)
    }

    /// Every key of the caller's matching `query` (its page ignored: every page is fetched).
    pub async fn find(&self, query: KeyQuery) -> Result<Vec<KeyInfo>, ClientError> {
        self.every_page(|page| {
            Request::Find(KeyQuery {
                page,
                ..query.clone()
            })
        })
        .await
    }

    /// Every page of a paged listing, one request after another (`make` builds the request
    /// for a page); a page shorter than the most asked for is the last.
    pub(crate) async fn every_page(
        &self,
        make: impl Fn(Page) -> Request,
    ) -> Result<Vec<KeyInfo>, ClientError> {
        let mut all = Vec::new();
        let mut page = Some(Page::FIRST);
        while let Some(p) = page {
            let keys = match self.call(make(p)).await? {
                Response::Keys(k) => k,
                other => return Err(unexpected(other)),
            };
            page = p.next(&keys);
            all.extend(keys);
        }
        Ok(all)
    }
}
