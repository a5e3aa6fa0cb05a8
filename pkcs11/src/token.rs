//! Token-level work of a session: login, object search and attributes, deletion, random
//! bytes. (Keys are made in `keygen.rs` and `kem.rs`.)

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cryptoki_sys::*;
use ferrohsm_proto::{
    KeyInfo, KeyQuery, KeyType, Label, Lifetime, MAX_RANDOM, Page, Request, Response,
};
use zeroize::Zeroizing;

use crate::module::{Module, Rv, Session, Slot, lock};
use crate::object::{Class, Known, Value, attribute, classes, handle, key_types_of, needs_public};

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
                let ckk = <[u8; 8]>::try_from(v.as_slice()).map(CK_ULONG::from_ne_bytes);
                // One hsmd type narrows the search there; CKK_ML_DSA and CKK_ML_KEM name
                // one per parameter set, so they are matched here.
                let types: Vec<KeyType> = ckk.map_or(Vec::new(), |k| key_types_of(k).collect());
                match types[..] {
                    [] => (own, granted) = (false, false),
                    [kt] => query.key_type = Some(kt),
                    _ => {}
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
    let wants_public = |t: KeyType| {
        classes(t)
            .iter()
            .any(|c| template.iter().any(|(a, _)| needs_public(*c, *a)))
    };
    let mut handles = VecDeque::new();
    for (info, is_granted) in found {
        let t = info.key_type;
        let index = lock(&slot.objects).learn(info, is_granted);
        if wants_public(t) {
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
    let k = if types.iter().any(|t| needs_public(class, *t)) && k.public.is_none() {
        fetch_public(m, s, index)?;
        lock(&slot.objects)
            .get(index)
            .cloned()
            .ok_or(CKR_OBJECT_HANDLE_INVALID)?
    } else {
        k
    };
    types
        .iter()
        .map(|t| match attribute(&k, class, *t) {
            Value::NeedsPublic => Ok(Value::Invalid),
            Value::NeedsSecret => secret_value(m, s, &k),
            v => Ok(v),
        })
        .collect()
}

/// An exportable secret key's bytes, read from hsmd (its export rule: the owner's key, and
/// exportable) each time they are asked for; never kept in the module.
fn secret_value(m: &Module, s: &mut Session, k: &Known) -> Result<Value, Rv> {
    let bytes = Zeroizing::new(s.bytes(m, Request::Export(k.key_ref()))?);
    if bytes.len() != k.info.key_type.describe().secret_len {
        return Err(CKR_DEVICE_ERROR);
    }
    Ok(Value::Secret(bytes))
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
