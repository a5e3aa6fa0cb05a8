//! The module's configuration: which client profiles become slots, the per-call timeout and
//! the optional PIN of each slot.
//!
//! ```toml
//! profiles = ["clients/alice.toml", "clients/bob.toml"]   # one slot each, relative to this file
//! timeout_ms = 5000                                       # per call to hsmd
//! [pins]                                                  # optional, per client name
//! alice = "$argon2id$v=19$..."                            # from `hsmctl hash-pin`
//! ```
//! Found at `$FERROHSM_PKCS11_CONFIG`, else `~/.config/ferrohsm/pkcs11.toml`, else
//! `/etc/ferrohsm/pkcs11.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_client::pin::PinHash;
use ferrohsm_client::profile::Profile;
use serde::Deserialize;

/// The environment variable naming the configuration file.
pub const ENV: &str = "FERROHSM_PKCS11_CONFIG";
const DEFAULT_TIMEOUT_MS: u64 = 5000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    profiles: Vec<PathBuf>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    pins: BTreeMap<String, String>,
}

/// One slot: a client profile and its PIN, if it has one.
#[derive(Debug)]
pub struct SlotConfig {
    /// The client profile (its name is the token label).
    pub profile: Profile,
    /// The PIN's hash; `None`: no login required.
    pub pin: Option<PinHash>,
}

/// The whole configuration.
#[derive(Debug)]
pub struct ModuleConfig {
    /// Slots in file order (slot ids 0, 1, ...).
    pub slots: Vec<SlotConfig>,
    /// Longest wait for hsmd, per call.
    pub timeout: Duration,
}

/// Where the configuration is: the environment variable, else the user's, else the system's.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(ENV) {
        return Ok(PathBuf::from(p));
    }
    let user = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/ferrohsm/pkcs11.toml"))
        .filter(|p| p.exists());
    let system = PathBuf::from("/etc/ferrohsm/pkcs11.toml");
    match user {
        Some(p) => Ok(p),
        None if system.exists() => Ok(system),
        None => Err(format!(
            "no configuration: set {ENV}, or write ~/.config/ferrohsm/pkcs11.toml or {}",
            system.display()
        )),
    }
}

/// Reads and checks the configuration at `path`: every profile loads, every PIN hash parses
/// and names a configured client.
pub fn load(path: &Path) -> Result<ModuleConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw: Raw = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=3_600_000).contains(&timeout_ms) {
        return Err(format!(
            "{}: timeout_ms = {timeout_ms} is out of range: expected 1 to 3600000",
            path.display()
        ));
    }
    let mut slots = Vec::with_capacity(raw.profiles.len());
    for p in &raw.profiles {
        let full = base.join(p);
        let profile =
            Profile::load(&full).map_err(|e| format!("profile {}: {e}", full.display()))?;
        if slots
            .iter()
            .any(|s: &SlotConfig| s.profile.name == profile.name)
        {
            return Err(format!(
                "{}: client {} is listed twice",
                path.display(),
                profile.name
            ));
        }
        slots.push(SlotConfig { profile, pin: None });
    }
    for (name, phc) in &raw.pins {
        let slot = slots
            .iter_mut()
            .find(|s| s.profile.name == *name)
            .ok_or_else(|| {
                format!(
                    "{}: [pins] names {name}, which is not one of the profiles",
                    path.display()
                )
            })?;
        slot.pin = Some(
            PinHash::parse(phc).map_err(|e| format!("{}: PIN of {name}: {e}", path.display()))?,
        );
    }
    Ok(ModuleConfig {
        slots,
        timeout: Duration::from_millis(timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(profiles: &[&str], config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("clients")).expect("mkdir");
        for name in profiles {
            std::fs::write(
                d.path().join(format!("clients/{name}.toml")),
                format!(
                    "name = \"{name}\"\nauth_key = \"{name}.key\"\n[tcp]\naddr = \"127.0.0.1:1\"\n"
                ),
            )
            .expect("profile");
        }
        std::fs::write(d.path().join("pkcs11.toml"), config).expect("config");
        d
    }

    fn load_in(d: &tempfile::TempDir) -> Result<ModuleConfig, String> {
        load(&d.path().join("pkcs11.toml"))
    }

    #[test]
    fn loads_profiles_relative_to_the_file_with_pins() {
        let phc = ferrohsm_client::pin::hash_pin(b"1234").expect("hash");
        let d = dir_with(
            &["alice", "bob"],
            &format!(
                "profiles = [\"clients/alice.toml\", \"clients/bob.toml\"]\ntimeout_ms = 250\n[pins]\nalice = \"{phc}\"\n"
            ),
        );
        let c = load_in(&d).expect("loads");
        assert_eq!(c.slots.len(), 2);
        assert_eq!(c.slots[0].profile.name, "alice");
        assert!(c.slots[0].pin.as_ref().is_some_and(|p| p.verify(b"1234")));
        assert!(c.slots[1].pin.is_none());
        assert_eq!(c.timeout, Duration::from_millis(250));
    }

    #[test]
    fn refuses_what_it_cannot_use_and_says_why() {
        let cases: &[(&str, &str)] = &[
            ("profiles = [\"clients/nobody.toml\"]\n", "nobody.toml"),
            ("profiles = []\nextra = 1\n", "unknown field"),
            (
                "profiles = [\"clients/alice.toml\"]\ntimeout_ms = 0\n",
                "timeout_ms",
            ),
            (
                "profiles = [\"clients/alice.toml\", \"clients/alice.toml\"]\n",
                "listed twice",
            ),
            (
                "profiles = [\"clients/alice.toml\"]\n[pins]\nbob = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\"\n",
                "not one of the profiles",
            ),
            (
                "profiles = [\"clients/alice.toml\"]\n[pins]\nalice = \"1234\"\n",
                "PHC",
            ),
        ];
        for (config, want) in cases {
            let d = dir_with(&["alice"], config);
            let e = load_in(&d).expect_err(config);
            assert!(e.contains(want), "{config}: {e}");
        }
    }
}
