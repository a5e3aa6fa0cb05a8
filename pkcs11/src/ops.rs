//! Cryptographic operations of a session: sign and verify, encrypt and decrypt, digest.
//! Each follows PKCS#11's life cycle: `*Init` checks the key and the mechanism and stores the
//! operation; single-part calls or `*Update`s then `*Final` finish it; any error but a
//! too-small output buffer ends it.

use cryptoki_sys::*;
use ferrohsm_proto::{KeyType, MAX_CONTEXT, Opcode, Request};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::encoding;
use crate::mech;
use crate::module::{Module, Rv, Session, lock};
use crate::object::{Class, Known};

pub use crate::session_ops::MechArgs;
use crate::session_ops::{AeadOp, DigestOp, Input, NONCE_LEN, SignOp, TAG_LEN};

/// The key behind handle `h`, if it is one of `classes` and may be used now.
pub fn key_for(
    m: &Module,
    s: &Session,
    h: CK_OBJECT_HANDLE,
    classes: &[Class],
) -> Result<(Known, Class), Rv> {
    let slot = &m.slots[s.slot];
    let (_, class, k) = lock(&slot.objects)
        .object(h)
        .ok_or(CKR_KEY_HANDLE_INVALID)?;
    if class != Class::Public && !slot.unlocked() {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    if !classes.contains(&class) {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    Ok((k, class))
}

/// Whether `k` fits `mech` and carries the usage flags that hsmd will ask of it for `sends`
/// (read from the request kind's description, so the module and hsmd cannot disagree).
pub(crate) fn check_key(k: &Known, mech: CK_MECHANISM_TYPE, sends: Opcode) -> Result<(), Rv> {
    if !mech::for_key(k.info.key_type).contains(&mech) {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    let (usage, also) = sends.kind().key.usages();
    if [usage, also]
        .into_iter()
        .flatten()
        .any(|u| !k.info.usage.contains(u))
    {
        return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    Ok(())
}

/// The request a sign or verify operation with `mech` (and an ML-DSA context or not) sends.
fn sign_opcode(mech: CK_MECHANISM_TYPE, verify: bool, context: bool) -> Opcode {
    match (mech, verify, context) {
        (CKM_ECDSA, false, _) => Opcode::SignDigest,
        (CKM_ECDSA, true, _) => Opcode::VerifyDigest,
        (CKM_SHA256_HMAC, false, _) => Opcode::Mac,
        (CKM_SHA256_HMAC, true, _) => Opcode::MacVerify,
        (CKM_ML_DSA, false, true) => Opcode::SignContext,
        (CKM_ML_DSA, true, true) => Opcode::VerifyContext,
        (_, false, _) => Opcode::Sign,
        (_, true, _) => Opcode::Verify,
    }
}

/// The context string of an ML-DSA operation, from its optional `CK_SIGN_ADDITIONAL_CONTEXT`.
/// hsmd always signs hedged (fresh randomness), so a signature may prefer or require hedging
/// but not ask to be deterministic; verification ignores the hedge variant (PKCS#11 3.2).
fn ml_dsa_context(args: &MechArgs, verify: bool) -> Result<Vec<u8>, Rv> {
    let Some(c) = &args.ml_dsa else {
        return Ok(Vec::new());
    };
    let hedge_ok = verify || matches!(c.hedge, CKH_HEDGE_PREFERRED | CKH_HEDGE_REQUIRED);
    if !hedge_ok || c.context.len() > MAX_CONTEXT {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok(c.context.clone())
}

/// `C_SignInit` / `C_VerifyInit`.
pub fn sign_init(
    m: &Module,
    s: &mut Session,
    args: &MechArgs,
    h: CK_OBJECT_HANDLE,
    verify: bool,
) -> Result<(), Rv> {
    if sign_slot(s, verify).is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    if !matches!(
        args.mech,
        CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_EDDSA | CKM_SHA256_HMAC | CKM_ML_DSA
    ) {
        return Err(CKR_MECHANISM_INVALID);
    }
    if args.eddsa_variant {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let context = ml_dsa_context(args, verify)?;
    let classes: &[Class] = if verify {
        &[Class::Public, Class::Private, Class::Secret]
    } else {
        &[Class::Private, Class::Secret]
    };
    let (k, _) = key_for(m, s, h, classes)?;
    check_key(
        &k,
        args.mech,
        sign_opcode(args.mech, verify, !context.is_empty()),
    )?;
    let op = SignOp {
        mech: args.mech,
        key: k.key_ref(),
        sig_len: mech::signature_len(k.info.key_type),
        context,
        input: Input::default(),
    };
    *sign_slot(s, verify) = Some(op);
    Ok(())
}

fn sign_slot(s: &mut Session, verify: bool) -> &mut Option<SignOp> {
    if verify {
        &mut s.ops.verify
    } else {
        &mut s.ops.sign
    }
}

/// The signature length of the active sign operation.
pub fn sign_len(s: &Session) -> Result<usize, Rv> {
    s.ops
        .sign
        .as_ref()
        .map(|op| op.sig_len)
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)
}

/// `C_SignUpdate` / `C_VerifyUpdate`.
pub fn sign_update(s: &mut Session, data: &[u8], verify: bool) -> Result<(), Rv> {
    let slot = sign_slot(s, verify);
    let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    // Raw ECDSA signs one digest: it has no multi-part form.
    let r = if op.mech == CKM_ECDSA {
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    } else {
        op.input.push(data)
    };
    if r.is_err() {
        *slot = None;
    }
    r
}

/// Takes the operation for its last step: `data` for a single-part call (refused after an
/// update), `None` for `*Final`.
fn take_sign(s: &mut Session, data: Option<&[u8]>, verify: bool) -> Result<SignOp, Rv> {
    let mut op = sign_slot(s, verify)
        .take()
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.input.finish(data)?;
    if op.mech == CKM_ECDSA && !(16..=64).contains(&op.input.bytes.len()) {
        return Err(CKR_DATA_LEN_RANGE);
    }
    Ok(op)
}

/// `C_Sign` (with `data`) or `C_SignFinal`: the signature (ECDSA raw r||s) or MAC.
pub fn sign(m: &Module, s: &mut Session, data: Option<&[u8]>) -> Result<Vec<u8>, Rv> {
    let op = take_sign(s, data, false)?;
    let (key, data, mech) = (op.key.clone(), op.input.bytes.to_vec(), op.mech);
    let has_context = !op.context.is_empty();
    let req = match mech {
        CKM_ECDSA => Request::SignDigest { key, digest: data },
        CKM_SHA256_HMAC => Request::Mac { key, data },
        CKM_ML_DSA if has_context => Request::SignContext {
            key,
            data,
            context: op.context,
        },
        _ => Request::Sign { key, data },
    };
    debug_assert_eq!(req.opcode(), sign_opcode(mech, false, has_context));
    let out = s.bytes(m, req)?;
    if matches!(mech, CKM_ECDSA | CKM_ECDSA_SHA256) {
        encoding::der_to_raw(&out)
            .map(|r| r.to_vec())
            .ok_or(CKR_DEVICE_ERROR)
    } else {
        Ok(out)
    }
}

/// `C_Verify` (with `data`) or `C_VerifyFinal`.
pub fn verify(
    m: &Module,
    s: &mut Session,
    data: Option<&[u8]>,
    signature: &[u8],
) -> Result<(), Rv> {
    let op = take_sign(s, data, true)?;
    if signature.len() != op.sig_len {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    let signature = match op.mech {
        CKM_ECDSA | CKM_ECDSA_SHA256 => {
            let mut raw = [0u8; 64];
            raw.copy_from_slice(signature);
            encoding::raw_to_der(&raw)
        }
        _ => signature.to_vec(),
    };
    let (key, data, mech) = (op.key.clone(), op.input.bytes.to_vec(), op.mech);
    let has_context = !op.context.is_empty();
    let req = match mech {
        CKM_ML_DSA if has_context => Request::VerifyContext {
            key,
            data,
            signature,
            context: op.context,
        },
        CKM_ECDSA => Request::VerifyDigest {
            key,
            digest: data,
            signature,
        },
        CKM_SHA256_HMAC => Request::MacVerify {
            key,
            data,
            mac: signature,
        },
        _ => Request::Verify {
            key,
            data,
            signature,
        },
    };
    debug_assert_eq!(req.opcode(), sign_opcode(mech, true, has_context));
    s.done(m, req)
}

/// `C_EncryptInit` / `C_DecryptInit`. Decryption honours the caller's nonce; encryption takes
/// hsmd's fresh one, so the caller's IV must be a zeroed 12-byte buffer, which receives it.
pub fn crypt_init(
    m: &Module,
    s: &mut Session,
    args: &MechArgs,
    h: CK_OBJECT_HANDLE,
    decrypt: bool,
) -> Result<(), Rv> {
    let active = if decrypt {
        &s.ops.decrypt
    } else {
        &s.ops.encrypt
    };
    if active.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    if !matches!(args.mech, CKM_AES_GCM | CKM_CHACHA20_POLY1305) {
        return Err(CKR_MECHANISM_INVALID);
    }
    let nonce = args.iv.clone().ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if nonce.len() != NONCE_LEN {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    if args.mech == CKM_AES_GCM && args.tag_bits != Some(128) {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    if !decrypt && nonce.iter().any(|b| *b != 0) {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let (k, _) = key_for(m, s, h, &[Class::Secret])?;
    check_key(
        &k,
        args.mech,
        if decrypt {
            Opcode::DecryptRaw
        } else {
            Opcode::EncryptRaw
        },
    )?;
    let op = AeadOp {
        key: k.key_ref(),
        nonce,
        iv_addr: args.iv_addr,
        aad: args.aad.clone(),
        input: Input::default(),
    };
    *crypt_slot(s, decrypt) = Some(op);
    Ok(())
}

fn crypt_slot(s: &mut Session, decrypt: bool) -> &mut Option<AeadOp> {
    if decrypt {
        &mut s.ops.decrypt
    } else {
        &mut s.ops.encrypt
    }
}

/// The output length once `more` bytes are added to what the operation holds.
pub fn crypt_len(s: &mut Session, decrypt: bool, more: usize) -> Result<usize, Rv> {
    let slot = crypt_slot(s, decrypt);
    let op = slot.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let total = op.input.bytes.len() + more;
    if !decrypt {
        return Ok(total + TAG_LEN);
    }
    total.checked_sub(TAG_LEN).ok_or_else(|| {
        *slot = None;
        CKR_ENCRYPTED_DATA_LEN_RANGE
    })
}

/// `C_EncryptUpdate` / `C_DecryptUpdate`: gathered; AEAD output comes at the end.
pub fn crypt_update(s: &mut Session, decrypt: bool, data: &[u8]) -> Result<(), Rv> {
    let slot = crypt_slot(s, decrypt);
    let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let r = op.input.push(data);
    if r.is_err() {
        *slot = None;
    }
    r
}

fn take_crypt(s: &mut Session, decrypt: bool, data: Option<&[u8]>) -> Result<AeadOp, Rv> {
    let mut op = crypt_slot(s, decrypt)
        .take()
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.input.finish(data)?;
    Ok(op)
}

/// What an encryption gives back: the ciphertext then tag, and hsmd's nonce with where the
/// caller wants it.
#[derive(Debug)]
pub struct Sealed {
    /// Ciphertext then tag.
    pub out: Vec<u8>,
    /// The nonce hsmd chose.
    pub nonce: [u8; NONCE_LEN],
    /// The caller's IV buffer.
    pub iv_addr: usize,
}

/// `C_Encrypt` (with `data`) or `C_EncryptFinal`.
pub fn encrypt(m: &Module, s: &mut Session, data: Option<&[u8]>) -> Result<Sealed, Rv> {
    let op = take_crypt(s, false, data)?;
    let (key, aad) = (op.key.clone(), op.aad.clone());
    let plaintext = op.input.bytes.to_vec();
    let out = s.bytes(
        m,
        Request::EncryptRaw {
            key,
            plaintext,
            aad,
        },
    )?;
    if out.len() < NONCE_LEN + TAG_LEN {
        return Err(CKR_DEVICE_ERROR);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&out[..NONCE_LEN]);
    Ok(Sealed {
        out: out[NONCE_LEN..].to_vec(),
        nonce,
        iv_addr: op.iv_addr,
    })
}

/// `C_Decrypt` (with `data`) or `C_DecryptFinal`.
pub fn decrypt(m: &Module, s: &mut Session, data: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let op = take_crypt(s, true, data)?;
    if op.input.bytes.len() < TAG_LEN {
        return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
    let (key, nonce, aad) = (op.key.clone(), op.nonce.clone(), op.aad.clone());
    let ciphertext = op.input.bytes.to_vec();
    s.bytes(
        m,
        Request::DecryptRaw {
            key,
            nonce,
            ciphertext,
            aad,
        },
    )
    .map(Zeroizing::new)
}

/// `C_DigestInit` (computed here: a digest needs no key).
pub fn digest_init(s: &mut Session, mech: CK_MECHANISM_TYPE) -> Result<(), Rv> {
    if s.ops.digest.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    s.ops.digest = Some(match mech {
        CKM_SHA256 => DigestOp::Sha256(sha2::Sha256::new()),
        CKM_SHA512 => DigestOp::Sha512(sha2::Sha512::new()),
        _ => return Err(CKR_MECHANISM_INVALID),
    });
    s.ops.digest_updated = false;
    Ok(())
}

/// The digest length of the active digest.
pub fn digest_len(s: &Session) -> Result<usize, Rv> {
    match s.ops.digest {
        Some(DigestOp::Sha256(_)) => Ok(32),
        Some(DigestOp::Sha512(_)) => Ok(64),
        None => Err(CKR_OPERATION_NOT_INITIALIZED),
    }
}

/// `C_DigestUpdate`.
pub fn digest_update(s: &mut Session, data: &[u8]) -> Result<(), Rv> {
    match s.ops.digest.as_mut() {
        Some(DigestOp::Sha256(h)) => h.update(data),
        Some(DigestOp::Sha512(h)) => h.update(data),
        None => return Err(CKR_OPERATION_NOT_INITIALIZED),
    }
    s.ops.digest_updated = true;
    Ok(())
}

/// `C_Digest`: the whole message at once; refused (and the digest ended) after an update,
/// as for signatures.
pub fn digest_once(s: &mut Session, data: &[u8]) -> Result<Vec<u8>, Rv> {
    if s.ops.digest_updated {
        s.ops.digest = None;
        s.ops.digest_updated = false;
        return Err(CKR_OPERATION_ACTIVE);
    }
    digest_update(s, data)?;
    digest_final(s)
}

/// `C_DigestFinal`.
pub fn digest_final(s: &mut Session) -> Result<Vec<u8>, Rv> {
    s.ops.digest_updated = false;
    match s.ops.digest.take() {
        Some(DigestOp::Sha256(h)) => Ok(h.finalize().to_vec()),
        Some(DigestOp::Sha512(h)) => Ok(h.finalize().to_vec()),
        None => Err(CKR_OPERATION_NOT_INITIALIZED),
    }
}

/// Key types the symmetric generators make.
pub fn secret_type(mech: CK_MECHANISM_TYPE) -> Option<KeyType> {
    Some(match mech {
        CKM_AES_KEY_GEN => KeyType::Aes256Gcm,
        CKM_CHACHA20_KEY_GEN => KeyType::ChaCha20Poly1305,
        CKM_GENERIC_SECRET_KEY_GEN => KeyType::HmacSha256,
        _ => return None,
    })
}
