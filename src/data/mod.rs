//! The data path's shared part (feature `data`): routes, the batch format,
//! and sealing. Pure, no I/O except reading and writing key files: the
//! device side is `agent::data`, the cloud side `sink`. Specified in
//! docs/wire.md, "Data path".
//!
//! A batch is signed by the device (Ed25519) and then sealed to the sink's
//! public key (HPKE, RFC 9180, base mode, X25519-HKDF-SHA256 +
//! ChaCha20-Poly1305), so the broker and anything between only ever hold
//! ciphertext; the sink opens it, verifies the signature with the device's
//! public key from its own directory, and keeps a per-device high-water mark
//! of message ids against replays.

pub mod keys;
pub mod publish;
pub mod route;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use keys::{DeviceKey, SinkKey, SinkPublicKey};
pub use route::{Route, RouteError, Source, parse_routes};

/// The version of the sealed batch envelope this build writes: 2 added
/// compression (`Compression`), signed with the batch.
pub const DATA_VERSION: u16 = 2;
/// The oldest version `open` still reads (version 1: uncompressed, the
/// signature over the batch alone).
pub const OLDEST_DATA_VERSION: u16 = 1;

/// HPKE `info`: binds every sealed batch to this protocol and version.
const HPKE_INFO: &[u8] = b"kedge data batch v1";

/// Largest batch a device builds (plaintext bytes before sealing) and the
/// sink opens: well under the agent's MQTT packet limit.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One message a workload published, as the device keeps it and the sink
/// stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    pub source: Source,
    /// The MQTT topic the workload published on.
    pub topic: String,
    /// When the agent received it (device clock, ms since the Unix epoch).
    pub device_time_ms: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A batch before sealing: consecutive messages of one device, each with
/// its id from the device's node-wide counter (increasing, so the order per
/// source is the order of ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub device: String,
    pub messages: Vec<(u64, DataMessage)>,
}

impl Batch {
    /// The highest message id in the batch (0 when empty).
    pub fn last_id(&self) -> u64 {
        self.messages.last().map_or(0, |(id, _)| *id)
    }
}

/// The clear header of a sealed batch; authenticated as HPKE's AAD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    version: u16,
    device: String,
    /// Which sink key it is sealed to (`SinkPublicKey::id`), so a sink
    /// holding an old and a new key during a rotation picks the right one.
    key_id: [u8; 8],
}

/// How the batch inside a version 2 envelope is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// The postcard batch as it is.
    None,
    /// LZ4's block format (lz4_flex), the plaintext's length first (u32,
    /// little-endian). `seal` falls back to `None` for a batch it does not
    /// make smaller.
    #[default]
    Lz4,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "lz4" => Ok(Compression::Lz4),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: expected lz4 or none"
            )),
        }
    }
}

/// What travels on `{prefix}/{node}/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sealed {
    header: Header,
    /// HPKE's encapsulated key (32 bytes for X25519).
    #[serde(with = "serde_bytes")]
    encapped_key: Vec<u8>,
    /// HPKE ciphertext of `Signed`.
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

/// The plaintext inside a version 1 envelope: the batch (postcard) and the
/// device's signature over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// The plaintext inside a version 2 envelope: the batch encoded by
/// `compression`, and the device's signature over the compression's
/// postcard byte followed by those bytes (`signed_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedV2 {
    compression: Compression,
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// What a version 2 signature covers.
fn signed_bytes(compression: Compression, batch: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() + 1);
    out.push(compression as u8);
    out.extend_from_slice(batch);
    out
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("not a sealed data batch: {0}")]
    Malformed(String),
    #[error("unsupported data batch version {0} (this build reads {DATA_VERSION})")]
    Version(u16),
    #[error("batch names device {inside:?} but came on the topic of {topic:?}")]
    WrongDevice { topic: String, inside: String },
    #[error("sealed to an unknown sink key {0}")]
    UnknownSinkKey(String),
    #[error("cannot open the batch (not sealed to this sink's key, or altered)")]
    Decrypt,
    #[error("no public key for device {0:?}")]
    UnknownDevice(String),
    #[error("signature of device {0:?} does not verify")]
    BadSignature(String),
    #[error("cannot decompress the batch of device {device:?}: {detail}")]
    Decompress { device: String, detail: String },
}

#[derive(Debug, Error)]
pub enum SealError {
    #[error("cannot encode the batch: {0}")]
    Encode(String),
    #[error("batch of {0} bytes is over the limit of {MAX_BATCH_BYTES}")]
    TooLarge(usize),
    #[error("cannot seal the batch: {0}")]
    Hpke(String),
}

/// Compresses (`compression`, unless that does not make it smaller), signs
/// `batch` with the device key and seals it to `sink`.
pub fn seal(
    batch: &Batch,
    compression: Compression,
    device: &DeviceKey,
    sink: &SinkPublicKey,
) -> Result<Vec<u8>, SealError> {
    let batch_bytes = postcard::to_stdvec(batch).map_err(|e| SealError::Encode(e.to_string()))?;
    if batch_bytes.len() > MAX_BATCH_BYTES {
        return Err(SealError::TooLarge(batch_bytes.len()));
    }
    let (compression, batch_bytes) = match compression {
        Compression::None => (Compression::None, batch_bytes),
        Compression::Lz4 => {
            let packed = lz4_flex::block::compress_prepend_size(&batch_bytes);
            if packed.len() < batch_bytes.len() {
                (Compression::Lz4, packed)
            } else {
                (Compression::None, batch_bytes)
            }
        }
    };
    let signature = device.sign(&signed_bytes(compression, &batch_bytes));
    let signed = postcard::to_stdvec(&SignedV2 {
        compression,
        batch: batch_bytes,
        signature,
    })
    .map_err(|e| SealError::Encode(e.to_string()))?;
    seal_signed(&signed, DATA_VERSION, &batch.device, sink)
}

/// Seals the signed plaintext of a `version` envelope to `sink`.
fn seal_signed(
    signed: &[u8],
    version: u16,
    device: &str,
    sink: &SinkPublicKey,
) -> Result<Vec<u8>, SealError> {
    let header = Header {
        version,
        device: device.to_string(),
        key_id: sink.id(),
    };
    let aad = postcard::to_stdvec(&header).map_err(|e| SealError::Encode(e.to_string()))?;
    let (encapped, ciphertext) = kedge_hpke::seal(sink.hpke(), HPKE_INFO, signed, &aad)
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    postcard::to_stdvec(&Sealed {
        header,
        encapped_key: encapped.to_vec(),
        ciphertext,
    })
    .map_err(|e| SealError::Encode(e.to_string()))
}

/// Opens a sealed batch that arrived on `topic_device`'s data topic:
/// decrypts it with the matching sink key, then verifies the signature with
/// the public key `device_key` gives for the device. Every refusal is an
/// error value; nothing here panics on hostile input.
pub fn open(
    payload: &[u8],
    topic_device: &str,
    sink_keys: &[SinkKey],
    device_key: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Batch, OpenError> {
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| OpenError::Malformed(e.to_string()))?;
    if !(OLDEST_DATA_VERSION..=DATA_VERSION).contains(&version) {
        return Err(OpenError::Version(version));
    }
    let sealed: Sealed =
        postcard::from_bytes(payload).map_err(|e| OpenError::Malformed(e.to_string()))?;
    if sealed.header.device != topic_device {
        return Err(OpenError::WrongDevice {
            topic: topic_device.to_string(),
            inside: sealed.header.device,
        });
    }
    let Some(public) = device_key(&sealed.header.device) else {
        return Err(OpenError::UnknownDevice(sealed.header.device));
    };
    let Some(sink) = sink_keys.iter().find(|k| k.id() == sealed.header.key_id) else {
        return Err(OpenError::UnknownSinkKey(hex::encode(sealed.header.key_id)));
    };
    let encapped = kedge_hpke::encapped_key(&sealed.encapped_key)
        .map_err(|e| OpenError::Malformed(format!("encapsulated key: {e}")))?;
    let aad =
        postcard::to_stdvec(&sealed.header).map_err(|e| OpenError::Malformed(e.to_string()))?;
    let plain = kedge_hpke::open(sink.hpke(), &encapped, HPKE_INFO, &sealed.ciphertext, &aad)
        .map_err(|_| OpenError::Decrypt)?;
    let malformed = |e: postcard::Error| OpenError::Malformed(e.to_string());
    // The signature is checked before anything is decompressed: only a
    // device's own bytes reach the decompressor, and it is bounded.
    let batch_bytes = if version == 1 {
        let signed: Signed = postcard::from_bytes(&plain).map_err(malformed)?;
        if !keys::verify(&public, &signed.batch, &signed.signature) {
            return Err(OpenError::BadSignature(sealed.header.device));
        }
        signed.batch
    } else {
        let signed: SignedV2 = postcard::from_bytes(&plain).map_err(malformed)?;
        let covered = signed_bytes(signed.compression, &signed.batch);
        if !keys::verify(&public, &covered, &signed.signature) {
            return Err(OpenError::BadSignature(sealed.header.device));
        }
        match signed.compression {
            Compression::None => signed.batch,
            Compression::Lz4 => {
                decompress(&signed.batch).map_err(|detail| OpenError::Decompress {
                    device: sealed.header.device.clone(),
                    detail,
                })?
            }
        }
    };
    let batch: Batch = postcard::from_bytes(&batch_bytes).map_err(malformed)?;
    // Signed by the device named in the clear header, so the inside must
    // name it too.
    if batch.device != sealed.header.device {
        return Err(OpenError::WrongDevice {
            topic: sealed.header.device,
            inside: batch.device,
        });
    }
    Ok(batch)
}

/// An LZ4 block with its length first, at most `MAX_BATCH_BYTES` once
/// decompressed (checked before anything is allocated).
fn decompress(packed: &[u8]) -> Result<Vec<u8>, String> {
    let Some((len, block)) = packed.split_first_chunk::<4>() else {
        return Err("shorter than its length".into());
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_BATCH_BYTES {
        return Err(format!(
            "claims {len} bytes, over the limit of {MAX_BATCH_BYTES}"
        ));
    }
    let out = lz4_flex::block::decompress(block, len).map_err(|e| e.to_string())?;
    if out.len() != len {
        return Err(format!("{} bytes, not the {len} it claims", out.len()));
    }
    Ok(out)
}

/// The device a data topic belongs to: `{prefix}/{node}/data`.
pub fn device_of_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let node = rest.strip_suffix("/data")?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(device: &str) -> Batch {
        Batch {
            device: device.into(),
            messages: vec![(
                7,
                DataMessage {
                    source: Source {
                        namespace: "default".into(),
                        pod: "sensor".into(),
                        container: "main".into(),
                    },
                    topic: "sensors/t1".into(),
                    device_time_ms: 1_700_000_000_000,
                    payload: b"{\"t\":21.5}".to_vec(),
                },
            )],
        }
    }

    struct Fixture {
        device: DeviceKey,
        sink: SinkKey,
    }

    fn fixture() -> Fixture {
        Fixture {
            device: DeviceKey::generate().expect("device key"),
            sink: SinkKey::generate().expect("sink key"),
        }
    }

    #[test]
    fn a_sealed_batch_opens_with_the_sink_key_and_the_device_key() {
        let f = fixture();
        let b = batch("gw1");
        let sealed = seal(&b, Compression::Lz4, &f.device, &f.sink.public()).expect("seal");
        // No plaintext byte of the payload or topic in what travels.
        let hay = String::from_utf8_lossy(&sealed);
        assert!(!hay.contains("21.5") && !hay.contains("sensors/t1"));
        let public = f.device.public_key().to_vec();
        let opened = open(&sealed, "gw1", std::slice::from_ref(&f.sink), |d| {
            (d == "gw1").then(|| public.clone())
        })
        .expect("open");
        assert_eq!(opened, b);
        assert_eq!(opened.last_id(), 7);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let f = fixture();
        let other_device = DeviceKey::generate().expect("key");
        let sealed = seal(
            &batch("gw1"),
            Compression::None,
            &f.device,
            &f.sink.public(),
        )
        .expect("seal");
        let sinks = std::slice::from_ref(&f.sink);
        let public = f.device.public_key().to_vec();
        // Unknown device.
        assert_eq!(
            open(&sealed, "gw1", sinks, |_| None),
            Err(OpenError::UnknownDevice("gw1".into()))
        );
        // Signed by someone else's key.
        let wrong = other_device.public_key().to_vec();
        assert_eq!(
            open(&sealed, "gw1", sinks, |_| Some(wrong.clone())),
            Err(OpenError::BadSignature("gw1".into()))
        );
        // Replayed on another device's topic.
        assert!(matches!(
            open(&sealed, "gw2", sinks, |_| Some(public.clone())),
            Err(OpenError::WrongDevice { .. })
        ));
        // Sealed to another sink.
        let other_sink = SinkKey::generate().expect("key");
        assert!(matches!(
            open(&sealed, "gw1", std::slice::from_ref(&other_sink), |_| Some(
                public.clone()
            )),
            Err(OpenError::UnknownSinkKey(_))
        ));
        // A flipped ciphertext byte.
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            open(&altered, "gw1", sinks, |_| Some(public.clone())),
            Err(OpenError::Decrypt)
        );
        // Garbage and other versions never panic.
        assert!(open(b"", "gw1", sinks, |_| None).is_err());
        assert_eq!(
            open(&[9], "gw1", sinks, |_| None),
            Err(OpenError::Version(9))
        );
    }

    #[test]
    fn a_rotated_sink_opens_batches_sealed_to_either_key() {
        let f = fixture();
        let new = SinkKey::generate().expect("key");
        let public = f.device.public_key().to_vec();
        let both = [new.clone(), f.sink.clone()];
        for key in [&f.sink, &new] {
            let sealed =
                seal(&batch("gw1"), Compression::Lz4, &f.device, &key.public()).expect("seal");
            assert!(open(&sealed, "gw1", &both, |_| Some(public.clone())).is_ok());
        }
    }

    /// A batch of similar messages: what compression is for.
    fn telemetry(device: &str, n: u64) -> Batch {
        let mut b = batch(device);
        let (_, m) = b.messages[0].clone();
        b.messages = (0..n)
            .map(|i| {
                let mut m = m.clone();
                m.payload = format!("{{\"sensor\":\"t1\",\"n\":{i},\"celsius\":21.{}}}", i % 10)
                    .into_bytes();
                (i + 1, m)
            })
            .collect();
        b
    }

    #[test]
    fn compression_shrinks_a_batch_and_opens_to_the_same_messages() {
        let f = fixture();
        let public = f.device.public_key().to_vec();
        let b = telemetry("gw1", 200);
        let plain = seal(&b, Compression::None, &f.device, &f.sink.public()).expect("seal");
        let packed = seal(&b, Compression::Lz4, &f.device, &f.sink.public()).expect("seal");
        assert!(
            packed.len() * 2 < plain.len(),
            "lz4 {} bytes, none {} bytes",
            packed.len(),
            plain.len()
        );
        for sealed in [&plain, &packed] {
            let opened = open(sealed, "gw1", std::slice::from_ref(&f.sink), |_| {
                Some(public.clone())
            })
            .expect("open");
            assert_eq!(opened, b);
        }
        // One short message does not get smaller: sent as it is.
        let one = seal(&batch("gw1"), Compression::Lz4, &f.device, &f.sink.public()).expect("seal");
        let none = seal(
            &batch("gw1"),
            Compression::None,
            &f.device,
            &f.sink.public(),
        )
        .expect("seal");
        assert_eq!(one.len(), none.len());
        assert_eq!("lz4".parse(), Ok(Compression::Lz4));
        assert_eq!("none".parse(), Ok(Compression::None));
        assert!("zstd".parse::<Compression>().is_err());
    }

    /// A version 1 envelope (a device of the previous release) still opens.
    #[test]
    fn version_1_batches_still_open() {
        let f = fixture();
        let public = f.device.public_key().to_vec();
        let b = batch("gw1");
        let bytes = postcard::to_stdvec(&b).expect("encode");
        let signed = postcard::to_stdvec(&Signed {
            signature: f.device.sign(&bytes),
            batch: bytes,
        })
        .expect("encode");
        let sealed = seal_signed(&signed, 1, "gw1", &f.sink.public()).expect("seal");
        let opened = open(&sealed, "gw1", std::slice::from_ref(&f.sink), |_| {
            Some(public.clone())
        })
        .expect("open");
        assert_eq!(opened, b);
    }

    /// What is signed is what is opened: the compression byte is covered,
    /// and a signed block that lies about its length is refused before a
    /// byte is allocated for it.
    #[test]
    fn the_compression_is_signed_and_a_bomb_is_refused() {
        let f = fixture();
        let public = f.device.public_key().to_vec();
        let sinks = std::slice::from_ref(&f.sink);
        let key = |_: &str| Some(public.clone());
        let seal_v2 = |compression: Compression, body: Vec<u8>, signed_as: Compression| {
            let signed = postcard::to_stdvec(&SignedV2 {
                compression,
                signature: f.device.sign(&signed_bytes(signed_as, &body)),
                batch: body,
            })
            .expect("encode");
            seal_signed(&signed, 2, "gw1", &f.sink.public()).expect("seal")
        };
        let raw = postcard::to_stdvec(&batch("gw1")).expect("encode");
        // Signed as uncompressed, relabelled as LZ4.
        assert_eq!(
            open(
                &seal_v2(Compression::Lz4, raw.clone(), Compression::None),
                "gw1",
                sinks,
                key
            ),
            Err(OpenError::BadSignature("gw1".into()))
        );
        // A block claiming 4 GiB.
        let mut bomb = u32::MAX.to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0x1f, 0, 1, 0]);
        assert!(matches!(
            open(&seal_v2(Compression::Lz4, bomb, Compression::Lz4), "gw1", sinks, key),
            Err(OpenError::Decompress { detail, .. }) if detail.contains("over the limit")
        ));
        // Garbage after an honest length.
        let mut junk = 100u32.to_le_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 8]);
        assert!(matches!(
            open(
                &seal_v2(Compression::Lz4, junk, Compression::Lz4),
                "gw1",
                sinks,
                key
            ),
            Err(OpenError::Decompress { .. })
        ));
    }

    #[test]
    fn device_of_topic_takes_one_level() {
        assert_eq!(
            device_of_topic("kedge/v1", "kedge/v1/gw1/data"),
            Some("gw1")
        );
        assert_eq!(device_of_topic("kedge/v1", "kedge/v1/a/b/data"), None);
        assert_eq!(device_of_topic("kedge/v1", "kedge/v1//data"), None);
        assert_eq!(device_of_topic("kedge/v1", "other/gw1/data"), None);
    }
}
