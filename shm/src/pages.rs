//! Page attributes for memory that holds secrets: locked in RAM (never swapped) and left out of
//! core dumps. Here because it needs `unsafe` (the system calls take raw addresses) and this is
//! the one crate allowed it; the callers (the server's key store) stay safe code.
//!
//! Each call marks whole pages: the ones the given bytes touch. Pages stay marked after the
//! bytes are freed (the allocator reuses them, which is harmless), and marking splits the
//! kernel's memory areas, so callers bound how many pages they mark.

use rustix::mm::{Advice, madvise, mlock};

/// The page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The page-aligned range covering `bytes`: (start address, length).
fn pages_of(bytes: &[u8]) -> (usize, usize) {
    pages_of_range(bytes.as_ptr() as usize, bytes.len())
}

/// The bytes of a value, as an address range (no access to them).
fn range_of<T>(v: &T) -> (usize, usize) {
    (std::ptr::from_ref(v) as usize, std::mem::size_of_val(v))
}

/// [`lock`] and [`dont_dump`] for the pages holding the value `v` (its inline bytes).
pub fn protect_value<T>(v: &T, lock_too: bool) -> std::io::Result<()> {
    let (start, len) = range_of(v);
    let (start, len) = pages_of_range(start, len);
    if lock_too {
        lock_range(start, len)?;
    }
    dont_dump_range(start, len)
}

fn pages_of_range(addr: usize, len: usize) -> (usize, usize) {
    let page = page_size();
    let start = addr & !(page - 1);
    let end = (addr + len).div_ceil(page) * page;
    (start, end.max(start + page) - start)
}

/// Locks the pages under `bytes` in RAM (`mlock`). Fails with the kernel's error when the
/// memory-lock limit is reached.
pub fn lock(bytes: &[u8]) -> std::io::Result<()> {
    let (start, len) = pages_of(bytes);
    lock_range(start, len)
}

fn lock_range(start: usize, len: usize) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: [start, start + len) is the set of whole pages containing a live borrowed value
    // or slice (see the callers), so every page is mapped. mlock only pins those pages in RAM; it
    // neither reads nor writes them and changes no mapping, so no Rust reference is affected.
    unsafe {
        mlock(start as *mut std::ffi::c_void, len)?;
    }
    Ok(())
}

/// Leaves the pages under `bytes` out of core dumps (`MADV_DONTDUMP`).
pub fn dont_dump(bytes: &[u8]) -> std::io::Result<()> {
    let (start, len) = pages_of(bytes);
    dont_dump_range(start, len)
}

fn dont_dump_range(start: usize, len: usize) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: as in `lock`, the range is whole mapped pages of a live allocation; this advice
    // only sets a flag on the mapping for the core dumper and never touches the contents.
    unsafe {
        madvise(start as *mut std::ffi::c_void, len, Advice::LinuxDontDump)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_whole_pages_and_calls_work_on_heap_bytes() {
        let p = page_size();
        let v = vec![7u8; 3 * p];
        // The byte just before a page boundary, wherever the allocation starts.
        let edge = p - 1 - (v.as_ptr() as usize % p);
        let (s, l) = pages_of(&v[edge - 10..edge]);
        assert_eq!(s % p, 0);
        assert_eq!(l, p);
        let (_, l) = pages_of(&v[edge..edge + 2]);
        assert_eq!(l, 2 * p);
        dont_dump(&v[..16]).unwrap();
        // mlock may be refused by the memory-lock limit; it must not fail otherwise.
        if let Err(e) = lock(&v[..16]) {
            // EPERM, EAGAIN, ENOMEM: the limit, nothing else.
            assert!(matches!(e.raw_os_error(), Some(1 | 11 | 12)), "{e}");
        }
        protect_value(&v, false).unwrap();
        assert_eq!(v[0], 7, "contents unchanged");
    }
}
