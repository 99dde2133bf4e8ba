//! A byte blob of a wire body (`#[serde(with = "crate::model::bytes")]`):
//! written with `serialize_bytes` and read back with `deserialize_byte_buf`,
//! so that postcard copies it in one piece instead of one `u8` at a time
//! (a stream's 32 KiB chunk was 32,768 calls each way). Postcard writes a
//! byte string exactly as it writes a `Vec<u8>` (a varint length, then the
//! bytes), so the wire is unchanged (the test vectors prove it); a format
//! with no byte strings (JSON) reads and writes an array of numbers, as
//! before.

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // What a format without byte strings gives; the hint is the
        // input's, so it is capped (as serde's own `Vec` visitor caps it).
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
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
    struct Blob {
        #[serde(with = "super")]
        data: Vec<u8>,
        after: u8,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Seq {
        data: Vec<u8>,
        after: u8,
    }

    #[test]
    fn postcard_writes_a_blob_as_it_writes_a_vec_of_u8_and_json_as_numbers() {
        for len in [0usize, 1, 127, 128, 300, 32 * 1024] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let blob = Blob {
                data: data.clone(),
                after: 9,
            };
            let seq = Seq { data, after: 9 };
            let bytes = postcard::to_stdvec(&blob).expect("encodes");
            assert_eq!(bytes, postcard::to_stdvec(&seq).expect("encodes"), "{len}");
            assert_eq!(postcard::from_bytes::<Blob>(&bytes), Ok(blob));
        }
        let json = serde_json::to_string(&Blob {
            data: vec![1, 2, 255],
            after: 0,
        })
        .expect("json");
        assert_eq!(json, r#"{"data":[1,2,255],"after":0}"#);
        assert_eq!(
            serde_json::from_str::<Blob>(&json).expect("reads"),
            Blob {
                data: vec![1, 2, 255],
                after: 0
            }
        );
        assert!(
            postcard::from_bytes::<Blob>(&[5, 1, 2]).is_err(),
            "truncated"
        );
    }
}
