//! Local files: inputs read before connecting, outputs written whole or not at all.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferrohsm_client::ClientError;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))
}

/// Whether `--out PATH` is this process's stdout: `-`, or a path that leads to the file fd 1
/// is (`/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`, or any other name of it). Writing those
/// through fd 1 keeps the shell's redirection (`>>` appends) and one offset for everything
/// hsmctl prints.
pub(crate) fn is_stdout(path: &Path) -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    if path.as_os_str() == "-" {
        return true;
    }
    let Ok(target) = std::fs::metadata(path) else {
        return false;
    };
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    stdout.is_ok_and(|o| o.dev() == target.dev() && o.ino() == target.ino())
}

/// Where a result goes: decided before connecting ([`check_writable`]) and when writing.
enum Target {
    /// Stdout (fd 1).
    Stdout,
    /// A regular file at this path (a symlink's target when `--out` is a symlink to one):
    /// replaced whole through a temporary file beside it.
    Replace(PathBuf),
    /// A device, FIFO or socket (by its own name or through a symlink): written in place.
    InPlace,
}

fn target(path: &Path) -> Result<Target, ClientError> {
    let refuse = |why: &str| ClientError::Local(format!("cannot write {}: {why}", path.display()));
    if is_stdout(path) {
        return Ok(Target::Stdout);
    }
    let link = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target::Replace(path.to_path_buf()));
        }
        Err(e) => return Err(refuse(&e.to_string())),
        Ok(m) => m,
    };
    let ft = link.file_type();
    if ft.is_file() {
        return Ok(Target::Replace(path.to_path_buf()));
    }
    if ft.is_dir() {
        return Err(refuse("it is a directory"));
    }
    if !ft.is_symlink() {
        return Ok(Target::InPlace);
    }
    // A symlink: by what it leads to (the link itself stays).
    match std::fs::metadata(path) {
        Err(_) => Err(refuse("it is a symlink that leads nowhere")),
        Ok(m) if m.is_dir() => Err(refuse("it leads to a directory")),
        Ok(m) if m.is_file() => std::fs::canonicalize(path)
            .map(Target::Replace)
            .map_err(|e| refuse(&e.to_string())),
        Ok(_) => Ok(Target::InPlace),
    }
}

/// Writes a command's whole result to `path`, once it is all in memory:
/// - stdout (`-`, or a name of fd 1 such as `/dev/stdout`): through fd 1;
/// - a path that does not exist, or a regular file (also through a symlink, which stays): a
///   temporary file beside it, fsynced and renamed over it (0600 for secrets), so a failure
///   leaves no partial output;
/// - anything else (a character device such as `/dev/null`, a FIFO, a socket, or a symlink to
///   one): opened and written in place, never replaced, truncated or fsynced (fsync fails on
///   them, and replacing `/dev/null` with a file would break the machine).
pub(crate) fn write_out(path: &Path, data: &[u8], secret: bool) -> Result<(), ClientError> {
    let err =
        |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", path.display()));
    match target(path)? {
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|_| out.flush()).map_err(err)
        }
        Target::Replace(file) => replace(&file, data, secret).map_err(err),
        Target::InPlace => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .map_err(err),
    }
}

/// Writes a regular file via a temporary file and a rename.
fn replace(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temporary(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)?;
    let res = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The temporary file a regular output is written to before its rename.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".hsmctl-tmp");
    PathBuf::from(tmp)
}

/// Checks, before connecting, that [`write_out`] can write `path`, for commands whose
/// server-side effect cannot be undone when the output is lost (an encapsulation makes a
/// key): what it leads to must exist (but for a new regular file), not be a directory, and,
/// for a regular file, its temporary file must be creatable beside it.
pub(crate) fn check_writable(path: &Path) -> Result<(), ClientError> {
    let Target::Replace(file) = target(path)? else {
        return Ok(());
    };
    let tmp = temporary(&file);
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
