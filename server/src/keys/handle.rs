//! An authorized key: what the cache, a session's keys and a crypto job hold.

use std::sync::Arc;

use ferrohsm_proto::KeyInfo;

use super::material::KeyMaterial;

/// An authorized key: its description and its opened material, shared by the cache and any
/// crypto job using it; the material zeroizes when the last holder drops it.
pub struct KeyHandle {
    /// Owning client.
    pub owner: Arc<str>,
    /// Public description (id, label, type, usage, exportable, lifetime, created, origin,
    /// versions).
    pub info: KeyInfo,
    /// The current version's secret.
    pub material: KeyMaterial,
    /// Older versions that are not retired, newest first.
    pub older: Vec<(u32, KeyMaterial)>,
}

impl KeyHandle {
    /// The material of version `v`, unless it is retired (or never existed).
    pub fn version(&self, v: u32) -> Option<&KeyMaterial> {
        if v == self.info.current_version {
            return Some(&self.material);
        }
        self.older.iter().find(|(n, _)| *n == v).map(|(_, m)| m)
    }

    /// Every version with material, newest first.
    pub fn live(&self) -> impl Iterator<Item = (u32, &KeyMaterial)> {
        std::iter::once((self.info.current_version, &self.material))
            .chain(self.older.iter().map(|(v, m)| (*v, m)))
    }
}

impl std::fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHandle")
            .field("owner", &self.owner)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
