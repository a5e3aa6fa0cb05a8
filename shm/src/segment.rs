//! The segment: an anonymous memfd, sealed, mapped shared by both processes.
//!
//! ```text
//! offset              size        what
//! 0                   64          SegmentHeader  { magic, version, ring_size, total_len }
//! BELLS_OFF = 64      64          Bells   { server: Bell, client: Bell }  (futex words)
//! REQ_CTL_OFF = 128   128         RingCtl { head (line 1), tail (line 2) }  client -> server
//! RESP_CTL_OFF = 256  128         RingCtl                                   server -> client
//! DATA_OFF = 384      ring_size   request bytes
//! DATA_OFF+ring_size  ring_size   response bytes
//! ```
//! Offsets chain through `size_of`; the assertions below keep the drawing honest.

use std::fs::File;
use std::mem::{align_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::{ShmError, os};
use crate::ring::{Ring, RingCtl};

/// Segment magic.
pub const MAGIC: [u8; 8] = *b"FHSMSHM1";
/// Layout version.
pub const VERSION: u32 = 1;
/// Smallest and largest ring sizes accepted (bytes, powers of two).
pub const MIN_RING: u32 = 4096;
/// See [`MIN_RING`].
pub const MAX_RING: u32 = 64 << 20;

/// Fixed header at offset 0.
#[repr(C, align(64))]
pub(crate) struct SegmentHeader {
    magic: [u8; 8],
    version: AtomicU32,
    ring_size: AtomicU32,
    total_len: AtomicU64,
}

/// One side's doorbell: the peer bumps `ring` and wakes the futex when `sleeping` is set.
#[repr(C)]
#[derive(Debug)]
pub struct Bell {
    /// Futex word: a counter bumped on every ring.
    pub ring: AtomicU32,
    /// Non-zero while this side's watcher is (about to be) asleep on `ring`.
    pub sleeping: AtomicU32,
}

/// Both doorbells.
#[repr(C, align(64))]
pub(crate) struct Bells {
    server: Bell,
    client: Bell,
}

pub(crate) const HEADER_OFF: usize = 0;
pub(crate) const BELLS_OFF: usize = HEADER_OFF + size_of::<SegmentHeader>();
pub(crate) const REQ_CTL_OFF: usize = BELLS_OFF + size_of::<Bells>();
pub(crate) const RESP_CTL_OFF: usize = REQ_CTL_OFF + size_of::<RingCtl>();
pub(crate) const DATA_OFF: usize = RESP_CTL_OFF + size_of::<RingCtl>();

const _: () = assert!(size_of::<SegmentHeader>() == 64 && size_of::<Bells>() == 64);
const _: () = assert!(size_of::<RingCtl>() == 128 && DATA_OFF == 384);
const _: () = assert!(
    BELLS_OFF.is_multiple_of(align_of::<Bells>())
        && REQ_CTL_OFF.is_multiple_of(align_of::<RingCtl>())
);

/// Which end of the segment this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// hsmd: consumes requests, produces responses.
    Server,
    /// The client: produces requests, consumes responses.
    Client,
}

/// A mapped segment. The mapping lives as long as this value; rings and bells borrow it.
pub struct Segment {
    map: MmapMut,
    fd: OwnedFd,
    ring_size: u32,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("ring_size", &self.ring_size)
            .finish_non_exhaustive()
    }
}

fn total_len(ring_size: u32) -> usize {
    DATA_OFF + 2 * ring_size as usize
}

fn map_fd(fd: &OwnedFd, len: usize) -> Result<MmapMut, ShmError> {
    let file = File::from(fd.try_clone().map_err(|e| ShmError::Os {
        context: "dup memfd",
        source: e,
    })?);
    // SAFETY: memmap2 requires that the file is not truncated while mapped. The memfd is sealed
    // against shrinking (F_SEAL_SHRINK, checked on open), so every byte of the mapping stays
    // backed and no access can fault. The contents are changed by the other process at any
    // time; this crate only ever reads them through atomics or copies them out first.
    #[allow(unsafe_code)]
    let map = unsafe { MmapOptions::new().len(len).map_mut(&file) };
    map.map_err(|e| ShmError::Os {
        context: "mmap segment",
        source: e,
    })
}

impl Segment {
    /// Server side: a fresh memfd of the right size, sealed against shrinking, growing and
    /// further sealing, mapped, with the header written.
    pub fn create(ring_size: u32) -> Result<Segment, ShmError> {
        if !ring_size.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&ring_size) {
            return Err(ShmError::Invalid(format!(
                "ring size {ring_size} must be a power of two in {MIN_RING}..={MAX_RING}"
            )));
        }
        let len = total_len(ring_size);
        let fd = rustix::fs::memfd_create(
            "ferrohsm-session",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(os("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(os("size memfd"))?;
        // Without these seals a client could truncate the file and kill the server with SIGBUS.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(os("seal memfd"))?;
        let map = map_fd(&fd, len)?;
        let seg = Segment { map, fd, ring_size };
        let h = seg.header();
        h.version
            .store(VERSION, std::sync::atomic::Ordering::Relaxed);
        h.ring_size
            .store(ring_size, std::sync::atomic::Ordering::Relaxed);
        h.total_len
            .store(len as u64, std::sync::atomic::Ordering::Relaxed);
        // The magic goes last, through the byte view (memfd pages start zeroed).
        seg.write_bytes(HEADER_OFF, &MAGIC);
        Ok(seg)
    }

    /// Client side: maps a segment received from the server and checks its header against the
    /// file's real size and seals.
    pub fn open(fd: OwnedFd) -> Result<Segment, ShmError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(os("read seals"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(ShmError::Invalid(
                "segment is not sealed against resizing".into(),
            ));
        }
        let size = rustix::fs::fstat(&fd).map_err(os("fstat segment"))?.st_size as usize;
        if size < DATA_OFF + 2 * MIN_RING as usize {
            return Err(ShmError::Invalid(format!(
                "segment of {size} bytes is too small"
            )));
        }
        let map = map_fd(&fd, DATA_OFF)?;
        let probe = Segment {
            map,
            fd,
            ring_size: 0,
        };
        let mut magic = [0u8; 8];
        probe.read_bytes(HEADER_OFF, &mut magic);
        let h = probe.header();
        let ring_size = h.ring_size.load(std::sync::atomic::Ordering::Relaxed);
        let version = h.version.load(std::sync::atomic::Ordering::Relaxed);
        if magic != MAGIC || version != VERSION {
            return Err(ShmError::Invalid("bad magic or version".into()));
        }
        if !ring_size.is_power_of_two()
            || !(MIN_RING..=MAX_RING).contains(&ring_size)
            || total_len(ring_size) != size
        {
            return Err(ShmError::Invalid(format!(
                "ring size {ring_size} does not fit a {size}-byte segment"
            )));
        }
        let map = map_fd(&probe.fd, size)?;
        Ok(Segment {
            map,
            fd: probe.fd,
            ring_size,
        })
    }

    /// The memfd (to pass to the client).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes per ring.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    fn base(&self) -> *mut u8 {
        self.map.as_ptr().cast_mut()
    }

    /// A shared reference to a `T` at `off`.
    fn at<T>(&self, off: usize) -> &T {
        assert!(
            off + size_of::<T>() <= self.map.len()
                && (self.base() as usize + off).is_multiple_of(align_of::<T>())
        );
        // SAFETY: the assertion keeps the `T` inside the mapping and aligned (the mapping is
        // page-aligned and the offsets are multiples of `T`'s alignment). The `T`s used here
        // are atomics and byte arrays, valid for every bit pattern, so whatever the other
        // process wrote is a valid value, and shared references to atomics permit the
        // concurrent writes. The reference lives no longer than `&self`, hence the mapping.
        #[allow(unsafe_code)]
        unsafe {
            &*self.base().add(off).cast::<T>()
        }
    }

    fn header(&self) -> &SegmentHeader {
        self.at(HEADER_OFF)
    }

    /// Both doorbells: (this side's, the peer's).
    pub fn bells(&self, side: Side) -> (&Bell, &Bell) {
        let b: &Bells = self.at(BELLS_OFF);
        match side {
            Side::Server => (&b.server, &b.client),
            Side::Client => (&b.client, &b.server),
        }
    }

    /// The ring this side reads and the ring it writes.
    pub fn rings(&self, side: Side) -> (Ring<'_>, Ring<'_>) {
        let size = self.ring_size as usize;
        let req = self.ring(REQ_CTL_OFF, DATA_OFF, size);
        let resp = self.ring(RESP_CTL_OFF, DATA_OFF + size, size);
        match side {
            Side::Server => (req, resp),
            Side::Client => (resp, req),
        }
    }

    fn ring(&self, ctl: usize, data: usize, size: usize) -> Ring<'_> {
        assert!(data + size <= self.map.len());
        // SAFETY: `data..data + size` lies inside the mapping (asserted) and the pointer is
        // derived from the mapping's base, valid for the life of `&self`.
        #[allow(unsafe_code)]
        let data_ptr = unsafe { self.base().add(data) };
        Ring::new(self.at(ctl), data_ptr, size)
    }

    /// Copies `out.len()` bytes from `off` (bounds-checked).
    pub(crate) fn read_bytes(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.map.len());
        // SAFETY: the range is inside the mapping (asserted); `out` is private memory that
        // cannot overlap the mapping. A concurrent write by the peer can only make the copied
        // bytes garbage, which every caller validates afterwards.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(self.base().add(off), out.as_mut_ptr(), out.len())
        }
    }

    /// Writes bytes at `off` (bounds-checked). Tests use it to play a hostile peer.
    pub fn write_bytes(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.map.len());
        // SAFETY: the range is inside the mapping (asserted) and `data` is private memory; the
        // mapping is writable and shared, so concurrent readers see either old or new bytes.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(off), data.len())
        }
    }

    /// Total mapped length.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true for a valid segment.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Byte offsets of the shared control words, for tests that play a hostile peer.
pub mod offsets {
    /// Request ring head (written by the client).
    pub const REQ_HEAD: usize = super::REQ_CTL_OFF;
    /// Request ring tail (written by the server).
    pub const REQ_TAIL: usize = super::REQ_CTL_OFF + 64;
    /// Response ring head (written by the server).
    pub const RESP_HEAD: usize = super::RESP_CTL_OFF;
    /// Response ring tail (written by the client).
    pub const RESP_TAIL: usize = super::RESP_CTL_OFF + 64;
    /// Start of the request bytes.
    pub const REQ_DATA: usize = super::DATA_OFF;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_and_seals() {
        let s = Segment::create(MIN_RING).unwrap();
        assert_eq!(s.len(), DATA_OFF + 2 * MIN_RING as usize);
        let fd = s.fd().try_clone_to_owned().unwrap();
        // The seals hold: neither side can resize the file.
        // F_SEAL_SHRINK and F_SEAL_GROW make both fail with EPERM (memfd_create(2)).
        assert_eq!(rustix::fs::ftruncate(&fd, 10), Err(rustix::io::Errno::PERM));
        assert_eq!(
            rustix::fs::ftruncate(&fd, 1 << 30),
            Err(rustix::io::Errno::PERM)
        );
        let c = Segment::open(fd).unwrap();
        assert_eq!(c.ring_size(), MIN_RING);
        // A corrupted header is refused.
        s.write_bytes(0, b"XXXXXXXX");
        let r = Segment::open(s.fd().try_clone_to_owned().unwrap());
        assert!(
            matches!(&r, Err(ShmError::Invalid(m)) if m == "bad magic or version"),
            "{r:?}"
        );
        let r = Segment::create(5000);
        assert!(
            matches!(&r, Err(ShmError::Invalid(m))
                if m.starts_with("ring size 5000 must be a power of two")),
            "{r:?}"
        );
    }

    #[test]
    fn unsealed_files_are_refused() {
        let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, total_len(MIN_RING) as u64).unwrap();
        let r = Segment::open(fd);
        assert!(
            matches!(&r, Err(ShmError::Invalid(m))
                if m == "segment is not sealed against resizing"),
            "{r:?}"
        );
    }
}
