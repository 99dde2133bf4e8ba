//! `#[serde(with = "crate::wire::bytes")]` on a `Vec<u8>` field: encoded as
//! a byte string instead of a sequence of `u8`s. In postcard both are the
//! same bytes (a varint length, then the bytes), so nothing stored or sent
//! changes; but a sequence is written and read one byte per call, which on
//! the data path (1-KB payloads, 64-KB sealed batches, at opt-level "z")
//! took a tenth of the agent's time and a third of the sink's. Formats
//! without byte strings (JSON) still see an array of numbers.

use serde::{Deserializer, Serializer, de};

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// What formats without byte strings give (a JSON array of numbers).
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSeq {
        a: Vec<u8>,
        n: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "super")]
        a: Vec<u8>,
        n: u32,
    }

    #[test]
    fn postcard_bytes_are_the_same_either_way_and_json_keeps_its_arrays() {
        for len in [0usize, 1, 127, 128, 1500, 70_000] {
            let a: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let seq = postcard::to_stdvec(&AsSeq { a: a.clone(), n: 9 }).expect("encode");
            let bytes = postcard::to_stdvec(&AsBytes { a: a.clone(), n: 9 }).expect("encode");
            assert_eq!(seq, bytes, "{len} bytes");
            let back: AsBytes = postcard::from_bytes(&seq).expect("decode");
            assert_eq!(back, AsBytes { a, n: 9 });
        }
        let json = serde_json::to_string(&AsBytes {
            a: vec![1, 2],
            n: 3,
        })
        .expect("json");
        assert_eq!(json, r#"{"a":[1,2],"n":3}"#);
        let back: AsBytes = serde_json::from_str(&json).expect("json");
        assert_eq!(back.a, vec![1, 2]);
    }
}
