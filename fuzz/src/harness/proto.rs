//! Harnesses over the wire format (`ferrohsm_proto`), shared by the AFL targets in `fuzz/` and
//! the regression tests in `proto/tests/fuzz_corpus.rs`, which replay every corpus entry and
//! crash reproducer. Each panics only on a real bug: a decoder that panics, accepts trailing
//! bytes, or decodes something that does not encode back to the same bytes.
#![allow(dead_code)]

use ferrohsm_proto::handshake::{
    Authenticate, Challenge, ClientHandshake, ClientStep, Hello, HelloOutcome, ServerHandshake,
};
use ferrohsm_proto::{Frame, FrameReader, Request, Response};

/// The frame decoder, fed the input in pieces whose sizes come from the input itself; every
/// whole frame is decoded as a request and as a response.
pub fn frame(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 64) + 1;
    let mut reader = FrameReader::new(64 * 1024);
    for chunk in rest.chunks(step) {
        reader.buffer().extend_from_slice(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        f.body.len() <= 64 * 1024,
                        "a frame over the cap was accepted"
                    );
                    let _ = Request::decode(f.header.opcode, &f.body);
                    let _ = Response::decode(f.header.opcode, &f.body);
                }
                Ok(None) => break,
                // A bad header is final for a connection.
                Err(_) => return,
            }
        }
    }
}

/// Every request body: the first two bytes are the opcode (little-endian), the rest the body.
/// A body that decodes must encode back to exactly the same bytes.
pub fn request(data: &[u8]) {
    let Some((op, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let opcode = u16::from_le_bytes(*op);
    if let Ok(r) = Request::decode(opcode, body) {
        let f = r.to_frame(1);
        assert_eq!(
            f.header.opcode, opcode,
            "{r:?} re-encoded under another opcode"
        );
        let again = Request::decode(opcode, &f.body).expect("a decoded request re-decodes");
        assert_eq!(again, r, "round trip changed the request");
    }
    let _ = Response::decode(opcode, body);
}

/// A server side that answers any hello with a challenge and any proof with a refusal, except
/// the one signature it expects.
struct Stub;

impl Authenticate for Stub {
    type Pending = [u8; 32];
    type Client = String;
    type Error = String;

    fn hello(
        &self,
        hello: Hello,
        session_id: u64,
    ) -> Result<HelloOutcome<[u8; 32], String>, String> {
        if hello.client.starts_with("cert-") {
            return Ok(HelloOutcome::Open(hello.client));
        }
        Ok(HelloOutcome::Challenge(
            [7; 32],
            Challenge {
                session_id,
                nonce: [7; 32],
            },
        ))
    }

    fn proof(&self, pending: &[u8; 32], signature: &[u8]) -> Result<String, String> {
        if signature == pending.as_slice() {
            Ok("proven".into())
        } else {
            Err("bad proof".into())
        }
    }

    fn violation(&self, message: &'static str) -> String {
        message.into()
    }
}

/// Both handshake state machines fed hostile frames: the server's with decoded requests (as a
/// session would), the client's with raw frames (as a hostile server would send).
pub fn handshake(data: &[u8]) {
    let mut reader = FrameReader::new(64 * 1024);
    reader.buffer().extend_from_slice(data);
    let mut server = ServerHandshake::new(42);
    let mut client = ClientHandshake::new("alice");
    let _ = client.start();
    let mut server_done = false;
    let mut client_done = false;
    while let Ok(Some(f)) = reader.next_frame() {
        if !server_done {
            match Request::decode(f.header.opcode, &f.body) {
                Ok(r) => {
                    if server.on_request(&Stub, r).is_err() {
                        // A refusal closes the connection: nothing after it is read.
                        server_done = true;
                    }
                }
                Err(_) => server_done = true,
            }
        }
        if !client_done {
            match client.on_frame(&f, |t| Ok(t.to_vec())) {
                Ok(ClientStep::Send(_)) => {}
                Ok(ClientStep::Done(_)) | Err(_) => client_done = true,
            }
        }
        let _: &Frame = &f;
    }
}
