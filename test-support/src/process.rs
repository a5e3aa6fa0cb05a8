//! Running a command to its end under a deadline: killed, and the test failed, when it does
//! not finish in time.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs a command to its end within `within` (killed and a failure otherwise), with no stdin.
pub fn output_within(c: &mut Command, within: Duration) -> Output {
    run_within(c, None, within)
}

/// Like [`output_within`], with `input` on the command's stdin.
pub fn output_with_stdin(c: &mut Command, input: &[u8], within: Duration) -> Output {
    run_within(c, Some(input), within)
}

fn run_within(c: &mut Command, input: Option<&[u8]>, within: Duration) -> Output {
    let mut child = c
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
    if let Some(input) = input {
        // Written on its own thread, under the deadline: a command that does not read its
        // input must not block the test. Dropped after the write: the command sees the end.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(o) => o.unwrap_or_else(|e| panic!("{c:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{c:?} did not finish within {within:?}");
        }
    }
}
