//! Crypto: the algorithms ([`ops`], signatures in [`sign`]) and the bounded worker pool ([`pool`]) the dispatcher runs
//! them on. Nothing here decides policy; it does what it is handed.

pub mod ops;
pub mod pool;
pub mod sign;
