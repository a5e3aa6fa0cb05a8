//! `hsm-stress run`: many clients, a weighted mix of operations, every result checked locally,
//! isolation probes between identities, and faults on the side.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, Client, ClientError};
use ferrohsm_proto::handshake::{Hello, Proof, transcript};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{DigestAlg, KeyRef, KeyType, PROTOCOL_VERSION, Request, Response, Status};
use hdrhistogram::Histogram;

use crate::transport_name;
use crate::verify;

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
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(Fault::Disconnect),
            "reconnect" => Ok(Fault::Reconnect),
            "malformed" => Ok(Fault::Malformed),
            "slow" => Ok(Fault::Slow),
            _ => Err(format!(
                "unknown fault {s:?}; expected disconnect, reconnect, malformed or slow"
            )),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// One profile per identity.
    pub profiles: Vec<PathBuf>,
    /// Transports, spread over the clients.
    pub transports: Vec<Transport>,
    /// Client threads (each its own connection).
    pub clients: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many operations in total.
    pub ops: Option<u64>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Latency histograms and error counts per (transport, op), and a per-second timeline per
/// transport.
#[derive(Debug, Default)]
pub struct Stats {
    /// (transport, op) -> latencies in µs.
    pub ops: BTreeMap<(String, String), Histogram<u64>>,
    /// (transport, op) -> failed operations.
    pub errors: BTreeMap<(String, String), u64>,
    /// transport -> per-second latency histograms.
    pub timeline: BTreeMap<String, Vec<Histogram<u64>>>,
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl Stats {
    fn record(&mut self, transport: &str, op: &str, second: usize, us: u64) {
        let h = self
            .ops
            .entry((transport.into(), op.into()))
            .or_insert_with(hist);
        let _ = h.record(us.max(1));
        let tl = self.timeline.entry(transport.into()).or_default();
        while tl.len() <= second {
            tl.push(hist());
        }
        let _ = tl[second].record(us.max(1));
    }

    fn error(&mut self, transport: &str, op: &str) {
        *self
            .errors
            .entry((transport.into(), op.into()))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        for (k, h) in other.ops {
            let _ = self.ops.entry(k).or_insert_with(hist).add(h);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (t, tl) in other.timeline {
            let mine = self.timeline.entry(t).or_default();
            for (i, h) in tl.into_iter().enumerate() {
                while mine.len() <= i {
                    mine.push(hist());
                }
                let _ = mine[i].add(h);
            }
        }
    }
}

/// The verdict and the numbers.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Operations completed (checked).
    pub total_ops: u64,
    /// Results that failed a local check.
    pub wrong_results: u64,
    /// Another identity's key was reachable.
    pub isolation_violations: u64,
    /// Errors that no operation should produce.
    pub unexpected_errors: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
    /// Fault events injected.
    pub fault_events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latencies.
    pub stats: Stats,
}

struct Shared {
    stop: AtomicBool,
    ops: AtomicU64,
    problems_n: AtomicU64,
    wrong: AtomicU64,
    isolation: AtomicU64,
    unexpected: AtomicU64,
    faults: AtomicU64,
    problems: Mutex<Vec<String>>,
    // identity -> labels it created (probed by the other identities).
    labels: Mutex<BTreeMap<String, Vec<String>>>,
    start: Instant,
    max_ops: Option<u64>,
}

impl Shared {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.problems_n.fetch_add(1, Ordering::Relaxed);
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() < 20 {
            p.push(what);
        }
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self
                .max_ops
                .is_some_and(|m| self.ops.load(Ordering::Relaxed) >= m)
    }
}

/// One load client: its connection, identity and what it created.
struct Worker {
    hsm: BlockingClient,
    transport: &'static str,
    identity: String,
    prefix: String,
    others: Vec<String>,
    n: u64,
    ed: Vec<(String, Vec<u8>)>,
    aead: Vec<String>,
    hmac: Vec<(String, Vec<u8>)>,
    x: Vec<String>,
    session: Vec<String>,
    stats: Stats,
    rng: u64,
}

const OPS: [(&str, u32); 12] = [
    ("sign", 22),
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
];

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
        ] {
            // The X25519 bases are exportable so their derived keys may be exported and
            // compared (a derived key is never more exportable than its base).
            let exportable = matches!(t, KeyType::HmacSha256 | KeyType::X25519);
            let spec = self.spec(t, t.name(), exportable, false);
            let label = spec.label.to_string();
            let info = self.hsm.block_on(c.generate_spec(spec))?;
            made.push(label.clone());
            match info.key_type {
                KeyType::Ed25519 => {
                    let (_, pk) = self
                        .hsm
                        .block_on(c.public_key(&KeyRef::Label(info.label)))?;
                    self.ed.push((label, pk));
                }
                KeyType::ChaCha20Poly1305 => self.aead.push(label),
                KeyType::HmacSha256 => {
                    let k = self.hsm.block_on(c.export(&KeyRef::Label(info.label)))?;
                    self.hmac.push((label, k.to_vec()));
                }
                _ => self.x.push(label),
            }
        }
        let mut reg = shared.labels.lock().unwrap_or_else(|p| p.into_inner());
        reg.entry(self.identity.clone()).or_default().extend(made);
        Ok(())
    }

    fn mine(&self) -> HashSet<String> {
        let mut s: HashSet<String> = self.ed.iter().map(|(l, _)| l.clone()).collect();
        s.extend(self.aead.iter().cloned());
        s.extend(self.hmac.iter().map(|(l, _)| l.clone()));
        s.extend(self.x.iter().cloned());
        s.extend(self.session.iter().cloned());
        s
    }

    /// Runs one operation; `Ok(false)` when its result was wrong (already reported).
    fn step(&mut self, op: &str, shared: &Shared) -> Result<(), ClientError> {
        let c = self.hsm.client().clone();
        let r = |k: &str| KeyRef::Label(k.parse().unwrap_or_else(|_| unreachable!()));
        let msg: Vec<u8> = self.next().to_le_bytes().repeat(8);
        let transport = self.transport;
        let wrong = |what: String| shared.problem(&shared.wrong, format!("[{transport}] {what}"));
        match op {
            "sign" | "verify" => {
                let i = self.next() as usize % self.ed.len();
                let (label, pk) = self.ed[i].clone();
                let sig = self.hsm.block_on(c.sign(&r(&label), msg.clone()))?;
                if !verify::signature_ok(&pk, &msg, &sig) {
                    wrong(format!("signature by {label} does not verify locally"));
                }
                if op == "verify" {
                    self.hsm
                        .block_on(c.verify(&r(&label), msg.clone(), sig.clone()))?;
                    let mut bad = sig;
                    bad[0] ^= 0x80;
                    match self.hsm.block_on(c.verify(&r(&label), msg, bad)) {
                        Err(e) if status(&e) == Some(Status::BadSignature) => {}
                        other => wrong(format!("tampered signature answered {other:?}")),
                    }
                }
            }
            "encrypt" | "decrypt" => {
                let i = self.next() as usize % self.aead.len();
                let label = self.aead[i].clone();
                let ct = self
                    .hsm
                    .block_on(c.encrypt(&r(&label), msg.clone(), b"aad".to_vec()))?;
                let pt = self
                    .hsm
                    .block_on(c.decrypt(&r(&label), ct.clone(), b"aad".to_vec()))?;
                if *pt != msg {
                    wrong(format!("decryption with {label} returned other bytes"));
                }
                if op == "decrypt" {
                    match self
                        .hsm
                        .block_on(c.decrypt(&r(&label), ct, b"other".to_vec()))
                    {
                        Err(e) if status(&e) == Some(Status::DecryptFailed) => {}
                        other => wrong(format!("wrong AAD answered {other:?}")),
                    }
                }
            }
            "mac" => {
                let i = self.next() as usize % self.hmac.len();
                let (label, key) = self.hmac[i].clone();
                let tag = self.hsm.block_on(c.mac(&r(&label), msg.clone()))?;
                if !verify::mac_ok(&key, &msg, &tag) {
                    wrong(format!(
                        "MAC by {label} does not match the local computation"
                    ));
                }
            }
            "random" => {
                let n = 16 + (self.next() % 1000) as usize;
                let b = self.hsm.block_on(c.random(n as u32))?;
                if !verify::random_ok(n, &b) {
                    wrong(format!("random({n}) returned {} bytes", b.len()));
                }
                let d = self.hsm.block_on(c.digest(DigestAlg::Sha256, b.clone()))?;
                if d[..] != <sha2::Sha256 as sha2::Digest>::digest(&b)[..] {
                    wrong("digest differs from the local SHA-256".into());
                }
            }
            "keygen" => {
                let spec = self.spec(KeyType::Ed25519, "ed25519", false, false);
                let label = spec.label.to_string();
                let info = self.hsm.block_on(c.generate_spec(spec))?;
                let (_, pk) = self.hsm.block_on(c.public_key(&KeyRef::Id(info.id)))?;
                self.ed.push((label.clone(), pk));
                shared
                    .labels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(self.identity.clone())
                    .or_default()
                    .push(label);
            }
            "delete" => {
                if self.ed.len() <= 2 {
                    // Keep two signing keys for the other operations: delete a fresh one.
                    self.step("keygen", shared)?;
                }
                let (label, _) = self.ed.remove(self.ed.len() - 1);
                self.hsm.block_on(c.delete(&r(&label)))?;
                match self.hsm.block_on(c.info(&r(&label))) {
                    Err(e) if status(&e) == Some(Status::KeyNotFound) => {}
                    other => wrong(format!("deleted key {label} still answers {other:?}")),
                }
            }
            "session" => {
                let spec = self.spec(KeyType::HmacSha256, "sess", false, true);
                let label = spec.label.to_string();
                let info = self.hsm.block_on(c.generate_spec(spec))?;
                if info.lifetime != ferrohsm_proto::Lifetime::Session {
                    wrong(format!(
                        "session key {label} reported as {:?}",
                        info.lifetime
                    ));
                }
                self.session.push(label);
            }
            "list" => {
                let listed = self.hsm.block_on(c.list())?;
                let check = verify::check_list(&self.mine(), &listed, &self.others);
                if !check.missing.is_empty() {
                    wrong(format!("list lacks our keys {:?}", check.missing));
                }
                if !check.foreign.is_empty() {
                    shared.problem(
                        &shared.isolation,
                        format!(
                            "[{}] list shows another identity's keys {:?}",
                            self.transport, check.foreign
                        ),
                    );
                }
            }
            "derive" => {
                let (a, b) = (self.x[0].clone(), self.x[1].clone());
                let (_, pa) = self.hsm.block_on(c.public_key(&r(&a)))?;
                let (_, pb) = self.hsm.block_on(c.public_key(&r(&b)))?;
                let s1 = self.spec(KeyType::HmacSha256, "drv", true, true);
                let s2 = self.spec(KeyType::HmacSha256, "drv", true, true);
                let (l1, l2) = (s1.label.to_string(), s2.label.to_string());
                self.hsm.block_on(c.derive(&r(&a), pb, s1))?;
                self.hsm.block_on(c.derive(&r(&b), pa, s2))?;
                let k1 = self.hsm.block_on(c.export(&r(&l1)))?;
                let k2 = self.hsm.block_on(c.export(&r(&l2)))?;
                if k1 != k2 {
                    wrong("the two sides of an X25519 exchange derived different keys".into());
                }
                self.session.extend([l1, l2]);
            }
            "probe" => {
                let target = {
                    let reg = shared.labels.lock().unwrap_or_else(|p| p.into_inner());
                    let theirs: Vec<&String> = reg
                        .iter()
                        .filter(|(id, _)| **id != self.identity)
                        .flat_map(|(_, l)| l)
                        .collect();
                    if theirs.is_empty() {
                        return Ok(());
                    }
                    theirs[(self.next() as usize) % theirs.len()].clone()
                };
                let key = r(&target);
                let answers = [
                    ("info", self.hsm.block_on(c.info(&key)).map(|_| ())),
                    ("sign", self.hsm.block_on(c.sign(&key, vec![1])).map(|_| ())),
                    ("export", self.hsm.block_on(c.export(&key)).map(|_| ())),
                    ("delete", self.hsm.block_on(c.delete(&key))),
                ];
                // By id: ids are per client, so whatever an id finds must be in our own
                // namespace; a key carrying another identity's label prefix means a leak.
                let id = 1 + (self.next() % 200) as u32;
                match self.hsm.block_on(c.info(&KeyRef::Id(id))) {
                    Ok(k)
                        if self
                            .others
                            .iter()
                            .any(|p| k.label.as_str().starts_with(p.as_str())) =>
                    {
                        shared.problem(
                            &shared.isolation,
                            format!("[{transport}] id {id} reached {}", k.label),
                        );
                    }
                    Ok(_) => {}
                    Err(e) if status(&e) == Some(Status::KeyNotFound) => {}
                    Err(e) => return Err(e),
                }
                for (what, a) in answers {
                    match a {
                        Err(e) if status(&e) == Some(Status::KeyNotFound) => {}
                        other => shared.problem(
                            &shared.isolation,
                            format!(
                                "[{}] {what} of another identity's key {target} answered {other:?}",
                                self.transport
                            ),
                        ),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn connect(profile: &Profile, t: Transport) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(profile, Some(t))
}

fn run_worker(
    i: usize,
    profile: Profile,
    t: Transport,
    others: Vec<String>,
    shared: Arc<Shared>,
) -> Stats {
    let transport = transport_name(t);
    let prefix = format!("{}-w{i}-", profile.name);
    let mut w = loop {
        match connect(&profile, t) {
            Ok(hsm) => {
                break Worker {
                    hsm,
                    transport,
                    identity: profile.name.clone(),
                    prefix: prefix.clone(),
                    others: others.clone(),
                    n: 0,
                    ed: vec![],
                    aead: vec![],
                    hmac: vec![],
                    x: vec![],
                    session: vec![],
                    stats: Stats::default(),
                    rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                };
            }
            Err(e) => {
                shared.problem(
                    &shared.unexpected,
                    format!("[{transport}] client {i} cannot connect: {e}"),
                );
                if shared.done() {
                    return Stats::default();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    if let Err(e) = w.setup(&shared) {
        shared.problem(
            &shared.unexpected,
            format!("[{transport}] client {i} setup failed: {e}"),
        );
        return w.stats;
    }
    let total: u32 = OPS.iter().map(|(_, w)| w).sum();
    while !shared.done() {
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
            Err(e) => {
                w.stats.error(transport, op);
                shared.problem(&shared.unexpected, format!("[{transport}] {op}: {e}"));
                if matches!(e, ClientError::Connection(_) | ClientError::Protocol(_)) {
                    return w.stats;
                }
            }
        }
    }
    w.stats
}

/// Connects raw (plain TCP) and authenticates by hand, for the slow-reader fault.
fn raw_login(profile: &Profile) -> Option<std::net::TcpStream> {
    let addr = profile.tcp_addr.as_deref()?;
    let id = profile.identity().ok()?;
    let key = id.auth_key.as_ref()?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(
        &Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: id.name.clone(),
        })
        .to_frame(1)
        .encode(),
    )
    .ok()?;
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).ok()?;
    let dec = ferrohsm_proto::FrameDecoder::default();
    let ferrohsm_proto::Decoded::Frame(f, _) = dec.decode(&buf[..n]).ok()? else {
        return None;
    };
    let Ok(Response::Challenge(c)) = Response::decode(f.header.opcode, &f.body) else {
        return None;
    };
    let sig = ed25519_dalek::Signer::sign(key, &transcript(&id.name, c.session_id, &c.nonce));
    s.write_all(
        &Request::Proof(Proof {
            signature: sig.to_bytes().to_vec(),
        })
        .to_frame(2)
        .encode(),
    )
    .ok()?;
    let _ = s.read(&mut buf).ok()?;
    Some(s)
}

fn run_fault(
    fault: Fault,
    profiles: Vec<Profile>,
    transports: Vec<Transport>,
    shared: Arc<Shared>,
) {
    let mut i = 0usize;
    while !shared.done() {
        i += 1;
        let p = &profiles[i % profiles.len()];
        let t = transports[i % transports.len()];
        match fault {
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
                if let Some(addr) = &p.tcp_addr
                    && let Ok(mut s) = std::net::TcpStream::connect(addr)
                {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(b"\x00\x01garbage that is not a FerroHSM frame\r\n");
                    let mut b = [0u8; 512];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                }
                std::thread::sleep(Duration::from_millis(20));
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

/// Runs the load until the duration or operation count is reached.
pub fn run(opts: &RunOptions) -> Result<Outcome, String> {
    let profiles: Vec<Profile> = opts
        .profiles
        .iter()
        .map(|p| Profile::load(p).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if profiles.is_empty() || opts.transports.is_empty() {
        return Err("need at least one profile and one transport".into());
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        problems_n: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        isolation: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        problems: Mutex::new(Vec::new()),
        labels: Mutex::new(BTreeMap::new()),
        start: Instant::now(),
        max_ops: opts.ops,
    });
    let mut workers = Vec::new();
    for i in 0..opts.clients.max(1) {
        let p = profiles[i % profiles.len()].clone();
        let t = opts.transports[i % opts.transports.len()];
        // Prefixes of the other identities' labels (isolation probes and listing checks).
        let others = profiles
            .iter()
            .filter(|o| o.name != p.name)
            .map(|o| format!("{}-w", o.name))
            .collect();
        let sh = shared.clone();
        workers.push(std::thread::spawn(move || run_worker(i, p, t, others, sh)));
    }
    let faults: Vec<_> = opts
        .faults
        .iter()
        .map(|f| {
            let (f, p, t, sh) = (
                *f,
                profiles.clone(),
                opts.transports.clone(),
                shared.clone(),
            );
            std::thread::spawn(move || run_fault(f, p, t, sh))
        })
        .collect();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.ops.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let ops = shared.ops.load(Ordering::Relaxed);
        if let Some(b) = &bar {
            let rate = (ops - last.1) as f64 / last.0.elapsed().as_secs_f64();
            b.set_message(format!(
                "{ops} ops, {rate:.0} ops/s, {} problems, {} fault events",
                shared.problems_n.load(Ordering::Relaxed),
                shared.faults.load(Ordering::Relaxed)
            ));
            b.tick();
            last = (Instant::now(), ops);
        }
        if opts.duration.is_some_and(|d| shared.start.elapsed() >= d) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if shared.done() {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    let mut stats = Stats::default();
    for w in workers {
        stats.merge(
            w.join()
                .map_err(|_| "a client thread panicked".to_string())?,
        );
    }
    for f in faults {
        let _ = f.join();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let problems = shared
        .problems
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        total_ops: shared.ops.load(Ordering::Relaxed),
        wrong_results: shared.wrong.load(Ordering::Relaxed),
        isolation_violations: shared.isolation.load(Ordering::Relaxed),
        unexpected_errors: shared.unexpected.load(Ordering::Relaxed),
        problems,
        fault_events: shared.faults.load(Ordering::Relaxed),
        elapsed: shared.start.elapsed(),
        stats,
    })
}
