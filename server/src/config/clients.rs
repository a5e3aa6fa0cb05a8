//! `[clients.NAME]`: who may connect, and what proves it.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::parse::existing;
use super::raw::RawClient;

/// One configured client.
#[derive(Clone)]
pub struct ClientConfig {
    /// Ed25519 public key that proves the client's name on TCP (and shm); `None`: the client
    /// may only use TLS.
    pub auth_key: Option<VerifyingKey>,
    /// Certificate names (subject CN or DNS SAN) that identify this client.
    pub tls_names: Vec<String>,
    /// PSK identity and key, if the client may use TLS-PSK.
    pub psk: Option<(String, ferrohsm_tls::psk::Psk)>,
    /// Unix uids allowed to use this client over shared memory (`None`: any).
    pub allowed_uids: Option<Vec<u32>>,
    /// Wrap keys (labels or ids) trusted to wrap this client's non-exportable keys.
    pub trusted_wrap_keys: Vec<ferrohsm_proto::KeyRef>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("auth_key", &self.auth_key)
            .field("tls_names", &self.tls_names)
            .field("psk_identity", &self.psk.as_ref().map(|(id, _)| id))
            .field("allowed_uids", &self.allowed_uids)
            .field("trusted_wrap_keys", &self.trusted_wrap_keys)
            .finish()
    }
}

/// Validates every `[clients.NAME]` section; errors name the client and key.
pub(super) fn parse(
    raw: BTreeMap<String, RawClient>,
    dir: &Path,
) -> Result<BTreeMap<String, ClientConfig>, String> {
    let mut out = BTreeMap::new();
    for (name, rc) in raw {
        let at = |key: &str, m: String| format!("clients.{name}.{key}: {m}");
        validate_client_name(&name).map_err(|m| format!("clients.{name}: {m}"))?;
        let auth_key = match &rc.auth_public_key {
            Some(k) => Some(parse_public_key(k).map_err(|m| at("auth_public_key", m))?),
            None => None,
        };
        let psk = match rc.psk_file {
            Some(f) => {
                let f = existing(dir, f, &format!("clients.{name}.psk_file"))?;
                let key =
                    ferrohsm_tls::psk::load_psk(&f).map_err(|e| at("psk_file", e.to_string()))?;
                Some((rc.psk_identity.unwrap_or_else(|| name.clone()), key))
            }
            None => None,
        };
        let tls_names = rc.tls_names.unwrap_or_else(|| vec![name.clone()]);
        let trusted_wrap_keys = rc
            .trusted_wrap_keys
            .unwrap_or_default()
            .iter()
            .map(|k| match k.parse::<ferrohsm_proto::KeyRef>() {
                Ok(r) if r.owner().is_none() => Ok(r),
                _ => Err(at(
                    "trusted_wrap_keys",
                    format!("{k:?} is not a label or id of one of {name}'s keys"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(
            name,
            ClientConfig {
                auth_key,
                tls_names,
                psk,
                allowed_uids: rc.allowed_uids,
                trusted_wrap_keys,
            },
        );
    }
    Ok(out)
}

/// No certificate name or PSK identity may mean two clients.
pub(super) fn check_unique(clients: &BTreeMap<String, ClientConfig>) -> Result<(), String> {
    let mut names = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    for (client, cc) in clients {
        for n in &cc.tls_names {
            if let Some(other) = names.insert(n.as_str(), client) {
                return Err(format!(
                    "tls name {n:?} is claimed by clients {other} and {client}"
                ));
            }
        }
        if let Some((id, _)) = &cc.psk
            && let Some(other) = ids.insert(id.as_str(), client)
        {
            return Err(format!(
                "psk identity {id:?} is claimed by clients {other} and {client}"
            ));
        }
    }
    Ok(())
}

/// Client names follow the label rule: `[A-Za-z][A-Za-z0-9._-]{0,63}`.
pub fn validate_client_name(name: &str) -> Result<(), String> {
    name.parse::<ferrohsm_proto::Label>()
        .map(|_| ())
        .map_err(|_| {
            format!(
                "invalid client name {name:?}: expected a letter then up to 63 of [A-Za-z0-9._-]"
            )
        })
}

fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let bytes = decode_hex(hex.trim()).ok_or("expected 64 hex digits")?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "expected 64 hex digits (32 bytes)")?;
    VerifyingKey::from_bytes(&arr).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// Lowercase or uppercase hex to bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Bytes to lowercase hex.
pub fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
