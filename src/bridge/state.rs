//! The bridge's decisions: what to publish to devices and what to write to
//! Kubernetes, for every event. No I/O and no clock (`now_ms` is an
//! argument); the caller carries out the returned [`Action`]s.
//!
//! Invariants kept here:
//! - nothing is published to a device before both the cluster's pods and the
//!   broker's retained desired specs have been listed (no "unknown workload"
//!   clean-up from a half-synced view);
//! - a pod status report is applied only if its `seq` is higher than the last
//!   one applied for that topic, and only to the pod instance (uid) it
//!   describes; a pod the cluster has as Succeeded or Failed stays so;
//! - the Lease is renewed only while the device is alive (online status seen
//!   within `heartbeat_timeout_ms`); the Connected condition turns False on
//!   the last will at once;
//! - a Pod object is deleted (grace 0, uid precondition) only after the device
//!   reported the pod gone, or when it never had it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::fleets::nodes::{FleetNode, FleetNodes};
use super::node_ports::PortPool;
use super::render::{self, KubeletEndpoint};
use crate::model::convert::{Resolver, convert_pod};
use crate::model::selector::Selector;
use crate::model::{
    ContainerState, DesiredIndex, Event, EventType, IndexEntry, NodeLabels, NodeStatus, PodKey,
    PodSpec, PodStatus, next_desired,
};
use crate::wire::{self, Message, Topics};

/// Label the bridge adds to every spec it publishes, so that it only ever
/// removes specs it wrote (never those of `kedge apply`).
pub const BRIDGE_SPEC_LABEL: &str = "kedge.io/bridge";

/// Which kind of object a pod refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

/// A ConfigMap or Secret a pod refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjRef {
    pub kind: RefKind,
    pub namespace: String,
    pub name: String,
}

/// Everything the bridge's main loop reacts to.
#[derive(Debug, Clone)]
pub enum BridgeEvent {
    /// A node status (or last will) from `{prefix}/{node}/node`.
    Node { node: String, status: NodeStatus },
    /// A pod status from `reported/…`; `None` is the empty tombstone.
    Report {
        node: String,
        pod: PodKey,
        seq: u64,
        status: Option<PodStatus>,
    },
    /// A device event.
    DeviceEvent {
        node: String,
        seq: u64,
        event: Event,
    },
    /// A retained desired spec (ours or anyone's); `None` is a tombstone.
    Desired {
        node: String,
        pod: PodKey,
        /// For a `SealedPod`, what can be known without the device's key
        /// (`SealedPod::stub`), and `sealed` is true.
        spec: Option<PodSpec>,
        sealed: bool,
    },
    /// Every retained message of the subscriptions has arrived (barrier).
    MqttSynced,
    /// A Pod was added or changed in the cluster.
    PodApplied(Arc<Pod>),
    /// A Pod object is gone from the cluster.
    PodDeleted(Arc<Pod>),
    /// A (re-)list of pods is complete; `present_uids` are the pods it
    /// listed (pods the bridge knows that are not among them were deleted
    /// while the watch was down).
    PodsSynced {
        present_uids: Option<HashSet<String>>,
    },
    /// A ConfigMap or Secret was added, changed or deleted.
    ObjectChanged(ObjRef),
    /// A kedge Node object was deleted (by hand, or by anyone).
    NodeObjectDeleted(String),
    /// A kedge Node object was added or changed: the labels its users set
    /// on it ([`render::user_labels`]).
    NodeObject {
        name: String,
        user_labels: BTreeMap<String, String>,
    },
    /// The cloud's labels of a device, retained on `{prefix}/{node}/labels`
    /// (empty: none, or unreadable).
    CloudLabels {
        node: String,
        labels: BTreeMap<String, String>,
    },
    /// The periodic tick: lease renewals, heartbeat timeouts, status refresh.
    Tick,
    /// This replica now holds exactly these shards.
    ShardsChanged { held: HashSet<u32> },
    /// Fleets: reports, records and FleetDeployments (`bridge::fleets`).
    Fleet(super::fleets::FleetEvent),
    /// The kubelet API port of `node` ([`Action::ServeNode`]) could not be
    /// listened on (in use by another program).
    ServeFailed { node: String, port: u16 },
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeEvent {
    pub namespace: String,
    /// `Pod`, `Node` or `FleetDeployment`.
    pub involved_kind: &'static str,
    pub involved_name: String,
    pub involved_uid: String,
    pub kind: EventType,
    pub reason: String,
    pub message: String,
    pub time_ms: u64,
    /// The node the event is about (the `source.host`).
    pub host: String,
    /// The part of the object it is about: `spec.containers{NAME}` for a
    /// container, as the kubelet sets it.
    pub field_path: Option<String>,
}

/// Who applies a pod status: the device's report, or the bridge's own
/// `kedge.io/Accepted` condition (separate field managers, so neither apply
/// drops what the other owns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodStatusOwner {
    Device,
    Bridge,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish retained at QoS 1 (an empty payload is a tombstone).
    Publish { topic: String, payload: Vec<u8> },
    /// The device reported the pod on this desired topic gone: a signing
    /// bridge clears the signed tombstone it left there (an empty retained
    /// publish, which a signing agent running no such pod ignores), so
    /// tombstones do not pile up on the broker; without signing, nothing.
    ClearRetained { topic: String },
    /// Create the Node (labels, taint) if absent.
    EnsureNode {
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// Apply the node status (server-side apply body).
    NodeStatus { name: String, body: Value },
    /// Apply the `kedge.io/Connected` condition.
    Connected { name: String, body: Value },
    /// Renew the node's Lease.
    RenewLease { name: String, now_ms: u64 },
    /// Apply a pod status.
    PodStatus {
        pod: PodKey,
        owner: PodStatusOwner,
        body: Value,
    },
    /// Delete the Pod object with grace 0 and this uid as precondition.
    DeletePod { pod: PodKey, uid: String },
    /// Record an Event.
    Event(KubeEvent),
    /// Apply the device's own labels to its Node (a field manager of their
    /// own, so labels the device dropped are removed and no other is).
    NodeLabels {
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// Apply a FleetDeployment's status.
    FleetStatus { fleet: PodKey, body: Value },
    /// Serve the kubelet API of this Node on its own port
    /// ([`super::node_ports`]); a failure comes back as
    /// [`BridgeEvent::ServeFailed`].
    ServeNode { name: String, port: u16 },
}

/// Which devices this bridge serves.
#[derive(Debug, Clone, Default)]
pub struct Admit {
    /// Only these node names; `None` admits every device.
    pub allow: Option<HashSet<String>>,
    /// With several replicas: the shard count and the shards this replica
    /// holds a Lease for (see `bridge::shard`).
    pub shards: Option<(u32, HashSet<u32>)>,
    /// `--node-selector`: only devices whose labels (node status) match
    /// become Nodes; the others are fleet members only. `None`: every device.
    pub node_selector: Option<Selector>,
}

impl Admit {
    /// Whether a device with these labels becomes a Node.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
    }

    pub fn admits(&self, node: &str) -> bool {
        self.allow.as_ref().is_none_or(|a| a.contains(node))
            && self
                .shards
                .as_ref()
                .is_none_or(|(count, held)| held.contains(&shard_of(node, *count)))
    }
}

/// The shard of a node: FNV-1a (32 bit) of its name modulo `count`. Fixed
/// forever: every replica, of every version, must agree.
pub fn shard_of(node: &str, count: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % count.max(1)
}

/// Timings and identity of the bridge.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topics: Topics,
    pub endpoint: KubeletEndpoint,
    /// `nodeInfo.kubeletVersion` (kedge's version).
    pub kubelet_version: String,
    pub admit: Admit,
    /// Lease renewal interval (the kubelet's 10 s).
    pub lease_renew_ms: u64,
    /// Node status is re-applied at least this often while alive.
    pub status_refresh_ms: u64,
    /// A device that sent no online status for this long is treated as gone.
    pub heartbeat_timeout_ms: u64,
    /// Pod reports arrive through a shared subscription, so any replica may
    /// get any device's report: write it for every known pod, not only for
    /// the devices of this replica's shards.
    pub shared_status: bool,
    /// `--fleet-node`s: the bridge registers Node `kedge-fleet-NAME`
    /// for each, with the capacity of the devices it stands for, and leaves
    /// the pods bound to them to `bridge::fleets` (the seed path).
    pub fleet_nodes: Vec<FleetNode>,
    /// `--kubelet-node-ports`: each device's Node gets a kubelet API port
    /// of its own from this range; None: every Node has `endpoint`'s port.
    pub node_ports: Option<std::ops::RangeInclusive<u16>>,
}

impl Settings {
    /// Whether `node` is the Node of a fleet node.
    pub fn is_fleet_node(&self, node: &str) -> bool {
        node.strip_prefix(super::fleets::seed::NODE_PREFIX)
            .is_some_and(|n| self.fleet_nodes.iter().any(|f| f.name == n))
    }

    pub fn new(topics: Topics, endpoint: KubeletEndpoint) -> Settings {
        Settings {
            topics,
            endpoint,
            kubelet_version: kubelet_version(),
            admit: Admit::default(),
            lease_renew_ms: 10_000,
            status_refresh_ms: 60_000,
            heartbeat_timeout_ms: 40_000,
            shared_status: false,
            fleet_nodes: Vec::new(),
            node_ports: None,
        }
    }
}

#[derive(Debug, Default)]
struct Device {
    last: Option<NodeStatus>,
    alive: bool,
    last_seen_ms: u64,
    node_ensured: bool,
    /// The device labels last applied to the Node.
    labels_sent: Option<BTreeMap<String, String>>,
    last_lease_ms: u64,
    last_status_ms: u64,
    connected: Option<bool>,
    connected_since_ms: u64,
    event_seq: u64,
}

#[derive(Debug)]
struct PodEntry {
    pod: Arc<Pod>,
    node: String,
    uid: String,
    refs: BTreeSet<ObjRef>,
    refusal: Option<String>,
    /// The conversion's warnings were sent as Events (once per pod uid).
    warned: bool,
    accepted_sent: bool,
    deleting: bool,
    terminal: bool,
    delete_sent: bool,
}

#[derive(Debug, Default)]
struct Reported {
    seq: u64,
    status: Option<PodStatus>,
}

type NodePod = (String, PodKey);

/// The bridge's whole state.
pub struct Bridge {
    settings: Settings,
    devices: HashMap<String, Device>,
    pods: HashMap<PodKey, PodEntry>,
    pods_by_node: HashMap<String, BTreeSet<PodKey>>,
    desired: HashMap<NodePod, PodSpec>,
    /// The sealing key (its id) each spec in `desired` that carries Secret
    /// values was sealed to by this process: sent again, sealed to the new
    /// key, when the device reports another.
    sealed_to: HashMap<NodePod, [u8; 8]>,
    reported: HashMap<NodePod, Reported>,
    mqtt_synced: bool,
    pods_synced: bool,
    /// Nodes whose set of retained specs changed since their index was last
    /// considered.
    index_dirty: BTreeSet<String>,
    /// The index last published per node (on this MQTT connection).
    index_sent: HashMap<String, DesiredIndex>,
    /// The labels users set on each kedge Node (from the Node watch).
    node_user_labels: HashMap<String, BTreeMap<String, String>>,
    /// The cloud labels retained for each device (as read from the broker,
    /// or as last published).
    cloud_labels: HashMap<String, BTreeMap<String, String>>,
    /// The devices each fleet node stands for and their summed capacity,
    /// fed with every device's node status (Node or not, any shard).
    fleet_nodes: FleetNodes,
    /// Each device Node's own kubelet API port (`Settings::node_ports`).
    ports: Option<PortPool>,
}

/// Where the apiserver reaches `node`'s kubelet API: its own port when it
/// has one, else the shared one.
fn endpoint_of(settings: &Settings, ports: &Option<PortPool>, node: &str) -> KubeletEndpoint {
    let mut e = settings.endpoint.clone();
    if let Some(p) = ports.as_ref().and_then(|p| p.port(node)) {
        e.port = p;
    }
    e
}

/// The actions that make a device's Node: its own kubelet API port first
/// (device Nodes only; a fleet node's stands for many devices), then the
/// Node.
fn ensure_node(
    settings: &Settings,
    ports: &mut Option<PortPool>,
    node: &str,
    status: &NodeStatus,
    out: &mut Vec<Action>,
) {
    if let Some(pool) = ports.as_mut().filter(|_| !settings.is_fleet_node(node)) {
        serve_node(pool.assign(node), node, out);
    }
    out.push(Action::EnsureNode {
        name: node.to_string(),
        labels: render::node_labels(status),
    });
}

fn serve_node(port: Option<u16>, node: &str, out: &mut Vec<Action>) {
    match port {
        Some(port) => out.push(Action::ServeNode {
            name: node.to_string(),
            port,
        }),
        None => tracing::warn!(
            %node,
            "no free port left in --kubelet-node-ports: the Node has the shared kubelet API port, which serves no stats"
        ),
    }
}

/// A [`Resolver`] that records every reference looked up, which were
/// missing, and whether any answer is still being fetched.
pub(super) struct Recording<'a> {
    inner: &'a dyn Resolver,
    refs: RefCell<BTreeSet<ObjRef>>,
    missing: RefCell<Vec<ObjRef>>,
    pending: RefCell<bool>,
    secrets: RefCell<bool>,
}

/// What a [`Recording`] saw.
pub(super) struct Recorded {
    pub refs: BTreeSet<ObjRef>,
    /// A reference was looked up and does not exist.
    pub missing: bool,
    /// A reference's answer is not known yet (being fetched): decide
    /// nothing until it is ([`BridgeEvent::ObjectChanged`] follows).
    pub pending: bool,
    /// A Secret was found: the spec carries its values and goes to the
    /// device only sealed to its key (`seal`).
    pub secrets: bool,
}

impl<'a> Recording<'a> {
    pub(super) fn new(inner: &'a dyn Resolver) -> Recording<'a> {
        Recording {
            inner,
            refs: RefCell::new(BTreeSet::new()),
            missing: RefCell::new(Vec::new()),
            pending: RefCell::new(false),
            secrets: RefCell::new(false),
        }
    }

    pub(super) fn finish(self) -> Recorded {
        Recorded {
            missing: !self.missing.borrow().is_empty(),
            pending: self.pending.into_inner(),
            secrets: self.secrets.into_inner(),
            refs: self.refs.into_inner(),
        }
    }

    fn record(
        &self,
        kind: RefKind,
        ns: &str,
        name: &str,
        found: Option<BTreeMap<String, Vec<u8>>>,
    ) -> Option<BTreeMap<String, Vec<u8>>> {
        let r = ObjRef {
            kind,
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        if kind == RefKind::Secret && found.is_some() {
            *self.secrets.borrow_mut() = true;
        }
        if found.is_none() {
            if self.inner.pending(kind == RefKind::Secret, ns, name) {
                *self.pending.borrow_mut() = true;
            } else {
                self.missing.borrow_mut().push(r.clone());
            }
        }
        self.refs.borrow_mut().insert(r);
        found
    }
}

impl Resolver for Recording<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let found = self.inner.config_map(namespace, name);
        self.record(RefKind::ConfigMap, namespace, name, found)
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let found = self.inner.secret(namespace, name);
        self.record(RefKind::Secret, namespace, name, found)
    }
    fn pending(&self, secret: bool, namespace: &str, name: &str) -> bool {
        self.inner.pending(secret, namespace, name)
    }
}

fn pod_key(pod: &Pod) -> Option<PodKey> {
    let name = pod.metadata.name.as_deref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(PodKey::new(ns, name))
}

fn pod_terminal(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// Whether a report may be written to a pod that the cluster has as
/// `terminal` or not: a finished pod never moves out of Succeeded or Failed.
fn keeps_terminal(terminal: bool, report: &PodStatus) -> bool {
    !terminal || report.phase.is_terminal()
}

/// The device-label mirror: the device's own labels that go on its Node
/// (its reported set, less the reserved keys and less the cloud's keys:
/// those came from the Node's users, who own them there).
fn mirror_labels(
    cloud: Option<&BTreeMap<String, String>>,
    status: &NodeStatus,
) -> BTreeMap<String, String> {
    let mut labels = render::device_labels(status);
    if let Some(cloud) = cloud {
        labels.retain(|k, _| !cloud.contains_key(k));
    }
    labels
}

/// A node status with the fields that change on every heartbeat cleared, to
/// tell a real change from a heartbeat.
fn significant(s: &NodeStatus) -> NodeStatus {
    let mut s = s.clone();
    s.heartbeat_ms = 0;
    s.pod_count = 0;
    for c in &mut s.conditions {
        c.last_heartbeat_ms = 0;
    }
    // The data path's counters are not on the Node (they are metrics).
    s.data = None;
    s
}

impl Bridge {
    pub fn new(settings: Settings) -> Bridge {
        Bridge {
            fleet_nodes: FleetNodes::new(settings.fleet_nodes.clone()),
            ports: settings.node_ports.clone().map(PortPool::new),
            settings,
            devices: HashMap::new(),
            pods: HashMap::new(),
            pods_by_node: HashMap::new(),
            desired: HashMap::new(),
            sealed_to: HashMap::new(),
            reported: HashMap::new(),
            mqtt_synced: false,
            pods_synced: false,
            index_dirty: BTreeSet::new(),
            index_sent: HashMap::new(),
            node_user_labels: HashMap::new(),
            cloud_labels: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Node's kubelet API port could not be bound: it gets the next
    /// free one, and its status says which.
    fn on_serve_failed(&mut self, node: String, port: u16, out: &mut Vec<Action>) {
        let Some(pool) = self.ports.as_mut() else {
            return;
        };
        serve_node(pool.refuse(&node, port), &node, out);
        if let Some(dev) = self.devices.get(&node)
            && dev.alive
            && let Some(last) = &dev.last
        {
            out.push(Action::NodeStatus {
                name: node.clone(),
                body: render::node_status(
                    last,
                    &endpoint_of(&self.settings, &self.ports, &node),
                    &self.settings.kubelet_version,
                ),
            });
        }
    }

    /// The data path counters of every device that reported some, by node
    /// name (the last status each sent, online or not).
    pub fn data_statuses(
        &self,
    ) -> impl Iterator<Item = (&str, &crate::model::DataPathStatus)> + Clone {
        self.devices
            .iter()
            .filter_map(|(n, d)| Some((n.as_str(), &**d.last.as_ref()?.data.as_ref()?)))
    }

    /// Number of devices known (alive or not).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Whether the device is alive (for the kubelet API and tests).
    pub fn is_alive(&self, node: &str) -> bool {
        self.devices.get(node).is_some_and(|d| d.alive)
    }

    /// The devices known and not connected now (their will arrived, or
    /// they fell silent): the kubelet API answers for them at once.
    pub fn offline_devices(&self) -> impl Iterator<Item = &str> {
        self.devices
            .iter()
            .filter(|(_, d)| !d.alive)
            .map(|(n, _)| n.as_str())
    }

    fn synced(&self) -> bool {
        self.mqtt_synced && self.pods_synced
    }

    /// Handles one event and returns what to do, in order.
    pub fn handle(&mut self, ev: BridgeEvent, now_ms: u64, resolver: &dyn Resolver) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            BridgeEvent::Node { node, status } => {
                self.on_node(node, status, now_ms, resolver, &mut out)
            }
            BridgeEvent::Report {
                node,
                pod,
                seq,
                status,
            } => self.on_report(node, pod, seq, status, now_ms, resolver, &mut out),
            BridgeEvent::DeviceEvent { node, seq, event } => {
                self.on_device_event(node, seq, event, &mut out)
            }
            BridgeEvent::Desired {
                node,
                pod,
                spec,
                sealed,
            } => {
                let k = (node, pod);
                match spec {
                    // What this bridge sealed and still knows in clear.
                    Some(s)
                        if sealed
                            && self.desired.get(&k).is_some_and(|d| {
                                d.uid == s.uid && d.generation == s.generation
                            }) => {}
                    Some(s) => {
                        self.index_dirty.insert(k.0.clone());
                        self.sealed_to.remove(&k);
                        self.desired.insert(k, s);
                    }
                    None => {
                        self.index_dirty.insert(k.0.clone());
                        self.desired.remove(&k);
                        self.sealed_to.remove(&k);
                    }
                }
            }
            BridgeEvent::MqttSynced => {
                self.mqtt_synced = true;
                // A new connection (the broker may have lost its state):
                // every index goes out again.
                self.index_sent.clear();
                let nodes: Vec<String> = self.desired.keys().map(|(n, _)| n.clone()).collect();
                self.index_dirty.extend(nodes);
                let mut nodes: Vec<String> = self.node_user_labels.keys().cloned().collect();
                nodes.sort();
                for node in nodes {
                    self.sync_cloud_labels(&node, &mut out);
                }
                self.resync_all(now_ms, resolver, &mut out);
            }
            BridgeEvent::PodsSynced { present_uids } => {
                if let Some(present) = present_uids {
                    let gone: Vec<Arc<Pod>> = self
                        .pods
                        .values()
                        .filter(|e| !present.contains(&e.uid))
                        .map(|e| e.pod.clone())
                        .collect();
                    for pod in gone {
                        self.on_pod_deleted(&pod, &mut out);
                    }
                }
                self.pods_synced = true;
                self.resync_all(now_ms, resolver, &mut out);
            }
            BridgeEvent::PodApplied(pod) => self.on_pod(pod, now_ms, resolver, &mut out),
            BridgeEvent::PodDeleted(pod) => self.on_pod_deleted(&pod, &mut out),
            BridgeEvent::ObjectChanged(r) => {
                let keys: Vec<PodKey> = self
                    .pods
                    .iter()
                    .filter(|(_, e)| e.refs.contains(&r))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.evaluate(&k, now_ms, resolver, &mut out);
                }
            }
            BridgeEvent::ServeFailed { node, port } => self.on_serve_failed(node, port, &mut out),
            BridgeEvent::NodeObjectDeleted(name) => {
                // Its users' labels went with it (a Node made again starts bare).
                self.node_user_labels.remove(&name);
                self.on_node_deleted(name, now_ms, &mut out)
            }
            BridgeEvent::NodeObject { name, user_labels } => {
                self.node_user_labels.insert(name.clone(), user_labels);
                self.sync_cloud_labels(&name, &mut out);
            }
            BridgeEvent::CloudLabels { node, labels } => {
                if labels.is_empty() {
                    self.cloud_labels.remove(&node);
                } else {
                    self.cloud_labels.insert(node.clone(), labels);
                }
                if self.mqtt_synced {
                    // Someone else (`kedge label node`) may have written it:
                    // the Node's users' labels win on a Node's device.
                    self.sync_cloud_labels(&node, &mut out);
                    self.remirror(&node, &mut out);
                }
            }
            BridgeEvent::Tick => {
                // Fleet nodes are alive while the bridge runs: each tick is
                // their heartbeat.
                let names: Vec<String> = self
                    .settings
                    .fleet_nodes
                    .iter()
                    .map(|n| n.name.clone())
                    .collect();
                for name in names {
                    let devices = self.fleet_nodes.summary(&name).unwrap_or_default();
                    let status = super::fleets::seed::node_status(&name, &devices, now_ms);
                    self.on_node(status.name.clone(), status, now_ms, resolver, &mut out);
                }
                self.on_tick(now_ms, &mut out)
            }
            // Fleets are `bridge::fleets`' business.
            BridgeEvent::Fleet(_) => {}
            BridgeEvent::ShardsChanged { held } => {
                if let Some((_, h)) = &mut self.settings.admit.shards {
                    *h = held;
                }
                // Devices of released shards belong to another replica now:
                // forget them (no more Lease renewals from here). Devices of
                // new shards arrive with the retained statuses replayed by
                // the caller's re-subscription.
                let admit = self.settings.admit.clone();
                self.devices.retain(|name, _| admit.admits(name));
                self.reported.retain(|(node, _), _| admit.admits(node));
            }
        }
        self.publish_indexes(&mut out);
        out
    }

    /// The desired index of every node whose specs changed: after the specs
    /// in `out` (the caller publishes in order on one connection), once per
    /// event however many specs changed, and only when it differs from the
    /// one last published.
    fn publish_indexes(&mut self, out: &mut Vec<Action>) {
        if !self.synced() {
            return;
        }
        for node in std::mem::take(&mut self.index_dirty) {
            if !self.settings.admit.admits(&node) {
                continue;
            }
            let mut pods: Vec<IndexEntry> = self
                .desired
                .iter()
                .filter(|((n, _), spec)| n == &node && spec.labels.contains_key(BRIDGE_SPEC_LABEL))
                .map(|(_, spec)| IndexEntry::of(spec))
                .collect();
            pods.sort();
            let index = DesiredIndex { pods };
            if self.index_sent.get(&node) == Some(&index) {
                continue;
            }
            match wire::encode(0, &Message::DesiredIndex(index.clone())) {
                Ok(payload) => {
                    out.push(Action::Publish {
                        topic: self.settings.topics.index(&node, wire::INDEX_AUTHOR_BRIDGE),
                        payload,
                    });
                    self.index_sent.insert(node, index);
                }
                Err(err) => {
                    tracing::error!(%node, error = %err, "cannot encode the desired index")
                }
            }
        }
    }

    fn on_node(
        &mut self,
        node: String,
        status: NodeStatus,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        if !wire::valid_topic_level(&node) {
            return;
        }
        if !self.settings.is_fleet_node(&node) {
            // Every device counts for the fleet nodes whose selector it
            // matches, whether it is a Node (of this replica) or not.
            self.fleet_nodes.on_node_status(&node, &status);
        }
        if !self.settings.admit.admits(&node) {
            return;
        }
        // Presence alone (a last will) says nothing about the labels.
        if !self.settings.is_fleet_node(&node)
            && (status.online || !self.devices.contains_key(&node))
            && !self.settings.admit.selects(&status.labels)
        {
            if self.devices.contains_key(&node) {
                // Its labels no longer match: no longer a Node of this bridge.
                self.disconnect(
                    &node,
                    "NotSelected",
                    "the device's labels no longer match the bridge's --node-selector",
                    now_ms,
                    out,
                );
                self.devices.remove(&node);
            }
            return;
        }
        let newly = !self.devices.contains_key(&node);
        let dev = self.devices.entry(node.clone()).or_default();
        if status.online {
            let was_alive = dev.alive;
            dev.alive = true;
            dev.last_seen_ms = now_ms;
            let changed = dev
                .last
                .as_ref()
                .is_none_or(|l| significant(l) != significant(&status));
            if !dev.node_ensured {
                ensure_node(&self.settings, &mut self.ports, &node, &status, out);
                dev.node_ensured = true;
            }
            if changed
                || !was_alive
                || now_ms.saturating_sub(dev.last_status_ms) >= self.settings.status_refresh_ms
            {
                out.push(Action::NodeStatus {
                    name: node.clone(),
                    body: render::node_status(
                        &status,
                        &endpoint_of(&self.settings, &self.ports, &node),
                        &self.settings.kubelet_version,
                    ),
                });
                dev.last_status_ms = now_ms;
            }
            // Sent when they change (on first sight only if there are any:
            // one request less per device when the bridge starts).
            let labels = mirror_labels(self.cloud_labels.get(&node), &status);
            if dev
                .labels_sent
                .as_ref()
                .map_or(!labels.is_empty(), |l| *l != labels)
            {
                out.push(Action::NodeLabels {
                    name: node.clone(),
                    labels: labels.clone(),
                });
                dev.labels_sent = Some(labels);
            }
            let key_changed = dev
                .last
                .as_ref()
                .is_some_and(|l| l.sealing_key != status.sealing_key);
            // A new boot id is a reboot, as the kubelet reports it.
            if let Some(l) = &dev.last
                && !l.info.boot_id.is_empty()
                && !status.info.boot_id.is_empty()
                && l.info.boot_id != status.info.boot_id
            {
                out.push(node_event(
                    &node,
                    EventType::Warning,
                    "Rebooted",
                    format!(
                        "Node {node} has been rebooted, boot id: {}",
                        status.info.boot_id
                    ),
                    now_ms,
                ));
            }
            dev.last = Some(status);
            if key_changed && !newly {
                // Specs that carry Secrets go out again, sealed to the new key
                // (or wait for one).
                self.evaluate_node(&node, now_ms, resolver, out);
            }
            let Some(dev) = self.devices.get_mut(&node) else {
                return;
            };
            if dev.connected != Some(true) {
                // A transition this bridge saw, not the retained statuses it
                // reads when it starts (no burst of events per restart).
                if dev.connected == Some(false) || self.mqtt_synced {
                    out.push(node_event(
                        &node,
                        EventType::Normal,
                        "NodeReady",
                        format!("Node {node} status is now: NodeReady"),
                        now_ms,
                    ));
                }
                dev.connected = Some(true);
                dev.connected_since_ms = now_ms;
                out.push(Action::Connected {
                    name: node.clone(),
                    body: render::connected_status(
                        &node,
                        true,
                        "DeviceOnline",
                        "the device's MQTT session is up",
                        now_ms,
                        now_ms,
                    ),
                });
            }
            if !was_alive {
                out.push(Action::RenewLease {
                    name: node.clone(),
                    now_ms,
                });
                dev.last_lease_ms = now_ms;
                self.resync_node_statuses(&node, out);
            }
        } else {
            dev.alive = false;
            if !dev.node_ensured {
                ensure_node(&self.settings, &mut self.ports, &node, &status, out);
                dev.node_ensured = true;
            }
            if dev.last.is_none() {
                dev.last = Some(status);
            }
            self.disconnect(
                &node,
                "DeviceOffline",
                "the device's MQTT session ended (last will)",
                now_ms,
                out,
            );
        }
        if newly {
            self.sync_cloud_labels(&node, out);
            self.evaluate_node(&node, now_ms, resolver, out);
        }
    }

    /// Node labels become device labels: publishes the labels users set on
    /// the device's Node as its cloud labels (`{prefix}/{node}/labels`,
    /// retained, the whole set; empty payload = none), when they differ
    /// from those retained. Only for devices that are Nodes of this bridge,
    /// once the broker's retained labels have been read; on such a device
    /// the Node's labels are the cloud's (they replace what `kedge label
    /// node` set).
    fn sync_cloud_labels(&mut self, node: &str, out: &mut Vec<Action>) {
        if !self.mqtt_synced
            || self.settings.is_fleet_node(node)
            || !self.settings.admit.admits(node)
            || !self.devices.contains_key(node)
        {
            return;
        }
        let Some(want) = self.node_user_labels.get(node) else {
            return;
        };
        let have = self.cloud_labels.get(node);
        if have.map_or(want.is_empty(), |h| h == want) {
            return;
        }
        let payload = if want.is_empty() {
            Vec::new()
        } else {
            let labels = NodeLabels {
                labels: want.clone(),
            };
            if let Err(err) = crate::model::validate::Validate::validate(&labels) {
                tracing::warn!(%node, error = %err, "the Node's labels cannot go to the device");
                return;
            }
            match wire::encode(0, &Message::NodeLabels(labels)) {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(%node, error = %err, "cannot encode the node labels");
                    return;
                }
            }
        };
        out.push(Action::Publish {
            topic: self.settings.topics.labels(node),
            payload,
        });
        if want.is_empty() {
            self.cloud_labels.remove(node);
        } else {
            self.cloud_labels.insert(node.to_string(), want.clone());
        }
        self.remirror(node, out);
    }

    /// Applies the device-label mirror again if the cloud labels changed
    /// what it carries.
    fn remirror(&mut self, node: &str, out: &mut Vec<Action>) {
        let Some(dev) = self.devices.get_mut(node) else {
            return;
        };
        let (Some(last), true) = (&dev.last, dev.node_ensured) else {
            return;
        };
        let labels = mirror_labels(self.cloud_labels.get(node), last);
        if dev
            .labels_sent
            .as_ref()
            .map_or(!labels.is_empty(), |l| *l != labels)
        {
            out.push(Action::NodeLabels {
                name: node.to_string(),
                labels: labels.clone(),
            });
            dev.labels_sent = Some(labels);
        }
    }

    fn disconnect(
        &mut self,
        node: &str,
        reason: &str,
        message: &str,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(dev) = self.devices.get_mut(node) else {
            return;
        };
        dev.alive = false;
        if dev.connected != Some(false) {
            // Said only when it was Ready before (not for a device first
            // seen through its last will).
            if dev.connected == Some(true) {
                out.push(node_event(
                    node,
                    EventType::Normal,
                    "NodeNotReady",
                    format!("Node {node} status is now: NodeNotReady ({message})"),
                    now_ms,
                ));
            }
            dev.connected = Some(false);
            dev.connected_since_ms = now_ms;
            out.push(Action::Connected {
                name: node.to_string(),
                body: render::connected_status(node, false, reason, message, now_ms, now_ms),
            });
            self.wasm_pods_down(node, now_ms, out);
        }
    }

    /// The device is gone: its Wasm pods ran inside the agent, so they are
    /// known to have stopped. Their status says so at once (not Ready, each
    /// container waiting with reason `DeviceOffline`) without touching the
    /// phase: the pod has not failed, the agent starts it again when it is
    /// back (as after its own restart), and evictions stay Kubernetes'
    /// decision. Container pods may still run on the device: unchanged.
    fn wasm_pods_down(&self, node: &str, now_ms: u64, out: &mut Vec<Action>) {
        let Some(keys) = self.pods_by_node.get(node) else {
            return;
        };
        for k in keys {
            let Some(e) = self.pods.get(k) else { continue };
            let wasm = e
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.as_deref())
                == Some(crate::model::WASM_RUNTIME_CLASS);
            let Some(s) = self
                .reported
                .get(&(node.to_string(), k.clone()))
                .and_then(|r| r.status.as_ref())
                .filter(|s| wasm && s.uid == e.uid && !s.phase.is_terminal())
            else {
                continue;
            };
            let mut down = s.clone();
            let why = "the device's agent, which runs this WebAssembly module, is offline";
            for c in &mut down.conditions {
                if matches!(
                    c.kind,
                    crate::model::PodConditionType::Ready
                        | crate::model::PodConditionType::ContainersReady
                ) && c.status
                {
                    c.status = false;
                    c.last_transition_ms = now_ms;
                    c.reason = Some("DeviceOffline".into());
                    c.message = Some(why.into());
                }
            }
            for c in down
                .container_statuses
                .iter_mut()
                .chain(&mut down.init_container_statuses)
            {
                if matches!(c.state, ContainerState::Running { .. }) {
                    c.last_state = Some(c.state.clone());
                    c.state = ContainerState::Waiting {
                        reason: "DeviceOffline".into(),
                        message: Some(why.into()),
                    };
                    c.ready = false;
                    c.started = false;
                }
            }
            out.push(Action::PodStatus {
                pod: k.clone(),
                owner: PodStatusOwner::Device,
                body: render::pod_status(&e.uid, &down),
            });
        }
    }

    /// Decides again what every pod bound to `node` needs.
    fn evaluate_node(
        &mut self,
        node: &str,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        let keys: Vec<PodKey> = self
            .pods_by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for k in keys {
            self.evaluate(&k, now_ms, resolver, out);
        }
    }

    /// After a device (re)connects: every pod's last report is applied again.
    fn resync_node_statuses(&mut self, node: &str, out: &mut Vec<Action>) {
        let Some(keys) = self.pods_by_node.get(node) else {
            return;
        };
        for k in keys {
            let Some(e) = self.pods.get(k) else { continue };
            if let Some(Reported {
                status: Some(s), ..
            }) = self.reported.get(&(node.to_string(), k.clone()))
                && s.uid == e.uid
                && keeps_terminal(e.terminal, s)
            {
                out.push(Action::PodStatus {
                    pod: k.clone(),
                    owner: PodStatusOwner::Device,
                    body: render::pod_status(&e.uid, s),
                });
            }
        }
    }

    fn on_node_deleted(&mut self, name: String, now_ms: u64, out: &mut Vec<Action>) {
        let Some(dev) = self.devices.get_mut(&name) else {
            return;
        };
        let Some(last) = dev.last.clone() else { return };
        dev.node_ensured = true;
        ensure_node(&self.settings, &mut self.ports, &name, &last, out);
        let labels = mirror_labels(self.cloud_labels.get(&name), &last);
        if !labels.is_empty() {
            out.push(Action::NodeLabels {
                name: name.clone(),
                labels: labels.clone(),
            });
        }
        dev.labels_sent = Some(labels);
        if dev.alive {
            out.push(Action::NodeStatus {
                name: name.clone(),
                body: render::node_status(
                    &last,
                    &endpoint_of(&self.settings, &self.ports, &name),
                    &self.settings.kubelet_version,
                ),
            });
            dev.last_status_ms = now_ms;
            out.push(Action::RenewLease {
                name: name.clone(),
                now_ms,
            });
            dev.last_lease_ms = now_ms;
        }
        if let Some(c) = dev.connected {
            let (reason, message) = if c {
                ("DeviceOnline", "the device's MQTT session is up")
            } else {
                ("DeviceOffline", "the device is not connected")
            };
            out.push(Action::Connected {
                name: name.clone(),
                body: render::connected_status(
                    &name,
                    c,
                    reason,
                    message,
                    dev.connected_since_ms,
                    now_ms,
                ),
            });
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let mut timed_out = Vec::new();
        for (name, dev) in &mut self.devices {
            if !dev.alive {
                continue;
            }
            if now_ms.saturating_sub(dev.last_seen_ms) > self.settings.heartbeat_timeout_ms {
                timed_out.push(name.clone());
                continue;
            }
            if now_ms.saturating_sub(dev.last_lease_ms) >= self.settings.lease_renew_ms {
                out.push(Action::RenewLease {
                    name: name.clone(),
                    now_ms,
                });
                dev.last_lease_ms = now_ms;
            }
            if now_ms.saturating_sub(dev.last_status_ms) >= self.settings.status_refresh_ms
                && let Some(last) = &dev.last
            {
                let mut s = last.clone();
                // The device is alive (heartbeats arrive); say so with this tick's time.
                s.heartbeat_ms = s.heartbeat_ms.max(dev.last_seen_ms);
                out.push(Action::NodeStatus {
                    name: name.clone(),
                    body: render::node_status(
                        &s,
                        &endpoint_of(&self.settings, &self.ports, name),
                        &self.settings.kubelet_version,
                    ),
                });
                dev.last_status_ms = now_ms;
            }
        }
        timed_out.sort();
        for name in timed_out {
            self.disconnect(
                &name,
                "HeartbeatTimeout",
                "no node status from the device within the heartbeat timeout",
                now_ms,
                out,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_report(
        &mut self,
        node: String,
        pod: PodKey,
        seq: u64,
        status: Option<PodStatus>,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        if !self.settings.shared_status && !self.settings.admit.admits(&node) {
            return;
        }
        let k = (node.clone(), pod.clone());
        let r = self.reported.entry(k).or_default();
        match status {
            Some(s) => {
                if seq <= r.seq {
                    return; // duplicate or stale replay
                }
                r.seq = seq;
                r.status = Some(s.clone());
                if let Some(e) = self.pods.get_mut(&pod)
                    && e.node == node
                    && e.uid == s.uid
                    && keeps_terminal(e.terminal, &s)
                {
                    if s.phase.is_terminal() {
                        e.terminal = true;
                    }
                    out.push(Action::PodStatus {
                        pod: pod.clone(),
                        owner: PodStatusOwner::Device,
                        body: render::pod_status(&e.uid, &s),
                    });
                }
            }
            None => {
                // The pod is gone from the device; keep seq so late replays stay dropped.
                r.status = None;
                self.evaluate(&pod, now_ms, resolver, out);
            }
        }
    }

    fn on_device_event(&mut self, node: String, seq: u64, event: Event, out: &mut Vec<Action>) {
        if !self.settings.admit.admits(&node) {
            return;
        }
        let Some(dev) = self.devices.get_mut(&node) else {
            return;
        };
        if seq <= dev.event_seq {
            return;
        }
        dev.event_seq = seq;
        let (namespace, kind, name, uid) = match (&event.namespace, &event.pod) {
            (Some(ns), Some(p)) => {
                let uid = self
                    .pods
                    .get(&PodKey::new(ns, p))
                    .map(|e| e.uid.clone())
                    .unwrap_or_default();
                (ns.clone(), "Pod", p.clone(), uid)
            }
            _ => ("default".to_string(), "Node", node.clone(), String::new()),
        };
        // The kubelet names the container in `fieldPath`, not the message.
        let field_path = match &event.container {
            Some(c) if kind == "Pod" => Some(container_field_path(
                self.desired
                    .get(&(node.clone(), PodKey::new(&namespace, &name))),
                c,
            )),
            _ => None,
        };
        let message = event.message.clone();
        out.push(Action::Event(KubeEvent {
            namespace,
            involved_kind: kind,
            involved_name: name,
            involved_uid: uid,
            kind: event.kind,
            reason: event.reason.clone(),
            message,
            time_ms: event.timestamp_ms,
            host: node,
            field_path,
        }));
    }

    fn on_pod(
        &mut self,
        pod: Arc<Pod>,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = pod_key(&pod) else { return };
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        if self.settings.is_fleet_node(&node) {
            // A seed pod: `bridge::fleets`' business.
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let terminal = pod_terminal(&pod);
        let new_instance = self.pods.get(&key).is_none_or(|e| e.uid != uid);
        if new_instance {
            if let Some(old) = self.pods.get(&key)
                && let Some(set) = self.pods_by_node.get_mut(&old.node)
            {
                set.remove(&key);
            }
            self.pods.insert(
                key.clone(),
                PodEntry {
                    pod: pod.clone(),
                    node: node.clone(),
                    uid: uid.clone(),
                    refs: BTreeSet::new(),
                    refusal: None,
                    warned: false,
                    accepted_sent: false,
                    deleting,
                    terminal,
                    delete_sent: false,
                },
            );
            self.pods_by_node
                .entry(node.clone())
                .or_default()
                .insert(key.clone());
        } else if let Some(e) = self.pods.get_mut(&key) {
            e.pod = pod.clone();
            e.deleting = deleting;
            e.terminal |= terminal;
        }
        self.evaluate(&key, now_ms, resolver, out);
        if new_instance
            && self.devices.contains_key(&node)
            && let Some(Reported {
                status: Some(s), ..
            }) = self.reported.get(&(node.clone(), key.clone()))
            && s.uid == uid
            && keeps_terminal(terminal, s)
        {
            out.push(Action::PodStatus {
                pod: key,
                owner: PodStatusOwner::Device,
                body: render::pod_status(&uid, s),
            });
        }
    }

    fn on_pod_deleted(&mut self, pod: &Pod, out: &mut Vec<Action>) {
        let Some(key) = pod_key(pod) else { return };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(e) = self.pods.get(&key).filter(|e| e.uid == uid) else {
            return;
        };
        let node = e.node.clone();
        if let Some(set) = self.pods_by_node.get_mut(&node) {
            set.remove(&key);
        }
        self.pods.remove(&key);
        // Removed without waiting for the device (force delete): tell the device.
        let k = (node.clone(), key.clone());
        if self.synced()
            && self.devices.contains_key(&node)
            && self.desired.get(&k).is_some_and(|s| s.uid == uid)
        {
            self.index_dirty.insert(node.clone());
            self.desired.remove(&k);
            self.sealed_to.remove(&k);
            out.push(Action::Publish {
                topic: self.settings.topics.desired(&node, &key),
                payload: Vec::new(),
            });
        }
    }

    fn resync_all(&mut self, now_ms: u64, resolver: &dyn Resolver, out: &mut Vec<Action>) {
        if !self.synced() {
            return;
        }
        let mut keys: Vec<PodKey> = self.pods.keys().cloned().collect();
        keys.sort();
        for k in &keys {
            self.evaluate(k, now_ms, resolver, out);
        }
        // Specs this bridge wrote for pods that no longer exist (deleted while
        // the bridge was away): tombstone them.
        let mut orphans: Vec<NodePod> = self
            .desired
            .iter()
            .filter(|((node, key), spec)| {
                spec.labels.contains_key(BRIDGE_SPEC_LABEL)
                    && self.settings.admit.admits(node)
                    && self
                        .pods
                        .get(key)
                        .is_none_or(|e| e.uid != spec.uid || &e.node != node)
            })
            .map(|(k, _)| k.clone())
            .collect();
        orphans.sort();
        for (node, key) in orphans {
            self.index_dirty.insert(node.clone());
            self.desired.remove(&(node.clone(), key.clone()));
            self.sealed_to.remove(&(node.clone(), key.clone()));
            out.push(Action::Publish {
                topic: self.settings.topics.desired(&node, &key),
                payload: Vec::new(),
            });
        }
    }

    /// Decides what a pod needs now: its spec sent (or re-sent), a refusal
    /// recorded, a tombstone, or the final delete.
    fn evaluate(
        &mut self,
        key: &PodKey,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        if !self.synced() {
            return;
        }
        let Some(e) = self.pods.get_mut(key) else {
            return;
        };
        if !self.devices.contains_key(&e.node) {
            return;
        }
        let dk = (e.node.clone(), key.clone());
        if e.deleting {
            if self.desired.get(&dk).is_some_and(|s| s.uid == e.uid) {
                self.index_dirty.insert(e.node.clone());
                self.desired.remove(&dk);
                self.sealed_to.remove(&dk);
                out.push(Action::Publish {
                    topic: self.settings.topics.desired(&e.node, key),
                    payload: Vec::new(),
                });
            }
            let on_device = self
                .reported
                .get(&dk)
                .and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.uid == e.uid);
            if !on_device && !e.delete_sent {
                e.delete_sent = true;
                out.push(Action::DeletePod {
                    pod: key.clone(),
                    uid: e.uid.clone(),
                });
                out.push(Action::ClearRetained {
                    topic: self.settings.topics.desired(&e.node, key),
                });
            }
            return;
        }
        let existing = self.desired.get(&dk).filter(|s| s.uid == e.uid);
        if e.terminal && existing.is_none() {
            // Never start a finished pod again.
            return;
        }
        let rec = Recording::new(resolver);
        let result = convert_pod(&e.pod, &rec);
        let recorded = rec.finish();
        e.refs = recorded.refs;
        if recorded.pending {
            // Decided when the ConfigMap or Secret has been read.
            return;
        }
        match result {
            Err(err) => {
                let message = err.to_string();
                if e.refusal.as_deref() == Some(message.as_str()) {
                    return;
                }
                let reason = if recorded.missing {
                    "CreateContainerConfigError"
                } else {
                    "UnsupportedField"
                };
                refuse_pod(e, key, &self.reported, reason, message, now_ms, out);
            }
            Ok(converted) => {
                if !e.warned {
                    // What is accepted but not honoured (the injected
                    // token volume, left out): said once per pod.
                    e.warned = true;
                    for w in &converted.warnings {
                        out.push(pod_warning(e, key, w.reason, w.message.clone(), now_ms));
                    }
                }
                let mut spec = converted.spec;
                spec.uid = e.uid.clone();
                spec.labels
                    .insert(BRIDGE_SPEC_LABEL.to_string(), "true".to_string());
                let seal_to = if recorded.secrets {
                    let device_key = self
                        .devices
                        .get(&e.node)
                        .and_then(|d| d.last.as_ref())
                        .and_then(|s| s.sealing_key);
                    match sealing_key(&e.node, device_key) {
                        Ok(k) => Some(k),
                        Err(message) => {
                            if e.refusal.as_deref() != Some(message.as_str()) {
                                refuse_pod(
                                    e,
                                    key,
                                    &self.reported,
                                    NO_SEALING_KEY,
                                    message,
                                    now_ms,
                                    out,
                                );
                            }
                            return;
                        }
                    }
                } else {
                    None
                };
                e.refusal = None;
                // Sealed to another key than the device's now (or by another
                // process): sent again, whatever the comparison says.
                let reseal = seal_to
                    .as_ref()
                    .is_some_and(|k| self.sealed_to.get(&dk) != Some(&k.id()));
                let next = if reseal {
                    Some(resend(existing, spec))
                } else {
                    next_desired(existing, spec)
                };
                if let Some(spec) = next {
                    let topic = self.settings.topics.desired(&e.node, key);
                    let message = match &seal_to {
                        Some(k) => crate::seal::seal_pod(k, &topic, &spec)
                            .map(Message::SealedPod)
                            .map_err(|e| e.to_string()),
                        None => Ok(Message::DesiredPod(spec.clone())),
                    };
                    let payload = match message
                        .and_then(|m| wire::encode(spec.generation, &m).map_err(|e| e.to_string()))
                    {
                        Ok(p) => p,
                        Err(err) => {
                            tracing::error!(pod = %key, error = %err, "cannot encode the desired spec");
                            return;
                        }
                    };
                    out.push(Action::Publish { topic, payload });
                    self.index_dirty.insert(e.node.clone());
                    match &seal_to {
                        Some(k) => self.sealed_to.insert(dk.clone(), k.id()),
                        None => self.sealed_to.remove(&dk),
                    };
                    self.desired.insert(dk, spec);
                }
                if !e.accepted_sent {
                    e.accepted_sent = true;
                    out.push(Action::PodStatus {
                        pod: key.clone(),
                        owner: PodStatusOwner::Bridge,
                        body: render::accepted_pod_status(
                            &key.namespace,
                            &key.name,
                            &e.uid,
                            now_ms,
                        ),
                    });
                }
            }
        }
    }

    /// Every ConfigMap and Secret the pods refer to (as last looked up).
    pub fn referenced(&self) -> impl Iterator<Item = &ObjRef> {
        self.pods.values().flat_map(|e| e.refs.iter())
    }
}

/// An Event about a Node, as the kubelet records them (namespace
/// `default`, the node's name as its uid).
fn node_event(node: &str, kind: EventType, reason: &str, message: String, now_ms: u64) -> Action {
    Action::Event(KubeEvent {
        namespace: "default".to_string(),
        involved_kind: "Node",
        involved_name: node.to_string(),
        involved_uid: node.to_string(),
        kind,
        reason: reason.to_string(),
        message,
        time_ms: now_ms,
        host: node.to_string(),
        field_path: None,
    })
}

/// A Warning event about a pod on a kedge node.
fn pod_warning(e: &PodEntry, key: &PodKey, reason: &str, message: String, now_ms: u64) -> Action {
    Action::Event(KubeEvent {
        namespace: key.namespace.clone(),
        involved_kind: "Pod",
        involved_name: key.name.clone(),
        involved_uid: e.uid.clone(),
        kind: EventType::Warning,
        reason: reason.to_string(),
        message,
        time_ms: now_ms,
        host: e.node.clone(),
        field_path: None,
    })
}

/// A pod the bridge cannot send: the refusal recorded (so it is said
/// once), a Warning event and the refused status.
fn refuse_pod(
    e: &mut PodEntry,
    key: &PodKey,
    reported: &HashMap<NodePod, Reported>,
    reason: &str,
    message: String,
    now_ms: u64,
    out: &mut Vec<Action>,
) {
    e.refusal = Some(message.clone());
    e.accepted_sent = false;
    out.push(pod_warning(e, key, reason, message.clone(), now_ms));
    let dk = (e.node.clone(), key.clone());
    out.push(Action::PodStatus {
        pod: key.clone(),
        owner: PodStatusOwner::Bridge,
        body: render::refused_pod_status(
            &key.namespace,
            &key.name,
            &e.uid,
            reason,
            &message,
            now_ms,
            refused_waiting(reported, e, &dk).as_deref(),
        ),
    });
}

/// The containers (name, image) a refused pod shows waiting, or None when
/// its device reports it (it runs: a refused update changes only the
/// condition, never the phase).
fn refused_waiting(
    reported: &HashMap<NodePod, Reported>,
    e: &PodEntry,
    dk: &NodePod,
) -> Option<Vec<(String, String)>> {
    let runs = reported
        .get(dk)
        .and_then(|r| r.status.as_ref())
        .is_some_and(|s| s.uid == e.uid);
    (!runs).then(|| {
        e.pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect()
    })
}

/// The reason on a pod that needs Secrets sealed to a device that has
/// reported no (valid) sealing key.
pub const NO_SEALING_KEY: &str = "SealingKeyUnknown";

/// The key to seal a node's Secret-bearing specs to, from its last status;
/// Err: why the pod waits (its message).
fn sealing_key(node: &str, key: Option<[u8; 32]>) -> Result<crate::seal::PublicKey, String> {
    let Some(bytes) = key else {
        return Err(format!(
            "node {node:?} has not reported a sealing key (an agent older than wire version 5, or one that could not make its key: see its log); the pod uses Secrets, whose values are sent only sealed to the device"
        ));
    };
    crate::seal::PublicKey::from_bytes(&bytes, "the node status's sealing key")
        .map_err(|e| format!("node {node:?} reported an unusable sealing key ({e}); the pod uses Secrets, whose values are sent only sealed to the device"))
}

/// `spec` as the next generation after `existing` (same uid), or as at
/// least generation 1: for a spec that must go out again although it may
/// be unchanged (the device adopts it without a restart).
fn resend(existing: Option<&PodSpec>, mut spec: PodSpec) -> PodSpec {
    spec.generation = match existing {
        Some(e) if e.uid == spec.uid => e.generation + 1,
        _ => spec.generation.max(1),
    };
    spec
}

#[cfg(test)]
mod tests;

/// The Kubernetes API level the bridge is built against (k8s-openapi's
/// `v1_33` feature, Cargo.toml): the minor version its Nodes claim.
pub const KUBE_API_LEVEL: &str = "1.33.0";

/// The Nodes' `kubeletVersion`: a Kubernetes version string that tools
/// parse (`v1.33.0-kedge.0.1.0`: semver, kedge's version as the
/// pre-release), as Virtual Kubelet providers write theirs.
pub fn kubelet_version() -> String {
    format!("v{KUBE_API_LEVEL}-kedge.{}", env!("CARGO_PKG_VERSION"))
}

/// `spec.containers{NAME}`, or `spec.initContainers{NAME}` for an init
/// container of `spec` (the kubelet's `fieldPath` of a container's events).
fn container_field_path(spec: Option<&PodSpec>, container: &str) -> String {
    let init = spec.is_some_and(|s| s.init_containers.iter().any(|c| c.name == container));
    if init {
        format!("spec.initContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
    }
}
