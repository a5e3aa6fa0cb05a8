//! Replays `fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*` (crash reproducers, kept
//! forever) through a harness, for the regression tests in the default test suite.
#![allow(dead_code)]

use std::path::PathBuf;

/// The fuzz directory, from a crate of the workspace.
fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `f` on every input of `target`; how many there were. A panic names the file.
pub fn each(target: &str, mut f: impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(sub).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert!(sub == "regressions", "no corpus at {}", dir.display());
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files.into_iter().filter(|p| p.is_file()) {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p.display().to_string();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&data)));
            if r.is_err() {
                panic!("fuzz input {name} fails");
            }
            n += 1;
        }
    }
    n
}
