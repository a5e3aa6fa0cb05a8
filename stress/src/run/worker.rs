//! One load client: its connection, its identity, the keys it made, and every operation of the
//! mix checked locally.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{DigestAlg, KeyRef, KeyType, Status};

use super::{Shared, Stats};
use crate::transport_name;
use crate::verify;

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
    // The restart generation when this connection was made.
    conn_gen: u64,
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

/// The connection broke (or the server is shutting down): the operation's outcome is
/// unknown, which the caller decides about (a restart, or an unexpected error).
fn cut_off(e: &ClientError) -> bool {
    matches!(e, ClientError::Connection(_) | ClientError::Protocol(_))
        || status(e) == Some(Status::ShuttingDown)
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
                        Err(e) if cut_off(&e) => return Err(e),
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
                        Err(e) if cut_off(&e) => return Err(e),
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
                    Err(e) if cut_off(&e) => return Err(e),
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
                // A graceful restart ends every session first, so a list answered while it
                // drains no longer shows this connection's session keys.
                let expect = if self.restart_begun(shared) {
                    self.persistent()
                } else {
                    self.mine()
                };
                let check = verify::check_list(&expect, &listed, &self.others);
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
                        Err(e) if cut_off(&e) => return Err(e),
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

pub(super) fn connect(profile: &Profile, t: Transport) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(profile, Some(t))
}

pub(super) fn run_worker(
    i: usize,
    profile: Profile,
    t: Transport,
    others: Vec<String>,
    shared: Arc<Shared>,
) -> Stats {
    let transport = transport_name(t);
    let prefix = format!("{}-w{i}-", profile.name);
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
                    ed: vec![],
                    aead: vec![],
                    hmac: vec![],
                    x: vec![],
                    session: vec![],
                    stats: Stats::default(),
                    rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                    conn_gen,
                };
            }
            Err(_) if shared.restart_fault && shared.restarting.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(50));
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
                if !w.reconnect(&profile, t, &shared) {
                    break;
                }
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
    if shared.restart_fault {
        w.check_persisted(&profile, t, &shared);
    }
    w.stats
}
