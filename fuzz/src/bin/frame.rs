//! AFL target: see `harness/proto.rs`.
#[path = "../harness/proto.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| harness::frame(data));
}
