//! The `PodSpec` of schema versions 1 to 3, field for field, for tests that
//! write one. Decoding one needs no copy of the types: version 4 only
//! appended fields (`model::added`), and the values it made templates are
//! escaped after reading (`expansion::escape_literals`).
//!
//! Version 4 added `seccomp_profile` and `app_armor_profile` to
//! `SecurityContext` and `kind` (`hostPath.type`) to `VolumeSource::HostPath`,
//! and made `command`, `args` and env values templates the agent expands
//! (`model::expansion`). Versions 1 to 3 ran them literally, so the upgrade
//! escapes them: an old spec runs exactly as before. What later versions
//! added, an old spec runs without (no hooks, no sidecar, …).

use serde::{Deserialize, Serialize};

use super::v10::Resources;
use crate::model::{ContainerPort, Probe, PullPolicy, RestartPolicy, RuntimeKind, VolumeMount};

/// Version 3's `PodSpec` (field for field; the nested types that changed are
/// this module's).
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
}

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
}

/// Without `field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EnvVar {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// Without `seccomp_profile` and `app_armor_profile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecurityContext {
    pub(crate) run_as_user: Option<i64>,
    pub(crate) run_as_group: Option<i64>,
    pub(crate) read_only_root_filesystem: bool,
    pub(crate) privileged: bool,
    pub(crate) allow_privilege_escalation: Option<bool>,
    pub(crate) capabilities_add: Vec<String>,
    pub(crate) capabilities_drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Volume {
    pub(crate) name: String,
    pub(crate) source: VolumeSource,
}

/// `HostPath` without its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum VolumeSource {
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
