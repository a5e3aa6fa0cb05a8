//! This build's binaries. The first call in a test process runs `cargo build` for the
//! workspace's binaries and libraries, in the profile and target directory of the running test
//! executable, so a test never runs a binary left over from an earlier build: after
//! `cargo test --workspace` built everything it is a quick no-op; after a change to the server,
//! `cargo test -p ferrohsm-client` rebuilds `hsmd` before the first test uses it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// `target/<profile>` of the running test executable (`target/<profile>/deps/NAME-HASH`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("test executable's directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("build dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Where the running test's build lives, in the terms cargo's flags use.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The target directory (`--target-dir`).
    pub target_dir: PathBuf,
    /// The `--target` triple, if the build had one.
    pub triple: Option<String>,
    /// The profile's directory under it: `debug` for the dev profile, else the profile's name.
    pub profile_dir: String,
}

/// The layout of the running test's build: `target/<profile>`, or `target/<triple>/<profile>`
/// for a build with `--target` (cargo marks the target directory itself with CACHEDIR.TAG).
pub fn layout() -> Layout {
    let dir = build_dir();
    let profile_dir = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dir.parent().expect("target dir");
    let (target_dir, triple) = if parent.join("CACHEDIR.TAG").exists() {
        (parent, None)
    } else {
        let root = parent.parent().expect("target dir");
        (root, parent.file_name())
    };
    Layout {
        target_dir: target_dir.to_path_buf(),
        triple: triple.map(|t| t.to_string_lossy().into_owned()),
        profile_dir,
    }
}

/// The cargo that runs this test (`$CARGO`), as a command of its own: without what cargo set
/// for this test process, which describes the test's package. Left in place it would make a
/// build's fingerprints differ from the one the developer runs, and each would rebuild what the
/// other built.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.env("CARGO_TERM_COLOR", "never");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_EXE_")
            || k.starts_with("CARGO_CRATE_")
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "LD_LIBRARY_PATH"
        {
            c.env_remove(k.as_ref());
        }
    }
    c
}

/// How long the build of the binaries may take.
const BUILD_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Builds the workspace's binaries once per process; the error is cargo's output.
fn built() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let Layout {
            target_dir,
            triple,
            profile_dir: profile,
        } = layout();
        let mut c = cargo();
        c.args(["build", "--workspace", "--bins", "--lib"])
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(triple) = triple {
            c.arg("--target").arg(triple);
        }
        if locked() {
            c.arg("--locked");
        }
        match profile.as_str() {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            other => {
                c.args(["--profile", other]);
            }
        }
        // Generous: a cold build of the workspace on 2 cores, or waiting for another cargo's
        // lock; never forever.
        let o = crate::process::output_within(&mut c, BUILD_DEADLINE);
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo build of the workspace's binaries failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    })
}

/// Whether the test build was `--locked` cannot be seen from here; a committed Cargo.lock is
/// the rule, so the rebuild never changes it.
fn locked() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .is_some_and(|root| root.join("Cargo.lock").exists())
}

/// The path of an artifact of this build, after building it if needed.
pub fn artifact(name: &str) -> PathBuf {
    if let Err(e) = built() {
        panic!("{e}");
    }
    let p = build_dir().join(name);
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// `hsmd` of this build.
pub fn hsmd() -> PathBuf {
    artifact("hsmd")
}

/// `hsmctl` of this build.
pub fn hsmctl() -> PathBuf {
    artifact("hsmctl")
}

/// `hsm-stress` of this build.
pub fn hsm_stress() -> PathBuf {
    artifact("hsm-stress")
}

/// The PKCS#11 module of this build.
pub fn pkcs11_module() -> PathBuf {
    artifact("libferrohsm_pkcs11.so")
}
