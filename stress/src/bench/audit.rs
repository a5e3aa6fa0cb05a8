//! The cost of `[audit] level = "all"`: the same signatures on two spawned servers, one at
//! `changes` (the default) and one at `all`, measured alternately so that drift on a shared
//! machine hits both alike; the median of three rounds each.

use ferrohsm_client::profile::{Profile, Transport};

use super::client::{client_loop, keys, rt};
use super::rows::BenchOp;

/// Sign throughput at both audit levels, at one in-flight depth.
#[derive(Debug, Clone)]
pub struct AuditCost {
    /// Operation measured.
    pub op: String,
    /// Transport.
    pub transport: String,
    /// Requests in flight.
    pub inflight: usize,
    /// ops/s with `level = "changes"`.
    pub changes: f64,
    /// ops/s with `level = "all"`.
    pub all: f64,
}

impl AuditCost {
    /// `all / changes`.
    pub fn ratio(&self) -> f64 {
        self.all / self.changes
    }
}

/// Measures Ed25519 signing over TCP on both servers at each depth in `inflight`.
pub fn audit_cost(
    changes: &Profile,
    all: &Profile,
    inflight: &[usize],
    secs: f64,
) -> Result<Vec<AuditCost>, String> {
    let t = Transport::Tcp;
    let rt = rt()?;
    let setup = |p: &Profile| {
        rt.block_on(async {
            let c = ferrohsm_client::connect::connect(p, Some(t)).await?;
            let k = keys(&c, "audit").await?;
            Ok::<_, ferrohsm_client::ClientError>((c, k))
        })
        .map_err(|e| format!("audit bench set-up: {e}"))
    };
    let (_c1, k_changes) = setup(changes)?;
    let (_c2, k_all) = setup(all)?;
    let op = BenchOp::Ed25519Sign;
    let mut out = Vec::new();
    for &n in inflight {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let tag = format!("audit-{n}-{round}");
            let done = client_loop(changes, t, op, &k_changes, n.max(1), secs, &tag, None)?.done;
            a.push(done as f64 / secs);
            let done = client_loop(all, t, op, &k_all, n.max(1), secs, &tag, None)?.done;
            b.push(done as f64 / secs);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        out.push(AuditCost {
            op: op.name().into(),
            transport: "tcp".into(),
            inflight: n,
            changes: a[1],
            all: b[1],
        });
    }
    Ok(out)
}
