//! Request and response bodies, and the value types they carry.
//!
//! Each message kind has its own opcode; its body is the postcard encoding of the variant's
//! payload. Decoding is driven by the opcode and rejects trailing bytes, and the value types
//! ([`Label`], [`UsageSet`], [`KeyRef`]) refuse invalid values while deserializing, so a decoded
//! message is a valid one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::frame::{FLAG_ERROR, FLAG_RESPONSE, Frame, Opcode};
use crate::handshake::{Challenge, Hello, HelloReply, Proof, Welcome};
use crate::status::{ErrorBody, Status};
use crate::wire::{Buf, Raw};

/// A key label: `[A-Za-z][A-Za-z0-9._-]{0,63}`, so a label never looks like a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && s.len() <= 64 {
            Ok(Label(s))
        } else {
            Err(format!(
                "invalid label {:?}: expected a letter then up to 63 of [A-Za-z0-9._-]",
                s.chars().take(80).collect::<String>()
            ))
        }
    }
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Label::try_from(s.to_owned())
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key named by its per-client numeric id or by its label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyRef {
    /// Numeric id (per client).
    Id(u32),
    /// Label.
    Label(Label),
}

impl FromStr for KeyRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u32>()
                .map(KeyRef::Id)
                .map_err(|_| format!("key id {s} is out of range"))
        } else {
            s.parse::<Label>().map(KeyRef::Label)
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Id(id) => write!(f, "{id}"),
            KeyRef::Label(l) => write!(f, "{l}"),
        }
    }
}

/// Key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyType {
    /// Ed25519 signing key.
    Ed25519,
    /// ECDSA P-256 with SHA-256 signing key.
    P256,
    /// X25519 key agreement key.
    X25519,
    /// ChaCha20-Poly1305 AEAD key.
    ChaCha20Poly1305,
    /// AES-256-GCM AEAD key.
    Aes256Gcm,
    /// HMAC-SHA256 key.
    HmacSha256,
}

impl KeyType {
    /// Every key type.
    pub const ALL: [KeyType; 6] = [
        KeyType::Ed25519,
        KeyType::P256,
        KeyType::X25519,
        KeyType::ChaCha20Poly1305,
        KeyType::Aes256Gcm,
        KeyType::HmacSha256,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
            KeyType::X25519 => "x25519",
            KeyType::ChaCha20Poly1305 => "chacha20poly1305",
            KeyType::Aes256Gcm => "aes256gcm",
            KeyType::HmacSha256 => "hmac-sha256",
        }
    }

    /// The usages that make sense for this type; also the default set.
    pub fn allowed_usage(self) -> UsageSet {
        use Usage::*;
        match self {
            KeyType::Ed25519 | KeyType::P256 => UsageSet::of(&[Sign, Verify]),
            KeyType::X25519 => UsageSet::of(&[Derive]),
            KeyType::ChaCha20Poly1305 | KeyType::Aes256Gcm => {
                UsageSet::of(&[Encrypt, Decrypt, Wrap, Unwrap])
            }
            KeyType::HmacSha256 => UsageSet::of(&[Mac]),
        }
    }

    /// Whether the type has a public half.
    pub fn is_asymmetric(self) -> bool {
        matches!(self, KeyType::Ed25519 | KeyType::P256 | KeyType::X25519)
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyType::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "unknown key type {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One usage flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Usage {
    /// Make signatures.
    Sign = 1 << 0,
    /// Check signatures.
    Verify = 1 << 1,
    /// AEAD encrypt.
    Encrypt = 1 << 2,
    /// AEAD decrypt.
    Decrypt = 1 << 3,
    /// HMAC compute and verify.
    Mac = 1 << 4,
    /// Key agreement into a new key.
    Derive = 1 << 5,
    /// Wrap other keys.
    Wrap = 1 << 6,
    /// Unwrap keys.
    Unwrap = 1 << 7,
}

impl Usage {
    /// Every usage, in display order.
    pub const ALL: [Usage; 8] = [
        Usage::Sign,
        Usage::Verify,
        Usage::Encrypt,
        Usage::Decrypt,
        Usage::Mac,
        Usage::Derive,
        Usage::Wrap,
        Usage::Unwrap,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Usage::Sign => "sign",
            Usage::Verify => "verify",
            Usage::Encrypt => "encrypt",
            Usage::Decrypt => "decrypt",
            Usage::Mac => "mac",
            Usage::Derive => "derive",
            Usage::Wrap => "wrap",
            Usage::Unwrap => "unwrap",
        }
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Usage::ALL
            .iter()
            .copied()
            .find(|u| u.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Usage::ALL.iter().map(|u| u.name()).collect();
                format!("unknown usage {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// A set of usage flags; only known bits can be held.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct UsageSet(u16);

impl UsageSet {
    const KNOWN: u16 = 0xff;

    /// The set of the given usages.
    pub fn of(usages: &[Usage]) -> UsageSet {
        UsageSet(usages.iter().fold(0, |acc, u| acc | *u as u16))
    }

    /// Whether `u` is in the set.
    pub fn contains(self, u: Usage) -> bool {
        self.0 & u as u16 != 0
    }

    /// Whether every usage of `self` is in `other`.
    pub fn is_subset(self, other: UsageSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The usages in display order.
    pub fn iter(self) -> impl Iterator<Item = Usage> {
        Usage::ALL.into_iter().filter(move |u| self.contains(*u))
    }

    /// The names in display order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Usage::name).collect()
    }
}

impl TryFrom<u16> for UsageSet {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        if v & !Self::KNOWN == 0 {
            Ok(UsageSet(v))
        } else {
            Err(format!("unknown usage bits {v:#06x}"))
        }
    }
}

impl From<UsageSet> for u16 {
    fn from(u: UsageSet) -> u16 {
        u.0
    }
}

impl FromStr for UsageSet {
    type Err = String;
    /// Parses `sign,verify`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usages = s
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<Vec<Usage>, _>>()?;
        Ok(UsageSet::of(&usages))
    }
}

impl fmt::Debug for UsageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// How long a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lifetime {
    /// Until deleted.
    Persistent,
    /// Until the session that created it ends.
    Session,
}

impl Lifetime {
    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Lifetime::Persistent => "persistent",
            Lifetime::Session => "session",
        }
    }
}

/// Digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DigestAlg {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl FromStr for DigestAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha256" => Ok(DigestAlg::Sha256),
            "sha512" => Ok(DigestAlg::Sha512),
            _ => Err(format!("unknown digest {s:?}; expected sha256 or sha512")),
        }
    }
}

/// Public description of a key (never any key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Per-client numeric id.
    pub id: u32,
    /// Label, unique per client.
    pub label: Label,
    /// Type.
    pub key_type: KeyType,
    /// Permitted usages.
    pub usage: UsageSet,
    /// Whether `export` may return the key bytes.
    pub exportable: bool,
    /// Lifetime.
    pub lifetime: Lifetime,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// Parameters of a new key (generate or derive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// Type of the new key.
    pub key_type: KeyType,
    /// Label of the new key.
    pub label: Label,
    /// Usages; `None` means every usage that fits the type.
    pub usage: Option<UsageSet>,
    /// Whether the key may be exported.
    pub exportable: bool,
    /// Session key (vanishes with the connection) instead of persistent.
    pub session: bool,
}

/// A request from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Handshake step 1.
    Hello(Hello),
    /// Handshake step 3.
    Proof(Proof),
    /// Liveness.
    Ping,
    /// N random bytes (1..=65536).
    Random {
        /// Byte count.
        len: u32,
    },
    /// Digest of data.
    Digest {
        /// Algorithm.
        alg: DigestAlg,
        /// Input.
        data: Vec<u8>,
    },
    /// Generate a key.
    Generate(KeySpec),
    /// List keys.
    List,
    /// Describe a key.
    Info(KeyRef),
    /// Public key bytes.
    PublicKey(KeyRef),
    /// Export raw key bytes.
    Export(KeyRef),
    /// Delete a key.
    Delete(KeyRef),
    /// Sign a message.
    Sign {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
    },
    /// Verify a signature.
    Verify {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
        /// Signature (Ed25519 raw 64 bytes, ECDSA DER).
        signature: Vec<u8>,
    },
    /// AEAD encrypt; the server picks the nonce.
    Encrypt {
        /// Key.
        key: KeyRef,
        /// Plaintext.
        plaintext: Vec<u8>,
        /// Associated data.
        aad: Vec<u8>,
    },
    /// AEAD decrypt a ciphertext produced by `Encrypt`.
    Decrypt {
        /// Key.
        key: KeyRef,
        /// Self-describing ciphertext.
        ciphertext: Vec<u8>,
        /// Associated data.
        aad: Vec<u8>,
    },
    /// HMAC compute.
    Mac {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
    },
    /// HMAC verify.
    MacVerify {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
        /// Expected tag.
        mac: Vec<u8>,
    },
    /// X25519 with a peer public key, then HKDF-SHA256 into a new key.
    Derive {
        /// Our X25519 key.
        key: KeyRef,
        /// Peer's raw 32-byte X25519 public key.
        peer: Vec<u8>,
        /// The new key.
        spec: KeySpec,
    },
}

// Bodies: encoded from borrowed fields (no clone of a payload), decoded into owned ones; both
// with the same field order, so the wire format is one.
#[derive(Serialize)]
struct KeyDataRef<'a> {
    key: &'a KeyRef,
    data: Raw<'a>,
}
#[derive(Deserialize)]
struct KeyData {
    key: KeyRef,
    data: Buf,
}
#[derive(Serialize)]
struct KeyDataTagRef<'a> {
    key: &'a KeyRef,
    data: Raw<'a>,
    tag: Raw<'a>,
}
#[derive(Deserialize)]
struct KeyDataTag {
    key: KeyRef,
    data: Buf,
    tag: Buf,
}
#[derive(Serialize)]
struct DeriveBodyRef<'a> {
    key: &'a KeyRef,
    peer: Raw<'a>,
    spec: &'a KeySpec,
}
#[derive(Deserialize)]
struct DeriveBody {
    key: KeyRef,
    peer: Buf,
    spec: KeySpec,
}

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The opcode is not a request (or response) this side knows.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// The body does not decode into the opcode's message.
    #[error("malformed body for opcode {opcode}: {reason}")]
    Malformed {
        /// Opcode.
        opcode: u16,
        /// Decoder's explanation.
        reason: String,
    },
}

impl BodyError {
    /// The wire status for this error.
    pub fn status(&self) -> Status {
        match self {
            BodyError::UnknownOpcode(_) => Status::UnknownOpcode,
            BodyError::Malformed { .. } => Status::MalformedBody,
        }
    }
}

/// Appends `v`'s postcard encoding to `out`.
fn to_body_into<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    // Invariant as for `to_body`: our message types always serialize.
    if let Ok(done) = postcard::to_extend(v, std::mem::take(out)) {
        *out = done;
    }
}

fn to_body<T: Serialize>(v: &T) -> Vec<u8> {
    // Invariant: serializing our own message types into a Vec cannot fail (no maps with
    // non-string keys, no unsupported types); an empty body would be refused by the peer.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Decodes a whole body as `T`, refusing trailing bytes.
fn from_body<T: DeserializeOwned>(opcode: u16, body: &[u8]) -> Result<T, BodyError> {
    let malformed = |reason: String| BodyError::Malformed { opcode, reason };
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

fn empty_body(opcode: u16, body: &[u8]) -> Result<(), BodyError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(BodyError::Malformed {
            opcode,
            reason: format!("{} trailing bytes", body.len()),
        })
    }
}

impl Request {
    /// The opcode of this request.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Proof(_) => Opcode::Proof,
            Request::Ping => Opcode::Ping,
            Request::Random { .. } => Opcode::Random,
            Request::Digest { .. } => Opcode::Digest,
            Request::Generate(_) => Opcode::Generate,
            Request::List => Opcode::List,
            Request::Info(_) => Opcode::Info,
            Request::PublicKey(_) => Opcode::PublicKey,
            Request::Export(_) => Opcode::Export,
            Request::Delete(_) => Opcode::Delete,
            Request::Sign { .. } => Opcode::Sign,
            Request::Verify { .. } => Opcode::Verify,
            Request::Encrypt { .. } => Opcode::Encrypt,
            Request::Decrypt { .. } => Opcode::Decrypt,
            Request::Mac { .. } => Opcode::Mac,
            Request::MacVerify { .. } => Opcode::MacVerify,
            Request::Derive { .. } => Opcode::Derive,
        }
    }

    /// The postcard body of this request.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body_into(&mut out);
        out
    }

    /// Appends the postcard body of this request to `out`, borrowing every payload.
    fn encode_body_into(&self, out: &mut Vec<u8>) {
        let kd = |key: &KeyRef, data: &[u8], out: &mut Vec<u8>| {
            to_body_into(
                &KeyDataRef {
                    key,
                    data: Raw(data),
                },
                out,
            )
        };
        let kdt = |key: &KeyRef, data: &[u8], tag: &[u8], out: &mut Vec<u8>| {
            to_body_into(
                &KeyDataTagRef {
                    key,
                    data: Raw(data),
                    tag: Raw(tag),
                },
                out,
            )
        };
        match self {
            Request::Hello(h) => to_body_into(h, out),
            Request::Proof(p) => to_body_into(p, out),
            Request::Ping | Request::List => {}
            Request::Random { len } => to_body_into(len, out),
            Request::Digest { alg, data } => to_body_into(&(alg, Raw(data)), out),
            Request::Generate(spec) => to_body_into(spec, out),
            Request::Info(k) | Request::PublicKey(k) | Request::Export(k) | Request::Delete(k) => {
                to_body_into(k, out)
            }
            Request::Sign { key, data } | Request::Mac { key, data } => kd(key, data, out),
            Request::Verify {
                key,
                data,
                signature,
            } => kdt(key, data, signature, out),
            Request::MacVerify { key, data, mac } => kdt(key, data, mac, out),
            Request::Encrypt {
                key,
                plaintext,
                aad,
            } => kdt(key, plaintext, aad, out),
            Request::Decrypt {
                key,
                ciphertext,
                aad,
            } => kdt(key, ciphertext, aad, out),
            Request::Derive { key, peer, spec } => to_body_into(
                &DeriveBodyRef {
                    key,
                    peer: Raw(peer),
                    spec,
                },
                out,
            ),
        }
    }

    /// Appends the whole request frame with id `request_id` to `out`, the body written in
    /// place (the same bytes as [`Request::to_frame`] encodes).
    pub fn encode_into(&self, request_id: u64, out: &mut Vec<u8>) {
        Frame::encode_with(0, self.opcode() as u16, request_id, out, |out| {
            self.encode_body_into(out)
        })
    }

    /// A request frame with the given id.
    pub fn to_frame(&self, request_id: u64) -> Frame {
        Frame::new(0, self.opcode() as u16, request_id, self.encode_body())
    }

    /// Decodes a request body by opcode.
    pub fn decode(opcode: u16, body: &[u8]) -> Result<Request, BodyError> {
        let op = Opcode::from_u16(opcode).ok_or(BodyError::UnknownOpcode(opcode))?;
        let kd = || from_body::<KeyData>(opcode, body);
        let kdt = || from_body::<KeyDataTag>(opcode, body);
        Ok(match op {
            Opcode::Hello => Request::Hello(from_body(opcode, body)?),
            Opcode::Proof => Request::Proof(from_body(opcode, body)?),
            Opcode::Ping => empty_body(opcode, body).map(|_| Request::Ping)?,
            Opcode::List => empty_body(opcode, body).map(|_| Request::List)?,
            Opcode::Random => Request::Random {
                len: from_body(opcode, body)?,
            },
            Opcode::Digest => {
                let (alg, Buf(data)) = from_body(opcode, body)?;
                Request::Digest { alg, data }
            }
            Opcode::Generate => Request::Generate(from_body(opcode, body)?),
            Opcode::Info => Request::Info(from_body(opcode, body)?),
            Opcode::PublicKey => Request::PublicKey(from_body(opcode, body)?),
            Opcode::Export => Request::Export(from_body(opcode, body)?),
            Opcode::Delete => Request::Delete(from_body(opcode, body)?),
            Opcode::Sign => kd().map(|b| Request::Sign {
                key: b.key,
                data: b.data.0,
            })?,
            Opcode::Mac => kd().map(|b| Request::Mac {
                key: b.key,
                data: b.data.0,
            })?,
            Opcode::Verify => kdt().map(|b| Request::Verify {
                key: b.key,
                data: b.data.0,
                signature: b.tag.0,
            })?,
            Opcode::MacVerify => kdt().map(|b| Request::MacVerify {
                key: b.key,
                data: b.data.0,
                mac: b.tag.0,
            })?,
            Opcode::Encrypt => kdt().map(|b| Request::Encrypt {
                key: b.key,
                plaintext: b.data.0,
                aad: b.tag.0,
            })?,
            Opcode::Decrypt => kdt().map(|b| Request::Decrypt {
                key: b.key,
                ciphertext: b.data.0,
                aad: b.tag.0,
            })?,
            Opcode::Derive => {
                let b: DeriveBody = from_body(opcode, body)?;
                Request::Derive {
                    key: b.key,
                    peer: b.peer.0,
                    spec: b.spec,
                }
            }
            Opcode::Challenge | Opcode::Welcome => return Err(BodyError::UnknownOpcode(opcode)),
        })
    }
}

/// A successful response. Which variant answers which opcode is fixed (see [`Response::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Handshake step 2.
    Challenge(Challenge),
    /// Handshake step 4.
    Welcome(Welcome),
    /// Success with nothing to return (ping, delete, verify, mac-verify).
    Done,
    /// Bytes (random, digest, signature, ciphertext, plaintext, MAC, exported key).
    Bytes(Vec<u8>),
    /// One key (generate, derive, info).
    Key(KeyInfo),
    /// Every key (list).
    Keys(Vec<KeyInfo>),
    /// A raw public key and its type.
    PublicKey {
        /// Key type.
        key_type: KeyType,
        /// Raw public key (Ed25519/X25519 32 bytes; P-256 65-byte uncompressed point).
        bytes: Vec<u8>,
    },
}

impl Response {
    /// The postcard body of this response.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body_into(&mut out);
        out
    }

    /// Appends the postcard body of this response to `out`.
    fn encode_body_into(&self, out: &mut Vec<u8>) {
        match self {
            Response::Challenge(c) => to_body_into(&HelloReply::Challenge(c.clone()), out),
            Response::Welcome(w) => to_body_into(w, out),
            Response::Done => {}
            Response::Bytes(b) => to_body_into(&Raw(b), out),
            Response::Key(k) => to_body_into(k, out),
            Response::Keys(k) => to_body_into(k, out),
            Response::PublicKey { key_type, bytes } => to_body_into(&(key_type, Raw(bytes)), out),
        }
    }

    /// Appends the whole response frame answering `opcode` / `request_id` to `out`, the body
    /// written in place (the same bytes as [`Response::to_frame`] encodes).
    pub fn encode_into(&self, opcode: u16, request_id: u64, out: &mut Vec<u8>) {
        Frame::encode_with(FLAG_RESPONSE, opcode, request_id, out, |out| match self {
            Response::Welcome(w) if opcode == Opcode::Hello as u16 => {
                to_body_into(&HelloReply::Welcome(w.clone()), out)
            }
            other => other.encode_body_into(out),
        })
    }

    /// What kind of response this is, without its contents (for error messages: a response
    /// may carry key material or plaintext, so it is never formatted whole).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Challenge(_) => "challenge",
            Response::Welcome(_) => "welcome",
            Response::Done => "done",
            Response::Bytes(_) => "bytes",
            Response::Key(_) => "key info",
            Response::Keys(_) => "key list",
            Response::PublicKey { .. } => "public key",
        }
    }

    /// A response frame answering `opcode` / `request_id`.
    pub fn to_frame(&self, opcode: u16, request_id: u64) -> Frame {
        let body = match self {
            // A hello is answered by a HelloReply: a challenge, or (when the transport already
            // proved the client) the welcome itself.
            Response::Welcome(w) if opcode == Opcode::Hello as u16 => {
                to_body(&HelloReply::Welcome(w.clone()))
            }
            other => other.encode_body(),
        };
        Frame::new(FLAG_RESPONSE, opcode, request_id, body)
    }

    /// Decodes a successful response to a request with `opcode`.
    pub fn decode(opcode: u16, body: &[u8]) -> Result<Response, BodyError> {
        let op = Opcode::from_u16(opcode).ok_or(BodyError::UnknownOpcode(opcode))?;
        Ok(match op {
            Opcode::Hello => match from_body(opcode, body)? {
                HelloReply::Challenge(c) => Response::Challenge(c),
                HelloReply::Welcome(w) => Response::Welcome(w),
            },
            Opcode::Proof => Response::Welcome(from_body(opcode, body)?),
            Opcode::Ping | Opcode::Delete | Opcode::Verify | Opcode::MacVerify => {
                empty_body(opcode, body).map(|_| Response::Done)?
            }
            Opcode::Random
            | Opcode::Digest
            | Opcode::Export
            | Opcode::Sign
            | Opcode::Encrypt
            | Opcode::Decrypt
            | Opcode::Mac => Response::Bytes(from_body::<Buf>(opcode, body)?.0),
            Opcode::Generate | Opcode::Info | Opcode::Derive => {
                Response::Key(from_body(opcode, body)?)
            }
            Opcode::List => Response::Keys(from_body(opcode, body)?),
            Opcode::PublicKey => {
                let (key_type, Buf(bytes)) = from_body(opcode, body)?;
                Response::PublicKey { key_type, bytes }
            }
            Opcode::Challenge | Opcode::Welcome => return Err(BodyError::UnknownOpcode(opcode)),
        })
    }
}

/// An error frame answering `opcode` / `request_id`.
pub fn error_frame(opcode: u16, request_id: u64, err: &ErrorBody) -> Frame {
    Frame::new(FLAG_RESPONSE | FLAG_ERROR, opcode, request_id, to_body(err))
}

/// Appends the error frame answering `opcode` / `request_id` to `out`.
pub fn error_frame_into(opcode: u16, request_id: u64, err: &ErrorBody, out: &mut Vec<u8>) {
    Frame::encode_with(FLAG_RESPONSE | FLAG_ERROR, opcode, request_id, out, |out| {
        to_body_into(err, out)
    })
}

/// Decodes an error frame body.
pub fn decode_error(opcode: u16, body: &[u8]) -> Result<ErrorBody, BodyError> {
    from_body(opcode, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_place_encoding_matches_frames() {
        let cases = [
            (Response::Bytes(vec![7; 300]), Opcode::Sign),
            (Response::Done, Opcode::Ping),
            (
                Response::Welcome(Welcome {
                    session_id: 3,
                    max_body: 9,
                    window: 2,
                }),
                Opcode::Hello,
            ),
            (
                Response::PublicKey {
                    key_type: KeyType::Ed25519,
                    bytes: vec![1; 32],
                },
                Opcode::PublicKey,
            ),
        ];
        for (r, op) in cases {
            let mut out = vec![0xee];
            r.encode_into(op as u16, 42, &mut out);
            assert_eq!(
                out[1..],
                r.to_frame(op as u16, 42).encode()[..],
                "{}",
                r.kind()
            );
        }
        let reqs = [
            Request::Ping,
            Request::Sign {
                key: KeyRef::Id(3),
                data: vec![5; 100],
            },
            Request::Encrypt {
                key: KeyRef::Id(4),
                plaintext: vec![6; 1000],
                aad: vec![1],
            },
        ];
        for r in reqs {
            let mut out = Vec::new();
            r.encode_into(77, &mut out);
            assert_eq!(out, r.to_frame(77).encode());
        }
        let e = ErrorBody::new(Status::KeyNotFound, "no");
        let mut out = Vec::new();
        error_frame_into(5, 6, &e, &mut out);
        assert_eq!(out, error_frame(5, 6, &e).encode());
    }

    fn label() -> impl Strategy<Value = Label> {
        "[A-Za-z][A-Za-z0-9._-]{0,63}".prop_map(|s| s.parse().expect("regex matches label rule"))
    }
    fn key_ref() -> impl Strategy<Value = KeyRef> {
        prop_oneof![
            any::<u32>().prop_map(KeyRef::Id),
            label().prop_map(KeyRef::Label)
        ]
    }
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }
    fn spec() -> impl Strategy<Value = KeySpec> {
        (
            0..6usize,
            label(),
            proptest::option::of(0u16..256),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(t, label, u, exportable, session)| KeySpec {
                key_type: KeyType::ALL[t],
                label,
                usage: u.map(|u| UsageSet::try_from(u).expect("bits in range")),
                exportable,
                session,
            })
    }
    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Ping),
            Just(Request::List),
            any::<u32>().prop_map(|len| Request::Random { len }),
            bytes().prop_map(|data| Request::Digest {
                alg: DigestAlg::Sha512,
                data
            }),
            spec().prop_map(Request::Generate),
            key_ref().prop_map(Request::Info),
            key_ref().prop_map(Request::Delete),
            (key_ref(), bytes()).prop_map(|(key, data)| Request::Sign { key, data }),
            (key_ref(), bytes(), bytes()).prop_map(|(key, data, signature)| Request::Verify {
                key,
                data,
                signature
            }),
            (key_ref(), bytes(), bytes()).prop_map(|(key, plaintext, aad)| Request::Encrypt {
                key,
                plaintext,
                aad
            }),
            (key_ref(), bytes(), spec()).prop_map(|(key, peer, spec)| Request::Derive {
                key,
                peer,
                spec
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request(), id: u64) {
            let frame = req.to_frame(id);
            let back = Request::decode(frame.header.opcode, &frame.body).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn garbage_bodies_never_panic(op in 0u16..80, body in bytes()) {
            let _ = Request::decode(op, &body);
            let _ = Response::decode(op, &body);
        }
    }

    #[test]
    fn responses_round_trip() {
        let info = KeyInfo {
            id: 7,
            label: "k1".parse().unwrap(),
            key_type: KeyType::P256,
            usage: KeyType::P256.allowed_usage(),
            exportable: false,
            lifetime: Lifetime::Session,
            created: 1_700_000_000,
        };
        let cases = [
            (Opcode::Ping, Response::Done),
            (
                Opcode::Hello,
                Response::Challenge(Challenge {
                    session_id: 3,
                    nonce: [7; 32],
                }),
            ),
            (
                Opcode::Hello,
                Response::Welcome(Welcome {
                    session_id: 3,
                    max_body: 9,
                    window: 2,
                }),
            ),
            (
                Opcode::Proof,
                Response::Welcome(Welcome {
                    session_id: 4,
                    max_body: 9,
                    window: 2,
                }),
            ),
            (Opcode::Sign, Response::Bytes(vec![1, 2, 3])),
            (Opcode::Info, Response::Key(info.clone())),
            (Opcode::List, Response::Keys(vec![info.clone(), info])),
            (
                Opcode::PublicKey,
                Response::PublicKey {
                    key_type: KeyType::X25519,
                    bytes: vec![9; 32],
                },
            ),
        ];
        for (op, resp) in cases {
            let f = resp.to_frame(op as u16, 1);
            assert_eq!(Response::decode(op as u16, &f.body).unwrap(), resp);
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        // Trailing bytes after a valid body.
        let mut body = Request::Info(KeyRef::Id(3)).encode_body();
        body.push(0);
        assert!(matches!(
            Request::decode(Opcode::Info as u16, &body),
            Err(BodyError::Malformed { .. })
        ));
        // A body where none belongs.
        assert!(Request::decode(Opcode::Ping as u16, &[1]).is_err());
        // Truncated.
        let body = Request::Sign {
            key: KeyRef::Id(1),
            data: vec![1; 10],
        }
        .encode_body();
        assert!(Request::decode(Opcode::Sign as u16, &body[..body.len() - 1]).is_err());
        // Unknown opcode and server-only opcodes.
        assert_eq!(
            Request::decode(999, &[]),
            Err(BodyError::UnknownOpcode(999))
        );
        assert_eq!(
            Request::decode(Opcode::Welcome as u16, &[]),
            Err(BodyError::UnknownOpcode(4))
        );
        // An invalid label smuggled in the body is refused while decoding.
        let mut body = postcard::to_stdvec(&1u32).unwrap(); // enum tag 1 = Label
        body.extend(postcard::to_stdvec("9bad").unwrap());
        assert!(Request::decode(Opcode::Info as u16, &body).is_err());
        // Unknown usage bits.
        assert!(UsageSet::try_from(0x100).is_err());
    }

    #[test]
    fn labels_and_refs() {
        assert!("a".parse::<Label>().is_ok());
        assert!("Key_1.2-x".parse::<Label>().is_ok());
        assert!("1abc".parse::<Label>().is_err());
        assert!("".parse::<Label>().is_err());
        assert!("a b".parse::<Label>().is_err());
        assert!(format!("a{}", "b".repeat(63)).parse::<Label>().is_ok());
        assert!(format!("a{}", "b".repeat(64)).parse::<Label>().is_err());
        assert_eq!("42".parse::<KeyRef>().unwrap(), KeyRef::Id(42));
        assert!(matches!("k42".parse::<KeyRef>().unwrap(), KeyRef::Label(_)));
        assert!("99999999999".parse::<KeyRef>().is_err());
        assert_eq!(
            "sign,verify".parse::<UsageSet>().unwrap(),
            KeyType::Ed25519.allowed_usage()
        );
        assert!("sign,fly".parse::<UsageSet>().is_err());
    }
}
