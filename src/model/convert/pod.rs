//! A Pod as a whole: the entry points, the pod-level fields, image pull secrets.

use super::*;

/// Places the pod on `node` as binding it does, before it is converted:
/// `spec.nodeName`, which env `fieldRef: spec.nodeName` reads, becomes the
/// node (`kedge apply --node`). A pod that names another node is refused
/// rather than run with a name that is not its node's.
pub fn bind_to_node(pod: &mut k8s::Pod, node: &str) -> Result<(), ConvertError> {
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    match spec.node_name.as_deref() {
        None | Some("") => spec.node_name = Some(node.to_owned()),
        Some(named) if named == node => {}
        Some(other) => {
            return Err(field(
                "spec.nodeName",
                format!("Invalid value: {other:?}: the pod is applied to node {node:?}"),
            ));
        }
    }
    Ok(())
}

/// Refuses a pod that names a node where one spec goes to every node a
/// selector matches (`kedge apply --selector`): env `fieldRef:
/// spec.nodeName` would read that one name on all of them.
pub fn unbound(pod: &k8s::Pod) -> Result<(), ConvertError> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => Ok(()),
        Some(named) => Err(field(
            "spec.nodeName",
            format!(
                "Invalid value: {named:?}: a fleet deployment runs on every node its selector matches (leave it unset)"
            ),
        )),
    }
}

/// Converts one Pod without cluster access (see [`NoResolver`]).
pub fn pod_spec_from_k8s(pod: &k8s::Pod) -> Result<PodSpec, ConvertError> {
    pod_spec_from_k8s_with(pod, &NoResolver)
}

/// Converts one Pod, resolving ConfigMap and Secret references with
/// `resolver`, without its warnings: for callers that only need the spec
/// (a caller that runs the pod or shows it to a user uses [`convert_pod`]).
pub fn pod_spec_from_k8s_with(
    pod: &k8s::Pod,
    resolver: &dyn Resolver,
) -> Result<PodSpec, ConvertError> {
    convert_pod(pod, resolver).map(|c| c.spec)
}

/// Converts one Pod, resolving ConfigMap and Secret references with
/// `resolver`; the warnings say what is accepted but not honoured (the
/// service account token volume Kubernetes injects, left out).
///
/// `uid` and `generation` come from `metadata.uid` and `metadata.generation`
/// when set, otherwise they are `""` and `0` and the caller fills them in (a
/// caller that makes up a uid should set `metadata.uid` first, so that a
/// `fieldRef` to `metadata.uid` resolves). The namespace defaults to `default`.
pub fn convert_pod(pod: &k8s::Pod, resolver: &dyn Resolver) -> Result<Converted, ConvertError> {
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

    let mut ctx = Ctx {
        pod,
        spec,
        namespace,
        name,
        uid: &uid,
        runtime,
        host_network,
        resolver,
        token_volumes: BTreeSet::new(),
    };
    let mut warnings: Vec<ConvertWarning> = Vec::new();

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
        if volumes::is_injected_token_volume(v) {
            // Left out, with its mounts: kedge nodes do not mount API tokens.
            ctx.token_volumes.insert(v.name.as_str());
            if !warnings
                .iter()
                .any(|w| w.reason == SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED)
            {
                warnings.push(volumes::token_warning(&path));
            }
            continue;
        }
        volumes.push(ctx.volume(v, &path)?);
    }
    let ctx = ctx;

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
    let security = pod_security(spec, runtime)?;
    let dns = pod_dns(spec, runtime)?;
    // The data routes the pod declares for itself (`model::route`).
    let routes = match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::route::ROUTES_ANNOTATION))
    {
        None => Vec::new(),
        Some(text) => crate::model::route::parse_pod_routes(text).map_err(|(i, e)| {
            field(
                format!(
                    "metadata.annotations[{}][{i}]",
                    crate::model::route::ROUTES_ANNOTATION
                ),
                e,
            )
        })?,
    };

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
        security,
        routes,
        dns,
    };
    Ok(Converted {
        spec: validate_converted(spec)?,
        warnings,
    })
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

/// Rejects the pod-level fields the agent cannot honour: `setHostnameAsFQDN`,
/// `automountServiceAccountToken: true` (no token can be mounted), `hostUsers:
/// false`, `ephemeralContainers`, `readinessGates`, `resourceClaims`,
/// `hostAliases`, `overhead`, `activeDeadlineSeconds`, a non-empty pod-level
/// `resources` (requests and limits are set per container; `{}` is accepted), a
/// `hostname` other than the pod's name, `schedulingGates`, an `os` other than
/// linux, and the security context's `sysctls` and, for a linux pod,
/// `windowsOptions`.
///
/// Accepted and ignored, because they only matter to a scheduler or the
/// cluster: affinity, tolerations, nodeSelector, schedulerName, priority,
/// priorityClassName, preemptionPolicy, topologySpreadConstraints,
/// serviceAccount(Name), enableServiceLinks, subdomain (there is no cluster DNS
/// on the edge), and status. nodeName is read by env `fieldRef` (`bind_to_node`
/// sets it where `kedge apply` places the pod). automountServiceAccountToken
/// unset or false mounts no token: the token volume Kubernetes injects when it
/// is unset is left out with a warning (`volumes::is_injected_token_volume`).
/// `hostname` is accepted when it is the pod's name (the default, and what
/// StatefulSets set). `pod_dns` takes dnsPolicy and dnsConfig.
fn check_pod_fields(spec: &k8s::PodSpec, name: &str) -> Result<(), ConvertError> {
    let flags = [(spec.set_hostname_as_fqdn, "spec.setHostnameAsFQDN")];
    for (flag, path) in flags {
        if flag == Some(true) {
            return Err(unsupported(path));
        }
    }
    if spec.automount_service_account_token == Some(true) {
        // Refused rather than run without the token the workload asked for.
        // Unset is accepted: no token is mounted, as for a ServiceAccount
        // with automountServiceAccountToken: false.
        return Err(field(
            "spec.automountServiceAccountToken",
            "service account tokens are not available on kedge nodes (set it to false or leave it unset)",
        ));
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
        (
            spec.active_deadline_seconds.is_some(),
            "spec.activeDeadlineSeconds",
        ),
        (
            spec.resources.as_ref().is_some_and(|r| {
                non_empty(&r.claims)
                    || r.limits.as_ref().is_some_and(|l| !l.is_empty())
                    || r.requests.as_ref().is_some_and(|l| !l.is_empty())
            }),
            "spec.resources",
        ),
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
    // Pod security context: `Ctx::security_context` (the defaults of every
    // container) and `pod_security` (groups, namespaces, SELinux) take what
    // is honoured; sysctls cannot be applied.
    if let Some(sc) = &spec.security_context
        && non_empty(&sc.sysctls)
    {
        return Err(unsupported("spec.securityContext.sysctls"));
    }
    windows_options(spec)
}

/// `windowsOptions` (pod and containers): the apiserver forbids them in a
/// pod whose `os.name` is linux, and a kubelet on Linux does not read them
/// (they only reach a Windows runtime). Here the same: forbidden for a linux
/// pod, ignored otherwise (a pod without `os` runs on a linux node, where
/// they mean nothing).
fn windows_options(spec: &k8s::PodSpec) -> Result<(), ConvertError> {
    if spec.os.as_ref().is_none_or(|os| os.name != "linux") {
        return Ok(());
    }
    let forbidden = |path: String| {
        field(
            format!("{path}.securityContext.windowsOptions"),
            "Forbidden: windows options cannot be set for a linux pod",
        )
    };
    if spec
        .security_context
        .as_ref()
        .is_some_and(|sc| sc.windows_options.is_some())
    {
        return Err(forbidden("spec".into()));
    }
    let lists = [
        ("spec.initContainers", spec.init_containers.as_deref()),
        ("spec.containers", Some(spec.containers.as_slice())),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.unwrap_or_default().iter().enumerate() {
            if c.security_context
                .as_ref()
                .is_some_and(|sc| sc.windows_options.is_some())
            {
                return Err(forbidden(format!("{list}[{i}]")));
            }
        }
    }
    Ok(())
}

/// `hostPID`, `hostIPC`, `shareProcessNamespace`, `fsGroup`,
/// `supplementalGroups` and the sandbox's `seLinuxOptions`: container pods
/// only (a Wasm module has no process of its own). `fsGroupChangePolicy` is
/// either value: the agent makes the volumes it owns, so both come to the
/// same; `supplementalGroupsPolicy: Strict` needs a runtime newer than the
/// nodes' containerd. `seLinuxChangePolicy` is either value: `MountOption`
/// labels only CSI, iSCSI and Fibre Channel volumes by a mount option and
/// relabels every other volume recursively, as `Recursive` does, and a kedge
/// pod has only other volumes.
fn pod_security(spec: &k8s::PodSpec, runtime: RuntimeKind) -> Result<PodSecurity, ConvertError> {
    let sc = spec.security_context.as_ref();
    let security = PodSecurity {
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        share_process_namespace: spec.share_process_namespace == Some(true),
        fs_group: sc.and_then(|sc| sc.fs_group),
        supplemental_groups: sc
            .and_then(|sc| sc.supplemental_groups.clone())
            .unwrap_or_default(),
        se_linux_options: sc
            .and_then(|sc| sc.se_linux_options.as_ref())
            .map(security::se_linux_options),
    };
    let policies: [(_, &str, &[&str]); 3] = [
        (
            sc.and_then(|sc| sc.fs_group_change_policy.as_deref()),
            "fsGroupChangePolicy",
            &["OnRootMismatch", "Always"],
        ),
        (
            sc.and_then(|sc| sc.supplemental_groups_policy.as_deref()),
            "supplementalGroupsPolicy",
            &["Merge", "Strict"],
        ),
        (
            sc.and_then(|sc| sc.se_linux_change_policy.as_deref()),
            "seLinuxChangePolicy",
            &["MountOption", "Recursive"],
        ),
    ];
    for (value, name, supported) in policies {
        if let Some(value) = value
            && !supported.contains(&value)
        {
            let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
            return Err(field(
                format!("spec.securityContext.{name}"),
                format!(
                    "Unsupported value: {value:?}: supported values: {}",
                    supported.join(", ")
                ),
            ));
        }
    }
    if sc.and_then(|sc| sc.supplemental_groups_policy.as_deref()) == Some("Strict") {
        return Err(field(
            "spec.securityContext.supplementalGroupsPolicy",
            "Strict is not supported on kedge nodes (their container runtime merges the image's groups)",
        ));
    }
    if runtime == RuntimeKind::Wasm {
        const NO_PROCESS: &str = "a module has no process of its own";
        let set = [
            (security.host_pid, "spec.hostPID", NO_PROCESS),
            (security.host_ipc, "spec.hostIPC", NO_PROCESS),
            (
                security.share_process_namespace,
                "spec.shareProcessNamespace",
                NO_PROCESS,
            ),
            (
                security.fs_group.is_some(),
                "spec.securityContext.fsGroup",
                NO_PROCESS,
            ),
            (
                !security.supplemental_groups.is_empty(),
                "spec.securityContext.supplementalGroups",
                NO_PROCESS,
            ),
            (
                sc.is_some_and(|sc| sc.run_as_user.is_some()),
                "spec.securityContext.runAsUser",
                security::WASM_USER,
            ),
            (
                sc.is_some_and(|sc| sc.run_as_group.is_some()),
                "spec.securityContext.runAsGroup",
                security::WASM_GROUP,
            ),
            (
                security.se_linux_options.is_some(),
                "spec.securityContext.seLinuxOptions",
                security::WASM_SELINUX,
            ),
        ];
        if let Some((_, path, why)) = set.iter().find(|(on, _, _)| *on) {
            return Err(field(*path, format!("not supported for wasm pods: {why}")));
        }
    }
    if security.host_pid && security.share_process_namespace {
        return Err(field(
            "spec.shareProcessNamespace",
            "ShareProcessNamespace and HostPID cannot both be enabled",
        ));
    }
    Ok(security)
}

/// `dnsPolicy` and `dnsConfig`, checked as the apiserver checks them (with
/// its relaxed search domains: `.` and `_` allowed); the agent makes the
/// sandbox's resolver configuration from them and the node's, as the
/// kubelet does (`runtime::cri::dns`). A Wasm module has no network: its
/// `dnsPolicy` changes nothing, and a `dnsConfig` is refused.
fn pod_dns(spec: &k8s::PodSpec, runtime: RuntimeKind) -> Result<PodDns, ConvertError> {
    use crate::model::validate::{MAX_DNS_NAMESERVERS, MAX_DNS_SEARCH_CHARS, MAX_DNS_SEARCHES};
    let policy = match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst") => DnsPolicy::ClusterFirst,
        Some("ClusterFirstWithHostNet") => DnsPolicy::ClusterFirstWithHostNet,
        Some("Default") => DnsPolicy::Default,
        Some("None") => DnsPolicy::None,
        Some(other) => {
            return Err(field(
                "spec.dnsPolicy",
                format!(
                    "Unsupported value: {other:?}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""
                ),
            ));
        }
    };
    let Some(config) = &spec.dns_config else {
        if policy == DnsPolicy::None {
            return Err(field(
                "spec.dnsConfig",
                "Required value: must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        }
        return Ok(match runtime {
            RuntimeKind::Container => PodDns {
                policy,
                ..PodDns::default()
            },
            RuntimeKind::Wasm => PodDns::default(),
        });
    };
    if runtime == RuntimeKind::Wasm {
        return Err(field(
            "spec.dnsConfig",
            "not supported for wasm pods: a module has no network",
        ));
    }
    let nameservers = config.nameservers.clone().unwrap_or_default();
    let path = "spec.dnsConfig.nameservers";
    if policy == DnsPolicy::None && nameservers.is_empty() {
        return Err(field(
            path,
            "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
    }
    if nameservers.len() > MAX_DNS_NAMESERVERS {
        return Err(field(
            path,
            format!("Invalid value: must not have more than {MAX_DNS_NAMESERVERS} nameservers"),
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(field(
                format!("{path}[{i}]"),
                format!(
                    "Invalid value: {ns:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                ),
            ));
        }
    }
    let searches = config.searches.clone().unwrap_or_default();
    let path = "spec.dnsConfig.searches";
    if searches.len() > MAX_DNS_SEARCHES {
        return Err(field(
            path,
            format!("Invalid value: must not have more than {MAX_DNS_SEARCHES} search paths"),
        ));
    }
    if searches.join(" ").len() > MAX_DNS_SEARCH_CHARS {
        return Err(field(
            path,
            format!(
                "Invalid value: must not have more than {MAX_DNS_SEARCH_CHARS} characters (including spaces) in the search list"
            ),
        ));
    }
    for (i, search) in searches.iter().enumerate() {
        if search != "." && !is_search_domain(search.strip_suffix('.').unwrap_or(search)) {
            return Err(field(
                format!("{path}[{i}]"),
                format!(
                    "Invalid value: {search:?}: a search domain must consist of lowercase letters, digits, '-', '_' and '.' only, starting and ending with a letter, digit or '_', at most 253 characters"
                ),
            ));
        }
    }
    let mut options = Vec::new();
    for (i, o) in config.options.iter().flatten().enumerate() {
        let name = o.name.as_deref().unwrap_or_default();
        if name.is_empty() {
            return Err(field(
                format!("spec.dnsConfig.options[{i}]"),
                "Required value: must not be empty",
            ));
        }
        // resolv.conf's form, as the kubelet writes it.
        options.push(match o.value.as_deref() {
            Some(value) if !value.is_empty() => format!("{name}:{value}"),
            _ => name.to_owned(),
        });
    }
    Ok(PodDns {
        policy,
        nameservers,
        searches,
        options,
    })
}

/// A DNS subdomain that may hold `_` (Kubernetes' relaxed rule for search
/// domains).
fn is_search_domain(s: &str) -> bool {
    let label = |l: &str| {
        let inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        !l.is_empty()
            && l.bytes().all(|b| inner(b) || b == b'-')
            && l.bytes().next().is_some_and(inner)
            && l.bytes().last().is_some_and(inner)
    };
    s.len() <= 253 && s.split('.').all(label)
}

impl Ctx<'_> {
    pub(super) fn image_pull_secrets(&self) -> Result<Vec<String>, ConvertError> {
        let mut out = Vec::new();
        for (i, reference) in self.spec.image_pull_secrets.iter().flatten().enumerate() {
            let path = format!("spec.imagePullSecrets[{i}].name");
            if reference.name.is_empty() {
                return Err(field(path, "required"));
            }
            // Like the kubelet, a missing pull secret is skipped (the image
            // may be public), unless the resolver sees only what it was given.
            let Some(data) = self.resolver.secret(self.namespace, &reference.name) else {
                if !self.resolver.can_resolve() {
                    return Err(field(
                        path,
                        format!(
                            "secret {:?} {}",
                            reference.name,
                            self.resolver.missing_words()
                        ),
                    ));
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn process_namespaces_and_groups_reach_the_spec_for_container_pods_only() {
        let spec = convert(json!({"spec": {
            "hostPID": true,
            "hostIPC": true,
            "securityContext": {
                "fsGroup": 2000,
                "supplementalGroups": [3000, 3001],
                "fsGroupChangePolicy": "OnRootMismatch",
                "supplementalGroupsPolicy": "Merge",
            },
        }}));
        assert_eq!(
            spec.security,
            PodSecurity {
                host_pid: true,
                host_ipc: true,
                share_process_namespace: false,
                fs_group: Some(2000),
                supplemental_groups: vec![3000, 3001],
                se_linux_options: None,
            }
        );
        let shared = convert(json!({"spec": {"shareProcessNamespace": true}}));
        assert!(shared.security.share_process_namespace);
        assert_eq!(convert(json!({})).security, PodSecurity::default());

        let module = format!("file:///m.wasm@sha256:{DIGEST}");
        for (patch, path) in [
            (json!({"spec": {"hostPID": true}}), "spec.hostPID"),
            (json!({"spec": {"hostIPC": true}}), "spec.hostIPC"),
            (
                json!({"spec": {"shareProcessNamespace": true}}),
                "spec.shareProcessNamespace",
            ),
            (
                json!({"spec": {"securityContext": {"fsGroup": 1}}}),
                "spec.securityContext.fsGroup",
            ),
            (
                json!({"spec": {"securityContext": {"supplementalGroups": [1]}}}),
                "spec.securityContext.supplementalGroups",
            ),
        ] {
            let mut pod = wasm(&module);
            merge(&mut pod, patch);
            assert_eq!(
                convert_err(pod),
                format!("{path}: not supported for wasm pods: a module has no process of its own")
            );
        }
        assert_eq!(
            convert_err(json!({"spec": {"securityContext": {"fsGroup": -1}}})),
            "spec.securityContext.fsGroup: Invalid value: -1: must be between 0 and 4294967295, inclusive"
        );
    }

    /// `resources: {}` at the pod level asks for nothing: accepted. Any
    /// request or limit is refused (set them per container).
    #[test]
    fn empty_pod_level_resources_are_accepted() {
        let plain = convert(json!({}));
        for empty in [json!({}), json!({"limits": {}, "requests": {}})] {
            assert_eq!(convert(json!({"spec": {"resources": empty}})), plain);
        }
        assert_eq!(
            convert_err(json!({"spec": {"resources": {"requests": {"memory": "64Mi"}}}})),
            "spec.resources: not supported on kedge nodes"
        );
    }

    /// `windowsOptions`: forbidden in a linux pod, as the apiserver forbids
    /// them; ignored in a pod without `os`, as a kubelet on Linux ignores
    /// them.
    #[test]
    fn windows_options_are_forbidden_in_linux_pods_and_ignored_otherwise() {
        let options = json!({"windowsOptions": {"runAsUserName": "ContainerUser"}});
        let pod_level = json!({"spec": {"securityContext": options.clone()}});
        let container_level = json!({"spec": {"containers": [
            {"name": "app", "image": "nginx:1.25", "securityContext": options.clone()}
        ]}});
        let init_level = json!({"spec": {"initContainers": [
            {"name": "init", "image": "busybox:1", "securityContext": options}
        ]}});
        let plain = convert(json!({}));
        assert_eq!(convert(pod_level.clone()), plain);
        let c = convert(container_level.clone());
        assert_eq!(
            c.containers[0].security_context.clone().unwrap_or_default(),
            SecurityContext::default()
        );
        convert(init_level.clone());
        let linux = |mut pod: Value| {
            merge(&mut pod, json!({"spec": {"os": {"name": "linux"}}}));
            convert_err(pod)
        };
        assert_eq!(
            linux(pod_level),
            "spec.securityContext.windowsOptions: Forbidden: windows options cannot be set for a linux pod"
        );
        assert_eq!(
            linux(container_level),
            "spec.containers[0].securityContext.windowsOptions: Forbidden: windows options cannot be set for a linux pod"
        );
        assert_eq!(
            linux(init_level),
            "spec.initContainers[0].securityContext.windowsOptions: Forbidden: windows options cannot be set for a linux pod"
        );
    }

    /// `dnsPolicy` and `dnsConfig` travel with the spec, checked as the
    /// apiserver checks them; the agent makes the resolver configuration.
    #[test]
    fn dns_policy_and_config_are_carried_and_checked() {
        assert_eq!(convert(json!({})).dns, PodDns::default());
        let spec = convert(json!({"spec": {
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["192.0.2.53", "2001:db8::53"],
                "searches": ["factory.example", "lab.", "_srv.example", "."],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": "rotate", "value": ""}]
            }
        }}));
        assert_eq!(
            spec.dns,
            PodDns {
                policy: DnsPolicy::None,
                nameservers: vec!["192.0.2.53".into(), "2001:db8::53".into()],
                searches: vec![
                    "factory.example".into(),
                    "lab.".into(),
                    "_srv.example".into(),
                    ".".into()
                ],
                options: vec!["ndots:2".into(), "edns0".into(), "rotate".into()],
            }
        );
        for (policy, want) in [
            ("ClusterFirst", DnsPolicy::ClusterFirst),
            (
                "ClusterFirstWithHostNet",
                DnsPolicy::ClusterFirstWithHostNet,
            ),
            ("Default", DnsPolicy::Default),
        ] {
            let spec = convert(json!({"spec": {"dnsPolicy": policy}}));
            assert_eq!(spec.dns.policy, want, "{policy}");
        }
        let many = vec!["a.example"; 33];
        let long = vec!["a".repeat(250); 9];
        let cases = [
            (
                json!({"spec": {"dnsPolicy": "Sometimes"}}),
                "spec.dnsPolicy: Unsupported value: \"Sometimes\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
            ),
            (
                json!({"spec": {"dnsPolicy": "None"}}),
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None",
            ),
            (
                json!({"spec": {"dnsPolicy": "None", "dnsConfig": {"searches": ["a.example"]}}}),
                "spec.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
            ),
            (
                json!({"spec": {"dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]}}}),
                "spec.dnsConfig.nameservers: Invalid value: must not have more than 3 nameservers",
            ),
            (
                json!({"spec": {"dnsConfig": {"searches": many}}}),
                "spec.dnsConfig.searches: Invalid value: must not have more than 32 search paths",
            ),
            (
                json!({"spec": {"dnsConfig": {"searches": long}}}),
                "spec.dnsConfig.searches: Invalid value: must not have more than 2048 characters (including spaces) in the search list",
            ),
            (
                json!({"spec": {"dnsConfig": {"searches": ["Example.com"]}}}),
                "spec.dnsConfig.searches[0]: Invalid value: \"Example.com\": a search domain must consist of lowercase letters, digits, '-', '_' and '.' only, starting and ending with a letter, digit or '_', at most 253 characters",
            ),
            (
                json!({"spec": {"dnsConfig": {"options": [{"value": "2"}]}}}),
                "spec.dnsConfig.options[0]: Required value: must not be empty",
            ),
            (
                json!({"spec": {"dnsConfig": {"options": [{"name": "ndots 1"}]}}}),
                "spec.dnsConfig.options[0]: Invalid value: \"ndots 1\": must not contain spaces or control characters",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }

        // Wasm: the policy changes nothing; a dnsConfig is refused.
        let module = format!("file:///m.wasm@sha256:{DIGEST}");
        let mut pod = wasm(&module);
        merge(&mut pod, json!({"spec": {"dnsPolicy": "Default"}}));
        assert_eq!(convert(pod).dns, PodDns::default());
        let mut pod = wasm(&module);
        merge(
            &mut pod,
            json!({"spec": {"dnsConfig": {"nameservers": ["192.0.2.53"]}}}),
        );
        assert_eq!(
            convert_err(pod),
            "spec.dnsConfig: not supported for wasm pods: a module has no network"
        );
    }

    /// `seLinuxChangePolicy`: both values come to the same on a kedge node
    /// (no volume it has is labelled by a mount option).
    #[test]
    fn se_linux_change_policy_takes_either_value() {
        let plain = convert(json!({}));
        for policy in ["Recursive", "MountOption"] {
            let spec =
                convert(json!({"spec": {"securityContext": {"seLinuxChangePolicy": policy}}}));
            assert_eq!(spec, plain, "{policy}");
        }
        assert_eq!(
            convert_err(json!({"spec": {"securityContext": {"seLinuxChangePolicy": "Never"}}})),
            "spec.securityContext.seLinuxChangePolicy: Unsupported value: \"Never\": supported values: \"MountOption\", \"Recursive\""
        );
    }

    /// A pod applied to a node names it in `spec.nodeName`, which env
    /// `fieldRef: spec.nodeName` reads; a pod that names another node is
    /// refused.
    #[test]
    fn a_pod_bound_to_a_node_reads_its_name() {
        let node_env = json!({"spec": {"containers": [{"name": "app", "image": "nginx:1.25",
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]}});
        let env_of = |pod: &k8s::Pod| {
            pod_spec_from_k8s(pod).expect("converts").containers[0].env[0]
                .value
                .clone()
        };
        let mut pod = k8s_pod(node_env.clone());
        bind_to_node(&mut pod, "gw1").expect("binds");
        assert_eq!(env_of(&pod), "gw1");
        let mut named = node_env.clone();
        merge(&mut named, json!({"spec": {"nodeName": "gw1"}}));
        let mut pod = k8s_pod(named.clone());
        bind_to_node(&mut pod, "gw1").expect("the same node");
        assert_eq!(env_of(&pod), "gw1");
        let mut pod = k8s_pod(named);
        assert_eq!(
            bind_to_node(&mut pod, "gw2")
                .expect_err("another node")
                .to_string(),
            "spec.nodeName: Invalid value: \"gw1\": the pod is applied to node \"gw2\""
        );
        // A fleet's one spec names no node.
        assert_eq!(unbound(&k8s_pod(node_env)), Ok(()));
        assert_eq!(
            unbound(&pod).expect_err("named").to_string(),
            "spec.nodeName: Invalid value: \"gw1\": a fleet deployment runs on every node its selector matches (leave it unset)"
        );
    }

    #[test]
    fn grpc_probes_convert_for_container_pods() {
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "readinessProbe": {"grpc": {"port": 9000, "service": "ready"}},
            "livenessProbe": {"grpc": {"port": 9000}}})));
        let c = &spec.containers[0];
        assert_eq!(
            c.readiness_probe.as_ref().map(|p| &p.handler),
            Some(&ProbeHandler::Grpc {
                port: 9000,
                service: "ready".into()
            })
        );
        assert_eq!(
            c.liveness_probe.as_ref().map(|p| &p.handler),
            Some(&ProbeHandler::Grpc {
                port: 9000,
                service: String::new()
            })
        );
        let mut pod = wasm(&format!("file:///m.wasm@sha256:{DIGEST}"));
        pod["spec"]["containers"][0]["readinessProbe"] = json!({"grpc": {"port": 9000}});
        assert_eq!(
            convert_err(pod),
            "spec.containers[0].readinessProbe.grpc: grpc probes are not supported for wasm containers: a module has no network address of its own to probe"
        );
    }

    #[test]
    fn run_as_non_root_without_a_user_is_left_to_the_agent() {
        let spec = convert(with_container(
            json!({"name": "app", "image": "nginx", "securityContext": {"runAsNonRoot": true}}),
        ));
        assert!(
            spec.containers[0].run_as_non_root,
            "the agent checks the image's user"
        );
        let pod_level = convert(json!({"spec": {"securityContext": {"runAsNonRoot": true}}}));
        assert!(pod_level.containers[0].run_as_non_root);
        let with_user = convert(
            json!({"spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000}}}),
        );
        assert!(!with_user.containers[0].run_as_non_root, "checked here");
        let overridden = convert(json!({"spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": "nginx", "securityContext": {"runAsNonRoot": false}}],
        }}));
        assert!(!overridden.containers[0].run_as_non_root);
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

        // Asking for a token that cannot be given is refused; unset and
        // false mount none.
        assert_eq!(
            convert_err(json!({"spec": {"automountServiceAccountToken": true}})),
            "spec.automountServiceAccountToken: service account tokens are not available on kedge nodes (set it to false or leave it unset)"
        );
        convert(json!({"spec": {"automountServiceAccountToken": false}}));
    }

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

    /// The example pods under edge-manifests/ convert as they are.
    #[test]
    fn the_example_manifests_convert() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests");
        let text = std::fs::read_to_string(dir.join("data-sensor.yaml")).expect("readable");
        let pods = parse_pod_manifests(&text).expect("parses");
        let spec = pod_spec_from_k8s(&pods[0]).expect("converts");
        assert_eq!(spec.routes.len(), 1, "its route travels with it");
        assert_eq!(spec.routes[0].filter, "sensors/#");
        // The Wasm component's, which publishes through kedge:data/publish.
        let text = std::fs::read_to_string(dir.join("data-sensor-wasm.yaml")).expect("readable");
        let pods = parse_pod_manifests(&text).expect("parses");
        let spec = pod_spec_from_k8s(&pods[0]).expect("converts");
        assert_eq!(spec.routes.len(), 1, "its route travels with it");
        assert_eq!(spec.routes[0].container.as_deref(), Some("main"));
        assert_eq!(spec.runtime, RuntimeKind::Wasm);
    }

    /// The routes a pod declares in `kedge.io/routes` travel with its spec;
    /// a wrong one is refused with its index in the annotation.
    #[test]
    fn a_pods_routes_come_from_its_annotation() {
        let spec = convert(json!({"metadata": {"annotations": {
            "kedge.io/routes": "FROM app readings/# INTO $upstream TTL 2h\nFROM * alarms INTO $upstream"
        }}}));
        assert_eq!(spec.routes.len(), 2);
        assert_eq!(spec.routes[0].container.as_deref(), Some("app"));
        assert_eq!(spec.routes[0].ttl_secs, 7200);
        assert_eq!(spec.routes[1].container, None);
        // Into another pod of its namespace (module-to-module).
        let spec = convert(json!({"metadata": {"annotations": {
            "kedge.io/routes": "FROM app cmd/# INTO pod/actuator"
        }}}));
        assert_eq!(
            spec.routes[0].target,
            crate::model::RouteTarget::Pod("actuator".into())
        );
        assert!(
            convert_err(json!({"metadata": {"annotations": {
                "kedge.io/routes": "FROM app # INTO pod/other-ns/actuator"
            }}}))
            .starts_with("metadata.annotations[kedge.io/routes][0]: target pod/other-ns/actuator"),
        );
        assert_eq!(
            convert_err(json!({"metadata": {"annotations": {
                "kedge.io/routes": "FROM app # INTO $upstream; FROM app # INTO $elsewhere"
            }}})),
            "metadata.annotations[kedge.io/routes][1]: unsupported target \"$elsewhere\": expected $upstream or pod/<name>"
        );
        // A priority, upstream only.
        let spec = convert(json!({"metadata": {"annotations": {
            "kedge.io/routes": "FROM * alarms/# INTO $upstream PRIORITY 0"
        }}}));
        assert_eq!(spec.routes[0].priority, crate::model::Priority::HIGHEST);
        assert_eq!(
            convert_err(json!({"metadata": {"annotations": {
                "kedge.io/routes": "FROM * a INTO $upstream; FROM * b INTO $upstream PRIORITY 12"
            }}})),
            "metadata.annotations[kedge.io/routes][1]: PRIORITY \"12\": expected 0 (the highest) to 9 (the lowest)"
        );
        assert!(
            convert_err(json!({"metadata": {"annotations": {
                "kedge.io/routes": "FROM app cmd/# INTO pod/actuator PRIORITY 1"
            }}}))
            .starts_with("metadata.annotations[kedge.io/routes][0]: PRIORITY applies to routes INTO $upstream only"),
        );
        let err = convert_err(json!({"metadata": {"annotations": {
            "kedge.io/routes": "FROM sidecar # INTO $upstream"
        }}}));
        assert!(
            err.starts_with("metadata.annotations[kedge.io/routes][0]: Invalid value: \"sidecar\""),
            "{err}"
        );
        assert!(convert(json!({})).routes.is_empty());
    }

    /// A native sidecar (`restartPolicy: Always` on an init container)
    /// keeps its probes and hooks, which a plain init container may not have.
    #[test]
    fn native_sidecars_convert_with_their_probes_and_hooks() {
        let spec = convert(json!({"spec": {"initContainers": [
            {"name": "setup", "image": "busybox:1"},
            {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
             "startupProbe": {"tcpSocket": {"port": 9901}},
             "readinessProbe": {"httpGet": {"path": "/ready", "port": 9901}},
             "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}
        ]}}));
        let [setup, proxy] = &spec.init_containers[..] else {
            panic!("two init containers");
        };
        assert!(!setup.is_sidecar());
        assert!(proxy.is_sidecar());
        assert!(proxy.startup_probe.is_some() && proxy.readiness_probe.is_some());
        assert_eq!(proxy.lifecycle.pre_stop, Some(Hook::Sleep { seconds: 1 }));
        assert_eq!(spec.containers[0].restart_policy, None);
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
            [EnvVar::new("A", "2"), EnvVar::new("B", String::new()),]
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
            "subdomain": "edge"
        }, "status": {"phase": "Running"}}));
        assert_eq!(spec, convert(json!({})));
    }

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
                    json!({"lifecycle": {"preStop": {"tcpSocket": {"port": 80}}}}),
                )),
                "spec.containers[0].lifecycle.preStop.tcpSocket: tcpSocket is deprecated as a lifecycle hook handler and not supported: use exec, httpGet or sleep",
            ),
            (
                with_container(app(json!({"lifecycle": {"postStart": {}}}))),
                "spec.containers[0].lifecycle.postStart: must specify a handler type (exec, httpGet or sleep)",
            ),
            (
                with_container(app(json!({"lifecycle": {"postStart": {
                    "exec": {"command": ["x"]}, "sleep": {"seconds": 1}}}}))),
                "spec.containers[0].lifecycle.postStart: may not specify more than 1 handler type",
            ),
            (
                with_container(app(
                    json!({"lifecycle": {"preStop": {"sleep": {"seconds": -1}}}}),
                )),
                "spec.containers[0].lifecycle.preStop.sleep.seconds: must not be negative",
            ),
            (
                with_container(app(
                    json!({"lifecycle": {"preStop": {"exec": {"command": []}}}}),
                )),
                "spec.containers[0].lifecycle.preStop.exec.command: required",
            ),
            (
                with_container(app(json!({"lifecycle": {"stopSignal": "SIGUSR1"}}))),
                "spec.containers[0].lifecycle.stopSignal: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "i0", "image": "busybox:1",
                    "lifecycle": {"postStart": {"sleep": {"seconds": 1}}}}]}}),
                "spec.initContainers[0].lifecycle: may not be set for init containers",
            ),
            (
                with_container(app(json!({"terminationMessagePath": "relative/log"}))),
                "spec.containers[0].terminationMessagePath: must be an absolute path",
            ),
            (
                with_container(app(json!({"terminationMessagePolicy": "Sometimes"}))),
                "spec.containers[0].terminationMessagePolicy: unknown policy \"Sometimes\" (use File or FallbackToLogsOnError)",
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
                    {"name": "side", "image": "busybox:1", "restartPolicy": "OnFailure"}
                ]}}),
                "spec.initContainers[0].restartPolicy: unsupported value \"OnFailure\": must be Always or unset",
            ),
            (
                with_container(app(json!({"restartPolicy": "Always"}))),
                "spec.containers[0].restartPolicy: may not be set for non-init containers",
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
                json!({"spec": {"hostPID": true, "shareProcessNamespace": true}}),
                "spec.shareProcessNamespace: ShareProcessNamespace and HostPID cannot both be enabled",
            ),
            (
                json!({"spec": {"securityContext": {"fsGroupChangePolicy": "Sometimes"}}}),
                "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"OnRootMismatch\", \"Always\"",
            ),
            (
                json!({"spec": {"securityContext": {"supplementalGroupsPolicy": "Strict"}}}),
                "spec.securityContext.supplementalGroupsPolicy: Strict is not supported on kedge nodes (their container runtime merges the image's groups)",
            ),
            (
                json!({"spec": {"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}}}),
                "spec.securityContext.sysctls: not supported on kedge nodes",
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
                json!({"spec": {"dnsConfig": {"nameservers": ["dns.example"]}}}),
                "spec.dnsConfig.nameservers[0]: Invalid value: \"dns.example\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
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
                "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource: container \"app\" has no cpu limit: a kubelet would use the node's allocatable cpu, which is not known before the pod reaches the node (set resources.limits.cpu)",
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
                json!({"spec": {"volumes": [{"name": "data", "nfs": {"server": "nas", "path": "/x"}}]}}),
                "spec.volumes[0].nfs: volume type not supported on kedge nodes (use emptyDir, hostPath, configMap, secret, downwardAPI, projected or persistentVolumeClaim)",
            ),
            (
                json!({"spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "Data_1"}}]}}),
                "spec.volumes[0].persistentVolumeClaim.claimName: Invalid value: \"Data_1\": a claim name must consist of lowercase letters, digits, '-' and '.' only, starting and ending with a letter or digit, at most 253 characters",
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
                with_container(app(json!({"livenessProbe": {"grpc": {"port": 0}}}))),
                "spec.containers[0].livenessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive",
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
}
