//! The manager's audit entries: denials decided here, logins refused by the handshake, and (at
//! `[audit] level = "all"`) every use of a key; all queued for the next commit. Changes carry
//! their own entries into the store's transaction (see `lifecycle.rs`).

use ferrohsm_proto::{KeyRef, Status};

use super::KeyManager;
use super::caller::{Caller, qualified};
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::audit::Level;
use crate::keys::audit::now_ms;
use crate::keys::store::AuditEvent;

/// Statuses that are denials (recorded in the audit chain).
pub(super) fn is_denial(s: Status) -> bool {
    matches!(
        s,
        Status::KeyNotFound
            | Status::UsageNotPermitted
            | Status::NotExportable
            | Status::WrongKeyType
            | Status::AuthFailed
            | Status::PeerNotAllowed
            | Status::KeyStoreIntegrity
            | Status::QuotaExceeded
    )
}

impl KeyManager {
    /// An audit entry for `caller` doing `op` on `key` (status filled in later or given).
    pub(crate) fn event(&self, caller: &Caller, op: &'static str, key: String) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            client: caller.client.clone(),
            session: caller.session,
            transport: caller.transport,
            op,
            key,
            detail: String::new(),
            status: "",
        }
    }

    /// Records a denied request (queued for the next commit).
    pub fn deny(&self, caller: &Caller, op: &'static str, key: &KeyRef, e: &OpError) {
        if is_denial(e.status) {
            let mut ev = self.event(caller, op, qualified(caller, key));
            ev.status = e.status.name();
            self.store.audit_later(ev);
        }
    }

    /// Records a failed login (queued): `claimed` is the name the peer gave, escaped and cut.
    pub fn deny_login(&self, claimed: &str, session: u64, transport: &'static str, s: Status) {
        let client: String = claimed.escape_default().take(80).collect();
        let client: std::sync::Arc<str> = client.into();
        self.store.audit_later(AuditEvent {
            time_ms: now_ms(),
            client,
            session,
            transport,
            op: ferrohsm_proto::Opcode::Proof.kind().name,
            key: String::new(),
            detail: String::new(),
            status: s.name(),
        });
    }

    /// With `[audit] level = "all"`: records a use of `h` that ended with `failed` (`None`:
    /// success), queued and group-committed.
    pub fn audit_use(
        &self,
        caller: &Caller,
        op: &'static str,
        h: &KeyHandle,
        failed: Option<Status>,
    ) {
        if self.opts.audit == Level::All {
            let mut ev = self.event(caller, op, format!("{}:{}", h.owner, h.info.id));
            ev.status = failed.map_or("ok", Status::name);
            self.store.audit_later(ev);
        }
    }
}
