//! The `PodSpec` of schema versions 4 to 8, field for field, for tests that
//! write one (the store's migration test). Decoding one needs no copy of
//! the types: versions 9 and 10 only appended fields, which an older body
//! is read without (`model::added`).
//!
//! Version 9 added `lifecycle`, `termination_message_path` and
//! `termination_message_fallback_to_logs` to `Container` and `field` to
//! `EnvVar`; an old spec reads with none of them (no hooks, the default
//! termination message file and policy), which is what it ran with.

use serde::{Deserialize, Serialize};

use super::v10::{Resources, SecurityContext};
use crate::model::{
    ContainerPort, Probe, PullPolicy, RestartPolicy, RuntimeKind, Volume, VolumeMount,
};

/// Version 8's `PodSpec` (field for field; the nested types that changed
/// are this module's).
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

/// Without `lifecycle` and the termination message fields.
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
