//! What a bench row is: the operations measured (and the keys their requests use), one
//! measurement, an in-process baseline.

use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, Request};

/// The keys one client's requests use.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) ed: KeyRef,
    pub(crate) ed_session: KeyRef,
    pub(crate) p256: KeyRef,
    pub(crate) aead: KeyRef,
    pub(crate) hmac: KeyRef,
    pub(crate) counter: ferrohsm_proto::Label,
    pub(crate) ml_dsa: KeyRef,
    /// An ML-DSA-65 signature of the bench message by `ml_dsa`, for the verify row.
    pub(crate) ml_dsa_sig: Vec<u8>,
    pub(crate) ml_kem: KeyRef,
    /// A ciphertext to `ml_kem`, for the decapsulate row.
    pub(crate) ml_kem_ct: Vec<u8>,
}

impl Keys {
    /// Every key the set-up made, to delete when the bench is done.
    pub(crate) fn all(&self) -> [&KeyRef; 7] {
        [
            &self.ed,
            &self.ed_session,
            &self.p256,
            &self.aead,
            &self.hmac,
            &self.ml_dsa,
            &self.ml_kem,
        ]
    }
}

/// The benchmarked operations (names as in reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    /// Session round trip.
    Ping,
    /// 32 random bytes.
    Random32,
    /// Ed25519 signature of 32 bytes.
    Ed25519Sign,
    /// ECDSA P-256 signature of 32 bytes.
    P256Sign,
    /// ChaCha20-Poly1305 encryption of 64 bytes.
    ChaCha64,
    /// ChaCha20-Poly1305 encryption of 16 KiB.
    ChaCha16k,
    /// HMAC-SHA256 of 1 KiB.
    Hmac1k,
    /// Ed25519 signature of 32 bytes with a session key (memory only): the reference for
    /// signing with a cached persistent key.
    Ed25519SignSession,
    /// A new persistent Ed25519 key (durable before the answer).
    KeygenPersistent,
    /// A new Ed25519 session key (memory only).
    KeygenSession,
    /// A monotonic counter increment (durable before the answer).
    CounterInc,
    /// A new ML-DSA-65 session key (memory only: the computation, not the disk).
    MlDsa65Keygen,
    /// ML-DSA-65 signature of 32 bytes (hedged, no context).
    MlDsa65Sign,
    /// ML-DSA-65 verification of a signature of 32 bytes.
    MlDsa65Verify,
    /// ML-KEM-768 encapsulation to a key in hsmd, the secret kept as a session key.
    MlKem768Encapsulate,
    /// ML-KEM-768 decapsulation, the secret kept as a session key.
    MlKem768Decapsulate,
}

impl BenchOp {
    /// Every operation, in report order.
    pub const ALL: [BenchOp; 16] = [
        BenchOp::Ping,
        BenchOp::Random32,
        BenchOp::Ed25519Sign,
        BenchOp::Ed25519SignSession,
        BenchOp::P256Sign,
        BenchOp::ChaCha64,
        BenchOp::ChaCha16k,
        BenchOp::Hmac1k,
        BenchOp::KeygenPersistent,
        BenchOp::KeygenSession,
        BenchOp::CounterInc,
        BenchOp::MlDsa65Keygen,
        BenchOp::MlDsa65Sign,
        BenchOp::MlDsa65Verify,
        BenchOp::MlKem768Encapsulate,
        BenchOp::MlKem768Decapsulate,
    ];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Ping => "ping",
            BenchOp::Random32 => "random-32",
            BenchOp::Ed25519Sign => "ed25519-sign",
            BenchOp::P256Sign => "p256-sign",
            BenchOp::ChaCha64 => "chacha20poly1305-encrypt-64",
            BenchOp::ChaCha16k => "chacha20poly1305-encrypt-16k",
            BenchOp::Hmac1k => "hmac-sha256-1k",
            BenchOp::Ed25519SignSession => "ed25519-sign-session",
            BenchOp::KeygenPersistent => "keygen-persistent",
            BenchOp::KeygenSession => "keygen-session",
            BenchOp::CounterInc => "counter-inc",
            BenchOp::MlDsa65Keygen => "ml-dsa-65-keygen",
            BenchOp::MlDsa65Sign => "ml-dsa-65-sign",
            BenchOp::MlDsa65Verify => "ml-dsa-65-verify",
            BenchOp::MlKem768Encapsulate => "ml-kem-768-encapsulate",
            BenchOp::MlKem768Decapsulate => "ml-kem-768-decapsulate",
        }
    }

    /// The request; `label` names a new key (the ops that make one).
    pub(super) fn request(self, keys: &Keys, label: impl FnOnce() -> String) -> Request {
        let new = |key_type, session: bool| KeySpec {
            key_type,
            // Labels made here follow the label rule: a letter, then [A-Za-z0-9-].
            label: label().parse().unwrap_or_else(|_| unreachable!()),
            usage: None,
            exportable: false,
            session,
        };
        match self {
            BenchOp::KeygenPersistent => Request::Generate(new(KeyType::Ed25519, false)),
            BenchOp::KeygenSession => Request::Generate(new(KeyType::Ed25519, true)),
            BenchOp::MlDsa65Keygen => Request::Generate(new(KeyType::MlDsa65, true)),
            BenchOp::MlDsa65Sign => Request::Sign {
                key: keys.ml_dsa.clone(),
                data: vec![0x5a; 32],
            },
            BenchOp::MlDsa65Verify => Request::Verify {
                key: keys.ml_dsa.clone(),
                data: vec![0x5a; 32],
                signature: keys.ml_dsa_sig.clone(),
            },
            BenchOp::MlKem768Encapsulate => Request::Encapsulate {
                key: keys.ml_kem.clone(),
                spec: new(KeyType::Aes256Gcm, true),
            },
            BenchOp::MlKem768Decapsulate => Request::Decapsulate {
                key: keys.ml_kem.clone(),
                ciphertext: keys.ml_kem_ct.clone(),
                spec: new(KeyType::Aes256Gcm, true),
            },
            BenchOp::Ed25519SignSession => Request::Sign {
                key: keys.ed_session.clone(),
                data: vec![0x5a; 32],
            },
            BenchOp::Ping => Request::Ping,
            BenchOp::Random32 => Request::Random { len: 32 },
            BenchOp::Ed25519Sign => Request::Sign {
                key: keys.ed.clone(),
                data: vec![0x5a; 32],
            },
            BenchOp::P256Sign => Request::Sign {
                key: keys.p256.clone(),
                data: vec![0x5a; 32],
            },
            BenchOp::ChaCha64 => Request::Encrypt {
                key: keys.aead.clone(),
                plaintext: vec![1; 64],
                aad: vec![],
            },
            BenchOp::ChaCha16k => Request::Encrypt {
                key: keys.aead.clone(),
                plaintext: vec![1; 16384],
                aad: vec![],
            },
            BenchOp::Hmac1k => Request::Mac {
                key: keys.hmac.clone(),
                data: vec![2; 1024],
            },
            BenchOp::CounterInc => Request::CounterInc(keys.counter.clone()),
        }
    }
}

impl std::str::FromStr for BenchOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BenchOp::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = BenchOp::ALL.iter().map(|o| o.name()).collect();
                format!("unknown op {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Transport name.
    pub transport: String,
    /// Op name.
    pub op: String,
    /// Requests in flight per client.
    pub inflight: usize,
    /// Clients (connections).
    pub clients: usize,
    /// Throughput.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// `ops_per_sec` / the in-process baseline, where there is one.
    pub ratio: Option<f64>,
    /// The clients' CPU time per request, in microseconds, where measured.
    pub cpu_us_client: Option<f64>,
    /// The server's CPU time per request, in microseconds, where measured (a spawned server).
    pub cpu_us_server: Option<f64>,
}

/// In-process, one thread.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Op name.
    pub op: String,
    /// Throughput.
    pub ops_per_sec: f64,
}
