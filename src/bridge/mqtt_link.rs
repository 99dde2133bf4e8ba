//! The bridge's MQTT link: one long-lived session (`crate::client`, which
//! the CLI uses too) that subscribes to every device's node status, pod
//! reports, events and retained desired specs, turns them into
//! [`BridgeEvent`]s, publishes desired specs, and carries the log RPC for
//! the kubelet API (`client::logs`).
//!
//! "All retained messages have arrived" is the session's barrier
//! (docs/wire.md): it comes back on every connection, and after `resync`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fleets::FleetEvent;
use super::state::BridgeEvent;
use crate::client::logs::{LogStats, LogStream};
use crate::client::{self, ClientError, ClientOptions, Inbound, Inbox};
use crate::config::Config;
use crate::model::{
    Event, FleetDeployment, FleetReport, LogRequest, NodeLabels, NodeStatus, PodStatus,
};
use crate::wire::{self, Message, TopicKind, Topics};

/// Handle to the session; cheap to clone.
#[derive(Clone)]
pub struct MqttLink {
    client: client::Client,
    shared: bool,
}

/// Events the session may hold for the bridge's loop before it stops
/// reading from the broker.
const INBOX_BOUND: usize = 1024;

/// Shared-subscription group of the bridge replicas.
pub const SHARE_GROUP: &str = "kedge-bridge";

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
        stop: CancellationToken,
    ) -> Result<(MqttLink, JoinHandle<()>), ClientError> {
        let topics = Topics::new(config.topic_prefix.trim_end_matches('/'));
        let mut opts = ClientOptions::new(client_id);
        opts.subscriptions = filters(&topics, shared);
        if shared {
            // Shared subscriptions get no retained reports: read them once.
            opts.read_once = vec![reports_filter(&topics)];
        }
        opts.reconnect = true;
        opts.inbox_bound = Some(INBOX_BOUND);
        opts.request_capacity = 65_536;
        let (client, inbox) = client::start(config, opts)?;
        if let Some(s) = client.signer() {
            info!(key_id = %hex::encode(s.key_id()), "signing desired state");
        }
        let task = tokio::spawn(forward(
            inbox,
            topics,
            events,
            client.url().to_string(),
            stop,
        ));
        Ok((MqttLink { client, shared }, task))
    }

    /// Ends the session: a DISCONNECT goes out after everything published
    /// before; the task `start` returned ends with it.
    pub fn close(&self) {
        self.client.close();
    }

    /// Reads the broker's retained node statuses, specs and reports again
    /// (after this replica took over shards); `MqttSynced` follows.
    pub fn resync(&self) {
        let mut again = retained_filters(self.client.topics());
        let mut once = Vec::new();
        if self.shared {
            let reports = reports_filter(self.client.topics());
            again.retain(|f| *f != reports);
            once.push(reports);
        }
        self.client.sync(again, once);
    }

    /// Publishes retained at QoS 1 (an empty payload is a tombstone).
    /// With a signing key, what devices act on is signed, an empty payload
    /// there becoming a signed tombstone (`trust::signed_topic`). Dropped
    /// while disconnected: the next barrier's resync publishes it again.
    pub fn publish_retained(&self, topic: String, payload: Vec<u8>) {
        self.client.publish(topic, payload, true);
    }

    /// Clears the signed tombstone left on a desired topic (an unsigned
    /// empty retained publish). Without a signer the tombstone already was
    /// an empty payload: nothing to do.
    pub fn clear_signed_tombstone(&self, topic: String) {
        if self.client.signs() {
            self.client.publish_unsigned(topic, Vec::new(), true);
        }
    }

    /// Sends a log request to `node` and returns its chunks.
    pub async fn logs(&self, node: &str, request: LogRequest) -> Result<LogStream, ClientError> {
        self.client.logs(node, request).await
    }

    /// Asks `node` for its usage (the stats RPC, docs/wire.md).
    pub async fn stats(&self, node: &str) -> Result<crate::model::NodeStats, ClientError> {
        self.client.stats(node).await
    }

    /// Runs a command in a container on `node` and waits at most `timeout`
    /// for its output (the exec RPC, docs/wire.md: no stdin, no tty; the
    /// kubelet API's `/run`).
    pub async fn exec(
        &self,
        node: &str,
        request: crate::model::ExecRequest,
        timeout: std::time::Duration,
    ) -> Result<crate::model::ExecOutput, ClientError> {
        self.client.exec_within(node, request, timeout).await
    }

    /// Opens a byte stream to the runtime's streaming server on `node` for
    /// an exec or attach (docs/wire.md, "Streams (exec and attach)"):
    /// resolves once the device has connected, or fails with its error
    /// (`ClientError::Agent`) or after `timeout` (`ClientError::NoAnswer`).
    pub async fn exec_stream(
        &self,
        node: &str,
        exec: crate::model::StreamExec,
        timeout: std::time::Duration,
    ) -> Result<
        (
            crate::client::stream::StreamWriter,
            crate::client::stream::StreamReader,
        ),
        ClientError,
    > {
        self.client.exec_stream(node, exec, timeout).await
    }

    /// Opens a byte stream to `port` of pod `namespace/pod` on `node`
    /// (port-forward, docs/wire.md "Streams"): resolves once the device
    /// has connected, or fails with its error (`ClientError::Agent`) or
    /// after `timeout` (`ClientError::NoAnswer`).
    pub async fn port_forward(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
        port: u16,
        timeout: std::time::Duration,
    ) -> Result<
        (
            crate::client::stream::StreamWriter,
            crate::client::stream::StreamReader,
        ),
        ClientError,
    > {
        self.client
            .port_forward(node, namespace, pod, port, timeout)
            .await
    }

    /// Counters of the log RPC.
    pub fn log_stats(&self) -> Arc<LogStats> {
        self.client.log_stats()
    }
}

/// The plain subscription to every device's retained reports.
fn reports_filter(topics: &Topics) -> String {
    format!("{}/+/reported/#", topics.prefix())
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
        TopicKind::Desired { node, pod } => {
            // An undecodable spec counts as absent (as for `kedge apply`); a
            // sealed one as what its envelope shows in clear.
            let (spec, sealed) = match wire::decode(payload) {
                _ if wire::is_tombstone(payload) => (None, false),
                Ok(env) => match env.message {
                    Message::DesiredPod(s) => (Some(s), false),
                    Message::SealedPod(s) => (Some(s.stub(&pod, env.seq)), true),
                    _ => (None, false),
                },
                Err(_) => (None, false),
            };
            Some(BridgeEvent::Desired {
                node,
                pod,
                spec,
                sealed,
            })
        }
        _ => None,
    }
}

/// Hands the session's events to the bridge's loop; once the bridge is
/// stopping (`stop`), it takes them and forwards nothing, until the session
/// ends.
async fn forward(
    mut inbox: Inbox,
    topics: Topics,
    events: mpsc::Sender<BridgeEvent>,
    url: String,
    stop: CancellationToken,
) {
    while let Some(inbound) = inbox.recv().await {
        if stop.is_cancelled() {
            continue;
        }
        let event = match inbound {
            Inbound::Connected => {
                info!(broker = %url, "bridge connected to the broker");
                continue;
            }
            Inbound::Disconnected { error } => {
                warn!(broker = %url, %error, "bridge lost the broker; reconnecting");
                continue;
            }
            Inbound::Synced => BridgeEvent::MqttSynced,
            Inbound::Message { topic, payload } => match classify(&topics, &topic, &payload) {
                Some(event) => event,
                None => continue,
            },
        };
        // The loop is gone: nothing to forward to.
        if let Some(Err(_)) = stop.run_until_cancelled(events.send(event)).await {
            return;
        }
    }
}
