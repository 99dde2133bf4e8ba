//! Signed desired state (docs/wire.md, "Signatures"; docs/keys.md): the
//! keys an agent trusts, what the bridge and the CLI sign with, and the pure
//! checks an agent makes before it acts on a desired-side message.
//!
//! Ed25519 through `ring`, which rustls already links into every build.
//!
//! Invariants:
//! - a signature covers the full MQTT topic, the envelope's version, kind
//!   and seq, its own counter, expiry and key id, and the body
//!   (`wire::signed_bytes`): it cannot be moved to another node, pod name or
//!   kind;
//! - `verify` and `check_replay` are pure: no I/O, no clock of their own;
//! - a signer's counters rise strictly within one process (`Signer::sign`).

use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wire::{self, Kind, Opened, Signature, TopicKind, Topics, WireError};

/// The id of a public key: the first 8 bytes of its sha256.
pub type KeyId = [u8; 8];

pub fn key_id(public: &[u8; 32]) -> KeyId {
    let d = Sha256::digest(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

#[derive(Debug, Error)]
pub enum TrustError {
    #[error("invalid trusted key {entry:?}: {message}")]
    BadKey { entry: String, message: String },
    #[error("cannot read signing key {path}: {message}")]
    ReadSigningKey { path: String, message: String },
    #[error("invalid signing key {path}: {message}")]
    BadSigningKey { path: String, message: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A public key an agent trusts (config key `trust.keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub public: [u8; 32],
    pub id: KeyId,
    /// Unix ms after which messages signed with it are refused.
    pub expires_ms: Option<u64>,
}

impl TrustedKey {
    /// `<base64 of the 32 raw bytes>[,expires=<RFC 3339>]`.
    pub fn parse(entry: &str) -> Result<TrustedKey, TrustError> {
        let bad = |message: String| TrustError::BadKey {
            entry: entry.to_string(),
            message,
        };
        let mut parts = entry.split(',');
        let key = parts.next().unwrap_or_default().trim();
        let bytes = BASE64
            .decode(key)
            .map_err(|e| bad(format!("not base64: {e}")))?;
        let public: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            bad(format!(
                "an Ed25519 public key is 32 bytes, this is {}",
                bytes.len()
            ))
        })?;
        let mut expires_ms = None;
        for opt in parts {
            match opt.trim().split_once('=') {
                Some(("expires", when)) => {
                    let t = humantime::parse_rfc3339(when.trim()).map_err(|e| {
                        bad(format!(
                            "expires: {e} (expected RFC 3339, e.g. 2027-01-31T00:00:00Z)"
                        ))
                    })?;
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_err(|_| bad("expires before 1970".into()))?
                        .as_millis();
                    expires_ms = Some(u64::try_from(ms).unwrap_or(u64::MAX));
                }
                _ => return Err(bad(format!("unknown option {opt:?} (expected expires=…)"))),
            }
        }
        Ok(TrustedKey {
            id: key_id(&public),
            public,
            expires_ms,
        })
    }

    /// Parses a whitespace-separated list of entries.
    pub fn parse_list(list: &str) -> Result<Vec<TrustedKey>, TrustError> {
        list.split_whitespace().map(TrustedKey::parse).collect()
    }
}

/// Why a desired-side message is refused. `reason()` is the CamelCase
/// reason of the event and status; `Display` the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("the message is not signed, and this node requires signed desired state (trust.keys)")]
    Missing,
    #[error("the message is signed with key {}, which this node does not trust", hex::encode(.0))]
    UnknownKey(KeyId),
    #[error(
        "the message is signed with key {}, which this node trusted until {}",
        hex::encode(.id),
        fmt_ms(.expired_ms)
    )]
    KeyExpired { id: KeyId, expired_ms: u64 },
    #[error(
        "the signature does not match the message on this topic: it was altered, or signed for another node, pod or kind"
    )]
    Invalid,
    #[error("the signature expired at {}", fmt_ms(.0))]
    Expired(u64),
    #[error(
        "the message was signed at counter {counter}, older than the {last} already accepted on this topic: a replay of an older message (or a signer whose clock is behind)"
    )]
    Replayed { counter: u64, last: u64 },
    #[error("another message with the same counter {0} was already accepted on this topic")]
    Conflict(u64),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "SignatureMissing",
            Refusal::UnknownKey(_) | Refusal::KeyExpired { .. } => "SignatureUntrusted",
            Refusal::Invalid => "SignatureInvalid",
            Refusal::Expired(_) => "SignatureExpired",
            Refusal::Replayed { .. } | Refusal::Conflict(_) => "SignatureReplayed",
        }
    }
}

fn fmt_ms(ms: &u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(*ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A good signature: what the replay check and the store need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub key_id: KeyId,
    pub counter: u64,
}

/// Checks the signature of an opened envelope received on `topic` against
/// `keys` at `now_ms`. Pure.
pub fn verify(
    keys: &[TrustedKey],
    now_ms: u64,
    topic: &str,
    opened: &Opened<'_>,
) -> Result<Verified, Refusal> {
    let sig = opened.signature.as_ref().ok_or(Refusal::Missing)?;
    let key = keys
        .iter()
        .find(|k| k.id == sig.key_id)
        .ok_or(Refusal::UnknownKey(sig.key_id))?;
    if let Some(expired_ms) = key.expires_ms
        && now_ms > expired_ms
    {
        return Err(Refusal::KeyExpired {
            id: key.id,
            expired_ms,
        });
    }
    UnparsedPublicKey::new(&ED25519, &key.public)
        .verify(&opened.signed_bytes(topic, sig), &sig.signature)
        .map_err(|_| Refusal::Invalid)?;
    if sig.expires_ms != 0 && now_ms > sig.expires_ms {
        return Err(Refusal::Expired(sig.expires_ms));
    }
    Ok(Verified {
        key_id: sig.key_id,
        counter: sig.counter,
    })
}

/// The last message accepted on a topic (kept in the agent's store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub counter: u64,
    /// sha256 of the payload: the same counter with the same bytes is a
    /// redelivery (every retained message, on every connection).
    pub digest: [u8; 32],
    /// The message was a tombstone (the topic was deleted).
    pub tombstone: bool,
}

/// Whether a verified message is new on its topic, or the one accepted last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    New,
    Redelivery,
}

/// The rollback and replay check: a counter lower than the last accepted
/// on the topic is refused; the same counter passes only with the same
/// bytes. Pure.
pub fn check_replay(
    last: Option<&Accepted>,
    counter: u64,
    digest: &[u8; 32],
) -> Result<Fresh, Refusal> {
    match last {
        None => Ok(Fresh::New),
        Some(l) if counter > l.counter => Ok(Fresh::New),
        Some(l) if counter == l.counter && l.digest == *digest => Ok(Fresh::Redelivery),
        Some(l) if counter == l.counter => Err(Refusal::Conflict(counter)),
        Some(l) => Err(Refusal::Replayed {
            counter,
            last: l.counter,
        }),
    }
}

pub fn sha256(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// The topics whose messages are signed: what a device acts on. Fleet specs
/// (`_fleet-spec/{digest}`) are not: a signed fleet record names them by the
/// sha256 of their payload, which pins them as well as a signature would.
pub fn signed_topic(kind: &TopicKind) -> bool {
    matches!(
        kind,
        TopicKind::Desired { .. }
            | TopicKind::Index { .. }
            | TopicKind::Fleet { .. }
            | TopicKind::Labels { .. }
            | TopicKind::RpcRequest { .. }
    )
}

/// What the bridge and the CLI sign with (`trust.signing_key_file`).
pub struct Signer {
    pair: Ed25519KeyPair,
    id: KeyId,
    /// The last counter used: counters rise strictly even when the clock
    /// does not move (or steps back).
    last: Mutex<u64>,
    /// Unix ms the signatures are valid for; 0 = no expiry.
    pub ttl_ms: u64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &hex::encode(self.id))
            .finish()
    }
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// A new Ed25519 private key, PKCS#8 (DER).
pub fn generate() -> Result<Vec<u8>, TrustError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|e| TrustError::Generate(e.to_string()))
}

/// PKCS#8 DER as PEM text (what `kedge keys generate` writes).
pub fn to_pem(der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("{PEM_BEGIN}\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

impl Signer {
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| e.to_string())?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "not an Ed25519 key".to_string())?;
        Ok(Signer {
            id: key_id(&public),
            pair,
            last: Mutex::new(0),
            ttl_ms: 0,
        })
    }

    /// From a fixed 32-byte seed (test vectors and tests).
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap_or([0; 32]);
        Signer {
            id: key_id(&public),
            pair,
            last: Mutex::new(0),
            ttl_ms: 0,
        }
    }

    /// Reads a PKCS#8 Ed25519 key, PEM (`kedge keys generate`, `openssl
    /// genpkey -algorithm ed25519`) or DER.
    pub fn load(path: &Path) -> Result<Signer, TrustError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TrustError::ReadSigningKey {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let bad = |message: String| TrustError::BadSigningKey {
            path: shown.clone(),
            message,
        };
        let der = match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains(PEM_BEGIN) => {
                let inner = text
                    .split(PEM_BEGIN)
                    .nth(1)
                    .and_then(|t| t.split(PEM_END).next())
                    .ok_or_else(|| bad("no END PRIVATE KEY line".into()))?;
                let b64: String = inner.split_whitespace().collect();
                BASE64
                    .decode(b64)
                    .map_err(|e| bad(format!("not base64: {e}")))?
            }
            _ => bytes,
        };
        Signer::from_pkcs8(&der).map_err(|e| bad(format!("not a PKCS#8 Ed25519 key: {e}")))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .unwrap_or([0; 32])
    }

    /// The public key as `trust.keys` takes it.
    pub fn public_key_base64(&self) -> String {
        BASE64.encode(self.public_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The next counter: the clock in ms, or one more than the last.
    fn next_counter(&self, now_ms: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = now_ms.max(last.saturating_add(1));
        *last
    }

    /// Signs `message` for `topic` at `seq`: an envelope of `wire::SCHEMA_VERSION`.
    pub fn sign_message(
        &self,
        topic: &str,
        seq: u64,
        message: &wire::Message,
    ) -> Result<Vec<u8>, WireError> {
        let body = wire::Body::of(message)?;
        let unsigned = body.envelope(seq);
        self.sign_envelope(topic, &unsigned, crate::model::now_ms())
    }

    /// Signs an unsigned envelope for `topic` (an empty payload becomes a
    /// signed `Tombstone`); `now_ms` makes the counter.
    pub fn sign_envelope(
        &self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, WireError> {
        let (kind, seq, body): (Kind, u64, &[u8]) = if payload.is_empty() {
            (Kind::Tombstone, 0, &[])
        } else {
            let o = wire::open(payload)?;
            (o.kind, o.seq, o.body)
        };
        let counter = self.next_counter(now_ms);
        let expires_ms = if self.ttl_ms == 0 {
            0
        } else {
            now_ms.saturating_add(self.ttl_ms)
        };
        let signed = wire::signed_bytes(
            topic,
            wire::SCHEMA_VERSION,
            kind as u8,
            seq,
            counter,
            expires_ms,
            &self.id,
            body,
        );
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(&signed).as_ref());
        let field = Signature {
            key_id: self.id,
            counter,
            expires_ms,
            signature,
        };
        Ok(wire::envelope_bytes(kind, seq, &field.encode(), body))
    }

    /// What a publisher sends on `topic`: signed when the topic is one a
    /// device acts on (`signed_topic`), else the payload as it is.
    pub fn seal(&self, topics: &Topics, topic: &str, payload: Vec<u8>) -> Vec<u8> {
        match topics.parse(topic) {
            Some(kind) if signed_topic(&kind) => {
                match self.sign_envelope(topic, &payload, crate::model::now_ms()) {
                    Ok(signed) => signed,
                    Err(e) => {
                        // Only for a payload that is no envelope: sent as it
                        // is, and refused by signing agents.
                        tracing::warn!(topic, error = %e, "cannot sign; sending unsigned");
                        payload
                    }
                }
            }
            _ => payload,
        }
    }
}

/// Signs `payload` for `topic` if there is a signer.
pub fn seal(signer: Option<&Signer>, topics: &Topics, topic: &str, payload: Vec<u8>) -> Vec<u8> {
    match signer {
        Some(s) => s.seal(topics, topic, payload),
        None => payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeLabels, samples};
    use crate::wire::Message;

    const TOPIC: &str = "kedge/v1/gw1/desired/default/web";
    const NOW: u64 = 1_767_225_600_000;

    fn signer(seed: u8) -> Signer {
        Signer::from_seed(&[seed; 32])
    }

    fn trusted(s: &Signer, expires_ms: Option<u64>) -> TrustedKey {
        let public = s.public_key();
        TrustedKey {
            id: key_id(&public),
            public,
            expires_ms,
        }
    }

    fn spec_payload(generation: u64) -> Vec<u8> {
        let mut spec = samples::spec("web", "u1", generation, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        wire::encode(generation, &Message::DesiredPod(spec)).expect("encodes")
    }

    fn check(keys: &[TrustedKey], topic: &str, payload: &[u8]) -> Result<Verified, Refusal> {
        let opened = wire::open(payload).expect("opens");
        verify(keys, NOW, topic, &opened)
    }

    #[test]
    fn a_good_signature_verifies_and_decodes() {
        let s = signer(1);
        let signed = s
            .sign_envelope(TOPIC, &spec_payload(3), NOW)
            .expect("signs");
        let v = check(&[trusted(&s, None)], TOPIC, &signed).expect("verifies");
        assert_eq!(v.counter, NOW);
        assert_eq!(v.key_id, s.key_id());
        // The signed envelope still decodes as the spec.
        let (seq, spec) = wire::decode_as::<crate::model::PodSpec>(&signed).expect("decodes");
        assert_eq!((seq, spec.generation), (3, 3));
    }

    #[test]
    fn unsigned_is_missing() {
        let s = signer(1);
        assert_eq!(
            check(&[trusted(&s, None)], TOPIC, &spec_payload(1)),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let signed = signer(2)
            .sign_envelope(TOPIC, &spec_payload(1), NOW)
            .expect("signs");
        let r = check(&[trusted(&signer(1), None)], TOPIC, &signed);
        assert!(matches!(r, Err(Refusal::UnknownKey(_))), "{r:?}");
        assert_eq!(r.expect_err("refused").reason(), "SignatureUntrusted");
    }

    #[test]
    fn an_expired_key_is_refused_and_its_successor_accepted() {
        let (old, new) = (signer(1), signer(2));
        let keys = [trusted(&old, Some(NOW - 1)), trusted(&new, None)];
        let by_old = old
            .sign_envelope(TOPIC, &spec_payload(1), NOW)
            .expect("signs");
        assert!(matches!(
            check(&keys, TOPIC, &by_old),
            Err(Refusal::KeyExpired { .. })
        ));
        let by_new = new
            .sign_envelope(TOPIC, &spec_payload(1), NOW)
            .expect("signs");
        assert!(check(&keys, TOPIC, &by_new).is_ok());
    }

    #[test]
    fn another_topic_or_altered_bytes_are_invalid() {
        let s = signer(1);
        let keys = [trusted(&s, None)];
        let signed = s
            .sign_envelope(TOPIC, &spec_payload(1), NOW)
            .expect("signs");
        for other in [
            "kedge/v1/gw2/desired/default/web",
            "kedge/v1/gw1/desired/default/web2",
            "kedge/v1/gw1/index/cli",
        ] {
            assert_eq!(check(&keys, other, &signed), Err(Refusal::Invalid));
        }
        // Flip a byte of the body (the last byte of the payload).
        let mut altered = signed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        if let Ok(o) = wire::open(&altered) {
            assert_eq!(verify(&keys, NOW, TOPIC, &o), Err(Refusal::Invalid));
        }
        // The seq is covered too.
        let o = wire::open(&signed).expect("opens");
        let moved = wire::envelope_bytes(
            o.kind,
            o.seq + 1,
            &o.signature.as_ref().expect("signed").encode(),
            o.body,
        );
        assert_eq!(check(&keys, TOPIC, &moved), Err(Refusal::Invalid));
    }

    #[test]
    fn a_signed_tombstone_cannot_become_a_labels_delete() {
        let s = signer(1);
        let keys = [trusted(&s, None)];
        let tomb = s.sign_envelope(TOPIC, &[], NOW).expect("signs");
        assert!(wire::is_tombstone(&tomb));
        assert!(check(&keys, TOPIC, &tomb).is_ok());
        assert_eq!(
            check(&keys, "kedge/v1/gw1/labels", &tomb),
            Err(Refusal::Invalid)
        );
        // A labels message signed for gw1 is no good on gw2.
        let labels = wire::encode(0, &Message::NodeLabels(NodeLabels::default())).expect("enc");
        let signed = s
            .sign_envelope("kedge/v1/gw1/labels", &labels, NOW)
            .expect("signs");
        assert_eq!(
            check(&keys, "kedge/v1/gw2/labels", &signed),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn an_expired_signature_is_refused() {
        let mut s = signer(1);
        s.ttl_ms = 1000;
        let signed = s
            .sign_envelope(TOPIC, &spec_payload(1), NOW - 5000)
            .expect("signs");
        assert_eq!(
            check(&[trusted(&s, None)], TOPIC, &signed),
            Err(Refusal::Expired(NOW - 4000))
        );
    }

    #[test]
    fn replay_rules() {
        let d = [7u8; 32];
        let last = Accepted {
            counter: 100,
            digest: d,
            tombstone: false,
        };
        assert_eq!(check_replay(None, 1, &d), Ok(Fresh::New));
        assert_eq!(check_replay(Some(&last), 101, &[0; 32]), Ok(Fresh::New));
        assert_eq!(check_replay(Some(&last), 100, &d), Ok(Fresh::Redelivery));
        assert_eq!(
            check_replay(Some(&last), 100, &[0; 32]),
            Err(Refusal::Conflict(100))
        );
        let r = check_replay(Some(&last), 99, &d);
        assert_eq!(
            r,
            Err(Refusal::Replayed {
                counter: 99,
                last: 100
            })
        );
        assert_eq!(r.expect_err("refused").reason(), "SignatureReplayed");
    }

    #[test]
    fn counters_rise_even_when_the_clock_does_not() {
        let s = signer(1);
        let a = s.next_counter(NOW);
        let b = s.next_counter(NOW);
        let c = s.next_counter(NOW - 10);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn trusted_keys_parse() {
        let s = signer(1);
        let line = s.public_key_base64();
        let list = format!(
            "{line},expires=2027-01-31T00:00:00Z  {}",
            signer(2).public_key_base64()
        );
        let keys = TrustedKey::parse_list(&list).expect("parses");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id, s.key_id());
        assert_eq!(keys[0].expires_ms, Some(1_801_353_600_000));
        assert_eq!(keys[1].expires_ms, None);
        for bad in [
            "abc",
            "AAAA",
            &format!("{line},expires=tomorrow"),
            &format!("{line},x=1"),
        ] {
            assert!(TrustedKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let der = generate().expect("generates");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        std::fs::write(&path, to_pem(&der)).expect("writes");
        let a = Signer::load(&path).expect("loads PEM");
        std::fs::write(&path, &der).expect("writes");
        let b = Signer::load(&path).expect("loads DER");
        assert_eq!(a.public_key(), b.public_key());
        std::fs::write(&path, "garbage").expect("writes");
        assert!(Signer::load(&path).is_err());
    }

    #[test]
    fn only_desired_side_topics_are_signed() {
        let topics = Topics::new("kedge/v1");
        let s = signer(1);
        let spec = spec_payload(1);
        let sealed = s.seal(&topics, TOPIC, spec.clone());
        assert!(wire::open(&sealed).expect("opens").signature.is_some());
        // A fleet spec is pinned by its digest: its bytes must not change.
        let fs = topics.fleet_spec("ab");
        assert_eq!(s.seal(&topics, &fs, spec.clone()), spec);
        // An empty payload on a desired topic becomes a signed tombstone.
        let t = s.seal(&topics, TOPIC, Vec::new());
        assert!(wire::is_tombstone(&t) && !t.is_empty());
    }
}
