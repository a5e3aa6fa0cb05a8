//! What is left in a process's memory: every readable, writable mapping of a live process
//! (heap, thread stacks, anonymous and shared memory), read through `/proc/PID/mem`, searched
//! for secrets. Reading another process's memory needs root (CAP_SYS_PTRACE: hsmd makes itself
//! undumpable), so the tests that use this ask [`crate::ci::root`] first.

use std::io::{Read, Seek, SeekFrom};

/// One mapping: its `/proc/PID/maps` line and its bytes.
pub type Region = (String, Vec<u8>);

/// The `[start, end)` addresses and permissions of a `/proc/PID/maps` line.
fn mapping(line: &str) -> (u64, u64, &str) {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    let (a, b) = range
        .split_once('-')
        .unwrap_or_else(|| panic!("a maps line without a range: {line}"));
    let hex = |x: &str| u64::from_str_radix(x, 16).unwrap_or_else(|e| panic!("{line}: {e}"));
    (hex(a), hex(b), perms)
}

/// Whether a mapping is one the scan must read: the heap, a thread stack, or anonymous
/// memory (where the allocator and the threads keep everything a request touched).
fn matters(line: &str) -> bool {
    let path = line.split_whitespace().nth(5);
    matches!(path, None | Some("[heap]")) || path.is_some_and(|p| p.starts_with("[stack"))
}

/// Every readable, writable mapping of `pid` (heap, stacks, anonymous memory), read whole.
/// `None` when the kernel refuses (not root, no CAP_SYS_PTRACE over a non-dumpable process).
/// A mapping that cannot be read fails the scan, naming it, unless it was unmapped while the
/// scan ran (a thread ended, an allocation was freed); at least one heap or anonymous mapping
/// must have been read.
pub fn memory(pid: u32) -> Option<Vec<Region>> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).ok()?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for line in maps.lines() {
        let (a, b, perms) = mapping(line);
        if !perms.starts_with("rw") {
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        match mem
            .seek(SeekFrom::Start(a))
            .and_then(|_| mem.read_exact(&mut buf))
        {
            Ok(()) => out.push((line.to_string(), buf)),
            Err(e) => unreadable.push((line.to_string(), e)),
        }
    }
    // A mapping still there, at the same place, after its read failed: unreadable.
    if !unreadable.is_empty() {
        let now = std::fs::read_to_string(&maps_path).expect("hsmd's maps");
        let still: Vec<String> = unreadable
            .iter()
            .filter(|(line, _)| now.lines().any(|l| mapping(l).0 == mapping(line).0))
            .map(|(line, e)| format!("{line}: {e}"))
            .collect();
        assert!(
            still.is_empty(),
            "the scan could not read {} of hsmd's mappings: {still:#?}",
            still.len()
        );
    }
    assert!(
        out.iter().any(|(line, _)| matters(line)),
        "the scan read no heap or anonymous mapping of hsmd; read: {:#?}",
        out.iter().map(|(l, _)| l).collect::<Vec<_>>()
    );
    Some(out)
}

/// Where `needle` is: each copy as (mapping, bytes below the mapping's top: the depth on a
/// thread stack).
pub fn copies(regions: &[Region], needle: &[u8]) -> Vec<(String, usize)> {
    let find = memchr::memmem::Finder::new(needle);
    let mut out = Vec::new();
    for (line, r) in regions {
        for off in find.find_iter(r) {
            out.push((line.clone(), r.len() - off));
        }
    }
    out
}

/// Where each secret still has a copy in `pid`'s memory, one line each.
pub fn leftovers<K>(pid: u32, secrets: &[(String, Vec<u8>, K)]) -> Vec<String> {
    let regions = memory(pid).expect("hsmd's memory is readable");
    // Each copy left names its mapping and its depth below the mapping's top (on a thread
    // stack, how deep the frame that left it was).
    secrets
        .iter()
        .flat_map(|(n, b, _)| copies(&regions, b).into_iter().map(move |c| (n, c)))
        .map(|(n, (line, depth))| format!("{n}: {depth} bytes below the top of {line}"))
        .collect()
}
