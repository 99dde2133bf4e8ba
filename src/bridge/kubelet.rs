//! The kubelet API the apiserver calls for the bridge's nodes (HTTPS,
//! rustls): `/containerLogs/{ns}/{pod}/{container}` tunnelled to the device
//! over the MQTT log RPC, `/healthz`, and `/metrics` (the bridge's own
//! counters). Every connection must present a client certificate signed by
//! the configured CA (the apiserver's `--kubelet-client-certificate`), as the
//! kubelet does with `--client-ca-file`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use super::mqtt_link::MqttLink;
use super::writer::WriteStats;
use crate::model::LogRequest;

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
    /// The fleet gauges (`kedge_fleet_*`), rendered by the bridge's loop on
    /// every tick.
    pub fleet_metrics: Arc<std::sync::Mutex<String>>,
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, ctx: Arc<Ctx>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
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
        tokio::spawn(
            async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(error = %e, "kubelet API: TLS handshake refused");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                });
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
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
            "sinceSeconds" => out.since_seconds = Some(num("sinceSeconds")?),
            "limitBytes" => out.limit_bytes = Some(num("limitBytes")?),
            _ => {}
        }
    }
    Ok(out)
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/healthz" => return text(StatusCode::OK, "ok"),
        "/metrics" => {
            let s = &ctx.stats;
            let fleets = ctx
                .fleet_metrics
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            return text(
                StatusCode::OK,
                format!(
                    "kedge_bridge_api_requests_total {}\nkedge_bridge_api_errors_total {}\nkedge_bridge_api_coalesced_total {}\nkedge_bridge_fleet_status_writes_total {}\n{fleets}",
                    s.requests.load(Ordering::Relaxed),
                    s.errors.load(Ordering::Relaxed),
                    s.coalesced.load(Ordering::Relaxed),
                    s.fleet_status_writes.load(Ordering::Relaxed),
                ),
            );
        }
        _ => {}
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let query = match parse_log_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    container_logs(ctx, ns, pod, container, query)
        .instrument(info_span!("container_logs", %ns, %pod, %container))
        .await
}

async fn container_logs(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    q: LogQuery,
) -> Response<Body> {
    let node = ctx
        .pods
        .get(&ObjectRef::new(pod).within(ns))
        .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
    let Some(node) = node else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pods \"{pod}\" not found in namespace \"{ns}\"\n"),
        );
    };
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
    let mut stream = match ctx.mqtt.logs(&node, request).await {
        Ok(s) => s,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let first = match tokio::time::timeout(FIRST_CHUNK_TIMEOUT, stream.recv()).await {
        Ok(Some(c)) => c,
        Ok(None) => return text(StatusCode::SERVICE_UNAVAILABLE, "the log stream ended\n"),
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "node {node} did not answer within {FIRST_CHUNK_TIMEOUT:?} (is it online?)\n"
                ),
            );
        }
    };
    if let Some(e) = &first.error
        && first.data.is_empty()
    {
        let status = if e.contains("not found") || e.contains("unknown") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        return text(status, format!("{e}\n"));
    }
    let done = first.eof || first.error.is_some();
    let head = Bytes::from(first.data);
    let body = futures_util::stream::unfold(
        (Some(head), stream, done),
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
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
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
}
