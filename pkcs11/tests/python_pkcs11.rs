//! The module's PKCS#11 3.2 side driven by python-pkcs11 (PyPI, nobody's here), against a
//! real hsmd, with pyca/cryptography as the independent check: ML-DSA and ML-KEM key pairs of
//! every parameter set, ML-DSA signatures with and without a context (pyca verifies them from
//! the public key's CKA_VALUE), ML-KEM encapsulation and decapsulation through the 3.2
//! interface (the secrets compared as CKA_VALUE of extractable keys, and pyca's own
//! encapsulation to the module's public key), and the refusals.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use ferrohsm_test_support::python;
use support::{PIN, Token};

/// argv: module, configuration, token label, PIN. Asserts as it goes (a failure exits
/// non-zero with the traceback); prints one line per part that passed, and the secret of the
/// persistent KEM key for the caller to compare with `hsmctl export`.
const SCRIPT: &str = r#"
import ctypes, os, struct, sys
os.environ["FERROHSM_PKCS11_CONFIG"] = sys.argv[2]
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (AttributeSensitive, MechanismParamInvalid,
                               TemplateInconsistent, WrappedKeyLenRange)
from pkcs11.mechanisms import MLDSAParameterSet as DSA, MLKEMParameterSet as KEM
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

HEDGE_PREFERRED, HEDGE_REQUIRED, DETERMINISTIC_REQUIRED = 0, 1, 2
CKK_CHACHA20 = 0x33
alive = []  # context buffers, alive for as long as a packed parameter points at them

def context(hedge, ctx=b""):
    """A CK_SIGN_ADDITIONAL_CONTEXT {CK_ULONG hedgeVariant; CK_BYTE_PTR pContext;
    CK_ULONG ulContextLen}, packed natively, for python-pkcs11's raw mechanism_param."""
    buf = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    alive.append(buf)
    return struct.pack("@LPL", hedge, ctypes.addressof(buf) if buf else 0, len(ctx))

def raises(exc, f, *args, **kwargs):
    try:
        f(*args, **kwargs)
    except exc:
        return
    raise AssertionError(f"expected {exc.__name__}")

lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[3])
msg, other = b"signed through python-pkcs11", b"signed through python-pkcs12"
readable = {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}
with token.open(user_pin=sys.argv[4], rw=True) as s:
    for ps, level, pk_len, sig_len in [(DSA.ML_DSA_44, 44, 1312, 2420),
                                       (DSA.ML_DSA_65, 65, 1952, 3309),
                                       (DSA.ML_DSA_87, 87, 2592, 4627)]:
        pub, priv = s.generate_keypair(KeyType.ML_DSA, label=f"dsa{level}", store=level == 65,
                                       public_template={Attribute.PARAMETER_SET: ps})
        assert pub[Attribute.KEY_TYPE] == KeyType.ML_DSA == priv[Attribute.KEY_TYPE]
        assert pub[Attribute.PARAMETER_SET] == ps == priv[Attribute.PARAMETER_SET]
        raw = pub[Attribute.VALUE]
        assert len(raw) == pk_len, len(raw)
        raises(AttributeSensitive, lambda: priv[Attribute.VALUE])
        peer = getattr(mldsa, f"MLDSA{level}PublicKey").from_public_bytes(raw)
        # Pure ML-DSA, no context: pyca verifies; hedged, so a second signature differs.
        sig = priv.sign(msg, mechanism=Mechanism.ML_DSA)
        assert len(sig) == sig_len, len(sig)
        peer.verify(sig, msg)
        assert pub.verify(msg, sig) and not pub.verify(other, sig)
        assert priv.sign(msg) != sig
        peer.verify(priv.sign(iter([msg[:7], msg[7:]])), msg)
        # A context: pyca verifies with it, not with another or none; so does the module
        # (which ignores the hedge variant when verifying, as PKCS#11 3.2 says).
        sig = priv.sign(msg, mechanism_param=context(HEDGE_REQUIRED, b"ctx"))
        peer.verify(sig, msg, b"ctx")
        raises(InvalidSignature, peer.verify, sig, msg, b"cty")
        raises(InvalidSignature, peer.verify, sig, msg)
        assert pub.verify(msg, sig, mechanism_param=context(DETERMINISTIC_REQUIRED, b"ctx"))
        assert not pub.verify(msg, sig, mechanism_param=context(HEDGE_PREFERRED, b"cty"))
        assert not pub.verify(msg, sig)
        # An empty context is a plain signature; 255 bytes is the most FIPS 204 allows.
        peer.verify(priv.sign(msg, mechanism_param=context(HEDGE_PREFERRED)), msg)
        long = bytes(range(255))
        peer.verify(priv.sign(msg, mechanism_param=context(HEDGE_PREFERRED, long)), msg, long)
        # hsmd signs hedged only; too long a context or a parameter of the wrong size.
        raises(MechanismParamInvalid, priv.sign, msg,
               mechanism_param=context(DETERMINISTIC_REQUIRED))
        raises(MechanismParamInvalid, priv.sign, msg,
               mechanism_param=context(HEDGE_PREFERRED, bytes(256)))
        raises(MechanismParamInvalid, priv.sign, msg,
               mechanism_param=context(HEDGE_REQUIRED, b"ctx")[:16])
        print(f"ml-dsa-{level} ok")
    # Found by key type and parameter set, like any other attribute.
    found = list(s.get_objects({Attribute.KEY_TYPE: KeyType.ML_DSA,
                                Attribute.PARAMETER_SET: DSA.ML_DSA_87,
                                Attribute.CLASS: ObjectClass.PUBLIC_KEY}))
    assert [o[Attribute.LABEL] for o in found] == ["dsa87"], found
    assert len(list(s.get_objects({Attribute.KEY_TYPE: KeyType.ML_DSA}))) == 6
    print("search ok")

    for ps, level, pk_len, ct_len in [(KEM.ML_KEM_512, 512, 800, 768),
                                      (KEM.ML_KEM_768, 768, 1184, 1088),
                                      (KEM.ML_KEM_1024, 1024, 1568, 1568)]:
        # Extractable, so that the secrets it decapsulates may be.
        pub, priv = s.generate_keypair(KeyType.ML_KEM, label=f"kem{level}", store=level == 768,
                                       public_template={Attribute.PARAMETER_SET: ps},
                                       private_template={Attribute.EXTRACTABLE: True})
        assert pub[Attribute.KEY_TYPE] == KeyType.ML_KEM == priv[Attribute.KEY_TYPE]
        assert pub[Attribute.PARAMETER_SET] == ps == priv[Attribute.PARAMETER_SET]
        assert pub[Attribute.ENCAPSULATE] and priv[Attribute.DECAPSULATE]
        raw = pub[Attribute.VALUE]
        assert len(raw) == pk_len, len(raw)
        # Encapsulated and decapsulated by the module: the same secret.
        label = f"kem{level}-shared"
        ct, mine = pub.encapsulate_key(KeyType.AES, label=label, store=level == 768,
                                       template=readable)
        assert len(ct) == ct_len, len(ct)
        theirs = priv.decapsulate_key(ct, KeyType.AES, template=readable)
        secret = mine[Attribute.VALUE]
        assert len(secret) == 32 and theirs[Attribute.VALUE] == secret
        assert mine[Attribute.KEY_TYPE] == KeyType.AES and not mine[Attribute.SENSITIVE]
        assert not mine[Attribute.LOCAL] and not theirs[Attribute.ALWAYS_SENSITIVE]
        if level == 768:
            print(f"secret {label} {secret.hex()}")
        # pyca encapsulates to the module's public key (pyca has ML-KEM-768 and 1024, not
        # 512); the module decapsulates its secret as an HMAC key, and as a ChaCha20 one.
        pyca = getattr(mlkem, f"MLKEM{level}PublicKey", None)
        if pyca is None:
            pyca_secret, pyca_ct = secret, ct
        else:
            pyca_secret, pyca_ct = pyca.from_public_bytes(raw).encapsulate()
            print(f"pyca ml-kem-{level} ok")
        hmac = priv.decapsulate_key(pyca_ct, KeyType.GENERIC_SECRET, template=readable,
                                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY)
        assert hmac[Attribute.KEY_TYPE] == KeyType.GENERIC_SECRET
        assert hmac[Attribute.VALUE] == pyca_secret
        chacha = priv.decapsulate_key(pyca_ct, KeyType.AES,
                                      template={**readable, Attribute.KEY_TYPE: CKK_CHACHA20},
                                      capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
        assert chacha[Attribute.VALUE] == pyca_secret
        # A tampered ciphertext gives FIPS 203's implicit rejection: another secret, no error.
        bad = bytearray(ct)
        bad[0] ^= 1
        assert priv.decapsulate_key(bytes(bad), KeyType.AES,
                                    template=readable)[Attribute.VALUE] != secret
        # A ciphertext of the wrong length is refused.
        raises(WrappedKeyLenRange, priv.decapsulate_key, ct[:-1], KeyType.AES)
        raises(WrappedKeyLenRange, priv.decapsulate_key, ct + b"\0", KeyType.AES)
        # By default the new key is sensitive and not extractable.
        kept = priv.decapsulate_key(ct, KeyType.AES)
        assert kept[Attribute.SENSITIVE] and not kept[Attribute.EXTRACTABLE]
        raises(AttributeSensitive, lambda: kept[Attribute.VALUE])
        print(f"ml-kem-{level} ok")

    pub, priv = s.generate_keypair(KeyType.ML_KEM, label="kem-kept",
                                   public_template={Attribute.PARAMETER_SET: KEM.ML_KEM_768})
    ct, _ = pub.encapsulate_key(KeyType.AES)
    # Extractable and sensitive (leaves only wrapped, which the module cannot do), a key type
    # hsmd cannot keep a secret as, an extractable secret from a non-extractable ML-KEM key.
    raises(TemplateInconsistent, pub.encapsulate_key, KeyType.AES,
           template={Attribute.EXTRACTABLE: True})
    raises(TemplateInconsistent, pub.encapsulate_key, KeyType.EC)
    raises(TemplateInconsistent, priv.decapsulate_key, ct, KeyType.AES, template=readable)
    print("refusals ok")
"#;

#[test]
fn python_pkcs11_drives_ml_dsa_and_ml_kem_through_the_3_2_interface() {
    let Some(py) = python::peers() else { return };
    let t = Token::start();
    let config = t.config.display().to_string();
    let out = python::run(
        py,
        SCRIPT,
        &[&support::module(), &config, "alice", PIN],
        t.tmp(),
    );
    let lines: Vec<&str> = out.lines().collect();
    for part in [
        "ml-dsa-44 ok",
        "ml-dsa-65 ok",
        "ml-dsa-87 ok",
        "search ok",
        "ml-kem-512 ok",
        "ml-kem-768 ok",
        "pyca ml-kem-768 ok",
        "ml-kem-1024 ok",
        "pyca ml-kem-1024 ok",
        "refusals ok",
    ] {
        assert!(lines.contains(&part), "{part:?} missing from:\n{out}");
    }
    // The persistent keys are hsmd's, of the types asked for.
    let list = t.hsmctl_ok("alice", &["list"]);
    for (label, kind) in [
        ("dsa65", "ml-dsa-65"),
        ("kem768", "ml-kem-768"),
        ("kem768-shared", "aes256gcm"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.split('\t').nth(1) == Some(label) && l.contains(kind)),
            "{label} ({kind}) not in:\n{list}"
        );
    }
    // The secret python-pkcs11 read as CKA_VALUE is what hsmd exports.
    let secret = lines
        .iter()
        .find_map(|l| l.strip_prefix("secret kem768-shared "))
        .expect("the shared secret");
    let file = t.path("shared.key");
    t.hsmctl_ok(
        "alice",
        &[
            "export",
            "kem768-shared",
            "--out",
            file.to_str().expect("utf-8"),
        ],
    );
    let exported: String = std::fs::read(&file)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(secret, exported);
}
