//! `/health` when the node should not get traffic: draining after SIGTERM (the session
//! listeners are closed, requests in flight are finishing, the endpoint still answers), and a
//! PostgreSQL store that stopped answering.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use ferrohsm_proto::Request;
use ferrohsm_test_support::postgres::Cluster;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// A socket's read half that stops reading when told: the server's answers back up.
struct Stalled {
    inner: tokio::net::tcp::OwnedReadHalf,
    stalled: Arc<AtomicBool>,
}

impl AsyncRead for Stalled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stalled.load(Ordering::Acquire) {
            // Never woken: this reader is done for good.
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[test]
fn health_says_draining_while_requests_in_flight_finish_and_the_endpoint_closes_last() {
    if !have_curl() {
        return;
    }
    let d = with_metrics("alice");
    let mut hsmd = d.start();
    let ready = hsmd.ready_line().to_string();
    let (addr, tcp) = (bound(&ready, "metrics"), bound(&ready, "tcp"));
    let k = d
        .connect("alice")
        .generate(&"bulk".parse().unwrap(), KeyType::Aes256Gcm)
        .unwrap();
    let id = d.load_profile("alice").identity().unwrap();
    // A client that asks for 31 MB of ciphertext and reads none of it: its receive buffer is
    // a few KiB and hsmd's send buffer at most 4 MiB, so most answers stay in flight. Its
    // own thread drives it until told to go.
    let (go, gone) = tokio::sync::oneshot::channel::<()>();
    let (ask, asked) = tokio::sync::oneshot::channel::<()>();
    let key = KeyRef::Id(k.id);
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(tcp).await.unwrap();
            rustix::net::sockopt::set_socket_recv_buffer_size(&s, 4096).unwrap();
            let (rd, wr) = s.into_split();
            let stalled = Arc::new(AtomicBool::new(false));
            let rd = Stalled {
                inner: rd,
                stalled: stalled.clone(),
            };
            let c = ferrohsm_client::Client::handshake(rd, wr, &id)
                .await
                .unwrap();
            stalled.store(true, Ordering::Release);
            let mut pending = Vec::new();
            // One place of the window of 32 is left for a request sent while hsmd drains.
            for _ in 0..31 {
                let req = Request::Encrypt {
                    key: key.clone(),
                    plaintext: vec![7u8; 1_000_000],
                    aad: Vec::new(),
                };
                pending.push(c.submit(req).await.unwrap());
            }
            let _ = asked.await;
            pending.push(c.submit(Request::Ping).await.unwrap());
            let _ = gone.await;
            drop((c, pending));
        });
    });
    assert_eq!(curl(d.tmp(), addr, "/health", &[]).body, "ok");
    // Every request read and answered; most answers wait for a socket nobody reads.
    let encrypted = "ferrohsm_requests_total{op=\"encrypt\",transport=\"tcp\",status=\"ok\"} 31\n";
    until(
        "hsmd answered the 31 requests",
        Duration::from_secs(30),
        || {
            curl(d.tmp(), addr, "/metrics", &[])
                .body
                .contains(encrypted)
        },
    );

    hsmd.signal("TERM");
    let mut last = None;
    until("health says draining", Duration::from_secs(10), || {
        let r = curl(d.tmp(), addr, "/health", &[]);
        let draining = r.code == 503 && r.body == "draining";
        last = Some(r);
        draining
    });
    assert_eq!(last.unwrap().code, 503);
    // The HSM's own listener is closed already; the metrics endpoint still answers.
    assert!(
        TcpStream::connect(tcp).is_err(),
        "the TCP listener still accepts"
    );
    // A request that arrives now is refused, and counted.
    let _ = ask.send(());
    let refused =
        "ferrohsm_requests_total{op=\"ping\",transport=\"tcp\",status=\"shutting_down\"} 1\n";
    until("the refusal is counted", Duration::from_secs(10), || {
        let r = curl(d.tmp(), addr, "/metrics", &[]);
        r.code == 200 && r.body.contains(refused)
    });
    assert!(hsmd.running(), "hsmd stopped with requests in flight");

    // The client goes: its answers can no longer be written, the drain ends, hsmd exits and
    // the endpoint goes with it.
    let _ = go.send(());
    client.join().unwrap();
    assert!(hsmd.wait_exit(Duration::from_secs(20)).success());
    assert!(
        TcpStream::connect(addr).is_err(),
        "the metrics endpoint outlived hsmd"
    );
}

/// Where hsmd reads its store's password from.
const PASSWORD: &str = "HSMD_STORE_PASSWORD";

/// A node with metrics on a new database `db` of `pg`.
fn on_postgres(pg: &Cluster, db: &str) -> Data {
    pg.create_database(db);
    let url = pg.url(db);
    let d = Data::init_with(
        "alice",
        &["--store-url", url.as_str()],
        &[(PASSWORD, pg.password())],
    );
    d.set("metrics", "listen", "\"127.0.0.1:0\"");
    d
}

#[test]
fn health_names_a_postgres_store_that_stopped_answering_and_recovers_with_it() {
    if !have_curl() {
        return;
    }
    let Some(pg) = Cluster::start() else { return };
    let d = on_postgres(&pg, "health");
    let hsmd = d.start_env(&[(PASSWORD, pg.password())]);
    let addr = bound(hsmd.ready_line(), "metrics");
    assert_eq!(curl(d.tmp(), addr, "/health", &[]).body, "ok");

    pg.stop();
    let mut last = None;
    until(
        "health says the store is unreachable",
        Duration::from_secs(15),
        || {
            let r = curl(d.tmp(), addr, "/health", &[]);
            let down = r.code == 503;
            last = Some(r);
            down
        },
    );
    let r = last.unwrap();
    // Where the store is, for anyone who asks: host, port and database, not the user.
    let url = pg.url("health");
    let place = url.split_once('@').unwrap().1.split('?').next().unwrap();
    assert_eq!(r.body, format!("store unreachable: {place}"), "{r:?}");
    assert!(!r.body.contains(pg.user()), "{r:?}");
    // A scrape still answers, without the figures only the store knows.
    let m = curl(d.tmp(), addr, "/metrics", &[]);
    assert_eq!(m.code, 200, "{m:?}");
    assert!(!m.body.contains("ferrohsm_keys_stored"), "{}", m.body);
    assert!(m.body.contains("ferrohsm_requests_total"), "{}", m.body);

    pg.start_again();
    until("health recovers", Duration::from_secs(20), || {
        let r = curl(d.tmp(), addr, "/health", &[]);
        r.code == 200 && r.body == "ok"
    });
}

#[test]
fn a_joined_node_does_not_take_its_first_nodes_metrics_address() {
    if !have_curl() {
        return;
    }
    let Some(pg) = Cluster::start() else { return };
    let d1 = on_postgres(&pg, "joined");
    let d2 = d1.join(&[], &[]);
    let config = std::fs::read_to_string(d2.config()).unwrap();
    assert!(
        !config.contains("[metrics]\n") && config.contains("# [metrics]"),
        "{config}"
    );
    // Both nodes serve on one host; only the first has the endpoint, and it reports the
    // shared store healthy.
    let (n1, n2) = (d1.start(), d2.start());
    assert!(!n2.ready_line().contains("metrics"), "{}", n2.ready_line());
    let addr = bound(n1.ready_line(), "metrics");
    assert_eq!(curl(d1.tmp(), addr, "/health", &[]).body, "ok");
}
