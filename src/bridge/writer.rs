//! Kubernetes API writes: coalesced per object, rate-limited, a few at a time.
//!
//! Every write the bridge makes goes through one [`Writer`]. Work for the same
//! object (a node's create/status/Connected/Lease, a pod's status) waiting in
//! the queue is merged, newest wins, so a burst of reports for one pod costs
//! one request. Work on one object is never in flight twice, so a node is
//! created before its status and Lease are written. Requests are paced
//! (`--api-qps`: one request slot every 1/qps s) and a fixed number of
//! workers caps the concurrency. A failed write is retried after
//! kube-runtime's back-off ([`Retries`]), per object, reset by its next
//! success. On shutdown [`Writer::drain`] waits for the queue to empty, up to
//! a deadline, and says what was left.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as K8sEvent, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::DefaultBackoff;
use kube::{Client, Error as KubeError};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::event_series::{EventSeries, Write};
use super::fleets::{self, crd::FleetDeploymentResource};
use super::render::{self, CONNECTED_MANAGER, DEVICE_LABELS_MANAGER, LEASE_NAMESPACE, MANAGER};
use super::state::{Action, KubeEvent, PodStatusOwner};
use crate::model::{EventType, PodKey};

/// Counters for benchmarks and `/metrics`.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// API requests made (successful or not).
    pub requests: AtomicU64,
    /// Requests that failed (and were retried or dropped).
    pub errors: AtomicU64,
    /// Work items merged into one already waiting.
    pub coalesced: AtomicU64,
    /// FleetDeployment status writes (they do not grow with the fleet).
    pub fleet_status_writes: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Node(String),
    PodStatus(PodKey, PodStatusOwner),
    PodDelete(PodKey),
    Event(u64),
    FleetStatus(PodKey),
}

impl Key {
    /// Served before node work: with thousands of devices the Lease renewals
    /// alone can saturate the API budget, and a pod status must not wait
    /// behind them.
    fn urgent(&self) -> bool {
        matches!(self, Key::PodStatus(..) | Key::PodDelete(_))
    }
}

#[derive(Debug, Default, Clone)]
struct NodeWork {
    ensure: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    status: Option<Value>,
    connected: Option<Value>,
    lease: Option<u64>,
}

impl NodeWork {
    /// `newer` on top of `self`.
    fn merge(&mut self, newer: NodeWork) {
        if newer.ensure.is_some() {
            self.ensure = newer.ensure;
        }
        if newer.labels.is_some() {
            self.labels = newer.labels;
        }
        if newer.status.is_some() {
            self.status = newer.status;
        }
        if newer.connected.is_some() {
            self.connected = newer.connected;
        }
        if newer.lease.is_some() {
            self.lease = newer.lease;
        }
    }
}

#[derive(Debug, Clone)]
enum Work {
    Node(NodeWork),
    PodStatus(Value),
    PodDelete(String),
    Event(KubeEvent),
    FleetStatus(Value),
}

/// The longest a retry waits if the back-off ever ran out (it does not:
/// kube-runtime's default has no limit of attempts).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Retry delays per object: kube-runtime's [`DefaultBackoff`] (the
/// watcher's, after client-go's reflector: 0.8 s doubling to 30 s, with up
/// to 100 % jitter), one per object that failed, forgotten when a write of
/// it succeeds, so the next failure starts from the shortest delay again.
pub struct Retries<K> {
    failing: HashMap<K, DefaultBackoff>,
}

impl<K> Default for Retries<K> {
    fn default() -> Self {
        Retries {
            failing: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Retries<K> {
    /// A write of `key` failed: how long to wait before trying it again.
    pub fn failed(&mut self, key: &K) -> Duration {
        self.failing
            .entry(key.clone())
            .or_default()
            .next()
            .unwrap_or(MAX_RETRY_DELAY)
    }

    /// A write of `key` succeeded (or will not be retried): its back-off
    /// starts afresh.
    pub fn succeeded(&mut self, key: &K) {
        self.failing.remove(key);
    }

    /// Objects whose last write failed.
    pub fn failing(&self) -> usize {
        self.failing.len()
    }
}

/// What a [`Writer`] had not written when its drain deadline passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub pod_statuses: usize,
    pub pod_deletions: usize,
    pub nodes: usize,
    pub events: usize,
    pub fleet_statuses: usize,
    /// Requests under way.
    pub in_flight: usize,
    /// Failed writes waiting for their retry.
    pub retrying: usize,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        *self == Backlog::default()
    }
}

impl fmt::Display for Backlog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.pod_statuses, "pod status", "pod statuses"),
            (self.pod_deletions, "pod deletion", "pod deletions"),
            (self.nodes, "node", "nodes"),
            (self.events, "event", "events"),
            (self.fleet_statuses, "fleet status", "fleet statuses"),
            (self.in_flight, "request in flight", "requests in flight"),
            (
                self.retrying,
                "write waiting to retry",
                "writes waiting to retry",
            ),
        ]
        .into_iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[derive(Default)]
struct Queue {
    pending: HashMap<Key, Work>,
    /// Pod statuses and deletions: what users wait for.
    urgent: VecDeque<Key>,
    /// Nodes (create, status, Connected, Lease) and events.
    order: VecDeque<Key>,
    in_flight: HashSet<Key>,
    next_event: u64,
    retries: Retries<Key>,
    /// Failed work sleeping before it is queued again.
    retrying: usize,
}

struct Inner {
    client: Client,
    queue: Mutex<Queue>,
    notify: Notify,
    node_uids: Mutex<HashMap<String, String>>,
    stats: Arc<WriteStats>,
    interval: Duration,
    next_slot: tokio::sync::Mutex<Instant>,
    /// Repeats of an Event bump its count (`bridge::event_series`).
    series: Mutex<EventSeries>,
    /// Woken whenever work finishes (what [`Writer::drain`] waits on).
    progress: Notify,
    /// Ends the workers and the retries waiting (after the drain).
    stop: CancellationToken,
}

/// The API write queue; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

fn status_code(e: &KubeError) -> Option<u16> {
    match e {
        KubeError::Api(s) => Some(s.code),
        _ => None,
    }
}

impl Writer {
    /// Starts `workers` tasks writing at most `qps` requests per second.
    pub fn start(client: Client, qps: f64, workers: usize) -> Writer {
        let interval = if qps > 0.0 {
            Duration::from_secs_f64(1.0 / qps)
        } else {
            Duration::ZERO
        };
        let inner = Arc::new(Inner {
            client,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            node_uids: Mutex::new(HashMap::new()),
            stats: Arc::new(WriteStats::default()),
            interval,
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            series: Mutex::new(EventSeries::default()),
            progress: Notify::new(),
            stop: CancellationToken::new(),
        });
        for _ in 0..workers.max(1) {
            let inner = inner.clone();
            tokio::spawn(async move { worker(inner).await });
        }
        Writer { inner }
    }

    /// Waits until every queued write was made (or given up, as a write
    /// that fails with 404 is) and no retry is waiting, or until
    /// `deadline`; then stops the workers. Returns what was left at the
    /// deadline. Nothing pushed after this is written.
    pub async fn drain(&self, deadline: Instant) -> Result<(), Backlog> {
        let result = loop {
            let progress = self.inner.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let left = self.unfinished();
            if left.is_empty() {
                break Ok(());
            }
            tokio::select! {
                _ = &mut progress => {}
                _ = tokio::time::sleep_until(deadline) => break Err(self.unfinished()),
            }
        };
        self.inner.stop.cancel();
        result
    }

    /// What is queued, in flight or waiting to be retried.
    pub fn unfinished(&self) -> Backlog {
        self.inner
            .queue
            .lock()
            .map(|q| q.unfinished())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Arc<WriteStats> {
        self.inner.stats.clone()
    }

    /// Work items waiting (not counting those in flight).
    pub fn backlog(&self) -> usize {
        self.inner
            .queue
            .lock()
            .map(|q| q.pending.len())
            .unwrap_or(0)
    }

    /// Forgets a node's uid (its object was deleted).
    pub fn forget_node(&self, name: &str) {
        if let Ok(mut m) = self.inner.node_uids.lock() {
            m.remove(name);
        }
    }

    /// Queues the API part of an action (`Publish` is not for the writer).
    pub fn push(&self, action: Action) {
        let (key, work) = match action {
            Action::Publish { .. } | Action::ClearRetained { .. } | Action::ServeNode { .. } => {
                return;
            }
            Action::EnsureNode { name, labels } => (
                Key::Node(name),
                Work::Node(NodeWork {
                    ensure: Some(labels),
                    ..Default::default()
                }),
            ),
            Action::NodeStatus { name, body } => (
                Key::Node(name),
                Work::Node(NodeWork {
                    status: Some(body),
                    ..Default::default()
                }),
            ),
            Action::Connected { name, body } => (
                Key::Node(name),
                Work::Node(NodeWork {
                    connected: Some(body),
                    ..Default::default()
                }),
            ),
            Action::RenewLease { name, now_ms } => (
                Key::Node(name),
                Work::Node(NodeWork {
                    lease: Some(now_ms),
                    ..Default::default()
                }),
            ),
            Action::PodStatus { pod, owner, body } => {
                (Key::PodStatus(pod, owner), Work::PodStatus(body))
            }
            Action::DeletePod { pod, uid } => (Key::PodDelete(pod), Work::PodDelete(uid)),
            Action::NodeLabels { name, labels } => (
                Key::Node(name),
                Work::Node(NodeWork {
                    labels: Some(labels),
                    ..Default::default()
                }),
            ),
            Action::FleetStatus { fleet, body } => {
                (Key::FleetStatus(fleet), Work::FleetStatus(body))
            }
            Action::Event(ev) => {
                let mut q = self.inner.queue.lock().expect("writer queue");
                q.next_event += 1;
                (Key::Event(q.next_event), Work::Event(ev))
            }
        };
        self.enqueue(key, work, false);
    }

    /// `older`: a retry, merged under anything newer already waiting.
    fn enqueue(&self, key: Key, work: Work, older: bool) {
        enqueue(&self.inner, key, work, older);
    }
}

impl Queue {
    /// Queues `work` for `key`, merged with what already waits for it
    /// (`older`: a retry, merged under the newer work). Returns whether it
    /// was merged.
    fn push(&mut self, key: Key, work: Work, older: bool) -> bool {
        match (self.pending.remove(&key), work) {
            (Some(Work::Node(mut existing)), Work::Node(new)) => {
                if older {
                    let mut merged = new;
                    merged.merge(existing);
                    self.pending.insert(key, Work::Node(merged));
                } else {
                    existing.merge(new);
                    self.pending.insert(key, Work::Node(existing));
                }
                true
            }
            (Some(existing), new) => {
                self.pending.insert(key, if older { existing } else { new });
                true
            }
            (None, new) => {
                self.pending.insert(key.clone(), new);
                if key.urgent() {
                    self.urgent.push_back(key);
                } else {
                    self.order.push_back(key);
                }
                false
            }
        }
    }

    /// The next work whose key is not in flight (urgent first); marks it in flight.
    fn take(&mut self) -> Option<(Key, Work)> {
        let in_flight = &self.in_flight;
        let key = match self.urgent.iter().position(|k| !in_flight.contains(k)) {
            Some(pos) => self.urgent.remove(pos)?,
            None => {
                let pos = self.order.iter().position(|k| !in_flight.contains(k))?;
                self.order.remove(pos)?
            }
        };
        let work = self.pending.remove(&key)?;
        self.in_flight.insert(key.clone());
        Some((key, work))
    }

    /// The work for `key` is finished. Work for it that arrived meanwhile is
    /// already back in its queue (see `push`).
    fn done(&mut self, key: &Key) {
        self.in_flight.remove(key);
    }

    fn unfinished(&self) -> Backlog {
        let mut b = Backlog {
            in_flight: self.in_flight.len(),
            retrying: self.retrying,
            ..Default::default()
        };
        for key in self.pending.keys() {
            match key {
                Key::Node(_) => b.nodes += 1,
                Key::PodStatus(..) => b.pod_statuses += 1,
                Key::PodDelete(_) => b.pod_deletions += 1,
                Key::Event(_) => b.events += 1,
                Key::FleetStatus(_) => b.fleet_statuses += 1,
            }
        }
        b
    }
}

fn enqueue(inner: &Inner, key: Key, work: Work, older: bool) {
    let merged = inner
        .queue
        .lock()
        .expect("writer queue")
        .push(key, work, older);
    if merged {
        inner.stats.coalesced.fetch_add(1, Ordering::Relaxed);
    }
    inner.notify.notify_one();
}

fn take(inner: &Inner) -> Option<(Key, Work)> {
    inner.queue.lock().expect("writer queue").take()
}

async fn worker(inner: Arc<Inner>) {
    let stop = inner.stop.clone();
    stop.run_until_cancelled(work_loop(&inner)).await;
}

async fn work_loop(inner: &Arc<Inner>) {
    loop {
        let Some((key, work)) = take(inner) else {
            inner.notify.notified().await;
            continue;
        };
        let retry = execute(inner, &key, work).await;
        let delay = {
            let mut q = inner.queue.lock().expect("writer queue");
            q.done(&key);
            match &retry {
                Some(_) => {
                    q.retrying += 1;
                    Some(q.retries.failed(&key))
                }
                None => {
                    q.retries.succeeded(&key);
                    None
                }
            }
        };
        inner.notify.notify_one();
        inner.progress.notify_waiters();
        if let (Some(work), Some(delay)) = (retry, delay) {
            debug!(?delay, "retrying a failed write");
            let inner = inner.clone();
            tokio::spawn(async move {
                let stop = inner.stop.clone();
                let slept = stop
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .is_some();
                if slept {
                    // One lock: the drain never sees the work neither
                    // retrying nor queued.
                    let merged = {
                        let mut q = inner.queue.lock().expect("writer queue");
                        q.retrying -= 1;
                        q.push(key, work, true)
                    };
                    if merged {
                        inner.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    }
                    inner.notify.notify_one();
                }
            });
        }
    }
}

/// Waits for the next request slot of the token bucket.
async fn slot(inner: &Inner) {
    if inner.interval.is_zero() {
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let at = {
        let mut next = inner.next_slot.lock().await;
        let now = Instant::now();
        let at = (*next).max(now);
        *next = at + inner.interval;
        at
    };
    tokio::time::sleep_until(at).await;
    inner.stats.requests.fetch_add(1, Ordering::Relaxed);
}

fn failed(inner: &Inner, what: &str, e: &KubeError) {
    inner.stats.errors.fetch_add(1, Ordering::Relaxed);
    warn!(error = %e, "{what} failed");
}

/// Carries out one work item; returns what is left to retry.
async fn execute(inner: &Inner, key: &Key, work: Work) -> Option<Work> {
    match (key, work) {
        (Key::Node(name), Work::Node(w)) => node_work(inner, name, w).await.map(Work::Node),
        (Key::PodStatus(pod, owner), Work::PodStatus(body)) => {
            let api: Api<Pod> = Api::namespaced(inner.client.clone(), &pod.namespace);
            let manager = match owner {
                PodStatusOwner::Device => MANAGER,
                PodStatusOwner::Bridge => "kedge-bridge-accepted",
            };
            slot(inner).await;
            match api
                .patch_status(
                    &pod.name,
                    &PatchParams::apply(manager).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => None,
                // Gone, or another instance under the same name (uid precondition).
                Err(e) if matches!(status_code(&e), Some(404 | 409)) => {
                    debug!(pod = %pod, error = %e, "pod status not written");
                    None
                }
                Err(e) if status_code(&e) == Some(422) => {
                    failed(inner, &format!("writing the status of pod {pod}"), &e);
                    None
                }
                Err(e) => {
                    failed(inner, &format!("writing the status of pod {pod}"), &e);
                    Some(Work::PodStatus(body))
                }
            }
        }
        (Key::PodDelete(pod), Work::PodDelete(uid)) => {
            let api: Api<Pod> = Api::namespaced(inner.client.clone(), &pod.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            slot(inner).await;
            match api.delete(&pod.name, &dp).await {
                Ok(_) => None,
                Err(e) if matches!(status_code(&e), Some(404 | 409)) => None,
                Err(e) => {
                    failed(inner, &format!("deleting pod {pod}"), &e);
                    Some(Work::PodDelete(uid))
                }
            }
        }
        (Key::Event(_), Work::Event(ev)) => {
            write_event(inner, &ev).await;
            None
        }
        (Key::FleetStatus(fleet), Work::FleetStatus(body)) => {
            let api: Api<FleetDeploymentResource> =
                Api::namespaced(inner.client.clone(), &fleet.namespace);
            slot(inner).await;
            inner
                .stats
                .fleet_status_writes
                .fetch_add(1, Ordering::Relaxed);
            match api
                .patch_status(
                    &fleet.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => None,
                Err(e) if matches!(status_code(&e), Some(404 | 409 | 422)) => {
                    debug!(fleet = %fleet, error = %e, "fleet status not written");
                    None
                }
                Err(e) => {
                    failed(inner, &format!("writing the status of fleet {fleet}"), &e);
                    Some(Work::FleetStatus(body))
                }
            }
        }
        _ => None,
    }
}

async fn write_event(inner: &Inner, ev: &KubeEvent) {
    let api: Api<K8sEvent> = Api::namespaced(inner.client.clone(), &ev.namespace);
    let fresh = || {
        format!(
            "{}.{:x}{:04x}",
            ev.involved_name,
            ev.time_ms,
            fastrand::u16(..)
        )
    };
    let write = match inner.series.lock() {
        Ok(mut s) => s.next(ev, fresh),
        Err(_) => Write::Create { name: fresh() },
    };
    let name = match write {
        Write::Create { name } => name,
        Write::Bump {
            name,
            count,
            first_ms,
        } => {
            let patch = json!({
                "count": count,
                "firstTimestamp": render::time(first_ms),
                "lastTimestamp": render::time(ev.time_ms),
            });
            slot(inner).await;
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // Gone (its TTL) or not made yet: a new object.
                Err(e) if status_code(&e) == Some(404) => {
                    if let Ok(mut s) = inner.series.lock() {
                        s.lost(ev);
                        match s.next(ev, fresh) {
                            Write::Create { name } => name,
                            Write::Bump { .. } => return,
                        }
                    } else {
                        fresh()
                    }
                }
                Err(e) => return failed(inner, "updating an event", &e),
            }
        }
    };
    let t = render::time(ev.time_ms);
    let api_version = if ev.involved_kind == fleets::KIND {
        fleets::API_VERSION
    } else {
        "v1"
    };
    let mut involved = json!({
        "apiVersion": api_version,
        "kind": ev.involved_kind,
        "name": ev.involved_name,
    });
    if ev.involved_kind != "Node" {
        involved["namespace"] = json!(ev.namespace);
    }
    if !ev.involved_uid.is_empty() {
        involved["uid"] = json!(ev.involved_uid);
    }
    if let Some(path) = &ev.field_path {
        involved["fieldPath"] = json!(path);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ev.namespace},
        "involvedObject": involved,
        "reason": ev.reason,
        "message": ev.message,
        "type": match ev.kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
        "source": if ev.host.is_empty() {
            json!({"component": "kedge-bridge"})
        } else {
            json!({"component": "kedge-bridge", "host": ev.host})
        },
        "reportingComponent": "kedge.io/bridge",
        "reportingInstance": if ev.host.is_empty() { "kedge-bridge" } else { ev.host.as_str() },
    });
    let event: K8sEvent = match serde_json::from_value(body) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot build an Event");
            return;
        }
    };
    slot(inner).await;
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        failed(inner, "recording an event", &e);
    }
}

/// Creates the node if needed, then status, Connected and Lease, in that
/// order. Returns the parts to retry.
async fn node_work(inner: &Inner, name: &str, mut w: NodeWork) -> Option<NodeWork> {
    let api: Api<Node> = Api::all(inner.client.clone());
    if let Some(labels) = w.ensure.take()
        && let Err(e) = ensure_node(inner, &api, name, &labels).await
    {
        failed(inner, &format!("creating node {name}"), &e);
        w.ensure = Some(labels);
        return Some(w);
    }
    let mut retry = NodeWork::default();
    if let Some(labels) = w.labels.take() {
        slot(inner).await;
        if let Err(e) = api
            .patch(
                name,
                &PatchParams::apply(DEVICE_LABELS_MANAGER).force(),
                &Patch::Apply(&render::node_labels_apply(name, &labels)),
            )
            .await
        {
            failed(inner, &format!("labelling node {name}"), &e);
            if status_code(&e) != Some(422) {
                retry.labels = Some(labels);
            }
        }
    }
    for (body, manager, slot_ref) in [
        (w.status.take(), MANAGER, 0),
        (w.connected.take(), CONNECTED_MANAGER, 1),
    ] {
        let Some(body) = body else { continue };
        slot(inner).await;
        if let Err(e) = api
            .patch_status(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            failed(inner, &format!("writing the status of node {name}"), &e);
            if status_code(&e) != Some(422) {
                if slot_ref == 0 {
                    retry.status = Some(body);
                } else {
                    retry.connected = Some(body);
                }
            }
        }
    }
    if let Some(now_ms) = w.lease.take() {
        let uid = inner
            .node_uids
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned());
        let uid = match uid {
            Some(u) => Some(u),
            None => {
                slot(inner).await;
                match api.get_opt(name).await {
                    Ok(Some(n)) => {
                        let u = n.metadata.uid.unwrap_or_default();
                        if let Ok(mut m) = inner.node_uids.lock() {
                            m.insert(name.to_string(), u.clone());
                        }
                        Some(u)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        failed(inner, &format!("reading node {name}"), &e);
                        retry.lease = Some(now_ms);
                        None
                    }
                }
            }
        };
        if let Some(uid) = uid {
            let leases: Api<Lease> = Api::namespaced(inner.client.clone(), LEASE_NAMESPACE);
            slot(inner).await;
            if let Err(e) = leases
                .patch(
                    name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&render::lease(name, &uid, now_ms)),
                )
                .await
            {
                failed(inner, &format!("renewing the lease of node {name}"), &e);
                retry.lease = Some(now_ms);
            }
        }
    }
    (retry.labels.is_some()
        || retry.status.is_some()
        || retry.connected.is_some()
        || retry.lease.is_some())
    .then_some(retry)
}

async fn ensure_node(
    inner: &Inner,
    api: &Api<Node>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), KubeError> {
    let node: Node =
        serde_json::from_value(render::node_object(name, labels)).map_err(KubeError::SerdeError)?;
    slot(inner).await;
    let existing = match api.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(e) if status_code(&e) == Some(409) => {
            slot(inner).await;
            let n = api.get(name).await?;
            let have = n.metadata.labels.clone().unwrap_or_default();
            let mut patch = serde_json::Map::new();
            if labels.iter().any(|(k, v)| have.get(k) != Some(v)) {
                patch.insert("metadata".into(), json!({"labels": labels}));
            }
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if !taints.iter().any(|t| t.key == render::EDGE_LABEL) {
                let mut list: Vec<Value> = taints
                    .iter()
                    .filter_map(|t| serde_json::to_value(t).ok())
                    .collect();
                list.push(render::edge_taint());
                patch.insert("spec".into(), json!({"taints": list}));
            }
            if patch.is_empty() {
                n
            } else {
                slot(inner).await;
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(Value::Object(patch)),
                )
                .await?
            }
        }
        Err(e) => return Err(e),
    };
    if let Ok(mut m) = inner.node_uids.lock() {
        m.insert(
            name.to_string(),
            existing.metadata.uid.clone().unwrap_or_default(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(lease: Option<u64>, status: Option<Value>) -> Work {
        Work::Node(NodeWork {
            lease,
            status,
            ..Default::default()
        })
    }

    fn pod(name: &str) -> Key {
        Key::PodStatus(PodKey::new("default", name), PodStatusOwner::Device)
    }

    #[test]
    fn work_for_one_object_is_merged_newest_wins() {
        let mut q = Queue::default();
        let k = Key::Node("gw1".into());
        assert!(!q.push(k.clone(), node(Some(1), Some(json!(1))), false));
        assert!(q.push(k.clone(), node(Some(2), None), false));
        // A retry goes under what is newer.
        assert!(q.push(k.clone(), node(Some(0), Some(json!(0))), true));
        let (key, work) = q.take().expect("work");
        assert_eq!(key, k);
        let Work::Node(w) = work else {
            panic!("node work")
        };
        assert_eq!(w.lease, Some(2));
        assert_eq!(w.status, Some(json!(1)));
        assert!(q.take().is_none());
    }

    #[test]
    fn pod_statuses_go_before_node_work() {
        let mut q = Queue::default();
        for i in 0..3 {
            q.push(Key::Node(format!("gw{i}")), node(Some(i), None), false);
        }
        q.push(
            pod("web"),
            Work::PodStatus(json!({"phase": "Running"})),
            false,
        );
        assert_eq!(q.take().map(|(k, _)| k), Some(pod("web")));
        assert_eq!(q.take().map(|(k, _)| k), Some(Key::Node("gw0".into())));
    }

    #[test]
    fn an_object_is_never_in_flight_twice() {
        let mut q = Queue::default();
        let k = Key::Node("gw1".into());
        q.push(k.clone(), node(Some(1), None), false);
        let (taken, _) = q.take().expect("work");
        // New work for the same node while the first is in flight waits.
        q.push(k.clone(), node(Some(2), None), false);
        q.push(Key::Node("gw2".into()), node(Some(1), None), false);
        assert_eq!(q.take().map(|(k, _)| k), Some(Key::Node("gw2".into())));
        assert!(q.take().is_none());
        q.done(&taken);
        let (again, work) = q.take().expect("the newer work");
        assert_eq!(again, k);
        assert!(matches!(work, Work::Node(NodeWork { lease: Some(2), .. })));
    }

    fn within(d: Duration, low_ms: u64, high_ms: u64) -> bool {
        d >= Duration::from_millis(low_ms) && d < Duration::from_millis(high_ms)
    }

    #[test]
    fn retries_back_off_per_object_and_start_afresh_after_a_success() {
        let mut r: Retries<&str> = Retries::default();
        // kube-runtime's default: 0.8 s doubling to 30 s, plus up to 100 % jitter.
        assert!(within(r.failed(&"a"), 800, 1_600));
        assert!(within(r.failed(&"a"), 1_600, 3_200));
        assert!(within(r.failed(&"a"), 3_200, 6_400));
        // Another object has its own back-off.
        assert!(within(r.failed(&"b"), 800, 1_600));
        for _ in 0..10 {
            r.failed(&"a");
        }
        assert!(within(r.failed(&"a"), 30_000, 60_000), "capped");
        assert_eq!(r.failing(), 2);
        r.succeeded(&"a");
        assert!(within(r.failed(&"a"), 800, 1_600), "reset by the success");
        r.succeeded(&"a");
        r.succeeded(&"b");
        assert_eq!(r.failing(), 0);
    }

    #[test]
    fn a_backlog_says_what_was_left() {
        assert_eq!(Backlog::default().to_string(), "nothing");
        let b = Backlog {
            pod_statuses: 2,
            events: 1,
            in_flight: 1,
            ..Default::default()
        };
        assert_eq!(
            b.to_string(),
            "2 pod statuses, 1 event, 1 request in flight"
        );
    }

    /// The writer against kube's mock service pair (`tower_test::mock`):
    /// every request it makes is seen here and answered by the test.
    mod against_a_mock_apiserver {
        use super::*;
        use http::{Request, Response};
        use kube::client::Body;
        use tower_test::mock;

        type Handle = mock::Handle<Request<Body>, Response<Body>>;

        fn writer(workers: usize) -> (Writer, Handle) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            (Writer::start(client, 0.0, workers), handle)
        }

        /// One request seen by the apiserver.
        #[derive(Debug)]
        struct Seen {
            method: http::Method,
            uri: String,
            content_type: String,
            body: Value,
        }

        /// Takes the next request and answers it with `status` and `reply`.
        async fn answer(handle: &mut Handle, status: u16, reply: Value) -> Seen {
            let (request, respond) = handle.next_request().await.expect("a request");
            let seen = take(request).await;
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
            seen
        }

        async fn take(request: Request<Body>) -> Seen {
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            };
            Seen {
                method,
                uri,
                content_type,
                body,
            }
        }

        fn pod_object(name: &str) -> Value {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": "u-1"},
            })
        }

        fn status_failure(code: u16) -> Value {
            json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": "injected", "reason": "InternalError", "code": code,
            })
        }

        fn pod_status(name: &str, phase: &str) -> Action {
            Action::PodStatus {
                pod: PodKey::new("default", name),
                owner: PodStatusOwner::Device,
                body: json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default"},
                    "status": {"phase": phase},
                }),
            }
        }

        #[tokio::test]
        async fn a_pod_status_is_a_forced_server_side_apply_of_the_status_subresource() {
            let (writer, mut handle) = writer(1);
            writer.push(pod_status("web", "Running"));
            let seen = answer(&mut handle, 200, pod_object("web")).await;
            assert_eq!(seen.method, http::Method::PATCH);
            assert!(
                seen.uri
                    .starts_with("/api/v1/namespaces/default/pods/web/status?"),
                "{}",
                seen.uri
            );
            assert!(
                seen.uri.contains(&format!("fieldManager={MANAGER}")),
                "{}",
                seen.uri
            );
            assert!(seen.uri.contains("force=true"), "{}", seen.uri);
            assert_eq!(seen.content_type, "application/apply-patch+yaml");
            assert_eq!(seen.body["status"]["phase"], "Running");
            writer
                .drain(Instant::now() + Duration::from_secs(3600))
                .await
                .expect("nothing left");
            assert_eq!(writer.stats().requests.load(Ordering::Relaxed), 1);
            assert_eq!(writer.stats().errors.load(Ordering::Relaxed), 0);
        }

        #[tokio::test]
        async fn queued_writes_are_flushed_before_the_drain_returns() {
            let (writer, mut handle) = writer(1);
            writer.push(pod_status("web", "Running"));
            writer.push(Action::RenewLease {
                name: "edge-a".into(),
                now_ms: 1_700_000_000_000,
            });
            // Merged into the waiting status: one request for it, the newest.
            writer.push(pod_status("web", "Succeeded"));
            let drain = tokio::spawn({
                let writer = writer.clone();
                async move {
                    writer
                        .drain(Instant::now() + Duration::from_secs(3600))
                        .await
                }
            });
            let status = answer(&mut handle, 200, pod_object("web")).await;
            assert!(status.uri.contains("/pods/web/status"), "{}", status.uri);
            assert_eq!(status.body["status"]["phase"], "Succeeded");
            // The Lease is still queued: the drain waits for it.
            assert!(!drain.is_finished());
            // The Lease names its Node's uid: read first, then applied.
            let node = answer(
                &mut handle,
                200,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-a", "uid": "n-1"}}),
            )
            .await;
            assert_eq!(node.method, http::Method::GET);
            assert_eq!(node.uri, "/api/v1/nodes/edge-a");
            assert!(!drain.is_finished());
            let lease = answer(
                &mut handle,
                200,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "edge-a"}}),
            )
            .await;
            assert_eq!(lease.method, http::Method::PATCH);
            assert!(
                lease.uri.starts_with(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a?"
                ),
                "{}",
                lease.uri
            );
            assert_eq!(lease.body["metadata"]["ownerReferences"][0]["uid"], "n-1");
            assert_eq!(lease.body["spec"]["holderIdentity"], "edge-a");
            drain
                .await
                .expect("drain task")
                .expect("everything written");
            assert!(writer.unfinished().is_empty());
            assert_eq!(writer.stats().coalesced.load(Ordering::Relaxed), 1);
            assert_eq!(writer.stats().requests.load(Ordering::Relaxed), 3);
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_write_is_retried_after_the_back_off_and_the_drain_waits_for_it() {
            let (writer, mut handle) = writer(1);
            writer.push(pod_status("web", "Running"));
            let drain = tokio::spawn({
                let writer = writer.clone();
                async move {
                    writer
                        .drain(Instant::now() + Duration::from_secs(600))
                        .await
                }
            });
            answer(&mut handle, 500, status_failure(500)).await;
            let failed_at = Instant::now();
            let again = answer(&mut handle, 200, pod_object("web")).await;
            // Paused time: the retry came after the back-off's first step.
            let waited = failed_at.elapsed();
            assert!(within(waited, 800, 1_600), "{waited:?}");
            assert_eq!(again.body["status"]["phase"], "Running");
            drain
                .await
                .expect("drain task")
                .expect("written on the retry");
            assert_eq!(writer.stats().errors.load(Ordering::Relaxed), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn what_is_not_written_by_the_deadline_is_named() {
            let (writer, mut handle) = writer(1);
            writer.push(pod_status("web", "Running"));
            writer.push(pod_status("db", "Running"));
            // The apiserver takes the first request and never answers.
            let (_request, _respond) = handle.next_request().await.expect("a request");
            let left = writer
                .drain(Instant::now() + Duration::from_secs(10))
                .await
                .expect_err("the deadline passes");
            assert_eq!(
                left,
                Backlog {
                    pod_statuses: 1,
                    in_flight: 1,
                    ..Default::default()
                }
            );
            assert_eq!(left.to_string(), "1 pod status, 1 request in flight");
        }
    }
}
