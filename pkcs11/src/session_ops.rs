//! What a session's operations hold between their `*Init` and their end: the mechanism's
//! arguments, the input gathered, and the one active operation of each kind.

use std::collections::VecDeque;

use cryptoki_sys::*;
use ferrohsm_proto::KeyRef;
use zeroize::Zeroizing;

/// The most bytes a multi-part operation gathers (what one hsmd request carries, less room
/// for the rest of the request).
pub const MAX_DATA: usize = 1024 * 1024 - 4096;
/// AEAD nonce and tag lengths.
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// A mechanism and its parameters, read from the caller's `CK_MECHANISM`.
#[derive(Debug, Default)]
pub struct MechArgs {
    /// The mechanism.
    pub mech: CK_MECHANISM_TYPE,
    /// AEAD: the caller's IV or nonce.
    pub iv: Option<Vec<u8>>,
    /// AEAD encrypt: where the caller's IV buffer is, to receive hsmd's nonce (written by
    /// the ABI layer, the only place that touches caller memory).
    pub iv_addr: usize,
    /// AEAD: associated data.
    pub aad: Vec<u8>,
    /// AES-GCM: tag length in bits.
    pub tag_bits: Option<CK_ULONG>,
    /// EdDSA: the prehash flag (Ed25519ph), or a context, asked for.
    pub eddsa_variant: bool,
    /// ML-DSA: the optional `CK_SIGN_ADDITIONAL_CONTEXT`.
    pub ml_dsa: Option<SignContext>,
}

/// An ML-DSA `CK_SIGN_ADDITIONAL_CONTEXT`, copied out of the caller's memory.
#[derive(Debug, Default, Clone)]
pub struct SignContext {
    /// `hedgeVariant` (CKH_HEDGE_PREFERRED, CKH_HEDGE_REQUIRED, CKH_DETERMINISTIC_REQUIRED).
    pub hedge: CK_ULONG,
    /// The FIPS 204 context string (empty: none).
    pub context: Vec<u8>,
}

/// What an operation gathers: a single-part call's input, or its updates'.
#[derive(Debug, Default)]
pub(crate) struct Input {
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    updated: bool,
}

impl Input {
    /// An update's bytes, up to [`MAX_DATA`] in all.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), CK_RV> {
        if self.bytes.len() + data.len() > MAX_DATA {
            return Err(CKR_DATA_LEN_RANGE);
        }
        self.bytes.extend_from_slice(data);
        self.updated = true;
        Ok(())
    }

    /// The last step: a single-part call's `data` (refused after an update), or `None` for
    /// `*Final`, which takes what the updates gathered.
    pub(crate) fn finish(&mut self, data: Option<&[u8]>) -> Result<(), CK_RV> {
        if let Some(d) = data {
            if self.updated {
                return Err(CKR_OPERATION_ACTIVE);
            }
            self.bytes = Zeroizing::new(d.to_vec());
        }
        Ok(())
    }
}

/// A signature or MAC being made or checked.
#[derive(Debug)]
pub struct SignOp {
    pub(crate) mech: CK_MECHANISM_TYPE,
    pub(crate) key: KeyRef,
    /// The signature's length (by key type: ML-DSA's depends on the parameter set).
    pub(crate) sig_len: usize,
    /// ML-DSA: the context string (empty: none).
    pub(crate) context: Vec<u8>,
    pub(crate) input: Input,
}

/// An AEAD encryption or decryption.
#[derive(Debug)]
pub struct AeadOp {
    pub(crate) key: KeyRef,
    pub(crate) nonce: Vec<u8>,
    pub(crate) iv_addr: usize,
    pub(crate) aad: Vec<u8>,
    pub(crate) input: Input,
}

/// A local digest.
#[derive(Debug, Clone)]
pub enum DigestOp {
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

/// The operations active on a session.
#[derive(Debug, Default)]
pub struct Operations {
    /// Handles left from `C_FindObjectsInit`.
    pub find: Option<VecDeque<CK_OBJECT_HANDLE>>,
    /// `C_SignInit`.
    pub sign: Option<SignOp>,
    /// `C_VerifyInit`.
    pub verify: Option<SignOp>,
    /// `C_EncryptInit`.
    pub encrypt: Option<AeadOp>,
    /// `C_DecryptInit`.
    pub decrypt: Option<AeadOp>,
    /// `C_DigestInit`.
    pub digest: Option<DigestOp>,
    /// Whether the active digest has had a `C_DigestUpdate` (then `C_Digest` is refused).
    pub digest_updated: bool,
}
