//! The same crypto in this process on one thread, with the code hsmd uses for it (aws-lc for
//! Ed25519 and P-256 signing, ring for the AEADs, RustCrypto for HMAC, libcrux for ML-DSA,
//! aws-lc for ML-KEM): the baseline every ratio is taken against.

use std::time::Instant;

use super::rows::BenchOp;

/// The same crypto in this process on one thread (ops/s); `None` for ping (nothing to do).
pub fn in_process(op: BenchOp, secs: f64) -> Option<f64> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    use hmac::{KeyInit, Mac};
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut work: Box<dyn FnMut()> = match op {
        BenchOp::Ping | BenchOp::CounterInc => return None,
        BenchOp::Random32 => Box::new(|| {
            let mut b = [0u8; 32];
            let _ = getrandom::fill(&mut b);
            std::hint::black_box(b);
        }),
        BenchOp::KeygenPersistent | BenchOp::KeygenSession => Box::new(|| {
            let mut seed = [0u8; 32];
            let _ = getrandom::fill(&mut seed);
            // As hsmd does: aws-lc's pair, and the public key decompressed for verifying.
            if let Ok(k) = Ed25519KeyPair::from_seed_unchecked(&seed) {
                use aws_lc_rs::signature::KeyPair as _;
                let public = ed25519_dalek::VerifyingKey::try_from(k.public_key().as_ref());
                std::hint::black_box((k, public.ok()));
            }
        }),
        BenchOp::Ed25519Sign | BenchOp::Ed25519SignSession => {
            let k = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).ok()?;
            Box::new(move || {
                std::hint::black_box(k.sign(std::hint::black_box(&[0x5a; 32])));
            })
        }
        BenchOp::P256Sign => {
            let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).ok()?;
            Box::new(move || {
                std::hint::black_box(k.sign(&rng, &[0x5a; 32]).ok());
            })
        }
        BenchOp::ChaCha64 | BenchOp::ChaCha16k => {
            let n = if op == BenchOp::ChaCha64 { 64 } else { 16384 };
            let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[9; 32]).ok()?);
            let mut buf = vec![1u8; n];
            Box::new(move || {
                // As the server does: a fresh random nonce per message.
                let mut nonce = [0u8; 12];
                let _ = getrandom::fill(&mut nonce);
                let tag = k.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                );
                std::hint::black_box(tag.ok());
            })
        }
        BenchOp::MlDsa65Keygen => Box::new(|| {
            let mut seed = [0u8; 32];
            let _ = getrandom::fill(&mut seed);
            std::hint::black_box(libcrux_ml_dsa::ml_dsa_65::generate_key_pair(seed));
        }),
        BenchOp::MlDsa65Sign | BenchOp::MlDsa65Verify => {
            use libcrux_ml_dsa::ml_dsa_65;
            let k = ml_dsa_65::generate_key_pair([7; 32]);
            let msg = [0x5a; 32];
            let sig = ml_dsa_65::sign(&k.signing_key, &msg, &[], [1; 32]).ok()?;
            if op == BenchOp::MlDsa65Sign {
                Box::new(move || {
                    // Hedged, as hsmd signs: fresh randomness each time.
                    let mut rnd = [0u8; 32];
                    let _ = getrandom::fill(&mut rnd);
                    std::hint::black_box(ml_dsa_65::sign(&k.signing_key, &msg, &[], rnd).ok());
                })
            } else {
                Box::new(move || {
                    let ok = ml_dsa_65::verify(&k.verification_key, &msg, &[], &sig).is_ok();
                    std::hint::black_box(ok);
                })
            }
        }
        BenchOp::MlKem768Encapsulate | BenchOp::MlKem768Decapsulate => {
            use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
            let dk = DecapsulationKey::generate(&ML_KEM_768).ok()?;
            let public = dk
                .encapsulation_key()
                .ok()?
                .key_bytes()
                .ok()?
                .as_ref()
                .to_vec();
            if op == BenchOp::MlKem768Encapsulate {
                Box::new(move || {
                    // As hsmd does for a key it holds: aws-lc, from the raw public key.
                    let ek = EncapsulationKey::new(&ML_KEM_768, &public);
                    std::hint::black_box(ek.ok().and_then(|k| k.encapsulate().ok()));
                })
            } else {
                let (ct, _) = EncapsulationKey::new(&ML_KEM_768, &public)
                    .ok()?
                    .encapsulate()
                    .ok()?;
                let ct = ct.as_ref().to_vec();
                Box::new(move || {
                    std::hint::black_box(dk.decapsulate(Ciphertext::from(&ct[..])).ok());
                })
            }
        }
        BenchOp::Hmac1k => {
            let data = vec![2u8; 1024];
            Box::new(move || {
                if let Ok(mut m) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[3; 32]) {
                    m.update(&data);
                    std::hint::black_box(m.finalize());
                }
            })
        }
    };
    for _ in 0..100 {
        work();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..16 {
            work();
        }
        n += 16;
    }
    Some(n as f64 / start.elapsed().as_secs_f64())
}
