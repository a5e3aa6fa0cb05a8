//! The C ABI: `C_GetFunctionList` and every function it lists. This is the only place that
//! reads or writes the caller's memory; each function turns its pointers into Rust values
//! (checking for null and lengths), calls the safe core, and writes the answer back. Every
//! entry catches panics (a panic answers `CKR_GENERAL_ERROR`, never unwinds into C).
#![allow(unsafe_code)]

mod crypto;
mod ffi;
mod general;
pub(crate) mod interface;
mod objects;
mod unsupported;
mod v3;
mod v32;
