//! Local files: inputs read before connecting, outputs written whole or not at all.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferrohsm_client::ClientError;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))
}

/// Writes via a temporary file and a rename, so a failure leaves no partial output file.
pub(crate) fn write_out(path: &Path, data: &[u8], secret: bool) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err =
        |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".hsmctl-tmp");
    let tmp = PathBuf::from(tmp);
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

/// Checks, before connecting, that `write_out` can write `path` (its temporary file can be
/// made beside it), for commands whose server-side effect cannot be undone when the output
/// is lost (an encapsulation makes a key).
pub(crate) fn check_writable(path: &Path) -> Result<(), ClientError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".hsmctl-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ClientError::Local(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(&tmp);
    if path.is_dir() {
        return Err(ClientError::Local(format!(
            "cannot write {}: it is a directory",
            path.display()
        )));
    }
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
