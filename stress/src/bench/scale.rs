//! Many sessions at once: ping latency with N concurrent sessions spread over several
//! transports, and the CPU an idle `hsmd` uses while holding idle sessions over each transport
//! (the rule that idle sessions must not spin a small machine to death, however long the shm
//! rings and the socket sessions spin before they sleep).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};

use super::client::rt;
use super::cpu;
use super::floors::ns_histogram;
use super::rows::BenchResult;
use crate::transport_name;

/// CPU use of a process while its clients sit idle.
#[derive(Debug, Clone)]
pub struct Idle {
    /// The transport of the sessions.
    pub transport: String,
    /// Idle sessions held open.
    pub sessions: usize,
    /// How long the server was watched.
    pub seconds: f64,
    /// The server's CPU time over that span, in percent of one core.
    pub cpu_percent: f64,
}

/// Client threads the sessions are spread over (each a current-thread runtime).
const CLIENT_THREADS: usize = 2;

/// Opens `n` sessions over `t`, lets them go idle, then measures the server's CPU use over
/// `secs`.
pub(crate) fn idle_cpu(
    profile: &Profile,
    t: Transport,
    pid: u32,
    n: usize,
    secs: f64,
) -> Result<Idle, String> {
    let rt = rt()?;
    rt.block_on(async {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let c = ferrohsm_client::connect::connect(profile, Some(t))
                .await
                .map_err(|e| format!("idle {} session: {e}", transport_name(t)))?;
            c.ping().await.map_err(|e| e.to_string())?;
            clients.push(c);
        }
        // Past every spin window: from here on nothing should run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (t0, c0) = (Instant::now(), cpu::process(pid)?);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (elapsed, used) = (t0.elapsed(), cpu::process(pid)?.saturating_sub(c0));
        drop(clients);
        Ok(Idle {
            transport: transport_name(t).into(),
            sessions: n,
            seconds: elapsed.as_secs_f64(),
            cpu_percent: 100.0 * used.as_secs_f64() / elapsed.as_secs_f64(),
        })
    })
}

/// Ping with `n` sessions at once, spread round-robin over `transports`, each with one
/// request in flight, for `secs` (after a tenth as warm-up), from [`CLIENT_THREADS`] threads.
pub(crate) fn sessions(
    profile: &Profile,
    transports: &[Transport],
    n: usize,
    secs: f64,
) -> Result<BenchResult, String> {
    let hist = Arc::new(Mutex::new(ns_histogram()?));
    // Everyone connects first; the timed part starts together once all are up.
    let ready = Arc::new(std::sync::Barrier::new(CLIENT_THREADS));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|k| {
            let (profile, transports) = (profile.clone(), transports.to_vec());
            let (hist, ready) = (hist.clone(), ready.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mine: Vec<usize> = (k..n).step_by(CLIENT_THREADS).collect();
                rt()?.block_on(async move {
                    let mut clients = Vec::with_capacity(mine.len());
                    for i in mine {
                        let t = transports[i % transports.len()];
                        match ferrohsm_client::connect::connect(&profile, Some(t)).await {
                            Ok(c) => clients.push(c),
                            Err(e) => {
                                ready.wait();
                                return Err(format!("session {i} over {}: {e}", transport_name(t)));
                            }
                        }
                    }
                    ready.wait();
                    ping_all(clients, secs, &hist).await
                })
            })
        })
        .collect();
    let mut done = 0u64;
    for t in threads {
        done += t
            .join()
            .map_err(|_| "a session thread panicked".to_string())??;
    }
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    let names: Vec<&str> = transports.iter().map(|t| transport_name(*t)).collect();
    Ok(BenchResult {
        transport: names.join("+"),
        op: "ping".into(),
        inflight: 1,
        clients: n,
        ops_per_sec: done as f64 / secs,
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        ratio: None,
        cpu_us_client: None,
        cpu_us_server: None,
    })
}

/// Every client pings in a loop, one in flight each; latencies go into `hist`.
async fn ping_all(
    clients: Vec<ferrohsm_client::Client>,
    secs: f64,
    hist: &Mutex<hdrhistogram::Histogram<u64>>,
) -> Result<u64, String> {
    let warm_until = Instant::now() + Duration::from_secs_f64(secs / 10.0);
    let end = warm_until + Duration::from_secs_f64(secs);
    let local = tokio::task::LocalSet::new();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            local.spawn_local(async move {
                let mut h = ns_histogram()?;
                let mut n = 0u64;
                loop {
                    let t0 = Instant::now();
                    c.ping().await.map_err(|e| e.to_string())?;
                    let now = Instant::now();
                    if now > end {
                        break;
                    }
                    if now > warm_until {
                        n += 1;
                        let _ = h.record((now - t0).as_nanos().max(1) as u64);
                    }
                }
                Ok::<_, String>((n, h))
            })
        })
        .collect();
    local
        .run_until(async move {
            let mut done = 0u64;
            for t in tasks {
                let (n, h) = t.await.map_err(|e| e.to_string())??;
                done += n;
                let _ = hist.lock().unwrap_or_else(|p| p.into_inner()).add(h);
            }
            Ok(done)
        })
        .await
}
