//! `[metrics] listen`: `GET /metrics` read by Prometheus' own parser (prometheus_client from
//! PyPI), `GET /health` and everything else asked with curl, against a real hsmd. The endpoint
//! is bounded (connections, head size, time) and none of that reaches the HSM's listeners; it
//! answers `draining` while requests in flight finish, and names an unreachable PostgreSQL.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrohsm_proto::{KeyRef, KeyType};
use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::wait::until;
use ferrohsm_test_support::{Data, ci, python};

/// The address after `NAME ` in hsmd's readiness line (`tcp 127.0.0.1:1, ..., metrics http://A`).
fn bound(ready: &str, name: &str) -> SocketAddr {
    let after = ready
        .split(&format!("{name} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {ready:?}"));
    let addr = after.split([',', ';', ' ']).next().unwrap();
    addr.trim_start_matches("http://").parse().unwrap()
}

/// A data directory whose hsmd serves metrics on a free port.
fn with_metrics(clients: &str) -> Data {
    let d = Data::init(clients);
    d.set("metrics", "listen", "\"127.0.0.1:0\"");
    d
}

/// What curl got: status code, headers (lower-cased names), body.
#[derive(Debug)]
struct Reply {
    code: u16,
    headers: String,
    body: String,
}

/// `curl ARGS http://ADDR PATH`, bounded.
fn curl(tmp: &Path, addr: SocketAddr, path: &str, args: &[&str]) -> Reply {
    let (head, body) = (tmp.join("curl.head"), tmp.join("curl.body"));
    // Nothing from an earlier request may pass for this one's.
    let _ = (std::fs::remove_file(&head), std::fs::remove_file(&body));
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Reply {
        code,
        headers: std::fs::read_to_string(&head)
            .unwrap_or_default()
            .to_lowercase(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
    }
}

fn have_curl() -> bool {
    ci::tool("curl", "curl")
}

/// Parses an exposition with prometheus_client: each family's type, and every sample as
/// `name{k="v",...}` (labels sorted) -> value.
fn parse(py: &Path, text: &str, tmp: &Path) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let file = tmp.join("scrape.txt");
    std::fs::write(&file, text).unwrap();
    let out = python::run(
        py,
        "import json, sys\n\
         from prometheus_client.parser import text_string_to_metric_families\n\
         fams, samples = {}, {}\n\
         for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
         \x20   fams[f.name] = f.type\n\
         \x20   for s in f.samples:\n\
         \x20       labels = ','.join('%s=\"%s\"' % kv for kv in sorted(s.labels.items()))\n\
         \x20       samples[s.name + '{' + labels + '}'] = s.value\n\
         print(json.dumps([fams, samples]))\n",
        &[file.to_str().unwrap()],
        tmp,
    );
    let (fams, samples): (BTreeMap<String, String>, BTreeMap<String, f64>) =
        serde_json::from_str(out.trim()).unwrap();
    (fams, samples)
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", samples.keys()))
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_happened_without_naming_anyone() {
    if !have_curl() {
        return;
    }
    let Some(py) = python::peers() else { return };
    let d = with_metrics("alice");
    let hsmd = d.start();
    let ready = hsmd.ready_line().to_string();
    let addr = bound(&ready, "metrics");

    let health = curl(d.tmp(), addr, "/health", &[]);
    assert_eq!(
        (health.code, health.body.as_str()),
        (200, "ok"),
        "{health:?}"
    );

    // Work over two transports: keys made and used, a request refused, a TLS handshake that
    // fails, a login that fails.
    let alice = d.connect("alice");
    let label = "quarterly-signing-key";
    let k = alice
        .generate(&label.parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let key = KeyRef::Id(k.id);
    alice.sign(&key, b"m").unwrap();
    assert!(
        alice
            .sign(&"no-such-key-here".parse().unwrap(), b"m")
            .is_err()
    );
    ok(&d.ctl_over("alice", "shm", &["ping"], d.tmp()));
    ok(&d.ctl_over(
        "alice",
        "tcp",
        &["sign", label, "--in", "/dev/null", "--out", "sig"],
        d.tmp(),
    ));
    let mut junk = TcpStream::connect(bound(&ready, "tls")).unwrap();
    junk.write_all(b"this is not a TLS client hello\r\n\r\n")
        .unwrap();
    let _ = junk.read(&mut [0u8; 64]);
    drop(junk);
    // The refused sign's audit entry is committed within 200 ms.
    std::thread::sleep(Duration::from_millis(500));

    let reply = curl(d.tmp(), addr, "/metrics", &[]);
    assert_eq!(reply.code, 200, "{reply:?}");
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        reply.headers
    );
    let (fams, s) = parse(py, &reply.body, d.tmp());
    // Every family the issue names, with its type (the parser drops a counter's `_total`).
    for (name, kind) in [
        ("ferrohsm_requests", "counter"),
        ("ferrohsm_request_duration_seconds", "histogram"),
        ("ferrohsm_sessions_open", "gauge"),
        ("ferrohsm_handshake_failures", "counter"),
        ("ferrohsm_store_commit_duration_seconds", "histogram"),
        ("ferrohsm_store_batch_size", "histogram"),
        ("ferrohsm_pool_queue_depth", "gauge"),
        ("ferrohsm_memory_budget_bytes", "gauge"),
        ("ferrohsm_keys_stored", "gauge"),
        ("ferrohsm_audit_entries_stored", "gauge"),
        ("ferrohsm_build_info", "gauge"),
    ] {
        assert_eq!(
            fams.get(name).map(String::as_str),
            Some(kind),
            "{name}: {fams:?}"
        );
    }
    let tcp = "transport=\"tcp\"";
    assert_eq!(
        sample(
            &s,
            &format!("ferrohsm_requests_total{{op=\"sign\",status=\"ok\",{tcp}}}")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &s,
            &format!("ferrohsm_requests_total{{op=\"sign\",status=\"key_not_found\",{tcp}}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            &format!("ferrohsm_requests_total{{op=\"keygen\",status=\"ok\",{tcp}}}")
        ),
        1.0
    );
    assert!(
        sample(
            &s,
            "ferrohsm_requests_total{op=\"ping\",status=\"ok\",transport=\"shm\"}"
        ) >= 1.0
    );
    // The shm login runs on its set-up socket (hello, proof), before the rings, where the
    // client says hello again (welcomed at once): counted all the same.
    for (op, n) in [("hello", 2.0), ("login", 1.0)] {
        let key = format!("ferrohsm_requests_total{{op=\"{op}\",status=\"ok\",transport=\"shm\"}}");
        assert_eq!(sample(&s, &key), n, "{key}");
    }
    assert_eq!(
        sample(&s, "ferrohsm_request_duration_seconds_count{op=\"sign\"}"),
        3.0
    );
    assert_eq!(
        sample(
            &s,
            "ferrohsm_request_duration_seconds_bucket{le=\"+Inf\",op=\"sign\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &s,
            "ferrohsm_handshake_failures_total{reason=\"tls\",transport=\"tls\"}"
        ),
        1.0
    );
    // The blocking client is still connected over TCP.
    assert!(sample(&s, &format!("ferrohsm_sessions_open{{{tcp}}}")) >= 1.0);
    assert_eq!(sample(&s, "ferrohsm_keys_stored{}"), 1.0);
    // The audit chain: the key's creation and the refused sign (committed within 200 ms of
    // it, before the scrape).
    let chain: i64 = d
        .sql()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(chain >= 2, "{chain}");
    assert_eq!(sample(&s, "ferrohsm_audit_entries_stored{}"), chain as f64);
    // The counts stand for 15 s, however often a scraper asks: a key made now is not in the
    // next scrape's.
    alice
        .generate(&"another".parse().unwrap(), KeyType::Ed25519)
        .unwrap();
    let (_, again) = parse(py, &curl(d.tmp(), addr, "/metrics", &[]).body, d.tmp());
    assert_eq!(sample(&again, "ferrohsm_keys_stored{}"), 1.0);
    assert!(sample(&s, "ferrohsm_store_commit_duration_seconds_count{}") >= 1.0);
    assert!(sample(&s, "ferrohsm_store_batch_size_count{}") >= 1.0);
    assert_eq!(sample(&s, "ferrohsm_pool_queue_depth{}"), 0.0);
    assert_eq!(
        sample(
            &s,
            &format!(
                "ferrohsm_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    // No client name, key label or key id in any label (bucket bounds aside), nor anywhere
    // else in the exposition.
    let id = k.id.to_string();
    for key in s.keys() {
        let labels = key.split_once('{').unwrap().1.trim_end_matches('}');
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            assert!(
                name == "le" || (value != id && !value.contains("alice") && !value.contains(label)),
                "{key}"
            );
        }
    }
    for name in ["alice", label, "no-such-key-here"] {
        assert!(!reply.body.contains(name), "{name} in:\n{}", reply.body);
    }

    // Only a GET of the two paths.
    let post = curl(d.tmp(), addr, "/metrics", &["-X", "POST", "--data", "x"]);
    assert_eq!(post.code, 405, "{post:?}");
    assert!(post.headers.contains("allow: get"), "{}", post.headers);
    assert_eq!(curl(d.tmp(), addr, "/health", &["--head"]).code, 405);
    assert_eq!(curl(d.tmp(), addr, "/", &[]).code, 404);
    assert_eq!(curl(d.tmp(), addr, "/metrics/x", &[]).code, 404);
    assert_eq!(curl(d.tmp(), addr, "/healthz", &[]).code, 404);
}

/// Opens a connection to `addr` and waits for it to be closed by the other end: how long
/// that took and whatever arrived first (nothing, for a connection closed unanswered).
fn closed_within(s: &mut TcpStream, within: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (started.elapsed(), got);
            }
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
}

/// A connection to `to` from the loopback address `from` (every 127.0.0.0/8 address is this
/// host's).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddr::from((from, 0))).unwrap();
    connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// A connection from `from` that sends half a request head and no more.
fn slow_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, to);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    s
}

#[test]
fn slow_full_and_oversized_http_requests_are_cut_off_and_the_hsm_never_notices() {
    if !have_curl() {
        return;
    }
    let d = with_metrics("alice");
    let hsmd = d.start();
    let addr = bound(hsmd.ready_line(), "metrics");

    // A head larger than 8 KiB: refused by hyper (431), nothing served.
    let big = format!("X-Filler: {}", "a".repeat(20_000));
    let r = curl(d.tmp(), addr, "/health", &["-H", &big]);
    assert_eq!(r.code, 431, "{r:?}");

    // Connections that never finish their request: four from one address take all of that
    // address's places, and the fifth from it is closed at once, unanswered.
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..4).map(|_| slow_from([127, 0, 0, 1], addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect_from([127, 0, 0, 1], addr);
    let (took, got) = closed_within(&mut extra, Duration::from_secs(3));
    assert!(
        got.is_empty() && took < Duration::from_secs(2),
        "{took:?} {got:?}"
    );
    // Twelve more from three other addresses take every place left: a seventeenth, from yet
    // another address, is closed at once too.
    for ip in 2..=4 {
        slow.extend((0..4).map(|_| slow_from([127, 0, 0, ip], addr)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect_from([127, 0, 0, 5], addr);
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (took, got) = closed_within(&mut extra, Duration::from_secs(3));
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Meanwhile the HSM serves, over TCP and shared memory.
    ok(&d.ctl_over("alice", "tcp", &["ping"], d.tmp()));
    ok(&d.ctl_over("alice", "shm", &["ping"], d.tmp()));
    // The slow ones are cut off at the head timeout (5 s; a connection's own limit is 10 s),
    // answered with nothing.
    for s in &mut slow {
        let (_, got) = closed_within(s, Duration::from_secs(15));
        assert!(!String::from_utf8_lossy(&got).contains("ok"));
    }
    let took = opened.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Their places are free again.
    until("health answers again", Duration::from_secs(5), || {
        curl(d.tmp(), addr, "/health", &[]).code == 200
    });
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_one_line_and_exit_1() {
    let d = Data::init("alice");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    d.set("metrics", "listen", &format!("\"{addr}\""));
    let line = d.refuses(&["--config", &d.config()], &[]);
    assert!(
        line.contains(&addr.to_string()) && line.contains("[metrics] listen"),
        "{line}"
    );
    // Nothing else was left bound or created.
    assert!(!d.dir.join("hsmd.sock").exists());
    d.set("metrics", "listen", "\"localhost:http\"");
    let line = d.refuses(&["--config", &d.config()], &[]);
    assert!(
        line.contains("metrics.listen") && line.contains("localhost:http"),
        "{line}"
    );
}

#[test]
fn without_a_metrics_section_nothing_listens_and_init_writes_it_commented() {
    let d = Data::init("alice");
    let config = std::fs::read_to_string(d.config()).unwrap();
    assert!(
        config.contains("# [metrics]") && config.contains("# listen = \"127.0.0.1:9301\""),
        "{config}"
    );
    let hsmd = d.start();
    assert!(
        !hsmd.ready_line().contains("metrics"),
        "{}",
        hsmd.ready_line()
    );
}

#[path = "metrics/draining.rs"]
mod draining;
