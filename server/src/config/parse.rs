//! Reading a number or a file name from the configuration.

use std::path::{Path, PathBuf};

/// `v`, which must be positive when given, else `default`; the error names `key`.
pub(super) fn positive<T: PartialOrd + Default + Copy>(
    v: Option<T>,
    default: T,
    key: &str,
) -> Result<T, String> {
    match v {
        Some(v) if v <= T::default() => Err(format!("{key}: expected a positive number")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// Resolves `p` against the config directory and checks that it exists.
pub(super) fn existing(dir: &Path, p: PathBuf, key: &str) -> Result<PathBuf, String> {
    let full = dir.join(p);
    match std::fs::metadata(&full) {
        Ok(_) => Ok(full),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{key}: {} does not exist", full.display()))
        }
        Err(e) => Err(format!("{key}: cannot read {}: {e}", full.display())),
    }
}
