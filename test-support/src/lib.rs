//! What every FerroHSM test shares, in one place (not published).
//!
//! - [`bins`]: this build's `hsmd`, `hsmctl`, `hsm-stress` and PKCS#11 module, built on demand
//!   (a test never runs a stale binary left in `target/` by an earlier build).
//! - [`daemon`]: a real `hsmd` process on a data directory made by the real `hsmd init`, started
//!   one way, with a deadline, and retried only when a port turned out to be taken.
//! - [`data`]: a data directory made by `hsmd init` on free ports, and hsmd started on it
//!   (under a wrapper such as `prlimit` too), hsmctl and admin commands run against it.
//! - [`server`]: the server library in this process, for tests that tweak its `Config`.
//! - [`postgres`]: a real, private PostgreSQL cluster (real `initdb`, `postgres` on a free
//!   loopback port, a password-only superuser), for the PostgreSQL key store's tests.
//! - [`peer`]: raw and logged-in streams on every transport, frames read with a deadline, and
//!   [`peer::Ending`], which tells a closed connection from a silent one.
//! - [`status`]: the status of a failed call, of an error frame, of a failed `hsmctl` run, and
//!   the line of a refused `hsmd` command.
//! - [`keys`]: key specs and references, and a check that a client signs correctly.
//! - [`connect`]: connecting once a place is free, why a connection was refused, and whether
//!   a healthy client is still served.
//! - [`certs`]: a data directory's development CA, and client certificates it issues.
//! - [`files`]: every file under a directory (with its bytes), a tree copied, a path as an
//!   argument.
//! - [`memory`]: a live process's memory read through `/proc/PID/mem`, and where secrets
//!   still have copies in it.
//! - [`process`]: a command run to its end under a deadline.
//! - [`python`]: peers from PyPI (pyca/cryptography, python-pkcs11) in a virtual environment
//!   under `target/`, made by the first test that needs them.
//! - [`wait`]: waiting for a condition with a deadline instead of sleeping.
//! - [`ci`]: the one rule for tools and privileges a test may lack: under `CI` (any non-empty
//!   value) a missing one fails the test; elsewhere the test skips with one line on stderr.
//!
//! ```text
//!   test ──> bins (cargo build, once per test process) ──> target/<profile>/{hsmd,hsmctl,...}
//!        ──> daemon::Data (hsmd init) ──> Daemon (hsmd --config) ──> peer / BlockingClient
//! ```
// Test support panics on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod bins;
pub mod certs;
pub mod ci;
pub mod connect;
pub mod daemon;
pub mod data;
pub mod files;
pub mod keys;
pub mod memory;
pub mod peer;
pub mod postgres;
pub mod process;
pub mod python;
pub mod server;
pub mod status;
pub mod wait;

pub use daemon::{Daemon, Ports};
pub use data::Data;
pub use keys::{label, spec};
pub use server::TestServer;
pub use status::{failed, ok, status};
