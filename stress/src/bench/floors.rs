//! The raw floors every transport is judged against, measured in the same run:
//!
//! - `floor-tcp`: a 32-byte echo round trip on loopback TCP with no protocol, against a
//!   blocking echo server thread and a tokio echo server; the faster counts.
//! - `floor-tcp-spin`: the same echo with both sides polling non-blocking sockets (yielding the
//!   core every few looks) instead of sleeping in the kernel: what a round trip costs when no
//!   side pays a wake-up, the floor a spinning transport is judged against.
//! - `floor-shm`: a 32-byte round trip between this process and a child process (this binary
//!   again, `hsm-stress floor-shm-echo`) over a shared-memory ring pair, both sides spinning,
//!   no protocol, no doorbells.
//!
//! Latencies are recorded in nanoseconds, so a sub-microsecond floor does not round to 1 µs.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ferrohsm_shm::{Segment, Side};
use hdrhistogram::Histogram;

use super::rows::BenchResult;

/// Bytes per round trip.
const MSG: usize = 32;

/// A nanosecond histogram (1 ns .. 60 s).
pub(crate) fn ns_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())
}

/// A row from round trips recorded in `h` over `elapsed`.
fn row(op: &str, h: &Histogram<u64>, elapsed: Duration) -> BenchResult {
    BenchResult {
        transport: "floor".into(),
        op: op.into(),
        inflight: 1,
        clients: 1,
        ops_per_sec: h.len() as f64 / elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        ratio: None,
        cpu_us_client: None,
        cpu_us_server: None,
    }
}

/// Round trips of `MSG` bytes over `s` for `secs`.
fn tcp_round_trips(mut s: std::net::TcpStream, secs: f64) -> Result<BenchResult, String> {
    let e = |e: std::io::Error| format!("floor-tcp: {e}");
    s.set_nodelay(true).map_err(e)?;
    let mut h = ns_histogram()?;
    let (out, mut back) = ([0x5au8; MSG], [0u8; MSG]);
    for _ in 0..100 {
        s.write_all(&out).map_err(e)?;
        s.read_exact(&mut back).map_err(e)?;
    }
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t0 = Instant::now();
        s.write_all(&out).map_err(e)?;
        s.read_exact(&mut back).map_err(e)?;
        let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
    }
    Ok(row("floor-tcp", &h, start.elapsed()))
}

/// Raw TCP echo on loopback: the faster of a blocking and a tokio echo server.
pub(crate) fn floor_tcp(secs: f64) -> Result<BenchResult, String> {
    let e = |e: std::io::Error| format!("floor-tcp: {e}");
    // Blocking: one thread per connection, read then write back.
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(e)?;
    let addr = l.local_addr().map_err(e)?;
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; MSG];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        }
    });
    let blocking = tcp_round_trips(std::net::TcpStream::connect(addr).map_err(e)?, secs)?;
    let _ = server.join();
    // Tokio: a current-thread runtime on its own thread, as hsmd's arbiters are.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                return;
            };
            let _ = tx.send(l.local_addr());
            if let Ok((mut s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; MSG];
                while s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {}
            }
        });
    });
    let addr = rx
        .recv()
        .map_err(|_| "floor-tcp: the tokio echo server did not start".to_string())?
        .map_err(e)?;
    let tokio = tcp_round_trips(std::net::TcpStream::connect(addr).map_err(e)?, secs)?;
    let _ = server.join();
    Ok(if tokio.p50_us < blocking.p50_us {
        tokio
    } else {
        blocking
    })
}

/// How many empty looks at a socket between two yields of the core.
const LOOKS_PER_YIELD: u32 = 64;

/// One look found nothing: spin, and every [`LOOKS_PER_YIELD`] looks give the core away.
fn idle_look(looks: &mut u32) {
    *looks += 1;
    if (*looks).is_multiple_of(LOOKS_PER_YIELD) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Reads all of `buf` from a non-blocking socket by polling it.
fn spin_read_exact(s: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let (mut got, mut looks) = (0, 0u32);
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => idle_look(&mut looks),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking socket by polling it.
fn spin_write_all(s: &mut std::net::TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let (mut put, mut looks) = (0, 0u32);
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => idle_look(&mut looks),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Raw TCP echo on loopback with both sides polling non-blocking sockets.
pub(crate) fn floor_tcp_spin(secs: f64) -> Result<BenchResult, String> {
    let e = |e: std::io::Error| format!("floor-tcp-spin: {e}");
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(e)?;
    let addr = l.local_addr().map_err(e)?;
    // The echo side ends when the measuring side closes (end of stream) or fails.
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept()
            && s.set_nodelay(true).is_ok()
            && s.set_nonblocking(true).is_ok()
        {
            let mut b = [0u8; MSG];
            while spin_read_exact(&mut s, &mut b).is_ok() && spin_write_all(&mut s, &b).is_ok() {}
        }
    });
    let measured = (|| {
        let mut s = std::net::TcpStream::connect(addr).map_err(e)?;
        s.set_nodelay(true).map_err(e)?;
        s.set_nonblocking(true).map_err(e)?;
        let mut h = ns_histogram()?;
        let (out, mut back) = ([0x5au8; MSG], [0u8; MSG]);
        for _ in 0..100 {
            spin_write_all(&mut s, &out).map_err(e)?;
            spin_read_exact(&mut s, &mut back).map_err(e)?;
        }
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let t0 = Instant::now();
            spin_write_all(&mut s, &out).map_err(e)?;
            spin_read_exact(&mut s, &mut back).map_err(e)?;
            let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
        }
        if back != out {
            return Err("floor-tcp-spin: the echo changed the bytes".to_string());
        }
        Ok(row("floor-tcp-spin", &h, start.elapsed()))
    })();
    // The measuring socket is closed by now (dropped in the closure): the echo side ends. If
    // it never connected, a connection of our own ends the echo side's wait to accept.
    if measured.is_err() {
        let _ = std::net::TcpStream::connect(addr);
    }
    let _ = server.join();
    measured
}

/// Spins until `n` bytes can be read from this side's ring into `out` (or `deadline`).
fn spin_read(seg: &Segment, side: Side, tail: &mut u64, out: &mut [u8], deadline: Instant) -> bool {
    let (rx, _) = seg.rings(side);
    let mut got = 0;
    while got < out.len() {
        match rx.read(tail, &mut out[got..]) {
            Ok(n) => got += n,
            Err(_) => return false,
        }
        if got < out.len() {
            if Instant::now() > deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }
    true
}

fn spin_write(seg: &Segment, side: Side, head: &mut u64, src: &[u8]) -> bool {
    let (_, tx) = seg.rings(side);
    let mut put = 0;
    while put < src.len() {
        match tx.write(head, &src[put..]) {
            Ok(n) => put += n,
            Err(_) => return false,
        }
    }
    true
}

/// The child half of `floor-shm`: connects to `socket`, receives the segment, and echoes
/// every message until the stop message (all 0xff) or 10 s without one.
pub fn shm_echo_child(socket: &Path) -> Result<(), String> {
    let s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut b = [0u8; 16];
    let (_, fd) = ferrohsm_shm::handoff::recv_with_fd(&s, &mut b).map_err(|e| e.to_string())?;
    let fd = fd.ok_or("no segment received")?;
    let seg = Segment::open(fd).map_err(|e| e.to_string())?;
    let (mut tail, mut head) = (0u64, 0u64);
    let mut m = [0u8; MSG];
    loop {
        let deadline = Instant::now() + Duration::from_secs(10);
        if !spin_read(&seg, Side::Server, &mut tail, &mut m, deadline) || m == [0xff; MSG] {
            return Ok(());
        }
        if !spin_write(&seg, Side::Server, &mut head, &m) {
            return Err("ring broken".into());
        }
    }
}

/// Round trips over a spinning ring pair to a child process (`exe floor-shm-echo`).
pub(crate) fn floor_shm(exe: &Path, secs: f64) -> Result<BenchResult, String> {
    let e = |e: &dyn std::fmt::Display| format!("floor-shm: {e}");
    let dir = tempfile::tempdir().map_err(|x| e(&x))?;
    let sock = dir.path().join("floor.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).map_err(|x| e(&x))?;
    let mut child = std::process::Command::new(exe)
        .arg("floor-shm-echo")
        .arg("--socket")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|x| e(&format!("cannot start {}: {x}", exe.display())))?;
    let result = (|| {
        let (s, _) = l.accept().map_err(|x| e(&x))?;
        let seg = Segment::create(ferrohsm_shm::segment::MIN_RING).map_err(|x| e(&x))?;
        ferrohsm_shm::handoff::send_with_fd(&s, b"seg", seg.fd()).map_err(|x| e(&x))?;
        let (mut tail, mut head) = (0u64, 0u64);
        let (out, mut back) = ([0x5au8; MSG], [0u8; MSG]);
        let mut trip = |h: Option<&mut Histogram<u64>>| -> Result<(), String> {
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(5);
            if !spin_write(&seg, Side::Client, &mut head, &out)
                || !spin_read(&seg, Side::Client, &mut tail, &mut back, deadline)
            {
                return Err("floor-shm: the echo child stopped answering".into());
            }
            if let Some(h) = h {
                let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
            }
            Ok(())
        };
        for _ in 0..1000 {
            trip(None)?;
        }
        let mut h = ns_histogram()?;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            trip(Some(&mut h))?;
        }
        let elapsed = start.elapsed();
        spin_write(&seg, Side::Client, &mut head, &[0xff; MSG]);
        Ok(row("floor-shm", &h, elapsed))
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcp_spin_floor_measures_round_trips() {
        let r = super::floor_tcp_spin(0.05).unwrap();
        assert_eq!(r.op, "floor-tcp-spin");
        assert_eq!(r.transport, "floor");
        assert!(
            r.ops_per_sec > 0.0 && r.p50_us > 0.0 && r.p99_us >= r.p50_us,
            "{r:?}"
        );
    }

    #[test]
    fn tcp_floor_measures_round_trips() {
        let r = super::floor_tcp(0.05).unwrap();
        assert_eq!(r.op, "floor-tcp");
        assert!(r.ops_per_sec > 0.0 && r.p50_us > 0.0 && r.p99_us >= r.p50_us);
    }
}
