//! What the controller does with an incoming desired spec or tombstone, as a
//! pure function: the generation and uid rules in one place.

use crate::model::{EnvVar, PodSource, PodSpec, VolumeSource};

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
    /// A newer generation that changes only what a kubelet changes on a
    /// running pod: its labels and the files of its configMap, secret,
    /// downwardAPI or projected volumes (the kubelet's atomic swap), and
    /// env values read from ConfigMaps and Secrets, which the kubelet
    /// reads only when a container starts. The containers keep running; the
    /// next start of one (a restart, a new pod) gets the new env.
    UpdateInPlace,
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
            } else if cur.uid == new.uid
                && new.generation > cur.generation
                && same_but_files(cur, new)
            {
                Decision::UpdateInPlace
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

/// Whether two specs differ in nothing but their generation, their labels,
/// the contents of their file volumes (same volumes, same names, same
/// order; files added, removed or changed) and the env variables read from
/// ConfigMaps and Secrets (values changed, variables added or removed; the
/// other variables the same, in the same order).
fn same_but_files(a: &PodSpec, b: &PodSpec) -> bool {
    a.volumes.len() == b.volumes.len() && {
        let mut a = a.clone();
        a.generation = b.generation;
        a.labels = b.labels.clone();
        for (va, vb) in a.volumes.iter_mut().zip(&b.volumes) {
            if let (VolumeSource::Files { .. }, VolumeSource::Files { .. }) =
                (&va.source, &vb.source)
            {
                va.source = vb.source.clone();
            }
        }
        let (ca, cb) = (a.containers.len(), a.init_containers.len());
        if ca != b.containers.len() || cb != b.init_containers.len() {
            return false;
        }
        let b_all = b.containers.iter().chain(&b.init_containers);
        for (x, y) in a
            .containers
            .iter_mut()
            .chain(&mut a.init_containers)
            .zip(b_all)
        {
            let own = |env: &[EnvVar]| -> Vec<EnvVar> {
                env.iter().filter(|e| !e.from_object).cloned().collect()
            };
            if own(&x.env) == own(&y.env) {
                x.env = y.env.clone();
            }
        }
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
        changed.host_network = !cur.host_network;
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

    /// A ConfigMap or Secret that changed changes only the files of its
    /// volume, a label change the pod's labels (and its downwardAPI files):
    /// updated in place. Anything else that changed with them, or a volume
    /// that changed kind, replaces the pod.
    #[test]
    fn changed_files_are_updated_in_place_and_anything_else_replaces() {
        let with_files = |generation, text: &str| {
            let mut s = spec("u1", generation);
            s.volumes.push(Volume {
                name: "config".into(),
                source: VolumeSource::Files {
                    files: vec![("mode".into(), text.as_bytes().to_vec())],
                    default_mode: 0o644,
                },
            });
            s
        };
        let m = PodSource::Mqtt;
        let cur = with_files(3, "fast");
        let changed = with_files(4, "slow");
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(changed.clone(), m)),
            Decision::UpdateInPlace
        );
        let mut more = changed.clone();
        if let VolumeSource::Files { files, .. } = &mut more.volumes[0].source {
            files.push(("extra".into(), b"x".to_vec()));
        }
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(more, m)),
            Decision::UpdateInPlace,
            "a key added to the ConfigMap"
        );
        assert_eq!(
            decide(
                Some((&cur, m)),
                false,
                &Incoming::Apply(with_files(4, "fast"), m)
            ),
            Decision::Adopt
        );
        assert_eq!(
            decide(
                Some((&cur, m)),
                false,
                &Incoming::Apply(with_files(2, "slow"), m)
            ),
            Decision::Ignore("stale generation 2 (applied: 3)".into())
        );
        let mut relabelled = changed.clone();
        relabelled.labels.insert("x".into(), "y".into());
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(relabelled, m)),
            Decision::UpdateInPlace
        );
        let mut restarted = changed.clone();
        restarted.restart_policy = RestartPolicy::Never;
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(restarted, m)),
            Decision::Replace
        );
        let mut other_kind = changed;
        other_kind.volumes[0].source = VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: None,
        };
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(other_kind, m)),
            Decision::Replace
        );
        let mut new_uid = with_files(4, "slow");
        new_uid.uid = "u2".into();
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(new_uid, m)),
            Decision::Replace
        );
    }

    /// Env values read from a ConfigMap or Secret that changed are updated
    /// in place (the next start reads them); a literal value that changed,
    /// or one that turned into a reference, replaces the pod.
    #[test]
    fn changed_env_from_objects_is_updated_in_place_and_a_literal_replaces() {
        let with_env = |generation, env: Vec<EnvVar>| {
            let mut s = spec("u1", generation);
            let mut app = crate::model::samples::container("app");
            app.env = env;
            s.containers = vec![app];
            s
        };
        let m = PodSource::Mqtt;
        let cur = with_env(
            3,
            vec![
                EnvVar::from_object("LEVEL", "debug"),
                EnvVar::new("MODE", "edge"),
            ],
        );
        let update = |env| {
            decide(
                Some((&cur, m)),
                false,
                &Incoming::Apply(with_env(4, env), m),
            )
        };
        assert_eq!(
            update(vec![
                EnvVar::from_object("LEVEL", "info"),
                EnvVar::new("MODE", "edge"),
            ]),
            Decision::UpdateInPlace
        );
        assert_eq!(
            update(vec![
                EnvVar::from_object("LEVEL", "info"),
                EnvVar::from_object("EXTRA", "1"),
                EnvVar::new("MODE", "edge"),
            ]),
            Decision::UpdateInPlace,
            "a key added to an envFrom ConfigMap"
        );
        assert_eq!(
            update(vec![EnvVar::new("MODE", "edge")]),
            Decision::UpdateInPlace,
            "an optional key gone"
        );
        assert_eq!(
            update(vec![
                EnvVar::from_object("LEVEL", "debug"),
                EnvVar::new("MODE", "cloud"),
            ]),
            Decision::Replace,
            "a literal value changed"
        );
        assert_eq!(
            update(vec![
                EnvVar::new("LEVEL", "debug"),
                EnvVar::new("MODE", "edge"),
            ]),
            Decision::Replace,
            "a reference turned literal"
        );
        let mut image = with_env(4, vec![EnvVar::from_object("LEVEL", "info")]);
        image.containers[0].image = "other".into();
        assert_eq!(
            decide(Some((&cur, m)), false, &Incoming::Apply(image, m)),
            Decision::Replace
        );
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
        newer.termination_grace_period_secs += 1;
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
