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
pub mod route;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use keys::{DeviceKey, SinkKey, SinkPublicKey};
pub use route::{Route, RouteError, Source, parse_routes};

/// The version of the sealed batch envelope this build writes and reads.
pub const DATA_VERSION: u16 = 1;

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

/// What travels on `{prefix}/{node}/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sealed {
    header: Header,
    /// HPKE's encapsulated key (32 bytes for X25519).
    encapped_key: Vec<u8>,
    /// HPKE ciphertext of `Signed`.
    ciphertext: Vec<u8>,
}

/// The plaintext inside: the batch (postcard) and the device's signature
/// over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    batch: Vec<u8>,
    signature: Vec<u8>,
}

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

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

/// Signs `batch` with the device key and seals it to `sink`.
pub fn seal(batch: &Batch, device: &DeviceKey, sink: &SinkPublicKey) -> Result<Vec<u8>, SealError> {
    let batch_bytes = postcard::to_stdvec(batch).map_err(|e| SealError::Encode(e.to_string()))?;
    if batch_bytes.len() > MAX_BATCH_BYTES {
        return Err(SealError::TooLarge(batch_bytes.len()));
    }
    let signature = device.sign(&batch_bytes);
    let signed = postcard::to_stdvec(&Signed {
        batch: batch_bytes,
        signature,
    })
    .map_err(|e| SealError::Encode(e.to_string()))?;
    let header = Header {
        version: DATA_VERSION,
        device: batch.device.clone(),
        key_id: sink.id(),
    };
    let aad = postcard::to_stdvec(&header).map_err(|e| SealError::Encode(e.to_string()))?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &hpke::OpModeS::Base,
        sink.hpke(),
        HPKE_INFO,
        &signed,
        &aad,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    use hpke::Serializable as _;
    postcard::to_stdvec(&Sealed {
        header,
        encapped_key: encapped.to_bytes().to_vec(),
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
    if version != DATA_VERSION {
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
    use hpke::Deserializable as _;
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapped_key)
        .map_err(|e| OpenError::Malformed(format!("encapsulated key: {e}")))?;
    let aad =
        postcard::to_stdvec(&sealed.header).map_err(|e| OpenError::Malformed(e.to_string()))?;
    let plain = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &hpke::OpModeR::Base,
        sink.hpke(),
        &encapped,
        HPKE_INFO,
        &sealed.ciphertext,
        &aad,
    )
    .map_err(|_| OpenError::Decrypt)?;
    let signed: Signed =
        postcard::from_bytes(&plain).map_err(|e| OpenError::Malformed(e.to_string()))?;
    if !keys::verify(&public, &signed.batch, &signed.signature) {
        return Err(OpenError::BadSignature(sealed.header.device));
    }
    let batch: Batch =
        postcard::from_bytes(&signed.batch).map_err(|e| OpenError::Malformed(e.to_string()))?;
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
        let sealed = seal(&b, &f.device, &f.sink.public()).expect("seal");
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
        let sealed = seal(&batch("gw1"), &f.device, &f.sink.public()).expect("seal");
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
            let sealed = seal(&batch("gw1"), &f.device, &key.public()).expect("seal");
            assert!(open(&sealed, "gw1", &both, |_| Some(public.clone())).is_ok());
        }
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
