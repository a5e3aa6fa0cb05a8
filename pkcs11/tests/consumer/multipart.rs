//! Multi-part operations: verify (ECDSA-SHA256, EdDSA; raw ECDSA has none), AES-GCM
//! decryption, digests and HMAC, each checked against a computation made here, and each
//! refusal with its exact code. (ChaCha20-Poly1305's multi-part decryption is in `raw`.)

use super::raw::{functions, null};
use super::*;

/// Feeds `msg` to a started verification in three parts, then checks `sig`.
fn verify_parts(s: &Session, msg: &[u8], sig: &[u8]) -> Result<(), RvError> {
    for part in [&msg[..3], &msg[3..9], &msg[9..]] {
        s.verify_update(part).map_err(rv)?;
    }
    s.verify_final(sig).map_err(rv)
}

pub(crate) fn verify(
    s: &Session,
    p1: ObjectHandle,
    p1_pub: ObjectHandle,
    e1: ObjectHandle,
    e1_pub: ObjectHandle,
) {
    let msg = b"verified in three parts";
    // ECDSA-SHA256: the token's signature over our digest (checked outside the token in
    // `crypto::signatures`) verifies over the message fed in parts.
    let sig = s.sign(&Mechanism::Ecdsa, p1, &sha256(msg)).expect("sign");
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point(s, p1_pub),
    )
    .verify(msg, &sig)
    .expect("verifies outside the token");
    let ecdsa = Mechanism::EcdsaSha256;
    s.verify_init(&ecdsa, p1_pub).expect("init");
    assert_eq!(verify_parts(s, msg, &sig), Ok(()));
    let mut bad = sig.clone();
    bad[40] ^= 1;
    s.verify_init(&ecdsa, p1_pub).expect("init");
    assert_eq!(verify_parts(s, msg, &bad), Err(RvError::SignatureInvalid));
    s.verify_init(&ecdsa, p1_pub).expect("init");
    assert_eq!(
        verify_parts(s, b"verified in three partS", &sig),
        Err(RvError::SignatureInvalid)
    );
    s.verify_init(&ecdsa, p1_pub).expect("init");
    assert_eq!(
        verify_parts(s, msg, &sig[..63]),
        Err(RvError::SignatureLenRange)
    );
    // Each of those ended its operation: a final with none started has nothing to finish.
    assert_eq!(
        rv(s.verify_final(&sig).unwrap_err()),
        RvError::OperationNotInitialized
    );

    // EdDSA: deterministic, so the multi-part signature is the single-part one, which
    // ed25519-dalek accepts; multi-part verification takes it and refuses a changed one.
    let ed = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = s.sign(&ed, e1, msg).expect("sign");
    let pk: [u8; 32] = point(s, e1_pub).try_into().expect("32 bytes");
    ed25519_dalek::VerifyingKey::from_bytes(&pk)
        .expect("key")
        .verify_strict(
            msg,
            &ed25519_dalek::Signature::from_slice(&sig).expect("sig"),
        )
        .expect("verifies outside the token");
    s.sign_init(&ed, e1).expect("init");
    s.sign_update(&msg[..7]).expect("update");
    s.sign_update(&msg[7..]).expect("update");
    assert_eq!(s.sign_final().expect("final"), sig);
    s.verify_init(&ed, e1_pub).expect("init");
    assert_eq!(verify_parts(s, msg, &sig), Ok(()));
    let mut bad = sig.clone();
    bad[0] ^= 1;
    s.verify_init(&ed, e1_pub).expect("init");
    assert_eq!(verify_parts(s, msg, &bad), Err(RvError::SignatureInvalid));

    // Raw ECDSA checks one digest: it has no multi-part form, and the refusal ends the
    // operation.
    s.verify_init(&Mechanism::Ecdsa, p1_pub).expect("init");
    assert_eq!(
        rv(s.verify_update(&sha256(msg)).unwrap_err()),
        RvError::FunctionNotSupported
    );
    assert_eq!(
        rv(s.verify_final(&sig).unwrap_err()),
        RvError::OperationNotInitialized
    );

    // A single-part C_Verify cannot end a multi-part verification.
    let f = functions();
    s.verify_init(&ecdsa, p1_pub).expect("init");
    s.verify_update(msg).expect("update");
    let mut data = *msg;
    let mut sig = sig;
    // SAFETY: a valid session; both buffers are live locals of the lengths given.
    let r = unsafe {
        f.C_Verify.unwrap()(
            s.handle(),
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            sig.len() as CK_ULONG,
        )
    };
    assert_eq!(r, CKR_OPERATION_ACTIVE);
}

/// A multi-part AES-GCM decryption at the raw ABI (with an output buffer on every call, as
/// PKCS#11's length convention has it): each update's output length, and the final's code
/// and plaintext.
fn gcm_decrypt_parts(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8; 12],
    aad: &[u8],
    ct: &[u8],
) -> (Vec<CK_ULONG>, CK_RV, Vec<u8>) {
    let f = functions();
    let h = s.handle();
    let mut iv = *iv;
    let mut aad = aad.to_vec();
    let mut gcm = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: 128,
    };
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&raw mut gcm).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    let mut ct = ct.to_vec();
    let mut out = vec![0u8; ct.len() + 16];
    let mut lens = Vec::new();
    // SAFETY: a valid session and key; the mechanism, its IV and AAD, the input and the
    // output buffer are live locals of the lengths given.
    unsafe {
        assert_eq!(f.C_DecryptInit.unwrap()(h, &mut m, key.handle()), CKR_OK);
        let cut = ct.len().min(7);
        let (a, b) = ct.split_at_mut(cut);
        for part in [a, b] {
            let mut len = out.len() as CK_ULONG;
            let r = f.C_DecryptUpdate.unwrap()(
                h,
                part.as_mut_ptr(),
                part.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut len,
            );
            assert_eq!(r, CKR_OK);
            lens.push(len);
        }
        let mut len = out.len() as CK_ULONG;
        let r = f.C_DecryptFinal.unwrap()(h, out.as_mut_ptr(), &mut len);
        let got = if r == CKR_OK {
            out[..len as usize].to_vec()
        } else {
            Vec::new()
        };
        (lens, r, got)
    }
}

pub(crate) fn decrypt(t: &Token, s: &Session) {
    // The exportable AES key `crypto::symmetric` made and exported: a ciphertext sealed
    // here by ring, with a nonce of our choosing, opens in the token in parts.
    let aes = s
        .find_objects(&[
            Attribute::Label(b"a1".to_vec()),
            Attribute::Class(ObjectClass::SECRET_KEY),
        ])
        .expect("find");
    assert_eq!(aes.len(), 1);
    let aes = aes[0];
    let raw = std::fs::read(t.path("a1.key")).expect("exported key");
    let k = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw).expect("key"),
    );
    let nonce = [9u8; 12];
    let plain = b"opened in the token, one part after another".to_vec();
    let mut ct = plain.clone();
    k.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(b"parts"),
        &mut ct,
    )
    .expect("seal");
    assert_eq!(
        gcm_decrypt_parts(s, aes, &nonce, b"parts", &ct),
        (vec![0, 0], CKR_OK, plain.clone()),
        "updates release nothing; the final gives the plaintext"
    );
    // A tampered tag, a tampered ciphertext, another AAD, another nonce: refused at the
    // final, with nothing released.
    let mut tag = ct.clone();
    let last = tag.len() - 1;
    tag[last] ^= 0x80;
    let mut body = ct.clone();
    body[3] ^= 1;
    for (why, nonce, aad, ct) in [
        ("tag", nonce, &b"parts"[..], &tag),
        ("ciphertext", nonce, b"parts", &body),
        ("aad", nonce, b"Parts", &ct),
        ("nonce", [8u8; 12], b"parts", &ct),
    ] {
        assert_eq!(
            gcm_decrypt_parts(s, aes, &nonce, aad, ct),
            (vec![0, 0], CKR_ENCRYPTED_DATA_INVALID, Vec::new()),
            "tampered {why}"
        );
    }
    // Fewer bytes than a tag: refused by length.
    assert_eq!(
        gcm_decrypt_parts(s, aes, &nonce, b"parts", &ct[..10]).1,
        CKR_ENCRYPTED_DATA_LEN_RANGE
    );
    // C_Decrypt's plaintext (hsmd's DecryptRaw answer) is wiped in hsmd once written: its
    // session writer's buffer, the response, the shared-memory ring keep no copy.
    if !ferrohsm_test_support::ci::root("reading hsmd's memory through /proc/PID/mem") {
        return;
    }
    let secrets: Vec<(String, Vec<u8>, ())> = (0..8u8)
        .map(|n| {
            let plain: Vec<u8> = format!("C_Decrypt's plaintext number {n}, never left in hsmd. ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(2048)
                .collect();
            let mut ct = plain.clone();
            let nonce = [n; 12];
            k.seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut ct,
            )
            .expect("seal");
            let mut iv = nonce;
            let mech = Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into()).expect("gcm"));
            assert_eq!(s.decrypt(&mech, aes, &ct).expect("C_Decrypt"), plain);
            (format!("C_Decrypt #{n}"), plain[1024..1088].to_vec(), ())
        })
        .collect();
    let pid = t.pid();
    let mut last = Vec::new();
    ferrohsm_test_support::wait::until(
        "no copy of C_Decrypt's plaintext in hsmd",
        Duration::from_secs(30),
        || {
            let left = ferrohsm_test_support::memory::leftovers(pid, &secrets);
            if left != last {
                eprintln!("C_Decrypt plaintext left in hsmd: {left:#?}");
                last = left;
            }
            last.is_empty()
        },
    );
}

pub(crate) fn digest(s: &Session) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    for (mech, alg) in [
        (Mechanism::Sha256, &ring::digest::SHA256),
        (Mechanism::Sha512, &ring::digest::SHA512),
    ] {
        let want = ring::digest::digest(alg, &data).as_ref().to_vec();
        // Single-part.
        assert_eq!(s.digest(&mech, &data).expect("digest"), want);
        // Multi-part, cut at uneven places (inside and across hash blocks), with an empty
        // part.
        s.digest_init(&mech).expect("init");
        for part in [&data[..1], &data[1..1], &data[1..130], &data[130..]] {
            s.digest_update(part).expect("update");
        }
        assert_eq!(s.digest_final().expect("final"), want);
        // The empty message.
        s.digest_init(&mech).expect("init");
        assert_eq!(
            s.digest_final().expect("final"),
            ring::digest::digest(alg, b"").as_ref()
        );
    }
    // One digest at a time, none after the final, no mechanism the module lacks.
    s.digest_init(&Mechanism::Sha256).expect("init");
    assert_eq!(
        rv(s.digest_init(&Mechanism::Sha512).unwrap_err()),
        RvError::OperationActive
    );
    s.digest_update(b"abc").expect("update");
    assert_eq!(s.digest_final().expect("final"), sha256(b"abc"));
    assert_eq!(
        rv(s.digest_final().unwrap_err()),
        RvError::OperationNotInitialized
    );
    assert_eq!(
        rv(s.digest_update(b"abc").unwrap_err()),
        RvError::OperationNotInitialized
    );
    assert_eq!(
        rv(s.digest(&Mechanism::Sha1, b"abc").unwrap_err()),
        RvError::MechanismInvalid
    );
    // Too small a buffer: the length, and the digest goes on.
    let f = functions();
    s.digest_init(&Mechanism::Sha512).expect("init");
    s.digest_update(b"abc").expect("update");
    let mut out = [0u8; 64];
    let mut len: CK_ULONG = 32;
    // SAFETY: a valid session; `out` has room for `len` bytes.
    let r = unsafe { f.C_DigestFinal.unwrap()(s.handle(), out.as_mut_ptr(), &mut len) };
    assert_eq!((r, len), (CKR_BUFFER_TOO_SMALL, 64));
    // SAFETY: as above; null asks only for the length.
    let r = unsafe { f.C_DigestFinal.unwrap()(s.handle(), null(), &mut len) };
    assert_eq!((r, len), (CKR_OK, 64));
    assert_eq!(
        s.digest_final().expect("final"),
        ring::digest::digest(&ring::digest::SHA512, b"abc").as_ref()
    );
    // A single-part C_Digest after an update is refused, and ends the digest.
    s.digest_init(&Mechanism::Sha256).expect("init");
    s.digest_update(b"abc").expect("update");
    let mut more = *b"more";
    let mut out = [0u8; 32];
    let mut len: CK_ULONG = 32;
    // SAFETY: a valid session; `more` readable and `out` writable for their lengths.
    let r = unsafe {
        f.C_Digest.unwrap()(
            s.handle(),
            more.as_mut_ptr(),
            more.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut len,
        )
    };
    assert_eq!(r, CKR_OPERATION_ACTIVE);
    assert_eq!(
        rv(s.digest_final().unwrap_err()),
        RvError::OperationNotInitialized
    );
    // A new digest after it starts clean.
    assert_eq!(
        s.digest(&Mechanism::Sha256, b"abc").expect("digest"),
        sha256(b"abc")
    );
}

pub(crate) fn hmac(t: &Token, s: &Session) {
    // An exportable HMAC key, so each MAC can be checked here with ring.
    let mac = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"m2".to_vec()),
                Attribute::Extractable(true),
            ],
        )
        .expect("hmac key");
    let key_file = t.path("m2.key");
    t.hsmctl_ok(
        "alice",
        &["export", "m2", "--out", key_file.to_str().expect("utf-8")],
    );
    let raw = std::fs::read(&key_file).expect("key");
    assert_eq!(raw.len(), 32);
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw);
    let data = b"authenticated in one part and in several";
    let hm = Mechanism::Sha256Hmac;
    // Single-part.
    let tag = s.sign(&hm, mac, data).expect("mac");
    ring::hmac::verify(&k, data, &tag).expect("ring accepts the token's MAC");
    // Multi-part: the same MAC.
    s.sign_init(&hm, mac).expect("init");
    for part in [&data[..5], &data[5..6], &data[6..]] {
        s.sign_update(part).expect("update");
    }
    assert_eq!(s.sign_final().expect("final"), tag);
    // Verification of ring's MAC, single- and multi-part; a wrong MAC is refused either way.
    let theirs = ring::hmac::sign(&k, data).as_ref().to_vec();
    s.verify(&hm, mac, data, &theirs).expect("verify");
    s.verify_init(&hm, mac).expect("init");
    assert_eq!(verify_parts(s, data, &theirs), Ok(()));
    let mut wrong = theirs.clone();
    wrong[31] ^= 1;
    assert_eq!(
        rv(s.verify(&hm, mac, data, &wrong).unwrap_err()),
        RvError::SignatureInvalid
    );
    s.verify_init(&hm, mac).expect("init");
    assert_eq!(
        verify_parts(s, data, &wrong),
        Err(RvError::SignatureInvalid)
    );
    s.verify_init(&hm, mac).expect("init");
    assert_eq!(
        verify_parts(s, data, &theirs[..16]),
        Err(RvError::SignatureLenRange)
    );
    // HMAC on a key of another type is refused.
    let aes = s
        .find_objects(&[Attribute::Label(b"a1".to_vec())])
        .expect("find")[0];
    assert_eq!(
        rv(s.sign(&hm, aes, data).unwrap_err()),
        RvError::KeyTypeInconsistent
    );
}
