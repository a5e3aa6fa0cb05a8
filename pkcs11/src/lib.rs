//! `libferrohsm_pkcs11.so`: a PKCS#11 module whose keys stay in hsmd.
//!
//! Every configured client profile is a slot; its token is that client's key namespace.
//! The module holds no key: each session opens its own connection to hsmd (on first use,
//! over the profile's default transport) and every key operation is a request there.
//!
//! ```text
//!  abi/ (C ABI: pointers in and out, panics caught; the 2.40, 3.0 and 3.2 function lists)
//!    -> token.rs (login, search, attributes)  keygen.rs (keys from templates)
//!       ops.rs (sign, crypt, digest)  kem.rs (ML-KEM encapsulate, decapsulate)
//!      -> module.rs (slots, sessions, each session's connection; fork and timeouts)
//!        -> ferrohsm-client -> hsmd
//!  object.rs (keys as objects, attributes)  encoding.rs (EC and signature encodings)
//!  mech.rs (mechanisms)  config.rs (which profiles, timeout, PINs)
//! ```
#![deny(unsafe_code)]

mod abi;
pub mod config;
pub mod encoding;
mod kem;
mod keygen;
mod mech;
mod module;
mod object;
mod ops;
mod session_ops;
mod token;

pub use abi::interface::C_GetFunctionList;
