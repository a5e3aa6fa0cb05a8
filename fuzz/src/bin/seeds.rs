//! Writes the starting corpus for every target into `corpus/<target>/` (run once; the corpus
//! is committed, and AFL's finds are added to it with `afl-cmin`).
use std::path::Path;

use ferrohsm_proto::handshake::{Hello, Proof};
use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{DigestAlg, KeyRef, KeyType, Page, Request};

fn requests() -> Vec<Request> {
    let key = KeyRef::Label("k".parse().expect("label"));
    let spec = KeySpec {
        key_type: KeyType::Ed25519,
        label: "k".parse().expect("label"),
        usage: None,
        exportable: false,
        session: false,
    };
    vec![
        Request::Hello(Hello {
            version: ferrohsm_proto::PROTOCOL_VERSION,
            client: "alice".into(),
        }),
        Request::Proof(Proof {
            signature: vec![1; 64],
        }),
        Request::Ping,
        Request::List(Page::default()),
        Request::List(Page {
            after: Some(3),
            limit: Some(10),
        }),
        Request::Random { len: 32 },
        Request::Digest {
            alg: DigestAlg::Sha256,
            data: b"abc".to_vec(),
        },
        Request::Generate(spec.clone()),
        Request::Generate(KeySpec {
            key_type: KeyType::ChaCha20Poly1305,
            label: "a".parse().expect("label"),
            ..spec.clone()
        }),
        Request::Info(key.clone()),
        Request::Sign {
            key: key.clone(),
            data: b"m".to_vec(),
        },
        Request::Verify {
            key: key.clone(),
            data: b"m".to_vec(),
            signature: vec![0; 64],
        },
        Request::Encrypt {
            key: KeyRef::Label("a".parse().expect("label")),
            plaintext: b"p".to_vec(),
            aad: Vec::new(),
        },
        Request::Export(key.clone()),
        Request::Delete(key),
        Request::CounterCreate("c".parse().expect("label")),
        Request::CounterInc("c".parse().expect("label")),
    ]
}

/// Requests for every key type, from the key-type table (appended after [`requests`], so the
/// seeds written before keep their names): a generation of each type, an import of each
/// type's raw secret, and the post-quantum operations with inputs of the right sizes.
fn per_key_type() -> Vec<Request> {
    use ferrohsm_proto::Family;
    let key = KeyRef::Label("k".parse().expect("label"));
    let spec = |t: KeyType| KeySpec {
        key_type: t,
        label: "n".parse().expect("label"),
        usage: None,
        exportable: false,
        session: false,
    };
    let mut out = Vec::new();
    for t in KeyType::ALL {
        let d = t.describe();
        out.push(Request::Generate(spec(t)));
        out.push(Request::Import {
            spec: spec(t),
            material: vec![7; d.secret_len],
        });
        match d.family {
            Family::MlDsa { signature_len, .. } => {
                out.push(Request::SignContext {
                    key: key.clone(),
                    data: b"m".to_vec(),
                    context: b"ctx".to_vec(),
                });
                out.push(Request::VerifyContext {
                    key: key.clone(),
                    data: b"m".to_vec(),
                    signature: vec![0; signature_len],
                    context: b"ctx".to_vec(),
                });
            }
            Family::MlKem { ciphertext_len, .. } => {
                let public = d.public.map_or(0, |p| p.len);
                let peer = ferrohsm_proto::pem::spki_der(t, &vec![0; public]).expect("spki");
                out.push(Request::Encapsulate {
                    key: key.clone(),
                    spec: spec(KeyType::Aes256Gcm),
                });
                out.push(Request::EncapsulatePeer {
                    peer,
                    spec: spec(KeyType::HmacSha256),
                });
                out.push(Request::Decapsulate {
                    key: key.clone(),
                    ciphertext: vec![0; ciphertext_len],
                    spec: spec(KeyType::ChaCha20Poly1305),
                });
            }
            Family::Ed25519
            | Family::EcdsaP256
            | Family::X25519
            | Family::Aead
            | Family::Hmac => {}
        }
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let reqs: Vec<Request> = requests().into_iter().chain(per_key_type()).collect();
    let mut all = Vec::new();
    // After the login: every request but the handshake's own (hello, proof come first).
    let mut session = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let f = r.to_frame(i as u64 + 1);
        let wire = f.encode();
        all.extend_from_slice(&wire);
        if i >= 2 {
            session.extend_from_slice(&wire);
        }
        let mut body = f.header.opcode.to_le_bytes().to_vec();
        body.extend_from_slice(&f.body);
        write(&root.join("request"), &format!("{i:02}"), &body);
        write(
            &root.join("frame"),
            &format!("{i:02}"),
            &[[7u8].as_slice(), &wire].concat(),
        );
        // Front end: odd first byte logs in first; even is a stranger.
        write(
            &root.join("frontend"),
            &format!("{i:02}-authed"),
            &[[1u8].as_slice(), &wire].concat(),
        );
    }
    write(
        &root.join("frontend"),
        "pipeline",
        &[[1u8].as_slice(), &session].concat(),
    );
    write(
        &root.join("frontend"),
        "stranger",
        &[[0u8].as_slice(), &all[..64]].concat(),
    );
    write(
        &root.join("frame"),
        "pipeline",
        &[[3u8].as_slice(), &session].concat(),
    );
    write(
        &root.join("handshake"),
        "hello-proof",
        &all[..all.len().min(200)],
    );
    // Ring scripts: reads, writes, a scribble.
    let mut script = Vec::new();
    for op in [3u8, 2, 4, 0, 2, 1, 2] {
        script.push(op);
        script.extend_from_slice(&100u64.to_le_bytes());
        if op == 0 {
            script.extend_from_slice(&u64::MAX.to_le_bytes());
        }
    }
    write(&root.join("ring"), "script", &script);
    println!("seeds written under {}", root.display());
}
