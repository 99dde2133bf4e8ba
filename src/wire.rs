//! The wire contract between bridge/CLI and agent: topic names and the
//! versioned postcard envelope. Specified in docs/wire.md; no I/O here.
//!
//! Invariant: decoding never panics. Anything that is not a well-formed
//! envelope of a known version and kind is a `WireError`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::validate::Validate;
use crate::model::{
    DesiredIndex, Event, ExecReply, ExecRequest, FleetDeployment, FleetReport, LogChunk,
    LogRequest, NodeLabels, NodeStatus, PodKey, PodSpec, PodStatus, SealedPod, StatsReply,
    StatsRequest, StreamClose, StreamData, StreamExec, StreamOpen, StreamWindow,
};

pub mod stream;

/// The schema version this build writes (docs/wire.md, "Evolving the
/// schema": 2 added node labels and fleets, 3 signatures and `Tombstone`,
/// 4 the `PodSpec` fields of issue 15, 5 `SealedPod` and the node's
/// sealing key and machine identity, 6 the stats RPC, 7 the exec RPC, 8
/// streams for port-forward, 9 `StreamExec` for exec and attach and the
/// container fields of lifecycle hooks, termination messages and env
/// status references, 10 native sidecars, `Container.restart_policy`, and
/// the data routes a pod declares, `PodSpec.routes`, 11 the data path's
/// counters in the node status, `NodeStatus.data`, the SELinux labels,
/// `se_linux_options`, and the pod's DNS, `PodSpec.dns`, 12 the data
/// routes' priority, `PodRoute.priority` and `RouteStatus.priority`).
pub const SCHEMA_VERSION: u16 = 12;
/// The first version whose `signature` field has a meaning (docs/wire.md,
/// "Signatures"); in older envelopes it is ignored.
pub const SIGNED_SINCE_VERSION: u16 = 3;
/// The first version whose `PodSpec` has seccomp/AppArmor profiles,
/// hostPath types and `$(VAR)` templates; older ones are read as today's
/// without them, their literal values escaped (`model::added`,
/// `expansion::escape_literals`; docs/wire.md, "Evolving the schema").
pub const POD_FIELDS_SINCE_VERSION: u16 = 4;
/// The first version with `SealedPod` and the `NodeStatus` that carries the
/// sealing key and the machine identity (the older one is read without
/// them, `model::added`).
pub const SEALED_SINCE_VERSION: u16 = 5;
/// The first version with the stats RPC (`StatsRequest`, `StatsReply`).
pub const STATS_SINCE_VERSION: u16 = 6;
/// The first version with the exec RPC (`ExecRequest`, `ExecReply`).
pub const EXEC_SINCE_VERSION: u16 = 7;
/// The first version with streams (`StreamOpen`, `StreamData`,
/// `StreamWindow`, `StreamClose`: port-forward).
pub const STREAMS_SINCE_VERSION: u16 = 8;
/// The first version with `StreamExec` (exec and attach as streams).
pub const STREAM_EXEC_SINCE_VERSION: u16 = 9;
/// The first version whose `Container` has `lifecycle` and the termination
/// message fields and whose `EnvVar` has `field`; older ones are read as
/// today's without them (`model::added`; docs/wire.md, "Evolving the
/// schema").
pub const CONTAINER_FIELDS_SINCE_VERSION: u16 = 9;
/// The first version whose `Container` has `restart_policy` (native
/// sidecars) and whose `PodSpec` has `routes`; version 9's is read as
/// today's without them (`model::added`).
pub const SIDECARS_SINCE_VERSION: u16 = 10;
/// The first version whose `NodeStatus` has `data` (the data path's
/// counters); older ones are read without it (`model::added`).
pub const DATA_STATUS_SINCE_VERSION: u16 = 11;
/// The first version whose `SecurityContext` and `PodSecurity` have
/// `se_linux_options` and whose `PodSpec` has `dns`; older ones are read
/// as today's without them (`model::added`).
pub const SELINUX_DNS_SINCE_VERSION: u16 = 11;
/// The first version whose `PodRoute` and `RouteStatus` have `priority`;
/// older ones are read as today's without it (`model::added`: the default,
/// the lowest).
pub const ROUTE_PRIORITY_SINCE_VERSION: u16 = 12;
/// The oldest version this build still reads (docs/wire.md, "Evolving the
/// schema"): versions 1 to 10 differ in the fields versions 2, 5 and 11
/// appended to `NodeStatus`, 4 to 9 in those versions 9 and 10 appended to
/// `PodSpec` (both read without them, `model::added`), and versions 1 to 3
/// in the fields version 4 appended and in running their values literally
/// (escaped on reading).
pub const OLDEST_READABLE_VERSION: u16 = 1;
/// Index authors: the level after `index/` (docs/wire.md, "Desired index").
pub const INDEX_AUTHOR_BRIDGE: &str = "bridge";
pub const INDEX_AUTHOR_CLI: &str = "cli";
/// The topic prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "kedge/v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    #[error(
        "unsupported schema version {found} (this agent reads versions {OLDEST_READABLE_VERSION} to {SCHEMA_VERSION})"
    )]
    UnknownVersion { found: u16 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected} message, got {found}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("malformed {kind} body: {detail}")]
    MalformedBody { kind: &'static str, detail: String },
    #[error("cannot encode {kind}: {detail}")]
    Encode { kind: &'static str, detail: String },
    /// Well-formed, but a value breaks the rules of `model::validate`.
    #[error("invalid {kind}: {invalid}")]
    Invalid {
        kind: &'static str,
        invalid: crate::model::validate::Invalid,
    },
}

/// The message kinds; the numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    DesiredPod = 1,
    PodStatus = 2,
    NodeStatus = 3,
    Event = 4,
    LogRequest = 5,
    LogChunk = 6,
    DesiredIndex = 7,
    FleetDeployment = 8,
    FleetReport = 9,
    NodeLabels = 10,
    /// A signed delete (version 3): sent where an empty payload would be a
    /// tombstone, so that the delete can carry a signature. Empty body.
    Tombstone = 11,
    /// A desired spec sealed to the device's key (version 5): sent instead
    /// of `DesiredPod` when the spec carries Secret values.
    SealedPod = 12,
    /// Asks for the node's resource usage (version 6; the stats RPC).
    StatsRequest = 13,
    /// The answer to a `StatsRequest`.
    StatsReply = 14,
    /// Runs a command in a container (version 7; the exec RPC).
    ExecRequest = 15,
    /// The answer to an `ExecRequest`.
    ExecReply = 16,
    /// Opens a byte stream to a pod's port (version 8; port-forward).
    StreamOpen = 17,
    /// A stream's bytes, either direction.
    StreamData = 18,
    /// Credit for a stream's bytes, either direction.
    StreamWindow = 19,
    /// A stream's end, either direction.
    StreamClose = 20,
    /// Opens a byte stream to the runtime's streaming server for an exec
    /// or an attach (version 9).
    StreamExec = 21,
}

impl Kind {
    pub fn from_u8(v: u8) -> Result<Kind, WireError> {
        Ok(match v {
            1 => Kind::DesiredPod,
            2 => Kind::PodStatus,
            3 => Kind::NodeStatus,
            4 => Kind::Event,
            5 => Kind::LogRequest,
            6 => Kind::LogChunk,
            7 => Kind::DesiredIndex,
            8 => Kind::FleetDeployment,
            9 => Kind::FleetReport,
            10 => Kind::NodeLabels,
            11 => Kind::Tombstone,
            12 => Kind::SealedPod,
            13 => Kind::StatsRequest,
            14 => Kind::StatsReply,
            15 => Kind::ExecRequest,
            16 => Kind::ExecReply,
            17 => Kind::StreamOpen,
            18 => Kind::StreamData,
            19 => Kind::StreamWindow,
            20 => Kind::StreamClose,
            21 => Kind::StreamExec,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::DesiredPod => "DesiredPod",
            Kind::PodStatus => "PodStatus",
            Kind::NodeStatus => "NodeStatus",
            Kind::Event => "Event",
            Kind::LogRequest => "LogRequest",
            Kind::LogChunk => "LogChunk",
            Kind::DesiredIndex => "DesiredIndex",
            Kind::FleetDeployment => "FleetDeployment",
            Kind::FleetReport => "FleetReport",
            Kind::NodeLabels => "NodeLabels",
            Kind::Tombstone => "Tombstone",
            Kind::SealedPod => "SealedPod",
            Kind::StatsRequest => "StatsRequest",
            Kind::StatsReply => "StatsReply",
            Kind::ExecRequest => "ExecRequest",
            Kind::ExecReply => "ExecReply",
            Kind::StreamOpen => "StreamOpen",
            Kind::StreamData => "StreamData",
            Kind::StreamWindow => "StreamWindow",
            Kind::StreamClose => "StreamClose",
            Kind::StreamExec => "StreamExec",
        }
    }
}

/// The envelope every payload travels in. Field order is the wire order:
/// `version` must stay first so any future reader can tell versions apart.
/// Written by hand (`envelope_bytes`) and read by hand (`open`); this
/// postcard type pins both to postcard's own encoding in the tests.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RawEnvelope {
    version: u16,
    kind: u8,
    /// Generation for desired specs; the node-wide outbox counter for pod
    /// status and events; `heartbeat_ms` for node status (0 in the last
    /// will); 0 for the log RPC. See docs/wire.md.
    seq: u64,
    /// Empty (unsigned), or a [`Signature`] (since version 3; docs/wire.md,
    /// "Signatures"); ignored in versions 1 and 2.
    signature: Vec<u8>,
    body: Vec<u8>,
}

/// A decoded message with its envelope sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The schema version it was written in (the message is upgraded to
    /// this build's types).
    pub version: u16,
    pub seq: u64,
    pub message: Message,
}

/// The `signature` field of an envelope of version 3 or later (docs/wire.md,
/// "Signatures"). Layout: `key_id` (8 raw bytes), `counter` (varint),
/// `expires_ms` (varint), `signature` (64 raw bytes), nothing after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The first 8 bytes of the sha256 of the signer's 32-byte public key.
    pub key_id: [u8; 8],
    /// The signer's Unix time in ms at signing, strictly increasing per
    /// signer: a receiver refuses a lower one than it accepted on the topic.
    pub counter: u64,
    /// Unix ms after which the message is refused; 0 = never.
    pub expires_ms: u64,
    /// Ed25519 over [`signed_bytes`].
    pub signature: [u8; 64],
}

/// The domain-separation string that starts every signed message.
pub const SIGNATURE_DOMAIN: &[u8] = b"kedge-signed-v1\0";

impl Signature {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 10 + 10 + 64);
        out.extend_from_slice(&self.key_id);
        varint(&mut out, self.counter);
        varint(&mut out, self.expires_ms);
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Signature, WireError> {
        let bad = |what: &str| WireError::MalformedEnvelope(format!("signature: {what}"));
        let key_id: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("truncated key id"))?;
        let rest = &bytes[8..];
        let (counter, rest) =
            postcard::take_from_bytes::<u64>(rest).map_err(|e| bad(&e.to_string()))?;
        let (expires_ms, rest) =
            postcard::take_from_bytes::<u64>(rest).map_err(|e| bad(&e.to_string()))?;
        let signature: [u8; 64] = rest
            .try_into()
            .map_err(|_| bad(&format!("expected 64 signature bytes, got {}", rest.len())))?;
        Ok(Signature {
            key_id,
            counter,
            expires_ms,
            signature,
        })
    }
}

/// The bytes a signature covers: the domain string, the full MQTT topic
/// (length first), then the envelope's version, kind and seq, the
/// signature's counter, expiry and key id, and the body (length first).
/// Binding the topic means a signed message cannot be replayed onto another
/// node, pod name or kind.
#[allow(clippy::too_many_arguments)]
pub fn signed_bytes(
    topic: &str,
    version: u16,
    kind: u8,
    seq: u64,
    counter: u64,
    expires_ms: u64,
    key_id: &[u8; 8],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_DOMAIN.len() + topic.len() + body.len() + 48);
    out.extend_from_slice(SIGNATURE_DOMAIN);
    varint(&mut out, topic.len() as u64);
    out.extend_from_slice(topic.as_bytes());
    varint(&mut out, u64::from(version));
    out.push(kind);
    varint(&mut out, seq);
    varint(&mut out, counter);
    varint(&mut out, expires_ms);
    out.extend_from_slice(key_id);
    varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

/// An envelope parsed without decoding its body: what a signature is
/// checked on (`trust::verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub version: u16,
    pub kind: Kind,
    pub seq: u64,
    /// None when the envelope is unsigned, or of a version before
    /// signatures.
    pub signature: Option<Signature>,
    pub body: &'a [u8],
}

impl Opened<'_> {
    /// The bytes this envelope's signature must cover on `topic`.
    pub fn signed_bytes(&self, topic: &str, sig: &Signature) -> Vec<u8> {
        signed_bytes(
            topic,
            self.version,
            self.kind as u8,
            self.seq,
            sig.counter,
            sig.expires_ms,
            &sig.key_id,
            self.body,
        )
    }
}

/// Reads a varint like postcard (at most 10 bytes, no overflow).
fn take_varint(bytes: &[u8]) -> Result<(u64, &[u8]), WireError> {
    postcard::take_from_bytes::<u64>(bytes).map_err(|e| WireError::MalformedEnvelope(e.to_string()))
}

/// A length-prefixed byte string.
fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (len, rest) = take_varint(bytes)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= rest.len())
        .ok_or_else(|| WireError::MalformedEnvelope("length beyond the payload".into()))?;
    Ok(rest.split_at(len))
}

/// Parses the envelope (version, kind, seq, signature) without decoding or
/// validating the body. Never panics.
pub fn open(payload: &[u8]) -> Result<Opened<'_>, WireError> {
    let (version, rest) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| WireError::MalformedEnvelope(e.to_string()))?;
    if !(OLDEST_READABLE_VERSION..=SCHEMA_VERSION).contains(&version) {
        return Err(WireError::UnknownVersion { found: version });
    }
    let (&kind, rest) = rest
        .split_first()
        .ok_or_else(|| WireError::MalformedEnvelope("truncated before the kind".into()))?;
    let (seq, rest) = take_varint(rest)?;
    let (signature, rest) = take_bytes(rest)?;
    let (body, rest) = take_bytes(rest)?;
    if !rest.is_empty() {
        return Err(WireError::MalformedEnvelope(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    let kind = Kind::from_u8(kind)?;
    let since = match kind {
        Kind::FleetDeployment | Kind::FleetReport | Kind::NodeLabels => 2,
        Kind::Tombstone => 3,
        Kind::SealedPod => SEALED_SINCE_VERSION,
        Kind::StatsRequest | Kind::StatsReply => STATS_SINCE_VERSION,
        Kind::ExecRequest | Kind::ExecReply => EXEC_SINCE_VERSION,
        Kind::StreamOpen | Kind::StreamData | Kind::StreamWindow | Kind::StreamClose => {
            STREAMS_SINCE_VERSION
        }
        Kind::StreamExec => STREAM_EXEC_SINCE_VERSION,
        _ => 1,
    };
    if version < since {
        // Kinds that this version did not have.
        return Err(WireError::UnknownKind(kind as u8));
    }
    let signature = if version >= SIGNED_SINCE_VERSION && !signature.is_empty() {
        Some(Signature::decode(signature)?)
    } else {
        None
    };
    Ok(Opened {
        version,
        kind,
        seq,
        signature,
        body,
    })
}

/// The envelope of `kind` with this signature field (empty: unsigned).
pub fn envelope_bytes(kind: Kind, seq: u64, signature: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + signature.len() + 16);
    varint(&mut out, u64::from(SCHEMA_VERSION));
    out.push(kind as u8);
    varint(&mut out, seq);
    varint(&mut out, signature.len() as u64);
    out.extend_from_slice(signature);
    varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

/// Whether a payload deletes what its retained topic held: empty, or a
/// `Tombstone` envelope (signed or not).
pub fn is_tombstone(payload: &[u8]) -> bool {
    payload.is_empty() || open(payload).is_ok_and(|o| o.kind == Kind::Tombstone)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    DesiredPod(PodSpec),
    PodStatus(PodStatus),
    NodeStatus(NodeStatus),
    Event(Event),
    LogRequest(LogRequest),
    LogChunk(LogChunk),
    DesiredIndex(DesiredIndex),
    FleetDeployment(FleetDeployment),
    FleetReport(FleetReport),
    NodeLabels(NodeLabels),
    /// A delete that can be signed (kind 11, empty body).
    Tombstone,
    /// A desired spec sealed to the device's key (kind 12).
    SealedPod(SealedPod),
    StatsRequest(StatsRequest),
    StatsReply(StatsReply),
    ExecRequest(ExecRequest),
    ExecReply(ExecReply),
    StreamOpen(StreamOpen),
    StreamData(StreamData),
    StreamWindow(StreamWindow),
    StreamClose(StreamClose),
    StreamExec(StreamExec),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::DesiredPod(_) => Kind::DesiredPod,
            Message::PodStatus(_) => Kind::PodStatus,
            Message::NodeStatus(_) => Kind::NodeStatus,
            Message::Event(_) => Kind::Event,
            Message::LogRequest(_) => Kind::LogRequest,
            Message::LogChunk(_) => Kind::LogChunk,
            Message::DesiredIndex(_) => Kind::DesiredIndex,
            Message::FleetDeployment(_) => Kind::FleetDeployment,
            Message::FleetReport(_) => Kind::FleetReport,
            Message::NodeLabels(_) => Kind::NodeLabels,
            Message::Tombstone => Kind::Tombstone,
            Message::SealedPod(_) => Kind::SealedPod,
            Message::StatsRequest(_) => Kind::StatsRequest,
            Message::StatsReply(_) => Kind::StatsReply,
            Message::ExecRequest(_) => Kind::ExecRequest,
            Message::ExecReply(_) => Kind::ExecReply,
            Message::StreamOpen(_) => Kind::StreamOpen,
            Message::StreamData(_) => Kind::StreamData,
            Message::StreamWindow(_) => Kind::StreamWindow,
            Message::StreamClose(_) => Kind::StreamClose,
            Message::StreamExec(_) => Kind::StreamExec,
        }
    }
}

fn body_bytes<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(value).map_err(|e| encode_error(kind, e))
}

// The error paths of `body_bytes` and `body`, apart from their generic
// halves: each of these is compiled once, not once per body type (a device
// build is counted in bytes).
#[inline(never)]
fn encode_error(kind: Kind, e: postcard::Error) -> WireError {
    WireError::Encode {
        kind: kind.name(),
        detail: e.to_string(),
    }
}

#[inline(never)]
fn malformed_body(kind: Kind, e: postcard::Error) -> WireError {
    WireError::MalformedBody {
        kind: kind.name(),
        detail: e.to_string(),
    }
}

#[inline(never)]
fn checked_body(
    kind: Kind,
    trailing: usize,
    valid: Result<(), crate::model::validate::Invalid>,
) -> Result<(), WireError> {
    if trailing > 0 {
        return Err(WireError::MalformedBody {
            kind: kind.name(),
            detail: format!("{trailing} trailing bytes"),
        });
    }
    valid.map_err(|invalid| WireError::Invalid {
        kind: kind.name(),
        invalid,
    })
}

/// A message body already encoded: the fallible half of [`encode`], done
/// before a sequence number is taken, so that an encoding error can never
/// turn into an empty payload (an empty retained payload is a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    kind: Kind,
    bytes: Vec<u8>,
}

impl Body {
    /// Encodes `message`'s body.
    pub fn of(message: &Message) -> Result<Body, WireError> {
        let kind = message.kind();
        let bytes = match message {
            Message::DesiredPod(v) => body_bytes(kind, v)?,
            Message::PodStatus(v) => body_bytes(kind, v)?,
            Message::NodeStatus(v) => body_bytes(kind, v)?,
            Message::Event(v) => body_bytes(kind, v)?,
            Message::LogRequest(v) => body_bytes(kind, v)?,
            Message::LogChunk(v) => body_bytes(kind, v)?,
            Message::DesiredIndex(v) => body_bytes(kind, v)?,
            Message::FleetDeployment(v) => body_bytes(kind, v)?,
            Message::FleetReport(v) => body_bytes(kind, v)?,
            Message::NodeLabels(v) => body_bytes(kind, v)?,
            Message::Tombstone => Vec::new(),
            Message::SealedPod(v) => body_bytes(kind, v)?,
            Message::StatsRequest(v) => body_bytes(kind, v)?,
            Message::StatsReply(v) => body_bytes(kind, v)?,
            Message::ExecRequest(v) => body_bytes(kind, v)?,
            Message::ExecReply(v) => body_bytes(kind, v)?,
            Message::StreamOpen(v) => body_bytes(kind, v)?,
            Message::StreamData(v) => body_bytes(kind, v)?,
            Message::StreamWindow(v) => body_bytes(kind, v)?,
            Message::StreamClose(v) => body_bytes(kind, v)?,
            Message::StreamExec(v) => body_bytes(kind, v)?,
        };
        Ok(Body { kind, bytes })
    }

    /// The envelope around this body with `seq`: cannot fail. Written by
    /// hand in postcard's format (LEB128 varints for integers and lengths,
    /// `kind` as one byte); `envelope_matches_postcard` keeps it equal to
    /// what postcard writes for `RawEnvelope`.
    pub fn envelope(&self, seq: u64) -> Vec<u8> {
        envelope_bytes(self.kind, seq, &[], &self.bytes)
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Encodes a message into an envelope.
pub fn encode(seq: u64, message: &Message) -> Result<Vec<u8>, WireError> {
    Ok(Body::of(message)?.envelope(seq))
}

fn body<T: for<'de> Deserialize<'de> + Validate>(kind: Kind, bytes: &[u8]) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| malformed_body(kind, e))?;
    // Validated right where it crosses the boundary: nothing downstream sees
    // a value that breaks the rules. (Trailing bytes are refused first.)
    let valid = if rest.is_empty() {
        value.validate()
    } else {
        Ok(())
    };
    checked_body(kind, rest.len(), valid)?;
    Ok(value)
}

/// Decodes any payload and validates its body (`model::validate`). Never
/// panics. A signature is parsed (a malformed one makes the envelope
/// malformed) but not checked: that is `trust::verify`'s, against the topic.
pub fn decode(payload: &[u8]) -> Result<Envelope, WireError> {
    // `open` reads the version on its own first, so a future envelope
    // layout is reported as an unknown version rather than as garbage.
    let opened = open(payload)?;
    let (version, kind, raw) = (opened.version, opened.kind, opened.body);
    let message = match kind {
        // Versions 1 to 3 had the same `PodSpec`, which version 4 changed.
        Kind::DesiredPod => Message::DesiredPod(pod_spec_from_body(raw, version)?),
        Kind::PodStatus => Message::PodStatus(body(kind, raw)?),
        // Versions 1 to 11 lack the fields versions 2, 5, 11 and 12 appended:
        // read as today's without them (`model::added`).
        Kind::NodeStatus => {
            Message::NodeStatus(crate::model::added::reading(version, || body(kind, raw))?)
        }
        Kind::SealedPod => Message::SealedPod(body(kind, raw)?),
        Kind::Event => Message::Event(body(kind, raw)?),
        Kind::LogRequest => Message::LogRequest(body(kind, raw)?),
        Kind::LogChunk => Message::LogChunk(body(kind, raw)?),
        Kind::DesiredIndex => Message::DesiredIndex(body(kind, raw)?),
        Kind::FleetDeployment => Message::FleetDeployment(body(kind, raw)?),
        Kind::FleetReport => Message::FleetReport(body(kind, raw)?),
        Kind::NodeLabels => Message::NodeLabels(body(kind, raw)?),
        Kind::StatsRequest => Message::StatsRequest(body(kind, raw)?),
        Kind::StatsReply => Message::StatsReply(body(kind, raw)?),
        Kind::ExecRequest => Message::ExecRequest(body(kind, raw)?),
        Kind::ExecReply => Message::ExecReply(body(kind, raw)?),
        Kind::StreamOpen => Message::StreamOpen(body(kind, raw)?),
        Kind::StreamData => Message::StreamData(body(kind, raw)?),
        Kind::StreamWindow => Message::StreamWindow(body(kind, raw)?),
        Kind::StreamClose => Message::StreamClose(body(kind, raw)?),
        Kind::StreamExec => Message::StreamExec(body(kind, raw)?),
        Kind::Tombstone if raw.is_empty() => Message::Tombstone,
        Kind::Tombstone => {
            return Err(WireError::MalformedBody {
                kind: kind.name(),
                detail: format!("{} trailing bytes", raw.len()),
            });
        }
    };
    Ok(Envelope {
        version,
        seq: opened.seq,
        message,
    })
}

/// A body type that knows its message kind, for [`decode_as`].
pub trait WireMessage: Sized {
    const KIND: Kind;
    fn from_message(message: Message) -> Option<Self>;
}

macro_rules! wire_message {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl WireMessage for $ty {
            const KIND: Kind = Kind::$kind;
            fn from_message(message: Message) -> Option<Self> {
                match message {
                    Message::$kind(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}

wire_message!(
    PodSpec => DesiredPod,
    PodStatus => PodStatus,
    NodeStatus => NodeStatus,
    Event => Event,
    LogRequest => LogRequest,
    LogChunk => LogChunk,
    DesiredIndex => DesiredIndex,
    FleetDeployment => FleetDeployment,
    FleetReport => FleetReport,
    NodeLabels => NodeLabels,
    SealedPod => SealedPod,
    StatsRequest => StatsRequest,
    StatsReply => StatsReply,
    ExecRequest => ExecRequest,
    ExecReply => ExecReply,
    StreamOpen => StreamOpen,
    StreamData => StreamData,
    StreamWindow => StreamWindow,
    StreamClose => StreamClose,
    StreamExec => StreamExec,
);

/// A `PodSpec` body of this version (what a `SealedPod` seals).
pub fn pod_spec_body(spec: &PodSpec) -> Result<Vec<u8>, WireError> {
    body_bytes(Kind::DesiredPod, spec)
}

/// Decodes and validates a `PodSpec` body of `version` (a `DesiredPod`'s,
/// or what a `SealedPod` of that version opens to).
pub fn pod_spec_from_body(bytes: &[u8], version: u16) -> Result<PodSpec, WireError> {
    let kind = Kind::DesiredPod;
    // Versions 1 to 3 had the same `PodSpec`, which version 4 changed;
    // versions 9, 10, 11 and 12 appended fields. An older one is upgraded,
    // then validated as today's (once: the rules are today's).
    if version >= ROUTE_PRIORITY_SINCE_VERSION {
        return body(kind, bytes);
    }
    // Versions 1 to 11: today's layout without the fields later versions
    // appended (`model::added`); versions 1 to 3 ran their values
    // literally, which today's templates escape.
    let taken =
        crate::model::added::reading(version, || postcard::take_from_bytes::<PodSpec>(bytes)).map(
            |(mut spec, rest)| {
                if version < POD_FIELDS_SINCE_VERSION {
                    crate::model::expansion::escape_literals(&mut spec);
                }
                (spec, rest)
            },
        );
    let (spec, rest): (PodSpec, &[u8]) = taken.map_err(|e| malformed_body(kind, e))?;
    let valid = if rest.is_empty() {
        spec.validate()
    } else {
        Ok(())
    };
    checked_body(kind, rest.len(), valid)?;
    Ok(spec)
}

/// Decodes (and validates) a payload that must be a `T`, with its envelope
/// sequence: `wire::decode_as::<PodSpec>(payload)`.
pub fn decode_as<T: WireMessage>(payload: &[u8]) -> Result<(u64, T), WireError> {
    let env = decode(payload)?;
    let found = env.message.kind();
    T::from_message(env.message)
        .map(|v| (env.seq, v))
        .ok_or(WireError::WrongKind {
            expected: T::KIND.name(),
            found: found.name(),
        })
}

/// Decodes a retained payload where a tombstone means "none": `Ok(None)`
/// for an empty payload or a `Tombstone` envelope, else [`decode_as`].
pub fn decode_retained<T: WireMessage>(payload: &[u8]) -> Result<Option<(u64, T)>, WireError> {
    if is_tombstone(payload) {
        return Ok(None);
    }
    decode_as::<T>(payload).map(Some)
}

/// Turns any payload into JSON for humans (`kedge wire decode`).
pub fn to_json(payload: &[u8]) -> Result<serde_json::Value, WireError> {
    if payload.is_empty() {
        return Ok(serde_json::json!({ "tombstone": true }));
    }
    let env = decode(payload)?;
    let kind = env.message.kind().name();
    let body = match &env.message {
        Message::DesiredPod(v) => serde_json::to_value(v),
        Message::PodStatus(v) => serde_json::to_value(v),
        Message::NodeStatus(v) => serde_json::to_value(v),
        Message::Event(v) => serde_json::to_value(v),
        Message::LogRequest(v) => serde_json::to_value(v),
        Message::LogChunk(v) => serde_json::to_value(v),
        Message::DesiredIndex(v) => serde_json::to_value(v),
        Message::FleetDeployment(v) => serde_json::to_value(v),
        Message::FleetReport(v) => serde_json::to_value(v),
        Message::NodeLabels(v) => serde_json::to_value(v),
        Message::Tombstone => Ok(serde_json::Value::Null),
        Message::SealedPod(v) => Ok(serde_json::json!({
            "uid": v.uid,
            "key_id": hex::encode(v.key_id),
            "ciphertext_bytes": v.ciphertext.len(),
        })),
        Message::StatsRequest(v) => serde_json::to_value(v),
        Message::StatsReply(v) => serde_json::to_value(v),
        Message::ExecRequest(v) => serde_json::to_value(v),
        Message::ExecReply(v) => serde_json::to_value(v),
        Message::StreamOpen(v) => serde_json::to_value(v),
        Message::StreamData(v) => serde_json::to_value(v),
        Message::StreamWindow(v) => serde_json::to_value(v),
        Message::StreamClose(v) => serde_json::to_value(v),
        Message::StreamExec(v) => serde_json::to_value(v),
    }
    .map_err(|e| WireError::Encode {
        kind,
        detail: e.to_string(),
    })?;
    let mut json = serde_json::json!({
        "version": env.version,
        "kind": kind,
        "seq": env.seq,
        "body": body,
    });
    if let Some(sig) = open(payload)?.signature {
        json["signature"] = serde_json::json!({
            "key_id": hex::encode(sig.key_id),
            "counter": sig.counter,
            "expires_ms": sig.expires_ms,
            "signature": hex::encode(sig.signature),
        });
    }
    Ok(json)
}

// ---------------------------------------------------------------------------
// Topics

/// Topic names for one prefix. All per-node topics live under
/// `{prefix}/{node}/` so a broker ACL can confine a device to its subtree.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

/// What a topic under the prefix addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    Desired {
        node: String,
        pod: PodKey,
    },
    Reported {
        node: String,
        pod: PodKey,
    },
    Node {
        node: String,
    },
    Events {
        node: String,
    },
    RpcRequest {
        node: String,
        request_id: String,
    },
    RpcResponse {
        node: String,
        request_id: String,
    },
    /// An author's desired index (`bridge`, `cli`).
    Index {
        node: String,
        author: String,
    },
    /// The agent's own barrier topic.
    Sync {
        node: String,
    },
    /// A fleet deployment (`_fleet/{ns}/{name}`).
    Fleet {
        fleet: PodKey,
    },
    /// A fleet pod spec by digest (`_fleet-spec/{digest}`).
    FleetSpec {
        digest: String,
    },
    /// A device's report on a fleet deployment.
    FleetReport {
        node: String,
        fleet: PodKey,
    },
    /// The labels the cloud sets on a device.
    Labels {
        node: String,
    },
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix: String = prefix.into();
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn desired(&self, node: &str, pod: &PodKey) -> String {
        format!(
            "{}/{node}/desired/{}/{}",
            self.prefix, pod.namespace, pod.name
        )
    }
    pub fn desired_filter(&self, node: &str) -> String {
        format!("{}/{node}/desired/#", self.prefix)
    }
    pub fn reported(&self, node: &str, pod: &PodKey) -> String {
        format!(
            "{}/{node}/reported/{}/{}",
            self.prefix, pod.namespace, pod.name
        )
    }
    /// `node` may be `+` for every node.
    pub fn reported_filter(&self, node: &str) -> String {
        format!("{}/{node}/reported/#", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}/{node}/node", self.prefix)
    }
    pub fn events(&self, node: &str) -> String {
        format!("{}/{node}/events", self.prefix)
    }
    /// Sealed workload data batches (docs/wire.md, "Data path"); `node` may
    /// be `+` for every node.
    pub fn data(&self, node: &str) -> String {
        format!("{}/{node}/data", self.prefix)
    }
    pub fn rpc_request(&self, node: &str, request_id: &str) -> String {
        format!("{}/{node}/rpc/req/{request_id}", self.prefix)
    }
    pub fn rpc_request_filter(&self, node: &str) -> String {
        format!("{}/{node}/rpc/req/+", self.prefix)
    }
    /// The barrier topic of a short-lived client (CLI, bridge): a message it
    /// publishes there comes back after every retained message of its
    /// earlier subscriptions (docs/wire.md, "Barrier").
    pub fn barrier(&self, client_id: &str) -> String {
        format!("{}/_cli/{client_id}/barrier", self.prefix)
    }
    pub fn rpc_response(&self, node: &str, request_id: &str) -> String {
        format!("{}/{node}/rpc/res/{request_id}", self.prefix)
    }
    /// The desired index of one author for a node.
    pub fn index(&self, node: &str, author: &str) -> String {
        format!("{}/{node}/index/{author}", self.prefix)
    }
    pub fn index_filter(&self, node: &str) -> String {
        format!("{}/{node}/index/+", self.prefix)
    }
    /// The agent's barrier: it publishes a nonce here after subscribing.
    pub fn sync(&self, node: &str) -> String {
        format!("{}/{node}/sync", self.prefix)
    }

    /// A fleet deployment (devices read every one: `fleet_filter`).
    pub fn fleet(&self, fleet: &PodKey) -> String {
        format!("{}/_fleet/{}/{}", self.prefix, fleet.namespace, fleet.name)
    }
    pub fn fleet_filter(&self) -> String {
        format!("{}/_fleet/+/+", self.prefix)
    }
    /// A fleet's pod spec, addressed by the sha256 of its payload.
    pub fn fleet_spec(&self, digest: &str) -> String {
        format!("{}/_fleet-spec/{digest}", self.prefix)
    }
    /// A device's report on one fleet deployment; `node` may be `+`.
    pub fn fleet_report(&self, node: &str, fleet: &PodKey) -> String {
        format!(
            "{}/{node}/fleet/{}/{}",
            self.prefix, fleet.namespace, fleet.name
        )
    }
    pub fn fleet_report_filter(&self, node: &str) -> String {
        format!("{}/{node}/fleet/#", self.prefix)
    }
    /// The labels the cloud sets on a device.
    pub fn labels(&self, node: &str) -> String {
        format!("{}/{node}/labels", self.prefix)
    }

    /// Parses a topic under this prefix; `None` for anything else.
    pub fn parse(&self, topic: &str) -> Option<TopicKind> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let node = parts.first()?.to_string();
        match parts.as_slice() {
            ["_fleet", ns, name] => Some(TopicKind::Fleet {
                fleet: PodKey::new(*ns, *name),
            }),
            ["_fleet-spec", digest] => Some(TopicKind::FleetSpec {
                digest: digest.to_string(),
            }),
            [_, "fleet", ns, name] => Some(TopicKind::FleetReport {
                node,
                fleet: PodKey::new(*ns, *name),
            }),
            [_, "labels"] => Some(TopicKind::Labels { node }),
            [_, "desired", ns, name] => Some(TopicKind::Desired {
                node,
                pod: PodKey::new(*ns, *name),
            }),
            [_, "reported", ns, name] => Some(TopicKind::Reported {
                node,
                pod: PodKey::new(*ns, *name),
            }),
            [_, "node"] => Some(TopicKind::Node { node }),
            [_, "events"] => Some(TopicKind::Events { node }),
            [_, "rpc", "req", id] => Some(TopicKind::RpcRequest {
                node,
                request_id: id.to_string(),
            }),
            [_, "rpc", "res", id] => Some(TopicKind::RpcResponse {
                node,
                request_id: id.to_string(),
            }),
            [_, "index", author] => Some(TopicKind::Index {
                node,
                author: author.to_string(),
            }),
            [_, "sync"] => Some(TopicKind::Sync { node }),
            _ => None,
        }
    }
}

/// The `PodSpec` of versions 1 to 3, field for field, for the tests that
/// write one (decoding needs no copy of it: `model::added`).
#[cfg(test)]
pub(crate) mod v3;

/// The `PodSpec` of versions 4 to 8, field for field, for the tests that
/// write one (decoding needs no copy of it: `model::added`).
#[cfg(test)]
pub(crate) mod v8;

/// The `PodSpec` of version 9, field for field, for the tests that write
/// one (decoding needs no copy of it: `model::added`).
#[cfg(test)]
pub(crate) mod v9;

/// The `PodSpec` of version 10, field for field, and the `SecurityContext`
/// and `PodSecurity` of versions before 11, for the tests that write one
/// (decoding needs no copy of them: `model::added`).
#[cfg(test)]
pub(crate) mod v10;

/// Node names and namespaces become topic levels: they must not contain MQTT
/// wildcards or separators.
pub fn valid_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte fields marked `serde(with = "serde_bytes")` (stream and log
    /// chunks, payloads, sealed batches) are the same postcard bytes as a
    /// `Vec<u8>`, so marking them changed nothing on the wire or on disk
    /// (the vectors prove it too); JSON (`kedge wire decode`) still has
    /// arrays of numbers, and a truncated blob is an error.
    #[test]
    fn byte_fields_are_a_vec_of_u8s_bytes_in_postcard_and_numbers_in_json() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Blob {
            #[serde(with = "serde_bytes")]
            data: Vec<u8>,
            after: u8,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Seq {
            data: Vec<u8>,
            after: u8,
        }
        for len in [0usize, 1, 127, 128, 300, 32 * 1024, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let blob = Blob {
                data: data.clone(),
                after: 9,
            };
            let bytes = postcard::to_stdvec(&blob).expect("encodes");
            let seq = postcard::to_stdvec(&Seq { data, after: 9 }).expect("encodes");
            assert_eq!(bytes, seq, "{len} bytes");
            assert_eq!(postcard::from_bytes::<Blob>(&bytes), Ok(blob));
        }
        let json = serde_json::to_string(&Blob {
            data: vec![1, 2, 255],
            after: 0,
        })
        .expect("json");
        assert_eq!(json, r#"{"data":[1,2,255],"after":0}"#);
        let back: Blob = serde_json::from_str(&json).expect("reads");
        assert_eq!(back.data, vec![1, 2, 255]);
        assert!(
            postcard::from_bytes::<Blob>(&[5, 1, 2]).is_err(),
            "truncated"
        );
    }

    #[test]
    fn topics_round_trip() {
        let t = Topics::new("kedge/v1/");
        let pod = PodKey::new("default", "web");
        assert_eq!(t.desired("gw1", &pod), "kedge/v1/gw1/desired/default/web");
        assert_eq!(
            t.parse(&t.desired("gw1", &pod)),
            Some(TopicKind::Desired {
                node: "gw1".into(),
                pod: pod.clone()
            })
        );
        assert_eq!(
            t.parse(&t.reported("gw1", &pod)),
            Some(TopicKind::Reported {
                node: "gw1".into(),
                pod
            })
        );
        assert_eq!(
            t.parse(&t.node("gw1")),
            Some(TopicKind::Node { node: "gw1".into() })
        );
        assert_eq!(
            t.parse(&t.rpc_request("gw1", "r1")),
            Some(TopicKind::RpcRequest {
                node: "gw1".into(),
                request_id: "r1".into()
            })
        );
        assert_eq!(
            t.parse(&t.index("gw1", "cli")),
            Some(TopicKind::Index {
                node: "gw1".into(),
                author: "cli".into()
            })
        );
        assert_eq!(t.index_filter("gw1"), "kedge/v1/gw1/index/+");
        assert_eq!(
            t.parse(&t.sync("gw1")),
            Some(TopicKind::Sync { node: "gw1".into() })
        );
        let fleet = PodKey::new("default", "sensors");
        assert_eq!(t.fleet(&fleet), "kedge/v1/_fleet/default/sensors");
        assert_eq!(
            t.parse(&t.fleet(&fleet)),
            Some(TopicKind::Fleet {
                fleet: fleet.clone()
            })
        );
        assert_eq!(
            t.parse(&t.fleet_spec("ab12")),
            Some(TopicKind::FleetSpec {
                digest: "ab12".into()
            })
        );
        assert_eq!(
            t.parse(&t.fleet_report("gw1", &fleet)),
            Some(TopicKind::FleetReport {
                node: "gw1".into(),
                fleet
            })
        );
        assert_eq!(
            t.parse(&t.labels("gw1")),
            Some(TopicKind::Labels { node: "gw1".into() })
        );
        assert_eq!(t.parse("kedge/v1/gw1/desired/default"), None);
        assert_eq!(t.parse("other/gw1/node"), None);
        assert_eq!(t.parse("kedge/v1//node"), None);
    }

    #[test]
    fn garbage_never_panics() {
        for payload in [
            &b""[..],
            &[0xff][..],
            &[1][..],
            &[1, 2, 3, 4, 5, 6, 7, 8][..],
            &[0xff; 64][..],
        ] {
            assert!(decode(payload).is_err());
        }
        // Every prefix of a valid payload is rejected without a panic.
        let ev = Event {
            namespace: None,
            pod: None,
            container: None,
            kind: crate::model::EventType::Normal,
            reason: "R".into(),
            message: "m".into(),
            timestamp_ms: 1,
        };
        let bytes = encode(3, &Message::Event(ev)).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "prefix {cut} decoded");
        }
    }

    #[test]
    fn envelope_matches_postcard() {
        let ev = Event {
            namespace: None,
            pod: None,
            container: None,
            kind: crate::model::EventType::Normal,
            reason: "R".repeat(200),
            message: "m".into(),
            timestamp_ms: 1,
        };
        let message = Message::Event(ev);
        let body = Body::of(&message).expect("encodes");
        for seq in [0, 1, 127, 128, 300, u64::from(u32::MAX) + 7, u64::MAX] {
            let raw = RawEnvelope {
                version: SCHEMA_VERSION,
                kind: Kind::Event as u8,
                seq,
                signature: vec![],
                body: body.bytes.clone(),
            };
            let expected = postcard::to_stdvec(&raw).expect("encodes");
            assert_eq!(body.envelope(seq), expected, "seq {seq}");
        }
    }

    #[test]
    fn invalid_bodies_are_refused_at_decode() {
        let mut spec = crate::model::samples::spec(
            "web",
            "x/../../..",
            1,
            crate::model::RestartPolicy::Always,
        );
        spec.containers
            .push(crate::model::samples::container("main"));
        let bytes = encode(1, &Message::DesiredPod(spec)).expect("encodes");
        match decode(&bytes) {
            Err(WireError::Invalid { kind, invalid }) => {
                assert_eq!(kind, "DesiredPod");
                assert_eq!(invalid.field, "metadata.uid");
            }
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn unknown_version_is_reported() {
        let raw = RawEnvelope {
            version: SCHEMA_VERSION + 1,
            kind: 1,
            seq: 0,
            signature: vec![],
            body: vec![],
        };
        let bytes = postcard::to_stdvec(&raw).expect("encodes");
        assert_eq!(
            decode(&bytes),
            Err(WireError::UnknownVersion {
                found: SCHEMA_VERSION + 1
            })
        );
    }

    #[test]
    fn unknown_kind_is_reported() {
        let raw = RawEnvelope {
            version: SCHEMA_VERSION,
            kind: 99,
            seq: 0,
            signature: vec![],
            body: vec![],
        };
        let bytes = postcard::to_stdvec(&raw).expect("encodes");
        assert_eq!(decode(&bytes), Err(WireError::UnknownKind(99)));
    }
}
