//! Frame header and the incremental decoder.
//!
//! ```text
//! offset  size  field
//!      0     4  magic       b"FHSM"
//!      4     1  version     PROTOCOL_VERSION
//!      5     1  flags       bit 0 RESPONSE, bit 1 ERROR, bits 2..7 reserved (must be 0)
//!      6     2  opcode      u16 little-endian (see `Opcode`)
//!      8     8  request_id  u64 little-endian, echoed in the response
//!     16     4  body_len    u32 little-endian, checked against the cap before allocation
//!     20     -  body        postcard-encoded message
//! ```

use thiserror::Error;

use crate::limits::PROTOCOL_VERSION;
pub use crate::opcode::Opcode;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"FHSM";
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 4;
/// Flag: this frame is a response.
pub const FLAG_RESPONSE: u8 = 0b01;
/// Flag: this response is an error; its body is an [`crate::ErrorBody`].
pub const FLAG_ERROR: u8 = 0b10;
const FLAGS_KNOWN: u8 = FLAG_RESPONSE | FLAG_ERROR;

/// A decoded frame header. The opcode stays numeric here so that an unknown opcode can still be
/// answered with an error frame carrying the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flag bits (only known bits are ever set in a decoded header).
    pub flags: u8,
    /// Raw opcode.
    pub opcode: u16,
    /// Request id chosen by the client, echoed by the server.
    pub request_id: u64,
    /// Body length in bytes.
    pub body_len: u32,
}

impl Header {
    /// Whether the RESPONSE flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether the ERROR flag is set.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Writes the 20 header bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(PROTOCOL_VERSION);
        out.push(self.flags);
        out.extend_from_slice(&self.opcode.to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
    }

    /// Parses and checks exactly [`HEADER_LEN`] bytes.
    pub fn parse(b: &[u8; HEADER_LEN], max_body: u32) -> Result<Header, FrameError> {
        let (magic, rest) = b.split_at(4);
        if magic != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let (version, flags) = (rest[0], rest[1]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        let opcode = u16::from_le_bytes([b[6], b[7]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        let body_len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        if body_len > max_body {
            return Err(FrameError::BodyTooLarge {
                len: body_len,
                max: max_body,
            });
        }
        Ok(Header {
            flags,
            opcode,
            request_id: u64::from_le_bytes(id),
            body_len,
        })
    }
}

/// One whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; `body_len` equals `body.len()`.
    pub header: Header,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Frame {
    /// Builds a frame around a body. Panics only if the body exceeds `u32::MAX` bytes, which no
    /// caller can produce under any configured cap.
    pub fn new(flags: u8, opcode: u16, request_id: u64, body: Vec<u8>) -> Frame {
        // Invariant: bodies are built from messages bounded by the body cap (<= u32::MAX).
        let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        Frame {
            header: Header {
                flags,
                opcode,
                request_id,
                body_len,
            },
            body,
        }
    }

    /// Appends a whole frame to `out` with the body written in place by `body` (no body buffer
    /// of its own, no copy): the header's length is filled in afterwards.
    pub fn encode_with(
        flags: u8,
        opcode: u16,
        request_id: u64,
        out: &mut Vec<u8>,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = out.len();
        Header {
            flags,
            opcode,
            request_id,
            body_len: 0,
        }
        .encode(out);
        body(out);
        let len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
        out[start + 16..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the frame's wire bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        out.extend_from_slice(&self.body);
    }
}

/// Result of one decode attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet; at least this many more bytes are needed.
    Incomplete(usize),
    /// A whole frame and the number of input bytes it used.
    Frame(Frame, usize),
}

/// Why bytes are not a valid frame. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The magic number is wrong (not a FerroHSM peer, or a lost frame boundary).
    #[error("bad frame magic")]
    BadMagic,
    /// The version byte is not ours.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Reserved flag bits were set.
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// The announced body is larger than the cap.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Announced length.
        len: u32,
        /// Configured cap.
        max: u32,
    },
}

impl FrameError {
    /// The wire status for this error.
    pub fn status(&self) -> crate::status::Status {
        match self {
            FrameError::BadMagic | FrameError::ReservedFlags(_) => {
                crate::status::Status::MalformedFrame
            }
            FrameError::UnsupportedVersion(_) => crate::status::Status::UnsupportedVersion,
            FrameError::BodyTooLarge { .. } => crate::status::Status::BodyTooLarge,
        }
    }
}

/// Incremental frame decoder: feed it the bytes buffered so far.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_body: u32,
}

impl FrameDecoder {
    /// A decoder that refuses bodies larger than `max_body` bytes.
    pub fn new(max_body: u32) -> FrameDecoder {
        FrameDecoder { max_body }
    }

    /// The configured cap.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Decodes the first frame in `buf`. Step one checks whether the header is buffered and
    /// valid (so an oversize length is refused before anything is allocated); step two checks
    /// whether the whole body is buffered and only then copies it out.
    pub fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        Ok(match self.peek(buf)? {
            Err(need) => Decoded::Incomplete(need),
            Ok((header, total)) => {
                let body = buf[HEADER_LEN..total].to_vec();
                Decoded::Frame(Frame { header, body }, total)
            }
        })
    }

    /// The first frame's header and total length when it is whole in `buf`, else how many
    /// more bytes it needs (`Err`); nothing is copied.
    fn peek(&self, buf: &[u8]) -> Result<Result<(Header, usize), usize>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            // Reject garbage as early as possible: a wrong magic prefix is visible before the
            // whole header arrives.
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                return Err(FrameError::BadMagic);
            }
            return Ok(Err(HEADER_LEN - buf.len()));
        };
        let header = Header::parse(head, self.max_body)?;
        let total = HEADER_LEN + header.body_len as usize;
        if buf.len() < total {
            return Ok(Err(total - buf.len()));
        }
        Ok(Ok((header, total)))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(crate::limits::DEFAULT_MAX_BODY)
    }
}

/// Reads frames from a byte stream without doing I/O (one frame reader for the server's
/// sessions, the client library, `hsm-stress` and the tests): the transport appends what it
/// read to [`FrameReader::buffer`], and [`FrameReader::next_frame`] takes whole frames out.
///
/// Consumed bytes are wiped when the buffer is compacted, so a plaintext or key that passed
/// through does not linger in the reused buffer.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// A reader refusing bodies over `max_body` bytes.
    pub fn new(max_body: u32) -> FrameReader {
        FrameReader::with_bytes(max_body, Vec::with_capacity(4096))
    }

    /// A reader that starts with bytes already read (for example after a handshake).
    pub fn with_bytes(max_body: u32, buf: Vec<u8>) -> FrameReader {
        FrameReader {
            buf,
            start: 0,
            decoder: FrameDecoder::new(max_body),
        }
    }

    /// Changes the body cap (after the welcome announced the session's).
    pub fn set_max_body(&mut self, max_body: u32) {
        self.decoder = FrameDecoder::new(max_body);
    }

    /// The next whole frame, `None` when more bytes are needed first.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.next_with(|header, body| Frame {
            header: *header,
            body: body.to_vec(),
        })
    }

    /// Like [`FrameReader::next_frame`], but hands the header and the body, still in the
    /// buffer, to `f`, so a message decodes straight from the bytes read (one copy fewer).
    pub fn next_with<T>(
        &mut self,
        f: impl FnOnce(&Header, &[u8]) -> T,
    ) -> Result<Option<T>, FrameError> {
        match self.decoder.peek(&self.buf[self.start..])? {
            Ok((header, total)) => {
                let at = self.start;
                let out = f(&header, &self.buf[at + HEADER_LEN..at + total]);
                self.start += total;
                if self.start == self.buf.len() {
                    self.compact();
                }
                Ok(Some(out))
            }
            Err(need) => {
                self.compact();
                // Room grows with the bytes that actually arrive (the Vec doubles), never
                // ahead of them: a header announcing a large body costs nothing until it comes.
                self.buf.reserve(need.clamp(4096, 64 * 1024));
                Ok(None)
            }
        }
    }

    /// Whether another whole frame is already buffered (no copy, no error: a bad header
    /// shows at the next [`FrameReader::next_frame`]).
    pub fn frame_ready(&self) -> bool {
        let rest = &self.buf[self.start..];
        rest.first_chunk::<HEADER_LEN>()
            .and_then(|h| Header::parse(h, self.decoder.max_body()).ok())
            .is_some_and(|h| rest.len() >= HEADER_LEN + h.body_len as usize)
    }

    /// The header of the next frame, once its bytes are buffered (whole frame or not); `None`
    /// before that, or when the header is bad (which [`FrameReader::next_with`] reports).
    pub fn peek_header(&self) -> Option<Header> {
        self.buf[self.start..]
            .first_chunk::<HEADER_LEN>()
            .and_then(|h| Header::parse(h, self.decoder.max_body()).ok())
    }

    /// Gives back the room of a buffer grown for a large frame once it is drained, so an idle
    /// session holds a few KiB, not its largest frame.
    pub fn shrink(&mut self) {
        if self.start == self.buf.len() && self.buf.capacity() > 64 * 1024 {
            self.compact();
            self.buf = Vec::with_capacity(4096);
        }
    }

    /// Where the transport appends the bytes it reads (`read_buf`, `extend_from_slice`).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The bytes read but not yet taken as frames.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.compact();
        std::mem::take(&mut self.buf)
    }

    /// Moves the unconsumed bytes to the front and wipes what they leave behind.
    fn compact(&mut self) {
        use zeroize::Zeroize as _;
        if self.start == 0 {
            return;
        }
        let (len, rest) = (self.buf.len(), self.buf.len() - self.start);
        self.buf.copy_within(self.start.., 0);
        self.buf[rest..len].zeroize();
        self.buf.truncate(rest);
        self.start = 0;
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(flags: u8, opcode: u16, id: u64, body: Vec<u8>) -> Frame {
        Frame::new(flags, opcode, id, body)
    }

    proptest! {
        #[test]
        fn round_trip_any_split(flags in 0u8..4, opcode: u16, id: u64,
                                body in proptest::collection::vec(any::<u8>(), 0..300),
                                split in 0usize..400) {
            let f = frame(flags, opcode, id, body);
            let bytes = f.encode();
            let dec = FrameDecoder::new(1024);
            let cut = split.min(bytes.len());
            if cut < bytes.len() {
                match dec.decode(&bytes[..cut]).unwrap() {
                    Decoded::Incomplete(n) => prop_assert!(n >= 1 && n <= bytes.len() - cut),
                    other => prop_assert!(false, "expected incomplete, got {other:?}"),
                }
            }
            prop_assert_eq!(dec.decode(&bytes).unwrap(), Decoded::Frame(f, bytes.len()));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FrameDecoder::new(16).decode(&bytes);
        }
    }

    #[test]
    fn two_frames_back_to_back() {
        let a = frame(0, 16, 1, vec![]);
        let b = frame(0, 17, 2, vec![1, 2, 3]);
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let dec = FrameDecoder::default();
        let Decoded::Frame(fa, n) = dec.decode(&bytes).unwrap() else {
            panic!("first frame")
        };
        assert_eq!(fa, a);
        assert_eq!(
            dec.decode(&bytes[n..]).unwrap(),
            Decoded::Frame(b, bytes.len() - n)
        );
    }

    #[test]
    fn the_reader_takes_frames_across_any_split_and_keeps_only_the_rest() {
        let frames: Vec<Frame> = (0..20u64)
            .map(|i| frame(0, 16, i, vec![0xa5; (i as usize * 37) % 300]))
            .collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        for chunk in [1usize, 7, 64, 1000, wire.len()] {
            let mut r = FrameReader::new(1024);
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                r.buffer().extend_from_slice(part);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "chunk {chunk}");
            assert!(r.buffer().is_empty(), "chunk {chunk}: bytes left over");
            assert!(!r.frame_ready());
        }
        // After a partial frame, the buffer holds exactly the bytes not yet taken (compacted
        // to the front; what moved is wiped, which safe code cannot observe).
        let mut r = FrameReader::new(1024);
        let cut = frames[0].encode().len() + 5;
        r.buffer().extend_from_slice(&wire[..cut]);
        assert!(r.frame_ready());
        assert_eq!(r.next_frame().unwrap(), Some(frames[0].clone()));
        assert!(!r.frame_ready());
        assert_eq!(r.next_frame().unwrap(), None);
        assert_eq!(r.buffer().as_slice(), &wire[cut - 5..cut]);
        assert_eq!(r.into_bytes(), wire[cut - 5..cut].to_vec());
        // A malformed frame is an error, not a hang.
        let mut r = FrameReader::new(1024);
        r.buffer()
            .extend_from_slice(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXX");
        assert_eq!(r.next_frame(), Err(FrameError::BadMagic));
    }

    #[test]
    fn bad_magic_version_flags_and_oversize() {
        let good = frame(0, 16, 9, vec![0; 8]).encode();
        let dec = FrameDecoder::new(8);
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(dec.decode(&b), Err(FrameError::BadMagic));
        assert_eq!(dec.decode(b"GET / HTTP/1.1"), Err(FrameError::BadMagic));
        let mut b = good.clone();
        b[4] = 99;
        assert_eq!(dec.decode(&b), Err(FrameError::UnsupportedVersion(99)));
        let mut b = good.clone();
        b[5] = 0x80;
        assert_eq!(dec.decode(&b), Err(FrameError::ReservedFlags(0x80)));
        // Oversize is refused from the header alone, before the body arrives.
        let big = frame(0, 16, 9, vec![0; 9]).encode();
        assert_eq!(
            dec.decode(&big[..HEADER_LEN]),
            Err(FrameError::BodyTooLarge { len: 9, max: 8 })
        );
        let mut huge = good[..HEADER_LEN].to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            dec.decode(&huge),
            Err(FrameError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_reports_missing_bytes() {
        let bytes = frame(0, 16, 9, vec![7; 10]).encode();
        let dec = FrameDecoder::default();
        assert_eq!(dec.decode(&[]).unwrap(), Decoded::Incomplete(HEADER_LEN));
        assert_eq!(
            dec.decode(&bytes[..3]).unwrap(),
            Decoded::Incomplete(HEADER_LEN - 3)
        );
        assert_eq!(
            dec.decode(&bytes[..HEADER_LEN + 4]).unwrap(),
            Decoded::Incomplete(6)
        );
    }
}
