//! The published FIPS 203/204 known answers (pyca's `cryptography_vectors` on PyPI) against
//! hsmd, through hsmctl: the same seeds make the same keys, the published signatures verify,
//! the published ciphertexts decapsulate to the published secrets.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_test_support::files::{hex, unhex};
use ferrohsm_test_support::status::{assert_failed, ok};
use ferrohsm_test_support::{Data, python};

/// argv: how many vectors of each file. Prints one JSON object per vector of the FIPS 203/204
/// known-answer files that pyca/cryptography publishes (`cryptography_vectors`): ML-DSA's
/// deterministic pure vectors (ξ, the public key, the signed message with its context) and
/// ML-KEM's (d, z, the public key, a ciphertext and its secret, and a malformed ciphertext and
/// its implicit-rejection secret).
const KATS: &str = r#"
import json, sys
import cryptography_vectors as cv
n = int(sys.argv[1])
def blocks(path):
    with cv.open_vector_file(path, "r") as f:
        block = {}
        for line in f:
            line = line.strip()
            if line.startswith("count") and block:
                yield block
                block = {}
            if " = " in line:
                k, v = line.split(" = ", 1)
                block[k] = v
        if block:
            yield block
for level in ("44", "65", "87"):
    for i, b in zip(range(n), blocks(f"asymmetric/MLDSA/kat_MLDSA_{level}_det_pure.rsp")):
        mlen = int(b["mlen"])
        sm = bytes.fromhex(b["sm"])
        print(json.dumps({"type": f"ml-dsa-{level}", "seed": b["xi"], "pk": b["pk"],
                          "sig": sm[:len(sm) - mlen].hex(), "msg": sm[len(sm) - mlen:].hex(),
                          "ctx": b.get("ctx", "")}))
for level in ("512", "768", "1024"):
    for i, b in zip(range(n), blocks(f"asymmetric/MLKEM/kat_MLKEM_{level}.rsp")):
        print(json.dumps({"type": f"ml-kem-{level}", "seed": b["d"] + b["z"], "pk": b["pk"],
                          "ct": b["ct"], "ss": b["ss"], "ct_n": b["ct_n"], "ss_n": b["ss_n"]}))
"#;

/// The published FIPS 203/204 known answers: from each vector's seed hsmd makes the published
/// public key; it verifies the published ML-DSA signature under its context (and not under
/// another); it decapsulates the published ML-KEM ciphertext to the published secret, and the
/// published malformed one to the published implicit-rejection secret.
#[test]
fn published_known_answers() {
    let Some(py) = python::peers() else { return };
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    let out = python::run(py, KATS, &["2"], dir);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (i, line) in out.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        let t = s("type");
        *seen.entry(t.clone()).or_default() += 1;
        let label = format!("kat{i}");
        std::fs::write(dir.join("seed"), unhex(&s("seed"))).unwrap();
        ok(&d.ctl(
            "alice",
            &[
                "import",
                "--type",
                &t,
                "--in",
                "seed",
                "--label",
                &label,
                "--exportable",
            ],
        ));
        let pk = ok(&d.ctl("alice", &["pubkey", &label]));
        assert_eq!(
            pk.trim(),
            s("pk"),
            "{t} vector {i}: public key from the seed"
        );
        if t.starts_with("ml-dsa") {
            std::fs::write(dir.join("msg"), unhex(&s("msg"))).unwrap();
            std::fs::write(dir.join("sig"), unhex(&s("sig"))).unwrap();
            let verify = |ctx: &str| {
                d.ctl(
                    "alice",
                    &[
                        "verify",
                        &label,
                        "--in",
                        "msg",
                        "--sig",
                        "sig",
                        "--context",
                        ctx,
                    ],
                )
            };
            assert_eq!(ok(&verify(&s("ctx"))).trim(), "ok", "{t} vector {i}");
            assert_failed(&verify("ff"), "bad_signature");
        } else {
            for (ct, ss, what) in [("ct", "ss", "secret"), ("ct_n", "ss_n", "rejection")] {
                std::fs::write(dir.join("ct"), unhex(&s(ct))).unwrap();
                let new = format!("{label}-{ct}");
                ok(&d.ctl(
                    "alice",
                    &[
                        "decapsulate",
                        &label,
                        "--in",
                        "ct",
                        "--type",
                        "hmac-sha256",
                        "--label",
                        &new,
                        "--exportable",
                    ],
                ));
                assert_eq!(
                    hex(&d.exported("alice", &new)),
                    s(ss),
                    "{t} vector {i}: the {what}"
                );
            }
        }
    }
    assert_eq!(seen.len(), 6, "every parameter set: {seen:?}");
    assert!(seen.values().all(|n| *n == 2), "{seen:?}");
}
