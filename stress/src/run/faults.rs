//! Faults that run beside the load.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferrohsm_client::Client;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::Request;

use super::shared::{Restarter, Shared};
use super::worker::connect;

/// Faults that can run beside the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Clients that disconnect with pipelined requests in flight.
    Disconnect,
    /// Connect, ping, drop, as fast as possible.
    Reconnect,
    /// Garbage bytes on a plain TCP connection.
    Malformed,
    /// Authenticated clients that send requests and never read the responses.
    Slow,
    /// Graceful restart of the spawned `hsmd` about every second; clients reconnect, and
    /// every persistent key must still be there afterwards.
    Restart,
    /// One identity floods the crypto pool with large digests from many sessions; another
    /// identity's sign latency is timed alone and under the flood (reported: p50, p99).
    Flood,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 6] = [
        Fault::Disconnect,
        Fault::Reconnect,
        Fault::Malformed,
        Fault::Slow,
        Fault::Restart,
        Fault::Flood,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Disconnect => "disconnect",
            Fault::Reconnect => "reconnect",
            Fault::Malformed => "malformed",
            Fault::Slow => "slow",
            Fault::Restart => "restart",
            Fault::Flood => "flood",
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            format!(
                "unknown fault {s:?}; expected disconnect, reconnect, malformed, slow, restart or flood"
            )
        })
    }
}

/// Connects raw (plain TCP) and authenticates by hand, for the slow-reader fault.
fn raw_login(profile: &Profile) -> Option<std::net::TcpStream> {
    let addr = profile.tcp_addrs.as_deref()?.first()?;
    let id = profile.identity().ok()?;
    let key = id.auth_key.as_ref()?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    // The same handshake state machine as the client library, over a blocking socket.
    let mut hs = ferrohsm_proto::handshake::ClientHandshake::new(&id.name);
    let mut frames = ferrohsm_proto::FrameReader::new(4096);
    let mut out = hs.start();
    loop {
        s.write_all(&out.encode()).ok()?;
        let f = loop {
            if let Some(f) = frames.next_frame().ok()? {
                break f;
            }
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
            frames.buffer().extend_from_slice(&chunk[..n]);
        };
        let sign = |t: &[u8]| Ok(ed25519_dalek::Signer::sign(key, t).to_bytes().to_vec());
        match hs.on_frame(&f, sign).ok()? {
            ferrohsm_proto::handshake::ClientStep::Send(next) => out = next,
            ferrohsm_proto::handshake::ClientStep::Done(_) => break,
        }
    }
    Some(s)
}

pub(super) fn run_fault(
    fault: Fault,
    profiles: Vec<Profile>,
    transports: Vec<Transport>,
    shared: Arc<Shared>,
    restart: Option<Restarter>,
) {
    let mut i = 0usize;
    while !shared.done() {
        i += 1;
        let p = &profiles[i % profiles.len()];
        let t = transports[i % transports.len()];
        match fault {
            Fault::Flood => {
                // Runs once, for the whole run.
                let report = super::flood::run(&profiles, transports[0], &shared);
                match report {
                    Ok(r) => *shared.flood.lock().unwrap_or_else(|p| p.into_inner()) = Some(r),
                    Err(e) => shared.problem(&shared.unexpected, e),
                }
                return;
            }
            Fault::Disconnect => {
                if let Ok(hsm) = connect(p, t) {
                    let c: Client = hsm.client().clone();
                    hsm.block_on(async {
                        for n in 0..16u32 {
                            let _ = c.submit(Request::Random { len: 1024 + n }).await;
                        }
                    });
                    drop(c);
                    drop(hsm);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Fault::Reconnect => {
                for _ in 0..10 {
                    if let Ok(h) = connect(p, t) {
                        let _ = h.ping();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Fault::Malformed => {
                if let Some(addr) = p.tcp_addrs.as_ref().and_then(|a| a.first())
                    && let Ok(mut s) = std::net::TcpStream::connect(addr)
                {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(b"\x00\x01garbage that is not a FerroHSM frame\r\n");
                    let mut b = [0u8; 512];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Fault::Restart => {
                // Let the load run a while between restarts.
                for _ in 0..10 {
                    if shared.done() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let Some(Restarter(restart)) = &restart else {
                    return;
                };
                shared.restarting.store(true, Ordering::SeqCst);
                if let Err(e) = restart() {
                    shared.problem(&shared.unexpected, format!("restart failed: {e}"));
                }
                shared.restarts.fetch_add(1, Ordering::SeqCst);
                shared.restarting.store(false, Ordering::SeqCst);
            }
            Fault::Slow => {
                if let Some(mut s) = raw_login(p) {
                    let frame = Request::Random { len: 65536 }.to_frame(3).encode();
                    for _ in 0..2000 {
                        if s.write_all(&frame).is_err() || shared.done() {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        shared.faults.fetch_add(1, Ordering::Relaxed);
    }
}
