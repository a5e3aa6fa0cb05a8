//! Quick TCP throughput check against a running `hsmd` (a separate process):
//! ping and Ed25519 sign with 1 and 16 requests in flight, next to in-process Ed25519 signing
//! on one thread in the same run. The full benchmark is `hsm-stress bench` (issue 5).
//!
//! ```text
//! cargo run --release --bin hsmd -- init --dir /tmp/b --clients bench
//! cargo run --release --bin hsmd -- --config /tmp/b/hsmd.toml &
//! cargo run --release --example tcp_bench -- /tmp/b/clients/bench.toml [seconds]
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use ferrohsm_client::profile::Profile;
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
        let c = ferrohsm_client::connect::connect(&profile, None).await?;
        let label = format!("bench-{}", std::process::id());
        let spec = KeySpec {
            key_type: KeyType::Ed25519,
            label: label.parse().map_err(ClientError::Local)?,
            usage: None,
            exportable: false,
            session: true,
        };
        let key = KeyRef::Id(c.generate_spec(spec).await?.id);
        let msg = vec![0x5a; 32];
        println!(
            "{:<28} {:>8} {:>12} {:>10}",
            "operation (tcp)", "inflight", "ops/s", "us/op"
        );
        for inflight in [1, 16] {
            let ping = measure(&c, || Request::Ping, inflight, secs).await?;
            println!(
                "{:<28} {:>8} {:>12.0} {:>10.1}",
                "ping",
                inflight,
                ping,
                1e6 / ping
            );
            let sign = measure(
                &c,
                || Request::Sign {
                    key: key.clone(),
                    data: msg.clone(),
                },
                inflight,
                secs,
            )
            .await?;
            println!(
                "{:<28} {:>8} {:>12.0} {:>10.1}",
                "ed25519 sign",
                inflight,
                sign,
                1e6 / sign
            );
        }
        // Baseline: the same signature in this process, one thread.
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            std::hint::black_box(sk.sign(std::hint::black_box(&msg)));
            n += 1;
        }
        let base = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<28} {:>8} {:>12.0} {:>10.1}",
            "ed25519 sign in-process",
            "-",
            base,
            1e6 / base
        );
        Ok(())
    })
}
