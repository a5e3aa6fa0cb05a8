//! The shared-memory transport: one anonymous, sealed memfd segment per client session, two
//! single-producer/single-consumer byte rings in it, and futex doorbells beside them.
//!
//! This crate moves bytes; it knows nothing of frames or keys. The rings carry the same byte
//! stream a TCP socket would, so the server's session machinery and the protocol decoder work
//! unchanged on top of [`stream::ShmStream`].
//!
//! ```text
//!  client process                         segment (memfd, sealed)                hsmd
//!  ShmStream(Client) --write--> [ request ring  ] --read--> ShmStream(Server) -> session
//!                    <--read--- [ response ring ] <-write--
//!        watcher thread  <-- futex: client bell --   -- futex: server bell -->  watcher thread
//!  set-up: Unix socket (peer credentials, handshake, memfd passed with SCM_RIGHTS), kept open
//!  as the liveness signal
//! ```
//! The only crate of the workspace with `unsafe` code: mapping the segment and viewing parts of
//! it as atomics and byte ranges. Every block says why it is sound. Each side treats the shared
//! region as hostile: indices are checked before use, bytes are copied out before anything
//! interprets them, waits have timeouts, and the memfd is sealed so the mapping cannot shrink.
//! No lock of any kind lives in shared memory.

pub mod doorbell;
mod error;
pub mod handoff;
pub mod pages;
pub mod ring;
pub mod segment;
pub mod stream;

pub use error::ShmError;
pub use segment::{Segment, Side};
pub use stream::{ShmReader, ShmStream, ShmWriter, Waiting};
