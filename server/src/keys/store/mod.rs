//! The durable key store, in two layers: the format ([`format::Store`]: sealing, row tags,
//! the audit chain, validation, batches) over a backend ([`backend::Backend`]: rows in
//! transactions, ids, indexed lookups; `sqlite/`). docs/storage.md describes the format.
//!
//! Every lookup is scoped by owner: there is no call that reaches another client's keys
//! without naming that client, so isolation does not depend on each caller checking an owner
//! field afterwards.

pub mod backend;
pub mod format;
pub mod postgres;
pub mod records;
pub mod sqlite;

pub use crate::keys::seal::MasterRecord;
pub use format::Store;
pub use records::*;
