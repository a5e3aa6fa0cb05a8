//! Reports: a summary table, a JSON document and an SVG chart.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::bench::{BenchReport, BenchResult};
use crate::run::Outcome;

fn pct(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

/// The run summary as a table.
pub fn run_table(o: &Outcome) -> String {
    let mut s = format!(
        "{:<9} {:<9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>10}\n",
        "transport", "op", "count", "errors", "p50 us", "p90 us", "p99 us", "max us"
    );
    for ((t, op), h) in &o.stats.ops {
        let errors = o
            .stats
            .errors
            .get(&(t.clone(), op.clone()))
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "{t:<9} {op:<9} {:>9} {errors:>7} {:>9} {:>9} {:>9} {:>10}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    let _ = write!(
        s,
        "\n{} ops in {:.1} s ({:.0} ops/s); wrong results {}, isolation violations {}, unexpected errors {}, fault events {}, restarts {}",
        o.total_ops,
        o.elapsed.as_secs_f64(),
        o.total_ops as f64 / o.elapsed.as_secs_f64().max(1e-9),
        o.wrong_results,
        o.isolation_violations,
        o.unexpected_errors,
        o.fault_events,
        o.restarts
    );
    if let Some(f) = &o.flood {
        let q = |h: &hdrhistogram::Histogram<u64>, x| h.value_at_quantile(x) as f64 / 1000.0;
        let _ = write!(
            s,
            "\nflood: {} light-client signs (2 in flight) p50 {:.2} ms, p99 {:.2} ms alone ({} samples); \
             p50 {:.2} ms, p99 {:.2} ms while {} flooded ({} digests of {} KiB from {} sessions; {} samples)",
            f.light,
            q(&f.alone, 0.5),
            q(&f.alone, 0.99),
            f.alone.len(),
            q(&f.flooded, 0.5),
            q(&f.flooded, 0.99),
            f.flooder,
            f.flood_ops,
            crate::run::flood_bytes() / 1024,
            crate::run::flood_sessions(),
            f.flooded.len()
        );
    }
    s
}

/// The run summary as JSON.
pub fn run_json(o: &Outcome, server_peak_rss_kib: Option<u64>) -> Value {
    let mut per_transport = serde_json::Map::new();
    for (t, tl) in &o.stats.timeline {
        let mut all = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
        for h in tl {
            let _ = all.add(h);
        }
        per_transport.insert(t.clone(), pct(&all));
    }
    let ops: Vec<Value> = o
        .stats
        .ops
        .iter()
        .map(|((t, op), h)| {
            let mut v = pct(h);
            v["transport"] = json!(t);
            v["op"] = json!(op);
            v["errors"] = json!(
                o.stats
                    .errors
                    .get(&(t.clone(), op.clone()))
                    .copied()
                    .unwrap_or(0)
            );
            v
        })
        .collect();
    json!({
        "run_tag": o.run_tag,
        "total_ops": o.total_ops,
        "wrong_results": o.wrong_results,
        "isolation_violations": o.isolation_violations,
        "unexpected_errors": o.unexpected_errors,
        "fault_events": o.fault_events,
        "restarts": o.restarts,
        "elapsed_s": o.elapsed.as_secs_f64(),
        "ops_per_sec": o.total_ops as f64 / o.elapsed.as_secs_f64().max(1e-9),
        "transports": per_transport,
        "operations": ops,
        "problems": o.problems,
        "server_peak_rss_kib": server_peak_rss_kib,
        "flood": o.flood.as_ref().map(|f| json!({
            "flooder": f.flooder,
            "light": f.light,
            "light_alone_p50_us": f.alone.value_at_quantile(0.5),
            "light_alone_p99_us": f.alone.value_at_quantile(0.99),
            "light_alone_samples": f.alone.len(),
            "light_flooded_p50_us": f.flooded.value_at_quantile(0.5),
            "light_flooded_p99_us": f.flooded.value_at_quantile(0.99),
            "light_flooded_samples": f.flooded.len(),
            "flood_digests": f.flood_ops,
        })),
    })
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Throughput and p99 latency over time per transport, as two stacked line charts.
pub fn run_svg(o: &Outcome) -> String {
    let (w, h, pad) = (800.0, 260.0, 50.0);
    let secs = o
        .stats
        .timeline
        .values()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .max(2);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        2.0 * h + 40.0
    );
    for (row, (title, pick)) in [
        ("operations per second", 0usize),
        ("p99 latency (us)", 1usize),
    ]
    .into_iter()
    .enumerate()
    {
        let y0 = row as f64 * (h + 20.0) + 20.0;
        let series: Vec<(&String, Vec<f64>)> = o
            .stats
            .timeline
            .iter()
            .map(|(t, tl)| {
                (
                    t,
                    tl.iter()
                        .map(|hh| {
                            if pick == 0 {
                                hh.len() as f64
                            } else {
                                hh.value_at_quantile(0.99) as f64
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0, f64::max);
        let _ = writeln!(
            out,
            "<text x=\"{pad}\" y=\"{}\">{} (max {max:.0})</text>",
            y0 + 12.0,
            esc(title)
        );
        let _ = writeln!(
            out,
            "<rect x=\"{pad}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
            y0 + 20.0,
            w - 2.0 * pad,
            h - 40.0
        );
        for (i, (t, v)) in series.iter().enumerate() {
            let pts: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(x, y)| {
                    let px = pad + x as f64 / (secs - 1) as f64 * (w - 2.0 * pad);
                    let py = y0 + 20.0 + (h - 40.0) * (1.0 - y / max);
                    format!("{px:.1},{py:.1}")
                })
                .collect();
            let c = COLORS[i % COLORS.len()];
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
                w - pad + 4.0,
                y0 + 34.0 + 14.0 * i as f64,
                esc(t)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The bench results as a table.
pub fn bench_table(r: &BenchReport) -> String {
    let mut s = format!(
        "cpus {}, profile {}\n{:<12} {:<28} {:>8} {:>7} {:>11} {:>9} {:>9} {:>7} {:>8} {:>8}\n",
        r.cpus,
        r.profile,
        "transport",
        "op",
        "inflight",
        "clients",
        "ops/s",
        "p50 us",
        "p99 us",
        "ratio",
        "cpu cli",
        "cpu srv"
    );
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    for x in &r.results {
        let _ = writeln!(
            s,
            "{:<12} {:<28} {:>8} {:>7} {:>11.0} {:>9.1} {:>9.1} {:>7} {:>8} {:>8}",
            x.transport,
            x.op,
            x.inflight,
            x.clients,
            x.ops_per_sec,
            x.p50_us,
            x.p99_us,
            opt(x.ratio, 2),
            opt(x.cpu_us_client, 1),
            opt(x.cpu_us_server, 1)
        );
    }
    for b in &r.baseline {
        let _ = writeln!(
            s,
            "{:<12} {:<28} {:>8} {:>7} {:>11.0}",
            "in-proc", b.op, 1, 1, b.ops_per_sec
        );
    }
    for t in &r.targets {
        let _ = writeln!(
            s,
            "target {} over {} at {} in flight: {:.2} (goal {} {}): {}",
            t.name,
            t.transport,
            t.inflight,
            t.ratio,
            if t.at_most { "<=" } else { ">=" },
            t.goal,
            if t.met() { "met" } else { "MISSED" }
        );
    }
    for i in &r.idle {
        let _ = writeln!(
            s,
            "idle hsmd with {} idle {} sessions: {:.2}% of one core over {:.1} s",
            i.sessions, i.transport, i.cpu_percent, i.seconds
        );
    }
    for a in &r.audit {
        let _ = writeln!(
            s,
            "audit level all vs changes: {} over {} at {} in flight: {:.0} vs {:.0} ops/s ({:.2}x)",
            a.op,
            a.transport,
            a.inflight,
            a.all,
            a.changes,
            a.ratio()
        );
    }
    s
}

/// The bench results as JSON (`results`, `baseline`, `cpus`, `profile`).
pub fn bench_json(r: &BenchReport) -> Value {
    json!({
        "cpus": r.cpus,
        "profile": r.profile,
        "results": r.results.iter().map(|x| json!({
            "transport": x.transport, "op": x.op, "inflight": x.inflight, "clients": x.clients,
            "ops_per_sec": x.ops_per_sec, "p50_us": x.p50_us, "p99_us": x.p99_us, "ratio": x.ratio,
            "cpu_us_client": x.cpu_us_client, "cpu_us_server": x.cpu_us_server,
        })).collect::<Vec<_>>(),
        "baseline": r.baseline.iter().map(|b| json!({"op": b.op, "ops_per_sec": b.ops_per_sec})).collect::<Vec<_>>(),
        "targets": r.targets.iter().map(|t| json!({
            "name": t.name, "transport": t.transport, "inflight": t.inflight, "ratio": t.ratio,
            "goal": t.goal, "at_most": t.at_most, "met": t.met(),
        })).collect::<Vec<_>>(),
        "idle": r.idle.iter().map(|i| json!({
            "transport": i.transport, "sessions": i.sessions, "seconds": i.seconds,
            "cpu_percent": i.cpu_percent,
        })).collect::<Vec<_>>(),
        "audit": r.audit.iter().map(|a| json!({
            "op": a.op, "transport": a.transport, "inflight": a.inflight,
            "changes_ops_per_sec": a.changes, "all_ops_per_sec": a.all, "ratio": a.ratio(),
        })).collect::<Vec<_>>(),
    })
}

/// Panels a row of the bench chart holds.
const PANEL_COLUMNS: usize = 3;
/// One panel's size and inner margins, in pixels.
const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 180.0;
const PANEL_TOP: f64 = 34.0;
const PANEL_BOTTOM: f64 = 30.0;
const PANEL_SIDE: f64 = 10.0;

/// The bench chart, as small multiples: one panel per operation in report order, each with its
/// own scale (a 2k/s keygen and a 1M/s ping are both readable); in a panel, the transports side
/// by side, each a group of bars for its in-flight depths and client counts (one at a time
/// first, then pipelined; labelled under the bar), coloured by transport; the operation's
/// in-process baseline is a dashed line across the panel. Every bar carries its row in
/// `data-*` attributes and a tooltip.
pub fn bench_svg(r: &BenchReport) -> String {
    let mut ops: Vec<&str> = Vec::new();
    let mut transports: Vec<&str> = Vec::new();
    for x in &r.results {
        if !ops.contains(&x.op.as_str()) {
            ops.push(&x.op);
        }
        if !transports.contains(&x.transport.as_str()) {
            transports.push(&x.transport);
        }
    }
    let rows = ops.len().div_ceil(PANEL_COLUMNS).max(1);
    let (w, h) = (PANEL_W * PANEL_COLUMNS as f64, 40.0 + PANEL_H * rows as f64);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"10\">\n<text x=\"4\" y=\"14\">ops/s per operation, each panel on its own scale; bars: in flight (xN clients); dashed: in-process baseline; cpus {}, {} build</text>\n",
        r.cpus, r.profile
    );
    // The legend: one colour per transport.
    for (i, t) in transports.iter().enumerate() {
        let x = 4.0 + 110.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"22\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"31\">{}</text>",
            COLORS[i % COLORS.len()],
            x + 14.0,
            esc(t)
        );
    }
    for (p, op) in ops.iter().enumerate() {
        let (px, py) = (
            PANEL_W * (p % PANEL_COLUMNS) as f64,
            40.0 + PANEL_H * (p / PANEL_COLUMNS) as f64,
        );
        let mine: Vec<&BenchResult> = r.results.iter().filter(|x| x.op == *op).collect();
        let base = r.baseline.iter().find(|b| b.op == *op);
        let max = mine
            .iter()
            .map(|x| x.ops_per_sec)
            .chain(base.map(|b| b.ops_per_sec))
            .fold(1.0, f64::max);
        let (top, bottom) = (py + PANEL_TOP, py + PANEL_H - PANEL_BOTTOM);
        let y_of = |v: f64| bottom - v / max * (bottom - top);
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            px + PANEL_SIDE,
            py + 18.0,
            esc(op),
            px + PANEL_W - PANEL_SIDE,
            py + 18.0,
            si(max)
        );
        let _ = writeln!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"#888\"/>",
            px + PANEL_SIDE,
            px + PANEL_W - PANEL_SIDE
        );
        let bars = mine.len().max(1) as f64;
        let groups = transports
            .iter()
            .filter(|t| mine.iter().any(|x| x.transport == **t))
            .count()
            .max(1) as f64;
        // A gap of one bar between transport groups.
        let slot = (PANEL_W - 2.0 * PANEL_SIDE) / (bars + groups - 1.0 + 0.0001);
        let mut x = px + PANEL_SIDE;
        let mut first = true;
        for (ti, t) in transports.iter().enumerate() {
            let mut group: Vec<&&BenchResult> = mine.iter().filter(|b| b.transport == *t).collect();
            if group.is_empty() {
                continue;
            }
            if !first {
                x += slot;
            }
            first = false;
            group.sort_by_key(|b| (b.clients, b.inflight));
            for b in group {
                let y = y_of(b.ops_per_sec);
                let label = if b.clients > 1 {
                    format!("{}x{}", b.inflight, b.clients)
                } else {
                    b.inflight.to_string()
                };
                let _ = writeln!(
                    out,
                    "<rect class=\"bar\" data-transport=\"{}\" data-op=\"{}\" data-inflight=\"{}\" data-clients=\"{}\" data-ops=\"{:.1}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {} x{} c{}: {:.0}/s</title></rect>",
                    esc(&b.transport),
                    esc(&b.op),
                    b.inflight,
                    b.clients,
                    b.ops_per_sec,
                    x + 1.0,
                    (slot - 2.0).max(1.0),
                    bottom - y,
                    COLORS[ti % COLORS.len()],
                    esc(&b.transport),
                    esc(&b.op),
                    b.inflight,
                    b.clients,
                    b.ops_per_sec
                );
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"8\">{label}</text>",
                    x + slot / 2.0,
                    bottom + 10.0
                );
                x += slot;
            }
        }
        if let Some(b) = base {
            let y = y_of(b.ops_per_sec);
            let _ = writeln!(
                out,
                "<line class=\"baseline\" data-op=\"{}\" data-ops=\"{:.1}\" x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
                esc(op),
                b.ops_per_sec,
                px + PANEL_SIDE,
                px + PANEL_W - PANEL_SIDE
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// A throughput with an SI suffix: 950, 12.3k, 1.12M.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}
