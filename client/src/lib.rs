//! The FerroHSM client library: an async [`Client`] and a [`BlockingClient`] over one
//! connection that pipelines requests, and the `hsmctl` command built on them.
//!
//! ```text
//!  call()/submit() --frame--> writer task --> transport
//!        ^                                        |
//!        +-- oneshot <-- pending[request id] <-- reader task (responses in any order)
//! ```
//! A connection authenticates once (Ed25519 challenge-response on TCP); afterwards any number
//! of tasks may issue requests on it concurrently, up to the server's in-flight window, and
//! each gets its own response whatever order the server answers in. `io.rs` holds the byte
//! work (frame reading and decoding in place, the writer and reader tasks); `connect/` the
//! transports.
//!
//! ```no_run
//! # fn main() -> Result<(), ferrohsm_client::ClientError> {
//! use ferrohsm_client::{BlockingClient, profile::Profile};
//! let profile = Profile::load("hsm-data/clients/default.toml".as_ref())?;
//! let hsm = BlockingClient::connect(&profile, None)?;
//! let key = hsm.generate(&"k1".parse().unwrap(), ferrohsm_proto::KeyType::Ed25519)?;
//! let sig = hsm.sign(&ferrohsm_proto::KeyRef::Id(key.id), b"hello")?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod blocking;
mod client;
pub mod connect;
pub mod error;
mod interop;
mod io;
mod lifecycle;
pub mod pin;
mod pq;
pub mod profile;

pub use blocking::BlockingClient;
pub use client::{Client, Pending};
pub use error::ClientError;
