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
    AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, Transport,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{BrokerConfig, BrokerUrl, Config, ConfigError};
use crate::store::Store;

/// At most this many outbox entries are unacknowledged at once.
const OUTBOX_WINDOW: usize = 32;

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
    opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
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
/// doubling to `max`, then spread by ±25 % with `jitter` in [0, 1).
pub fn reconnect_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let base = initial.saturating_mul(factor).min(max);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
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

/// What the session tells its owner.
#[derive(Debug)]
pub enum SessionEvent {
    Connected,
    Disconnected {
        error: String,
    },
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
    Ack(AckToken),
}

pub struct SessionSettings {
    pub options: MqttOptions,
    pub subscriptions: Vec<(String, QoS)>,
    /// A topic of the owner's own subtree, also among `subscriptions`: after
    /// subscribing, the session publishes a fresh nonce there (QoS 1); the
    /// broker handles one client's packets in order, so when it comes back
    /// every retained message has arrived (`SessionEvent::Synced`).
    pub sync_topic: Option<String>,
    pub last_will: Option<LastWill>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

enum Internal {
    Event(u64, Event),
    Failed(u64, String),
}

struct Connection {
    id: u64,
    client: AsyncClient,
    connected: bool,
    /// One tag per publish request, in request order: the outbox id, or
    /// None for publishes outside the outbox.
    tags: VecDeque<Option<u64>>,
    /// Packet id → outbox id of QoS 1 publishes awaiting PUBACK.
    inflight: HashMap<u16, Option<u64>>,
    /// Highest outbox id sent on this connection.
    sent_upto: u64,
    outstanding: usize,
    /// Packet ids of tombstone acks the fault hook aborts after.
    abort_after_ack: Vec<u16>,
    /// The barrier nonce of this connection.
    nonce: Vec<u8>,
}

/// Runs the session until `commands` closes.
pub async fn run(
    mut settings: SessionSettings,
    store: Arc<Store>,
    mut commands: mpsc::UnboundedReceiver<SessionCommand>,
    events: mpsc::UnboundedSender<SessionEvent>,
) {
    settings.options.set_clean_session(false);
    settings.options.set_manual_acks(true);
    if let Some(will) = settings.last_will.take() {
        settings.options.set_last_will(will);
    }
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel::<Internal>();
    let mut next_id = 0u64;
    let mut attempt = 0u32;
    let mut conn: Option<Connection> = None;
    let mut reconnect_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());

    loop {
        let sleep_until =
            reconnect_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until), if reconnect_at.is_some() => {
                reconnect_at = None;
                next_id += 1;
                let (client, mut eventloop) = AsyncClient::new(settings.options.clone(), 4096);
                // Small messages both ways: without this, Nagle's algorithm and
                // delayed ACKs add ~40 ms to every exchange.
                eventloop.network_options.set_tcp_nodelay(true);
                for (topic, qos) in &settings.subscriptions {
                    let _ = client.try_subscribe(topic.clone(), *qos);
                }
                let nonce = format!("{next_id}-{:016x}", fastrand::u64(..)).into_bytes();
                let mut tags = VecDeque::new();
                if let Some(sync) = &settings.sync_topic
                    && client.try_publish(sync.clone(), QoS::AtLeastOnce, false, nonce.clone()).is_ok()
                {
                    tags.push_back(None);
                }
                tokio::spawn(drive(eventloop, next_id, internal_tx.clone()));
                conn = Some(Connection {
                    id: next_id,
                    client,
                    connected: false,
                    tags,
                    inflight: HashMap::new(),
                    sent_upto: 0,
                    outstanding: 0,
                    abort_after_ack: Vec::new(),
                    nonce,
                });
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let Some(c) = conn.as_mut().filter(|c| c.connected) else { continue };
                match cmd {
                    SessionCommand::OutboxChanged => fill(c, &store),
                    SessionCommand::Publish { topic, payload, retain, qos } => {
                        if c.client.try_publish(topic, qos, retain, payload).is_ok() {
                            c.tags.push_back(None);
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
                }
            }
            Some(internal) = internal_rx.recv() => match internal {
                Internal::Event(id, event) => {
                    let Some(c) = conn.as_mut().filter(|c| c.id == id) else { continue };
                    match event {
                        Event::Incoming(Incoming::ConnAck(ack)) => {
                            info!(session_present = ack.session_present, "connected to broker");
                            c.connected = true;
                            attempt = 0;
                            let _ = events.send(SessionEvent::Connected);
                            fill(c, &store);
                        }
                        Event::Incoming(Incoming::Publish(p)) if settings.sync_topic.as_deref() == Some(p.topic.as_str()) => {
                            let _ = c.client.try_ack(&p);
                            // A nonce of an earlier connection is stale.
                            if p.payload[..] == c.nonce[..] {
                                debug!("barrier back: the retained state has arrived");
                                let _ = events.send(SessionEvent::Synced);
                            }
                        }
                        Event::Incoming(Incoming::Publish(p)) => {
                            let ack = (p.qos != QoS::AtMostOnce).then(|| AckToken { connection: c.id, publish: p.clone() });
                            let _ = events.send(SessionEvent::Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                ack,
                            });
                        }
                        Event::Incoming(Incoming::PubAck(ack)) => {
                            if let Some(Some(outbox_id)) = c.inflight.remove(&ack.pkid) {
                                if let Err(e) = store.ack_outbox(&[outbox_id]) {
                                    warn!(error = %e, "cannot remove acknowledged outbox entry");
                                }
                                c.outstanding = c.outstanding.saturating_sub(1);
                                fill(c, &store);
                            }
                        }
                        Event::Outgoing(Outgoing::PubAck(pkid)) if c.abort_after_ack.contains(&pkid) => {
                            // Written and flushed: the broker has the ack.
                            warn!(pkid, "fault hook KEDGE_FAULT_ABORT_AFTER_DELETE_ACK: aborting after a tombstone's PUBACK");
                            std::process::abort();
                        }
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            let tag = c.tags.pop_front().flatten();
                            if pkid != 0 {
                                c.inflight.insert(pkid, tag);
                            } else if tag.is_some() {
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
                    conn = None;
                    let delay = reconnect_delay(attempt, settings.reconnect_initial, settings.reconnect_max, fastrand::f64());
                    attempt = attempt.saturating_add(1);
                    if was_connected {
                        warn!(%error, "lost the broker connection");
                        let _ = events.send(SessionEvent::Disconnected { error: error.clone() });
                    } else {
                        debug!(%error, "cannot connect to broker");
                    }
                    info!(retry_in = ?delay, "reconnecting");
                    reconnect_at = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.client.try_disconnect();
    }
}

/// Sends the next outbox entries, up to the window.
fn fill(c: &mut Connection, store: &Store) {
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
        c.tags.push_back(Some(id));
        c.sent_upto = id;
        c.outstanding += 1;
    }
}

/// Drives one connection's event loop until it fails. Never cancelled from
/// outside: it ends by itself when the connection or the session ends.
async fn drive(mut eventloop: EventLoop, id: u64, tx: mpsc::UnboundedSender<Internal>) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(Internal::Event(id, event)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Internal::Failed(id, e.to_string()));
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
        assert_eq!(
            reconnect_delay(40, i, m, 1.0),
            Duration::from_millis(37_500)
        );
    }
}
