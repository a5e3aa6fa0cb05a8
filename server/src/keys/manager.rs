//! The key-manager actor: owns the key store, the per-client namespaces and the policy checks.
//!
//! Its work per request is lookup and policy only (microseconds). Anything that needs crypto
//! comes back to the session as a [`Plan::Crypto`] job for the worker pool; new keys made by the
//! pool come back here as [`Insert`]. Session keys are tied to live sessions: [`OpenSession`]
//! registers one, [`EndSession`] drops (and so zeroizes) its keys, and an [`Insert`] for a
//! session that has ended is refused, so a key generated while its connection closed cannot
//! outlive it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::{Actor, Context, Handler, Message};
use ferrohsm_proto::{KeyInfo, KeyRef, KeySpec, Lifetime, Request, Response, Status, UsageSet};

use crate::crypto::CryptoJob;
use crate::error::OpError;
use crate::keys::material::KeyMaterial;
use crate::keys::policy::{self, Requirement};
use crate::keys::store::{KeyStore, NewKey};

/// Who is asking: the proven client name and its session.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Proven client name (the namespace).
    pub client: Arc<str>,
    /// Session id.
    pub session: u64,
}

/// What the session does next with a request.
#[derive(Debug)]
pub enum Plan {
    /// Answer right away.
    Done(Response),
    /// Run this on the crypto pool.
    Crypto(CryptoJob),
}

/// A session opened (after authentication).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OpenSession(pub Caller);

/// A session ended: drop its session keys.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EndSession(pub Caller);

/// Look up and check a key operation.
#[derive(Debug, Message)]
#[rtype(result = "Result<Plan, OpError>")]
pub struct Resolve {
    /// Caller.
    pub caller: Caller,
    /// The request (never ping/handshake).
    pub request: Request,
}

/// Store a key made by the pool.
#[derive(Debug, Message)]
#[rtype(result = "Result<KeyInfo, OpError>")]
pub struct Insert {
    /// Caller.
    pub caller: Caller,
    /// Requested key.
    pub spec: KeySpec,
    /// Resolved usage.
    pub usage: UsageSet,
    /// The secret.
    pub material: Box<KeyMaterial>,
}

/// The actor.
pub struct KeyManager {
    store: Box<dyn KeyStore>,
    live_sessions: HashSet<u64>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("live_sessions", &self.live_sessions.len())
            .finish()
    }
}

impl KeyManager {
    /// A manager over `store`.
    pub fn new(store: Box<dyn KeyStore>) -> Self {
        KeyManager {
            store,
            live_sessions: HashSet::new(),
        }
    }

    fn key(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<Arc<crate::keys::store::KeyEntry>, OpError> {
        self.store
            .find(&caller.client, key)
            .ok_or_else(|| OpError::not_found(key))
    }

    fn material(
        &self,
        caller: &Caller,
        key: &KeyRef,
        req: Requirement,
    ) -> Result<Arc<KeyMaterial>, OpError> {
        let entry = self.key(caller, key)?;
        policy::check(&entry, req)?;
        Ok(entry.material.clone())
    }

    fn check_new(&self, caller: &Caller, spec: &KeySpec) -> Result<UsageSet, OpError> {
        let usage = policy::usage_for_new_key(spec.key_type, spec.usage)?;
        if self.store.label_in_use(&caller.client, &spec.label) {
            return Err(OpError::new(
                Status::LabelInUse,
                format!("a key labelled {} already exists", spec.label),
            ));
        }
        Ok(usage)
    }

    /// Lookup and policy for one request.
    pub fn resolve(&mut self, caller: &Caller, request: Request) -> Result<Plan, OpError> {
        use policy::{DECRYPT, DERIVE, ENCRYPT, MAC, SIGN, VERIFY};
        let crypto = |job| Ok(Plan::Crypto(job));
        match request {
            Request::Generate(spec) => {
                let usage = self.check_new(caller, &spec)?;
                crypto(CryptoJob::Generate(spec, usage))
            }
            Request::Derive { key, peer, spec } => {
                let m = self.material(caller, &key, DERIVE)?;
                if !crate::crypto::ops::derivable(spec.key_type) {
                    return Err(OpError::invalid(format!(
                        "cannot derive a {} key; expected chacha20poly1305, aes256gcm or hmac-sha256",
                        spec.key_type
                    )));
                }
                let usage = self.check_new(caller, &spec)?;
                crypto(CryptoJob::Derive(m, peer, spec, usage))
            }
            Request::List => Ok(Plan::Done(Response::Keys(self.store.list(&caller.client)))),
            Request::Info(key) => Ok(Plan::Done(Response::Key(
                self.key(caller, &key)?.info.clone(),
            ))),
            Request::PublicKey(key) => {
                let entry = self.key(caller, &key)?;
                let bytes = entry.material.public_key().ok_or_else(|| {
                    OpError::new(
                        Status::WrongKeyType,
                        format!(
                            "key {} of type {} has no public key",
                            key, entry.info.key_type
                        ),
                    )
                })?;
                Ok(Plan::Done(Response::PublicKey {
                    key_type: entry.info.key_type,
                    bytes,
                }))
            }
            Request::Export(key) => {
                let entry = self.key(caller, &key)?;
                if !entry.info.exportable {
                    return Err(OpError::new(
                        Status::NotExportable,
                        format!("key {key} is not exportable"),
                    ));
                }
                Ok(Plan::Done(Response::Bytes(
                    entry.material.secret_bytes().to_vec(),
                )))
            }
            Request::Delete(key) => match self.store.remove(&caller.client, &key) {
                Some(_) => Ok(Plan::Done(Response::Done)),
                None => Err(OpError::not_found(&key)),
            },
            Request::Sign { key, data } => {
                crypto(CryptoJob::Sign(self.material(caller, &key, SIGN)?, data))
            }
            Request::Verify {
                key,
                data,
                signature,
            } => crypto(CryptoJob::Verify(
                self.material(caller, &key, VERIFY)?,
                data,
                signature,
            )),
            Request::Encrypt {
                key,
                plaintext,
                aad,
            } => crypto(CryptoJob::Encrypt(
                self.material(caller, &key, ENCRYPT)?,
                zeroize::Zeroizing::new(plaintext),
                aad,
            )),
            Request::Decrypt {
                key,
                ciphertext,
                aad,
            } => crypto(CryptoJob::Decrypt(
                self.material(caller, &key, DECRYPT)?,
                ciphertext,
                aad,
            )),
            Request::Mac { key, data } => {
                crypto(CryptoJob::Mac(self.material(caller, &key, MAC)?, data))
            }
            Request::MacVerify { key, data, mac } => crypto(CryptoJob::MacVerify(
                self.material(caller, &key, MAC)?,
                data,
                mac,
            )),
            other => Err(OpError::new(
                Status::ProtocolViolation,
                format!("{:?} is not a key operation", other.opcode()),
            )),
        }
    }

    /// Stores a key the pool made.
    pub fn insert(&mut self, msg: Insert) -> Result<KeyInfo, OpError> {
        let Insert {
            caller,
            spec,
            usage,
            material,
        } = msg;
        let session = spec.session.then_some(caller.session);
        if session.is_some() && !self.live_sessions.contains(&caller.session) {
            return Err(OpError::new(Status::ShuttingDown, "the session ended"));
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let info = KeyInfo {
            id: 0,
            label: spec.label,
            key_type: spec.key_type,
            usage,
            exportable: spec.exportable,
            lifetime: Lifetime::Persistent,
            created,
        };
        let entry = self.store.insert(
            &caller.client,
            NewKey {
                info,
                session,
                material: Arc::from(material),
            },
        )?;
        tracing::debug!(client = %caller.client, id = entry.info.id, key_type = %entry.info.key_type, "key stored");
        Ok(entry.info.clone())
    }
}

impl Actor for KeyManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Sessions queue work here; a bounded mailbox makes them wait rather than grow memory.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<OpenSession> for KeyManager {
    type Result = ();
    fn handle(&mut self, msg: OpenSession, _: &mut Context<Self>) {
        self.live_sessions.insert(msg.0.session);
    }
}

impl Handler<EndSession> for KeyManager {
    type Result = ();
    fn handle(&mut self, msg: EndSession, _: &mut Context<Self>) {
        self.live_sessions.remove(&msg.0.session);
        let n = self.store.remove_session(&msg.0.client, msg.0.session);
        if n > 0 {
            tracing::debug!(client = %msg.0.client, session = msg.0.session, keys = n, "session keys dropped");
        }
    }
}

impl Handler<Resolve> for KeyManager {
    type Result = Result<Plan, OpError>;
    fn handle(&mut self, msg: Resolve, _: &mut Context<Self>) -> Self::Result {
        self.resolve(&msg.caller, msg.request)
    }
}

impl Handler<Insert> for KeyManager {
    type Result = Result<KeyInfo, OpError>;
    fn handle(&mut self, msg: Insert, _: &mut Context<Self>) -> Self::Result {
        self.insert(msg)
    }
}
