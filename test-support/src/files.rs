//! Files in a test's directories: every file under a directory (with its bytes), a whole tree
//! copied, a path as a command-line argument; bytes as hex and back (what the Python peers
//! print and take).

use std::path::{Path, PathBuf};

/// Every regular file under `dir`, at any depth, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in rd {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every regular file under `dir`, at any depth, with its bytes: `(path relative to dir,
/// bytes)`, sorted by path.
pub fn contents_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p.strip_prefix(dir).expect("a file under dir");
            (name.display().to_string(), bytes)
        })
        .collect()
}

/// `p` as a command-line argument: its UTF-8 text (a panic naming it otherwise, rather than a
/// lossy copy that names some other file).
pub fn utf8(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("not a UTF-8 path: {}", p.display()))
}

/// Copies the tree at `from` to `to` (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let rd = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for e in rd {
        let e = e.expect("directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap_or_else(|err| {
                panic!("{} -> {}: {err}", e.path().display(), target.display())
            });
        }
    }
}

/// Bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex (either case) as bytes; panics on anything else.
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex: {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("not hex: {s:?}")))
        .collect()
}
