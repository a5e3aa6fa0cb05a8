//! Replays the fuzz corpus and every crash reproducer of the wire-format targets (`fuzz/`)
//! through the same harness AFL runs, so a fixed finding stays fixed.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/harness/proto.rs"]
mod harness;

#[path = "../../fuzz/src/harness/replay.rs"]
mod replay;

#[test]
fn the_frame_decoder_corpus_replays() {
    assert!(replay::each("frame", harness::frame) > 0);
}

#[test]
fn the_request_body_corpus_replays() {
    assert!(replay::each("request", harness::request) > 0);
}

#[test]
fn the_handshake_corpus_replays() {
    assert!(replay::each("handshake", harness::handshake) > 0);
}
