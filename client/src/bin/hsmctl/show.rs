//! What hsmctl prints: hex, key lines and key JSON.

use std::time::{Duration, UNIX_EPOCH};

use ferrohsm_proto::KeyInfo;
use serde_json::json;

/// Lowercase hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The stable JSON form of a key (`info`, `list`, and every command that makes a key).
pub(crate) fn info_json(k: &KeyInfo) -> serde_json::Value {
    let versions: Vec<_> = k
        .versions
        .iter()
        .map(|v| json!({"version": v.version, "created": time(v.created), "retired": v.retired}))
        .collect();
    json!({
        "id": k.id,
        "label": k.label.as_str(),
        "type": k.key_type.name(),
        "usage": k.usage.names(),
        "exportable": k.exportable,
        "lifetime": k.lifetime.name(),
        "created": time(k.created),
        "owner": k.owner.as_str(),
        "origin": k.origin.name(),
        "current_version": k.current_version,
        "versions": versions,
    })
}

/// One tab-separated line: `id label type usage exportable lifetime created`.
pub(crate) fn info_line(k: &KeyInfo) -> String {
    let created = time(k.created);
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        k.id,
        k.label,
        k.key_type,
        k.usage.names().join(","),
        if k.exportable {
            "exportable"
        } else {
            "non-exportable"
        },
        k.lifetime.name(),
        created
    )
}

/// A granted key's line: the same fields, its id and label qualified by its owner.
pub(crate) fn granted_line(k: &KeyInfo) -> String {
    let line = info_line(k);
    let rest = line.split_once('\t').map_or("", |(_, r)| r);
    format!("{}:{}\t{}:{rest}", k.owner, k.id, k.owner)
}

/// What a command that succeeds without output prints: `ok`, or `{"ok":true}`.
pub(crate) fn ok(json: bool) -> String {
    if json {
        json!({"ok": true}).to_string()
    } else {
        "ok".to_string()
    }
}

/// What a command that makes a key prints: `<id> <label>`, or its info JSON.
pub(crate) fn new_key(json: bool, k: &KeyInfo) -> String {
    if json {
        info_json(k).to_string()
    } else {
        format!("{} {}", k.id, k.label)
    }
}

/// `status`: the contract's JSON, or one `name value` line each.
pub(crate) fn status(json: bool, s: &ferrohsm_proto::message::NodeStatus) -> String {
    let [tcp, tls, tls_psk, shm] = s.sessions;
    let total = tcp + tls + tls_psk + shm;
    if json {
        return serde_json::json!({
            "node": s.node,
            "version": s.version,
            "uptime_s": s.uptime_s,
            "store": {"backend": s.store_backend, "reachable": s.store_reachable},
            "sessions": {"total": total, "tcp": tcp, "tls": tls, "tls_psk": tls_psk, "shm": shm},
        })
        .to_string();
    }
    format!(
        "node {}\nversion {}\nuptime_s {}\nstore {} {}\nsessions {total} (tcp {tcp}, tls {tls}, \
         tls-psk {tls_psk}, shm {shm})",
        s.node,
        s.version,
        s.uptime_s,
        s.store_backend,
        if s.store_reachable {
            "reachable"
        } else {
            "unreachable"
        },
    )
}
