//! Token-level work of a session: login, object search and attributes, key generation and
//! deletion, random bytes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cryptoki_sys::*;
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{
    KeyInfo, KeyQuery, KeyType, Label, Lifetime, MAX_RANDOM, Page, Request, Response, Usage,
    UsageSet,
};

use crate::encoding;
use crate::module::{Module, Rv, Session, Slot, lock};
use crate::object::{Class, Value, attribute, classes, handle, needs_public};

/// A template: attribute types and their values' bytes.
pub type Template = Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>;

/// How long a wrong PIN makes the next answer wait: doubling from 100 ms, at most 5 s.
pub fn pin_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(5))
}

/// `C_Login`. Guesses at a PIN are serialized per slot and each wrong one slows the answer,
/// up to `limit` (the module's `timeout_ms`: no call waits longer).
pub fn login(slot: &Slot, user: CK_USER_TYPE, pin: &[u8], limit: Duration) -> Result<(), Rv> {
    match user {
        CKU_USER => {}
        CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
        _ => return Err(CKR_USER_TYPE_INVALID),
    }
    if slot.logged_in.load(Ordering::Acquire) {
        return Err(CKR_USER_ALREADY_LOGGED_IN);
    }
    let mut failures = lock(&slot.failures);
    if let Some(h) = &slot.pin
        && !h.verify(pin)
    {
        *failures = failures.saturating_add(1);
        std::thread::sleep(pin_delay(*failures).min(limit));
        return Err(CKR_PIN_INCORRECT);
    }
    *failures = 0;
    slot.logged_in.store(true, Ordering::Release);
    Ok(())
}

/// `C_Logout`.
pub fn logout(slot: &Slot) -> Result<(), Rv> {
    if slot.logged_in.swap(false, Ordering::AcqRel) {
        Ok(())
    } else {
        Err(CKR_USER_NOT_LOGGED_IN)
    }
}

fn get(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    t.iter().find(|(x, _)| *x == a).map(|(_, v)| v.as_slice())
}

fn get_bool(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>, Rv> {
    match get(t, a) {
        None => Ok(None),
        Some([v]) => Ok(Some(*v != 0)),
        Some(_) => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

fn get_ulong(t: &Template, a: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>, Rv> {
    match get(t, a) {
        None => Ok(None),
        Some(v) => v
            .try_into()
            .map(|b| Some(CK_ULONG::from_ne_bytes(b)))
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// The key type a CKA_KEY_TYPE names.
fn key_type_of(k: CK_KEY_TYPE) -> Option<KeyType> {
    KeyType::ALL
        .into_iter()
        .find(|t| crate::object::ck_key_type(*t) == k)
}

/// `C_FindObjectsInit`: the search narrowed at hsmd by label, id and type, then every
/// attribute of the template matched here.
pub fn find_init(m: &Module, s: &mut Session, template: Template) -> Result<(), Rv> {
    if s.ops.find.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let mut query = KeyQuery::default();
    // Which of the two namespaces can match: the token's own keys, the granted ones.
    let (mut own, mut granted) = (true, true);
    for (t, v) in &template {
        match *t {
            CKA_LABEL => {
                match std::str::from_utf8(v).map(|l| (l.contains(':'), l.parse::<Label>())) {
                    Ok((true, _)) => own = false,
                    Ok((false, Ok(l))) => {
                        query.label = Some(l);
                        granted = false;
                    }
                    _ => (own, granted) = (false, false),
                }
            }
            CKA_ID => match <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes) {
                Ok(id) if id >> 32 == 0 => {
                    query.id = Some(id as u32);
                    granted = false;
                }
                Ok(_) => own = false,
                Err(_) => (own, granted) = (false, false),
            },
            CKA_KEY_TYPE => {
                match <[u8; 8]>::try_from(v.as_slice())
                    .ok()
                    .map(CK_ULONG::from_ne_bytes)
                    .and_then(key_type_of)
                {
                    Some(kt) => query.key_type = Some(kt),
                    None => (own, granted) = (false, false),
                }
            }
            _ => {}
        }
    }
    let mut found: Vec<(KeyInfo, bool)> = Vec::new();
    if own {
        // Every page of the matches.
        let mut page = Some(Page::FIRST);
        while let Some(p) = page {
            let q = KeyQuery {
                page: p,
                ..query.clone()
            };
            let keys = s.keys(m, Request::Find(q))?;
            page = p.next(&keys);
            found.extend(keys.into_iter().map(|k| (k, false)));
        }
    }
    if granted {
        let keys = s.keys(m, Request::ListGranted)?;
        found.extend(
            keys.into_iter()
                .filter(|k| query.matches(k))
                .map(|k| (k, true)),
        );
    }
    let slot = &m.slots[s.slot];
    let wants_public = template.iter().any(|(t, _)| needs_public(*t));
    let mut handles = VecDeque::new();
    for (info, is_granted) in found {
        let t = info.key_type;
        let index = lock(&slot.objects).learn(info, is_granted);
        if wants_public {
            // A key whose public half cannot be read simply does not match.
            let _ = fetch_public(m, s, index);
        }
        let Some(k) = lock(&slot.objects).get(index).cloned() else {
            continue;
        };
        for &class in classes(t) {
            if class != Class::Public && !slot.unlocked() {
                continue;
            }
            let matches = template
                .iter()
                .all(|(a, v)| attribute(&k, class, *a) == Value::Bytes(v.clone()));
            if matches {
                handles.push_back(handle(index, class));
            }
        }
    }
    s.ops.find = Some(handles);
    Ok(())
}

/// Reads the public half of the key at `index` into the slot's table, if not there yet.
fn fetch_public(m: &Module, s: &mut Session, index: usize) -> Result<(), Rv> {
    let slot = &m.slots[s.slot];
    let key = {
        let objects = lock(&slot.objects);
        match objects.get(index) {
            Some(k) if k.public.is_none() && k.info.key_type.is_asymmetric() => k.key_ref(),
            _ => return Ok(()),
        }
    };
    let bytes = match s.request(m, Request::PublicKey(key))? {
        Response::PublicKey { bytes, .. } => bytes,
        _ => return Err(CKR_DEVICE_ERROR),
    };
    lock(&slot.objects).set_public(index, bytes);
    Ok(())
}

/// `C_GetAttributeValue`: one answer per asked attribute.
pub fn attributes(
    m: &Module,
    s: &mut Session,
    h: CK_OBJECT_HANDLE,
    types: &[CK_ATTRIBUTE_TYPE],
) -> Result<Vec<Value>, Rv> {
    let slot = &m.slots[s.slot];
    let (index, class, k) = lock(&slot.objects)
        .object(h)
        .ok_or(CKR_OBJECT_HANDLE_INVALID)?;
    if class != Class::Public && !slot.unlocked() {
        return Err(CKR_OBJECT_HANDLE_INVALID);
    }
    let k = if types.iter().any(|t| needs_public(*t)) && k.public.is_none() {
        fetch_public(m, s, index)?;
        lock(&slot.objects)
            .get(index)
            .cloned()
            .ok_or(CKR_OBJECT_HANDLE_INVALID)?
    } else {
        k
    };
    Ok(types
        .iter()
        .map(|t| match attribute(&k, class, *t) {
            Value::NeedsPublic => Value::Invalid,
            v => v,
        })
        .collect())
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

/// Creates a key at hsmd from a spec and records it; returns its index.
fn create(m: &Module, s: &mut Session, spec: KeySpec) -> Result<usize, Rv> {
    let slot = &m.slots[s.slot];
    if !slot.unlocked() {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    if !spec.session && !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    let info = match s.request(m, Request::Generate(spec))? {
        Response::Key(k) => k,
        _ => return Err(CKR_DEVICE_ERROR),
    };
    Ok(lock(&slot.objects).learn(info, false))
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

/// `C_GenerateKeyPair`: P-256 (CKM_EC_KEY_PAIR_GEN with prime256v1) or Ed25519.
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
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    let usage = usage_of(
        key_type,
        &[
            (private, &[(CKA_SIGN, Usage::Sign)]),
            (public, &[(CKA_VERIFY, Usage::Verify)]),
        ],
    )?;
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

/// `C_GenerateKey`: AES-256, ChaCha20 or a 32-byte HMAC-SHA256 key.
pub fn generate_key(
    m: &Module,
    s: &mut Session,
    mech: CK_MECHANISM_TYPE,
    template: &Template,
) -> Result<CK_OBJECT_HANDLE, Rv> {
    let key_type = crate::ops::secret_type(mech).ok_or(CKR_MECHANISM_INVALID)?;
    if get_ulong(template, CKA_VALUE_LEN)?.is_some_and(|len| len != 32) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if let Some(kt) = get_ulong(template, CKA_KEY_TYPE)? {
        let ok = kt == crate::object::ck_key_type(key_type)
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
        | KeyType::MlKem1024 => return Err(CKR_MECHANISM_INVALID),
    };
    let spec = KeySpec {
        key_type,
        label: new_label(&[template])?,
        usage: usage_of(key_type, &[(template, map)])?,
        exportable: get_bool(template, CKA_EXTRACTABLE)?.unwrap_or(false),
        session: !is_token(&[template])?,
    };
    let index = create(m, s, spec)?;
    Ok(handle(index, Class::Secret))
}

/// `C_DestroyObject`: deletes the key. A public object is the visible half of a private key
/// and is not deleted on its own; a granted key is its owner's to delete.
pub fn destroy(m: &Module, s: &mut Session, h: CK_OBJECT_HANDLE) -> Result<(), Rv> {
    let slot = &m.slots[s.slot];
    let (index, class, k) = lock(&slot.objects)
        .object(h)
        .ok_or(CKR_OBJECT_HANDLE_INVALID)?;
    if class != Class::Public && !slot.unlocked() {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    if class == Class::Public || k.granted {
        return Err(CKR_ACTION_PROHIBITED);
    }
    if k.info.lifetime == Lifetime::Persistent && !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    let key = k.key_ref();
    s.done(m, Request::Delete(key)).map_err(|e| {
        if e == CKR_KEY_HANDLE_INVALID {
            CKR_OBJECT_HANDLE_INVALID
        } else {
            e
        }
    })?;
    lock(&slot.objects).forget(index);
    Ok(())
}

/// `C_GenerateRandom`: hsmd's generator, in requests of at most 64 KiB.
pub fn random(m: &Module, s: &mut Session, len: usize) -> Result<Vec<u8>, Rv> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(MAX_RANDOM as usize) as u32;
        let chunk = s.bytes(m, Request::Random { len: n })?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_pins_slow_down_up_to_a_bound() {
        assert_eq!(pin_delay(1), Duration::from_millis(100));
        assert_eq!(pin_delay(2), Duration::from_millis(200));
        assert_eq!(pin_delay(6), Duration::from_millis(3200));
        assert_eq!(pin_delay(7), Duration::from_secs(5));
        assert_eq!(pin_delay(u32::MAX), Duration::from_secs(5));
    }
}
