//! Sessions that do not fall asleep between requests: with `spin_us`, a client with one request
//! out over TCP or TLS looks for its answer without letting its thread sleep, and hsmd's session
//! looks for the next request the same way once every answer is written; with `spin_us = 0`
//! both wait for readiness at once. What tells them apart is not a clock (this machine is
//! shared) but the kernel's count of the times a thread went to sleep of its own accord
//! (`voluntary_ctxt_switches`): a thread that waits on its socket sleeps once per request, one
//! that spins does not.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::{DEFAULT_SPIN_US, Transport};
use ferrohsm_test_support::Data;
use ferrohsm_test_support::status::assert_exit;

/// Requests per measurement.
const N: u64 = 200;

/// One measurement at a time: the tests of this file spin for up to 10 ms a request, and side
/// by side on 2 cores one's spinning would be the other's wake-up delay.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A side that spins hardly ever sleeps; one that does not, sleeps on most requests, and
/// at least four times as often.
fn tells_apart(spun: u64, waited: u64) -> bool {
    spun < N / 4 && waited >= N / 4 && spun * 4 < waited
}

/// The times the threads named by `status` files went to sleep of their own accord.
fn voluntary(status_files: impl Iterator<Item = std::path::PathBuf>) -> u64 {
    status_files
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .sum()
}

/// This thread's count.
fn own() -> u64 {
    voluntary(std::iter::once("/proc/thread-self/status".into()))
}

/// The count summed over every thread of process `pid`.
fn process(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    voluntary(tasks.map(|t| t.unwrap().path().join("status")))
}

/// Pings `N` times one at a time on `c` (this thread), and answers how often this thread and
/// hsmd's threads slept meanwhile.
fn sleeps(c: &BlockingClient, hsmd: u32) -> (u64, u64) {
    c.ping().unwrap();
    let (me, server) = (own(), process(hsmd));
    for _ in 0..N {
        c.ping().unwrap();
    }
    (own() - me, process(hsmd) - server)
}

#[test]
fn a_client_spins_for_its_answer_unless_spin_us_is_zero() {
    let _alone = alone();
    let d = Data::init("alice");
    let hsmd = d.start();
    for t in [Transport::Tcp, Transport::Tls, Transport::TlsPsk] {
        // 10 ms: longer than any answer takes, even on a loaded machine.
        let mut p = d.load_profile("alice");
        p.spin = Duration::from_micros(10_000);
        let spinning = BlockingClient::connect(&p, Some(t)).unwrap();
        p.spin = Duration::ZERO;
        let waiting = BlockingClient::connect(&p, Some(t)).unwrap();
        let (spun, _) = sleeps(&spinning, hsmd.pid());
        let (waited, _) = sleeps(&waiting, hsmd.pid());
        assert!(
            tells_apart(spun, waited),
            "{t:?}: over {N} pings the client slept {spun} times spinning, {waited} times not"
        );
    }
}

/// On a multi-thread runtime a yield does not poll the socket (another worker does, asleep in
/// the kernel), so the caller waits at once instead of burning its core for nothing.
#[test]
fn on_a_multi_thread_runtime_the_client_does_not_spin() {
    let _alone = alone();
    let d = Data::init("alice");
    let _hsmd = d.start();
    let mut p = d.load_profile("alice");
    p.spin = Duration::from_micros(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The future runs on this thread, which sleeps whenever it waits.
    let slept = rt.block_on(async {
        let c = ferrohsm_client::connect::connect(&p, Some(Transport::Tcp))
            .await
            .unwrap();
        c.ping().await.unwrap();
        let before = own();
        for _ in 0..N {
            c.ping().await.unwrap();
        }
        own() - before
    });
    assert!(
        slept >= N / 2,
        "over {N} pings on a multi-thread runtime the caller slept only {slept} times"
    );
}

#[test]
fn a_session_spins_for_the_next_request_unless_spin_us_is_zero() {
    let _alone = alone();
    let mut slept = std::collections::HashMap::new();
    for server_spin in ["10000", "0"] {
        let d = Data::init("alice");
        d.set("server", "spin_us", server_spin);
        let hsmd = d.start();
        for t in [Transport::Tcp, Transport::Tls] {
            // The client spins, so the next request follows each answer at once.
            let mut p = d.load_profile("alice");
            p.spin = Duration::from_micros(10_000);
            let c = BlockingClient::connect(&p, Some(t)).unwrap();
            slept.insert((server_spin, format!("{t:?}")), sleeps(&c, hsmd.pid()).1);
        }
    }
    for t in ["Tcp", "Tls"] {
        let (spun, waited) = (slept[&("10000", t.into())], slept[&("0", t.into())]);
        assert!(
            tells_apart(spun, waited),
            "{t}: over {N} pings hsmd slept {spun} times with spin_us = 10000, {waited} with 0"
        );
    }
}

#[test]
fn init_writes_the_default_spin_and_a_bad_one_is_refused_before_connecting() {
    let _alone = alone();
    let d = Data::init("alice");
    let written = std::fs::read_to_string(d.profile("alice")).unwrap();
    assert!(
        written.contains(&format!("\nspin_us = {DEFAULT_SPIN_US}\n")),
        "{written}"
    );
    assert_eq!(
        d.load_profile("alice").spin,
        Duration::from_micros(DEFAULT_SPIN_US)
    );
    for (value, says) in [
        ("10001", "spin_us: 10001 is more than 10000"),
        ("-1", "spin_us"),
        ("\"fast\"", "spin_us"),
    ] {
        let text = written.replace(
            &format!("\nspin_us = {DEFAULT_SPIN_US}\n"),
            &format!("\nspin_us = {value}\n"),
        );
        std::fs::write(d.profile("bad"), text).unwrap();
        // No server runs: the profile is refused before any connection is tried.
        let o = d.ctl("bad", &["ping"]);
        assert_exit(&o, 2);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "spin_us = {value}: {err}");
    }
    // Zero is allowed: the client waits at once.
    std::fs::write(
        d.profile("zero"),
        written.replace(
            &format!("\nspin_us = {DEFAULT_SPIN_US}\n"),
            "\nspin_us = 0\n",
        ),
    )
    .unwrap();
    let _hsmd = d.start();
    let o = d.ctl("zero", &["ping"]);
    assert_exit(&o, 0);
}
