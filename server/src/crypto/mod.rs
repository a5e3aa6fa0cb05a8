//! Crypto: the algorithms ([`ops`], signatures in [`sign`], ML-KEM in [`kem`]) and the bounded worker pool ([`pool`]) the dispatcher runs
//! them on. Nothing here decides policy; it does what it is handed.

pub mod kem;
pub mod ops;
pub mod pool;
pub mod sign;
