//! Kubernetes Pod manifests → edge [`PodSpec`]: the one conversion used by
//! `kedge apply -f`, the agent's static-pod directory and the Kubernetes bridge.
//!
//! The rules follow the kubelet's: Kubernetes defaults are applied, a field the
//! agent cannot honour is rejected with its exact field path
//! (`spec.containers[0].stdin: not supported on kedge nodes`), and fields
//! that only matter to a scheduler or to the cluster are accepted and ignored.
//! docs/compatibility.md gives the answer for every field of `PodSpec` and
//! `Container`; the `compatibility` tests keep it true.
//!
//! References to cluster objects (ConfigMaps, Secrets, image pull secrets) are
//! resolved through a [`Resolver`]: the bridge reads the cluster; `kedge
//! apply -f --node` and `kedge convert` use a [`FileResolver`] over the
//! Secrets and ConfigMaps of the same file; static pods use [`NoResolver`].
//! Without the cluster, every mandatory reference to an object not given is
//! an error and every optional one is skipped.
//!
//! By concern: `manifests` (files → Pods), `pod` (the entry points and the
//! pod-level fields), `container`, `volumes`, `env`, `probes`, `security`,
//! `quantities`; here the errors, the resolver and what they share.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Container, ContainerPort, DEFAULT_TERMINATION_MESSAGE_PATH, DnsPolicy, EnvVar, Hook,
    HostPathType, Lifecycle, MountPropagation, PodDns, PodSecurity, PodSpec, Probe, ProbeHandler,
    PullPolicy, Resources, RestartPolicy, RuntimeKind, SeLinuxOptions, SecurityContext,
    SecurityProfile, StatusField, Volume, VolumeMount, VolumeSource, WASM_RUNTIME_CLASS,
};
use crate::model::validate::{LABEL_RULE, SUBDOMAIN_RULE, is_dns1123_label, is_dns1123_subdomain};

#[cfg(test)]
mod compatibility;
mod container;
mod env;
mod manifests;
mod objects;
mod pod;
mod probes;
mod quantities;
mod security;
#[cfg(test)]
mod testing;
mod volumes;

pub use manifests::{Manifests, parse_manifests, parse_pod_manifests};
pub use objects::{FileResolver, Reader};
pub use pod::{bind_to_node, convert_pod, pod_spec_from_k8s, pod_spec_from_k8s_with, unbound};
use probes::ProbeKind;
pub use quantities::{bytes, cpu_millis};
use volumes::volume_mounts;
pub use volumes::{SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED, TOKEN_MOUNT_PATH};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    /// A field of a pod that cannot be converted, e.g.
    /// `spec.containers[0].stdin: not supported on kedge nodes`.
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    /// A document of a manifest file that cannot be parsed or is not a v1 Pod.
    /// `index` counts the documents of the file from 0, empty ones included.
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
}

/// Something of a pod that is accepted but not honoured as Kubernetes
/// would, and that the user must be told about: `kedge apply` and `kedge
/// convert` print it (`Warning: ...`), the bridge makes it a Warning Event.
/// Only what Kubernetes adds to every pod on its own is accepted this way
/// (the service account token volume); what a user asks for explicitly and
/// cannot be honoured is refused ([`ConvertError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertWarning {
    /// The field left out, e.g. `spec.volumes[0]`.
    pub path: String,
    /// A CamelCase reason, the Event's (`ServiceAccountTokenNotMounted`).
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConvertWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A converted pod and what the user must be told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub spec: PodSpec,
    /// At most one per reason.
    pub warnings: Vec<ConvertWarning>,
}

fn field(path: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError::Field {
        path: path.into(),
        message: message.into(),
    }
}

fn unsupported(path: impl Into<String>) -> ConvertError {
    field(path, "not supported on kedge nodes")
}

fn document(index: usize, message: impl Into<String>) -> ConvertError {
    ConvertError::Document {
        index,
        message: message.into(),
    }
}

/// Looks up the ConfigMaps and Secrets a pod refers to. The bridge implements
/// it with the Kubernetes API; `kedge apply` uses [`NoResolver`].
pub trait Resolver {
    /// The ConfigMap's `data` and `binaryData` merged, or `None` if it does not exist.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The Secret's `data` (decoded), or `None` if it does not exist.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// Whether this resolver reads the cluster. One that sees only what it
    /// was given ([`NoResolver`]: nothing; [`FileResolver`]: the objects of
    /// a manifest file) reports a missing mandatory reference with
    /// [`Resolver::missing_words`], and a missing image pull secret too (the
    /// kubelet skips one, as the image may be public; here it was more
    /// likely left out of the file).
    fn can_resolve(&self) -> bool {
        true
    }
    /// What follows `secret "x"` in the error for a missing mandatory
    /// reference of a resolver that does not read the cluster.
    fn missing_words(&self) -> String {
        "not found".into()
    }
    /// Whether the ConfigMap (`secret` false) or Secret a lookup just found
    /// nothing for is still being fetched: its answer is not known yet, and
    /// a caller waits for it rather than report the object missing.
    fn pending(&self, _secret: bool, _namespace: &str, _name: &str) -> bool {
        false
    }
    /// Why this caller cannot send Secret values at all (a fleet's one spec
    /// goes to many devices and cannot be sealed to each), or None. A
    /// reference to a Secret, optional or not, is then refused at its path.
    fn secrets_refused(&self) -> Option<&'static str> {
        None
    }
}

/// The resolver for manifests converted without cluster access: nothing
/// exists, and mandatory references must have been resolved by the sender.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoResolver;

impl Resolver for NoResolver {
    fn config_map(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn secret(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn can_resolve(&self) -> bool {
        false
    }
    fn missing_words(&self) -> String {
        "must be resolved before sending (kedge apply cannot read the cluster)".into()
    }
}

#[derive(Debug, Clone, Copy)]
enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    fn word(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        }
    }
}

fn check_label(path: &str, what: &str, value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        return Err(field(path, "required"));
    }
    if !is_dns1123_label(value) {
        return Err(field(
            path,
            format!("{value:?} is not a valid {what}: {LABEL_RULE}"),
        ));
    }
    Ok(())
}

/// IANA service name, as Kubernetes requires for port names.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn non_empty<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

struct Ctx<'a> {
    pod: &'a k8s::Pod,
    spec: &'a k8s::PodSpec,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    runtime: RuntimeKind,
    host_network: bool,
    resolver: &'a dyn Resolver,
    /// The names of the service account token volumes Kubernetes injected
    /// (left out, with their mounts; see `volumes::is_injected_token_volume`).
    token_volumes: BTreeSet<&'a str>,
}

impl Ctx<'_> {
    /// Looks up a referenced object: `Ok(None)` if it is optional and missing.
    fn lookup(
        &self,
        kind: ObjectKind,
        name: &str,
        optional: Option<bool>,
        path: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConvertError> {
        if name.is_empty() {
            return Err(field(path, format!("{} name is required", kind.word())));
        }
        let found = match kind {
            ObjectKind::ConfigMap => self.resolver.config_map(self.namespace, name),
            ObjectKind::Secret => {
                if let Some(why) = self.resolver.secrets_refused() {
                    return Err(field(path, format!("secret {name:?}: {why}")));
                }
                self.resolver.secret(self.namespace, name)
            }
        };
        match found {
            Some(data) => Ok(Some(data)),
            None if optional == Some(true) => Ok(None),
            None if self.resolver.can_resolve() => {
                Err(field(path, format!("{} {name:?} not found", kind.word())))
            }
            None => Err(field(
                path,
                format!("{} {name:?} {}", kind.word(), self.resolver.missing_words()),
            )),
        }
    }
}

pub(super) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn resolver_reports_missing_mandatory_references() {
        let r = resolver();
        let env = |source: Value| {
            json!({"spec": {"containers": [{"name": "app", "image": "nginx",
                "env": [{"name": "X", "valueFrom": source}]}]}})
        };
        let cases = [
            (
                env(json!({"configMapKeyRef": {"name": "absent", "key": "k"}})),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef: configmap \"absent\" not found",
            ),
            (
                env(json!({"configMapKeyRef": {"name": "cfg", "key": "nope"}})),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef.key: key \"nope\" not found in configmap \"cfg\"",
            ),
            (
                env(json!({"secretKeyRef": {"name": "absent", "key": "k"}})),
                "spec.containers[0].env[0].valueFrom.secretKeyRef: secret \"absent\" not found",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "image": "nginx",
                    "envFrom": [{"secretRef": {"name": "absent"}}]}]}}),
                "spec.containers[0].envFrom[0].secretRef: secret \"absent\" not found",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "image": "nginx",
                    "envFrom": [{"prefix": "X_"}]}]}}),
                "spec.containers[0].envFrom[0]: must specify exactly one of configMapRef and secretRef",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "secret": {"secretName": "absent"}}]}}),
                "spec.volumes[0].secret.secretName: secret \"absent\" not found",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cfg",
                    "items": [{"key": "nope", "path": "n"}]}}]}}),
                "spec.volumes[0].configMap.items[0].key: key \"nope\" not found in configmap \"cfg\"",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cfg",
                    "items": [{"key": "LEVEL", "path": "/etc/level"}]}}]}}),
                "spec.volumes[0].configMap.items[0].path: must be a relative path",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cfg",
                    "items": [{"key": "LEVEL", "path": "level", "mode": 256}]}}]}}),
                "spec.volumes[0].configMap.items[0].mode: per-file modes are not supported on kedge nodes (use defaultMode)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cfg", "defaultMode": 4096}}]}}),
                "spec.volumes[0].configMap.defaultMode: must be a file mode between 0 and 0777 (octal)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "secret": {"secretName": "dotted"}}]}}),
                "spec.volumes[0].secret.secretName: secret \"dotted\" has key \"..data\", which is not a valid file name",
            ),
            (
                json!({"spec": {"imagePullSecrets": [{"name": "opaque"}]}}),
                "spec.imagePullSecrets[0].name: secret \"opaque\" has no .dockerconfigjson (use a kubernetes.io/dockerconfigjson secret)",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(
                convert_with(patch.clone(), &r),
                Err(expected.to_owned()),
                "patch: {patch}"
            );
        }
    }

    #[test]
    fn no_resolver_skips_optional_references() {
        let spec = convert(json!({"spec": {
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "optional": true}}],
            "containers": [{"name": "app", "image": "nginx",
                "envFrom": [{"configMapRef": {"name": "cfg", "optional": true}}],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}}]
            }]
        }}));
        assert!(spec.containers[0].env.is_empty());
        assert_eq!(
            spec.volumes[0].source,
            VolumeSource::Files {
                files: vec![],
                default_mode: 0o644
            }
        );
    }
}
