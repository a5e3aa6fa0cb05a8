//! One authenticated connection: the handshake, then requests pipelined over it, each
//! answered on its own oneshot whatever order the server answers in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferrohsm_proto::handshake::{ClientHandshake, ClientStep, HandshakeError, Welcome};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::spin::Looks;
use ferrohsm_proto::{DigestAlg, FrameReader, KeyInfo, KeyRef, KeyType, Page, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::ClientError;
use crate::io::{
    PendingMap, PendingState, Reply, closed, read_frame, read_loop, send_frame, write_loop,
};
use crate::profile::Identity;

/// What the clones of one connection share.
struct Inner {
    tx: mpsc::Sender<Vec<u8>>,
    pending: PendingMap,
    next_id: AtomicU64,
    window: Arc<Semaphore>,
    welcome: Welcome,
    /// How long a caller with one request out looks for its answer before it may sleep, in
    /// microseconds.
    spin_us: AtomicU64,
}

/// An authenticated connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.inner.welcome.session_id)
            .finish()
    }
}

/// A request that has been sent; await [`Pending::wait`] for its response.
#[derive(Debug)]
pub struct Pending {
    rx: oneshot::Receiver<Reply>,
    slot: OwnedSemaphorePermit,
    /// The connection's window: all of it but this request's slot free means it is the only
    /// one out.
    window: usize,
    spin: Duration,
}

impl Pending {
    /// The response.
    ///
    /// When this is the only request out, the caller first looks for the answer without
    /// letting its thread sleep, for up to the connection's spin time: each look that finds
    /// nothing yields, and a yielded turn makes the runtime poll its sockets without waiting,
    /// so an answer that arrives in that time is read at once instead of after the thread is
    /// woken (tens of microseconds on a virtual machine). Then it waits as usual. With more
    /// requests out (pipelining), nobody spins: answers keep arriving anyway. Every few looks
    /// the thread gives its core away, so on a busy machine the server runs instead.
    ///
    /// Only on a current-thread runtime (the blocking client's, the PKCS#11 module's, most
    /// tools'): there the yielded turn is what polls the socket. On a multi-thread runtime the
    /// socket is usually polled by another worker asleep in the kernel, which a yield does not
    /// reach, so spinning there would burn a core and save nothing.
    pub async fn wait(mut self) -> Reply {
        let alone = self.slot.semaphore().available_permits() + 1 >= self.window;
        let polls_here = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let window = if alone && polls_here {
            self.spin
        } else {
            Duration::ZERO
        };
        let mut looks = Looks::new(window);
        while looks.again() {
            match self.rx.try_recv() {
                Ok(reply) => return reply,
                Err(oneshot::error::TryRecvError::Closed) => return Err(crate::io::lost()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            tokio::task::yield_now().await;
        }
        self.rx.await.unwrap_or_else(|_| Err(crate::io::lost()))
    }
}

/// A response of the wrong kind. Only its kind is named: a response may carry key material
/// or plaintext, so it is never formatted whole.
pub(crate) fn unexpected(r: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response: {}", r.kind()))
}

/// Signs handshake transcript bytes with the identity's auth key.
pub(crate) fn signer(id: &Identity) -> impl FnOnce(&[u8]) -> Result<Vec<u8>, String> + '_ {
    move |t| {
        let key = id.auth_key.as_ref().ok_or_else(|| {
            "the server asked for an auth-key proof but the profile has no auth_key".to_string()
        })?;
        Ok(ed25519_dalek::Signer::sign(key, t).to_bytes().to_vec())
    }
}

/// A handshake failure as the client reports it.
pub(crate) fn handshake_error(e: HandshakeError) -> ClientError {
    match e {
        HandshakeError::Refused(b) => ClientError::Auth(b),
        HandshakeError::Unexpected(m) => ClientError::Protocol(m),
        HandshakeError::NoProof(m) => ClientError::Connection(m),
    }
}

impl Client {
    /// Authenticates over an established byte stream and starts the reader and writer tasks
    /// (on the current tokio runtime).
    pub async fn handshake<R, W>(mut rd: R, mut wr: W, id: &Identity) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut frames = FrameReader::new(ferrohsm_proto::DEFAULT_MAX_BODY);
        let mut hs = ClientHandshake::new(&id.name);
        // On TLS the credential already proved the name and the server welcomes us at once;
        // elsewhere it sends a challenge for our auth key.
        let mut out = hs.start();
        let welcome = loop {
            send_frame(&mut wr, &out).await?;
            let f = read_frame(&mut rd, &mut frames).await?;
            match hs.on_frame(&f, signer(id)).map_err(handshake_error)? {
                ClientStep::Send(next) => out = next,
                ClientStep::Done(w) => break w,
            }
        };
        Ok(Client::start(rd, wr, frames, welcome))
    }

    fn start<R, W>(rd: R, wr: W, frames: FrameReader, welcome: Welcome) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let window = welcome.window.max(1) as usize;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(window);
        let pending: PendingMap = Arc::default();
        tokio::spawn(write_loop(wr, rx));
        tokio::spawn(read_loop(rd, frames, pending.clone(), welcome.max_body));
        Client {
            inner: Arc::new(Inner {
                tx,
                pending,
                next_id: AtomicU64::new(1),
                window: Arc::new(Semaphore::new(window)),
                welcome,
                spin_us: AtomicU64::new(crate::profile::DEFAULT_SPIN_US),
            }),
        }
    }

    /// Session id and limits the server granted.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// Sets how long a caller with one request out looks for its answer before its thread may
    /// sleep (zero: never; see [`Pending::wait`]). A connection starts with the profile's
    /// `spin_us` over TCP and TLS, and with zero over shared memory, whose rings spin on their
    /// own. At most [`crate::profile::MAX_SPIN_US`] (longer is cut to it). Applies to requests
    /// sent from now on; every clone shares it. Spinning happens only on a current-thread
    /// runtime (see [`Pending::wait`]).
    pub fn set_spin(&self, spin: Duration) {
        let us = u64::try_from(spin.as_micros())
            .unwrap_or(u64::MAX)
            .min(crate::profile::MAX_SPIN_US);
        self.inner.spin_us.store(us, Ordering::Relaxed);
    }

    /// How long a caller with one request out looks for its answer before it may sleep.
    pub fn spin(&self) -> Duration {
        Duration::from_micros(self.inner.spin_us.load(Ordering::Relaxed))
    }

    /// Sends a request without waiting for its response (pipelining). Waits only when the
    /// server's in-flight window is full.
    pub async fn submit(&self, mut req: Request) -> Result<Pending, ClientError> {
        let slot = self
            .inner
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut wire = Vec::new();
        req.encode_into(id, &mut wire);
        // The request's own copies of secrets go now; the wire is wiped once written.
        req.wipe();
        let body_len = wire.len() - ferrohsm_proto::frame::HEADER_LEN;
        if body_len > self.inner.welcome.max_body as usize {
            zeroize::Zeroize::zeroize(&mut wire);
            return Err(ClientError::Local(format!(
                "request of {body_len} bytes exceeds the server's limit of {} bytes",
                self.inner.welcome.max_body
            )));
        }
        let (reply_tx, rx) = oneshot::channel();
        {
            let mut p = self.lock_pending();
            if let Some(e) = &p.closed {
                return Err(ClientError::Connection(match e {
                    ClientError::Connection(m) => m.clone(),
                    other => other.to_string(),
                }));
            }
            p.map.insert(id, reply_tx);
        }
        if self.inner.tx.send(wire).await.is_err() {
            self.lock_pending().map.remove(&id);
            return Err(closed());
        }
        Ok(Pending {
            rx,
            slot,
            window: self.inner.welcome.window.max(1) as usize,
            spin: self.spin(),
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // A poisoned map only means another task panicked mid-insert; the map is still valid.
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request and waits for its response.
    pub async fn call(&self, req: Request) -> Reply {
        self.submit(req).await?.wait().await
    }

    pub(crate) async fn bytes(&self, req: Request) -> Result<Vec<u8>, ClientError> {
        match self.call(req).await? {
            Response::Bytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn done(&self, req: Request) -> Result<(), ClientError> {
        match self.call(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn key(&self, req: Request) -> Result<KeyInfo, ClientError> {
        match self.call(req).await? {
            Response::Key(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    /// The node's name, version, uptime, store and sessions.
    pub async fn status(&self) -> Result<ferrohsm_proto::message::NodeStatus, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Round trip through the session.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.done(Request::Ping).await
    }
    /// `len` random bytes.
    pub async fn random(&self, len: u32) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Random { len }).await
    }
    /// Digest of `data`.
    pub async fn digest(&self, alg: DigestAlg, data: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Digest { alg, data }).await
    }
    /// Generates a key.
    pub async fn generate_spec(&self, spec: KeySpec) -> Result<KeyInfo, ClientError> {
        self.key(Request::Generate(spec)).await
    }
    /// Lists every key, fetching page after page.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, ClientError> {
        self.every_page(Request::List).await
    }
    /// One page of keys: ids above `page.after`, at most `page.limit` (a shorter page is the
    /// last).
    pub async fn list_page(&self, page: Page) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(Request::List(page)).await? {
            Response::Keys(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }
    /// Describes a key.
    pub async fn info(&self, key: &KeyRef) -> Result<KeyInfo, ClientError> {
        self.key(Request::Info(key.clone())).await
    }
    /// Raw public key and type.
    pub async fn public_key(&self, key: &KeyRef) -> Result<(KeyType, Vec<u8>), ClientError> {
        match self.call(Request::PublicKey(key.clone())).await? {
            Response::PublicKey { key_type, bytes } => Ok((key_type, bytes)),
            other => Err(unexpected(other)),
        }
    }
    /// Raw key bytes of an exportable key.
    pub async fn export(&self, key: &KeyRef) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        self.bytes(Request::Export(key.clone()))
            .await
            .map(zeroize::Zeroizing::new)
    }
    /// Deletes a key.
    pub async fn delete(&self, key: &KeyRef) -> Result<(), ClientError> {
        self.done(Request::Delete(key.clone())).await
    }
    /// Signs.
    pub async fn sign(&self, key: &KeyRef, data: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Sign {
            key: key.clone(),
            data,
        })
        .await
    }
    /// Verifies; a bad signature is `Err(Server(bad_signature))`.
    pub async fn verify(
        &self,
        key: &KeyRef,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.done(Request::Verify {
            key: key.clone(),
            data,
            signature,
        })
        .await
    }
    /// AEAD encrypts.
    pub async fn encrypt(
        &self,
        key: &KeyRef,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Encrypt {
            key: key.clone(),
            plaintext,
            aad,
        })
        .await
    }
    /// AEAD decrypts.
    pub async fn decrypt(
        &self,
        key: &KeyRef,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        self.bytes(Request::Decrypt {
            key: key.clone(),
            ciphertext,
            aad,
        })
        .await
        .map(zeroize::Zeroizing::new)
    }
    /// HMAC.
    pub async fn mac(&self, key: &KeyRef, data: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.bytes(Request::Mac {
            key: key.clone(),
            data,
        })
        .await
    }
    /// HMAC verify; a mismatch is `Err(Server(bad_mac))`.
    pub async fn mac_verify(
        &self,
        key: &KeyRef,
        data: Vec<u8>,
        mac: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.done(Request::MacVerify {
            key: key.clone(),
            data,
            mac,
        })
        .await
    }
    /// X25519 + HKDF into a new key.
    pub async fn derive(
        &self,
        key: &KeyRef,
        peer: Vec<u8>,
        spec: KeySpec,
    ) -> Result<KeyInfo, ClientError> {
        self.key(Request::Derive {
            key: key.clone(),
            peer,
            spec,
        })
        .await
    }
}
