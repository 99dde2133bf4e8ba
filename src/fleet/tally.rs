//! In the cloud: the devices' reports on one fleet deployment, folded into
//! counts as they arrive (`apply` moves one device's contribution, so the
//! cost of a report does not grow with the fleet). Pure.
//!
//! A device costs one entry: its name and 40 bytes (figures in
//! ARCHITECTURE.md, "Fleets"); the reasons of at most
//! [`MAX_FAILURES_KEPT`] failing devices are kept besides, and the counts
//! per revision ([`ByRevision`]: at most [`MAX_REVISIONS_KEPT`] revisions
//! and one line for the older ones, whatever the number of devices).

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

/// Revisions counted one by one; devices on older revisions are counted
/// together (one line), so the breakdown stays small whatever the history.
pub const MAX_REVISIONS_KEPT: usize = 16;

/// Devices of one revision (or of the older revisions together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevisionCounts {
    /// Devices that run it (whatever its state).
    pub devices: u32,
    /// Run it and it is Running, Ready or Succeeded.
    pub running: u32,
    pub ready: u32,
    /// Devices asked to run it that failed (keyed by the revision asked
    /// for, which a failed device may not run: it keeps the one before).
    pub failed: u32,
    /// Devices that run it and are offline.
    pub offline: u32,
}

impl RevisionCounts {
    fn is_zero(&self) -> bool {
        *self == RevisionCounts::default()
    }
}

/// Counts per revision, moved as reports arrive like [`Counts`]: the
/// newest [`MAX_REVISIONS_KEPT`] revisions any device runs or failed, one
/// line each (no line with all counts zero); every revision below
/// `older_below` in one line. `older_below` only grows: a revision, once
/// folded, stays folded, so a device's contribution is always taken from
/// the line it was added to. Devices that run no revision (waiting, or
/// their first revision failed) are in no line but the one they failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByRevision {
    kept: BTreeMap<u64, RevisionCounts>,
    older: RevisionCounts,
    older_below: u64,
}

impl ByRevision {
    /// The revisions counted one by one, newest first.
    pub fn revisions(&self) -> impl Iterator<Item = (u64, &RevisionCounts)> {
        self.kept.iter().rev().map(|(r, c)| (*r, c))
    }

    /// The devices on revisions below the returned one, counted together
    /// (`None`: there are none).
    pub fn older(&self) -> Option<(u64, &RevisionCounts)> {
        (!self.older.is_zero()).then_some((self.older_below, &self.older))
    }

    fn line(&mut self, revision: u64) -> &mut RevisionCounts {
        if revision < self.older_below {
            return &mut self.older;
        }
        if !self.kept.contains_key(&revision) && self.kept.len() >= MAX_REVISIONS_KEPT {
            // Fold the oldest line kept (or this revision, if older still).
            let oldest = self.kept.keys().next().copied().unwrap_or(revision);
            if revision < oldest {
                self.older_below = revision + 1;
                return &mut self.older;
            }
            if let Some(c) = self.kept.remove(&oldest) {
                self.older = sum(self.older, c, 1);
            }
            self.older_below = oldest + 1;
        }
        self.kept.entry(revision).or_default()
    }

    fn bump(&mut self, revision: u64, sign: i64, f: impl Fn(&mut RevisionCounts) -> &mut u32) {
        if revision == 0 {
            return;
        }
        let line = self.line(revision);
        let v = f(line);
        *v = (i64::from(*v) + sign).max(0) as u32;
        if line.is_zero() && revision >= self.older_below {
            self.kept.remove(&revision);
        }
    }

    fn add(&mut self, e: &Entry, sign: i64) {
        let up = is_up(e.state);
        self.bump(e.running, sign, |c| &mut c.devices);
        if up {
            self.bump(e.running, sign, |c| &mut c.running);
        }
        if e.state == FleetPodState::Ready {
            self.bump(e.running, sign, |c| &mut c.ready);
        }
        if !e.online {
            self.bump(e.running, sign, |c| &mut c.offline);
        }
        if e.state == FleetPodState::Failed {
            self.bump(e.desired, sign, |c| &mut c.failed);
        }
    }
}

fn sum(a: RevisionCounts, b: RevisionCounts, sign: i64) -> RevisionCounts {
    let f = |x: u32, y: u32| (i64::from(x) + sign * i64::from(y)).max(0) as u32;
    RevisionCounts {
        devices: f(a.devices, b.devices),
        running: f(a.running, b.running),
        ready: f(a.ready, b.ready),
        failed: f(a.failed, b.failed),
        offline: f(a.offline, b.offline),
    }
}

#[derive(Debug, Clone)]
pub struct Tally {
    target: u64,
    devices: HashMap<Box<str>, Entry>,
    counts: Counts,
    failures: BTreeMap<Box<str>, String>,
    by_revision: ByRevision,
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
            by_revision: ByRevision::default(),
        }
    }

    pub fn target(&self) -> u64 {
        self.target
    }
    pub fn counts(&self) -> Counts {
        self.counts
    }
    /// The counts per revision.
    pub fn by_revision(&self) -> &ByRevision {
        &self.by_revision
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
        self.by_revision.add(e, sign);
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
        // The counts per revision do not depend on the target.
        let by_revision = std::mem::take(&mut self.by_revision);
        for e in entries {
            self.add(&e, 1);
        }
        self.by_revision = by_revision;
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
            assert_by_revision_is_a_recount(&t, step);
        }
    }

    /// The counts per revision from scratch: every device's revisions
    /// counted, those below the tally's `older_below` in one line.
    fn assert_by_revision_is_a_recount(t: &Tally, step: u64) {
        let b = t.by_revision();
        let mut all: BTreeMap<u64, RevisionCounts> = BTreeMap::new();
        for e in t.devices.values() {
            let mut at = |r: u64, f: &dyn Fn(&mut RevisionCounts)| {
                if r != 0 {
                    f(all.entry(r).or_default());
                }
            };
            at(e.running, &|c| c.devices += 1);
            if is_up(e.state) {
                at(e.running, &|c| c.running += 1);
            }
            if e.state == FleetPodState::Ready {
                at(e.running, &|c| c.ready += 1);
            }
            if !e.online {
                at(e.running, &|c| c.offline += 1);
            }
            if e.state == FleetPodState::Failed {
                at(e.desired, &|c| c.failed += 1);
            }
        }
        let mut older = RevisionCounts::default();
        let mut kept = BTreeMap::new();
        for (r, c) in all {
            if r < b.older_below {
                older = sum(older, c, 1);
            } else {
                kept.insert(r, c);
            }
        }
        assert_eq!(b.kept, kept, "kept lines after step {step}");
        assert_eq!(b.older, older, "older line after step {step}");
        assert!(b.kept.len() <= MAX_REVISIONS_KEPT, "after step {step}");
        assert!(b.kept.values().all(|c| !c.is_zero()), "after step {step}");
        // What is folded is older than what is kept.
        assert!(b.kept.keys().all(|r| *r >= b.older_below));
    }

    /// Devices spread over many revisions (a long history, stragglers
    /// offline on old ones): the breakdown stays a recount, keeps at most
    /// [`MAX_REVISIONS_KEPT`] lines, the newest, and folds the rest.
    #[test]
    fn counts_per_revision_equal_a_recount_and_stay_bounded() {
        use FleetPodState::*;
        let states = [
            Waiting, Pending, Running, Ready, Failed, Superseded, Succeeded,
        ];
        let mut t = Tally::new(1);
        let mut seed: u64 = 11;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for step in 0..20_000u64 {
            let node = format!("gw{}", next() % 200);
            // The fleet's history grows: revision 1 to 40 over the run;
            // devices run the newest few, some lag far behind.
            let newest = 1 + step / 500;
            let revision = |k: usize| match k % 10 {
                0 => (k as u64 / 10) % newest,
                _ => newest.saturating_sub((k % 3) as u64),
            };
            match next() % 12 {
                0 => t.apply(&node, None, step),
                1 => t.set_online(&node, next() % 2 == 0),
                2 if step % 500 == 0 => t.retarget(newest, step),
                _ => {
                    let r = report(
                        revision(next()),
                        revision(next()),
                        states[next() % states.len()],
                    );
                    t.apply(&node, Some(&r), step);
                }
            }
            assert_by_revision_is_a_recount(&t, step);
        }
        let b = t.by_revision();
        // 40 revisions were run: some folded, the lines kept the newest.
        assert!(b.revisions().count() <= MAX_REVISIONS_KEPT, "{b:?}");
        assert!(b.older_below > 1, "{b:?}");
        assert_eq!(b.revisions().next().map(|(r, _)| r), Some(40), "{b:?}");
        assert!(b.older().is_some(), "some devices lag: {b:?}");
        let newest: Vec<u64> = b.revisions().map(|(r, _)| r).collect();
        assert!(newest.windows(2).all(|w| w[0] > w[1]), "newest first");
    }

    #[test]
    fn counts_per_revision_follow_what_devices_run_and_what_failed() {
        let mut t = Tally::new(2);
        t.apply("gw1", Some(&report(2, 2, FleetPodState::Ready)), 1);
        t.apply("gw2", Some(&report(2, 1, FleetPodState::Failed)), 1);
        t.apply("gw3", Some(&report(1, 1, FleetPodState::Running)), 1);
        t.set_online("gw3", false);
        let lines: Vec<(u64, RevisionCounts)> =
            t.by_revision().revisions().map(|(r, c)| (r, *c)).collect();
        assert_eq!(
            lines,
            vec![
                (
                    2,
                    RevisionCounts {
                        devices: 1,
                        running: 1,
                        ready: 1,
                        failed: 1,
                        offline: 0
                    }
                ),
                (
                    1,
                    RevisionCounts {
                        devices: 2,
                        running: 1,
                        ready: 0,
                        failed: 0,
                        offline: 1
                    }
                ),
            ]
        );
        // Every device of revision 1 gone: its line goes.
        t.apply("gw2", None, 2);
        t.apply("gw3", None, 2);
        assert_eq!(t.by_revision().revisions().count(), 1);
        // A retarget moves nothing per revision.
        let before = t.by_revision().clone();
        t.retarget(3, 3);
        assert_eq!(*t.by_revision(), before);
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
