//! Liveness, readiness and startup probes.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl Ctx<'_> {
    pub(super) fn probe(
        &self,
        p: &k8s::Probe,
        path: &str,
        ports: &[ContainerPort],
        kind: ProbeKind,
    ) -> Result<Probe, ConvertError> {
        if p.termination_grace_period_seconds.is_some() {
            return Err(unsupported(format!("{path}.terminationGracePeriodSeconds")));
        }
        let count = [
            p.exec.is_some(),
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
            p.grpc.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if count == 0 {
            return Err(field(
                path,
                "must specify a handler type (exec, httpGet, tcpSocket or grpc)",
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
            http_get(http, &format!("{path}.httpGet"), ports)?
        } else if let Some(tcp) = &p.tcp_socket {
            let path = format!("{path}.tcpSocket");
            ProbeHandler::TcpSocket {
                port: probe_port(&tcp.port, ports, &format!("{path}.port"))?,
                host: tcp.host.clone().filter(|h| !h.is_empty()),
            }
        } else if let Some(grpc) = &p.grpc {
            let path = format!("{path}.grpc");
            if self.runtime == RuntimeKind::Wasm {
                return Err(field(
                    path,
                    "grpc probes are not supported for wasm containers: a module has no network address of its own to probe",
                ));
            }
            let port = u16::try_from(grpc.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    field(
                        format!("{path}.port"),
                        format!(
                            "Invalid value: {}: must be between 1 and 65535, inclusive",
                            grpc.port
                        ),
                    )
                })?;
            ProbeHandler::Grpc {
                port,
                service: grpc.service.clone().unwrap_or_default(),
            }
        } else {
            return Err(field(
                path,
                "must specify a handler type (exec, httpGet, tcpSocket or grpc)",
            ));
        };
        // A Wasm module has no network of its own (WASI sockets are not
        // granted): a network probe without a host would dial nothing and
        // fail for ever, so it is refused here rather than accepted.
        if self.runtime == RuntimeKind::Wasm {
            let (handler_name, host) = match &handler {
                ProbeHandler::HttpGet { host, .. } => ("httpGet", host),
                ProbeHandler::TcpSocket { host, .. } => ("tcpSocket", host),
                ProbeHandler::Exec { .. } | ProbeHandler::Grpc { .. } => ("exec", &None),
            };
            if host.is_none() && !matches!(handler, ProbeHandler::Exec { .. }) {
                return Err(field(
                    format!("{path}.{handler_name}.host"),
                    "required for wasm containers: a module has no network address of its own to probe",
                ));
            }
        }
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
}

/// An `httpGet` action, of a probe or a lifecycle hook.
fn http_get(
    http: &k8s::HTTPGetAction,
    path: &str,
    ports: &[ContainerPort],
) -> Result<ProbeHandler, ConvertError> {
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
    Ok(ProbeHandler::HttpGet {
        path: http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into()),
        port: probe_port(&http.port, ports, &format!("{path}.port"))?,
        host: http.host.clone().filter(|h| !h.is_empty()),
        https,
        headers,
    })
}

impl Ctx<'_> {
    /// `lifecycle`: postStart and preStop hooks (exec, httpGet, sleep; the
    /// deprecated tcpSocket is refused).
    pub(super) fn lifecycle(
        &self,
        l: Option<&k8s::Lifecycle>,
        path: &str,
        ports: &[ContainerPort],
    ) -> Result<Lifecycle, ConvertError> {
        let Some(l) = l else {
            return Ok(Lifecycle::default());
        };
        if l.stop_signal.is_some() {
            return Err(unsupported(format!("{path}.stopSignal")));
        }
        let hook = |h: &Option<k8s::LifecycleHandler>, name: &str| {
            h.as_ref()
                .map(|h| self.hook(h, &format!("{path}.{name}"), ports))
                .transpose()
        };
        Ok(Lifecycle {
            post_start: hook(&l.post_start, "postStart")?,
            pre_stop: hook(&l.pre_stop, "preStop")?,
        })
    }

    fn hook(
        &self,
        h: &k8s::LifecycleHandler,
        path: &str,
        ports: &[ContainerPort],
    ) -> Result<Hook, ConvertError> {
        if h.tcp_socket.is_some() {
            return Err(field(
                format!("{path}.tcpSocket"),
                "tcpSocket is deprecated as a lifecycle hook handler and not supported: use exec, httpGet or sleep",
            ));
        }
        let count = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()]
            .iter()
            .filter(|s| **s)
            .count();
        if count == 0 {
            return Err(field(
                path,
                "must specify a handler type (exec, httpGet or sleep)",
            ));
        }
        if count > 1 {
            return Err(field(path, "may not specify more than 1 handler type"));
        }
        if let Some(exec) = &h.exec {
            let path = format!("{path}.exec");
            if self.runtime == RuntimeKind::Wasm {
                return Err(field(
                    path,
                    "exec hooks are not supported for wasm containers: a module cannot be exec'd",
                ));
            }
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(field(format!("{path}.command"), "required"));
            }
            return Ok(Hook::Run(ProbeHandler::Exec { command }));
        }
        if let Some(sleep) = &h.sleep {
            let seconds = u32::try_from(sleep.seconds)
                .map_err(|_| field(format!("{path}.sleep.seconds"), "must not be negative"))?;
            return Ok(Hook::Sleep { seconds });
        }
        let http = h.http_get.as_ref().ok_or_else(|| field(path, "required"))?;
        let path = format!("{path}.httpGet");
        let handler = http_get(http, &path, ports)?;
        // A Wasm module has no address of its own (as for probes).
        if self.runtime == RuntimeKind::Wasm
            && matches!(&handler, ProbeHandler::HttpGet { host: None, .. })
        {
            return Err(field(
                format!("{path}.host"),
                "required for wasm containers: a module has no network address of its own",
            ));
        }
        Ok(Hook::Run(handler))
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub(super) fn probe_port(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn lifecycle_hooks_convert_with_the_probe_handlers_and_sleep() {
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "lifecycle": {
                "postStart": {"exec": {"command": ["sh", "-c", "touch /ready"]}},
                "preStop": {"httpGet": {"port": "http", "path": "/drain"}}
            }
        })));
        let c = &spec.containers[0];
        assert_eq!(
            c.lifecycle,
            Lifecycle {
                post_start: Some(Hook::Run(ProbeHandler::Exec {
                    command: vec!["sh".into(), "-c".into(), "touch /ready".into()]
                })),
                pre_stop: Some(Hook::Run(ProbeHandler::HttpGet {
                    path: "/drain".into(),
                    port: 8080,
                    host: None,
                    https: false,
                    headers: vec![],
                })),
            }
        );
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}})));
        assert_eq!(
            spec.containers[0].lifecycle.pre_stop,
            Some(Hook::Sleep { seconds: 5 })
        );
        // None given: none.
        let spec = convert(with_container(json!({"name": "app", "image": "nginx"})));
        assert_eq!(spec.containers[0].lifecycle, Lifecycle::default());
    }

    /// A Wasm module cannot be exec'd and has no address of its own; a
    /// sleep, or an HTTP hook to a given host, it can have.
    #[test]
    fn wasm_hooks_refuse_exec_and_keep_sleep() {
        let hooks = |lifecycle: serde_json::Value| {
            let mut pod = wasm(&format!("file:///m.wasm@sha256:{}", "0".repeat(64)));
            pod["spec"]["containers"][0]["lifecycle"] = lifecycle;
            pod
        };
        assert_eq!(
            convert_err(hooks(json!({"postStart": {"exec": {"command": ["x"]}}}))),
            "spec.containers[0].lifecycle.postStart.exec: exec hooks are not supported for wasm containers: a module cannot be exec'd"
        );
        assert_eq!(
            convert_err(hooks(json!({"preStop": {"httpGet": {"port": 80}}}))),
            "spec.containers[0].lifecycle.preStop.httpGet.host: required for wasm containers: a module has no network address of its own"
        );
        let spec = convert(hooks(json!({"preStop": {"sleep": {"seconds": 2}},
            "postStart": {"httpGet": {"port": 80, "host": "127.0.0.1"}}})));
        let l = &spec.containers[0].lifecycle;
        assert_eq!(l.pre_stop, Some(Hook::Sleep { seconds: 2 }));
        assert!(matches!(
            l.post_start,
            Some(Hook::Run(ProbeHandler::HttpGet { .. }))
        ));
    }

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
            "spec.containers[0].livenessProbe: must specify a handler type (exec, httpGet, tcpSocket or grpc)"
        );
    }
}
