//! The `flood` fault: one identity (the first profile) keeps the crypto pool full of large
//! digests from many sessions, while a light client of another identity (the last profile)
//! signs two at a time and times each signature. Its latency is measured alone first, then
//! under the flood; both are reported, so the run shows whether the pool is fair.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::{DigestAlg, KeyRef, KeySpec, KeyType, Request};

use super::shared::{FloodReport, Shared, hist};
use super::worker::connect;

/// Flooding sessions, each with a whole window of digests in flight.
pub const FLOOD_SESSIONS: usize = 16;
/// Bytes per flooding digest (well above `inline_max`: they run on the pool).
pub const FLOOD_BYTES: usize = 512 * 1024;
/// How long the light client is timed alone before the flood starts.
const ALONE: Duration = Duration::from_millis(700);

/// Runs the flood until the run is done; `None` when fewer than two identities are given.
pub(super) fn run(
    profiles: &[Profile],
    transport: Transport,
    shared: &Arc<Shared>,
) -> Result<FloodReport, String> {
    let (Some(flooder), Some(light)) = (profiles.first(), profiles.last()) else {
        return Err("the flood fault needs profiles".into());
    };
    if flooder.name == light.name {
        return Err("the flood fault needs two identities (two --profile values)".into());
    }
    let hsm = connect(light, transport).map_err(|e| format!("flood: light client: {e}"))?;
    let label = format!("{}-flood-light-{}", light.name, std::process::id());
    let spec = KeySpec {
        key_type: KeyType::P256,
        label: label.parse().map_err(|e| format!("flood: {e}"))?,
        usage: None,
        exportable: false,
        session: true,
    };
    let key = KeyRef::Id(
        hsm.block_on(hsm.client().generate_spec(spec))
            .map_err(|e| format!("flood: light key: {e}"))?
            .id,
    );
    let mut alone = hist();
    let mut flooded = hist();
    let flooding = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_ops = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    while !shared.done() {
        if !flooding.load(Ordering::SeqCst) && started.elapsed() >= ALONE {
            flooding.store(true, Ordering::SeqCst);
            for _ in 0..FLOOD_SESSIONS {
                let (p, stop, n) = (flooder.clone(), stop.clone(), flood_ops.clone());
                threads.push(std::thread::spawn(move || {
                    flood_session(&p, transport, &stop, &n)
                }));
            }
            // Let the flood fill the queues before timing under it.
            std::thread::sleep(Duration::from_millis(300));
        }
        // Two in flight, so they go to the pool rather than inline.
        let reqs = (0..2)
            .map(|i| Request::Sign {
                key: key.clone(),
                data: vec![i; 64],
            })
            .collect();
        let t = Instant::now();
        let replies = hsm.pipeline(reqs);
        let us = t.elapsed().as_micros() as u64;
        if replies.iter().any(|r| r.is_err()) {
            shared.problem(
                &shared.unexpected,
                format!("flood: light client's sign failed: {replies:?}"),
            );
        }
        let h = if flooding.load(Ordering::SeqCst) {
            &mut flooded
        } else {
            &mut alone
        };
        let _ = h.record(us.max(1));
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    Ok(FloodReport {
        flooder: flooder.name.clone(),
        light: light.name.clone(),
        alone,
        flooded,
        flood_ops: flood_ops.load(Ordering::Relaxed),
    })
}

/// One flooding session: a whole window of large digests, again and again.
fn flood_session(p: &Profile, t: Transport, stop: &AtomicBool, n: &std::sync::atomic::AtomicU64) {
    let Ok(hsm) = connect(p, t) else { return };
    let window = hsm.client().welcome().window as usize;
    let data = vec![0x5a; FLOOD_BYTES];
    while !stop.load(Ordering::SeqCst) {
        let reqs = (0..window)
            .map(|_| Request::Digest {
                alg: DigestAlg::Sha256,
                data: data.clone(),
            })
            .collect();
        let ok = hsm.pipeline(reqs).iter().filter(|r| r.is_ok()).count();
        n.fetch_add(ok as u64, Ordering::Relaxed);
    }
}
