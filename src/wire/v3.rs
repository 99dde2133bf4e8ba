//! The `PodSpec` of schema versions 1 to 3, which version 4 changed, and
//! its upgrade: read from `DesiredPod` envelopes of versions 1 to 3
//! (`wire::decode`) and from desired records the store wrote before its
//! schema 6 (`store::Store::open` migrates them).
//!
//! Version 4 added `seccomp_profile` and `app_armor_profile` to
//! `SecurityContext` and `kind` (`hostPath.type`) to `VolumeSource::HostPath`,
//! and made `command`, `args` and env values templates the agent expands
//! (`model::expansion`). Versions 1 to 3 ran them literally, so the upgrade
//! escapes them: an old spec runs exactly as before. The upgrade gives
//! version 8's spec (`wire::v8`), which upgrades further.

use serde::{Deserialize, Serialize};

use super::v8::EnvVar;
use crate::model::expansion::escape;
use crate::model::{
    ContainerPort, HostPathType, Probe, PullPolicy, Resources, RestartPolicy, RuntimeKind,
    VolumeMount,
};

/// Version 3's `PodSpec` (field for field; the nested types that changed are
/// this module's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: u64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub runtime: RuntimeKind,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_secs: u64,
    pub host_network: bool,
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    pub image_pull_secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<EnvVar>,
    pub volume_mounts: Vec<VolumeMount>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub security_context: Option<SecurityContext>,
}

/// Without `seccomp_profile` and `app_armor_profile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

/// `HostPath` without its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    EmptyDir {
        memory: bool,
        size_limit_bytes: Option<u64>,
    },
    HostPath {
        path: String,
    },
    Files {
        files: Vec<(String, Vec<u8>)>,
        default_mode: u32,
    },
}

impl From<PodSpec> for super::v8::PodSpec {
    fn from(v: PodSpec) -> Self {
        super::v8::PodSpec {
            namespace: v.namespace,
            name: v.name,
            uid: v.uid,
            generation: v.generation,
            labels: v.labels,
            runtime: v.runtime,
            restart_policy: v.restart_policy,
            termination_grace_period_secs: v.termination_grace_period_secs,
            host_network: v.host_network,
            init_containers: v.init_containers.into_iter().map(Into::into).collect(),
            containers: v.containers.into_iter().map(Into::into).collect(),
            volumes: v.volumes.into_iter().map(Into::into).collect(),
            image_pull_secrets: v.image_pull_secrets,
        }
    }
}

impl From<Container> for super::v8::Container {
    fn from(c: Container) -> Self {
        let literal = |list: Vec<String>| list.iter().map(|s| escape(s)).collect();
        super::v8::Container {
            name: c.name,
            image: c.image,
            image_pull_policy: c.image_pull_policy,
            command: literal(c.command),
            args: literal(c.args),
            working_dir: c.working_dir,
            env: c
                .env
                .into_iter()
                .map(|e| EnvVar {
                    name: e.name,
                    value: escape(&e.value),
                })
                .collect(),
            volume_mounts: c.volume_mounts,
            ports: c.ports,
            resources: c.resources,
            liveness_probe: c.liveness_probe,
            readiness_probe: c.readiness_probe,
            startup_probe: c.startup_probe,
            security_context: c.security_context.map(|sc| crate::model::SecurityContext {
                run_as_user: sc.run_as_user,
                run_as_group: sc.run_as_group,
                read_only_root_filesystem: sc.read_only_root_filesystem,
                privileged: sc.privileged,
                allow_privilege_escalation: sc.allow_privilege_escalation,
                capabilities_add: sc.capabilities_add,
                capabilities_drop: sc.capabilities_drop,
                // Unset: the node's default, as before.
                seccomp_profile: None,
                app_armor_profile: None,
            }),
        }
    }
}

impl From<Volume> for crate::model::Volume {
    fn from(v: Volume) -> Self {
        use crate::model::VolumeSource as New;
        crate::model::Volume {
            name: v.name,
            source: match v.source {
                VolumeSource::EmptyDir {
                    memory,
                    size_limit_bytes,
                } => New::EmptyDir {
                    memory,
                    size_limit_bytes,
                },
                // Unchecked, as before.
                VolumeSource::HostPath { path } => New::HostPath {
                    path,
                    kind: HostPathType::Unset,
                },
                VolumeSource::Files {
                    files,
                    default_mode,
                } => New::Files {
                    files,
                    default_mode,
                },
            },
        }
    }
}

impl From<PodSpec> for crate::model::PodSpec {
    fn from(v: PodSpec) -> Self {
        super::v8::PodSpec::from(v).into()
    }
}
