//! Local storage limits as the kubelet's eviction manager enforces them
//! (`localStorageEviction`): a disk-backed emptyDir over its `sizeLimit`, a
//! pod over the sum of its containers' `limits.ephemeral-storage`, or a
//! container whose writable layer and logs are over its own limit evicts
//! the pod: its containers are stopped, its phase turns `Failed` with the
//! reason `Evicted` and the kubelet's message.
//!
//! Pure: the supervisor measures (`runtime::disk_usage`) and asks `check`.

use crate::model::{Container, PodSpec, VolumeSource};

/// The pod's status reason and the Warning event's, as the kubelet's.
pub const REASON: &str = "Evicted";

/// What a pod holds on the node's disk, as measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStorage {
    /// Each disk-backed emptyDir's bytes, by volume name.
    pub volumes: Vec<(String, u64)>,
    /// Each container's writable layer and logs, by name (init containers
    /// too); a container without a writable layer (not running, a Wasm
    /// module) has 0 for it.
    pub containers: Vec<ContainerStorage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStorage {
    pub name: String,
    pub writable_layer_bytes: u64,
    pub log_bytes: u64,
}

impl ContainerStorage {
    fn used(&self) -> u64 {
        self.writable_layer_bytes.saturating_add(self.log_bytes)
    }
}

/// Whether a pod has a limit to watch: a disk-backed emptyDir with a
/// `sizeLimit`, or a container with `limits.ephemeral-storage`. Pods
/// without are never measured.
pub fn has_storage_limits(spec: &PodSpec) -> bool {
    !limited_volumes(spec).is_empty() || pod_limit(spec).is_some()
}

/// The disk-backed emptyDirs to measure: all of them once the pod has an
/// ephemeral-storage limit (they count in its total), else those with a
/// `sizeLimit`. A Memory emptyDir is a tmpfs of its size: it cannot grow
/// past it, and it is not on the disk.
pub fn volumes_to_measure(spec: &PodSpec) -> Vec<&str> {
    let all = pod_limit(spec).is_some();
    spec.volumes
        .iter()
        .filter_map(|v| match v.source {
            VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes,
            } if all || size_limit_bytes.is_some_and(|b| b > 0) => Some(v.name.as_str()),
            _ => None,
        })
        .collect()
}

fn limited_volumes(spec: &PodSpec) -> Vec<(&str, u64)> {
    spec.volumes
        .iter()
        .filter_map(|v| match v.source {
            VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: Some(limit),
            } if limit > 0 => Some((v.name.as_str(), limit)),
            _ => None,
        })
        .collect()
}

/// The pod's ephemeral-storage limit as the kubelet's `PodLimits` makes
/// it: the app containers' and sidecars' limits summed, or the largest
/// init container's (with the sidecars started before it) when that is
/// more; None when no container sets one.
pub fn pod_limit(spec: &PodSpec) -> Option<u64> {
    let limit = |c: &Container| c.resources.ephemeral_storage_limit_bytes;
    let any = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .any(|c| limit(c).is_some());
    if !any {
        return None;
    }
    let mut sidecars: u64 = 0;
    let mut init_max: u64 = 0;
    for c in &spec.init_containers {
        let own = limit(c).unwrap_or(0);
        if c.is_sidecar() {
            sidecars = sidecars.saturating_add(own);
        } else {
            init_max = init_max.max(sidecars.saturating_add(own));
        }
    }
    let apps = spec
        .containers
        .iter()
        .fold(sidecars, |sum, c| sum.saturating_add(limit(c).unwrap_or(0)));
    Some(apps.max(init_max))
}

/// The kubelet's eviction message for the first limit `usage` exceeds, in
/// its order: an emptyDir, the pod's total, an app container; None when
/// every limit holds (a usage equal to its limit holds).
pub fn check(spec: &PodSpec, usage: &PodStorage) -> Option<String> {
    let used_by = |name: &str| {
        usage
            .volumes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
    };
    for (name, limit) in limited_volumes(spec) {
        if used_by(name).is_some_and(|used| used > limit) {
            return Some(format!(
                "Usage of EmptyDir volume {name:?} exceeds the limit {:?}. ",
                quantity(limit)
            ));
        }
    }
    if let Some(limit) = pod_limit(spec) {
        let volumes = volumes_to_measure(spec)
            .into_iter()
            .filter_map(used_by)
            .fold(0u64, u64::saturating_add);
        let total = usage
            .containers
            .iter()
            .map(ContainerStorage::used)
            .fold(volumes, u64::saturating_add);
        if total > limit {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                quantity(limit)
            ));
        }
    }
    for c in &spec.containers {
        let Some(limit) = c.resources.ephemeral_storage_limit_bytes.filter(|l| *l > 0) else {
            continue;
        };
        let used = usage
            .containers
            .iter()
            .find(|u| u.name == c.name)
            .map_or(0, ContainerStorage::used);
        if used > limit {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {:?}. ",
                c.name,
                quantity(limit)
            ));
        }
    }
    None
}

/// Bytes as a Kubernetes quantity in its canonical form, as the kubelet
/// prints a limit: a whole number of the largest binary unit (`1Gi`,
/// `1536Mi`), else of the largest decimal one (`1G`, `500M`), else plain
/// bytes. (A limit written `1073741824` shows as `1Gi`: the spec keeps
/// bytes, not how they were written.)
pub fn quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    const DECIMAL: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    for (base, units) in [(1024u64, BINARY), (1000, DECIMAL)] {
        let mut n = bytes;
        let mut unit = None;
        for u in units {
            if !n.is_multiple_of(base) {
                break;
            }
            n /= base;
            unit = Some(u);
        }
        if let Some(u) = unit {
            return format!("{n}{u}");
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RestartPolicy, Volume};

    fn spec() -> PodSpec {
        let mut s = crate::model::samples::spec("p", "u1", 1, RestartPolicy::Always);
        s.containers = vec![
            crate::model::samples::container("app"),
            crate::model::samples::container("helper"),
        ];
        s
    }

    fn empty_dir(name: &str, memory: bool, limit: Option<u64>) -> Volume {
        Volume {
            name: name.into(),
            source: VolumeSource::EmptyDir {
                memory,
                size_limit_bytes: limit,
            },
        }
    }

    fn container(name: &str, writable: u64, logs: u64) -> ContainerStorage {
        ContainerStorage {
            name: name.into(),
            writable_layer_bytes: writable,
            log_bytes: logs,
        }
    }

    #[test]
    fn quantities_print_as_the_kubelet_prints_limits() {
        assert_eq!(quantity(1 << 30), "1Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(1_000_000_000), "1G");
        assert_eq!(quantity(500_000_000), "500M");
        assert_eq!(quantity(1024), "1Ki");
        assert_eq!(quantity(1500), "1500");
        assert_eq!(quantity(1), "1");
        assert_eq!(quantity(0), "0");
    }

    #[test]
    fn pods_without_limits_are_not_measured() {
        let mut s = spec();
        s.volumes = vec![
            empty_dir("plain", false, None),
            empty_dir("ram", true, Some(1 << 20)),
        ];
        assert!(!has_storage_limits(&s));
        assert!(volumes_to_measure(&s).is_empty());
        s.volumes.push(empty_dir("cache", false, Some(1 << 20)));
        assert!(has_storage_limits(&s));
        assert_eq!(volumes_to_measure(&s), ["cache"]);
        // With a container limit every disk emptyDir counts in the total.
        s.containers[0].resources.ephemeral_storage_limit_bytes = Some(1 << 30);
        assert_eq!(volumes_to_measure(&s), ["plain", "cache"]);
    }

    #[test]
    fn an_empty_dir_over_its_size_limit_evicts_with_the_kubelets_message() {
        let mut s = spec();
        s.volumes = vec![empty_dir("cache", false, Some(1 << 30))];
        let at = |b| PodStorage {
            volumes: vec![("cache".into(), b)],
            containers: vec![],
        };
        assert_eq!(check(&s, &at(1 << 30)), None, "equal to the limit holds");
        assert_eq!(
            check(&s, &at((1 << 30) + 1)).as_deref(),
            Some("Usage of EmptyDir volume \"cache\" exceeds the limit \"1Gi\". ")
        );
        // Not measured (the directory is gone): nothing to say.
        assert_eq!(check(&s, &PodStorage::default()), None);
    }

    #[test]
    fn a_container_over_its_limit_evicts_counting_its_writable_layer_and_logs() {
        let mut s = spec();
        s.containers[1].resources.ephemeral_storage_limit_bytes = Some(100 << 20);
        // The pod's limit is the helper's alone (the app sets none): the
        // app's usage counts toward it, as on a kubelet.
        let usage = PodStorage {
            volumes: vec![],
            containers: vec![
                container("app", 10, 10),
                container("helper", 61 << 20, 40 << 20),
            ],
        };
        assert_eq!(
            check(&s, &usage).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 100Mi. ")
        );
        s.containers[0].resources.ephemeral_storage_limit_bytes = Some(1 << 30);
        assert_eq!(
            check(&s, &usage).as_deref(),
            Some("Container helper exceeded its local ephemeral storage limit \"100Mi\". ")
        );
        let under = PodStorage {
            volumes: vec![],
            containers: vec![
                container("app", 10, 10),
                container("helper", 50 << 20, 50 << 20),
            ],
        };
        assert_eq!(check(&s, &under), None);
    }

    #[test]
    fn the_pods_total_counts_its_disk_empty_dirs_and_every_container() {
        let mut s = spec();
        s.volumes = vec![
            empty_dir("scratch", false, None),
            empty_dir("ram", true, None),
        ];
        s.containers[0].resources.ephemeral_storage_limit_bytes = Some(1 << 20);
        s.containers[1].resources.ephemeral_storage_limit_bytes = Some(1 << 20);
        let usage = PodStorage {
            volumes: vec![("scratch".into(), (1 << 20) + 1), ("ram".into(), 1 << 30)],
            containers: vec![
                container("app", 1 << 19, 0),
                container("helper", 0, 1 << 19),
            ],
        };
        assert_eq!(
            check(&s, &usage).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ")
        );
        let usage = PodStorage {
            volumes: vec![("scratch".into(), 1 << 20), ("ram".into(), 1 << 30)],
            ..usage
        };
        assert_eq!(
            check(&s, &usage),
            None,
            "a Memory emptyDir is not on the disk"
        );
    }

    #[test]
    fn an_empty_dir_is_checked_before_the_pod_and_the_pod_before_a_container() {
        let mut s = spec();
        s.volumes = vec![empty_dir("cache", false, Some(1024))];
        s.containers[0].resources.ephemeral_storage_limit_bytes = Some(1024);
        let usage = PodStorage {
            volumes: vec![("cache".into(), 4096)],
            containers: vec![container("app", 4096, 0)],
        };
        assert!(check(&s, &usage).is_some_and(|m| m.starts_with("Usage of EmptyDir volume")));
        let usage = PodStorage {
            volumes: vec![("cache".into(), 10)],
            ..usage
        };
        assert!(check(&s, &usage).is_some_and(|m| m.starts_with("Pod ephemeral")));
    }

    #[test]
    fn the_pod_limit_takes_the_largest_init_container_with_its_sidecars() {
        let mut s = spec();
        assert_eq!(pod_limit(&s), None);
        s.containers[0].resources.ephemeral_storage_limit_bytes = Some(100);
        assert_eq!(pod_limit(&s), Some(100));
        let mut sidecar = crate::model::samples::container("proxy");
        sidecar.restart_policy = Some(RestartPolicy::Always);
        sidecar.resources.ephemeral_storage_limit_bytes = Some(50);
        let mut setup = crate::model::samples::container("setup");
        setup.resources.ephemeral_storage_limit_bytes = Some(120);
        s.init_containers = vec![sidecar, setup];
        // Apps and sidecars: 150; the init container with the sidecar
        // before it: 170.
        assert_eq!(pod_limit(&s), Some(170));
        s.init_containers[1].resources.ephemeral_storage_limit_bytes = Some(90);
        assert_eq!(pod_limit(&s), Some(150));
    }
}
