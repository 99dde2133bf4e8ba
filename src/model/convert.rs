//! Kubernetes Pod manifests → edge [`PodSpec`]: the one conversion used by
//! `kedge apply -f`, the agent's static-pod directory and the Kubernetes bridge.
//!
//! The rules follow the kubelet's: Kubernetes defaults are applied, a field the
//! agent cannot honour is rejected with its exact field path
//! (`spec.containers[0].lifecycle: not supported on kedge nodes`), and fields
//! that only matter to a scheduler or to the cluster are accepted and ignored.
//!
//! References to cluster objects (ConfigMaps, Secrets, image pull secrets) are
//! resolved through a [`Resolver`]; `kedge apply` and static pods use
//! [`NoResolver`], for which every mandatory reference is an error and every
//! optional one is skipped (the referenced object does not exist on the edge).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Container, ContainerPort, EnvVar, PodSpec, Probe, ProbeHandler, PullPolicy, Resources,
    RestartPolicy, RuntimeKind, SecurityContext, Volume, VolumeMount, VolumeSource,
    WASM_RUNTIME_CLASS,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    /// A field of a pod that cannot be converted, e.g.
    /// `spec.containers[0].lifecycle: not supported on kedge nodes`.
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    /// A document of a manifest file that cannot be parsed or is not a v1 Pod.
    /// `index` counts the documents of the file from 0, empty ones included.
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
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

// ---------------------------------------------------------------------------
// Resolving references to cluster objects

/// Looks up the ConfigMaps and Secrets a pod refers to. The bridge implements
/// it with the Kubernetes API; `kedge apply` uses [`NoResolver`].
pub trait Resolver {
    /// The ConfigMap's `data` and `binaryData` merged, or `None` if it does not exist.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The Secret's `data` (decoded), or `None` if it does not exist.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// Whether this resolver can look anything up at all. Only changes the
    /// wording of errors for missing mandatory references.
    fn can_resolve(&self) -> bool {
        true
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

// ---------------------------------------------------------------------------
// Parsing manifest files

/// Parses a YAML or JSON file that may hold several documents (`---`), and
/// `kind: List` / `kind: PodList` items. Empty documents are skipped. Any
/// document whose kind is not `Pod` (apiVersion `v1`) is an error naming its
/// index and kind (Deployments etc. are for the bridge). Fields unknown to
/// Kubernetes are errors, like `kubectl apply --validate=strict`.
pub fn parse_pod_manifests(text: &str) -> Result<Vec<k8s::Pod>, ConvertError> {
    let mut pods = Vec::new();
    for (index, doc) in split_documents(text)?.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        collect_pods(index, doc, &mut pods)?;
    }
    Ok(pods)
}

/// Every document of the file as JSON, empty documents as `Null`.
fn split_documents(text: &str) -> Result<Vec<Value>, ConvertError> {
    let mut docs = Vec::new();
    // Like kubectl: a file starting with `{` is JSON (JSON is nearly YAML, but
    // YAML rejects the tabs many JSON writers indent with).
    if text.trim_start().starts_with('{') {
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            let value = value.map_err(|e| document(docs.len(), format!("invalid json: {e}")))?;
            docs.push(value);
        }
    } else {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(de)
                .map_err(|e| document(docs.len(), format!("invalid yaml: {e}")))?;
            docs.push(value);
        }
    }
    Ok(docs)
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn collect_pods(index: usize, doc: Value, pods: &mut Vec<k8s::Pod>) -> Result<(), ConvertError> {
    if !doc.is_object() {
        return Err(document(
            index,
            "expected a mapping with apiVersion and kind",
        ));
    }
    let kind = str_field(&doc, "kind").unwrap_or_default().to_owned();
    let api_version = str_field(&doc, "apiVersion").unwrap_or_default().to_owned();
    match (kind.as_str(), api_version.as_str()) {
        ("List" | "PodList", "v1") => {
            let pod_list = kind == "PodList";
            let items = match doc.get("items") {
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => return Err(document(index, "items: expected a list")),
            };
            for (i, mut item) in items.into_iter().enumerate() {
                let prefix = format!("items[{i}]");
                // Items of a PodList need not repeat their kind.
                if pod_list && let Value::Object(map) = &mut item {
                    map.entry("kind").or_insert_with(|| "Pod".into());
                    map.entry("apiVersion").or_insert_with(|| "v1".into());
                }
                if !item.is_object() {
                    return Err(document(index, format!("{prefix}: expected a pod")));
                }
                let kind = str_field(&item, "kind").unwrap_or_default();
                let api_version = str_field(&item, "apiVersion").unwrap_or_default();
                if (kind, api_version) != ("Pod", "v1") {
                    return Err(document(
                        index,
                        format!("{prefix}: {}", wrong_kind(kind, api_version)),
                    ));
                }
                let pod =
                    pod_from_value(item).map_err(|m| document(index, format!("{prefix}: {m}")))?;
                pods.push(pod);
            }
            Ok(())
        }
        ("Pod", "v1") => {
            pods.push(pod_from_value(doc).map_err(|m| document(index, m))?);
            Ok(())
        }
        (kind, api_version) => Err(document(index, wrong_kind(kind, api_version))),
    }
}

fn wrong_kind(kind: &str, api_version: &str) -> String {
    if kind.is_empty() {
        return "missing kind (expected apiVersion: v1, kind: Pod)".into();
    }
    if api_version.is_empty() {
        return format!("kind {kind:?} has no apiVersion (expected apiVersion: v1, kind: Pod)");
    }
    format!(
        "kind {kind:?} (apiVersion {api_version}) is not supported: only v1 pods can be applied \
         to kedge nodes (deployments and other workloads go through the bridge)"
    )
}

fn pod_from_value(value: Value) -> Result<k8s::Pod, String> {
    let pod: k8s::Pod = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    // k8s-openapi ignores unknown fields; find them by comparing the input with
    // what the parsed pod serialises back to.
    let round_trip = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    let mut path = String::new();
    if let Some(unknown) = first_unknown_field(&value, &round_trip, &mut path) {
        return Err(format!("unknown field {unknown:?}"));
    }
    Ok(pod)
}

fn first_unknown_field(input: &Value, parsed: &Value, path: &mut String) -> Option<String> {
    match (input, parsed) {
        (Value::Object(input), Value::Object(parsed)) => {
            for (key, value) in input {
                if value.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = match parsed.get(key) {
                    None => Some(path.clone()),
                    Some(parsed) => first_unknown_field(value, parsed, path),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(input), Value::Array(parsed)) => {
            for (i, (value, parsed)) in input.iter().zip(parsed).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = first_unknown_field(value, parsed, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Quantities

/// A Kubernetes quantity as an exact decimal: `mantissa / 10^scale`, times
/// `10^pow10` and `1024^pow1024`.
struct ParsedQuantity {
    negative: bool,
    mantissa: u128,
    scale: u32,
    pow10: i32,
    pow1024: u32,
}

fn parse_quantity(q: &str) -> Result<ParsedQuantity, String> {
    let invalid = || format!("invalid quantity {q:?}");
    let (negative, rest) = match q.as_bytes().first() {
        Some(b'+') => (false, &q[1..]),
        Some(b'-') => (true, &q[1..]),
        _ => (false, q),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(invalid());
    }
    let too_large = || format!("quantity {q:?} is too large");
    let mut mantissa: u128 = 0;
    for digit in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    let scale = u32::try_from(frac_part.len()).map_err(|_| invalid())?;
    let (pow10, pow1024) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            let exponent = &s[1..];
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let exponent: i32 = exponent.parse().map_err(|_| invalid())?;
            (exponent, 0)
        }
        _ => return Err(invalid()),
    };
    Ok(ParsedQuantity {
        negative,
        mantissa,
        scale,
        pow10,
        pow1024,
    })
}

/// `q × factor` as an integer; a fraction is rounded up, or an error unless `round_up`.
fn quantity_units(q: &str, factor: u128, round_up: bool) -> Result<u64, String> {
    let p = parse_quantity(q)?;
    let too_large = || format!("quantity {q:?} is too large");
    let fractional = || format!("fractional byte value {q:?} is invalid, must be an integer");
    if p.mantissa == 0 {
        return Ok(0);
    }
    if p.negative {
        return Err(format!("quantity {q:?} must not be negative"));
    }
    let mut num_exp = p.pow10.max(0).unsigned_abs();
    let mut den_exp = p.pow10.min(0).unsigned_abs().saturating_add(p.scale);
    let common = num_exp.min(den_exp);
    num_exp -= common;
    den_exp -= common;
    let numerator = 10u128
        .checked_pow(num_exp)
        .and_then(|n| n.checked_mul(1024u128.checked_pow(p.pow1024)?))
        .and_then(|n| n.checked_mul(p.mantissa))
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(too_large)?;
    let Some(denominator) = 10u128.checked_pow(den_exp) else {
        // Smaller than any unit: the numerator fits in u128, the denominator does not.
        return if round_up { Ok(1) } else { Err(fractional()) };
    };
    let mut units = numerator / denominator;
    if numerator % denominator != 0 {
        if !round_up {
            return Err(fractional());
        }
        units += 1;
    }
    // Kubernetes caps quantities at 2^63-1.
    u64::try_from(units)
        .ok()
        .filter(|&u| i64::try_from(u).is_ok())
        .ok_or_else(too_large)
}

/// Parses a Kubernetes cpu quantity into millicores (`"500m"` → 500,
/// `"0.25"` → 250, `"2"` → 2000). Values below a millicore round up, as in Kubernetes.
pub fn cpu_millis(q: &str) -> Result<u64, String> {
    quantity_units(q, 1000, true)
}

/// Parses a Kubernetes memory or storage quantity into bytes (`"128Mi"`,
/// `"1G"`, `"1e3"`, `"1.5Gi"`). A fraction of a byte (`"100m"`) is an error.
pub fn bytes(q: &str) -> Result<u64, String> {
    quantity_units(q, 1, false)
}

// ---------------------------------------------------------------------------
// Names

use crate::model::validate::{LABEL_RULE, SUBDOMAIN_RULE, is_dns1123_label, is_dns1123_subdomain};

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

// ---------------------------------------------------------------------------
// Pods

/// Converts one Pod without cluster access (see [`NoResolver`]).
pub fn pod_spec_from_k8s(pod: &k8s::Pod) -> Result<PodSpec, ConvertError> {
    pod_spec_from_k8s_with(pod, &NoResolver)
}

/// Converts one Pod, resolving ConfigMap and Secret references with `resolver`.
///
/// `uid` and `generation` come from `metadata.uid` and `metadata.generation`
/// when set, otherwise they are `""` and `0` and the caller fills them in (a
/// caller that makes up a uid should set `metadata.uid` first, so that a
/// `fieldRef` to `metadata.uid` resolves). The namespace defaults to `default`.
pub fn pod_spec_from_k8s_with(
    pod: &k8s::Pod,
    resolver: &dyn Resolver,
) -> Result<PodSpec, ConvertError> {
    let meta = &pod.metadata;
    let name = match meta.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ if meta.generate_name.is_some() => {
            return Err(field(
                "metadata.generateName",
                "not supported on kedge nodes (set metadata.name)",
            ));
        }
        _ => return Err(field("metadata.name", "required")),
    };
    if !is_dns1123_subdomain(name) {
        return Err(field(
            "metadata.name",
            format!("{name:?} is not a valid pod name: {SUBDOMAIN_RULE}"),
        ));
    }
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default");
    check_label("metadata.namespace", "namespace", namespace)?;
    let uid = meta.uid.clone().unwrap_or_default();
    let generation = match meta.generation {
        None => 0,
        Some(g) => {
            u64::try_from(g).map_err(|_| field("metadata.generation", "must not be negative"))?
        }
    };
    let spec = pod.spec.as_ref().ok_or_else(|| field("spec", "required"))?;

    check_pod_fields(spec, name)?;

    let runtime = match spec.runtime_class_name.as_deref() {
        None => RuntimeKind::Container,
        Some(WASM_RUNTIME_CLASS) => RuntimeKind::Wasm,
        Some(other) => {
            return Err(field(
                "spec.runtimeClassName",
                format!(
                    "runtime class {other:?} is not available on kedge nodes (use {WASM_RUNTIME_CLASS} or none)"
                ),
            ));
        }
    };
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(other) => {
            return Err(field(
                "spec.restartPolicy",
                format!("unknown restart policy {other:?} (use Always, OnFailure or Never)"),
            ));
        }
    };
    let termination_grace_period_secs = match spec.termination_grace_period_seconds {
        None => 30,
        Some(secs) => u64::try_from(secs)
            .map_err(|_| field("spec.terminationGracePeriodSeconds", "must not be negative"))?,
    };
    let host_network = spec.host_network.unwrap_or(false);
    if host_network && runtime == RuntimeKind::Wasm {
        return Err(field(
            "spec.hostNetwork",
            "wasm pods cannot use the host network",
        ));
    }

    let ctx = Ctx {
        pod,
        spec,
        namespace,
        name,
        uid: &uid,
        runtime,
        host_network,
        resolver,
    };

    let mut volumes = Vec::new();
    let mut volume_names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("spec.volumes[{i}]");
        check_label(&format!("{path}.name"), "volume name", &v.name)?;
        if !volume_names.insert(v.name.as_str()) {
            return Err(field(
                format!("{path}.name"),
                format!("duplicate volume name {:?}", v.name),
            ));
        }
        volumes.push(ctx.volume(v, &path)?);
    }

    let mut container_names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut init_containers = Vec::new();
    let mut containers = Vec::new();
    let lists = [
        (
            spec.init_containers.as_deref().unwrap_or_default(),
            "spec.initContainers",
            true,
        ),
        (spec.containers.as_slice(), "spec.containers", false),
    ];
    for (list, list_path, init) in lists {
        for (i, c) in list.iter().enumerate() {
            let path = format!("{list_path}[{i}]");
            if !c.name.is_empty() && !container_names.insert(c.name.as_str()) {
                return Err(field(
                    format!("{path}.name"),
                    format!("duplicate container name {:?}", c.name),
                ));
            }
            let container = ctx.container(c, &path, init, &volume_names)?;
            for (k, port) in container.ports.iter().enumerate() {
                if let Some(host_port) = port.host_port
                    && !host_ports.insert((host_port, port.protocol.clone()))
                {
                    return Err(field(
                        format!("{path}.ports[{k}].hostPort"),
                        format!("duplicate host port {host_port}/{}", port.protocol),
                    ));
                }
            }
            if init {
                init_containers.push(container);
            } else {
                containers.push(container);
            }
        }
    }
    if containers.is_empty() {
        return Err(field(
            "spec.containers",
            "at least one container is required",
        ));
    }

    let image_pull_secrets = ctx.image_pull_secrets()?;

    let spec = PodSpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.clone(),
        generation,
        labels: meta.labels.clone().unwrap_or_default(),
        runtime,
        restart_policy,
        termination_grace_period_secs,
        host_network,
        init_containers,
        containers,
        volumes,
        image_pull_secrets,
    };
    validate_converted(spec)
}

/// The rules every receiver applies (`model::validate`), checked here too so
/// that `kedge apply`, `kedge convert` and the bridge refuse what a device
/// would refuse, with the field path. An empty uid is the caller's to fill.
fn validate_converted(mut spec: PodSpec) -> Result<PodSpec, ConvertError> {
    use crate::model::validate::Validate;
    let no_uid = spec.uid.is_empty();
    if no_uid {
        spec.uid.push_str("to-be-set");
    }
    let result = spec.validate();
    if no_uid {
        spec.uid.clear();
    }
    result.map_err(|e| field(e.field, e.detail))?;
    Ok(spec)
}

/// Rejects the pod-level fields the agent cannot honour. Accepted and ignored,
/// because they only matter to a scheduler or the cluster: affinity, tolerations,
/// nodeSelector, nodeName, schedulerName, priority, priorityClassName,
/// preemptionPolicy, topologySpreadConstraints, serviceAccount(Name),
/// automountServiceAccountToken, enableServiceLinks, dnsPolicy and subdomain
/// (there is no cluster DNS on the edge), and status. `hostname` is accepted
/// when it is the pod's name (the default, and what StatefulSets set).
fn check_pod_fields(spec: &k8s::PodSpec, name: &str) -> Result<(), ConvertError> {
    let flags = [
        (spec.host_pid, "spec.hostPID"),
        (spec.host_ipc, "spec.hostIPC"),
        (spec.share_process_namespace, "spec.shareProcessNamespace"),
        (spec.set_hostname_as_fqdn, "spec.setHostnameAsFQDN"),
    ];
    for (flag, path) in flags {
        if flag == Some(true) {
            return Err(unsupported(path));
        }
    }
    if spec.host_users == Some(false) {
        return Err(field(
            "spec.hostUsers",
            "user namespaces are not supported on kedge nodes",
        ));
    }
    let present = [
        (
            non_empty(&spec.ephemeral_containers),
            "spec.ephemeralContainers",
        ),
        (non_empty(&spec.readiness_gates), "spec.readinessGates"),
        (non_empty(&spec.resource_claims), "spec.resourceClaims"),
        (non_empty(&spec.host_aliases), "spec.hostAliases"),
        (
            spec.overhead.as_ref().is_some_and(|o| !o.is_empty()),
            "spec.overhead",
        ),
        (spec.dns_config.is_some(), "spec.dnsConfig"),
        (
            spec.active_deadline_seconds.is_some(),
            "spec.activeDeadlineSeconds",
        ),
        (spec.resources.is_some(), "spec.resources"),
        (
            spec.hostname
                .as_ref()
                .is_some_and(|h| !h.is_empty() && h != name),
            "spec.hostname",
        ),
    ];
    for (is_set, path) in present {
        if is_set {
            return Err(unsupported(path));
        }
    }
    if non_empty(&spec.scheduling_gates) {
        return Err(field(
            "spec.schedulingGates",
            "the pod is gated and must not run yet (remove its scheduling gates)",
        ));
    }
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        return Err(field(
            "spec.os.name",
            format!(
                "os {:?} is not supported: kedge nodes run linux pods",
                os.name
            ),
        ));
    }
    // Pod security context. Honoured: runAsUser and runAsGroup (copied into
    // every container that does not set its own) and runAsNonRoot (checked
    // statically, see `Ctx::security_context`). Rejected: fsGroup,
    // supplementalGroups and sysctls, which the agent cannot apply. Ignored:
    // seLinuxOptions and seLinuxChangePolicy (gateways run without SELinux
    // labelling), seccompProfile and appArmorProfile (the runtime's default
    // profile applies), windowsOptions (linux only), and fsGroupChangePolicy and
    // supplementalGroupsPolicy (meaningless without fsGroup/supplementalGroups).
    if let Some(sc) = &spec.security_context {
        if sc.fs_group.is_some() {
            return Err(unsupported("spec.securityContext.fsGroup"));
        }
        if non_empty(&sc.supplemental_groups) {
            return Err(unsupported("spec.securityContext.supplementalGroups"));
        }
        if non_empty(&sc.sysctls) {
            return Err(unsupported("spec.securityContext.sysctls"));
        }
    }
    Ok(())
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
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
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
            ObjectKind::Secret => self.resolver.secret(self.namespace, name),
        };
        match found {
            Some(data) => Ok(Some(data)),
            None if optional == Some(true) => Ok(None),
            None if self.resolver.can_resolve() => {
                Err(field(path, format!("{} {name:?} not found", kind.word())))
            }
            None => Err(field(
                path,
                format!(
                    "{} {name:?} must be resolved before sending (kedge apply cannot read the cluster)",
                    kind.word()
                ),
            )),
        }
    }

    fn volume(&self, v: &k8s::Volume, path: &str) -> Result<Volume, ConvertError> {
        // Every source but the supported ones, by its field name.
        let others = [
            (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
            (v.azure_disk.is_some(), "azureDisk"),
            (v.azure_file.is_some(), "azureFile"),
            (v.cephfs.is_some(), "cephfs"),
            (v.cinder.is_some(), "cinder"),
            (v.csi.is_some(), "csi"),
            (v.downward_api.is_some(), "downwardAPI"),
            (v.ephemeral.is_some(), "ephemeral"),
            (v.fc.is_some(), "fc"),
            (v.flex_volume.is_some(), "flexVolume"),
            (v.flocker.is_some(), "flocker"),
            (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
            (v.git_repo.is_some(), "gitRepo"),
            (v.glusterfs.is_some(), "glusterfs"),
            (v.image.is_some(), "image"),
            (v.iscsi.is_some(), "iscsi"),
            (v.nfs.is_some(), "nfs"),
            (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
            (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
            (v.portworx_volume.is_some(), "portworxVolume"),
            (v.projected.is_some(), "projected"),
            (v.quobyte.is_some(), "quobyte"),
            (v.rbd.is_some(), "rbd"),
            (v.scale_io.is_some(), "scaleIO"),
            (v.storageos.is_some(), "storageos"),
            (v.vsphere_volume.is_some(), "vsphereVolume"),
        ];
        let supported = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
        ];
        let count =
            supported.iter().filter(|s| **s).count() + others.iter().filter(|(s, _)| *s).count();
        if count > 1 {
            return Err(field(path, "may not specify more than 1 volume type"));
        }
        let token = v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        });
        if token {
            // The volume Kubernetes injects for API access (kube-api-access-*).
            return Err(field(
                format!("{path}.projected"),
                "service account tokens are not available on kedge nodes (set automountServiceAccountToken: false)",
            ));
        }
        if let Some((_, source)) = others.iter().find(|(s, _)| *s) {
            return Err(field(
                format!("{path}.{source}"),
                "volume type not supported on kedge nodes (use emptyDir, hostPath, configMap or secret)",
            ));
        }
        let source = if let Some(host_path) = &v.host_path {
            self.host_path(host_path, &format!("{path}.hostPath"))?
        } else if let Some(cm) = &v.config_map {
            let path = format!("{path}.configMap");
            self.files(
                ObjectKind::ConfigMap,
                &cm.name,
                cm.optional,
                cm.items.as_deref(),
                cm.default_mode,
                &path,
            )?
        } else if let Some(secret) = &v.secret {
            let path = format!("{path}.secret");
            self.files(
                ObjectKind::Secret,
                secret.secret_name.as_deref().unwrap_or_default(),
                secret.optional,
                secret.items.as_deref(),
                secret.default_mode,
                &path,
            )?
        } else {
            // No source at all defaults to an emptyDir, as in Kubernetes.
            let empty_dir = v.empty_dir.clone().unwrap_or_default();
            self.empty_dir(&empty_dir, &format!("{path}.emptyDir"))?
        };
        Ok(Volume {
            name: v.name.clone(),
            source,
        })
    }

    fn empty_dir(
        &self,
        e: &k8s::EmptyDirVolumeSource,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        let memory = match e.medium.as_deref() {
            None | Some("") => false,
            Some("Memory") => true,
            Some(other) => {
                return Err(field(
                    format!("{path}.medium"),
                    format!(
                        "medium {other:?} is not supported on kedge nodes (use \"\" or Memory)"
                    ),
                ));
            }
        };
        let size_limit_bytes = e
            .size_limit
            .as_ref()
            .map(|q| bytes(&q.0).map_err(|m| field(format!("{path}.sizeLimit"), m)))
            .transpose()?;
        Ok(VolumeSource::EmptyDir {
            memory,
            size_limit_bytes,
        })
    }

    fn host_path(
        &self,
        h: &k8s::HostPathVolumeSource,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        if h.path.is_empty() {
            return Err(field(format!("{path}.path"), "required"));
        }
        if !h.path.starts_with('/') {
            return Err(field(format!("{path}.path"), "must be an absolute path"));
        }
        if h.path.split('/').any(|part| part == "..") {
            return Err(field(format!("{path}.path"), "must not contain '..'"));
        }
        // The type is accepted and not checked: the agent mounts what is there.
        match h.type_.as_deref() {
            None
            | Some(
                "" | "DirectoryOrCreate" | "Directory" | "FileOrCreate" | "File" | "Socket"
                | "CharDevice" | "BlockDevice",
            ) => {}
            Some(other) => {
                return Err(field(
                    format!("{path}.type"),
                    format!("unknown hostPath type {other:?}"),
                ));
            }
        }
        Ok(VolumeSource::HostPath {
            path: h.path.clone(),
        })
    }

    /// A configMap or secret volume as resolved files.
    fn files(
        &self,
        kind: ObjectKind,
        name: &str,
        optional: Option<bool>,
        items: Option<&[k8s::KeyToPath]>,
        default_mode: Option<i32>,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        let default_mode = match default_mode {
            None => 0o644,
            Some(mode) => file_mode(mode).ok_or_else(|| {
                field(
                    format!("{path}.defaultMode"),
                    "must be a file mode between 0 and 0777 (octal)",
                )
            })?,
        };
        for (k, item) in items.into_iter().flatten().enumerate() {
            let item_path = format!("{path}.items[{k}]");
            if item.key.is_empty() {
                return Err(field(format!("{item_path}.key"), "required"));
            }
            check_relative_path(&format!("{item_path}.path"), &item.path)?;
            if let Some(mode) = item.mode
                && file_mode(mode) != Some(default_mode)
            {
                return Err(field(
                    format!("{item_path}.mode"),
                    "per-file modes are not supported on kedge nodes (use defaultMode)",
                ));
            }
        }
        let name_path = match kind {
            ObjectKind::ConfigMap => format!("{path}.name"),
            ObjectKind::Secret => format!("{path}.secretName"),
        };
        let Some(data) = self.lookup(kind, name, optional, &name_path)? else {
            // Optional and missing: an empty volume, as in Kubernetes.
            return Ok(VolumeSource::Files {
                files: Vec::new(),
                default_mode,
            });
        };
        let files = match items {
            None => {
                if let Some(key) = data.keys().find(|k| !is_file_name(k)) {
                    return Err(field(
                        name_path,
                        format!(
                            "{} {name:?} has key {key:?}, which is not a valid file name",
                            kind.word()
                        ),
                    ));
                }
                data.into_iter().collect()
            }
            Some(items) => {
                let mut files = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    match data.get(&item.key) {
                        Some(content) => files.push((item.path.clone(), content.clone())),
                        None if optional == Some(true) => {}
                        None => {
                            return Err(field(
                                format!("{path}.items[{k}].key"),
                                format!("key {:?} not found in {} {name:?}", item.key, kind.word()),
                            ));
                        }
                    }
                }
                files
            }
        };
        Ok(VolumeSource::Files {
            files,
            default_mode,
        })
    }

    fn image_pull_secrets(&self) -> Result<Vec<String>, ConvertError> {
        let mut out = Vec::new();
        for (i, reference) in self.spec.image_pull_secrets.iter().flatten().enumerate() {
            let path = format!("spec.imagePullSecrets[{i}].name");
            if reference.name.is_empty() {
                return Err(field(path, "required"));
            }
            if !self.resolver.can_resolve() {
                return Err(field(
                    path,
                    format!(
                        "secret {:?} must be resolved before sending (kedge apply cannot read the cluster)",
                        reference.name
                    ),
                ));
            }
            // Like the kubelet, a missing pull secret is skipped: the image may be public.
            let Some(data) = self.resolver.secret(self.namespace, &reference.name) else {
                continue;
            };
            let config = if let Some(json) = data.get(".dockerconfigjson") {
                String::from_utf8(json.clone()).map_err(|_| {
                    field(
                        &path,
                        format!(
                            "secret {:?}: .dockerconfigjson is not valid utf-8",
                            reference.name
                        ),
                    )
                })?
            } else if let Some(legacy) = data.get(".dockercfg") {
                // The legacy format is the `auths` map on its own.
                let auths: Value = serde_json::from_slice(legacy).map_err(|e| {
                    field(
                        &path,
                        format!("secret {:?}: invalid .dockercfg: {e}", reference.name),
                    )
                })?;
                serde_json::json!({ "auths": auths }).to_string()
            } else {
                return Err(field(
                    path,
                    format!(
                        "secret {:?} has no .dockerconfigjson (use a kubernetes.io/dockerconfigjson secret)",
                        reference.name
                    ),
                ));
            };
            out.push(config);
        }
        Ok(out)
    }

    fn container(
        &self,
        c: &k8s::Container,
        path: &str,
        init: bool,
        volume_names: &BTreeSet<&str>,
    ) -> Result<Container, ConvertError> {
        check_label(&format!("{path}.name"), "container name", &c.name)?;

        let flags = [
            (c.stdin, "stdin"),
            (c.stdin_once, "stdinOnce"),
            (c.tty, "tty"),
        ];
        for (flag, name) in flags {
            if flag == Some(true) {
                return Err(unsupported(format!("{path}.{name}")));
            }
        }
        if c.lifecycle.is_some() {
            return Err(unsupported(format!("{path}.lifecycle")));
        }
        if non_empty(&c.resize_policy) {
            return Err(unsupported(format!("{path}.resizePolicy")));
        }
        if c.restart_policy.is_some() {
            return Err(unsupported(format!("{path}.restartPolicy")));
        }
        if non_empty(&c.volume_devices) {
            return Err(unsupported(format!("{path}.volumeDevices")));
        }
        if init {
            let probes = [
                (c.liveness_probe.is_some(), "livenessProbe"),
                (c.readiness_probe.is_some(), "readinessProbe"),
                (c.startup_probe.is_some(), "startupProbe"),
            ];
            for (is_set, name) in probes {
                if is_set {
                    return Err(field(
                        format!("{path}.{name}"),
                        "not supported on init containers",
                    ));
                }
            }
        }
        // terminationMessagePath and terminationMessagePolicy are ignored: they
        // only shape the message in the container's status.

        let image = c.image.as_deref().unwrap_or_default();
        let image_path = format!("{path}.image");
        if image.is_empty() {
            return Err(field(image_path, "required"));
        }
        if image.chars().any(char::is_whitespace) {
            return Err(field(image_path, format!("invalid image {image:?}")));
        }
        let module_url = self.check_image(image, &image_path)?;
        let image_pull_policy = match c.image_pull_policy.as_deref() {
            None | Some("") if module_url => PullPolicy::IfNotPresent,
            None | Some("") => default_pull_policy(image),
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            Some(other) => {
                return Err(field(
                    format!("{path}.imagePullPolicy"),
                    format!("unknown pull policy {other:?} (use Always, IfNotPresent or Never)"),
                ));
            }
        };

        let ports = self.ports(c, path)?;
        let env = self.env(c, path)?;
        let volume_mounts = volume_mounts(c, path, volume_names)?;
        let resources = resources(c.resources.as_ref(), &format!("{path}.resources"))?;
        let probe = |p: &Option<k8s::Probe>, name: &str, kind: ProbeKind| {
            p.as_ref()
                .map(|p| self.probe(p, &format!("{path}.{name}"), &ports, kind))
                .transpose()
        };
        let liveness_probe = probe(&c.liveness_probe, "livenessProbe", ProbeKind::Liveness)?;
        let readiness_probe = probe(&c.readiness_probe, "readinessProbe", ProbeKind::Readiness)?;
        let startup_probe = probe(&c.startup_probe, "startupProbe", ProbeKind::Startup)?;
        let security_context = self.security_context(c.security_context.as_ref(), path)?;

        Ok(Container {
            name: c.name.clone(),
            image: image.to_owned(),
            image_pull_policy,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|d| !d.is_empty()),
            env,
            volume_mounts,
            ports,
            resources,
            liveness_probe,
            readiness_probe,
            startup_probe,
            security_context,
        })
    }

    /// Checks an image reference for the pod's runtime; true for a Wasm module
    /// fetched from a `file://` or `https://` URL.
    fn check_image(&self, image: &str, path: &str) -> Result<bool, ConvertError> {
        let url = image.starts_with("file://") || image.starts_with("https://");
        if self.runtime == RuntimeKind::Container {
            if url || image.starts_with("http://") {
                return Err(field(
                    path,
                    format!(
                        "{image:?} is a wasm module url: set runtimeClassName: {WASM_RUNTIME_CLASS} to run it"
                    ),
                ));
            }
            return Ok(false);
        }
        if image.starts_with("http://") {
            return Err(field(
                path,
                "wasm modules are not fetched over plain http: use https://",
            ));
        }
        if !url {
            // An OCI reference to a Wasm artifact.
            return Ok(false);
        }
        let Some((location, digest)) = image.rsplit_once("@sha256:") else {
            return Err(field(
                path,
                "wasm module from file:// or https:// needs a digest: append @sha256:<hex>",
            ));
        };
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(field(
                path,
                format!("invalid digest sha256:{digest}: expected 64 lowercase hex characters"),
            ));
        }
        if let Some(file) = location.strip_prefix("file://") {
            if !file.starts_with('/') || file.len() < 2 {
                return Err(field(
                    path,
                    "file:// url needs an absolute path (file:///path/to/module.wasm@sha256:<hex>)",
                ));
            }
        } else if location.len() <= "https://".len() {
            return Err(field(path, "https:// url has no host"));
        }
        Ok(true)
    }

    fn ports(&self, c: &k8s::Container, path: &str) -> Result<Vec<ContainerPort>, ConvertError> {
        let mut out: Vec<ContainerPort> = Vec::new();
        for (k, p) in c.ports.iter().flatten().enumerate() {
            let path = format!("{path}.ports[{k}]");
            let container_port = port_number(p.container_port).ok_or_else(|| {
                field(
                    format!("{path}.containerPort"),
                    "must be between 1 and 65535",
                )
            })?;
            let mut host_port = match p.host_port {
                None | Some(0) => None,
                Some(n) => Some(port_number(n).ok_or_else(|| {
                    field(format!("{path}.hostPort"), "must be between 1 and 65535")
                })?),
            };
            if self.host_network {
                // Kubernetes: with the host network, the host port is the container port.
                match host_port {
                    None => host_port = Some(container_port),
                    Some(h) if h != container_port => {
                        return Err(field(
                            format!("{path}.hostPort"),
                            "must match containerPort when hostNetwork is true",
                        ));
                    }
                    Some(_) => {}
                }
            }
            if host_port.is_some() && self.runtime == RuntimeKind::Wasm {
                return Err(field(
                    format!("{path}.hostPort"),
                    "host ports are not supported for wasm containers",
                ));
            }
            if p.host_ip.as_ref().is_some_and(|ip| !ip.is_empty()) {
                return Err(unsupported(format!("{path}.hostIP")));
            }
            let protocol = match p.protocol.as_deref() {
                None | Some("") => "TCP",
                Some(proto @ ("TCP" | "UDP" | "SCTP")) => proto,
                Some(other) => {
                    return Err(field(
                        format!("{path}.protocol"),
                        format!("unknown protocol {other:?} (use TCP, UDP or SCTP)"),
                    ));
                }
            };
            let name = p.name.clone().filter(|n| !n.is_empty());
            if let Some(name) = &name {
                if !is_port_name(name) {
                    return Err(field(
                        format!("{path}.name"),
                        format!(
                            "{name:?} is not a valid port name: at most 15 lowercase letters, digits and '-', with at least one letter"
                        ),
                    ));
                }
                if out.iter().any(|o| o.name.as_ref() == Some(name)) {
                    return Err(field(
                        format!("{path}.name"),
                        format!("duplicate port name {name:?}"),
                    ));
                }
            }
            out.push(ContainerPort {
                name,
                container_port,
                host_port,
                protocol: protocol.to_owned(),
            });
        }
        Ok(out)
    }

    fn env(&self, c: &k8s::Container, path: &str) -> Result<Vec<EnvVar>, ConvertError> {
        let mut env: Vec<EnvVar> = Vec::new();
        // A later variable of the same name wins, as in Kubernetes.
        let mut set = |name: String, value: String| match env.iter_mut().find(|e| e.name == name) {
            Some(existing) => existing.value = value,
            None => env.push(EnvVar { name, value }),
        };

        // envFrom first; env overrides it.
        for (j, source) in c.env_from.iter().flatten().enumerate() {
            let path = format!("{path}.envFrom[{j}]");
            let prefix = source.prefix.as_deref().unwrap_or_default();
            if prefix.contains('=') {
                return Err(field(format!("{path}.prefix"), "must not contain '='"));
            }
            let (kind, name, optional, ref_path) =
                match (&source.config_map_ref, &source.secret_ref) {
                    (Some(cm), None) => (
                        ObjectKind::ConfigMap,
                        &cm.name,
                        cm.optional,
                        format!("{path}.configMapRef"),
                    ),
                    (None, Some(secret)) => (
                        ObjectKind::Secret,
                        &secret.name,
                        secret.optional,
                        format!("{path}.secretRef"),
                    ),
                    _ => {
                        return Err(field(
                            path,
                            "must specify exactly one of configMapRef and secretRef",
                        ));
                    }
                };
            let Some(data) = self.lookup(kind, name, optional, &ref_path)? else {
                continue;
            };
            for (key, value) in data {
                let value = utf8(value, kind, name, &key, &ref_path)?;
                set(format!("{prefix}{key}"), value);
            }
        }

        for (j, e) in c.env.iter().flatten().enumerate() {
            let path = format!("{path}.env[{j}]");
            if e.name.is_empty() {
                return Err(field(format!("{path}.name"), "required"));
            }
            if e.name.contains('=') {
                return Err(field(format!("{path}.name"), "must not contain '='"));
            }
            let Some(source) = &e.value_from else {
                set(e.name.clone(), e.value.clone().unwrap_or_default());
                continue;
            };
            if e.value.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(field(
                    format!("{path}.valueFrom"),
                    "may not be specified when value is not empty",
                ));
            }
            if let Some(value) = self.env_value_from(source, &format!("{path}.valueFrom"))? {
                set(e.name.clone(), value);
            }
        }
        Ok(env)
    }

    /// The value of an `env[].valueFrom`, `None` if an optional reference is missing.
    fn env_value_from(
        &self,
        source: &k8s::EnvVarSource,
        path: &str,
    ) -> Result<Option<String>, ConvertError> {
        let count = [
            source.config_map_key_ref.is_some(),
            source.secret_key_ref.is_some(),
            source.field_ref.is_some(),
            source.resource_field_ref.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if count != 1 {
            return Err(field(
                path,
                "must specify exactly one of configMapKeyRef, secretKeyRef, fieldRef and resourceFieldRef",
            ));
        }
        let key_ref = if let Some(r) = &source.config_map_key_ref {
            Some((
                ObjectKind::ConfigMap,
                &r.name,
                &r.key,
                r.optional,
                format!("{path}.configMapKeyRef"),
            ))
        } else {
            source.secret_key_ref.as_ref().map(|r| {
                (
                    ObjectKind::Secret,
                    &r.name,
                    &r.key,
                    r.optional,
                    format!("{path}.secretKeyRef"),
                )
            })
        };
        if let Some((kind, name, key, optional, path)) = key_ref {
            if key.is_empty() {
                return Err(field(format!("{path}.key"), "required"));
            }
            let Some(mut data) = self.lookup(kind, name, optional, &path)? else {
                return Ok(None);
            };
            return match data.remove(key.as_str()) {
                Some(value) => Ok(Some(utf8(value, kind, name, key, &path)?)),
                None if optional == Some(true) => Ok(None),
                None => Err(field(
                    format!("{path}.key"),
                    format!("key {key:?} not found in {} {name:?}", kind.word()),
                )),
            };
        }
        if let Some(field_ref) = &source.field_ref {
            return self
                .field_ref(field_ref, &format!("{path}.fieldRef"))
                .map(Some);
        }
        Err(field(
            format!("{path}.resourceFieldRef"),
            "not supported on kedge nodes",
        ))
    }

    /// Downward API values that are known before the pod reaches the node.
    fn field_ref(
        &self,
        selector: &k8s::ObjectFieldSelector,
        path: &str,
    ) -> Result<String, ConvertError> {
        if let Some(version) = selector.api_version.as_deref()
            && !version.is_empty()
            && version != "v1"
        {
            return Err(field(
                format!("{path}.apiVersion"),
                format!("unsupported apiVersion {version:?} (use v1)"),
            ));
        }
        let field_path = selector.field_path.as_str();
        let fp = format!("{path}.fieldPath");
        let bracketed = |prefix: &str| {
            field_path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix("['"))
                .and_then(|rest| rest.strip_suffix("']"))
        };
        let meta = &self.pod.metadata;
        match field_path {
            "metadata.name" => Ok(self.name.to_owned()),
            "metadata.namespace" => Ok(self.namespace.to_owned()),
            "metadata.uid" if self.uid.is_empty() => Err(field(
                fp,
                "metadata.uid is not known yet (set metadata.uid before converting)",
            )),
            "metadata.uid" => Ok(self.uid.to_owned()),
            "spec.nodeName" => self
                .spec
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| field(fp, "spec.nodeName is not set")),
            "spec.serviceAccountName" => Ok(self
                .spec
                .service_account_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into())),
            "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => Err(field(
                fp,
                format!(
                    "{field_path} is only known on the node and is not supported on kedge nodes"
                ),
            )),
            _ => {
                if let Some(key) = bracketed("metadata.labels") {
                    let labels = meta.labels.as_ref();
                    return Ok(labels.and_then(|l| l.get(key)).cloned().unwrap_or_default());
                }
                if let Some(key) = bracketed("metadata.annotations") {
                    let annotations = meta.annotations.as_ref();
                    return Ok(annotations
                        .and_then(|a| a.get(key))
                        .cloned()
                        .unwrap_or_default());
                }
                Err(field(fp, format!("unsupported field path {field_path:?}")))
            }
        }
    }

    fn probe(
        &self,
        p: &k8s::Probe,
        path: &str,
        ports: &[ContainerPort],
        kind: ProbeKind,
    ) -> Result<Probe, ConvertError> {
        if p.grpc.is_some() {
            return Err(field(
                format!("{path}.grpc"),
                "grpc probes are not supported on kedge nodes",
            ));
        }
        if p.termination_grace_period_seconds.is_some() {
            return Err(unsupported(format!("{path}.terminationGracePeriodSeconds")));
        }
        let count = [
            p.exec.is_some(),
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if count == 0 {
            return Err(field(
                path,
                "must specify a handler type (exec, httpGet or tcpSocket)",
            ));
        }
        if count > 1 {
            return Err(field(path, "may not specify more than 1 handler type"));
        }
        let handler = if let Some(exec) = &p.exec {
            let path = format!("{path}.exec");
            if self.runtime == RuntimeKind::Wasm {
                return Err(field(
                    path,
                    "exec probes are not supported for wasm containers",
                ));
            }
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(field(format!("{path}.command"), "required"));
            }
            ProbeHandler::Exec { command }
        } else if let Some(http) = &p.http_get {
            let path = format!("{path}.httpGet");
            let https = match http.scheme.as_deref() {
                None | Some("" | "HTTP") => false,
                Some("HTTPS") => true,
                Some(other) => {
                    return Err(field(
                        format!("{path}.scheme"),
                        format!("unknown scheme {other:?} (use HTTP or HTTPS)"),
                    ));
                }
            };
            let mut headers = Vec::new();
            for (k, h) in http.http_headers.iter().flatten().enumerate() {
                if h.name.is_empty() {
                    return Err(field(format!("{path}.httpHeaders[{k}].name"), "required"));
                }
                headers.push((h.name.clone(), h.value.clone()));
            }
            ProbeHandler::HttpGet {
                path: http
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                port: probe_port(&http.port, ports, &format!("{path}.port"))?,
                host: http.host.clone().filter(|h| !h.is_empty()),
                https,
                headers,
            }
        } else if let Some(tcp) = &p.tcp_socket {
            let path = format!("{path}.tcpSocket");
            ProbeHandler::TcpSocket {
                port: probe_port(&tcp.port, ports, &format!("{path}.port"))?,
                host: tcp.host.clone().filter(|h| !h.is_empty()),
            }
        } else {
            return Err(field(
                path,
                "must specify a handler type (exec, httpGet or tcpSocket)",
            ));
        };
        // Kubernetes defaults unset and zero values; negatives are errors.
        let number = |value: Option<i32>, name: &str, default: u32| match value {
            None | Some(0) => Ok(default),
            Some(v) => u32::try_from(v)
                .map_err(|_| field(format!("{path}.{name}"), "must not be negative")),
        };
        let success_threshold = number(p.success_threshold, "successThreshold", 1)?;
        if success_threshold != 1 && kind != ProbeKind::Readiness {
            return Err(field(
                format!("{path}.successThreshold"),
                "must be 1 for liveness and startup probes",
            ));
        }
        Ok(Probe {
            handler,
            initial_delay_secs: number(p.initial_delay_seconds, "initialDelaySeconds", 0)?,
            period_secs: number(p.period_seconds, "periodSeconds", 10)?,
            timeout_secs: number(p.timeout_seconds, "timeoutSeconds", 1)?,
            success_threshold,
            failure_threshold: number(p.failure_threshold, "failureThreshold", 3)?,
        })
    }

    /// The container's security context with the pod's runAsUser/runAsGroup
    /// as defaults. Ignored (accepted): seLinuxOptions (no SELinux labelling on
    /// gateways), seccompProfile and appArmorProfile (the runtime's default
    /// profile applies), windowsOptions (linux only).
    fn security_context(
        &self,
        sc: Option<&k8s::SecurityContext>,
        path: &str,
    ) -> Result<Option<SecurityContext>, ConvertError> {
        let pod_sc = self.spec.security_context.as_ref();
        let sc_path = format!("{path}.securityContext");
        let mut out = SecurityContext::default();
        let mut any = false;
        if let Some(sc) = sc {
            any = true;
            if let Some(proc_mount) = sc.proc_mount.as_deref()
                && proc_mount != "Default"
            {
                return Err(unsupported(format!("{sc_path}.procMount")));
            }
            out.run_as_user = sc.run_as_user;
            out.run_as_group = sc.run_as_group;
            out.read_only_root_filesystem = sc.read_only_root_filesystem.unwrap_or(false);
            out.privileged = sc.privileged.unwrap_or(false);
            out.allow_privilege_escalation = sc.allow_privilege_escalation;
            if let Some(caps) = &sc.capabilities {
                out.capabilities_add = caps.add.clone().unwrap_or_default();
                out.capabilities_drop = caps.drop.clone().unwrap_or_default();
            }
            if out.privileged && out.allow_privilege_escalation == Some(false) {
                return Err(field(
                    format!("{sc_path}.allowPrivilegeEscalation"),
                    "cannot be false when privileged is true",
                ));
            }
            if self.runtime == RuntimeKind::Wasm {
                if out.privileged {
                    return Err(field(
                        format!("{sc_path}.privileged"),
                        "not supported for wasm containers",
                    ));
                }
                if !out.capabilities_add.is_empty() {
                    return Err(field(
                        format!("{sc_path}.capabilities.add"),
                        "not supported for wasm containers",
                    ));
                }
            }
        }
        if let Some(pod_sc) = pod_sc {
            if out.run_as_user.is_none() && pod_sc.run_as_user.is_some() {
                out.run_as_user = pod_sc.run_as_user;
                any = true;
            }
            if out.run_as_group.is_none() && pod_sc.run_as_group.is_some() {
                out.run_as_group = pod_sc.run_as_group;
                any = true;
            }
        }
        let ids = [
            (
                sc.and_then(|sc| sc.run_as_user),
                format!("{sc_path}.runAsUser"),
            ),
            (
                sc.and_then(|sc| sc.run_as_group),
                format!("{sc_path}.runAsGroup"),
            ),
            (
                pod_sc.and_then(|sc| sc.run_as_user),
                "spec.securityContext.runAsUser".to_owned(),
            ),
            (
                pod_sc.and_then(|sc| sc.run_as_group),
                "spec.securityContext.runAsGroup".to_owned(),
            ),
        ];
        for (id, id_path) in ids {
            if id.is_some_and(|id| id < 0) {
                return Err(field(id_path, "must not be negative"));
            }
        }
        // runAsNonRoot: the agent does not inspect the image's user, so the
        // check is made here against an explicit runAsUser. Wasm modules never
        // run as root, so it always holds for them.
        let non_root_path = match (
            sc.and_then(|sc| sc.run_as_non_root),
            pod_sc.and_then(|p| p.run_as_non_root),
        ) {
            (Some(true), _) => Some(format!("{sc_path}.runAsNonRoot")),
            (Some(false), _) => None,
            (None, Some(true)) => Some("spec.securityContext.runAsNonRoot".to_owned()),
            (None, _) => None,
        };
        if let Some(non_root_path) = non_root_path
            && self.runtime == RuntimeKind::Container
        {
            match out.run_as_user {
                Some(0) => {
                    return Err(field(non_root_path, "conflicts with runAsUser 0"));
                }
                None => {
                    return Err(field(
                        non_root_path,
                        "needs an explicit non-zero runAsUser on kedge nodes (the image's user is not checked)",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(any.then_some(out))
    }
}

fn utf8(
    value: Vec<u8>,
    kind: ObjectKind,
    name: &str,
    key: &str,
    path: &str,
) -> Result<String, ConvertError> {
    String::from_utf8(value).map_err(|_| {
        field(
            path,
            format!("key {key:?} of {} {name:?} is not valid utf-8", kind.word()),
        )
    })
}

fn file_mode(mode: i32) -> Option<u32> {
    u32::try_from(mode).ok().filter(|m| *m <= 0o777)
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Kubernetes' default pull policy: Always for `:latest` or no tag, else IfNotPresent.
fn default_pull_policy(image: &str) -> PullPolicy {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = match last.split_once(':') {
        Some((_, tag)) => tag,
        None if digest.is_some() => return PullPolicy::IfNotPresent,
        None => "latest",
    };
    if tag == "latest" {
        PullPolicy::Always
    } else {
        PullPolicy::IfNotPresent
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(
    port: &IntOrString,
    ports: &[ContainerPort],
    path: &str,
) -> Result<u16, ConvertError> {
    let out_of_range = || field(path, "must be between 1 and 65535");
    match port {
        IntOrString::Int(n) => port_number(*n).ok_or_else(out_of_range),
        IntOrString::String(name) => {
            if let Some(p) = ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                return Ok(p.container_port);
            }
            // Like the kubelet: a number written as a string is a number.
            match name.parse::<i32>() {
                Ok(n) => port_number(n).ok_or_else(out_of_range),
                Err(_) => Err(field(path, format!("no container port named {name:?}"))),
            }
        }
    }
}

/// A ConfigMap or Secret key that can be a file name in a volume.
fn is_file_name(key: &str) -> bool {
    !key.is_empty() && !key.starts_with("..") && key != "." && !key.contains('/')
}

fn check_relative_path(path: &str, value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        return Err(field(path, "required"));
    }
    if value.starts_with('/') {
        return Err(field(path, "must be a relative path"));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(field(path, "must not contain '..'"));
    }
    Ok(())
}

fn volume_mounts(
    c: &k8s::Container,
    path: &str,
    volume_names: &BTreeSet<&str>,
) -> Result<Vec<VolumeMount>, ConvertError> {
    let mut out: Vec<VolumeMount> = Vec::new();
    for (k, m) in c.volume_mounts.iter().flatten().enumerate() {
        let path = format!("{path}.volumeMounts[{k}]");
        if m.name.is_empty() {
            return Err(field(format!("{path}.name"), "required"));
        }
        if !volume_names.contains(m.name.as_str()) {
            return Err(field(
                format!("{path}.name"),
                format!("volume {:?} not found in spec.volumes", m.name),
            ));
        }
        if m.mount_path.is_empty() {
            return Err(field(format!("{path}.mountPath"), "required"));
        }
        if !m.mount_path.starts_with('/') {
            return Err(field(
                format!("{path}.mountPath"),
                "must be an absolute path",
            ));
        }
        if out.iter().any(|o| o.mount_path == m.mount_path) {
            return Err(field(
                format!("{path}.mountPath"),
                format!("duplicate mount path {:?}", m.mount_path),
            ));
        }
        if let Some(propagation) = m.mount_propagation.as_deref()
            && propagation != "None"
        {
            return Err(unsupported(format!("{path}.mountPropagation")));
        }
        if m.sub_path_expr.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(unsupported(format!("{path}.subPathExpr")));
        }
        // recursiveReadOnly: IfPossible and Disabled are satisfied by a plain
        // read-only mount; Enabled is a guarantee the agent cannot give.
        if m.recursive_read_only.as_deref() == Some("Enabled") {
            return Err(unsupported(format!("{path}.recursiveReadOnly")));
        }
        let sub_path = m.sub_path.clone().filter(|s| !s.is_empty());
        if let Some(sub_path) = &sub_path {
            check_relative_path(&format!("{path}.subPath"), sub_path)?;
        }
        out.push(VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
            sub_path,
        });
    }
    Ok(out)
}

/// cpu and memory requests and limits; a request defaults to its limit, as in
/// Kubernetes. ephemeral-storage is accepted and ignored; other resources
/// (hugepages, extended resources such as GPUs) are rejected.
fn resources(r: Option<&k8s::ResourceRequirements>, path: &str) -> Result<Resources, ConvertError> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    if non_empty(&r.claims) {
        return Err(unsupported(format!("{path}.claims")));
    }
    let parse = |map: &Option<BTreeMap<String, Quantity>>,
                 which: &str|
     -> Result<(Option<u64>, Option<u64>), ConvertError> {
        let mut cpu = None;
        let mut memory = None;
        for (name, q) in map.iter().flatten() {
            let path = format!("{path}.{which}[{name}]");
            match name.as_str() {
                "cpu" => cpu = Some(cpu_millis(&q.0).map_err(|m| field(&path, m))?),
                "memory" => memory = Some(bytes(&q.0).map_err(|m| field(&path, m))?),
                "ephemeral-storage" => {
                    bytes(&q.0).map_err(|m| field(&path, m))?;
                }
                other => {
                    return Err(field(
                        path,
                        format!("resource {other:?} is not available on kedge nodes"),
                    ));
                }
            }
        }
        Ok((cpu, memory))
    };
    let (cpu_limit, memory_limit) = parse(&r.limits, "limits")?;
    let (cpu_request, memory_request) = parse(&r.requests, "requests")?;
    let cpu_request = cpu_request.or(cpu_limit);
    let memory_request = memory_request.or(memory_limit);
    if let (Some(request), Some(limit)) = (cpu_request, cpu_limit)
        && request > limit
    {
        return Err(field(
            format!("{path}.requests[cpu]"),
            "must be less than or equal to the cpu limit",
        ));
    }
    if let (Some(request), Some(limit)) = (memory_request, memory_limit)
        && request > limit
    {
        return Err(field(
            format!("{path}.requests[memory]"),
            "must be less than or equal to the memory limit",
        ));
    }
    Ok(Resources {
        cpu_request_millis: cpu_request,
        cpu_limit_millis: cpu_limit,
        memory_request_bytes: memory_request,
        memory_limit_bytes: memory_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Merges `patch` into `base` (objects recursively, everything else replaced).
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(base), Value::Object(patch)) => {
                for (k, v) in patch {
                    match base.get_mut(&k) {
                        Some(existing) if v.is_object() => merge(existing, v),
                        _ => {
                            base.insert(k, v);
                        }
                    }
                }
            }
            (base, patch) => *base = patch,
        }
    }

    fn manifest(patch: Value) -> Value {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}
        });
        merge(&mut pod, patch);
        pod
    }

    fn k8s_pod(patch: Value) -> k8s::Pod {
        let mut pods = parse_pod_manifests(&manifest(patch).to_string()).expect("manifest parses");
        assert_eq!(pods.len(), 1);
        pods.remove(0)
    }

    fn convert(patch: Value) -> PodSpec {
        pod_spec_from_k8s(&k8s_pod(patch)).expect("pod converts")
    }

    fn convert_err(patch: Value) -> String {
        pod_spec_from_k8s(&k8s_pod(patch))
            .expect_err("conversion fails")
            .to_string()
    }

    fn with_container(container: Value) -> Value {
        json!({"spec": {"containers": [container]}})
    }

    fn wasm(image: &str) -> Value {
        json!({"spec": {
            "runtimeClassName": "kedge-wasm",
            "containers": [{"name": "app", "image": image}]
        }})
    }

    #[derive(Default)]
    struct MapResolver {
        config_maps: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
        secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    }

    impl MapResolver {
        fn config_map(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
            self.config_maps
                .insert((ns.into(), name.into()), to_data(data));
            self
        }
        fn secret(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
            self.secrets.insert((ns.into(), name.into()), to_data(data));
            self
        }
    }

    fn to_data(data: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    impl Resolver for MapResolver {
        fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.config_maps
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }
        fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.secrets
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }
    }

    fn resolver() -> MapResolver {
        MapResolver::default()
            .config_map("default", "cfg", &[("LEVEL", "debug"), ("MODE", "edge")])
            .config_map("other", "cfg", &[("LEVEL", "wrong-namespace")])
            .secret("default", "creds", &[("password", "hunter2")])
            .secret(
                "default",
                "regcred",
                &[(".dockerconfigjson", r#"{"auths":{"r.example":{}}}"#)],
            )
            .secret(
                "default",
                "legacy",
                &[(".dockercfg", r#"{"r.example":{}}"#)],
            )
            .secret("default", "opaque", &[("token", "x")])
            .secret("default", "dotted", &[("..data", "x")])
    }

    fn convert_with(patch: Value, resolver: &dyn Resolver) -> Result<PodSpec, String> {
        pod_spec_from_k8s_with(&k8s_pod(patch), resolver).map_err(|e| e.to_string())
    }

    // -- parsing -------------------------------------------------------------

    #[test]
    fn parses_multi_document_yaml_with_empty_json_and_list_documents() {
        let text = r#"
# a comment before the first document
apiVersion: v1
kind: Pod
metadata:
  name: one
spec:
  containers:
  - name: app
    image: nginx
    resources:
      limits:
        cpu: 1
        memory: 1e3
---
---
# only a comment
---
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
 "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: three}
  spec:
    containers: [{name: app, image: nginx}]
- apiVersion: v1
  kind: Pod
  metadata: {name: four}
  spec:
    containers: [{name: app, image: nginx}]
"#;
        let pods = parse_pod_manifests(text).expect("manifests parse");
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["one", "two", "three", "four"]);
        let spec = pod_spec_from_k8s(&pods[0]).expect("pod converts");
        assert_eq!(spec.containers[0].resources.cpu_limit_millis, Some(1000));
        assert_eq!(spec.containers[0].resources.memory_limit_bytes, Some(1000));
    }

    #[test]
    fn parses_json_files_with_tabs_and_pod_lists() {
        let text = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"PodList\",\n\t\"items\": [\n\t\t{\"metadata\": {\"name\": \"a\"}, \"spec\": {\"containers\": [{\"name\": \"c\", \"image\": \"busybox\"}]}}\n\t]\n}\n{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"containers\": [{\"name\": \"c\", \"image\": \"busybox\"}]}}";
        let pods = parse_pod_manifests(text).expect("json parses");
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("a"));
        assert_eq!(pods[1].metadata.name.as_deref(), Some("b"));
    }

    #[test]
    fn empty_files_hold_no_pods() {
        assert_eq!(parse_pod_manifests("").expect("empty parses"), vec![]);
        assert_eq!(
            parse_pod_manifests("---\n# nothing\n---\n").expect("parses"),
            vec![]
        );
        let empty_list = "apiVersion: v1\nkind: List\nitems: []\n";
        assert_eq!(parse_pod_manifests(empty_list).expect("parses"), vec![]);
    }

    #[test]
    fn non_pod_documents_are_errors_naming_index_and_kind() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: i}]}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let err = parse_pod_manifests(text).expect_err("deployment is rejected");
        let ConvertError::Document { index, message } = &err else {
            panic!("expected a document error, got {err:?}");
        };
        assert_eq!(*index, 2);
        assert!(message.contains("\"Deployment\""), "{message}");
        assert!(message.contains("apps/v1"), "{message}");
        assert!(
            err.to_string()
                .starts_with("document 2: kind \"Deployment\"")
        );

        let err = parse_pod_manifests("metadata: {name: a}\n").expect_err("no kind");
        assert_eq!(
            err.to_string(),
            "document 0: missing kind (expected apiVersion: v1, kind: Pod)"
        );

        let err = parse_pod_manifests("apiVersion: v2\nkind: Pod\n").expect_err("wrong version");
        assert!(err.to_string().contains("(apiVersion v2)"), "{err}");

        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n";
        let err = parse_pod_manifests(list).expect_err("service in a list");
        assert!(
            err.to_string()
                .starts_with("document 0: items[0]: kind \"Service\""),
            "{err}"
        );

        let err = parse_pod_manifests("- a\n- b\n").expect_err("a sequence");
        assert!(matches!(err, ConvertError::Document { index: 0, .. }));
    }

    #[test]
    fn syntax_and_type_errors_name_the_document() {
        let err = parse_pod_manifests("apiVersion: v1\nkind: Pod\n---\nkey: [unclosed\n")
            .expect_err("bad yaml");
        assert!(
            matches!(err, ConvertError::Document { index: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("invalid yaml"), "{err}");

        let bad_type = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: [{containerPort: http}]\n";
        let err = parse_pod_manifests(bad_type).expect_err("string port");
        assert!(
            matches!(err, ConvertError::Document { index: 0, .. }),
            "{err:?}"
        );

        let err = parse_pod_manifests("{\"kind\": ").expect_err("bad json");
        assert!(
            err.to_string().starts_with("document 0: invalid json"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let text = manifest(with_container(
            json!({"name": "app", "image": "nginx", "imagePullPoilcy": "Always"}),
        ))
        .to_string();
        let err = parse_pod_manifests(&text).expect_err("typo is rejected");
        assert_eq!(
            err.to_string(),
            "document 0: unknown field \"spec.containers[0].imagePullPoilcy\""
        );
        // Null values and known-but-empty fields are fine.
        let text = manifest(json!({
            "metadata": {"creationTimestamp": null, "annotations": {}},
            "spec": {"nodeSelector": {}, "volumes": []},
            "status": {}
        }))
        .to_string();
        parse_pod_manifests(&text).expect("null and empty fields parse");
    }

    #[test]
    fn kubectl_generated_manifests_convert() {
        // `kubectl run web --image=nginx --dry-run=client -o yaml`
        let text = r#"apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels:
    run: web
  name: web
spec:
  containers:
  - image: nginx
    name: web
    resources: {}
  dnsPolicy: ClusterFirst
  restartPolicy: Always
status: {}
"#;
        let pods = parse_pod_manifests(text).expect("kubectl output parses");
        let spec = pod_spec_from_k8s(&pods[0]).expect("kubectl output converts");
        assert_eq!(spec.labels.get("run").map(String::as_str), Some("web"));
        assert_eq!(spec.containers[0].image_pull_policy, PullPolicy::Always);

        // A pod read back from a cluster carries the API access volume.
        let err = convert_err(
            json!({"spec": {"volumes": [{"name": "kube-api-access-x", "projected": {
                "sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]
            }}]}}),
        );
        assert_eq!(
            err,
            "spec.volumes[0].projected: service account tokens are not available on kedge nodes (set automountServiceAccountToken: false)"
        );
    }

    // -- defaults ------------------------------------------------------------

    #[test]
    fn minimal_pod_gets_kubernetes_defaults() {
        let spec = convert(json!({}));
        assert_eq!(spec.name, "web");
        assert_eq!(spec.namespace, "default");
        assert_eq!(spec.uid, "");
        assert_eq!(spec.generation, 0);
        assert!(spec.labels.is_empty());
        assert_eq!(spec.runtime, RuntimeKind::Container);
        assert_eq!(spec.restart_policy, RestartPolicy::Always);
        assert_eq!(spec.termination_grace_period_secs, 30);
        assert!(!spec.host_network);
        assert!(spec.init_containers.is_empty());
        assert!(spec.volumes.is_empty());
        assert!(spec.image_pull_secrets.is_empty());
        let c = &spec.containers[0];
        assert_eq!(c.name, "app");
        assert_eq!(c.image, "nginx:1.25");
        assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
        assert!(c.command.is_empty() && c.args.is_empty() && c.env.is_empty());
        assert_eq!(c.working_dir, None);
        assert_eq!(c.resources, Resources::default());
        assert_eq!(c.security_context, None);
        assert_eq!(c.liveness_probe, None);
    }

    /// What a device would refuse, `kedge apply` and the bridge refuse too:
    /// a uid that is not a safe path component, a grace period past its
    /// bound, a file key that walks up.
    #[test]
    fn values_past_the_wire_limits_are_refused_with_their_field() {
        let err = convert_err(json!({"metadata": {"uid": "x/../../.."}}));
        assert!(err.starts_with("metadata.uid: Invalid value"), "{err}");
        let err =
            convert_err(json!({"spec": {"terminationGracePeriodSeconds": 9_000_000_000_i64}}));
        assert!(
            err.starts_with("spec.terminationGracePeriodSeconds"),
            "{err}"
        );
        let containers: Vec<Value> = (0..=crate::model::validate::MAX_CONTAINERS)
            .map(|i| json!({"name": format!("c{i}"), "image": "nginx"}))
            .collect();
        let err = convert_err(json!({"spec": {"containers": containers}}));
        assert!(err.starts_with("spec.containers: Too many"), "{err}");
    }

    #[test]
    fn metadata_and_explicit_pod_fields_are_copied() {
        let spec = convert(json!({
            "metadata": {
                "namespace": "factory",
                "uid": "1234-5678",
                "generation": 7,
                "labels": {"app": "web", "tier": "edge"},
                "annotations": {"ignored": "yes"}
            },
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 5,
                "hostNetwork": true,
                "containers": [{
                    "name": "app",
                    "image": "nginx:1.25",
                    "command": ["/bin/sh"],
                    "args": ["-c", "echo hi"],
                    "workingDir": "/srv",
                    "env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "A", "value": "2"}],
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 53, "protocol": "UDP"}]
                }]
            }
        }));
        assert_eq!(spec.key().to_string(), "factory/web");
        assert_eq!(spec.uid, "1234-5678");
        assert_eq!(spec.generation, 7);
        assert_eq!(spec.labels.get("tier").map(String::as_str), Some("edge"));
        assert_eq!(spec.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(spec.termination_grace_period_secs, 5);
        assert!(spec.host_network);
        let c = &spec.containers[0];
        assert_eq!(c.command, ["/bin/sh"]);
        assert_eq!(c.args, ["-c", "echo hi"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(
            c.env,
            [
                EnvVar {
                    name: "A".into(),
                    value: "2".into()
                },
                EnvVar {
                    name: "B".into(),
                    value: String::new()
                },
            ]
        );
        // With the host network, the host port defaults to the container port.
        assert_eq!(
            c.ports,
            [
                ContainerPort {
                    name: Some("http".into()),
                    container_port: 80,
                    host_port: Some(80),
                    protocol: "TCP".into()
                },
                ContainerPort {
                    name: None,
                    container_port: 53,
                    host_port: Some(53),
                    protocol: "UDP".into()
                },
            ]
        );
    }

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        let cases = [
            ("nginx".to_owned(), PullPolicy::Always),
            ("nginx:latest".to_owned(), PullPolicy::Always),
            ("nginx:1.25".to_owned(), PullPolicy::IfNotPresent),
            ("localhost:5000/nginx".to_owned(), PullPolicy::Always),
            (
                "localhost:5000/team/nginx:1.0".to_owned(),
                PullPolicy::IfNotPresent,
            ),
            (format!("nginx@sha256:{DIGEST}"), PullPolicy::IfNotPresent),
            (format!("nginx:latest@sha256:{DIGEST}"), PullPolicy::Always),
        ];
        for (image, expected) in cases {
            let spec = convert(with_container(json!({"name": "app", "image": image})));
            assert_eq!(spec.containers[0].image_pull_policy, expected, "{image}");
        }
        let spec = convert(with_container(
            json!({"name": "app", "image": "nginx", "imagePullPolicy": "Never"}),
        ));
        assert_eq!(spec.containers[0].image_pull_policy, PullPolicy::Never);
        let err = convert_err(with_container(
            json!({"name": "app", "image": "nginx", "imagePullPolicy": "Sometimes"}),
        ));
        assert_eq!(
            err,
            "spec.containers[0].imagePullPolicy: unknown pull policy \"Sometimes\" (use Always, IfNotPresent or Never)"
        );
    }

    #[test]
    fn scheduler_only_fields_are_ignored() {
        let spec = convert(json!({"spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }}},
            "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "nodeName": "gateway-1",
            "schedulerName": "custom",
            "priority": 100,
            "priorityClassName": "high",
            "preemptionPolicy": "Never",
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
            "serviceAccountName": "robot",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "dnsPolicy": "ClusterFirst",
            "hostname": "web",
            "subdomain": "edge",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "seLinuxOptions": {"level": "s0"}}
        }, "status": {"phase": "Running"}}));
        assert_eq!(spec, convert(json!({})));
    }

    // -- rejections ----------------------------------------------------------

    #[test]
    fn rejected_fields_name_their_path() {
        let app = |extra: Value| {
            let mut c = json!({"name": "app", "image": "nginx:1"});
            merge(&mut c, extra);
            c
        };
        let cases: Vec<(Value, &str)> = vec![
            (
                with_container(app(
                    json!({"lifecycle": {"preStop": {"exec": {"command": ["x"]}}}}),
                )),
                "spec.containers[0].lifecycle: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"initContainers": [
                    {"name": "i0", "image": "busybox:1"},
                    {"name": "i1", "image": "busybox:1", "tty": true}
                ]}}),
                "spec.initContainers[1].tty: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"initContainers": [
                    {"name": "side", "image": "busybox:1", "restartPolicy": "Always"}
                ]}}),
                "spec.initContainers[0].restartPolicy: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"initContainers": [
                    {"name": "i", "image": "busybox:1", "readinessProbe": {"tcpSocket": {"port": 1}}}
                ]}}),
                "spec.initContainers[0].readinessProbe: not supported on init containers",
            ),
            (
                with_container(app(json!({"stdin": true}))),
                "spec.containers[0].stdin: not supported on kedge nodes",
            ),
            (
                with_container(app(json!({"stdinOnce": true}))),
                "spec.containers[0].stdinOnce: not supported on kedge nodes",
            ),
            (
                with_container(app(
                    json!({"resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]}),
                )),
                "spec.containers[0].resizePolicy: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"hostPID": true}}),
                "spec.hostPID: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"hostIPC": true}}),
                "spec.hostIPC: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"shareProcessNamespace": true}}),
                "spec.shareProcessNamespace: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"hostUsers": false}}),
                "spec.hostUsers: user namespaces are not supported on kedge nodes",
            ),
            (
                json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}}),
                "spec.ephemeralContainers: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"readinessGates": [{"conditionType": "x"}]}}),
                "spec.readinessGates: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"dnsConfig": {"nameservers": ["1.1.1.1"]}}}),
                "spec.dnsConfig: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}]}}),
                "spec.hostAliases: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"overhead": {"cpu": "100m"}}}),
                "spec.overhead: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"hostname": "other"}}),
                "spec.hostname: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"activeDeadlineSeconds": 60}}),
                "spec.activeDeadlineSeconds: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"os": {"name": "windows"}}}),
                "spec.os.name: os \"windows\" is not supported: kedge nodes run linux pods",
            ),
            (
                json!({"spec": {"securityContext": {"fsGroup": 2000}}}),
                "spec.securityContext.fsGroup: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"runtimeClassName": "gvisor"}}),
                "spec.runtimeClassName: runtime class \"gvisor\" is not available on kedge nodes (use kedge-wasm or none)",
            ),
            (
                json!({"spec": {"terminationGracePeriodSeconds": -1}}),
                "spec.terminationGracePeriodSeconds: must not be negative",
            ),
            (
                json!({"spec": {"restartPolicy": "Sometimes"}}),
                "spec.restartPolicy: unknown restart policy \"Sometimes\" (use Always, OnFailure or Never)",
            ),
            (
                json!({"spec": {"schedulingGates": [{"name": "wait"}]}}),
                "spec.schedulingGates: the pod is gated and must not run yet (remove its scheduling gates)",
            ),
            (
                json!({"spec": {"containers": []}}),
                "spec.containers: at least one container is required",
            ),
            (
                with_container(app(
                    json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef: configmap \"cfg\" must be resolved before sending (kedge apply cannot read the cluster)",
            ),
            (
                with_container(app(json!({"envFrom": [{"secretRef": {"name": "creds"}}]}))),
                "spec.containers[0].envFrom[0].secretRef: secret \"creds\" must be resolved before sending (kedge apply cannot read the cluster)",
            ),
            (
                with_container(app(
                    json!({"env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.resourceFieldRef: not supported on kedge nodes",
            ),
            (
                with_container(app(
                    json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: status.podIP is only known on the node and is not supported on kedge nodes",
            ),
            (
                with_container(app(
                    json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: metadata.uid is not known yet (set metadata.uid before converting)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}),
                "spec.volumes[0].configMap.name: configmap \"cfg\" must be resolved before sending (kedge apply cannot read the cluster)",
            ),
            (
                json!({"spec": {"imagePullSecrets": [{"name": "regcred"}]}}),
                "spec.imagePullSecrets[0].name: secret \"regcred\" must be resolved before sending (kedge apply cannot read the cluster)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}]}}),
                "spec.volumes[0].persistentVolumeClaim: volume type not supported on kedge nodes (use emptyDir, hostPath, configMap or secret)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "ram", "emptyDir": {"medium": "HugePages"}}]}}),
                "spec.volumes[0].emptyDir.medium: medium \"HugePages\" is not supported on kedge nodes (use \"\" or Memory)",
            ),
            (
                with_container(app(
                    json!({"volumeMounts": [{"name": "missing", "mountPath": "/data"}]}),
                )),
                "spec.containers[0].volumeMounts[0].name: volume \"missing\" not found in spec.volumes",
            ),
            (
                with_container(app(json!({"ports": [{"containerPort": 70000}]}))),
                "spec.containers[0].ports[0].containerPort: must be between 1 and 65535",
            ),
            (
                with_container(app(
                    json!({"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
                )),
                "spec.containers[0].resources.limits[nvidia.com/gpu]: resource \"nvidia.com/gpu\" is not available on kedge nodes",
            ),
            (
                with_container(app(
                    json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
                )),
                "spec.containers[0].resources.requests[cpu]: must be less than or equal to the cpu limit",
            ),
            (
                with_container(app(json!({"resources": {"limits": {"memory": "lots"}}}))),
                "spec.containers[0].resources.limits[memory]: invalid quantity \"lots\"",
            ),
            (
                with_container(app(json!({"livenessProbe": {"grpc": {"port": 9000}}}))),
                "spec.containers[0].livenessProbe.grpc: grpc probes are not supported on kedge nodes",
            ),
            (
                with_container(app(json!({"livenessProbe": {"httpGet": {"port": "http"}}}))),
                "spec.containers[0].livenessProbe.httpGet.port: no container port named \"http\"",
            ),
            (
                with_container(app(
                    json!({"livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}}),
                )),
                "spec.containers[0].livenessProbe.successThreshold: must be 1 for liveness and startup probes",
            ),
            (
                with_container(app(json!({"securityContext": {"procMount": "Unmasked"}}))),
                "spec.containers[0].securityContext.procMount: not supported on kedge nodes",
            ),
            (
                with_container(app(json!({"securityContext": {"runAsNonRoot": true}}))),
                "spec.containers[0].securityContext.runAsNonRoot: needs an explicit non-zero runAsUser on kedge nodes (the image's user is not checked)",
            ),
            (
                json!({"spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 0}}}),
                "spec.securityContext.runAsNonRoot: conflicts with runAsUser 0",
            ),
            (
                json!({"metadata": {"name": "Web"}}),
                "metadata.name: \"Web\" is not a valid pod name: lowercase letters, digits, '-' and '.' only, starting and ending with a letter or digit, at most 253 characters",
            ),
            (
                json!({"metadata": {"name": "a/b"}}),
                "metadata.name: \"a/b\" is not a valid pod name: lowercase letters, digits, '-' and '.' only, starting and ending with a letter or digit, at most 253 characters",
            ),
            (
                json!({"metadata": {"namespace": "a.b"}}),
                "metadata.namespace: \"a.b\" is not a valid namespace: lowercase letters, digits and '-' only, starting and ending with a letter or digit, at most 63 characters",
            ),
            (
                json!({"metadata": {"generation": -1}}),
                "metadata.generation: must not be negative",
            ),
            (
                with_container(json!({"name": "App_1", "image": "nginx"})),
                "spec.containers[0].name: \"App_1\" is not a valid container name: lowercase letters, digits and '-' only, starting and ending with a letter or digit, at most 63 characters",
            ),
            (
                with_container(json!({"name": "app"})),
                "spec.containers[0].image: required",
            ),
            (
                with_container(json!({"image": "nginx"})),
                "spec.containers[0].name: required",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "app", "image": "busybox"}]}}),
                "spec.containers[0].name: duplicate container name \"app\"",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
        let module = format!("file:///m.wasm@sha256:{DIGEST}");
        assert_eq!(
            convert_err(with_container(json!({"name": "app", "image": module}))),
            format!(
                "spec.containers[0].image: {module:?} is a wasm module url: set runtimeClassName: kedge-wasm to run it"
            )
        );
    }

    #[test]
    fn missing_name_and_spec_are_errors() {
        let pod = k8s::Pod {
            metadata: Default::default(),
            spec: None,
            status: None,
        };
        assert_eq!(
            pod_spec_from_k8s(&pod).expect_err("no name"),
            field("metadata.name", "required")
        );
        let mut pod = pod;
        pod.metadata.name = Some("web".into());
        assert_eq!(
            pod_spec_from_k8s(&pod).expect_err("no spec"),
            field("spec", "required")
        );
        pod.metadata.name = None;
        pod.metadata.generate_name = Some("web-".into());
        assert_eq!(
            pod_spec_from_k8s(&pod)
                .expect_err("generateName")
                .to_string(),
            "metadata.generateName: not supported on kedge nodes (set metadata.name)"
        );
    }

    // -- wasm ----------------------------------------------------------------

    #[test]
    fn wasm_pods_take_digested_urls_and_oci_references() {
        let file = format!("file:///opt/modules/app.wasm@sha256:{DIGEST}");
        let spec = convert(wasm(&file));
        assert_eq!(spec.runtime, RuntimeKind::Wasm);
        assert_eq!(spec.containers[0].image, file);
        assert_eq!(
            spec.containers[0].image_pull_policy,
            PullPolicy::IfNotPresent
        );

        let https = format!("https://modules.example/app.wasm@sha256:{DIGEST}");
        assert_eq!(
            convert(wasm(&https)).containers[0].image_pull_policy,
            PullPolicy::IfNotPresent
        );
        let oci = convert(wasm("ghcr.io/acme/sensor:latest"));
        assert_eq!(oci.containers[0].image_pull_policy, PullPolicy::Always);
    }

    #[test]
    fn wasm_pods_reject_what_the_runtime_cannot_do() {
        let file = format!("file:///m.wasm@sha256:{DIGEST}");
        let cases: Vec<(Value, String)> = vec![
            (
                wasm("file:///opt/app.wasm"),
                "spec.containers[0].image: wasm module from file:// or https:// needs a digest: append @sha256:<hex>".into(),
            ),
            (
                wasm("https://modules.example/app.wasm"),
                "spec.containers[0].image: wasm module from file:// or https:// needs a digest: append @sha256:<hex>".into(),
            ),
            (
                wasm("file:///opt/app.wasm@sha256:abc"),
                "spec.containers[0].image: invalid digest sha256:abc: expected 64 lowercase hex characters".into(),
            ),
            (
                wasm(&format!("file:///opt/app.wasm@sha256:{}", DIGEST.to_uppercase())),
                format!("spec.containers[0].image: invalid digest sha256:{}: expected 64 lowercase hex characters", DIGEST.to_uppercase()),
            ),
            (
                wasm(&format!("file://app.wasm@sha256:{DIGEST}")),
                "spec.containers[0].image: file:// url needs an absolute path (file:///path/to/module.wasm@sha256:<hex>)".into(),
            ),
            (
                wasm(&format!("http://modules.example/app.wasm@sha256:{DIGEST}")),
                "spec.containers[0].image: wasm modules are not fetched over plain http: use https://".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm", "hostNetwork": true,
                    "containers": [{"name": "app", "image": file}]}}),
                "spec.hostNetwork: wasm pods cannot use the host network".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "app", "image": file, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
                "spec.containers[0].ports[0].hostPort: host ports are not supported for wasm containers".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "app", "image": file, "livenessProbe": {"exec": {"command": ["true"]}}}]}}),
                "spec.containers[0].livenessProbe.exec: exec probes are not supported for wasm containers".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "app", "image": file, "securityContext": {"privileged": true}}]}}),
                "spec.containers[0].securityContext.privileged: not supported for wasm containers".into(),
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
        // Ports without host ports, http probes and runAsNonRoot are fine.
        let spec = convert(json!({"spec": {"runtimeClassName": "kedge-wasm",
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": file,
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}}}]}}));
        assert_eq!(spec.containers[0].ports[0].host_port, None);
        assert!(spec.containers[0].readiness_probe.is_some());
    }

    // -- quantities ----------------------------------------------------------

    #[test]
    fn cpu_quantities() {
        let ok = [
            ("500m", 500),
            ("1", 1000),
            ("0.25", 250),
            ("2k", 2_000_000),
            ("1.5", 1500),
            (".5", 500),
            ("5.", 5000),
            ("+2", 2000),
            ("0.1m", 1),
            ("0.0001", 1),
            ("0", 0),
            ("-0", 0),
            ("1e3", 1_000_000),
            ("100e-3", 100),
            ("1E-3", 1),
            ("1Ki", 1_024_000),
        ];
        for (q, expected) in ok {
            assert_eq!(cpu_millis(q), Ok(expected), "{q}");
        }
        let err = [
            ("", "invalid quantity \"\""),
            ("abc", "invalid quantity \"abc\""),
            ("1 ", "invalid quantity \"1 \""),
            ("1.2.3", "invalid quantity \"1.2.3\""),
            (".", "invalid quantity \".\""),
            ("1e", "invalid quantity \"1e\""),
            ("1ki", "invalid quantity \"1ki\""),
            ("1mi", "invalid quantity \"1mi\""),
            ("-1", "quantity \"-1\" must not be negative"),
            ("10E", "quantity \"10E\" is too large"),
            ("1e400", "quantity \"1e400\" is too large"),
        ];
        for (q, expected) in err {
            assert_eq!(cpu_millis(q), Err(expected.to_owned()), "{q}");
        }
    }

    #[test]
    fn byte_quantities() {
        let ok = [
            ("128Mi", 128 << 20),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("100", 100),
            ("1.5Gi", 3 << 29),
            ("512k", 512_000),
            ("1Ki", 1024),
            ("2Ti", 2 << 40),
            ("1E", 1_000_000_000_000_000_000),
            ("7Ei", 7 << 60),
            ("0.5Ki", 512),
            ("1000m", 1),
            ("0", 0),
        ];
        for (q, expected) in ok {
            assert_eq!(bytes(q), Ok(expected), "{q}");
        }
        let err = [
            (
                "100m",
                "fractional byte value \"100m\" is invalid, must be an integer",
            ),
            (
                "0.5",
                "fractional byte value \"0.5\" is invalid, must be an integer",
            ),
            (
                "1e-50",
                "fractional byte value \"1e-50\" is invalid, must be an integer",
            ),
            ("8Ei", "quantity \"8Ei\" is too large"),
            ("-1Mi", "quantity \"-1Mi\" must not be negative"),
            ("1MB", "invalid quantity \"1MB\""),
            ("Mi", "invalid quantity \"Mi\""),
        ];
        for (q, expected) in err {
            assert_eq!(bytes(q), Err(expected.to_owned()), "{q}");
        }
    }

    #[test]
    fn resources_default_requests_to_limits_and_ignore_ephemeral_storage() {
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
        "resources": {
            "limits": {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "1Gi"},
            "requests": {"memory": "64Mi"}
        }})));
        assert_eq!(
            spec.containers[0].resources,
            Resources {
                cpu_request_millis: Some(500),
                cpu_limit_millis: Some(500),
                memory_request_bytes: Some(64 << 20),
                memory_limit_bytes: Some(128 << 20),
            }
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "resources": {"limits": {"hugepages-2Mi": "2Mi"}}})));
        assert_eq!(
            err,
            "spec.containers[0].resources.limits[hugepages-2Mi]: resource \"hugepages-2Mi\" is not available on kedge nodes"
        );
    }

    // -- probes --------------------------------------------------------------

    #[test]
    fn probes_get_defaults_and_named_ports() {
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "livenessProbe": {"httpGet": {"port": "http", "httpHeaders": [{"name": "X-A", "value": "b"}]}},
            "readinessProbe": {"tcpSocket": {"port": "9090"}, "periodSeconds": 5, "successThreshold": 2,
                "failureThreshold": 0, "initialDelaySeconds": 3, "timeoutSeconds": 2},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}}
        })));
        let c = &spec.containers[0];
        assert_eq!(
            c.liveness_probe,
            Some(Probe {
                handler: ProbeHandler::HttpGet {
                    path: "/".into(),
                    port: 8080,
                    host: None,
                    https: false,
                    headers: vec![("X-A".into(), "b".into())],
                },
                initial_delay_secs: 0,
                period_secs: 10,
                timeout_secs: 1,
                success_threshold: 1,
                failure_threshold: 3,
            })
        );
        assert_eq!(
            c.readiness_probe,
            Some(Probe {
                handler: ProbeHandler::TcpSocket {
                    port: 9090,
                    host: None
                },
                initial_delay_secs: 3,
                period_secs: 5,
                timeout_secs: 2,
                success_threshold: 2,
                failure_threshold: 3,
            })
        );
        assert_eq!(
            c.startup_probe.as_ref().map(|p| &p.handler),
            Some(&ProbeHandler::Exec {
                command: vec!["cat".into(), "/tmp/ready".into()]
            })
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "livenessProbe": {"httpGet": {"port": 80, "scheme": "HTTPS"}, "periodSeconds": -1}})));
        assert_eq!(
            err,
            "spec.containers[0].livenessProbe.periodSeconds: must not be negative"
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "livenessProbe": {"periodSeconds": 3}})));
        assert_eq!(
            err,
            "spec.containers[0].livenessProbe: must specify a handler type (exec, httpGet or tcpSocket)"
        );
    }

    // -- security context ----------------------------------------------------

    #[test]
    fn security_context_merges_pod_defaults() {
        let spec = convert(json!({"spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx", "securityContext": {
                "runAsUser": 2000,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "RuntimeDefault"}
            }}]
        }}));
        assert_eq!(
            spec.init_containers[0].security_context,
            Some(SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                ..SecurityContext::default()
            })
        );
        assert_eq!(
            spec.containers[0].security_context,
            Some(SecurityContext {
                run_as_user: Some(2000),
                run_as_group: Some(1000),
                read_only_root_filesystem: true,
                privileged: false,
                allow_privilege_escalation: Some(false),
                capabilities_add: vec!["NET_BIND_SERVICE".into()],
                capabilities_drop: vec!["ALL".into()],
            })
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}})));
        assert_eq!(
            err,
            "spec.containers[0].securityContext.allowPrivilegeEscalation: cannot be false when privileged is true"
        );
    }

    // -- volumes -------------------------------------------------------------

    #[test]
    fn volumes_and_mounts() {
        let spec = convert(json!({"spec": {
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "dev", "hostPath": {"path": "/dev/ttyUSB0", "type": "CharDevice"}},
                {"name": "implicit"}
            ],
            "containers": [{"name": "app", "image": "nginx", "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "dev", "mountPath": "/dev/ttyUSB0", "readOnly": true, "subPath": "x/y",
                 "mountPropagation": "None"}
            ]}]
        }}));
        assert_eq!(
            spec.volumes,
            [
                Volume {
                    name: "scratch".into(),
                    source: VolumeSource::EmptyDir {
                        memory: false,
                        size_limit_bytes: None
                    }
                },
                Volume {
                    name: "ram".into(),
                    source: VolumeSource::EmptyDir {
                        memory: true,
                        size_limit_bytes: Some(64 << 20)
                    }
                },
                Volume {
                    name: "dev".into(),
                    source: VolumeSource::HostPath {
                        path: "/dev/ttyUSB0".into()
                    }
                },
                Volume {
                    name: "implicit".into(),
                    source: VolumeSource::EmptyDir {
                        memory: false,
                        size_limit_bytes: None
                    }
                },
            ]
        );
        assert_eq!(
            spec.containers[0].volume_mounts,
            [
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp".into(),
                    read_only: false,
                    sub_path: None
                },
                VolumeMount {
                    name: "dev".into(),
                    mount_path: "/dev/ttyUSB0".into(),
                    read_only: true,
                    sub_path: Some("x/y".into())
                },
            ]
        );

        let volume = json!([{"name": "v", "emptyDir": {}}]);
        let cases = [
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "HostToContainer"}]}]}}),
                "spec.containers[0].volumeMounts[0].mountPropagation: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "../etc"}]}]}}),
                "spec.containers[0].volumeMounts[0].subPath: must not contain '..'",
            ),
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": ""}]}]}}),
                "spec.containers[0].volumeMounts[0].mountPath: required",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]}}),
                "spec.volumes[1].name: duplicate volume name \"v\"",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}]}}),
                "spec.volumes[0]: may not specify more than 1 volume type",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "relative"}}]}}),
                "spec.volumes[0].hostPath.path: must be an absolute path",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1.5"}}]}}),
                "spec.volumes[0].emptyDir.sizeLimit: fractional byte value \"1.5\" is invalid, must be an integer",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
    }

    // -- resolver ------------------------------------------------------------

    #[test]
    fn resolver_fills_env_from_configmaps_and_secrets() {
        let spec = convert_with(
            json!({"spec": {"containers": [{"name": "app", "image": "nginx",
                "envFrom": [
                    {"configMapRef": {"name": "cfg"}, "prefix": "APP_"},
                    {"configMapRef": {"name": "absent", "optional": true}}
                ],
                "env": [
                    {"name": "APP_MODE", "value": "override"},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
                    {"name": "OPT_KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
                    {"name": "OPT_MAP", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}}
                ]}]}}),
            &resolver(),
        )
        .expect("pod converts");
        let env: Vec<(&str, &str)> = spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("APP_LEVEL", "debug"),
                ("APP_MODE", "override"),
                ("PASSWORD", "hunter2"),
                ("LEVEL", "debug"),
            ]
        );
    }

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
    fn resolver_fills_configmap_and_secret_volumes() {
        let spec = convert_with(
            json!({"spec": {"volumes": [
                {"name": "all", "configMap": {"name": "cfg"}},
                {"name": "some", "configMap": {"name": "cfg", "defaultMode": 0o600,
                    "items": [{"key": "MODE", "path": "conf/mode", "mode": 0o600},
                              {"key": "gone", "path": "gone"}], "optional": true}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "maybe", "secret": {"secretName": "absent", "optional": true}}
            ]}}),
            &resolver(),
        )
        .expect("pod converts");
        let sources: Vec<&VolumeSource> = spec.volumes.iter().map(|v| &v.source).collect();
        assert_eq!(
            sources,
            [
                &VolumeSource::Files {
                    files: vec![
                        ("LEVEL".into(), b"debug".to_vec()),
                        ("MODE".into(), b"edge".to_vec()),
                    ],
                    default_mode: 0o644,
                },
                &VolumeSource::Files {
                    files: vec![("conf/mode".into(), b"edge".to_vec())],
                    default_mode: 0o600,
                },
                &VolumeSource::Files {
                    files: vec![("password".into(), b"hunter2".to_vec())],
                    default_mode: 0o400,
                },
                &VolumeSource::Files {
                    files: vec![],
                    default_mode: 0o644
                },
            ]
        );
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

    #[test]
    fn resolver_resolves_image_pull_secrets() {
        let spec = convert_with(
            json!({"spec": {"imagePullSecrets": [{"name": "regcred"}, {"name": "legacy"}, {"name": "absent"}]}}),
            &resolver(),
        )
        .expect("pod converts");
        assert_eq!(spec.image_pull_secrets.len(), 2);
        assert_eq!(spec.image_pull_secrets[0], r#"{"auths":{"r.example":{}}}"#);
        let legacy: Value =
            serde_json::from_str(&spec.image_pull_secrets[1]).expect("legacy secret is json");
        assert_eq!(legacy, json!({"auths": {"r.example": {}}}));
    }

    #[test]
    fn resolver_uses_the_pod_namespace() {
        let spec = convert_with(
            json!({"metadata": {"namespace": "other"}, "spec": {"containers": [{"name": "app", "image": "nginx",
                "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}}),
            &resolver(),
        )
        .expect("pod converts");
        assert_eq!(spec.containers[0].env[0].value, "wrong-namespace");
    }

    #[test]
    fn field_refs_resolve_statically() {
        let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let spec = convert(json!({
            "metadata": {"namespace": "factory", "uid": "u-1", "labels": {"app": "web"},
                "annotations": {"team": "edge"}},
            "spec": {"nodeName": "gw-1", "containers": [{"name": "app", "image": "nginx", "env": [
                field_env("NAME", "metadata.name"),
                field_env("NS", "metadata.namespace"),
                field_env("UID", "metadata.uid"),
                field_env("NODE", "spec.nodeName"),
                field_env("SA", "spec.serviceAccountName"),
                field_env("APP", "metadata.labels['app']"),
                field_env("TEAM", "metadata.annotations['team']"),
                field_env("NONE", "metadata.labels['missing']")
            ]}]}
        }));
        let env: Vec<(&str, &str)> = spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("NAME", "web"),
                ("NS", "factory"),
                ("UID", "u-1"),
                ("NODE", "gw-1"),
                ("SA", "default"),
                ("APP", "web"),
                ("TEAM", "edge"),
                ("NONE", ""),
            ]
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "env": [field_env("X", "spec.nodeName")]})));
        assert_eq!(
            err,
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: spec.nodeName is not set"
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "env": [field_env("X", "metadata.generation")]})));
        assert_eq!(
            err,
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported field path \"metadata.generation\""
        );
    }

    #[test]
    fn ports_are_validated() {
        let cases = [
            (
                with_container(json!({"name": "app", "image": "nginx",
                    "ports": [{"containerPort": 80, "protocol": "ICMP"}]})),
                "spec.containers[0].ports[0].protocol: unknown protocol \"ICMP\" (use TCP, UDP or SCTP)",
            ),
            (
                with_container(json!({"name": "app", "image": "nginx",
                    "ports": [{"containerPort": 80, "name": "HTTP"}]})),
                "spec.containers[0].ports[0].name: \"HTTP\" is not a valid port name: at most 15 lowercase letters, digits and '-', with at least one letter",
            ),
            (
                with_container(json!({"name": "app", "image": "nginx",
                    "ports": [{"containerPort": 80, "hostIP": "127.0.0.1", "hostPort": 80}]})),
                "spec.containers[0].ports[0].hostIP: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}]},
                    {"name": "b", "image": "nginx", "ports": [{"containerPort": 81, "hostPort": 8080}]}
                ]}}),
                "spec.containers[1].ports[0].hostPort: duplicate host port 8080/TCP",
            ),
            (
                json!({"spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "nginx",
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
                "spec.containers[0].ports[0].hostPort: must match containerPort when hostNetwork is true",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 0}]})));
        assert_eq!(spec.containers[0].ports[0].host_port, Some(8080));
        assert_eq!(spec.containers[0].ports[1].host_port, None);
    }
}
