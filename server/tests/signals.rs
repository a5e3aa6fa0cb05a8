//! SIGTERM and SIGINT to the real `hsmd` with requests in flight: every request already read
//! is answered, a request read after the signal is refused `shutting_down`, hsmd exits 0, and
//! what it acknowledged survives.
//!
//! Requests are put in flight by pipelining keygens on several connections (each waits for a
//! store commit); the test records when each answer arrived and checks its own premise: some
//! were answered after the signal was sent.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{KeyType, Request, Response, Status};
use ferrohsm_test_support::status::{assert_exit, ok};
use ferrohsm_test_support::{Daemon, Data, spec, wait};

const WITHIN: Duration = Duration::from_secs(20);
const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 100;

/// hsmd with its shutdown messages in the log.
fn start(d: &Data) -> Daemon {
    d.start_env(&[("RUST_LOG", "info")])
}

/// One answer: the keygen's label, whether it was acknowledged, and when it arrived.
struct Answer {
    label: String,
    reply: Result<Response, ClientError>,
    at: Instant,
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
                    at: Instant::now(),
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
    let signalled = Instant::now();
    daemon.signal(sig);
    let answers: Vec<Answer> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let status = daemon.wait_exit(WITHIN);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("shutting down: no new work"), "{log}");
    assert!(
        log.contains("key store: every acknowledged change is on disk"),
        "{log}"
    );

    // Every request was acknowledged, or refused `shutting_down` (read after the signal), or
    // (still unread when hsmd stopped) its connection closed: no other answer.
    let mut acked: Vec<String> = vec!["before".into()];
    let (mut refused, mut dropped, mut late) = (0, 0, 0);
    for a in &answers {
        match &a.reply {
            Ok(Response::Key(info)) => {
                assert_eq!(info.label.as_str(), a.label);
                acked.push(a.label.clone());
                if a.at > signalled {
                    late += 1;
                }
            }
            Err(e) if e.status() == Some(Status::ShuttingDown) => refused += 1,
            Err(ClientError::Connection(_)) => dropped += 1,
            Err(e) => panic!("{}: {e:?}", a.label),
            Ok(r) => panic!("{}: keygen answered {}", a.label, r.kind()),
        }
    }
    eprintln!(
        "{sig}: {} acknowledged, {late} of them after the signal; {refused} refused \
         shutting_down; {dropped} never read",
        acked.len() - 1
    );
    // The premise: requests were in flight when the signal was sent.
    assert!(
        late > 0,
        "no keygen was answered after SIG{sig}: nothing was in flight, the test proved nothing"
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
        .filter(|a| a.reply.is_ok() && a.at > signalled)
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
    let answered = Arc::new(AtomicUsize::new(0));
    let loads: Vec<_> = (0..CONNECTIONS)
        .map(|conn| {
            let (busy, a) = (d.connect("alice"), answered.clone());
            std::thread::spawn(move || load(busy, conn, a))
        })
        .collect();
    wait::until("a first answer", WITHIN, || {
        answered.load(Ordering::SeqCst) > 0
    });
    daemon.signal("TERM");
    // Pings until one is refused: those served went in before hsmd saw the signal.
    let (refused, at) = wait::eventually("a ping to be refused", WITHIN, || {
        idle.call(Request::Ping).err().map(|e| (e, Instant::now()))
    });
    let answers: Vec<Answer> = loads.into_iter().flat_map(|l| l.join().unwrap()).collect();
    // The premise: hsmd was still draining (answering the load) when it refused the ping.
    assert!(
        answers.iter().any(|a| a.reply.is_ok() && a.at > at),
        "the load was answered before the ping was refused: nothing was draining"
    );
    assert_eq!(
        refused.status(),
        Some(Status::ShuttingDown),
        "a request sent while hsmd drains: {refused:?}"
    );
    assert_eq!(daemon.wait_exit(WITHIN).code(), Some(0));
    // No new connection is taken after the drain either.
    assert_exit(&d.ctl("alice", &["ping"]), 3);
}
