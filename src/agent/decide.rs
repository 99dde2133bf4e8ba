//! What the controller does with an incoming desired spec or tombstone, as a
//! pure function: the generation and uid rules in one place.

use crate::model::{PodSource, PodSpec};

/// A change to the desired set.
// Built once per message and consumed at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Apply(PodSpec, PodSource),
    Delete(PodSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No pod of that name runs: start it.
    Create,
    /// A different uid or a newer generation: stop the old pod, start this.
    Replace,
    /// A newer generation of the same spec (a sender that could not compare
    /// with what it sent before: a sealed spec read back by a restarted
    /// bridge): record the generation, keep the pod running.
    Adopt,
    /// Stop the pod and forget it.
    Delete,
    /// A tombstone for a pod that never ran because its spec was refused:
    /// remove the Failed status the refusal left.
    ClearRefused,
    /// Nothing to do (already applied, stale, or nothing to delete).
    Ignore(String),
    /// Refused; the reason becomes an event.
    Reject(String),
}

/// `current` is what the agent has for the same namespace/name;
/// `refused_status` says a refusal left a status for that name.
pub fn decide(
    current: Option<(&PodSpec, PodSource)>,
    refused_status: bool,
    incoming: &Incoming,
) -> Decision {
    match (current, incoming) {
        (None, Incoming::Apply(..)) => Decision::Create,
        (None, Incoming::Delete(PodSource::Mqtt)) if refused_status => Decision::ClearRefused,
        (None, Incoming::Delete(_)) => Decision::Ignore("no such pod".into()),
        // A pod sent to this node by name wins over a fleet's of that name.
        (Some((_, PodSource::Fleet)), Incoming::Apply(_, PodSource::Mqtt)) => Decision::Replace,
        (Some((_, cur_src)), Incoming::Apply(_, src)) if cur_src != *src => {
            Decision::Reject(format!(
                "a pod of this name already comes from {}; delete it there first",
                source_name(cur_src)
            ))
        }
        (Some((cur, _)), Incoming::Apply(new, _)) => {
            // A new uid is a new pod, whatever its generation.
            if cur.uid == new.uid
                && new.generation > cur.generation
                && same_but_generation(cur, new)
            {
                Decision::Adopt
            } else if cur.uid != new.uid || new.generation > cur.generation {
                Decision::Replace
            } else if new.generation == cur.generation {
                Decision::Ignore(format!("generation {} already applied", new.generation))
            } else {
                Decision::Ignore(format!(
                    "stale generation {} (applied: {})",
                    new.generation, cur.generation
                ))
            }
        }
        (Some((_, cur_src)), Incoming::Delete(src)) if cur_src != *src => {
            Decision::Ignore(format!(
                "the pod comes from {}, not {}",
                source_name(cur_src),
                source_name(*src)
            ))
        }
        (Some(_), Incoming::Delete(_)) => Decision::Delete,
    }
}

/// Whether two specs differ in nothing but their generation.
fn same_but_generation(a: &PodSpec, b: &PodSpec) -> bool {
    a.generation != b.generation && {
        let mut a = a.clone();
        a.generation = b.generation;
        a == *b
    }
}

fn source_name(s: PodSource) -> &'static str {
    match s {
        PodSource::Mqtt => "the broker",
        PodSource::File => "the static manifests directory",
        PodSource::Fleet => "a fleet deployment",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn spec(uid: &str, generation: u64) -> PodSpec {
        crate::model::samples::spec("p", uid, generation, RestartPolicy::Always)
    }

    #[test]
    fn a_newer_generation_of_the_same_spec_is_adopted_and_a_changed_one_replaces() {
        let cur = spec("u1", 3);
        let mqtt = PodSource::Mqtt;
        let same_newer = Incoming::Apply(spec("u1", 4), mqtt);
        assert_eq!(
            decide(Some((&cur, mqtt)), false, &same_newer),
            Decision::Adopt
        );
        let mut changed = spec("u1", 4);
        changed.labels.insert("x".into(), "y".into());
        assert_eq!(
            decide(Some((&cur, mqtt)), false, &Incoming::Apply(changed, mqtt)),
            Decision::Replace
        );
        assert_eq!(
            decide(
                Some((&cur, mqtt)),
                false,
                &Incoming::Apply(spec("u2", 4), mqtt)
            ),
            Decision::Replace,
            "a new uid is a new pod"
        );
        assert!(matches!(
            decide(
                Some((&cur, mqtt)),
                false,
                &Incoming::Apply(spec("u1", 3), mqtt)
            ),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn a_pod_sent_by_name_replaces_a_fleet_pod_and_not_the_reverse() {
        let cur = spec("u1", 3);
        assert_eq!(
            decide(
                Some((&cur, PodSource::Fleet)),
                false,
                &Incoming::Apply(spec("u2", 1), PodSource::Mqtt)
            ),
            Decision::Replace
        );
        assert!(matches!(
            decide(
                Some((&cur, PodSource::Mqtt)),
                false,
                &Incoming::Apply(spec("u2", 9), PodSource::Fleet)
            ),
            Decision::Reject(_)
        ));
        assert!(matches!(
            decide(
                Some((&cur, PodSource::Fleet)),
                false,
                &Incoming::Delete(PodSource::Mqtt)
            ),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn generation_and_uid_rules() {
        let cur = spec("u1", 3);
        let m = PodSource::Mqtt;
        assert_eq!(
            decide(None, false, &Incoming::Apply(spec("u1", 1), m)),
            Decision::Create
        );
        let mut newer = spec("u1", 4);
        newer.labels.insert("changed".into(), "yes".into());
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(newer, m)),
            Decision::Replace
        );
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(spec("u1", 3), m)),
            Decision::Ignore("generation 3 already applied".into())
        );
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(spec("u1", 2), m)),
            Decision::Ignore("stale generation 2 (applied: 3)".into())
        );
        // A new uid is a new pod, whatever its generation.
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(spec("u2", 1), m)),
            Decision::Replace
        );
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Delete(m)),
            Decision::Delete
        );
        assert!(matches!(
            decide(None, false, &Incoming::Delete(m)),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn a_tombstone_clears_what_a_refusal_left() {
        let m = PodSource::Mqtt;
        assert_eq!(
            decide(None, true, &Incoming::Delete(m)),
            Decision::ClearRefused
        );
        // A running pod is deleted as usual; static pods never leave a
        // refused status to clear through the broker.
        let cur = spec("u1", 1);
        assert_eq!(
            decide(Some((&cur, m)), true, &Incoming::Delete(m)),
            Decision::Delete
        );
        assert!(matches!(
            decide(None, true, &Incoming::Delete(PodSource::File)),
            Decision::Ignore(_)
        ));
        assert_eq!(
            decide(None, true, &Incoming::Apply(spec("u1", 1), m)),
            Decision::Create
        );
    }

    #[test]
    fn sources_do_not_overwrite_each_other() {
        let cur = spec("u1", 1);
        assert!(matches!(
            decide(
                Some((&cur, PodSource::File)),
                false,
                &Incoming::Apply(spec("u9", 1), PodSource::Mqtt)
            ),
            Decision::Reject(_)
        ));
        assert!(matches!(
            decide(
                Some((&cur, PodSource::File)),
                false,
                &Incoming::Delete(PodSource::Mqtt)
            ),
            Decision::Ignore(_)
        ));
        assert_eq!(
            decide(
                Some((&cur, PodSource::File)),
                false,
                &Incoming::Delete(PodSource::File)
            ),
            Decision::Delete
        );
    }
}
