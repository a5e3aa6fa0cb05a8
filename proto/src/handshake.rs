//! The authentication handshake.
//!
//! ```text
//! client                                   server
//!   Hello { version, client }      ->
//!                                  <-      Challenge { session_id, nonce }   (fresh per connection)
//!   Proof { Ed25519 signature over transcript(client, session_id, nonce) } ->
//!                                  <-      Welcome { session_id, max_body, window }
//! ```
//! On TLS the credential has proved the client already: the server checks that the hello names
//! that client and answers it with the welcome directly (see [`HelloReply`]).
//!
//! Both sides are state machines without I/O: [`ClientHandshake`] (the client library,
//! `hsm-stress`, the tests) and [`ServerHandshake`] (`hsmd`, which supplies the decisions
//! through [`Authenticate`]).
//! The signature covers a domain-separation prefix, the session id, the server's fresh nonce
//! and the client name, so a proof is good for exactly one connection and one name: replaying
//! it on another connection fails because that connection has another nonce.

pub use crate::message::hello::{Challenge, Hello, HelloReply, Proof, Welcome};

const DOMAIN: &[u8] = b"FerroHSM auth v1\0";

/// The bytes the client signs to prove its name for this session.
pub fn transcript(client: &str, session_id: u64, nonce: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(DOMAIN.len() + 8 + 32 + 2 + client.len());
    t.extend_from_slice(DOMAIN);
    t.extend_from_slice(&session_id.to_le_bytes());
    t.extend_from_slice(nonce);
    // Length-prefixed so that no two (nonce, name) pairs share a transcript.
    t.extend_from_slice(&(client.len() as u16).to_le_bytes());
    t.extend_from_slice(client.as_bytes());
    t
}

/// Why the client side of a handshake stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused (auth failed, busy, peer not allowed, version...).
    #[error("{}", .0.message)]
    Refused(crate::status::ErrorBody),
    /// The server answered with something the handshake does not expect.
    #[error("unexpected handshake answer: {0}")]
    Unexpected(String),
    /// The server asked for a proof and no signer could make one.
    #[error("{0}")]
    NoProof(String),
}

/// What the client does next.
#[derive(Debug)]
pub enum ClientStep {
    /// Send this frame, then feed the answer to [`ClientHandshake::on_frame`].
    Send(crate::Frame),
    /// The session is open.
    Done(Welcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Start,
    AwaitHelloReply,
    AwaitWelcome,
    Done,
}

/// The client side of the handshake as a state machine without I/O, shared by the client
/// library, `hsm-stress` and the tests: [`ClientHandshake::start`] gives the hello frame, and
/// each frame from the server gives the next step. A challenge is answered through the
/// `sign` callback, which signs [`transcript`] bytes with the client's auth key.
#[derive(Debug)]
pub struct ClientHandshake {
    name: String,
    state: ClientState,
}

impl ClientHandshake {
    /// A handshake authenticating as `name`.
    pub fn new(name: &str) -> ClientHandshake {
        ClientHandshake {
            name: name.to_owned(),
            state: ClientState::Start,
        }
    }

    /// The hello frame (request id 0), to send first.
    pub fn start(&mut self) -> crate::Frame {
        self.state = ClientState::AwaitHelloReply;
        crate::Request::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            client: self.name.clone(),
        })
        .to_frame(0)
    }

    /// The next step after the server's `frame`. `sign` makes the 64-byte Ed25519 signature
    /// over the bytes given (or says why it cannot).
    pub fn on_frame(
        &mut self,
        frame: &crate::Frame,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<ClientStep, HandshakeError> {
        if frame.header.is_error() {
            self.state = ClientState::Done;
            let body = crate::message::body::decode_error(frame.header.opcode, &frame.body)
                .map_err(|e| HandshakeError::Unexpected(e.to_string()))?;
            return Err(HandshakeError::Refused(body));
        }
        let resp = crate::Response::decode(frame.header.opcode, &frame.body)
            .map_err(|e| HandshakeError::Unexpected(e.to_string()))?;
        match (self.state, resp) {
            (ClientState::AwaitHelloReply, crate::Response::Challenge(c)) => {
                let t = transcript(&self.name, c.session_id, &c.nonce);
                let signature = sign(&t).map_err(HandshakeError::NoProof)?;
                self.state = ClientState::AwaitWelcome;
                Ok(ClientStep::Send(
                    crate::Request::Proof(Proof { signature }).to_frame(0),
                ))
            }
            (
                ClientState::AwaitHelloReply | ClientState::AwaitWelcome,
                crate::Response::Welcome(w),
            ) => {
                self.state = ClientState::Done;
                Ok(ClientStep::Done(w))
            }
            (_, other) => Err(HandshakeError::Unexpected(format!(
                "{} in handshake state {:?}",
                other.kind(),
                self.state
            ))),
        }
    }
}

/// What the server side of the handshake asks of whoever knows the configured clients: the
/// state machine ([`ServerHandshake`]) sequences the messages, the authenticator decides.
pub trait Authenticate {
    /// A challenge sent, waiting for its proof.
    type Pending;
    /// A proven client.
    type Client;
    /// A refusal (sent back as the error frame; the connection then closes).
    type Error;
    /// The answer to a hello for the connection with `session_id`.
    fn hello(
        &self,
        hello: Hello,
        session_id: u64,
    ) -> Result<HelloOutcome<Self::Pending, Self::Client>, Self::Error>;
    /// Checks a proof against its challenge.
    fn proof(&self, pending: &Self::Pending, signature: &[u8])
    -> Result<Self::Client, Self::Error>;
    /// A request out of order.
    fn violation(&self, message: &'static str) -> Self::Error;
}

/// What a hello leads to.
#[derive(Debug)]
pub enum HelloOutcome<P, C> {
    /// Prove the name: this challenge goes out, `P` waits for the proof.
    Challenge(P, Challenge),
    /// The transport's credential proved the name already.
    Open(C),
}

/// What the server does after a handshake request.
#[derive(Debug)]
pub enum ServerStep<C> {
    /// Answer with this challenge and wait for the proof.
    Challenge(Challenge),
    /// The client is proven: open the session for it.
    Open(C),
}

#[derive(Debug)]
enum ServerState<P> {
    AwaitHello,
    AwaitProof(P),
    Open,
}

/// The server side of the handshake as a state machine without I/O: one per connection, fed
/// each request of the handshake phase. Used by `hsmd` for every session and for the shm
/// set-up socket alike.
#[derive(Debug)]
pub struct ServerHandshake<P> {
    session_id: u64,
    state: ServerState<P>,
}

impl<P> ServerHandshake<P> {
    /// A handshake for the connection with `session_id`.
    pub fn new(session_id: u64) -> ServerHandshake<P> {
        ServerHandshake {
            session_id,
            state: ServerState::AwaitHello,
        }
    }

    /// Whether the client has been proven.
    pub fn is_open(&self) -> bool {
        matches!(self.state, ServerState::Open)
    }

    /// The next step after `request`. Any error ends the connection.
    pub fn on_request<A: Authenticate<Pending = P>>(
        &mut self,
        auth: &A,
        request: crate::Request,
    ) -> Result<ServerStep<A::Client>, A::Error> {
        use crate::Request;
        match (&self.state, request) {
            (ServerState::AwaitHello, Request::Hello(h)) => {
                match auth.hello(h, self.session_id)? {
                    HelloOutcome::Challenge(pending, c) => {
                        self.state = ServerState::AwaitProof(pending);
                        Ok(ServerStep::Challenge(c))
                    }
                    HelloOutcome::Open(client) => {
                        self.state = ServerState::Open;
                        Ok(ServerStep::Open(client))
                    }
                }
            }
            (ServerState::AwaitProof(pending), Request::Proof(p)) => {
                let client = auth.proof(pending, &p.signature)?;
                self.state = ServerState::Open;
                Ok(ServerStep::Open(client))
            }
            (ServerState::Open, Request::Hello(_) | Request::Proof(_)) => {
                Err(auth.violation("already authenticated"))
            }
            (ServerState::AwaitProof(_), _) => Err(auth.violation("expected the proof")),
            (_, Request::Proof(_)) => Err(auth.violation("proof without hello")),
            _ => Err(auth.violation("authenticate first (hello, proof)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(resp: crate::Response, op: crate::Opcode) -> crate::Frame {
        resp.to_frame(op as u16, 0)
    }

    #[test]
    fn client_handshake_signs_the_challenge_then_opens() {
        let mut h = ClientHandshake::new("alice");
        let hello = h.start();
        assert_eq!(hello.header.opcode, crate::Opcode::Hello as u16);
        let c = Challenge {
            session_id: 7,
            nonce: [3; 32],
        };
        let mut seen = Vec::new();
        let step = h
            .on_frame(
                &answer(crate::Response::Challenge(c), crate::Opcode::Hello),
                |t| {
                    seen = t.to_vec();
                    Ok(vec![9; 64])
                },
            )
            .unwrap();
        assert_eq!(seen, transcript("alice", 7, &[3; 32]));
        let ClientStep::Send(proof) = step else {
            panic!("expected a proof to send")
        };
        assert_eq!(proof.header.opcode, crate::Opcode::Proof as u16);
        let w = Welcome {
            session_id: 7,
            max_body: 1024,
            window: 4,
        };
        let step = h
            .on_frame(
                &answer(crate::Response::Welcome(w.clone()), crate::Opcode::Proof),
                |_| Err("not asked".into()),
            )
            .unwrap();
        assert!(matches!(step, ClientStep::Done(got) if got == w));
    }

    #[test]
    fn client_handshake_reports_refusals_and_surprises() {
        let mut h = ClientHandshake::new("bob");
        h.start();
        let refusal = crate::message::error_frame(
            crate::Opcode::Hello as u16,
            0,
            &crate::ErrorBody::new(crate::Status::AuthFailed, "no"),
        );
        let e = h.on_frame(&refusal, |_| Ok(vec![])).unwrap_err();
        assert!(matches!(e, HandshakeError::Refused(b) if b.message == "no"));
        // A proof request without a key to sign with.
        let mut h = ClientHandshake::new("bob");
        h.start();
        let c = crate::Response::Challenge(Challenge {
            session_id: 1,
            nonce: [0; 32],
        });
        let e = h
            .on_frame(&answer(c, crate::Opcode::Hello), |_| Err("no key".into()))
            .unwrap_err();
        assert_eq!(e, HandshakeError::NoProof("no key".into()));
        // Anything but a challenge or welcome.
        let mut h = ClientHandshake::new("bob");
        h.start();
        let e = h
            .on_frame(&answer(crate::Response::Done, crate::Opcode::Ping), |_| {
                Ok(vec![])
            })
            .unwrap_err();
        assert!(matches!(e, HandshakeError::Unexpected(_)));
    }

    /// Accepts "alice" with the signature [1; 64]; "cert" opens at hello.
    struct Toy;

    impl Authenticate for Toy {
        type Pending = String;
        type Client = String;
        type Error = String;
        fn hello(&self, h: Hello, sid: u64) -> Result<HelloOutcome<String, String>, String> {
            Ok(match h.client.as_str() {
                "cert" => HelloOutcome::Open("cert".into()),
                _ => HelloOutcome::Challenge(
                    h.client,
                    Challenge {
                        session_id: sid,
                        nonce: [0; 32],
                    },
                ),
            })
        }
        fn proof(&self, who: &String, sig: &[u8]) -> Result<String, String> {
            (who == "alice" && sig == [1; 64])
                .then(|| who.clone())
                .ok_or_else(|| "auth failed".into())
        }
        fn violation(&self, m: &'static str) -> String {
            m.into()
        }
    }

    fn hello_req(name: &str) -> crate::Request {
        crate::Request::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            client: name.into(),
        })
    }

    fn proof_req(sig: Vec<u8>) -> crate::Request {
        crate::Request::Proof(Proof { signature: sig })
    }

    #[test]
    fn the_server_machine_sequences_hello_and_proof() {
        let mut hs = ServerHandshake::new(5);
        let Ok(ServerStep::Challenge(c)) = hs.on_request(&Toy, hello_req("alice")) else {
            panic!("expected a challenge")
        };
        assert_eq!(c.session_id, 5);
        assert!(!hs.is_open());
        assert!(
            matches!(hs.on_request(&Toy, proof_req(vec![1; 64])), Ok(ServerStep::Open(c)) if c == "alice")
        );
        assert!(hs.is_open());
        assert_eq!(
            hs.on_request(&Toy, hello_req("alice")).unwrap_err(),
            "already authenticated"
        );
        // A credential that proves the name opens at hello.
        let mut hs = ServerHandshake::<String>::new(6);
        assert!(matches!(
            hs.on_request(&Toy, hello_req("cert")),
            Ok(ServerStep::Open(_))
        ));
        // Out of order, and a bad proof.
        for (reqs, want) in [
            (
                vec![crate::Request::Ping],
                "authenticate first (hello, proof)",
            ),
            (vec![proof_req(vec![1; 64])], "proof without hello"),
            (
                vec![hello_req("alice"), crate::Request::Ping],
                "expected the proof",
            ),
            (
                vec![hello_req("alice"), proof_req(vec![2; 64])],
                "auth failed",
            ),
        ] {
            let mut hs = ServerHandshake::new(7);
            let n = reqs.len();
            let mut last = Ok(ServerStep::Challenge(Challenge {
                session_id: 0,
                nonce: [0; 32],
            }));
            for r in reqs {
                last = hs.on_request(&Toy, r);
            }
            assert_eq!(last.unwrap_err(), want, "after {n} requests");
            assert!(!hs.is_open());
        }
    }

    #[test]
    fn transcript_binds_every_field() {
        let n = [1u8; 32];
        let base = transcript("alice", 5, &n);
        assert_ne!(base, transcript("bob", 5, &n));
        assert_ne!(base, transcript("alice", 6, &n));
        assert_ne!(base, transcript("alice", 5, &[2u8; 32]));
        assert_eq!(base, transcript("alice", 5, &n));
    }
}
