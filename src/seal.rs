//! Sealing to an X25519 public key with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, through the
//! `hpke` crate), and the key pairs it needs: the device's sealing key
//! (made on first start, the private half only in a 0600 file on the
//! device) and the sink's (`kedge sink keygen`).
//!
//! What is sealed here: a desired `PodSpec` that carries Secret values
//! ([`seal_pod`] / [`open_pod`], wire kind `SealedPod`), so that the
//! broker, its persistence file and any subscriber hold only ciphertext.
//! The data path's batches use the same keys (`data`).
//!
//! A sealed spec is bound to its topic and uid (HPKE's associated data):
//! moved to another pod or node it does not open. Its `key_id` names the
//! key it was sealed to, so a device that was re-keyed says so instead of
//! "cannot decrypt".
//!
//! Invariant: nothing here logs or prints key material or plaintext.

use std::io::Write as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::model::{PodSpec, SealedPod};
use crate::wire::{self, WireError};

/// HPKE's `info` for sealed pod specs (domain separation from the data
/// path's batches).
const POD_INFO: &[u8] = b"kedge-sealed-pod-v1";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write key file {path}: {message}")]
    Write { path: String, message: String },
    #[error("invalid key in {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("no randomness from the system")]
    Random,
}

#[derive(Debug, Error, PartialEq)]
pub enum SealError {
    #[error(
        "the spec is sealed to key {sealed_to}, not to this device's key {ours} (was the device re-keyed? the sender seals again to the key in its node status)"
    )]
    OtherKey { sealed_to: String, ours: String },
    #[error("cannot open the sealed spec: it was altered, or moved from another pod's topic")]
    Open,
    #[error("the sealed spec's {what} differs from what its envelope shows in clear")]
    Mismatch { what: &'static str },
    #[error("cannot seal: {0}")]
    Seal(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Parses 32 bytes of hex (surrounding whitespace allowed).
pub fn parse_hex32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|e| KeyError::Invalid {
        what: what.to_string(),
        message: format!("expected 64 hex characters: {e}"),
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError::Invalid {
        what: what.to_string(),
        message: format!("expected 32 bytes, found {}", b.len()),
    })
}

/// The first 8 bytes of the SHA-256 of a public key: names the key a
/// payload is sealed to, so a holder of several (a rotation) picks the
/// right one and a re-keyed device can say so.
pub fn key_id(public: &[u8; 32]) -> [u8; 8] {
    let digest = Sha256::digest(public);
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// A public key to seal to.
#[derive(Clone)]
pub struct PublicKey {
    key: kedge_hpke::PublicKey,
    bytes: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32], what: &str) -> Result<PublicKey, KeyError> {
        let key = kedge_hpke::public_key(bytes).map_err(|e| KeyError::Invalid {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        Ok(PublicKey {
            key,
            bytes: *bytes,
            id: key_id(bytes),
        })
    }

    /// 32 bytes in hex, as configuration and `kubectl get node -o yaml`
    /// show it.
    pub fn parse(hex_text: &str, what: &str) -> Result<PublicKey, KeyError> {
        Self::from_bytes(&parse_hex32(hex_text, what)?, what)
    }

    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    pub(crate) fn hpke(&self) -> &kedge_hpke::PublicKey {
        &self.key
    }
}

/// A private key and its public key, derived from a 32-byte seed (RFC
/// 9180's DeriveKeyPair) that is all the key file holds, in hex.
#[derive(Clone)]
pub struct KeyPair {
    private: kedge_hpke::PrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The key pair a 32-byte seed derives (what a key file holds).
    pub fn from_seed(seed: &[u8; 32]) -> KeyPair {
        let (private, public) = kedge_hpke::derive_key_pair(seed);
        let bytes = kedge_hpke::public_key_bytes(&public);
        KeyPair {
            private,
            public: PublicKey {
                key: public,
                bytes,
                id: key_id(&bytes),
            },
        }
    }

    fn random_seed() -> Result<[u8; 32], KeyError> {
        let mut seed = [0; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| KeyError::Random)?;
        Ok(seed)
    }

    pub fn generate() -> Result<KeyPair, KeyError> {
        Ok(Self::from_seed(&Self::random_seed()?))
    }

    /// Makes a new key file (mode 0600, refused if it exists) and returns
    /// the key.
    pub fn create_file(path: &Path) -> Result<KeyPair, KeyError> {
        let seed = Self::random_seed()?;
        write_private(path, &seed, false)?;
        Ok(Self::from_seed(&seed))
    }

    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(Self::from_seed(&parse_hex32(&text, &shown)?))
    }

    /// Reads `path`, or makes a new key there (the device's first start):
    /// mode 0600, written to a temporary file, synced and renamed, so a
    /// crash never leaves half a key.
    pub fn load_or_create(path: &Path) -> Result<KeyPair, KeyError> {
        match Self::load(path) {
            Err(KeyError::Read { .. }) if !path.exists() => {
                let seed = Self::random_seed()?;
                write_private(path, &seed, true)?;
                Ok(Self::from_seed(&seed))
            }
            other => other,
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public.clone()
    }

    pub fn id(&self) -> [u8; 8] {
        self.public.id
    }

    pub(crate) fn hpke(&self) -> &kedge_hpke::PrivateKey {
        &self.private
    }
}

/// Writes a seed in hex with mode 0600: straight to `path` when it must
/// not exist yet, else through a temporary file renamed over it.
fn write_private(path: &Path, seed: &[u8; 32], replace: bool) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: std::io::Error| KeyError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let target = if replace {
        path.with_extension(format!("tmp{}", std::process::id()))
    } else {
        path.to_path_buf()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(err)?;
    file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    if replace {
        std::fs::rename(&target, path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// HPKE's associated data for a sealed spec: its topic and uid.
fn pod_aad(topic: &str, uid: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(topic.len() + uid.len() + 1);
    aad.extend_from_slice(topic.as_bytes());
    aad.push(0);
    aad.extend_from_slice(uid.as_bytes());
    aad
}

/// Seals `spec` (its body in this wire version) to `to`, for `topic`.
pub fn seal_pod(to: &PublicKey, topic: &str, spec: &PodSpec) -> Result<SealedPod, SealError> {
    let plain = wire::pod_spec_body(spec)?;
    let (encapped_key, ciphertext) =
        kedge_hpke::seal(to.hpke(), POD_INFO, &plain, &pod_aad(topic, &spec.uid))
            .map_err(|e| SealError::Seal(e.to_string()))?;
    Ok(SealedPod {
        uid: spec.uid.clone(),
        labels: spec.labels.clone(),
        key_id: to.id(),
        encapped_key,
        ciphertext,
    })
}

/// Opens a sealed spec that arrived on `topic` with the device's key, then
/// decodes and validates the spec like any desired spec. Every refusal is
/// an error value; nothing here panics on hostile input.
/// `version` is the envelope's: the plaintext is a `PodSpec` body of it.
pub fn open_pod(
    key: &KeyPair,
    topic: &str,
    sealed: &SealedPod,
    version: u16,
) -> Result<PodSpec, SealError> {
    if sealed.key_id != key.id() {
        return Err(SealError::OtherKey {
            sealed_to: hex::encode(sealed.key_id),
            ours: hex::encode(key.id()),
        });
    }
    let encapped = kedge_hpke::encapped_key(&sealed.encapped_key).map_err(|_| SealError::Open)?;
    let plain = kedge_hpke::open(
        key.hpke(),
        &encapped,
        POD_INFO,
        &sealed.ciphertext,
        &pod_aad(topic, &sealed.uid),
    )
    .map_err(|_| SealError::Open)?;
    let spec = wire::pod_spec_from_body(&plain, version)?;
    // The uid is bound by the associated data; the labels in clear must
    // say what the sealed spec says.
    if spec.uid != sealed.uid {
        return Err(SealError::Mismatch { what: "uid" });
    }
    if spec.labels != sealed.labels {
        return Err(SealError::Mismatch { what: "labels" });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;
    use crate::model::{EnvVar, RestartPolicy};
    use crate::wire::SCHEMA_VERSION;

    const TOPIC: &str = "kedge/v1/gw1/desired/default/web";

    fn secret_spec() -> PodSpec {
        let mut spec = samples::spec("web", "u1", 3, RestartPolicy::Always);
        spec.containers.push(samples::container("app"));
        spec.containers[0]
            .env
            .push(EnvVar::new("PASSWORD", "hunter2-hunter2"));
        spec
    }

    #[test]
    fn a_sealed_spec_opens_only_with_its_key_topic_and_uid() {
        let device = KeyPair::generate().expect("key");
        let spec = secret_spec();
        let sealed = seal_pod(&device.public(), TOPIC, &spec).expect("seals");
        let bytes = wire::encode(3, &wire::Message::SealedPod(sealed.clone())).expect("encodes");
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "no plaintext in the envelope"
        );
        assert_eq!(
            open_pod(&device, TOPIC, &sealed, SCHEMA_VERSION),
            Ok(spec.clone())
        );

        let other = KeyPair::generate().expect("key");
        assert!(matches!(
            open_pod(&other, TOPIC, &sealed, SCHEMA_VERSION),
            Err(SealError::OtherKey { .. })
        ));
        assert_eq!(
            open_pod(
                &device,
                "kedge/v1/gw2/desired/default/web",
                &sealed,
                SCHEMA_VERSION
            ),
            Err(SealError::Open),
            "moved to another node's topic it does not open"
        );
        let mut renamed = sealed.clone();
        renamed.uid = "u2".into();
        assert_eq!(
            open_pod(&device, TOPIC, &renamed, SCHEMA_VERSION),
            Err(SealError::Open)
        );
        let mut relabelled = sealed.clone();
        relabelled
            .labels
            .insert("kedge.io/bridge".into(), "true".into());
        assert_eq!(
            open_pod(&device, TOPIC, &relabelled, SCHEMA_VERSION),
            Err(SealError::Mismatch { what: "labels" })
        );
        let mut flipped = sealed.clone();
        let last = flipped.ciphertext.len() - 1;
        flipped.ciphertext[last] ^= 1;
        assert_eq!(
            open_pod(&device, TOPIC, &flipped, SCHEMA_VERSION),
            Err(SealError::Open)
        );
        let mut short = sealed;
        short.ciphertext.truncate(3);
        assert_eq!(
            open_pod(&device, TOPIC, &short, SCHEMA_VERSION),
            Err(SealError::Open)
        );
    }

    #[test]
    fn what_opens_is_validated_like_any_desired_spec() {
        let device = KeyPair::generate().expect("key");
        let mut spec = secret_spec();
        spec.name = "../etc".into();
        let sealed = seal_pod(&device.public(), TOPIC, &spec).expect("seals");
        assert!(matches!(
            open_pod(&device, TOPIC, &sealed, SCHEMA_VERSION),
            Err(SealError::Wire(WireError::Invalid { .. }))
        ));
    }

    #[test]
    fn the_device_key_file_is_made_once_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/sealing.key");
        let first = KeyPair::load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyPair::load_or_create(&path).expect("read back");
        assert_eq!(first.public(), again.public());
        std::fs::write(&path, "short\n").expect("overwrite");
        assert!(matches!(
            KeyPair::load_or_create(&path),
            Err(KeyError::Invalid { .. })
        ));
    }

    #[test]
    fn a_key_file_that_exists_is_never_overwritten_by_create_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sink.key");
        let made = KeyPair::create_file(&path).expect("create");
        let loaded = KeyPair::load(&path).expect("load");
        assert_eq!(made.public(), loaded.public());
        assert!(KeyPair::create_file(&path).is_err());
        let public = PublicKey::parse(&made.public().to_hex(), "test").expect("parse");
        assert_eq!(public.id(), made.id());
        assert!(PublicKey::parse("abcd", "data.sink_public_key").is_err());
    }
}
