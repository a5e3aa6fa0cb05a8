//! One checked operation of a worker: each result verified locally, each probe of another
//! identity required to answer as if the key did not exist.

use ferrohsm_client::ClientError;
use ferrohsm_proto::{DigestAlg, KeyRef, KeyType, Status};

use super::{Shared, Worker, cut_off, status};
use crate::verify;

impl Worker {
    /// Runs one operation `op`; a wrong result or an isolation breach is reported to
    /// `shared`, an error (a cut-off connection, say) goes back to the caller.
    pub(super) fn step(&mut self, op: &str, shared: &Shared) -> Result<(), ClientError> {
        let c = self.hsm.client().clone();
        let r = |k: &str| KeyRef::Label(k.parse().unwrap_or_else(|_| unreachable!()));
        let msg: Vec<u8> = self.next().to_le_bytes().repeat(8);
        let transport = self.transport;
        let wrong = |what: String| shared.problem(&shared.wrong, format!("[{transport}] {what}"));
        match op {
            "sign" | "verify" => {
                let i = self.next() as usize % self.signers.len();
                let (label, t, pk) = self.signers[i].clone();
                let sig = self.hsm.block_on(c.sign(&r(&label), msg.clone()))?;
                if !verify::signature_ok(t, &pk, &msg, &sig) {
                    wrong(format!("{t} signature by {label} does not verify locally"));
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
            "counter" => {
                let Some((name, seen)) = self.counter.clone() else {
                    return Ok(());
                };
                let v = self.hsm.block_on(c.counter_inc(&name))?;
                if v <= seen {
                    wrong(format!("counter {name} went from {seen} to {v}"));
                }
                self.counter = Some((name.clone(), v.max(seen)));
                let read = self.hsm.block_on(c.counter_read(&name))?;
                if read < v {
                    wrong(format!("counter {name} reads {read} after it reached {v}"));
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
                self.signers.push((label.clone(), KeyType::Ed25519, pk));
                shared
                    .labels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(self.identity.clone())
                    .or_default()
                    .push(label);
            }
            "delete" => {
                if self.signers.len() <= 3 {
                    // Keep the set-up's signing keys for the other operations: delete a
                    // fresh one.
                    self.step("keygen", shared)?;
                }
                let (label, ..) = self.signers.remove(self.signers.len() - 1);
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
            "kem" => self.kem_step(shared)?,
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
                let (owner, target) = {
                    let reg = shared.labels.lock().unwrap_or_else(|p| p.into_inner());
                    let theirs: Vec<(&String, &String)> = reg
                        .iter()
                        .filter(|(id, _)| **id != self.identity)
                        .flat_map(|(id, l)| l.iter().map(move |l| (id, l)))
                        .collect();
                    if theirs.is_empty() {
                        return Ok(());
                    }
                    let (o, l) = theirs[(self.next() as usize) % theirs.len()];
                    (o.clone(), l.clone())
                };
                let key = r(&target);
                // Named with its owner, as a grant would name it: nothing was granted, so it
                // must not be found either.
                let owned = format!("{owner}:{target}")
                    .parse::<KeyRef>()
                    .unwrap_or_else(|_| unreachable!());
                let probe_spec = self.spec(KeyType::HmacSha256, "probe", false, true);
                let answers = [
                    ("info", self.hsm.block_on(c.info(&key)).map(|_| ())),
                    ("sign", self.hsm.block_on(c.sign(&key, vec![1])).map(|_| ())),
                    ("export", self.hsm.block_on(c.export(&key)).map(|_| ())),
                    (
                        "decapsulate",
                        self.hsm
                            .block_on(c.decapsulate(&key, vec![0; 1088], probe_spec))
                            .map(|_| ()),
                    ),
                    ("delete", self.hsm.block_on(c.delete(&key))),
                    (
                        "sign as OWNER:LABEL",
                        self.hsm.block_on(c.sign(&owned, vec![1])).map(|_| ()),
                    ),
                    (
                        "info as OWNER:LABEL",
                        self.hsm.block_on(c.info(&owned)).map(|_| ()),
                    ),
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

    /// ML-KEM: a secret encapsulated here (aws-lc) is what hsmd decapsulates; hsmd's own
    /// encapsulation and decapsulation agree; a tampered ciphertext gives another secret
    /// (implicit rejection), not an error. Every new key is an exportable session key, so it
    /// can be compared and vanishes with the connection.
    fn kem_step(&mut self, shared: &Shared) -> Result<(), ClientError> {
        let c = self.hsm.client().clone();
        let transport = self.transport;
        let wrong = |what: String| shared.problem(&shared.wrong, format!("[{transport}] {what}"));
        let i = self.next() as usize % self.kem.len();
        let (label, t, pk) = self.kem[i].clone();
        let key = KeyRef::Label(label.parse().unwrap_or_else(|_| unreachable!()));
        let Some((ct, want)) = verify::encapsulate(t, &pk) else {
            wrong(format!(
                "{t} public key of {label} does not encapsulate locally"
            ));
            return Ok(());
        };
        let mut made = Vec::new();
        let mut secret_of = |w: &mut Worker, info: ferrohsm_proto::KeyInfo| {
            made.push(info.label.to_string());
            w.hsm.block_on(c.export(&KeyRef::Id(info.id)))
        };
        let spec = self.spec(KeyType::HmacSha256, "kem", true, true);
        let info = self.hsm.block_on(c.decapsulate(&key, ct.clone(), spec))?;
        if *secret_of(self, info)? != want {
            wrong(format!(
                "{label} decapsulated another secret than was encapsulated"
            ));
        }
        let spec = self.spec(KeyType::HmacSha256, "kem", true, true);
        let (ct2, sent) = self.hsm.block_on(c.encapsulate(&key, spec))?;
        let spec = self.spec(KeyType::HmacSha256, "kem", true, true);
        let got = self.hsm.block_on(c.decapsulate(&key, ct2, spec))?;
        let (sent, got) = (secret_of(self, sent)?, secret_of(self, got)?);
        if sent != got {
            wrong(format!(
                "{label}: encapsulated and decapsulated secrets differ"
            ));
        }
        let mut bad = ct;
        bad[0] ^= 1;
        let spec = self.spec(KeyType::HmacSha256, "kem", true, true);
        match self.hsm.block_on(c.decapsulate(&key, bad, spec)) {
            Ok(info) => {
                if *secret_of(self, info)? == want {
                    wrong(format!(
                        "{label}: a tampered ciphertext gave the real secret"
                    ));
                }
            }
            Err(e) if cut_off(&e) => return Err(e),
            Err(e) => wrong(format!("{label}: a tampered ciphertext answered {e}")),
        }
        self.session.extend(made);
        Ok(())
    }
}
