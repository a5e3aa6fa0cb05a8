//! The key store over one backend handle: the type the format's files each add methods to.

use ed25519_dalek::SigningKey;

use crate::keys::store::backend::Backend;
use crate::keys::store::records::StoreError;

/// The key store over one backend handle. Each store thread owns one (see
/// [`Store::reader`]).
pub struct Store {
    pub(super) db: Box<dyn Backend>,
    // The audit signing key, once unsealed (the writer signs the head at every commit).
    pub(super) audit_key: Option<SigningKey>,
    // Keys opened through this handle (find_open, list_open): what a lookup cost.
    pub(super) opened: u64,
    // Quotas the database counts (set on a store several nodes share; follow.rs).
    pub(super) limits: Option<crate::keys::quota::QuotaLimits>,
    // The change-log position of the last commit through this handle.
    pub(super) noted: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db.describe())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// [`Backend::checkpoint`] on this handle's database (a clean stop).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.db.checkpoint()
    }
}
