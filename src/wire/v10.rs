//! The `PodSpec` of schema version 10, field for field, for tests that
//! write one (the store's migration test), with the `SecurityContext` of
//! versions 4 to 10 and the `PodSecurity` of versions 9 and 10, which the
//! copies of older versions use too. Decoding one needs no copy of the
//! types: version 11 only appended fields, which a version-10 body is read
//! without (`model::added`).
//!
//! Version 11 added `se_linux_options` to `SecurityContext` and
//! `PodSecurity`, `ephemeral_storage_limit_bytes` to `Resources`,
//! `from_object` to `EnvVar`, `dns` to `PodSpec` and `target` to
//! `PodRoute`; a version-10 spec reads with no ephemeral-storage limit
//! (which it was not held to), no SELinux label, the default DNS policy
//! (`ClusterFirst`, which falls back to the node's resolver configuration)
//! and its routes going upstream, which is what it ran with.

use serde::{Deserialize, Serialize};

use crate::model::{
    ContainerPort, Lifecycle, Probe, PullPolicy, RestartPolicy, RuntimeKind, SecurityProfile,
    StatusField, Volume, VolumeMount,
};

/// Versions 9 and 10: without `from_object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EnvVar {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) field: Option<StatusField>,
}

impl From<&crate::model::EnvVar> for EnvVar {
    fn from(e: &crate::model::EnvVar) -> Self {
        EnvVar {
            name: e.name.clone(),
            value: e.value.clone(),
            field: e.field,
        }
    }
}

/// Versions 1 to 10: without `ephemeral_storage_limit_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Resources {
    pub(crate) cpu_request_millis: Option<u64>,
    pub(crate) cpu_limit_millis: Option<u64>,
    pub(crate) memory_request_bytes: Option<u64>,
    pub(crate) memory_limit_bytes: Option<u64>,
}

/// Today's resources as versions 1 to 10 carried them (an ephemeral-storage
/// limit is dropped: a test that writes an old body has none).
impl From<crate::model::Resources> for Resources {
    fn from(r: crate::model::Resources) -> Self {
        Resources {
            cpu_request_millis: r.cpu_request_millis,
            cpu_limit_millis: r.cpu_limit_millis,
            memory_request_bytes: r.memory_request_bytes,
            memory_limit_bytes: r.memory_limit_bytes,
        }
    }
}

/// Version 10's `PodSpec` (field for field, without `dns`; the nested types
/// that changed are this module's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PodSpec {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) generation: u64,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    pub(crate) runtime: RuntimeKind,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) termination_grace_period_secs: u64,
    pub(crate) host_network: bool,
    pub(crate) init_containers: Vec<Container>,
    pub(crate) containers: Vec<Container>,
    pub(crate) volumes: Vec<Volume>,
    pub(crate) image_pull_secrets: Vec<String>,
    pub(crate) security: PodSecurity,
    pub(crate) routes: Vec<PodRoute>,
}

/// Version 10's `PodRoute`: without `target` (every route went upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PodRoute {
    pub(crate) container: Option<String>,
    pub(crate) filter: String,
    pub(crate) ttl_secs: u64,
}

impl From<&crate::model::PodRoute> for PodRoute {
    /// A route into a pod has no version-10 form: tests only write
    /// version 10's upstream routes.
    fn from(r: &crate::model::PodRoute) -> Self {
        PodRoute {
            container: r.container.clone(),
            filter: r.filter.clone(),
            ttl_secs: r.ttl_secs,
        }
    }
}

/// Version 10's `Container`: today's, with version 10's `SecurityContext`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Container {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) image_pull_policy: PullPolicy,
    pub(crate) command: Vec<String>,
    pub(crate) args: Vec<String>,
    pub(crate) working_dir: Option<String>,
    pub(crate) env: Vec<EnvVar>,
    pub(crate) volume_mounts: Vec<VolumeMount>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) resources: Resources,
    pub(crate) liveness_probe: Option<Probe>,
    pub(crate) readiness_probe: Option<Probe>,
    pub(crate) startup_probe: Option<Probe>,
    pub(crate) security_context: Option<SecurityContext>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) termination_message_path: Option<String>,
    pub(crate) termination_message_fallback_to_logs: bool,
    pub(crate) run_as_non_root: bool,
    pub(crate) restart_policy: Option<RestartPolicy>,
}

/// Versions 4 to 10: without `se_linux_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecurityContext {
    pub(crate) run_as_user: Option<i64>,
    pub(crate) run_as_group: Option<i64>,
    pub(crate) read_only_root_filesystem: bool,
    pub(crate) privileged: bool,
    pub(crate) allow_privilege_escalation: Option<bool>,
    pub(crate) capabilities_add: Vec<String>,
    pub(crate) capabilities_drop: Vec<String>,
    pub(crate) seccomp_profile: Option<SecurityProfile>,
    pub(crate) app_armor_profile: Option<SecurityProfile>,
}

/// Versions 9 and 10: without `se_linux_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodSecurity {
    pub(crate) host_pid: bool,
    pub(crate) host_ipc: bool,
    pub(crate) share_process_namespace: bool,
    pub(crate) fs_group: Option<i64>,
    pub(crate) supplemental_groups: Vec<i64>,
}

/// Today's context as version 10 carried it (an SELinux label is dropped:
/// a test that writes an old body has none).
impl From<&crate::model::SecurityContext> for SecurityContext {
    fn from(sc: &crate::model::SecurityContext) -> Self {
        SecurityContext {
            run_as_user: sc.run_as_user,
            run_as_group: sc.run_as_group,
            read_only_root_filesystem: sc.read_only_root_filesystem,
            privileged: sc.privileged,
            allow_privilege_escalation: sc.allow_privilege_escalation,
            capabilities_add: sc.capabilities_add.clone(),
            capabilities_drop: sc.capabilities_drop.clone(),
            seccomp_profile: sc.seccomp_profile.clone(),
            app_armor_profile: sc.app_armor_profile.clone(),
        }
    }
}

impl From<&crate::model::PodSecurity> for PodSecurity {
    fn from(s: &crate::model::PodSecurity) -> Self {
        PodSecurity {
            host_pid: s.host_pid,
            host_ipc: s.host_ipc,
            share_process_namespace: s.share_process_namespace,
            fs_group: s.fs_group,
            supplemental_groups: s.supplemental_groups.clone(),
        }
    }
}

impl From<&crate::model::Container> for Container {
    fn from(c: &crate::model::Container) -> Self {
        Container {
            name: c.name.clone(),
            image: c.image.clone(),
            image_pull_policy: c.image_pull_policy,
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            env: c.env.iter().map(Into::into).collect(),
            volume_mounts: c.volume_mounts.clone(),
            ports: c.ports.clone(),
            resources: c.resources.into(),
            liveness_probe: c.liveness_probe.clone(),
            readiness_probe: c.readiness_probe.clone(),
            startup_probe: c.startup_probe.clone(),
            security_context: c.security_context.as_ref().map(Into::into),
            lifecycle: c.lifecycle.clone(),
            termination_message_path: c.termination_message_path.clone(),
            termination_message_fallback_to_logs: c.termination_message_fallback_to_logs,
            run_as_non_root: c.run_as_non_root,
            restart_policy: c.restart_policy,
        }
    }
}

/// Today's spec as version 10 carried it (its `dns` and SELinux labels
/// dropped).
impl From<&crate::model::PodSpec> for PodSpec {
    fn from(s: &crate::model::PodSpec) -> Self {
        PodSpec {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            uid: s.uid.clone(),
            generation: s.generation,
            labels: s.labels.clone(),
            runtime: s.runtime,
            restart_policy: s.restart_policy,
            termination_grace_period_secs: s.termination_grace_period_secs,
            host_network: s.host_network,
            init_containers: s.init_containers.iter().map(Into::into).collect(),
            containers: s.containers.iter().map(Into::into).collect(),
            volumes: s.volumes.clone(),
            image_pull_secrets: s.image_pull_secrets.clone(),
            security: (&s.security).into(),
            routes: s.routes.iter().map(Into::into).collect(),
        }
    }
}
