//! AFL target: see `harness/frontend.rs`.
#[path = "../harness/frontend.rs"]
mod harness;

use std::cell::OnceCell;
use std::panic::AssertUnwindSafe;

// The server starts in the first iteration: after AFL's fork server has forked this process
// (threads do not survive a fork). A panic aborts (release profile), so no state is observed
// after one.
fn feed(server: &AssertUnwindSafe<OnceCell<harness::Server>>, data: &[u8]) {
    server.0.get_or_init(harness::Server::start).feed(data);
}

fn main() {
    let server = AssertUnwindSafe(OnceCell::new());
    let server = &server;
    afl::fuzz!(|data: &[u8]| feed(server, data));
}
