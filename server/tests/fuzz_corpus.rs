//! Replays the `frontend` fuzz target's corpus and crash reproducers (`fuzz/`) against a real
//! server, through the same harness AFL runs.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/harness/frontend.rs"]
mod harness;

#[path = "../../fuzz/src/harness/replay.rs"]
mod replay;

#[test]
fn the_front_end_corpus_replays() {
    let server = harness::Server::start();
    let mut answers = 0;
    assert!(replay::each("frontend", |d| answers += server.feed(d)) > 0);
    // The seeds alone are answered with dozens of frames: the inputs reached the server.
    assert!(answers > 20, "only {answers} answers");
}
