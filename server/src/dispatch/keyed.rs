//! The keyed operations: one computation with one key, the payload taken out of its request,
//! so the inline path and the pooled path run the very same code.

use ferrohsm_proto::{KeyRef, Request, Response, Status};
use zeroize::Zeroizing;

use crate::crypto::{ops, sign};
use crate::error::OpError;
use crate::keys::KeyHandle;
use crate::keys::policy;

/// The operations whose whole work is one computation with one key: the payload taken out of
/// the request, so the inline path and the pooled path run the very same code.
pub(super) enum KeyedOp {
    Sign {
        data: Vec<u8>,
    },
    SignDigest {
        digest: Vec<u8>,
    },
    SignContext {
        data: Vec<u8>,
        context: Vec<u8>,
    },
    VerifyContext {
        data: Vec<u8>,
        signature: Vec<u8>,
        context: Vec<u8>,
    },
    VerifyDigest {
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
    EncryptRaw {
        plaintext: Zeroizing<Vec<u8>>,
        aad: Vec<u8>,
    },
    DecryptRaw {
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
    Verify {
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    Encrypt {
        plaintext: Zeroizing<Vec<u8>>,
        aad: Vec<u8>,
    },
    Decrypt {
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
    Mac {
        data: Vec<u8>,
    },
    MacVerify {
        data: Vec<u8>,
        mac: Vec<u8>,
    },
    Rewrap {
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
}

impl KeyedOp {
    /// The key and the operation of a keyed request; any other request comes back.
    // The request comes back whole, by move (a copy of its fields, never of a payload):
    // boxing it would add an allocation to every request that is not keyed.
    #[allow(clippy::result_large_err)]
    pub(super) fn split(request: Request) -> Result<(KeyRef, KeyedOp), Request> {
        Ok(match request {
            Request::Sign { key, data } => (key, KeyedOp::Sign { data }),
            Request::SignDigest { key, digest } => (key, KeyedOp::SignDigest { digest }),
            Request::SignContext { key, data, context } => {
                (key, KeyedOp::SignContext { data, context })
            }
            Request::VerifyContext {
                key,
                data,
                signature,
                context,
            } => (
                key,
                KeyedOp::VerifyContext {
                    data,
                    signature,
                    context,
                },
            ),
            Request::VerifyDigest {
                key,
                digest,
                signature,
            } => (key, KeyedOp::VerifyDigest { digest, signature }),
            Request::EncryptRaw {
                key,
                plaintext,
                aad,
            } => (
                key,
                KeyedOp::EncryptRaw {
                    plaintext: Zeroizing::new(plaintext),
                    aad,
                },
            ),
            Request::DecryptRaw {
                key,
                nonce,
                ciphertext,
                aad,
            } => (
                key,
                KeyedOp::DecryptRaw {
                    nonce,
                    ciphertext,
                    aad,
                },
            ),
            Request::Verify {
                key,
                data,
                signature,
            } => (key, KeyedOp::Verify { data, signature }),
            Request::Encrypt {
                key,
                plaintext,
                aad,
            } => (
                key,
                KeyedOp::Encrypt {
                    plaintext: Zeroizing::new(plaintext),
                    aad,
                },
            ),
            Request::Decrypt {
                key,
                ciphertext,
                aad,
            } => (key, KeyedOp::Decrypt { ciphertext, aad }),
            Request::Mac { key, data } => (key, KeyedOp::Mac { data }),
            Request::MacVerify { key, data, mac } => (key, KeyedOp::MacVerify { data, mac }),
            Request::Rewrap {
                key,
                ciphertext,
                aad,
            } => (key, KeyedOp::Rewrap { ciphertext, aad }),
            other => return Err(other),
        })
    }

    /// What the operation requires of its key.
    pub(super) fn requirement(&self) -> policy::Requirement {
        match self {
            KeyedOp::Sign { .. } => policy::SIGN,
            KeyedOp::SignDigest { .. } => policy::SIGN_DIGEST,
            KeyedOp::SignContext { .. } => policy::SIGN_CONTEXT,
            KeyedOp::VerifyContext { .. } => policy::VERIFY_CONTEXT,
            KeyedOp::VerifyDigest { .. } => policy::VERIFY_DIGEST,
            KeyedOp::EncryptRaw { .. } => policy::ENCRYPT_RAW,
            KeyedOp::DecryptRaw { .. } => policy::DECRYPT_RAW,
            KeyedOp::Verify { .. } => policy::VERIFY,
            KeyedOp::Encrypt { .. } => policy::ENCRYPT,
            KeyedOp::Decrypt { .. } => policy::DECRYPT,
            KeyedOp::Mac { .. } => policy::MAC,
            KeyedOp::MacVerify { .. } => policy::MAC_VERIFY,
            KeyedOp::Rewrap { .. } => policy::REWRAP,
        }
    }

    /// Bytes the computation reads (what `inline_max` bounds).
    pub(super) fn len(&self) -> usize {
        match self {
            KeyedOp::Sign { data }
            | KeyedOp::Verify { data, .. }
            | KeyedOp::Mac { data }
            | KeyedOp::MacVerify { data, .. }
            | KeyedOp::SignContext { data, .. }
            | KeyedOp::VerifyContext { data, .. } => data.len(),
            KeyedOp::SignDigest { digest } | KeyedOp::VerifyDigest { digest, .. } => digest.len(),
            KeyedOp::Encrypt { plaintext, aad } | KeyedOp::EncryptRaw { plaintext, aad } => {
                plaintext.len() + aad.len()
            }
            KeyedOp::DecryptRaw {
                ciphertext, aad, ..
            } => ciphertext.len() + aad.len(),
            KeyedOp::Decrypt { ciphertext, aad } | KeyedOp::Rewrap { ciphertext, aad } => {
                ciphertext.len() + aad.len()
            }
        }
    }

    /// Runs the operation with `h`: encrypt and mac use the current version; decrypt and
    /// rewrap the version the ciphertext names; mac-verify accepts any live version.
    pub(super) fn run(&self, h: &KeyHandle) -> Result<Response, OpError> {
        let key = &h.material;
        match self {
            KeyedOp::Sign { data } => sign::sign(key, data).map(Response::Bytes),
            KeyedOp::Verify { data, signature } => {
                sign::verify(key, data, signature).map(|_| Response::Done)
            }
            KeyedOp::SignDigest { digest } => sign::sign_digest(key, digest).map(Response::Bytes),
            KeyedOp::SignContext { data, context } => {
                sign::sign_context(key, data, context).map(Response::Bytes)
            }
            KeyedOp::VerifyContext {
                data,
                signature,
                context,
            } => sign::verify_context(key, data, context, signature).map(|_| Response::Done),
            KeyedOp::VerifyDigest { digest, signature } => {
                sign::verify_digest(key, digest, signature).map(|_| Response::Done)
            }
            KeyedOp::EncryptRaw { plaintext, aad } => {
                ops::encrypt_raw(key, plaintext, aad).map(Response::Bytes)
            }
            // Every live version, the current one first (the caller's layout names none).
            KeyedOp::DecryptRaw {
                nonce,
                ciphertext,
                aad,
            } => {
                let mut last = Err(OpError::new(
                    Status::DecryptFailed,
                    "ciphertext did not authenticate",
                ));
                for (_, m) in h.live() {
                    match ops::decrypt_raw(m, nonce, ciphertext, aad) {
                        Ok(p) => return Ok(Response::Bytes(p.to_vec())),
                        Err(e) if e.status == Status::DecryptFailed => last = Err(e),
                        Err(e) => return Err(e),
                    }
                }
                last
            }
            KeyedOp::Encrypt { plaintext, aad } => {
                ops::encrypt(key, h.info.current_version, plaintext, aad).map(Response::Bytes)
            }
            // The plaintext leaves its zeroizing buffer only to be encoded into the response
            // (which the session wipes once written).
            KeyedOp::Decrypt { ciphertext, aad } => {
                decrypt(h, ciphertext, aad).map(|p| Response::Bytes(p.to_vec()))
            }
            KeyedOp::Rewrap { ciphertext, aad } => {
                let plain = decrypt(h, ciphertext, aad)?;
                ops::encrypt(key, h.info.current_version, &plain, aad).map(Response::Bytes)
            }
            KeyedOp::Mac { data } => ops::mac(key, data).map(Response::Bytes),
            KeyedOp::MacVerify { data, mac } => {
                // Every live version is tried (each comparison in constant time), so a tag
                // made before a rotation still verifies until its version is retired.
                let mut result = Err(OpError::new(Status::BadMac, "MAC does not verify"));
                for (_, m) in h.live() {
                    if ops::mac_verify(m, data, mac).is_ok() {
                        result = Ok(Response::Done);
                    }
                }
                result
            }
        }
    }
}

/// Decrypts with the version the ciphertext names.
fn decrypt(h: &KeyHandle, ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let (v, _) = ops::ciphertext_version(ciphertext)?;
    let key = h.version(v).ok_or_else(|| {
        let why = if v == 0 || v > h.info.current_version {
            "which does not exist"
        } else {
            "which is retired"
        };
        OpError::new(
            Status::DecryptFailed,
            format!(
                "the ciphertext was made by version {v} of key {}, {why}",
                h.info.label
            ),
        )
    })?;
    ops::decrypt(key, ciphertext, aad)
}
