//! Edge pod specs → CRI v1 configs, as the kubelet builds them. Pure: no I/O,
//! unit-tested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use crate::model::{
    Container, MountPropagation, PodSpec, SeLinuxOptions, SecurityProfile, VolumeSource,
};
use crate::runtime::RuntimeError;

/// Labels every kedge sandbox and container carries; adoption after an
/// agent restart finds its workloads by them.
pub const LABEL_MANAGED: &str = "kedge.io/managed";
pub const LABEL_NODE: &str = "kedge.io/node";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
/// Annotation with the container's restart count when it was created.
pub const ANNOTATION_RESTART: &str = "io.kubernetes.container.restartCount";

/// The kubelet's CFS period.
const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MIN_QUOTA: i64 = 1_000;

/// The node's rules for security profiles, as the kubelet's flags give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSettings {
    /// A container without a seccompProfile gets RuntimeDefault (the
    /// kubelet's `--seccomp-default`; config `cri.seccomp_default`), else
    /// Unconfined.
    pub seccomp_default: bool,
    /// Where Localhost seccomp profiles are (the kubelet's
    /// `{root-dir}/seccomp`): `{data_dir}/seccomp`.
    pub seccomp_root: PathBuf,
}

/// The seccomp profile a container gets, as the kubelet's
/// `getSeccompProfile`: its own (the converter merged the pod's into it),
/// else the node's default.
pub fn seccomp_profile(
    profile: Option<&SecurityProfile>,
    settings: &ProfileSettings,
) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    let (profile_type, localhost_ref) = match profile {
        Some(SecurityProfile::RuntimeDefault) => (ProfileType::RuntimeDefault, String::new()),
        Some(SecurityProfile::Unconfined) => (ProfileType::Unconfined, String::new()),
        Some(SecurityProfile::Localhost(name)) => (
            ProfileType::Localhost,
            settings.seccomp_root.join(name).display().to_string(),
        ),
        None if settings.seccomp_default => (ProfileType::RuntimeDefault, String::new()),
        None => (ProfileType::Unconfined, String::new()),
    };
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    }
}

/// The AppArmor profile a container gets, as the kubelet's
/// `getAppArmorProfile`: none when unset (the runtime applies its default),
/// with the deprecated string form for runtimes that only read that.
pub fn app_armor_profile(
    profile: Option<&SecurityProfile>,
) -> (Option<cri::SecurityProfile>, String) {
    use cri::security_profile::ProfileType;
    let Some(profile) = profile else {
        return (None, String::new());
    };
    let (profile_type, localhost_ref, deprecated) = match profile {
        SecurityProfile::RuntimeDefault => (
            ProfileType::RuntimeDefault,
            String::new(),
            "runtime/default".to_string(),
        ),
        SecurityProfile::Unconfined => (
            ProfileType::Unconfined,
            String::new(),
            "unconfined".to_string(),
        ),
        SecurityProfile::Localhost(name) => (
            ProfileType::Localhost,
            name.clone(),
            format!("localhost/{name}"),
        ),
    };
    (
        Some(cri::SecurityProfile {
            profile_type: profile_type as i32,
            localhost_ref,
        }),
        deprecated,
    )
}

/// An SELinux label as the CRI takes it.
fn se_linux(o: &SeLinuxOptions) -> cri::SeLinuxOption {
    cri::SeLinuxOption {
        user: o.user.clone(),
        role: o.role.clone(),
        r#type: o.r#type.clone(),
        level: o.level.clone(),
    }
}

/// Whether the runtime relabels a volume for the container that mounts it
/// (CRI `selinux_relabel`; nothing happens on a node without SELinux), as
/// the kubelet asks for the volumes it manages: emptyDir, the volumes of
/// files and a writable claim (a local volume's rule); never a hostPath.
fn relabel(spec: &PodSpec, volume: &str) -> bool {
    spec.volumes.iter().any(|v| {
        v.name == volume
            && match v.source {
                VolumeSource::EmptyDir { .. } | VolumeSource::Files { .. } => true,
                VolumeSource::Claim { read_only, .. } => !read_only,
                VolumeSource::HostPath { .. } => false,
            }
    })
}

/// The pod's cgroup (cgroupfs path) under `parent`.
pub fn pod_cgroup(parent: &str, uid: &str) -> String {
    format!("{}/pod{uid}", parent.trim_end_matches('/'))
}

/// The directory CRI writes the pod's container logs under.
pub fn log_directory(pod_dir: &Path) -> PathBuf {
    pod_dir.join("logs")
}

/// The log path of a container run, relative to [`log_directory`]; the
/// same file `runtime::logs::container_log_path` names.
pub fn log_path(container: &str, restart_count: u32) -> String {
    format!("{container}/{restart_count}.log")
}

fn pod_labels(spec: &PodSpec, node: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_NODE.into(), node.into());
    labels.insert(LABEL_POD_UID.into(), spec.uid.clone());
    labels.insert(LABEL_POD_NAME.into(), spec.name.clone());
    labels.insert(LABEL_POD_NAMESPACE.into(), spec.namespace.clone());
    labels
}

fn protocol(p: &str) -> i32 {
    match p.to_ascii_uppercase().as_str() {
        "UDP" => cri::Protocol::Udp as i32,
        "SCTP" => cri::Protocol::Sctp as i32,
        _ => cri::Protocol::Tcp as i32,
    }
}

/// The sandbox of a pod: its network (CNI or the host's), hostname, log
/// directory, host ports, labels and cgroup.
/// The kubelet's `verifyRunAsNonRoot` for a container without a
/// `runAsUser`: the image's user (`uid`, else `username`, from CRI
/// `ImageStatus`; neither: root) must not be root, and a user by name
/// cannot be checked. The error becomes the container's
/// `CreateContainerConfigError`.
pub fn verify_run_as_non_root(
    uid: Option<i64>,
    username: &str,
    pod: &str,
    container: &str,
) -> Result<(), String> {
    match (uid, username) {
        (Some(0), _) | (None, "") => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})"
        )),
        (None, name) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: {pod:?}, container: {container})"
        )),
        (Some(_), _) => Ok(()),
    }
}

/// The pod's namespaces as the kubelet chooses them: the node's network,
/// PID and IPC namespaces with `hostNetwork`, `hostPID` and `hostIPC`; else
/// the pod's network and IPC namespaces, and each container's own PID
/// namespace unless `shareProcessNamespace` (the sandbox's).
pub fn namespaces(spec: &PodSpec) -> cri::NamespaceOption {
    use cri::NamespaceMode::{Container, Node, Pod};
    let security = &spec.security;
    let pick = |node: bool, otherwise: cri::NamespaceMode| if node { Node } else { otherwise };
    let pid_otherwise = if security.share_process_namespace {
        Pod
    } else {
        Container
    };
    cri::NamespaceOption {
        network: pick(spec.host_network, Pod) as i32,
        pid: pick(security.host_pid, pid_otherwise) as i32,
        ipc: pick(security.host_ipc, Pod) as i32,
        ..Default::default()
    }
}

/// The groups every process of the pod gets besides its own:
/// `supplementalGroups`, then `fsGroup` (the kubelet adds it the same way).
pub fn supplemental_groups(spec: &PodSpec) -> Vec<i64> {
    let security = &spec.security;
    let mut groups = security.supplemental_groups.clone();
    groups.extend(security.fs_group);
    groups
}

pub fn sandbox_config(
    spec: &PodSpec,
    pod_dir: &Path,
    cgroup_parent: &str,
    node: &str,
) -> cri::PodSandboxConfig {
    let port_mappings = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter())
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| {
            p.host_port.map(|host_port| cri::PortMapping {
                protocol: protocol(&p.protocol),
                container_port: i32::from(p.container_port),
                host_port: i32::from(host_port),
                host_ip: String::new(),
            })
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        // runc refuses a hostname without a private UTS namespace, and the
        // kubelet leaves it empty for hostNetwork pods too.
        hostname: if spec.host_network {
            String::new()
        } else {
            spec.name.clone()
        },
        log_directory: log_directory(pod_dir).display().to_string(),
        port_mappings,
        labels: pod_labels(spec, node),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(cgroup_parent, &spec.uid),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(spec)),
                supplemental_groups: supplemental_groups(spec),
                selinux_options: spec.security.se_linux_options.as_ref().map(se_linux),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests and limits → CFS shares and quota and a memory limit, with the
/// kubelet's formulas (a limit without a request requests the limit).
pub fn linux_resources(r: &crate::model::Resources) -> cri::LinuxContainerResources {
    let request = r.cpu_request_millis.or(r.cpu_limit_millis);
    let cpu_shares = match request {
        Some(m) => millis_times(m, 1024).max(MIN_SHARES),
        None => MIN_SHARES,
    };
    let (cpu_period, cpu_quota) = match r.cpu_limit_millis {
        Some(m) => (CPU_PERIOD, millis_times(m, CPU_PERIOD).max(MIN_QUOTA)),
        None => (0, 0),
    };
    cri::LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: r
            .memory_limit_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
            .unwrap_or(0),
        ..Default::default()
    }
}

/// `millis * factor / 1000` without wrapping (validated specs stay far
/// below the limit; this only keeps a bad value from turning negative).
fn millis_times(millis: u64, factor: i64) -> i64 {
    let v = i128::from(millis) * i128::from(factor) / 1000;
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub use crate::runtime::volumes::volume_host_path;

/// The container's config: process, mounts, log file, resources and
/// security context. (`apparmor_profile` is deprecated in the CRI API; the
/// kubelet still sets it for runtimes that read only that.)
#[allow(deprecated)]
pub fn container_config(
    spec: &PodSpec,
    pod_dir: &Path,
    container: &Container,
    image_ref: &str,
    restart_count: u32,
    profiles: &ProfileSettings,
) -> Result<cri::ContainerConfig, RuntimeError> {
    let mut mounts = Vec::new();
    for m in &container.volume_mounts {
        let host = volume_host_path(spec, pod_dir, &m.name).ok_or_else(|| {
            RuntimeError::CreateConfig(format!(
                "volume {:?} of container {:?} is not defined in the pod",
                m.name, container.name
            ))
        })?;
        let host = match &m.sub_path {
            Some(sub) if sub.contains("..") || sub.starts_with('/') => {
                return Err(RuntimeError::CreateConfig(format!(
                    "subPath {sub:?} of volume {:?} must be a relative path inside it",
                    m.name
                )));
            }
            Some(sub) => host.join(sub),
            None => host,
        };
        let propagation = match m.propagation {
            MountPropagation::Private => cri::MountPropagation::PropagationPrivate,
            MountPropagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
            MountPropagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
        };
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: spec.mount_read_only(m),
            propagation: propagation as i32,
            selinux_relabel: relabel(spec, &m.name),
            ..Default::default()
        });
    }
    // The termination message file (`start_inner` makes it), as the
    // kubelet mounts it (relabelled where SELinux is on).
    mounts.push(cri::Mount {
        container_path: container.termination_message_path().to_string(),
        host_path: crate::runtime::termination_log_path(pod_dir, &container.name, restart_count)
            .display()
            .to_string(),
        selinux_relabel: true,
        ..Default::default()
    });
    let sc = container.security_context.clone().unwrap_or_default();
    let seccomp = seccomp_profile(sc.seccomp_profile.as_ref(), profiles);
    let (apparmor, apparmor_profile) = app_armor_profile(sc.app_armor_profile.as_ref());
    let mut labels = HashMap::new();
    labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
    labels.insert(LABEL_POD_UID.to_string(), spec.uid.clone());
    labels.insert(LABEL_POD_NAME.to_string(), spec.name.clone());
    labels.insert(LABEL_POD_NAMESPACE.to_string(), spec.namespace.clone());
    labels.insert(LABEL_CONTAINER.to_string(), container.name.clone());
    let mut annotations = HashMap::new();
    annotations.insert(ANNOTATION_RESTART.to_string(), restart_count.to_string());
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: image_ref.into(),
            user_specified_image: container.image.clone(),
            ..Default::default()
        }),
        command: container.command.clone(),
        args: container.args.clone(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: container
            .env
            .iter()
            .map(|e| cri::KeyValue {
                key: e.name.clone(),
                value: e.value.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: log_path(&container.name, restart_count),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(&container.resources)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: sc.capabilities_add.clone(),
                    drop_capabilities: sc.capabilities_drop.clone(),
                    ..Default::default()
                }),
                privileged: sc.privileged,
                namespace_options: Some(namespaces(spec)),
                supplemental_groups: supplemental_groups(spec),
                run_as_user: sc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: sc.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem,
                // allowPrivilegeEscalation: false is no_new_privs (the
                // kubelet's default is to allow it).
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                seccomp: Some(seccomp),
                apparmor,
                apparmor_profile,
                selinux_options: sc.se_linux_options.as_ref().map(se_linux),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// How a container ended, from its CRI status: the runtime's reason when it
/// is telling (`OOMKilled`), otherwise the exit code decides.
pub fn exit_status(s: &cri::ContainerStatus) -> crate::runtime::ExitStatus {
    let reason = match s.reason.as_str() {
        "" | "Completed" | "Error" => None,
        other => Some(other.to_string()),
    };
    crate::runtime::ExitStatus {
        exit_code: s.exit_code,
        reason,
        message: (!s.message.is_empty()).then(|| s.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VolumeSource;

    #[test]
    fn huge_resources_never_wrap_negative() {
        let r = crate::model::Resources {
            cpu_request_millis: Some(u64::MAX),
            cpu_limit_millis: Some(u64::MAX),
            memory_request_bytes: None,
            memory_limit_bytes: Some(u64::MAX),
            ephemeral_storage_limit_bytes: None,
        };
        let l = linux_resources(&r);
        assert!(l.cpu_shares > 0 && l.cpu_quota > 0 && l.memory_limit_in_bytes > 0);
    }
    use crate::model::samples;
    use crate::model::{
        ContainerPort, PullPolicy, Resources, RestartPolicy, RuntimeKind, SeLinuxOptions,
        SecurityContext, SecurityProfile, Volume, VolumeMount,
    };

    fn container() -> Container {
        Container {
            name: "app".into(),
            image: "kedge.test/busybox:1".into(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            working_dir: Some("/tmp".into()),
            env: vec![crate::model::EnvVar::new("A", "1")],
            volume_mounts: vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                read_only: true,
                sub_path: Some("sub".into()),
                propagation: crate::model::MountPropagation::HostToContainer,
            }],
            ports: vec![ContainerPort {
                name: None,
                container_port: 80,
                host_port: Some(8080),
                protocol: "TCP".into(),
            }],
            resources: Resources {
                cpu_request_millis: Some(250),
                cpu_limit_millis: Some(500),
                memory_request_bytes: None,
                memory_limit_bytes: Some(64 << 20),
                ephemeral_storage_limit_bytes: None,
            },
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(2000),
                read_only_root_filesystem: true,
                privileged: false,
                allow_privilege_escalation: Some(false),
                capabilities_add: vec!["NET_ADMIN".into()],
                capabilities_drop: vec!["ALL".into()],
                seccomp_profile: None,
                app_armor_profile: None,
                se_linux_options: None,
            }),
            lifecycle: Default::default(),
            termination_message_path: None,
            termination_message_fallback_to_logs: false,
            run_as_non_root: false,
            restart_policy: None,
        }
    }

    fn settings(seccomp_default: bool) -> ProfileSettings {
        ProfileSettings {
            seccomp_default,
            seccomp_root: PathBuf::from("/var/lib/kedge/seccomp"),
        }
    }

    fn pod() -> PodSpec {
        let mut spec = samples::spec("web", "u1", 1, RestartPolicy::Always);
        spec.runtime = RuntimeKind::Container;
        spec.containers = vec![container()];
        spec.volumes = vec![Volume {
            name: "data".into(),
            source: VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        }];
        spec
    }

    #[test]
    fn sandbox_has_labels_ports_cgroup_and_network_mode() {
        let spec = pod();
        let c = sandbox_config(&spec, Path::new("/d/pods/p"), "/kedge", "gw");
        assert_eq!(c.hostname, "web");
        assert_eq!(c.log_directory, "/d/pods/p/logs");
        assert_eq!(c.labels[LABEL_POD_UID], "u1");
        assert_eq!(c.labels[LABEL_NODE], "gw");
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.port_mappings[0].host_port, 8080);
        let linux = c.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "/kedge/podu1");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("ns");
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);

        let mut host = pod();
        host.host_network = true;
        let c = sandbox_config(&host, Path::new("/d"), "/kedge/", "gw");
        assert_eq!(c.hostname, "", "hostNetwork sandboxes have no hostname");
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("ns");
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    }

    #[test]
    fn an_image_that_runs_as_root_or_by_name_fails_run_as_non_root() {
        let check = |uid, name| verify_run_as_non_root(uid, name, "default/web", "app");
        assert_eq!(check(Some(1000), ""), Ok(()));
        assert_eq!(
            check(Some(0), ""),
            Err("container has runAsNonRoot and image will run as root (pod: \"default/web\", container: app)".into())
        );
        assert_eq!(check(None, ""), check(Some(0), ""), "no user is root");
        assert_eq!(
            check(None, "nginx"),
            Err("container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root (pod: \"default/web\", container: app)".into())
        );
    }

    #[test]
    fn a_volume_of_files_is_mounted_read_only_whatever_the_mount_says() {
        let mut spec = pod();
        spec.volumes.push(Volume {
            name: "cfg".into(),
            source: VolumeSource::Files {
                files: vec![("a".into(), b"1".to_vec())],
                default_mode: 0o644,
            },
        });
        let mut c = container();
        c.volume_mounts = vec![VolumeMount {
            name: "cfg".into(),
            mount_path: "/cfg".into(),
            read_only: false,
            sub_path: None,
            propagation: crate::model::MountPropagation::Private,
        }];
        let config = container_config(&spec, Path::new("/d"), &c, "img", 0, &settings(false))
            .expect("config");
        assert!(config.mounts[0].readonly);
    }

    #[test]
    fn pid_and_ipc_namespaces_and_groups_are_the_kubelets() {
        use cri::NamespaceMode::{Container, Node, Pod};
        let modes = |spec: &PodSpec| {
            let n = namespaces(spec);
            (n.network, n.pid, n.ipc)
        };
        let mut spec = pod();
        assert_eq!(modes(&spec), (Pod as i32, Container as i32, Pod as i32));
        spec.security.share_process_namespace = true;
        assert_eq!(modes(&spec), (Pod as i32, Pod as i32, Pod as i32));
        spec.security.share_process_namespace = false;
        spec.security.host_pid = true;
        spec.security.host_ipc = true;
        spec.host_network = true;
        assert_eq!(modes(&spec), (Node as i32, Node as i32, Node as i32));

        spec.security.supplemental_groups = vec![3000, 3001];
        spec.security.fs_group = Some(2000);
        assert_eq!(supplemental_groups(&spec), [3000, 3001, 2000]);
        let c = sandbox_config(&spec, Path::new("/d"), "/kedge", "gw");
        let sandbox = c.linux.and_then(|l| l.security_context).expect("sc");
        assert_eq!(sandbox.supplemental_groups, [3000, 3001, 2000]);
        assert_eq!(sandbox.namespace_options.map(|n| n.pid), Some(Node as i32));
    }

    /// seLinuxOptions reach the CRI as the kubelet passes them: the pod's
    /// on the sandbox, each container's effective one on the container;
    /// the volumes the kubelet manages are relabelled, a hostPath is not.
    #[test]
    fn se_linux_labels_and_relabelling_reach_the_cri() {
        let label = |t: &str| SeLinuxOptions {
            r#type: t.into(),
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        let mut spec = pod();
        spec.security.se_linux_options = Some(label("spc_t"));
        spec.containers[0]
            .security_context
            .as_mut()
            .expect("set")
            .se_linux_options = Some(label("container_t"));
        for (name, source) in [
            (
                "files",
                VolumeSource::Files {
                    files: vec![],
                    default_mode: 0o644,
                },
            ),
            (
                "host",
                VolumeSource::HostPath {
                    path: "/srv".into(),
                    kind: crate::model::HostPathType::Unset,
                },
            ),
            (
                "claim",
                VolumeSource::Claim {
                    claim: "c".into(),
                    read_only: false,
                },
            ),
            (
                "claim-ro",
                VolumeSource::Claim {
                    claim: "c".into(),
                    read_only: true,
                },
            ),
        ] {
            spec.volumes.push(Volume {
                name: name.into(),
                source,
            });
            spec.containers[0].volume_mounts.push(VolumeMount {
                name: name.into(),
                mount_path: format!("/{name}"),
                read_only: false,
                sub_path: None,
                propagation: crate::model::MountPropagation::Private,
            });
        }
        let sandbox = sandbox_config(&spec, Path::new("/d"), "/kedge", "gw")
            .linux
            .and_then(|l| l.security_context)
            .expect("sc");
        let want = |t: &str| cri::SeLinuxOption {
            r#type: t.into(),
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        assert_eq!(sandbox.selinux_options, Some(want("spc_t")));
        let c = container_config(
            &spec,
            Path::new("/d"),
            &spec.containers[0],
            "x",
            0,
            &settings(false),
        )
        .expect("config");
        let relabelled: Vec<(&str, bool)> = c
            .mounts
            .iter()
            .map(|m| (m.container_path.as_str(), m.selinux_relabel))
            .collect();
        assert_eq!(
            relabelled,
            [
                ("/data", true),
                ("/files", true),
                ("/host", false),
                ("/claim", true),
                ("/claim-ro", false),
                ("/dev/termination-log", true),
            ]
        );
        let sc = c.linux.and_then(|l| l.security_context).expect("sc");
        assert_eq!(sc.selinux_options, Some(want("container_t")));

        // No label: none passed (the runtime chooses).
        let plain = pod();
        let sandbox = sandbox_config(&plain, Path::new("/d"), "/kedge", "gw");
        assert_eq!(
            sandbox
                .linux
                .and_then(|l| l.security_context)
                .and_then(|s| s.selinux_options),
            None
        );
    }

    #[test]
    fn resources_follow_the_kubelet_formulas() {
        let r = linux_resources(&container().resources);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        let none = linux_resources(&Resources::default());
        assert_eq!((none.cpu_shares, none.cpu_quota), (2, 0));
        let tiny = linux_resources(&Resources {
            cpu_limit_millis: Some(1),
            ..Default::default()
        });
        assert_eq!((tiny.cpu_shares, tiny.cpu_quota), (2, 1_000));
    }

    #[test]
    #[allow(deprecated)]
    fn container_config_carries_process_mounts_logs_and_security() {
        let spec = pod();
        let c = container_config(
            &spec,
            Path::new("/d/p"),
            &spec.containers[0],
            "sha256:ab",
            3,
            &settings(false),
        )
        .expect("config");
        assert_eq!(c.command, ["/bin/sh"]);
        assert_eq!(c.args, ["-c", "echo hi"]);
        assert_eq!(c.working_dir, "/tmp");
        assert_eq!(c.envs[0].key, "A");
        assert_eq!(c.log_path, "app/3.log");
        assert_eq!(c.metadata.as_ref().map(|m| m.attempt), Some(3));
        assert_eq!(c.mounts[0].host_path, "/d/p/volumes/data/sub");
        assert!(c.mounts[0].readonly);
        assert_eq!(
            c.mounts[0].propagation,
            cri::MountPropagation::PropagationHostToContainer as i32,
            "mountPropagation: HostToContainer"
        );
        assert_eq!(c.labels[LABEL_CONTAINER], "app");
        let sc = c.linux.and_then(|l| l.security_context).expect("security");
        assert_eq!(sc.run_as_user.map(|v| v.value), Some(1000));
        assert_eq!(sc.run_as_group.map(|v| v.value), Some(2000));
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        let caps = sc.capabilities.expect("caps");
        assert_eq!(caps.drop_capabilities, ["ALL"]);
        assert_eq!(caps.add_capabilities, ["NET_ADMIN"]);
        // Unset seccomp: Unconfined, as the kubelet without --seccomp-default;
        // unset AppArmor: nothing (the runtime's default).
        assert_eq!(
            sc.seccomp,
            Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                localhost_ref: String::new(),
            })
        );
        assert_eq!((sc.apparmor, sc.apparmor_profile.as_str()), (None, ""));
    }

    #[test]
    #[allow(deprecated)]
    fn seccomp_and_apparmor_profiles_reach_the_cri() {
        use cri::security_profile::ProfileType;
        let profile = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let config = |sc: SecurityContext, seccomp_default: bool| {
            let mut spec = pod();
            spec.containers[0].security_context = Some(sc);
            container_config(
                &spec,
                Path::new("/d"),
                &spec.containers[0],
                "x",
                0,
                &settings(seccomp_default),
            )
            .expect("config")
            .linux
            .and_then(|l| l.security_context)
            .expect("security")
        };
        // The node default when unset.
        let sc = config(SecurityContext::default(), true);
        assert_eq!(sc.seccomp, Some(profile(ProfileType::RuntimeDefault, "")));
        // An explicit profile wins over the node default.
        let sc = config(
            SecurityContext {
                seccomp_profile: Some(SecurityProfile::Unconfined),
                ..Default::default()
            },
            true,
        );
        assert_eq!(sc.seccomp, Some(profile(ProfileType::Unconfined, "")));
        let sc = config(
            SecurityContext {
                seccomp_profile: Some(SecurityProfile::RuntimeDefault),
                app_armor_profile: Some(SecurityProfile::RuntimeDefault),
                ..Default::default()
            },
            false,
        );
        assert_eq!(sc.seccomp, Some(profile(ProfileType::RuntimeDefault, "")));
        assert_eq!(sc.apparmor, Some(profile(ProfileType::RuntimeDefault, "")));
        assert_eq!(sc.apparmor_profile, "runtime/default");
        // Localhost: seccomp files under the node's directory, AppArmor names.
        let sc = config(
            SecurityContext {
                seccomp_profile: Some(SecurityProfile::Localhost("profiles/audit.json".into())),
                app_armor_profile: Some(SecurityProfile::Localhost("k8s-apparmor-deny".into())),
                ..Default::default()
            },
            false,
        );
        assert_eq!(
            sc.seccomp,
            Some(profile(
                ProfileType::Localhost,
                "/var/lib/kedge/seccomp/profiles/audit.json"
            ))
        );
        assert_eq!(
            sc.apparmor,
            Some(profile(ProfileType::Localhost, "k8s-apparmor-deny"))
        );
        assert_eq!(sc.apparmor_profile, "localhost/k8s-apparmor-deny");
        let sc = config(
            SecurityContext {
                app_armor_profile: Some(SecurityProfile::Unconfined),
                ..Default::default()
            },
            false,
        );
        assert_eq!(sc.apparmor, Some(profile(ProfileType::Unconfined, "")));
        assert_eq!(sc.apparmor_profile, "unconfined");
    }

    #[test]
    fn bad_mounts_are_config_errors() {
        let mut spec = pod();
        spec.containers[0].volume_mounts[0].name = "missing".into();
        let e = container_config(
            &spec,
            Path::new("/d"),
            &spec.containers[0],
            "x",
            0,
            &settings(false),
        )
        .expect_err("missing volume");
        assert_eq!(e.reason(), "CreateContainerConfigError");
        let mut spec = pod();
        spec.containers[0].volume_mounts[0].sub_path = Some("../etc".into());
        assert!(
            container_config(
                &spec,
                Path::new("/d"),
                &spec.containers[0],
                "x",
                0,
                &settings(false)
            )
            .is_err()
        );
    }

    #[test]
    fn exit_reasons_keep_oom_and_let_codes_decide_otherwise() {
        let s = cri::ContainerStatus {
            exit_code: 137,
            reason: "OOMKilled".into(),
            ..Default::default()
        };
        assert_eq!(exit_status(&s).reason.as_deref(), Some("OOMKilled"));
        let s = cri::ContainerStatus {
            exit_code: 3,
            reason: "Error".into(),
            ..Default::default()
        };
        assert_eq!(exit_status(&s).reason, None);
        assert_eq!(exit_status(&s).exit_code, 3);
    }
}
