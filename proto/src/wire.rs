//! Byte strings on the wire. serde sees a `Vec<u8>` as a sequence of `u8`, which postcard
//! encodes and decodes one element at a time; these helpers use serde's `bytes` instead. The
//! encoding is the same (a varint length, then the bytes), so old and new peers agree, but
//! encoding borrows the caller's slice and both directions copy in one piece.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Serializes borrowed bytes as one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raw<'a>(pub &'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Deserializes one run of bytes (also accepts a sequence, from any self-describing format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Buf(pub Vec<u8>);

struct BufVisitor;

impl<'de> Visitor<'de> for BufVisitor {
    type Value = Buf;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
        Ok(Buf(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buf, E> {
        Ok(Buf(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
        // Never trust a length hint beyond what a frame can hold.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Buf(v))
    }
}

impl<'de> Deserialize<'de> for Buf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Buf, D::Error> {
        d.deserialize_bytes(BufVisitor)
    }
}

/// `#[serde(with = "crate::wire::bytes")]` for `Vec<u8>` fields.
pub(crate) mod bytes {
    use super::{Buf, Raw};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        Raw(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Buf::deserialize(d).map(|b| b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_encode_exactly_like_a_sequence_of_u8() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let as_seq = postcard::to_stdvec(&v).unwrap();
            let as_bytes = postcard::to_stdvec(&Raw(&v)).unwrap();
            assert_eq!(as_seq, as_bytes, "n = {n}");
            let back: Buf = postcard::from_bytes(&as_seq).unwrap();
            assert_eq!(back.0, v);
        }
    }

    #[test]
    fn a_lying_length_is_refused_not_allocated() {
        // Length 2^32 announced, 3 bytes present.
        let wire = [0x80, 0x80, 0x80, 0x80, 0x10, 1, 2, 3];
        assert_eq!(
            postcard::from_bytes::<Buf>(&wire).unwrap_err(),
            postcard::Error::DeserializeUnexpectedEnd
        );
    }
}
