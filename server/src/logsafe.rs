//! Peer-supplied strings in the log: escaped and cut, and failure lines rate-limited per
//! source, so a peer can neither forge log lines (newlines, ANSI escapes) nor flood the log.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most characters of a peer-supplied string that reach the log.
pub const MAX_LOGGED: usize = 64;

/// A peer-supplied string as the log shows it: at most [`MAX_LOGGED`] characters, every
/// control, non-ASCII, quote or backslash character escaped (`\n`, `\u{1b}`), then how much
/// was cut.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = 0;
        for c in self.0.chars().take(MAX_LOGGED) {
            shown += c.len_utf8();
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                write!(f, "{c}")?;
            } else {
                write!(f, "{}", c.escape_default())?;
            }
        }
        if shown < self.0.len() {
            write!(f, "...({} more bytes)", self.0.len() - shown)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Lines of one kind from one source per window, at most.
const BURST: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);
/// Sources remembered at once; beyond this the table starts over (a flood of sources gets
/// at most `BURST` lines each per reset, which is itself bounded by the reset rate).
const SOURCES: usize = 4096;

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

fn table() -> &'static Mutex<HashMap<(&'static str, String), Window>> {
    static T: OnceLock<Mutex<HashMap<(&'static str, String), Window>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether a line of `kind` from `source` may be logged now, and how many were held back
/// since the last one that was.
pub fn allow(kind: &'static str, source: &str) -> Option<u64> {
    let now = Instant::now();
    let mut t = table().lock();
    if t.len() >= SOURCES && !t.contains_key(&(kind, source.to_string())) {
        t.retain(|_, w| now.duration_since(w.start) < WINDOW);
        if t.len() >= SOURCES {
            t.clear();
        }
    }
    let w = t.entry((kind, source.to_string())).or_insert(Window {
        start: now,
        lines: 0,
        suppressed: 0,
    });
    if now.duration_since(w.start) >= WINDOW {
        w.start = now;
        w.lines = 0;
    }
    if w.lines >= BURST {
        w.suppressed += 1;
        return None;
    }
    w.lines += 1;
    Some(std::mem::take(&mut w.suppressed))
}

/// The source part of a session's peer name, for rate limits: the address without its port
/// (`tcp:127.0.0.1`), or the uid of a Unix peer (`uid=1000`).
pub fn source_of(peer: &str) -> &str {
    if let Some((_, uid)) = peer.rsplit_once(",uid=") {
        return uid;
    }
    peer.rsplit_once(':').map_or(peer, |(head, _)| head)
}

/// Logs `message` (info) about `source`, rate-limited per (kind, source).
pub fn limited(kind: &'static str, source: &str, message: fmt::Arguments<'_>) {
    if let Some(held_back) = allow(kind, source) {
        if held_back > 0 {
            tracing::info!(source = %Escaped(source), held_back, "{message} (similar lines were held back)");
        } else {
            tracing::info!(source = %Escaped(source), "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cuts_and_limits() {
        let forged = "alice\nINFO hsmd: fake line\u{1b}[31m";
        let shown = Escaped(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(
            shown.contains("\\n") && shown.contains("\\u{1b}"),
            "{shown}"
        );
        let long = "x".repeat(400_000);
        let shown = Escaped(&long).to_string();
        assert!(shown.len() < 100, "{}", shown.len());
        assert!(shown.ends_with(&format!("...({} more bytes)", 400_000 - MAX_LOGGED)));
        let mut allowed = 0;
        for _ in 0..100 {
            allowed += usize::from(allow("test", "10.9.9.9").is_some());
        }
        assert_eq!(allowed, BURST as usize);
        // Another source has its own allowance.
        assert_eq!(allow("test", "10.9.9.8"), Some(0));
    }
}
