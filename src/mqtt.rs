//! The agent's MQTT session: one persistent session to the broker (clean
//! session off, last will), reconnecting with capped exponential back-off
//! and jitter, and the outbox drained in order on every connection.
//!
//! How acknowledgements are matched to outbox entries: each connection gets
//! a fresh rumqttc `EventLoop` and `AsyncClient`, so the requests of one
//! connection never leak into the next. The session is the only publisher,
//! and rumqttc reports `Outgoing::Publish(pkid)` in the order requests were
//! made, so a queue of tags (outbox id or none) maps packet ids to entries;
//! `PubAck(pkid)` then deletes exactly that entry. Entries are re-sent from
//! the oldest unacknowledged one after every reconnect (at-least-once; the
//! receivers drop duplicates by sequence number).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    StateError, Transport,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{BrokerConfig, BrokerUrl, Config, ConfigError};
use crate::store::Store;

/// At most this many outbox entries are unacknowledged at once.
const OUTBOX_WINDOW: usize = 32;

/// The largest MQTT packet the agent reads (and the CLI and bridge accept).
/// The documented broker configuration caps packets below it
/// (`max_packet_size` in docs/wire.md), so it is only reached through a
/// misconfigured broker.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// A connection that lasted this long counts as stable: the reconnect
/// back-off starts again from its initial delay. Shorter ones keep growing
/// it, so a broker that closes every connection at once is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Broker-side closes this close together mean another client is taking
/// the session over (MQTT 3.1.1 says nothing when it does).
const TAKEOVER_CLOSES: u32 = 3;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("invalid TLS settings: {0}")]
    Config(String),
}

/// Builds rustls client settings from the broker configuration.
pub fn tls_config(b: &BrokerConfig) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file_err = |what: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    match &b.ca_file {
        Some(path) => {
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| file_err("CA file", path, &e))?
            {
                let cert = cert.map_err(|e| file_err("CA file", path, &e))?;
                roots.add(cert).map_err(|e| file_err("CA file", path, &e))?;
            }
            if roots.is_empty() {
                return Err(file_err("CA file", path, &"no certificates found"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&b.cert_file, &b.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err("client certificate", cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err("client certificate", cert, &e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("client key", key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// MQTT options for a URL and broker settings (shared by agent and CLI).
pub fn mqtt_options(
    url: &BrokerUrl,
    broker: &BrokerConfig,
    client_id: &str,
) -> Result<MqttOptions, TlsError> {
    let mut opts = MqttOptions::new(client_id, url.host.clone(), url.port);
    opts.set_keep_alive(Duration::from_secs(broker.keep_alive_secs.max(5)));
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if url.tls {
        let config = tls_config(broker)?;
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    if let Some(user) = &broker.username {
        let password = match &broker.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| TlsError::File {
                    what: "password file",
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
                .trim_end()
                .to_string(),
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(opts)
}

/// Why a client's options could not be made.
#[derive(Debug, Error)]
pub enum OptionsError {
    #[error(transparent)]
    Url(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Options for a client that keeps no session (the CLI, the bridge): the
/// configured broker, or the embedded broker's address when none is set.
/// Returns the broker URL too, for messages.
pub fn clean_session_options(
    config: &Config,
    client_id: &str,
) -> Result<(String, MqttOptions), OptionsError> {
    crate::tls::install_crypto_provider();
    let url = config
        .broker
        .url
        .clone()
        .unwrap_or_else(|| format!("mqtt://{}", config.embedded_broker.listen));
    let mut opts = mqtt_options(&BrokerUrl::parse(&url)?, &config.broker, client_id)?;
    opts.set_clean_session(true);
    Ok((url, opts))
}

/// The delay before reconnect attempt `attempt` (0-based): `initial`
/// doubling, spread by ±25 % with `jitter` in [0, 1), and never above `max`
/// (the cap applies after the jitter).
pub fn reconnect_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let base = initial.saturating_mul(factor).min(max);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0)).min(max)
}

/// Why a connection ended, as far as the session can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker sent a packet larger than [`MAX_PACKET_BYTES`]: it cannot
    /// be read, and a retained or queued one comes back on every connection.
    Oversized {
        bytes: usize,
    },
    /// The broker closed the connection. In MQTT 3.1.1 this is also how a
    /// second client with the same client id takes the session over.
    ClosedByBroker,
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Oversized { bytes } => write!(
                f,
                "the broker sent a message of {bytes} bytes, larger than the {MAX_PACKET_BYTES} bytes this client reads"
            ),
            Failure::ClosedByBroker => write!(f, "the broker closed the connection"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

fn classify(e: &ConnectionError) -> Failure {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(bytes),
        )) => Failure::Oversized { bytes: *bytes },
        ConnectionError::MqttState(StateError::ConnectionAborted) => Failure::ClosedByBroker,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Failure::ClosedByBroker
        }
        other => Failure::Other(other.to_string()),
    }
}

/// What the session does after a connection ended: pure, so the rules are
/// unit-tested without a broker or a clock.
#[derive(Debug)]
pub struct Recovery {
    /// Reconnect attempts since the last stable connection.
    attempt: u32,
    /// Consecutive connections the broker closed before they were stable.
    quick_closes: u32,
    /// While set, connections leave out the subscriptions that brought a
    /// message too large to read, until this instant.
    degraded_until: Option<tokio::time::Instant>,
    /// How long the last degraded period lasted (the next one doubles it,
    /// up to an hour).
    degraded_for: Duration,
    /// The first degraded period (`broker.unreadable_retry_ms`).
    degraded_initial: Duration,
}

/// The verdict on one ended connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterFailure {
    /// Reconnect attempt number for `reconnect_delay`.
    pub attempt: u32,
    /// Tell the owner: a message could not be read (bytes).
    pub oversized: Option<usize>,
    /// Tell the owner: the session is probably being taken over
    /// (consecutive quick closes).
    pub taken_over: Option<u32>,
}

impl Recovery {
    pub fn new(degraded_initial: Duration) -> Recovery {
        Recovery {
            attempt: 0,
            quick_closes: 0,
            degraded_until: None,
            degraded_for: Duration::ZERO,
            degraded_initial,
        }
    }

    /// `lasted`: how long the connection was up after its CONNACK (None if
    /// it never connected).
    pub fn on_failure(
        &mut self,
        failure: &Failure,
        lasted: Option<Duration>,
        now: tokio::time::Instant,
    ) -> AfterFailure {
        let stable = lasted.is_some_and(|d| d >= STABLE_AFTER);
        if stable {
            self.attempt = 0;
        }
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        let mut verdict = AfterFailure {
            attempt,
            oversized: None,
            taken_over: None,
        };
        match failure {
            Failure::Oversized { bytes } => {
                self.quick_closes = 0;
                let hour = Duration::from_secs(3600);
                self.degraded_for = (self.degraded_for * 2)
                    .max(self.degraded_initial)
                    .min(hour.max(self.degraded_initial));
                self.degraded_until = Some(now + self.degraded_for);
                verdict.oversized = Some(*bytes);
            }
            Failure::ClosedByBroker if lasted.is_some() && !stable => {
                self.quick_closes += 1;
                if self.quick_closes >= TAKEOVER_CLOSES {
                    verdict.taken_over = Some(self.quick_closes);
                }
            }
            _ if stable => self.quick_closes = 0,
            _ => {}
        }
        verdict
    }

    /// When the current pause of the left-out subscriptions ends.
    pub fn degraded_until(&self) -> Option<tokio::time::Instant> {
        self.degraded_until
    }

    /// Whether the next connection leaves out the subscriptions that
    /// brought a message too large to read.
    pub fn degraded(&mut self, now: tokio::time::Instant) -> bool {
        match self.degraded_until {
            Some(t) if now < t => true,
            Some(_) => {
                self.degraded_until = None;
                false
            }
            None => false,
        }
    }
}

/// Fault hook for tests, named as one: with `KEDGE_FAULT_ABORT_AFTER_DELETE_ACK=1`
/// the process aborts as soon as the PUBACK of a tombstone on a desired topic
/// has been written to the broker, the narrowest window a kill -9 can hit
/// after a delete was acknowledged. Read once; documented in ARCHITECTURE.md.
fn fault_abort_after_delete_ack() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KEDGE_FAULT_ABORT_AFTER_DELETE_ACK").is_ok_and(|v| v == "1"))
}

/// Lets the receiver of a QoS 1 message acknowledge it once it is safe.
#[derive(Debug, Clone)]
pub struct AckToken {
    connection: u64,
    publish: rumqttc::Publish,
}

#[cfg(test)]
impl AckToken {
    /// A token for a message handed over by a test that plays the session
    /// (`agent::controller_tests`).
    pub(crate) fn for_test(topic: &str) -> AckToken {
        AckToken {
            connection: 0,
            publish: rumqttc::Publish::new(topic, QoS::AtLeastOnce, Vec::new()),
        }
    }

    /// The topic of the message it acknowledges.
    pub(crate) fn topic(&self) -> &str {
        &self.publish.topic
    }
}

/// What the session tells its owner.
#[derive(Debug)]
pub enum SessionEvent {
    /// `degraded`: the subscriptions in `SessionSettings::dropped_when_oversized`
    /// are left out on this connection (a message too large to read blocks them).
    Connected { degraded: bool },
    /// The connection ended. With [`Reconnect::Never`] this is the last
    /// event (also when the first connection never came up).
    Disconnected { error: String },
    /// A message larger than [`MAX_PACKET_BYTES`] could not be read; the
    /// session leaves the subscriptions that bring it out for a while.
    Oversized { bytes: usize },
    /// The broker keeps closing the connection right after it is made:
    /// probably another client with the same client id.
    TakenOver { client_id: String, closes: u32 },
    /// `ack` is set for QoS 1 and 2 messages when the owner acknowledges
    /// them itself (`SessionSettings::manual_acks`).
    Message {
        topic: String,
        payload: Vec<u8>,
        ack: Option<AckToken>,
    },
    /// This connection's barrier came back: every retained message of the
    /// subscriptions (and everything queued in the session) has been handed
    /// over before this event.
    Synced,
}

/// What the owner asks of the session.
#[derive(Debug)]
pub enum SessionCommand {
    /// New outbox entries were committed.
    OutboxChanged,
    /// Publish outside the outbox (heartbeats, log chunks); dropped while
    /// disconnected.
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        qos: QoS,
    },
    /// Publish at QoS 1 and answer on `done` when the broker acknowledged
    /// it. `done` is dropped unanswered when the publish is not made (not
    /// connected) or its connection ends before the acknowledgement.
    PublishAcked {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        done: oneshot::Sender<()>,
    },
    Ack(AckToken),
    /// Subscribe (QoS 1) now and on every later connection, until
    /// `Unsubscribe`: the fleet specs a device waits for, a log stream.
    Subscribe(String),
    Unsubscribe(String),
    /// The barrier on demand (needs `SessionSettings::sync_topic`):
    /// subscribe to `resubscribe` again (the broker sends their retained
    /// messages again; they stay subscribed) and to `read_once` (left again
    /// when the barrier comes back), then publish a fresh nonce:
    /// `SessionEvent::Synced` follows once all of it has arrived. Nothing
    /// while disconnected (the next connection has its own barrier).
    Sync {
        resubscribe: Vec<String>,
        read_once: Vec<String>,
    },
    /// End the session now: a DISCONNECT after every request queued
    /// before it (with `SessionSettings::goodbye`), and no reconnect.
    Close,
}

/// What the session does when a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Again and again, after `reconnect_delay(attempt, initial, max, jitter)`
    /// (the agent, the bridge).
    Backoff { initial: Duration, max: Duration },
    /// Never: the session ends after `SessionEvent::Disconnected` (a
    /// short-lived client, the CLI).
    Never,
}

/// Looks at every incoming publish before it becomes a
/// `SessionEvent::Message`; returns true to consume it (the log RPC's
/// responses, routed to their readers). Only for sessions with automatic
/// acks: a consumed message has no ack token.
pub type Tap = Box<dyn FnMut(&str, &[u8]) -> bool + Send>;

/// Where the session's events go. Unbounded: the owner never waits for
/// the session (the agent). Bounded: a burst waits in the broker's socket
/// rather than in memory, since the session stops reading while the owner
/// is behind (the bridge).
pub enum EventTx {
    Unbounded(mpsc::UnboundedSender<SessionEvent>),
    Bounded(mpsc::Sender<SessionEvent>),
}

impl From<mpsc::UnboundedSender<SessionEvent>> for EventTx {
    fn from(tx: mpsc::UnboundedSender<SessionEvent>) -> EventTx {
        EventTx::Unbounded(tx)
    }
}

impl From<mpsc::Sender<SessionEvent>> for EventTx {
    fn from(tx: mpsc::Sender<SessionEvent>) -> EventTx {
        EventTx::Bounded(tx)
    }
}

impl EventTx {
    async fn send(&self, event: SessionEvent) {
        let _ = match self {
            EventTx::Unbounded(tx) => tx.send(event).map_err(drop),
            EventTx::Bounded(tx) => tx.send(event).await.map_err(drop),
        };
    }

    fn bounded(&self) -> bool {
        matches!(self, EventTx::Bounded(_))
    }
}

pub struct SessionSettings {
    pub options: MqttOptions,
    /// A clean session (the CLI, the bridge) or a persistent one that the
    /// broker keeps across connections (the agent).
    pub clean_session: bool,
    /// The owner acknowledges QoS 1 messages (`SessionCommand::Ack`) once
    /// they are safe; otherwise rumqttc acknowledges them on receipt.
    pub manual_acks: bool,
    pub subscriptions: Vec<(String, QoS)>,
    /// Filters of `subscriptions` left out (with a clean session, which
    /// drops a queued copy) while a message too large to read blocks them.
    /// Empty: such a message is reported and the connection made again
    /// with every subscription.
    pub dropped_when_oversized: Vec<String>,
    /// Filters subscribed on every connection before its barrier and left
    /// when it comes back: retained messages read once (the bridge reads
    /// retained reports this way beside a shared subscription, which gets
    /// none).
    pub read_once: Vec<String>,
    /// A topic of the owner's own subtree, also among `subscriptions`: after
    /// subscribing, the session publishes a fresh nonce there (QoS 1); the
    /// broker handles one client's packets in order, so when it comes back
    /// every retained message has arrived (`SessionEvent::Synced`). Not on
    /// a degraded connection (its retained state is incomplete on purpose);
    /// once the left-out subscriptions are made, a new nonce follows them.
    /// `SessionCommand::Sync` publishes one on demand.
    pub sync_topic: Option<String>,
    pub last_will: Option<LastWill>,
    pub reconnect: Reconnect,
    /// The first pause of the `dropped_when_oversized` subscriptions.
    pub unreadable_retry: Duration,
    /// Requests rumqttc queues for one connection.
    pub request_capacity: usize,
    /// When the owner closes the session, its DISCONNECT is written before
    /// the session ends (the CLI). Off for the agent, whose last will says
    /// it went away.
    pub goodbye: bool,
    pub tap: Option<Tap>,
}

impl SessionSettings {
    /// A clean session with automatic acks and no subscriptions, barrier,
    /// will or tap, reconnecting with `broker`'s back-off: the base of the
    /// CLI's and the bridge's sessions.
    pub fn clean(options: MqttOptions, broker: &BrokerConfig) -> SessionSettings {
        SessionSettings {
            options,
            clean_session: true,
            manual_acks: false,
            subscriptions: Vec::new(),
            dropped_when_oversized: Vec::new(),
            read_once: Vec::new(),
            sync_topic: None,
            last_will: None,
            reconnect: Reconnect::Backoff {
                initial: Duration::from_millis(broker.reconnect_initial_ms.max(1)),
                max: Duration::from_millis(broker.reconnect_max_ms.max(1)),
            },
            unreadable_retry: Duration::from_millis(broker.unreadable_retry_ms.max(1)),
            request_capacity: 4096,
            goodbye: false,
            tap: None,
        }
    }
}

enum Internal {
    Event(u64, Event),
    Failed(u64, Failure),
}

/// The channel from a connection's event-loop task to the session: bounded
/// when the owner's is, so that a slow owner stops the reading.
enum InternalTx {
    Unbounded(mpsc::UnboundedSender<Internal>),
    Bounded(mpsc::Sender<Internal>),
}

enum InternalRx {
    Unbounded(mpsc::UnboundedReceiver<Internal>),
    Bounded(mpsc::Receiver<Internal>),
}

impl InternalTx {
    async fn send(&self, m: Internal) -> Result<(), ()> {
        match self {
            InternalTx::Unbounded(tx) => tx.send(m).map_err(drop),
            InternalTx::Bounded(tx) => tx.send(m).await.map_err(drop),
        }
    }
}

impl Clone for InternalTx {
    fn clone(&self) -> InternalTx {
        match self {
            InternalTx::Unbounded(tx) => InternalTx::Unbounded(tx.clone()),
            InternalTx::Bounded(tx) => InternalTx::Bounded(tx.clone()),
        }
    }
}

impl InternalRx {
    async fn recv(&mut self) -> Option<Internal> {
        match self {
            InternalRx::Unbounded(rx) => rx.recv().await,
            InternalRx::Bounded(rx) => rx.recv().await,
        }
    }
}

/// What a publish request stands for, kept in request order and then by
/// packet id until its PUBACK.
enum Tag {
    /// Nothing to do on the ack.
    Plain,
    /// An outbox entry: deleted on the ack.
    Outbox(u64),
    /// `SessionCommand::PublishAcked`: answered on the ack.
    Notify(oneshot::Sender<()>),
}

struct Connection {
    id: u64,
    client: AsyncClient,
    connected: bool,
    /// When the CONNACK arrived.
    connected_at: Option<tokio::time::Instant>,
    /// One tag per publish request, in request order.
    tags: VecDeque<Tag>,
    /// Packet id → tag of QoS 1 publishes awaiting PUBACK.
    inflight: HashMap<u16, Tag>,
    /// Highest outbox id sent on this connection.
    sent_upto: u64,
    outstanding: usize,
    /// Packet ids of tombstone acks the fault hook aborts after.
    abort_after_ack: Vec<u16>,
    /// The barrier nonce of this connection.
    nonce: Vec<u8>,
    /// Filters to leave when the barrier comes back.
    read_once: Vec<String>,
    /// The task driving this connection's event loop.
    drive: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Subscribes to `read_once` (remembered until the barrier) and
    /// publishes a fresh nonce on `sync`: the barrier.
    fn barrier(&mut self, sync: &str, read_once: &[String]) {
        for f in read_once {
            if !self.read_once.contains(f) {
                self.read_once.push(f.clone());
            }
            let _ = self.client.try_subscribe(f.clone(), QoS::AtLeastOnce);
        }
        self.nonce = format!("{}-{:016x}", self.id, fastrand::u64(..)).into_bytes();
        if self
            .client
            .try_publish(
                sync.to_string(),
                QoS::AtLeastOnce,
                false,
                self.nonce.clone(),
            )
            .is_ok()
        {
            self.tags.push_back(Tag::Plain);
        }
    }
}

/// Runs the session until `commands` closes, or (with [`Reconnect::Never`])
/// its connection ends. `outbox`: the store whose outbox the session drains
/// (the agent); none for the others.
pub async fn run(
    mut settings: SessionSettings,
    outbox: Option<Arc<Store>>,
    mut commands: mpsc::UnboundedReceiver<SessionCommand>,
    events: impl Into<EventTx>,
) {
    let events: EventTx = events.into();
    settings.options.set_clean_session(settings.clean_session);
    settings.options.set_manual_acks(settings.manual_acks);
    if let Some(will) = settings.last_will.take() {
        settings.options.set_last_will(will);
    }
    let (internal_tx, mut internal_rx) = if events.bounded() {
        let (tx, rx) = mpsc::channel::<Internal>(256);
        (InternalTx::Bounded(tx), InternalRx::Bounded(rx))
    } else {
        let (tx, rx) = mpsc::unbounded_channel::<Internal>();
        (InternalTx::Unbounded(tx), InternalRx::Unbounded(rx))
    };
    let mut next_id = 0u64;
    let mut recovery = Recovery::new(settings.unreadable_retry);
    let mut degraded = false;
    let mut conn: Option<Connection> = None;
    let mut reconnect_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    // Subscriptions the owner asked for at run time (`SessionCommand::Subscribe`).
    let mut extra: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

    loop {
        let sleep_until =
            reconnect_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // While degraded and connected: when the pause ends, subscribe to
        // what was left out on the live connection (if the message is still
        // there, it fails again and the next pause is longer).
        let resume_at = recovery
            .degraded_until()
            .filter(|_| degraded && conn.as_ref().is_some_and(|c| c.connected));
        tokio::select! {
            _ = tokio::time::sleep_until(resume_at.unwrap_or(sleep_until)), if resume_at.is_some() => {
                degraded = false;
                if let Some(c) = conn.as_mut() {
                    info!("reading the subscriptions left out after a message too large to read");
                    for (topic, qos) in &settings.subscriptions {
                        if settings.dropped_when_oversized.contains(topic) {
                            let _ = c.client.try_subscribe(topic.clone(), *qos);
                        }
                    }
                    // The retained state is complete only now.
                    if let Some(sync) = &settings.sync_topic {
                        c.barrier(sync, &[]);
                    }
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if reconnect_at.is_some() => {
                reconnect_at = None;
                next_id += 1;
                // Degraded only if there is something to leave out.
                degraded = recovery.degraded(tokio::time::Instant::now())
                    && !settings.dropped_when_oversized.is_empty();
                let mut options = settings.options.clone();
                if degraded {
                    // A clean session drops the copy the broker queued for
                    // the old one; the retained one is not asked for.
                    options.set_clean_session(true);
                }
                let (client, mut eventloop) = AsyncClient::new(options, settings.request_capacity);
                // Small messages both ways: without this, Nagle's algorithm and
                // delayed ACKs add ~40 ms to every exchange.
                eventloop.network_options.set_tcp_nodelay(true);
                for (topic, qos) in &settings.subscriptions {
                    if degraded && settings.dropped_when_oversized.contains(topic) {
                        continue;
                    }
                    let _ = client.try_subscribe(topic.clone(), *qos);
                }
                for topic in &extra {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                let drive = crate::spawn(drive(eventloop, next_id, internal_tx.clone()));
                let mut c = Connection {
                    id: next_id,
                    client,
                    connected: false,
                    connected_at: None,
                    tags: VecDeque::new(),
                    inflight: HashMap::new(),
                    sent_upto: 0,
                    outstanding: 0,
                    abort_after_ack: Vec::new(),
                    // Replaced by the barrier; never empty, so that an
                    // empty payload on the sync topic is never taken for it.
                    nonce: format!("{next_id}-{:016x}", fastrand::u64(..)).into_bytes(),
                    read_once: Vec::new(),
                    drive,
                };
                if let Some(sync) = settings.sync_topic.as_ref().filter(|_| !degraded) {
                    c.barrier(sync, &settings.read_once);
                }
                conn = Some(c);
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                // Run-time subscriptions are remembered for later connections.
                let cmd = match cmd {
                    SessionCommand::Close => break,
                    SessionCommand::Subscribe(topic) => {
                        if extra.insert(topic.clone()) && let Some(c) = conn.as_mut().filter(|c| c.connected) {
                            let _ = c.client.try_subscribe(topic, QoS::AtLeastOnce);
                        }
                        continue;
                    }
                    SessionCommand::Unsubscribe(topic) => {
                        if extra.remove(&topic) && let Some(c) = conn.as_mut().filter(|c| c.connected) {
                            let _ = c.client.try_unsubscribe(topic);
                        }
                        continue;
                    }
                    other => other,
                };
                let Some(c) = conn.as_mut().filter(|c| c.connected) else { continue };
                match cmd {
                    SessionCommand::OutboxChanged => fill(c, outbox.as_deref()),
                    SessionCommand::Publish { topic, payload, retain, qos } => {
                        if c.client.try_publish(topic, qos, retain, payload).is_ok() {
                            c.tags.push_back(Tag::Plain);
                        }
                    }
                    SessionCommand::PublishAcked { topic, payload, retain, done } => {
                        if c.client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok() {
                            c.tags.push_back(Tag::Notify(done));
                        }
                    }
                    SessionCommand::Ack(token) => {
                        if token.connection == c.id {
                            let p = &token.publish;
                            if fault_abort_after_delete_ack() && p.payload.is_empty() && p.topic.contains("/desired/") {
                                c.abort_after_ack.push(p.pkid);
                            }
                            let _ = c.client.try_ack(p);
                        }
                    }
                    SessionCommand::Sync { resubscribe, read_once } => {
                        for f in resubscribe {
                            let _ = c.client.try_subscribe(f, QoS::AtLeastOnce);
                        }
                        match &settings.sync_topic {
                            Some(sync) if !degraded => c.barrier(sync, &read_once),
                            // The barrier after the resumed subscriptions covers it.
                            _ => {}
                        }
                    }
                    SessionCommand::Subscribe(_) | SessionCommand::Unsubscribe(_) | SessionCommand::Close => {}
                }
            }
            Some(internal) = internal_rx.recv() => match internal {
                Internal::Event(id, event) => {
                    let Some(c) = conn.as_mut().filter(|c| c.id == id) else { continue };
                    match event {
                        Event::Incoming(Incoming::ConnAck(ack)) => {
                            info!(session_present = ack.session_present, degraded, "connected to broker");
                            c.connected = true;
                            c.connected_at = Some(tokio::time::Instant::now());
                            events.send(SessionEvent::Connected { degraded }).await;
                            fill(c, outbox.as_deref());
                        }
                        Event::Incoming(Incoming::Publish(p)) if settings.sync_topic.as_deref() == Some(p.topic.as_str()) => {
                            if settings.manual_acks {
                                let _ = c.client.try_ack(&p);
                            }
                            // A nonce of an earlier connection or request is stale.
                            if p.payload[..] == c.nonce[..] {
                                debug!("barrier back: the retained state has arrived");
                                for f in std::mem::take(&mut c.read_once) {
                                    let _ = c.client.try_unsubscribe(f);
                                }
                                events.send(SessionEvent::Synced).await;
                            }
                        }
                        Event::Incoming(Incoming::Publish(p)) => {
                            if let Some(tap) = settings.tap.as_mut()
                                && tap(&p.topic, &p.payload)
                            {
                                continue;
                            }
                            let ack = (settings.manual_acks && p.qos != QoS::AtMostOnce)
                                .then(|| AckToken { connection: c.id, publish: p.clone() });
                            events.send(SessionEvent::Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                ack,
                            }).await;
                        }
                        Event::Incoming(Incoming::PubAck(ack)) => match c.inflight.remove(&ack.pkid) {
                            Some(Tag::Outbox(outbox_id)) => {
                                if let Some(store) = &outbox
                                    && let Err(e) = store.ack_outbox(&[outbox_id])
                                {
                                    warn!(error = %e, "cannot remove acknowledged outbox entry");
                                }
                                c.outstanding = c.outstanding.saturating_sub(1);
                                fill(c, outbox.as_deref());
                            }
                            Some(Tag::Notify(done)) => {
                                let _ = done.send(());
                            }
                            Some(Tag::Plain) | None => {}
                        },
                        Event::Outgoing(Outgoing::PubAck(pkid)) if c.abort_after_ack.contains(&pkid) => {
                            // Written and flushed: the broker has the ack.
                            warn!(pkid, "fault hook KEDGE_FAULT_ABORT_AFTER_DELETE_ACK: aborting after a tombstone's PUBACK");
                            std::process::abort();
                        }
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            let tag = c.tags.pop_front().unwrap_or(Tag::Plain);
                            if pkid != 0 {
                                c.inflight.insert(pkid, tag);
                            } else if let Tag::Outbox(_) = tag {
                                // An outbox entry went out at QoS 0: cannot happen
                                // (they are all QoS 1), but never count it acked.
                                c.outstanding = c.outstanding.saturating_sub(1);
                            }
                        }
                        _ => {}
                    }
                }
                Internal::Failed(id, error) => {
                    if conn.as_ref().map(|c| c.id) != Some(id) {
                        continue;
                    }
                    let was_connected = conn.as_ref().map(|c| c.connected).unwrap_or(false);
                    let now = tokio::time::Instant::now();
                    let lasted = conn.as_ref().and_then(|c| c.connected_at).map(|t| now - t);
                    conn = None;
                    let Reconnect::Backoff { initial, max } = settings.reconnect else {
                        if was_connected {
                            warn!(%error, "lost the broker connection");
                        } else {
                            debug!(%error, "cannot connect to broker");
                        }
                        events.send(SessionEvent::Disconnected { error: error.to_string() }).await;
                        break;
                    };
                    let verdict = recovery.on_failure(&error, lasted, now);
                    let delay = reconnect_delay(verdict.attempt, initial, max, fastrand::f64());
                    if was_connected {
                        warn!(%error, "lost the broker connection");
                        events.send(SessionEvent::Disconnected { error: error.to_string() }).await;
                    } else {
                        debug!(%error, "cannot connect to broker");
                    }
                    if let Some(bytes) = verdict.oversized {
                        if settings.dropped_when_oversized.is_empty() {
                            warn!(bytes, limit = MAX_PACKET_BYTES, "the broker sent a message too large to read");
                        } else {
                            warn!(bytes, limit = MAX_PACKET_BYTES, "a message too large to read blocks the subscriptions; leaving them out for a while");
                        }
                        events.send(SessionEvent::Oversized { bytes }).await;
                    }
                    if let Some(closes) = verdict.taken_over {
                        let client_id = settings.options.client_id();
                        warn!(%client_id, closes, "the broker keeps closing this session right after it connects: another client probably uses the same client id");
                        events.send(SessionEvent::TakenOver { client_id, closes }).await;
                    }
                    info!(retry_in = ?delay, "reconnecting");
                    reconnect_at = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.client.try_disconnect();
        if settings.goodbye {
            // The event loop writes the DISCONNECT, then ends once it
            // finds no client left (`RequestsDone`) or the broker closes.
            drop(c.client);
            let mut drive = c.drive;
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    tokio::select! {
                        _ = &mut drive => break,
                        _ = internal_rx.recv() => {}
                    }
                }
            })
            .await;
        }
    }
}

/// Sends the next outbox entries, up to the window.
fn fill(c: &mut Connection, store: Option<&Store>) {
    let Some(store) = store else { return };
    if c.outstanding >= OUTBOX_WINDOW {
        return;
    }
    let entries = match store.outbox_after(c.sent_upto, OUTBOX_WINDOW - c.outstanding) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot read the outbox");
            return;
        }
    };
    for (id, entry) in entries {
        if c.client
            .try_publish(entry.topic, QoS::AtLeastOnce, entry.retain, entry.payload)
            .is_err()
        {
            break;
        }
        c.tags.push_back(Tag::Outbox(id));
        c.sent_upto = id;
        c.outstanding += 1;
    }
}

/// Drives one connection's event loop until it fails: the one place a
/// rumqttc `EventLoop` is polled for the agent, the bridge and the CLI.
/// Never cancelled from outside: it ends by itself when the connection or
/// the session ends.
async fn drive(mut eventloop: EventLoop, id: u64, tx: InternalTx) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(Internal::Event(id, event)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Internal::Failed(id, classify(&e))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_capped_with_jitter() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        assert_eq!(reconnect_delay(0, i, m, 0.5), Duration::from_millis(500));
        assert_eq!(reconnect_delay(1, i, m, 0.5), Duration::from_secs(1));
        assert_eq!(reconnect_delay(3, i, m, 0.5), Duration::from_secs(4));
        assert_eq!(reconnect_delay(30, i, m, 0.5), m);
        assert_eq!(reconnect_delay(0, i, m, 0.0), Duration::from_millis(375));
        assert_eq!(reconnect_delay(0, i, m, 0.999_999).as_millis(), 624);
        // The cap holds after the jitter too.
        assert_eq!(reconnect_delay(40, i, m, 1.0), m);
        assert_eq!(reconnect_delay(6, i, m, 0.999), m);
        assert!(reconnect_delay(40, i, m, 0.0) >= m.mul_f64(0.75));
    }

    #[test]
    fn quick_closes_by_the_broker_are_a_takeover_and_keep_the_back_off() {
        let mut r = Recovery::new(Duration::from_secs(300));
        let now = tokio::time::Instant::now();
        let quick = Some(Duration::from_millis(300));
        let v1 = r.on_failure(&Failure::ClosedByBroker, quick, now);
        let v2 = r.on_failure(&Failure::ClosedByBroker, quick, now);
        let v3 = r.on_failure(&Failure::ClosedByBroker, quick, now);
        assert_eq!((v1.attempt, v2.attempt, v3.attempt), (0, 1, 2));
        assert_eq!(
            (v1.taken_over, v2.taken_over, v3.taken_over),
            (None, None, Some(3))
        );
        // A stable connection resets both.
        let v = r.on_failure(&Failure::ClosedByBroker, Some(STABLE_AFTER), now);
        assert_eq!((v.attempt, v.taken_over), (0, None));
        // Failing to connect at all is not a takeover.
        for _ in 0..5 {
            let v = r.on_failure(&Failure::Other("refused".into()), None, now);
            assert_eq!(v.taken_over, None);
        }
    }

    #[test]
    fn an_oversized_message_degrades_the_next_connections_for_a_while() {
        let mut r = Recovery::new(Duration::from_secs(300));
        let now = tokio::time::Instant::now();
        assert!(!r.degraded(now));
        let v = r.on_failure(
            &Failure::Oversized { bytes: 17 << 20 },
            Some(Duration::from_millis(50)),
            now,
        );
        assert_eq!(v.oversized, Some(17 << 20));
        assert!(r.degraded(now + Duration::from_secs(299)));
        assert!(!r.degraded(now + Duration::from_secs(300)));
        // The next one lasts twice as long.
        let later = now + Duration::from_secs(301);
        r.on_failure(&Failure::Oversized { bytes: 17 << 20 }, None, later);
        assert!(r.degraded(later + Duration::from_secs(599)));
        assert!(!r.degraded(later + Duration::from_secs(600)));
    }

    #[test]
    fn failures_are_classified() {
        let oversized = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(20 << 20),
        ));
        assert_eq!(classify(&oversized), Failure::Oversized { bytes: 20 << 20 });
        let closed = ConnectionError::MqttState(StateError::ConnectionAborted);
        assert_eq!(classify(&closed), Failure::ClosedByBroker);
        let refused =
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(&refused), Failure::Other(_)));
    }
}
