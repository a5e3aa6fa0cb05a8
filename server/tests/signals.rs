//! SIGTERM and SIGINT to the real `hsmd` with requests in flight: every request already read
//! is answered, a request read after the signal is refused `shutting_down`, hsmd exits 0, and
//! what it acknowledged survives.
//!
//! Requests are put in flight by pipelining keygens on several connections (each waits for a
//! store commit); the test records when each answer arrived (wall clock) and checks its own
//! premise against hsmd's own log: some were acknowledged after the instant hsmd logged that it
//! began to drain.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{KeyType, Request, Response, Status};
use ferrohsm_test_support::peer::{Tcp, request, server_queues};
use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::{Daemon, Data, spec, wait};

const WITHIN: Duration = Duration::from_secs(20);
const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 100;

/// hsmd with its shutdown messages in the log.
fn start(d: &Data) -> Daemon {
    d.start_env(&[("RUST_LOG", "info")])
}

/// What hsmd logs (at info) the moment it stops taking new work and begins to drain.
const DRAINING: &str = "shutting down: no new work; finishing requests in flight";

/// One answer: the keygen's label, whether it was acknowledged, and when it arrived (wall
/// clock, to compare with the timestamps in hsmd's log).
struct Answer {
    label: String,
    reply: Result<Response, ClientError>,
    at: SystemTime,
}

/// A timestamp in tracing's default format, UTC RFC 3339 with a fraction
/// (`2026-12-06T19:56:58.089720Z`), as a `SystemTime`.
fn parse_utc(t: &str) -> Option<SystemTime> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(str::parse::<u64>);
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[test]
fn log_timestamps_parse_to_the_instant_they_name() {
    let at = |secs, nanos| Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
    assert_eq!(
        parse_utc("2026-12-06T19:56:58.089720Z"),
        at(1_796_587_018, 89_720_000)
    );
    assert_eq!(parse_utc("2000-02-29T00:00:00Z"), at(951_782_400, 0));
    assert_eq!(parse_utc("1970-01-01T00:00:00.000000001Z"), at(0, 1));
    for bad in [
        "2026-12-06T19:56:58.089720",
        "2026-13-06T19:56:58Z",
        "19:56:58Z",
        "INFO",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
}

/// The instant hsmd logged that it began to drain (the timestamp of its [`DRAINING`] line).
fn drain_began(log: &str) -> SystemTime {
    let line = log
        .lines()
        .find(|l| l.contains(DRAINING))
        .unwrap_or_else(|| panic!("hsmd never logged {DRAINING:?}:\n{log}"));
    let stamp = line.split_whitespace().next().unwrap_or_default();
    parse_utc(stamp).unwrap_or_else(|| panic!("no RFC 3339 UTC timestamp on {line:?}"))
}

/// Connects, pipelines `PER_CONNECTION` keygens, and collects every answer as it arrives
/// (counting them in `answered`).
fn load(c: BlockingClient, conn: usize, answered: Arc<AtomicUsize>) -> Vec<Answer> {
    c.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..PER_CONNECTION {
            let label = format!("k{conn}-{i}");
            let p = c
                .client()
                .submit(Request::Generate(spec(KeyType::Ed25519, &label)))
                .await;
            let answered = answered.clone();
            set.spawn(async move {
                let reply = match p {
                    Ok(p) => p.wait().await,
                    Err(e) => Err(e),
                };
                answered.fetch_add(1, Ordering::SeqCst);
                Answer {
                    label,
                    reply,
                    at: SystemTime::now(),
                }
            });
        }
        let mut out = Vec::new();
        while let Some(a) = set.join_next().await {
            out.push(a.unwrap());
        }
        out
    })
}

/// Sends `sig` to hsmd while keygens are in flight on several connections.
fn stop_with_requests_in_flight(sig: &str) {
    let d = Data::init("alice");
    let mut daemon = start(&d);
    ok(&d.ctl(
        "alice",
        &["keygen", "--type", "ed25519", "--label", "before"],
    ));
    let clients: Vec<BlockingClient> = (0..CONNECTIONS).map(|_| d.connect("alice")).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(n, c)| {
            let answered = answered.clone();
            std::thread::spawn(move || load(c, n, answered))
        })
        .collect();
    wait::until("a first answer", WITHIN, || {
        answered.load(Ordering::SeqCst) > 0
    });
    daemon.signal(sig);
    let answers: Vec<Answer> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let status = daemon.wait_exit(WITHIN);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    let log = daemon.log();
    let drain = drain_began(&log);
    assert!(
        log.contains("key store: every acknowledged change is on disk"),
        "{log}"
    );

    // Every request was acknowledged, or refused `shutting_down` (read after hsmd began to
    // drain), or dropped: its connection closed before hsmd read it. Dropped is a legitimate
    // outcome: a draining hsmd answers only what it read, and a request still in the socket's
    // buffer when its session ends was never seen, so it is neither answered nor done (the
    // store check below shows no dropped or refused keygen was made); the client learns it
    // from the closed connection and may retry against the next hsmd.
    let mut acked: Vec<String> = vec!["before".into()];
    let (mut refused, mut dropped, mut late, mut early) = (0, 0, 0, 0);
    for a in &answers {
        match &a.reply {
            Ok(Response::Key(info)) => {
                assert_eq!(info.label.as_str(), a.label);
                acked.push(a.label.clone());
                if a.at > drain {
                    late += 1;
                } else {
                    early += 1;
                }
            }
            Err(e) if e.status() == Some(Status::ShuttingDown) => {
                // Refusals come only once hsmd drains: this also checks the log's clock
                // was read right.
                assert!(
                    a.at > drain,
                    "{}: refused shutting_down before hsmd logged that it drains",
                    a.label
                );
                refused += 1;
            }
            Err(ClientError::Connection(_) | ClientError::ConnectionLost(_)) => dropped += 1,
            Err(e) => panic!("{}: {e:?}", a.label),
            Ok(r) => panic!("{}: keygen answered {}", a.label, r.kind()),
        }
    }
    eprintln!(
        "{sig}: {} acknowledged, {late} of them after hsmd began to drain; {refused} refused \
         shutting_down; {dropped} dropped unread",
        acked.len() - 1
    );
    assert_eq!(
        (acked.len() - 1) + refused + dropped,
        CONNECTIONS * PER_CONNECTION,
        "every request has exactly one outcome"
    );
    // The first answer arrived before the signal was even sent, so before the drain.
    assert!(
        early > 0,
        "no answer before the logged drain: the clocks disagree"
    );
    // The premise: requests were in flight when hsmd began to drain, and it finished them.
    // (An answer written an instant before the log line and read just after it would count
    // too; the margin is the client's read latency, against a drain of many commits.)
    assert!(
        late > 0,
        "no keygen was acknowledged after hsmd began to drain on SIG{sig}: nothing was in \
         flight, the test proved nothing"
    );

    // Exactly the acknowledged keys are there after a restart, and one made in flight signs.
    let daemon = start(&d);
    let list = ok(&d.ctl("alice", &["list"]));
    let mut labels: Vec<String> = list
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_string())
        .collect();
    labels.sort();
    acked.sort();
    assert_eq!(labels, acked);
    let in_flight = answers
        .iter()
        .filter(|a| a.reply.is_ok() && a.at > drain)
        .map(|a| a.label.clone())
        .next()
        .unwrap();
    let m = d.path("m");
    std::fs::write(&m, b"signed after the restart").unwrap();
    let sig_file = d.path("sig");
    ok(&d.ctl(
        "alice",
        &[
            "sign",
            &in_flight,
            "--in",
            m.to_str().unwrap(),
            "--out",
            sig_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn sigterm_answers_the_request_in_flight_then_exits_0_and_keeps_it() {
    stop_with_requests_in_flight("TERM");
}

#[test]
fn sigint_answers_the_request_in_flight_then_exits_0_and_keeps_it() {
    stop_with_requests_in_flight("INT");
}

#[test]
fn a_request_sent_while_draining_answers_shutting_down() {
    let d = Data::init("alice");
    let mut daemon = start(&d);
    let idle = d.connect("alice");
    // A client that sends and never reads: once its answers fill the socket they stay in
    // flight, so hsmd's drain cannot end while it is connected. That makes the drain last
    // for as long as the test needs it, whatever the machine's speed.
    let p = d.load_profile("alice");
    let mut stuck = Tcp::connect(&p.tcp_addrs.as_ref().unwrap()[0]);
    stuck.login(&p.identity().unwrap());
    // 200 answers of 64 KiB: far more than the socket buffers and the window hold.
    let big = request(Request::Random { len: 65536 }, 7);
    for _ in 0..200 {
        assert!(stuck.send_bytes(&big), "send");
    }
    wait::until(
        "hsmd's answers to fill the stuck client's socket",
        WITHIN,
        || server_queues(&stuck.s).is_some_and(|(unsent, _)| unsent > 0),
    );
    daemon.signal("TERM");
    // Pings back to back until one is refused (those served went in before hsmd saw the
    // signal).
    let deadline = std::time::Instant::now() + WITHIN;
    let refused = loop {
        if let Err(e) = idle.call(Request::Ping) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ping was refused within {WITHIN:?} of SIGTERM"
        );
    };
    // The ping was refused by a session that was draining: that answer exists only there (a
    // session that had ended would close the connection instead).
    assert_eq!(
        refused.status(),
        Some(Status::ShuttingDown),
        "a request sent while hsmd drains: {refused:?}"
    );
    assert!(
        refused
            .to_string()
            .contains("hsmd is shutting down: it takes no new work"),
        "{refused}"
    );
    assert!(daemon.log().contains(DRAINING), "{}", daemon.log());
    // Still draining: the stuck answers are in flight. Once their client goes, they can never
    // be written, and hsmd ends its drain and exits 0.
    assert!(daemon.running(), "hsmd exited with answers in flight");
    drop(stuck);
    assert_eq!(daemon.wait_exit(WITHIN).code(), Some(0));
}
