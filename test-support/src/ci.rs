//! The one rule for what a test needs from the machine (a tool, root): present, the test runs;
//! missing under `CI` (any non-empty value; `.ci/run` sets it and installs the tools), the test
//! fails; missing elsewhere, the test skips with one line on stderr saying why.

use std::process::Command;

/// Whether this run is CI: `CI` set to any non-empty value.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// `have` if the test can run; otherwise a failure under CI, or a one-line skip elsewhere.
/// Call as `if !ci::need(cond, "what is missing") { return; }`.
pub fn need(have: bool, missing: &str) -> bool {
    if have {
        return true;
    }
    assert!(
        !in_ci(),
        "{missing} (CI is set, so this fails rather than skips)"
    );
    eprintln!("SKIPPED: {missing}");
    false
}

/// Whether `tool` is on PATH.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v '{tool}'")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `need` for a command-line tool, naming the Debian package that provides it.
pub fn tool(tool: &str, package: &str) -> bool {
    need(
        on_path(tool),
        &format!("`{tool}` is not installed (Debian package {package})"),
    )
}

/// The capabilities the root-only tests use: CAP_DAC_OVERRIDE (1), CAP_SETUID (7),
/// CAP_IPC_LOCK (14), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
const ROOT_CAPS: u64 = (1 << 1) | (1 << 7) | (1 << 14) | (1 << 19) | (1 << 21);

/// Whether this process is root with root's usual powers: uid 0 and the capabilities the
/// root-only tests use (a container's root may lack some).
pub fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let uid0 = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .is_some_and(|e| e == "0");
    let caps = field("CapEff:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    uid0 && caps & ROOT_CAPS == ROOT_CAPS
}

/// Whether this process reads and writes files whatever their mode says (CAP_DAC_OVERRIDE):
/// a test that makes a file unreadable must then drop to another user to see the refusal.
pub fn ignores_file_modes() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 1) != 0)
}

/// `need` for root (`why`: what the test does with it).
pub fn root(why: &str) -> bool {
    need(
        is_root(),
        &format!(
            "not root with CAP_DAC_OVERRIDE, CAP_SETUID, CAP_IPC_LOCK, CAP_SYS_PTRACE and \
             CAP_SYS_ADMIN: {why}"
        ),
    )
}
