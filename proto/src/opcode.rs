//! Opcodes: one per message kind, stable on the wire (numbers never change meaning).

/// Every message kind. Responses use the opcode of their request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Opcode {
    /// Handshake: client hello (version, client name).
    Hello = 1,
    /// Handshake: server challenge.
    Challenge = 2,
    /// Handshake: client proof.
    Proof = 3,
    /// Handshake: server welcome (session id, limits).
    Welcome = 4,
    /// Session-level liveness check, answered by the session itself.
    Ping = 16,
    /// Random bytes from the server's CSPRNG.
    Random = 17,
    /// The node's name, version, uptime, store and session counts.
    Status = 19,
    /// SHA-2 digest of the body.
    Digest = 18,
    /// Generate a key.
    Generate = 32,
    /// List the caller's keys.
    List = 33,
    /// Describe one key.
    Info = 34,
    /// Public half of an asymmetric key.
    PublicKey = 35,
    /// Raw key bytes of an exportable key.
    Export = 36,
    /// Delete a key.
    Delete = 37,
    /// Sign a message.
    Sign = 48,
    /// Verify a signature.
    Verify = 49,
    /// AEAD encrypt.
    Encrypt = 50,
    /// AEAD decrypt.
    Decrypt = 51,
    /// HMAC compute.
    Mac = 52,
    /// HMAC verify.
    MacVerify = 53,
    /// X25519 + HKDF into a new key.
    Derive = 54,
    /// Re-encrypt a ciphertext under the current key version.
    Rewrap = 55,
    /// ECDSA over a digest the caller computed.
    SignDigest = 56,
    /// Verify an ECDSA signature over a digest.
    VerifyDigest = 57,
    /// AEAD encrypt in the standard layout (nonce, ciphertext, tag; the AAD alone
    /// authenticated), for interoperable callers (PKCS#11).
    EncryptRaw = 58,
    /// AEAD decrypt of the standard layout with the caller's nonce.
    DecryptRaw = 59,
    /// ML-DSA sign with a context string.
    SignContext = 60,
    /// ML-DSA verify with a context string.
    VerifyContext = 61,
    /// ML-KEM encapsulate to a key in the HSM; the shared secret becomes a new key.
    Encapsulate = 62,
    /// ML-KEM encapsulate to a public key from outside; the shared secret becomes a new key.
    EncapsulatePeer = 63,
    /// ML-KEM decapsulate a ciphertext; the shared secret becomes a new key.
    Decapsulate = 47,
    /// Import a key.
    Import = 38,
    /// Wrap a key under a wrap key.
    Wrap = 39,
    /// Unwrap a blob into a new key.
    Unwrap = 40,
    /// Grant a key to another client.
    Grant = 41,
    /// Revoke a grant.
    Revoke = 42,
    /// Add a key version.
    Rotate = 43,
    /// Retire old key versions.
    Retire = 44,
    /// List the keys granted to the caller.
    ListGranted = 45,
    /// Search the caller's keys by label, id and type.
    Find = 46,
    /// Create a counter.
    CounterCreate = 64,
    /// Read a counter.
    CounterRead = 65,
    /// Increment a counter.
    CounterInc = 66,
}

impl Opcode {
    /// Every opcode, requests and the server's own messages.
    pub const ALL: [Opcode; 43] = [
        Opcode::Hello,
        Opcode::Challenge,
        Opcode::Proof,
        Opcode::Welcome,
        Opcode::Ping,
        Opcode::Random,
        Opcode::Digest,
        Opcode::Status,
        Opcode::Generate,
        Opcode::List,
        Opcode::Info,
        Opcode::PublicKey,
        Opcode::Export,
        Opcode::Delete,
        Opcode::Sign,
        Opcode::Verify,
        Opcode::Encrypt,
        Opcode::Decrypt,
        Opcode::Mac,
        Opcode::MacVerify,
        Opcode::Derive,
        Opcode::Rewrap,
        Opcode::SignDigest,
        Opcode::VerifyDigest,
        Opcode::EncryptRaw,
        Opcode::DecryptRaw,
        Opcode::Find,
        Opcode::Import,
        Opcode::Wrap,
        Opcode::Unwrap,
        Opcode::Grant,
        Opcode::Revoke,
        Opcode::Rotate,
        Opcode::Retire,
        Opcode::ListGranted,
        Opcode::CounterCreate,
        Opcode::CounterRead,
        Opcode::CounterInc,
        Opcode::SignContext,
        Opcode::VerifyContext,
        Opcode::Encapsulate,
        Opcode::EncapsulatePeer,
        Opcode::Decapsulate,
    ];

    /// Looks up a wire opcode.
    pub fn from_u16(v: u16) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|o| *o as u16 == v)
    }
}
