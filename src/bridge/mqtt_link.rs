//! The bridge's MQTT session: one long-lived connection that subscribes to
//! every device's node status, pod reports, events and retained desired specs,
//! turns them into [`BridgeEvent`]s, publishes desired specs, and carries the
//! log RPC for the kubelet API.
//!
//! "All retained messages have arrived" uses the CLI's barrier (docs/wire.md):
//! after subscribing, the bridge publishes to its own barrier topic; when that
//! message comes back, every retained message before it was delivered.
//!
//! On shutdown the session stops forwarding what it receives and
//! [`MqttLink::close`] ends it with a DISCONNECT, after every publish queued
//! before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
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
    rpc: Arc<Mutex<LogRoutes>>,
    log_stats: Arc<LogStats>,
    barrier: String,
    shared: bool,
    /// Signs what devices act on (`--signing-key`, `trust.signing_key_file`).
    signer: Option<Arc<crate::trust::Signer>>,
}

/// Log bytes one stream may hold in the bridge, received from the device
/// and not yet taken by the HTTP reader.
pub const STREAM_BUFFER_BYTES: usize = 8 << 20;
/// Log bytes all streams together may hold.
pub const TOTAL_BUFFER_BYTES: usize = 64 << 20;

/// Counters of the log RPC (the kubelet API's `/metrics`).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Bytes received from devices and not yet taken by HTTP readers.
    pub buffered_bytes: AtomicUsize,
    /// Streams cut because their reader fell too far behind.
    pub cut_streams: AtomicU64,
}

struct Route {
    tx: mpsc::UnboundedSender<LogChunk>,
    buffered: Arc<AtomicUsize>,
    node: String,
}

/// The open log requests, and the chunks on their way to the readers.
///
/// Back-pressure runs from the HTTP reader to here: a stream's chunks wait
/// in its queue until the response body takes them, which it does only as
/// fast as the reader reads. Nothing is dropped on the way. MQTT has no
/// flow control back to the device, so a device that outpaces its reader
/// fills the queue; at [`STREAM_BUFFER_BYTES`] for one stream, or
/// [`TOTAL_BUFFER_BYTES`] for all, the stream is cut: the reader gets
/// everything before the cut, then a line saying where and why it ended.
/// (The MQTT session itself is never stalled by a slow reader: its other
/// traffic, node status and reports, keeps flowing.)
pub struct LogRoutes {
    routes: HashMap<String, Route>,
    stats: Arc<LogStats>,
    stream_limit: usize,
    total_limit: usize,
}

impl LogRoutes {
    pub fn new(stats: Arc<LogStats>, stream_limit: usize, total_limit: usize) -> LogRoutes {
        LogRoutes {
            routes: HashMap::new(),
            stats,
            stream_limit,
            total_limit,
        }
    }

    /// Opens a route; its chunks come out of the receiver.
    pub fn open(&mut self, id: &str, node: &str) -> ChunkQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        self.routes.insert(
            id.to_string(),
            Route {
                tx,
                buffered: buffered.clone(),
                node: node.to_string(),
            },
        );
        ChunkQueue {
            rx,
            buffered,
            stats: self.stats.clone(),
        }
    }

    /// Forgets a route (its reader is gone).
    pub fn close(&mut self, id: &str) {
        self.routes.remove(id);
    }

    pub fn is_open(&self, id: &str) -> bool {
        self.routes.contains_key(id)
    }

    /// Queues a chunk for its reader, or cuts the stream if the reader is
    /// too far behind.
    pub fn route(&mut self, request_id: &str, chunk: LogChunk) {
        let Some(r) = self.routes.get(request_id) else {
            return;
        };
        let len = chunk.data.len();
        let stream = r.buffered.load(Ordering::Relaxed);
        let total = self.stats.buffered_bytes.load(Ordering::Relaxed);
        if stream + len > self.stream_limit || total + len > self.total_limit {
            let (limit, whose) = if stream + len > self.stream_limit {
                (self.stream_limit, "this stream's")
            } else {
                (self.total_limit, "all streams'")
            };
            warn!(request_id, node = %r.node, limit, "log reader too slow; stream cut");
            let _ = r.tx.send(LogChunk {
                request_id: request_id.to_string(),
                data: Vec::new(),
                eof: true,
                error: Some(format!(
                    "kedge bridge: the log stream from node {} was cut here: the reader fell behind by more than {whose} limit of {} MiB",
                    r.node,
                    limit >> 20
                )),
            });
            self.stats.cut_streams.fetch_add(1, Ordering::Relaxed);
            self.routes.remove(request_id);
            return;
        }
        let eof = chunk.eof;
        r.buffered.fetch_add(len, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_add(len, Ordering::Relaxed);
        if r.tx.send(chunk).is_err() || eof {
            self.routes.remove(request_id);
        }
    }
}

/// The reader's end of a route.
pub struct ChunkQueue {
    rx: mpsc::UnboundedReceiver<LogChunk>,
    buffered: Arc<AtomicUsize>,
    stats: Arc<LogStats>,
}

impl ChunkQueue {
    pub async fn recv(&mut self) -> Option<LogChunk> {
        let chunk = self.rx.recv().await?;
        let len = chunk.data.len();
        self.buffered.fetch_sub(len, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_sub(len, Ordering::Relaxed);
        Some(chunk)
    }
}

impl Drop for ChunkQueue {
    fn drop(&mut self) {
        // What the reader never took no longer counts.
        let left = self.buffered.swap(0, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_sub(left, Ordering::Relaxed);
    }
}

/// Shared-subscription group of the bridge replicas.
pub const SHARE_GROUP: &str = "kedge-bridge";

/// The chunks of one log request; unsubscribes when dropped.
pub struct LogStream {
    queue: ChunkQueue,
    id: String,
    topic: String,
    link: MqttLink,
}

impl LogStream {
    pub async fn recv(&mut self) -> Option<LogChunk> {
        self.queue.recv().await
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if let Ok(mut m) = self.link.rpc.lock() {
            m.close(&self.id);
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
    /// Connects (in the background, reconnecting until `stop`) and forwards
    /// everything to `events` until `stop`. The task ends after
    /// [`MqttLink::close`] (or, after `stop`, when the connection is lost).
    pub fn start(
        config: &Config,
        client_id: &str,
        shared: bool,
        events: mpsc::Sender<BridgeEvent>,
        stop: CancellationToken,
    ) -> Result<(MqttLink, JoinHandle<()>), LinkError> {
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
        let log_stats = Arc::new(LogStats::default());
        let link = MqttLink {
            client,
            topics: topics.clone(),
            rpc: Arc::new(Mutex::new(LogRoutes::new(
                log_stats.clone(),
                STREAM_BUFFER_BYTES,
                TOTAL_BUFFER_BYTES,
            ))),
            log_stats,
            barrier: barrier.clone(),
            shared,
            signer,
        };
        let initial = Duration::from_millis(config.broker.reconnect_initial_ms.max(1));
        let max = Duration::from_millis(config.broker.reconnect_max_ms.max(1));
        let task = tokio::spawn(run(
            link.clone(),
            eventloop,
            barrier,
            events,
            url,
            initial,
            max,
            stop,
        ));
        Ok((link, task))
    }

    /// Ends the session: a DISCONNECT goes out after everything published
    /// before, and the session's task ends.
    pub async fn close(&self) {
        if let Err(e) = self.client.disconnect().await {
            debug!(error = %e, "the MQTT session had already ended");
        }
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
        let queue = self
            .rpc
            .lock()
            .map_err(|_| LinkError::Broker("log routes poisoned".into()))?
            .open(&id, node);
        let topic = self.topics.rpc_response(node, &id);
        let stream = LogStream {
            queue,
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
        if let Ok(mut m) = self.rpc.lock() {
            m.route(request_id, chunk);
        }
    }

    /// Counters of the log RPC.
    pub fn log_stats(&self) -> Arc<LogStats> {
        self.log_stats.clone()
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

/// Hands `ev` to the main loop unless the bridge is stopping; false when
/// the main loop is gone.
async fn forward(
    events: &mpsc::Sender<BridgeEvent>,
    stop: &CancellationToken,
    ev: BridgeEvent,
) -> bool {
    if stop.is_cancelled() {
        return true;
    }
    match stop.run_until_cancelled(events.send(ev)).await {
        Some(sent) => sent.is_ok(),
        None => true,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    link: MqttLink,
    mut eventloop: EventLoop,
    barrier: String,
    events: mpsc::Sender<BridgeEvent>,
    url: String,
    initial: Duration,
    max: Duration,
    stop: CancellationToken,
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
                    if !forward(&events, &stop, BridgeEvent::MqttSynced).await {
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
                    && !forward(&events, &stop, ev).await
                {
                    return;
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                info!(broker = %url, "bridge disconnected from the broker");
                return;
            }
            Ok(_) => {}
            Err(e) if stop.is_cancelled() => {
                warn!(broker = %url, error = %e, "bridge lost the broker while stopping");
                return;
            }
            Err(e) => {
                let delay = reconnect_delay(attempt, initial, max, fastrand::f64());
                attempt = attempt.saturating_add(1);
                warn!(broker = %url, error = %e, ?delay, "bridge lost the broker; reconnecting");
                if stop
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], eof: bool) -> LogChunk {
        LogChunk {
            request_id: "r".into(),
            data: data.to_vec(),
            eof,
            error: None,
        }
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_chunk_in_order_within_the_bound() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 100, 1000);
        let mut q = routes.open("r", "edge-a");
        for i in 0..10u8 {
            routes.route("r", chunk(&[i; 10], false));
        }
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 100);
        // The reader takes one: room for one more.
        assert_eq!(q.recv().await.map(|c| c.data), Some(vec![0; 10]));
        routes.route("r", chunk(&[10; 10], false));
        routes.route("r", chunk(b"", true));
        assert!(!routes.is_open("r"), "eof closes the route");
        for i in 1..=10u8 {
            assert_eq!(q.recv().await.map(|c| c.data), Some(vec![i; 10]));
        }
        let last = q.recv().await.expect("eof chunk");
        assert!(last.eof && last.error.is_none());
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(stats.cut_streams.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn past_the_bound_the_stream_is_cut_with_a_message_never_silently() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 25, 1000);
        let mut q = routes.open("r", "edge-a");
        routes.route("r", chunk(b"0123456789", false));
        routes.route("r", chunk(b"abcdefghij", false));
        routes.route("r", chunk(b"ABCDEFGHIJ", false));
        // Arrives after the cut: ignored, the route is gone.
        routes.route("r", chunk(b"late", false));
        assert!(!routes.is_open("r"));
        assert_eq!(q.recv().await.map(|c| c.data), Some(b"0123456789".to_vec()));
        assert_eq!(q.recv().await.map(|c| c.data), Some(b"abcdefghij".to_vec()));
        let cut = q.recv().await.expect("cut chunk");
        assert!(cut.eof);
        let msg = cut.error.expect("a message");
        assert!(msg.contains("node edge-a was cut here"), "{msg}");
        assert_eq!(stats.cut_streams.load(Ordering::Relaxed), 1);
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_total_bound_covers_every_stream_and_a_gone_reader_frees_its_share() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 100, 30);
        let a = routes.open("a", "n");
        let mut b = routes.open("b", "n");
        routes.route("a", chunk(&[1; 20], false));
        routes.route("b", chunk(&[2; 20], false));
        assert!(!routes.is_open("b"), "b would pass the total");
        assert!(b.recv().await.and_then(|c| c.error).is_some());
        drop(a);
        routes.close("a");
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
    }
}
