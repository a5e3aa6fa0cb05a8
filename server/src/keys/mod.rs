//! Keys: material (zeroizing secrets), the storage trait, policy, and the key-manager actor.

pub mod manager;
pub mod material;
pub mod policy;
pub mod store;
