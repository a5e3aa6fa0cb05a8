//! pyca/cryptography, an implementation nobody here wrote, checks hsmd's keys from the outside:
//! it verifies hsmd's Ed25519 and P-256 signatures with the public key `hsmctl pubkey --pem`
//! prints, refuses them over another message, and a key it makes imports into hsmd with the
//! same public key.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_test_support::status::ok;
use ferrohsm_test_support::{Data, python};

/// Verifies `sig` over `msg` with the SPKI PEM in `pem` (paths in the current directory):
/// prints `good` or `bad`.
const VERIFY: &str = r#"
import sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
pem, msg, sig = (open(p, "rb").read() for p in sys.argv[1:4])
key = serialization.load_pem_public_key(pem)
try:
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(sig, msg)
    else:
        assert isinstance(key.curve, ec.SECP256R1), key.curve
        key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    print("good")
except InvalidSignature:
    print("bad")
"#;

/// Makes a key of type argv[1] and writes its PKCS#8 DER to argv[2] and its SPKI PEM to argv[3].
const MAKE: &str = r#"
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
key = ed25519.Ed25519PrivateKey.generate() if sys.argv[1] == "ed25519" else ec.generate_private_key(ec.SECP256R1())
open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
open(sys.argv[3], "wb").write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
"#;

#[test]
fn pyca_verifies_hsmd_signatures_and_hsmd_takes_pyca_keys() {
    let Some(py) = python::peers() else { return };
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    std::fs::write(dir.join("msg"), b"signed by hsmd, checked by pyca").unwrap();
    std::fs::write(dir.join("other"), b"signed by hsmd, checked by pycb").unwrap();
    for t in ["ed25519", "p256"] {
        ok(&d.ctl("alice", &["keygen", "--type", t, "--label", t]));
        let pem = format!("{t}.pem");
        let sig = format!("{t}.sig");
        std::fs::write(dir.join(&pem), ok(&d.ctl("alice", &["pubkey", t, "--pem"]))).unwrap();
        ok(&d.ctl("alice", &["sign", t, "--in", "msg", "--out", &sig]));
        let said = python::run(py, VERIFY, &[&pem, "msg", &sig], dir);
        assert_eq!(said.trim(), "good", "{t}");
        let said = python::run(py, VERIFY, &[&pem, "other", &sig], dir);
        assert_eq!(said.trim(), "bad", "{t} over another message");

        // The other way: pyca's key in hsmd keeps pyca's public key, and signs for it.
        let (der, their_pem) = (format!("{t}-py.der"), format!("{t}-py.pem"));
        python::run(py, MAKE, &[t, &der, &their_pem], dir);
        let label = format!("{t}-py");
        ok(&d.ctl(
            "alice",
            &["import", "--type", t, "--in", &der, "--label", &label],
        ));
        let ours = ok(&d.ctl("alice", &["pubkey", &label, "--pem"]));
        let theirs = std::fs::read_to_string(dir.join(&their_pem)).unwrap();
        assert_eq!(
            ours.trim(),
            theirs.trim(),
            "{t}: the imported key's public key"
        );
        let sig = format!("{t}-py.sig");
        ok(&d.ctl("alice", &["sign", &label, "--in", "msg", "--out", &sig]));
        let said = python::run(py, VERIFY, &[&their_pem, "msg", &sig], dir);
        assert_eq!(said.trim(), "good", "{t}: hsmd signs for pyca's key");
    }
}
