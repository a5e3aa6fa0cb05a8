//! Local files: inputs read before connecting, outputs written whole or not at all.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferrohsm_client::ClientError;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))
}

/// `--out -`: the result goes to stdout.
pub(crate) fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Writes a command's whole result to `path`, once it is all in memory:
/// - `-`: to stdout;
/// - a path that does not exist, or a regular file: through a temporary file beside it,
///   fsynced and renamed over it, so a failure leaves no partial output;
/// - anything else (a symlink such as `/dev/stdout`, a character device such as `/dev/null`,
///   a FIFO, a socket): opened and written in place, never replaced and never fsynced
///   (fsync fails on them, and replacing `/dev/null` with a file would break the machine).
pub(crate) fn write_out(path: &Path, data: &[u8], secret: bool) -> Result<(), ClientError> {
    let err =
        |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", path.display()));
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        return out.write_all(data).and_then(|_| out.flush()).map_err(err);
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => replace(path, data, secret),
        Ok(m) if m.file_type().is_file() => replace(path, data, secret),
        Ok(m) if m.file_type().is_dir() => Err(ClientError::Local(format!(
            "cannot write {}: it is a directory",
            path.display()
        ))),
        Ok(_) => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Writes a regular file via a temporary file and a rename.
fn replace(path: &Path, data: &[u8], secret: bool) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err =
        |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", path.display()));
    let tmp = temporary(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    let res = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// The temporary file a regular output is written to before its rename.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".hsmctl-tmp");
    PathBuf::from(tmp)
}

/// Checks, before connecting, that [`write_out`] can write `path`, for commands whose
/// server-side effect cannot be undone when the output is lost (an encapsulation makes a
/// key): stdout and existing non-regular files (devices, FIFOs, symlinks) are written in
/// place; for a regular file, its temporary file must be creatable beside it.
pub(crate) fn check_writable(path: &Path) -> Result<(), ClientError> {
    if is_stdout(path) {
        return Ok(());
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            return Err(ClientError::Local(format!(
                "cannot write {}: it is a directory",
                path.display()
            )));
        }
        Ok(m) if !m.file_type().is_file() => return Ok(()),
        _ => {}
    }
    let tmp = temporary(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ClientError::Local(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Reads `input` (before connecting), runs `op` on it, writes the result to `out`.
pub(crate) async fn file_to_file<T: AsRef<[u8]>>(
    input: &Path,
    out: &Path,
    secret: bool,
    op: impl AsyncFnOnce(Vec<u8>) -> Result<T, ClientError>,
) -> Result<String, ClientError> {
    let result = op(read(input)?).await?;
    write_out(out, result.as_ref(), secret)?;
    Ok(String::new())
}

/// Reads two inputs (data and a signature or MAC), then runs `op` on them.
pub(crate) async fn two_files(
    input: &Path,
    other: &Path,
    op: impl AsyncFnOnce(Vec<u8>, Vec<u8>) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let (data, other) = (read(input)?, read(other)?);
    op(data, other).await
}
