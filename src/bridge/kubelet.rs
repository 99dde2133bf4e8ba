//! The kubelet API the apiserver calls for the bridge's nodes (HTTPS,
//! rustls): `/containerLogs/{ns}/{pod}/{container}` tunnelled to the device
//! over the MQTT log RPC, `/exec/{ns}/{pod}/{container}` and `/attach/…`
//! (SPDY upgrade, [`super::remotecommand`]) over an exec stream to the
//! device's runtime, `/portForward/…` ([`super::portforward`]) over
//! port-forward streams, `/stats/summary` and `/metrics/resource`,
//! `/healthz`, and `/metrics`
//! (the bridge's own counters). Every connection must present a client certificate signed by
//! the configured CA (the apiserver's `--kubelet-client-certificate`), as the
//! kubelet does with `--client-ca-file`, and every request is authorised
//! like a kubelet's in webhook mode ([`super::kubelet_auth`]): a
//! SubjectAccessReview for `nodes/{log,proxy,stats,metrics,…}`.
//!
//! Limits: a TLS handshake timeout, hyper's header read timeout, and a cap
//! on connections at once ([`ServeLimits`]). Errors are [`ApiError`]s, each
//! with its status code.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use super::kubelet_auth::{
    Authorizer, CertNameError, User, forbidden_message, request_attributes, user_from_certificate,
};
use super::mqtt_link::MqttLink;
use super::portforward;
use super::remotecommand;
use super::spdy;
use super::usage;
use super::writer::WriteStats;
use crate::client::ClientError;
use crate::client::logs::LogStats;
use crate::model::validate::MAX_SINCE_SECONDS;
use crate::model::{LogRequest, StreamExec};

/// How long the first log chunk may take (the CLI's limit too).
const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum KubeletTlsError {
    #[error("cannot read {what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("kubelet TLS configuration: {0}")]
    Config(String),
}

/// The server's TLS configuration: serving certificate and key, and the CA
/// that must have signed every client certificate.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<rustls::ServerConfig, KubeletTlsError> {
    let file_err =
        |what: &'static str, path: &Path, e: &dyn std::fmt::Display| KubeletTlsError::File {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err("certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("private key", key, &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(client_ca)
        .map_err(|e| file_err("client CA", client_ca, &e))?
    {
        let ca = ca.map_err(|e| file_err("client CA", client_ca, &e))?;
        roots
            .add(ca)
            .map_err(|e| KubeletTlsError::Config(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| KubeletTlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeletTlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| KubeletTlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What the handlers need.
pub struct Ctx {
    pub pods: Store<Pod>,
    pub mqtt: MqttLink,
    pub stats: Arc<WriteStats>,
    /// The fleet gauges (`kedge_fleet_*`) and the devices' data path
    /// counters (`kedge_data_*`), rendered by the bridge's loop on every
    /// tick.
    pub state_metrics: Arc<std::sync::Mutex<String>>,
    /// Decides every request (SubjectAccessReview).
    pub authorizer: Authorizer,
    pub log_stats: Arc<LogStats>,
    /// The devices the bridge knows to be disconnected, as of the loop's
    /// last tick (at most a second old): a log request for one is answered
    /// 503 at once instead of waiting for a device that cannot answer.
    pub offline: Arc<std::sync::RwLock<HashSet<String>>>,
    /// The previous CPU samples, for the summary's `usageNanoCores`.
    pub rates: std::sync::Mutex<usage::Rates>,
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A TLS handshake must finish within this, or the connection is closed.
    pub handshake_timeout: Duration,
    /// An HTTP/1 request's headers must arrive within this (hyper's
    /// `header_read_timeout`, also between requests of a kept-alive
    /// connection), or the connection is closed. HTTP/2 (by ALPN only)
    /// has keep-alive pings instead: a peer that stops answering them for
    /// 20 s is dropped.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog (they
    /// are not accepted) until one closes.
    pub max_connections: usize,
}

/// Serves until the listener fails.
///
/// `node`: the Node this listener is the port of ([`super::node_ports`]);
/// None for the shared port, which serves every Node's pods but no node's
/// stats.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<Ctx>,
    limits: ServeLimits,
    node: Option<Arc<str>>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Over the limit, stop accepting: new connections queue in the
        // kernel's backlog (and time out there on the client's side).
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "kubelet API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let node = node.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(error = %e, "kubelet API: TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        debug!("kubelet API: TLS handshake timed out");
                        return;
                    }
                };
                // The handshake verified the chain against the client CA.
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .ok_or(CertNameError::Der("no client certificate"))
                    .and_then(|c| user_from_certificate(c.as_ref()));
                if let Err(e) = &user {
                    debug!(error = %e, "kubelet API: client certificate names no user");
                }
                let user = Arc::new(user.ok());
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    let user = user.clone();
                    let node = node.clone();
                    async move {
                        let resp = match handle(&ctx, node.as_deref(), (*user).as_ref(), req).await
                        {
                            Ok(r) => r,
                            Err(e) => e.response(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                // The protocol from ALPN, not from sniffing the first bytes:
                // hyper-util's sniffing waits for them without a timeout,
                // before the header read timeout starts.
                // (hyper-util's auto builder sniffs even when told the
                // protocol if upgrades are on: hyper's own builders here.)
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                let ended = if h2 {
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    b.timer(TokioTimer::new())
                        .keep_alive_interval(Some(Duration::from_secs(30)))
                        .keep_alive_timeout(Duration::from_secs(20));
                    b.serve_connection(io, service).await
                } else {
                    // Upgrades (HTTP/1 only): exec's and port-forward's
                    // SPDY sessions take over the connection.
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read_timeout);
                    b.serve_connection(io, service).with_upgrades().await
                };
                if let Err(e) = ended {
                    debug!(error = %e, "kubelet API connection ended");
                }
            }
            .instrument(info_span!("kubelet_conn", %peer)),
        );
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// Why a request failed; each variant has one status code
/// ([`ApiError::status`]), and its message is the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// No user could be read from the client certificate.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// The SubjectAccessReview itself failed.
    #[error("Authorization error (user={user}, verb={verb}, resource=nodes): {message}")]
    Authorization {
        user: String,
        verb: &'static str,
        message: String,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// An upgrade that cannot be made (headers, protocol).
    #[error("unable to upgrade: {0}")]
    Upgrade(String),
    #[error("404 page not found")]
    NoSuchPath,
    #[error("pods \"{pod}\" not found in namespace \"{namespace}\"")]
    PodNotFound { namespace: String, pod: String },
    #[error("container \"{container}\" not found in pod \"{pod}\"")]
    ContainerNotFound { pod: String, container: String },
    /// A malformed query parameter.
    #[error("{0}")]
    BadQuery(String),
    /// The device answered with an error: like the kubelet passing on the
    /// runtime's (no previous run, waiting to start, …), a 400. (The wire's
    /// error carries no kind; what the bridge can check itself, the Pod and
    /// its container, it answers with 404 before asking.)
    #[error("{0}")]
    Device(String),
    /// The log request could not be sent.
    #[error("{0}")]
    Link(String),
    #[error("the log stream of node {0} ended before any answer")]
    StreamEnded(String),
    #[error("node {node} did not answer within {secs} s (is it online?)")]
    NoAnswer { node: String, secs: u64 },
    /// The bridge knows the device is disconnected.
    #[error("node {0} is not connected")]
    NodeOffline(String),
    /// Stats asked on the shared port, which is no single Node's.
    #[error(
        "this port serves the pods of every Node of the kedge bridge, and no Node's stats: a Node's are on its own port (status.daemonEndpoints.kubeletEndpoint.Port; bridge flag --kubelet-node-ports)"
    )]
    NoNodeOnThisPort,
    /// A `/run` command failed, or the device could not run it: the
    /// kubelet's 500.
    #[error("{0}")]
    Run(String),
    /// The device answered a stats request with an error.
    #[error("cannot get the stats of node {node}: {message}")]
    Stats { node: String, message: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Authorization { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoSuchPath | ApiError::PodNotFound { .. } | ApiError::NoNodeOnThisPort => {
                StatusCode::NOT_FOUND
            }
            ApiError::Stats { .. } | ApiError::Run(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ContainerNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::BadQuery(_) | ApiError::Device(_) | ApiError::Upgrade(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Link(_) | ApiError::StreamEnded(_) | ApiError::NodeOffline(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NoAnswer { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// As a `metav1.Status` (JSON): for what the apiserver proxies as it is
    /// (`nodes/proxy`: stats, metrics), so that client-go, and kubectl,
    /// show the message (a text body of a 503 would read "the server is
    /// currently unable to handle the request"). `/containerLogs` answers
    /// in text, as the kubelet does: the apiserver passes its text on.
    pub fn status_response(&self) -> Response<Body> {
        let code = self.status();
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::GATEWAY_TIMEOUT => "Timeout",
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            _ => "InternalError",
        };
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
    }

    pub fn response(&self) -> Response<Body> {
        let mut body = self.to_string();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        text(self.status(), body)
    }
}

/// The kubelet's query parameters of `/containerLogs`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Parses `follow=true&tailLines=10&…`; a malformed number is an error.
/// `sinceSeconds` beyond what a device takes (a hundred years) means every
/// line, as it does for the kubelet, and is sent as that bound.
pub fn parse_log_query(q: &str) -> Result<LogQuery, String> {
    let mut out = LogQuery::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let flag = || v.is_empty() || v == "true" || v == "1";
        let num = |name: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(|n| n as u64)
                .ok_or_else(|| format!("invalid {name} {v:?}"))
        };
        match k {
            "follow" => out.follow = flag(),
            "previous" => out.previous = flag(),
            "timestamps" => out.timestamps = flag(),
            "tailLines" => out.tail_lines = Some(num("tailLines")?),
            "sinceSeconds" => {
                out.since_seconds = Some(num("sinceSeconds")?.min(MAX_SINCE_SECONDS));
            }
            "limitBytes" => out.limit_bytes = Some(num("limitBytes")?),
            _ => {}
        }
    }
    Ok(out)
}

/// What a request about one pod's container asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodVerb {
    Logs,
    Exec,
    Attach,
    PortForward,
    Run,
}

/// A request about one pod (and container).
#[derive(Debug, PartialEq, Eq)]
struct PodPath<'a> {
    verb: PodVerb,
    ns: &'a str,
    pod: &'a str,
    /// Given: it must be the pod's.
    uid: Option<&'a str>,
    /// Empty for port-forward.
    container: &'a str,
}

/// The kubelet's pod paths: `/containerLogs/{ns}/{pod}/{container}`,
/// `/exec|attach|run/{ns}/{pod}[/{uid}]/{container}`,
/// `/portForward/{ns}/{pod}[/{uid}]`; or `None`.
fn pod_path(path: &str) -> Option<PodPath<'_>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let p = |verb, ns, pod, uid, container| {
        Some(PodPath {
            verb,
            ns,
            pod,
            uid,
            container,
        })
    };
    match parts.as_slice() {
        ["containerLogs", ns, pod, c] => p(PodVerb::Logs, ns, pod, None, c),
        ["exec", ns, pod, c] => p(PodVerb::Exec, ns, pod, None, c),
        ["exec", ns, pod, uid, c] => p(PodVerb::Exec, ns, pod, Some(uid), c),
        ["attach", ns, pod, c] => p(PodVerb::Attach, ns, pod, None, c),
        ["attach", ns, pod, uid, c] => p(PodVerb::Attach, ns, pod, Some(uid), c),
        ["run", ns, pod, c] => p(PodVerb::Run, ns, pod, None, c),
        ["run", ns, pod, uid, c] => p(PodVerb::Run, ns, pod, Some(uid), c),
        ["portForward", ns, pod] => p(PodVerb::PortForward, ns, pod, None, ""),
        ["portForward", ns, pod, uid] => p(PodVerb::PortForward, ns, pod, Some(uid), ""),
        _ => None,
    }
}

async fn handle(
    ctx: &Ctx,
    port_node: Option<&str>,
    user: Option<&User>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Authenticate, authorise, then route: as the kubelet's filter chain
    // does, so that nobody learns what exists without the right to see it.
    let user = user.ok_or(ApiError::Unauthorized)?;
    let path = req.uri().path().to_string();
    let attrs = request_attributes(req.method(), &path).ok_or(ApiError::MethodNotAllowed)?;
    let target = pod_path(&path);
    // The node a request is about: the pod's, for its logs or exec; else
    // the Node whose port this is; else none in particular (the shared
    // port).
    let pod = target
        .as_ref()
        .and_then(|t| ctx.pods.get(&ObjectRef::new(t.pod).within(t.ns)));
    let pod_node = pod
        .as_ref()
        .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
    let node = match (&pod_node, port_node) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) if target.is_none() => n.to_string(),
        _ => String::new(),
    };
    let allowed = ctx
        .authorizer
        .allowed(user, &attrs, &node)
        .await
        .map_err(|e| ApiError::Authorization {
            user: user.name.clone(),
            verb: attrs.verb,
            message: e.to_string(),
        })?;
    if !allowed {
        debug!(user = %user.name, verb = attrs.verb, subresources = ?attrs.subresources, %path, "kubelet API: forbidden");
        return Err(ApiError::Forbidden(forbidden_message(&user.name, &attrs)));
    }
    // Streams are upgraded from a POST (or a GET, as the kubelet takes);
    // a run is a POST.
    let verb = target.as_ref().map(|t| t.verb);
    let streams = verb.is_some_and(|v| v != PodVerb::Logs);
    let allowed = match *req.method() {
        Method::GET => verb != Some(PodVerb::Run),
        Method::POST => streams,
        _ => false,
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    match path.as_str() {
        "/healthz" => return Ok(text(StatusCode::OK, "ok")),
        "/metrics" => return Ok(text(StatusCode::OK, metrics(ctx))),
        "/stats/summary" | "/stats/summary/" | "/metrics/resource" => {
            let Some(node) = port_node else {
                return Ok(ApiError::NoNodeOnThisPort.status_response());
            };
            let summary = path.starts_with("/stats");
            return Ok(node_stats(ctx, node, summary)
                .instrument(info_span!("node_stats", %node, %path))
                .await
                .unwrap_or_else(|e| e.status_response()));
        }
        _ => {}
    }
    let Some(PodPath {
        verb,
        ns,
        pod: pod_name,
        uid,
        container,
    }) = target
    else {
        return Err(ApiError::NoSuchPath);
    };
    // On a Node's own port, only that Node's pods; a uid in the path must
    // be the pod's.
    let pod = pod
        .filter(|_| !node.is_empty())
        .filter(|_| port_node.is_none_or(|n| n == node))
        .filter(|p| uid.is_none_or(|u| p.metadata.uid.as_deref() == Some(u)))
        .ok_or_else(|| ApiError::PodNotFound {
            namespace: ns.to_string(),
            pod: pod_name.to_string(),
        })?;
    if verb != PodVerb::PortForward && !pod_has_container(&pod, container) {
        return Err(ApiError::ContainerNotFound {
            pod: pod_name.to_string(),
            container: container.to_string(),
        });
    }
    match verb {
        PodVerb::Logs => {
            let query =
                parse_log_query(req.uri().query().unwrap_or("")).map_err(ApiError::BadQuery)?;
            container_logs(ctx, &node, ns, pod_name, container, query)
                .instrument(info_span!("container_logs", %ns, pod = %pod_name, %container))
                .await
        }
        PodVerb::Exec | PodVerb::Attach => {
            let target = ExecTarget {
                node,
                namespace: ns.to_string(),
                pod: pod_name.to_string(),
                container: container.to_string(),
            };
            exec(ctx, user, target, req, verb == PodVerb::Attach).await
        }
        PodVerb::PortForward => {
            port_forward(ctx, user, node, ns.to_string(), pod_name.to_string(), req)
        }
        PodVerb::Run => {
            let target = ExecTarget {
                node,
                namespace: ns.to_string(),
                pod: pod_name.to_string(),
                container: container.to_string(),
            };
            let cmd = run_command(req.uri().query().unwrap_or(""));
            run(ctx, user, target, cmd)
                .instrument(info_span!("run", %ns, pod = %pod_name, %container))
                .await
        }
    }
}

/// `/run`'s command: the `cmd` parameter split at spaces, as the kubelet
/// splits it ("for legacy reasons").
fn run_command(query: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "cmd")
        .map(|(_, v)| v.split(' ').map(str::to_string).collect())
        .unwrap_or_default()
}

/// How long a `/run` command may take on the device.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `/run`: runs the command to its end on the device (the exec RPC,
/// docs/wire.md) and answers its output, stdout then stderr, as the
/// kubelet's `RunInContainer` does: 200 when it exited 0, else 500 with
/// the exit code and the output. Logged at info like an exec.
async fn run(
    ctx: &Ctx,
    user: &User,
    target: ExecTarget,
    command: Vec<String>,
) -> Result<Response<Body>, ApiError> {
    if ctx.offline.read().is_ok_and(|o| o.contains(&target.node)) {
        return Err(ApiError::NodeOffline(target.node));
    }
    tracing::info!(
        user = %user.name,
        namespace = %target.namespace,
        pod = %target.pod,
        container = %target.container,
        command = ?command,
        node = %target.node,
        "run"
    );
    let request = crate::model::ExecRequest {
        request_id: String::new(),
        namespace: target.namespace,
        pod: target.pod,
        container: target.container,
        command: command.clone(),
        timeout_secs: RUN_TIMEOUT.as_secs() as u32,
    };
    // The device's own timeout comes first; this one is for a device that
    // never answers.
    let wait = RUN_TIMEOUT + Duration::from_secs(15);
    let out = match ctx.mqtt.exec(&target.node, request, wait).await {
        Ok(out) => out,
        Err(ClientError::Agent { message, .. }) => return Err(ApiError::Run(message)),
        Err(ClientError::NoAnswer { .. }) => {
            return Err(ApiError::NoAnswer {
                node: target.node,
                secs: wait.as_secs(),
            });
        }
        Err(e) => return Err(ApiError::Link(e.to_string())),
    };
    let mut output = out.stdout;
    output.extend_from_slice(&out.stderr);
    if out.exit_code != 0 {
        return Err(ApiError::Run(format!(
            "command {command:?} exited with {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&output)
        )));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(output)).boxed())
        .map_err(|e| ApiError::Link(e.to_string()))
}

/// The container an exec runs in.
struct ExecTarget {
    node: String,
    namespace: String,
    pod: String,
    container: String,
}

/// `/exec` and `/attach`: checks the request, opens an exec stream to the
/// device (which connects to its runtime's streaming server and asks it
/// to upgrade), answers `101 Switching Protocols` with the protocol the
/// runtime chose and pipes the session's bytes both ways from a task of
/// its own ([`remotecommand::pipe`]). Every exec and attach is logged
/// (info) with who, which pod and which command, as an audit line.
///
/// When the device refuses (or does not answer within
/// `EXEC_OPEN_TIMEOUT`), the upgrade is still answered, and the session
/// says why as its error status ([`remotecommand::refuse`]): kubectl shows
/// that message on every path (SPDY, or WebSocket translated by the
/// apiserver).
async fn exec(
    ctx: &Ctx,
    user: &User,
    target: ExecTarget,
    mut req: Request<Incoming>,
    attach: bool,
) -> Result<Response<Body>, ApiError> {
    let mut options = remotecommand::parse_exec_query(req.uri().query().unwrap_or(""))
        .map_err(ApiError::BadQuery)?;
    if attach {
        // An attach names no command (the kubelet ignores one).
        options.command.clear();
    } else if options.command.is_empty() {
        return Err(ApiError::BadQuery(remotecommand::NO_COMMAND.into()));
    }
    if ctx.offline.read().is_ok_and(|o| o.contains(&target.node)) {
        return Err(ApiError::NodeOffline(target.node));
    }
    // The refusal is said in v4, so the client must speak it.
    spdy_upgrade(&req, remotecommand::PROTOCOL_V4)?;
    let offered: Vec<String> = req
        .headers()
        .get_all(remotecommand::PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| remotecommand::PROTOCOLS.contains(p))
        .map(str::to_string)
        .collect();
    let verb = if attach { "attach" } else { "exec" };
    tracing::info!(
        user = %user.name,
        namespace = %target.namespace,
        pod = %target.pod,
        container = %target.container,
        command = ?options.command,
        tty = options.tty,
        stdin = options.stdin,
        node = %target.node,
        "{verb}"
    );
    let span = info_span!("exec", %verb, node = %target.node, namespace = %target.namespace, pod = %target.pod, container = %target.container);
    let open = StreamExec {
        stream_id: String::new(),
        namespace: target.namespace,
        pod: target.pod,
        container: target.container,
        command: options.command.clone(),
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr,
        tty: options.tty,
        protocols: offered.clone(),
        window: 0,
    };
    let mqtt = ctx.mqtt.clone();
    let node = target.node;
    let opened = async {
        let (up, down) = mqtt
            .exec_stream(&node, open, EXEC_OPEN_TIMEOUT)
            .await
            .map_err(|e| match e {
                ClientError::Agent { message, .. } => message,
                other => other.to_string(),
            })?;
        let mut down = DeviceReader(down);
        let (protocol, first) = remotecommand::read_upgrade(&mut down, &offered).await?;
        Ok::<_, String>((protocol, first, DeviceWriter(up), down))
    };
    let opened = match tokio::time::timeout(EXEC_OPEN_TIMEOUT, opened).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "node {node} did not start the {verb} within {} s",
            EXEC_OPEN_TIMEOUT.as_secs()
        )),
    };
    match opened {
        Ok((protocol, first, up, down)) => {
            let protocol =
                HeaderValue::from_str(&protocol).map_err(|e| ApiError::Upgrade(e.to_string()))?;
            upgraded(&mut req, protocol, span, move |io| async move {
                if let Err(e) = remotecommand::pipe(io, first, up, down).await {
                    debug!(error = %e, "{verb} session ended with an error");
                }
            })
        }
        Err(why) => {
            span.in_scope(|| tracing::info!(error = %why, "{verb} refused"));
            let protocol = HeaderValue::from_static(remotecommand::PROTOCOL_V4);
            upgraded(&mut req, protocol, span, move |io| async move {
                if let Err(e) = remotecommand::refuse(io, &options, &why).await {
                    debug!(error = %e, "{verb} refusal ended early");
                }
            })
        }
    }
}

/// How long the device may take to start an exec or attach (the CRI call,
/// the connection to the streaming server and its answer).
const EXEC_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers `101 Switching Protocols` with `protocol`, and serves the
/// upgraded connection with `session` from a task of its own in `span`.
fn upgraded<F, Fut>(
    req: &mut Request<Incoming>,
    protocol: HeaderValue,
    span: tracing::Span,
    session: F,
) -> Result<Response<Body>, ApiError>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(u) => session(TokioIo::new(u)).await,
                Err(e) => debug!(error = %e, "the upgrade failed"),
            }
        }
        .instrument(span),
    );
    switching_protocols(protocol)
}

/// Checks an upgrade to SPDY/3.1 with `protocol` among the client's
/// `X-Stream-Protocol-Version`s, as the kubelet's `Handshake` does;
/// returns the protocol to answer with.
fn spdy_upgrade(req: &Request<Incoming>, protocol: &'static str) -> Result<&'static str, ApiError> {
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !header("connection").contains("upgrade")
        || !header("upgrade").contains(&spdy::UPGRADE_TOKEN.to_ascii_lowercase())
    {
        return Err(ApiError::Upgrade(format!(
            "missing upgrade headers in request (Connection: Upgrade, Upgrade: {})",
            spdy::UPGRADE_TOKEN
        )));
    }
    let offered: Vec<String> = req
        .headers()
        .get_all(remotecommand::PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    spdy::negotiate(offered.iter().map(String::as_str), protocol).ok_or_else(|| {
            ApiError::Upgrade(format!(
                "unable to negotiate protocol: client supports {offered:?}, server accepts [\"{protocol}\"]"
            ))
        })
}

fn switching_protocols(protocol: HeaderValue) -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", spdy::UPGRADE_TOKEN)
        .header(remotecommand::PROTOCOL_HEADER, protocol)
        .body(Full::new(Bytes::new()).boxed())
        .map_err(|e| ApiError::Upgrade(e.to_string()))
}

/// `/portForward`: checks the upgrade, answers 101 and serves the session
/// ([`portforward::serve`]) from a task of its own; each forwarded
/// connection is a byte stream to the pod's port on the device (the
/// stream RPC). Logged at info with who and which pod.
fn port_forward(
    ctx: &Ctx,
    user: &User,
    node: String,
    namespace: String,
    pod: String,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if ctx.offline.read().is_ok_and(|o| o.contains(&node)) {
        return Err(ApiError::NodeOffline(node));
    }
    let protocol = HeaderValue::from_static(spdy_upgrade(&req, portforward::PROTOCOL)?);
    tracing::info!(user = %user.name, %namespace, %pod, %node, "port-forward");
    let span = info_span!("port_forward_session", %node, %namespace, %pod);
    let mqtt = ctx.mqtt.clone();
    upgraded(&mut req, protocol, span, move |io| async move {
        let open = move |port: u16| {
            let (mqtt, node, namespace, pod) =
                (mqtt.clone(), node.clone(), namespace.clone(), pod.clone());
            async move {
                mqtt.port_forward(&node, &namespace, &pod, port, PORT_FORWARD_CONNECT_TIMEOUT)
                    .await
                    .map(|(w, r)| (DeviceWriter(w), DeviceReader(r)))
                    .map_err(|e| match e {
                        ClientError::Agent { message, .. } => message,
                        other => other.to_string(),
                    })
            }
        };
        if let Err(e) = portforward::serve(io, open).await {
            debug!(error = %e, "port-forward session ended with an error");
        }
    })
}

/// How long the device may take to connect to the pod's port.
const PORT_FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The client's stream halves as the port-forward session uses them.
struct DeviceWriter(crate::client::stream::StreamWriter);
struct DeviceReader(crate::client::stream::StreamReader);

impl portforward::Upstream for DeviceWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), String> {
        self.0.write(&data).await.map_err(|e| e.to_string())
    }
    async fn finish(&mut self) -> Result<(), String> {
        self.0.finish().await.map_err(|e| e.to_string())
    }
}

impl portforward::Downstream for DeviceReader {
    async fn read(&mut self) -> Result<Option<Bytes>, String> {
        self.0
            .read()
            .await
            .map(|d| d.map(Bytes::from))
            .map_err(|e| e.to_string())
    }
}

fn pod_has_container(pod: &Pod, container: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == container)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
}

fn metrics(ctx: &Ctx) -> String {
    let s = &ctx.stats;
    let fleets = ctx
        .state_metrics
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    format!(
        "kedge_bridge_api_requests_total {}\nkedge_bridge_api_errors_total {}\nkedge_bridge_api_coalesced_total {}\nkedge_bridge_fleet_status_writes_total {}\nkedge_bridge_log_buffered_bytes {}\nkedge_bridge_log_streams_cut_total {}\n{fleets}",
        s.requests.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
        s.coalesced.load(Ordering::Relaxed),
        s.fleet_status_writes.load(Ordering::Relaxed),
        ctx.log_stats.buffered_bytes.load(Ordering::Relaxed),
        ctx.log_stats.cut_streams.load(Ordering::Relaxed),
    )
}

/// `/stats/summary` (`summary`) or `/metrics/resource` of `node`, from one
/// stats request to the device.
async fn node_stats(ctx: &Ctx, node: &str, summary: bool) -> Result<Response<Body>, ApiError> {
    if ctx.offline.read().is_ok_and(|o| o.contains(node)) {
        return Err(ApiError::NodeOffline(node.to_string()));
    }
    // The client's call waits at most its answer timeout (15 s).
    let stats = ctx.mqtt.stats(node).await.map_err(|e| match e {
        ClientError::NoAnswer { node, secs } => ApiError::NoAnswer { node, secs },
        ClientError::Agent { message, .. } => ApiError::Stats {
            node: node.to_string(),
            message,
        },
        other => ApiError::Link(other.to_string()),
    })?;
    let (body, content_type) = if summary {
        let json = {
            let mut rates = ctx.rates.lock().unwrap_or_else(|e| e.into_inner());
            usage::summary(node, &stats, &mut rates)
        };
        (json.to_string(), "application/json")
    } else {
        (
            usage::resource_metrics(&stats),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(BodyExt::boxed(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response")))
}

async fn container_logs(
    ctx: &Ctx,
    node: &str,
    ns: &str,
    pod: &str,
    container: &str,
    q: LogQuery,
) -> Result<Response<Body>, ApiError> {
    if ctx.offline.read().is_ok_and(|o| o.contains(node)) {
        return Err(ApiError::NodeOffline(node.to_string()));
    }
    let request = LogRequest {
        request_id: String::new(),
        namespace: ns.to_string(),
        pod: pod.to_string(),
        container: Some(container.to_string()),
        tail_lines: q.tail_lines,
        follow: q.follow,
        previous: q.previous,
        timestamps: q.timestamps,
        since_seconds: q.since_seconds,
        limit_bytes: q.limit_bytes,
    };
    let mut stream = ctx
        .mqtt
        .logs(node, request)
        .await
        .map_err(|e| ApiError::Link(e.to_string()))?;
    let first = match tokio::time::timeout(FIRST_CHUNK_TIMEOUT, stream.recv()).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(ApiError::StreamEnded(node.to_string())),
        Err(_) => {
            return Err(ApiError::NoAnswer {
                node: node.to_string(),
                secs: FIRST_CHUNK_TIMEOUT.as_secs(),
            });
        }
    };
    if let Some(e) = &first.error
        && first.data.is_empty()
    {
        return Err(ApiError::Device(e.clone()));
    }
    let done = first.eof || first.error.is_some();
    let mut head = first.data;
    if let Some(e) = first.error {
        head.extend_from_slice(format!("\n{e}\n").as_bytes());
    }
    // The body takes the next chunk only when hyper has written the last
    // one: a slow reader leaves the chunks queued in the log route
    // (client::logs::LogRoutes), which bounds them.
    let body = futures_util::stream::unfold(
        (Some(Bytes::from(head)), stream, done),
        |(head, mut stream, done)| async move {
            if let Some(h) = head {
                return Some((Ok::<_, Infallible>(Frame::data(h)), (None, stream, done)));
            }
            if done {
                return None;
            }
            let chunk = stream.recv().await?;
            let end = chunk.eof || chunk.error.is_some();
            let mut data = chunk.data;
            if let Some(e) = chunk.error {
                data.extend_from_slice(format!("\n{e}\n").as_bytes());
            }
            Some((Ok(Frame::data(Bytes::from(data))), (None, stream, end)))
        },
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response")))
}

/// Binds the kubelet API listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_query_reads_the_kubelet_parameters() {
        let q =
            parse_log_query("follow=true&tailLines=10&timestamps=true&previous=false&limitBytes=5")
                .expect("valid");
        assert_eq!(
            q,
            LogQuery {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(10),
                since_seconds: None,
                limit_bytes: Some(5),
            }
        );
        assert_eq!(parse_log_query("").expect("empty"), LogQuery::default());
        assert!(parse_log_query("tailLines=x").is_err());
        assert!(parse_log_query("tailLines=-1").is_err());
    }

    #[test]
    fn every_error_has_its_status_code() {
        let cases = [
            (ApiError::Unauthorized, 401),
            (ApiError::Forbidden("Forbidden (…)".into()), 403),
            (
                ApiError::Authorization {
                    user: "a".into(),
                    verb: "get",
                    message: "x".into(),
                },
                500,
            ),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::NoSuchPath, 404),
            (
                ApiError::PodNotFound {
                    namespace: "default".into(),
                    pod: "p".into(),
                },
                404,
            ),
            (
                ApiError::ContainerNotFound {
                    pod: "p".into(),
                    container: "c".into(),
                },
                404,
            ),
            (ApiError::BadQuery("invalid tailLines".into()), 400),
            // `kubectl logs --previous` without a previous run: 400, as the kubelet.
            (
                ApiError::Device(
                    "previous terminated container \"main\" in pod \"p\" not found".into(),
                ),
                400,
            ),
            (ApiError::Link("broker".into()), 503),
            (ApiError::StreamEnded("n".into()), 503),
            (ApiError::NodeOffline("gw1".into()), 503),
            (
                ApiError::NoAnswer {
                    node: "n".into(),
                    secs: 15,
                },
                504,
            ),
            (ApiError::NoNodeOnThisPort, 404),
            (
                ApiError::Stats {
                    node: "n".into(),
                    message: "cannot read /proc/stat".into(),
                },
                500,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
            assert_eq!(e.response().status().as_u16(), code);
            assert_eq!(e.status_response().status().as_u16(), code);
        }
        assert_eq!(
            ApiError::ContainerNotFound {
                pod: "p".into(),
                container: "c".into()
            }
            .to_string(),
            "container \"c\" not found in pod \"p\""
        );
    }

    #[tokio::test]
    async fn a_status_body_is_what_client_go_decodes() {
        let r = ApiError::NodeOffline("gw1".into()).status_response();
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert_eq!(v["code"], 503);
        assert_eq!(v["message"], "node gw1 is not connected");
    }

    #[test]
    fn pod_paths_are_the_kubelets() {
        let p = |verb, ns, pod, uid, container| {
            Some(PodPath {
                verb,
                ns,
                pod,
                uid,
                container,
            })
        };
        assert_eq!(
            pod_path("/containerLogs/default/web/main"),
            p(PodVerb::Logs, "default", "web", None, "main")
        );
        assert_eq!(
            pod_path("/exec/default/web/main"),
            p(PodVerb::Exec, "default", "web", None, "main")
        );
        assert_eq!(
            pod_path("/exec/default/web/u-1/main"),
            p(PodVerb::Exec, "default", "web", Some("u-1"), "main")
        );
        assert_eq!(
            pod_path("/attach/default/web/main"),
            p(PodVerb::Attach, "default", "web", None, "main")
        );
        assert_eq!(
            pod_path("/portForward/default/web"),
            p(PodVerb::PortForward, "default", "web", None, "")
        );
        assert_eq!(
            pod_path("/run/default/web/u-1/main"),
            p(PodVerb::Run, "default", "web", Some("u-1"), "main")
        );
        for path in [
            "/containerLogs/default/web",
            "/containerLogs/default/web/main/x",
            "/containerLogs//web/main",
            "/containerLogs/default/web/",
            "/exec/default/web",
            "/exec/default/web/u/main/x",
            "/portForward/default",
            "/healthz",
        ] {
            assert_eq!(pod_path(path), None, "{path}");
        }
    }

    #[test]
    fn a_runs_command_is_split_at_spaces_as_the_kubelet_splits_it() {
        assert_eq!(run_command("cmd=ls%20-l%20/tmp"), ["ls", "-l", "/tmp"]);
        assert_eq!(run_command("x=1&cmd=echo+a++b"), ["echo", "a", "", "b"]);
        assert!(run_command("command=ls").is_empty());
    }

    /// Found by fuzzing (tests/fuzz/regressions/kubelet_request): the API
    /// took any sinceSeconds up to i64::MAX, and the device refused the
    /// request as invalid one round trip later. More than a device takes is
    /// every line, as for the kubelet.
    #[test]
    fn a_since_beyond_what_a_device_takes_is_every_line() {
        use crate::model::validate::Validate;
        for q in [
            "sinceSeconds=23079245013099471",
            "sinceSeconds=9223372036854775807",
        ] {
            let q = parse_log_query(q).expect("valid");
            assert_eq!(q.since_seconds, Some(MAX_SINCE_SECONDS));
            let request = LogRequest {
                request_id: "0123456789abcdef0123456789abcdef".into(),
                namespace: "default".into(),
                pod: "sensor".into(),
                container: Some("app".into()),
                tail_lines: q.tail_lines,
                follow: q.follow,
                previous: q.previous,
                timestamps: q.timestamps,
                since_seconds: q.since_seconds,
                limit_bytes: q.limit_bytes,
            };
            assert_eq!(request.validate(), Ok(()));
        }
        let q = parse_log_query("sinceSeconds=3600").expect("valid");
        assert_eq!(q.since_seconds, Some(3600));
    }
}
