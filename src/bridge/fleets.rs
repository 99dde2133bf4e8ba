//! Fleets in the bridge: `FleetDeployment` resources become retained fleet
//! records and spec payloads (docs/wire.md, "Fleets"), the devices' reports
//! are folded into one [`Tally`] per fleet deployment, the rollout engine
//! (`fleet::rollout`) is stepped, and the resource's status is written. No
//! I/O and no clock (`now_ms` is an argument), like [`super::state`]; the
//! caller carries out the returned [`Action`]s in order.
//!
//! Invariants kept here:
//! - nothing is published or written before both the broker's retained
//!   fleet records and the cluster's FleetDeployments have been listed, so
//!   a restarted bridge continues the rollout it finds instead of starting
//!   a new one;
//! - a spec payload goes out before the record that names its digest; a
//!   new revision starts only when the converted template's digest changes
//!   (a change of selector, priority or policy updates the record in
//!   place; a rollback does not make the refused spec come back);
//! - a template that does not convert publishes nothing: the resource gets
//!   `Accepted=False` with the field path and one Warning Event per refusal;
//! - per device the bridge keeps one tally entry per fleet it reports on and
//!   its presence (the set of devices whose last will arrived), nothing
//!   else: no node status and no pod status for devices that are not Nodes;
//! - a fleet's status is written at most once per [`STATUS_INTERVAL_MS`],
//!   and only for a change that matters (`status_worth_writing`): a new
//!   phase, revision, batch, message, condition or failing device, counts
//!   (also per revision) that moved by [`COUNT_STEP_PER_MILLE`] of the
//!   fleet, or any difference
//!   left standing for [`TRICKLE_MS`]; so a rollout's API writes depend on
//!   its steps, not on its devices (measured: `benches/fleet_scale.rs`);
//! - with shards (`--shards`), only the replica holding shard 0 drives
//!   fleets; every replica keeps the tallies, so a takeover continues;
//! - the seed path ([`seed`]): a pod bound to a fleet node makes a fleet
//!   deployment named after its controller, from the newest of its live
//!   pods; with fleet nodes nothing goes out before the pods are listed;
//!   it is tombstoned [`SEED_LINGER_MS`] after its last pod went, so a
//!   Deployment's update is a new revision, not a new fleet deployment;
//!   its status goes to its pods (phase, `kedge.io/FleetReady`).

pub mod crd;
pub mod nodes;
pub mod seed;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::render;
use super::state::{Action, BridgeEvent, KubeEvent, ObjRef, PodStatusOwner, Recording};
use crate::fleet::manage;
use crate::fleet::rollout::{self, Step};
use crate::fleet::tally::{RevisionCounts, Tally};
use crate::model::convert::{ConvertError, ConvertWarning, Resolver, convert_pod};
use crate::model::selector::Selector;
use crate::model::validate::Validate;
use crate::model::{
    Cohort, EventType, FleetDeployment, FleetReport, PodKey, Rollout, RolloutPhase, RolloutState,
};
use crate::wire::{self, Message, Topics};
use crd::{
    FailingDevice, FleetCondition, FleetDeploymentResource, FleetDeploymentStatus, RevisionStatus,
};

/// A seed fleet deployment outlives its last pod this long: a Deployment's
/// update (`maxUnavailable: 100%`) deletes the old pod before it creates the
/// new one, which must be a new revision of the same fleet deployment, not a
/// new one. Scaled to 0 or deleted, it is removed then.
pub const SEED_LINGER_MS: u64 = 10_000;
/// A fleet's status is written at most this often.
pub const STATUS_INTERVAL_MS: u64 = 1_000;
/// Counts are written again once one of them moved by this share (per
/// mille) of the targeted devices: about 50 writes while a fleet goes from
/// none to all, whatever its size.
pub const COUNT_STEP_PER_MILLE: u64 = 20;
/// A smaller difference is written once it has stood this long, so the
/// status ends exact.
pub const TRICKLE_MS: u64 = 5_000;

/// Whether `new` is worth an API write after `sent` (written
/// `since_ms` ago).
pub fn status_worth_writing(
    sent: Option<&FleetDeploymentStatus>,
    new: &FleetDeploymentStatus,
    since_ms: u64,
) -> bool {
    let Some(sent) = sent else {
        return true;
    };
    if sent == new {
        return false;
    }
    let structural = sent.observed_generation != new.observed_generation
        || sent.revision != new.revision
        || sent.phase != new.phase
        || sent.message != new.message
        || sent.batch != new.batch
        || sent.failing_devices != new.failing_devices
        || sent
            .conditions
            .iter()
            .map(|c| (&c.type_, &c.status, &c.reason))
            .ne(new
                .conditions
                .iter()
                .map(|c| (&c.type_, &c.status, &c.reason)));
    if structural {
        return true;
    }
    let step = (u64::from(new.targeted.max(0) as u32) * COUNT_STEP_PER_MILLE / 1000).max(1);
    let moved = [
        (sent.targeted, new.targeted),
        (sent.up_to_date, new.up_to_date),
        (sent.running, new.running),
        (sent.ready, new.ready),
        (sent.failed, new.failed),
        (sent.offline, new.offline),
    ]
    .iter()
    .any(|(a, b)| u64::from(a.abs_diff(*b)) >= step)
        || revisions_moved(&sent.revisions, &new.revisions) >= step;
    moved || since_ms >= TRICKLE_MS
}

/// The largest move of a count per revision between two lists (a line
/// that comes or goes moves from or to zero): the revisions list is
/// paced like the counts, since devices move between revisions one by one.
fn revisions_moved(sent: &[RevisionStatus], new: &[RevisionStatus]) -> u64 {
    let key = |r: &RevisionStatus| (r.revision, r.older_than);
    let counts = |r: &RevisionStatus| [r.devices, r.running, r.ready, r.failed, r.offline];
    let find =
        |list: &[RevisionStatus], k| list.iter().find(|r| key(r) == k).map_or([0; 5], &counts);
    sent.iter()
        .chain(new)
        .map(|r| {
            let (a, b) = (find(sent, key(r)), find(new, key(r)));
            a.iter()
                .zip(b)
                .map(|(x, y)| u64::from(x.abs_diff(y)))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// The tally's counts per revision as the status lists them.
fn revisions_status(t: &Tally) -> Vec<RevisionStatus> {
    let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let line = |revision, older_than, c: &RevisionCounts| RevisionStatus {
        revision,
        older_than,
        devices: n(c.devices),
        running: n(c.running),
        ready: n(c.ready),
        failed: n(c.failed),
        offline: n(c.offline),
    };
    let b = t.by_revision();
    let as_i64 = |r: u64| i64::try_from(r).unwrap_or(i64::MAX);
    b.revisions()
        .map(|(r, c)| line(Some(as_i64(r)), None, c))
        .chain(
            b.older()
                .map(|(below, c)| line(None, Some(as_i64(below)), c)),
        )
        .collect()
}
/// Failing devices named in the status.
pub const FAILING_DEVICES_SHOWN: usize = 5;
/// The resource's API version, for status bodies and Events.
pub const API_VERSION: &str = "kedge.io/v1alpha1";
pub const KIND: &str = "FleetDeployment";

/// What the bridge learns about fleets (a [`BridgeEvent::Fleet`]).
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// A device's report on a fleet deployment (`{node}/fleet/{ns}/{name}`);
    /// `None`: the device left it.
    Report {
        node: String,
        fleet: PodKey,
        report: Option<FleetReport>,
    },
    /// A retained fleet record (`_fleet/{ns}/{name}`); `None`: deleted.
    Record {
        fleet: PodKey,
        record: Option<FleetDeployment>,
    },
    /// A FleetDeployment was added or changed in the cluster.
    Applied(Arc<FleetDeploymentResource>),
    /// A FleetDeployment is gone.
    Deleted(Arc<FleetDeploymentResource>),
    /// A (re-)list of FleetDeployments is complete: the uids it listed.
    Synced { present_uids: HashSet<String> },
}

/// Why a resource publishes nothing: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    reason: &'static str,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Since {
    status: bool,
    since_ms: u64,
}

struct Fleet {
    cr: Option<Arc<FleetDeploymentResource>>,
    /// The record retained on the broker (read at start, then ours).
    record: Option<FleetDeployment>,
    /// A record from this bridge went out on this connection: the broker's
    /// echoes of our own publications are not read back (an echo of an
    /// older record could overtake a newer one).
    owned: bool,
    tally: Tally,
    /// The digest of the resource's spec that was last started; a new
    /// revision starts only when the converted spec's digest differs.
    applied_digest: Option<String>,
    refusal: Option<Refusal>,
    /// The resource (uid, and seed pod) the template's warnings were last
    /// sent as Events for: once each, not on every evaluation.
    warned: Option<(String, String)>,
    refs: BTreeSet<ObjRef>,
    /// Spec payloads this bridge published that a record still names, to
    /// publish them again after a reconnection.
    payloads: BTreeMap<String, Vec<u8>>,
    /// Reports, presence or the record changed since the last status.
    dirty: bool,
    last_status_ms: u64,
    status_sent: Option<FleetDeploymentStatus>,
    accepted: Option<Since>,
    progressing: Option<Since>,
    /// The resource was deleted while the bridge was not synced.
    deleted: bool,
    /// Devices in the tally at the last tick: a rollout steps once they
    /// stop joining (see `on_tick`).
    last_len: usize,
    /// The seed path: the live pods on a fleet node that make this fleet
    /// deployment (its `cr` is made from the newest), and the status last
    /// written to each (by uid).
    seeds: BTreeMap<PodKey, Arc<Pod>>,
    seed_status_sent: HashMap<String, seed::SeedStatus>,
    /// Made from seed pods, not a FleetDeployment.
    seed: bool,
    /// When its last seed pod went (it goes [`SEED_LINGER_MS`] later).
    orphaned_ms: Option<u64>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            cr: None,
            record: None,
            owned: false,
            tally: Tally::new(0),
            applied_digest: None,
            refusal: None,
            warned: None,
            refs: BTreeSet::new(),
            payloads: BTreeMap::new(),
            dirty: true,
            last_status_ms: 0,
            status_sent: None,
            accepted: None,
            progressing: None,
            deleted: false,
            last_len: 0,
            seeds: BTreeMap::new(),
            seed_status_sent: HashMap::new(),
            seed: false,
            orphaned_ms: None,
        }
    }

    fn uid(&self) -> Option<&str> {
        self.cr.as_ref().and_then(|c| c.metadata.uid.as_deref())
    }
}

/// Gauges of one fleet deployment for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetGauges {
    pub fleet: PodKey,
    pub revision: u64,
    pub targeted: u32,
    pub up_to_date: u32,
    pub running: u32,
    pub ready: u32,
    pub failed: u32,
    pub offline: u32,
    /// The devices per revision, newest first: `("3", counts)`, and
    /// `("older", counts)` for the revisions folded together (at most
    /// `MAX_REVISIONS_KEPT` + 1 lines, so the series stay bounded).
    pub revisions: Vec<(String, RevisionCounts)>,
}

/// The bridge's fleet state.
pub struct Fleets {
    topics: Topics,
    fleets: HashMap<PodKey, Fleet>,
    /// Devices whose last will (an offline node status) is the latest word.
    offline: HashSet<Box<str>>,
    mqtt_synced: bool,
    crs_synced: bool,
    /// Several replicas (`--shards`): this one drives fleets only while it
    /// holds shard 0.
    sharded: bool,
    active: bool,
    /// `--fleet-node`s: pods bound to their Nodes are seeds.
    fleet_nodes: Vec<nodes::FleetNode>,
    pods_synced: bool,
    /// Seed pods refused (by uid), with the refusal told once.
    seed_refused: HashMap<String, seed::SeedRefusal>,
    /// Seed pods whose deletion was asked (by uid).
    seed_deleting: HashSet<String>,
}

fn pod_name(cr: &FleetDeploymentResource) -> String {
    cr.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| cr.metadata.name.clone())
        .unwrap_or_default()
}

fn key_of(cr: &FleetDeploymentResource) -> Option<PodKey> {
    Some(PodKey::new(
        cr.metadata.namespace.as_deref().unwrap_or("default"),
        cr.metadata.name.as_deref()?,
    ))
}

/// What a resource asks for, converted: the record's fields and the spec payload.
struct Wanted {
    record: FleetDeployment,
    payload: Vec<u8>,
    /// What the template has that is accepted but not honoured (the
    /// injected service account token volume of a seed pod, left out).
    warnings: Vec<ConvertWarning>,
}

/// The cluster's ConfigMaps, and no Secrets: a fleet's one spec goes to
/// every matching device through the broker, and cannot be sealed to each
/// device's key (`seal`), so a Secret in it would travel in the clear.
struct NoSecrets<'a>(&'a dyn Resolver);

/// Why a fleet's template cannot reference a Secret (the refusal's text).
const FLEET_SECRETS: &str = "fleet deployments cannot carry Secrets: one spec goes to every matching device and cannot be sealed to each device's key (send pods that need Secrets to device nodes, where each spec is sealed to its device)";

impl Resolver for NoSecrets<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.0.config_map(namespace, name)
    }
    fn secret(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn pending(&self, secret: bool, namespace: &str, name: &str) -> bool {
        self.0.pending(secret, namespace, name)
    }
    fn secrets_refused(&self) -> Option<&'static str> {
        Some(FLEET_SECRETS)
    }
}

/// Converts a resource; every refusal names its field.
fn convert(
    key: &PodKey,
    cr: &FleetDeploymentResource,
    resolver: &dyn Resolver,
) -> Result<Wanted, Refusal> {
    let invalid = |message: String| Refusal {
        reason: "InvalidSpec",
        message,
    };
    let uid = cr.metadata.uid.clone().unwrap_or_default();
    Selector::parse("spec.selector", &cr.spec.selector).map_err(|e| invalid(e.to_string()))?;
    let policy = cr
        .spec
        .rollout
        .policy()
        .map_err(|e| invalid(e.to_string()))?;
    let pod_name = pod_name(cr);
    let mut meta = cr.spec.template.metadata.clone().unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.namespace = Some(key.namespace.clone());
    meta.uid = Some(uid.clone());
    meta.generation = None;
    let pod = Pod {
        metadata: meta,
        spec: cr.spec.template.spec.clone(),
        status: None,
    };
    let converted = convert_pod(&pod, &NoSecrets(resolver)).map_err(|e| {
        let message = match e {
            ConvertError::Field { path, message } => {
                format!("spec.template.{path}: {message}")
            }
            other => other.to_string(),
        };
        Refusal {
            reason: "UnsupportedField",
            message,
        }
    })?;
    let mut spec = converted.spec;
    spec.namespace = key.namespace.clone();
    spec.name = pod_name.clone();
    spec.uid = uid.clone();
    spec.generation = 0;
    let (digest, payload) =
        crate::fleet::spec_payload(&spec).map_err(|e| invalid(format!("spec.template: {e}")))?;
    let record = FleetDeployment {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid,
        selector: cr.spec.selector.clone(),
        priority: cr.spec.priority,
        pod_name,
        revision: 1,
        spec_digest: digest,
        cohorts: Vec::new(),
        stable: None,
        rollout: Rollout {
            policy,
            state: RolloutState::default(),
        },
    };
    Ok(Wanted {
        record,
        payload,
        warnings: converted.warnings,
    })
}

fn pod_key_of(pod: &Pod) -> Option<PodKey> {
    Some(PodKey::new(
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref()?,
    ))
}

fn pod_finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// The digests a record names (its target and its stable revision).
fn digests(r: Option<&FleetDeployment>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(r) = r {
        out.insert(r.spec_digest.clone());
        if let Some(s) = &r.stable {
            out.insert(s.spec_digest.clone());
        }
    }
    out
}

impl Fleets {
    pub fn new(topics: Topics, sharded: bool) -> Fleets {
        Fleets {
            topics,
            fleets: HashMap::new(),
            offline: HashSet::new(),
            mqtt_synced: false,
            crs_synced: false,
            sharded,
            active: !sharded,
            fleet_nodes: Vec::new(),
            // Without fleet nodes no pod is a seed: nothing to wait for.
            pods_synced: true,
            seed_refused: HashMap::new(),
            seed_deleting: HashSet::new(),
        }
    }

    /// The seed path: pods bound to these fleet nodes become fleet
    /// deployments; nothing is published before the pods are listed.
    pub fn with_fleet_nodes(mut self, fleet_nodes: Vec<nodes::FleetNode>) -> Fleets {
        self.pods_synced = fleet_nodes.is_empty();
        self.fleet_nodes = fleet_nodes;
        self
    }

    fn synced(&self) -> bool {
        self.mqtt_synced && self.crs_synced && self.pods_synced && self.active
    }

    /// The record retained for a fleet deployment, as this bridge knows it.
    pub fn record(&self, fleet: &PodKey) -> Option<&FleetDeployment> {
        self.fleets.get(fleet)?.record.as_ref()
    }

    /// The tally of a fleet deployment.
    pub fn tally(&self, fleet: &PodKey) -> Option<&Tally> {
        self.fleets.get(fleet).map(|f| &f.tally)
    }

    /// Handles one event (the bridge's events are shared with
    /// [`super::state::Bridge`]; this one reads node presence, fleet events,
    /// the broker's barrier, ConfigMap/Secret changes, shards and the tick).
    pub fn handle(
        &mut self,
        ev: &BridgeEvent,
        now_ms: u64,
        resolver: &dyn Resolver,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            BridgeEvent::Node { node, status } => self.on_presence(node, status.online),
            BridgeEvent::Fleet(fe) => self.on_fleet_event(fe, now_ms, resolver, &mut out),
            BridgeEvent::MqttSynced => {
                let reconnected = self.mqtt_synced;
                self.mqtt_synced = true;
                if reconnected {
                    self.republish(&mut out);
                }
                self.resync(now_ms, resolver, &mut out);
            }
            BridgeEvent::ObjectChanged(r) => {
                let keys: Vec<PodKey> = self
                    .fleets
                    .iter()
                    .filter(|(_, f)| f.refs.contains(r))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.evaluate(&k, now_ms, resolver, &mut out);
                }
            }
            BridgeEvent::ShardsChanged { held } => {
                let was = self.active;
                self.active = !self.sharded || held.contains(&0);
                if self.active && !was {
                    for f in self.fleets.values_mut() {
                        // Another replica drove these: read its records.
                        f.owned = false;
                        f.applied_digest = None;
                    }
                    self.resync(now_ms, resolver, &mut out);
                }
            }
            BridgeEvent::Tick => self.on_tick(now_ms, &mut out),
            BridgeEvent::PodApplied(pod) => {
                self.on_seed_pod(pod, false, now_ms, resolver, &mut out)
            }
            BridgeEvent::PodDeleted(pod) => self.on_seed_pod(pod, true, now_ms, resolver, &mut out),
            BridgeEvent::PodsSynced { present_uids } => {
                if let Some(present) = present_uids {
                    let gone: Vec<Arc<Pod>> = self
                        .fleets
                        .values()
                        .flat_map(|f| f.seeds.values())
                        .filter(|p| {
                            !present.contains(p.metadata.uid.as_deref().unwrap_or_default())
                        })
                        .cloned()
                        .collect();
                    for p in gone {
                        self.on_seed_pod(&p, true, now_ms, resolver, &mut out);
                    }
                }
                let was = self.pods_synced;
                self.pods_synced = true;
                if !was {
                    self.resync(now_ms, resolver, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// A pod on a fleet node was added, changed or deleted: the fleet
    /// deployment it makes is made again from its live pods (the newest is
    /// the template, so a Deployment's new pod is a new revision of the
    /// same fleet deployment, whichever of old and new is seen first); a
    /// pod being deleted is let go at once (grace 0: the devices run the
    /// fleet, not the pod); the fleet deployment goes with its last pod.
    fn on_seed_pod(
        &mut self,
        pod: &Arc<Pod>,
        deleted: bool,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        if seed::fleet_node_of(pod, &self.fleet_nodes).is_none() {
            return;
        }
        let (Some(key), Some(pod_key)) = (seed::fleet_key(pod), pod_key_of(pod)) else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let gone = deleted || pod.metadata.deletion_timestamp.is_some() || pod_finished(pod);
        if gone {
            self.seed_refused.remove(&uid);
            if !deleted && self.seed_deleting.insert(uid.clone()) {
                out.push(Action::DeletePod {
                    pod: pod_key.clone(),
                    uid: uid.clone(),
                });
            }
            if deleted {
                self.seed_deleting.remove(&uid);
            }
        }
        let f = self.fleets.entry(key.clone()).or_insert_with(Fleet::new);
        if gone {
            if f.seeds
                .get(&pod_key)
                .is_some_and(|p| p.metadata.uid.as_deref() == Some(&uid))
            {
                f.seeds.remove(&pod_key);
            }
            f.seed_status_sent.remove(&uid);
        } else {
            f.seeds.insert(pod_key, pod.clone());
        }
        self.seed_changed(&key, now_ms, resolver, out);
    }

    /// Makes a seed fleet's resource again from its live pods.
    fn seed_changed(
        &mut self,
        key: &PodKey,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        let Some(f) = self.fleets.get_mut(key) else {
            return;
        };
        if f.cr.is_some() && !f.seed {
            // A FleetDeployment of the same name is not made from pods.
            return;
        }
        let Some(newest) = seed::newest(f.seeds.values().map(|p| p.as_ref())).cloned() else {
            if f.seed {
                f.orphaned_ms.get_or_insert(now_ms);
            } else if f.cr.is_none() && f.record.is_none() && f.tally.is_empty() {
                self.fleets.remove(key);
            }
            return;
        };
        // The fleet's uid: kept while it has pods; at start, the retained
        // record's (the fleet continues); else its first pod's.
        let uid = f
            .uid()
            .map(str::to_string)
            .or_else(|| f.record.as_ref().map(|r| r.uid.clone()))
            .or_else(|| newest.metadata.uid.clone())
            .unwrap_or_default();
        let pod_uid = newest.metadata.uid.clone().unwrap_or_default();
        let node_selector =
            seed::fleet_node_of(&newest, &self.fleet_nodes).and_then(|n| n.selector.as_ref());
        match seed::resource(key, &uid, &newest, node_selector) {
            Ok(cr) => {
                f.orphaned_ms = None;
                self.seed_refused.remove(&pod_uid);
                f.cr = Some(Arc::new(cr));
                f.seed = true;
                f.deleted = false;
                f.dirty = true;
                self.evaluate(key, now_ms, resolver, out);
            }
            Err(refusal) => {
                if self.seed_refused.get(&pod_uid) != Some(&refusal) {
                    let pod_key = pod_key_of(&newest).unwrap_or_else(|| key.clone());
                    out.push(Action::Event(KubeEvent {
                        namespace: pod_key.namespace.clone(),
                        involved_kind: "Pod",
                        involved_name: pod_key.name.clone(),
                        involved_uid: pod_uid.clone(),
                        kind: EventType::Warning,
                        reason: refusal.reason.to_string(),
                        message: refusal.message.clone(),
                        time_ms: now_ms,
                        host: String::new(),
                        field_path: None,
                    }));
                    let s = seed::seed_status(
                        &Default::default(),
                        None,
                        &[],
                        Some((refusal.reason, &refusal.message)),
                    );
                    out.push(Action::PodStatus {
                        pod: pod_key,
                        owner: PodStatusOwner::Bridge,
                        body: seed::pod_status_body(
                            &pod_key_of(&newest).unwrap_or_else(|| key.clone()),
                            &pod_uid,
                            &s,
                            &render::time(now_ms),
                        ),
                    });
                    f.seed_status_sent.insert(pod_uid.clone(), s);
                    self.seed_refused.insert(pod_uid, refusal);
                }
            }
        }
    }

    /// Writes the seed pods' status (at most once per
    /// [`STATUS_INTERVAL_MS`], only on change; the caller checked both).
    fn seed_statuses(
        f: &mut Fleet,
        refused: &HashMap<String, seed::SeedRefusal>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let failing: Vec<(String, String)> = f
            .tally
            .failures(FAILING_DEVICES_SHOWN)
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect();
        let phase = f.record.as_ref().map(|r| r.rollout.state.phase.as_str());
        let refusal = f.refusal.as_ref().map(|r| (r.reason, r.message.as_str()));
        let status = seed::seed_status(&f.tally.counts(), phase, &failing, refusal);
        for (pod_key, pod) in &f.seeds {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if refused.contains_key(&uid) || f.seed_status_sent.get(&uid) == Some(&status) {
                continue;
            }
            out.push(Action::PodStatus {
                pod: pod_key.clone(),
                owner: PodStatusOwner::Bridge,
                body: seed::pod_status_body(pod_key, &uid, &status, &render::time(now_ms)),
            });
            f.seed_status_sent.insert(uid, status.clone());
        }
    }

    /// Whether reports and records of a fleet are kept: before the cluster
    /// is listed every fleet's (its resource may be in the list), after it
    /// only those of a resource (the others are not this bridge's).
    fn tracks(&self, fleet: &PodKey) -> bool {
        !(self.crs_synced && self.pods_synced)
            || self.fleets.get(fleet).is_some_and(|f| f.cr.is_some())
    }

    fn on_presence(&mut self, node: &str, online: bool) {
        let changed = if online {
            self.offline.remove(node)
        } else {
            self.offline.insert(node.into())
        };
        if !changed {
            return;
        }
        for f in self.fleets.values_mut() {
            let before = f.tally.counts();
            f.tally.set_online(node, online);
            if f.tally.counts() != before {
                f.dirty = true;
            }
        }
    }

    fn on_fleet_event(
        &mut self,
        ev: &FleetEvent,
        now_ms: u64,
        resolver: &dyn Resolver,
        out: &mut Vec<Action>,
    ) {
        match ev {
            FleetEvent::Report {
                node,
                fleet,
                report,
            } => {
                if !self.tracks(fleet) {
                    return;
                }
                let f = self.fleets.entry(fleet.clone()).or_insert_with(Fleet::new);
                // A report on another fleet of the same name (deleted and
                // made again) counts as none.
                let report = report
                    .as_ref()
                    .filter(|r| f.uid().is_none_or(|u| u == r.fleet_uid));
                f.tally.apply(node, report, now_ms);
                if report.is_some() && self.offline.contains(node.as_str()) {
                    f.tally.set_online(node, false);
                }
                f.dirty = true;
            }
            FleetEvent::Record { fleet, record } => {
                if !self.tracks(fleet) {
                    return;
                }
                let f = self.fleets.entry(fleet.clone()).or_insert_with(Fleet::new);
                if f.owned {
                    return;
                }
                f.record = record.clone();
                if let Some(r) = &f.record {
                    f.tally.retarget(r.revision, now_ms);
                }
                f.dirty = true;
            }
            FleetEvent::Applied(cr) => {
                let Some(key) = key_of(cr) else { return };
                let f = self.fleets.entry(key.clone()).or_insert_with(Fleet::new);
                if f.uid()
                    .is_some_and(|u| Some(u) != cr.metadata.uid.as_deref())
                {
                    // Made again under the same name: a new fleet.
                    f.applied_digest = None;
                    f.refusal = None;
                    f.status_sent = None;
                    f.accepted = None;
                    f.progressing = None;
                }
                f.cr = Some(cr.clone());
                f.seed = false;
                f.deleted = false;
                f.dirty = true;
                self.evaluate(&key, now_ms, resolver, out);
            }
            FleetEvent::Deleted(cr) => {
                let Some(key) = key_of(cr) else { return };
                let Some(f) = self.fleets.get_mut(&key) else {
                    return;
                };
                if f.seed || f.uid() != cr.metadata.uid.as_deref() {
                    return;
                }
                f.deleted = true;
                self.delete(&key, out);
            }
            FleetEvent::Synced { present_uids } => {
                for f in self.fleets.values_mut() {
                    if !f.seed && f.uid().is_some_and(|u| !present_uids.contains(u)) {
                        f.deleted = true;
                    }
                }
                self.crs_synced = true;
                self.resync(now_ms, resolver, out);
            }
        }
    }

    /// A deleted resource: its record and the specs it named are removed
    /// from the broker (once synced), its state forgotten.
    fn delete(&mut self, key: &PodKey, out: &mut Vec<Action>) {
        if !self.synced() {
            return;
        }
        let Some(f) = self.fleets.get(key) else {
            return;
        };
        if !f.deleted {
            return;
        }
        let uid = f.uid().map(str::to_string);
        if let Some(r) = &f.record
            && Some(&r.uid) == uid.as_ref()
        {
            out.push(Action::Publish {
                topic: self.topics.fleet(key),
                payload: Vec::new(),
            });
            for d in digests(Some(r)) {
                out.push(Action::Publish {
                    topic: self.topics.fleet_spec(&d),
                    payload: Vec::new(),
                });
            }
        }
        self.fleets.remove(key);
    }

    /// Once both the broker and the cluster are listed (again): deleted
    /// resources are removed, every resource is evaluated, and tallies of
    /// fleets without a resource are dropped (not this bridge's).
    fn resync(&mut self, now_ms: u64, resolver: &dyn Resolver, out: &mut Vec<Action>) {
        if !self.synced() {
            return;
        }
        let mut keys: Vec<PodKey> = self.fleets.keys().cloned().collect();
        keys.sort();
        for k in &keys {
            if self.fleets.get(k).is_some_and(|f| f.deleted) {
                self.delete(k, out);
            }
        }
        self.fleets.retain(|_, f| f.cr.is_some());
        let mut keys: Vec<PodKey> = self.fleets.keys().cloned().collect();
        keys.sort();
        for k in keys {
            self.evaluate(&k, now_ms, resolver, out);
        }
    }

    /// After a reconnection: the payloads and records this bridge owns go
    /// out again (the broker may have lost them; retained, so idempotent).
    fn republish(&mut self, out: &mut Vec<Action>) {
        if !self.active {
            return;
        }
        let mut keys: Vec<PodKey> = self.fleets.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let Some(f) = self.fleets.get(&k) else {
                continue;
            };
            if !f.owned {
                continue;
            }
            for (d, payload) in &f.payloads {
                out.push(Action::Publish {
                    topic: self.topics.fleet_spec(d),
                    payload: payload.clone(),
                });
            }
            if let Some(r) = &f.record
                && let Ok(payload) = wire::encode(0, &Message::FleetDeployment(r.clone()))
            {
                out.push(Action::Publish {
                    topic: self.topics.fleet(&k),
                    payload,
                });
            }
        }
    }

    /// Decides what a resource needs now: a new revision, an updated
    /// record, a pause or resume, or a refusal.
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
        let topics = self.topics.clone();
        let Some(f) = self.fleets.get_mut(key) else {
            return;
        };
        let Some(cr) = f.cr.clone() else { return };
        if f.deleted {
            return;
        }
        let rec = Recording::new(resolver);
        let result = convert(key, &cr, &rec);
        let recorded = rec.finish();
        f.refs = recorded.refs;
        let missing = recorded.missing;
        if recorded.pending {
            // Decided when the ConfigMap or Secret has been read.
            return;
        }
        let wanted = match result {
            Ok(w) => w,
            Err(mut refusal) => {
                if missing && refusal.reason == "UnsupportedField" {
                    refusal.reason = "CreateContainerConfigError";
                }
                if seed::seed_pod(&cr).is_some()
                    && let Some(path) = refusal.message.strip_prefix("spec.template.")
                {
                    // A seed pod's own field path.
                    refusal.message = path.to_string();
                }
                refuse(key, &cr, f, refusal, now_ms, out);
                return;
            }
        };
        let Wanted {
            record: wanted,
            payload,
            warnings,
        } = wanted;
        let warn_key = (
            cr.metadata.uid.clone().unwrap_or_default(),
            seed::seed_pod(&cr).unwrap_or_default().to_string(),
        );
        if !warnings.is_empty() && f.warned.as_ref() != Some(&warn_key) {
            f.warned = Some(warn_key);
            for w in &warnings {
                out.push(Action::Event(fleet_event(
                    key,
                    &cr,
                    EventType::Warning,
                    w.reason,
                    &w.message,
                    now_ms,
                )));
            }
        }
        let digest = wanted.spec_digest.clone();
        let prev = f.record.clone().filter(|r| r.uid == wanted.uid);
        if f.applied_digest.is_none()
            && let Some(p) = &prev
        {
            // First look after a start: a generation the status already
            // observed was started before; otherwise compare with the record.
            let observed = cr.status.as_ref().and_then(|s| s.observed_generation);
            f.applied_digest = Some(
                if observed.is_some() && observed == cr.metadata.generation {
                    digest.clone()
                } else {
                    p.spec_digest.clone()
                },
            );
        }
        let new_revision = prev.is_none() || f.applied_digest.as_deref() != Some(digest.as_str());
        let mut next = match &prev {
            None => rollout::start(wanted, None, now_ms),
            Some(p) if new_revision => rollout::start(wanted, Some(p), now_ms),
            Some(p) => FleetDeployment {
                selector: wanted.selector,
                priority: wanted.priority,
                rollout: Rollout {
                    policy: wanted.rollout.policy,
                    state: p.rollout.state.clone(),
                },
                ..p.clone()
            },
        };
        let paused = cr.spec.paused;
        if new_revision && !paused && !manage::is_staged(&next.rollout.policy) {
            // No batches and no budget: every device at once (as `kedge
            // apply --selector` does).
            next.cohorts = vec![Cohort::everyone()];
        }
        // `paused` as `kedge rollout pause|resume`; a halted rollout is
        // resumed by pausing it, then unpausing it.
        match (paused, next.rollout.state.phase) {
            (true, RolloutPhase::Progressing) | (false, RolloutPhase::Paused) => {
                let changed = if paused {
                    manage::pause(&next)
                } else {
                    manage::resume(&next, now_ms)
                };
                if let Ok(changed) = changed {
                    next = changed;
                }
            }
            (true, RolloutPhase::Halted) => {
                next.rollout.state.phase = RolloutPhase::Paused;
                next.rollout.state.message = format!(
                    "paused after a halt at batch {}; unpause to resume",
                    u32::from(next.rollout.state.batch) + 1
                );
            }
            _ => {}
        }
        if let Err(e) = next.validate() {
            let refusal = Refusal {
                reason: "InvalidSpec",
                message: format!("{}: {}", e.field, e.detail),
            };
            refuse(key, &cr, f, refusal, now_ms, out);
            return;
        }
        if f.refusal.take().is_some() {
            f.dirty = true;
        }
        f.applied_digest = Some(digest.clone());
        if new_revision {
            f.payloads.insert(digest.clone(), payload.clone());
            out.push(Action::Publish {
                topic: topics.fleet_spec(&digest),
                payload,
            });
        }
        if prev.as_ref() != Some(&next) {
            publish_record(&topics, f, next, now_ms, out);
        }
        f.dirty = true;
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if !self.synced() {
            return;
        }
        let topics = self.topics.clone();
        let mut keys: Vec<PodKey> = self.fleets.keys().cloned().collect();
        keys.sort();
        for key in &keys {
            if let Some(f) = self.fleets.get_mut(key)
                && f.seed
                && f.seeds.is_empty()
                && f.orphaned_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= SEED_LINGER_MS)
            {
                f.deleted = true;
                self.delete(key, out);
            }
        }
        for key in keys {
            let Some(f) = self.fleets.get_mut(&key) else {
                continue;
            };
            let Some(cr) = f.cr.clone() else { continue };
            // Devices answer a new record with their first reports: step
            // once they stop joining (else a batch could be measured on
            // the few that answered first, or a new fleet on none), or
            // after the device timeout.
            let joined = f.tally.len() != f.last_len;
            f.last_len = f.tally.len();
            let settled = |r: &FleetDeployment| {
                let timeout = u64::from(r.rollout.policy.device_timeout_secs) * 1000;
                (!joined && !f.tally.is_empty())
                    || now_ms.saturating_sub(r.rollout.state.started_ms) > timeout
            };
            if f.refusal.is_none()
                && let Some(record) = &f.record
                && record.uid == f.uid().unwrap_or_default()
                && settled(record)
                && let Step::Publish(next) = rollout::step(record, &f.tally, now_ms)
            {
                // `step` clips its message; `publish_record` validates.
                let next = *next;
                if matches!(
                    next.rollout.state.phase,
                    RolloutPhase::RolledBack | RolloutPhase::Halted
                ) {
                    out.push(Action::Event(fleet_event(
                        &key,
                        &cr,
                        EventType::Warning,
                        next.rollout.state.phase.as_str(),
                        &next.rollout.state.message,
                        now_ms,
                    )));
                }
                publish_record(&topics, f, next, now_ms, out);
            }
            if f.seed {
                if f.dirty && now_ms.saturating_sub(f.last_status_ms) >= STATUS_INTERVAL_MS {
                    f.dirty = false;
                    f.last_status_ms = now_ms;
                    Self::seed_statuses(f, &self.seed_refused, now_ms, out);
                }
                continue;
            }
            if f.dirty && now_ms.saturating_sub(f.last_status_ms) >= STATUS_INTERVAL_MS {
                let status = status_of(&cr, f, now_ms);
                let since = now_ms.saturating_sub(f.last_status_ms);
                // Dirty until what stands is written.
                f.dirty = f.status_sent.as_ref() != Some(&status);
                if status_worth_writing(f.status_sent.as_ref(), &status, since) {
                    f.dirty = false;
                    f.last_status_ms = now_ms;
                    out.push(Action::FleetStatus {
                        fleet: key.clone(),
                        body: status_body(&key, &status),
                    });
                    f.status_sent = Some(status);
                }
            }
        }
    }

    /// Every ConfigMap and Secret the fleet deployments refer to.
    pub fn referenced(&self) -> impl Iterator<Item = &ObjRef> {
        self.fleets.values().flat_map(|f| f.refs.iter())
    }

    /// Gauges of every fleet deployment of the cluster.
    pub fn gauges(&self) -> Vec<FleetGauges> {
        let mut out: Vec<FleetGauges> = self
            .fleets
            .iter()
            .filter(|(_, f)| f.cr.is_some())
            .map(|(k, f)| {
                let c = f.tally.counts();
                FleetGauges {
                    fleet: k.clone(),
                    revision: f.record.as_ref().map_or(0, |r| r.revision),
                    targeted: c.targeted,
                    up_to_date: c.applied,
                    running: c.running,
                    ready: c.ready,
                    failed: c.failed,
                    offline: c.offline,
                    revisions: revision_gauges(&f.tally),
                }
            })
            .collect();
        out.sort_by(|a, b| a.fleet.cmp(&b.fleet));
        out
    }
}

/// The label value of the folded line of `kedge_fleet_revision_devices`.
pub const OLDER_REVISIONS: &str = "older";

fn revision_gauges(t: &Tally) -> Vec<(String, RevisionCounts)> {
    let b = t.by_revision();
    b.revisions()
        .map(|(r, c)| (r.to_string(), *c))
        .chain(b.older().map(|(_, c)| (OLDER_REVISIONS.to_string(), *c)))
        .collect()
}

/// The gauges in the Prometheus text format.
pub fn render_metrics(gauges: &[FleetGauges]) -> String {
    let mut s = String::new();
    if gauges.is_empty() {
        return s;
    }
    s.push_str("# HELP kedge_fleet_devices Devices of a fleet deployment by state.\n");
    s.push_str("# TYPE kedge_fleet_devices gauge\n");
    for g in gauges {
        for (state, v) in [
            ("targeted", g.targeted),
            ("up_to_date", g.up_to_date),
            ("running", g.running),
            ("ready", g.ready),
            ("failed", g.failed),
            ("offline", g.offline),
        ] {
            s.push_str(&format!(
                "kedge_fleet_devices{{namespace=\"{}\",fleet=\"{}\",state=\"{state}\"}} {v}\n",
                g.fleet.namespace, g.fleet.name
            ));
        }
    }
    s.push_str("# HELP kedge_fleet_revision The revision a fleet deployment rolls out.\n");
    s.push_str("# TYPE kedge_fleet_revision gauge\n");
    for g in gauges {
        s.push_str(&format!(
            "kedge_fleet_revision{{namespace=\"{}\",fleet=\"{}\"}} {}\n",
            g.fleet.namespace, g.fleet.name, g.revision
        ));
    }
    s.push_str(
        "# HELP kedge_fleet_revision_devices Devices of a fleet deployment per revision they run (failed: asked to run) by state; revision=\"older\" counts the revisions folded together.\n",
    );
    s.push_str("# TYPE kedge_fleet_revision_devices gauge\n");
    for g in gauges {
        for (revision, c) in &g.revisions {
            for (state, v) in [
                ("devices", c.devices),
                ("running", c.running),
                ("ready", c.ready),
                ("failed", c.failed),
                ("offline", c.offline),
            ] {
                s.push_str(&format!(
                    "kedge_fleet_revision_devices{{namespace=\"{}\",fleet=\"{}\",revision=\"{revision}\",state=\"{state}\"}} {v}\n",
                    g.fleet.namespace, g.fleet.name
                ));
            }
        }
    }
    s
}

/// Publishes a record (after the payload it names, already out), drops the
/// specs no record names any more, and points the tally at its revision.
fn publish_record(
    topics: &Topics,
    f: &mut Fleet,
    next: FleetDeployment,
    now_ms: u64,
    out: &mut Vec<Action>,
) {
    // Every device refuses a record that does not validate.
    if let Err(err) = next.validate() {
        tracing::error!(fleet = %next.key(), error = %err, "fleet record not published");
        return;
    }
    let payload = match wire::encode(0, &Message::FleetDeployment(next.clone())) {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(fleet = %next.key(), error = %err, "cannot encode the fleet record");
            return;
        }
    };
    out.push(Action::Publish {
        topic: topics.fleet(&next.key()),
        payload,
    });
    let before = digests(f.record.as_ref());
    let after = digests(Some(&next));
    for gone in before.difference(&after) {
        out.push(Action::Publish {
            topic: topics.fleet_spec(gone),
            payload: Vec::new(),
        });
    }
    f.payloads.retain(|d, _| after.contains(d));
    f.tally.retarget(next.revision, now_ms);
    f.record = Some(next);
    f.owned = true;
    f.dirty = true;
}

fn fleet_event(
    key: &PodKey,
    cr: &FleetDeploymentResource,
    kind: EventType,
    reason: &str,
    message: &str,
    now_ms: u64,
) -> KubeEvent {
    if let Some(pod) = seed::seed_pod(cr) {
        return KubeEvent {
            namespace: key.namespace.clone(),
            involved_kind: "Pod",
            involved_name: pod.to_string(),
            involved_uid: String::new(),
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
            time_ms: now_ms,
            host: String::new(),
            field_path: None,
        };
    }
    KubeEvent {
        namespace: key.namespace.clone(),
        involved_kind: KIND,
        involved_name: key.name.clone(),
        involved_uid: cr.metadata.uid.clone().unwrap_or_default(),
        kind,
        reason: reason.to_string(),
        message: message.to_string(),
        time_ms: now_ms,
        host: String::new(),
        field_path: None,
    }
}

/// A resource that publishes nothing: one Warning Event per distinct
/// refusal, `Accepted=False` in the status.
fn refuse(
    key: &PodKey,
    cr: &FleetDeploymentResource,
    f: &mut Fleet,
    refusal: Refusal,
    now_ms: u64,
    out: &mut Vec<Action>,
) {
    if f.refusal.as_ref() == Some(&refusal) {
        return;
    }
    out.push(Action::Event(fleet_event(
        key,
        cr,
        EventType::Warning,
        refusal.reason,
        &refusal.message,
        now_ms,
    )));
    f.refusal = Some(refusal);
    f.dirty = true;
}

fn condition(
    since: &mut Option<Since>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now_ms: u64,
) -> FleetCondition {
    let s = match since {
        Some(s) if s.status == status => *s,
        _ => {
            let s = Since {
                status,
                since_ms: now_ms,
            };
            *since = Some(s);
            s
        }
    };
    FleetCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: render::time(s.since_ms),
        observed_generation: generation,
    }
}

/// The status of a resource: its record's progress and its tally's counts.
fn status_of(cr: &FleetDeploymentResource, f: &mut Fleet, now_ms: u64) -> FleetDeploymentStatus {
    let generation = cr.metadata.generation;
    let c = f.tally.counts();
    let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let record = f
        .record
        .as_ref()
        .filter(|r| Some(r.uid.as_str()) == cr.metadata.uid.as_deref());
    let mut status = FleetDeploymentStatus {
        observed_generation: generation,
        revision: record.map(|r| r.revision as i64),
        phase: record.map(|r| r.rollout.state.phase.as_str().to_string()),
        message: record.map(|r| r.rollout.state.message.clone()),
        batch: record.map(|r| i32::from(r.rollout.state.batch) + 1),
        targeted: n(c.targeted),
        up_to_date: n(c.applied),
        running: n(c.running),
        ready: n(c.ready),
        failed: n(c.failed),
        offline: n(c.offline),
        revisions: revisions_status(&f.tally),
        failing_devices: f
            .tally
            .failures(FAILING_DEVICES_SHOWN)
            .map(|(name, reason)| FailingDevice {
                name: name.to_string(),
                reason: reason.to_string(),
            })
            .collect(),
        conditions: Vec::new(),
    };
    let accepted = match &f.refusal {
        Some(r) => condition(
            &mut f.accepted,
            "Accepted",
            false,
            r.reason,
            &r.message,
            generation,
            now_ms,
        ),
        None => condition(
            &mut f.accepted,
            "Accepted",
            true,
            "Accepted",
            "the template converts to a kedge pod spec",
            generation,
            now_ms,
        ),
    };
    status.conditions.push(accepted);
    if let Some(r) = record {
        let phase = r.rollout.state.phase;
        status.conditions.push(condition(
            &mut f.progressing,
            "Progressing",
            phase == RolloutPhase::Progressing,
            phase.as_str(),
            &r.rollout.state.message,
            generation,
            now_ms,
        ));
    }
    status
}

/// The server-side apply body of a status.
fn status_body(key: &PodKey, status: &FleetDeploymentStatus) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    })
}

#[cfg(test)]
mod tests;
