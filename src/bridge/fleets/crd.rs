//! The `FleetDeployment` custom resource (`kedge.io/v1alpha1`): one pod
//! template for every device whose labels match, rolled out in batches.
//! `edge-manifests/fleetdeployment-crd.yaml` is generated from these types
//! (`crd_yaml`; a test fails when the file differs).
//!
//! The template's schema is an open object (`x-kubernetes-preserve-unknown-fields`):
//! the bridge converts it with `model::convert`, which refuses what a device
//! cannot run with the field path, as it does for bound pods.

use std::str::FromStr;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Batch, Limit, RolloutPolicy};

/// The spec of a fleet deployment.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kedge.io",
    version = "v1alpha1",
    kind = "FleetDeployment",
    root = "FleetDeploymentResource",
    plural = "fleetdeployments",
    shortname = "fd",
    namespaced,
    status = "FleetDeploymentStatus",
    doc = "One pod for every kedge device whose labels match the selector, rolled out in batches",
    printcolumn = r#"{"name": "Selector", "type": "string", "jsonPath": ".spec.selector"}"#,
    printcolumn = r#"{"name": "Revision", "type": "integer", "jsonPath": ".status.revision"}"#,
    printcolumn = r#"{"name": "Targeted", "type": "integer", "jsonPath": ".status.targeted"}"#,
    printcolumn = r#"{"name": "Up-to-date", "type": "integer", "jsonPath": ".status.upToDate"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.ready"}"#,
    printcolumn = r#"{"name": "Failed", "type": "integer", "jsonPath": ".status.failed"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FleetDeploymentSpec {
    /// Label selector over the devices' labels (`env=prod,tier in (a,b)`); empty: every device.
    #[serde(default)]
    pub selector: String,
    /// When two fleet deployments give a device a pod of the same namespace
    /// and name, the higher priority wins.
    #[serde(default)]
    pub priority: i32,
    /// The pod each device runs (metadata.name: the pod's name, default the fleet's).
    #[schemars(schema_with = "open_object")]
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Nothing moves while paused: no new batch, no rollback.
    #[serde(default)]
    pub paused: bool,
}

/// How a new revision of the template reaches the devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// In order, cumulative; none: every device at once.
    #[serde(default)]
    pub batches: Vec<BatchSpec>,
    /// Percentage (1-100) of a batch's devices that must run the revision before the next batch.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: i32,
    /// A device that has not run the revision this long after it was asked counts as failed.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_seconds: i64,
    /// A device counts as running the revision once it has been up this long without a break.
    #[serde(default = "default_min_ready")]
    pub min_ready_seconds: i64,
    /// Devices updating or failed at once (a count or a percentage); unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_unavailable: Option<IntOrString>,
    /// Roll back to the last completed revision when a batch fails (else halt).
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            batches: Vec::new(),
            success_threshold: default_success_threshold(),
            device_timeout_seconds: default_device_timeout(),
            min_ready_seconds: default_min_ready(),
            max_unavailable: None,
            auto_rollback: true,
        }
    }
}

/// One batch: `limit` of the devices that match `selector` (empty: of the whole fleet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    #[serde(default)]
    pub selector: String,
    /// A count (10) or a percentage ("25%").
    #[schemars(schema_with = "int_or_string")]
    pub limit: IntOrString,
}

/// `10` or `"25%"`, as Kubernetes' IntOrString.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

fn default_success_threshold() -> i32 {
    100
}
fn default_device_timeout() -> i64 {
    600
}
fn default_min_ready() -> i64 {
    10
}
fn default_true() -> bool {
    true
}

fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
    })
}

/// What the bridge reports on a fleet deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision being rolled out (or rolled out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Progressing, Paused, Complete, RolledBack or Halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The batch being rolled out, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<i32>,
    /// Devices whose labels match (they report on the fleet).
    #[serde(default)]
    pub targeted: i32,
    /// Devices that run the revision.
    #[serde(default)]
    pub up_to_date: i32,
    #[serde(default)]
    pub running: i32,
    #[serde(default)]
    pub ready: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub offline: i32,
    /// Devices per revision, newest first: each revision a device runs
    /// (or failed to run), at most 16, then one line for the older ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionStatus>,
    /// The first failing devices by name, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_devices: Vec<FailingDevice>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<FleetCondition>,
}

/// The devices of one revision (or, with `olderThan`, of every revision
/// below that one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// This line counts the devices of every revision below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<i64>,
    /// Devices that run it.
    #[serde(default)]
    pub devices: i32,
    #[serde(default)]
    pub running: i32,
    #[serde(default)]
    pub ready: i32,
    /// Devices asked to run it that failed.
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub offline: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FailingDevice {
    pub name: String,
    pub reason: String,
}

/// A condition, as metav1.Condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A refusal of the resource, with the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

fn refuse(path: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        message: message.into(),
    }
}

fn limit(path: &str, v: &IntOrString) -> Result<Limit, SpecError> {
    match v {
        IntOrString::Int(n) => u32::try_from(*n)
            .map(Limit::Count)
            .map_err(|_| refuse(path, format!("{n}: a count is 0 or more"))),
        IntOrString::String(s) => Limit::from_str(s).map_err(|m| refuse(path, m)),
    }
}

impl RolloutSpec {
    /// The wire policy; every refusal names its field.
    pub fn policy(&self) -> Result<RolloutPolicy, SpecError> {
        let mut batches = Vec::with_capacity(self.batches.len());
        for (i, b) in self.batches.iter().enumerate() {
            batches.push(Batch {
                selector: b.selector.clone(),
                limit: limit(&format!("spec.rollout.batches[{i}].limit"), &b.limit)?,
            });
        }
        let success_threshold_pct = u8::try_from(self.success_threshold)
            .ok()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| {
                refuse(
                    "spec.rollout.successThreshold",
                    format!("{}: a percentage is 1 to 100", self.success_threshold),
                )
            })?;
        let device_timeout_secs = u32::try_from(self.device_timeout_seconds).map_err(|_| {
            refuse(
                "spec.rollout.deviceTimeoutSeconds",
                format!("{}: must be 0 or more", self.device_timeout_seconds),
            )
        })?;
        let min_ready_secs = u32::try_from(self.min_ready_seconds).map_err(|_| {
            refuse(
                "spec.rollout.minReadySeconds",
                format!("{}: must be 0 or more", self.min_ready_seconds),
            )
        })?;
        let max_unavailable = match &self.max_unavailable {
            None => Limit::Count(0),
            Some(v) => limit("spec.rollout.maxUnavailable", v)?,
        };
        Ok(RolloutPolicy {
            batches,
            success_threshold_pct,
            device_timeout_secs,
            min_ready_secs,
            max_unavailable,
            auto_rollback: self.auto_rollback,
        })
    }
}

/// The CustomResourceDefinition, as YAML (what
/// `edge-manifests/fleetdeployment-crd.yaml` holds).
pub fn crd_yaml() -> String {
    let crd = FleetDeploymentResource::crd();
    let body = serde_yaml_ng::to_string(&crd).unwrap_or_default();
    format!(
        "# Generated from src/bridge/fleets/crd.rs (the test crd_file_is_generated_from_the_types\n\
         # fails when it differs; KEDGE_WRITE_CRD=1 rewrites it). Apply with\n\
         #   kubectl apply -f edge-manifests/fleetdeployment-crd.yaml\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_file_is_generated_from_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("edge-manifests/fleetdeployment-crd.yaml");
        let want = crd_yaml();
        if std::env::var_os("KEDGE_WRITE_CRD").is_some() {
            std::fs::write(&path, &want).expect("write the CRD");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} differs from the types: run KEDGE_WRITE_CRD=1 cargo test --features bridge --lib crd_file",
            path.display()
        );
    }

    #[test]
    fn the_rollout_spec_becomes_the_wire_policy_or_names_the_field() {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "batches": [{"selector": "canary=true", "limit": 1}, {"limit": "25%"}],
            "maxUnavailable": "10%",
        }))
        .expect("spec");
        let p = spec.policy().expect("policy");
        assert_eq!(p.batches[0].limit, Limit::Count(1));
        assert_eq!(p.batches[1].limit, Limit::Percent(25));
        assert_eq!(p.success_threshold_pct, 100);
        assert_eq!(p.device_timeout_secs, 600);
        assert_eq!(p.min_ready_secs, 10);
        assert_eq!(p.max_unavailable, Limit::Percent(10));
        assert!(p.auto_rollback);
        let bad: RolloutSpec = serde_json::from_value(serde_json::json!({
            "batches": [{"limit": "150%"}],
        }))
        .expect("spec");
        assert_eq!(
            bad.policy().map_err(|e| e.path),
            Err("spec.rollout.batches[0].limit".to_string())
        );
        let bad = RolloutSpec {
            success_threshold: 0,
            ..RolloutSpec::default()
        };
        assert_eq!(
            bad.policy().map_err(|e| e.path),
            Err("spec.rollout.successThreshold".to_string())
        );
    }
}
