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
        // A Wasm module has no network of its own (WASI sockets are not
        // granted): a network probe without a host would dial nothing and
        // fail for ever, so it is refused here rather than accepted.
        if self.runtime == RuntimeKind::Wasm {
            let (handler_name, host) = match &handler {
                ProbeHandler::HttpGet { host, .. } => ("httpGet", host),
                ProbeHandler::TcpSocket { host, .. } => ("tcpSocket", host),
                ProbeHandler::Exec { .. } => ("exec", &None),
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
}
