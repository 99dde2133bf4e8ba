//! The `PodSpec` of schema versions 4 to 8, which version 9 changed, and
//! its upgrade: read from `DesiredPod` envelopes (and sealed specs) of
//! versions 4 to 8 (`wire::decode`, `wire::pod_spec_from_body`) and from
//! desired records the store wrote before its schema 7 (`store::Store::open`
//! migrates them). Versions 1 to 3 are read through here too (`wire::v3`).
//!
//! Version 9 added `lifecycle`, `termination_message_path` and
//! `termination_message_fallback_to_logs` to `Container` and `field` to
//! `EnvVar`; an old spec reads with none of them (no hooks, the default
//! termination message file and policy), which is what it ran with.

use serde::{Deserialize, Serialize};

use crate::model::{
    ContainerPort, Probe, PullPolicy, Resources, RestartPolicy, RuntimeKind, SecurityContext,
    Volume, VolumeMount,
};

/// Version 8's `PodSpec` (field for field; the nested types that changed
/// are this module's).
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

/// Without `lifecycle` and the termination message fields.
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

/// Without `field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

impl From<PodSpec> for crate::model::PodSpec {
    fn from(v: PodSpec) -> Self {
        let containers = |list: Vec<Container>| list.into_iter().map(Into::into).collect();
        crate::model::PodSpec {
            namespace: v.namespace,
            name: v.name,
            uid: v.uid,
            generation: v.generation,
            labels: v.labels,
            runtime: v.runtime,
            restart_policy: v.restart_policy,
            termination_grace_period_secs: v.termination_grace_period_secs,
            host_network: v.host_network,
            init_containers: containers(v.init_containers),
            containers: containers(v.containers),
            volumes: v.volumes,
            image_pull_secrets: v.image_pull_secrets,
            security: Default::default(),
        }
    }
}

impl From<Container> for crate::model::Container {
    fn from(c: Container) -> Self {
        crate::model::Container {
            name: c.name,
            image: c.image,
            image_pull_policy: c.image_pull_policy,
            command: c.command,
            args: c.args,
            working_dir: c.working_dir,
            env: c
                .env
                .into_iter()
                .map(|e| crate::model::EnvVar::new(e.name, e.value))
                .collect(),
            volume_mounts: c.volume_mounts,
            ports: c.ports,
            resources: c.resources,
            liveness_probe: c.liveness_probe,
            readiness_probe: c.readiness_probe,
            startup_probe: c.startup_probe,
            security_context: c.security_context,
            lifecycle: Default::default(),
            termination_message_path: None,
            termination_message_fallback_to_logs: false,
            run_as_non_root: false,
        }
    }
}
