//! ML-KEM through PKCS#11 3.2's `C_EncapsulateKey` and `C_DecapsulateKey`. The 32-byte
//! shared secret never reaches the module: hsmd keeps it as a new key of the caller's
//! (AES-256, ChaCha20 or HMAC-SHA256, from the template's CKA_KEY_TYPE), which shows here as a
//! secret-key object like any other.
//!
//! ```text
//!  C_EncapsulateKey(public ML-KEM object, template) -> ciphertext + secret-key object
//!  C_DecapsulateKey(private ML-KEM object, template, ciphertext) -> secret-key object
//! ```

use cryptoki_sys::*;
use ferrohsm_proto::{KeyRef, KeySpec, KeyType, Opcode, Request, Response};

use crate::keygen::{get_ulong, learn, may_create, secret_spec};
use crate::mech;
use crate::module::{Module, Rv, Session};
use crate::object::{Class, Known, handle, key_types_of};
use crate::ops::{MechArgs, check_key, key_for};
use crate::token::Template;

/// An encapsulation checked and ready: nothing is made until [`encapsulate`] runs, so a
/// length query (a NULL ciphertext buffer) costs no key.
#[derive(Debug)]
pub struct Encapsulation {
    key: KeyRef,
    spec: KeySpec,
    /// The ciphertext's length (the ML-KEM parameter set's).
    pub ciphertext_len: usize,
}

/// The type of the new secret key: the template's CKA_KEY_TYPE, one hsmd keeps a KEM secret
/// as (CKK_AES, CKK_CHACHA20, CKK_GENERIC_SECRET or CKK_SHA256_HMAC for HMAC-SHA256).
fn secret_type(template: &Template) -> Result<KeyType, Rv> {
    let ckk = get_ulong(template, CKA_KEY_TYPE)?.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    if ckk == CKK_SHA256_HMAC {
        return Ok(KeyType::HmacSha256);
    }
    key_types_of(ckk)
        .find(|t| !t.is_asymmetric())
        .ok_or(CKR_TEMPLATE_INCONSISTENT)
}

/// The ML-KEM key behind handle `h` (an object of `class`), fit for `sends`, and its
/// ciphertext length.
fn kem_key(
    m: &Module,
    s: &Session,
    args: &MechArgs,
    h: CK_OBJECT_HANDLE,
    class: Class,
    sends: Opcode,
) -> Result<(Known, usize), Rv> {
    if args.mech != CKM_ML_KEM {
        return Err(CKR_MECHANISM_INVALID);
    }
    let (k, _) = key_for(m, s, h, &[class])?;
    check_key(&k, CKM_ML_KEM, sends)?;
    let len = mech::ciphertext_len(k.info.key_type).ok_or(CKR_KEY_TYPE_INCONSISTENT)?;
    Ok((k, len))
}

/// Checks a `C_EncapsulateKey`: the mechanism, the public key, the template.
pub fn prepare_encapsulate(
    m: &Module,
    s: &Session,
    args: &MechArgs,
    h: CK_OBJECT_HANDLE,
    template: &Template,
) -> Result<Encapsulation, Rv> {
    let (k, ciphertext_len) = kem_key(m, s, args, h, Class::Public, Opcode::Encapsulate)?;
    let spec = secret_spec(secret_type(template)?, template, true)?;
    may_create(m, s, &spec)?;
    Ok(Encapsulation {
        key: k.key_ref(),
        spec,
        ciphertext_len,
    })
}

/// `C_EncapsulateKey`: the ciphertext, and the handle of the new secret key.
pub fn encapsulate(
    m: &Module,
    s: &mut Session,
    e: Encapsulation,
) -> Result<(Vec<u8>, CK_OBJECT_HANDLE), Rv> {
    let req = Request::Encapsulate {
        key: e.key,
        spec: e.spec,
    };
    let (ciphertext, info) = match s.request(m, req)? {
        Response::Encapsulated { ciphertext, key } => (ciphertext, key),
        _ => return Err(CKR_DEVICE_ERROR),
    };
    let index = learn(m, s, info);
    if ciphertext.len() != e.ciphertext_len {
        return Err(CKR_DEVICE_ERROR);
    }
    Ok((ciphertext, handle(index, Class::Secret)))
}

/// `C_DecapsulateKey`: the handle of the new secret key. A ciphertext of another length than
/// the parameter set's is CKR_WRAPPED_KEY_LEN_RANGE (checked here, before hsmd); a tampered one
/// of the right length gives FIPS 203's implicit-rejection secret, never an error. The new key
/// may be extractable only if the ML-KEM key is (hsmd's rule for derived keys): otherwise the
/// template cannot be honoured, CKR_TEMPLATE_INCONSISTENT.
pub fn decapsulate(
    m: &Module,
    s: &mut Session,
    args: &MechArgs,
    h: CK_OBJECT_HANDLE,
    template: &Template,
    ciphertext: &[u8],
) -> Result<CK_OBJECT_HANDLE, Rv> {
    let (k, len) = kem_key(m, s, args, h, Class::Private, Opcode::Decapsulate)?;
    if ciphertext.len() != len {
        return Err(CKR_WRAPPED_KEY_LEN_RANGE);
    }
    let spec = secret_spec(secret_type(template)?, template, true)?;
    may_create(m, s, &spec)?;
    if spec.exportable && !k.info.exportable {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let req = Request::Decapsulate {
        key: k.key_ref(),
        ciphertext: ciphertext.to_vec(),
        spec,
    };
    let info = match s.request(m, req) {
        Ok(Response::Key(info)) => info,
        Ok(_) => return Err(CKR_DEVICE_ERROR),
        // hsmd's not_exportable: the same rule, decided there.
        Err(CKR_KEY_UNEXTRACTABLE) => return Err(CKR_TEMPLATE_INCONSISTENT),
        Err(e) => return Err(e),
    };
    Ok(handle(learn(m, s, info), Class::Secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_key_type_comes_from_ckk() {
        let t = |k: CK_KEY_TYPE| secret_type(&vec![(CKA_KEY_TYPE, k.to_ne_bytes().to_vec())]);
        assert_eq!(t(CKK_AES), Ok(KeyType::Aes256Gcm));
        assert_eq!(t(CKK_CHACHA20), Ok(KeyType::ChaCha20Poly1305));
        assert_eq!(t(CKK_GENERIC_SECRET), Ok(KeyType::HmacSha256));
        assert_eq!(t(CKK_SHA256_HMAC), Ok(KeyType::HmacSha256));
        assert_eq!(t(CKK_EC), Err(CKR_TEMPLATE_INCONSISTENT));
        assert_eq!(t(CKK_ML_KEM), Err(CKR_TEMPLATE_INCONSISTENT));
        assert_eq!(t(CKK_DES3), Err(CKR_TEMPLATE_INCONSISTENT));
        assert_eq!(secret_type(&Vec::new()), Err(CKR_TEMPLATE_INCOMPLETE));
    }
}
