//! ML-DSA and ML-KEM: key pairs, attributes, search and ML-DSA signatures through the cryptoki
//! crate (its default interface, 3.0), then the KEM functions at the 3.2 ABI (`kem.rs`).

use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::object::{MlDsaParameterSetType, ParameterSetType};
use cryptoki::types::Ulong;

use super::*;

const MSG: &[u8] = b"signed through the module";

pub(crate) fn value(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(o, &[AttributeType::Value]).expect("value")[..] {
        [Attribute::Value(ref v)] => v.clone(),
        ref other => panic!("{other:?}"),
    }
}

fn parameter_set(s: &Session, o: ObjectHandle) -> CK_ULONG {
    match s
        .get_attributes(o, &[AttributeType::ParameterSet])
        .expect("set")[..]
    {
        [Attribute::ParameterSet(p)] => *Ulong::from(p),
        ref other => panic!("{other:?}"),
    }
}

fn ml_dsa(mode: HedgeType, context: Option<&[u8]>) -> Mechanism<'_> {
    Mechanism::MlDsa(SignAdditionalContext::new(mode, context))
}

#[test]
fn post_quantum_keys_through_cryptoki_and_the_3_2_abi() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|e| e.into_inner());
    let _finalize = Finalize;
    let t = Token::start();
    let p11 = load(&t);
    // bob's token: no PIN, over shared memory.
    let bob = p11.get_slots_with_token().expect("slots")[1];
    let s = p11.open_rw_session(bob).expect("session");
    let dsa_public = signatures(&s);
    templates(&s);
    kem::encapsulation(&t, &p11, bob, &s, dsa_public);
    drop(s);
    p11.finalize().expect("finalize");
}

/// ML-DSA pairs of each parameter set; signatures with and without a context. Returns one
/// ML-DSA public key.
fn signatures(s: &Session) -> ObjectHandle {
    let mut last = None;
    for (set, pk_len, sig_len) in [
        (MlDsaParameterSetType::ML_DSA_44, 1312, 2420),
        (MlDsaParameterSetType::ML_DSA_65, 1952, 3309),
        (MlDsaParameterSetType::ML_DSA_87, 2592, 4627),
    ] {
        let set_id = CK_ULONG::from(set);
        let label = format!("dsa-{set_id}");
        let (public, private) = s
            .generate_key_pair(
                &Mechanism::MlDsaKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::ParameterSet(set.into()),
                    Attribute::Label(label.clone().into_bytes()),
                ],
                &[Attribute::Token(true), Attribute::Sign(true)],
            )
            .expect("ML-DSA pair");
        assert_eq!(parameter_set(s, public), set_id);
        assert_eq!(parameter_set(s, private), set_id);
        assert_eq!(value(s, public).len(), pk_len, "{label}");
        let info = s
            .get_attribute_info(private, &[AttributeType::Value])
            .expect("info");
        assert!(matches!(info[0], AttributeInfo::Sensitive), "{:?}", info[0]);
        // No context; the length query (cryptoki's first call) answers the parameter set's.
        let plain = ml_dsa(HedgeType::Preferred, None);
        let sig = s.sign(&plain, private, MSG).expect("sign");
        assert_eq!(sig.len(), sig_len, "{label}");
        s.verify(&plain, public, MSG, &sig).expect("verifies");
        assert_eq!(
            rv(s.verify(&plain, public, b"another", &sig).unwrap_err()),
            RvError::SignatureInvalid
        );
        assert_eq!(
            rv(s.verify(&plain, public, MSG, &sig[1..]).unwrap_err()),
            RvError::SignatureLenRange
        );
        // Hedged: a second signature differs and verifies too.
        let again = s.sign(&plain, private, MSG).expect("sign");
        assert_ne!(again, sig);
        s.verify(&plain, public, MSG, &again).expect("verifies");
        // Multi-part: the whole message, gathered.
        s.sign_init(&plain, private).expect("init");
        s.sign_update(&MSG[..4]).expect("update");
        s.sign_update(&MSG[4..]).expect("update");
        let parts = s.sign_final().expect("final");
        s.verify(&plain, public, MSG, &parts)
            .expect("multi-part verifies");
        // A context binds the signature: not with another, nor with none.
        let ctx = ml_dsa(HedgeType::Required, Some(b"ctx"));
        let sig = s.sign(&ctx, private, MSG).expect("sign with a context");
        s.verify(&ctx, public, MSG, &sig).expect("verifies");
        for wrong in [plain, ml_dsa(HedgeType::Preferred, Some(b"cty"))] {
            assert_eq!(
                rv(s.verify(&wrong, public, MSG, &sig).unwrap_err()),
                RvError::SignatureInvalid
            );
        }
        // Verification ignores the hedge variant; signing refuses to be deterministic.
        let det = ml_dsa(HedgeType::DeterministicRequired, Some(b"ctx"));
        s.verify(&det, public, MSG, &sig).expect("verifies");
        assert_eq!(
            rv(s.sign(&det, private, MSG).unwrap_err()),
            RvError::MechanismParamInvalid
        );
        let long = [7u8; 256];
        assert_eq!(
            rv(
                s.sign(&ml_dsa(HedgeType::Preferred, Some(&long)), private, MSG)
                    .unwrap_err()
            ),
            RvError::MechanismParamInvalid
        );
        s.sign(
            &ml_dsa(HedgeType::Preferred, Some(&long[..255])),
            private,
            MSG,
        )
        .expect("255 bytes of context");
        last = Some(public);
    }
    // Found by CKK_ML_DSA (three hsmd types) and by parameter set.
    let all = s
        .find_objects(&[Attribute::KeyType(KeyType::ML_DSA)])
        .expect("find");
    assert_eq!(all.len(), 6);
    let found = s
        .find_objects(&[
            Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_87.into()),
            Attribute::Class(ObjectClass::PUBLIC_KEY),
        ])
        .expect("find");
    assert_eq!(found, vec![last.expect("a key")]);
    last.expect("a key")
}

/// Key-pair templates the module refuses.
fn templates(s: &Session) {
    let set = |v: u64| Attribute::ParameterSet(ParameterSetType::try_from(Ulong::from(v)).unwrap());
    let pair = |public: &[Attribute], private: &[Attribute]| {
        rv(
            s.generate_key_pair(&Mechanism::MlDsaKeyPairGen, public, private)
                .unwrap_err(),
        )
    };
    assert_eq!(pair(&[], &[]), RvError::TemplateIncomplete);
    assert_eq!(pair(&[set(9)], &[]), RvError::AttributeValueInvalid);
    assert_eq!(
        pair(&[set(CKP_ML_DSA_44)], &[set(CKP_ML_DSA_65)]),
        RvError::TemplateInconsistent
    );
    assert_eq!(
        pair(
            &[set(CKP_ML_DSA_44), Attribute::KeyType(KeyType::ML_KEM)],
            &[]
        ),
        RvError::TemplateInconsistent
    );
    // The parameter set may also come in the private template alone.
    s.generate_key_pair(&Mechanism::MlKemKeyPairGen, &[], &[set(CKP_ML_KEM_512)])
        .expect("ML-KEM-512 from the private template");
}
