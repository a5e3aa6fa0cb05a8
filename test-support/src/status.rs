//! The status of what failed: a client call, an error frame, an `hsmctl` run, an `hsmd`
//! command refused.

use std::process::Output;

use ferrohsm_client::ClientError;
use ferrohsm_proto::message::decode_error;
use ferrohsm_proto::{Frame, Status};

/// The server status of a call that must fail (a panic if it succeeded, or failed without a
/// status: a lost connection is not a refusal).
pub fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Status {
    status_and_message(r).0
}

/// Like [`status`], with the server's message.
pub fn status_and_message<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Status, String) {
    match r {
        Err(e) => {
            let s = e
                .status()
                .unwrap_or_else(|| panic!("no server status in {e:?}"));
            (s, e.to_string())
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The status of an error frame.
pub fn status_of(f: &Frame) -> Status {
    assert!(f.header.is_error(), "expected an error frame, got {f:?}");
    decode_error(f.header.opcode, &f.body)
        .expect("error body")
        .status()
        .expect("known status")
}

/// The message of an error frame.
pub fn message_of(f: &Frame) -> String {
    assert!(f.header.is_error(), "expected an error frame, got {f:?}");
    decode_error(f.header.opcode, &f.body)
        .expect("error body")
        .message
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stdout of a command that must succeed.
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "expected success: {}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The status name of a failed `hsmctl` run, which must exit 1 (the server answered with an
/// error) and write one line `hsmctl: <status> (<code>): <message>` that agrees with the code.
pub fn failed(o: &Output) -> String {
    let (name, _) = failed_with_message(o);
    name
}

/// Like [`failed`], with the message.
pub fn failed_with_message(o: &Output) -> (String, String) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a server error: {}",
        text(o)
    );
    assert!(
        o.stdout.is_empty(),
        "a failed run wrote to stdout: {}",
        text(o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "one error line: {}", text(o));
    let rest = line
        .strip_prefix("hsmctl: ")
        .unwrap_or_else(|| panic!("no `hsmctl: ` prefix: {}", text(o)));
    let (name, rest) = rest
        .split_once(" (")
        .unwrap_or_else(|| panic!("no status code: {}", text(o)));
    let (code, message) = rest
        .split_once("): ")
        .unwrap_or_else(|| panic!("no message: {}", text(o)));
    let code: u16 = code
        .parse()
        .unwrap_or_else(|_| panic!("status code {code:?} is not a number: {}", text(o)));
    let status =
        Status::from_code(code).unwrap_or_else(|| panic!("unknown status {code}: {}", text(o)));
    assert_eq!(
        status.name(),
        name,
        "status name and code disagree: {}",
        text(o)
    );
    (name.to_string(), message.to_string())
}

/// The one stderr line of an `hsmd` run that was refused: exit 1, nothing on stdout, one line
/// on stderr (what an operator reads).
pub fn refused(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {}", text(o));
    assert!(o.stdout.is_empty(), "a refusal printed: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "one error line: {}", text(o));
    line.to_string()
}

/// Asserts that an `hsmctl` run failed with `want` (a status name such as `not_found`).
pub fn assert_failed(o: &Output, want: &str) {
    assert_eq!(failed(o), want, "{}", text(o));
}

/// Asserts the exit code of a command (2 usage, 3 connection), with its output on failure.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
}
