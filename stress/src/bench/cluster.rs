//! `bench --spawn --store-url URL`: nodes on PostgreSQL against a node on SQLite, two nodes
//! against one, failover and invalidation times, all measured in this run. The bench makes a
//! database of its own on the server `URL` names (the user needs `CREATEDB`; the password
//! comes from `HSMD_STORE_PASSWORD`), starts one SQLite node and two PostgreSQL nodes (the
//! second joined to the first), and drops the database at the end.
//!
//! ```text
//!  pg vs sqlite   keygen-persistent and counter-inc at 1 and 16 in flight, signing with a
//!                 cached key: alternating slices on the two nodes (paired ratios)
//!  two vs one     keygen-persistent and signing at 16 in flight: node 1 alone against nodes
//!                 1 and 2 at once, alternating
//!  failover       a client pinging through node 1's profile (node 1 first); node 1 SIGKILLed;
//!                 time to the first answer from node 2 (then node 1 is started again)
//!  invalidation   a key made on node 1 and used on node 2; deleted on node 1; time until
//!                 node 2 refuses it
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::{KeyRef, KeyType, Status};

use super::client::{Keys, client_loop, keys, rt};
use super::rows::{BenchOp, BenchResult};
use super::targets::Target;
use crate::spawn::{Scratch, Spawned};

/// What the cluster section needs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `hsmd` to spawn.
    pub hsmd: std::path::PathBuf,
    /// A database URL on the PostgreSQL server to use (`postgres://USER@HOST:PORT/DB`).
    pub url: String,
    /// Seconds per measurement.
    pub secs: f64,
    /// Failover rounds (node 1 killed and started again each time).
    pub failovers: usize,
    /// Invalidation rounds.
    pub invalidations: usize,
}

fn load(s: &Spawned) -> Result<Profile, String> {
    Profile::load(&s.profile(&s.clients[0])).map_err(|e| e.to_string())
}

fn setup(p: &Profile, tag: &str) -> Result<Keys, String> {
    rt()?.block_on(async {
        let c = ferrohsm_client::connect::connect(p, Some(Transport::Tcp))
            .await
            .map_err(|e| e.to_string())?;
        keys(&c, tag).await.map_err(|e| e.to_string())
    })
}

/// Ops/s and latencies, summed over slices.
struct Tally {
    n: u64,
    h: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Tally, String> {
        Ok(Tally {
            n: 0,
            h: super::floors::ns_histogram()?,
        })
    }

    fn add(&mut self, m: super::Measured) {
        self.n += m.done;
        let _ = self.h.add(m.latencies);
    }

    fn row(&self, op: String, inflight: usize, secs: f64, ratio: Option<f64>) -> BenchResult {
        BenchResult {
            transport: "tcp".into(),
            op,
            inflight,
            clients: 1,
            ops_per_sec: self.n as f64 / secs,
            p50_us: self.h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: self.h.value_at_quantile(0.99) as f64 / 1000.0,
            ratio,
            cpu_us_client: None,
            cpu_us_server: None,
        }
    }
}

/// `op` on `a` and on `b` in alternating slices.
fn alternate(
    (a, ka): (&Profile, &Keys),
    (b, kb): (&Profile, &Keys),
    op: BenchOp,
    inflight: usize,
    secs: f64,
    tag: &str,
) -> Result<(Tally, Tally), String> {
    let (mut ta, mut tb) = (Tally::new()?, Tally::new()?);
    let slice = secs / 4.0;
    for r in 0..4 {
        let t = Transport::Tcp;
        ta.add(client_loop(
            a,
            t,
            op,
            ka,
            inflight,
            slice,
            &format!("{tag}a{r}"),
            None,
        )?);
        tb.add(client_loop(
            b,
            t,
            op,
            kb,
            inflight,
            slice,
            &format!("{tag}b{r}"),
            None,
        )?);
    }
    Ok((ta, tb))
}

/// `op` on node 1 alone against nodes 1 and 2 at once, alternating: (alone, together).
fn two_vs_one(
    n1: (&Profile, &Keys),
    n2: (&Profile, &Keys),
    op: BenchOp,
    inflight: usize,
    secs: f64,
) -> Result<(Tally, Tally), String> {
    let (mut alone, mut together) = (Tally::new()?, Tally::new()?);
    let slice = secs / 4.0;
    for r in 0..4 {
        let t = Transport::Tcp;
        alone.add(client_loop(
            n1.0,
            t,
            op,
            n1.1,
            inflight,
            slice,
            &format!("one{r}"),
            None,
        )?);
        let (p2, k2) = (n2.0.clone(), n2.1.clone());
        let other = std::thread::spawn(move || {
            client_loop(&p2, t, op, &k2, inflight, slice, &format!("two{r}b"), None)
        });
        together.add(client_loop(
            n1.0,
            t,
            op,
            n1.1,
            inflight,
            slice,
            &format!("two{r}a"),
            None,
        )?);
        together.add(
            other
                .join()
                .map_err(|_| "bench client panicked".to_string())??,
        );
    }
    Ok((alone, together))
}

/// The `q` quantile of `v`, in milliseconds.
fn quantile(mut v: Vec<Duration>, q: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Node 1 killed under a pinging client; the time to its first answer from node 2.
fn failover(n1: &mut Spawned, profile: &Profile, rounds: usize) -> Result<Vec<Duration>, String> {
    let mut out = Vec::new();
    let rt = rt()?;
    for _ in 0..rounds {
        let c = rt
            .block_on(ferrohsm_client::connect::connect(
                profile,
                Some(Transport::Tcp),
            ))
            .map_err(|e| e.to_string())?;
        rt.block_on(c.ping()).map_err(|e| e.to_string())?;
        n1.kill();
        let t0 = Instant::now();
        // The client sees its connection lost, and connects through the profile again.
        let lost = rt.block_on(c.ping());
        if lost.is_ok() {
            return Err("a ping succeeded on a killed node".into());
        }
        loop {
            let r = rt.block_on(async {
                let c = ferrohsm_client::connect::connect(profile, Some(Transport::Tcp)).await?;
                c.ping().await
            });
            if r.is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("no node answered within 30 s of the failover".into());
            }
        }
        out.push(t0.elapsed());
        n1.relaunch()?;
    }
    Ok(out)
}

/// A key made on node 1 and cached on node 2, deleted on node 1: the time until node 2
/// refuses it.
fn invalidation(n1: &Profile, n2: &Profile, rounds: usize) -> Result<Vec<Duration>, String> {
    let rt = rt()?;
    rt.block_on(async {
        let t = Some(Transport::Tcp);
        let c1 = ferrohsm_client::connect::connect(n1, t)
            .await
            .map_err(|e| e.to_string())?;
        let c2 = ferrohsm_client::connect::connect(n2, t)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for i in 0..rounds {
            let label = format!("bench-lag-{}-{i}", std::process::id())
                .parse()
                .map_err(|e: String| e)?;
            let spec = ferrohsm_proto::message::KeySpec {
                key_type: KeyType::Ed25519,
                label,
                usage: None,
                exportable: false,
                session: false,
            };
            let k = KeyRef::Id(c1.generate_spec(spec).await.map_err(|e| e.to_string())?.id);
            c2.sign(&k, b"lag".to_vec())
                .await
                .map_err(|e| e.to_string())?;
            c1.delete(&k).await.map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            loop {
                match c2.sign(&k, b"lag".to_vec()).await {
                    Ok(_) => {}
                    Err(e) if e.status() == Some(Status::KeyNotFound) => break,
                    Err(e) => return Err(format!("node 2 answered {e}")),
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    return Err("node 2 still used a key deleted 30 s before".into());
                }
            }
            out.push(t0.elapsed());
        }
        Ok(out)
    })
}

fn target(name: &str, inflight: usize, ratio: f64, goal: f64, at_most: bool) -> Target {
    Target {
        name: name.into(),
        transport: "tcp".into(),
        inflight,
        ratio,
        goal,
        at_most,
    }
}

/// Every cluster measurement: rows (ops/s, with the ratio where one applies) and targets.
pub fn measure(opts: &ClusterOptions) -> Result<(Vec<BenchResult>, Vec<Target>), String> {
    let (_db, url) = Scratch::create(&opts.url)?;
    let extra = "max_connections_per_client = 4096";
    let hsmd: &Path = &opts.hsmd;
    let lite = Spawned::start(hsmd, 1, extra)?;
    let mut n1 = Spawned::start_postgres(hsmd, 1, extra, &url)?;
    let n2 = n1.join(extra)?;
    let (pl, p1, p2) = (load(&lite)?, load(&n1)?, load(&n2)?);
    let (kl, k1) = (setup(&pl, "lite")?, setup(&p1, "pg1")?);
    let k2 = setup(&p2, "pg2")?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let secs = opts.secs;
    for (op, inflight, goal) in [
        (BenchOp::KeygenPersistent, 1, None),
        (BenchOp::KeygenPersistent, 16, Some(0.5)),
        (BenchOp::CounterInc, 1, None),
        (BenchOp::CounterInc, 16, None),
        (BenchOp::Ed25519Sign, 1, Some(0.9)),
        (BenchOp::Ed25519Sign, 16, Some(0.9)),
    ] {
        let tag = format!("pl-{}-{inflight}-", op.name());
        let (pg, sq) = alternate((&p1, &k1), (&pl, &kl), op, inflight, secs, &tag)?;
        let ratio = pg.n as f64 / sq.n.max(1) as f64;
        rows.push(sq.row(format!("{} (sqlite)", op.name()), inflight, secs, None));
        rows.push(pg.row(
            format!("{} (postgres)", op.name()),
            inflight,
            secs,
            Some(ratio),
        ));
        if let Some(goal) = goal {
            let name = format!("{} postgres / sqlite", op.name());
            targets.push(target(&name, inflight, ratio, goal, false));
        }
    }
    for (op, goal) in [
        (BenchOp::KeygenPersistent, Some(0.9)),
        (BenchOp::CounterInc, None),
        (BenchOp::Ed25519Sign, Some(0.9)),
    ] {
        let (one, two) = two_vs_one((&p1, &k1), (&p2, &k2), op, 16, secs)?;
        let ratio = two.n as f64 / one.n.max(1) as f64;
        rows.push(one.row(format!("{} (one node)", op.name()), 16, secs, None));
        rows.push(two.row(format!("{} (two nodes)", op.name()), 16, secs, Some(ratio)));
        if let Some(goal) = goal {
            let name = format!("{} two nodes / one", op.name());
            targets.push(target(&name, 16, ratio, goal, false));
        }
    }
    let lag = invalidation(&p1, &p2, opts.invalidations)?;
    let name = "invalidation lag (ms): delete on node 1 to refusal on node 2";
    for (q, what) in [(0.5, "p50"), (0.99, "p99")] {
        let v = quantile(lag.clone(), q);
        targets.push(target(&format!("{name}, {what}"), 1, v, 1000.0, true));
    }
    // Last: it kills node 1 (the bench's keys are left behind with the database).
    let times = failover(&mut n1, &p1, opts.failovers)?;
    let name = "failover (ms): SIGKILL of node 1 to an answer from node 2";
    for (q, what, goal) in [(0.5, "p50", 1000.0), (1.0, "max", 5000.0)] {
        let v = quantile(times.clone(), q);
        targets.push(target(&format!("{name}, {what}"), 1, v, goal, true));
    }
    Ok((rows, targets))
}
