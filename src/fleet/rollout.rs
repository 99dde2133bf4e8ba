//! In the cloud: the next step of a staged rollout, from the fleet
//! deployment (its policy, cohorts and state) and the tally of its
//! devices. Pure and clock-free (`now_ms` is an argument); the bridge and
//! `kedge rollout` call it and publish the record it returns.
//!
//! The rules (FlightCtl's batches and success threshold, hawkBit's error
//! threshold):
//! - batches are cumulative: batch `b` runs the target on the devices of
//!   batches `0..=b`; each batch is a cohort (its selector, and a bucket
//!   limit computed when it starts so that `limit` of its group's devices
//!   fall under it — devices that join the group later and hash below it
//!   get the target too);
//! - with `max_unavailable`, a batch's cohort grows in steps so that no
//!   more devices than that are updating or failed at once;
//! - a batch is done when its online devices have all reported the target
//!   running, failed or timed out (`device_timeout_secs` after they were
//!   asked); more failures than `100 - success_threshold_pct` percent of
//!   the batch trip the rollout: back to the stable revision as a new
//!   revision (`auto_rollback`), or halted;
//! - after the last batch every device matching the fleet runs the target
//!   (the cohort "everyone") and it becomes the stable revision.
//!
//! The record changes only at these steps, never with each report, so the
//! broker fans out a handful of messages per rollout.

use crate::model::fleet::BUCKETS;
use crate::model::{Batch, Cohort, FleetDeployment, FleetPodState, Limit, RolloutPhase};

use super::tally::Tally;

/// What the controller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to publish.
    Wait,
    /// Publish this record (a batch started, grew, completed, or the
    /// rollout was rolled back or halted).
    Publish(Box<FleetDeployment>),
}

/// The batches of a policy; none means one batch of every device.
fn batches(f: &FleetDeployment) -> Vec<Batch> {
    if f.rollout.policy.batches.is_empty() {
        vec![Batch {
            selector: String::new(),
            limit: Limit::Percent(100),
        }]
    } else {
        f.rollout.policy.batches.clone()
    }
}

/// The group of batch `b`: online or not, devices whose report says they
/// match its selector (bit `b`; with no batches, every device).
fn group(f: &FleetDeployment, tally: &Tally, b: usize) -> Vec<u16> {
    let implicit = f.rollout.policy.batches.is_empty();
    let mut buckets: Vec<u16> = tally
        .entries()
        .filter(|(_, e)| implicit || (b < 64 && e.groups & (1 << b) != 0))
        .filter(|(_, e)| e.state != FleetPodState::Superseded)
        .map(|(_, e)| e.bucket)
        .collect();
    buckets.sort_unstable();
    buckets
}

/// The smallest bucket limit that puts `n` of the group's devices under it
/// (every device, present and future, when `n` is the whole group).
fn limit_for(buckets: &[u16], n: u32) -> u16 {
    let n = n as usize;
    if n == 0 {
        0
    } else if n >= buckets.len() {
        BUCKETS
    } else {
        buckets[n - 1] + 1
    }
}

/// The numbers of the current batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchProgress {
    /// Online devices the cohorts so far ask to run the target.
    pub expected: u32,
    /// Devices that report running it (Running, Ready, Succeeded).
    pub succeeded: u32,
    /// Devices that report it failed, or did not run it in time.
    pub failed: u32,
    /// Devices asked and not yet done either way.
    pub updating: u32,
}

/// Counts the devices the cohorts cover against their reports.
pub fn progress(f: &FleetDeployment, tally: &Tally, now_ms: u64) -> BatchProgress {
    let timeout_ms = u64::from(f.rollout.policy.device_timeout_secs) * 1000;
    let min_ready_ms = u64::from(f.rollout.policy.min_ready_secs) * 1000;
    let started = f.rollout.state.batch_started_ms;
    let mut p = BatchProgress::default();
    for (_, e) in tally.entries() {
        if e.state == FleetPodState::Superseded {
            continue;
        }
        let groups_ok =
            |c: &Cohort, i: usize| c.selector.is_empty() || (i < 64 && e.groups & (1 << i) != 0);
        // Cohort i comes from batch i (cohorts are appended in order).
        let covered = f
            .cohorts
            .iter()
            .enumerate()
            .any(|(i, c)| e.bucket < c.per_10k && groups_ok(c, i));
        let asked = e.desired == f.revision;
        if !covered && !asked {
            continue;
        }
        // Up long enough: a container that starts and then crash-loops
        // must not pass its batch on its first Running report.
        let up = e.running == f.revision
            && matches!(
                e.state,
                FleetPodState::Running | FleetPodState::Ready | FleetPodState::Succeeded
            )
            && e.up_since_ms != 0
            && now_ms.saturating_sub(e.up_since_ms) >= min_ready_ms;
        let since = if asked && e.since_ms != 0 {
            e.since_ms
        } else {
            started
        };
        let late = timeout_ms > 0 && now_ms.saturating_sub(since) > timeout_ms;
        if !e.online && !asked {
            // Offline devices get the revision when they return; they do
            // not hold the batch.
            continue;
        }
        p.expected += 1;
        if up {
            p.succeeded += 1;
        } else if (asked && e.state == FleetPodState::Failed) || late {
            p.failed += 1;
        } else {
            p.updating += 1;
        }
    }
    p
}

fn with_message(f: &FleetDeployment, phase: RolloutPhase, message: String) -> FleetDeployment {
    let mut next = f.clone();
    next.rollout.state.phase = phase;
    next.rollout.state.message = message;
    next
}

/// Starts rolling out a new spec (a new revision): the devices of the first
/// batch get it; the others keep the stable revision (the last completed
/// one, or none). `previous` is the record being replaced, if any.
pub fn start(
    mut f: FleetDeployment,
    previous: Option<&FleetDeployment>,
    now_ms: u64,
) -> FleetDeployment {
    if let Some(p) = previous {
        f.revision = p.revision + 1;
        f.stable = if p.rollout.state.phase == RolloutPhase::Complete {
            Some(p.target())
        } else {
            p.stable.clone()
        };
    }
    f.cohorts.clear();
    f.rollout.state = crate::model::RolloutState {
        phase: RolloutPhase::Progressing,
        batch: 0,
        started_ms: now_ms,
        batch_started_ms: now_ms,
        message: format!("revision {} published", f.revision),
    };
    f
}

/// The longest `rollout.state.message` a step writes: the record must pass
/// every device's checks (`model::validate`, 32 KiB), and a rollback quotes
/// devices' failure messages.
pub const MAX_RECORD_MESSAGE: usize = 2_048;

/// `message` cut to [`MAX_RECORD_MESSAGE`] bytes at a character boundary.
pub fn clip_message(message: &mut String) {
    if message.len() <= MAX_RECORD_MESSAGE {
        return;
    }
    let mut end = MAX_RECORD_MESSAGE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
}

/// The next step of `f`'s rollout given its devices' reports; a record it
/// returns has a message of at most [`MAX_RECORD_MESSAGE`] bytes.
pub fn step(f: &FleetDeployment, tally: &Tally, now_ms: u64) -> Step {
    match step_unclipped(f, tally, now_ms) {
        Step::Publish(mut next) => {
            clip_message(&mut next.rollout.state.message);
            Step::Publish(next)
        }
        Step::Wait => Step::Wait,
    }
}

fn step_unclipped(f: &FleetDeployment, tally: &Tally, now_ms: u64) -> Step {
    if f.rollout.state.phase != RolloutPhase::Progressing || tally.target() != f.revision {
        return Step::Wait;
    }
    let policy = &f.rollout.policy;
    let batches = batches(f);
    let b = usize::from(f.rollout.state.batch).min(batches.len() - 1);
    let total = batches.len();

    // The cohort of batch b: created at its start, grown while admitting.
    let group = group(f, tally, b);
    let want = batches[b].limit.of(group.len() as u32);
    let full_limit = limit_for(&group, want);
    let p = progress(f, tally, now_ms);

    // Failures beyond the threshold trip the rollout at once.
    let allowed = p.expected
        - (u64::from(p.expected) * u64::from(policy.success_threshold_pct)).div_ceil(100) as u32;
    if p.failed > allowed {
        let failures: Vec<String> = tally
            .failures(3)
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        let why = format!(
            "{} of {} devices in batch {} of {total} failed revision {}{}",
            p.failed,
            p.expected,
            b + 1,
            f.revision,
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join("; "))
            }
        );
        return Step::Publish(Box::new(match (&f.stable, policy.auto_rollback) {
            (Some(stable), true) => {
                let mut next = with_message(
                    f,
                    RolloutPhase::RolledBack,
                    format!(
                        "rolled back to the spec of revision {} as revision {}: {why}",
                        stable.revision,
                        f.revision + 1
                    ),
                );
                next.revision = f.revision + 1;
                next.spec_digest = stable.spec_digest.clone();
                next.cohorts = vec![Cohort::everyone()];
                next
            }
            (None, true) => with_message(
                f,
                RolloutPhase::Halted,
                format!("halted (no earlier revision to roll back to): {why}"),
            ),
            (_, false) => with_message(f, RolloutPhase::Halted, format!("halted: {why}")),
        }));
    }

    // Admit batch b's devices, at most max_unavailable updating at once.
    let current = f.cohorts.get(b).map_or(0, |c| c.per_10k);
    if current < full_limit {
        let budget = match policy.max_unavailable {
            Limit::Count(0) => u32::MAX,
            l => l.of(tally.len() as u32).max(1),
        };
        let busy = p.updating + p.failed;
        if busy >= budget {
            return Step::Wait;
        }
        let admitted = group.iter().filter(|&&bk| bk < current).count() as u32;
        let limit = limit_for(&group, want.min(admitted.saturating_add(budget - busy)));
        if limit <= current && f.cohorts.len() > b {
            return Step::Wait;
        }
        let mut next = f.clone();
        next.cohorts.truncate(b);
        next.cohorts.push(Cohort {
            selector: batches[b].selector.clone(),
            per_10k: limit.max(current),
        });
        next.rollout.state.message = format!(
            "batch {} of {total}: revision {} to {} of {} devices{}",
            b + 1,
            f.revision,
            want,
            group.len(),
            if batches[b].selector.is_empty() {
                String::new()
            } else {
                format!(" matching {}", batches[b].selector)
            }
        );
        return Step::Publish(Box::new(next));
    }

    // Batch b fully admitted: done when every expected device settled.
    if p.updating > 0 {
        return Step::Wait;
    }
    if b + 1 < total {
        let mut next = f.clone();
        next.rollout.state.batch = (b + 1) as u16;
        next.rollout.state.batch_started_ms = now_ms;
        next.rollout.state.message = format!(
            "batch {} of {total} done: {} of {} devices run revision {}",
            b + 1,
            p.succeeded,
            p.expected,
            f.revision
        );
        // The next batch's cohort is added by the next step.
        return Step::Publish(Box::new(next));
    }
    let mut next = with_message(
        f,
        RolloutPhase::Complete,
        format!(
            "revision {} rolled out: {} of {} devices run it",
            f.revision, p.succeeded, p.expected
        ),
    );
    next.cohorts = vec![Cohort::everyone()];
    Step::Publish(Box::new(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FleetReport, Revision, Rollout, RolloutPolicy};

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn fleet(batches: Vec<Batch>) -> FleetDeployment {
        let f = FleetDeployment {
            namespace: "default".into(),
            name: "f".into(),
            uid: "u".into(),
            selector: String::new(),
            priority: 0,
            pod_name: "sensor".into(),
            revision: 1,
            spec_digest: digest('a'),
            cohorts: vec![],
            stable: None,
            rollout: Rollout {
                policy: RolloutPolicy {
                    batches,
                    success_threshold_pct: 80,
                    device_timeout_secs: 60,
                    min_ready_secs: 0,
                    ..RolloutPolicy::default()
                },
                state: Default::default(),
            },
        };
        start(f, None, 0)
    }

    /// A simulated fleet: device i has labels canary=true if i < canaries;
    /// every device runs what it is asked; `broken` devices fail.
    struct Sim {
        n: usize,
        canaries: usize,
        broken: Vec<usize>,
        tally: Tally,
    }

    impl Sim {
        fn report_all(&mut self, f: &FleetDeployment, now: u64) {
            self.tally.retarget(f.revision, now);
            for i in 0..self.n {
                let name = format!("gw{i}");
                let bucket = crate::fleet::bucket(&name);
                let groups = f
                    .rollout
                    .policy
                    .batches
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.selector.is_empty() || i < self.canaries)
                    .fold(0u64, |a, (k, _)| a | 1 << k);
                let covered = f.cohorts.iter().enumerate().any(|(k, c)| {
                    bucket < c.per_10k && (c.selector.is_empty() || groups & (1 << k) != 0)
                });
                let desired = if covered {
                    f.revision
                } else {
                    f.stable.as_ref().map_or(0, |s| s.revision)
                };
                let broken = self.broken.contains(&i) && desired == f.revision && covered;
                let r = FleetReport {
                    fleet_uid: "u".into(),
                    desired_revision: desired,
                    running_revision: if broken { 0 } else { desired },
                    state: if desired == 0 {
                        FleetPodState::Waiting
                    } else if broken {
                        FleetPodState::Failed
                    } else {
                        FleetPodState::Ready
                    },
                    groups,
                    reason: broken.then(|| "CrashLoopBackOff".into()),
                    message: None,
                };
                self.tally.apply(&name, Some(&r), now);
            }
        }

        /// Steps until the rollout stops moving; returns the records
        /// published.
        fn run(&mut self, mut f: FleetDeployment) -> Vec<FleetDeployment> {
            let mut published = vec![];
            for now in 1..200 {
                self.report_all(&f, now);
                match step(&f, &self.tally, now) {
                    Step::Wait => {
                        if f.rollout.state.phase != RolloutPhase::Progressing {
                            break;
                        }
                    }
                    Step::Publish(next) => {
                        f = *next;
                        published.push(f.clone());
                    }
                }
            }
            published
        }
    }

    fn canary_then_half_then_all() -> Vec<Batch> {
        vec![
            Batch {
                selector: "canary=true".into(),
                limit: Limit::Percent(100),
            },
            Batch {
                selector: String::new(),
                limit: Limit::Percent(50),
            },
            Batch {
                selector: String::new(),
                limit: Limit::Percent(100),
            },
        ]
    }

    #[test]
    fn batches_go_in_order_and_the_rollout_completes() {
        let mut sim = Sim {
            n: 200,
            canaries: 5,
            broken: vec![],
            tally: Tally::new(1),
        };
        let published = sim.run(fleet(canary_then_half_then_all()));
        let last = published.last().expect("published");
        assert_eq!(last.rollout.state.phase, RolloutPhase::Complete, "{last:?}");
        assert_eq!(last.cohorts, vec![Cohort::everyone()]);
        assert_eq!(sim.tally.counts().running, 200);
        // The canaries first, alone.
        let first = &published[0];
        assert_eq!(first.cohorts.len(), 1);
        assert_eq!(first.cohorts[0].selector, "canary=true");
        assert_eq!(first.cohorts[0].per_10k, BUCKETS);
        // Half of the fleet in batch 2: 100 of 200 by bucket.
        let second = published
            .iter()
            .find(|f| f.cohorts.len() == 2)
            .expect("batch 2");
        let under = (0..200)
            .filter(|i| crate::fleet::bucket(&format!("gw{i}")) < second.cohorts[1].per_10k)
            .count();
        assert_eq!(under, 100);
        // A handful of records, not one per device.
        assert!(published.len() <= 7, "{}", published.len());
    }

    #[test]
    fn a_failing_canary_rolls_back_to_the_stable_spec_as_a_new_revision() {
        let mut sim = Sim {
            n: 50,
            canaries: 5,
            broken: vec![0, 1, 2],
            tally: Tally::new(1),
        };
        let mut f = fleet(canary_then_half_then_all());
        f.stable = Some(Revision {
            revision: 1,
            spec_digest: digest('s'),
        });
        f.revision = 2;
        f.spec_digest = digest('n');
        sim.tally.retarget(2, 0);
        let published = sim.run(f);
        let last = published.last().expect("published");
        assert_eq!(last.rollout.state.phase, RolloutPhase::RolledBack);
        assert_eq!(last.revision, 3);
        assert_eq!(last.spec_digest, digest('s'));
        assert_eq!(last.cohorts, vec![Cohort::everyone()]);
        assert!(
            last.rollout
                .state
                .message
                .contains("3 of 5 devices in batch 1"),
            "{}",
            last.rollout.state.message
        );
        assert!(last.rollout.state.message.contains("CrashLoopBackOff"));
        // Only the canaries ever got revision 2.
        assert!(
            published[..published.len() - 1]
                .iter()
                .all(|f| f.cohorts.len() == 1 && f.cohorts[0].selector == "canary=true")
        );
    }

    #[test]
    fn without_auto_rollback_or_a_stable_revision_it_halts() {
        let mut sim = Sim {
            n: 20,
            canaries: 2,
            broken: vec![0],
            tally: Tally::new(1),
        };
        let published = sim.run(fleet(canary_then_half_then_all()));
        let last = published.last().expect("published");
        assert_eq!(last.rollout.state.phase, RolloutPhase::Halted);
        assert!(last.rollout.state.message.contains("no earlier revision"));
    }

    #[test]
    fn failures_within_the_threshold_do_not_stop_it() {
        let mut sim = Sim {
            n: 100,
            canaries: 10,
            broken: vec![50],
            tally: Tally::new(1),
        };
        let published = sim.run(fleet(vec![]));
        let last = published.last().expect("published");
        assert_eq!(last.rollout.state.phase, RolloutPhase::Complete);
        assert_eq!(sim.tally.counts().failed, 1);
    }

    #[test]
    fn max_unavailable_admits_devices_in_steps() {
        let mut sim = Sim {
            n: 40,
            canaries: 0,
            broken: vec![],
            tally: Tally::new(1),
        };
        let mut f = fleet(vec![]);
        f.rollout.policy.max_unavailable = Limit::Count(10);
        // One step at a time: the first admits 10 devices, no more.
        sim.report_all(&f, 1);
        let Step::Publish(first) = step(&f, &sim.tally, 1) else {
            panic!("expected a first step");
        };
        let admitted = (0..40)
            .filter(|i| crate::fleet::bucket(&format!("gw{i}")) < first.cohorts[0].per_10k)
            .count();
        assert_eq!(admitted, 10);
        let published = sim.run(*first);
        assert_eq!(
            published.last().map(|f| f.rollout.state.phase),
            Some(RolloutPhase::Complete)
        );
        assert!(published.len() >= 4, "{}", published.len());
    }

    #[test]
    fn a_device_that_never_runs_it_times_out_as_a_failure() {
        let mut f = fleet(vec![]);
        f.rollout.policy.success_threshold_pct = 100;
        let mut tally = Tally::new(1);
        let pending = FleetReport {
            fleet_uid: "u".into(),
            desired_revision: 1,
            running_revision: 0,
            state: FleetPodState::Pending,
            groups: 0,
            reason: None,
            message: None,
        };
        tally.apply("gw1", Some(&pending), 0);
        let Step::Publish(admitted) = step(&f, &tally, 0) else {
            panic!("admits");
        };
        assert_eq!(step(&admitted, &tally, 30_000), Step::Wait);
        match step(&admitted, &tally, 61_000) {
            Step::Publish(next) => assert_eq!(next.rollout.state.phase, RolloutPhase::Halted),
            other => panic!("{other:?}"),
        }
    }

    /// A device that comes up and then crash-loops within `min_ready_secs`
    /// fails its batch; one up that long passes.
    #[test]
    fn a_device_must_stay_up_for_min_ready_to_count() {
        let mut f = fleet(vec![]);
        f.rollout.policy.min_ready_secs = 10;
        f.rollout.policy.success_threshold_pct = 100;
        let report = |state| FleetReport {
            fleet_uid: "u".into(),
            desired_revision: 1,
            running_revision: 1,
            state,
            groups: 0,
            reason: None,
            message: None,
        };
        let mut tally = Tally::new(1);
        tally.apply("gw1", Some(&report(FleetPodState::Ready)), 1_000);
        let Step::Publish(admitted) = step(&f, &tally, 1_000) else {
            panic!("admits");
        };
        // Up for 5 s: not yet.
        assert_eq!(step(&admitted, &tally, 6_000), Step::Wait);
        // Then it crashes: the batch fails.
        tally.apply("gw1", Some(&report(FleetPodState::Failed)), 7_000);
        match step(&admitted, &tally, 7_000) {
            Step::Publish(next) => assert_eq!(next.rollout.state.phase, RolloutPhase::Halted),
            other => panic!("{other:?}"),
        }
        // One that stays up 10 s completes the rollout.
        let mut tally = Tally::new(1);
        tally.apply("gw2", Some(&report(FleetPodState::Ready)), 1_000);
        let Step::Publish(admitted) = step(&f, &tally, 1_000) else {
            panic!("admits");
        };
        match step(&admitted, &tally, 11_000) {
            Step::Publish(next) => assert_eq!(next.rollout.state.phase, RolloutPhase::Complete),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_message_is_clipped_so_devices_still_accept_the_record() {
        let mut m = "é".repeat(5_000);
        clip_message(&mut m);
        assert!(m.len() <= MAX_RECORD_MESSAGE);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn limits_round_up_and_never_exceed_the_group() {
        assert_eq!(Limit::Percent(1).of(10), 1);
        assert_eq!(Limit::Percent(50).of(3), 2);
        assert_eq!(Limit::Count(5).of(3), 3);
        assert_eq!(limit_for(&[3, 7, 7, 9], 2), 8);
        assert_eq!(limit_for(&[3, 7, 7, 9], 4), BUCKETS);
        assert_eq!(limit_for(&[3, 7], 0), 0);
    }
}
