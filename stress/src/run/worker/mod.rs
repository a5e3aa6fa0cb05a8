//! One load client: its connection, its identity, the keys it made, and every operation of the
//! mix checked locally.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Status};

mod step;

use super::shared::{Shared, Stats};
use crate::transport_name;

/// One load client: its connection, identity and what it created.
struct Worker {
    hsm: BlockingClient,
    transport: &'static str,
    identity: String,
    prefix: String,
    others: Vec<String>,
    n: u64,
    // Signing keys (Ed25519 and ML-DSA-65): label, type, raw public key.
    signers: Vec<(String, KeyType, Vec<u8>)>,
    // ML-KEM keys: label, type, raw public key.
    kem: Vec<(String, KeyType, Vec<u8>)>,
    aead: Vec<String>,
    hmac: Vec<(String, Vec<u8>)>,
    x: Vec<String>,
    session: Vec<String>,
    // This worker's counter and the highest value it has seen: every increment must exceed it,
    // across reconnects and restarts.
    counter: Option<(ferrohsm_proto::Label, u64)>,
    stats: Stats,
    rng: u64,
    // The restart generation when this connection was made.
    conn_gen: u64,
}

const OPS: [(&str, u32); 14] = [
    ("sign", 22),
    ("kem", 4),
    ("verify", 8),
    ("encrypt", 10),
    ("decrypt", 10),
    ("mac", 10),
    ("random", 8),
    ("keygen", 5),
    ("list", 4),
    ("delete", 3),
    ("derive", 3),
    ("session", 3),
    ("probe", 14),
    ("counter", 4),
];

/// The connection broke (or the server is shutting down): the operation's outcome is
/// unknown, which the caller decides about (a restart, or an unexpected error).
fn cut_off(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connection(_) | ClientError::ConnectionLost(_) | ClientError::Protocol(_)
    ) || status(e) == Some(Status::ShuttingDown)
}

fn status(e: &ClientError) -> Option<Status> {
    e.status()
}

impl Worker {
    fn next(&mut self) -> u64 {
        // xorshift: cheap, deterministic per worker, good enough to pick operations.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn label(&mut self, kind: &str) -> String {
        self.n += 1;
        format!("{}{kind}-{}", self.prefix, self.n)
    }

    fn spec(&mut self, t: KeyType, kind: &str, exportable: bool, session: bool) -> KeySpec {
        KeySpec {
            key_type: t,
            label: self.label(kind).parse().unwrap_or_else(|_| unreachable!()),
            usage: None,
            exportable,
            session,
        }
    }

    fn setup(&mut self, shared: &Shared) -> Result<(), ClientError> {
        let c = self.hsm.client().clone();
        let mut made = Vec::new();
        for t in [
            KeyType::Ed25519,
            KeyType::ChaCha20Poly1305,
            KeyType::HmacSha256,
            KeyType::X25519,
            KeyType::X25519,
            KeyType::MlDsa65,
            KeyType::MlKem768,
        ] {
            // The X25519 and ML-KEM bases are exportable so the keys they make may be
            // exported and compared (such a key is never more exportable than its base).
            let exportable = matches!(t, KeyType::HmacSha256 | KeyType::X25519 | KeyType::MlKem768);
            let spec = self.spec(t, t.name(), exportable, false);
            let label = spec.label.to_string();
            let info = self.hsm.block_on(c.generate_spec(spec))?;
            made.push(label.clone());
            let public = |l| self.hsm.block_on(c.public_key(&KeyRef::Label(l)));
            match info.key_type {
                t @ (KeyType::Ed25519 | KeyType::MlDsa44 | KeyType::MlDsa65 | KeyType::MlDsa87) => {
                    let (_, pk) = public(info.label)?;
                    self.signers.push((label, t, pk));
                }
                t @ (KeyType::MlKem512 | KeyType::MlKem768 | KeyType::MlKem1024) => {
                    let (_, pk) = public(info.label)?;
                    self.kem.push((label, t, pk));
                }
                KeyType::ChaCha20Poly1305 => self.aead.push(label),
                KeyType::HmacSha256 => {
                    let k = self.hsm.block_on(c.export(&KeyRef::Label(info.label)))?;
                    self.hmac.push((label, k.to_vec()));
                }
                KeyType::X25519 => self.x.push(label),
                KeyType::P256 | KeyType::Aes256Gcm => {
                    return Err(ClientError::Local(format!(
                        "set-up asked for no {} key",
                        info.key_type
                    )));
                }
            }
        }
        // Counters are never deleted, so one left by an earlier run (or by a set-up attempt a
        // restart cut off) is taken up where it stands.
        let name: ferrohsm_proto::Label = format!("{}ctr", self.prefix)
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let start = match self.hsm.block_on(c.counter_create(&name)) {
            Err(e) if status(&e) == Some(Status::LabelInUse) => {
                self.hsm.block_on(c.counter_read(&name))?
            }
            other => other?,
        };
        self.counter = Some((name, start));
        let mut reg = shared.labels.lock().unwrap_or_else(|p| p.into_inner());
        reg.entry(self.identity.clone()).or_default().extend(made);
        Ok(())
    }

    /// Keys this worker made that must survive a restart (all but session keys).
    fn persistent(&self) -> HashSet<String> {
        let mut s = self.mine();
        for l in &self.session {
            s.remove(l);
        }
        s
    }

    /// Connects again after a restart of the server: waits until it listens, then forgets the
    /// session keys, which died with the old connection. `false` if the run ended first.
    fn reconnect(&mut self, profile: &Profile, t: Transport, shared: &Shared) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let generation = shared.restarts.load(Ordering::SeqCst);
            if !shared.restarting.load(Ordering::SeqCst)
                && let Ok(hsm) = connect(profile, t)
            {
                self.hsm = hsm;
                self.conn_gen = generation;
                self.session.clear();
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether `e` is what a graceful restart looks like to this connection: it broke, or
    /// the server said it is shutting down, and a restart began since it was made.
    fn restart_blip(&self, shared: &Shared, e: &ClientError) -> bool {
        self.restart_begun(shared) && cut_off(e)
    }

    /// Whether a restart began since this connection was made.
    fn restart_begun(&self, shared: &Shared) -> bool {
        shared.restart_fault
            && (shared.restarting.load(Ordering::SeqCst)
                || shared.restarts.load(Ordering::SeqCst) != self.conn_gen)
    }

    /// After a run with restarts: every persistent key this worker made is still there.
    fn check_persisted(&mut self, profile: &Profile, t: Transport, shared: &Shared) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.restarting.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..3 {
            match self.hsm.list() {
                Ok(listed) => {
                    let there: HashSet<String> =
                        listed.iter().map(|k| k.label.to_string()).collect();
                    let mut gone: Vec<_> = self.persistent().difference(&there).cloned().collect();
                    gone.sort();
                    if !gone.is_empty() {
                        shared.problem(
                            &shared.wrong,
                            format!("[{}] keys gone after restarts: {gone:?}", self.transport),
                        );
                    }
                    return;
                }
                Err(e) if self.restart_blip(shared, &e) => {
                    if !self.reconnect(profile, t, shared) {
                        break;
                    }
                }
                Err(e) => {
                    shared.problem(
                        &shared.unexpected,
                        format!("[{}] final list: {e}", self.transport),
                    );
                    return;
                }
            }
        }
        shared.problem(
            &shared.unexpected,
            format!(
                "[{}] could not list keys after the last restart",
                self.transport
            ),
        );
    }

    fn mine(&self) -> HashSet<String> {
        let mut s: HashSet<String> = self.signers.iter().map(|(l, ..)| l.clone()).collect();
        s.extend(self.kem.iter().map(|(l, ..)| l.clone()));
        s.extend(self.aead.iter().cloned());
        s.extend(self.hmac.iter().map(|(l, _)| l.clone()));
        s.extend(self.x.iter().cloned());
        s.extend(self.session.iter().cloned());
        s
    }
}

pub(super) fn connect(profile: &Profile, t: Transport) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(profile, Some(t))
}

/// How long a client keeps trying to connect before it gives up (outside a restart).
const CONNECT_GIVE_UP: Duration = Duration::from_secs(10);

pub(super) fn run_worker(
    i: usize,
    profile: Profile,
    t: Transport,
    tag: String,
    others: Vec<String>,
    shared: Arc<Shared>,
) -> Stats {
    let transport = transport_name(t);
    let prefix = format!("{}-w{i}-{tag}-", profile.name);
    let trying = Instant::now();
    let mut w = loop {
        let conn_gen = shared.restarts.load(Ordering::SeqCst);
        match connect(&profile, t) {
            Ok(hsm) => {
                break Worker {
                    hsm,
                    transport,
                    identity: profile.name.clone(),
                    prefix: prefix.clone(),
                    others: others.clone(),
                    n: 0,
                    signers: vec![],
                    kem: vec![],
                    aead: vec![],
                    hmac: vec![],
                    x: vec![],
                    session: vec![],
                    counter: None,
                    stats: Stats::default(),
                    rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                    conn_gen,
                };
            }
            Err(_) if shared.restart_fault && shared.restarting.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                if shared.done() || trying.elapsed() >= CONNECT_GIVE_UP {
                    shared.problem(
                        &shared.unexpected,
                        format!("[{transport}] client {i} cannot connect: {e}"),
                    );
                    return Stats::default();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    loop {
        match w.setup(&shared) {
            Ok(()) => break,
            Err(e) if w.restart_blip(&shared, &e) => {
                if !w.reconnect(&profile, t, &shared) {
                    return w.stats;
                }
            }
            Err(e) => {
                shared.problem(
                    &shared.unexpected,
                    format!("[{transport}] client {i} setup failed: {e}"),
                );
                return w.stats;
            }
        }
    }
    let total: u32 = OPS.iter().map(|(_, w)| w).sum();
    while !shared.done() {
        if !shared.reserve() {
            // Every remaining operation is under way in another client.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut pick = (w.next() % total as u64) as u32;
        let op = OPS
            .iter()
            .find(|(_, weight)| {
                if pick < *weight {
                    true
                } else {
                    pick -= weight;
                    false
                }
            })
            .map(|(o, _)| *o)
            .unwrap_or("sign");
        let t0 = Instant::now();
        let res = w.step(op, &shared);
        let us = t0.elapsed().as_micros() as u64;
        let second = shared.start.elapsed().as_secs() as usize;
        match res {
            Ok(()) => {
                w.stats.record(transport, op, second, us);
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            // A restart cut this operation off: its result is unknown, not wrong. Connect
            // again and carry on.
            Err(e) if w.restart_blip(&shared, &e) => {
                shared.release();
                if !w.reconnect(&profile, t, &shared) {
                    break;
                }
            }
            Err(e) => {
                shared.release();
                w.stats.error(transport, op);
                shared.problem(&shared.unexpected, format!("[{transport}] {op}: {e}"));
                if matches!(
                    e,
                    ClientError::Connection(_)
                        | ClientError::ConnectionLost(_)
                        | ClientError::Protocol(_)
                ) {
                    return w.stats;
                }
            }
        }
    }
    if shared.restart_fault {
        w.check_persisted(&profile, t, &shared);
    }
    w.stats
}
