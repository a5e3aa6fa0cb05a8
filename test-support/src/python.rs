//! Peers from PyPI, implementations nobody here wrote: pyca/cryptography (51 or later: ML-DSA and
//! ML-KEM besides the classic curves), its published test vectors (`cryptography_vectors`: the
//! FIPS 203/204 known answers), python-pkcs11, and Prometheus' own client library (its parser
//! of the text exposition format), in a virtual environment under the
//! build directory (`target/<profile>/peers-venv`). The first test that needs it makes it
//! (`python3 -m venv`, then `pip install`); later tests and runs reuse it. Missing Python or an
//! unreachable package index follows the one rule of [`crate::ci`]: a failure under CI, a skip
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::output_within;

/// The packages, as pip takes them.
const PACKAGES: [&str; 4] = [
    "cryptography>=51",
    "cryptography_vectors>=46",
    "python-pkcs11>=0.9",
    "prometheus_client>=0.20",
];

/// What proves the environment is whole: every module the tests import.
const PROBE: &str = "import pkcs11, cryptography_vectors, prometheus_client.parser\n\
                     from cryptography.hazmat.primitives.asymmetric import ed25519, ec, mldsa, mlkem\n";

/// How long making the environment may take (a cold `pip install` downloads two wheels).
const MAKE_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// How long one script may run.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn venv() -> PathBuf {
    crate::bins::build_dir().join("peers-venv")
}

fn works(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", PROBE])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Makes the environment in a directory of its own, then renames it into place, so that test
/// processes running side by side never see half of one.
fn make(dir: &Path) -> Result<(), String> {
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |c: &mut Command, what: &str| -> Result<(), String> {
        let o = output_within(c, MAKE_DEADLINE);
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "python3 -m venv (Debian packages python3, python3-venv)",
    )?;
    run(
        Command::new(tmp.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES),
        &format!("pip install {}", PACKAGES.join(" ")),
    )?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another test process finished first: use its environment.
        Err(_) if works(&dir.join("bin/python")) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(format!("cannot move the environment into place: {e}")),
    }
}

/// The environment's `python`, made on first use; `Err` says what is missing.
fn python() -> &'static Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let dir = venv();
        let python = dir.join("bin/python");
        if works(&python) {
            return Ok(python);
        }
        // A broken or outdated environment is made again.
        let _ = std::fs::remove_dir_all(&dir);
        make(&dir)?;
        if works(&python) {
            Ok(python)
        } else {
            Err(format!("{} lacks {}", dir.display(), PACKAGES.join(", ")))
        }
    })
}

/// The peers' `python` if the test can run (see [`crate::ci::need`]):
/// `let Some(py) = python::peers() else { return };`.
pub fn peers() -> Option<&'static Path> {
    match python() {
        Ok(p) => Some(p.as_path()),
        Err(why) => {
            crate::ci::need(false, &format!("the Python peers are missing: {why}"));
            None
        }
    }
}

/// Runs `script` with the peers' `python` in `cwd`, with `args` after it (`sys.argv[1:]`);
/// panics with its output unless it exits 0. Its standard output.
pub fn run(python: &Path, script: &str, args: &[&str], cwd: &Path) -> String {
    let o: Output = output_within(
        Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .current_dir(cwd),
        RUN_DEADLINE,
    );
    assert!(
        o.status.success(),
        "python peer failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
