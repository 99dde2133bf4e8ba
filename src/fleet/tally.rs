//! In the cloud: the devices' reports on one fleet deployment, folded into
//! counts as they arrive (`apply` moves one device's contribution, so the
//! cost of a report does not grow with the fleet). Pure.
//!
//! A device costs one entry: its name and 40 bytes (figures in
//! ARCHITECTURE.md, "Fleets"); the reasons of at most
//! [`MAX_FAILURES_KEPT`] failing devices are kept besides.

use std::collections::{BTreeMap, HashMap};

use crate::model::{FleetPodState, FleetReport};

/// Failing devices whose reason is kept (the counts stay exact).
pub const MAX_FAILURES_KEPT: usize = 64;

/// One device's last report, compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub desired: u64,
    pub running: u64,
    pub groups: u64,
    /// When `desired` became the target revision (Unix ms, the tally's
    /// clock); 0 if it is not the target.
    pub since_ms: u64,
    /// Since when it has run the target and been up (Running, Ready,
    /// Succeeded) without a break; 0 if it is not.
    pub up_since_ms: u64,
    pub bucket: u16,
    pub state: FleetPodState,
    pub online: bool,
}

/// Counts relative to the fleet's target revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices whose labels match (they report on the fleet).
    pub targeted: u32,
    /// Asked to run the target revision.
    pub desired: u32,
    /// Run the target revision (whatever its state).
    pub applied: u32,
    /// Run it and it is Running, Ready or Succeeded.
    pub running: u32,
    pub ready: u32,
    /// Asked to run the target and failed.
    pub failed: u32,
    pub waiting: u32,
    pub superseded: u32,
    pub offline: u32,
}

#[derive(Debug, Clone)]
pub struct Tally {
    target: u64,
    devices: HashMap<Box<str>, Entry>,
    counts: Counts,
    failures: BTreeMap<Box<str>, String>,
}

fn is_up(state: FleetPodState) -> bool {
    matches!(
        state,
        FleetPodState::Running | FleetPodState::Ready | FleetPodState::Succeeded
    )
}

impl Tally {
    pub fn new(target: u64) -> Tally {
        Tally {
            target,
            devices: HashMap::new(),
            counts: Counts::default(),
            failures: BTreeMap::new(),
        }
    }

    pub fn target(&self) -> u64 {
        self.target
    }
    pub fn counts(&self) -> Counts {
        self.counts
    }
    pub fn len(&self) -> usize {
        self.devices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.devices.iter().map(|(k, v)| (&**k, v))
    }
    /// The first failing devices by name, with their reasons.
    pub fn failures(&self, n: usize) -> impl Iterator<Item = (&str, &str)> {
        self.failures.iter().take(n).map(|(k, v)| (&**k, &**v))
    }

    fn add(&mut self, e: &Entry, sign: i64) {
        let t = self.target;
        let c = &mut self.counts;
        let bump = |v: &mut u32, cond: bool| {
            if cond {
                *v = (i64::from(*v) + sign).max(0) as u32;
            }
        };
        bump(&mut c.targeted, true);
        bump(&mut c.desired, e.desired == t);
        bump(&mut c.applied, e.running == t);
        bump(&mut c.running, e.running == t && is_up(e.state));
        bump(
            &mut c.ready,
            e.running == t && e.state == FleetPodState::Ready,
        );
        bump(
            &mut c.failed,
            e.desired == t && e.state == FleetPodState::Failed,
        );
        bump(&mut c.waiting, e.state == FleetPodState::Waiting);
        bump(&mut c.superseded, e.state == FleetPodState::Superseded);
        bump(&mut c.offline, !e.online);
    }

    /// A device's report (None: it left the fleet). `now_ms` stamps when
    /// it was first asked to run the target.
    pub fn apply(&mut self, node: &str, report: Option<&FleetReport>, now_ms: u64) {
        let old = self.devices.get(node).copied();
        if let Some(old) = &old {
            self.add(old, -1);
        }
        let Some(r) = report else {
            self.devices.remove(node);
            self.failures.remove(node);
            return;
        };
        let since_ms = match old {
            Some(o) if o.desired == self.target && o.since_ms != 0 => o.since_ms,
            _ if r.desired_revision == self.target => now_ms,
            _ => 0,
        };
        let up = r.running_revision == self.target && is_up(r.state);
        let up_since_ms = match old {
            _ if !up => 0,
            Some(o) if o.up_since_ms != 0 && o.running == self.target => o.up_since_ms,
            _ => now_ms.max(1),
        };
        let entry = Entry {
            desired: r.desired_revision,
            running: r.running_revision,
            groups: r.groups,
            since_ms,
            up_since_ms,
            bucket: old.map_or_else(|| super::bucket(node), |o| o.bucket),
            state: r.state,
            online: old.is_none_or(|o| o.online),
        };
        self.add(&entry, 1);
        if r.state == FleetPodState::Failed && r.desired_revision == self.target {
            let why = match (&r.reason, &r.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "Failed".into(),
            };
            if self.failures.contains_key(node) || self.failures.len() < MAX_FAILURES_KEPT {
                self.failures.insert(node.into(), why);
            }
        } else {
            self.failures.remove(node);
        }
        match self.devices.get_mut(node) {
            Some(e) => *e = entry,
            None => {
                self.devices.insert(node.into(), entry);
            }
        }
    }

    /// A device's presence (its node status or last will).
    pub fn set_online(&mut self, node: &str, online: bool) {
        let Some(old) = self.devices.get(node).copied() else {
            return;
        };
        if old.online == online {
            return;
        }
        self.add(&old, -1);
        let new = Entry { online, ..old };
        self.add(&new, 1);
        self.devices.insert(node.into(), new);
    }

    /// A new target revision: counts are recomputed once (one pass).
    pub fn retarget(&mut self, target: u64, now_ms: u64) {
        if target == self.target {
            return;
        }
        self.target = target;
        self.counts = Counts::default();
        self.failures.clear();
        let entries: Vec<Entry> = self.devices.values().copied().collect();
        for e in self.devices.values_mut() {
            e.since_ms = if e.desired == target { now_ms } else { 0 };
            e.up_since_ms = if e.running == target && is_up(e.state) {
                now_ms.max(1)
            } else {
                0
            };
        }
        for e in entries {
            self.add(&e, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(desired: u64, running: u64, state: FleetPodState) -> FleetReport {
        FleetReport {
            fleet_uid: "u".into(),
            desired_revision: desired,
            running_revision: running,
            state,
            groups: 1,
            reason: (state == FleetPodState::Failed).then(|| "ErrImagePull".into()),
            message: None,
        }
    }

    /// The incremental counts equal a recount from scratch after any
    /// sequence of reports, departures, presence changes and retargets.
    #[test]
    fn incremental_counts_equal_a_recount() {
        use FleetPodState::*;
        let states = [
            Waiting, Pending, Running, Ready, Failed, Superseded, Succeeded,
        ];
        let mut t = Tally::new(2);
        let mut seed: u64 = 7;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for step in 0..5_000u64 {
            let node = format!("gw{}", next() % 50);
            match next() % 10 {
                0 => t.apply(&node, None, step),
                1 => t.set_online(&node, next() % 2 == 0),
                2 if step % 500 == 0 => t.retarget(1 + (next() % 3) as u64, step),
                _ => {
                    let r = report(
                        (next() % 4) as u64,
                        (next() % 4) as u64,
                        states[next() % states.len()],
                    );
                    t.apply(&node, Some(&r), step);
                }
            }
            let mut recount = Tally::new(t.target());
            recount.devices = t.devices.clone();
            for e in t.devices.values() {
                recount.add(e, 1);
            }
            assert_eq!(t.counts(), recount.counts, "after step {step}");
        }
    }

    #[test]
    fn failures_keep_their_reasons_and_leave_when_fixed() {
        let mut t = Tally::new(3);
        t.apply("gw1", Some(&report(3, 2, FleetPodState::Failed)), 10);
        t.apply("gw2", Some(&report(3, 3, FleetPodState::Ready)), 10);
        assert_eq!(t.counts().failed, 1);
        assert_eq!(t.counts().ready, 1);
        assert_eq!(
            t.failures(5).collect::<Vec<_>>(),
            vec![("gw1", "ErrImagePull")]
        );
        t.apply("gw1", Some(&report(3, 3, FleetPodState::Running)), 20);
        assert_eq!(t.failures(5).count(), 0);
        assert_eq!(t.counts().running, 2);
        // The time a device was first asked for the target is kept, and
        // when it came up.
        assert_eq!(t.devices["gw1"].since_ms, 10);
        assert_eq!(t.devices["gw1"].up_since_ms, 20);
        t.apply("gw1", Some(&report(3, 3, FleetPodState::Ready)), 25);
        assert_eq!(t.devices["gw1"].up_since_ms, 20, "still up: kept");
        t.apply("gw1", Some(&report(3, 3, FleetPodState::Failed)), 26);
        assert_eq!(t.devices["gw1"].up_since_ms, 0, "a break resets it");
        t.set_online("gw2", false);
        assert_eq!(t.counts().offline, 1);
        t.apply("gw2", None, 30);
        assert_eq!(t.counts().targeted, 1);
        assert_eq!(t.counts().offline, 0);
    }
}
