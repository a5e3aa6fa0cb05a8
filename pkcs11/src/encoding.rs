//! The byte encodings PKCS#11 consumers expect: EC parameters and points as OpenSSL and
//! GnuTLS read them, and ECDSA signatures as raw r||s (PKCS#11) rather than DER (hsmd).

use ferrohsm_proto::KeyType;

/// DER OID 1.2.840.10045.3.1.7 (prime256v1).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// PrintableString "edwards25519" (the form PKCS#11 3.0 gives for Ed25519).
pub const ED25519_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// DER OID 1.3.101.112 (id-Ed25519), also accepted.
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PrintableString "curve25519".
pub const X25519_PARAMS: &[u8] = b"\x13\x0acurve25519";

/// The key type EC parameters name (an OID or a curve name), if it is one hsmd has.
pub fn key_type_of_params(params: &[u8]) -> Option<KeyType> {
    if params == P256_PARAMS {
        return Some(KeyType::P256);
    }
    if params == ED25519_PARAMS || params == ED25519_OID {
        return Some(KeyType::Ed25519);
    }
    // A PrintableString curve name.
    let name = match params {
        [0x13, n, rest @ ..] if *n as usize == rest.len() => rest,
        _ => return None,
    };
    match name {
        b"prime256v1" | b"secp256r1" | b"P-256" => Some(KeyType::P256),
        b"edwards25519" | b"ed25519" => Some(KeyType::Ed25519),
        _ => None,
    }
}

/// CKA_EC_PARAMS of a key type.
pub fn params_of(t: KeyType) -> Option<&'static [u8]> {
    match t {
        KeyType::P256 => Some(P256_PARAMS),
        KeyType::Ed25519 => Some(ED25519_PARAMS),
        KeyType::X25519 => Some(X25519_PARAMS),
        KeyType::ChaCha20Poly1305 | KeyType::Aes256Gcm | KeyType::HmacSha256 => None,
        // Not elliptic curves: their parameter set is CKA_PARAMETER_SET.
        KeyType::MlDsa44
        | KeyType::MlDsa65
        | KeyType::MlDsa87
        | KeyType::MlKem512
        | KeyType::MlKem768
        | KeyType::MlKem1024 => None,
    }
}

/// CKA_EC_POINT: the raw public key (P-256 uncompressed, 25519 curves 32 bytes) in a DER
/// OCTET STRING.
pub fn ec_point(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.push(0x04);
    out.push(raw.len() as u8);
    out.extend_from_slice(raw);
    out
}

/// A DER ECDSA signature `SEQUENCE { INTEGER r, INTEGER s }` as raw r||s (32 bytes each).
pub fn der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let body = match der {
        [0x30, len, body @ ..] if *len as usize == body.len() => body,
        _ => return None,
    };
    let (r, rest) = der_int(body)?;
    let (s, rest) = der_int(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = [0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    Some(out)
}

/// One DER INTEGER (positive, at most 32 bytes once its sign byte is dropped) and the rest.
fn der_int(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let [0x02, len, rest @ ..] = b else {
        return None;
    };
    let len = *len as usize;
    if len == 0 || rest.len() < len {
        return None;
    }
    let (mut v, rest) = rest.split_at(len);
    if v[0] == 0 && v.len() > 1 {
        v = &v[1..];
    }
    (v.len() <= 32).then_some((v, rest))
}

/// Raw r||s as a DER ECDSA signature.
pub fn raw_to_der(raw: &[u8; 64]) -> Vec<u8> {
    fn int(v: &[u8], out: &mut Vec<u8>) {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len() - 1);
        let v = &v[start..];
        let pad = v[0] & 0x80 != 0;
        out.push(0x02);
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(72);
    int(&raw[..32], &mut body);
    int(&raw[32..], &mut body);
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_through_der() {
        for raw in [[0x11u8; 64], [0x80; 64], [0; 64], {
            let mut r = [0u8; 64];
            r[5] = 0x7f;
            r[63] = 1;
            r
        }] {
            let der = raw_to_der(&raw);
            assert_eq!(der_to_raw(&der), Some(raw));
        }
        assert_eq!(der_to_raw(&[0x30, 0x02, 0x02, 0x00]), None);
        assert_eq!(der_to_raw(&[]), None);
        // A 33-byte r without its sign byte is refused.
        let mut bad = vec![0x30, 0x26, 0x02, 0x21];
        bad.extend_from_slice(&[1; 33]);
        bad.extend_from_slice(&[0x02, 0x01, 0x01]);
        assert_eq!(der_to_raw(&bad), None);
    }

    #[test]
    fn params_in_every_accepted_form() {
        assert_eq!(key_type_of_params(P256_PARAMS), Some(KeyType::P256));
        assert_eq!(
            key_type_of_params(b"\x13\x0aprime256v1"),
            Some(KeyType::P256)
        );
        assert_eq!(key_type_of_params(ED25519_PARAMS), Some(KeyType::Ed25519));
        assert_eq!(key_type_of_params(ED25519_OID), Some(KeyType::Ed25519));
        assert_eq!(key_type_of_params(b"\x13\x09secp384r1"), None);
        assert_eq!(key_type_of_params(b"\x13\x20short"), None);
        assert_eq!(key_type_of_params(&[]), None);
    }
}
