//! Probes: the pure counting of results against thresholds (`Tracker`),
//! and the checks themselves (`check`: exec through the runtime, httpGet and
//! tcpSocket from the agent to the pod's address); lifecycle hooks run with
//! the same handlers (`run_hook`).
//!
//! Kubelet semantics: a startup probe holds the other two back until it
//! succeeds; liveness and startup failures kill the container (the restart
//! policy then decides); readiness turns the container's `ready` on after
//! `successThreshold` successes and off after `failureThreshold` failures.

use std::time::Duration;

use crate::model::{Hook, Probe, ProbeHandler};
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// Consecutive results of one probe of one container run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    /// The last verdict: None until a threshold was first reached.
    state: Option<bool>,
}

impl Tracker {
    pub fn new(probe: &Probe) -> Tracker {
        Tracker {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            state: None,
        }
    }

    /// Records one result; returns the new verdict when it changes.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.success_threshold {
            Some(true)
        } else if self.failures >= self.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            // Failures are reported once per threshold reached, so a
            // failing liveness probe kills again if the failures go on.
            Some(false) => {
                self.failures = 0;
                self.state = Some(false);
                Some(false)
            }
            Some(true) if self.state != Some(true) => {
                self.state = Some(true);
                Some(true)
            }
            _ => None,
        }
    }

    pub fn state(&self) -> Option<bool> {
        self.state
    }
}

/// Where network probes connect: the probe's host, else the pod's address.
fn target_host(host: &Option<String>, pod_ip: &str) -> String {
    host.clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string())
}

/// Runs one check. `Err` carries what failed, for the event message.
pub async fn check(
    probe: &Probe,
    runtime: &dyn Runtime,
    container_id: &str,
    pod_ip: &str,
) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_secs.max(1)));
    run(
        &probe.handler,
        runtime,
        container_id,
        pod_ip,
        timeout,
        false,
    )
    .await
}

/// Runs a lifecycle hook (`postStart`, `preStop`) in `timeout` at most.
/// As the kubelet's: an HTTP hook that gets any answer succeeded, an exec
/// hook must exit 0, a sleep hook sleeps.
pub async fn run_hook(
    hook: &Hook,
    runtime: &dyn Runtime,
    container_id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    match hook {
        Hook::Sleep { seconds } => {
            tokio::time::sleep(Duration::from_secs(u64::from(*seconds)).min(timeout)).await;
            Ok(())
        }
        Hook::Run(handler) => run(handler, runtime, container_id, pod_ip, timeout, true).await,
    }
}

/// One probe handler's check; `hook`: a lifecycle hook's (any HTTP answer
/// succeeds).
async fn run(
    handler: &ProbeHandler,
    runtime: &dyn Runtime,
    container_id: &str,
    pod_ip: &str,
    timeout: Duration,
    hook: bool,
) -> Result<(), String> {
    match handler {
        ProbeHandler::Exec { command } => {
            match runtime.exec_sync(container_id, command, timeout).await {
                Ok(out) if out.exit_code == 0 => Ok(()),
                Ok(out) => {
                    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                    output.push_str(&String::from_utf8_lossy(&out.stderr));
                    Err(format!(
                        "command {command:?} exited with {}: {}",
                        out.exit_code,
                        output.trim()
                    ))
                }
                Err(e) => Err(e.to_string()),
            }
        }
        ProbeHandler::TcpSocket { port, host } => {
            let host = target_host(host, pod_ip);
            match tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        ProbeHandler::Grpc { port, service } => {
            grpc::check(&target_host(&None, pod_ip), *port, service, timeout).await
        }
        ProbeHandler::HttpGet {
            path,
            port,
            host,
            https,
            headers,
        } => {
            let host = target_host(host, pod_ip);
            let scheme = if *https { "https" } else { "http" };
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let url = format!("{scheme}://{host}:{port}{path}");
            let client = reqwest::Client::builder()
                .timeout(timeout)
                // Like the kubelet: https probes do not verify certificates.
                .tls_danger_accept_invalid_certs(true)
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
            let mut req = client.get(&url).header("User-Agent", "kube-probe/kedge");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if hook || (200..400).contains(&r.status().as_u16()) => Ok(()),
                Ok(r) => Err(format!(
                    "HTTP probe failed with statuscode: {}",
                    r.status().as_u16()
                )),
                Err(e) => Err(format!("Get \"{url}\": {e}")),
            }
        }
    }
}

/// gRPC probes: the gRPC health protocol's `Check`, with the kubelet's
/// words for each outcome (pkg/probe/grpc). Through tonic, which device
/// builds have for the CRI; the two messages are declared here (prost), as
/// `grpc.health.v1` defines them.
#[cfg(feature = "cri")]
mod grpc {
    use std::time::Duration;

    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        service: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        status: i32,
    }

    /// `grpc.health.v1.HealthCheckResponse.ServingStatus`'s names.
    fn status_name(status: i32) -> &'static str {
        match status {
            0 => "UNKNOWN",
            1 => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "UNRECOGNIZED",
        }
    }

    pub(super) async fn check(
        host: &str,
        port: u16,
        service: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let secs = timeout.as_secs();
        let connect_failed = |e: &dyn std::fmt::Display| {
            format!("timeout: failed to connect service {addr:?} within {secs}s: {e}")
        };
        let ip: std::net::IpAddr = host.parse().map_err(|e| connect_failed(&e))?;
        let endpoint = tonic::transport::Endpoint::from_static("http://[::1]:0")
            .connect_timeout(timeout)
            .timeout(timeout);
        let dial = crate::runtime::cri::Dial::Tcp((ip, port).into());
        let channel = crate::runtime::cri::lazy_channel(endpoint, dial);
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let path = "/grpc.health.v1.Health/Check";
        let call = crate::runtime::cri::unary::<_, HealthCheckResponse>(channel, path, request);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) if r.status == 1 => Ok(()),
            Ok(Ok(r)) => Err(format!(
                "service unhealthy (responded with {:?})",
                status_name(r.status)
            )),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Err(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                s.message()
            )),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => Err(connect_failed(&s.message())),
            Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Err(format!(
                "timeout: health rpc did not complete within {secs}s"
            )),
            Ok(Err(s)) => Err(format!("error: health rpc probe failed: {s}")),
            Err(_) => Err(format!(
                "timeout: health rpc did not complete within {secs}s"
            )),
        }
    }
}

/// Builds without the CRI have no gRPC client: the probe fails saying so.
#[cfg(not(feature = "cri"))]
mod grpc {
    pub(super) async fn check(
        _host: &str,
        _port: u16,
        _service: &str,
        _timeout: std::time::Duration,
    ) -> Result<(), String> {
        Err("gRPC probes need a kedge build with the cri feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> Probe {
        Probe {
            handler: ProbeHandler::TcpSocket {
                port: 1,
                host: None,
            },
            initial_delay_secs: 0,
            period_secs: 1,
            timeout_secs: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn readiness_needs_its_thresholds_both_ways() {
        let mut t = Tracker::new(&probe(2, 3));
        assert_eq!(t.record(true), None, "one success of two");
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None, "no change");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.state(), Some(false));
    }

    #[test]
    fn liveness_failures_report_once_per_threshold() {
        let mut t = Tracker::new(&probe(1, 2));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None, "counting starts again");
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut t = Tracker::new(&probe(0, 0));
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn network_probes_target_the_pod_unless_a_host_is_given() {
        assert_eq!(target_host(&None, "10.1.2.3"), "10.1.2.3");
        assert_eq!(target_host(&Some(String::new()), "10.1.2.3"), "10.1.2.3");
        assert_eq!(
            target_host(&Some("127.0.0.1".into()), "10.1.2.3"),
            "127.0.0.1"
        );
    }
}
