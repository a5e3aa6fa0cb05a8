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

/// The bench chart (`--plot`): one bar per result row, labelled `TRANSPORT OP xINFLIGHT
/// cCLIENTS`, its length proportional to the row's ops/s, and a black tick at the in-process
/// baseline of its op.
pub(crate) fn assert_bench_plot(svg: &str, r: &Value) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"), "{svg}");
    let rows = r["results"].as_array().unwrap();
    let baseline = r["baseline"].as_array().unwrap();
    let lines: Vec<&str> = svg.lines().collect();
    let bars: Vec<(&str, f64)> = lines
        .windows(2)
        .filter(|w| w[0].starts_with("<text x=\"4\"") && w[1].starts_with("<rect"))
        .map(|w| {
            let width = w[1]
                .split("width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (text_of(w[0]), width.parse().unwrap())
        })
        .collect();
    assert_eq!(bars.len(), rows.len(), "one bar per result: {svg}");
    let max = rows
        .iter()
        .map(|x| f(&x["ops_per_sec"]))
        .chain(baseline.iter().map(|b| f(&b["ops_per_sec"])))
        .fold(1.0, f64::max);
    for ((label, width), x) in bars.iter().zip(rows) {
        let want = format!(
            "{} {} x{} c{}",
            x["transport"].as_str().unwrap(),
            x["op"].as_str().unwrap(),
            x["inflight"],
            x["clients"]
        );
        assert_eq!(*label, want, "{svg}");
        let expect = f(&x["ops_per_sec"]) / max * (900.0 - 260.0 - 80.0);
        assert!(
            (width - expect).abs() <= 0.1,
            "{want}: {width} px, expected {expect:.2}"
        );
    }
    let with_baseline = rows
        .iter()
        .filter(|x| baseline.iter().any(|b| b["op"] == x["op"]))
        .count();
    let ticks = lines
        .iter()
        .filter(|l| l.starts_with("<line") && l.contains("stroke=\"black\""))
        .count();
    assert_eq!(
        ticks, with_baseline,
        "a baseline tick per row with one: {svg}"
    );
}
