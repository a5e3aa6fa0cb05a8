//! Replays the `ring` fuzz target's corpus and crash reproducers (`fuzz/`).
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/harness/shm.rs"]
mod harness;

#[path = "../../fuzz/src/harness/replay.rs"]
mod replay;

#[test]
fn the_ring_corpus_replays() {
    let seg = harness::segment();
    assert!(replay::each("ring", |d| harness::ring(&seg, d)) > 0);
}
