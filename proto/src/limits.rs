//! The protocol's version and its fixed limits.

/// Protocol version spoken by this crate (header byte and handshake field).
pub const PROTOCOL_VERSION: u8 = 1;
/// Default cap on a frame body; either side may configure a smaller or larger one.
pub const DEFAULT_MAX_BODY: u32 = 1024 * 1024;
/// Largest `random` request, in bytes.
pub const MAX_RANDOM: u32 = 65536;

/// The most bytes an ML-DSA context string may have (FIPS 204).
pub const MAX_CONTEXT: usize = 255;
