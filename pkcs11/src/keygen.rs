//! Keys made from templates: `C_GenerateKey`, `C_GenerateKeyPair`, and the secret-key
//! template that `C_EncapsulateKey`/`C_DecapsulateKey` share with `C_GenerateKey`. A template
//! becomes an hsmd `KeySpec` here (type, label, usage, exportable, session or token); the key
//! itself is always made by hsmd.

use cryptoki_sys::*;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyInfo, KeyType, Label, Request, Response, Usage, UsageSet};

use crate::encoding;
use crate::module::{Module, Rv, Session, lock};
use crate::object::{Class, ck_key_type, handle, key_type_of_set};
use crate::token::Template;

/// An attribute's bytes in a template.
pub(crate) fn get(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    t.iter().find(|(x, _)| *x == a).map(|(_, v)| v.as_slice())
}

/// A CK_BBOOL attribute (one byte).
pub(crate) fn get_bool(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>, Rv> {
    match get(t, a) {
        None => Ok(None),
        Some([v]) => Ok(Some(*v != 0)),
        Some(_) => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// A CK_ULONG attribute.
pub(crate) fn get_ulong(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>, Rv> {
    match get(t, a) {
        None => Ok(None),
        Some(v) => v
            .try_into()
            .map(|b| Some(CK_ULONG::from_ne_bytes(b)))
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// The label of a new key: CKA_LABEL of the first template that has one, else a fresh one.
fn new_label(templates: &[&Template]) -> Result<Label, Rv> {
    for t in templates {
        match get(t, CKA_LABEL) {
            Some([]) | None => continue,
            Some(v) => {
                return std::str::from_utf8(v)
                    .ok()
                    .and_then(|l| l.parse().ok())
                    .ok_or(CKR_ATTRIBUTE_VALUE_INVALID);
            }
        }
    }
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).map_err(|_| CKR_FUNCTION_FAILED)?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("p11-{hex}")
        .parse()
        .map_err(|_| CKR_FUNCTION_FAILED)
}

/// Whether the new key is a token object (persistent) or a session object: CKA_TOKEN,
/// false unless given (PKCS#11's default).
fn is_token(templates: &[&Template]) -> Result<bool, Rv> {
    for t in templates {
        if let Some(v) = get_bool(t, CKA_TOKEN)? {
            return Ok(v);
        }
    }
    Ok(false)
}

/// Whether this session may make the key `spec` describes: logged in, and read-write for a
/// token object.
pub(crate) fn may_create(m: &Module, s: &Session, spec: &KeySpec) -> Result<(), Rv> {
    if !m.slots[s.slot].unlocked() {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    if !spec.session && !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    Ok(())
}

/// Records a key hsmd just made for this token; returns its index.
pub(crate) fn learn(m: &Module, s: &Session, info: KeyInfo) -> usize {
    lock(&m.slots[s.slot].objects).learn(info, false)
}

/// Creates a key at hsmd from a spec and records it; returns its index.
fn create(m: &Module, s: &mut Session, spec: KeySpec) -> Result<usize, Rv> {
    may_create(m, s, &spec)?;
    let info = match s.request(m, Request::Generate(spec))? {
        Response::Key(k) => k,
        _ => return Err(CKR_DEVICE_ERROR),
    };
    Ok(learn(m, s, info))
}

/// The usage a template asks for: the type's default, less what the template turns off.
fn usage_of(
    t: KeyType,
    templates: &[(&Template, &[(CK_ATTRIBUTE_TYPE, Usage)])],
) -> Result<Option<UsageSet>, Rv> {
    let mut usage = t.allowed_usage();
    let mut changed = false;
    for (template, map) in templates {
        for (a, u) in *map {
            if get_bool(template, *a)? == Some(false) {
                usage = UsageSet::of(&usage.iter().filter(|x| x != u).collect::<Vec<_>>());
                changed = true;
            }
        }
    }
    if usage.iter().next().is_none() {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    Ok(changed.then_some(usage))
}

/// The ML-DSA or ML-KEM type a key-pair template asks for: CKA_PARAMETER_SET in the public
/// template (where PKCS#11 3.2 puts it) or the private one; if both, they must agree.
fn post_quantum_type(
    ckk: CK_KEY_TYPE,
    public: &Template,
    private: &Template,
) -> Result<KeyType, Rv> {
    for t in [public, private] {
        if get_ulong(t, CKA_KEY_TYPE)?.is_some_and(|k| k != ckk) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    let set = match (
        get_ulong(public, CKA_PARAMETER_SET)?,
        get_ulong(private, CKA_PARAMETER_SET)?,
    ) {
        (None, None) => return Err(CKR_TEMPLATE_INCOMPLETE),
        (Some(a), Some(b)) if a != b => return Err(CKR_TEMPLATE_INCONSISTENT),
        (Some(p), _) | (None, Some(p)) => p,
    };
    key_type_of_set(ckk, set).ok_or(CKR_ATTRIBUTE_VALUE_INVALID)
}

/// `C_GenerateKeyPair`: P-256 (CKM_EC_KEY_PAIR_GEN with prime256v1), Ed25519, ML-DSA or ML-KEM
/// (by CKA_PARAMETER_SET).
pub fn generate_key_pair(
    m: &Module,
    s: &mut Session,
    mech: CK_MECHANISM_TYPE,
    public: &Template,
    private: &Template,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), Rv> {
    let params = get(public, CKA_EC_PARAMS).or_else(|| get(private, CKA_EC_PARAMS));
    let key_type = match (mech, params) {
        (CKM_EC_KEY_PAIR_GEN, Some(p)) => match encoding::key_type_of_params(p) {
            Some(KeyType::P256) => KeyType::P256,
            _ => return Err(CKR_CURVE_NOT_SUPPORTED),
        },
        (CKM_EC_KEY_PAIR_GEN, None) => return Err(CKR_TEMPLATE_INCOMPLETE),
        (CKM_EC_EDWARDS_KEY_PAIR_GEN, None) => KeyType::Ed25519,
        (CKM_EC_EDWARDS_KEY_PAIR_GEN, Some(p)) => match encoding::key_type_of_params(p) {
            Some(KeyType::Ed25519) => KeyType::Ed25519,
            _ => return Err(CKR_CURVE_NOT_SUPPORTED),
        },
        (CKM_ML_DSA_KEY_PAIR_GEN, _) => post_quantum_type(CKK_ML_DSA, public, private)?,
        (CKM_ML_KEM_KEY_PAIR_GEN, _) => post_quantum_type(CKK_ML_KEM, public, private)?,
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    // Which template attribute turns off which usage (python-pkcs11, for one, sets
    // CKA_ENCAPSULATE on the public template and CKA_DECAPSULATE on the private one).
    let (private_map, public_map): (&[_], &[_]) = if key_type.is_ml_kem() {
        (
            &[(CKA_DECAPSULATE, Usage::Decapsulate)],
            &[(CKA_ENCAPSULATE, Usage::Encapsulate)],
        )
    } else {
        (&[(CKA_SIGN, Usage::Sign)], &[(CKA_VERIFY, Usage::Verify)])
    };
    let usage = usage_of(key_type, &[(private, private_map), (public, public_map)])?;
    let spec = KeySpec {
        key_type,
        label: new_label(&[private, public])?,
        usage,
        exportable: get_bool(private, CKA_EXTRACTABLE)?.unwrap_or(false),
        session: !is_token(&[private, public])?,
    };
    let index = create(m, s, spec)?;
    Ok((handle(index, Class::Public), handle(index, Class::Private)))
}

/// The spec of a new secret key of `key_type` (AES-256, ChaCha20 or a 32-byte HMAC-SHA256
/// key) from its template, for `C_GenerateKey` and (`kem`) `C_EncapsulateKey` and
/// `C_DecapsulateKey`.
///
/// The key is exportable when CKA_EXTRACTABLE is true. A KEM secret made exportable is not
/// sensitive (its CKA_VALUE is readable, as PKCS#11 3.2 asks), so a KEM template asking for
/// one both extractable and sensitive (which PKCS#11 means as "leaves only wrapped") is
/// refused with CKR_TEMPLATE_INCONSISTENT, since the module has no `C_WrapKey`. A generated
/// key stays sensitive whatever its template says, as it always was (hsmctl exports it).
pub(crate) fn secret_spec(
    key_type: KeyType,
    template: &Template,
    kem: bool,
) -> Result<KeySpec, Rv> {
    if get_ulong(template, CKA_CLASS)?.is_some_and(|c| c != CKO_SECRET_KEY) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    if get_ulong(template, CKA_VALUE_LEN)?.is_some_and(|len| len != 32) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if let Some(kt) = get_ulong(template, CKA_KEY_TYPE)? {
        let ok = kt == ck_key_type(key_type)
            || (key_type == KeyType::HmacSha256 && kt == CKK_SHA256_HMAC);
        if !ok {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    let map: &[(CK_ATTRIBUTE_TYPE, Usage)] = match key_type {
        KeyType::HmacSha256 => &[(CKA_SIGN, Usage::Mac)],
        KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 => {
            &[(CKA_ENCRYPT, Usage::Encrypt), (CKA_DECRYPT, Usage::Decrypt)]
        }
        // Key pairs come from C_GenerateKeyPair.
        KeyType::Ed25519
        | KeyType::P256
        | KeyType::X25519
        | KeyType::MlDsa44
        | KeyType::MlDsa65
        | KeyType::MlDsa87
        | KeyType::MlKem512
        | KeyType::MlKem768
        | KeyType::MlKem1024 => return Err(CKR_TEMPLATE_INCONSISTENT),
    };
    let exportable = get_bool(template, CKA_EXTRACTABLE)?.unwrap_or(false);
    if kem && exportable && get_bool(template, CKA_SENSITIVE)? == Some(true) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    Ok(KeySpec {
        key_type,
        label: new_label(&[template])?,
        usage: usage_of(key_type, &[(template, map)])?,
        exportable,
        session: !is_token(&[template])?,
    })
}

/// `C_GenerateKey`: AES-256, ChaCha20 or a 32-byte HMAC-SHA256 key.
pub fn generate_key(
    m: &Module,
    s: &mut Session,
    mech: CK_MECHANISM_TYPE,
    template: &Template,
) -> Result<CK_OBJECT_HANDLE, Rv> {
    let key_type = crate::ops::secret_type(mech).ok_or(CKR_MECHANISM_INVALID)?;
    let spec = secret_spec(key_type, template, false)?;
    let index = create(m, s, spec)?;
    Ok(handle(index, Class::Secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ul(a: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
        (a, v.to_ne_bytes().to_vec())
    }

    #[test]
    fn the_parameter_set_picks_the_type() {
        let set = |p: CK_ULONG| vec![ul(CKA_PARAMETER_SET, p)];
        let none = Vec::new();
        let dsa = |pb: &Template, pr: &Template| post_quantum_type(CKK_ML_DSA, pb, pr);
        assert_eq!(dsa(&set(CKP_ML_DSA_65), &none), Ok(KeyType::MlDsa65));
        assert_eq!(dsa(&none, &set(CKP_ML_DSA_87)), Ok(KeyType::MlDsa87));
        assert_eq!(
            dsa(&set(CKP_ML_DSA_44), &set(CKP_ML_DSA_44)),
            Ok(KeyType::MlDsa44)
        );
        assert_eq!(
            post_quantum_type(CKK_ML_KEM, &set(CKP_ML_KEM_1024), &none),
            Ok(KeyType::MlKem1024)
        );
        assert_eq!(dsa(&none, &none), Err(CKR_TEMPLATE_INCOMPLETE));
        assert_eq!(dsa(&set(9), &none), Err(CKR_ATTRIBUTE_VALUE_INVALID));
        assert_eq!(
            dsa(&set(CKP_ML_DSA_44), &set(CKP_ML_DSA_65)),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        // A CKA_KEY_TYPE of another family, or a parameter set of the wrong width.
        let mut kem = set(CKP_ML_DSA_44);
        kem.push(ul(CKA_KEY_TYPE, CKK_ML_KEM));
        assert_eq!(dsa(&kem, &none), Err(CKR_TEMPLATE_INCONSISTENT));
        let short = vec![(CKA_PARAMETER_SET, vec![1u8])];
        assert_eq!(dsa(&short, &none), Err(CKR_ATTRIBUTE_VALUE_INVALID));
    }

    #[test]
    fn secret_templates() {
        let b = |a: CK_ATTRIBUTE_TYPE, v: bool| (a, vec![u8::from(v)]);
        let aes = KeyType::Aes256Gcm;
        let spec = secret_spec(
            aes,
            &vec![b(CKA_EXTRACTABLE, true), b(CKA_SENSITIVE, false)],
            true,
        );
        assert!(spec.is_ok_and(|s| s.exportable && s.session));
        let spec = secret_spec(aes, &vec![b(CKA_TOKEN, true)], true);
        assert!(spec.is_ok_and(|s| !s.exportable && !s.session));
        // Extractable and sensitive: "leaves only wrapped", which the module cannot offer.
        let both = vec![b(CKA_EXTRACTABLE, true), b(CKA_SENSITIVE, true)];
        assert_eq!(
            secret_spec(aes, &both, true).err(),
            Some(CKR_TEMPLATE_INCONSISTENT)
        );
        // C_GenerateKey takes it, as it always did: an exportable, sensitive key.
        assert!(secret_spec(aes, &both, false).is_ok_and(|s| s.exportable));
        let len = vec![ul(CKA_VALUE_LEN, 16)];
        assert_eq!(
            secret_spec(aes, &len, true).err(),
            Some(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        let class = vec![ul(CKA_CLASS, CKO_PRIVATE_KEY)];
        assert_eq!(
            secret_spec(aes, &class, true).err(),
            Some(CKR_TEMPLATE_INCONSISTENT)
        );
        let hmac = vec![ul(CKA_KEY_TYPE, CKK_SHA256_HMAC)];
        assert!(secret_spec(KeyType::HmacSha256, &hmac, true).is_ok());
        assert_eq!(
            secret_spec(KeyType::MlKem768, &Vec::new(), true).err(),
            Some(CKR_TEMPLATE_INCONSISTENT)
        );
    }
}
