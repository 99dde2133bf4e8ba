//! The `PodSpec` of schema version 9, field for field, for tests that write
//! one (the store's migration test). Decoding one needs no copy of the
//! types: version 10 only appended fields, which a version-9 body is read
//! without (`model::added`).
//!
//! Version 10 added `restart_policy` to `Container` (native sidecars) and
//! `routes` to `PodSpec` (data routes the pod declares); a version-9 spec
//! reads with neither, which is what it ran with (version 9 refused
//! `restartPolicy` on every container and had no pod routes).

use serde::{Deserialize, Serialize};

use super::v10::{EnvVar, PodSecurity, Resources, SecurityContext};
use crate::model::{
    ContainerPort, Lifecycle, Probe, PullPolicy, RestartPolicy, RuntimeKind, Volume, VolumeMount,
};

/// Version 9's `PodSpec` (field for field, without `routes`; the nested
/// type that changed is this module's).
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
}

/// Without `restart_policy`.
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
}
