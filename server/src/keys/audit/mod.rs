//! The audit chain: every state change and every denied request, appended in the same
//! transaction as the change, each entry hashed over its fields and the previous entry's hash.
//!
//! ```text
//!  entry n: seq, time, client, session, transport, op, key, status, prev_hash = hash(n-1)
//!  hash(n) = SHA-256("FerroHSM audit v1\0" || prev_hash || seq || time || session
//!                    || len-prefixed client, transport, op, key, detail, status)
//!  head    = (seq, hash) of the last entry, signed with the audit key (Ed25519, sealed under
//!            the master key in the store; public half in D/audit.pub) at every commit
//! ```
//! `verify` recomputes every hash and link offline (no secret needed), so an edited, deleted or
//! reordered entry is named; the signed head shows that the chain was not rewritten or cut by
//! anyone without the audit key; a checkpoint kept outside the store shows that the log was not
//! rolled back to an older signed head. No secret ever enters an entry: key names, statuses and
//! operation names only.

use std::time::{Duration, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::keys::store::records::AuditEvent;

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];
const ENTRY_TAG: &[u8] = b"FerroHSM audit v1\0";
const HEAD_TAG: &[u8] = b"FerroHSM audit head v1\0";
const CHECKPOINT_FIRST_LINE: &str = "ferrohsm-audit-checkpoint v1";

/// How much is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// State changes and denied requests.
    #[default]
    Changes,
    /// Also every sign, verify, encrypt, decrypt, mac and mac-verify.
    All,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number, from 1, no gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Client.
    pub client: String,
    /// Session.
    pub session: u64,
    /// Transport.
    pub transport: String,
    /// Operation.
    pub op: String,
    /// Key.
    pub key: String,
    /// Detail.
    pub detail: String,
    /// Status.
    pub status: String,
    /// The previous entry's hash.
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

/// The hash of an entry with these fields.
#[allow(clippy::too_many_arguments)]
fn hash_fields(
    prev: &[u8; 32],
    seq: u64,
    time_ms: u64,
    session: u64,
    client: &str,
    transport: &str,
    op: &str,
    key: &str,
    detail: &str,
    status: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENTRY_TAG);
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(time_ms.to_le_bytes());
    h.update(session.to_le_bytes());
    for f in [client, transport, op, key, detail, status] {
        h.update((f.len() as u32).to_le_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().into()
}

impl AuditRow {
    /// Chains `e` after `(seq - 1, prev)`.
    pub fn chain(e: &AuditEvent, seq: u64, prev: [u8; 32]) -> AuditRow {
        let hash = hash_fields(
            &prev,
            seq,
            e.time_ms,
            e.session,
            &e.client,
            e.transport,
            e.op,
            &e.key,
            &e.detail,
            e.status,
        );
        AuditRow {
            seq,
            time_ms: e.time_ms,
            client: e.client.to_string(),
            session: e.session,
            transport: e.transport.into(),
            op: e.op.into(),
            key: e.key.clone(),
            detail: e.detail.clone(),
            status: e.status.into(),
            prev_hash: prev,
            hash,
        }
    }

    /// A stored hash as read back: one of the wrong length is kept as far as it goes (zero
    /// padded), so `verify` names the entry as edited rather than failing to read it.
    pub fn hash_as_read(b: Vec<u8>) -> [u8; 32] {
        let mut out = [0u8; 32];
        let n = b.len().min(32);
        out[..n].copy_from_slice(&b[..n]);
        out
    }

    /// The hash this entry's fields give.
    pub fn computed_hash(&self) -> [u8; 32] {
        hash_fields(
            &self.prev_hash,
            self.seq,
            self.time_ms,
            self.session,
            &self.client,
            &self.transport,
            &self.op,
            &self.key,
            &self.detail,
            &self.status,
        )
    }

    /// The JSON form `hsmd audit show --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "time": rfc3339_ms(self.time_ms),
            "client": self.client,
            "session": self.session,
            "transport": self.transport,
            "op": self.op,
            "key": self.key,
            "detail": self.detail,
            "status": self.status,
            "prev_hash": hex(&self.prev_hash),
            "hash": hex(&self.hash),
        })
    }

    /// One tab-separated line.
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.seq,
            rfc3339_ms(self.time_ms),
            self.client,
            self.session,
            self.transport,
            self.op,
            if self.key.is_empty() { "-" } else { &self.key },
            if self.detail.is_empty() {
                "-"
            } else {
                &self.detail
            },
            self.status,
            hex(&self.hash)
        )
    }
}

/// Milliseconds since the Unix epoch (an entry's time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the head signature covers.
fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    [HEAD_TAG, &seq.to_le_bytes(), hash].concat()
}

/// The chain's head as signed by the audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// Last sequence number (0: empty log).
    pub seq: u64,
    /// Last hash.
    pub hash: [u8; 32],
    /// Ed25519 signature over the head.
    pub signature: [u8; 64],
}

impl SignedHead {
    /// Signs `(seq, hash)`.
    pub fn sign(key: &SigningKey, seq: u64, hash: [u8; 32]) -> SignedHead {
        SignedHead {
            seq,
            hash,
            signature: key.sign(&head_message(seq, &hash)).to_bytes(),
        }
    }

    /// Whether the signature verifies with `public`.
    pub fn verifies(&self, public: &VerifyingKey) -> bool {
        public
            .verify(
                &head_message(self.seq, &self.hash),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }

    /// Stored form: seq (8, LE), hash (32), signature (64).
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.seq.to_le_bytes()[..], &self.hash, &self.signature].concat()
    }

    /// Parses [`SignedHead::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<SignedHead> {
        if b.len() != 8 + 32 + 64 {
            return None;
        }
        Some(SignedHead {
            seq: u64::from_le_bytes(b[..8].try_into().ok()?),
            hash: b[8..40].try_into().ok()?,
            signature: b[40..].try_into().ok()?,
        })
    }

    /// The checkpoint text `hsmd audit checkpoint` prints.
    pub fn to_checkpoint(&self) -> String {
        format!(
            "{CHECKPOINT_FIRST_LINE}\nseq {}\nhash {}\nsignature {}\n",
            self.seq,
            hex(&self.hash),
            hex(&self.signature)
        )
    }

    /// Parses a checkpoint file.
    pub fn from_checkpoint(text: &str) -> Result<SignedHead, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(CHECKPOINT_FIRST_LINE) {
            return Err(format!(
                "not a FerroHSM audit checkpoint (expected a first line {CHECKPOINT_FIRST_LINE:?})"
            ));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines
                .next()
                .ok_or_else(|| format!("checkpoint has no {name} line"))?;
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("checkpoint line {line:?} is not `{name} ...`"))
        };
        let seq = field("seq")?
            .parse()
            .map_err(|_| "checkpoint seq is not a number".to_string())?;
        let hash = unhex(&field("hash")?).ok_or("checkpoint hash is not 64 hex digits")?;
        let signature =
            unhex(&field("signature")?).ok_or("checkpoint signature is not 128 hex digits")?;
        Ok(SignedHead {
            seq,
            hash,
            signature,
        })
    }
}

/// Why the chain does not verify: the first broken entry and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The entry named (the sequence number where the chain breaks).
    pub seq: u64,
    /// What was found.
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit chain broken at entry {}: {}",
            self.seq, self.reason
        )
    }
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// The last hash.
    pub head: [u8; 32],
}

/// Checks every entry (hash, link, sequence), then the signed head against the last entry,
/// then, if given, that the checkpoint's entry is still in the log with the same hash.
pub fn verify(
    rows: impl IntoIterator<Item = AuditRow>,
    head: Option<&SignedHead>,
    public: &VerifyingKey,
    checkpoint: Option<&SignedHead>,
) -> Result<Verified, Broken> {
    let mut prev = GENESIS;
    let mut expected = 1u64;
    let mut at_checkpoint = None;
    for r in rows {
        if r.seq != expected {
            let reason = if r.seq > expected {
                format!(
                    "entries {expected}..{} are missing (deleted); the next entry is {}",
                    r.seq - 1,
                    r.seq
                )
            } else {
                format!(
                    "entry {} appears where {expected} belongs (reordered)",
                    r.seq
                )
            };
            return Err(Broken {
                seq: expected,
                reason,
            });
        }
        if r.computed_hash() != r.hash {
            return Err(Broken {
                seq: r.seq,
                reason: "its fields do not match its hash (edited)".into(),
            });
        }
        if r.prev_hash != prev {
            return Err(Broken {
                seq: r.seq,
                reason: format!(
                    "it does not follow entry {} (an entry was deleted, inserted or reordered)",
                    r.seq - 1
                ),
            });
        }
        if checkpoint.is_some_and(|c| c.seq == r.seq) {
            at_checkpoint = Some(r.hash);
        }
        prev = r.hash;
        expected += 1;
    }
    let last = expected - 1;
    match head {
        None if last > 0 => {
            return Err(Broken {
                seq: last,
                reason: "the store holds no signed head for the chain".into(),
            });
        }
        None => {}
        Some(h) if !h.verifies(public) => {
            return Err(Broken {
                seq: h.seq,
                reason: "the signed head does not verify with the audit public key".into(),
            });
        }
        Some(h) if h.seq > last => {
            return Err(Broken {
                seq: last + 1,
                reason: format!(
                    "the log ends at entry {last} but the signed head is at {} (truncated)",
                    h.seq
                ),
            });
        }
        Some(h) if h.seq < last => {
            return Err(Broken {
                seq: h.seq + 1,
                reason: format!(
                    "entries after {} are not covered by the signed head (appended outside \
                     hsmd)",
                    h.seq
                ),
            });
        }
        Some(h) if h.hash != prev => {
            return Err(Broken {
                seq: last,
                reason: "the last entry's hash differs from the signed head (rewritten)".into(),
            });
        }
        Some(_) => {}
    }
    if let Some(c) = checkpoint {
        if !c.verifies(public) {
            return Err(Broken {
                seq: c.seq,
                reason: "the checkpoint's signature does not verify with the audit public key"
                    .into(),
            });
        }
        match at_checkpoint {
            None if c.seq > last => {
                return Err(Broken {
                    seq: last + 1,
                    reason: format!(
                        "the log ends at entry {last}, before the checkpoint at {} (truncated \
                         after the checkpoint)",
                        c.seq
                    ),
                });
            }
            Some(h) if h == c.hash => {}
            None if c.seq == 0 => {}
            _ => {
                return Err(Broken {
                    seq: c.seq,
                    reason: "it differs from the entry the checkpoint signed (rewritten)".into(),
                });
            }
        }
    }
    Ok(Verified {
        entries: last,
        head: prev,
    })
}

#[cfg(test)]
mod tests;
