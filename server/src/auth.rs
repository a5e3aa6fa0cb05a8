//! The one authenticator: maps what a transport proved (a [`Credential`]) plus the client's
//! hello and proof to a configured client. Transports only run their handshakes and say what
//! they proved; every identity rule lives here:
//!
//! - a TLS certificate or PSK identity names the client; the hello must name the same one;
//! - with no credential (plain TCP) or Unix peer credentials (the shm set-up socket), the
//!   client signs a fresh challenge with its Ed25519 auth key;
//! - on the shm set-up socket the peer's uid must also be in the client's `allowed_uids`.
//!
//! An unknown name gets a challenge like a known one and fails at the proof with the same
//! message, after the same work (its proof is checked against a decoy key made at start), so
//! neither the answer nor its timing reveals which client names exist. A certificate whose
//! names map to more than one client is refused: a credential always means one client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use ferrohsm_proto::handshake::{Authenticate, Challenge, Hello, HelloOutcome, transcript};
use ferrohsm_proto::{PROTOCOL_VERSION, Status};
use ferrohsm_shm::handoff::PeerCred;

use crate::config::ClientConfig;
use crate::error::OpError;

/// What a transport proved about its peer.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Nothing (plain TCP): the client must prove its name with its auth key.
    Nothing,
    /// The names (subject CN, DNS SANs) of a client certificate that chains to the client CA.
    Certificate(Vec<String>),
    /// The identity of the TLS 1.3 pre-shared key the handshake succeeded with.
    PskIdentity(Vec<u8>),
    /// The kernel's credentials of a Unix-socket peer (shm set-up socket); the client still
    /// proves its name, and its uid must be allowed.
    UnixPeer(PeerCred),
    /// A shared-memory ring whose set-up socket already authenticated `client`.
    ShmSession {
        /// The client proven on the set-up socket.
        client: Arc<str>,
        /// The peer process.
        peer: PeerCred,
    },
}

impl Credential {
    /// The transport this credential comes from (for the audit log).
    pub fn transport(&self) -> &'static str {
        match self {
            Credential::Nothing => "tcp",
            Credential::Certificate(_) => "tls",
            Credential::PskIdentity(_) => "tls-psk",
            Credential::UnixPeer(_) | Credential::ShmSession { .. } => "shm",
        }
    }
}

/// Maps credentials and proofs to configured clients.
pub struct Authenticator {
    clients: Arc<BTreeMap<String, ClientConfig>>,
    // Certificate name (CN or DNS SAN) -> configured client.
    cert_names: HashMap<String, Arc<str>>,
    // PSK identity -> configured client.
    psk_identities: HashMap<Vec<u8>, Arc<str>>,
    // Proofs for unknown names (and clients without an auth key) are checked against this,
    // so they cost what a wrong proof for a known name costs.
    decoy: VerifyingKey,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

fn auth_failed() -> OpError {
    OpError::new(
        Status::AuthFailed,
        "authentication failed: unknown client or proof not made with its auth key for this session",
    )
}

/// Refuses a hello of another protocol version.
fn check_version(h: &Hello) -> Result<(), OpError> {
    if h.version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(OpError::new(
        Status::UnsupportedVersion,
        format!(
            "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
            h.version
        ),
    ))
}

impl Authenticator {
    /// Indexes every configured client's certificate names and PSK identity.
    pub fn new(clients: Arc<BTreeMap<String, ClientConfig>>) -> Authenticator {
        let mut cert_names = HashMap::new();
        let mut psk_identities = HashMap::new();
        for (name, cc) in clients.iter() {
            let client: Arc<str> = Arc::from(name.as_str());
            for n in &cc.tls_names {
                cert_names.insert(n.clone(), client.clone());
            }
            if let Some((identity, _)) = &cc.psk {
                psk_identities.insert(identity.as_bytes().to_vec(), client.clone());
            }
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        // Without the OS random source the decoy is still a valid key; only its secrecy
        // (irrelevant: nothing is ever signed with it) would suffer.
        let _ = getrandom::fill(&mut *seed);
        let decoy = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        Authenticator {
            clients,
            cert_names,
            psk_identities,
            decoy,
        }
    }

    /// The client a credential proves by itself, `None` when the client must still prove its
    /// name, or why the credential is refused outright (a certificate or PSK identity that
    /// names no configured client).
    pub fn identify(&self, credential: &Credential) -> Result<Option<Arc<str>>, &'static str> {
        match credential {
            Credential::Nothing | Credential::UnixPeer(_) => Ok(None),
            Credential::Certificate(names) => {
                let mut found = names.iter().filter_map(|n| self.cert_names.get(n));
                let first = found
                    .next()
                    .ok_or("the client certificate names no configured client")?;
                if found.any(|other| other != first) {
                    return Err("the client certificate names more than one configured client");
                }
                Ok(Some(first.clone()))
            }
            Credential::PskIdentity(id) => self
                .psk_identities
                .get(id)
                .cloned()
                .map(Some)
                .ok_or("TLS-PSK identity not configured"),
            Credential::ShmSession { client, .. } => Ok(Some(client.clone())),
        }
    }

    /// The answer to a hello on a connection with `credential`: the session opens when the
    /// credential proved the named client, else a fresh challenge for `session_id`.
    pub fn hello(
        &self,
        credential: &Credential,
        hello: Hello,
        session_id: u64,
        peer: &str,
    ) -> Result<HelloOutcome<PendingProof, Arc<str>>, OpError> {
        check_version(&hello)?;
        match self.identify(credential) {
            Ok(Some(proven)) if *proven == hello.client => Ok(HelloOutcome::Open(proven)),
            Ok(Some(proven)) => {
                crate::logsafe::limited(
                    "auth",
                    crate::logsafe::source_of(peer),
                    format_args!(
                        "{peer}: hello names client {} but the credential proves {proven}",
                        crate::logsafe::Escaped(&hello.client)
                    ),
                );
                Err(OpError::new(
                    Status::AuthFailed,
                    format!(
                        "this connection's credential does not belong to client {}",
                        hello.client
                    ),
                ))
            }
            Err(why) => Err(OpError::new(Status::AuthFailed, why)),
            Ok(None) => {
                let mut nonce = [0u8; 32];
                getrandom::fill(&mut nonce)
                    .map_err(|_| OpError::internal("OS random source failed"))?;
                let key = self.clients.get(&hello.client).and_then(|c| c.auth_key);
                Ok(HelloOutcome::Challenge(
                    PendingProof {
                        client: hello.client,
                        session_id,
                        nonce,
                        known: key.is_some(),
                        key: Box::new(key.unwrap_or(self.decoy)),
                    },
                    Challenge { session_id, nonce },
                ))
            }
        }
    }

    /// Checks a proof against its challenge, then what the credential demands beyond the
    /// name (the uid allow-list for a Unix peer). The proven client on success.
    pub fn proof(
        &self,
        credential: &Credential,
        pending: &PendingProof,
        signature: &[u8],
        peer: &str,
    ) -> Result<Arc<str>, OpError> {
        let client = pending.verify(signature, peer)?;
        if let Credential::UnixPeer(cred) = credential {
            let allowed = self
                .clients
                .get(&*client)
                .and_then(|c| c.allowed_uids.as_ref());
            if let Some(uids) = allowed
                && !uids.contains(&cred.uid)
            {
                tracing::warn!(%peer, %client, uid = cred.uid, "peer uid not allowed for this client; refusing");
                return Err(OpError::new(
                    Status::PeerNotAllowed,
                    format!("peer uid {} is not allowed for client {client}", cred.uid),
                ));
            }
        }
        Ok(client)
    }
}

/// The [`Authenticate`] half of the protocol's `ServerHandshake` for one connection: the
/// authenticator, what the connection's transport proved, and the peer (for logs).
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The server's authenticator.
    pub auth: &'a Authenticator,
    /// What the transport proved.
    pub credential: &'a Credential,
    /// The peer, for logs.
    pub peer: &'a str,
}

impl Authenticate for Connection<'_> {
    type Pending = PendingProof;
    type Client = Arc<str>;
    type Error = OpError;

    fn hello(
        &self,
        hello: Hello,
        session_id: u64,
    ) -> Result<HelloOutcome<PendingProof, Arc<str>>, OpError> {
        self.auth
            .hello(self.credential, hello, session_id, self.peer)
    }

    fn proof(&self, pending: &PendingProof, signature: &[u8]) -> Result<Arc<str>, OpError> {
        self.auth
            .proof(self.credential, pending, signature, self.peer)
    }

    fn violation(&self, message: &'static str) -> OpError {
        OpError::new(Status::ProtocolViolation, message)
    }
}

/// A challenge sent, waiting for its proof.
pub struct PendingProof {
    client: String,
    session_id: u64,
    nonce: [u8; 32],
    // The client's auth key, or the decoy when the name is unknown (`known` false).
    key: Box<VerifyingKey>,
    known: bool,
}

impl std::fmt::Debug for PendingProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingProof")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl PendingProof {
    /// Checks the signature over this challenge's transcript; the proven client name on
    /// success. Every failure reads the same, whatever the cause.
    fn verify(&self, signature: &[u8], peer: &str) -> Result<Arc<str>, OpError> {
        let t = transcript(&self.client, self.session_id, &self.nonce);
        // The same work whether the name is known or not: parse, then a full verification.
        let sig = ed25519_dalek::Signature::from_slice(signature)
            .unwrap_or_else(|_| ed25519_dalek::Signature::from_bytes(&[0; 64]));
        let verified = self.key.verify_strict(&t, &sig).is_ok();
        let ok = verified & self.known & (signature.len() == 64);
        if !ok {
            crate::logsafe::limited(
                "auth",
                crate::logsafe::source_of(peer),
                format_args!(
                    "{peer}: authentication failed for claimed client {}",
                    crate::logsafe::Escaped(&self.client)
                ),
            );
            return Err(auth_failed());
        }
        Ok(Arc::from(self.client.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use ferrohsm_proto::Request;
    use ferrohsm_proto::handshake::{Proof, ServerHandshake, ServerStep};

    fn setup() -> (Authenticator, SigningKey) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let alice = ClientConfig {
            auth_key: Some(key.verifying_key()),
            tls_names: vec!["alice-cert".into()],
            psk: None,
            allowed_uids: Some(vec![1000]),
            trusted_wrap_keys: Vec::new(),
        };
        let clients = BTreeMap::from([("alice".to_string(), alice)]);
        (Authenticator::new(Arc::new(clients)), key)
    }

    fn hello(name: &str) -> Request {
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: name.into(),
        })
    }

    fn unix(uid: u32) -> Credential {
        Credential::UnixPeer(PeerCred {
            pid: 1,
            uid,
            gid: uid,
        })
    }

    /// Hello, then a proof signed by `key` over the challenge.
    fn run(auth: &Authenticator, cred: &Credential, key: &SigningKey) -> Result<Arc<str>, OpError> {
        let conn = Connection {
            auth,
            credential: cred,
            peer: "t",
        };
        let mut hs = ServerHandshake::new(9);
        let ServerStep::Challenge(c) = hs.on_request(&conn, hello("alice"))? else {
            panic!("expected a challenge")
        };
        let sig = key.sign(&transcript("alice", c.session_id, &c.nonce));
        let proof = Request::Proof(Proof {
            signature: sig.to_bytes().to_vec(),
        });
        match hs.on_request(&conn, proof)? {
            ServerStep::Open(client) => {
                assert!(hs.is_open());
                Ok(client)
            }
            ServerStep::Challenge(_) => panic!("a second challenge"),
        }
    }

    #[test]
    fn a_proof_opens_and_the_uid_allow_list_applies_to_unix_peers() {
        let (auth, key) = setup();
        assert_eq!(&*run(&auth, &Credential::Nothing, &key).unwrap(), "alice");
        assert_eq!(&*run(&auth, &unix(1000), &key).unwrap(), "alice");
        let e = run(&auth, &unix(1001), &key).unwrap_err();
        assert_eq!(e.status, Status::PeerNotAllowed);
        // A wrong key fails like an unknown client, and never opens.
        let e = run(
            &auth,
            &Credential::Nothing,
            &SigningKey::from_bytes(&[8; 32]),
        )
        .unwrap_err();
        assert_eq!(e.status, Status::AuthFailed);
    }

    #[test]
    fn credentials_that_prove_a_name_open_at_hello_and_only_for_that_name() {
        let (auth, _) = setup();
        let cert = Credential::Certificate(vec!["alice-cert".into()]);
        let conn = Connection {
            auth: &auth,
            credential: &cert,
            peer: "t",
        };
        let mut hs = ServerHandshake::new(1);
        assert!(matches!(
            hs.on_request(&conn, hello("alice")),
            Ok(ServerStep::Open(c)) if &*c == "alice"
        ));
        let mut hs = ServerHandshake::new(2);
        let e = hs.on_request(&conn, hello("bob")).unwrap_err();
        assert_eq!(e.status, Status::AuthFailed);
        let stranger = Credential::Certificate(vec!["mallory".into()]);
        assert_eq!(
            auth.identify(&stranger),
            Err("the client certificate names no configured client")
        );
    }

    #[test]
    fn requests_out_of_order_are_protocol_violations() {
        let (auth, _) = setup();
        let conn = Connection {
            auth: &auth,
            credential: &Credential::Nothing,
            peer: "t",
        };
        let mut hs = ServerHandshake::new(3);
        let e = hs.on_request(&conn, Request::Ping).unwrap_err();
        assert_eq!(e.status, Status::ProtocolViolation);
        assert!(e.message.contains("authenticate first"), "{}", e.message);
    }

    /// A challenge for `name` (any name gets one).
    fn challenge(auth: &Authenticator, name: &str) -> (PendingProof, Challenge) {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client: name.into(),
        };
        match auth.hello(&Credential::Nothing, hello, 5, "t") {
            Ok(HelloOutcome::Challenge(pending, c)) => (pending, c),
            other => panic!("a challenge for any name, got {other:?}"),
        }
    }

    #[test]
    fn a_proof_for_an_unknown_name_is_checked_against_a_decoy_key_and_answered_alike() {
        let (auth, key) = setup();
        let (known, _) = challenge(&auth, "alice");
        assert!(known.known);
        assert_eq!(*known.key, key.verifying_key());
        // An unknown name is challenged like a known one, its proof checked against the
        // decoy: a real key, no client's, drawn afresh by each authenticator.
        let (unknown, c) = challenge(&auth, "mallory");
        assert!(!unknown.known);
        assert_eq!(*unknown.key, auth.decoy);
        assert_ne!(auth.decoy, key.verifying_key());
        assert_ne!(setup().0.decoy, auth.decoy);
        // Even a proof made with a configured client's key over the unknown name's transcript
        // opens nothing, and the answer reads like any wrong proof.
        let sig = key.sign(&transcript("mallory", c.session_id, &c.nonce));
        let e = auth
            .proof(&Credential::Nothing, &unknown, &sig.to_bytes(), "t")
            .unwrap_err();
        assert_eq!(e, auth_failed());
        let e = auth
            .proof(&Credential::Nothing, &known, &[0; 64], "t")
            .unwrap_err();
        assert_eq!(e, auth_failed());
    }

    /// A ratio of medians over interleaved samples, with a wide band: both sides see the same
    /// machine load, and the regression this guards against (an unknown name that skips the
    /// signature check) is a few hundred times cheaper, far outside the band.
    #[test]
    fn a_proof_for_an_unknown_name_costs_what_a_wrong_proof_for_a_known_name_costs() {
        let (auth, _) = setup();
        let wrong = SigningKey::from_bytes(&[9; 32]);
        let time = |name: &str| {
            let (pending, c) = challenge(&auth, name);
            let sig = wrong
                .sign(&transcript(name, c.session_id, &c.nonce))
                .to_bytes();
            let t = std::time::Instant::now();
            let e = auth
                .proof(&Credential::Nothing, &pending, &sig, "t")
                .unwrap_err();
            let took = t.elapsed();
            assert_eq!(e, auth_failed());
            took
        };
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for _ in 0..301 {
            known.push(time("alice"));
            unknown.push(time("mallory"));
        }
        known.sort();
        unknown.sort();
        let ratio = unknown[150].as_secs_f64() / known[150].as_secs_f64();
        assert!(
            (0.25..4.0).contains(&ratio),
            "median unknown/known = {ratio:.3}"
        );
    }
}
