//! One description per message kind: everything the request path asks of a kind besides its
//! wire form, in one table ([`Kind::of`]). The session (what to wipe, what to answer itself),
//! the dispatcher (inline or pooled), the memory budget (what a response may cost), the key
//! policy (which usage a key needs, the name in the audit log) and the PKCS#11 module all read
//! it, and keep no list of their own. The table names every opcode (no wildcard), so a new kind
//! cannot be added without deciding each of these.

use super::request::Request;
use super::types::Usage;
use crate::frame::Opcode;

/// Everything the request path needs to know about one kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The kind's opcode.
    pub opcode: Opcode,
    /// The operation's name in audit entries, logs and metrics: hsmctl's command name
    /// (`keygen`, `sign`, `mac-verify`, ...). Two kinds can share one (`sign` over a message or
    /// a digest).
    pub name: &'static str,
    /// The key the request names, and what it needs of it.
    pub key: KeyUse,
    /// What a successful response carries.
    pub answer: Answer,
    /// Key material passes through the session's own thread on the way (an export, a new key
    /// made ready for the store): the thread's stack is wiped after it.
    pub key_bytes: bool,
    /// Whether a success changes what is stored (keys, grants, counters); audit entries aside.
    pub changes_state: bool,
    /// Where its work runs.
    pub cost: Cost,
    /// A bound on its response's size, charged to the memory budget with the request.
    pub reply: Reply,
}

/// The key a request names, and what it needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// No key.
    None,
    /// A key with this usage flag, the caller's own or granted to it with that usage.
    Uses(Usage),
    /// A key with both usage flags (rewrap: decrypt, then encrypt).
    UsesBoth(Usage, Usage),
    /// The caller's own key (never through a grant) with this usage flag: the wrapping key of
    /// wrap and unwrap (the key wrap seals must be the caller's own too).
    OwnUses(Usage),
    /// Any key the caller may see, its own or granted to it (info, public key).
    Visible,
    /// The caller's own key, to manage (export, delete, grant, rotate, ...): never through a
    /// grant.
    Own,
}

impl KeyUse {
    /// The usage flags a key must carry, at most two.
    pub const fn usages(self) -> (Option<Usage>, Option<Usage>) {
        match self {
            KeyUse::Uses(u) | KeyUse::OwnUses(u) => (Some(u), None),
            KeyUse::UsesBoth(a, b) => (Some(a), Some(b)),
            KeyUse::None | KeyUse::Visible | KeyUse::Own => (None, None),
        }
    }

    /// Only the key's owner may do it.
    pub const fn owner_only(self) -> bool {
        matches!(self, KeyUse::Own | KeyUse::OwnUses(_))
    }
}

/// What a successful response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A challenge, or a welcome when the transport already proved the client.
    Hello,
    /// The welcome.
    Welcome,
    /// Nothing: success alone.
    Done,
    /// Bytes, meaning this.
    Bytes(Bytes),
    /// One key's description.
    Key,
    /// Several keys' descriptions.
    Keys,
    /// A public key and its type.
    PublicKey,
    /// A counter's value.
    Counter,
    /// The node's status.
    Status,
    /// A ciphertext and a new key's description.
    Encapsulated,
    /// No response: a server's message, never a request.
    Nothing,
}

/// What the bytes of an [`Answer::Bytes`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    /// Fresh random bytes.
    Random,
    /// A digest of the caller's data.
    Digest,
    /// A signature.
    Signature,
    /// A MAC.
    Mac,
    /// A ciphertext.
    Ciphertext,
    /// A plaintext.
    Plaintext,
    /// A key's raw secret bytes.
    KeyBytes,
    /// A key sealed under another key.
    Wrapped,
}

/// Where a request's work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Answered by the session itself (the handshake, ping).
    Session,
    /// Cheap per byte (random, digest, AEAD, MAC): on the session's thread up to the inline
    /// limit, whatever else is in flight; on a crypto worker above it.
    Cheap,
    /// A signature or a verification: on the session's thread when it is the session's only
    /// request (a worker would add only its wake-up), else on a crypto worker.
    Signature,
    /// Always on a crypto worker (key generation, derivation, checking an imported key,
    /// wrapping, computing a public half).
    Pooled,
    /// No computation: the key manager and the store answer.
    Store,
}

/// A bound on a response's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// About as large as the request (a signature, a MAC, a ciphertext, a plaintext), plus
    /// 1 KiB.
    AsRequest,
    /// As large as the request plus the largest signature (ML-DSA-87, 4627 bytes), plus
    /// 1 KiB.
    Signed,
    /// The largest random request, plus 1 KiB.
    Random,
    /// As large as a frame may be (lists, wrapped keys).
    Frame,
    /// At most 64 KiB (key descriptions, public keys, exported keys, errors).
    Small,
}

impl Reply {
    /// The bound in bytes, for a request of `body` bytes under a frame cap of `max_frame`.
    pub const fn bound(self, body: usize, max_frame: usize) -> usize {
        match self {
            Reply::AsRequest => body + 1024,
            Reply::Signed => body + 4627 + 1024,
            Reply::Random => crate::limits::MAX_RANDOM as usize + 1024,
            Reply::Frame => max_frame,
            Reply::Small => 64 * 1024,
        }
    }
}

impl Kind {
    const fn new(opcode: Opcode, name: &'static str, key: KeyUse, answer: Answer) -> Kind {
        Kind {
            opcode,
            name,
            key,
            answer,
            key_bytes: false,
            changes_state: false,
            cost: Cost::Store,
            reply: Reply::Small,
        }
    }

    const fn runs(mut self, cost: Cost) -> Kind {
        self.cost = cost;
        self
    }

    const fn replies(mut self, reply: Reply) -> Kind {
        self.reply = reply;
        self
    }

    const fn changes(mut self) -> Kind {
        self.changes_state = true;
        self
    }

    const fn holds_key_bytes(mut self) -> Kind {
        self.key_bytes = true;
        self
    }

    /// The description of `opcode`'s kind.
    pub const fn of(opcode: Opcode) -> Kind {
        use Answer as A;
        use Bytes as B;
        use Cost::{Cheap, Pooled, Session, Signature};
        use KeyUse::{Own, OwnUses, Uses, UsesBoth, Visible};
        use Opcode as O;
        use Reply::{AsRequest, Frame, Random, Signed};
        let none = KeyUse::None;
        let k = Kind::new;
        match opcode {
            O::Hello => k(opcode, "hello", none, A::Hello).runs(Session),
            O::Proof => k(opcode, "login", none, A::Welcome).runs(Session),
            O::Challenge => k(opcode, "challenge", none, A::Nothing).runs(Session),
            O::Welcome => k(opcode, "welcome", none, A::Nothing).runs(Session),
            O::Ping => k(opcode, "ping", none, A::Done).runs(Session),
            O::Status => k(opcode, "status", none, A::Status),
            O::Random => k(opcode, "random", none, A::Bytes(B::Random))
                .runs(Cheap)
                .replies(Random),
            O::Digest => k(opcode, "digest", none, A::Bytes(B::Digest))
                .runs(Cheap)
                .replies(AsRequest),
            O::Generate => k(opcode, "keygen", none, A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Import => k(opcode, "import", none, A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::List => k(opcode, "list", none, A::Keys).replies(Frame),
            O::ListGranted => k(opcode, "list-granted", none, A::Keys).replies(Frame),
            O::Find => k(opcode, "find", none, A::Keys).replies(Frame),
            O::Info => k(opcode, "info", Visible, A::Key),
            O::PublicKey => k(opcode, "pubkey", Visible, A::PublicKey).runs(Pooled),
            O::Export => k(opcode, "export", Own, A::Bytes(B::KeyBytes)).holds_key_bytes(),
            O::Delete => k(opcode, "delete", Own, A::Done).changes(),
            O::Sign | O::SignContext => {
                k(opcode, "sign", Uses(Usage::Sign), A::Bytes(B::Signature))
                    .runs(Signature)
                    .replies(Signed)
            }
            O::SignDigest => k(opcode, "sign", Uses(Usage::Sign), A::Bytes(B::Signature))
                .runs(Signature)
                .replies(AsRequest),
            O::Verify | O::VerifyContext => k(opcode, "verify", Uses(Usage::Verify), A::Done)
                .runs(Signature)
                .replies(AsRequest),
            O::VerifyDigest => k(opcode, "verify", Uses(Usage::Verify), A::Done)
                .runs(Signature)
                .replies(AsRequest),
            O::Encrypt | O::EncryptRaw => k(
                opcode,
                "encrypt",
                Uses(Usage::Encrypt),
                A::Bytes(B::Ciphertext),
            )
            .runs(Cheap)
            .replies(AsRequest),
            O::Decrypt | O::DecryptRaw => k(
                opcode,
                "decrypt",
                Uses(Usage::Decrypt),
                A::Bytes(B::Plaintext),
            )
            .runs(Cheap)
            .replies(AsRequest),
            O::Rewrap => k(
                opcode,
                "rewrap",
                UsesBoth(Usage::Decrypt, Usage::Encrypt),
                A::Bytes(B::Ciphertext),
            )
            .runs(Cheap)
            .replies(AsRequest),
            O::Mac => k(opcode, "mac", Uses(Usage::Mac), A::Bytes(B::Mac))
                .runs(Cheap)
                .replies(AsRequest),
            O::MacVerify => k(opcode, "mac-verify", Uses(Usage::Mac), A::Done)
                .runs(Cheap)
                .replies(AsRequest),
            O::Derive => k(opcode, "derive", Uses(Usage::Derive), A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Encapsulate => k(
                opcode,
                "encapsulate",
                Uses(Usage::Encapsulate),
                A::Encapsulated,
            )
            .runs(Pooled)
            .changes()
            .holds_key_bytes(),
            O::EncapsulatePeer => k(opcode, "encapsulate", none, A::Encapsulated)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Decapsulate => k(opcode, "decapsulate", Uses(Usage::Decapsulate), A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Wrap => k(opcode, "wrap", OwnUses(Usage::Wrap), A::Bytes(B::Wrapped))
                .runs(Pooled)
                .replies(Frame)
                .holds_key_bytes(),
            O::Unwrap => k(opcode, "unwrap", OwnUses(Usage::Unwrap), A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Grant => k(opcode, "grant", Own, A::Done).changes(),
            O::Revoke => k(opcode, "revoke", Own, A::Done).changes(),
            O::Rotate => k(opcode, "rotate", Own, A::Key)
                .runs(Pooled)
                .changes()
                .holds_key_bytes(),
            O::Retire => k(opcode, "retire", Own, A::Key).changes(),
            O::CounterCreate => k(opcode, "counter-create", none, A::Counter).changes(),
            O::CounterRead => k(opcode, "counter-read", none, A::Counter),
            O::CounterInc => k(opcode, "counter-inc", none, A::Counter).changes(),
        }
    }

    /// Whether the response can carry key bytes, plaintext or fresh random bytes: the server
    /// wipes it once written.
    pub const fn secret_response(&self) -> bool {
        matches!(
            self.answer,
            Answer::Bytes(Bytes::Random | Bytes::Plaintext | Bytes::KeyBytes)
        )
    }
}

impl Opcode {
    /// This opcode's description.
    pub const fn kind(self) -> Kind {
        Kind::of(self)
    }
}

impl Request {
    /// This request's description.
    pub const fn kind(&self) -> Kind {
        Kind::of(self.opcode())
    }

    /// Whether the response can carry key bytes, plaintext or fresh random bytes (see
    /// [`Kind::secret_response`]).
    pub const fn secret_response(&self) -> bool {
        self.kind().secret_response()
    }
}

#[cfg(test)]
mod tests;
