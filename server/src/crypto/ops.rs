//! One entry per algorithm but signing ([`super::sign`]). With it, the only place that knows
//! which library does the work: x25519-dalek, ring for the AEADs (9x faster here than the
//! pure-Rust crates), RustCrypto sha2/hmac/hkdf (SHA-NI accelerated). Everything here runs on a
//! crypto worker thread, never on an actor's thread.

use ferrohsm_proto::{DigestAlg, KeyType, Status};
use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::error::OpError;
use crate::keys::material::{KeyMaterial, SecretBytes};

/// Ciphertext format version written (first byte of every new ciphertext). Format 2 records
/// the key version that made it; format 1 (before key versions) still decrypts, as version 1.
pub const CIPHERTEXT_VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Header of a format-2 ciphertext: format, algorithm, key version (u32, big-endian).
const HEADER_V2: usize = 6;
/// Bytes a ciphertext adds to its plaintext: header, nonce, tag.
pub const CIPHERTEXT_OVERHEAD: usize = HEADER_V2 + NONCE_LEN + TAG_LEN;

pub(super) fn wrong_type(op: &str, t: KeyType) -> OpError {
    OpError::new(Status::WrongKeyType, format!("cannot {op} with a {t} key"))
}

fn hmac_key(key: &KeyMaterial, op: &str) -> Result<Hmac<Sha256>, OpError> {
    match key {
        KeyMaterial::HmacSha256(k) => <Hmac<Sha256> as KeyInit>::new_from_slice(k.as_ref())
            .map_err(|_| OpError::internal("bad HMAC key")),
        other @ (KeyMaterial::Ed25519 { .. }
        | KeyMaterial::P256 { .. }
        | KeyMaterial::X25519(_)
        | KeyMaterial::ChaCha20Poly1305(_)
        | KeyMaterial::Aes256Gcm(_)
        | KeyMaterial::MlDsa(_)
        | KeyMaterial::MlKem(_)) => Err(wrong_type(op, other.key_type())),
    }
}

/// AEAD-encrypts in the standard layout: a fresh nonce, the ciphertext, the tag; only the
/// caller's `aad` is authenticated (so any AES-GCM or ChaCha20-Poly1305 implementation opens
/// it with the same key).
pub fn encrypt_raw(key: &KeyMaterial, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpError> {
    let (_, k) = aead_key(key, "encrypt")?;
    let nonce = fresh_nonce()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| OpError::invalid("plaintext too long"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a ciphertext-then-tag made with `nonce` (the standard layout, `aad` alone
/// authenticated).
pub fn decrypt_raw(
    key: &KeyMaterial,
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let (_, k) = aead_key(key, "decrypt")?;
    if nonce.len() != NONCE_LEN {
        return Err(OpError::invalid(format!(
            "a nonce of {} bytes: expected {NONCE_LEN}",
            nonce.len()
        )));
    }
    if sealed.len() < TAG_LEN {
        return Err(OpError::invalid(format!(
            "ciphertext of {} bytes is shorter than the {TAG_LEN}-byte tag",
            sealed.len()
        )));
    }
    let failed = || OpError::new(Status::DecryptFailed, "ciphertext did not authenticate");
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let plain_len = k
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| failed())?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

fn aead_key(key: &KeyMaterial, op: &str) -> Result<(u8, LessSafeKey), OpError> {
    let (alg_id, alg, bytes) = match key {
        KeyMaterial::ChaCha20Poly1305(k) => (1u8, &CHACHA20_POLY1305, k),
        KeyMaterial::Aes256Gcm(k) => (2u8, &AES_256_GCM, k),
        other @ (KeyMaterial::Ed25519 { .. }
        | KeyMaterial::P256 { .. }
        | KeyMaterial::X25519(_)
        | KeyMaterial::HmacSha256(_)
        | KeyMaterial::MlDsa(_)
        | KeyMaterial::MlKem(_)) => return Err(wrong_type(op, other.key_type())),
    };
    let unbound =
        UnboundKey::new(alg, bytes.as_ref()).map_err(|_| OpError::internal("bad AEAD key"))?;
    Ok((alg_id, LessSafeKey::new(unbound)))
}

/// AEAD-encrypts with a fresh random nonce under key version `version`. Output: format (2),
/// algorithm, key version (4 bytes, big-endian), nonce, ciphertext, tag; the header is
/// authenticated with the caller's associated data.
pub fn encrypt(
    key: &KeyMaterial,
    version: u32,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, OpError> {
    let (alg_id, k) = aead_key(key, "encrypt")?;
    let nonce = fresh_nonce()?;
    let mut header = [0u8; HEADER_V2];
    header[0] = CIPHERTEXT_VERSION;
    header[1] = alg_id;
    header[2..].copy_from_slice(&version.to_be_bytes());
    let mut out = Vec::with_capacity(CIPHERTEXT_OVERHEAD + plaintext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let full_aad = [&header[..], aad].concat();
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&full_aad),
            &mut out[HEADER_V2 + NONCE_LEN..],
        )
        .map_err(|_| OpError::invalid("plaintext too long"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The key version a ciphertext was made with (format 1: version 1), and its header length.
pub fn ciphertext_version(ciphertext: &[u8]) -> Result<(u32, usize), OpError> {
    let short = |min: usize| {
        OpError::invalid(format!(
            "ciphertext of {} bytes is shorter than the {min}-byte minimum",
            ciphertext.len()
        ))
    };
    match ciphertext.first() {
        Some(1) if ciphertext.len() >= 2 + NONCE_LEN + TAG_LEN => Ok((1, 2)),
        Some(1) => Err(short(2 + NONCE_LEN + TAG_LEN)),
        Some(2) if ciphertext.len() >= CIPHERTEXT_OVERHEAD => {
            let mut v = [0u8; 4];
            v.copy_from_slice(&ciphertext[2..HEADER_V2]);
            Ok((u32::from_be_bytes(v), HEADER_V2))
        }
        Some(2) => Err(short(CIPHERTEXT_OVERHEAD)),
        Some(other) => Err(OpError::invalid(format!(
            "unknown ciphertext format version {other}"
        ))),
        None => Err(short(CIPHERTEXT_OVERHEAD)),
    }
}

/// AEAD-decrypts a ciphertext from [`encrypt`] (or format 1) with `key`, the material of the
/// version [`ciphertext_version`] names. The plaintext comes back in a zeroizing buffer.
pub fn decrypt(
    key: &KeyMaterial,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let (alg_id, k) = aead_key(key, "decrypt")?;
    let failed = || OpError::new(Status::DecryptFailed, "ciphertext did not authenticate");
    let (_, header_len) = ciphertext_version(ciphertext)?;
    let (header, rest) = ciphertext.split_at(header_len);
    if header[1] != alg_id {
        return Err(failed());
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let full_aad = [header, aad].concat();
    let plain_len = k
        .open_in_place(nonce, Aad::from(&full_aad), &mut buf)
        .map_err(|_| failed())?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// HMAC-SHA256 tag (32 bytes).
pub fn mac(key: &KeyMaterial, data: &[u8]) -> Result<Vec<u8>, OpError> {
    let mut m = hmac_key(key, "mac")?;
    m.update(data);
    Ok(m.finalize().into_bytes().to_vec())
}

/// Constant-time HMAC check.
pub fn mac_verify(key: &KeyMaterial, data: &[u8], tag: &[u8]) -> Result<(), OpError> {
    let mut m = hmac_key(key, "verify a MAC")?;
    m.update(data);
    m.verify_slice(tag)
        .map_err(|_| OpError::new(Status::BadMac, "MAC does not verify"))
}

/// X25519 with `peer`, then HKDF-SHA256 (no salt, info `"FerroHSM derive v1 " || type name`)
/// into a new key of type `t` (which policy has checked is derivable). Both parties of an exchange derive the same key. The shared
/// secret never leaves this function.
pub fn derive(key: &KeyMaterial, peer: &[u8], t: KeyType) -> Result<KeyMaterial, OpError> {
    let KeyMaterial::X25519(secret) = key else {
        return Err(wrong_type("derive", key.key_type()));
    };
    let peer: [u8; 32] = peer
        .try_into()
        .map_err(|_| OpError::invalid("peer public key must be 32 bytes of X25519"))?;
    let shared = secret
        .secret()
        .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
    if !shared.was_contributory() {
        return Err(OpError::invalid("peer public key is a low-order point"));
    }
    let hk = hkdf::Hkdf::<Sha256>::new(None, shared.as_bytes());
    let mut okm: SecretBytes = Zeroizing::new([0u8; 32]);
    let info = [b"FerroHSM derive v1 ".as_slice(), t.name().as_bytes()].concat();
    hk.expand(&info, okm.as_mut())
        .map_err(|_| OpError::internal("HKDF expand failed"))?;
    KeyMaterial::from_secret(t, &okm)
}

/// SHA-2 digest.
pub fn digest(alg: DigestAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        DigestAlg::Sha256 => Sha256::digest(data).to_vec(),
        DigestAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Nonces drawn per thread from a pool of OS randomness refilled [`NONCE_POOL`] bytes at a
/// time: one `getrandom` system call per 341 encryptions instead of one each (it was the
/// largest single cost of a small encryption). A nonce is public, so a pool of unused ones in
/// memory reveals nothing, and every pool byte is handed out at most once.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], OpError> {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|p| {
        let (buf, used) = &mut *p.borrow_mut();
        if *used + NONCE_LEN > buf.len() {
            buf.resize(NONCE_POOL, 0);
            getrandom::fill(buf).map_err(|_| OpError::internal("OS random source failed"))?;
            *used = 0;
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&buf[*used..*used + NONCE_LEN]);
        // Spent bytes are cleared, so no nonce can come out twice.
        buf[*used..*used + NONCE_LEN].fill(0);
        *used += NONCE_LEN;
        Ok(n)
    })
}

/// Bytes of OS randomness per nonce-pool refill (341 nonces).
const NONCE_POOL: usize = 341 * NONCE_LEN;

/// `len` bytes from the OS CSPRNG (the length was checked by policy). Not from the nonce pool:
/// these bytes are secret to the caller.
pub fn random(len: usize) -> Result<Vec<u8>, OpError> {
    let mut out = vec![0u8; len];
    getrandom::fill(&mut out).map_err(|_| OpError::internal("OS random source failed"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: KeyType) -> KeyMaterial {
        KeyMaterial::generate(t).unwrap()
    }

    #[test]
    fn pooled_nonces_never_repeat_across_refills() {
        let n: std::collections::HashSet<[u8; NONCE_LEN]> =
            (0..3 * 341 + 7).map(|_| fresh_nonce().unwrap()).collect();
        assert_eq!(n.len(), 3 * 341 + 7);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        for t in [KeyType::ChaCha20Poly1305, KeyType::Aes256Gcm] {
            let k = key(t);
            let ct = encrypt(&k, 3, b"secret", b"ctx").unwrap();
            assert_eq!(ct.len(), 6 + CIPHERTEXT_OVERHEAD);
            assert_eq!(ciphertext_version(&ct).unwrap().0, 3);
            assert_eq!(&*decrypt(&k, &ct, b"ctx").unwrap(), b"secret");
            // Format 1 (before key versions): header [1, alg], the same AEAD; still decrypts,
            // as version 1.
            let (alg, aead) = aead_key(&k, "encrypt").unwrap();
            let nonce = [7u8; NONCE_LEN];
            let mut v1 = vec![1, alg];
            v1.extend_from_slice(&nonce);
            let mut body = b"old".to_vec();
            let tag = aead
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&[&[1, alg][..], b"ctx"].concat()),
                    &mut body,
                )
                .unwrap();
            v1.extend_from_slice(&body);
            v1.extend_from_slice(tag.as_ref());
            assert_eq!(ciphertext_version(&v1).unwrap().0, 1);
            assert_eq!(&*decrypt(&k, &v1, b"ctx").unwrap(), b"old");
            assert_eq!(
                decrypt(&k, &ct, b"cty").unwrap_err().status,
                Status::DecryptFailed
            );
            for i in 1..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 1;
                // Past the format byte every flip (algorithm, version, nonce, body, tag)
                // fails authentication.
                let r = decrypt(&k, &bad, b"ctx");
                assert!(
                    matches!(&r, Err(e) if e.status == Status::DecryptFailed),
                    "flip at {i}: {r:?}"
                );
            }
            assert_eq!(
                decrypt(&key(t), &ct, b"ctx").unwrap_err().status,
                Status::DecryptFailed
            );
            assert_eq!(
                decrypt(&k, &ct[..10], b"").unwrap_err().status,
                Status::InvalidArgument
            );
        }
    }

    #[test]
    fn derive_agrees_on_both_sides() {
        let a = key(KeyType::X25519);
        let b = key(KeyType::X25519);
        let ka = derive(&a, &b.public_key().unwrap(), KeyType::HmacSha256).unwrap();
        let kb = derive(&b, &a.public_key().unwrap(), KeyType::HmacSha256).unwrap();
        assert_eq!(mac(&ka, b"x").unwrap(), mac(&kb, b"x").unwrap());
        let r = derive(&a, &[0u8; 32], KeyType::HmacSha256);
        assert!(
            matches!(&r, Err(e) if e.status == Status::InvalidArgument
                && e.message.contains("low-order point")),
            "low-order peer: {r:?}"
        );
        let r = derive(&a, &[1u8; 31], KeyType::HmacSha256);
        assert!(
            matches!(&r, Err(e) if e.status == Status::InvalidArgument
                && e.message.contains("must be 32 bytes")),
            "short peer: {r:?}"
        );
    }

    #[test]
    fn raw_aead_is_the_standard_layout() {
        for t in [KeyType::Aes256Gcm, KeyType::ChaCha20Poly1305] {
            let k = key(t);
            let out = encrypt_raw(&k, b"plain", b"aad").unwrap();
            assert_eq!(out.len(), 12 + 5 + 16);
            let (nonce, sealed) = out.split_at(12);
            assert_eq!(
                &decrypt_raw(&k, nonce, sealed, b"aad").unwrap()[..],
                b"plain"
            );
            assert_eq!(
                decrypt_raw(&k, nonce, sealed, b"other").unwrap_err().status,
                Status::DecryptFailed
            );
            // Checked against ring directly: the tag covers the caller's AAD alone.
            let (_, ring_key) = aead_key(&k, "t").unwrap();
            let mut buf = sealed.to_vec();
            let plain = ring_key
                .open_in_place(
                    Nonce::try_assume_unique_for_key(nonce).unwrap(),
                    Aad::from(b"aad"),
                    &mut buf,
                )
                .unwrap();
            assert_eq!(plain, b"plain");
        }
    }

    #[test]
    fn mac_and_digest() {
        let k = key(KeyType::HmacSha256);
        let tag = mac(&k, b"data").unwrap();
        mac_verify(&k, b"data", &tag).unwrap();
        assert_eq!(
            mac_verify(&k, b"datb", &tag).unwrap_err().status,
            Status::BadMac
        );
        assert_eq!(
            digest(DigestAlg::Sha256, b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "FIPS 180-2 test vector"
        );
        assert_eq!(digest(DigestAlg::Sha512, b"").len(), 64);
        assert_eq!(random(65536).unwrap().len(), 65536);
    }
}
