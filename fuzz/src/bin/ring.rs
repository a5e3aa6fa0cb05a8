//! AFL target: see `harness/shm.rs`.
#[path = "../harness/shm.rs"]
mod harness;

fn main() {
    let seg = harness::segment();
    afl::fuzz!(|data: &[u8]| harness::ring(&seg, data));
}
