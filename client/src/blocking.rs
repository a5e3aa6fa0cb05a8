//! [`BlockingClient`]: the async client on a private single-thread runtime, for callers
//! without one (hsm-stress workers, the PKCS#11 module).

use ferrohsm_proto::{KeyInfo, KeyRef, KeyType, Label, Request, message::KeySpec};

use crate::client::{Client, Pending};
use crate::connect;
use crate::error::ClientError;
use crate::io::Reply;
use crate::profile::{Profile, Transport};

pub(crate) fn late(t: std::time::Duration) -> ClientError {
    ClientError::Connection(format!("no answer from hsmd within {} ms", t.as_millis()))
}

/// A runtime for one blocking caller: one thread (the caller's), I/O and timers.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Local(format!("cannot start runtime: {e}")))
}

/// Runs `f` on `rt` to its end or, with a timeout, until then (a `Connection` error). The timer
/// is made inside the runtime, whose clock it needs.
pub(crate) fn block_within<T, F>(
    rt: &tokio::runtime::Runtime,
    timeout: Option<std::time::Duration>,
    f: F,
) -> Result<T, ClientError>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    match timeout {
        None => rt.block_on(f),
        Some(t) => rt
            .block_on(async { tokio::time::timeout(t, f).await })
            .unwrap_or_else(|_| Err(late(t))),
    }
}

/// A blocking client: the async [`Client`] on a private single-thread runtime.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: Client,
    timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.client.fmt(f)
    }
}

impl BlockingClient {
    /// Connects with a profile over `transport` (or the profile's default).
    pub fn connect(
        profile: &Profile,
        transport: Option<Transport>,
    ) -> Result<BlockingClient, ClientError> {
        BlockingClient::open(profile, transport, None)
    }

    /// Connects like [`BlockingClient::connect`], giving up after `timeout`; [`BlockingClient::run`]
    /// then bounds every call by the same time.
    pub fn connect_within(
        profile: &Profile,
        transport: Option<Transport>,
        timeout: std::time::Duration,
    ) -> Result<BlockingClient, ClientError> {
        BlockingClient::open(profile, transport, Some(timeout))
    }

    fn open(
        profile: &Profile,
        transport: Option<Transport>,
        timeout: Option<std::time::Duration>,
    ) -> Result<BlockingClient, ClientError> {
        let rt = runtime()?;
        let client = block_within(&rt, timeout, connect::connect(profile, transport))?;
        Ok(BlockingClient {
            rt,
            client,
            timeout,
        })
    }

    /// Runs one call of the async client to its end, or to this client's timeout (a
    /// `Connection` error: the connection should then be dropped).
    pub fn run<T, F>(&self, f: F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        block_within(&self.rt, self.timeout, f)
    }

    /// The async client (use it from [`BlockingClient::block_on`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Sends every request before waiting for any response; responses in request order.
    pub fn pipeline(&self, reqs: Vec<Request>) -> Vec<Reply> {
        self.rt.block_on(async {
            let mut pending = Vec::with_capacity(reqs.len());
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                // With the window full, `submit` waits; drain the oldest first to make room.
                if pending.len() >= self.client.welcome().window as usize {
                    let p: Result<Pending, ClientError> = pending.remove(0);
                    out.push(match p {
                        Ok(p) => p.wait().await,
                        Err(e) => Err(e),
                    });
                }
                pending.push(self.client.submit(r).await);
            }
            for p in pending {
                out.push(match p {
                    Ok(p) => p.wait().await,
                    Err(e) => Err(e),
                });
            }
            out
        })
    }

    /// Any request.
    pub fn call(&self, req: Request) -> Reply {
        self.rt.block_on(self.client.call(req))
    }
    /// Ping.
    pub fn ping(&self) -> Result<(), ClientError> {
        self.rt.block_on(self.client.ping())
    }
    /// Generates a persistent key with default usage.
    pub fn generate(&self, label: &Label, key_type: KeyType) -> Result<KeyInfo, ClientError> {
        let spec = KeySpec {
            key_type,
            label: label.clone(),
            usage: None,
            exportable: false,
            session: false,
        };
        self.rt.block_on(self.client.generate_spec(spec))
    }
    /// Signs.
    pub fn sign(&self, key: &KeyRef, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.rt.block_on(self.client.sign(key, data.to_vec()))
    }
    /// Verifies.
    pub fn verify(&self, key: &KeyRef, data: &[u8], sig: &[u8]) -> Result<(), ClientError> {
        self.rt
            .block_on(self.client.verify(key, data.to_vec(), sig.to_vec()))
    }
    /// Lists keys.
    pub fn list(&self) -> Result<Vec<KeyInfo>, ClientError> {
        self.rt.block_on(self.client.list())
    }
}
