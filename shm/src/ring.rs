//! A single-producer/single-consumer byte ring in shared memory.
//!
//! Positions are free-running `u64` byte counts: `head` (bytes ever written, published by the
//! producer) and `tail` (bytes ever consumed, published by the consumer). The bytes in flight
//! are `head - tail`, which must lie in `0..=size`; anything else means the peer scribbled on
//! the control words, and the ring refuses to go on. Each side keeps its own position in
//! private memory and only ever *writes* it to the shared word, so a peer overwriting our
//! position cannot make us read or write outside the data area.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ShmError;

#[repr(C, align(64))]
struct Line(AtomicU64);

/// The two control words of a ring, each on its own cache line.
#[repr(C)]
pub(crate) struct RingCtl {
    head: Line,
    tail: Line,
}

/// A view of one ring: control words plus `size` data bytes.
pub struct Ring<'a> {
    ctl: &'a RingCtl,
    data: *mut u8,
    size: usize,
}

impl std::fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where `len` bytes starting at free-running position `pos` land in a ring of `size` bytes
/// (a power of two): `(offset, first part, second part)`; the second part wraps to offset 0.
pub fn split(pos: u64, len: usize, size: usize) -> (usize, usize, usize) {
    let off = (pos & (size as u64 - 1)) as usize;
    let first = len.min(size - off);
    (off, first, len - first)
}

impl<'a> Ring<'a> {
    /// A view over `ctl` and `size` bytes at `data` (which must stay valid for `'a`).
    pub(crate) fn new(ctl: &'a RingCtl, data: *mut u8, size: usize) -> Ring<'a> {
        debug_assert!(size.is_power_of_two());
        Ring { ctl, data, size }
    }

    /// Data bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Consumer: bytes readable from private position `tail`.
    pub fn readable(&self, tail: u64) -> Result<usize, ShmError> {
        let head = self.ctl.head.0.load(Ordering::Acquire);
        let n = head.wrapping_sub(tail);
        if n > self.size as u64 {
            return Err(ShmError::Corrupt(format!(
                "request head {head} is {n} bytes past tail {tail}"
            )));
        }
        Ok(n as usize)
    }

    /// Producer: bytes writable from private position `head`.
    pub fn writable(&self, head: u64) -> Result<usize, ShmError> {
        let tail = self.ctl.tail.0.load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if used > self.size as u64 {
            return Err(ShmError::Corrupt(format!(
                "peer tail {tail} is not within {} bytes of head {head}",
                self.size
            )));
        }
        Ok(self.size - used as usize)
    }

    /// Consumer: copies up to `out.len()` bytes out, wipes them in the ring (they can be
    /// plaintexts or key bytes, and the segment lives as long as the session), advances
    /// `tail` and publishes it.
    pub fn read(&self, tail: &mut u64, out: &mut [u8]) -> Result<usize, ShmError> {
        let n = self.readable(*tail)?.min(out.len());
        let (off, first, second) = split(*tail, n, self.size);
        // SAFETY: `split` keeps `off + first <= size` and `second <= size`, so both source
        // ranges lie in the data area, valid for `'a`; `out` is private memory and cannot
        // overlap it. The producer does not write these bytes until we publish the new tail
        // (a hostile one may, which only makes the copy garbage for the decoder to refuse),
        // so zeroing the same ranges before publishing races with nothing of ours.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(off), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), second);
            std::ptr::write_bytes(self.data.add(off), 0, first);
            std::ptr::write_bytes(self.data, 0, second);
        }
        *tail = tail.wrapping_add(n as u64);
        self.ctl.tail.0.store(*tail, Ordering::Release);
        Ok(n)
    }

    /// Producer: copies as much of `src` in as fits, advances `head` and publishes it.
    pub fn write(&self, head: &mut u64, src: &[u8]) -> Result<usize, ShmError> {
        let n = self.writable(*head)?.min(src.len());
        let (off, first, second) = split(*head, n, self.size);
        // SAFETY: as in `read`, both destination ranges lie in the data area; `src` is private
        // memory. The consumer does not read these bytes before we publish the new head.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, second);
        }
        *head = head.wrapping_add(n as u64);
        self.ctl.head.0.store(*head, Ordering::Release);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A ring over private memory, for testing the arithmetic without a segment.
    struct Local {
        ctl: Box<RingCtl>,
        data: Vec<u8>,
    }

    impl Local {
        fn new(size: usize, start: u64) -> Local {
            let ctl = Box::new(RingCtl {
                head: Line(AtomicU64::new(start)),
                tail: Line(AtomicU64::new(start)),
            });
            Local {
                ctl,
                data: vec![0; size],
            }
        }
        fn ring(&mut self) -> Ring<'_> {
            let size = self.data.len();
            Ring::new(&self.ctl, self.data.as_mut_ptr(), size)
        }
    }

    #[test]
    fn what_the_consumer_read_is_wiped_and_nothing_else() {
        let mut local = Local::new(64, 40);
        let (mut head, mut tail) = (40u64, 40u64);
        {
            let ring = local.ring();
            // 50 bytes from offset 40: they wrap to offsets 0..26.
            assert_eq!(ring.write(&mut head, &[7u8; 50]).unwrap(), 50);
            let mut out = [0u8; 30];
            assert_eq!(ring.read(&mut tail, &mut out).unwrap(), 30);
            assert_eq!(out, [7u8; 30]);
        }
        // Read: offsets 40..64 and 0..6, now zero. Still in flight: 6..26, untouched.
        for (off, b) in local.data.iter().enumerate() {
            let in_flight = (6..26).contains(&off);
            assert_eq!(*b, if in_flight { 7 } else { 0 }, "offset {off}");
        }
    }

    proptest! {
        /// Any interleaving of writes and reads, starting anywhere (including just below the
        /// u64 wrap), delivers exactly the bytes written, in order, never more than fit.
        #[test]
        fn ring_matches_a_fifo(start in prop_oneof![Just(0u64), Just(u64::MAX - 100), any::<u64>()],
                               ops in proptest::collection::vec((any::<bool>(), 0usize..100), 1..200)) {
            let mut local = Local::new(64, start);
            let ring = local.ring();
            let (mut head, mut tail) = (start, start);
            let mut model = VecDeque::new();
            let mut next = 0u8;
            for (is_write, len) in ops {
                if is_write {
                    let src: Vec<u8> = (0..len).map(|_| { next = next.wrapping_add(1); next }).collect();
                    let free = 64 - model.len();
                    let n = ring.write(&mut head, &src).unwrap();
                    prop_assert_eq!(n, len.min(free));
                    model.extend(&src[..n]);
                    next = next.wrapping_sub((len - n) as u8);
                } else {
                    let mut out = vec![0u8; len];
                    let n = ring.read(&mut tail, &mut out).unwrap();
                    prop_assert_eq!(n, len.min(model.len()));
                    let want: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(&out[..n], &want[..]);
                }
                prop_assert_eq!(ring.readable(tail).unwrap(), model.len());
                prop_assert_eq!(ring.writable(head).unwrap(), 64 - model.len());
            }
        }

        #[test]
        fn split_stays_in_bounds(pos: u64, len in 0usize..=64) {
            let (off, a, b) = split(pos, len, 64);
            prop_assert!(off < 64 && off + a <= 64 && b <= 64 && a + b == len);
            prop_assert!(b == 0 || off + a == 64);
        }
    }

    #[test]
    fn full_empty_and_straddling() {
        let mut local = Local::new(16, 10);
        let ring = local.ring();
        let (mut head, mut tail) = (10u64, 10u64);
        assert_eq!(ring.write(&mut head, &[1; 20]).unwrap(), 16, "full at size");
        assert_eq!(ring.write(&mut head, &[1]).unwrap(), 0);
        let mut out = [0u8; 16];
        assert_eq!(ring.read(&mut tail, &mut out).unwrap(), 16);
        assert_eq!(ring.read(&mut tail, &mut out).unwrap(), 0, "empty");
        // 12 bytes starting at offset 10 straddle the end.
        let src: Vec<u8> = (0..12).collect();
        assert_eq!(ring.write(&mut head, &src).unwrap(), 12);
        assert_eq!(ring.read(&mut tail, &mut out[..12]).unwrap(), 12);
        assert_eq!(&out[..12], &src[..]);
    }

    #[test]
    fn scribbled_indices_are_refused() {
        let mut local = Local::new(16, 0);
        let (mut head, mut tail) = (0u64, 0u64);
        // Peer claims 17 bytes in a 16-byte ring.
        local.ctl.head.0.store(17, Ordering::Relaxed);
        let ring = local.ring();
        let r = ring.read(&mut tail, &mut [0u8; 4]);
        assert!(
            matches!(&r, Err(ShmError::Corrupt(m)) if m == "request head 17 is 17 bytes past tail 0"),
            "{r:?}"
        );
        // Peer moves its head backwards (wraps to a huge count).
        local.ctl.head.0.store(u64::MAX, Ordering::Relaxed);
        let r = local.ring().readable(0);
        assert!(
            matches!(&r, Err(ShmError::Corrupt(m)) if *m == format!(
                "request head {} is {} bytes past tail 0", u64::MAX, u64::MAX
            )),
            "{r:?}"
        );
        // Peer moves the tail past our head.
        local.ctl.tail.0.store(5, Ordering::Relaxed);
        let r = local.ring().write(&mut head, &[1]);
        assert!(
            matches!(&r, Err(ShmError::Corrupt(m)) if m == "peer tail 5 is not within 16 bytes of head 0"),
            "{r:?}"
        );
        assert_eq!((head, tail), (0, 0), "positions untouched after a refusal");
    }
}
