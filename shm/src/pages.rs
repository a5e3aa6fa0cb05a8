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

/// The bytes of a value, as an address range (no access to them).
fn range_of<T>(v: &T) -> (usize, usize) {
    (std::ptr::from_ref(v) as usize, std::mem::size_of_val(v))
}

/// Locks (with `lock_too`) and leaves out of core dumps the pages holding the value `v` (its
/// inline bytes).
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

/// Locks whole pages in RAM (`mlock`). Fails with the kernel's error when the memory-lock
/// limit is reached.
fn lock_range(start: usize, len: usize) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: [start, start + len) is the set of whole pages containing a live borrowed value
    // (`protect_value`), so every page is mapped. mlock only pins those pages in RAM; it
    // neither reads nor writes them and changes no mapping, so no Rust reference is affected.
    unsafe {
        mlock(start as *mut std::ffi::c_void, len)?;
    }
    Ok(())
}

/// Leaves whole pages out of core dumps (`MADV_DONTDUMP`).
fn dont_dump_range(start: usize, len: usize) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: as in `lock_range`, the range is whole mapped pages of a live allocation; this advice
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
    fn ranges_cover_whole_pages_and_calls_work_on_heap_values() {
        let p = page_size();
        let v = vec![7u8; 3 * p];
        // The byte just before a page boundary, wherever the allocation starts.
        let base = v.as_ptr() as usize;
        let edge = base + p - 1 - (base % p);
        let (s, l) = pages_of_range(edge - 10, 10);
        assert_eq!(s % p, 0);
        assert_eq!(l, p);
        let (_, l) = pages_of_range(edge, 2);
        assert_eq!(l, 2 * p);
        let value = [7u64; 4];
        protect_value(&value, false).unwrap();
        // mlock may be refused by the memory-lock limit; it must not fail otherwise.
        if let Err(e) = protect_value(&value, true) {
            // EPERM, EAGAIN, ENOMEM: the limit, nothing else.
            assert!(matches!(e.raw_os_error(), Some(1 | 11 | 12)), "{e}");
        }
        assert_eq!(value[0], 7, "contents unchanged");
    }
}
