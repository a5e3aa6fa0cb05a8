//! Wrapped key blobs: a key's material and its whole record, sealed under a wrap key, in a
//! self-describing file that any `hsmd` holding the same wrap key can unwrap.
//!
//! ```text
//!  "FHSMWRAP" | format (1) | meta length (u32 LE) | meta (JSON, readable) | ciphertext
//!  meta       = {type, label, usage, exportable, origin, created, owner, id,
//!                current_version, versions: [{version, created, retired}]}
//!  ciphertext = the wrap key's AEAD ciphertext (format 2: it names the wrap key's version)
//!               of every live version's material: (version u32 LE, length u32 LE, bytes)...
//!               with everything before it as associated data
//! ```
//! So the record travels in the clear but cannot be changed (a wider usage, `exportable`
//! flipped), and the material only ever leaves sealed.

use ferrohsm_proto::{KeyType, Origin, Status, Usage, UsageSet};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::ops;
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::material::KeyMaterial;
use crate::keys::store::NewVersion;

const MAGIC: &[u8; 8] = b"FHSMWRAP";
const FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    #[serde(rename = "type")]
    key_type: String,
    label: String,
    usage: Vec<String>,
    exportable: bool,
    origin: String,
    created: u64,
    owner: String,
    id: u32,
    current_version: u32,
    versions: Vec<MetaVersion>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaVersion {
    version: u32,
    created: u64,
    retired: bool,
}

/// What a blob holds, opened (its `Debug` prints no secret: key material never does).
#[derive(Debug)]
pub struct Opened {
    /// Type.
    pub key_type: KeyType,
    /// Usage as recorded.
    pub usage: UsageSet,
    /// Exportable as recorded.
    pub exportable: bool,
    /// Origin of the wrapped key (the new key's origin is `unwrapped`).
    pub origin: Origin,
    /// Versions, oldest first, with creation times; retired ones have no material.
    pub versions: Vec<NewVersion>,
}

fn malformed(why: &str) -> OpError {
    OpError::invalid(format!("not a FerroHSM wrapped key blob: {why}"))
}

/// Seals `target` (material and record) under `wrapper`'s current version.
pub fn seal(wrapper: &KeyHandle, target: &KeyHandle) -> Result<Vec<u8>, OpError> {
    let i = &target.info;
    let meta = Meta {
        key_type: i.key_type.name().into(),
        label: i.label.to_string(),
        usage: i.usage.names().into_iter().map(String::from).collect(),
        exportable: i.exportable,
        origin: i.origin.name().into(),
        created: i.created,
        owner: target.owner.to_string(),
        id: i.id,
        current_version: i.current_version,
        versions: i
            .versions
            .iter()
            .map(|v| MetaVersion {
                version: v.version,
                created: v.created,
                retired: v.retired,
            })
            .collect(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|_| OpError::internal("cannot encode meta"))?;
    let mut header = Vec::with_capacity(13 + meta.len());
    header.extend_from_slice(MAGIC);
    header.push(FORMAT);
    header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    header.extend_from_slice(&meta);
    let mut plain = Zeroizing::new(Vec::new());
    for (v, m) in target.live() {
        let bytes = m.to_stored();
        plain.extend_from_slice(&v.to_le_bytes());
        plain.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        plain.extend_from_slice(&bytes);
    }
    let ct = ops::encrypt(
        &wrapper.material,
        wrapper.info.current_version,
        &plain,
        &header,
    )?;
    header.extend_from_slice(&ct);
    Ok(header)
}

/// Opens a blob under `wrapper` (any of its live versions, as the ciphertext names).
pub fn open(wrapper: &KeyHandle, blob: &[u8]) -> Result<Opened, OpError> {
    let rest = blob
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| malformed("it does not start with FHSMWRAP"))?;
    let (&format, rest) = rest.split_first().ok_or_else(|| malformed("truncated"))?;
    if format != FORMAT {
        return Err(malformed(&format!("unknown blob format {format}")));
    }
    let len = rest
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| malformed("truncated"))?;
    let meta_bytes = rest.get(4..4 + len).ok_or_else(|| malformed("truncated"))?;
    let header_len = 8 + 1 + 4 + len;
    let (header, ct) = blob.split_at(header_len);
    let (v, _) = ops::ciphertext_version(ct)?;
    let key = wrapper.version(v).ok_or_else(|| {
        OpError::new(
            Status::DecryptFailed,
            format!(
                "the blob was sealed by version {v} of wrap key {}, which is retired or unknown",
                wrapper.info.label
            ),
        )
    })?;
    let plain = ops::decrypt(key, ct, header).map_err(|e| {
        if e.status == Status::DecryptFailed {
            OpError::new(
                Status::DecryptFailed,
                format!(
                    "the blob does not authenticate under wrap key {} (tampered, or sealed \
                     under another key)",
                    wrapper.info.label
                ),
            )
        } else {
            e
        }
    })?;
    let meta: Meta = serde_json::from_slice(meta_bytes).map_err(|_| malformed("bad record"))?;
    let key_type: KeyType = meta.key_type.parse().map_err(|_| malformed("bad type"))?;
    let usage = meta
        .usage
        .iter()
        .map(|u| u.parse::<Usage>())
        .collect::<Result<Vec<_>, _>>()
        .map(|u| UsageSet::of(&u))
        .map_err(|_| malformed("bad usage"))?;
    let origin = Origin::from_name(&meta.origin).ok_or_else(|| malformed("bad origin"))?;
    // The material entries, by version.
    let mut materials = Vec::new();
    let mut p: &[u8] = &plain;
    while !p.is_empty() {
        let word =
            |b: &[u8]| -> Option<u32> { Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)) };
        let (Some(v), Some(n)) = (word(p), p.get(4..).and_then(word)) else {
            return Err(malformed("bad material"));
        };
        let bytes = p
            .get(8..8 + n as usize)
            .ok_or_else(|| malformed("bad material"))?;
        let m = KeyMaterial::from_stored(key_type, bytes)
            .ok_or_else(|| malformed("material does not form a key of its type"))?;
        materials.push((v, m));
        p = &p[8 + n as usize..];
    }
    let mut versions = Vec::with_capacity(meta.versions.len());
    for (i, mv) in meta.versions.iter().enumerate() {
        if mv.version != i as u32 + 1 {
            return Err(malformed("versions out of order"));
        }
        let m = materials
            .iter()
            .position(|(v, _)| *v == mv.version)
            .map(|at| materials.swap_remove(at).1);
        if m.is_some() == mv.retired {
            return Err(malformed("material does not match the versions"));
        }
        versions.push(NewVersion {
            created: mv.created,
            material: m.map(Box::new),
        });
    }
    if versions.len() as u32 != meta.current_version
        || versions.last().is_none_or(|v| v.material.is_none())
        || !materials.is_empty()
    {
        return Err(malformed("material does not match the versions"));
    }
    Ok(Opened {
        key_type,
        usage,
        exportable: meta.exportable,
        origin,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrohsm_proto::VersionInfo;

    fn handle(t: KeyType, usage: UsageSet, exportable: bool, versions: u32) -> KeyHandle {
        let mut info = crate::keys::manager::test_info(1, "k", t, usage, exportable);
        info.current_version = versions;
        info.versions = (1..=versions)
            .map(|v| VersionInfo {
                version: v,
                created: u64::from(v),
                retired: v == 1 && versions > 2,
            })
            .collect();
        let older = (2..versions)
            .rev()
            .map(|v| (v, KeyMaterial::generate(t).unwrap()))
            .collect();
        KeyHandle {
            owner: "alice".into(),
            info,
            material: KeyMaterial::generate(t).unwrap(),
            older,
        }
    }

    #[test]
    fn blobs_carry_every_live_version_and_refuse_tampering() {
        let w = handle(KeyType::Aes256Gcm, UsageSet::of(&[Usage::Wrap]), false, 1);
        let t = KeyType::HmacSha256;
        let target = handle(t, t.allowed_usage(), false, 3);
        let blob = seal(&w, &target).unwrap();
        let o = open(&w, &blob).unwrap();
        assert_eq!(
            (o.key_type, o.exportable, o.origin),
            (t, false, Origin::Generated)
        );
        assert_eq!(o.versions.len(), 3);
        assert!(
            o.versions[0].material.is_none(),
            "a retired version travels without material"
        );
        for (v, m) in [
            (2u32, &o.versions[1].material),
            (3, &o.versions[2].material),
        ] {
            let m = m.as_ref().unwrap();
            assert_eq!(
                *m.secret_bytes(),
                *target.version(v).unwrap().secret_bytes()
            );
        }
        let tampered = "the blob does not authenticate under wrap key k (tampered, or sealed \
                        under another key)";
        for (i, status, message) in [
            (
                0,
                Status::InvalidArgument,
                "not a FerroHSM wrapped key blob: it does not start with FHSMWRAP",
            ),
            // The meta length's low byte: this record's length is odd, so the flip shortens it
            // by one and the ciphertext is read from the record's closing `}` (0x7d = 125).
            (
                9,
                Status::InvalidArgument,
                "unknown ciphertext format version 125",
            ),
            (20, Status::DecryptFailed, tampered),
            (blob.len() / 2, Status::DecryptFailed, tampered),
            (blob.len() - 1, Status::DecryptFailed, tampered),
        ] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            let r = open(&w, &bad);
            assert!(
                matches!(&r, Err(e) if e.status == status && e.message == message),
                "a flip at {i}: {r:?}"
            );
        }
        let other = handle(KeyType::Aes256Gcm, UsageSet::of(&[Usage::Wrap]), false, 1);
        assert_eq!(
            open(&other, &blob).unwrap_err().status,
            Status::DecryptFailed
        );
        // Cut inside the record: the meta length points past the end.
        let r = open(&w, &blob[..20]);
        assert!(
            matches!(&r, Err(e) if e.status == Status::InvalidArgument
                && e.message == "not a FerroHSM wrapped key blob: truncated"),
            "{r:?}"
        );
    }
}
