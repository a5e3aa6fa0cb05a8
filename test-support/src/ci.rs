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
        &format!("`{tool}` is not installed (Debian package {package}; .ci/run installs it)"),
    )
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `need` for root (`why`: what the test does with it).
pub fn root(why: &str) -> bool {
    need(is_root(), &format!("not root: {why}"))
}
