//! One bench client: the keys it signs and encrypts with, and the loop that keeps requests in
//! flight and records their latencies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{Client, ClientError};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request, Response};
use hdrhistogram::Histogram;

use super::rows::BenchOp;
pub(crate) use super::rows::Keys;
use super::{cpu, floors};

pub(crate) fn rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) async fn keys(c: &Client, tag: &str) -> Result<Keys, ClientError> {
    let mut out = Vec::new();
    for (t, session) in [
        (KeyType::Ed25519, false),
        (KeyType::Ed25519, true),
        (KeyType::P256, false),
        (KeyType::ChaCha20Poly1305, false),
        (KeyType::HmacSha256, false),
        (KeyType::MlDsa65, false),
        (KeyType::MlKem768, false),
    ] {
        let label = format!("bench-{}-{tag}-{}-{session}", std::process::id(), t.name());
        let spec = KeySpec {
            key_type: t,
            label: label.parse().map_err(ClientError::Local)?,
            usage: None,
            exportable: false,
            session,
        };
        out.push(KeyRef::Id(c.generate_spec(spec).await?.id));
    }
    // Counters cannot be deleted (they never go back), so every run shares one.
    let counter: ferrohsm_proto::Label = "bench-counter".parse().map_err(ClientError::Local)?;
    match c.counter_create(&counter).await {
        Ok(_) => {}
        Err(e) if e.status() == Some(ferrohsm_proto::Status::LabelInUse) => {}
        Err(e) => return Err(e),
    }
    let ml_dsa_sig = c.sign(&out[5], vec![0x5a; 32]).await?;
    let (_, public) = c.public_key(&out[6]).await?;
    let ml_kem_ct = crate::verify::encapsulate(KeyType::MlKem768, &public)
        .map(|(ct, _)| ct)
        .ok_or_else(|| ClientError::Local("ML-KEM-768 public key does not parse".into()))?;
    Ok(Keys {
        counter,
        ed: out[0].clone(),
        ed_session: out[1].clone(),
        p256: out[2].clone(),
        aead: out[3].clone(),
        hmac: out[4].clone(),
        ml_dsa: out[5].clone(),
        ml_dsa_sig,
        ml_kem: out[6].clone(),
        ml_kem_ct,
    })
}

/// What one client measured over the timed part.
pub(crate) struct Measured {
    /// Requests completed.
    pub(crate) done: u64,
    pub(crate) latencies: Histogram<u64>,
    /// The client thread's CPU time.
    pub(crate) cpu_client: Option<Duration>,
    /// The server's, when its process id is known.
    pub(crate) cpu_server: Option<Duration>,
}

/// CPU times at one moment: this thread's, and the server's when `server` is known. `None`
/// where the kernel does not tell (no `/proc/.../sched`): the row then reports none.
fn cpu_now(server: Option<u32>) -> (Option<Duration>, Option<Duration>) {
    (
        cpu::thread().ok(),
        server.and_then(|pid| cpu::process(pid).ok()),
    )
}

/// One client: keeps `inflight` requests outstanding for `warm + secs`, recording the timed
/// part; deletes the persistent keys it made. Reads this thread's CPU time, and that of the
/// server process `server` when given, at the start and the end of the timed part.
#[allow(clippy::too_many_arguments)]
pub(crate) fn client_loop(
    profile: &Profile,
    t: Transport,
    op: BenchOp,
    keys: &Keys,
    inflight: usize,
    secs: f64,
    tag: &str,
    server: Option<u32>,
) -> Result<Measured, String> {
    let rt = rt()?;
    rt.block_on(async {
        let c = ferrohsm_client::connect::connect(profile, Some(t))
            .await
            .map_err(|e| e.to_string())?;
        // A session key belongs to the connection that made it: each client makes its own.
        let mut own = keys.clone();
        if op == BenchOp::Ed25519SignSession {
            let spec = KeySpec {
                key_type: KeyType::Ed25519,
                label: format!("bench-{}-{tag}-own-session", std::process::id())
                    .parse()
                    .map_err(|e: String| e)?,
                usage: None,
                exportable: false,
                session: true,
            };
            own.ed_session = KeyRef::Id(c.generate_spec(spec).await.map_err(|e| e.to_string())?.id);
        }
        let keys = &own;
        let mut h = floors::ns_histogram()?;
        let warm_until = Instant::now() + Duration::from_secs_f64(secs / 10.0);
        let end = warm_until + Duration::from_secs_f64(secs);
        let mut q = VecDeque::with_capacity(inflight);
        let mut done = 0u64;
        let mut n = 0u64;
        let mut made = Vec::new();
        let (mut cpu_start, mut cpu_end) = (None, None);
        let pid = std::process::id();
        let submit = async |n: &mut u64| {
            *n += 1;
            let req = op.request(keys, || format!("bk{pid}-{tag}-{n}"));
            c.submit(req).await.map_err(|e| e.to_string())
        };
        for _ in 0..inflight {
            q.push_back((Instant::now(), submit(&mut n).await?));
        }
        while let Some((t0, p)) = q.pop_front() {
            let r = p.wait().await.map_err(|e| format!("{}: {e}", op.name()))?;
            if let (BenchOp::KeygenPersistent, Response::Key(k)) = (op, r) {
                made.push(k.id);
            }
            let now = Instant::now();
            if now > warm_until && now <= end {
                if cpu_start.is_none() {
                    cpu_start = Some(cpu_now(server));
                }
                done += 1;
                let _ = h.record((now - t0).as_nanos().max(1) as u64);
            }
            if now > end && cpu_end.is_none() {
                cpu_end = Some(cpu_now(server));
            }
            if now < end {
                q.push_back((Instant::now(), submit(&mut n).await?));
            }
        }
        // Leave the server as we found it: pipelined, but never more in flight than the
        // window (a submit waits for a window slot that only a waited response frees).
        let window = (c.welcome().window as usize).clamp(1, 16);
        for chunk in made.chunks(window) {
            let mut pending = Vec::with_capacity(chunk.len());
            for id in chunk {
                pending.push(
                    c.submit(Request::Delete(KeyRef::Id(*id)))
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            for p in pending {
                p.wait().await.map_err(|e| format!("cleanup: {e}"))?;
            }
        }
        // Unknown when no request completed within the timed part, or the kernel did not say.
        let (cpu_client, cpu_server) = match (cpu_start, cpu_end) {
            (Some((c0, s0)), Some((c1, s1))) => (
                c0.zip(c1).map(|(a, b)| b.saturating_sub(a)),
                s0.zip(s1).map(|(a, b)| b.saturating_sub(a)),
            ),
            _ => (None, None),
        };
        Ok(Measured {
            done,
            latencies: h,
            cpu_client,
            cpu_server,
        })
    })
}
