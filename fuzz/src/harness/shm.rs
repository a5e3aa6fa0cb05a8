//! Harness over the shared-memory ring, played by a hostile peer: the input is a script of
//! scribbles on the shared control words and data, and reads and writes by our side. Shared by
//! the AFL target `ring` and the regression tests in `shm/tests/fuzz_corpus.rs`.
//!
//! What must hold whatever the peer writes: no panic, no read or write outside the data area
//! (the ring's own bounds checks, with the mapping's guard), a read never returns more than
//! asked, and once the peer's words are inconsistent the ring says so rather than going on.
#![allow(dead_code)]

use ferrohsm_shm::segment::{MIN_RING, offsets};
use ferrohsm_shm::{Segment, Side};

/// The segment the script runs on (smallest rings: wrap-around comes quickly).
pub fn segment() -> Segment {
    Segment::create(MIN_RING).expect("a memfd segment")
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Runs one script. Each step is an op byte and its arguments:
/// `0`: the peer writes a u64 to one of the four control words; `1`: the peer writes bytes
/// into the data area at an offset; `2`: we read up to N bytes of requests (server side);
/// `3`: we write N bytes of responses; `4`: the client side reads and writes likewise.
pub fn ring(seg: &Segment, data: &[u8]) {
    // Start from a clean, consistent ring each time (persistent mode reuses the segment).
    for off in [
        offsets::REQ_HEAD,
        offsets::REQ_TAIL,
        offsets::RESP_HEAD,
        offsets::RESP_TAIL,
    ] {
        seg.write_bytes(off, &0u64.to_le_bytes());
    }
    let size = seg.ring_size() as usize;
    let (mut tail, mut head) = (0u64, 0u64);
    let (mut ctail, mut chead) = (0u64, 0u64);
    let mut i = 0;
    let mut buf = vec![0u8; 2 * size];
    while i < data.len() {
        let op = data[i] % 5;
        let arg = u64_at(data, i + 1);
        i += 9;
        let (rx, tx) = seg.rings(Side::Server);
        match op {
            0 => {
                let word = [
                    offsets::REQ_HEAD,
                    offsets::REQ_TAIL,
                    offsets::RESP_HEAD,
                    offsets::RESP_TAIL,
                ][(arg & 3) as usize];
                seg.write_bytes(word, &u64_at(data, i).to_le_bytes());
                i += 8;
            }
            1 => {
                let off = (arg as usize) % size;
                let from = i.min(data.len());
                let n = (data.len() - from).min(size - off).min(64);
                seg.write_bytes(offsets::REQ_DATA + off, &data[from..from + n]);
                i = from + n;
            }
            2 => {
                let want = (arg as usize) % (2 * size) + 1;
                if let Ok(n) = rx.read(&mut tail, &mut buf[..want]) {
                    assert!(
                        n <= want && n <= size,
                        "read {n} of {want} from a {size}-byte ring"
                    );
                }
            }
            3 => {
                let n = (arg as usize) % (2 * size) + 1;
                if let Ok(w) = tx.write(&mut head, &buf[..n]) {
                    assert!(
                        w <= n && w <= size,
                        "wrote {w} of {n} into a {size}-byte ring"
                    );
                }
            }
            _ => {
                let (crx, ctx) = seg.rings(Side::Client);
                let n = (arg as usize) % size + 1;
                if let Ok(r) = crx.read(&mut ctail, &mut buf[..n]) {
                    assert!(r <= n);
                }
                if let Ok(w) = ctx.write(&mut chead, &buf[..n]) {
                    assert!(w <= n);
                }
            }
        }
        // Whatever the words say, what a side may read or write stays within the ring.
        if let Ok(n) = rx.readable(tail) {
            assert!(n <= size);
        }
        if let Ok(n) = tx.writable(head) {
            assert!(n <= size);
        }
    }
}
