//! Requests: one variant per opcode, encoded from borrowed payloads, decoded by opcode.

use serde::{Deserialize, Serialize};

use super::body::{BodyError, empty_body, from_body, to_body_into};
use super::hello::{Hello, Proof};
use super::types::{DigestAlg, KeyQuery, KeyRef, KeySpec, Label, Page, UsageSet};
use crate::frame::{Frame, Opcode};
use crate::wire::{Buf, Raw};

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
    /// The node's status (name, version, uptime, store, sessions).
    Status,
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
    /// List keys, one page at a time.
    List(Page),
    /// List the keys other clients granted to the caller (their `owner`, and `usage` as
    /// granted).
    ListGranted,
    /// Search the caller's keys by label, id and type.
    Find(KeyQuery),
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
    /// ML-DSA sign with a FIPS 204 context string (1 to 255 bytes; an empty context is a
    /// plain `Sign`).
    SignContext {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
        /// Context string.
        context: Vec<u8>,
    },
    /// ML-DSA verify with a FIPS 204 context string.
    VerifyContext {
        /// Key.
        key: KeyRef,
        /// Message.
        data: Vec<u8>,
        /// Signature.
        signature: Vec<u8>,
        /// Context string.
        context: Vec<u8>,
    },
    /// ML-KEM: encapsulate to the key; the answer is the ciphertext, and the 32-byte shared
    /// secret becomes a new key of the caller's (`spec`: aes256gcm, chacha20poly1305 or
    /// hmac-sha256).
    Encapsulate {
        /// The ML-KEM key (usage encapsulate).
        key: KeyRef,
        /// The new key.
        spec: KeySpec,
    },
    /// ML-KEM: encapsulate to a public key from outside (SubjectPublicKeyInfo DER).
    EncapsulatePeer {
        /// The peer's ML-KEM public key, SubjectPublicKeyInfo DER.
        peer: Vec<u8>,
        /// The new key.
        spec: KeySpec,
    },
    /// ML-KEM: decapsulate a ciphertext; the shared secret becomes a new key.
    Decapsulate {
        /// The ML-KEM key (usage decapsulate).
        key: KeyRef,
        /// The ciphertext.
        ciphertext: Vec<u8>,
        /// The new key.
        spec: KeySpec,
    },
    /// ECDSA P-256 over a digest the caller computed (16 to 64 bytes, used as ECDSA
    /// prescribes: its leftmost 256 bits); the signature is DER, as `Sign` makes.
    SignDigest {
        /// Key.
        key: KeyRef,
        /// The digest.
        digest: Vec<u8>,
    },
    /// Verify a DER ECDSA P-256 signature over a digest.
    VerifyDigest {
        /// Key.
        key: KeyRef,
        /// The digest.
        digest: Vec<u8>,
        /// DER signature.
        signature: Vec<u8>,
    },
    /// AEAD encrypt in the standard layout: the answer is the server's fresh 12-byte nonce,
    /// then the ciphertext and the 16-byte tag, authenticated with `aad` alone, under the
    /// key's current version. The server always picks the nonce.
    EncryptRaw {
        /// Key.
        key: KeyRef,
        /// Plaintext.
        plaintext: Vec<u8>,
        /// Associated data.
        aad: Vec<u8>,
    },
    /// AEAD decrypt of the standard layout: ciphertext then tag, with the caller's 12-byte
    /// nonce; each live version of the key is tried, the current one first.
    DecryptRaw {
        /// Key.
        key: KeyRef,
        /// Nonce (12 bytes).
        nonce: Vec<u8>,
        /// Ciphertext then tag.
        ciphertext: Vec<u8>,
        /// Associated data.
        aad: Vec<u8>,
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
    /// Bring an existing key in: PKCS#8 DER for ed25519, p256 and x25519, 32 raw bytes for the
    /// symmetric types. The new key's origin is `imported`.
    Import {
        /// The new key (its `session` flag makes a session key).
        spec: KeySpec,
        /// The key (secret).
        material: Vec<u8>,
    },
    /// Seal a key's material and record under a wrap key into a self-describing blob.
    Wrap {
        /// The key to wrap.
        key: KeyRef,
        /// The wrap key (aes256gcm with usage wrap).
        with: KeyRef,
    },
    /// Create a key from a wrapped blob (usage and exportable as recorded in it).
    Unwrap {
        /// The wrap key (usage unwrap).
        with: KeyRef,
        /// The blob `Wrap` made.
        blob: Vec<u8>,
        /// Label of the new key.
        label: Label,
    },
    /// Let another client use a key for some operations.
    Grant {
        /// The caller's key.
        key: KeyRef,
        /// The client it is granted to.
        to: Label,
        /// Operations granted (usage flags; a subset of the key's).
        ops: UsageSet,
    },
    /// Withdraw a grant.
    Revoke {
        /// The caller's key.
        key: KeyRef,
        /// The client whose grant ends.
        from: Label,
    },
    /// Add a new version to an encryption or MAC key and make it current.
    Rotate(KeyRef),
    /// Delete the material of every version below `below`.
    Retire {
        /// Key.
        key: KeyRef,
        /// Lowest version kept.
        below: u32,
    },
    /// Re-encrypt a ciphertext under the key's current version, inside the server.
    Rewrap {
        /// Key.
        key: KeyRef,
        /// Ciphertext (any non-retired version).
        ciphertext: Vec<u8>,
        /// Associated data (the same for both).
        aad: Vec<u8>,
    },
    /// Create a monotonic counter at 0.
    CounterCreate(Label),
    /// Read a counter.
    CounterRead(Label),
    /// Increment a counter; answers the new value once it is durable.
    CounterInc(Label),
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

impl Request {
    /// The opcode of this request.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Proof(_) => Opcode::Proof,
            Request::Ping => Opcode::Ping,
            Request::Status => Opcode::Status,
            Request::Random { .. } => Opcode::Random,
            Request::Digest { .. } => Opcode::Digest,
            Request::Generate(_) => Opcode::Generate,
            Request::List(_) => Opcode::List,
            Request::ListGranted => Opcode::ListGranted,
            Request::Find(_) => Opcode::Find,
            Request::Info(_) => Opcode::Info,
            Request::PublicKey(_) => Opcode::PublicKey,
            Request::Export(_) => Opcode::Export,
            Request::Delete(_) => Opcode::Delete,
            Request::Sign { .. } => Opcode::Sign,
            Request::Verify { .. } => Opcode::Verify,
            Request::SignDigest { .. } => Opcode::SignDigest,
            Request::SignContext { .. } => Opcode::SignContext,
            Request::VerifyContext { .. } => Opcode::VerifyContext,
            Request::Encapsulate { .. } => Opcode::Encapsulate,
            Request::EncapsulatePeer { .. } => Opcode::EncapsulatePeer,
            Request::Decapsulate { .. } => Opcode::Decapsulate,
            Request::VerifyDigest { .. } => Opcode::VerifyDigest,
            Request::EncryptRaw { .. } => Opcode::EncryptRaw,
            Request::DecryptRaw { .. } => Opcode::DecryptRaw,
            Request::Encrypt { .. } => Opcode::Encrypt,
            Request::Decrypt { .. } => Opcode::Decrypt,
            Request::Mac { .. } => Opcode::Mac,
            Request::MacVerify { .. } => Opcode::MacVerify,
            Request::Derive { .. } => Opcode::Derive,
            Request::Import { .. } => Opcode::Import,
            Request::Wrap { .. } => Opcode::Wrap,
            Request::Unwrap { .. } => Opcode::Unwrap,
            Request::Grant { .. } => Opcode::Grant,
            Request::Revoke { .. } => Opcode::Revoke,
            Request::Rotate(_) => Opcode::Rotate,
            Request::Retire { .. } => Opcode::Retire,
            Request::Rewrap { .. } => Opcode::Rewrap,
            Request::CounterCreate(_) => Opcode::CounterCreate,
            Request::CounterRead(_) => Opcode::CounterRead,
            Request::CounterInc(_) => Opcode::CounterInc,
        }
    }

    /// The postcard body of this request.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body_into(&mut out);
        out
    }

    /// Wipes the secrets this request carries (key material being imported, a plaintext to
    /// encrypt), once they have been encoded.
    pub fn wipe(&mut self) {
        use zeroize::Zeroize as _;
        match self {
            Request::Import { material, .. } => material.zeroize(),
            Request::Encrypt { plaintext, .. } | Request::EncryptRaw { plaintext, .. } => {
                plaintext.zeroize()
            }
            _ => {}
        }
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
            Request::Ping | Request::Status | Request::ListGranted => {}
            // The first page with the server's page size is an empty body (as before paging).
            Request::List(page) if *page == Page::default() => {}
            Request::List(page) => to_body_into(page, out),
            Request::Find(q) => to_body_into(q, out),
            Request::Random { len } => to_body_into(len, out),
            Request::Digest { alg, data } => to_body_into(&(alg, Raw(data)), out),
            Request::Generate(spec) => to_body_into(spec, out),
            Request::Info(k) | Request::PublicKey(k) | Request::Export(k) | Request::Delete(k) => {
                to_body_into(k, out)
            }
            Request::Sign { key, data }
            | Request::Mac { key, data }
            | Request::SignDigest { key, digest: data } => kd(key, data, out),
            Request::VerifyDigest {
                key,
                digest,
                signature,
            } => kdt(key, digest, signature, out),
            Request::SignContext { key, data, context } => kdt(key, data, context, out),
            Request::VerifyContext {
                key,
                data,
                signature,
                context,
            } => to_body_into(&(key, Raw(data), Raw(signature), Raw(context)), out),
            Request::Encapsulate { key, spec } => to_body_into(&(key, spec), out),
            Request::EncapsulatePeer { peer, spec } => to_body_into(&(Raw(peer), spec), out),
            Request::Decapsulate {
                key,
                ciphertext,
                spec,
            } => to_body_into(&(key, Raw(ciphertext), spec), out),
            Request::EncryptRaw {
                key,
                plaintext,
                aad,
            } => kdt(key, plaintext, aad, out),
            Request::DecryptRaw {
                key,
                nonce,
                ciphertext,
                aad,
            } => to_body_into(&(key, Raw(nonce), Raw(ciphertext), Raw(aad)), out),
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
            Request::Import { spec, material } => to_body_into(&(spec, Raw(material)), out),
            Request::Wrap { key, with } => to_body_into(&(key, with), out),
            Request::Unwrap { with, blob, label } => to_body_into(&(with, Raw(blob), label), out),
            Request::Grant { key, to, ops } => to_body_into(&(key, to, ops), out),
            Request::Revoke { key, from } => to_body_into(&(key, from), out),
            Request::Rotate(k) => to_body_into(k, out),
            Request::Retire { key, below } => to_body_into(&(key, below), out),
            Request::Rewrap {
                key,
                ciphertext,
                aad,
            } => kdt(key, ciphertext, aad, out),
            Request::CounterCreate(n) | Request::CounterRead(n) | Request::CounterInc(n) => {
                to_body_into(n, out)
            }
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
            Opcode::Status => empty_body(opcode, body).map(|_| Request::Status)?,
            Opcode::List if body.is_empty() => Request::List(Page::default()),
            Opcode::List => Request::List(from_body(opcode, body)?),
            Opcode::ListGranted => empty_body(opcode, body).map(|_| Request::ListGranted)?,
            Opcode::Find => Request::Find(from_body(opcode, body)?),
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
            Opcode::SignDigest => kd().map(|b| Request::SignDigest {
                key: b.key,
                digest: b.data.0,
            })?,
            Opcode::SignContext => kdt().map(|b| Request::SignContext {
                key: b.key,
                data: b.data.0,
                context: b.tag.0,
            })?,
            Opcode::VerifyContext => {
                let (key, Buf(data), Buf(signature), Buf(context)) = from_body(opcode, body)?;
                Request::VerifyContext {
                    key,
                    data,
                    signature,
                    context,
                }
            }
            Opcode::Encapsulate => {
                let (key, spec) = from_body(opcode, body)?;
                Request::Encapsulate { key, spec }
            }
            Opcode::EncapsulatePeer => {
                let (Buf(peer), spec) = from_body(opcode, body)?;
                Request::EncapsulatePeer { peer, spec }
            }
            Opcode::Decapsulate => {
                let (key, Buf(ciphertext), spec) = from_body(opcode, body)?;
                Request::Decapsulate {
                    key,
                    ciphertext,
                    spec,
                }
            }
            Opcode::VerifyDigest => kdt().map(|b| Request::VerifyDigest {
                key: b.key,
                digest: b.data.0,
                signature: b.tag.0,
            })?,
            Opcode::EncryptRaw => kdt().map(|b| Request::EncryptRaw {
                key: b.key,
                plaintext: b.data.0,
                aad: b.tag.0,
            })?,
            Opcode::DecryptRaw => {
                let (key, Buf(nonce), Buf(ciphertext), Buf(aad)) = from_body(opcode, body)?;
                Request::DecryptRaw {
                    key,
                    nonce,
                    ciphertext,
                    aad,
                }
            }
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
            Opcode::Import => {
                let (spec, Buf(material)) = from_body(opcode, body)?;
                Request::Import { spec, material }
            }
            Opcode::Wrap => {
                let (key, with) = from_body(opcode, body)?;
                Request::Wrap { key, with }
            }
            Opcode::Unwrap => {
                let (with, Buf(blob), label) = from_body(opcode, body)?;
                Request::Unwrap { with, blob, label }
            }
            Opcode::Grant => {
                let (key, to, ops) = from_body(opcode, body)?;
                Request::Grant { key, to, ops }
            }
            Opcode::Revoke => {
                let (key, from) = from_body(opcode, body)?;
                Request::Revoke { key, from }
            }
            Opcode::Rotate => Request::Rotate(from_body(opcode, body)?),
            Opcode::Retire => {
                let (key, below) = from_body(opcode, body)?;
                Request::Retire { key, below }
            }
            Opcode::Rewrap => kdt().map(|b| Request::Rewrap {
                key: b.key,
                ciphertext: b.data.0,
                aad: b.tag.0,
            })?,
            Opcode::CounterCreate => Request::CounterCreate(from_body(opcode, body)?),
            Opcode::CounterRead => Request::CounterRead(from_body(opcode, body)?),
            Opcode::CounterInc => Request::CounterInc(from_body(opcode, body)?),
            Opcode::Challenge | Opcode::Welcome => return Err(BodyError::UnknownOpcode(opcode)),
        })
    }
}
