//! Containers through a CRI runtime (containerd, CRI-O) over its gRPC unix
//! socket, doing for each pod what the kubelet does: RunPodSandbox (CNI or
//! the host's network), PullImage per imagePullPolicy with the pod's
//! registry credentials, Create/StartContainer, exit watching, StopContainer
//! with the grace period, StopPodSandbox/RemovePodSandbox.
//!
//! Adoption: every sandbox and container carries kedge's labels
//! (`spec::LABEL_*`). After an agent restart `prepare_pod` finds the pod's
//! ready sandbox by its uid, and `start_container` finds the container of
//! that name that this process has not seen yet and hands it back marked
//! `adopted` (running, or already exited), so nothing healthy is recreated.
//! `remove_orphans` removes kedge sandboxes of pods no longer desired; the
//! controller calls it only once the desired set is loaded from the store.

pub mod dns;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    BoxFuture, ExitStatus, PodContext, RunningContainer, Runtime, RuntimeError, StopHandle,
    UsageMap,
};
use crate::model::{Container, EventType, PullPolicy, Usage};

/// How often a running container's state is polled (containerd 1.6 has no
/// container event stream in CRI).
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct CriOptions {
    /// `unix:///run/containerd/containerd.sock` or a bare path.
    pub endpoint: String,
    /// Each pod's cgroup is `{cgroup_parent}/pod{uid}`.
    pub cgroup_parent: String,
    /// Deadline of one CRI call.
    pub timeout: Duration,
    /// This node's name, a label on every sandbox.
    pub node: String,
    /// The node's seccomp default and Localhost profile directory.
    pub profiles: spec::ProfileSettings,
    /// The node's resolver configuration, which a pod with `dnsPolicy:
    /// Default` (or `ClusterFirst`, falling back) gets (the kubelet's
    /// `--resolv-conf`).
    pub resolv_conf: PathBuf,
}

/// A pod's sandbox as this process knows it.
#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    config: cri::PodSandboxConfig,
    ip: Option<String>,
    /// Found running at start rather than made by this process: its
    /// containers may be adopted.
    adopted: bool,
}

pub struct CriRuntime {
    opts: CriOptions,
    channel: Channel,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// `containerd://1.6.20`, once `Version` answered.
    version: Mutex<String>,
    /// Sandboxes by pod uid; an entry lives from prepare_pod to cleanup_pod.
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    /// Container ids this process made or adopted; adoption never picks them.
    known: Mutex<HashSet<String>>,
    /// Per (pod uid, container name): its containers, oldest first; all but
    /// the last two are removed (the previous one keeps `--previous` logs).
    history: Mutex<HashMap<(String, String), Vec<String>>>,
}

/// How many more status reads (`POLL` apart: 5 s) a container killed with
/// SIGKILL that the agent did not stop gets before its exit is reported:
/// containerd 1.6 may handle the task's exit before its OOM event, and then
/// says `Error` until the OOM event turns it into `OOMKilled` (on a loaded
/// 2-core machine, more than a second later). The first read that says
/// `OOMKilled` ends the wait. What no wait can mend: on cgroup v1 the shim
/// arms its OOM watch only after the task has started, so a process killed
/// in its first milliseconds stays `Error` (as the kubelet reports it too).
const OOM_EVENT_READS: u32 = 25;

/// Where a channel's connections go.
#[derive(Clone)]
pub(crate) enum Dial {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A gRPC channel that connects on first use to `dial`: the CRI socket, or
/// a pod's port for a gRPC probe. One connector type for every channel the
/// agent makes, so tonic's connection code is compiled once (its own TCP
/// connector and DNS resolver would add tens of kB to device builds).
pub(crate) fn lazy_channel(endpoint: Endpoint, dial: Dial) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        async move {
            let io: Box<dyn Io> = match dial {
                Dial::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                Dial::Tcp(addr) => {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp)
                }
            };
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    }))
}

/// The one unary gRPC call the agent makes besides k8s-cri's generated
/// client (the stats, exec and attach calls, gRPC health checks): `request`
/// encoded, the answer decoded as `Resp` (a type of just the fields read),
/// through one codec of bytes, so tonic's call and decoding code is compiled
/// once for all of them rather than once per message type (kilobytes of a
/// device build each).
pub(crate) async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
    channel: Channel,
    path: &'static str,
    request: Req,
) -> Result<Resp, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = grpc
        .unary(
            tonic::Request::new(request.encode_to_vec()),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            raw::Codec,
        )
        .await?
        .into_inner();
    Resp::decode(answer.as_slice()).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// A codec of encoded messages: bytes in, bytes out.
mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub(super) struct Codec;
    pub(super) struct Bytes;

    impl tonic::codec::Codec for Codec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Bytes;
        type Decoder = Bytes;
        fn encoder(&mut self) -> Bytes {
            Bytes
        }
        fn decoder(&mut self) -> Bytes {
            Bytes
        }
    }

    impl Encoder for Bytes {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Bytes {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let mut item = vec![0; src.remaining()];
            src.copy_to_slice(&mut item);
            Ok(Some(item))
        }
    }
}

fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

impl CriRuntime {
    /// Makes the client; the socket is connected on first use, so the agent
    /// starts even while the container runtime is still coming up.
    pub fn new(opts: CriOptions) -> Result<CriRuntime, RuntimeError> {
        let path = socket_path(&opts.endpoint);
        let endpoint = Endpoint::from_static("http://[::1]:0")
            .connect_timeout(Duration::from_secs(5))
            .timeout(opts.timeout);
        let channel = lazy_channel(endpoint, Dial::Unix(path));
        Ok(CriRuntime {
            // ExecSync answers with a command's whole output: up to
            // containerd's own bound (16 MiB a stream, 16 MiB a message),
            // not tonic's default 4 MiB, so the exec RPC cuts long output
            // to its bound instead of failing on it.
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
            images: ImageServiceClient::new(channel.clone()),
            channel,
            opts,
            version: Mutex::new(String::new()),
            sandboxes: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
            history: Mutex::new(HashMap::new()),
        })
    }

    /// Asks the runtime for its name and version (`containerd://1.6.20`).
    pub async fn query_version(&self) -> Result<String, RuntimeError> {
        let v = self
            .runtime
            .clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|s| self.status_error("Version", s))?
            .into_inner();
        let version = format!("{}://{}", v.runtime_name, v.runtime_version);
        if let Ok(mut g) = self.version.lock() {
            *g = version.clone();
        }
        Ok(version)
    }

    /// A failed CRI call as the kubelet would word it: an unreachable
    /// runtime is `RuntimeUnavailable`, anything else names the call.
    /// CRI `ListContainerStats` of the containers kedge manages, through
    /// `unary` rather than k8s-cri's client: the reply is decoded as
    /// `StatsList`, only the fields read here.
    async fn list_stats(&self) -> Result<Vec<Stats>, RuntimeError> {
        let filter = cri::ContainerStatsFilter {
            label_selector: [(spec::LABEL_MANAGED.to_string(), "true".to_string())].into(),
            ..Default::default()
        };
        let request = cri::ListContainerStatsRequest {
            filter: Some(filter),
        };
        let path = "/runtime.v1.RuntimeService/ListContainerStats";
        Ok(unary::<_, StatsList>(self.channel.clone(), path, request)
            .await
            .map_err(|s| self.status_error("ListContainerStats", s))?
            .stats)
    }

    fn status_error(&self, call: &str, s: tonic::Status) -> RuntimeError {
        let transport = s.code() == tonic::Code::Unavailable
            || (s.code() == tonic::Code::Unknown && s.message().contains("transport"));
        if transport {
            RuntimeError::Unavailable(format!(
                "cannot reach the container runtime at {}: {}",
                self.opts.endpoint,
                s.message()
            ))
        } else {
            RuntimeError::Create(format!("{call}: {}", s.message()))
        }
    }

    fn sandbox(&self, uid: &str) -> Option<Sandbox> {
        self.sandboxes.lock().ok()?.get(uid).cloned()
    }

    /// Makes the pod's volume directories and its log directory.
    fn materialize(&self, pod: &PodContext) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(spec::log_directory(&pod.pod_dir)).map_err(|e| {
            RuntimeError::CreateConfig(format!("cannot create the pod's log directory: {e}"))
        })?;
        super::materialize_volumes(pod)
    }

    /// The pod's sandboxes that kedge made, any state.
    async fn sandboxes_of(&self, uid: &str) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        self.managed_sandboxes(spec::LABEL_POD_UID, uid).await
    }

    /// Sandboxes that kedge made with one more label, any state.
    async fn managed_sandboxes(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let selector = HashMap::from([
            (spec::LABEL_MANAGED.to_string(), "true".to_string()),
            (label.to_string(), value.to_string()),
        ]);
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: selector,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| self.status_error("ListPodSandbox", s))?
            .into_inner()
            .items)
    }

    async fn sandbox_ip(&self, id: &str) -> Option<String> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .ok()?
            .into_inner()
            .status?;
        status.network.map(|n| n.ip).filter(|ip| !ip.is_empty())
    }

    async fn remove_sandbox(&self, id: &str) {
        let mut rt = self.runtime.clone();
        if let Err(e) = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
        {
            warn!(sandbox = %id, error = %e.message(), "cannot stop sandbox");
        }
        if let Err(e) = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
        {
            warn!(sandbox = %id, error = %e.message(), "cannot remove sandbox");
        }
    }

    /// `runAsNonRoot` without a `runAsUser`: the image's user, as the
    /// kubelet checks it (`spec::verify_run_as_non_root`).
    async fn verify_run_as_non_root(
        &self,
        pod: &PodContext,
        container: &Container,
        image_id: &str,
    ) -> Result<(), RuntimeError> {
        let image = self.image_status(image_id).await?.unwrap_or_default();
        let pod_name = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        spec::verify_run_as_non_root(
            image.uid.map(|u| u.value),
            &image.username,
            &pod_name,
            &container.name,
        )
        .map_err(RuntimeError::CreateConfig)
    }

    /// The runtime's record of `image` (a reference or an id), if it has it.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, RuntimeError> {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .images
            .clone()
            .image_status(request)
            .await
            .map_err(|s| self.status_error("ImageStatus", s))?
            .into_inner()
            .image)
    }

    /// Makes sure the image is there per the pull policy; returns its id.
    async fn ensure_image(
        &self,
        pod: &PodContext,
        container: &Container,
        sandbox: Option<&cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        let image = &container.image;
        let present = if container.image_pull_policy == PullPolicy::Always {
            None
        } else {
            self.image_status(image).await?.map(|i| i.id)
        };
        if let Some(id) = present {
            return Ok(id);
        }
        if container.image_pull_policy == PullPolicy::Never {
            return Err(RuntimeError::ImageNeverPull(format!(
                "container image \"{image}\" is not present with pull policy of Never"
            )));
        }
        let credentials =
            super::registry_auth::credentials_for(image, &pod.spec.image_pull_secrets);
        let mut attempts: Vec<Option<cri::AuthConfig>> = credentials
            .into_iter()
            .map(|c| {
                Some(cri::AuthConfig {
                    username: c.username,
                    password: c.password,
                    // containerd 1.6 parses this as a URL and refuses
                    // `host:port`; the credential already matches the
                    // image's registry, so it is left empty.
                    server_address: String::new(),
                    ..Default::default()
                })
            })
            .collect();
        if attempts.is_empty() {
            attempts.push(None);
        }
        let mut last = String::new();
        pod.events.emit(
            &pod.spec,
            Some(&container.name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let started = std::time::Instant::now();
        for auth in attempts {
            match self
                .images
                .clone()
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: sandbox.cloned(),
                })
                .await
            {
                Ok(r) => {
                    let took = started.elapsed();
                    info!(image = %image, took_ms = took.as_millis() as u64, "pulled image");
                    pod.events.emit(
                        &pod.spec,
                        Some(&container.name),
                        EventType::Normal,
                        "Pulled",
                        format!("Successfully pulled image \"{image}\" in {took:.3?}"),
                    );
                    return Ok(r.into_inner().image_ref);
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    return Err(self.status_error("PullImage", s));
                }
                Err(s) => last = s.message().to_string(),
            }
        }
        let message = format!("failed to pull image \"{image}\": {last}");
        pod.events.emit(
            &pod.spec,
            Some(&container.name),
            EventType::Warning,
            "Failed",
            format!("Failed to pull image \"{image}\": {last}"),
        );
        Err(RuntimeError::ImagePull(message))
    }

    /// A container of this pod and name that another agent process made:
    /// the newest one not seen by this process.
    async fn adoptable(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<Option<cri::Container>, RuntimeError> {
        let mut selector = HashMap::new();
        selector.insert(spec::LABEL_CONTAINER.to_string(), name.to_string());
        let list = self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox_id.into(),
                    label_selector: selector,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| self.status_error("ListContainers", s))?
            .into_inner()
            .containers;
        let known = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        Ok(list
            .into_iter()
            .filter(|c| !known.contains(&c.id))
            .filter(|c| c.state != cri::ContainerState::ContainerCreated as i32)
            .max_by_key(|c| c.created_at))
    }

    /// Records a new container of (uid, name) and removes all but the
    /// newest two.
    async fn remember(&self, uid: &str, name: &str, id: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.insert(id.to_string());
        }
        let old: Vec<String> = match self.history.lock() {
            Ok(mut h) => {
                let ids = h.entry((uid.into(), name.into())).or_default();
                ids.push(id.into());
                let extra = ids.len().saturating_sub(2);
                ids.drain(..extra).collect()
            }
            Err(_) => Vec::new(),
        };
        for id in old {
            let _ = self
                .runtime
                .clone()
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            if let Ok(mut k) = self.known.lock() {
                k.remove(&id);
            }
        }
    }

    /// Watches a container until it exits (or is stopped), then reports how.
    fn watch(
        &self,
        container_id: String,
        exit_tx: oneshot::Sender<ExitStatus>,
        mut stop_rx: oneshot::Receiver<Duration>,
    ) {
        let rt = self.runtime.clone();
        let span = info_span!("cri container", container_id = %container_id, runtime = "cri");
        crate::spawn(
            async move {
                let mut rt = rt;
                let mut tick = tokio::time::interval(POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut stopping = false;
                let mut failures = 0u32;
                // Reads of a SIGKILLed container's status left to see
                // containerd's OOM event, which may land after the exit
                // (then the reason turns from Error to OOMKilled).
                let mut oom_reads = OOM_EVENT_READS;
                loop {
                    tokio::select! {
                        grace = &mut stop_rx, if !stopping => {
                            stopping = true;
                            let grace = grace.unwrap_or(Duration::ZERO);
                            debug!(grace_s = grace.as_secs(), "stopping container");
                            if let Err(e) = rt.stop_container(cri::StopContainerRequest {
                                container_id: container_id.clone(),
                                timeout: grace.as_secs() as i64,
                            }).await {
                                warn!(error = %e.message(), "cannot stop container");
                            }
                            tick.reset_immediately();
                        }
                        _ = tick.tick() => {
                            match rt.container_status(cri::ContainerStatusRequest {
                                container_id: container_id.clone(),
                                verbose: false,
                            }).await {
                                Ok(r) => {
                                    failures = 0;
                                    let Some(s) = r.into_inner().status else { continue };
                                    if s.state == cri::ContainerState::ContainerExited as i32 {
                                        let killed = s.exit_code == 137 && s.reason != "OOMKilled";
                                        if killed && !stopping && oom_reads > 0 {
                                            oom_reads -= 1;
                                            continue;
                                        }
                                        let _ = exit_tx.send(spec::exit_status(&s));
                                        return;
                                    }
                                }
                                Err(s) if s.code() == tonic::Code::NotFound => {
                                    let _ = exit_tx.send(ExitStatus {
                                        exit_code: 137,
                                        reason: Some("ContainerStatusUnknown".into()),
                                        message: Some("the container could not be located when the pod was checked".into()),
                                    });
                                    return;
                                }
                                Err(s) => {
                                    failures += 1;
                                    if failures == 1 || failures.is_multiple_of(50) {
                                        warn!(error = %s.message(), "cannot read container status");
                                    }
                                }
                            }
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    fn running(&self, container_id: String, image_id: String, adopted: bool) -> RunningContainer {
        let (stop, stop_rx) = StopHandle::new();
        let (exit_tx, exited) = oneshot::channel();
        self.watch(container_id.clone(), exit_tx, stop_rx);
        RunningContainer {
            container_id: format!("containerd://{container_id}"),
            image_id,
            exited,
            stop,
            adopted,
        }
    }

    async fn start_inner(
        &self,
        pod: &PodContext,
        container: &Container,
        restart_count: u32,
    ) -> Result<RunningContainer, RuntimeError> {
        // No sandbox yet: `prepare_pod` failed (the runtime was down, CNI
        // was not ready …); every start retries it, with the back-off.
        if self.sandbox(&pod.spec.uid).is_none() {
            self.prepare_inner(pod).await?;
        }
        let sandbox = self
            .sandbox(&pod.spec.uid)
            .ok_or_else(|| RuntimeError::Sandbox("the pod's sandbox is not ready".into()))?;
        if sandbox.adopted
            && let Some(found) = self.adoptable(&sandbox.id, &container.name).await?
        {
            info!(container = %container.name, container_id = %found.id, "adopting container");
            self.remember(&pod.spec.uid, &container.name, &found.id)
                .await;
            return Ok(self.running(found.id, found.image_ref, true));
        }
        let image_id = self
            .ensure_image(pod, container, Some(&sandbox.config))
            .await?;
        if container.run_as_non_root {
            self.verify_run_as_non_root(pod, container, &image_id)
                .await?;
        }
        std::fs::create_dir_all(spec::log_directory(&pod.pod_dir).join(&container.name))
            .map_err(|e| RuntimeError::Create(format!("cannot create the log directory: {e}")))?;
        // The termination message file, writable by any user of the
        // container (the kubelet's mode).
        let message_file =
            crate::runtime::termination_log_path(&pod.pod_dir, &container.name, restart_count);
        make_termination_log(&message_file).map_err(|e| {
            RuntimeError::Create(format!("cannot create the termination message file: {e}"))
        })?;
        let config = spec::container_config(
            &pod.spec,
            &pod.pod_dir,
            container,
            &image_id,
            restart_count,
            &self.opts.profiles,
        )?;
        let mut rt = self.runtime.clone();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.config.clone()),
            })
            .await
            .map_err(|s| self.status_error("CreateContainer", s))?
            .into_inner()
            .container_id;
        self.remember(&pod.spec.uid, &container.name, &id).await;
        if let Err(s) = rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            return Err(self.status_error("StartContainer", s));
        }
        Ok(self.running(id, image_id, false))
    }

    async fn prepare_inner(&self, pod: &PodContext) -> Result<(), RuntimeError> {
        self.materialize(pod)?;
        if self.version().is_empty() {
            // Not up when the agent started: learn its name now.
            self.query_version().await?;
        }
        let uid = &pod.spec.uid;
        let mut config = spec::sandbox_config(
            &pod.spec,
            &pod.pod_dir,
            &self.opts.cgroup_parent,
            &self.opts.node,
        );
        let path = &self.opts.resolv_conf;
        let (dns, dns_warnings) = dns::pod_dns(&pod.spec, || std::fs::read_to_string(path))
            .map_err(|e| {
                RuntimeError::Sandbox(format!(
                    "cannot read the node's resolver configuration {}: {e}",
                    path.display()
                ))
            })?;
        config.dns_config = Some(dns);
        // Adoption: a ready sandbox of this pod from an earlier agent process.
        let existing = self.sandboxes_of(uid).await?;
        let mut adopted = None;
        for s in existing {
            if s.state == cri::PodSandboxState::SandboxReady as i32 && adopted.is_none() {
                adopted = Some(s.id);
            } else {
                self.remove_sandbox(&s.id).await;
            }
        }
        let (id, was_adopted) = match adopted {
            Some(id) => {
                info!(sandbox = %id, "adopting pod sandbox");
                (id, true)
            }
            None => {
                // What the kubelet records when it makes a sandbox's DNS.
                for (reason, message) in dns_warnings {
                    pod.events
                        .emit(&pod.spec, None, EventType::Warning, reason, message);
                }
                let id = self
                    .runtime
                    .clone()
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map_err(|s| match self.status_error("RunPodSandbox", s) {
                        RuntimeError::Create(m) => RuntimeError::Sandbox(m),
                        other => other,
                    })?
                    .into_inner()
                    .pod_sandbox_id;
                (id, false)
            }
        };
        let ip = if pod.spec.host_network {
            None
        } else {
            self.sandbox_ip(&id).await
        };
        if let Ok(mut s) = self.sandboxes.lock() {
            s.insert(
                uid.clone(),
                Sandbox {
                    id,
                    config,
                    ip,
                    adopted: was_adopted,
                },
            );
        }
        Ok(())
    }

    /// Removes the pod's cgroup directories, which containerd leaves behind.
    fn remove_pod_cgroup(&self, uid: &str) {
        let rel = spec::pod_cgroup(&self.opts.cgroup_parent, uid);
        let rel = rel.trim_start_matches('/');
        let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        roots.push(PathBuf::from("/sys/fs/cgroup"));
        for root in roots {
            let dir = root.join(rel);
            if dir.is_dir() {
                remove_cgroup_tree(&dir);
            }
        }
    }
}

/// An empty file, mode 0666, in a directory made if needed.
fn make_termination_log(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
}

fn remove_cgroup_tree(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        debug!(cgroup = %dir.display(), error = %e, "cannot remove pod cgroup");
    }
}

/// The fields of CRI's `ListContainerStatsResponse` the stats RPC reads
/// (prost skips the others: decoding k8s-cri's whole type costs a device
/// build kilobytes).
#[derive(Clone, PartialEq, prost::Message)]
struct StatsList {
    #[prost(message, repeated, tag = "1")]
    stats: Vec<Stats>,
}

/// CRI `ExecResponse` and `AttachResponse`: 1 url.
#[derive(Clone, PartialEq, prost::Message)]
struct UrlResponse {
    #[prost(string, tag = "1")]
    url: String,
}

/// `ContainerStats`: 1 attributes, 2 cpu, 3 memory, 4 writable_layer.
#[derive(Clone, PartialEq, prost::Message)]
struct Stats {
    #[prost(message, optional, tag = "1")]
    attributes: Option<Attributes>,
    #[prost(message, optional, tag = "2")]
    cpu: Option<Sample>,
    #[prost(message, optional, tag = "3")]
    memory: Option<Sample>,
    #[prost(message, optional, tag = "4")]
    writable_layer: Option<FilesystemUsage>,
}

/// `FilesystemUsage`: 3 used_bytes (the writable layer's, as the kubelet's
/// `rootfs.usedBytes`).
#[derive(Clone, PartialEq, prost::Message)]
struct FilesystemUsage {
    #[prost(message, optional, tag = "3")]
    used_bytes: Option<cri::UInt64Value>,
}

/// `ContainerAttributes`: 1 id.
#[derive(Clone, PartialEq, prost::Message)]
struct Attributes {
    #[prost(string, tag = "1")]
    id: String,
}

/// `CpuUsage` and `MemoryUsage` alike: 1 timestamp (ns), 2
/// `usage_core_nano_seconds` or `working_set_bytes`.
#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(int64, tag = "1")]
    timestamp: i64,
    #[prost(message, optional, tag = "2")]
    value: Option<cri::UInt64Value>,
}

/// The writable layer of each container of `wanted` (ids as in
/// `ContainerStatus.container_id`) that the runtime measured.
fn writable_layers_of(stats: &[Stats], wanted: &[String]) -> Vec<(String, u64)> {
    stats
        .iter()
        .filter_map(|s| {
            let id = format!("containerd://{}", s.attributes.as_ref()?.id);
            let used = s.writable_layer.as_ref()?.used_bytes.as_ref()?.value;
            wanted.contains(&id).then_some((id, used))
        })
        .collect()
}

/// One container's CRI stats as the stats RPC's usage, keyed like its
/// `ContainerStatus.container_id`, sampled when the CPU counter was read
/// (CRI timestamps are ns; now when the runtime gives none).
fn usage_of(s: &Stats) -> Option<(String, Usage)> {
    let id = &s.attributes.as_ref()?.id;
    let cpu = s.cpu.as_ref();
    let memory = s.memory.as_ref();
    let timestamp_ns = cpu.map_or(0, |c| c.timestamp);
    let timestamp_ms = u64::try_from(timestamp_ns / 1_000_000).unwrap_or(0);
    Some((
        format!("containerd://{id}"),
        Usage {
            timestamp_ms: if timestamp_ms > 0 {
                timestamp_ms
            } else {
                crate::model::now_ms()
            },
            cpu_core_ns: cpu.and_then(|c| c.value.as_ref()).map_or(0, |v| v.value),
            memory_working_set_bytes: memory.and_then(|m| m.value.as_ref()).map_or(0, |v| v.value),
        },
    ))
}

impl Runtime for CriRuntime {
    fn name(&self) -> &'static str {
        "cri"
    }

    fn version(&self) -> String {
        self.version.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn prepare_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.prepare_inner(pod))
    }

    fn exec_sync<'a>(
        &'a self,
        container_id: &'a str,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<crate::model::ExecOutput, RuntimeError>> {
        Box::pin(async move {
            let id = container_id
                .split_once("://")
                .map(|(_, id)| id)
                .unwrap_or(container_id);
            let mut request = tonic::Request::new(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: command.to_vec(),
                timeout: timeout.as_secs().max(1) as i64,
            });
            request.set_timeout(timeout + Duration::from_secs(2));
            let r = self
                .runtime
                .clone()
                .exec_sync(request)
                .await
                .map_err(|s| self.status_error("ExecSync", s))?
                .into_inner();
            Ok(crate::model::ExecOutput {
                exit_code: r.exit_code,
                stdout: r.stdout,
                stderr: r.stderr,
                truncated: false,
            })
        })
    }

    fn stream_url<'a>(
        &'a self,
        container_id: &'a str,
        exec: &'a crate::model::StreamExec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let id = container_id
                .split_once("://")
                .map(|(_, id)| id)
                .unwrap_or(container_id)
                .to_string();
            // Exec's and Attach's answers are both `{ url }`: one type.
            let url: UrlResponse = if exec.command.is_empty() {
                let request = cri::AttachRequest {
                    container_id: id,
                    stdin: exec.stdin,
                    tty: exec.tty,
                    stdout: exec.stdout,
                    stderr: exec.stderr,
                };
                unary(
                    self.channel.clone(),
                    "/runtime.v1.RuntimeService/Attach",
                    request,
                )
                .await
                .map_err(|s| self.status_error("Attach", s))?
            } else {
                let request = cri::ExecRequest {
                    container_id: id,
                    cmd: exec.command.clone(),
                    tty: exec.tty,
                    stdin: exec.stdin,
                    stdout: exec.stdout,
                    stderr: exec.stderr,
                };
                unary(
                    self.channel.clone(),
                    "/runtime.v1.RuntimeService/Exec",
                    request,
                )
                .await
                .map_err(|s| self.status_error("Exec", s))?
            };
            let url = url.url;
            Ok(url)
        })
    }

    fn pod_ip(&self, pod: &PodContext) -> Option<String> {
        self.sandbox(&pod.spec.uid).and_then(|s| s.ip)
    }

    fn prefetch<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
                self.ensure_image(pod, c, None).await?;
            }
            Ok(())
        })
    }

    fn start_container<'a>(
        &'a self,
        pod: &'a PodContext,
        container: &'a Container,
        restart_count: u32,
    ) -> BoxFuture<'a, Result<RunningContainer, RuntimeError>> {
        let span =
            info_span!("cri start", container = %container.name, restart_count, runtime = "cri");
        Box::pin(
            self.start_inner(pod, container, restart_count)
                .instrument(span),
        )
    }

    fn cleanup_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let uid = &pod.spec.uid;
            let known = self.sandboxes.lock().ok().and_then(|mut s| s.remove(uid));
            let mut ids: Vec<String> = known.into_iter().map(|s| s.id).collect();
            if let Ok(found) = self.sandboxes_of(uid).await {
                for s in found {
                    if !ids.contains(&s.id) {
                        ids.push(s.id);
                    }
                }
            }
            for id in ids {
                self.remove_sandbox(&id).await;
            }
            if let Ok(mut h) = self.history.lock() {
                h.retain(|(u, _), _| u != uid);
            }
            self.remove_pod_cgroup(uid);
        })
    }

    fn container_usage(&self) -> BoxFuture<'_, Result<UsageMap, RuntimeError>> {
        Box::pin(async move {
            Ok(self
                .list_stats()
                .await?
                .iter()
                .filter_map(usage_of)
                .collect())
        })
    }

    fn writable_layers(
        &self,
        container_ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, RuntimeError>> {
        Box::pin(async move {
            let stats = self.list_stats().await?;
            Ok(writable_layers_of(&stats, &container_ids))
        })
    }

    fn remove_orphans<'a>(&'a self, desired_uids: Vec<String>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let items = match self
                .managed_sandboxes(spec::LABEL_NODE, &self.opts.node)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    debug!(error = %e, "cannot list sandboxes for orphans");
                    return;
                }
            };
            for s in items {
                let uid = s
                    .labels
                    .get(spec::LABEL_POD_UID)
                    .cloned()
                    .unwrap_or_default();
                if desired_uids.contains(&uid) {
                    continue;
                }
                info!(sandbox = %s.id, pod_uid = %uid, "removing orphaned pod sandbox");
                self.remove_sandbox(&s.id).await;
                self.remove_pod_cgroup(&uid);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// k8s-cri's full response, encoded, read through `StatsList`.
    #[test]
    fn container_stats_map_to_the_status_id_and_the_kubelets_fields() {
        use prost::Message;
        let stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: "abc".into(),
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 2,
                }),
                labels: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: 1_700_000_000_123_456_789,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: 42_000 }),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                working_set_bytes: Some(cri::UInt64Value { value: 4096 }),
                usage_bytes: Some(cri::UInt64Value { value: 9999 }),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: 1,
                used_bytes: Some(cri::UInt64Value { value: 77 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let full = cri::ListContainerStatsResponse {
            stats: vec![stats, cri::ContainerStats::default()],
        };
        let read = StatsList::decode(full.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(read.stats.len(), 2);
        let (id, u) = usage_of(&read.stats[0]).expect("has attributes");
        assert_eq!(id, "containerd://abc");
        assert_eq!(u.timestamp_ms, 1_700_000_000_123);
        assert_eq!(u.cpu_core_ns, 42_000);
        assert_eq!(u.memory_working_set_bytes, 4096);
        assert!(usage_of(&read.stats[1]).is_none());
        let wanted = [
            "containerd://abc".to_string(),
            "containerd://gone".to_string(),
        ];
        assert_eq!(
            writable_layers_of(&read.stats, &wanted),
            [("containerd://abc".to_string(), 77)]
        );
        assert!(writable_layers_of(&read.stats, &[]).is_empty());
    }
}
