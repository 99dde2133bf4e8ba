//! The device's side of fleets (docs/wire.md, "Fleets"): its labels, the
//! fleet deployments it has read, the specs it fetched by digest, the pods
//! it runs for the fleets that win (`fleet::resolve`), and its reports.
//!
//! Invariants:
//! - a fleet spec is used only if the sha256 of its payload is the digest
//!   the fleet deployment names, and it names the fleet's pod and uid;
//! - a pod keeps running its current revision until the spec of the next
//!   one has arrived and passed its checks and everything it needs is on
//!   the device (`Runtime::prefetch`: images pulled, modules fetched and
//!   compiled): a revision whose image cannot be pulled never stops the one
//!   that runs, it is reported `Failed` (and retried every minute);
//! - no gap: the next revision then starts **beside** the running one, as
//!   an instance of its own (`Successor`: its own runtime uid, sandbox and
//!   directory; its statuses held back), and the running one is stopped only
//!   once the new one is ready (or has succeeded); a next revision that
//!   fails (`revision_failure`: a crash, an image or configuration error)
//!   is stopped and reported `Failed` while the running one stays, and is
//!   tried again a minute later. A pod that cannot have two instances at
//!   once (`can_surge`: host network, host ports, a Wasm pod's ports, which
//!   are the host's) is stopped, then started, as the kubelet replaces a
//!   pod;
//! - the same spec under a new revision (a rollback to what runs) changes
//!   the recorded generation only: no restart;
//! - fleet records and specs are kept in the store, so fleet pods come back
//!   after a restart with no broker; a fleet deployment is dropped when its
//!   retained record is gone at the barrier, except when every one is gone
//!   at once (a broker that lost its state): then nothing is deleted and
//!   `FleetsMissing` says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::{AfterStop, Controller, Decision, Incoming, decide};
use crate::fleet::resolve::{self, Verdict};
use crate::model::{
    FleetDeployment, FleetPodState, FleetReport, NodeLabels, PodConditionType, PodKey, PodPhase,
    PodSource, PodSpec, now_ms,
};
use crate::mqtt::SessionCommand;
use crate::store::{DesiredRecord, OutboxEntry};
use crate::wire;

/// Container waiting reasons that mean the revision failed on this device.
const FAILED_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

#[derive(Debug, Default)]
pub(super) struct FleetView {
    /// The device's own labels (`node.labels`).
    pub own_labels: BTreeMap<String, String>,
    /// The cloud's labels (`{node}/labels`).
    pub cloud_labels: BTreeMap<String, String>,
    pub records: BTreeMap<PodKey, FleetDeployment>,
    /// Fleet records received on this connection.
    pub seen: BTreeSet<PodKey>,
    /// Checked fleet specs by digest.
    pub specs: HashMap<String, PodSpec>,
    /// Digests subscribed to and not yet received.
    pub fetching: BTreeSet<String>,
    /// Digests whose payload failed its checks: why.
    pub bad_specs: HashMap<String, String>,
    /// The last report sent per fleet.
    pub reports: BTreeMap<PodKey, FleetReport>,
    pub warned_missing: bool,
    /// The next revision of running fleet pods, being brought to the
    /// device before the running one is stopped.
    pub prefetch: HashMap<PodKey, Prefetch>,
}

/// A fleet pod's next revision being prefetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prefetch {
    pub uid: String,
    pub generation: u64,
    pub state: PrefetchState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PrefetchState {
    Running,
    Done,
    /// The runtime's reason and message; retried after [`PREFETCH_RETRY`].
    Failed {
        reason: String,
        message: String,
        at: tokio::time::Instant,
    },
}

/// How long a failed prefetch waits before it is tried again.
const PREFETCH_RETRY: Duration = Duration::from_secs(60);

/// A fleet pod's next revision, running beside the one it replaces until
/// it is ready.
pub(super) struct Successor {
    pub entry: super::PodEntry,
    /// Its last status, recorded as the pod's once it takes its place.
    pub last: Option<crate::model::PodStatus>,
    /// Since when it is ready without a break.
    pub ready_since: Option<tokio::time::Instant>,
    /// How long it must be ready before it takes the pod's place (the
    /// rollout's `min_ready_secs`, Kubernetes' `minReadySeconds`): a
    /// revision that starts, then crash-loops, is caught beside the running
    /// one.
    pub min_ready: Duration,
}

/// Whether two instances of `spec` can run at once: not when they would
/// contend for the host's ports.
pub(super) fn can_surge(spec: &PodSpec) -> bool {
    let ports = spec
        .init_containers
        .iter()
        .chain(&spec.containers)
        .flat_map(|c| &c.ports);
    !spec.host_network
        && match spec.runtime {
            // A module listens on the host's own ports.
            crate::model::RuntimeKind::Wasm => ports.count() == 0,
            crate::model::RuntimeKind::Container => {
                ports.into_iter().all(|p| p.host_port.is_none())
            }
        }
}

/// Why a revision failed on this device, from its pod's status, if it did:
/// a container waiting for a reason that means so (`FAILED_REASONS`), one
/// that exited with an error while the pod runs `revision` (a crash loop
/// between two restarts), or a failed pod.
pub(super) fn revision_failure(
    status: &crate::model::PodStatus,
    revision: u64,
) -> Option<(Option<String>, Option<String>)> {
    let waiting = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .find_map(|c| match &c.state {
            crate::model::ContainerState::Waiting { reason, message }
                if FAILED_REASONS.contains(&reason.as_str()) =>
            {
                Some((Some(reason.clone()), message.clone()))
            }
            crate::model::ContainerState::Terminated {
                exit_code,
                reason,
                message,
                ..
            } if *exit_code != 0 && status.observed_generation == revision => Some((
                Some(reason.clone()),
                Some(message.clone().unwrap_or_else(|| {
                    format!("container {} exited with code {exit_code}", c.name)
                })),
            )),
            _ => None,
        });
    match (waiting, status.phase) {
        (Some(w), _) => Some(w),
        (None, PodPhase::Failed) => Some((status.reason.clone(), status.message.clone())),
        (None, _) => None,
    }
}

/// Why a next revision running beside the current one failed, if it did:
/// as `revision_failure`, or any crash of its containers since it started
/// (it has run only this revision; a revision that crashes is not taken
/// even if it runs again for a moment after).
pub(super) fn successor_failure(
    status: &crate::model::PodStatus,
    revision: u64,
) -> Option<(Option<String>, Option<String>)> {
    revision_failure(status, revision).or_else(|| {
        status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
            .find_map(|c| match &c.last_state {
                Some(crate::model::ContainerState::Terminated {
                    exit_code,
                    reason,
                    message,
                    ..
                }) if *exit_code != 0 => Some((
                    Some(reason.clone()),
                    Some(message.clone().unwrap_or_else(|| {
                        format!("container {} exited with code {exit_code}", c.name)
                    })),
                )),
                _ => None,
            })
    })
}

/// What a prefetch task reports to the controller.
#[derive(Debug)]
pub struct Prefetched {
    pod: PodKey,
    uid: String,
    generation: u64,
    /// The runtime's reason and message.
    result: Result<(), (String, String)>,
}

impl FleetView {
    /// Own labels, overlaid with the cloud's.
    pub(super) fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.own_labels.clone();
        l.extend(self.cloud_labels.clone());
        l
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn fleet_key(k: &PodKey) -> String {
    format!("fleet/{}/{}", k.namespace, k.name)
}

impl Controller {
    /// Loads the fleet state kept in the store (before pods are restored).
    pub(super) fn restore_fleets(&mut self) {
        self.fleet.own_labels = self.config.labels();
        let rows = match self.store.fleet_state() {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "cannot read the fleet state"),
        };
        for (key, value) in rows {
            if key == "labels" {
                match wire::decode_as::<NodeLabels>(&value) {
                    Ok((_, l)) => self.fleet.cloud_labels = l.labels,
                    Err(e) => warn!(error = %e, "stored labels unreadable; ignored"),
                }
            } else if key.starts_with("fleet/") {
                match wire::decode_as::<FleetDeployment>(&value) {
                    Ok((_, f)) => {
                        self.fleet.records.insert(f.key(), f);
                    }
                    Err(e) => {
                        warn!(%key, error = %e, "stored fleet deployment unreadable; ignored")
                    }
                }
            } else if let Some(digest) = key.strip_prefix("spec/") {
                if sha256_hex(&value) != digest {
                    warn!(%key, "stored fleet spec does not match its digest; ignored");
                    continue;
                }
                match wire::decode_as::<PodSpec>(&value) {
                    Ok((_, s)) => {
                        self.fleet.specs.insert(digest.to_string(), s);
                    }
                    Err(e) => warn!(%key, error = %e, "stored fleet spec unreadable; ignored"),
                }
            } else if let Some(fleet) = key.strip_prefix("report/")
                && let (Some(k), Ok(r)) = (
                    PodKey::parse(fleet),
                    postcard::from_bytes::<FleetReport>(&value),
                )
            {
                self.fleet.reports.insert(k, r);
            }
        }
        info!(
            fleets = self.fleet.records.len(),
            specs = self.fleet.specs.len(),
            labels = ?self.fleet.labels(),
            "fleet state restored"
        );
    }

    /// A new connection: records arrive again, then the barrier.
    pub(super) fn fleets_connected(&mut self) {
        self.fleet.seen.clear();
        self.fleet.warned_missing = false;
    }

    /// The barrier: every retained fleet record has arrived. Those not
    /// seen were deleted while this device was away.
    pub(super) fn fleets_synced(&mut self) {
        let gone: Vec<PodKey> = self
            .fleet
            .records
            .keys()
            .filter(|k| !self.fleet.seen.contains(*k))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        if self.signatures_required() {
            // Anyone can clear a retained record: with signed desired state
            // only a signed tombstone deletes a fleet deployment.
            if !self.fleet.warned_missing {
                self.fleet.warned_missing = true;
                let names: Vec<String> = gone.iter().map(|k| k.to_string()).collect();
                let message = format!(
                    "the broker no longer holds fleet deployment(s) {}, and no signed delete arrived; keeping them (this node requires signed desired state)",
                    names.join(", ")
                );
                self.node_warning("FleetsMissing", message);
            }
            return;
        }
        if self.fleet.seen.is_empty() {
            if !self.fleet.warned_missing {
                self.fleet.warned_missing = true;
                let message = format!(
                    "the broker holds none of the {} fleet deployments this node runs; keeping them (a broker that lost its retained messages must not stop every fleet pod). Delete a fleet deployment with kedge delete fleet or by removing its custom resource",
                    gone.len()
                );
                self.node_warning("FleetsMissing", message);
            }
            return;
        }
        for key in gone {
            info!(fleet = %key, "fleet deployment deleted while away");
            self.remove_fleet(&key);
        }
        self.refleet();
    }

    fn remove_fleet(&mut self, key: &PodKey) {
        if let Err(e) = self.store.put_fleet(&fleet_key(key), None) {
            warn!(fleet = %key, error = %e, "cannot forget fleet deployment");
        }
        self.fleet.records.remove(key);
    }

    /// `{prefix}/_fleet/{ns}/{name}`.
    pub(super) fn on_fleet(&mut self, key: PodKey, payload: &[u8]) {
        self.fleet.seen.insert(key.clone());
        let topic = self.topics.fleet(&key);
        if let Err(r) = self.admit(&topic, payload) {
            // The last accepted record (if any) stays in force.
            let message = format!(
                "refusing fleet deployment {key}: {r}; the last accepted record stays in force"
            );
            return self.node_warning(r.reason(), message);
        }
        if wire::is_tombstone(payload) {
            info!(fleet = %key, "fleet deployment deleted");
            self.remove_fleet(&key);
            self.refleet();
            return;
        }
        let f = match wire::decode_as::<FleetDeployment>(payload) {
            Ok((_, f)) if f.key() == key => f,
            Ok((_, f)) => {
                let message = format!(
                    "ignoring fleet deployment {} sent on the topic of {key}",
                    f.key()
                );
                return self.node_warning("InvalidFleetDeployment", message);
            }
            Err(e) => {
                // The last good record (if any) stays in force.
                let message = format!("cannot read fleet deployment {key}: {e}");
                return self.node_warning("InvalidFleetDeployment", message);
            }
        };
        if self.fleet.records.get(&key) == Some(&f) {
            return;
        }
        debug!(fleet = %key, revision = f.revision, "fleet deployment");
        if let Err(e) = self.store.put_fleet(&fleet_key(&key), Some(payload)) {
            warn!(fleet = %key, error = %e, "cannot record fleet deployment; using it anyway");
        }
        self.fleet.records.insert(key, f);
        self.refleet();
    }

    /// `{prefix}/_fleet-spec/{digest}`.
    pub(super) fn on_fleet_spec(&mut self, digest: String, payload: &[u8]) {
        if !self.fleet.fetching.contains(&digest) || payload.is_empty() {
            return;
        }
        let checked = if sha256_hex(payload) != digest {
            Err("its payload does not match its sha256 digest".to_string())
        } else {
            match wire::decode_as::<PodSpec>(payload) {
                Ok((_, spec)) => {
                    let named = self.fleet.records.values().any(|f| {
                        (f.spec_digest == digest
                            || f.stable.as_ref().is_some_and(|s| s.spec_digest == digest))
                            && f.pod_key() == spec.key()
                            && f.uid == spec.uid
                    });
                    if named {
                        Ok(spec)
                    } else {
                        Err(format!(
                            "it names pod {} uid {}, which no fleet deployment with this digest runs",
                            spec.key(),
                            spec.uid
                        ))
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        };
        self.fleet.fetching.remove(&digest);
        self.send(SessionCommand::Unsubscribe(self.topics.fleet_spec(&digest)));
        match checked {
            Ok(spec) => {
                if let Err(e) = self
                    .store
                    .put_fleet(&format!("spec/{digest}"), Some(payload))
                {
                    warn!(%digest, error = %e, "cannot record fleet spec; using it anyway");
                }
                self.fleet.bad_specs.remove(&digest);
                self.fleet.specs.insert(digest, spec);
            }
            Err(why) => {
                let message = format!("refusing fleet spec {digest}: {why}");
                self.node_warning("InvalidFleetSpec", message);
                self.fleet.bad_specs.insert(digest, why);
            }
        }
        self.refleet();
    }

    /// `{prefix}/{node}/labels`.
    pub(super) fn on_labels(&mut self, payload: &[u8]) {
        let topic = self.topics.labels(&self.node);
        if let Err(r) = self.admit(&topic, payload) {
            let message =
                format!("refusing the labels set for this node: {r}; keeping the labels it has");
            return self.node_warning(r.reason(), message);
        }
        let tombstone = wire::is_tombstone(payload);
        let labels = if tombstone {
            BTreeMap::new()
        } else {
            match wire::decode_as::<NodeLabels>(payload) {
                Ok((_, l)) => l.labels,
                Err(e) => {
                    let message = format!("cannot read the labels set for this node: {e}");
                    return self.node_warning("InvalidLabels", message);
                }
            }
        };
        if labels == self.fleet.cloud_labels {
            return;
        }
        info!(?labels, "labels set by the cloud");
        let stored = (!tombstone).then_some(payload);
        if let Err(e) = self.store.put_fleet("labels", stored) {
            warn!(error = %e, "cannot record labels; using them anyway");
        }
        self.fleet.cloud_labels = labels;
        self.publish_node_status();
        self.refleet();
    }

    fn fleet_plan(&self) -> resolve::Plan {
        let by_name: BTreeSet<PodKey> = self
            .pods
            .iter()
            .filter(|(_, e)| e.source != PodSource::Fleet)
            .map(|(k, _)| k.clone())
            .collect();
        resolve::plan(
            crate::fleet::bucket(&self.node),
            &self.fleet.labels(),
            self.fleet.records.values(),
            &by_name,
        )
    }

    /// Brings the pods from fleets in line with the plan, then reports.
    pub(super) fn refleet(&mut self) {
        let plan = self.fleet_plan();
        let mut needed: BTreeSet<String> = BTreeSet::new();
        for (pod, (fleet, revision)) in &plan.pods {
            let Some(f) = self.fleet.records.get(fleet) else {
                continue;
            };
            let Some(body) = self.fleet.specs.get(&revision.spec_digest) else {
                if !self.fleet.bad_specs.contains_key(&revision.spec_digest) {
                    needed.insert(revision.spec_digest.clone());
                }
                continue;
            };
            let mut spec = body.clone();
            spec.uid = f.uid.clone();
            spec.generation = revision.revision;
            let min_ready = Duration::from_secs(f.rollout.policy.min_ready_secs.into());
            self.run_fleet_pod(pod.clone(), spec, min_ready);
        }
        // Fleet pods no fleet gives this device any more.
        let leaving: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(k, e)| {
                e.source == PodSource::Fleet
                    && !matches!(e.then, AfterStop::Delete)
                    && !plan.pods.contains_key(*k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in leaving {
            info!(pod = %key, "no fleet deployment gives this node the pod any more");
            if let Err(e) = self.apply(key.clone(), Incoming::Delete(PodSource::Fleet)) {
                warn!(pod = %key, error = %e, "cannot record the delete; retried on the next change");
            }
        }
        // Prefetches and next revisions no fleet asks for any more.
        self.fleet.prefetch.retain(|pod, p| {
            plan.pods
                .get(pod)
                .is_some_and(|(_, r)| r.revision == p.generation)
        });
        let stale: Vec<PodKey> = self
            .successors
            .iter()
            .filter(|(pod, s)| {
                plan.pods
                    .get(*pod)
                    .is_none_or(|(_, r)| r.revision != s.entry.spec.generation)
            })
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in stale {
            self.abandon_successor(&pod);
        }
        for digest in needed.difference(&self.fleet.fetching.clone()) {
            debug!(%digest, "fetching fleet spec");
            self.send(SessionCommand::Subscribe(self.topics.fleet_spec(digest)));
        }
        for digest in self.fleet.fetching.difference(&needed) {
            self.send(SessionCommand::Unsubscribe(self.topics.fleet_spec(digest)));
        }
        self.fleet.fetching = needed;
        self.report_fleets(&plan.fleets, true);
    }

    fn run_fleet_pod(&mut self, pod: PodKey, spec: PodSpec, min_ready: Duration) {
        if let Some(entry) = self.pods.get_mut(&pod)
            && entry.source == PodSource::Fleet
            && matches!(entry.then, AfterStop::Nothing)
            && entry.spec.uid == spec.uid
            && entry.spec.generation != spec.generation
        {
            let mut same = entry.spec.clone();
            same.generation = spec.generation;
            if same == spec {
                // The same spec under a new revision (a rollback to what
                // runs): recorded, not restarted.
                let record = DesiredRecord {
                    source: PodSource::Fleet,
                    spec: spec.clone(),
                };
                if let Err(e) = self.store.put_desired(&record) {
                    return warn!(pod = %pod, error = %e, "cannot record the new revision");
                }
                info!(pod = %pod, revision = spec.generation, "same spec under a new revision; not restarted");
                entry.spec.generation = spec.generation;
                self.fleet.prefetch.remove(&pod);
                return;
            }
        }
        // A running revision is replaced only once its successor can start;
        // what the running pod takes as it is (unchanged, or changed in
        // place) goes to `apply` at once.
        let replaces = self.pods.get(&pod).is_some_and(|e| {
            e.source == PodSource::Fleet
                && matches!(e.then, AfterStop::Nothing)
                && decide(
                    Some((&e.spec, e.source)),
                    false,
                    &Incoming::Apply(spec.clone(), PodSource::Fleet),
                ) == Decision::Replace
        });
        if replaces && !self.prefetched(&pod, &spec) {
            return;
        }
        if replaces
            && can_surge(&spec)
            && self.pods.get(&pod).is_some_and(|e| can_surge(&e.spec))
            && self.runtime_for(&spec).is_ok()
        {
            return self.start_successor(pod, spec, min_ready);
        }
        self.fleet.prefetch.remove(&pod);
        if let Err(e) = self.apply(pod.clone(), Incoming::Apply(spec, PodSource::Fleet)) {
            warn!(pod = %pod, error = %e, "cannot record the fleet pod; retried on the next change");
        }
    }

    /// Starts `spec`, the next revision of the running fleet pod `pod`,
    /// beside it (once: a newer revision waits for an older successor to
    /// go).
    fn start_successor(&mut self, pod: PodKey, spec: PodSpec, min_ready: Duration) {
        if let Some(s) = self.successors.get(&pod) {
            if s.entry.spec.generation != spec.generation {
                // `successor_stopped` comes back here for the newer one.
                self.abandon_successor(&pod);
            }
            return;
        }
        // Its own uid for the runtime: the running instance keeps its
        // sandbox and directory.
        let instance = format!("{}-{:x}", spec.uid, now_ms());
        info!(pod = %pod, revision = spec.generation, %instance, "starting the next revision beside the running one");
        let entry = self.launch(spec, PodSource::Fleet, None, Some(instance));
        self.successors.insert(
            pod,
            Successor {
                entry,
                last: None,
                ready_since: None,
                min_ready,
            },
        );
    }

    /// A status of `pod`'s next revision: held back; it takes the pod's
    /// place once ready (the running instance is stopped: `promote` follows
    /// its stop), and goes if it failed.
    pub(super) fn on_successor_status(&mut self, pod: &PodKey, status: crate::model::PodStatus) {
        let taking_over = self
            .pods
            .get(pod)
            .is_some_and(|e| matches!(e.then, AfterStop::Promote));
        let Some(s) = self.successors.get_mut(pod) else {
            return;
        };
        let revision = s.entry.spec.generation;
        let failure = successor_failure(&status, revision);
        let ready = status.phase == PodPhase::Succeeded
            || (status.phase == PodPhase::Running
                && status
                    .conditions
                    .iter()
                    .any(|c| c.kind == PodConditionType::Ready && c.status));
        s.last = Some(status);
        s.ready_since = match (ready, s.ready_since) {
            (true, since) => since.or_else(|| Some(tokio::time::Instant::now())),
            (false, _) => None,
        };
        if taking_over || matches!(s.entry.then, AfterStop::Abandon) {
            return;
        }
        if let Some((reason, message)) = failure {
            let reason = reason.unwrap_or_else(|| "Failed".into());
            let message = message.unwrap_or_default();
            warn!(pod = %pod, revision, %reason, %message, "the next revision failed beside the running one; the running one stays");
            self.fleet.prefetch.insert(
                pod.clone(),
                Prefetch {
                    uid: self.successors[pod].entry.spec.uid.clone(),
                    generation: revision,
                    state: PrefetchState::Failed {
                        reason,
                        message,
                        at: tokio::time::Instant::now(),
                    },
                },
            );
            self.abandon_successor(pod);
            self.fleet_pod_changed(pod);
        } else if ready {
            self.take_over_if_due(pod);
        }
    }

    /// Next revisions ready for long enough take their pods' places (on
    /// every heartbeat, and at each of their statuses).
    pub(super) fn take_over_due(&mut self) {
        let pods: Vec<PodKey> = self.successors.keys().cloned().collect();
        for pod in pods {
            self.take_over_if_due(&pod);
        }
    }

    /// Stops the running instance of `pod` for its successor once that has
    /// been ready for `min_ready` (`promote` follows the stop).
    fn take_over_if_due(&mut self, pod: &PodKey) {
        let Some(s) = self.successors.get(pod) else {
            return;
        };
        let due = s.ready_since.is_some_and(|t| t.elapsed() >= s.min_ready);
        if !due || matches!(s.entry.then, AfterStop::Abandon) {
            return;
        }
        let revision = s.entry.spec.generation;
        let Some(running) = self.pods.get_mut(pod) else {
            return;
        };
        if !matches!(running.then, AfterStop::Nothing) {
            return;
        }
        info!(pod = %pod, revision, "the next revision is ready; stopping the one it replaces");
        running.then = AfterStop::Promote;
        match running.supervisor.as_mut() {
            Some(sv) => sv.stop(),
            None => self.finish_stop(pod),
        }
    }

    /// Stops `pod`'s next revision, if one runs; the running pod stays.
    pub(super) fn abandon_successor(&mut self, pod: &PodKey) {
        let Some(s) = self.successors.get_mut(pod) else {
            return;
        };
        if matches!(s.entry.then, AfterStop::Abandon) {
            return;
        }
        s.entry.then = AfterStop::Abandon;
        match s.entry.supervisor.as_mut() {
            Some(sv) => sv.stop(),
            None => self.successor_stopped(pod),
        }
    }

    /// `pod`'s next revision stopped before it took the pod's place.
    pub(super) fn successor_stopped(&mut self, pod: &PodKey) {
        let Some(s) = self.successors.remove(pod) else {
            return;
        };
        let _ = crate::runtime::volumes::remove_pod_dir(&self.entry_dir(&s.entry));
        debug!(pod = %pod, revision = s.entry.spec.generation, "the next revision stopped");
        // A newer revision may be waiting for it to go.
        self.refleet();
    }

    /// The running instance of `pod` stopped for its ready successor,
    /// which takes its place: recorded as the desired pod with its
    /// instance, its held-back status recorded as the pod's.
    pub(super) fn promote(&mut self, pod: &PodKey) {
        let Some(Successor { entry, last, .. }) = self.successors.remove(pod) else {
            // It went meanwhile: start what the fleets want.
            return self.refleet();
        };
        let record = DesiredRecord {
            source: PodSource::Fleet,
            spec: entry.spec.clone(),
        };
        if let Err(e) = self
            .store
            .put_desired_instance(&record, Some(&entry.instance))
        {
            warn!(pod = %pod, error = %e, "cannot record the new revision; a restart would start the previous one again");
        }
        #[cfg(feature = "data")]
        if let Some(data) = &self.data {
            // The stop of the previous instance forgot the pod's routes.
            let _ = data.admit(entry.spec.clone());
        }
        info!(pod = %pod, revision = entry.spec.generation, instance = %entry.instance, "the next revision took the pod's place with no gap");
        self.fleet.prefetch.remove(pod);
        let uid = entry.spec.uid.clone();
        self.pods.insert(pod.clone(), entry);
        if let Some(mut status) = last {
            status.uid = uid;
            self.record_status(pod, &status);
        }
        self.fleet_pod_changed(pod);
    }

    /// Whether `spec` (the next revision of `pod`) is on the device; starts
    /// bringing it if not.
    fn prefetched(&mut self, pod: &PodKey, spec: &PodSpec) -> bool {
        let retry = match self.fleet.prefetch.get(pod) {
            Some(p) if p.uid == spec.uid && p.generation == spec.generation => match &p.state {
                PrefetchState::Done => return true,
                PrefetchState::Running => return false,
                PrefetchState::Failed { at, .. } => at.elapsed() >= PREFETCH_RETRY,
            },
            _ => true,
        };
        if !retry {
            return false;
        }
        let runtime = match self.runtime_for(spec) {
            Ok(r) => r,
            // Nothing to prefetch with: starting it will say why.
            Err(_) => return true,
        };
        info!(pod = %pod, revision = spec.generation, "prefetching the next revision before stopping the running one");
        self.fleet.prefetch.insert(
            pod.clone(),
            Prefetch {
                uid: spec.uid.clone(),
                generation: spec.generation,
                state: PrefetchState::Running,
            },
        );
        let ctx = crate::runtime::PodContext {
            pod_dir: self.pod_dir(spec),
            spec: spec.clone(),
            events: crate::runtime::EventSink::new(self.runtime_events.clone()),
            #[cfg(feature = "data")]
            data: None,
        };
        let tx = self.prefetched.clone();
        let (pod, uid, generation) = (pod.clone(), spec.uid.clone(), spec.generation);
        crate::spawn(async move {
            let result = runtime
                .prefetch(&ctx)
                .await
                .map_err(|e| (e.reason().to_string(), e.to_string()));
            let _ = tx.send(Prefetched {
                pod,
                uid,
                generation,
                result,
            });
        });
        false
    }

    /// A prefetch task finished.
    pub(super) fn on_prefetched(&mut self, p: Prefetched) {
        let Some(entry) = self.fleet.prefetch.get_mut(&p.pod) else {
            return;
        };
        if entry.uid != p.uid || entry.generation != p.generation {
            return;
        }
        entry.state = match p.result {
            Ok(()) => PrefetchState::Done,
            Err((reason, message)) => {
                warn!(pod = %p.pod, revision = p.generation, %reason, %message, "the next revision cannot start; the running one stays");
                PrefetchState::Failed {
                    reason,
                    message,
                    at: tokio::time::Instant::now(),
                }
            }
        };
        self.refleet();
    }

    /// Failed prefetches whose wait is over are tried again.
    pub(super) fn retry_prefetches(&mut self) {
        let due = self.fleet.prefetch.values().any(
            |p| matches!(&p.state, PrefetchState::Failed { at, .. } if at.elapsed() >= PREFETCH_RETRY),
        );
        if due {
            self.refleet();
        }
    }

    /// What this device says about one fleet deployment.
    fn fleet_report(&self, fleet: &FleetDeployment, t: &resolve::Targeted) -> FleetReport {
        let pod = fleet.pod_key();
        let desired = t.want.as_ref().map_or(0, |r| r.revision);
        let running_pod = self
            .pods
            .get(&pod)
            .filter(|e| e.source == PodSource::Fleet && e.spec.uid == fleet.uid);
        let status = running_pod.and_then(|_| self.store.status(&pod).ok().flatten());
        // The revision of the spec that runs (a new revision of the same
        // spec is recorded on the pod without a restart, so its status may
        // still carry the generation it started with).
        let running = match (running_pod, &status) {
            (Some(e), Some(s)) if s.uid == fleet.uid => {
                e.spec.generation.max(s.observed_generation)
            }
            _ => 0,
        };
        let mut report = FleetReport {
            fleet_uid: fleet.uid.clone(),
            desired_revision: desired,
            running_revision: running,
            state: FleetPodState::Pending,
            groups: t.groups,
            reason: None,
            message: None,
        };
        if let Some(by) = &t.superseded_by {
            report.state = FleetPodState::Superseded;
            report.reason = Some("Superseded".into());
            report.message = Some(format!("this node runs pod {pod} from {by}"));
            return report;
        }
        let Some(want) = &t.want else {
            report.state = FleetPodState::Waiting;
            return report;
        };
        if let Some(why) = self.fleet.bad_specs.get(&want.spec_digest) {
            report.state = FleetPodState::Failed;
            report.reason = Some("InvalidFleetSpec".into());
            report.message = Some(why.clone());
            return report;
        }
        if let Some(Prefetch {
            generation,
            state: PrefetchState::Failed {
                reason, message, ..
            },
            ..
        }) = self.fleet.prefetch.get(&pod)
            && *generation == want.revision
        {
            // The running revision stays; the next one cannot start.
            report.state = FleetPodState::Failed;
            report.reason = Some(reason.clone());
            report.message = Some(message.clone());
            return report;
        }
        // The pod is being stopped (for the next revision, or for good):
        // its containers' exits are the agent's doing, not failures.
        if running_pod.is_some_and(|e| !matches!(e.then, AfterStop::Nothing)) {
            report.reason = Some("Replacing".into());
            return report;
        }
        let Some(status) = status.filter(|s| s.uid == fleet.uid) else {
            report.reason = Some(
                if self.fleet.specs.contains_key(&want.spec_digest) {
                    "ContainerCreating"
                } else {
                    "FetchingSpec"
                }
                .into(),
            );
            return report;
        };
        let failure = revision_failure(&status, want.revision);
        let ready = status
            .conditions
            .iter()
            .any(|c| c.kind == PodConditionType::Ready && c.status);
        report.state = match (&failure, status.phase) {
            (Some(_), _) => FleetPodState::Failed,
            (None, PodPhase::Succeeded) => FleetPodState::Succeeded,
            (None, PodPhase::Running) if ready => FleetPodState::Ready,
            (None, PodPhase::Running) => FleetPodState::Running,
            _ => FleetPodState::Pending,
        };
        if let Some((reason, message)) = failure {
            report.reason = reason;
            report.message = message;
        }
        report
    }

    /// Sends the reports that changed (retained, through the outbox); an
    /// empty retained report for fleets this device left. `all`: the
    /// verdicts cover every fleet (fleets not among them were deleted).
    fn report_fleets(&mut self, verdicts: &BTreeMap<PodKey, Verdict>, all: bool) {
        let mut changes: Vec<(PodKey, Option<FleetReport>)> = Vec::new();
        for (key, verdict) in verdicts {
            let report = match (verdict, self.fleet.records.get(key)) {
                (Verdict::Targeted(t), Some(f)) => Some(self.fleet_report(f, t)),
                _ => None,
            };
            if self.fleet.reports.get(key) != report.as_ref() {
                changes.push((key.clone(), report));
            }
        }
        // Fleets deleted altogether.
        for key in self.fleet.reports.keys().filter(|_| all) {
            if !verdicts.contains_key(key) {
                changes.push((key.clone(), None));
            }
        }
        for (key, report) in changes {
            if report.is_none() && !self.fleet.reports.contains_key(&key) {
                continue;
            }
            let topic = self.topics.fleet_report(&self.node, &key);
            let body = match &report {
                Some(r) => match wire::Body::of(&wire::Message::FleetReport(r.clone())) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        warn!(fleet = %key, error = %e, "cannot encode fleet report");
                        continue;
                    }
                },
                None => None,
            };
            let queued = self.store.append_outbox(|seq| OutboxEntry {
                topic,
                payload: body.map(|b| b.envelope(seq)).unwrap_or_default(),
                retain: true,
                created_ms: now_ms(),
            });
            if let Err(e) = queued {
                warn!(fleet = %key, error = %e, "cannot queue fleet report; sent on the next change");
                continue;
            }
            let stored = report
                .as_ref()
                .map(|r| postcard::to_stdvec(r).unwrap_or_default());
            let _ = self.store.put_fleet(
                &format!("report/{}/{}", key.namespace, key.name),
                stored.as_deref(),
            );
            match report {
                Some(r) => {
                    debug!(fleet = %key, state = r.state.as_str(), desired = r.desired_revision, running = r.running_revision, "fleet report");
                    self.fleet.reports.insert(key, r);
                }
                None => {
                    self.fleet.reports.remove(&key);
                }
            }
            self.send(SessionCommand::OutboxChanged);
        }
    }

    /// A fleet pod's status changed: its fleets' reports may have.
    pub(super) fn fleet_pod_changed(&mut self, pod: &PodKey) {
        if !self.fleet.records.values().any(|f| f.pod_key() == *pod) {
            return;
        }
        let plan = self.fleet_plan();
        let only: BTreeMap<PodKey, Verdict> = plan
            .fleets
            .into_iter()
            .filter(|(k, _)| {
                self.fleet
                    .records
                    .get(k)
                    .is_some_and(|f| f.pod_key() == *pod)
            })
            .collect();
        self.report_fleets(&only, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ContainerPort, ContainerState, ContainerStatus, RestartPolicy, RuntimeKind, samples,
    };

    #[test]
    fn two_instances_run_at_once_unless_they_contend_for_host_ports() {
        let mut spec = samples::spec("web", "u", 1, RestartPolicy::Always);
        spec.runtime = RuntimeKind::Container;
        spec.containers = vec![samples::container("app")];
        assert!(can_surge(&spec));
        let port = |host_port| ContainerPort {
            name: None,
            container_port: 8080,
            host_port,
            protocol: "TCP".into(),
        };
        spec.containers[0].ports = vec![port(None)];
        assert!(can_surge(&spec), "a pod's own port is its own");
        spec.containers[0].ports = vec![port(Some(80))];
        assert!(!can_surge(&spec), "a host port");
        spec.containers[0].ports.clear();
        spec.host_network = true;
        assert!(!can_surge(&spec), "the host's network");
        spec.host_network = false;
        spec.runtime = RuntimeKind::Wasm;
        assert!(can_surge(&spec));
        spec.containers[0].ports = vec![port(None)];
        assert!(!can_surge(&spec), "a module listens on the host's ports");
    }

    #[test]
    fn a_next_revision_that_crashed_once_has_failed_though_it_runs_again() {
        let mut status = samples::spec("web", "u", 2, RestartPolicy::Always);
        status.containers = vec![samples::container("app")];
        let mut status = crate::agent::pod_machine::PodMachine::new(
            status,
            crate::agent::pod_machine::BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(2),
                reset_after: Duration::from_secs(3),
            },
            None,
        )
        .status()
        .clone();
        status.phase = PodPhase::Running;
        status.container_statuses = vec![ContainerStatus {
            name: "app".into(),
            image: String::new(),
            image_id: String::new(),
            container_id: "c2".into(),
            ready: true,
            started: true,
            restart_count: 1,
            state: ContainerState::Running { started_at_ms: 5 },
            last_state: None,
        }];
        assert_eq!(revision_failure(&status, 2), None);
        assert_eq!(successor_failure(&status, 2), None, "it never crashed");
        status.container_statuses[0].last_state = Some(ContainerState::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            message: None,
            started_at_ms: 1,
            finished_at_ms: 2,
        });
        assert_eq!(
            revision_failure(&status, 2),
            None,
            "a canary may crash once"
        );
        assert_eq!(
            successor_failure(&status, 2),
            Some((
                Some("Error".into()),
                Some("container app exited with code 3".into())
            ))
        );
        status.container_statuses[0].state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some("back-off 10s".into()),
        };
        assert_eq!(
            revision_failure(&status, 2),
            Some((Some("CrashLoopBackOff".into()), Some("back-off 10s".into())))
        );
    }
}
