//! DER and PEM encodings of the key types, as OpenSSL reads and writes them.
//!
//! Only the fixed-shape encodings FerroHSM needs are supported, so they are built and parsed as
//! a known prefix followed by the raw key (RFC 8410 for Ed25519/X25519, RFC 5480 for P-256).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::KeyType;

const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const X25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_PKCS8: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const X25519_PKCS8: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

fn spki_prefix(t: KeyType) -> Option<(&'static [u8], usize)> {
    match t {
        KeyType::Ed25519 => Some((ED25519_SPKI, 32)),
        KeyType::X25519 => Some((X25519_SPKI, 32)),
        KeyType::P256 => Some((P256_SPKI, 65)),
        KeyType::ChaCha20Poly1305 | KeyType::Aes256Gcm | KeyType::HmacSha256 => None,
    }
}

/// SubjectPublicKeyInfo DER of a raw public key; `None` for symmetric types or a wrong length.
pub fn spki_der(t: KeyType, raw: &[u8]) -> Option<Vec<u8>> {
    let (prefix, len) = spki_prefix(t)?;
    (raw.len() == len).then(|| [prefix, raw].concat())
}

/// Parses SubjectPublicKeyInfo DER into its key type and raw public key.
pub fn parse_spki(der: &[u8]) -> Option<(KeyType, Vec<u8>)> {
    [KeyType::Ed25519, KeyType::X25519, KeyType::P256]
        .into_iter()
        .find_map(|t| {
            let (prefix, len) = spki_prefix(t)?;
            let raw = der.strip_prefix(prefix)?;
            (raw.len() == len).then(|| (t, raw.to_vec()))
        })
}

/// PKCS#8 DER of an Ed25519 private key seed (as `openssl genpkey -algorithm ed25519` writes).
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    [ED25519_PKCS8, seed].concat()
}

/// The 32-byte seed of an Ed25519 PKCS#8 document.
pub fn parse_ed25519_pkcs8(der: &[u8]) -> Option<[u8; 32]> {
    der.strip_prefix(ED25519_PKCS8)?.try_into().ok()
}

/// The 32-byte private key of an X25519 PKCS#8 document (as `openssl genpkey -algorithm
/// x25519` writes).
pub fn parse_x25519_pkcs8(der: &[u8]) -> Option<[u8; 32]> {
    der.strip_prefix(X25519_PKCS8)?.try_into().ok()
}

/// PEM armour with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block labelled `label`.
pub fn pem_decode(label: &str, text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip_and_refusals() {
        for (t, len) in [
            (KeyType::Ed25519, 32),
            (KeyType::X25519, 32),
            (KeyType::P256, 65),
        ] {
            let raw = vec![4u8; len];
            let der = spki_der(t, &raw).unwrap();
            assert_eq!(parse_spki(&der), Some((t, raw.clone())));
            let pem = pem_encode("PUBLIC KEY", &der);
            assert_eq!(pem_decode("PUBLIC KEY", &pem).unwrap(), der);
            assert!(spki_der(t, &raw[1..]).is_none());
            assert!(parse_spki(&der[..der.len() - 1]).is_none());
        }
        assert!(spki_der(KeyType::Aes256Gcm, &[0; 32]).is_none());
        assert!(pem_decode("PUBLIC KEY", "no pem here").is_none());
        let seed = [9u8; 32];
        assert_eq!(parse_ed25519_pkcs8(&ed25519_pkcs8(&seed)), Some(seed));
    }
}
