//! `hsm-stress run --procs N`: the clients run as N child processes (the multi-process
//! shared-memory deployment is the main one-host use), each a `run` of its share of the clients
//! that writes its whole outcome, histograms included, as JSON; the parent merges them into one
//! outcome, exactly as if the threads had run in one process.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::Outcome;
use super::shared::{Stats, hist};

fn dump_hist(h: &Histogram<u64>) -> Value {
    json!(
        h.iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect::<Vec<_>>()
    )
}

fn load_hist(v: &Value) -> Result<Histogram<u64>, String> {
    let mut h = hist();
    for pair in v.as_array().ok_or("histogram: expected an array")? {
        let (value, count) = (
            pair[0].as_u64().ok_or("histogram: bad value")?,
            pair[1].as_u64().ok_or("histogram: bad count")?,
        );
        h.record_n(value, count).map_err(|e| e.to_string())?;
    }
    Ok(h)
}

/// A child's whole outcome, for the parent to merge.
pub fn dump(o: &Outcome) -> Value {
    let key = |(t, op): &(String, String)| format!("{t}\t{op}");
    json!({
        "run_tag": o.run_tag,
        "total_ops": o.total_ops,
        "wrong_results": o.wrong_results,
        "isolation_violations": o.isolation_violations,
        "unexpected_errors": o.unexpected_errors,
        "problems": o.problems,
        "fault_events": o.fault_events,
        "restarts": o.restarts,
        "elapsed_s": o.elapsed.as_secs_f64(),
        "ops": o.stats.ops.iter().map(|(k, h)| (key(k), dump_hist(h))).collect::<serde_json::Map<_, _>>(),
        "errors": o.stats.errors.iter().map(|(k, n)| (key(k), json!(n))).collect::<serde_json::Map<_, _>>(),
        "timeline": o.stats.timeline.iter()
            .map(|(t, tl)| (t.clone(), json!(tl.iter().map(dump_hist).collect::<Vec<_>>())))
            .collect::<serde_json::Map<_, _>>(),
    })
}

fn split_key(k: &str) -> (String, String) {
    let (t, op) = k.split_once('\t').unwrap_or((k, ""));
    (t.to_string(), op.to_string())
}

/// Reads back what [`dump`] wrote.
pub fn load(v: &Value) -> Result<Outcome, String> {
    let n = |f: &str| v[f].as_u64().ok_or(format!("child outcome: no {f}"));
    let obj = |f: &str| v[f].as_object().ok_or(format!("child outcome: no {f}"));
    let mut stats = Stats::default();
    for (k, h) in obj("ops")? {
        stats.ops.insert(split_key(k), load_hist(h)?);
    }
    for (k, c) in obj("errors")? {
        stats
            .errors
            .insert(split_key(k), c.as_u64().ok_or("child outcome: bad count")?);
    }
    for (t, tl) in obj("timeline")? {
        let tl = tl.as_array().ok_or("child outcome: bad timeline")?;
        stats.timeline.insert(
            t.clone(),
            tl.iter().map(load_hist).collect::<Result<_, _>>()?,
        );
    }
    Ok(Outcome {
        run_tag: v["run_tag"]
            .as_str()
            .ok_or("child outcome: no run_tag")?
            .to_string(),
        total_ops: n("total_ops")?,
        wrong_results: n("wrong_results")?,
        isolation_violations: n("isolation_violations")?,
        unexpected_errors: n("unexpected_errors")?,
        problems: v["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        fault_events: n("fault_events")?,
        restarts: n("restarts")?,
        elapsed: Duration::from_secs_f64(v["elapsed_s"].as_f64().unwrap_or(0.0)),
        stats,
        // The flood fault runs in one process only (refused with --procs).
        flood: None,
    })
}

/// One outcome from the children's: counts add up, histograms merge, the run took as long as
/// its longest child.
pub fn merge(children: Vec<Outcome>) -> Outcome {
    let mut all = Outcome::default();
    for c in children {
        // One tag for the whole run: the parent gave each child the same.
        all.run_tag = c.run_tag;
        all.total_ops += c.total_ops;
        all.wrong_results += c.wrong_results;
        all.isolation_violations += c.isolation_violations;
        all.unexpected_errors += c.unexpected_errors;
        all.fault_events += c.fault_events;
        all.restarts += c.restarts;
        all.elapsed = all.elapsed.max(c.elapsed);
        all.problems.extend(c.problems);
        all.stats.merge(c.stats);
    }
    all.problems.truncate(20);
    all
}

/// How `clients` split over `procs` processes: (first client index, clients) per process.
pub fn shares(clients: usize, procs: usize) -> Vec<(usize, usize)> {
    let procs = procs.clamp(1, clients.max(1));
    let (base, extra) = (clients / procs, clients % procs);
    let mut first = 0;
    (0..procs)
        .map(|k| {
            let n = base + usize::from(k < extra);
            let share = (first, n);
            first += n;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_client_once() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(2, 4), vec![(0, 1), (1, 1)]);
        assert_eq!(shares(5, 1), vec![(0, 5)]);
    }

    #[test]
    fn outcomes_survive_the_round_trip_and_merge() {
        let mut a = Outcome {
            total_ops: 10,
            wrong_results: 1,
            unexpected_errors: 2,
            problems: vec!["x".into()],
            elapsed: Duration::from_millis(1500),
            ..Outcome::default()
        };
        let mut h = hist();
        h.record_n(120, 7).unwrap();
        h.record(9000).unwrap();
        a.stats.ops.insert(("tcp".into(), "sign".into()), h.clone());
        a.stats.errors.insert(("tcp".into(), "sign".into()), 3);
        a.stats
            .timeline
            .insert("tcp".into(), vec![h.clone(), hist()]);
        let back = load(&dump(&a)).unwrap();
        assert_eq!(back.total_ops, 10);
        assert_eq!(back.problems, ["x"]);
        let hb = &back.stats.ops[&("tcp".to_string(), "sign".to_string())];
        assert_eq!(hb.len(), 8);
        assert_eq!(hb.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(hb.max(), h.max());
        let b = load(&dump(&a)).unwrap();
        let m = merge(vec![back, b]);
        assert_eq!(
            (m.total_ops, m.wrong_results, m.unexpected_errors),
            (20, 2, 4)
        );
        assert_eq!(
            m.stats.ops[&("tcp".to_string(), "sign".to_string())].len(),
            16
        );
        assert_eq!(m.stats.errors[&("tcp".to_string(), "sign".to_string())], 6);
        assert_eq!(m.stats.timeline["tcp"].len(), 2);
        assert_eq!(m.elapsed, Duration::from_millis(1500));
        // Damaged input is an error, not a panic.
        assert_eq!(
            load(&json!({"total_ops": 1})).err().as_deref(),
            Some("child outcome: no ops")
        );
        let mut no_restarts = dump(&a);
        no_restarts.as_object_mut().unwrap().remove("restarts");
        assert_eq!(
            load(&no_restarts).err().as_deref(),
            Some("child outcome: no restarts")
        );
    }
}
