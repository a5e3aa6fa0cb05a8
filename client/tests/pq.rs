//! Post-quantum keys end to end, through hsmctl, checked by pyca/cryptography (which ships
//! ML-DSA and ML-KEM on OpenSSL's implementation, nobody's here): pyca verifies hsmd's ML-DSA
//! signatures with and without a context against `pubkey --pem`; secrets agree both ways
//! across ML-KEM; hsmd makes the same public key from a seed as pyca; and the bad inputs of
//! the command-line contract get the errors it names.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use ferrohsm_test_support::files::hex;
use ferrohsm_test_support::status::{assert_failed, failed_with_message, ok};
use ferrohsm_test_support::{Data, python};

/// argv: level, SPKI PEM, message, signature, context hex ("-" for none). Prints `good` or
/// `bad`.
const VERIFY: &str = r#"
import sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
level, pem, msg, sig = sys.argv[1], *(open(p, "rb").read() for p in sys.argv[2:5])
ctx = None if sys.argv[5] == "-" else bytes.fromhex(sys.argv[5])
key = serialization.load_pem_public_key(pem)
assert isinstance(key, getattr(mldsa, f"MLDSA{level}PublicKey")), type(key)
try:
    if ctx is None:
        key.verify(sig, msg)
    else:
        key.verify(sig, msg, ctx)
    print("good")
except InvalidSignature:
    print("bad")
"#;

/// argv: ML-DSA level, seed hex, out prefix. Writes PREFIX.seed (raw), PREFIX.der (PKCS#8),
/// PREFIX.key (PKCS#8 PEM), PREFIX.pem (SPKI PEM).
const DSA_FROM_SEED: &str = r#"
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
kind, level, seed, out = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4]
cls = getattr(mldsa, f"MLDSA{level}PrivateKey") if kind == "dsa" else getattr(mlkem, f"MLKEM{level}PrivateKey")
key = cls.from_seed_bytes(seed)
open(out + ".seed", "wb").write(seed)
open(out + ".der", "wb").write(key.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption()))
open(out + ".key", "wb").write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
open(out + ".pem", "wb").write(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
"#;

/// argv: SPKI PEM of an ML-KEM key, ciphertext out. Encapsulates; prints the secret in hex.
const ENCAPSULATE: &str = r#"
import sys
from cryptography.hazmat.primitives import serialization
key = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
secret, ct = key.encapsulate()
open(sys.argv[2], "wb").write(ct)
print(secret.hex())
"#;

/// argv: ML-KEM level, seed hex, ciphertext. Decapsulates; prints the secret in hex.
const DECAPSULATE: &str = r#"
import sys
from cryptography.hazmat.primitives.asymmetric import mlkem
key = getattr(mlkem, f"MLKEM{sys.argv[1]}PrivateKey").from_seed_bytes(bytes.fromhex(sys.argv[2]))
print(key.decapsulate(open(sys.argv[3], "rb").read()).hex())
"#;

/// A usage error: exit 2 before connecting, nothing on stdout, a message naming `what`.
fn usage_error(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(o.stdout.is_empty());
    assert!(err.contains(what), "{what:?} not in {err}");
}

#[test]
fn ml_dsa_signatures_verify_under_pyca_with_and_without_a_context() {
    let Some(py) = python::peers() else { return };
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    std::fs::write(dir.join("msg"), b"signed by hsmd, checked by pyca").unwrap();
    std::fs::write(dir.join("other"), b"signed by hsmd, checked by pycb").unwrap();
    for level in ["44", "65", "87"] {
        let t = format!("ml-dsa-{level}");
        ok(&d.ctl("alice", &["keygen", "--type", &t, "--label", &t]));
        let pem = format!("{t}.pem");
        std::fs::write(
            dir.join(&pem),
            ok(&d.ctl("alice", &["pubkey", &t, "--pem"])),
        )
        .unwrap();
        let verify = |msg: &str, sig: &str, ctx: &str| {
            python::run(py, VERIFY, &[level, &pem, msg, sig, ctx], dir)
                .trim()
                .to_string()
        };
        // Pure, no context: pyca verifies; another message does not.
        let (a, b) = (format!("{t}.a.sig"), format!("{t}.b.sig"));
        ok(&d.ctl("alice", &["sign", &t, "--in", "msg", "--out", &a]));
        ok(&d.ctl("alice", &["sign", &t, "--in", "msg", "--out", &b]));
        assert_eq!(verify("msg", &a, "-"), "good", "{t}");
        assert_eq!(verify("other", &a, "-"), "bad", "{t} over another message");
        // Hedged: two signatures of one message differ, and both verify.
        assert_ne!(
            std::fs::read(dir.join(&a)).unwrap(),
            std::fs::read(dir.join(&b)).unwrap(),
            "{t}: hedged"
        );
        assert_eq!(verify("msg", &b, "-"), "good", "{t}");
        // An empty context is no context.
        let e = format!("{t}.e.sig");
        ok(&d.ctl(
            "alice",
            &["sign", &t, "--in", "msg", "--out", &e, "--context", ""],
        ));
        assert_eq!(verify("msg", &e, "-"), "good", "{t}: empty context");
        // With a context (either case of hex): pyca verifies under it, not without it.
        let c = format!("{t}.c.sig");
        ok(&d.ctl(
            "alice",
            &[
                "sign",
                &t,
                "--in",
                "msg",
                "--out",
                &c,
                "--context",
                "C0ffEE",
            ],
        ));
        assert_eq!(verify("msg", &c, "c0ffee"), "good", "{t} with a context");
        assert_eq!(verify("msg", &c, "-"), "bad", "{t}: context dropped");
        assert_eq!(verify("msg", &c, "c0ffef"), "bad", "{t}: another context");
        // hsmd verifies the same way.
        let v = |sig: &str, ctx: Option<&str>| {
            let mut args = vec!["verify", &t, "--in", "msg", "--sig", sig];
            if let Some(ctx) = ctx {
                args.extend(["--context", ctx]);
            }
            d.ctl("alice", &args)
        };
        assert_eq!(ok(&v(&c, Some("c0ffee"))).trim(), "ok");
        assert_eq!(ok(&v(&a, None)).trim(), "ok");
        assert_failed(&v(&c, None), "bad_signature");
        assert_failed(&v(&a, Some("00")), "bad_signature");
        // A context of the most bytes FIPS 204 allows.
        let long = "ab".repeat(255);
        let l = format!("{t}.l.sig");
        ok(&d.ctl(
            "alice",
            &["sign", &t, "--in", "msg", "--out", &l, "--context", &long],
        ));
        assert_eq!(verify("msg", &l, &long), "good", "{t}: 255-byte context");
    }

    // Bad contexts are usage errors, before connecting (exit 2); a context on a key that is
    // not ML-DSA is the server's wrong_key_type (exit 1).
    let sign = |ctx: &str| {
        d.ctl(
            "alice",
            &[
                "sign",
                "ml-dsa-65",
                "--in",
                "msg",
                "--out",
                "x.sig",
                "--context",
                ctx,
            ],
        )
    };
    usage_error(&sign("abc"), "even number of hex digits");
    usage_error(&sign("0x00"), "hex digits only");
    usage_error(&sign("zz"), "hex digits only");
    usage_error(&sign(&"00".repeat(256)), "at most 255 bytes");
    assert!(!dir.join("x.sig").exists());
    ok(&d.ctl("alice", &["keygen", "--type", "ed25519", "--label", "ed"]));
    let o = d.ctl(
        "alice",
        &[
            "sign",
            "ed",
            "--in",
            "msg",
            "--out",
            "x.sig",
            "--context",
            "00",
        ],
    );
    let (status, message) = failed_with_message(&o);
    assert_eq!(status, "wrong_key_type");
    assert!(message.contains("context"), "{message}");
}

#[test]
fn seeds_make_the_keys_pyca_makes_and_export_gives_them_back() {
    let Some(py) = python::peers() else { return };
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    // pyca has no ML-KEM-512: it is checked against hsmd's own round trip elsewhere.
    let cases = [
        ("dsa", "44", 32),
        ("dsa", "65", 32),
        ("dsa", "87", 32),
        ("kem", "768", 64),
        ("kem", "1024", 64),
    ];
    for (i, (kind, level, len)) in cases.into_iter().enumerate() {
        let t = format!("ml-{kind}-{level}");
        let seed: Vec<u8> = (0..len).map(|j| (i * 37 + j * 11 + 1) as u8).collect();
        let prefix = format!("{t}-py");
        python::run(py, DSA_FROM_SEED, &[kind, level, &hex(&seed), &prefix], dir);
        let theirs = std::fs::read_to_string(dir.join(format!("{prefix}.pem"))).unwrap();
        // The raw seed, PKCS#8 DER and PKCS#8 PEM all make pyca's public key.
        for (form, ext) in [("raw", "seed"), ("der", "der"), ("pem", "key")] {
            let label = format!("{t}-{form}");
            let input = format!("{prefix}.{ext}");
            ok(&d.ctl(
                "alice",
                &[
                    "import",
                    "--type",
                    &t,
                    "--in",
                    &input,
                    "--label",
                    &label,
                    "--exportable",
                ],
            ));
            let ours = ok(&d.ctl("alice", &["pubkey", &label, "--pem"]));
            assert_eq!(ours.trim(), theirs.trim(), "{t} from the {form} seed");
            assert_eq!(
                d.exported("alice", &label),
                seed,
                "{t}: export is the raw seed"
            );
        }
        // The document of another parameter set is refused, naming both.
        let other = if kind == "dsa" {
            if level == "44" {
                "ml-dsa-65"
            } else {
                "ml-dsa-44"
            }
        } else if level == "768" {
            "ml-kem-1024"
        } else {
            "ml-kem-768"
        };
        let o = d.ctl(
            "alice",
            &[
                "import",
                "--type",
                other,
                "--in",
                &format!("{prefix}.der"),
                "--label",
                &format!("{t}-wrong"),
            ],
        );
        let (status, message) = failed_with_message(&o);
        assert_eq!(status, "invalid_argument", "{message}");
        assert!(message.contains(&t) && message.contains(other), "{message}");
    }
    // A seed of the wrong length, and garbage, are refused with what was expected.
    std::fs::write(dir.join("short"), [1u8; 31]).unwrap();
    let o = d.ctl(
        "alice",
        &[
            "import",
            "--type",
            "ml-dsa-65",
            "--in",
            "short",
            "--label",
            "short",
        ],
    );
    let (status, message) = failed_with_message(&o);
    assert_eq!(status, "invalid_argument");
    assert!(message.contains("32-byte raw seed"), "{message}");
    // A key that is not exportable is not exported.
    ok(&d.ctl(
        "alice",
        &["keygen", "--type", "ml-kem-768", "--label", "kept"],
    ));
    assert_failed(
        &d.ctl("alice", &["export", "kept", "--out", "kept.raw"]),
        "not_exportable",
    );
}

#[test]
fn ml_kem_secrets_agree_with_pyca_both_ways() {
    let Some(py) = python::peers() else { return };
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    for level in ["768", "1024"] {
        let t = format!("ml-kem-{level}");
        ok(&d.ctl(
            "alice",
            &["keygen", "--type", &t, "--label", &t, "--exportable"],
        ));
        let pem = format!("{t}.pem");
        std::fs::write(
            dir.join(&pem),
            ok(&d.ctl("alice", &["pubkey", &t, "--pem"])),
        )
        .unwrap();

        // pyca encapsulates to hsmd's key; hsmd decapsulates into a new key, byte for byte.
        let ct = format!("{t}.ct");
        let theirs = python::run(py, ENCAPSULATE, &[&pem, &ct], dir);
        let label = format!("{t}-in");
        let line = ok(&d.ctl(
            "alice",
            &[
                "decapsulate",
                &t,
                "--in",
                &ct,
                "--type",
                "hmac-sha256",
                "--label",
                &label,
                "--exportable",
            ],
        ));
        assert!(line.trim().ends_with(&label), "{line}");
        assert_eq!(
            hex(&d.exported("alice", &label)),
            theirs.trim(),
            "{t}: decapsulated"
        );

        // hsmd encapsulates to pyca's key; pyca decapsulates the same secret.
        let seed: Vec<u8> = (0..64).map(|j| j as u8 ^ 0x5a).collect();
        let prefix = format!("{t}-peer");
        python::run(
            py,
            DSA_FROM_SEED,
            &["kem", level, &hex(&seed), &prefix],
            dir,
        );
        let ct2 = format!("{t}.ct2");
        let label = format!("{t}-out");
        ok(&d.ctl(
            "alice",
            &[
                "encapsulate",
                "--peer",
                &format!("{prefix}.pem"),
                "--out",
                &ct2,
                "--type",
                "aes256gcm",
                "--label",
                &label,
                "--exportable",
            ],
        ));
        let theirs = python::run(py, DECAPSULATE, &[level, &hex(&seed), &ct2], dir);
        assert_eq!(
            hex(&d.exported("alice", &label)),
            theirs.trim(),
            "{t}: encapsulated"
        );

        // A tampered ciphertext decapsulates (implicit rejection) to another secret, the
        // same one each time, and pyca's key gives that same secret too.
        let mut bad = std::fs::read(dir.join(&ct2)).unwrap();
        bad[5] ^= 0x40;
        std::fs::write(dir.join("bad.ct"), &bad).unwrap();
        let rejected = python::run(py, DECAPSULATE, &[level, &hex(&seed), "bad.ct"], dir);
        assert_ne!(rejected.trim(), theirs.trim());
        let peer_label = format!("{t}-peer");
        ok(&d.ctl(
            "alice",
            &[
                "import",
                "--type",
                &t,
                "--in",
                &format!("{prefix}.seed"),
                "--label",
                &peer_label,
                "--exportable",
            ],
        ));
        let label = format!("{t}-rejected");
        ok(&d.ctl(
            "alice",
            &[
                "decapsulate",
                &peer_label,
                "--in",
                "bad.ct",
                "--type",
                "hmac-sha256",
                "--label",
                &label,
                "--exportable",
            ],
        ));
        assert_eq!(
            hex(&d.exported("alice", &label)),
            rejected.trim(),
            "{t}: FIPS 203's implicit rejection"
        );
    }
}

#[test]
fn ml_kem_inside_hsmd_and_its_bad_inputs() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    let dir = d.tmp();
    for t in ["ml-kem-512", "ml-kem-768", "ml-kem-1024"] {
        ok(&d.ctl("alice", &["keygen", "--type", t, "--label", t]));
        for (new_type, n) in [
            ("chacha20poly1305", 1),
            ("aes256gcm", 2),
            ("hmac-sha256", 3),
        ] {
            let ct = format!("{t}-{n}.ct");
            let (a, b) = (format!("{t}-{n}a"), format!("{t}-{n}b"));
            ok(&d.ctl(
                "alice",
                &[
                    "encapsulate",
                    t,
                    "--out",
                    &ct,
                    "--type",
                    new_type,
                    "--label",
                    &a,
                ],
            ));
            let info = ok(&d.ctl("alice", &["info", &a, "--json"]));
            assert!(info.contains(new_type), "{info}");
            // Decapsulated into a key of the same type: the two keys are one secret (the
            // ML-KEM key is not exportable, so neither is what it decapsulates; compare by
            // use instead).
            ok(&d.ctl(
                "alice",
                &[
                    "decapsulate",
                    t,
                    "--in",
                    &ct,
                    "--type",
                    new_type,
                    "--label",
                    &b,
                ],
            ));
            std::fs::write(dir.join("p"), b"same secret?").unwrap();
            if new_type == "hmac-sha256" {
                ok(&d.ctl("alice", &["mac", &a, "--in", "p", "--out", "m"]));
                assert_eq!(
                    ok(&d.ctl("alice", &["mac-verify", &b, "--in", "p", "--mac", "m"])).trim(),
                    "ok"
                );
            } else {
                ok(&d.ctl("alice", &["encrypt", &a, "--in", "p", "--out", "c"]));
                ok(&d.ctl("alice", &["decrypt", &b, "--in", "c", "--out", "q"]));
                assert_eq!(std::fs::read(dir.join("q")).unwrap(), b"same secret?");
            }
        }
    }
    let ct = "ml-kem-768-1.ct";
    let decap = |args: &[&str]| {
        d.ctl(
            "alice",
            &[&["decapsulate"][..], args, &["--label", "z"]].concat(),
        )
    };
    // A ciphertext of the wrong length.
    let full = std::fs::read(dir.join(ct)).unwrap();
    std::fs::write(dir.join("short.ct"), &full[1..]).unwrap();
    let (status, message) = failed_with_message(&decap(&[
        "ml-kem-768",
        "--in",
        "short.ct",
        "--type",
        "aes256gcm",
    ]));
    assert_eq!(status, "invalid_argument");
    assert!(message.contains("1088"), "{message}");
    // A ciphertext of another parameter set.
    let (status, _) =
        failed_with_message(&decap(&["ml-kem-512", "--in", ct, "--type", "aes256gcm"]));
    assert_eq!(status, "invalid_argument");
    // A type the secret cannot be.
    for bad in ["p256", "ml-kem-768", "ed25519"] {
        let o = decap(&["ml-kem-768", "--in", ct, "--type", bad]);
        let (status, message) = failed_with_message(&o);
        assert_eq!(status, "invalid_argument", "{bad}");
        assert!(message.contains("aes256gcm"), "{message}");
        let o = d.ctl(
            "alice",
            &[
                "encapsulate",
                "ml-kem-768",
                "--out",
                "n.ct",
                "--type",
                bad,
                "--label",
                "n",
            ],
        );
        assert_eq!(failed_with_message(&o).0, "invalid_argument", "{bad}");
    }
    assert!(!dir.join("n.ct").exists());
    // Exportable out of a non-exportable ML-KEM key: refused, as for derive.
    let o = decap(&[
        "ml-kem-768",
        "--in",
        ct,
        "--type",
        "aes256gcm",
        "--exportable",
    ]);
    assert_eq!(failed_with_message(&o).0, "not_exportable");
    // Not ML-KEM keys.
    ok(&d.ctl(
        "alice",
        &["keygen", "--type", "ml-dsa-44", "--label", "dsa"],
    ));
    let o = decap(&["dsa", "--in", ct, "--type", "aes256gcm"]);
    assert_eq!(failed_with_message(&o).0, "wrong_key_type");
    // A peer key that is not an ML-KEM public key: a usage error before connecting.
    std::fs::write(
        dir.join("dsa.pem"),
        ok(&d.ctl("alice", &["pubkey", "dsa", "--pem"])),
    )
    .unwrap();
    let o = d.ctl(
        "alice",
        &[
            "encapsulate",
            "--peer",
            "dsa.pem",
            "--out",
            "n.ct",
            "--type",
            "aes256gcm",
            "--label",
            "n",
        ],
    );
    usage_error(&o, "expected an ML-KEM public key");
    // An output that cannot be written stops the command before any key is made.
    let o = d.ctl(
        "alice",
        &[
            "encapsulate",
            "ml-kem-768",
            "--out",
            "no/such/dir/ct",
            "--type",
            "aes256gcm",
            "--label",
            "lost",
        ],
    );
    usage_error(&o, "cannot write no/such/dir/ct");
    assert_failed(&d.ctl("alice", &["info", "lost"]), "key_not_found");
    // Neither KEY nor --peer, or both.
    let o = d.ctl(
        "alice",
        &[
            "encapsulate",
            "--out",
            "n.ct",
            "--type",
            "aes256gcm",
            "--label",
            "n",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    // The daemon is fine after all of it.
    assert_eq!(ok(&d.ctl("alice", &["ping"])).trim(), "ok");
}
