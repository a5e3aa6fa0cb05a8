//! AFL target: see `harness/frontend.rs`.
#[path = "../harness/frontend.rs"]
mod harness;

fn main() {
    let server = harness::Server::start();
    afl::fuzz!(|data: &[u8]| server.feed(data));
}
