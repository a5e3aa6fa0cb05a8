//! What hsmd counts, and the HTTP endpoint that shows it (`[metrics] listen`): `GET /metrics`
//! in the Prometheus text format, `GET /health` for load balancers and orchestrators.
//!
//! ```text
//!  sessions (session/)     answered(op, transport, status, duration)
//!  listeners, logins       refused(transport, reason): handshakes that did not become sessions
//!  store writer (keys/)    commit durations and batch sizes (StoreStats)
//!      |  relaxed atomics, no lock, nothing allocated per request
//!      v
//!  http.rs                 on a scrape: these counters, plus gauges read then (crypto queue,
//!                          memory budget, sessions open (the key manager's count), keys and
//!                          audit entries stored: health.rs asks the store)
//! ```
//! Labels are fixed, small sets: the operation's name from its kind's one description
//! ([`ferrohsm_proto::kind::Kind`]), the transport, the wire status, a refusal reason. No
//! client name, key label or id appears in any of them.

pub mod health;
pub mod histogram;
pub mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferrohsm_proto::kind::Kind;
use ferrohsm_proto::{Opcode, Status};

pub use histogram::Histogram;

/// The transports, as every label and log names them.
pub const TRANSPORTS: [&str; 4] = ["tcp", "tls", "tls-psk", "shm"];

/// A transport's place in [`TRANSPORTS`] (in-memory test connections count as `tcp`).
pub fn transport(name: &str) -> usize {
    TRANSPORTS.iter().position(|t| *t == name).unwrap_or(0)
}

/// Why a connection did not become a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No handshake place was free for its source.
    Busy,
    /// The TLS handshake failed.
    Tls,
    /// The shared-memory set-up failed.
    Setup,
    /// The transport's credential names no configured client.
    UnknownCredential,
    /// The login was refused (hello or proof).
    AuthFailed,
    /// A connection limit (the listener's, or the client's) was reached.
    ConnectionLimit,
    /// The handshake took longer than `handshake_timeout_ms`.
    Timeout,
    /// Newer connections needed its handshake place.
    Evicted,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Busy,
        Refusal::Tls,
        Refusal::Setup,
        Refusal::UnknownCredential,
        Refusal::AuthFailed,
        Refusal::ConnectionLimit,
        Refusal::Timeout,
        Refusal::Evicted,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Tls => "tls",
            Refusal::Setup => "setup",
            Refusal::UnknownCredential => "unknown_credential",
            Refusal::AuthFailed => "auth_failed",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Timeout => "timeout",
            Refusal::Evicted => "evicted",
        }
    }
}

/// Statuses as labelled: `ok`, then every wire status.
const STATUSES: usize = 1 + Status::ALL.len();

fn status_index(status: Option<Status>) -> usize {
    match status {
        None => 0,
        Some(s) => 1 + Status::ALL.iter().position(|x| *x == s).unwrap_or(0),
    }
}

fn status_name(i: usize) -> &'static str {
    match i.checked_sub(1) {
        None => "ok",
        Some(i) => Status::ALL.get(i).map_or("internal", |s| s.name()),
    }
}

/// Operation names (each kind's, shared names once, then `unknown`) and where each opcode's
/// counts go.
#[derive(Debug)]
struct Ops {
    names: Vec<&'static str>,
    by_opcode: Vec<usize>,
}

impl Ops {
    fn new() -> Ops {
        let mut names: Vec<&'static str> = Vec::new();
        let top = Opcode::ALL.iter().map(|o| *o as usize).max().unwrap_or(0);
        let mut by_opcode = vec![usize::MAX; top + 1];
        for o in Opcode::ALL {
            let name = Kind::of(o).name;
            let i = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                names.push(name);
                names.len() - 1
            });
            by_opcode[o as usize] = i;
        }
        names.push("unknown");
        let unknown = names.len() - 1;
        for i in &mut by_opcode {
            if *i == usize::MAX {
                *i = unknown;
            }
        }
        Ops { names, by_opcode }
    }

    fn of(&self, opcode: u16) -> usize {
        self.by_opcode
            .get(usize::from(opcode))
            .copied()
            .unwrap_or(self.names.len() - 1)
    }
}

/// The counters every session, listener and login adds to; one per server.
#[derive(Debug)]
pub struct Metrics {
    ops: Ops,
    // [op][transport][status]
    requests: Box<[AtomicU64]>,
    // [op]
    durations: Box<[Histogram]>,
    // [transport][reason]
    refused: Box<[AtomicU64]>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every count at zero.
    pub fn new() -> Metrics {
        let ops = Ops::new();
        let n = ops.names.len();
        Metrics {
            requests: (0..n * TRANSPORTS.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            durations: (0..n).map(|_| Histogram::seconds()).collect(),
            refused: (0..TRANSPORTS.len() * Refusal::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            ops,
        }
    }

    /// One request answered: `opcode` over `transport` ([`transport`]), failed with `status`
    /// or succeeded (`None`), `since` its frame was read.
    pub fn answered(&self, opcode: u16, transport: usize, status: Option<Status>, since: Instant) {
        let op = self.ops.of(opcode);
        let t = transport.min(TRANSPORTS.len() - 1);
        let i = (op * TRANSPORTS.len() + t) * STATUSES + status_index(status);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.durations[op].observe_duration(since.elapsed());
    }

    /// One connection over `transport` that did not become a session, and why.
    pub fn refused(&self, transport: &str, why: Refusal) {
        let r = Refusal::ALL.iter().position(|x| *x == why).unwrap_or(0);
        self.refused[self::transport(transport) * Refusal::ALL.len() + r]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered so far with `status` (`None`: successes), over every operation and
    /// transport.
    pub fn answered_total(&self, status: Option<Status>) -> u64 {
        let s = status_index(status);
        self.requests
            .iter()
            .skip(s)
            .step_by(STATUSES)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The request, session and refusal families in the text exposition format.
    pub fn write(&self, out: &mut String) {
        family(
            out,
            "ferrohsm_requests_total",
            "counter",
            "Requests answered, by operation, transport and status (ok or the wire status).",
        );
        for (op, name) in self.ops.names.iter().enumerate() {
            for (t, transport) in TRANSPORTS.iter().enumerate() {
                for s in 0..STATUSES {
                    let n = self.requests[(op * TRANSPORTS.len() + t) * STATUSES + s]
                        .load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "ferrohsm_requests_total{{op=\"{name}\",transport=\"{transport}\",status=\"{}\"}} {n}",
                            status_name(s)
                        );
                    }
                }
            }
        }
        family(
            out,
            "ferrohsm_request_duration_seconds",
            "histogram",
            "Time from a request's frame read to its answer ready, by operation.",
        );
        // Kinds that share a name (sign over a message or a digest) are one operation here.
        for (op, name) in self.ops.names.iter().enumerate() {
            let h = &self.durations[op];
            if h.count() == 0 {
                continue;
            }
            let mut counts = Vec::new();
            h.add_to(&mut counts);
            h.write(
                out,
                "ferrohsm_request_duration_seconds",
                &format!("op=\"{name}\","),
                &counts,
            );
        }
        family(
            out,
            "ferrohsm_handshake_failures_total",
            "counter",
            "Connections that did not become sessions, by transport and reason.",
        );
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            for (r, reason) in Refusal::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ferrohsm_handshake_failures_total{{transport=\"{transport}\",reason=\"{}\"}} {}",
                    reason.name(),
                    self.refused[t * Refusal::ALL.len() + r].load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// A family's `# HELP` and `# TYPE` lines.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One unlabelled sample.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_that_share_a_name_share_a_series_and_unknown_opcodes_have_their_own() {
        let m = Metrics::new();
        let t = transport("tls");
        let now = Instant::now();
        m.answered(Opcode::Sign as u16, t, None, now);
        m.answered(Opcode::SignDigest as u16, t, None, now);
        m.answered(Opcode::Sign as u16, t, Some(Status::KeyNotFound), now);
        m.answered(999, transport("shm"), Some(Status::UnknownOpcode), now);
        let mut out = String::new();
        m.write(&mut out);
        assert!(
            out.contains(
                "ferrohsm_requests_total{op=\"sign\",transport=\"tls\",status=\"ok\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains(
            "ferrohsm_requests_total{op=\"sign\",transport=\"tls\",status=\"key_not_found\"} 1\n"
        ));
        assert!(out.contains(
            "ferrohsm_requests_total{op=\"unknown\",transport=\"shm\",status=\"unknown_opcode\"} 1\n"
        ));
        assert!(out.contains("ferrohsm_request_duration_seconds_count{op=\"sign\"} 3\n"));
        assert_eq!(m.answered_total(None), 2);
        assert_eq!(m.answered_total(Some(Status::KeyNotFound)), 1);
    }

    #[test]
    fn refusals_count_by_transport_and_reason_and_every_pair_is_shown() {
        let m = Metrics::new();
        m.refused("tls-psk", Refusal::Timeout);
        m.refused("tls-psk", Refusal::Timeout);
        let mut out = String::new();
        m.write(&mut out);
        assert!(out.contains(
            "ferrohsm_handshake_failures_total{transport=\"tls-psk\",reason=\"timeout\"} 2\n"
        ));
        assert!(
            out.contains(
                "ferrohsm_handshake_failures_total{transport=\"shm\",reason=\"setup\"} 0\n"
            )
        );
    }
}
