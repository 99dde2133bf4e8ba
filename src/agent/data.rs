//! The device side of the data path (feature `data`): the local MQTT
//! endpoint workloads publish to, the host interface's side for Wasm
//! components (`kedge:data/publish`), and the forwarder that sends what
//! they published upstream, sealed, from the store.
//!
//! - **Endpoint.** MQTT 3.1.1 on `data.listen` (packets read and written by
//!   rumqttc's `mqttbytes` v4 codec). A connection authenticates as one
//!   container of one pod: username `namespace/pod/container`, password the
//!   HMAC-SHA256 (a per-device secret, 0600 in the data directory) of the
//!   pod's uid and that name — what the agent injects into the containers
//!   of pods a route names (`KEDGE_DATA_URL`, `KEDGE_DATA_USERNAME`,
//!   `KEDGE_DATA_PASSWORD`), so a pod can only publish as itself. A
//!   publish is routed (`data::route`), committed to redb in one durable
//!   transaction with the others read in the same pass, and only then
//!   acknowledged (QoS 1 PUBACK). A message no route takes is acknowledged
//!   and counted (MQTT 3.1.1 has no negative PUBACK).
//! - **Host interface.** A component's `publish` (`runtime::wasm` calls
//!   the `PodPublisher` its pod was given, `DataPath::publisher`) is
//!   attributed to the pod instance the data path admitted and the
//!   container the runtime names, taken like an endpoint message
//!   (`DataPath::take`: routes, counters) and committed the same way; what
//!   the endpoint would drop is refused with a reason (`PublishError`).
//! - **Into pods** (module-to-module). A route `INTO pod/…` commits its
//!   messages into the target pod's queue in the store (before the
//!   publisher's acknowledgement, in the same group commit). A connection
//!   of that pod (which gets the credentials even when it declares no
//!   route) may SUBSCRIBE with QoS 1; it is sent, with QoS 1, what its
//!   filters match (`Deliveries`), and a message leaves the queue on its
//!   PUBACK (counted sent on its route) or its TTL (counted dropped).
//!   SUBSCRIBE from a pod no route goes into is refused.
//! - **Group commit.** The endpoint's reads and the components' publishes
//!   are writes to one queue (`commit`): every write queued while a
//!   transaction runs goes into the next one, so concurrent workloads
//!   share the cost of a durable commit.
//! - **Forwarder.** Publishes through the agent's own MQTT session (one
//!   broker connection per device, one client id), at most `WINDOW`
//!   batches of about `BATCH_BYTES` unacknowledged, so a status report
//!   finds at most that much data ahead of it. While connected it reads the
//!   store in id order, builds batches of up to `data.batch_max_messages`,
//!   signs and seals each (`data::seal`) and publishes it with QoS 1 on
//!   `{prefix}/{node}/data` (`SessionCommand::PublishAcked`); a batch's
//!   messages leave the store on its PUBACK, and only once every earlier
//!   batch was acknowledged too. Every new connection starts again from the
//!   oldest message still stored (the sink drops repeats by message id).
//! - **Bounds.** A route's TTL and `data.budget_bytes`: what they drop is
//!   counted, logged and reported as a `DataDropped` Warning event.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use ring::hmac;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeFilter, SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::data::publish::{BatchError, Batching, PodPublisher, PublishError, Publishing};
use crate::data::{self, Batch, DataMessage, DeviceKey, Route, SinkPublicKey, Source};
use crate::model::{EnvVar, Event, EventType, PodSpec};
use crate::mqtt::SessionCommand;
use crate::store::{DataRecord, DataWrite, Store};

/// Largest packet a workload may send (a message and its topic).
const MAX_PACKET_BYTES: usize = data::publish::MAX_MESSAGE_BYTES;
/// Batches published and not yet acknowledged, at most. They share the
/// agent's connection with its status reports: `WINDOW * BATCH_BYTES` is the
/// most data a report can find ahead of it.
const WINDOW: usize = 4;
/// Bytes of stored messages per batch, about (below `data::MAX_BATCH_BYTES`;
/// one larger message makes a batch of its own).
const BATCH_BYTES: usize = 128 * 1024;
/// Free room in a workload connection's read buffer before each read.
const READ_ROOM: usize = 128 * 1024;
/// How often expired messages are dropped and drops reported.
const EXPIRY_TICK: Duration = Duration::from_secs(5);
/// Messages delivered into a pod on one connection and not yet
/// acknowledged (PUBACK), at most.
const DELIVERY_WINDOW: usize = 32;

/// Counters of the data path since the agent started that no stored
/// message moves (those that do are `RouteTally`'s, counted together).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub unrouted: AtomicU64,
    pub batches: AtomicU64,
    pub link_bytes: AtomicU64,
    pub refused_connections: AtomicU64,
}

/// One route's counters, by its id (`Route::id`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RouteCounters {
    /// The route's text and the pod that declared it (None: the node), as
    /// last declared; None when no route with this id was declared since
    /// the agent started (messages stored before a restart, under a route
    /// not declared again).
    known: Option<(String, Option<String>)>,
    /// Its priority, as last declared (the default when not known).
    priority: crate::model::Priority,
    /// Whether it is declared now; a line neither declared nor holding a
    /// stored message goes.
    declared: bool,
    received: u64,
    moved: Moved,
}

/// What happened to stored messages, for `RouteTally::count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored,
    Sent,
    DroppedTtl,
    DroppedBudget,
}

/// Which queue the messages `RouteTally::count` counts are (were) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// The store's queue for the broker (`data.budget_bytes` bounds it).
    Upstream,
    /// A pod's queue on this node (a module-to-module route).
    Pod,
}

/// What stored messages did, counted: a route's, or the node's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Moved {
    /// Stored minus gone: below zero for a moment when a message's going
    /// is counted before its storing (the two are counted after their
    /// commits, from different tasks); shown as zero then.
    queued: i64,
    queued_bytes: i64,
    sent: u64,
    sent_bytes: u64,
    dropped_ttl: u64,
    dropped_budget: u64,
}

impl Moved {
    /// One message of `bytes` had `fate`.
    fn count(&mut self, fate: Fate, bytes: u64) {
        let stored_bytes = signed(bytes);
        if fate == Fate::Stored {
            self.queued += 1;
            self.queued_bytes += stored_bytes;
            return;
        }
        self.queued -= 1;
        self.queued_bytes -= stored_bytes;
        match fate {
            Fate::Sent => {
                self.sent += 1;
                self.sent_bytes += bytes;
            }
            Fate::DroppedTtl => self.dropped_ttl += 1,
            Fate::DroppedBudget => self.dropped_budget += 1,
            Fate::Stored => {}
        }
    }
}

/// The counters stored messages move, per route and for the node, under
/// one lock: a status reads them all at one moment, so a message is never
/// both queued and sent in it (pure: no I/O, unit-tested).
#[derive(Debug, Default)]
struct RouteTally {
    routes: std::collections::BTreeMap<u32, RouteCounters>,
    /// The node's totals in `DataPathStatus`: `queued` and `sent` are the
    /// upstream queue's, the drops both queues'; `queued` is seeded from
    /// the store at start.
    node: Moved,
}

/// A signed count as the status shows it: never below zero.
fn shown(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `bytes` as a signed count (saturating: a stored message is far smaller).
fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl RouteTally {
    /// `routes` are declared by `pod` (None: the node).
    fn declare(&mut self, routes: &[Route], pod: Option<String>) {
        for r in routes {
            let c = self.routes.entry(r.id).or_default();
            c.known = Some((r.to_string(), pod.clone()));
            c.priority = r.priority;
            c.declared = true;
        }
    }

    /// `pod` (`namespace/name`) declares `routes` now: its routes that are
    /// not among them are no longer declared (a line with nothing stored
    /// goes), the others keep their counters.
    fn declare_pod(&mut self, pod: &str, routes: &[Route]) {
        for (id, c) in self.routes.iter_mut() {
            if !routes.iter().any(|r| r.id == *id)
                && c.known
                    .as_ref()
                    .is_some_and(|(_, p)| p.as_deref() == Some(pod))
            {
                c.declared = false;
            }
        }
        self.declare(routes, Some(pod.to_string()));
        self.routes.retain(|_, c| c.declared || c.moved.queued != 0);
    }

    /// `pod`'s routes are no longer declared.
    fn undeclare(&mut self, pod: &str) {
        self.declare_pod(pod, &[]);
    }

    /// Counts `messages` (each one's route and stored bytes) of `queue`
    /// as `fate` had them. Counts commute: a message's going counted before
    /// its storing leaves the same totals.
    fn count(&mut self, fate: Fate, queue: Queue, messages: &[(u32, u64)]) {
        for &(route, bytes) in messages {
            let c = self.routes.entry(route).or_default();
            if fate == Fate::Stored {
                c.received += 1;
            }
            c.moved.count(fate, bytes);
            match (queue, fate) {
                (Queue::Upstream, _) => self.node.count(fate, bytes),
                // A pod's queue is not the node's; its drops are.
                (Queue::Pod, Fate::DroppedTtl) => self.node.dropped_ttl += 1,
                (Queue::Pod, Fate::DroppedBudget) => self.node.dropped_budget += 1,
                (Queue::Pod, Fate::Stored | Fate::Sent) => {}
            }
        }
        // A route no longer declared goes once nothing of it is stored.
        self.routes.retain(|_, c| c.declared || c.moved.queued != 0);
    }

    /// The lines of the node status: the node's routes, then the pods',
    /// then what is stored under routes the agent does not know; at most
    /// `MAX_DATA_ROUTES`.
    fn lines(&self) -> Vec<crate::model::RouteStatus> {
        let mut lines: Vec<crate::model::RouteStatus> = self
            .routes
            .values()
            .map(|c| {
                let (route, pod) = c.known.clone().unwrap_or_default();
                let m = &c.moved;
                crate::model::RouteStatus {
                    route,
                    pod,
                    received: c.received,
                    queued: shown(m.queued),
                    queued_bytes: shown(m.queued_bytes),
                    sent: m.sent,
                    sent_bytes: m.sent_bytes,
                    dropped_ttl: m.dropped_ttl,
                    dropped_budget: m.dropped_budget,
                    priority: c.priority,
                }
            })
            .collect();
        lines.sort_by(|a, b| {
            (a.route.is_empty(), a.pod.is_some(), &a.pod, &a.route).cmp(&(
                b.route.is_empty(),
                b.pod.is_some(),
                &b.pod,
                &b.route,
            ))
        });
        lines.truncate(crate::model::validate::MAX_DATA_ROUTES);
        lines
    }
}

/// What of its route a message takes with it.
#[derive(Debug, Clone, Copy)]
struct Taken {
    id: u32,
    ttl: Duration,
    priority: crate::model::Priority,
}

/// What the controller, the endpoint and the forwarder share.
pub struct DataPath {
    /// The node's routes (`data.routes`).
    routes: Vec<Route>,
    /// The pods the controller started: (namespace, pod) → uid. Those a
    /// route names (`may_connect`, checked at each CONNECT, since a route
    /// into a pod may come with a pod started later) may connect.
    pods: RwLock<HashMap<(String, String), String>>,
    /// The routes running pods declare for themselves (`PodSpec.routes`),
    /// by (namespace, pod); the node's routes take precedence.
    pod_routes: RwLock<HashMap<(String, String), Vec<Route>>>,
    /// The TTL of a pod's route that gives none.
    default_ttl: Duration,
    credentials: hmac::Key,
    url: String,
    store: Arc<Store>,
    budget_bytes: u64,
    /// Writes waiting for the group commit (`commit`): every write queued
    /// while a commit runs goes into the next transaction together.
    commits: std::sync::Mutex<CommitQueue<PendingWrite>>,
    /// Woken after every commit, so the forwarder sends at once.
    committed: Notify,
    /// Moves after every commit that put messages into a pod's queue: the
    /// endpoint's connections of subscribed pods (each holds a receiver
    /// while it has subscriptions) read their queue again.
    into_pods: watch::Sender<u64>,
    pub counters: Counters,
    tally: std::sync::Mutex<RouteTally>,
}

impl DataPath {
    /// Reads (or makes) the credentials secret in `dir`.
    pub fn new(
        config: &crate::config::DataConfig,
        routes: Vec<Route>,
        dir: &Path,
        store: Arc<Store>,
    ) -> anyhow::Result<DataPath> {
        let secret = load_or_create_secret(&dir.join("endpoint-secret"))?;
        // What an earlier run stored is still queued, under its routes.
        let mut tally = RouteTally::default();
        tally.declare(&routes, None);
        for (route, (count, bytes)) in store.data_backlog_by_route()? {
            let c = tally.routes.entry(route).or_default();
            c.moved.queued += signed(count);
            c.moved.queued_bytes += signed(bytes);
        }
        let (count, bytes) = store.data_backlog()?;
        (tally.node.queued, tally.node.queued_bytes) = (signed(count), signed(bytes));
        Ok(DataPath {
            routes,
            pods: RwLock::new(HashMap::new()),
            pod_routes: RwLock::new(HashMap::new()),
            default_ttl: Duration::from_secs(config.default_ttl_secs),
            credentials: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            url: format!("mqtt://{}", config.advertised()),
            store,
            budget_bytes: config.budget_bytes,
            commits: std::sync::Mutex::new(CommitQueue::default()),
            committed: Notify::new(),
            into_pods: watch::Sender::new(0),
            counters: Counters::default(),
            tally: std::sync::Mutex::new(tally),
        })
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, RouteTally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data path's counters for the node status: what stored
    /// messages move read at one moment (`RouteTally`).
    pub fn status(&self) -> crate::model::DataPathStatus {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let tally = self.tally();
        let node = &tally.node;
        crate::model::DataPathStatus {
            received: load(&c.received),
            unrouted: load(&c.unrouted),
            refused_connections: load(&c.refused_connections),
            queued: shown(node.queued),
            queued_bytes: shown(node.queued_bytes),
            budget_bytes: self.budget_bytes,
            sent: node.sent,
            sent_bytes: node.sent_bytes,
            batches: load(&c.batches),
            link_bytes: load(&c.link_bytes),
            dropped_ttl: node.dropped_ttl,
            dropped_budget: node.dropped_budget,
            routes: tally.lines(),
        }
    }

    fn password(&self, uid: &str, username: &str) -> hmac::Tag {
        hmac::sign(&self.credentials, format!("{uid}\n{username}").as_bytes())
    }

    /// For a pod a route names (the node's, or its own): lets its
    /// containers connect, and returns the spec its runtime gets, with the
    /// endpoint's address and each container's credentials in its
    /// environment. Other pods are returned as they are (they did not ask
    /// for the endpoint).
    pub fn admit(&self, mut spec: PodSpec) -> PodSpec {
        let own = data::route::pod_routes(&spec, self.default_ttl);
        let key = (spec.namespace.clone(), spec.name.clone());
        self.tally()
            .declare_pod(&format!("{}/{}", spec.namespace, spec.name), &own);
        let mut pod_routes = self.pod_routes.write().unwrap_or_else(|p| p.into_inner());
        if own.is_empty() {
            pod_routes.remove(&key);
        } else {
            pod_routes.insert(key.clone(), own);
        }
        drop(pod_routes);
        let replaced = self
            .pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, spec.uid.clone())
            .filter(|old| *old != spec.uid);
        if let Some(old) = replaced {
            // The replaced pod's `publish-once` sequences go.
            let write = DataWrite {
                forget_sequences: Some((format!("{}/{}", spec.namespace, spec.name), old)),
                ..DataWrite::default()
            };
            self.commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_later((write, None));
        }
        if !self.may_connect(&spec.namespace, &spec.name) {
            return spec;
        }
        for container in spec.containers.iter_mut() {
            let username = format!("{}/{}/{}", spec.namespace, spec.name, container.name);
            let password = hex::encode(self.password(&spec.uid, &username).as_ref());
            container.env.retain(|e| !e.name.starts_with("KEDGE_DATA_"));
            for (name, value) in [
                ("KEDGE_DATA_URL", self.url.clone()),
                ("KEDGE_DATA_USERNAME", username),
                ("KEDGE_DATA_PASSWORD", password),
            ] {
                // Literal values: the runtime expands `$(VAR)` in env values
                // at start (`model::expansion`), so they travel escaped.
                container
                    .env
                    .push(EnvVar::new(name, crate::model::expansion::escape(&value)));
            }
        }
        spec
    }

    /// A pod that is gone can no longer connect, and its routes go; so do
    /// its containers' `publish-once` sequences, with the next commit.
    pub fn forget(&self, namespace: &str, pod: &str) {
        let key = (namespace.to_string(), pod.to_string());
        let uid = self
            .pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(uid) = uid {
            let write = DataWrite {
                forget_sequences: Some((format!("{namespace}/{pod}"), uid)),
                ..DataWrite::default()
            };
            self.commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_later((write, None));
        }
        self.pod_routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.tally().undeclare(&format!("{namespace}/{pod}"));
    }

    /// The route a message of `source` on `topic` takes, and how long it
    /// may wait for the broker: the first route that takes it, the node's
    /// routes before the pod's own; None: no route takes it.
    #[cfg(test)]
    fn route_of(&self, source: &Source, topic: &str) -> Option<(u32, Duration)> {
        self.route_and_target(source, topic)
            .map(|(r, _)| (r.id, r.ttl))
    }

    /// The route a message of `source` on `topic` takes (its id, TTL and
    /// priority in a `Taken`), and the pod (`namespace/pod`) it goes into
    /// (None: upstream).
    fn route_and_target(&self, source: &Source, topic: &str) -> Option<(Taken, Option<String>)> {
        let found = |r: &Route| {
            let target = match &r.target {
                data::route::Target::Upstream => None,
                data::route::Target::Pod { namespace, pod } => Some(format!("{namespace}/{pod}")),
            };
            let taken = Taken {
                id: r.id,
                ttl: r.ttl,
                priority: r.priority,
            };
            (taken, target)
        };
        if let Some(r) = data::route::route_for(&self.routes, source, topic) {
            return Some(found(r));
        }
        let key = (source.namespace.clone(), source.pod.clone());
        let pod_routes = self.pod_routes.read().unwrap_or_else(|p| p.into_inner());
        data::route::route_for(pod_routes.get(&key)?, source, topic).map(found)
    }

    /// Whether a route names the pod `namespace/pod`: the node's or its
    /// own as source, or any as target. Only then does it get the
    /// endpoint's credentials and may connect.
    fn may_connect(&self, namespace: &str, pod: &str) -> bool {
        self.routes.iter().any(|r| r.names_pod(namespace, pod))
            || self
                .pod_routes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&(namespace.to_string(), pod.to_string()))
            || self.routes_into(namespace, pod)
    }

    /// Whether a route (the node's, or one a running pod declares) goes
    /// into the pod `namespace/pod`: only then may its containers
    /// subscribe.
    fn routes_into(&self, namespace: &str, pod: &str) -> bool {
        self.routes.iter().any(|r| r.target.is_pod(namespace, pod))
            || self
                .pod_routes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .flatten()
                .any(|r| r.target.is_pod(namespace, pod))
    }

    /// Takes one message of `source` on `topic` (counted as received): the
    /// record to store under the route that takes it, or None when no
    /// route does (counted as unrouted). The endpoint and the host
    /// interface take every message here.
    /// Also the pod the route goes into (None: upstream).
    fn take(
        &self,
        source: &Source,
        topic: &str,
        payload: Vec<u8>,
    ) -> Option<(DataRecord, Option<String>)> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let Some((route, target)) = self.route_and_target(source, topic) else {
            self.counters.unrouted.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let now = crate::model::now_ms();
        let record = DataRecord {
            source: source.clone(),
            topic: topic.to_string(),
            device_time_ms: now,
            expires_ms: now.saturating_add(route.ttl.as_millis() as u64),
            payload,
            route: route.id,
            priority: route.priority,
        };
        Some((record, target))
    }

    /// The host interface's handle for the containers of the pod `spec`
    /// (`runtime::PodContext::data`): it publishes as that pod, whichever
    /// container the runtime names.
    pub fn publisher(self: &Arc<Self>, spec: &PodSpec) -> Arc<dyn PodPublisher> {
        Arc::new(PodData {
            path: self.clone(),
            namespace: spec.namespace.clone(),
            pod: spec.name.clone(),
            uid: spec.uid.clone(),
        })
    }

    /// The uid of the pod `namespace/pod` the controller started.
    fn admitted_uid(&self, namespace: &str, pod: &str) -> Option<String> {
        self.pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned()
    }

    /// The source a CONNECT's credentials name, if they are right.
    fn authenticate(&self, username: &str, password: &str) -> Option<Source> {
        let mut parts = username.split('/');
        let (Some(namespace), Some(pod), Some(container), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let uid = self
            .pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_string(), pod.to_string()))?
            .clone();
        if !self.may_connect(namespace, pod) {
            return None;
        }
        let given = hex::decode(password).ok()?;
        hmac::verify(
            &self.credentials,
            format!("{uid}\n{username}").as_bytes(),
            &given,
        )
        .ok()?;
        Some(Source {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        })
    }
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => return Ok(bytes),
        Ok(_) => anyhow::bail!("{} is not a 32-byte secret", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut secret = vec![0; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&secret)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(secret)
}

// ---------------------------------------------------------------------------
// Endpoint
// ---------------------------------------------------------------------------

/// Accepts workload connections until the listener fails.
pub async fn serve_endpoint(listener: TcpListener, path: Arc<DataPath>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let path = path.clone();
                crate::spawn(async move {
                    if let Err(e) = connection(stream, &path).await {
                        debug!(%peer, error = %e, "data endpoint connection closed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "data endpoint cannot accept connections");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed MQTT packet: {0:?}")]
    Packet(rumqttc::mqttbytes::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("cannot commit workload messages: {0}")]
    Store(String),
}

async fn connection(mut stream: TcpStream, path: &Arc<DataPath>) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(4096);
    let mut output = BytesMut::with_capacity(1024);
    // The pod and container, and this client's key for QoS 2 state.
    let mut source: Option<(Source, String)> = None;
    let mut keep_alive = Duration::from_secs(60);
    let mut unrouted_warned = false;
    // What this connection delivers into its pod, and the messages its
    // subscriber acknowledged since the last pass.
    let mut deliveries = Deliveries::default();
    let mut delivered: Vec<u64> = Vec::new();
    // Moves when messages went into a pod's queue (`DataPath::into_pods`).
    let mut into_pods = path.into_pods.subscribe();
    loop {
        // Every complete packet read so far: what they bring is committed
        // in one transaction, then acknowledged.
        let mut write = DataWrite::default();
        let mut replies = Vec::new();
        loop {
            let packet = match Packet::read(&mut input, MAX_PACKET_BYTES) {
                Ok(p) => p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(ConnectionError::Packet(e)),
            };
            let Some((who, client)) = &source else {
                let Packet::Connect(connect) = packet else {
                    return Err(ConnectionError::Protocol("expected CONNECT first".into()));
                };
                let login = connect.login.as_ref();
                let Some(s) = login.and_then(|l| path.authenticate(&l.username, &l.password))
                else {
                    path.counters
                        .refused_connections
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(
                        username = login.map_or("", |l| l.username.as_str()),
                        "data endpoint refused a connection: unknown pod or wrong credentials"
                    );
                    ConnAck::new(ConnectReturnCode::BadUserNamePassword, false)
                        .write(&mut output)
                        .map_err(ConnectionError::Packet)?;
                    stream.write_all(&output).await?;
                    return Ok(());
                };
                debug!(source = %s, client_id = %connect.client_id, "workload connected to the data endpoint");
                let client = format!("{s}|{}", connect.client_id);
                // The only session state is the QoS 2 publishes not yet
                // released, kept durably for every client that asks for a
                // session (so its session is always present: a client told
                // otherwise would drop what it has not sent yet); a clean
                // session forgets them.
                let present = !connect.clean_session;
                if connect.clean_session {
                    write.clear_client = Some(client.clone());
                }
                if connect.keep_alive > 0 {
                    keep_alive = Duration::from_secs(u64::from(connect.keep_alive) * 3 / 2);
                }
                replies.push(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    present,
                )));
                source = Some((s, client));
                continue;
            };
            match packet {
                Packet::Publish(publish) => {
                    let key = match publish.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => {
                            replies.push(Packet::PubAck(PubAck::new(publish.pkid)));
                            None
                        }
                        QoS::ExactlyOnce => {
                            replies.push(Packet::PubRec(PubRec::new(publish.pkid)));
                            Some(format!("{client}\n{}", publish.pkid))
                        }
                    };
                    match path.take(who, &publish.topic, publish.payload.into()) {
                        Some((record, None)) => write.records.push((record, key)),
                        Some((record, Some(target))) => {
                            write.into_pods.push((target, record, key));
                        }
                        // MQTT 3.1.1 has no negative acknowledgement: the
                        // message was acknowledged above and is counted.
                        None if !unrouted_warned => {
                            unrouted_warned = true;
                            warn!(source = %who, topic = %publish.topic, "no data route takes this message; dropped (counted as unrouted)");
                        }
                        None => {}
                    }
                }
                Packet::PubRel(rel) => {
                    write.released.push(format!("{client}\n{}", rel.pkid));
                    replies.push(Packet::PubComp(PubComp::new(rel.pkid)));
                }
                Packet::PingReq => replies.push(Packet::PingResp),
                Packet::Subscribe(sub) => {
                    // Only a pod a route goes into may subscribe.
                    let routed = path.routes_into(&who.namespace, &who.pod);
                    let codes = deliveries.subscribe(&sub.filters, routed);
                    if codes.contains(&SubscribeReasonCode::Failure) {
                        warn!(source = %who, filters = ?sub.filters.iter().map(|f| &f.path).collect::<Vec<_>>(), routed, "data endpoint refused a subscription: only a pod a route goes into may subscribe, with QoS 1 or 2 and a valid filter");
                    }
                    replies.push(Packet::SubAck(SubAck::new(sub.pkid, codes)));
                }
                Packet::Unsubscribe(unsub) => {
                    deliveries.unsubscribe(&unsub.topics);
                    replies.push(Packet::UnsubAck(UnsubAck::new(unsub.pkid)));
                }
                Packet::PubAck(ack) => {
                    if let Some(id) = deliveries.acked(ack.pkid) {
                        delivered.push(id);
                    }
                }
                Packet::Disconnect => {
                    commit(path, write).await.map_err(ConnectionError::Store)?;
                    return Ok(());
                }
                Packet::Connect(_) => {
                    return Err(ConnectionError::Protocol("a second CONNECT".into()));
                }
                other => debug!(packet = ?other, "data endpoint ignores this packet"),
            }
        }
        commit(path, write).await.map_err(ConnectionError::Store)?;
        for reply in replies {
            let written = match reply {
                Packet::ConnAck(p) => p.write(&mut output),
                Packet::PubAck(p) => p.write(&mut output),
                Packet::PubRec(p) => p.write(&mut output),
                Packet::PubComp(p) => p.write(&mut output),
                Packet::PingResp => PingResp.write(&mut output),
                Packet::SubAck(p) => p.write(&mut output),
                Packet::UnsubAck(p) => p.write(&mut output),
                _ => Ok(0),
            };
            written.map_err(ConnectionError::Packet)?;
        }
        if let Some((who, _)) = &source {
            let target = format!("{}/{}", who.namespace, who.pod);
            deliver(path, &target, &mut deliveries, &mut delivered, &mut output)?;
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        // Room for a burst of packets in one read: what one read brings is
        // one commit (about 100 in-flight 1-KB publishes fit).
        if input.capacity() - input.len() < READ_ROOM / 4 {
            input.reserve(READ_ROOM);
        }
        // Also woken when messages went into a pod's queue, while this
        // connection has subscriptions (read_buf is cancel safe).
        let subscribed = deliveries.is_subscribed();
        let read = tokio::select! {
            read = tokio::time::timeout(keep_alive, stream.read_buf(&mut input)) => read,
            changed = into_pods.changed(), if subscribed => match changed {
                Ok(()) => continue,
                Err(_) => return Ok(()),
            },
        };
        match read {
            Err(_) => return Err(ConnectionError::Protocol("keep-alive expired".into())),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// What one endpoint connection delivers into its pod (pure: no I/O): its
/// subscriptions, the messages sent and awaiting their PUBACK, and how far
/// it has read the pod's queue. A message leaves the queue on its PUBACK;
/// one no subscription matches stays (a later subscription may), until
/// its route's TTL.
#[derive(Debug, Default)]
struct Deliveries {
    /// The topic filters subscribed on this connection (a connection's
    /// subscriptions end with it: CONNACK says no session is present for
    /// them, so a client subscribes on every connection).
    filters: Vec<String>,
    /// Packet id → message id, sent and not yet acknowledged.
    in_flight: std::collections::BTreeMap<u16, u64>,
    /// The highest message id of the queue looked at.
    read_up_to: u64,
    last_packet_id: u16,
}

impl Deliveries {
    /// A SUBSCRIBE's answer: granted QoS 1 (QoS 2 is granted as 1) for
    /// each valid filter when `routed` (a route goes into this pod); a
    /// failure for QoS 0 (what is delivered stays until acknowledged, which
    /// QoS 0 never is), an invalid filter, or a pod no route goes into. A
    /// new filter reads the queue again from its start.
    fn subscribe(&mut self, filters: &[SubscribeFilter], routed: bool) -> Vec<SubscribeReasonCode> {
        filters
            .iter()
            .map(|f| {
                if !routed || f.qos == QoS::AtMostOnce || !rumqttc::mqttbytes::valid_filter(&f.path)
                {
                    return SubscribeReasonCode::Failure;
                }
                if !self.filters.contains(&f.path) {
                    self.filters.push(f.path.clone());
                    self.read_up_to = 0;
                }
                SubscribeReasonCode::Success(QoS::AtLeastOnce)
            })
            .collect()
    }

    fn unsubscribe(&mut self, filters: &[String]) {
        self.filters.retain(|f| !filters.contains(f));
    }

    fn is_subscribed(&self) -> bool {
        !self.filters.is_empty()
    }

    /// Whether to read more of the queue: subscribed, with room in the
    /// window.
    fn wants_more(&self) -> bool {
        self.is_subscribed() && self.in_flight.len() < DELIVERY_WINDOW
    }

    /// Of `queued` (the queue's next messages after `read_up_to`, in id
    /// order), those to send now, each with its packet id: the ones a
    /// subscription matches and not in flight already, while the window
    /// has room.
    fn take(&mut self, queued: Vec<(u64, DataRecord)>) -> Vec<(u16, DataRecord)> {
        let mut out = Vec::new();
        for (id, record) in queued {
            if self.in_flight.len() >= DELIVERY_WINDOW {
                break;
            }
            self.read_up_to = self.read_up_to.max(id);
            if self.in_flight.values().any(|&i| i == id)
                || !self
                    .filters
                    .iter()
                    .any(|f| rumqttc::mqttbytes::matches(&record.topic, f))
            {
                continue;
            }
            let packet_id = self.next_packet_id();
            self.in_flight.insert(packet_id, id);
            out.push((packet_id, record));
        }
        out
    }

    /// A PUBACK: the message it acknowledges (None: not one in flight).
    fn acked(&mut self, packet_id: u16) -> Option<u64> {
        self.in_flight.remove(&packet_id)
    }

    /// The next packet id not in flight (1 to 65535; the window is far
    /// smaller).
    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains_key(&self.last_packet_id) {
                return self.last_packet_id;
            }
        }
    }
}

/// Removes what the connection's subscriber acknowledged from the queue of
/// its pod `target` (counted as sent on its route), then writes into
/// `output` the queue's next messages its subscriptions match, while the
/// window has room.
fn deliver(
    path: &DataPath,
    target: &str,
    deliveries: &mut Deliveries,
    delivered: &mut Vec<u64>,
    output: &mut BytesMut,
) -> Result<(), ConnectionError> {
    if !delivered.is_empty() {
        let removed = path
            .store
            .ack_pod_data(target, delivered)
            .map_err(|e| ConnectionError::Store(e.to_string()))?;
        delivered.clear();
        path.tally().count(Fate::Sent, Queue::Pod, &removed);
    }
    while deliveries.wants_more() {
        let before = deliveries.read_up_to;
        let queued = path
            .store
            .pod_data(target, before, DELIVERY_WINDOW)
            .map_err(|e| ConnectionError::Store(e.to_string()))?;
        if queued.is_empty() {
            break;
        }
        for (packet_id, record) in deliveries.take(queued) {
            let mut publish = Publish::new(record.topic, QoS::AtLeastOnce, record.payload);
            publish.pkid = packet_id;
            publish.write(output).map_err(ConnectionError::Packet)?;
        }
        if deliveries.read_up_to == before {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Host interface (`kedge:data/publish`)
// ---------------------------------------------------------------------------

/// The host interface's handle for one pod: publishes as its namespace,
/// name and uid.
struct PodData {
    path: Arc<DataPath>,
    namespace: String,
    pod: String,
    uid: String,
}

impl std::fmt::Debug for PodData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PodData({}/{}, uid {})",
            self.namespace, self.pod, self.uid
        )
    }
}

impl PodPublisher for PodData {
    fn publish(
        &self,
        container: &str,
        sequence: Option<u64>,
        topic: String,
        payload: Vec<u8>,
    ) -> Publishing<'_> {
        let batch = self.publish_batch(container, sequence, vec![(topic, payload)]);
        Box::pin(async move { batch.await.map_err(|e| e.error) })
    }

    fn publish_batch(
        &self,
        container: &str,
        sequence: Option<u64>,
        messages: Vec<(String, Vec<u8>)>,
    ) -> Batching<'_> {
        let source = Source {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: container.to_string(),
        };
        Box::pin(publish(&self.path, &self.uid, source, sequence, messages))
    }
}

/// One host-interface publish of one message or a batch: checked,
/// attributed to `source` (an instance of the pod `uid`), routed and
/// committed as messages to the endpoint are, but refused with a reason
/// (and the index of the first message refused) instead of dropped; all or
/// nothing, in one write of the group commit. With a `sequence`, stored
/// only if it is above the last one `source` had stored
/// (`DataWrite::sequence`), as a QoS 2 packet id is on the endpoint. A
/// refusal of the whole (`unavailable`, `storage`) names message 0.
async fn publish(
    path: &Arc<DataPath>,
    uid: &str,
    source: Source,
    sequence: Option<u64>,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<(), BatchError> {
    data::publish::check_batch(&messages)?;
    let refused = |index: usize, topic: &str| {
        // A message no route takes: received, and unrouted.
        path.counters.received.fetch_add(1, Ordering::Relaxed);
        path.counters.unrouted.fetch_add(1, Ordering::Relaxed);
        BatchError {
            index,
            error: PublishError::NoRoute {
                from: source.to_string(),
                topic: topic.to_string(),
            },
        }
    };
    let Some((first, _)) = messages.first() else {
        return Ok(());
    };
    let admitted = path.admitted_uid(&source.namespace, &source.pod);
    match may_publish(admitted.as_deref(), uid, &source, first) {
        Err(PublishError::NoRoute { topic, .. }) => return Err(refused(0, &topic)),
        Err(error) => return Err(BatchError { index: 0, error }),
        Ok(()) => {}
    }
    // All or nothing: a message no route takes refuses the batch before
    // any is taken.
    if let Some(index) = messages
        .iter()
        .position(|(topic, _)| path.route_and_target(&source, topic).is_none())
    {
        return Err(refused(index, &messages[index].0));
    }
    let mut write = DataWrite {
        sequence: sequence.map(|n| (crate::store::sequence_key(&source, uid), n)),
        ..DataWrite::default()
    };
    for (index, (topic, payload)) in messages.into_iter().enumerate() {
        // (Routes that changed since the look-up above refuse it whole.)
        let Some((record, target)) = path.take(&source, &topic, payload) else {
            return Err(refused(index, &topic));
        };
        match target {
            None => write.records.push((record, None)),
            Some(target) => write.into_pods.push((target, record, None)),
        }
    }
    commit(path, write).await.map_err(|e| BatchError {
        index: 0,
        error: PublishError::Storage(e),
    })
}

/// Whether an instance of the pod `uid` may publish as `source`, given the
/// uid under which a route admitted a pod of that name (None: no route
/// names it, so nothing it publishes would be taken).
fn may_publish(
    admitted: Option<&str>,
    uid: &str,
    source: &Source,
    topic: &str,
) -> Result<(), PublishError> {
    match admitted {
        None => Err(PublishError::NoRoute {
            from: source.to_string(),
            topic: topic.to_string(),
        }),
        Some(admitted) if admitted != uid => Err(PublishError::Unavailable(format!(
            "pod {}/{} was replaced (uid {admitted}); this instance (uid {uid}) is stopping",
            source.namespace, source.pod
        ))),
        Some(_) => Ok(()),
    }
}

/// The data path's handle for a node without one (no
/// `data.sink_public_key`): every publish is refused as unavailable.
pub fn no_data_path(node: &str) -> Arc<dyn PodPublisher> {
    Arc::new(NoDataPath(format!(
        "node {node} has no data path: set data.sink_public_key in its configuration (docs/config.md)"
    )))
}

#[derive(Debug)]
struct NoDataPath(String);

impl PodPublisher for NoDataPath {
    fn publish(&self, _: &str, _: Option<u64>, _: String, _: Vec<u8>) -> Publishing<'_> {
        Box::pin(std::future::ready(Err(PublishError::Unavailable(
            self.0.clone(),
        ))))
    }

    fn publish_batch(&self, _: &str, _: Option<u64>, _: Vec<(String, Vec<u8>)>) -> Batching<'_> {
        Box::pin(std::future::ready(Err(BatchError {
            index: 0,
            error: PublishError::Unavailable(self.0.clone()),
        })))
    }
}

// ---------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------

/// A write waiting for the group commit, and who waits for it (None: no
/// one, a write `push_later` queued).
type PendingWrite = (DataWrite, Option<oneshot::Sender<Result<(), String>>>);

/// The group commit's state (pure): the writes waiting, and whether a
/// committer runs. The first write queued while none runs starts one; it
/// takes everything waiting at once, commits it, and ends when nothing
/// waits.
#[derive(Debug)]
struct CommitQueue<W> {
    waiting: Vec<W>,
    committing: bool,
}

impl<W> Default for CommitQueue<W> {
    fn default() -> Self {
        CommitQueue {
            waiting: Vec::new(),
            committing: false,
        }
    }
}

impl<W> CommitQueue<W> {
    /// Queues `write`; true when the caller must start a committer.
    fn push(&mut self, write: W) -> bool {
        self.waiting.push(write);
        !std::mem::replace(&mut self.committing, true)
    }

    /// Queues `write` for whichever commit comes next, starting none (for
    /// what may wait: the sequences of a pod that is gone).
    fn push_later(&mut self, write: W) {
        self.waiting.push(write);
    }

    /// What the committer commits next: everything waiting, in order.
    /// None when nothing waits: the committer ends, and the next `push`
    /// starts another.
    fn take(&mut self) -> Option<Vec<W>> {
        if self.waiting.is_empty() {
            self.committing = false;
            return None;
        }
        Some(std::mem::take(&mut self.waiting))
    }
}

/// Commits `write` durably, in one transaction with every write queued
/// while the previous commit ran (the endpoint's connections' and the host
/// interface's alike); Ok once committed. On Err nothing of it is stored:
/// the endpoint fails the connection without acknowledging anything (the
/// workload's client sends it again), the host interface returns `storage`.
async fn commit(path: &Arc<DataPath>, write: DataWrite) -> Result<(), String> {
    if write.is_empty() {
        return Ok(());
    }
    let (done, committed) = oneshot::channel();
    let start = path
        .commits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((write, Some(done)));
    if start {
        crate::spawn(run_commits(path.clone()));
    }
    committed
        .await
        .unwrap_or_else(|_| Err("the data path's commit task ended".into()))
}

/// The committer: commits what waits, group after group, until nothing
/// does.
async fn run_commits(path: Arc<DataPath>) {
    loop {
        let group = path
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(group) = group else { return };
        let (writes, waiting): (Vec<DataWrite>, Vec<_>) = group.into_iter().unzip();
        let new_messages = writes.iter().any(|w| !w.records.is_empty());
        let mut into_pods = 0;
        let store = path.store.clone();
        let budget = path.budget_bytes;
        let appended = tokio::task::spawn_blocking(move || store.append_data_all(writes, budget))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let result = appended.map(|appended| {
            into_pods = appended.stored_in_pods.len();
            let mut tally = path.tally();
            tally.count(Fate::Stored, Queue::Upstream, &appended.stored);
            tally.count(Fate::Stored, Queue::Pod, &appended.stored_in_pods);
            tally.count(
                Fate::DroppedBudget,
                Queue::Upstream,
                &appended.dropped_budget,
            );
        });
        if into_pods > 0 {
            path.into_pods.send_modify(|n| *n = n.wrapping_add(1));
        }
        if result.is_ok() && new_messages {
            path.committed.notify_one();
        }
        if let Err(e) = &result {
            warn!(error = %e, "cannot commit workload messages");
        }
        for done in waiting.into_iter().flatten() {
            let _ = done.send(result.clone());
        }
    }
}

// ---------------------------------------------------------------------------
// Forwarder
// ---------------------------------------------------------------------------

/// What the forwarder needs besides the shared path.
pub struct ForwarderSettings {
    /// The agent's MQTT session: each batch is a
    /// `SessionCommand::PublishAcked`, answered on the broker's PUBACK.
    pub session: mpsc::UnboundedSender<SessionCommand>,
    /// Whether that session is connected (the controller's view of it).
    pub connected: watch::Receiver<bool>,
    pub topic: String,
    pub node: String,
    pub device_key: DeviceKey,
    pub sink: SinkPublicKey,
    pub batch_max_messages: usize,
    /// How each batch is compressed before it is signed and sealed
    /// (`data.compression`).
    pub compression: data::Compression,
    /// Where `DataDropped` events go (the controller's event channel).
    pub events: mpsc::UnboundedSender<Event>,
}

/// A batch published and not yet acknowledged.
struct InFlight {
    /// Answered on the PUBACK; dropped unanswered when the publish was not
    /// made or its connection ended first.
    done: oneshot::Receiver<()>,
    /// Its messages: a range of one priority's queue.
    range: Sent,
    /// Sealed bytes on the link.
    bytes: u64,
}

/// The messages of a batch: the priority of their queue and the first and
/// last id (`Store::ack_data`).
type Sent = (crate::model::Priority, u64, u64);

/// Sends stored messages upstream through the agent's session, forever.
pub async fn forward(mut settings: ForwarderSettings, path: Arc<DataPath>) {
    let mut reported = (0u64, 0u64);
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        while !*settings.connected.borrow_and_update() {
            tokio::select! {
                changed = settings.connected.changed() => if changed.is_err() { return },
                _ = tick.tick() => expire_and_report(&settings, &path, &mut reported),
            }
        }
        debug!("data forwarder sending from the oldest stored message");
        // Every connection starts again from the oldest message still
        // stored, the highest priority first: what was sent and not
        // acknowledged goes again.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // Per priority, the newest id sent on this connection.
        let mut sent = [0u64; crate::store::queues::LEVELS];
        // What the broker acknowledged leaves the store in one blocking
        // task at a time (`deleting`): neither an acknowledgement nor the
        // next batch waits for the store's write lock, which the endpoint's
        // commits take all the time.
        let mut acked: Vec<Sent> = Vec::new();
        let mut deleting: Option<Deletion> = None;
        let ended = loop {
            while in_flight.len() < WINDOW {
                match next_batch(&settings, &path, &sent) {
                    Ok(Some((payload, range, messages))) => {
                        let bytes = payload.len() as u64;
                        let (done, answer) = oneshot::channel();
                        let publish = SessionCommand::PublishAcked {
                            topic: settings.topic.clone(),
                            payload,
                            retain: false,
                            done,
                        };
                        if settings.session.send(publish).is_err() {
                            return; // the agent is stopping
                        }
                        let (priority, _, last_id) = range;
                        debug!(%priority, last_id, messages, "data batch published");
                        in_flight.push_back(InFlight {
                            done: answer,
                            range,
                            bytes,
                        });
                        sent[usize::from(priority.0)] = last_id;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot build a data batch");
                        break;
                    }
                }
            }
            if deleting.is_none() && !acked.is_empty() {
                deleting = Some(delete_acknowledged(&path, std::mem::take(&mut acked)));
            }
            // Acknowledgements arrive in publish order (one connection);
            // each batch's messages leave the store once it is answered.
            let oldest = async {
                match in_flight.front_mut() {
                    Some(batch) => (&mut batch.done).await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let deleted = async {
                match deleting.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                answered = oldest => {
                    if !answered {
                        break "a data batch was not acknowledged (its connection ended)";
                    }
                    // This one, and every later one already answered.
                    let mut answered = true;
                    while answered && let Some(batch) = in_flight.pop_front() {
                        debug!(last_id = batch.range.2, in_flight = in_flight.len(), "data batch acknowledged");
                        let c = &path.counters;
                        c.batches.fetch_add(1, Ordering::Relaxed);
                        c.link_bytes.fetch_add(batch.bytes, Ordering::Relaxed);
                        acked.push(batch.range);
                        answered = in_flight
                            .front_mut()
                            .is_some_and(|next| next.done.try_recv().is_ok());
                    }
                }
                joined = deleted => {
                    deleting = None;
                    deleted_messages(&path, joined);
                }
                _ = path.committed.notified() => {}
                _ = tick.tick() => expire_and_report(&settings, &path, &mut reported),
                changed = settings.connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*settings.connected.borrow() {
                        break "the broker disconnected";
                    }
                }
            }
        };
        // What was acknowledged leaves the store before the next connection
        // starts again from the oldest stored message.
        if let Some(task) = deleting.take() {
            deleted_messages(&path, task.await);
        }
        if !acked.is_empty() {
            deleted_messages(&path, delete_acknowledged(&path, acked).await);
        }
        info!(
            reason = ended,
            unacknowledged = in_flight.len(),
            "data forwarder paused; unacknowledged batches are sent again"
        );
        // Until the session reconnects (the controller may not have seen the
        // end of the connection yet), or a pause when the publish was not
        // queued at all.
        tokio::select! {
            _ = settings.connected.changed() => {}
            _ = tokio::time::sleep(EXPIRY_TICK) => {}
        }
    }
}

/// A blocking task removing what the broker acknowledged, and what it
/// removed.
type Deletion = tokio::task::JoinHandle<Result<crate::store::RouteBytes, crate::store::StoreError>>;

/// Removes the stored messages of the acknowledged batches off the async
/// threads.
fn delete_acknowledged(path: &Arc<DataPath>, batches: Vec<Sent>) -> Deletion {
    let store = path.store.clone();
    tokio::task::spawn_blocking(move || store.ack_data(&batches))
}

/// Counts what a deletion removed as sent (a failed deletion is not
/// retried on this connection: its messages are sent again on the next
/// one, and the sink drops the repeats).
fn deleted_messages(
    path: &DataPath,
    joined: Result<
        Result<crate::store::RouteBytes, crate::store::StoreError>,
        tokio::task::JoinError,
    >,
) {
    match joined {
        Ok(Ok(removed)) => path.tally().count(Fate::Sent, Queue::Upstream, &removed),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot delete acknowledged workload messages; they will be sent again");
        }
        Err(e) => {
            warn!(error = %e, "the deletion of acknowledged workload messages failed");
        }
    }
}

/// The next batch, given the newest id sent of each priority: of the
/// highest priority with messages not sent (`store::queues::next_queue`),
/// oldest first. Its sealed bytes, its range and its size.
fn next_batch(
    settings: &ForwarderSettings,
    path: &DataPath,
    sent: &[u64; crate::store::queues::LEVELS],
) -> anyhow::Result<Option<(Vec<u8>, Sent, u64)>> {
    let Some((priority, records)) =
        path.store
            .data_next(sent, settings.batch_max_messages, BATCH_BYTES)?
    else {
        return Ok(None);
    };
    let Some(&(first_id, _)) = records.first() else {
        return Ok(None);
    };
    let batch = Batch {
        device: settings.node.clone(),
        messages: records
            .into_iter()
            .map(|(id, r)| {
                (
                    id,
                    DataMessage {
                        source: r.source,
                        topic: r.topic,
                        device_time_ms: r.device_time_ms,
                        payload: r.payload,
                    },
                )
            })
            .collect(),
    };
    let sealed = data::seal(
        &batch,
        settings.compression,
        &settings.device_key,
        &settings.sink,
    )?;
    let range = (priority, first_id, batch.last_id());
    Ok(Some((sealed, range, batch.messages.len() as u64)))
}

/// Drops expired messages and reports what was dropped since the last
/// report as one `DataDropped` event.
fn expire_and_report(settings: &ForwarderSettings, path: &DataPath, reported: &mut (u64, u64)) {
    let now = crate::model::now_ms();
    // Upstream, and in the pods' queues alike.
    for (queue, expired) in [
        (Queue::Upstream, path.store.expire_data(now)),
        (Queue::Pod, path.store.expire_pod_data(now)),
    ] {
        match expired {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => path.tally().count(Fate::DroppedTtl, queue, &expired),
            Err(e) => warn!(error = %e, "cannot drop expired workload messages"),
        }
    }
    let (ttl, budget) = {
        let node = &path.tally().node;
        (node.dropped_ttl, node.dropped_budget)
    };
    if (ttl, budget) == *reported {
        return;
    }
    let (new_ttl, new_budget) = (ttl - reported.0, budget - reported.1);
    *reported = (ttl, budget);
    let message = format!(
        "dropped {} workload messages: {new_ttl} past their route's TTL, {new_budget} over data.budget_bytes; {ttl} and {budget} since the agent started",
        new_ttl + new_budget
    );
    warn!(
        dropped_ttl = new_ttl,
        dropped_budget = new_budget,
        "{message}"
    );
    let _ = settings.events.send(Event {
        namespace: None,
        pod: None,
        container: None,
        kind: EventType::Warning,
        reason: "DataDropped".into(),
        message,
        timestamp_ms: crate::model::now_ms(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(dir: &Path) -> DataPath {
        let store = Arc::new(Store::open(&dir.join("state.redb")).expect("store"));
        let routes = data::parse_routes(
            "data.routes",
            "FROM default/sensor sensors/# INTO $upstream",
            Duration::from_secs(60),
        )
        .expect("routes");
        DataPath::new(
            &crate::config::DataConfig::default(),
            routes,
            &dir.join("data"),
            store,
        )
        .expect("path")
    }

    #[test]
    fn the_group_commit_starts_one_committer_and_takes_everything_waiting() {
        let mut queue = CommitQueue::default();
        assert!(queue.push(1), "the first write starts a committer");
        assert!(!queue.push(2), "one runs: the next write waits for it");
        assert_eq!(queue.take(), Some(vec![1, 2]), "both in one transaction");
        assert!(!queue.push(3), "queued while the commit runs");
        assert_eq!(queue.take(), Some(vec![3]));
        assert_eq!(queue.take(), None, "nothing waits: the committer ends");
        queue.push_later(4);
        assert!(queue.push(5), "a write that may wait starts no committer");
        assert_eq!(queue.take(), Some(vec![4, 5]), "the next one takes it");
    }

    #[test]
    fn only_the_admitted_instance_of_a_pod_may_publish() {
        let source = Source {
            namespace: "default".into(),
            pod: "sensor".into(),
            container: "main".into(),
        };
        assert_eq!(may_publish(Some("u1"), "u1", &source, "sensors/t"), Ok(()));
        assert_eq!(
            may_publish(None, "u1", &source, "sensors/t"),
            Err(PublishError::NoRoute {
                from: "default/sensor/main".into(),
                topic: "sensors/t".into()
            }),
            "no route names the pod"
        );
        assert_eq!(
            may_publish(Some("u2"), "u1", &source, "sensors/t"),
            Err(PublishError::Unavailable(
                "pod default/sensor was replaced (uid u2); this instance (uid u1) is stopping"
                    .into()
            ))
        );
    }

    /// The host interface stores what a route takes (committed before it
    /// returns, counted like the endpoint's messages, in order), and
    /// refuses with a reason what the endpoint would drop.
    #[tokio::test]
    async fn host_publishes_are_committed_counted_and_refused_with_a_reason() {
        use crate::model::samples;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Arc::new(path(dir.path()));
        let mut spec = samples::spec("sensor", "uid-1", 1, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        let publisher = path.publisher(&spec);
        // Not admitted yet: no route names this instance.
        assert!(matches!(
            publisher
                .publish("main", None, "sensors/t".into(), b"0".to_vec())
                .await,
            Err(PublishError::NoRoute { .. })
        ));
        path.admit(spec.clone());
        // Concurrent publishes share commits; each returns once stored.
        let publishes = (0..20u8).map(|i| {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish("main", None, "sensors/t".into(), vec![i])
                    .await
            }
        });
        for result in futures_join_all(publishes).await {
            assert_eq!(result, Ok(()));
        }
        let stored = path.store.data_after(0, 100, usize::MAX).expect("read");
        assert_eq!(stored.len(), 20);
        assert!(stored.iter().all(|(_, r)| r.source.container == "main"
            && r.source.pod == "sensor"
            && r.topic == "sensors/t"));
        assert_eq!(
            publisher
                .publish("main", None, "other/t".into(), b"x".to_vec())
                .await,
            Err(PublishError::NoRoute {
                from: "default/sensor/main".into(),
                topic: "other/t".into()
            })
        );
        assert_eq!(
            publisher
                .publish("main", None, "sensors/#".into(), b"x".to_vec())
                .await,
            Err(PublishError::InvalidTopic("sensors/#".into()))
        );
        // Once per sequence: sent again (the component did not see `ok`),
        // it is not stored again (received twice, stored once).
        for _ in 0..2 {
            assert_eq!(
                publisher
                    .publish("main", Some(7), "sensors/t".into(), b"once".to_vec())
                    .await,
                Ok(())
            );
        }
        let status = path.status();
        assert_eq!(
            (status.received, status.unrouted, status.queued),
            (24, 2, 21)
        );
        assert_eq!(status.routes[0].received, 21);
        // A newer pod of the same name: the old instance may not publish.
        let mut newer = spec.clone();
        newer.uid = "uid-2".into();
        path.admit(newer);
        assert!(matches!(
            publisher
                .publish("main", None, "sensors/t".into(), b"x".to_vec())
                .await,
            Err(PublishError::Unavailable(_))
        ));
        // A store that cannot write: the publish says so, nothing is counted.
        path.store.fault_fail_writes(true);
        let failed = path
            .publisher(&{
                let mut s = spec.clone();
                s.uid = "uid-2".into();
                s
            })
            .publish("main", None, "sensors/t".into(), b"x".to_vec())
            .await;
        assert!(
            matches!(failed, Err(PublishError::Storage(_))),
            "{failed:?}"
        );
        assert_eq!(path.status().routes[0].received, 21);
        assert_eq!(
            no_data_path("gw1")
                .publish("main", None, "sensors/t".into(), vec![])
                .await,
            Err(PublishError::Unavailable(
                "node gw1 has no data path: set data.sink_public_key in its configuration (docs/config.md)".into()
            ))
        );
    }

    /// A batch of the host interface (`publish-batch`) is one write, all
    /// or nothing: a message refused refuses the batch, named by its
    /// index, and nothing of it is stored; taken, its messages get
    /// consecutive ids, each in its route's priority queue; with a
    /// sequence it is stored once.
    #[tokio::test]
    async fn a_host_batch_is_all_or_nothing_and_names_the_message_refused() {
        use crate::model::{Priority, samples};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Arc::new(path(dir.path()));
        let mut spec = samples::spec("sensor", "uid-1", 1, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        spec.routes = vec![crate::model::PodRoute {
            container: None,
            filter: "alarms/#".into(),
            ttl_secs: 0,
            target: crate::model::RouteTarget::Upstream,
            priority: Priority::HIGHEST,
        }];
        let publisher = path.publisher(&spec);
        path.admit(spec);
        let batch = |topics: &[&str]| -> Vec<(String, Vec<u8>)> {
            topics
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), vec![i as u8]))
                .collect()
        };
        let refused = publisher
            .publish_batch(
                "main",
                None,
                batch(&["sensors/a", "alarms/x", "other", "sensors/b"]),
            )
            .await;
        assert_eq!(
            refused,
            Err(BatchError {
                index: 2,
                error: PublishError::NoRoute {
                    from: "default/sensor/main".into(),
                    topic: "other".into()
                }
            })
        );
        let invalid = publisher
            .publish_batch("main", None, batch(&["sensors/a", "sensors/#"]))
            .await;
        assert_eq!(
            invalid,
            Err(BatchError {
                index: 1,
                error: PublishError::InvalidTopic("sensors/#".into())
            })
        );
        assert_eq!(path.status().queued, 0, "nothing of a refused batch");
        let taken = publisher
            .publish_batch("main", None, batch(&["sensors/a", "alarms/x", "sensors/b"]))
            .await;
        assert_eq!(taken, Ok(()));
        let stored = path.store.data_after(0, 10, usize::MAX).expect("read");
        assert_eq!(
            stored
                .iter()
                .map(|(id, r)| (*id, r.topic.as_str(), r.priority.0, r.payload[0]))
                .collect::<Vec<_>>(),
            [
                (2, "alarms/x", 0, 1),
                (1, "sensors/a", 9, 0),
                (3, "sensors/b", 9, 2)
            ],
            "one commit, in order; the alarm in the highest queue"
        );
        for _ in 0..2 {
            let once = publisher
                .publish_batch("main", Some(5), batch(&["sensors/c", "sensors/d"]))
                .await;
            assert_eq!(once, Ok(()));
        }
        assert_eq!(publisher.publish_batch("main", None, vec![]).await, Ok(()));
        let status = path.status();
        assert_eq!((status.queued, status.unrouted), (5, 1));
        path.store.fault_fail_writes(true);
        let failed = publisher
            .publish_batch("main", None, batch(&["sensors/e"]))
            .await;
        assert!(
            matches!(
                failed,
                Err(BatchError {
                    index: 0,
                    error: PublishError::Storage(_)
                })
            ),
            "{failed:?}"
        );
    }

    /// Awaits every future, concurrently (no futures crate in the build).
    async fn futures_join_all<T: Send + 'static>(
        futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }

    /// The value of `name` the data path put in the first container's
    /// environment.
    fn injected(spec: &PodSpec, name: &str) -> String {
        spec.containers[0]
            .env
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.clone())
            .expect(name)
    }

    /// A pod that declares its own routes gets the endpoint like a pod the
    /// node's routes name; its routes take its messages (the node's first),
    /// and go with it.
    #[test]
    fn a_pods_own_routes_admit_it_and_route_its_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path());
        use crate::model::{PodRoute, samples};
        let mut spec = samples::spec("meter", "uid-3", 1, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        spec.routes = vec![PodRoute {
            container: Some("main".into()),
            filter: "readings/#".into(),
            ttl_secs: 0,
            target: crate::model::RouteTarget::Upstream,
            priority: crate::model::Priority::default(),
        }];
        let admitted = path.admit(spec);
        let env = |name: &str| injected(&admitted, name);
        let source = path
            .authenticate(&env("KEDGE_DATA_USERNAME"), &env("KEDGE_DATA_PASSWORD"))
            .expect("the pod may connect");
        assert_eq!(source.pod, "meter");
        assert_eq!(
            path.route_of(&source, "readings/t1").map(|(_, ttl)| ttl),
            Some(Duration::from_secs(
                crate::config::DataConfig::default().default_ttl_secs
            )),
            "the node's default TTL"
        );
        assert_eq!(path.route_of(&source, "other"), None);
        // A pod the node's routes name keeps those first.
        let sensor = Source {
            namespace: "default".into(),
            pod: "sensor".into(),
            container: "main".into(),
        };
        assert_eq!(
            path.route_of(&sensor, "sensors/a").map(|(_, ttl)| ttl),
            Some(Duration::from_secs(60))
        );
        path.forget("default", "meter");
        assert_eq!(
            path.route_of(&source, "readings/t1").map(|(_, ttl)| ttl),
            None
        );
        assert!(
            path.authenticate(&env("KEDGE_DATA_USERNAME"), &env("KEDGE_DATA_PASSWORD"))
                .is_none()
        );
    }

    /// Each route counts what it stored, sent and lost; a pod's routes
    /// leave with it once nothing of theirs is stored; what an earlier run
    /// stored under a route is queued on it.
    #[test]
    fn routes_count_what_they_store_send_and_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path());
        use crate::model::{PodRoute, samples};
        let node_route = path.routes[0].clone();
        let mut spec = samples::spec("meter", "uid-3", 1, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        spec.routes = vec![PodRoute {
            container: None,
            filter: "readings/#".into(),
            ttl_secs: 600,
            target: crate::model::RouteTarget::Upstream,
            priority: crate::model::Priority::default(),
        }];
        path.admit(spec);
        let meter = Source {
            namespace: "default".into(),
            pod: "meter".into(),
            container: "main".into(),
        };
        let (pod_route, _) = path.route_of(&meter, "readings/a").expect("routed");
        let mut tally = RouteTally::default();
        std::mem::swap(&mut tally, &mut *path.tally());
        tally.count(
            Fate::Stored,
            Queue::Upstream,
            &[(node_route.id, 100), (pod_route, 10), (pod_route, 10)],
        );
        tally.count(
            Fate::Sent,
            Queue::Upstream,
            &[(node_route.id, 100), (pod_route, 10)],
        );
        tally.count(Fate::DroppedTtl, Queue::Upstream, &[(pod_route, 10)]);
        tally.count(Fate::Stored, Queue::Upstream, &[(pod_route, 30)]);
        let lines = tally.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].route, node_route.to_string());
        assert_eq!(lines[0].pod, None, "the node's routes first");
        assert_eq!(
            (
                lines[0].received,
                lines[0].sent,
                lines[0].sent_bytes,
                lines[0].queued
            ),
            (1, 1, 100, 0)
        );
        assert_eq!(
            lines[1].route,
            "FROM default/meter readings/# INTO $upstream TTL 10m"
        );
        assert_eq!(lines[1].pod.as_deref(), Some("default/meter"));
        let l = &lines[1];
        assert_eq!(
            (l.received, l.sent, l.dropped_ttl, l.queued, l.queued_bytes),
            (3, 1, 1, 1, 30)
        );
        // The pod starts again with the same route: its counters stay.
        let own = data::route::pod_routes(
            &{
                let mut spec =
                    samples::spec("meter", "uid-4", 2, crate::model::RestartPolicy::Always);
                spec.routes = vec![PodRoute {
                    container: None,
                    filter: "readings/#".into(),
                    ttl_secs: 600,
                    target: crate::model::RouteTarget::Upstream,
                    priority: crate::model::Priority::default(),
                }];
                spec
            },
            Duration::from_secs(60),
        );
        tally.declare_pod("default/meter", &own);
        assert_eq!(tally.lines()[1].received, 3);
        // The pod goes: its line stays while a message of it is stored, and
        // goes when that message does.
        tally.undeclare("default/meter");
        let lines = tally.lines();
        assert_eq!(
            (lines[1].route.as_str(), lines[1].queued),
            ("FROM default/meter readings/# INTO $upstream TTL 10m", 1)
        );
        tally.count(Fate::DroppedBudget, Queue::Upstream, &[(pod_route, 30)]);
        assert_eq!(tally.lines().len(), 1);
        // A new agent finds what was stored under a route in the store.
        let store = path.store.clone();
        let record = |route| DataRecord {
            source: meter.clone(),
            topic: "readings/a".into(),
            device_time_ms: 1,
            expires_ms: u64::MAX,
            payload: vec![1; 10],
            route,
            priority: crate::model::Priority::default(),
        };
        store
            .append_data(
                DataWrite {
                    records: vec![(record(node_route.id), None), (record(0), None)],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        drop((path, store));
        let again = self::path(dir.path());
        let status = again.status();
        assert_eq!(status.queued, 2);
        assert_eq!(status.routes[0].route, node_route.to_string());
        assert_eq!(status.routes[0].queued, 1);
        assert_eq!(
            (status.routes[1].route.as_str(), status.routes[1].queued),
            ("", 1),
            "stored by an older agent: no route known"
        );
    }

    /// A message's going may be counted before its storing (each is
    /// counted after its own commit, by another task): the counts commute,
    /// a queue is never shown below zero nor a message as both queued and
    /// sent, and the node's `queued`/`sent` are the upstream queue's.
    #[test]
    fn counts_commute_and_the_node_counts_the_upstream_queue() {
        let mut tally = RouteTally::default();
        // Delivered into a pod before its storing is counted.
        tally.count(Fate::Sent, Queue::Pod, &[(7, 10)]);
        let line = &tally.lines()[0];
        assert_eq!(
            (line.received, line.queued, line.queued_bytes, line.sent),
            (0, 0, 0, 1)
        );
        tally.count(Fate::Stored, Queue::Pod, &[(7, 10)]);
        assert_eq!(
            (tally.routes.get(&7), &tally.node),
            (None, &Moved::default()),
            "nothing stored under a route not declared: its line goes; a pod's queue is not the node's"
        );
        // Upstream: the node counts it too.
        tally.count(Fate::Stored, Queue::Upstream, &[(8, 100), (8, 50), (8, 5)]);
        tally.count(Fate::Sent, Queue::Upstream, &[(8, 100)]);
        tally.count(Fate::DroppedBudget, Queue::Upstream, &[(8, 5)]);
        tally.count(Fate::Stored, Queue::Pod, &[(9, 20)]);
        tally.count(Fate::DroppedTtl, Queue::Pod, &[(9, 20)]);
        assert_eq!(
            tally.node,
            Moved {
                queued: 1,
                queued_bytes: 50,
                sent: 1,
                sent_bytes: 100,
                dropped_ttl: 1,
                dropped_budget: 1,
            }
        );
        let line = &tally.lines()[0];
        assert_eq!(
            (
                line.received,
                line.queued,
                line.queued_bytes,
                line.sent,
                line.dropped_budget
            ),
            (3, 1, 50, 1, 1)
        );
    }

    fn record(topic: &str, id_byte: u8) -> DataRecord {
        DataRecord {
            source: Source {
                namespace: "default".into(),
                pod: "meter".into(),
                container: "main".into(),
            },
            topic: topic.into(),
            device_time_ms: 1,
            expires_ms: u64::MAX,
            payload: vec![id_byte],
            route: 7,
            priority: crate::model::Priority::default(),
        }
    }

    fn filter(path: &str, qos: QoS) -> SubscribeFilter {
        SubscribeFilter::new(path.into(), qos)
    }

    /// A connection delivers what its subscriptions match, each message
    /// once while it is in flight, within the window; a PUBACK frees it;
    /// only a pod a route goes into may subscribe, with QoS 1 or 2.
    #[test]
    fn deliveries_send_what_subscriptions_match_once_until_acknowledged() {
        let mut d = Deliveries::default();
        assert!(!d.wants_more(), "nothing subscribed");
        assert_eq!(
            d.subscribe(&[filter("cmd/#", QoS::AtLeastOnce)], false),
            [SubscribeReasonCode::Failure],
            "no route goes into the pod"
        );
        assert_eq!(
            d.subscribe(
                &[
                    filter("cmd/#", QoS::ExactlyOnce),
                    filter("cmd/x", QoS::AtMostOnce),
                    filter("a/#/b", QoS::AtLeastOnce),
                ],
                true
            ),
            [
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::Failure,
            ]
        );
        let queued = vec![
            (3, record("cmd/a", 3)),
            (5, record("other", 5)),
            (9, record("cmd/b", 9)),
        ];
        let sent = d.take(queued.clone());
        assert_eq!(
            sent.iter()
                .map(|(p, r)| (*p, r.payload[0]))
                .collect::<Vec<_>>(),
            [(1, 3), (2, 9)],
            "what matches, with packet ids"
        );
        assert_eq!(d.read_up_to, 9);
        // Read again (a new filter reads from the start): what is in
        // flight is not sent twice.
        assert_eq!(
            d.subscribe(&[filter("other", QoS::AtLeastOnce)], true),
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        assert_eq!(d.read_up_to, 0);
        let sent = d.take(queued);
        assert_eq!(
            sent.iter()
                .map(|(p, r)| (*p, r.payload[0]))
                .collect::<Vec<_>>(),
            [(3, 5)]
        );
        assert_eq!(d.acked(1), Some(3));
        assert_eq!(d.acked(1), None, "acknowledged once");
        // The window: at most DELIVERY_WINDOW in flight.
        let many: Vec<_> = (100..200u64).map(|i| (i, record("cmd/m", 0))).collect();
        let sent = d.take(many);
        assert_eq!(sent.len(), DELIVERY_WINDOW - 2);
        assert!(!d.wants_more());
        assert_eq!(d.read_up_to, 100 + DELIVERY_WINDOW as u64 - 3);
        d.unsubscribe(&["cmd/#".into(), "other".into()]);
        assert!(!d.is_subscribed());
    }

    /// A route into a pod: the target pod gets the endpoint's credentials
    /// (it declares no route) and may subscribe, another pod may not; its
    /// messages are committed into the target's queue (counted on the
    /// route), delivered to its subscription and leave the queue on the
    /// PUBACK (counted sent), or on their TTL (counted dropped).
    #[tokio::test]
    async fn a_route_into_a_pod_queues_for_it_until_its_subscriber_acknowledges() {
        use crate::model::{PodRoute, RouteTarget, samples};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Arc::new(path(dir.path()));
        let mut meter = samples::spec("meter", "uid-1", 1, crate::model::RestartPolicy::Always);
        meter.containers.push(samples::container("main"));
        meter.routes = vec![PodRoute {
            container: None,
            filter: "cmd/#".into(),
            ttl_secs: 600,
            target: RouteTarget::Pod("actuator".into()),
            priority: crate::model::Priority::default(),
        }];
        let mut actuator =
            samples::spec("actuator", "uid-2", 1, crate::model::RestartPolicy::Always);
        actuator.containers.push(samples::container("main"));
        // Started before the route into it: no credentials then, but it
        // may connect once the route is declared (checked at CONNECT).
        let early = path.admit(actuator.clone());
        assert!(early.containers[0].env.is_empty());
        path.admit(meter);
        let admitted = path.admit(actuator);
        let env = |name: &str| injected(&admitted, name);
        let who = path
            .authenticate(&env("KEDGE_DATA_USERNAME"), &env("KEDGE_DATA_PASSWORD"))
            .expect("the target pod may connect");
        assert!(path.routes_into("default", "actuator"));
        assert!(!path.routes_into("default", "meter"));
        let source = Source {
            namespace: "default".into(),
            pod: "meter".into(),
            container: "main".into(),
        };
        let (record, target) = path
            .take(&source, "cmd/open", b"open".to_vec())
            .expect("routed");
        assert_eq!(target.as_deref(), Some("default/actuator"));
        let expired = DataRecord {
            expires_ms: 1,
            ..record.clone()
        };
        let write = DataWrite {
            into_pods: vec![
                ("default/actuator".into(), record.clone(), None),
                ("default/actuator".into(), expired, None),
            ],
            ..DataWrite::default()
        };
        commit(&path, write).await.expect("committed");
        assert_eq!(path.status().queued, 0, "nothing goes upstream");
        let line = |path: &DataPath| {
            let status = path.status();
            let l = status
                .routes
                .iter()
                .find(|l| l.route.contains("INTO pod/default/actuator"))
                .expect("the route's line")
                .clone();
            (l.received, l.queued, l.sent, l.dropped_ttl)
        };
        assert_eq!(line(&path), (2, 2, 0, 0));
        let target = format!("{}/{}", who.namespace, who.pod);
        // Not subscribed: nothing is written, nothing leaves.
        let mut d = Deliveries::default();
        let mut output = BytesMut::new();
        let mut delivered = Vec::new();
        deliver(&path, &target, &mut d, &mut delivered, &mut output).expect("deliver");
        assert!(output.is_empty());
        d.subscribe(&[filter("cmd/+", QoS::AtLeastOnce)], true);
        deliver(&path, &target, &mut d, &mut delivered, &mut output).expect("deliver");
        let mut sent = Vec::new();
        while let Ok(Packet::Publish(p)) = Packet::read(&mut output, MAX_PACKET_BYTES) {
            sent.push(p);
        }
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (sent[0].topic.as_str(), &sent[0].payload[..], sent[0].qos),
            ("cmd/open", &b"open"[..], QoS::AtLeastOnce)
        );
        // The first is acknowledged; the second expires.
        delivered.extend(d.acked(sent[0].pkid));
        deliver(&path, &target, &mut d, &mut delivered, &mut output).expect("deliver");
        assert!(output.is_empty(), "nothing new to send");
        assert_eq!(line(&path), (2, 1, 1, 0));
        let dropped = path
            .store
            .expire_pod_data(crate::model::now_ms())
            .expect("expire");
        path.tally().count(Fate::DroppedTtl, Queue::Pod, &dropped);
        assert_eq!(line(&path), (2, 0, 1, 1));
        assert!(
            path.store
                .pod_data(&target, 0, 10)
                .expect("read")
                .is_empty()
        );
        // A restarted agent finds what is still queued for a pod (the
        // counters' seed at start).
        let route = record.route;
        commit(
            &path,
            DataWrite {
                into_pods: vec![("default/actuator".into(), record, None)],
                ..DataWrite::default()
            },
        )
        .await
        .expect("committed");
        let backlog = path.store.data_backlog_by_route().expect("backlog");
        assert_eq!(backlog.get(&route).map(|(count, _)| *count), Some(1));
    }

    #[test]
    fn only_a_named_pod_gets_credentials_and_they_name_its_containers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path());
        use crate::model::samples;
        let mut spec = samples::spec("sensor", "uid-1", 1, crate::model::RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        let mut other = samples::spec("camera", "uid-2", 1, crate::model::RestartPolicy::Always);
        other.containers.push(samples::container("main"));
        let other = path.admit(other);
        assert!(other.containers.iter().all(|c| c.env.is_empty()));
        let admitted = path.admit(spec.clone());
        let env = |name: &str| injected(&admitted, name);
        assert_eq!(env("KEDGE_DATA_URL"), "mqtt://127.0.0.1:1884");
        let username = env("KEDGE_DATA_USERNAME");
        let password = env("KEDGE_DATA_PASSWORD");
        let source = path.authenticate(&username, &password).expect("valid");
        assert_eq!(source.pod, "sensor");
        assert_eq!(source.container, spec.containers[0].name);
        // Another container's name with this password, another pod, or a
        // new uid (the pod was replaced) are refused.
        assert!(
            path.authenticate("default/sensor/other", &password)
                .is_none()
        );
        assert!(
            path.authenticate("default/camera/main", &password)
                .is_none()
        );
        spec.uid = "uid-3".into();
        path.admit(spec);
        assert!(path.authenticate(&username, &password).is_none());
        path.forget("default", "sensor");
        assert!(path.authenticate(&username, "00").is_none());
    }
}
