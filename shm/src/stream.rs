//! [`ShmStream`]: the two rings of a segment as a tokio `AsyncRead` + `AsyncWrite` pair.
//!
//! Reading and writing copy straight between the caller's buffer and the ring, in the caller's
//! task. When a ring is empty (reader) or full (writer), the wait has two phases:
//!
//! 1. **Spin** for [`doorbell::SPIN`]. With [`Waiting::InTask`] (hsmd's session arbiters) the
//!    task spins in its own executor: it wakes itself and returns `Pending`, so the arbiter
//!    that owns the session polls the ring again after its other ready tasks, with no thread
//!    hop and no system call on either side. With [`Waiting::Watcher`] (clients, whose
//!    runtime may starve a self-waking task) the task parks at once and its watcher thread
//!    spins on the ring, waking the task when data or space appears.
//! 2. **Sleep**: the watcher announces the sleep on this side's futex bell and waits there until
//!    the peer rings.
//!
//! While no task is parked the watcher sleeps on a process-local park, not on the shared bell,
//! so the peer never makes a system call for a side that is busy or spinning, and an idle
//! endpoint costs nothing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::doorbell;
use crate::segment::{Segment, Side};

/// How long the watcher sleeps before looking again on its own (closing, lost wake-ups).
const WATCH_TIMEOUT: Duration = Duration::from_secs(1);

struct Inner {
    seg: Segment,
    side: Side,
    closed: AtomicBool,
    error: Mutex<Option<String>>,
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
    read_waiting: AtomicBool,
    write_waiting: AtomicBool,
    // Copies of the private positions, for the watcher's readiness checks.
    read_pos: AtomicU64,
    write_pos: AtomicU64,
    on_close: tokio::sync::Notify,
    // The watcher thread, unparked when a task parks or the stream closes.
    watcher: std::sync::OnceLock<std::thread::Thread>,
}

impl Inner {
    fn lock(m: &Mutex<Option<Waker>>) -> std::sync::MutexGuard<'_, Option<Waker>> {
        // A poisoned waker slot only means a waker's clone panicked; the slot is still usable.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn fail(&self, why: String) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
        self.close();
    }

    fn error(&self) -> Option<io::Error> {
        let e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        e.as_ref()
            .map(|m| io::Error::new(io::ErrorKind::InvalidData, m.clone()))
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.on_close.notify_waiters();
            self.on_close.notify_one();
        }
        for slot in [&self.read_waker, &self.write_waker] {
            if let Some(w) = Self::lock(slot).take() {
                w.wake();
            }
        }
        self.nudge();
    }

    /// Makes the watcher look: out of its local park, or off the bell if it sleeps there.
    fn nudge(&self) {
        if let Some(t) = self.watcher.get() {
            t.unpark();
        }
        doorbell::kick(self.seg.bells(self.side).0);
    }

    /// Data (or a corrupt ring) for a waiting reader.
    fn read_ready(&self) -> bool {
        let (rx, _) = self.seg.rings(self.side);
        self.read_waiting.load(Ordering::SeqCst)
            && rx
                .readable(self.read_pos.load(Ordering::Relaxed))
                .map_or(true, |n| n > 0)
    }

    /// Space (or a corrupt ring) for a waiting writer.
    fn write_ready(&self) -> bool {
        let (_, tx) = self.seg.rings(self.side);
        self.write_waiting.load(Ordering::SeqCst)
            && tx
                .writable(self.write_pos.load(Ordering::Relaxed))
                .map_or(true, |n| n > 0)
    }

    fn wake_ready(&self) {
        if self.read_ready() || self.is_closed() {
            self.read_waiting.store(false, Ordering::SeqCst);
            if let Some(w) = Self::lock(&self.read_waker).take() {
                w.wake();
            }
        }
        if self.write_ready() || self.is_closed() {
            self.write_waiting.store(false, Ordering::SeqCst);
            if let Some(w) = Self::lock(&self.write_waker).take() {
                w.wake();
            }
        }
    }
}

/// Where the spin phase of a wait runs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The waiting task spins in its own executor, then parks (a FIFO executor that owns the
    /// session: hsmd's session arbiters).
    InTask,
    /// The task parks at once; the watcher thread spins, then sleeps (any executor).
    Watcher,
}

fn watch(inner: Arc<Inner>, waiting_mode: Waiting) {
    let (mine, _) = inner.seg.bells(inner.side);
    let watcher_spins = waiting_mode == Waiting::Watcher;
    while !inner.is_closed() {
        let waiting =
            inner.read_waiting.load(Ordering::SeqCst) || inner.write_waiting.load(Ordering::SeqCst);
        if !waiting {
            // Nothing parked: tasks are busy or spinning. Sleep locally, so the peer sees no
            // sleeper on the bell and publishes without a system call.
            std::thread::park_timeout(WATCH_TIMEOUT);
            continue;
        }
        // A task parked: spin here (watcher mode), then sleep on the shared bell.
        doorbell::wait(mine, WATCH_TIMEOUT, watcher_spins, || {
            inner.is_closed() || inner.read_ready() || inner.write_ready()
        });
        inner.wake_ready();
    }
    inner.wake_ready();
}

/// Where a waiting half is in its wait: spinning in its task since an instant, or parked.
#[derive(Debug)]
struct Spin {
    in_task: bool,
    since: Option<std::time::Instant>,
    polls: u32,
}

/// What a waiting half does next.
enum SpinStep {
    /// Spinning: the task has arranged to be polled again.
    Pending,
    /// The spin window is over (or spinning is the watcher's job): park.
    Park,
}

impl Spin {
    fn new(mode: Waiting) -> Spin {
        Spin {
            in_task: mode == Waiting::InTask,
            since: None,
            polls: 0,
        }
    }

    /// Whether to keep spinning (the task has woken itself): true within the spin window of
    /// this wait. Yields the thread between polls, so on a busy machine the threads doing real
    /// work (crypto workers, the peer) get the core.
    fn step(&mut self, cx: &mut Context<'_>) -> SpinStep {
        if !self.in_task {
            return SpinStep::Park;
        }
        // Every eighth look: is the spin window over, and if not, give the core away, so on a
        // busy machine the threads doing real work (crypto workers, the peer) get it. Not on
        // every look: a system call, or even a clock read, per look made the look itself the
        // largest cost of a round trip. (Busy-waiting inside the poll was measured too, and
        // is worse: it holds up the executor's other tasks.)
        self.polls = self.polls.wrapping_add(1);
        match self.since {
            None => self.since = Some(std::time::Instant::now()),
            Some(since) if self.polls.is_multiple_of(8) => {
                if since.elapsed() >= doorbell::SPIN {
                    return SpinStep::Park;
                }
                std::thread::yield_now();
            }
            Some(_) => {}
        }
        // Wake again only after the executor has run its other ready tasks and looked at its
        // I/O (tokio defers a yielding task's wake-up until then): a plain self-wake would keep
        // a current-thread runtime from polling its `block_on` future for up to 61 polls.
        let mut again = std::pin::pin!(tokio::task::yield_now());
        let _ = std::future::Future::poll(again.as_mut(), cx);
        SpinStep::Pending
    }

    fn reset(&mut self) {
        self.since = None;
    }
}

/// Builds the endpoint of one side.
#[derive(Debug)]
pub struct ShmStream;

impl ShmStream {
    /// Starts the watcher thread and returns the reading half, the writing half and a handle
    /// for whoever watches liveness (the Unix socket). Closing happens when the writing half is
    /// shut down or dropped, when [`Closer::close`] is called, or when the peer corrupts a ring.
    pub fn start(
        seg: Segment,
        side: Side,
        waiting: Waiting,
    ) -> io::Result<(ShmReader, ShmWriter, Closer)> {
        // Start from the positions in the segment (zero for a fresh one); from here on they
        // are private and only published.
        let (tail, head) = (start_pos(&seg, side, true), start_pos(&seg, side, false));
        let inner = Arc::new(Inner {
            seg,
            side,
            closed: AtomicBool::new(false),
            error: Mutex::new(None),
            read_waker: Mutex::new(None),
            write_waker: Mutex::new(None),
            read_waiting: AtomicBool::new(false),
            write_waiting: AtomicBool::new(false),
            read_pos: AtomicU64::new(tail),
            write_pos: AtomicU64::new(head),
            on_close: tokio::sync::Notify::new(),
            watcher: std::sync::OnceLock::new(),
        });
        let w = inner.clone();
        let t = std::thread::Builder::new()
            .name(format!(
                "shm-{}",
                if side == Side::Server { "srv" } else { "cli" }
            ))
            .stack_size(64 * 1024)
            .spawn(move || watch(w, waiting))?;
        let _ = inner.watcher.set(t.thread().clone());
        Ok((
            ShmReader {
                inner: inner.clone(),
                tail,
                spin: Spin::new(waiting),
            },
            ShmWriter {
                inner: inner.clone(),
                head,
                spin: Spin::new(waiting),
            },
            Closer { inner },
        ))
    }
}

/// The starting position of this side's read ring (`read`) or write ring.
/// Where `side` starts on an open segment: (its read position, its write position), as the
/// segment records them (zero for a fresh one). For endpoints that drive the rings themselves.
pub fn start_positions(seg: &Segment, side: Side) -> (u64, u64) {
    (start_pos(seg, side, true), start_pos(seg, side, false))
}

fn start_pos(seg: &Segment, side: Side, read: bool) -> u64 {
    use crate::segment::offsets::*;
    let off = match (side, read) {
        (Side::Server, true) => REQ_TAIL,
        (Side::Server, false) => RESP_HEAD,
        (Side::Client, true) => RESP_TAIL,
        (Side::Client, false) => REQ_HEAD,
    };
    let mut b = [0u8; 8];
    seg.read_bytes(off, &mut b);
    u64::from_ne_bytes(b)
}

/// Closes the endpoint from outside (the peer's socket closed) and tells when it closed.
#[derive(Clone)]
pub struct Closer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

impl Closer {
    /// Ends the stream: readers see end-of-file, writers an error.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Resolves once the stream is closed (writer gone, closed, or corrupted).
    pub async fn closed(&self) {
        loop {
            let notified = self.inner.on_close.notified();
            if self.inner.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Why the stream failed, if the peer corrupted it.
    pub fn error(&self) -> Option<String> {
        self.inner
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reading half.
pub struct ShmReader {
    inner: Arc<Inner>,
    tail: u64,
    spin: Spin,
}

/// Writing half.
pub struct ShmWriter {
    inner: Arc<Inner>,
    head: u64,
    spin: Spin,
}

impl std::fmt::Debug for ShmReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmReader")
            .field("tail", &self.tail)
            .finish()
    }
}

impl std::fmt::Debug for ShmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmWriter")
            .field("head", &self.head)
            .finish()
    }
}

impl Drop for ShmWriter {
    /// The writer going away means no more requests (client) or responses (server) will come:
    /// the stream closes, as a TCP half-close would end the peer's session.
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl AsyncRead for ShmReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let inner = &*this.inner;
        // The error is only ever set together with `closed`: no lock on the common path.
        if inner.is_closed()
            && let Some(e) = inner.error()
        {
            return Poll::Ready(Err(e));
        }
        let mut parked = false;
        loop {
            let (rx, _) = inner.seg.rings(inner.side);
            // Zero-fill only as much of the caller's buffer as we are about to copy into.
            let want = rx.readable(this.tail).map_or(0, |n| n.min(buf.remaining()));
            match rx.read(&mut this.tail, buf.initialize_unfilled_to(want)) {
                Err(e) => {
                    inner.fail(e.to_string());
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    )));
                }
                Ok(0) if inner.is_closed() => return Poll::Ready(Ok(())),
                Ok(0) if !parked => {
                    match this.spin.step(cx) {
                        SpinStep::Pending => return Poll::Pending,
                        SpinStep::Park => {
                            // Park, then look once more: data published in between is not
                            // lost, since the watcher also checks after we registered.
                            *Inner::lock(&inner.read_waker) = Some(cx.waker().clone());
                            inner.read_waiting.store(true, Ordering::SeqCst);
                            inner.nudge();
                            parked = true;
                        }
                    }
                }
                Ok(0) => {
                    // Parked; the next wait starts a fresh spin window.
                    this.spin.reset();
                    return Poll::Pending;
                }
                Ok(n) => {
                    this.spin.reset();
                    buf.advance(n);
                    inner.read_pos.store(this.tail, Ordering::Relaxed);
                    inner.read_waiting.store(false, Ordering::SeqCst);
                    // The peer may be waiting for space.
                    doorbell::ring(inner.seg.bells(inner.side).1);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for ShmWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let inner = &*this.inner;
        if inner.is_closed()
            && let Some(e) = inner.error()
        {
            return Poll::Ready(Err(e));
        }
        let mut parked = false;
        loop {
            if inner.is_closed() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "shared-memory session closed",
                )));
            }
            let (_, tx) = inner.seg.rings(inner.side);
            match tx.write(&mut this.head, src) {
                Err(e) => {
                    inner.fail(e.to_string());
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    )));
                }
                Ok(0) if !src.is_empty() && !parked => match this.spin.step(cx) {
                    SpinStep::Pending => return Poll::Pending,
                    SpinStep::Park => {
                        *Inner::lock(&inner.write_waker) = Some(cx.waker().clone());
                        inner.write_waiting.store(true, Ordering::SeqCst);
                        inner.nudge();
                        parked = true;
                    }
                },
                Ok(0) if !src.is_empty() => {
                    this.spin.reset();
                    return Poll::Pending;
                }
                Ok(n) => {
                    this.spin.reset();
                    inner.write_pos.store(this.head, Ordering::Relaxed);
                    inner.write_waiting.store(false, Ordering::SeqCst);
                    doorbell::ring(inner.seg.bells(inner.side).1);
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn bytes_flow_both_ways_across_wraps_and_backpressure() {
        let server_seg = Segment::create(crate::segment::MIN_RING).unwrap();
        let client_seg = Segment::open(server_seg.fd().try_clone_to_owned().unwrap()).unwrap();
        let (mut srd, mut swr, _sc) =
            ShmStream::start(server_seg, Side::Server, Waiting::InTask).unwrap();
        let (mut crd, mut cwr, cc) =
            ShmStream::start(client_seg, Side::Client, Waiting::Watcher).unwrap();
        // 1 MiB each way through 4 KiB rings: many wraps, and the writer must wait for space.
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 3000];
            let mut total = 0;
            while total < 1 << 20 {
                let n = srd.read(&mut buf).await.unwrap();
                swr.write_all(&buf[..n]).await.unwrap();
                total += n;
            }
            (srd, swr)
        });
        let writer = tokio::spawn(async move {
            cwr.write_all(&data).await.unwrap();
            cwr
        });
        let mut got = vec![0u8; 1 << 20];
        crd.read_exact(&mut got).await.unwrap();
        assert!(got == expect, "bytes differ");
        let _cwr = writer.await.unwrap();
        let (_srd, _swr) = echo.await.unwrap();
        // Closing one side's endpoint makes its reader see EOF.
        cc.close();
        let mut b = [0u8; 1];
        assert_eq!(crd.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_scribbled_head_fails_the_reader() {
        let server_seg = Segment::create(crate::segment::MIN_RING).unwrap();
        let hostile = Segment::open(server_seg.fd().try_clone_to_owned().unwrap()).unwrap();
        let (mut srd, _swr, closer) =
            ShmStream::start(server_seg, Side::Server, Waiting::InTask).unwrap();
        hostile.write_bytes(crate::segment::offsets::REQ_HEAD, &u64::MAX.to_ne_bytes());
        doorbell::ring(hostile.bells(Side::Client).1);
        let mut b = [0u8; 16];
        let e = tokio::time::timeout(Duration::from_secs(5), srd.read(&mut b))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(closer.error().unwrap().contains("corrupted"));
    }
}
