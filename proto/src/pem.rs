//! DER and PEM encodings of the key types, as OpenSSL reads and writes them.
//!
//! Only the fixed-shape encodings FerroHSM needs are supported: public keys as the type's
//! AlgorithmIdentifier (from [`KeyType::describe`]) and the raw key (RFC 8410 for
//! Ed25519/X25519, RFC 5480 for P-256, the NIST OIDs for ML-DSA and ML-KEM); Ed25519 and X25519
//! private keys as a known prefix and the seed; ML-DSA and ML-KEM private keys in their
//! seed/expandedKey/both CHOICE.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::KeyType;

const ED25519_PKCS8: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const X25519_PKCS8: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// A DER TLV: `tag`, the definite length (short or long form), `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let be = n.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// SubjectPublicKeyInfo DER of a raw public key: the type's AlgorithmIdentifier and the key
/// in a BIT STRING; `None` for symmetric types or a wrong length.
pub fn spki_der(t: KeyType, raw: &[u8]) -> Option<Vec<u8>> {
    let form = t.describe().public?;
    (raw.len() == form.len).then(|| {
        let bits = tlv(0x03, &[&[0u8][..], raw].concat());
        tlv(0x30, &[form.algorithm, &bits[..]].concat())
    })
}

/// Parses SubjectPublicKeyInfo DER into its key type and raw public key: the DER must be
/// exactly what [`spki_der`] makes for some type (one algorithm, no parameters beyond the
/// P-256 curve, the whole input consumed).
pub fn parse_spki(der: &[u8]) -> Option<(KeyType, Vec<u8>)> {
    let (body, rest) = read_tlv(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    KeyType::ALL.into_iter().find_map(|t| {
        let form = t.describe().public?;
        let bits = body.strip_prefix(form.algorithm)?;
        let (bits, rest) = read_tlv(bits, 0x03)?;
        let raw = bits.strip_prefix(&[0u8])?;
        (rest.is_empty() && raw.len() == form.len).then(|| (t, raw.to_vec()))
    })
}

/// Reads one DER TLV of tag `tag` at the start of `der`: its content and what follows. Only
/// minimal definite lengths are taken (DER), up to 4 length bytes.
fn read_tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        if len < 0x80 {
            return None;
        }
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The private key of an ML-DSA or ML-KEM PKCS#8 document (RFC 9881 and the ML-KEM profile,
/// which share one shape): the CHOICE of seed, expanded key, or both.
#[derive(PartialEq, Eq)]
pub enum PqPrivateKey {
    /// `seed [0] IMPLICIT OCTET STRING`: ML-DSA's 32-byte ξ or ML-KEM's 64-byte `d || z`.
    Seed(zeroize::Zeroizing<Vec<u8>>),
    /// `expandedKey OCTET STRING`: the expanded secret key alone.
    Expanded,
    /// `both SEQUENCE { seed, expandedKey }`.
    Both {
        /// The seed.
        seed: zeroize::Zeroizing<Vec<u8>>,
        /// The expanded secret key, to check against the seed.
        expanded: zeroize::Zeroizing<Vec<u8>>,
    },
}

impl std::fmt::Debug for PqPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PqPrivateKey::Seed(_) => "PqPrivateKey::Seed(..)",
            PqPrivateKey::Expanded => "PqPrivateKey::Expanded",
            PqPrivateKey::Both { .. } => "PqPrivateKey::Both(..)",
        })
    }
}

/// An ML-DSA or ML-KEM PKCS#8 private key, parsed.
#[derive(Debug)]
pub struct PqDocument {
    /// The type its algorithm OID names.
    pub key_type: KeyType,
    /// The private key.
    pub private: PqPrivateKey,
    /// The public key a version 2 document carries (`[1] publicKey`), to check against the
    /// one the private key makes.
    pub public: Option<Vec<u8>>,
}

/// Parses an ML-DSA or ML-KEM PKCS#8 private key (DER, RFC 5958): its type (from the
/// algorithm OID), its private-key CHOICE and, in a version 2 document, its public key; `None`
/// if it is not one (another algorithm, bad DER, anything after the private key but optional
/// `[0] attributes` and, in version 2, `[1] publicKey`, trailing bytes).
pub fn parse_pq_pkcs8(der: &[u8]) -> Option<PqDocument> {
    use zeroize::Zeroizing;
    let (body, rest) = read_tlv(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (version, body) = read_tlv(body, 0x02)?;
    let v2 = match version {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    let t = KeyType::ALL.into_iter().find(|t| {
        (t.is_ml_dsa() || t.is_ml_kem())
            && t.describe()
                .public
                .is_some_and(|p| body.starts_with(p.algorithm))
    })?;
    let body = &body[t.describe().public?.algorithm.len()..];
    let (key, mut rest) = read_tlv(body, 0x04)?;
    if rest.first() == Some(&0xa0) {
        rest = read_tlv(rest, 0xa0)?.1;
    }
    let mut public = None;
    if v2 && rest.first() == Some(&0x81) {
        let (bits, after) = read_tlv(rest, 0x81)?;
        public = Some(bits.strip_prefix(&[0u8])?.to_vec());
        rest = after;
    }
    if !rest.is_empty() {
        return None;
    }
    let own = |b: &[u8]| Zeroizing::new(b.to_vec());
    let choice = match key.first()? {
        0x80 => {
            let (seed, rest) = read_tlv(key, 0x80)?;
            rest.is_empty().then(|| PqPrivateKey::Seed(own(seed)))?
        }
        0x04 => {
            let (_, rest) = read_tlv(key, 0x04)?;
            rest.is_empty().then_some(PqPrivateKey::Expanded)?
        }
        0x30 => {
            let (both, rest) = read_tlv(key, 0x30)?;
            let (seed, after) = read_tlv(both, 0x04)?;
            let (expanded, end) = read_tlv(after, 0x04)?;
            (rest.is_empty() && end.is_empty()).then(|| PqPrivateKey::Both {
                seed: own(seed),
                expanded: own(expanded),
            })?
        }
        _ => return None,
    };
    Some(PqDocument {
        key_type: t,
        private: choice,
        public,
    })
}

/// PKCS#8 DER of an ML-DSA or ML-KEM seed in the `seed` form (what `openssl genpkey` and
/// pyca/cryptography write); `None` for other types.
pub fn pq_seed_pkcs8(t: KeyType, seed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    if !(t.is_ml_dsa() || t.is_ml_kem()) {
        return None;
    }
    use zeroize::Zeroizing;
    let alg = t.describe().public?.algorithm;
    let inner = Zeroizing::new(tlv(0x80, seed));
    let key = Zeroizing::new(tlv(0x04, &inner));
    let body = Zeroizing::new([&[0x02, 0x01, 0x00][..], alg, &key].concat());
    Some(Zeroizing::new(tlv(0x30, &body)))
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

    /// The prefixes OpenSSL writes, byte for byte (the old constants of this module).
    #[test]
    fn classic_spki_bytes_unchanged() {
        let ed = spki_der(KeyType::Ed25519, &[7; 32]).unwrap();
        assert_eq!(
            &ed[..12],
            &[
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00
            ]
        );
        let p = spki_der(KeyType::P256, &[4; 65]).unwrap();
        assert_eq!(&p[..4], &[0x30, 0x59, 0x30, 0x13]);
        assert_eq!(&p[23..26], &[0x03, 0x42, 0x00]);
        let m = spki_der(KeyType::MlDsa44, &[1; 1312]).unwrap();
        assert_eq!(&m[..4], &[0x30, 0x82, 0x05, 0x32]);
        assert_eq!(&m[17..22], &[0x03, 0x82, 0x05, 0x21, 0x00]);
    }

    #[test]
    fn pq_pkcs8_forms() {
        for t in KeyType::ALL
            .into_iter()
            .filter(|t| t.is_ml_dsa() || t.is_ml_kem())
        {
            let n = t.describe().secret_len;
            let seed = vec![3u8; n];
            let der = pq_seed_pkcs8(t, &seed).unwrap();
            match parse_pq_pkcs8(&der) {
                Some(PqDocument {
                    key_type,
                    private: PqPrivateKey::Seed(s),
                    public: None,
                }) => {
                    assert_eq!(key_type, t);
                    assert_eq!(*s, seed);
                }
                other => panic!("{t}: {other:?}"),
            }
            // Attributes may follow; a public key only in version 2; nothing else.
            // The seed documents are short: a 2-byte header.
            assert!(der[1] < 0x80);
            let body = &der[2..];
            let with = |version: u8, extra: &[u8]| {
                let mut b = body.to_vec();
                b[2] = version;
                b.extend_from_slice(extra);
                tlv(0x30, &b)
            };
            let attrs = tlv(0xa0, &tlv(0x30, &[]));
            let public = tlv(0x81, &[0, 1, 2, 3]);
            assert!(parse_pq_pkcs8(&with(0, &attrs)).is_some());
            let v2 = parse_pq_pkcs8(&with(1, &[&attrs[..], &public[..]].concat())).unwrap();
            assert_eq!(v2.public, Some(vec![1, 2, 3]));
            assert!(parse_pq_pkcs8(&with(0, &public)).is_none());
            assert!(parse_pq_pkcs8(&with(1, &[&public[..], &attrs[..]].concat())).is_none());
            assert!(parse_pq_pkcs8(&with(0, &tlv(0x04, &[1]))).is_none());
            assert!(parse_pq_pkcs8(&with(2, &[])).is_none());
            assert!(parse_pq_pkcs8(&der[..der.len() - 1]).is_none());
            assert!(parse_pq_pkcs8(&[&der[..], &[0]].concat()).is_none());
        }
        assert!(pq_seed_pkcs8(KeyType::Ed25519, &[0; 32]).is_none());
        assert!(parse_pq_pkcs8(&ed25519_pkcs8(&[1; 32])).is_none());
    }

    #[test]
    fn spki_round_trip_and_refusals() {
        for (t, len) in KeyType::ALL
            .into_iter()
            .filter_map(|t| Some((t, t.describe().public?.len)))
        {
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
