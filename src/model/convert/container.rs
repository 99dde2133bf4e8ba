//! One container: image and pull policy, command, ports, resources.

use super::*;

impl Ctx<'_> {
    pub(super) fn container(
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
        if non_empty(&c.resize_policy) {
            return Err(unsupported(format!("{path}.resizePolicy")));
        }
        // A native sidecar: `restartPolicy: Always` on an init container,
        // the only value Kubernetes allows there (and nothing on an app
        // container).
        let restart_policy = match (c.restart_policy.as_deref(), init) {
            (None, _) => None,
            (Some("Always"), true) => Some(RestartPolicy::Always),
            (Some(other), true) => {
                return Err(field(
                    format!("{path}.restartPolicy"),
                    format!("unsupported value {other:?}: must be Always or unset"),
                ));
            }
            (Some(_), false) => {
                return Err(field(
                    format!("{path}.restartPolicy"),
                    "may not be set for non-init containers",
                ));
            }
        };
        let sidecar = restart_policy.is_some();
        if non_empty(&c.volume_devices) {
            return Err(unsupported(format!("{path}.volumeDevices")));
        }
        if init && !sidecar {
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
        // The message of a terminated container: a file the container writes
        // (a Wasm module has no file system of its own to write it to), or
        // the end of its log.
        let termination_message_path = match c.termination_message_path.as_deref() {
            None | Some("") => None,
            Some(p) if p == DEFAULT_TERMINATION_MESSAGE_PATH => None,
            Some(p) => {
                let tpath = format!("{path}.terminationMessagePath");
                if !p.starts_with('/') {
                    return Err(field(tpath, "must be an absolute path"));
                }
                if self.runtime == RuntimeKind::Wasm {
                    return Err(field(
                        tpath,
                        "not supported for wasm containers: a module has no file system of its own to write it to",
                    ));
                }
                Some(p.to_owned())
            }
        };
        let termination_message_fallback_to_logs = match c.termination_message_policy.as_deref() {
            None | Some("" | "File") => false,
            Some("FallbackToLogsOnError") => true,
            Some(other) => {
                return Err(field(
                    format!("{path}.terminationMessagePolicy"),
                    format!("unknown policy {other:?} (use File or FallbackToLogsOnError)"),
                ));
            }
        };

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
        let volume_mounts = volume_mounts(c, path, volume_names, &self.token_volumes)?;
        let resources = resources(c.resources.as_ref(), &format!("{path}.resources"))?;
        let probe = |p: &Option<k8s::Probe>, name: &str, kind: ProbeKind| {
            p.as_ref()
                .map(|p| self.probe(p, &format!("{path}.{name}"), &ports, kind))
                .transpose()
        };
        let liveness_probe = probe(&c.liveness_probe, "livenessProbe", ProbeKind::Liveness)?;
        let readiness_probe = probe(&c.readiness_probe, "readinessProbe", ProbeKind::Readiness)?;
        let startup_probe = probe(&c.startup_probe, "startupProbe", ProbeKind::Startup)?;
        let security_context = self.security_context(&c.name, c.security_context.as_ref(), path)?;
        let run_as_non_root = self.non_root(c.security_context.as_ref(), security_context.as_ref());
        // mountPropagation: Kubernetes' rule for Bidirectional; a Wasm
        // module has no mounts of its own to propagate into.
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let propagation = m.mount_propagation.as_deref().unwrap_or("None");
            let mpath = format!("{path}.volumeMounts[{i}].mountPropagation");
            if propagation != "None" && self.runtime == RuntimeKind::Wasm {
                return Err(field(
                    mpath,
                    "not supported for wasm containers: a module has no mounts to propagate",
                ));
            }
            if propagation == "Bidirectional"
                && !security_context.as_ref().is_some_and(|s| s.privileged)
            {
                return Err(field(
                    mpath,
                    "Bidirectional mount propagation is available only to privileged containers",
                ));
            }
        }
        let lifecycle =
            self.lifecycle(c.lifecycle.as_ref(), &format!("{path}.lifecycle"), &ports)?;
        if init && !sidecar && lifecycle != Lifecycle::default() {
            return Err(field(
                format!("{path}.lifecycle"),
                "may not be set for init containers",
            ));
        }

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
            lifecycle,
            termination_message_path,
            termination_message_fallback_to_logs,
            run_as_non_root,
            restart_policy,
        })
    }

    /// Checks an image reference for the pod's runtime; true for a Wasm module
    /// fetched from a `file://` or `https://` URL.
    pub(super) fn check_image(&self, image: &str, path: &str) -> Result<bool, ConvertError> {
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

    pub(super) fn ports(
        &self,
        c: &k8s::Container,
        path: &str,
    ) -> Result<Vec<ContainerPort>, ConvertError> {
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
}

/// Kubernetes' default pull policy: Always for `:latest` or no tag, else IfNotPresent.
pub(super) fn default_pull_policy(image: &str) -> PullPolicy {
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

/// cpu, memory and ephemeral-storage requests and limits; a request defaults
/// to its limit and may not exceed it, as in Kubernetes. The
/// ephemeral-storage limit is enforced by eviction (`agent::eviction`); its
/// request is the scheduler's (a kubelet ranks pods by it only under node
/// disk pressure, and the agent evicts for limits only). Other resources
/// (hugepages, extended resources such as GPUs) are rejected.
pub(super) fn resources(
    r: Option<&k8s::ResourceRequirements>,
    path: &str,
) -> Result<Resources, ConvertError> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    if non_empty(&r.claims) {
        return Err(unsupported(format!("{path}.claims")));
    }
    let parse = |map: &Option<BTreeMap<String, Quantity>>,
                 which: &str|
     -> Result<[Option<u64>; 3], ConvertError> {
        let mut cpu = None;
        let mut memory = None;
        let mut storage = None;
        for (name, q) in map.iter().flatten() {
            let path = format!("{path}.{which}[{name}]");
            match name.as_str() {
                "cpu" => cpu = Some(cpu_millis(&q.0).map_err(|m| field(&path, m))?),
                "memory" => memory = Some(bytes(&q.0).map_err(|m| field(&path, m))?),
                "ephemeral-storage" => {
                    storage = Some(bytes(&q.0).map_err(|m| field(&path, m))?);
                }
                other => {
                    return Err(field(
                        path,
                        format!("resource {other:?} is not available on kedge nodes"),
                    ));
                }
            }
        }
        Ok([cpu, memory, storage])
    };
    // cpu millicores, memory bytes, ephemeral-storage bytes.
    let [cpu_limit, memory_limit, storage_limit] = parse(&r.limits, "limits")?;
    let [cpu_request, memory_request, storage_request] = parse(&r.requests, "requests")?;
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
    if let (Some(request), Some(limit)) = (storage_request, storage_limit)
        && request > limit
    {
        return Err(field(
            format!("{path}.requests[ephemeral-storage]"),
            "must be less than or equal to the ephemeral-storage limit",
        ));
    }
    Ok(Resources {
        cpu_request_millis: cpu_request,
        cpu_limit_millis: cpu_limit,
        memory_request_bytes: memory_request,
        memory_limit_bytes: memory_limit,
        ephemeral_storage_limit_bytes: storage_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn termination_message_fields_convert() {
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "terminationMessagePath": "/tmp/last", "terminationMessagePolicy": "FallbackToLogsOnError"})));
        let c = &spec.containers[0];
        assert_eq!(c.termination_message_path.as_deref(), Some("/tmp/last"));
        assert!(c.termination_message_fallback_to_logs);
        // The defaults (as the apiserver fills them in) are the defaults.
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})));
        let c = &spec.containers[0];
        assert_eq!(c.termination_message_path, None);
        assert_eq!(c.termination_message_path(), "/dev/termination-log");
        assert!(!c.termination_message_fallback_to_logs);
        let mut pod = wasm(&format!("file:///m.wasm@sha256:{}", "0".repeat(64)));
        pod["spec"]["containers"][0]["terminationMessagePath"] = json!("/tmp/last");
        assert_eq!(
            convert_err(pod),
            "spec.containers[0].terminationMessagePath: not supported for wasm containers: a module has no file system of its own to write it to"
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
                    "containers": [{"name": "app", "image": file, "readinessProbe": {"tcpSocket": {"port": 80}}}]}}),
                "spec.containers[0].readinessProbe.tcpSocket.host: required for wasm containers: a module has no network address of its own to probe".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "app", "image": file, "livenessProbe": {"httpGet": {"port": 80}}}]}}),
                "spec.containers[0].livenessProbe.httpGet.host: required for wasm containers: a module has no network address of its own to probe".into(),
            ),
            (
                json!({"spec": {"runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "app", "image": file, "securityContext": {"privileged": true}}]}}),
                "spec.containers[0].securityContext.privileged: not supported for wasm containers: a module runs inside the agent and cannot be given the node's privileges".into(),
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
        // Ports without host ports (informational, as in Kubernetes), http
        // probes of an explicit host and runAsNonRoot are fine.
        let spec = convert(json!({"spec": {"runtimeClassName": "kedge-wasm",
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": file,
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"host": "192.0.2.7", "port": "http", "path": "/ready"}}}]}}));
        assert_eq!(spec.containers[0].ports[0].host_port, None);
        assert!(spec.containers[0].readiness_probe.is_some());
    }

    #[test]
    fn resources_default_requests_to_limits_and_carry_the_ephemeral_storage_limit() {
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
                ephemeral_storage_limit_bytes: Some(1 << 30),
            }
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "resources": {"limits": {"ephemeral-storage": "1Gi"}, "requests": {"ephemeral-storage": "2Gi"}}})));
        assert_eq!(
            err,
            "spec.containers[0].resources.requests[ephemeral-storage]: must be less than or equal to the ephemeral-storage limit"
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "resources": {"limits": {"hugepages-2Mi": "2Mi"}}})));
        assert_eq!(
            err,
            "spec.containers[0].resources.limits[hugepages-2Mi]: resource \"hugepages-2Mi\" is not available on kedge nodes"
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
