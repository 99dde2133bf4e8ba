//! Fleet messages: one pod definition for every device whose labels match
//! (docs/wire.md, "Fleets"). Plain data, no I/O; the rules are in
//! `fleet` (resolution on the device, rollout and tally in the cloud).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PodKey;

/// Buckets a device hashes into (`fleet::bucket`): a cohort of
/// `per_10k = 2500` is a quarter of the devices.
pub const BUCKETS: u16 = 10_000;

/// A fleet deployment as devices read it (kind 8), retained on
/// `{prefix}/_fleet/{namespace}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDeployment {
    pub namespace: String,
    pub name: String,
    /// Stable for the life of the fleet deployment; the uid of its pods.
    pub uid: String,
    /// Label selector (string form) over the devices' labels.
    pub selector: String,
    /// When two fleet deployments give a device a pod of the same
    /// namespace and name, the higher priority wins.
    pub priority: i32,
    /// The name of the pod this fleet runs on each device (namespace =
    /// the fleet's).
    pub pod_name: String,
    /// The revision being rolled out: increases with every change, a
    /// rollback included (a rollback is a new revision with an old spec).
    pub revision: u64,
    /// `sha256` (64 lowercase hex) of the spec payload retained on
    /// `{prefix}/_fleet-spec/{digest}`.
    pub spec_digest: String,
    /// Which devices run `revision` now: a device in any cohort does.
    /// Empty: none yet.
    pub cohorts: Vec<Cohort>,
    /// What devices outside the cohorts keep running: the last revision
    /// whose rollout completed. None: they run nothing from this fleet yet.
    pub stable: Option<Revision>,
    /// The rollout controller's policy and progress, for whichever
    /// controller (the bridge, `kedge rollout`) drives it next. Devices
    /// read only `batches[*].selector` (to report their groups).
    pub rollout: Rollout,
}

impl FleetDeployment {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
    /// The pod this fleet gives a device.
    pub fn pod_key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.pod_name)
    }
    pub fn target(&self) -> Revision {
        Revision {
            revision: self.revision,
            spec_digest: self.spec_digest.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    pub spec_digest: String,
}

/// Devices that match `selector` and whose bucket is below `per_10k`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cohort {
    pub selector: String,
    pub per_10k: u16,
}

impl Cohort {
    pub fn everyone() -> Cohort {
        Cohort {
            selector: String::new(),
            per_10k: BUCKETS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rollout {
    pub policy: RolloutPolicy,
    pub state: RolloutState,
}

/// How a new revision reaches the fleet (FlightCtl's batches and success
/// threshold, hawkBit's error threshold, a disruption budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// In order; cumulative (batch 2 adds its devices to batch 1's). No
    /// batches: every device at once.
    pub batches: Vec<Batch>,
    /// Percentage (1–100) of a batch's devices that must run the revision
    /// before the next batch starts; more failures than the rest stop the
    /// rollout.
    pub success_threshold_pct: u8,
    /// A device that has not run the revision this long after it was asked
    /// to counts as failed.
    pub device_timeout_secs: u32,
    /// A device counts as running the revision only once it has been up
    /// this long without a break (Kubernetes' `minReadySeconds`), so a
    /// container that starts and then crash-loops fails its batch instead
    /// of passing it.
    pub min_ready_secs: u32,
    /// Devices updating or failed at once; 0 = no limit.
    pub max_unavailable: Limit,
    /// When the failure threshold is crossed: roll back to the stable
    /// revision (true) or halt where it is (false).
    pub auto_rollback: bool,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            batches: Vec::new(),
            success_threshold_pct: 100,
            device_timeout_secs: 600,
            min_ready_secs: 10,
            max_unavailable: Limit::Count(0),
            auto_rollback: true,
        }
    }
}

/// One batch: `limit` of the devices that match `selector` (empty: of the
/// whole fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub selector: String,
    pub limit: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    Count(u32),
    Percent(u8),
}

impl Limit {
    /// Of `total` devices (a percentage rounds up, so 1 % of 10 is 1).
    pub fn of(self, total: u32) -> u32 {
        match self {
            Limit::Count(n) => n.min(total),
            Limit::Percent(p) => (u64::from(total) * u64::from(p.min(100))).div_ceil(100) as u32,
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Limit, String> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Limit::Percent(p)),
                _ => Err(format!("{s:?}: a percentage is 1% to 100%")),
            },
            None => s
                .parse::<u32>()
                .map(Limit::Count)
                .map_err(|_| format!("{s:?}: expected a count (10) or a percentage (10%)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: RolloutPhase,
    /// The batch being rolled out (index into `policy.batches`).
    pub batch: u16,
    /// When `revision` was published (Unix ms): device timeouts count from
    /// the moment a device's batch started.
    pub started_ms: u64,
    pub batch_started_ms: u64,
    /// Why the rollout is where it is ("batch 1 of 3: 4 of 5 devices run
    /// revision 7", "rolled back: 3 of 5 devices in batch 1 failed").
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RolloutPhase {
    #[default]
    Progressing,
    Paused,
    Complete,
    /// The failure threshold was crossed and the stable revision is being
    /// rolled out again (as a new revision).
    RolledBack,
    /// The failure threshold was crossed, `auto_rollback` is off: nothing
    /// moves until the user changes the fleet or resumes it.
    Halted,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::RolledBack => "RolledBack",
            RolloutPhase::Halted => "Halted",
        }
    }
}

/// What one device says about one fleet deployment (kind 9), retained on
/// `{prefix}/{node}/fleet/{namespace}/{name}`; empty = the device left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    pub fleet_uid: String,
    /// The revision this device should run now; 0: none (it waits for its
    /// batch, or a higher priority wins).
    pub desired_revision: u64,
    /// The revision it runs; 0: none.
    pub running_revision: u64,
    pub state: FleetPodState,
    /// Bit `i` set: the device matches `rollout.policy.batches[i].selector`
    /// (batches 0–63), so counts per batch group are exact.
    pub groups: u64,
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FleetPodState {
    /// Targeted; its batch has not started and no stable revision exists.
    Waiting,
    /// The desired revision is being fetched or started.
    Pending,
    Running,
    Ready,
    Failed,
    /// A higher priority fleet (or a spec sent to this node by name) gives
    /// this device a pod of the same name.
    Superseded,
    /// The pod ran to completion (restartPolicy Never/OnFailure).
    Succeeded,
}

impl FleetPodState {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetPodState::Waiting => "Waiting",
            FleetPodState::Pending => "Pending",
            FleetPodState::Running => "Running",
            FleetPodState::Ready => "Ready",
            FleetPodState::Failed => "Failed",
            FleetPodState::Superseded => "Superseded",
            FleetPodState::Succeeded => "Succeeded",
        }
    }
}

/// Labels the cloud sets on a device (kind 10), retained on
/// `{prefix}/{node}/labels` (`kedge label node`, or the Node's labels):
/// the whole set; empty payload = none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeLabels {
    pub labels: BTreeMap<String, String>,
}
