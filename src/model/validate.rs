//! The rules every decoded message must pass before anything acts on it:
//! names with the Kubernetes rules (they become topic levels and file
//! names), uids that are safe as path components, and a bound on every
//! number, count and string length (so one message cannot overflow
//! arithmetic, exhaust memory or escape a directory).
//!
//! `wire::decode` runs [`Validate::validate`] on every body it decodes, so
//! the agent, the bridge and the CLI see only values that passed. Pure: no
//! I/O. The bounds are part of the wire contract (docs/wire.md, "Limits").

use std::collections::BTreeSet;

use super::selector::Selector;
use super::{
    Cohort, Container, ContainerState, ContainerStatus, DesiredIndex, Event, ExecReply,
    ExecRequest, FleetDeployment, FleetReport, Hook, Limit, LogChunk, LogRequest, MountPropagation,
    NodeLabels, NodeStatus, PodSpec, PodStatus, Probe, ProbeHandler, RestartPolicy, Revision,
    SealedPod, SecurityProfile, StatsReply, StatsRequest, StreamClose, StreamData, StreamExec,
    StreamOpen, StreamWindow, VolumeSource,
};

/// Containers in one pod (app containers; init containers have their own
/// bound of the same size). One pod must not cost the device more than a
/// few dozen workloads' worth of tasks, files and status.
pub const MAX_CONTAINERS: usize = 64;
pub const MAX_VOLUMES: usize = 256;
pub const MAX_ENV: usize = 4096;
pub const MAX_ARGS: usize = 4096;
pub const MAX_LABELS: usize = 256;
pub const MAX_PORTS: usize = 256;
pub const MAX_MOUNTS: usize = 256;
pub const MAX_FILES_PER_VOLUME: usize = 4096;
pub const MAX_PULL_SECRETS: usize = 64;
/// Data routes one pod declares (`PodSpec.routes`).
pub const MAX_POD_ROUTES: usize = 32;
/// Groups a pod's processes may be given (`supplementalGroups`).
pub const MAX_SUPPLEMENTAL_GROUPS: usize = 64;
pub const MAX_HEADERS: usize = 64;
/// Strings that are names, references or short messages.
pub const MAX_SHORT: usize = 4096;
/// Free text shown to people (status and event messages).
pub const MAX_MESSAGE: usize = 32 * 1024;
/// `terminationGracePeriodSeconds` and probe times: at most a year, so that
/// adding them to a clock never overflows.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// A log request's `sinceSeconds`: a hundred years, which is "every line".
pub const MAX_SINCE_SECONDS: u64 = MAX_SECONDS * 100;
/// CPU in millicores: a million cores; memory in bytes: what fits an i64
/// (the CRI's type).
pub const MAX_CPU_MILLIS: u64 = 1_000_000_000;
pub const MAX_BYTES: u64 = i64::MAX as u64;
/// Conditions, addresses and the like in a node status.
pub const MAX_NODE_ITEMS: usize = 64;
/// One log chunk's data.
pub const MAX_LOG_CHUNK: usize = 4 * 1024 * 1024;
/// Pods one desired index may list (the most pods a node can be asked to
/// run is far below it).
pub const MAX_INDEX_PODS: usize = 65_536;
/// Pods in one `StatsReply` (each with at most twice `MAX_CONTAINERS`:
/// app and init containers).
pub const MAX_STATS_PODS: usize = 4096;
/// Arguments of an exec request's command.
pub const MAX_EXEC_ARGS: usize = 256;
/// Bytes of an exec request's command, every argument together.
pub const MAX_EXEC_COMMAND_BYTES: usize = 64 * 1024;
/// The longest an exec request may ask its command to run.
pub const MAX_EXEC_TIMEOUT_SECS: u32 = 3600;
/// Bytes of each output stream in an `ExecReply` (the agent cuts longer
/// output and says so: `ExecOutput::truncated`).
pub const MAX_EXEC_OUTPUT: usize = 1024 * 1024;
/// Bytes of one `StreamData` message.
pub const MAX_STREAM_CHUNK: usize = 32 * 1024;
/// The largest window a stream's opener may give, and the most credit a
/// receiver may have outstanding (`StreamOpen::window`,
/// `StreamWindow::credit`).
pub const MAX_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Cohorts and batches of one fleet deployment (a device reports the batch
/// groups it is in as bits of a u64).
pub const MAX_BATCHES: usize = 64;
/// Routes in a node status's data path counters (the agent reports at most
/// this many: the node's first, then the pods').
pub const MAX_DATA_ROUTES: usize = 1024;
/// A pod's `dnsConfig`: Kubernetes' bounds on nameservers, search domains
/// and the search line (which the C library's resolver imposes), and
/// kedge's on options.
pub const MAX_DNS_NAMESERVERS: usize = 3;
pub const MAX_DNS_SEARCHES: usize = 32;
pub const MAX_DNS_SEARCH_CHARS: usize = 2048;
pub const MAX_DNS_OPTIONS: usize = 64;

/// A value that breaks a rule: the field path (as in the Kubernetes API,
/// `spec.containers[0].name`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        detail: detail.into(),
    }
}

pub type Result = std::result::Result<(), Invalid>;

/// Every message kind that crosses the wire checks itself.
pub trait Validate {
    fn validate(&self) -> Result;
}

// ---------------------------------------------------------------------------
// Rules on single values

pub const LABEL_RULE: &str = "lowercase letters, digits and '-' only, starting and ending with a letter or digit, at most 63 characters";
pub const SUBDOMAIN_RULE: &str = "lowercase letters, digits, '-' and '.' only, starting and ending with a letter or digit, at most 253 characters";
pub const UID_RULE: &str = "letters, digits, '-' and '_' only, 1 to 128 characters";

/// An RFC 1123 label: namespaces, container, volume and port names.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_label_unbounded(s)
}

fn is_dns1123_label_unbounded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: pod and node names.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label_unbounded)
}

/// A uid is a path component on the device (`pods/{ns}_{name}_{uid}`):
/// no separators, no dots, nothing a shell or a file system treats
/// specially. Kubernetes uids (UUIDs), the CLI's and static pods' fit.
pub fn is_uid(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A request id is a topic level and nothing else.
fn is_request_id(s: &str) -> bool {
    is_uid(s)
}

pub fn label(field: &str, what: &str, value: &str) -> Result {
    if value.is_empty() {
        return Err(invalid(field, "Required value"));
    }
    if !is_dns1123_label(value) {
        return Err(invalid(
            field,
            format!("Invalid value: {value:?}: a {what} must consist of {LABEL_RULE}"),
        ));
    }
    Ok(())
}

pub fn subdomain(field: &str, what: &str, value: &str) -> Result {
    if value.is_empty() {
        return Err(invalid(field, "Required value"));
    }
    if !is_dns1123_subdomain(value) {
        return Err(invalid(
            field,
            format!("Invalid value: {value:?}: a {what} must consist of {SUBDOMAIN_RULE}"),
        ));
    }
    Ok(())
}

pub fn uid(field: &str, value: &str) -> Result {
    if !is_uid(value) {
        return Err(invalid(
            field,
            format!(
                "Invalid value: {:?}: a uid must consist of {UID_RULE}",
                clip(value)
            ),
        ));
    }
    Ok(())
}

/// Text of at most `max` bytes with no NUL (NUL cannot be in a path, an
/// argument or an environment string).
fn text(field: &str, value: &str, max: usize) -> Result {
    bytes(field, value.len(), max)?;
    if value.contains('\0') {
        return Err(invalid(field, "Invalid value: contains a NUL character"));
    }
    Ok(())
}

fn bytes(field: &str, n: usize, max: usize) -> Result {
    if n > max {
        return Err(invalid(
            field,
            format!("Too long: {n} bytes, at most {max}"),
        ));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> Result {
    if n > max {
        return Err(invalid(field, format!("Too many: {n}, at most {max}")));
    }
    Ok(())
}

/// A route's priority: 0 to 9.
fn route_priority(field: &str, priority: crate::model::Priority) -> Result {
    let lowest = crate::model::Priority::LOWEST.0;
    at_most(field, u64::from(priority.0), u64::from(lowest))
}

fn at_most(field: &str, value: u64, max: u64) -> Result {
    if value > max {
        return Err(invalid(
            field,
            format!("Invalid value: {value}: must be at most {max}"),
        ));
    }
    Ok(())
}

fn absolute_path(field: &str, value: &str) -> Result {
    text(field, value, MAX_SHORT)?;
    if !value.starts_with('/') {
        return Err(invalid(
            field,
            format!("Invalid value: {:?}: must be an absolute path", clip(value)),
        ));
    }
    Ok(())
}

/// A path below a directory: relative, no `..` or `.` components, no empty
/// components.
pub fn relative_path(field: &str, value: &str) -> Result {
    text(field, value, MAX_SHORT)?;
    if value.is_empty() {
        return Err(invalid(field, "Required value"));
    }
    if value.starts_with('/') {
        return Err(invalid(field, "Invalid value: must be a relative path"));
    }
    if value
        .split('/')
        .any(|part| part == ".." || part == "." || part.is_empty())
    {
        return Err(invalid(
            field,
            "Invalid value: must not contain '..', '.' or empty path elements",
        ));
    }
    Ok(())
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of
/// at most 63 characters (letters, digits, '-', '_', '.').
pub(crate) fn label_key(field: &str, key: &str) -> Result {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok || prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return Err(invalid(
            field,
            format!(
                "Invalid value: {:?}: a label key is an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                clip(key)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn label_value(field: &str, value: &str) -> Result {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if !ok {
        return Err(invalid(
            field,
            format!(
                "Invalid value: {:?}: a label value is at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                clip(value)
            ),
        ));
    }
    Ok(())
}

/// The first 64 characters of a value, for messages about huge values.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Messages

/// A sealed spec's ciphertext: the plaintext is a `PodSpec` body, which
/// the MQTT packet bound (`mqtt::MAX_PACKET_BYTES`) already limits; this
/// bound keeps a hostile one from costing more than that to decrypt.
pub const MAX_SEALED_BYTES: usize = 16 * 1024 * 1024;

impl Validate for SealedPod {
    fn validate(&self) -> Result {
        uid("metadata.uid", &self.uid)?;
        labels("metadata.labels", &self.labels)?;
        if self.ciphertext.len() > MAX_SEALED_BYTES {
            return Err(invalid(
                "ciphertext",
                format!(
                    "Too long: {} bytes, at most {MAX_SEALED_BYTES}",
                    self.ciphertext.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Validate for PodSpec {
    fn validate(&self) -> Result {
        label("metadata.namespace", "namespace", &self.namespace)?;
        subdomain("metadata.name", "pod name", &self.name)?;
        uid("metadata.uid", &self.uid)?;
        count("metadata.labels", self.labels.len(), MAX_LABELS)?;
        for (k, v) in &self.labels {
            label_key(&format!("metadata.labels[{k:?}]"), k)?;
            label_value(&format!("metadata.labels[{k:?}]"), v)?;
        }
        at_most(
            "spec.terminationGracePeriodSeconds",
            self.termination_grace_period_secs,
            MAX_SECONDS,
        )?;
        if self.containers.is_empty() {
            return Err(invalid("spec.containers", "Required value"));
        }
        count("spec.containers", self.containers.len(), MAX_CONTAINERS)?;
        count(
            "spec.initContainers",
            self.init_containers.len(),
            MAX_CONTAINERS,
        )?;
        count("spec.volumes", self.volumes.len(), MAX_VOLUMES)?;
        let mut volume_names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            label(&format!("{path}.name"), "volume name", &v.name)?;
            if !volume_names.insert(v.name.as_str()) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("Duplicate value: {:?}", v.name),
                ));
            }
            match &v.source {
                VolumeSource::EmptyDir {
                    size_limit_bytes, ..
                } => {
                    if let Some(b) = size_limit_bytes {
                        at_most(&format!("{path}.emptyDir.sizeLimit"), *b, MAX_BYTES)?;
                    }
                }
                VolumeSource::HostPath { path: p, .. } => {
                    absolute_path(&format!("{path}.hostPath.path"), p)?
                }
                VolumeSource::Files {
                    files,
                    default_mode,
                } => {
                    count(&format!("{path}.items"), files.len(), MAX_FILES_PER_VOLUME)?;
                    at_most(
                        &format!("{path}.defaultMode"),
                        u64::from(*default_mode),
                        0o777,
                    )?;
                    for (name, _) in files {
                        relative_path(&format!("{path}.items[{:?}]", clip(name)), name)?;
                    }
                }
                // A directory name on the device: the Kubernetes name rule
                // keeps it one path component.
                VolumeSource::Claim { claim, .. } => subdomain(
                    &format!("{path}.persistentVolumeClaim.claimName"),
                    "claim name",
                    claim,
                )?,
            }
        }
        let mut container_names = BTreeSet::new();
        for (list, field) in [
            (&self.init_containers, "spec.initContainers"),
            (&self.containers, "spec.containers"),
        ] {
            for (i, c) in list.iter().enumerate() {
                let path = format!("{field}[{i}]");
                container(&path, c, &volume_names)?;
                // Kubernetes' rule: `Always` on an init container (a native
                // sidecar), nothing on an app container.
                let init = field == "spec.initContainers";
                match c.restart_policy {
                    None | Some(RestartPolicy::Always) if init => {}
                    None => {}
                    Some(_) => {
                        return Err(invalid(
                            format!("{path}.restartPolicy"),
                            if init {
                                "Unsupported value: must be Always or unset"
                            } else {
                                "Forbidden: may not be set for non-init containers"
                            },
                        ));
                    }
                }
                if !container_names.insert(c.name.as_str()) {
                    return Err(invalid(
                        format!("{path}.name"),
                        format!("Duplicate value: {:?}", c.name),
                    ));
                }
            }
        }
        count(
            "spec.imagePullSecrets",
            self.image_pull_secrets.len(),
            MAX_PULL_SECRETS,
        )?;
        let groups = &self.security.supplemental_groups;
        let field = "spec.securityContext.supplementalGroups";
        count(field, groups.len(), MAX_SUPPLEMENTAL_GROUPS)?;
        for (i, g) in groups.iter().enumerate() {
            unix_id(&format!("{field}[{i}]"), *g)?;
        }
        if let Some(g) = self.security.fs_group {
            unix_id("spec.securityContext.fsGroup", g)?;
        }
        if let Some(o) = &self.security.se_linux_options {
            se_linux("spec.securityContext.seLinuxOptions", o)?;
        }
        let dns = &self.dns;
        let field = "spec.dnsConfig.nameservers";
        count(field, dns.nameservers.len(), MAX_DNS_NAMESERVERS)?;
        for (i, ns) in dns.nameservers.iter().enumerate() {
            if ns.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    format!("Invalid value: {:?}: must be an IP address", clip(ns)),
                ));
            }
        }
        let field = "spec.dnsConfig.searches";
        count(field, dns.searches.len(), MAX_DNS_SEARCHES)?;
        for (i, search) in dns.searches.iter().enumerate() {
            resolv_word(&format!("{field}[{i}]"), search, 253)?;
        }
        let line: usize = dns.searches.iter().map(|s| s.len() + 1).sum();
        bytes(field, line.saturating_sub(1), MAX_DNS_SEARCH_CHARS)?;
        let field = "spec.dnsConfig.options";
        count(field, dns.options.len(), MAX_DNS_OPTIONS)?;
        for (i, option) in dns.options.iter().enumerate() {
            resolv_word(&format!("{field}[{i}]"), option, 256)?;
        }
        // Where a manifest declares them: the annotation.
        let field = "metadata.annotations[kedge.io/routes]";
        count(field, self.routes.len(), MAX_POD_ROUTES)?;
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("{field}[{i}]");
            text(&path, &r.filter, 256)?;
            if !rumqttc::mqttbytes::valid_filter(&r.filter) {
                return Err(invalid(
                    path,
                    format!(
                        "Invalid value: {:?}: not an MQTT topic filter",
                        clip(&r.filter)
                    ),
                ));
            }
            at_most(&path, r.ttl_secs, MAX_SECONDS)?;
            route_priority(&path, r.priority)?;
            if let crate::model::RouteTarget::Pod(target) = &r.target {
                if !crate::model::route::valid_name(target) {
                    return Err(invalid(
                        path,
                        format!("Invalid value: \"pod/{}\": not a pod name", clip(target)),
                    ));
                }
                if r.priority != crate::model::Priority::default() {
                    let why = crate::model::route::NOT_INTO_A_POD;
                    return Err(invalid(
                        path,
                        format!("Invalid value: \"PRIORITY {}\": {why}", r.priority),
                    ));
                }
            }
            if let Some(c) = &r.container
                && !self.containers.iter().any(|k| k.name == *c)
            {
                return Err(invalid(
                    path,
                    format!(
                        "Invalid value: {:?}: not an app container of the pod",
                        clip(c)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A word of a resolv.conf line (a search domain, an option) or a part of
/// an SELinux label: at most `max` bytes, with nothing that would start
/// another word or line.
fn word(field: &str, value: &str, max: usize) -> Result {
    bytes(field, value.len(), max)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!(
                "Invalid value: {:?}: must not contain spaces or control characters",
                clip(value)
            ),
        ));
    }
    Ok(())
}

fn resolv_word(field: &str, value: &str, max: usize) -> Result {
    if value.is_empty() {
        return Err(invalid(field, "Required value"));
    }
    word(field, value, max)
}

/// An SELinux label's parts (each may be empty: the runtime's default).
fn se_linux(field: &str, o: &super::SeLinuxOptions) -> Result {
    for (part, name) in [
        (&o.user, "user"),
        (&o.role, "role"),
        (&o.r#type, "type"),
        (&o.level, "level"),
    ] {
        word(&format!("{field}.{name}"), part, 256)?;
    }
    Ok(())
}

/// A user or group id: 0 to 2^32 - 1.
fn unix_id(field: &str, id: i64) -> Result {
    if (0..=i64::from(u32::MAX)).contains(&id) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("Invalid value: {id}: must be between 0 and 4294967295, inclusive"),
    ))
}

fn container(path: &str, c: &Container, volumes: &BTreeSet<&str>) -> Result {
    label(&format!("{path}.name"), "container name", &c.name)?;
    if c.image.is_empty() {
        return Err(invalid(format!("{path}.image"), "Required value"));
    }
    text(&format!("{path}.image"), &c.image, MAX_SHORT)?;
    if c.image.chars().any(|ch| ch.is_control() || ch == ' ') {
        return Err(invalid(
            format!("{path}.image"),
            "Invalid value: must not contain spaces or control characters",
        ));
    }
    count(&format!("{path}.command"), c.command.len(), MAX_ARGS)?;
    count(&format!("{path}.args"), c.args.len(), MAX_ARGS)?;
    for (i, a) in c.command.iter().enumerate() {
        text(&format!("{path}.command[{i}]"), a, MAX_MESSAGE * 4)?;
    }
    for (i, a) in c.args.iter().enumerate() {
        text(&format!("{path}.args[{i}]"), a, MAX_MESSAGE * 4)?;
    }
    if let Some(w) = &c.working_dir {
        text(&format!("{path}.workingDir"), w, MAX_SHORT)?;
    }
    count(&format!("{path}.env"), c.env.len(), MAX_ENV)?;
    for (i, e) in c.env.iter().enumerate() {
        let p = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            return Err(invalid(format!("{p}.name"), "Required value"));
        }
        text(&format!("{p}.name"), &e.name, 256)?;
        if e.name.contains('=') {
            return Err(invalid(
                format!("{p}.name"),
                format!("Invalid value: {:?}: must not contain '='", clip(&e.name)),
            ));
        }
        text(&format!("{p}.value"), &e.value, MAX_MESSAGE * 4)?;
        if e.field.is_some() && !e.value.is_empty() {
            return Err(invalid(
                format!("{p}.valueFrom"),
                "Invalid value: may not be specified when `value` is not empty",
            ));
        }
    }
    for (hook, name) in [
        (&c.lifecycle.post_start, "postStart"),
        (&c.lifecycle.pre_stop, "preStop"),
    ] {
        let p = format!("{path}.lifecycle.{name}");
        match hook {
            Some(Hook::Run(ProbeHandler::TcpSocket { .. })) => {
                return Err(invalid(
                    format!("{p}.tcpSocket"),
                    "Forbidden: tcpSocket is not a lifecycle hook handler",
                ));
            }
            // Kubernetes' lifecycle handlers have no gRPC action.
            Some(Hook::Run(ProbeHandler::Grpc { .. })) => {
                return Err(invalid(
                    format!("{p}.grpc"),
                    "Forbidden: a lifecycle hook cannot be a gRPC call",
                ));
            }
            Some(Hook::Run(handler)) => probe_handler(&p, handler)?,
            Some(Hook::Sleep { seconds }) => at_most(
                &format!("{p}.sleep.seconds"),
                u64::from(*seconds),
                MAX_SECONDS,
            )?,
            None => {}
        }
    }
    if let Some(t) = &c.termination_message_path {
        absolute_path(&format!("{path}.terminationMessagePath"), t)?;
    }
    count(
        &format!("{path}.volumeMounts"),
        c.volume_mounts.len(),
        MAX_MOUNTS,
    )?;
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        if !volumes.contains(m.name.as_str()) {
            return Err(invalid(
                format!("{p}.name"),
                format!("Not found: {:?}", clip(&m.name)),
            ));
        }
        absolute_path(&format!("{p}.mountPath"), &m.mount_path)?;
        if let Some(sub) = &m.sub_path {
            relative_path(&format!("{p}.subPath"), sub)?;
        }
        // Kubernetes' rule.
        if m.propagation == MountPropagation::Bidirectional
            && !c.security_context.as_ref().is_some_and(|s| s.privileged)
        {
            return Err(invalid(
                format!("{p}.mountPropagation"),
                "Forbidden: Bidirectional mount propagation is available only to privileged containers",
            ));
        }
    }
    count(&format!("{path}.ports"), c.ports.len(), MAX_PORTS)?;
    for (i, port) in c.ports.iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        if port.container_port == 0 {
            return Err(invalid(
                format!("{p}.containerPort"),
                "Invalid value: 0: must be between 1 and 65535, inclusive",
            ));
        }
        if port.host_port == Some(0) {
            return Err(invalid(
                format!("{p}.hostPort"),
                "Invalid value: 0: must be between 1 and 65535, inclusive",
            ));
        }
        if !matches!(port.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(invalid(
                format!("{p}.protocol"),
                format!(
                    "Unsupported value: {:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                    clip(&port.protocol)
                ),
            ));
        }
        if let Some(name) = &port.name {
            text(&format!("{p}.name"), name, 15)?;
        }
    }
    let r = &c.resources;
    for (value, field, max) in [
        (r.cpu_request_millis, "requests.cpu", MAX_CPU_MILLIS),
        (r.cpu_limit_millis, "limits.cpu", MAX_CPU_MILLIS),
        (r.memory_request_bytes, "requests.memory", MAX_BYTES),
        (r.memory_limit_bytes, "limits.memory", MAX_BYTES),
        (
            r.ephemeral_storage_limit_bytes,
            "limits.ephemeral-storage",
            MAX_BYTES,
        ),
    ] {
        if let Some(v) = value {
            at_most(&format!("{path}.resources.{field}"), v, max)?;
        }
    }
    for (probe, name) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        if let Some(p) = probe {
            self::probe(&format!("{path}.{name}"), p)?;
        }
    }
    if let Some(sc) = &c.security_context {
        let p = format!("{path}.securityContext");
        for (id, field) in [
            (sc.run_as_user, "runAsUser"),
            (sc.run_as_group, "runAsGroup"),
        ] {
            if let Some(id) = id {
                unix_id(&format!("{p}.{field}"), id)?;
            }
        }
        if let Some(o) = &sc.se_linux_options {
            se_linux(&format!("{p}.seLinuxOptions"), o)?;
        }
        if let Some(SecurityProfile::Localhost(name)) = &sc.seccomp_profile {
            // A file under the agent's seccomp directory.
            relative_path(&format!("{p}.seccompProfile.localhostProfile"), name)?;
        }
        if let Some(SecurityProfile::Localhost(name)) = &sc.app_armor_profile {
            let field = format!("{p}.appArmorProfile.localhostProfile");
            if name.is_empty() {
                return Err(invalid(field, "Required value"));
            }
            text(&field, name, MAX_SHORT)?;
            if name.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    "Invalid value: must not contain control characters",
                ));
            }
        }
        count(
            &format!("{p}.capabilities.add"),
            sc.capabilities_add.len(),
            64,
        )?;
        count(
            &format!("{p}.capabilities.drop"),
            sc.capabilities_drop.len(),
            64,
        )?;
        for cap in sc.capabilities_add.iter().chain(&sc.capabilities_drop) {
            if cap.is_empty()
                || cap.len() > 64
                || !cap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid(
                    format!("{p}.capabilities"),
                    format!("Invalid value: {:?}: not a capability name", clip(cap)),
                ));
            }
        }
    }
    Ok(())
}

fn probe(path: &str, p: &Probe) -> Result {
    for (value, field, min) in [
        (p.initial_delay_secs, "initialDelaySeconds", 0),
        (p.period_secs, "periodSeconds", 1),
        (p.timeout_secs, "timeoutSeconds", 1),
        (p.success_threshold, "successThreshold", 1),
        (p.failure_threshold, "failureThreshold", 1),
    ] {
        let value = u64::from(value);
        if value < min {
            return Err(invalid(
                format!("{path}.{field}"),
                format!("Invalid value: {value}: must be at least {min}"),
            ));
        }
        at_most(&format!("{path}.{field}"), value, MAX_SECONDS)?;
    }
    probe_handler(path, &p.handler)
}

/// A probe's handler, or a lifecycle hook's.
fn probe_handler(path: &str, handler: &ProbeHandler) -> Result {
    match handler {
        ProbeHandler::Exec { command } => {
            if command.is_empty() {
                return Err(invalid(format!("{path}.exec.command"), "Required value"));
            }
            count(&format!("{path}.exec.command"), command.len(), MAX_ARGS)?;
            for (i, a) in command.iter().enumerate() {
                text(&format!("{path}.exec.command[{i}]"), a, MAX_MESSAGE)?;
            }
        }
        ProbeHandler::HttpGet {
            path: p,
            port,
            host,
            headers,
            ..
        } => {
            text(&format!("{path}.httpGet.path"), p, MAX_SHORT)?;
            if p.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    format!("{path}.httpGet.path"),
                    "Invalid value: must not contain control characters",
                ));
            }
            if *port == 0 {
                return Err(invalid(
                    format!("{path}.httpGet.port"),
                    "Invalid value: 0: must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(h) = host {
                text(&format!("{path}.httpGet.host"), h, 253)?;
            }
            count(
                &format!("{path}.httpGet.httpHeaders"),
                headers.len(),
                MAX_HEADERS,
            )?;
            for (i, (k, v)) in headers.iter().enumerate() {
                text(&format!("{path}.httpGet.httpHeaders[{i}].name"), k, 256)?;
                text(
                    &format!("{path}.httpGet.httpHeaders[{i}].value"),
                    v,
                    MAX_SHORT,
                )?;
            }
        }
        ProbeHandler::TcpSocket { port, host } => {
            if *port == 0 {
                return Err(invalid(
                    format!("{path}.tcpSocket.port"),
                    "Invalid value: 0: must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(h) = host {
                text(&format!("{path}.tcpSocket.host"), h, 253)?;
            }
        }
        ProbeHandler::Grpc { port, service } => {
            if *port == 0 {
                return Err(invalid(
                    format!("{path}.grpc.port"),
                    "Invalid value: 0: must be between 1 and 65535, inclusive",
                ));
            }
            text(&format!("{path}.grpc.service"), service, MAX_SHORT)?;
        }
    }
    Ok(())
}

impl Validate for PodStatus {
    fn validate(&self) -> Result {
        label("namespace", "namespace", &self.namespace)?;
        subdomain("name", "pod name", &self.name)?;
        // A status for a spec that was refused before it had a uid has none.
        if !self.uid.is_empty() {
            uid("uid", &self.uid)?;
        }
        count("conditions", self.conditions.len(), MAX_NODE_ITEMS)?;
        for (i, c) in self.conditions.iter().enumerate() {
            opt_text(&format!("conditions[{i}].reason"), &c.reason, MAX_SHORT)?;
            opt_text(&format!("conditions[{i}].message"), &c.message, MAX_MESSAGE)?;
        }
        opt_text("reason", &self.reason, MAX_SHORT)?;
        opt_text("message", &self.message, MAX_MESSAGE)?;
        opt_text("hostIP", &self.host_ip, 64)?;
        opt_text("podIP", &self.pod_ip, 64)?;
        for (list, field) in [
            (&self.init_container_statuses, "initContainerStatuses"),
            (&self.container_statuses, "containerStatuses"),
        ] {
            count(field, list.len(), MAX_CONTAINERS)?;
            for (i, c) in list.iter().enumerate() {
                container_status(&format!("{field}[{i}]"), c)?;
            }
        }
        Ok(())
    }
}

fn opt_text(field: &str, value: &Option<String>, max: usize) -> Result {
    match value {
        Some(v) => text(field, v, max),
        None => Ok(()),
    }
}

fn container_status(path: &str, c: &ContainerStatus) -> Result {
    label(&format!("{path}.name"), "container name", &c.name)?;
    text(&format!("{path}.image"), &c.image, MAX_SHORT)?;
    text(&format!("{path}.imageID"), &c.image_id, MAX_SHORT)?;
    text(&format!("{path}.containerID"), &c.container_id, MAX_SHORT)?;
    state(&format!("{path}.state"), &c.state)?;
    if let Some(s) = &c.last_state {
        state(&format!("{path}.lastState"), s)?;
    }
    Ok(())
}

fn state(path: &str, s: &ContainerState) -> Result {
    match s {
        ContainerState::Waiting { reason, message } => {
            text(&format!("{path}.waiting.reason"), reason, MAX_SHORT)?;
            opt_text(&format!("{path}.waiting.message"), message, MAX_MESSAGE)
        }
        ContainerState::Running { .. } => Ok(()),
        ContainerState::Terminated {
            reason, message, ..
        } => {
            text(&format!("{path}.terminated.reason"), reason, MAX_SHORT)?;
            opt_text(&format!("{path}.terminated.message"), message, MAX_MESSAGE)
        }
    }
}

impl Validate for NodeStatus {
    fn validate(&self) -> Result {
        subdomain("name", "node name", &self.name)?;
        let i = &self.info;
        for (v, f) in [
            (&i.architecture, "nodeInfo.architecture"),
            (&i.operating_system, "nodeInfo.operatingSystem"),
            (&i.kernel_version, "nodeInfo.kernelVersion"),
            (&i.os_image, "nodeInfo.osImage"),
            (&i.hostname, "nodeInfo.hostname"),
            (&i.agent_version, "nodeInfo.kubeletVersion"),
            (&i.machine_id, "nodeInfo.machineID"),
            (&i.boot_id, "nodeInfo.bootID"),
            (&i.system_uuid, "nodeInfo.systemUUID"),
            (
                &i.container_runtime_version,
                "nodeInfo.containerRuntimeVersion",
            ),
        ] {
            text(f, v, MAX_SHORT)?;
        }
        count("conditions", self.conditions.len(), MAX_NODE_ITEMS)?;
        for (n, c) in self.conditions.iter().enumerate() {
            text(&format!("conditions[{n}].reason"), &c.reason, MAX_SHORT)?;
            text(&format!("conditions[{n}].message"), &c.message, MAX_MESSAGE)?;
        }
        count("addresses", self.addresses.len(), MAX_NODE_ITEMS)?;
        for (n, a) in self.addresses.iter().enumerate() {
            text(&format!("addresses[{n}].type"), &a.kind, 64)?;
            text(&format!("addresses[{n}].address"), &a.address, 253)?;
        }
        labels("metadata.labels", &self.labels)?;
        if let Some(data) = &self.data {
            count("data.routes", data.routes.len(), MAX_DATA_ROUTES)?;
            for (n, r) in data.routes.iter().enumerate() {
                text(&format!("data.routes[{n}].route"), &r.route, MAX_SHORT)?;
                opt_text(&format!("data.routes[{n}].pod"), &r.pod, 2 * 253 + 1)?;
                route_priority(&format!("data.routes[{n}].priority"), r.priority)?;
            }
        }
        Ok(())
    }
}

/// A label set: bounded, every key and value by the label rules.
pub fn labels(field: &str, labels: &std::collections::BTreeMap<String, String>) -> Result {
    count(field, labels.len(), MAX_LABELS)?;
    for (k, v) in labels {
        label_key(field, k)?;
        label_value(&format!("{field}[{k}]"), v)?;
    }
    Ok(())
}

/// A sha256 digest as the fleet topics carry it: 64 lowercase hex digits.
pub fn sha256_hex(field: &str, value: &str) -> Result {
    if value.len() != 64
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid(
            field,
            format!(
                "Invalid value: {:?}: a sha256 digest is 64 lowercase hex digits",
                clip(value)
            ),
        ));
    }
    Ok(())
}

fn limit(field: &str, l: Limit) -> Result {
    match l {
        Limit::Percent(p) if !(1..=100).contains(&p) => Err(invalid(
            field,
            format!("Invalid value: {p}%: a percentage is 1% to 100%"),
        )),
        _ => Ok(()),
    }
}

fn revision(field: &str, r: &Revision) -> Result {
    if r.revision == 0 {
        return Err(invalid(field, "Invalid value: revisions start at 1"));
    }
    sha256_hex(&format!("{field}.specDigest"), &r.spec_digest)
}

impl Validate for FleetDeployment {
    fn validate(&self) -> Result {
        label("metadata.namespace", "namespace", &self.namespace)?;
        subdomain("metadata.name", "fleet name", &self.name)?;
        uid("metadata.uid", &self.uid)?;
        Selector::parse("spec.selector", &self.selector)?;
        subdomain("spec.podName", "pod name", &self.pod_name)?;
        revision("status.revision", &self.target())?;
        count("status.cohorts", self.cohorts.len(), MAX_BATCHES)?;
        for (n, Cohort { selector, per_10k }) in self.cohorts.iter().enumerate() {
            Selector::parse(&format!("status.cohorts[{n}].selector"), selector)?;
            at_most(
                &format!("status.cohorts[{n}].per10k"),
                u64::from(*per_10k),
                u64::from(super::fleet::BUCKETS),
            )?;
        }
        if let Some(stable) = &self.stable {
            revision("status.stable", stable)?;
        }
        let policy = &self.rollout.policy;
        count("spec.rollout.batches", policy.batches.len(), MAX_BATCHES)?;
        for (n, b) in policy.batches.iter().enumerate() {
            Selector::parse(&format!("spec.rollout.batches[{n}].selector"), &b.selector)?;
            limit(&format!("spec.rollout.batches[{n}].limit"), b.limit)?;
        }
        if !(1..=100).contains(&policy.success_threshold_pct) {
            return Err(invalid(
                "spec.rollout.successThreshold",
                format!(
                    "Invalid value: {}%: a percentage is 1% to 100%",
                    policy.success_threshold_pct
                ),
            ));
        }
        at_most(
            "spec.rollout.deviceTimeoutSeconds",
            u64::from(policy.device_timeout_secs),
            MAX_SECONDS,
        )?;
        at_most(
            "spec.rollout.minReadySeconds",
            u64::from(policy.min_ready_secs),
            MAX_SECONDS,
        )?;
        limit("spec.rollout.maxUnavailable", policy.max_unavailable)?;
        text("status.message", &self.rollout.state.message, MAX_MESSAGE)
    }
}

impl Validate for FleetReport {
    fn validate(&self) -> Result {
        uid("fleetUid", &self.fleet_uid)?;
        opt_text("reason", &self.reason, MAX_SHORT)?;
        opt_text("message", &self.message, MAX_MESSAGE)
    }
}

impl Validate for NodeLabels {
    fn validate(&self) -> Result {
        labels("labels", &self.labels)
    }
}

impl Validate for Event {
    fn validate(&self) -> Result {
        if let Some(ns) = &self.namespace {
            label("namespace", "namespace", ns)?;
        }
        if let Some(pod) = &self.pod {
            subdomain("pod", "pod name", pod)?;
        }
        if let Some(c) = &self.container {
            label("container", "container name", c)?;
        }
        text("reason", &self.reason, 128)?;
        text("message", &self.message, MAX_MESSAGE)
    }
}

impl Validate for LogRequest {
    fn validate(&self) -> Result {
        request_id(&self.request_id)?;
        label("namespace", "namespace", &self.namespace)?;
        subdomain("pod", "pod name", &self.pod)?;
        if let Some(c) = &self.container {
            label("container", "container name", c)?;
        }
        if let Some(s) = self.since_seconds {
            at_most("sinceSeconds", s, MAX_SINCE_SECONDS)?;
        }
        if let Some(t) = self.tail_lines {
            at_most("tailLines", t, MAX_BYTES)?;
        }
        if let Some(l) = self.limit_bytes {
            at_most("limitBytes", l, MAX_BYTES)?;
        }
        Ok(())
    }
}

impl Validate for LogChunk {
    fn validate(&self) -> Result {
        request_id(&self.request_id)?;
        count("data", self.data.len(), MAX_LOG_CHUNK)?;
        opt_text("error", &self.error, MAX_MESSAGE)
    }
}

fn request_id(value: &str) -> Result {
    if is_request_id(value) {
        return Ok(());
    }
    Err(invalid(
        "requestId",
        format!(
            "Invalid value: {:?}: a request id must consist of {UID_RULE}",
            clip(value)
        ),
    ))
}

impl Validate for StatsRequest {
    fn validate(&self) -> Result {
        request_id(&self.request_id)
    }
}

impl Validate for StatsReply {
    fn validate(&self) -> Result {
        request_id(&self.request_id)?;
        let stats = match &self.result {
            Ok(stats) => stats,
            Err(e) => return text("error", e, MAX_MESSAGE),
        };
        count("stats.pods", stats.pods.len(), MAX_STATS_PODS)?;
        for (i, p) in stats.pods.iter().enumerate() {
            let path = format!("stats.pods[{i}]");
            label(&format!("{path}.namespace"), "namespace", &p.namespace)?;
            subdomain(&format!("{path}.name"), "pod name", &p.name)?;
            uid(&format!("{path}.uid"), &p.uid)?;
            count(
                &format!("{path}.containers"),
                p.containers.len(),
                2 * MAX_CONTAINERS,
            )?;
            for (j, c) in p.containers.iter().enumerate() {
                label(
                    &format!("{path}.containers[{j}].name"),
                    "container name",
                    &c.name,
                )?;
            }
        }
        Ok(())
    }
}

impl Validate for ExecRequest {
    fn validate(&self) -> Result {
        request_id(&self.request_id)?;
        label("namespace", "namespace", &self.namespace)?;
        subdomain("pod", "pod name", &self.pod)?;
        label("container", "container name", &self.container)?;
        let n = self.command.len();
        if n == 0 {
            return Err(invalid("command", "Required value: a command to run"));
        }
        count("command", n, MAX_EXEC_ARGS)?;
        let total = self.command.iter().map(String::len).sum();
        bytes("command", total, MAX_EXEC_COMMAND_BYTES)?;
        for arg in &self.command {
            text("command", arg, MAX_EXEC_COMMAND_BYTES)?;
        }
        if !(1..=MAX_EXEC_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(invalid(
                "timeoutSeconds",
                format!(
                    "Invalid value: {}: must be from 1 to {MAX_EXEC_TIMEOUT_SECS}",
                    self.timeout_secs
                ),
            ));
        }
        Ok(())
    }
}

impl Validate for ExecReply {
    fn validate(&self) -> Result {
        request_id(&self.request_id)?;
        match &self.result {
            Ok(out) => {
                bytes("stdout", out.stdout.len(), MAX_EXEC_OUTPUT)?;
                bytes("stderr", out.stderr.len(), MAX_EXEC_OUTPUT)
            }
            Err(e) => text("error", e, MAX_MESSAGE),
        }
    }
}

/// A stream id: 32 lowercase hex digits (a UUID without dashes).
fn stream_id(value: &str) -> Result {
    if value.len() == 32
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Ok(());
    }
    Err(invalid(
        "streamId",
        "Invalid value: a stream id must be 32 lowercase hex digits",
    ))
}

fn window(field: &str, n: u32) -> Result {
    bytes(field, n as usize, MAX_STREAM_WINDOW as usize)
}

impl Validate for StreamOpen {
    fn validate(&self) -> Result {
        stream_id(&self.stream_id)?;
        label("namespace", "namespace", &self.namespace)?;
        subdomain("pod", "pod name", &self.pod)?;
        if self.port == 0 {
            return Err(invalid("port", "Invalid value: 0: must be from 1 to 65535"));
        }
        window("window", self.window)
    }
}

/// Protocols a `StreamExec` may offer, and how long one may be: they go
/// into an HTTP header on the device.
pub const MAX_STREAM_PROTOCOLS: usize = 8;
const MAX_PROTOCOL_LEN: usize = 64;

impl Validate for StreamExec {
    fn validate(&self) -> Result {
        stream_id(&self.stream_id)?;
        label("namespace", "namespace", &self.namespace)?;
        subdomain("pod", "pod name", &self.pod)?;
        label("container", "container name", &self.container)?;
        count("command", self.command.len(), MAX_EXEC_ARGS)?;
        let total = self.command.iter().map(String::len).sum();
        bytes("command", total, MAX_EXEC_COMMAND_BYTES)?;
        for arg in &self.command {
            text("command", arg, MAX_EXEC_COMMAND_BYTES)?;
        }
        if !(self.stdin || self.stdout || self.stderr) {
            return Err(invalid(
                "stdin",
                "Required value: at least one of stdin, stdout and stderr",
            ));
        }
        if self.tty && self.stderr {
            return Err(invalid(
                "stderr",
                "Invalid value: true: a TTY has no separate stderr",
            ));
        }
        if self.protocols.is_empty() {
            return Err(invalid(
                "protocols",
                "Required value: at least one protocol",
            ));
        }
        count("protocols", self.protocols.len(), MAX_STREAM_PROTOCOLS)?;
        for p in &self.protocols {
            let token = p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
            if p.is_empty() || p.len() > MAX_PROTOCOL_LEN || !token {
                return Err(invalid(
                    "protocols",
                    format!(
                        "Invalid value: a protocol is 1 to {MAX_PROTOCOL_LEN} of a-z, 0-9, '.' and '-'"
                    ),
                ));
            }
        }
        window("window", self.window)
    }
}

impl Validate for StreamData {
    fn validate(&self) -> Result {
        stream_id(&self.stream_id)?;
        bytes("data", self.data.len(), MAX_STREAM_CHUNK)
    }
}

impl Validate for StreamWindow {
    fn validate(&self) -> Result {
        stream_id(&self.stream_id)?;
        window("credit", self.credit)
    }
}

impl Validate for StreamClose {
    fn validate(&self) -> Result {
        stream_id(&self.stream_id)?;
        opt_text("error", &self.error, MAX_MESSAGE)
    }
}

impl Validate for DesiredIndex {
    fn validate(&self) -> Result {
        count("pods", self.pods.len(), MAX_INDEX_PODS)?;
        for (i, p) in self.pods.iter().enumerate() {
            label(&format!("pods[{i}].namespace"), "namespace", &p.namespace)?;
            subdomain(&format!("pods[{i}].name"), "pod name", &p.name)?;
            uid(&format!("pods[{i}].uid"), &p.uid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;
    use crate::model::*;

    fn pod() -> PodSpec {
        let mut s = samples::spec(
            "web",
            "0b9c6a3e-1f7e-4c1b-9d3a-2f7e1c9b8a70",
            1,
            RestartPolicy::Always,
        );
        s.containers.push(samples::container("main"));
        s
    }

    fn field_of(spec: &PodSpec) -> String {
        spec.validate().expect_err("refused").field
    }

    #[test]
    fn a_plain_pod_passes() {
        pod().validate().expect("valid");
    }

    /// `restartPolicy` on a container: `Always` on an init container (a
    /// native sidecar), nothing else anywhere (Kubernetes' validation).
    #[test]
    fn only_init_containers_restart_always() {
        let mut s = pod();
        let mut side = samples::container("side");
        side.restart_policy = Some(RestartPolicy::Always);
        s.init_containers.push(side);
        s.validate().expect("a sidecar is valid");
        s.init_containers[0].restart_policy = Some(RestartPolicy::OnFailure);
        assert_eq!(field_of(&s), "spec.initContainers[0].restartPolicy");
        let mut s = pod();
        s.containers[0].restart_policy = Some(RestartPolicy::Always);
        assert_eq!(field_of(&s), "spec.containers[0].restartPolicy");
    }

    /// A pod's routes: a topic filter, a bounded TTL, one of its app
    /// containers.
    #[test]
    fn a_pods_routes_name_its_containers_and_valid_filters() {
        let route = |container: Option<&str>, filter: &str, ttl_secs| crate::model::PodRoute {
            container: container.map(Into::into),
            filter: filter.into(),
            ttl_secs,
            target: crate::model::RouteTarget::Upstream,
            priority: crate::model::Priority::default(),
        };
        let mut s = pod();
        s.routes = vec![
            route(Some("main"), "a/#", 60),
            route(None, "+", 0),
            crate::model::PodRoute {
                target: crate::model::RouteTarget::Pod("actuator".into()),
                ..route(None, "cmd/#", 0)
            },
            crate::model::PodRoute {
                priority: crate::model::Priority::HIGHEST,
                ..route(None, "alarms/#", 0)
            },
        ];
        s.validate().expect("valid");
        let field = "metadata.annotations[kedge.io/routes][0]";
        for bad in [
            route(Some("other"), "a", 0),
            route(None, "a/#/b", 0),
            route(None, "a", MAX_SECONDS + 1),
            crate::model::PodRoute {
                target: crate::model::RouteTarget::Pod("Not_A_Pod".into()),
                ..route(None, "a", 0)
            },
            crate::model::PodRoute {
                priority: crate::model::Priority(10),
                ..route(None, "a", 0)
            },
            // A priority where it means nothing.
            crate::model::PodRoute {
                target: crate::model::RouteTarget::Pod("actuator".into()),
                priority: crate::model::Priority(0),
                ..route(None, "a", 0)
            },
        ] {
            let mut s = pod();
            s.routes = vec![bad.clone()];
            assert_eq!(field_of(&s), field, "{bad:?}");
        }
        let mut s = pod();
        s.routes = vec![route(None, "a", 0); MAX_POD_ROUTES + 1];
        assert_eq!(field_of(&s), "metadata.annotations[kedge.io/routes]");
    }

    /// What reaches the runtime's resolv.conf and SELinux labels is one
    /// word each, and the DNS lists keep Kubernetes' bounds.
    #[test]
    fn dns_config_and_selinux_labels_are_bounded_words() {
        let mut s = pod();
        s.dns = PodDns {
            policy: DnsPolicy::None,
            nameservers: vec!["192.0.2.1".into(), "2001:db8::1".into()],
            searches: vec!["example.com".into(), "lab.".into()],
            options: vec!["ndots:2".into(), "edns0".into()],
        };
        s.security.se_linux_options = Some(SeLinuxOptions {
            level: "s0:c1,c2".into(),
            ..Default::default()
        });
        s.validate().expect("valid");
        type Change = fn(&mut PodSpec);
        let cases: Vec<(Change, &str)> = vec![
            (
                |s| s.dns.nameservers.push("dns.example".into()),
                "spec.dnsConfig.nameservers[2]",
            ),
            (
                |s| s.dns.nameservers = vec!["192.0.2.1".into(); 4],
                "spec.dnsConfig.nameservers",
            ),
            (
                |s| s.dns.searches.push("a\nnameserver 6.6.6.6".into()),
                "spec.dnsConfig.searches[2]",
            ),
            (
                |s| s.dns.searches = vec!["a".into(); MAX_DNS_SEARCHES + 1],
                "spec.dnsConfig.searches",
            ),
            (
                |s| s.dns.searches = vec!["a".repeat(200); 11],
                "spec.dnsConfig.searches",
            ),
            (
                |s| s.dns.options.push(String::new()),
                "spec.dnsConfig.options[2]",
            ),
            (
                |s| s.dns.options.push("ndots:1 rotate".into()),
                "spec.dnsConfig.options[2]",
            ),
            (
                |s| {
                    s.security.se_linux_options = Some(SeLinuxOptions {
                        r#type: "container_t\n".into(),
                        ..Default::default()
                    })
                },
                "spec.securityContext.seLinuxOptions.type",
            ),
            (
                |s| {
                    s.containers[0].security_context = Some(SecurityContext {
                        se_linux_options: Some(SeLinuxOptions {
                            user: "u".repeat(257),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                "spec.containers[0].securityContext.seLinuxOptions.user",
            ),
        ];
        for (change, field) in cases {
            let mut bad = s.clone();
            change(&mut bad);
            assert_eq!(field_of(&bad), field);
        }
    }

    #[test]
    fn uids_that_walk_out_of_the_data_directory_are_refused() {
        for bad in ["x/../../..", "..", ".", "", "a b", "a\0b", &"x".repeat(129)] {
            let mut s = pod();
            s.uid = bad.into();
            assert_eq!(field_of(&s), "metadata.uid", "uid {bad:?}");
        }
    }

    #[test]
    fn names_follow_the_kubernetes_rules() {
        let mut s = pod();
        s.name = "../etc".into();
        assert_eq!(field_of(&s), "metadata.name");
        let mut s = pod();
        s.namespace = "a/b".into();
        assert_eq!(field_of(&s), "metadata.namespace");
        let mut s = pod();
        s.containers[0].name = "../logs".into();
        assert_eq!(field_of(&s), "spec.containers[0].name");
        let mut s = pod();
        s.volumes.push(Volume {
            name: "Data".into(),
            source: VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        });
        assert_eq!(field_of(&s), "spec.volumes[0].name");
        let mut s = pod();
        s.containers.push(samples::container("main"));
        assert_eq!(field_of(&s), "spec.containers[1].name");
        let err = {
            let mut s = pod();
            s.containers[0].name = "Main".into();
            s.validate().expect_err("refused").to_string()
        };
        assert!(
            err.starts_with("spec.containers[0].name: Invalid value: \"Main\""),
            "{err}"
        );
    }

    #[test]
    fn numbers_are_bounded() {
        let mut s = pod();
        s.termination_grace_period_secs = u64::MAX;
        assert_eq!(field_of(&s), "spec.terminationGracePeriodSeconds");
        let mut s = pod();
        s.containers[0].resources.memory_limit_bytes = Some(u64::MAX);
        assert_eq!(field_of(&s), "spec.containers[0].resources.limits.memory");
        let mut s = pod();
        s.containers[0].resources.cpu_request_millis = Some(u64::MAX);
        assert_eq!(field_of(&s), "spec.containers[0].resources.requests.cpu");
        let mut s = pod();
        s.containers[0].security_context = Some(SecurityContext {
            run_as_user: Some(-1),
            ..Default::default()
        });
        assert_eq!(field_of(&s), "spec.containers[0].securityContext.runAsUser");
        let mut s = pod();
        s.containers[0].ports.push(ContainerPort {
            name: None,
            container_port: 0,
            host_port: None,
            protocol: "TCP".into(),
        });
        assert_eq!(field_of(&s), "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn counts_are_bounded() {
        let mut s = pod();
        s.containers = (0..=MAX_CONTAINERS)
            .map(|i| samples::container(&format!("c{i}")))
            .collect();
        assert_eq!(field_of(&s), "spec.containers");
        let mut s = pod();
        s.containers.clear();
        assert_eq!(field_of(&s), "spec.containers");
    }

    #[test]
    fn paths_stay_inside_their_directory() {
        let mut s = pod();
        s.volumes.push(Volume {
            name: "cfg".into(),
            source: VolumeSource::Files {
                files: vec![("../../state.redb".into(), b"x".to_vec())],
                default_mode: 0o644,
            },
        });
        assert_eq!(field_of(&s), "spec.volumes[0].items[\"../../state.redb\"]");
        let mut s = pod();
        s.volumes.push(Volume {
            name: "cfg".into(),
            source: VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        });
        s.containers[0].volume_mounts.push(VolumeMount {
            name: "cfg".into(),
            mount_path: "/data".into(),
            read_only: false,
            sub_path: Some("../..".into()),
            propagation: MountPropagation::Private,
        });
        assert_eq!(field_of(&s), "spec.containers[0].volumeMounts[0].subPath");
        s.containers[0].volume_mounts[0].sub_path = None;
        s.containers[0].volume_mounts[0].propagation = MountPropagation::Bidirectional;
        assert_eq!(
            field_of(&s),
            "spec.containers[0].volumeMounts[0].mountPropagation"
        );
        s.containers[0].volume_mounts[0].propagation = MountPropagation::HostToContainer;
        s.containers[0].volume_mounts[0].name = "missing".into();
        assert_eq!(field_of(&s), "spec.containers[0].volumeMounts[0].name");
    }

    #[test]
    fn log_requests_are_bounded() {
        let mut r = LogRequest {
            request_id: "abc".into(),
            namespace: "default".into(),
            pod: "web".into(),
            ..Default::default()
        };
        r.validate().expect("valid");
        r.since_seconds = Some(u64::MAX);
        assert_eq!(r.validate().expect_err("refused").field, "sinceSeconds");
        r.since_seconds = None;
        r.request_id = "../x".into();
        assert_eq!(r.validate().expect_err("refused").field, "requestId");
    }

    #[test]
    fn exec_requests_are_bounded() {
        let valid = ExecRequest {
            request_id: "abc".into(),
            namespace: "default".into(),
            pod: "web.v1".into(),
            container: "app".into(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            timeout_secs: 1,
        };
        valid.validate().expect("valid");
        let refused = |change: &dyn Fn(&mut ExecRequest)| {
            let mut r = valid.clone();
            change(&mut r);
            r.validate().expect_err("refused").field
        };
        assert_eq!(refused(&|r| r.request_id = "../x".into()), "requestId");
        assert_eq!(refused(&|r| r.namespace = "Default".into()), "namespace");
        assert_eq!(refused(&|r| r.pod = "-web".into()), "pod");
        assert_eq!(refused(&|r| r.container = "a.b".into()), "container");
        assert_eq!(refused(&|r| r.command.clear()), "command");
        assert_eq!(refused(&|r| r.command[2] = "a\0b".into()), "command");
        assert_eq!(refused(&|r| r.timeout_secs = 0), "timeoutSeconds");
        assert_eq!(
            refused(&|r| r.timeout_secs = MAX_EXEC_TIMEOUT_SECS + 1),
            "timeoutSeconds"
        );
        // At the bounds: 256 arguments, 64 KiB together, an hour.
        let mut r = valid.clone();
        r.command = vec!["x".repeat(MAX_EXEC_COMMAND_BYTES / MAX_EXEC_ARGS); MAX_EXEC_ARGS];
        r.timeout_secs = MAX_EXEC_TIMEOUT_SECS;
        r.validate().expect("at the bounds");
        r.command.push(String::new());
        assert_eq!(r.validate().expect_err("257 arguments").field, "command");
        r.command.truncate(MAX_EXEC_ARGS);
        r.command[0].push('x');
        let e = r.validate().expect_err("one byte over");
        assert_eq!(e.field, "command");
        assert!(e.to_string().contains("65537 bytes"), "{e}");
    }

    #[test]
    fn exec_replies_are_bounded() {
        let mut reply = ExecReply {
            request_id: "abc".into(),
            result: Ok(ExecOutput {
                exit_code: -1,
                stdout: vec![0; MAX_EXEC_OUTPUT],
                stderr: vec![0; MAX_EXEC_OUTPUT],
                truncated: true,
            }),
        };
        reply.validate().expect("valid at the bound");
        if let Ok(out) = &mut reply.result {
            out.stderr.push(0);
        }
        assert_eq!(reply.validate().expect_err("refused").field, "stderr");
        reply.result = Err("x".repeat(MAX_MESSAGE + 1));
        assert_eq!(reply.validate().expect_err("refused").field, "error");
        reply.result = Err("no such container".into());
        reply.validate().expect("an error");
        reply.request_id = String::new();
        assert_eq!(reply.validate().expect_err("refused").field, "requestId");
    }

    #[test]
    fn stream_exec_is_bounded_and_its_protocols_are_header_safe() {
        let exec = StreamExec {
            stream_id: "0123456789abcdef0123456789abcdef".into(),
            namespace: "default".into(),
            pod: "web".into(),
            container: "main".into(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
            protocols: vec!["v4.channel.k8s.io".into(), "channel.k8s.io".into()],
            window: MAX_STREAM_WINDOW,
        };
        exec.validate().expect("valid");
        let refused = |change: &dyn Fn(&mut StreamExec)| {
            let mut e = exec.clone();
            change(&mut e);
            e.validate().expect_err("refused").field
        };
        // Attach: no command.
        let mut attach = exec.clone();
        attach.command.clear();
        attach.validate().expect("an attach");
        assert_eq!(refused(&|e| e.stream_id = "x".into()), "streamId");
        assert_eq!(refused(&|e| e.container = "Main".into()), "container");
        assert_eq!(
            refused(&|e| e.command = vec!["x".into(); MAX_EXEC_ARGS + 1]),
            "command"
        );
        assert_eq!(
            refused(&|e| {
                e.stdin = false;
                e.stdout = false;
            }),
            "stdin"
        );
        assert_eq!(refused(&|e| e.stderr = true), "stderr");
        assert_eq!(refused(&|e| e.protocols.clear()), "protocols");
        for bad in ["", "v4\r\nX-Evil: 1", "V4.channel.k8s.io", "a b"] {
            assert_eq!(
                refused(&|e| e.protocols = vec![bad.to_string()]),
                "protocols",
                "{bad:?}"
            );
        }
        assert_eq!(
            refused(&|e| e.protocols = vec!["v4".into(); MAX_STREAM_PROTOCOLS + 1]),
            "protocols"
        );
        assert_eq!(
            refused(&|e| e.protocols = vec!["a".repeat(65)]),
            "protocols"
        );
        assert_eq!(refused(&|e| e.window = MAX_STREAM_WINDOW + 1), "window");
    }

    #[test]
    fn stream_messages_are_bounded() {
        let id = "0123456789abcdef0123456789abcdef";
        let open = StreamOpen {
            stream_id: id.into(),
            namespace: "default".into(),
            pod: "web.v1".into(),
            port: 65535,
            window: MAX_STREAM_WINDOW,
        };
        open.validate().expect("valid at the bounds");
        let refused = |change: &dyn Fn(&mut StreamOpen)| {
            let mut o = open.clone();
            change(&mut o);
            o.validate().expect_err("refused").field
        };
        for bad in [
            "0123456789ABCDEF0123456789ABCDEF",
            "abc",
            "",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert_eq!(refused(&|o| o.stream_id = bad.into()), "streamId", "{bad}");
        }
        assert_eq!(refused(&|o| o.stream_id.push('0')), "streamId");
        assert_eq!(refused(&|o| o.namespace = "Default".into()), "namespace");
        assert_eq!(refused(&|o| o.pod = "-web".into()), "pod");
        assert_eq!(refused(&|o| o.port = 0), "port");
        assert_eq!(refused(&|o| o.window = MAX_STREAM_WINDOW + 1), "window");

        let mut data = StreamData {
            stream_id: id.into(),
            seq: u64::MAX,
            data: vec![7; MAX_STREAM_CHUNK],
            fin: true,
        };
        data.validate().expect("a full chunk");
        data.data.push(0);
        assert_eq!(data.validate().expect_err("refused").field, "data");
        data.data.clear();
        data.stream_id = "x".into();
        assert_eq!(data.validate().expect_err("refused").field, "streamId");

        let mut w = StreamWindow {
            stream_id: id.into(),
            credit: MAX_STREAM_WINDOW,
        };
        w.validate().expect("valid at the bound");
        w.credit += 1;
        assert_eq!(w.validate().expect_err("refused").field, "credit");

        let mut close = StreamClose {
            stream_id: id.into(),
            error: Some("x".repeat(MAX_MESSAGE)),
        };
        close.validate().expect("valid at the bound");
        close.error = Some("x".repeat(MAX_MESSAGE + 1));
        assert_eq!(close.validate().expect_err("refused").field, "error");
        close.error = None;
        close.validate().expect("a cancel");
    }

    #[test]
    fn desired_indexes_are_checked_too() {
        let mut index = DesiredIndex {
            pods: vec![IndexEntry {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u-1".into(),
                generation: 1,
            }],
        };
        index.validate().expect("valid");
        index.pods[0].uid = "../x".into();
        assert_eq!(index.validate().expect_err("refused").field, "pods[0].uid");
    }

    #[test]
    fn statuses_and_events_are_checked_too() {
        let mut st = PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            uid: String::new(),
            observed_generation: 0,
            phase: PodPhase::Failed,
            conditions: vec![],
            reason: Some("InvalidSpec".into()),
            message: Some("m".into()),
            start_time_ms: None,
            host_ip: None,
            pod_ip: None,
            init_container_statuses: vec![],
            container_statuses: vec![],
        };
        st.validate().expect("a refused pod's status has no uid");
        st.name = "a/b".into();
        assert_eq!(st.validate().expect_err("refused").field, "name");
        let ev = Event {
            namespace: Some("default".into()),
            pod: Some("web".into()),
            container: None,
            kind: EventType::Warning,
            reason: "R".repeat(200),
            message: "m".into(),
            timestamp_ms: 0,
        };
        assert_eq!(ev.validate().expect_err("refused").field, "reason");
    }
}
