//! On the device: which fleet deployments target it, which revision of
//! each it should run, and which fleet wins a pod name (layering). Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::selector::Selector;
use crate::model::{FleetDeployment, PodKey, Revision};

/// What one fleet deployment means for this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its selector does not match this device's labels.
    NotTargeted,
    Targeted(Targeted),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targeted {
    /// The revision this device should run: the target if the device is
    /// in a cohort, else the stable one; None: nothing yet (its batch has
    /// not started and there is no stable revision).
    pub want: Option<Revision>,
    /// Bit i: the device matches `rollout.policy.batches[i].selector`.
    pub groups: u64,
    /// Set when another source wins this fleet's pod name on this device:
    /// a spec sent to the node by name (`node`), or a fleet of higher
    /// priority (`namespace/name`).
    pub superseded_by: Option<String>,
}

/// The device's plan: a verdict per fleet, and the pods it runs from
/// fleets (pod → fleet and revision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub fleets: BTreeMap<PodKey, Verdict>,
    pub pods: BTreeMap<PodKey, (PodKey, Revision)>,
}

fn matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    // Selectors were validated when the record was decoded; one that does
    // not parse matches nothing.
    Selector::parse("selector", selector).is_ok_and(|s| s.matches(labels))
}

/// Whether the device (its `bucket` and `labels`) is in one of the fleet's
/// cohorts for the target revision.
pub fn in_cohort(fleet: &FleetDeployment, bucket: u16, labels: &BTreeMap<String, String>) -> bool {
    fleet
        .cohorts
        .iter()
        .any(|c| bucket < c.per_10k && matches(&c.selector, labels))
}

/// The plan for a device. `by_name`: pods sent to this node by name (the
/// bridge's per-node specs, `kedge apply --node`), which win over fleets.
pub fn plan<'a>(
    bucket: u16,
    labels: &BTreeMap<String, String>,
    fleets: impl IntoIterator<Item = &'a FleetDeployment>,
    by_name: &BTreeSet<PodKey>,
) -> Plan {
    let mut out = Plan::default();
    // pod → (priority, fleet key) of the winner so far.
    let mut winners: BTreeMap<PodKey, (i32, PodKey)> = BTreeMap::new();
    let mut targeted: Vec<&FleetDeployment> = Vec::new();
    for f in fleets {
        if !matches(&f.selector, labels) {
            out.fleets.insert(f.key(), Verdict::NotTargeted);
            continue;
        }
        let groups = f
            .rollout
            .policy
            .batches
            .iter()
            .take(64)
            .enumerate()
            .filter(|(_, b)| matches(&b.selector, labels))
            .fold(0u64, |acc, (i, _)| acc | (1 << i));
        let want = if in_cohort(f, bucket, labels) {
            Some(f.target())
        } else {
            f.stable.clone()
        };
        if want.is_some() {
            let pod = f.pod_key();
            let better = match winners.get(&pod) {
                None => true,
                // Higher priority wins; on a tie, the first fleet by name.
                Some((p, k)) => f.priority > *p || (f.priority == *p && f.key() < *k),
            };
            if better {
                winners.insert(pod, (f.priority, f.key()));
            }
        }
        out.fleets.insert(
            f.key(),
            Verdict::Targeted(Targeted {
                want,
                groups,
                superseded_by: None,
            }),
        );
        targeted.push(f);
    }
    for f in targeted {
        let pod = f.pod_key();
        let Some(Verdict::Targeted(t)) = out.fleets.get_mut(&f.key()) else {
            continue;
        };
        if by_name.contains(&pod) {
            t.superseded_by = Some("a pod sent to this node by name".into());
            continue;
        }
        match winners.get(&pod) {
            Some((_, winner)) if *winner == f.key() => {
                if let Some(want) = &t.want {
                    out.pods.insert(pod, (f.key(), want.clone()));
                }
            }
            Some((_, winner)) => t.superseded_by = Some(format!("fleet {winner}")),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, Cohort, Limit, Rollout};

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn fleet(name: &str, selector: &str, priority: i32, pod: &str) -> FleetDeployment {
        FleetDeployment {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            selector: selector.into(),
            priority,
            pod_name: pod.into(),
            revision: 2,
            spec_digest: digest('b'),
            cohorts: vec![Cohort::everyone()],
            stable: None,
            rollout: Rollout::default(),
        }
    }

    fn labels(s: &str) -> BTreeMap<String, String> {
        Selector::parse_labels("l", s).expect("labels")
    }

    fn key(name: &str) -> PodKey {
        PodKey::new("default", name)
    }

    #[test]
    fn a_matching_fleet_runs_its_target_and_others_do_not() {
        let f = fleet("b43", "building=b43", 0, "sensor");
        let p = plan(0, &labels("building=b43"), [&f], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")], (key("b43"), f.target()));
        let p = plan(0, &labels("building=b44"), [&f], &BTreeSet::new());
        assert!(p.pods.is_empty());
        assert_eq!(p.fleets[&key("b43")], Verdict::NotTargeted);
    }

    #[test]
    fn outside_the_cohorts_a_device_keeps_the_stable_revision_or_waits() {
        let mut f = fleet("f", "", 0, "sensor");
        f.cohorts = vec![
            Cohort {
                selector: "canary=true".into(),
                per_10k: 10_000,
            },
            Cohort {
                selector: String::new(),
                per_10k: 1_000,
            },
        ];
        // In by the canary group, and by the bucket.
        let p = plan(9_999, &labels("canary=true"), [&f], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")].1.revision, 2);
        let p = plan(999, &labels(""), [&f], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")].1.revision, 2);
        // Out: nothing yet…
        let p = plan(1_000, &labels(""), [&f], &BTreeSet::new());
        assert!(p.pods.is_empty());
        assert!(matches!(&p.fleets[&key("f")], Verdict::Targeted(t) if t.want.is_none()));
        // …or the stable revision.
        f.stable = Some(Revision {
            revision: 1,
            spec_digest: digest('a'),
        });
        let p = plan(1_000, &labels(""), [&f], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")].1.revision, 1);
    }

    #[test]
    fn the_higher_priority_wins_a_pod_name_and_the_loser_says_so() {
        let low = fleet("low", "", 1, "sensor");
        let high = fleet("high", "building=b43", 10, "sensor");
        let other = fleet("other", "", 0, "relay");
        let p = plan(
            0,
            &labels("building=b43"),
            [&low, &high, &other],
            &BTreeSet::new(),
        );
        assert_eq!(p.pods[&key("sensor")].0, key("high"));
        assert_eq!(p.pods[&key("relay")].0, key("other"));
        match &p.fleets[&key("low")] {
            Verdict::Targeted(t) => {
                assert_eq!(t.superseded_by.as_deref(), Some("fleet default/high"))
            }
            v => panic!("{v:?}"),
        }
        // The label goes: the lower layer takes over.
        let p = plan(0, &labels(""), [&low, &high, &other], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")].0, key("low"));
        // Equal priorities: the first by name, whatever the order read.
        let a = fleet("a", "", 5, "x");
        let b = fleet("b", "", 5, "x");
        for order in [[&a, &b], [&b, &a]] {
            let p = plan(0, &labels(""), order, &BTreeSet::new());
            assert_eq!(p.pods[&key("x")].0, key("a"));
        }
    }

    #[test]
    fn a_waiting_fleet_does_not_displace_a_running_one() {
        let low = fleet("low", "", 1, "sensor");
        let mut high = fleet("high", "", 10, "sensor");
        high.cohorts.clear();
        let p = plan(0, &labels(""), [&low, &high], &BTreeSet::new());
        assert_eq!(p.pods[&key("sensor")].0, key("low"));
    }

    #[test]
    fn a_pod_sent_by_name_wins_over_every_fleet() {
        let f = fleet("f", "", 100, "sensor");
        let by_name = BTreeSet::from([key("sensor")]);
        let p = plan(0, &labels(""), [&f], &by_name);
        assert!(p.pods.is_empty());
        assert!(matches!(&p.fleets[&key("f")], Verdict::Targeted(t) if t.superseded_by.is_some()));
    }

    #[test]
    fn groups_name_the_batches_a_device_is_in() {
        let mut f = fleet("f", "", 0, "sensor");
        f.rollout.policy.batches = vec![
            Batch {
                selector: "canary=true".into(),
                limit: Limit::Percent(100),
            },
            Batch {
                selector: String::new(),
                limit: Limit::Percent(50),
            },
        ];
        let p = plan(0, &labels("canary=true"), [&f], &BTreeSet::new());
        assert!(matches!(&p.fleets[&key("f")], Verdict::Targeted(t) if t.groups == 0b11));
        let p = plan(0, &labels(""), [&f], &BTreeSet::new());
        assert!(matches!(&p.fleets[&key("f")], Verdict::Targeted(t) if t.groups == 0b10));
    }
}
