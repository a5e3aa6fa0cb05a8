//! Quick transport check against a running `hsmd` (a separate process): for plain TCP, TLS
//! with certificates, TLS-PSK and shared memory, full connections (handshake +
//! authentication) per second, ping round-trip p50/p99 with one request in flight, and ping
//! and Ed25519 sign throughput with 1 and 16 in flight; next to in-process Ed25519 signing on
//! one thread in the same run. The full benchmark is `hsm-stress bench`.
//!
//! ```text
//! cargo run --release --bin hsmd -- init --dir /tmp/b --clients bench
//! cargo run --release --bin hsmd -- --config /tmp/b/hsmd.toml &
//! cargo run --release --example transport_bench -- /tmp/b/clients/bench.toml [seconds]
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{Client, ClientError};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request};

async fn measure(
    c: &Client,
    make: impl Fn() -> Request,
    inflight: usize,
    secs: f64,
) -> Result<f64, ClientError> {
    let mut q = VecDeque::with_capacity(inflight);
    let start = Instant::now();
    let mut done = 0u64;
    let end = start + Duration::from_secs_f64(secs);
    for _ in 0..inflight {
        q.push_back(c.submit(make()).await?);
    }
    while let Some(p) = q.pop_front() {
        p.wait().await?;
        done += 1;
        if Instant::now() < end {
            q.push_back(c.submit(make()).await?);
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let profile = args
        .next()
        .ok_or_else(|| ClientError::Local("usage: tcp_bench PROFILE [seconds]".into()))?;
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let profile = Profile::load(profile.as_ref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Local(e.to_string()))?;
    rt.block_on(async {
        println!(
            "{:<10} {:<28} {:>8} {:>12} {:>10}",
            "transport", "operation", "inflight", "ops/s", "us/op"
        );
        let row = |t: &str, op: &str, inflight: &str, rate: f64| {
            println!(
                "{t:<10} {op:<28} {inflight:>8} {rate:>12.0} {:>10.1}",
                1e6 / rate
            );
        };
        let msg = vec![0x5a; 32];
        for (name, t) in [
            ("tcp", Transport::Tcp),
            ("tls", Transport::Tls),
            ("tls-psk", Transport::TlsPsk),
            ("shm", Transport::Shm),
        ] {
            // Full connection set-up: TCP connect, TLS handshake, authentication, one ping.
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs / 2.0 {
                let c = ferrohsm_client::connect::connect(&profile, Some(t)).await?;
                c.ping().await?;
                n += 1;
            }
            row(
                name,
                "connect+auth+ping",
                "1",
                n as f64 / start.elapsed().as_secs_f64(),
            );
            let c = ferrohsm_client::connect::connect(&profile, Some(t)).await?;
            let label = format!("bench-{}-{name}", std::process::id());
            let spec = KeySpec {
                key_type: KeyType::Ed25519,
                label: label.parse().map_err(ClientError::Local)?,
                usage: None,
                exportable: false,
                session: true,
            };
            let key = KeyRef::Id(c.generate_spec(spec).await?.id);
            // Round-trip latency, one ping at a time.
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs / 2.0 {
                let t0 = Instant::now();
                c.ping().await?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
            println!(
                "{name:<10} {:<28} {:>8} {:>12} {:>10}",
                "ping rtt p50 / p99 (us)",
                "1",
                format!("{:.1}", pct(0.5)),
                format!("{:.1}", pct(0.99))
            );
            for inflight in [1, 16] {
                let ping = measure(&c, || Request::Ping, inflight, secs).await?;
                row(name, "ping", &inflight.to_string(), ping);
                let sign_req = || Request::Sign {
                    key: key.clone(),
                    data: msg.clone(),
                };
                let sign = measure(&c, sign_req, inflight, secs).await?;
                row(name, "ed25519 sign", &inflight.to_string(), sign);
            }
        }
        // Baseline: the same signature in this process, one thread.
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            std::hint::black_box(sk.sign(std::hint::black_box(&msg)));
            n += 1;
        }
        row(
            "-",
            "ed25519 sign in-process",
            "-",
            n as f64 / start.elapsed().as_secs_f64(),
        );
        Ok(())
    })
}
