//! Signatures, encryption, MACs, digests and random bytes, and bad input to them.

use super::*;

pub(crate) fn signatures(
    s: &Session,
    p1: ObjectHandle,
    p1_pub: ObjectHandle,
    e1: ObjectHandle,
    e1_pub: ObjectHandle,
) {
    let msg = b"signed through cryptoki";
    let digest = sha256(msg);
    // ECDSA over our digest: raw r||s, verified here with the token's public key.
    let sig = s.sign(&Mechanism::Ecdsa, p1, &digest).expect("sign");
    assert_eq!(sig.len(), 64);
    // ring checks r||s over the message, whose SHA-256 is the digest we signed.
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point(s, p1_pub),
    )
    .verify(msg, &sig)
    .expect("verifies outside the token");
    s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig)
        .expect("verify");
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert_eq!(
        rv(s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &bad)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
    // ECDSA-SHA256 over the message, multi-part; the digest form verifies it.
    s.sign_init(&Mechanism::EcdsaSha256, p1).expect("init");
    s.sign_update(&msg[..5]).expect("update");
    s.sign_update(&msg[5..]).expect("update");
    let sig2 = s.sign_final().expect("final");
    s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig2)
        .expect("same digest");
    // EdDSA over the message, checked with ed25519-dalek.
    let ed = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = s.sign(&ed, e1, msg).expect("sign");
    let pk: [u8; 32] = point(s, e1_pub).try_into().expect("32 bytes");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("key");
    vk.verify_strict(
        msg,
        &ed25519_dalek::Signature::from_slice(&sig).expect("sig"),
    )
    .expect("verifies outside the token");
    s.verify(&ed, e1_pub, msg, &sig).expect("verify");
    // A key and mechanism that do not go together.
    assert_eq!(
        rv(s.sign(&ed, p1, msg).unwrap_err()),
        RvError::KeyTypeInconsistent
    );
    // Ed25519ph is not offered.
    let ph = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ph(&[])));
    assert_eq!(
        rv(s.sign(&ph, e1, msg).unwrap_err()),
        RvError::MechanismParamInvalid
    );
}

pub(crate) fn symmetric(t: &Token, s: &Session) {
    // An exportable AES key, so the ciphertext can be checked outside the token.
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"a1".to_vec()),
                Attribute::Extractable(true),
            ],
        )
        .expect("aes key");
    let plain = b"sealed by hsmd".to_vec();
    let mut iv = [0u8; 12];
    let ct = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).expect("gcm")),
            aes,
            &plain,
        )
        .expect("encrypt");
    assert_eq!(ct.len(), plain.len() + 16);
    assert_ne!(iv, [0u8; 12], "hsmd's nonce came back in the IV buffer");
    // Standard AES-GCM: opened with the exported key by ring.
    let key_file = t.path("a1.key");
    t.hsmctl_ok(
        "alice",
        &["export", "a1", "--out", key_file.to_str().expect("utf-8")],
    );
    let raw = std::fs::read(&key_file).expect("key");
    let k = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw).expect("key"),
    );
    let mut buf = ct.clone();
    let opened = k
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(iv),
            ring::aead::Aad::from(b"aad"),
            &mut buf,
        )
        .expect("standard layout");
    assert_eq!(opened, plain);
    // And by the token, with the caller's IV.
    let mut iv2 = iv;
    let back = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv2, b"aad", 128.into()).expect("gcm")),
            aes,
            &ct,
        )
        .expect("decrypt");
    assert_eq!(back, plain);
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    let mut iv3 = iv;
    let e = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv3, b"aad", 128.into()).expect("gcm")),
            aes,
            &tampered,
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::EncryptedDataInvalid);
    // A caller-chosen IV for encryption is refused: hsmd picks every nonce.
    let mut chosen = [7u8; 12];
    let e = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut chosen, b"", 128.into()).expect("gcm")),
            aes,
            &plain,
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::MechanismParamInvalid);
    // HMAC-SHA256.
    let mac = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"m1".to_vec()),
            ],
        )
        .expect("hmac key");
    let tag = s.sign(&Mechanism::Sha256Hmac, mac, b"data").expect("mac");
    assert_eq!(tag.len(), 32);
    s.verify(&Mechanism::Sha256Hmac, mac, b"data", &tag)
        .expect("mac verify");
    assert_eq!(
        rv(s.verify(&Mechanism::Sha256Hmac, mac, b"datA", &tag)
            .unwrap_err()),
        RvError::SignatureInvalid
    );
}

pub(crate) fn digests_and_random(s: &Session) {
    let d = s.digest(&Mechanism::Sha256, b"abc").expect("digest");
    assert_eq!(d, sha256(b"abc"));
    let d = s.digest(&Mechanism::Sha512, b"abc").expect("digest");
    assert_eq!(
        d,
        ring::digest::digest(&ring::digest::SHA512, b"abc").as_ref()
    );
    let a = s.generate_random_vec(100_000).expect("random");
    let b = s.generate_random_vec(100_000).expect("random");
    assert_eq!(a.len(), 100_000);
    assert_ne!(a, b);
    assert!(a.iter().any(|x| *x != 0));
    assert_eq!(
        rv(s.seed_random(b"seed").unwrap_err()),
        RvError::RandomSeedNotSupported
    );
}

pub(crate) fn bad_input(p11: &Pkcs11, alice: Slot, s: &Session, p1: ObjectHandle) {
    // A digest too short for ECDSA.
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, p1, &[1; 15]).unwrap_err()),
        RvError::DataLenRange
    );
    // A mechanism the module does not have.
    assert_eq!(
        rv(s.sign(&Mechanism::Sha1, p1, b"x").unwrap_err()),
        RvError::MechanismInvalid
    );
    // Unknown handles.
    let nothing = unsafe {
        // SAFETY: an ObjectHandle is a plain integer; this one names no object.
        std::mem::transmute::<CK_OBJECT_HANDLE, ObjectHandle>(0x7777_0001)
    };
    assert_eq!(
        rv(s.sign(&Mechanism::Ecdsa, nothing, &[1; 32]).unwrap_err()),
        RvError::KeyHandleInvalid
    );
    // Operations not started, and one started twice.
    assert_eq!(
        rv(s.sign_final().unwrap_err()),
        RvError::OperationNotInitialized
    );
    s.sign_init(&Mechanism::Ecdsa, p1).expect("init");
    assert_eq!(
        rv(s.sign_init(&Mechanism::Ecdsa, p1).unwrap_err()),
        RvError::OperationActive
    );
    assert_eq!(
        rv(s.sign_update(b"x").unwrap_err()),
        RvError::FunctionNotSupported
    );
    // Functions the module does not offer.
    assert_eq!(
        rv(
            s.create_object(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .unwrap_err()
        ),
        RvError::FunctionNotSupported
    );
    assert_eq!(
        rv(p11
            .get_slot_info(unsafe {
                // SAFETY: a Slot is a plain integer; slot 9 does not exist.
                std::mem::transmute::<CK_SLOT_ID, Slot>(9)
            })
            .unwrap_err()),
        RvError::SlotIdInvalid
    );
    let _ = alice;
}
