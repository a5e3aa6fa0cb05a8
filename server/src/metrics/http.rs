//! The HTTP endpoint (`[metrics] listen`): `GET /metrics` and `GET /health`, nothing else.
//!
//! hyper serves each connection (HTTP/1.1, no keep-alive: one request, then the connection
//! closes) on a thread of its own (`hsm-metrics`), apart from the HSM's listeners and
//! sessions. Bounded: at most [`MAX_CONNECTIONS`] at once and [`MAX_PER_SOURCE`] from one
//! address (more are closed as they arrive, so one peer cannot take every place from a load
//! balancer's checks), the request's head within [`HEAD_TIMEOUT`] and at most 8 KiB, the whole
//! exchange within [`CONNECTION_TIMEOUT`]. A request body is never read.
//!
//! It stops after the session listeners and the drain, so while the node drains `/health`
//! answers 503 `draining`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::health::Health;
use super::{Metrics, TRANSPORTS, family, gauge};
use crate::crypto::pool::CryptoPool;
use crate::keys::manager::KeyManager;
use crate::session::budget::Budget;

/// Connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections from one address served at once, at most.
pub const MAX_PER_SOURCE: usize = 4;
/// Longest a client may take to send its request line and headers.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a whole connection may last.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// What a scrape reads.
#[derive(Debug)]
pub struct Scrape {
    /// The counters sessions and listeners add to.
    pub metrics: Arc<Metrics>,
    /// Draining, the store's answer, what is stored.
    pub health: Arc<Health>,
    /// The key manager: sessions open per transport.
    pub keys: Arc<KeyManager>,
    /// The crypto pool: jobs queued.
    pub pool: CryptoPool,
    /// The memory budget: bytes charged.
    pub budget: Arc<Budget>,
}

/// Serves `listener` on a thread of its own until `stop` turns true; the thread ends then
/// (connections still open are closed).
pub fn start(
    listener: std::net::TcpListener,
    scrape: Arc<Scrape>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("hsm-metrics".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, scrape, stop).await,
                    Err(e) => tracing::error!(error = %e, "metrics: cannot serve its socket"),
                }
            });
        })
}

/// A place taken by one source's connection, given back on drop.
struct SourcePlace {
    ip: IpAddr,
    taken: Rc<RefCell<HashMap<IpAddr, usize>>>,
}

impl SourcePlace {
    fn take(taken: &Rc<RefCell<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<SourcePlace> {
        let mut map = taken.borrow_mut();
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourcePlace {
            ip,
            taken: taken.clone(),
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut map = self.taken.borrow_mut();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn serve(listener: TcpListener, scrape: Arc<Scrape>, mut stop: watch::Receiver<bool>) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Rc::new(RefCell::new(HashMap::new()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Full, or its source's places all taken: closed at once, unanswered.
        let Some(source) = SourcePlace::take(&sources, peer.ip()) else {
            continue;
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue;
        };
        let scrape = scrape.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(scrape.answer(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop((place, source));
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Scrape {
    /// The answer to one request: only a GET of `/metrics` or `/health` is served.
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path != "/metrics" && path != "/health" {
            return text(
                StatusCode::NOT_FOUND,
                "not found: only /metrics and /health\n",
            );
        }
        if req.method() != Method::GET {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: GET only\n",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        if path == "/health" {
            return match self.health.check().await {
                Ok(()) => text(StatusCode::OK, "ok"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            };
        }
        let mut r = text(StatusCode::OK, self.render().await);
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    /// Every family in the Prometheus text exposition format.
    pub async fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.write(&mut out);
        family(
            &mut out,
            "ferrohsm_sessions_open",
            "gauge",
            "Authenticated sessions open now, by transport.",
        );
        for (t, n) in TRANSPORTS.iter().zip(self.keys.node_info().sessions()) {
            let _ = writeln!(out, "ferrohsm_sessions_open{{transport=\"{t}\"}} {n}");
        }
        let stats = &self.health.store().stats;
        for (name, help, h) in [
            (
                "ferrohsm_store_commit_duration_seconds",
                "How long each store commit took (its transaction and sync).",
                &stats.commit_seconds,
            ),
            (
                "ferrohsm_store_batch_size",
                "Changes per store commit (group commit), denied requests' audit entries aside.",
                &stats.batch_size,
            ),
        ] {
            family(&mut out, name, "histogram", help);
            let mut counts = Vec::new();
            h.add_to(&mut counts);
            h.write(&mut out, name, "", &counts);
        }
        gauge(
            &mut out,
            "ferrohsm_pool_queue_depth",
            "Crypto jobs queued for a worker (not yet running).",
            self.pool.queued(),
        );
        gauge(
            &mut out,
            "ferrohsm_memory_budget_bytes",
            "Bytes of requests and responses buffered now, charged to the memory budget.",
            self.budget.used(),
        );
        gauge(
            &mut out,
            "ferrohsm_memory_budget_limit_bytes",
            "The memory budget ([limits] memory_mib).",
            self.budget.total(),
        );
        // Asked of the store (at most once a second); left out when it does not answer.
        if let Some(s) = self.health.stored().await {
            gauge(
                &mut out,
                "ferrohsm_keys_stored",
                "Keys in the store (every node's, on a shared store).",
                s.keys,
            );
            gauge(
                &mut out,
                "ferrohsm_audit_entries_stored",
                "Entries in the audit chain.",
                s.audit_entries,
            );
        }
        family(
            &mut out,
            "ferrohsm_build_info",
            "gauge",
            "Always 1; the version of hsmd serving.",
        );
        let _ = writeln!(
            out,
            "ferrohsm_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}
