//! Reading back the SVG charts `--plot` writes.

use super::*;

/// The `points` of an SVG `<polyline>` line, as (x, y).
fn points(line: &str) -> Vec<(f64, f64)> {
    let p = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    p.split_whitespace()
        .map(|xy| {
            let (x, y) = xy.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// The text of an SVG `<text>` line.
fn text_of(line: &str) -> &str {
    line.split('>').nth(1).unwrap().split('<').next().unwrap()
}

/// The run chart (`--plot`), checked against the README ("an SVG of throughput and p99 over
/// time") and the JSON report of the same run: two charts, operations per second and p99
/// latency, each with one line per transport over the run's seconds; the throughput line of
/// each transport, read back from its pixels, adds up to that transport's operation count.
pub(crate) fn assert_run_plot(svg: &str, r: &Value, out: &str) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"), "{svg}");
    let lines: Vec<&str> = svg.lines().collect();
    let titles: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("<text") && l.contains("(max "))
        .map(|l| text_of(l))
        .collect();
    assert_eq!(titles.len(), 2, "{svg}");
    assert!(
        titles[0].starts_with("operations per second (max "),
        "{svg}"
    );
    assert!(titles[1].starts_with("p99 latency (us) (max "), "{svg}");
    let max = |t: &str| -> f64 {
        t.rsplit("(max ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap()
    };
    // Each polyline is followed by its legend: the transport's name.
    let series: Vec<(&str, Vec<(f64, f64)>)> = lines
        .windows(2)
        .filter(|w| w[0].starts_with("<polyline"))
        .map(|w| (text_of(w[1]), points(w[0])))
        .collect();
    let transports: Vec<&str> = r["transports"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(!transports.is_empty(), "{out}");
    let n = transports.len();
    assert_eq!(
        series.len(),
        2 * n,
        "one line per transport in each chart: {svg}"
    );
    let seconds = f(&r["elapsed_s"]).ceil() as usize + 1;
    // Chart geometry (report.rs): 800 x 260 per chart, 50 px padding, the plot area 220 px
    // high starting 40 px (first chart) or 320 px (second) from the top.
    let (left, right, height) = (50.0, 750.0, 220.0);
    for (chart, top) in [(0, 40.0), (1, 320.0)] {
        let lines = &series[chart * n..(chart + 1) * n];
        let names: Vec<&str> = lines.iter().map(|(t, _)| *t).collect();
        assert_eq!(names, transports, "legends of chart {chart}: {svg}");
        let m = max(titles[chart]);
        let mut highest = f64::MAX;
        for (t, pts) in lines {
            assert!(
                !pts.is_empty() && pts.len() <= seconds,
                "{t}: {} points in a {seconds} s run: {svg}",
                pts.len()
            );
            assert_eq!(pts[0].0, left, "{t}: {svg}");
            assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "{t}: {svg}");
            for &(x, y) in pts {
                assert!((left..=right).contains(&x), "{t}: x {x}: {svg}");
                assert!((top..=top + height).contains(&y), "{t}: y {y}: {svg}");
                highest = highest.min(y);
            }
            if chart == 0 {
                // Operations per second, back from the pixels (rounded to 0.1 px).
                let sum: f64 = pts
                    .iter()
                    .map(|&(_, y)| m * (1.0 - (y - top) / height))
                    .sum();
                let want = u(&r["transports"][*t]["count"]) as f64;
                let slack = pts.len() as f64 * (m * 0.05 / height + 0.5);
                assert!(
                    (sum - want).abs() <= slack,
                    "{t}: the throughput line adds up to {sum:.1}, the report counts {want}: {svg}"
                );
            }
        }
        // The title's maximum is the highest point of the chart.
        assert_eq!(highest, top, "chart {chart} peaks at its top: {svg}");
    }
}

/// The value of attribute `name` in an SVG element's line.
fn attr<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(&format!(" {name}=\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .split('"')
        .next()
        .unwrap()
}

/// The bench chart (`--plot`), as small multiples: one bar per result row (its transport, op,
/// in-flight depth, clients and ops/s in `data-*` attributes), grouped in one panel per
/// operation, each panel on its own scale: a bar's height is its ops/s over the panel's
/// largest value (rows and the op's baseline) times the same plot height in every panel; the
/// transports sit side by side in a panel, one at a time before pipelined; one dashed baseline
/// line per operation that has one, at its height; no panel taller than the chart.
pub(crate) fn assert_bench_plot(svg: &str, r: &Value) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"), "{svg}");
    let rows = r["results"].as_array().unwrap();
    let baseline = r["baseline"].as_array().unwrap();
    let bars: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<rect class=\"bar\""))
        .collect();
    assert_eq!(bars.len(), rows.len(), "one bar per result: {svg}");
    let base_of = |op: &str| {
        baseline
            .iter()
            .find(|b| b["op"] == op)
            .map(|b| f(&b["ops_per_sec"]))
    };
    let max_of = |op: &str| {
        rows.iter()
            .filter(|x| x["op"] == op)
            .map(|x| f(&x["ops_per_sec"]))
            .chain(base_of(op))
            .fold(1.0, f64::max)
    };
    // The plot height of a panel: 180 px less 34 above and 30 below.
    let plot = 180.0 - 34.0 - 30.0;
    for x in rows {
        let (t, op) = (x["transport"].as_str().unwrap(), x["op"].as_str().unwrap());
        let (inflight, clients) = (x["inflight"].to_string(), x["clients"].to_string());
        let bar = bars
            .iter()
            .find(|b| {
                attr(b, "data-transport") == t
                    && attr(b, "data-op") == op
                    && attr(b, "data-inflight") == inflight
                    && attr(b, "data-clients") == clients
            })
            .unwrap_or_else(|| panic!("no bar for {x}: {svg}"));
        let ops: f64 = attr(bar, "data-ops").parse().unwrap();
        assert!((ops - f(&x["ops_per_sec"])).abs() <= 0.1, "{bar}");
        let height: f64 = attr(bar, "height").parse().unwrap();
        let expect = f(&x["ops_per_sec"]) / max_of(op) * plot;
        assert!(
            (height - expect).abs() <= 0.1,
            "{t} {op}: {height} px high, expected {expect:.2}: {bar}"
        );
    }
    // In each panel, transports side by side (all of one before the next), and within one,
    // one at a time before pipelined.
    let mut ops: Vec<&str> = bars.iter().map(|b| attr(b, "data-op")).collect();
    ops.dedup();
    for op in &ops {
        let mine: Vec<&&str> = bars.iter().filter(|b| attr(b, "data-op") == *op).collect();
        let xs: Vec<f64> = mine.iter().map(|b| attr(b, "x").parse().unwrap()).collect();
        assert!(
            xs.windows(2).all(|w| w[0] < w[1]),
            "{op}: bars left to right"
        );
        let mut seen: Vec<&str> = Vec::new();
        for b in &mine {
            let t = attr(b, "data-transport");
            if seen.last() != Some(&t) {
                assert!(!seen.contains(&t), "{op}: {t}'s bars are not together");
                seen.push(t);
            }
        }
    }
    let lines: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<line class=\"baseline\""))
        .collect();
    let with_baseline = ops.iter().filter(|op| base_of(op).is_some()).count();
    assert_eq!(
        lines.len(),
        with_baseline,
        "one baseline per op with one: {svg}"
    );
    for l in lines {
        let op = attr(l, "data-op");
        let b = base_of(op).unwrap();
        assert!(
            (attr(l, "data-ops").parse::<f64>().unwrap() - b).abs() <= 0.1,
            "{l}"
        );
    }
    // Small multiples stay small: the chart is as tall as its rows of three panels.
    let height: f64 = attr(svg.lines().next().unwrap(), "height").parse().unwrap();
    assert_eq!(height, 40.0 + 180.0 * ops.len().div_ceil(3) as f64, "{svg}");
}
