//! The key-lifecycle calls of [`Client`]: import, wrap and unwrap, grants, versions, counters.

use ferrohsm_proto::{KeyInfo, KeyRef, KeySpec, Label, Request, Response, UsageSet};

use crate::client::{Client, unexpected};
use crate::error::ClientError;

impl Client {
    /// Imports a key: PKCS#8 DER for ed25519, p256 and x25519; 32 raw bytes for the
    /// symmetric types.
    pub async fn import(&self, spec: KeySpec, material: Vec<u8>) -> Result<KeyInfo, ClientError> {
        self.key(Request::Import { spec, material }).await
    }
    /// Wraps `key` under wrap key `with`: a self-describing blob.
    pub async fn wrap(&self, key: &KeyRef, with: &KeyRef) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Wrap {
            key: key.clone(),
            with: with.clone(),
        })
        .await
    }
    /// Creates key `label` from a wrapped blob.
    pub async fn unwrap(
        &self,
        with: &KeyRef,
        blob: Vec<u8>,
        label: Label,
    ) -> Result<KeyInfo, ClientError> {
        self.key(Request::Unwrap {
            with: with.clone(),
            blob,
            label,
        })
        .await
    }
    /// Lets client `to` use `key` for `ops`.
    pub async fn grant(&self, key: &KeyRef, to: &Label, ops: UsageSet) -> Result<(), ClientError> {
        self.done(Request::Grant {
            key: key.clone(),
            to: to.clone(),
            ops,
        })
        .await
    }
    /// The keys other clients granted to this one (`owner` set, `usage` as granted).
    pub async fn list_granted(&self) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(Request::ListGranted).await? {
            Response::Keys(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }
    /// Withdraws `from`'s grant of `key`.
    pub async fn revoke(&self, key: &KeyRef, from: &Label) -> Result<(), ClientError> {
        self.done(Request::Revoke {
            key: key.clone(),
            from: from.clone(),
        })
        .await
    }
    /// Adds a version to `key` and makes it current.
    pub async fn rotate(&self, key: &KeyRef) -> Result<KeyInfo, ClientError> {
        self.key(Request::Rotate(key.clone())).await
    }
    /// Deletes the material of every version of `key` below `below`.
    pub async fn retire(&self, key: &KeyRef, below: u32) -> Result<KeyInfo, ClientError> {
        self.key(Request::Retire {
            key: key.clone(),
            below,
        })
        .await
    }
    /// Re-encrypts a ciphertext under `key`'s current version, inside the server.
    pub async fn rewrap(
        &self,
        key: &KeyRef,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Rewrap {
            key: key.clone(),
            ciphertext,
            aad,
        })
        .await
    }
    async fn counter(&self, req: Request) -> Result<u64, ClientError> {
        match self.call(req).await? {
            Response::Counter(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }
    /// Creates counter `name` at 0.
    pub async fn counter_create(&self, name: &Label) -> Result<u64, ClientError> {
        self.counter(Request::CounterCreate(name.clone())).await
    }
    /// Reads counter `name`.
    pub async fn counter_read(&self, name: &Label) -> Result<u64, ClientError> {
        self.counter(Request::CounterRead(name.clone())).await
    }
    /// Increments counter `name`; the new value, once durable.
    pub async fn counter_inc(&self, name: &Label) -> Result<u64, ClientError> {
        self.counter(Request::CounterInc(name.clone())).await
    }
}
