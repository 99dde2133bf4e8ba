//! A rollout controller's state for one fleet deployment: the retained
//! record, the tally of its devices' reports, and what the controller knows
//! of each device from its node status (presence, labels). Pure and
//! clock-free; `kedge rollout status` feeds it from MQTT and publishes the
//! records [`Driver::step`] returns, and a bridge could do the same.
//!
//! Two guards on top of `rollout::step`, both about reports that lag a new
//! record:
//! - a device's batch groups are computed from the labels in its node
//!   status when it has them, so a policy with new batches is measured
//!   against them before the device has reported on it;
//! - no step is taken while an online device whose labels match the
//!   selector has not reported on this fleet deployment at all (a new
//!   fleet: its devices have not read it yet), for at most the device
//!   timeout.

use std::collections::{BTreeMap, HashMap};

use crate::model::selector::Selector;
use crate::model::{FleetDeployment, FleetReport, RolloutPhase};

use super::rollout::{self, BatchProgress, Step};
use super::tally::Tally;

/// A node whose last heartbeat is older than this counts as offline (the
/// Kubernetes node lease duration; `kedge get nodes` uses the same).
pub const NODE_STALE_MS: u64 = 40_000;

pub use super::rollout::{MAX_RECORD_MESSAGE, clip_message};

/// What the controller knows of a device from its node status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Device {
    online: bool,
    heartbeat_ms: u64,
    labels: Option<BTreeMap<String, String>>,
}

impl Device {
    fn present(&self, now_ms: u64) -> bool {
        self.online && now_ms.saturating_sub(self.heartbeat_ms) <= NODE_STALE_MS
    }
}

/// How the rollout stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still moving (or waiting for devices).
    Rolling,
    /// Every device of the fleet runs the revision.
    Complete,
    /// Stopped by a user (`kedge rollout pause`).
    Paused,
    /// The failure threshold was crossed: rolled back or halted.
    Failed(RolloutPhase),
}

#[derive(Debug, Clone)]
pub struct Driver {
    fleet: FleetDeployment,
    tally: Tally,
    /// Reports as the devices sent them (groups not yet overridden), so
    /// they can be applied again when labels or the record change.
    reports: HashMap<String, FleetReport>,
    devices: HashMap<String, Device>,
    /// When the current revision was first seen by this controller.
    seen_ms: u64,
}

fn groups_from_labels(f: &FleetDeployment, labels: &BTreeMap<String, String>) -> u64 {
    f.rollout
        .policy
        .batches
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, b)| Selector::parse("selector", &b.selector).is_ok_and(|s| s.matches(labels)))
        .fold(0u64, |acc, (i, _)| acc | (1 << i))
}

impl Driver {
    pub fn new(fleet: FleetDeployment, now_ms: u64) -> Driver {
        Driver {
            tally: Tally::new(fleet.revision),
            fleet,
            reports: HashMap::new(),
            devices: HashMap::new(),
            seen_ms: now_ms,
        }
    }

    pub fn fleet(&self) -> &FleetDeployment {
        &self.fleet
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The numbers of the current batch.
    pub fn progress(&self, now_ms: u64) -> BatchProgress {
        rollout::progress(&self.fleet, &self.tally, now_ms)
    }

    fn apply_report(&mut self, node: &str, now_ms: u64) {
        let Some(report) = self.reports.get(node) else {
            self.tally.apply(node, None, now_ms);
            return;
        };
        let mut report = report.clone();
        if let Some(labels) = self.devices.get(node).and_then(|d| d.labels.as_ref()) {
            report.groups = groups_from_labels(&self.fleet, labels);
        }
        self.tally.apply(node, Some(&report), now_ms);
        let present = self.devices.get(node).is_none_or(|d| d.present(now_ms));
        self.tally.set_online(node, present);
    }

    /// The retained record changed (published by this controller, or by
    /// another author: a new revision, a pause).
    pub fn on_record(&mut self, fleet: FleetDeployment, now_ms: u64) {
        if fleet == self.fleet {
            return;
        }
        let uid_changed = fleet.uid != self.fleet.uid;
        let revision_changed = fleet.revision != self.fleet.revision;
        let batches_changed = fleet.rollout.policy.batches != self.fleet.rollout.policy.batches;
        self.fleet = fleet;
        if uid_changed {
            // Another fleet deployment under the same name: none of the
            // reports are about it.
            self.reports.clear();
            self.tally = Tally::new(self.fleet.revision);
        }
        if revision_changed {
            self.seen_ms = now_ms;
            self.tally.retarget(self.fleet.revision, now_ms);
        }
        if batches_changed {
            let nodes: Vec<String> = self.reports.keys().cloned().collect();
            for node in nodes {
                self.apply_report(&node, now_ms);
            }
        }
    }

    /// A device's report on this fleet deployment (None: it left).
    /// Reports about another fleet deployment of the same name (another
    /// uid) count as none.
    pub fn on_report(&mut self, node: &str, report: Option<FleetReport>, now_ms: u64) {
        match report.filter(|r| r.fleet_uid == self.fleet.uid) {
            Some(r) => {
                self.reports.insert(node.to_string(), r);
            }
            None => {
                self.reports.remove(node);
            }
        }
        self.apply_report(node, now_ms);
    }

    /// A device's node status (`labels` None: an agent that does not send
    /// them), or its last will (`online` false).
    pub fn on_node(
        &mut self,
        node: &str,
        online: bool,
        heartbeat_ms: u64,
        labels: Option<BTreeMap<String, String>>,
        now_ms: u64,
    ) {
        let device = self.devices.entry(node.to_string()).or_default();
        device.online = online;
        // The last will carries no heartbeat or labels: keep what we knew.
        if online {
            device.heartbeat_ms = heartbeat_ms;
            if labels.is_some() {
                device.labels = labels;
            }
        }
        if self.reports.contains_key(node) {
            self.apply_report(node, now_ms);
        }
    }

    /// Online devices whose labels match the selector and that have not
    /// reported on this fleet deployment yet.
    pub fn unreported(&self, now_ms: u64) -> Vec<&str> {
        let Ok(selector) = Selector::parse("selector", &self.fleet.selector) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = self
            .devices
            .iter()
            .filter(|(node, d)| {
                d.present(now_ms)
                    && d.labels.as_ref().is_some_and(|l| selector.matches(l))
                    && !self.reports.contains_key(node.as_str())
            })
            .map(|(node, _)| node.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// How the rollout stands, from the record alone.
    pub fn outcome(&self) -> Outcome {
        match self.fleet.rollout.state.phase {
            RolloutPhase::Progressing => Outcome::Rolling,
            RolloutPhase::Complete => Outcome::Complete,
            RolloutPhase::Paused => Outcome::Paused,
            phase @ (RolloutPhase::RolledBack | RolloutPhase::Halted) => Outcome::Failed(phase),
        }
    }

    /// Presence is re-evaluated (heartbeats go stale), then the rollout
    /// steps until it waits. Returns the records to publish, in order; the
    /// driver has adopted the last one.
    pub fn step(&mut self, now_ms: u64) -> Vec<FleetDeployment> {
        let stale: Vec<(String, bool)> = self
            .devices
            .iter()
            .filter(|(node, _)| self.reports.contains_key(node.as_str()))
            .map(|(node, d)| (node.clone(), d.present(now_ms)))
            .collect();
        for (node, present) in stale {
            self.tally.set_online(&node, present);
        }
        let timeout_ms = u64::from(self.fleet.rollout.policy.device_timeout_secs) * 1000;
        if !self.unreported(now_ms).is_empty() && now_ms.saturating_sub(self.seen_ms) <= timeout_ms
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        // A handful of steps at most (a batch done, the next admitted).
        for _ in 0..8 {
            match rollout::step(&self.fleet, &self.tally, now_ms) {
                Step::Wait => break,
                Step::Publish(mut next) => {
                    clip_message(&mut next.rollout.state.message);
                    self.on_record(*next.clone(), now_ms);
                    out.push(*next);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::manage::{self, Applied, Definition};
    use crate::model::{FleetPodState, RolloutPolicy};

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn labels(s: &str) -> Option<BTreeMap<String, String>> {
        Some(Selector::parse_labels("l", s).expect("labels"))
    }

    fn define(d: char, batches: &str, previous: Option<&FleetDeployment>) -> FleetDeployment {
        let applied = manage::define(
            Definition {
                namespace: "default".into(),
                name: "f".into(),
                selector: "app=x".into(),
                priority: 0,
                pod_name: "p".into(),
                spec_digest: digest(d),
                policy: RolloutPolicy {
                    batches: manage::parse_batches(batches).expect("batches"),
                    // Devices here are up for good once they report it.
                    min_ready_secs: 0,
                    ..RolloutPolicy::default()
                },
            },
            "u",
            previous,
            0,
        );
        match applied {
            Applied::Created(f) | Applied::Configured(f) => *f,
            Applied::Unchanged => panic!("unchanged"),
        }
    }

    /// What a device says given the record and its labels: the rule of
    /// `fleet::resolve`, with devices that run what they are asked.
    fn report(f: &FleetDeployment, node: &str, l: &str, broken: bool) -> FleetReport {
        let plan = crate::fleet::resolve::plan(
            crate::fleet::bucket(node),
            &labels(l).expect("labels"),
            [f],
            &Default::default(),
        );
        let want = plan.pods.values().next().map(|(_, r)| r.revision);
        let failed = broken && want == Some(f.revision);
        FleetReport {
            fleet_uid: f.uid.clone(),
            desired_revision: want.unwrap_or(0),
            running_revision: if failed { 0 } else { want.unwrap_or(0) },
            state: match (want, failed) {
                (None, _) => FleetPodState::Waiting,
                (Some(_), true) => FleetPodState::Failed,
                (Some(_), false) => FleetPodState::Ready,
            },
            groups: 0,
            reason: failed.then(|| "Error".into()),
            message: None,
        }
    }

    const DEVICES: [(&str, &str); 4] = [
        ("gw1", "app=x,canary=true"),
        ("gw2", "app=x"),
        ("gw3", "app=x"),
        ("gw4", "app=y"),
    ];

    /// Runs the driver against simulated devices until it stops moving.
    fn run(driver: &mut Driver, broken: &[&str]) -> Vec<FleetDeployment> {
        let mut published = Vec::new();
        for now in 1..100 {
            for (node, l) in DEVICES {
                driver.on_node(node, true, now, labels(l), now);
                if Selector::parse("s", "app=x")
                    .expect("selector")
                    .matches(&labels(l).expect("labels"))
                {
                    let r = report(driver.fleet(), node, l, broken.contains(&node));
                    driver.on_report(node, Some(r), now);
                }
            }
            let next = driver.step(now);
            if next.is_empty() && driver.outcome() != Outcome::Rolling {
                break;
            }
            published.extend(next);
        }
        published
    }

    #[test]
    fn a_new_fleet_waits_for_its_devices_before_the_first_batch() {
        let f = define('a', "canary=true:100%,100%", None);
        let mut driver = Driver::new(f, 0);
        for (node, l) in DEVICES {
            driver.on_node(node, true, 1, labels(l), 1);
        }
        // gw1..gw3 match and have not reported: no step, even though an
        // empty tally would let every batch pass at once.
        assert_eq!(driver.unreported(1), vec!["gw1", "gw2", "gw3"]);
        assert!(driver.step(1).is_empty());
        let published = run(&mut driver, &[]);
        assert_eq!(driver.outcome(), Outcome::Complete);
        assert_eq!(published[0].cohorts[0].selector, "canary=true");
        assert_eq!(driver.tally().counts().running, 3);
    }

    #[test]
    fn groups_come_from_the_labels_before_devices_report_on_new_batches() {
        let mut first = define('a', "", None);
        let mut driver = Driver::new(first.clone(), 0);
        run(&mut driver, &[]);
        assert_eq!(driver.outcome(), Outcome::Complete);
        first = driver.fleet().clone();
        // A staged update with a broken canary: the reports on revision 1
        // carry no groups, yet batch 1 is the canary, and it fails.
        let second = define('b', "canary=true:100%,100%", Some(&first));
        driver.on_record(second, 0);
        let step = driver.step(50);
        assert_eq!(step.len(), 1, "{step:?}");
        assert_eq!(step[0].cohorts[0].selector, "canary=true");
        let published = run(&mut driver, &["gw1"]);
        assert_eq!(driver.outcome(), Outcome::Failed(RolloutPhase::RolledBack));
        let last = published.last().expect("rolled back");
        assert_eq!(last.spec_digest, digest('a'));
        assert_eq!(last.revision, 3);
    }

    #[test]
    fn long_failure_messages_are_clipped_so_devices_accept_the_rollback() {
        let mut first = define('a', "", None);
        first.rollout.state.phase = RolloutPhase::Complete;
        let second = define('b', "", Some(&first));
        let mut driver = Driver::new(second.clone(), 0);
        for node in ["gw1", "gw2", "gw3"] {
            let mut r = report(&second, node, "app=x", true);
            r.message = Some("é".repeat(16_000));
            driver.on_report(node, Some(r), 1);
        }
        let published = driver.step(1);
        let last = published.last().expect("rolled back");
        assert_eq!(last.rollout.state.phase, RolloutPhase::RolledBack);
        assert!(last.rollout.state.message.len() <= MAX_RECORD_MESSAGE);
        assert!(last.rollout.state.message.ends_with('…'));
        crate::model::validate::Validate::validate(last).expect("devices accept it");
    }

    #[test]
    fn reports_of_another_uid_and_offline_devices() {
        let f = define('a', "", None);
        let mut driver = Driver::new(f.clone(), 0);
        let mut r = report(&f, "gw2", "app=x", false);
        r.fleet_uid = "other".into();
        driver.on_report("gw2", Some(r), 1);
        assert_eq!(driver.tally().len(), 0);
        driver.on_report("gw2", Some(report(&f, "gw2", "app=x", false)), 1);
        driver.on_node("gw2", true, 1, labels("app=x"), 1);
        assert_eq!(driver.tally().counts().offline, 0);
        driver.on_node("gw2", false, 0, None, 2);
        assert_eq!(driver.tally().counts().offline, 1);
        driver.on_node("gw2", true, 3, None, 3);
        assert_eq!(driver.tally().counts().offline, 0);
        // A heartbeat that stops counts as offline on the next step.
        driver.step(3 + NODE_STALE_MS + 1);
        assert_eq!(driver.tally().counts().offline, 1);
    }
}
