//! The bridge's MQTT session: one long-lived connection that subscribes to
//! every device's node status, pod reports, events and retained desired specs,
//! turns them into [`BridgeEvent`]s, publishes desired specs, and carries the
//! log RPC for the kubelet API.
//!
//! "All retained messages have arrived" uses the CLI's barrier (docs/wire.md):
//! after subscribing, the bridge publishes to its own barrier topic; when that
//! message comes back, every retained message before it was delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Incoming, QoS};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::fleets::FleetEvent;
use super::state::BridgeEvent;
use crate::config::Config;
use crate::model::{
    Event, FleetDeployment, FleetReport, LogChunk, LogRequest, NodeLabels, NodeStatus, PodSpec,
    PodStatus,
};
use crate::mqtt::reconnect_delay;
use crate::wire::{self, Message, TopicKind, Topics};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("node name {0:?} is not a valid topic level")]
    Node(String),
}

/// Handle to the session; cheap to clone.
#[derive(Clone)]
pub struct MqttLink {
    client: AsyncClient,
    topics: Topics,
    rpc: Arc<Mutex<HashMap<String, mpsc::Sender<LogChunk>>>>,
    barrier: String,
    shared: bool,
    /// Signs what devices act on (`--signing-key`, `trust.signing_key_file`).
    signer: Option<Arc<crate::trust::Signer>>,
}

/// Shared-subscription group of the bridge replicas.
pub const SHARE_GROUP: &str = "kedge-bridge";

/// The chunks of one log request; unsubscribes when dropped.
pub struct LogStream {
    rx: mpsc::Receiver<LogChunk>,
    id: String,
    topic: String,
    link: MqttLink,
}

impl LogStream {
    pub async fn recv(&mut self) -> Option<LogChunk> {
        self.rx.recv().await
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if let Ok(mut m) = self.link.rpc.lock() {
            m.remove(&self.id);
        }
        let _ = self.link.client.try_unsubscribe(self.topic.clone());
    }
}

/// Subscription filters of the bridge. With `shared`, pod reports and events
/// go through a shared subscription: the broker hands each one to a single
/// replica of the group.
pub fn filters(topics: &Topics, shared: bool) -> Vec<String> {
    let p = topics.prefix();
    let share = if shared {
        format!("$share/{SHARE_GROUP}/")
    } else {
        String::new()
    };
    vec![
        format!("{p}/+/node"),
        format!("{share}{p}/+/reported/#"),
        format!("{share}{p}/+/events"),
        format!("{p}/+/desired/#"),
        // Node labels become device labels: what is retained there.
        format!("{p}/+/labels"),
        // Fleets: every replica keeps the tallies (plain subscriptions).
        topics.fleet_report_filter("+"),
        topics.fleet_filter(),
    ]
}

/// The filters whose retained messages make up the state: subscribing to them
/// again replays it. Shared subscriptions get no retained messages, so the
/// reports are read through a plain subscription, dropped at the barrier.
fn retained_filters(topics: &Topics) -> Vec<String> {
    let p = topics.prefix();
    vec![
        format!("{p}/+/node"),
        format!("{p}/+/desired/#"),
        format!("{p}/+/reported/#"),
        format!("{p}/+/labels"),
    ]
}

impl MqttLink {
    /// Connects (in the background, reconnecting forever) and forwards
    /// everything to `events`.
    pub fn start(
        config: &Config,
        client_id: &str,
        shared: bool,
        events: mpsc::Sender<BridgeEvent>,
    ) -> Result<MqttLink, LinkError> {
        let (url, opts) = crate::mqtt::clean_session_options(config, client_id)
            .map_err(|e| LinkError::Broker(e.to_string()))?;
        let signer = config
            .signer()
            .map_err(|e| LinkError::Broker(e.to_string()))?
            .map(Arc::new);
        if let Some(s) = &signer {
            info!(key_id = %hex::encode(s.key_id()), "signing desired state");
        }
        let (client, eventloop) = AsyncClient::new(opts, 65_536);
        let topics = Topics::new(config.topic_prefix.trim_end_matches('/'));
        let barrier = topics.barrier(client_id);
        let link = MqttLink {
            client,
            topics: topics.clone(),
            rpc: Arc::new(Mutex::new(HashMap::new())),
            barrier: barrier.clone(),
            shared,
            signer,
        };
        let initial = Duration::from_millis(config.broker.reconnect_initial_ms.max(1));
        let max = Duration::from_millis(config.broker.reconnect_max_ms.max(1));
        tokio::spawn(run(
            link.clone(),
            eventloop,
            barrier,
            events,
            url,
            initial,
            max,
        ));
        Ok(link)
    }

    /// Reads the broker's retained node statuses, specs and reports again
    /// (after this replica took over shards); `MqttSynced` follows.
    pub async fn resync(&self) {
        for f in retained_filters(&self.topics) {
            let _ = self.client.subscribe(f, QoS::AtLeastOnce).await;
        }
        let _ = self
            .client
            .publish(&self.barrier, QoS::AtLeastOnce, false, b"barrier".to_vec())
            .await;
    }

    /// Publishes retained at QoS 1 (an empty payload is a tombstone).
    /// With a signing key, what devices act on is signed, an empty payload
    /// there becoming a signed tombstone (`trust::signed_topic`).
    pub async fn publish_retained(&self, topic: String, payload: Vec<u8>) {
        let payload = crate::trust::seal(self.signer.as_deref(), &self.topics, &topic, payload);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
        {
            warn!(error = %e, "cannot queue an MQTT publish");
        }
    }

    /// Clears the signed tombstone left on a desired topic (an unsigned
    /// empty retained publish). Without a signer the tombstone already was
    /// an empty payload: nothing to do.
    pub async fn clear_signed_tombstone(&self, topic: String) {
        if self.signer.is_none() {
            return;
        }
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await
        {
            warn!(error = %e, "cannot queue an MQTT publish");
        }
    }

    /// Sends a log request to `node` and returns its chunks.
    pub async fn logs(&self, node: &str, mut request: LogRequest) -> Result<LogStream, LinkError> {
        if !wire::valid_topic_level(node) {
            return Err(LinkError::Node(node.to_string()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        request.request_id = id.clone();
        let (tx, rx) = mpsc::channel(1024);
        if let Ok(mut m) = self.rpc.lock() {
            m.insert(id.clone(), tx);
        }
        let topic = self.topics.rpc_response(node, &id);
        let stream = LogStream {
            rx,
            id: id.clone(),
            topic: topic.clone(),
            link: self.clone(),
        };
        // Subscribe before asking: one client's packets are handled in order.
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| LinkError::Broker(e.to_string()))?;
        let payload = wire::encode(0, &Message::LogRequest(request))
            .map_err(|e| LinkError::Broker(e.to_string()))?;
        let request_topic = self.topics.rpc_request(node, &id);
        let payload = crate::trust::seal(
            self.signer.as_deref(),
            &self.topics,
            &request_topic,
            payload,
        );
        self.client
            .publish(request_topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| LinkError::Broker(e.to_string()))?;
        Ok(stream)
    }

    fn route_chunk(&self, request_id: &str, payload: &[u8]) {
        let Ok((_, chunk)) = wire::decode_as::<LogChunk>(payload) else {
            return;
        };
        let Ok(mut m) = self.rpc.lock() else { return };
        let eof = chunk.eof;
        if let Some(tx) = m.get(request_id)
            && tx.try_send(chunk).is_err()
        {
            warn!(request_id, "log reader too slow; chunk dropped");
        }
        if eof {
            m.remove(request_id);
        }
    }
}

/// Turns one publish into a bridge event.
pub fn classify(topics: &Topics, topic: &str, payload: &[u8]) -> Option<BridgeEvent> {
    match topics.parse(topic)? {
        TopicKind::Node { node } => match wire::decode_as::<NodeStatus>(payload).map(|(_, n)| n) {
            Ok(status) => Some(BridgeEvent::Node { node, status }),
            Err(e) => {
                debug!(topic, error = %e, "undecodable node status skipped");
                None
            }
        },
        TopicKind::Reported { node, pod } => match wire::decode_retained::<PodStatus>(payload) {
            Ok(r) => Some(BridgeEvent::Report {
                node,
                pod,
                seq: r.as_ref().map_or(0, |(seq, _)| *seq),
                status: r.map(|(_, s)| s),
            }),
            Err(e) => {
                debug!(topic, error = %e, "undecodable pod status skipped");
                None
            }
        },
        TopicKind::Events { node } => match wire::decode_as::<Event>(payload) {
            Ok((seq, event)) => Some(BridgeEvent::DeviceEvent { node, seq, event }),
            Err(_) => None,
        },
        TopicKind::FleetReport { node, fleet } => {
            match wire::decode_retained::<FleetReport>(payload) {
                Ok(r) => Some(BridgeEvent::Fleet(FleetEvent::Report {
                    node,
                    fleet,
                    report: r.map(|(_, r)| r),
                })),
                Err(e) => {
                    debug!(topic, error = %e, "undecodable fleet report skipped");
                    None
                }
            }
        }
        TopicKind::Fleet { fleet } => match wire::decode_retained::<FleetDeployment>(payload) {
            Ok(r) => Some(BridgeEvent::Fleet(FleetEvent::Record {
                fleet,
                record: r.map(|(_, r)| r),
            })),
            Err(e) => {
                debug!(topic, error = %e, "undecodable fleet record skipped");
                None
            }
        },
        TopicKind::Labels { node } => Some(BridgeEvent::CloudLabels {
            node,
            labels: match wire::decode_retained::<NodeLabels>(payload) {
                Ok(l) => l.map(|(_, l)| l.labels).unwrap_or_default(),
                Err(e) => {
                    // Replaced as a whole if the Node's users set any.
                    debug!(topic, error = %e, "undecodable node labels read as none");
                    BTreeMap::new()
                }
            },
        }),
        TopicKind::Desired { node, pod } => Some(BridgeEvent::Desired {
            node,
            pod,
            // An undecodable spec counts as absent (as for `kedge apply`).
            spec: wire::decode_retained::<PodSpec>(payload)
                .ok()
                .flatten()
                .map(|(_, s)| s),
        }),
        _ => None,
    }
}

async fn run(
    link: MqttLink,
    mut eventloop: EventLoop,
    barrier: String,
    events: mpsc::Sender<BridgeEvent>,
    url: String,
    initial: Duration,
    max: Duration,
) {
    let mut attempt = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Incoming::ConnAck(_))) => {
                attempt = 0;
                info!(broker = %url, "bridge connected to the broker");
                for f in filters(&link.topics, link.shared) {
                    let _ = link.client.subscribe(f, QoS::AtLeastOnce).await;
                }
                let _ = link.client.subscribe(&barrier, QoS::AtLeastOnce).await;
                if link.shared {
                    // Shared subscriptions get no retained reports: read them once.
                    let replay = format!("{}/+/reported/#", link.topics.prefix());
                    let _ = link.client.subscribe(replay, QoS::AtLeastOnce).await;
                }
                let _ = link
                    .client
                    .publish(&barrier, QoS::AtLeastOnce, false, b"barrier".to_vec())
                    .await;
            }
            Ok(MqttEvent::Incoming(Incoming::Publish(p))) => {
                if p.topic == barrier {
                    if link.shared {
                        let replay = format!("{}/+/reported/#", link.topics.prefix());
                        let _ = link.client.unsubscribe(replay).await;
                    }
                    if events.send(BridgeEvent::MqttSynced).await.is_err() {
                        return;
                    }
                    continue;
                }
                if let Some(TopicKind::RpcResponse { request_id, .. }) = link.topics.parse(&p.topic)
                {
                    link.route_chunk(&request_id, &p.payload);
                    continue;
                }
                if let Some(ev) = classify(&link.topics, &p.topic, &p.payload)
                    && events.send(ev).await.is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let delay = reconnect_delay(attempt, initial, max, fastrand::f64());
                attempt = attempt.saturating_add(1);
                warn!(broker = %url, error = %e, ?delay, "bridge lost the broker; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
