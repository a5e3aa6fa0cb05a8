//! Key search at scale: `find` by id and by label in a namespace of N keys, against the same in
//! a namespace of 10, in one run (the store answers from its indexes, so the two should be
//! close; a scan that unseals every key would be N/10 times slower).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferrohsm_client::Client;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_proto::message::{KeyQuery, KeySpec, Page};
use ferrohsm_proto::{KeyRef, KeyType, Label, Request, Response};

use super::client::rt;
use super::floors;
use super::rows::BenchResult;
use super::targets::Target;
use crate::transport_name;

/// Keys in the small namespace.
const SMALL: usize = 10;
/// Requests kept in flight while filling and emptying the namespace (at most the session's
/// window: a request past it waits for a slot that only an awaited answer frees).
const FILL_DEPTH: usize = 16;
/// The goal: a find at N keys keeps at least this share of its speed at 10 keys.
const GOAL: f64 = 0.5;

fn label(run: &str, i: usize) -> Result<Label, String> {
    format!("find-{run}-{i}").parse()
}

/// Sends `reqs` with up to [`FILL_DEPTH`] in flight; each answer, in order (every request is
/// sent and answered even when some fail).
async fn pipelined(c: &Client, reqs: Vec<Request>) -> Vec<Result<Response, String>> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut window = VecDeque::new();
    for r in reqs {
        if window.len() >= FILL_DEPTH.min(c.welcome().window.max(1) as usize)
            && let Some(p) = window.pop_front()
        {
            out.push(wait(p).await);
        }
        match c.submit(r).await {
            Ok(p) => window.push_back(p),
            Err(e) => out.push(Err(e.to_string())),
        }
    }
    for p in window {
        out.push(wait(p).await);
    }
    out
}

async fn wait(p: ferrohsm_client::Pending) -> Result<Response, String> {
    p.wait().await.map_err(|e| e.to_string())
}

/// `n` new Ed25519 keys labelled from `from`, their ids pushed to `ids` as they come (so that
/// a fill that fails part-way still leaves every key made there to delete).
async fn fill(
    c: &Client,
    run: &str,
    from: usize,
    n: usize,
    ids: &mut Vec<u32>,
) -> Result<(), String> {
    let reqs = (from..from + n)
        .map(|i| {
            Ok(Request::Generate(KeySpec {
                key_type: KeyType::Ed25519,
                label: label(run, i)?,
                usage: None,
                exportable: false,
                session: false,
            }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut failed = None;
    for r in pipelined(c, reqs).await {
        match r {
            Ok(Response::Key(k)) => ids.push(k.id),
            Ok(other) => failed = Some(format!("keygen answered {}", other.kind())),
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Finds `query` one at a time for `secs` (a tenth more as warm-up); each answer must be the
/// one key `want`.
async fn measure(
    c: &Client,
    query: &KeyQuery,
    want: u32,
    secs: f64,
) -> Result<(u64, hdrhistogram::Histogram<u64>), String> {
    let mut h = floors::ns_histogram()?;
    let warm_until = Instant::now() + Duration::from_secs_f64(secs / 10.0);
    let end = warm_until + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    loop {
        let t0 = Instant::now();
        match c.call(Request::Find(query.clone())).await {
            Ok(Response::Keys(k)) if k.len() == 1 && k[0].id == want => {}
            Ok(Response::Keys(k)) => {
                let ids: Vec<u32> = k.iter().map(|k| k.id).collect();
                return Err(format!("find {query:?} answered {ids:?}, not [{want}]"));
            }
            Ok(other) => return Err(format!("find answered {}", other.kind())),
            Err(e) => return Err(format!("find: {e}")),
        }
        let now = Instant::now();
        if now > end {
            return Ok((n, h));
        }
        if now > warm_until {
            n += 1;
            let _ = h.record((now - t0).as_nanos().max(1) as u64);
        }
    }
}

/// Find by id and by label among `SMALL` keys, then among `n`; the rows and the targets.
pub(crate) fn find_scale(
    profile: &Profile,
    t: Transport,
    n: usize,
    secs: f64,
) -> Result<(Vec<BenchResult>, Vec<Target>), String> {
    let run = format!("{}", std::process::id());
    let name = transport_name(t);
    rt()?.block_on(async {
        let c = ferrohsm_client::connect::connect(profile, Some(t))
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let mut ids = Vec::new();
        let result = async {
            fill(&c, &run, 0, SMALL, &mut ids).await?;
            let mut rows = Vec::new();
            let mut speed = Vec::new();
            for size in [SMALL, n.max(SMALL)] {
                if size > ids.len() {
                    let have = ids.len();
                    fill(&c, &run, have, size - have, &mut ids)
                        .await
                        .map_err(|e| {
                            format!(
                                "filling a namespace of {size} keys: {e} (the client's key \
                                 quota, [limits] max_keys_per_client, must allow it)"
                            )
                        })?;
                }
                // The key made last: a scan in id order would reach it last.
                let (i, id) = (ids.len() - 1, ids[ids.len() - 1]);
                let page = Page {
                    after: None,
                    limit: Some(10),
                };
                for (by, query) in [
                    (
                        "id",
                        KeyQuery {
                            label: None,
                            id: Some(id),
                            key_type: None,
                            page,
                        },
                    ),
                    (
                        "label",
                        KeyQuery {
                            label: Some(label(&run, i)?),
                            id: None,
                            key_type: None,
                            page,
                        },
                    ),
                ] {
                    let (done, h) = measure(&c, &query, id, secs).await?;
                    let ops = done as f64 / secs;
                    speed.push((by, size, ops));
                    rows.push(BenchResult {
                        transport: name.into(),
                        op: format!("find-{by}@{size}"),
                        inflight: 1,
                        clients: 1,
                        ops_per_sec: ops,
                        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
                        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
                        ratio: None,
                        cpu_us_client: None,
                        cpu_us_server: None,
                    });
                }
            }
            let targets = ["id", "label"]
                .into_iter()
                .filter_map(|by| {
                    let at = |size| {
                        speed
                            .iter()
                            .find(|(b, s, _)| *b == by && *s == size)
                            .map(|(_, _, v)| *v)
                    };
                    Some(Target {
                        name: format!("find by {by} at {n} keys / at {SMALL} keys"),
                        transport: name.into(),
                        inflight: 1,
                        ratio: at(n.max(SMALL))? / at(SMALL)?.max(f64::MIN_POSITIVE),
                        goal: GOAL,
                        at_most: false,
                    })
                })
                .collect();
            Ok::<_, String>((rows, targets))
        }
        .await;
        // Leave the server as we found it, whatever happened.
        let deletes = ids
            .iter()
            .map(|id| Request::Delete(KeyRef::Id(*id)))
            .collect();
        let emptied: Result<Vec<_>, String> = pipelined(&c, deletes).await.into_iter().collect();
        let out = result?;
        emptied.map_err(|e| format!("deleting the search keys: {e}"))?;
        Ok(out)
    })
}
