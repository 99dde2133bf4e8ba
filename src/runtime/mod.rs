//! Runtimes behind one trait: what the supervisor needs to run a pod's
//! containers, whatever runs them (Wasm inside the agent, or CRI).
//!
//! A runtime owns nothing about restarts or status: it starts a container,
//! reports how it ended and stops it on request. Decisions stay in
//! `agent::pod_machine`.

#[cfg(feature = "wasm")]
pub mod cpu_quota;
#[cfg(feature = "cri")]
pub mod cri;
pub mod digest;
pub mod disk_usage;
/// Test builds only: the controller's in-process tests run pods on it.
#[cfg(test)]
pub mod fake;
pub mod image_ref;
pub mod logs;
pub mod module_source;
pub mod registry_auth;
pub mod volumes;
#[cfg(feature = "wasm")]
pub mod wasm;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::model::{Container, Event, EventType, ExecOutput, PodSpec, Usage};

/// Container usage by container id, exactly as in
/// `ContainerStatus.container_id` (`containerd://…`, `wasm://…`). A list,
/// not a map: a device runs few containers, and one more map type costs
/// its build kilobytes.
pub type UsageMap = Vec<(String, Usage)>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a container could not be created or started. `reason()` is the
/// kubelet's word for it, shown as the container's waiting reason.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The image (module) could not be fetched or verified.
    #[error("{0}")]
    ImagePull(String),
    /// The image is not present and the pull policy is Never.
    #[error("{0}")]
    ImageNeverPull(String),
    /// The pod's sandbox (network, cgroup) could not be created.
    #[error("{0}")]
    Sandbox(String),
    /// The image is invalid for this runtime (not a Wasm module, …).
    #[error("{0}")]
    InvalidImage(String),
    /// The container's configuration cannot be applied (bad volume, …).
    #[error("{0}")]
    CreateConfig(String),
    /// Creating or starting failed for another reason.
    #[error("{0}")]
    Create(String),
    /// The runtime this pod asks for is not available on this node.
    #[error("{0}")]
    Unavailable(String),
}

impl RuntimeError {
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImagePull(_) => "ErrImagePull",
            RuntimeError::ImageNeverPull(_) => "ErrImageNeverPull",
            RuntimeError::Sandbox(_) => "CreatePodSandboxError",
            RuntimeError::InvalidImage(_) => "InvalidImageName",
            RuntimeError::CreateConfig(_) => "CreateContainerConfigError",
            RuntimeError::Create(_) => "CreateContainerError",
            RuntimeError::Unavailable(_) => "RuntimeUnavailable",
        }
    }
}

/// How a container ended, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    pub exit_code: i32,
    /// `OOMKilled` and the like; None lets the exit code decide.
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// Where a runtime reports what happens to a pod (image pulls …) as
/// Kubernetes-style events; the controller publishes them.
#[derive(Debug, Clone, Default)]
pub struct EventSink(Option<tokio::sync::mpsc::UnboundedSender<Event>>);

impl EventSink {
    pub fn new(tx: tokio::sync::mpsc::UnboundedSender<Event>) -> Self {
        EventSink(Some(tx))
    }

    pub fn emit(
        &self,
        pod: &PodSpec,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Event {
                namespace: Some(pod.namespace.clone()),
                pod: Some(pod.name.clone()),
                container: container.map(str::to_string),
                kind,
                reason: reason.into(),
                message,
                timestamp_ms: crate::model::now_ms(),
            });
        }
    }
}

/// Everything a runtime needs to know about the pod a container belongs to.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub spec: PodSpec,
    /// `{data_dir}/pods/{namespace}_{name}_{uid}`: volumes and logs live here.
    pub pod_dir: PathBuf,
    /// Events about this pod (pulls, failures).
    pub events: EventSink,
    /// The data path's handle for this pod, which the Wasm runtime gives
    /// components as `kedge:data/publish` (`agent::data::DataPath::publisher`;
    /// a node without a data path gives one that says so); None where
    /// nothing runs (a prefetch).
    #[cfg(feature = "data")]
    pub data: Option<std::sync::Arc<dyn crate::data::publish::PodPublisher>>,
}

impl PodContext {
    pub fn log_path(&self, container: &str, restart_count: u32) -> PathBuf {
        logs::container_log_path(&self.pod_dir, container, restart_count)
    }
}

/// A started container.
pub struct RunningContainer {
    pub container_id: String,
    pub image_id: String,
    /// Resolves once with how the container ended (also after `stop`).
    pub exited: oneshot::Receiver<ExitStatus>,
    /// Asks the container to stop within the grace period.
    pub stop: StopHandle,
    /// Found running (or exited) from before an agent restart rather than
    /// started now: its restart count does not change.
    pub adopted: bool,
}

/// Asks a running container to stop. Dropping it does not stop anything.
pub struct StopHandle {
    tx: Option<oneshot::Sender<Duration>>,
}

impl StopHandle {
    pub fn new() -> (StopHandle, oneshot::Receiver<Duration>) {
        let (tx, rx) = oneshot::channel();
        (StopHandle { tx: Some(tx) }, rx)
    }

    /// Whether a stop was requested already (or the request moved out).
    pub fn requested(&self) -> bool {
        self.tx.is_none()
    }

    /// This handle's request, moved out (a pre-stop hook runs before it is
    /// made); this one asks nothing any more.
    pub fn take(&mut self) -> StopHandle {
        StopHandle { tx: self.tx.take() }
    }

    /// Requests a stop; the container is killed after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(grace);
        }
    }
}

/// A way of running containers.
pub trait Runtime: Send + Sync {
    /// `wasm`, `cri`: also the `runtime` field of tracing spans.
    fn name(&self) -> &'static str;
    /// Reported as the node's containerRuntimeVersion.
    fn version(&self) -> String;
    /// Prepares what a pod's containers share (volumes, a sandbox).
    fn prepare_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Creates and starts one container; `restart_count` names its log file.
    fn start_container<'a>(
        &'a self,
        pod: &'a PodContext,
        container: &'a Container,
        restart_count: u32,
    ) -> BoxFuture<'a, Result<RunningContainer, RuntimeError>>;
    /// Removes what `prepare_pod` made, once every container has stopped.
    fn cleanup_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, ()>;
    /// Runs a command in a running container (exec probes, the exec RPC);
    /// returns its exit code and its stdout and stderr, whole (the caller
    /// bounds them; `truncated` is false).
    fn exec_sync<'a>(
        &'a self,
        _container_id: &'a str,
        _command: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, RuntimeError>> {
        let name = self.name();
        Box::pin(async move {
            Err(RuntimeError::Unavailable(format!(
                "the {name} runtime cannot run exec probes"
            )))
        })
    }
    /// The URL of the runtime's streaming server for `exec` in a running
    /// container: CRI `Exec`, or `Attach` when its command is empty (one
    /// use, short-lived; `agent::stream_rpc` connects to it).
    fn stream_url<'a>(
        &'a self,
        _container_id: &'a str,
        _exec: &'a crate::model::StreamExec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        let name = self.name();
        Box::pin(async move {
            Err(RuntimeError::Unavailable(format!(
                "the {name} runtime cannot exec or attach"
            )))
        })
    }
    /// The pod's own address once `prepare_pod` succeeded; None: the node's.
    fn pod_ip(&self, _pod: &PodContext) -> Option<String> {
        None
    }
    /// Brings everything a pod needs before it can start (images, modules
    /// compiled to the cache) without starting anything, so a running
    /// revision is stopped only once its successor can start. The error is
    /// the one `start_container` would give (`ErrImagePull`, …).
    fn prefetch<'a>(&'a self, _pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    /// Removes workloads of pods that are not desired any more (after an
    /// agent restart, once the desired set is loaded from the store).
    fn remove_orphans<'a>(&'a self, _desired_uids: Vec<String>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// The usage of the containers this runtime runs now (the stats RPC),
    /// keyed by container id; a container it cannot measure is absent.
    fn container_usage(&self) -> BoxFuture<'_, Result<UsageMap, RuntimeError>> {
        Box::pin(async { Ok(UsageMap::new()) })
    }
    /// The bytes in the writable layer of each of these running containers
    /// (ids as in `ContainerStatus.container_id`) that the runtime measured
    /// (CRI `ContainerStats.writable_layer`; the eviction checks). Default:
    /// none, a runtime without writable layers (a Wasm module has none).
    fn writable_layers(
        &self,
        _container_ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Makes the pod's volume directories under `{pod_dir}/volumes`: emptyDir
/// directories (a tmpfs for `medium: Memory`, `volumes::mount_memory_volume`)
/// and configMap/secret files (hostPath is checked before each container
/// starts, `container_to_start`). Both runtimes call it from `prepare_pod`.
pub fn materialize_volumes(pod: &PodContext) -> Result<(), RuntimeError> {
    for v in &pod.spec.volumes {
        materialize_volume(&pod.pod_dir, &pod.spec, v)?;
    }
    Ok(())
}

/// Writes the file volumes of `spec` (configMap, secret, downwardAPI,
/// projected) again under `pod_dir`, in place: a new generation that
/// changed only their contents (`agent::decide::Decision::UpdateInPlace`).
/// The running containers see every new file at once (the atomic swap of
/// `volumes::write_volume_files`), as after a kubelet's sync; a `subPath`
/// mount keeps the file it was given, as in Kubernetes.
pub fn update_file_volumes(
    pod_dir: &std::path::Path,
    spec: &crate::model::PodSpec,
) -> Result<(), RuntimeError> {
    for v in &spec.volumes {
        if matches!(v.source, crate::model::VolumeSource::Files { .. }) {
            materialize_volume(pod_dir, spec, v)?;
        }
    }
    Ok(())
}

fn materialize_volume(
    pod_dir: &std::path::Path,
    spec: &crate::model::PodSpec,
    v: &crate::model::Volume,
) -> Result<(), RuntimeError> {
    let dir = pod_dir.join("volumes").join(&v.name);
    let made = match &v.source {
        crate::model::VolumeSource::HostPath { .. } => Ok(()),
        crate::model::VolumeSource::EmptyDir {
            memory: true,
            size_limit_bytes,
        } => {
            volumes::mount_memory_volume(&dir, volumes::memory_volume_size(spec, *size_limit_bytes))
        }
        crate::model::VolumeSource::EmptyDir { .. } => std::fs::create_dir_all(&dir),
        crate::model::VolumeSource::Claim { claim, .. } => {
            std::fs::create_dir_all(volumes::claim_dir(pod_dir, &spec.namespace, claim))
        }
        crate::model::VolumeSource::Files {
            files,
            default_mode,
        } => volumes::write_volume_files(&dir, files, *default_mode),
    };
    // The pod's fsGroup owns what the agent made for it (not a hostPath):
    // read-write for an emptyDir and a claim, read-only for files.
    let made = match (&v.source, spec.security.fs_group) {
        (crate::model::VolumeSource::HostPath { .. }, _) | (_, None) => made,
        (crate::model::VolumeSource::Claim { claim, .. }, Some(group)) => made.and_then(|()| {
            let dir = volumes::claim_dir(pod_dir, &spec.namespace, claim);
            volumes::set_volume_ownership(&dir, group as u32, false)
        }),
        (source, Some(group)) => made.and_then(|()| {
            let read_only = matches!(source, crate::model::VolumeSource::Files { .. });
            volumes::set_volume_ownership(&dir, group as u32, read_only)
        }),
    };
    made.map_err(|e| RuntimeError::CreateConfig(format!("cannot set up volume {:?}: {e}", v.name)))
}

/// The container as the runtime must start it, checked as the kubelet does
/// before a start: every hostPath volume of the pod against its type (the
/// `*OrCreate` types made), then `$(VAR)` expanded in env, command and args
/// (`model::expansion`), env status fields with `addresses`. The supervisor
/// calls it before every start, for both runtimes; a failed check is a
/// `CreateContainerConfigError`, retried with the restart back-off like the
/// kubelet's volume set-up.
pub fn container_to_start(
    pod: &PodContext,
    container: &Container,
    addresses: &crate::model::expansion::Addresses,
) -> Result<Container, RuntimeError> {
    volumes::check_host_paths(&pod.spec).map_err(RuntimeError::CreateConfig)?;
    Ok(crate::model::expansion::expand_container(
        container, addresses,
    ))
}

/// The host file a container run may write its termination message to:
/// `{pod_dir}/containers/{name}/{run}.termination-log`. The CRI runtime
/// makes it and mounts it at the container's `terminationMessagePath`, as
/// the kubelet does; a Wasm module has none.
pub fn termination_log_path(
    pod_dir: &std::path::Path,
    container: &str,
    run: u32,
) -> std::path::PathBuf {
    pod_dir
        .join("containers")
        .join(container)
        .join(format!("{run}.termination-log"))
}

/// The most of a termination message file that is read (its end), and of
/// the log when `FallbackToLogsOnError` reads it instead: the last 80 lines,
/// of which the last 2048 bytes (the kubelet's limits).
const TERMINATION_MESSAGE_BYTES: usize = 4096;
const TERMINATION_LOG_LINES: u64 = 80;
const TERMINATION_LOG_BYTES: usize = 2048;

/// The message of a container run that ended, the kubelet's way: the
/// runtime's own message, then (after `": "`) what the container wrote to
/// its termination message file (`file`: its last 4096 bytes, None when
/// there is none), or with `fallback_to_logs` and a failure, the end of its
/// log when the file is empty. Pure; `log` reads the log when needed.
pub fn termination_message(
    runtime_message: Option<String>,
    file: Option<Vec<u8>>,
    fallback_to_logs: bool,
    exit_code: i32,
    log: impl FnOnce() -> Vec<u8>,
) -> Option<String> {
    let mut written = file.unwrap_or_default();
    if written.is_empty() && fallback_to_logs && exit_code != 0 {
        written = log();
        written.drain(..written.len().saturating_sub(TERMINATION_LOG_BYTES));
    }
    if written.is_empty() {
        return runtime_message;
    }
    let written = String::from_utf8_lossy(&written);
    Some(match runtime_message {
        Some(m) if !m.is_empty() => format!("{m}: {written}"),
        _ => written.into_owned(),
    })
}

/// `termination_message` for a container run of `pod_dir` whose log is
/// `log_path`, reading the files.
pub fn read_termination_message(
    runtime_message: Option<String>,
    file: &std::path::Path,
    log_path: &std::path::Path,
    fallback_to_logs: bool,
    exit_code: i32,
) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let written = std::fs::File::open(file).ok().and_then(|mut f| {
        let len = f.metadata().ok()?.len();
        let from = len.saturating_sub(TERMINATION_MESSAGE_BYTES as u64);
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut bytes = Vec::new();
        f.take(TERMINATION_MESSAGE_BYTES as u64)
            .read_to_end(&mut bytes)
            .ok()?;
        Some(bytes)
    });
    termination_message(
        runtime_message,
        written,
        fallback_to_logs,
        exit_code,
        || {
            let opts = logs::ReadOptions {
                tail_lines: Some(TERMINATION_LOG_LINES),
                ..Default::default()
            };
            logs::read_log(log_path, 1, &opts)
                .map(|(bytes, _)| bytes)
                .unwrap_or_default()
        },
    )
}

/// Makes a runtime.
pub type MakeRuntime = Box<dyn FnOnce() -> anyhow::Result<std::sync::Arc<dyn Runtime>> + Send>;

/// A runtime made on first use, so an agent with no pod of that kind does
/// not pay for it (wasmtime's engine and linkers are most of an idle
/// agent's memory).
pub struct LazyRuntime {
    make: Option<MakeRuntime>,
    made: Option<std::sync::Arc<dyn Runtime>>,
    failed: Option<String>,
}

impl LazyRuntime {
    pub fn new(make: MakeRuntime) -> Self {
        LazyRuntime {
            make: Some(make),
            made: None,
            failed: None,
        }
    }

    /// The runtime, made now if needed; the error says why it cannot be.
    pub fn get(&mut self) -> Result<std::sync::Arc<dyn Runtime>, String> {
        if let Some(r) = &self.made {
            return Ok(r.clone());
        }
        if let Some(make) = self.make.take() {
            match make() {
                Ok(r) => {
                    self.made = Some(r.clone());
                    return Ok(r);
                }
                Err(e) => self.failed = Some(format!("{e:#}")),
            }
        }
        Err(self.failed.clone().unwrap_or_default())
    }

    /// The runtime if it was made already (never makes it).
    pub fn made(&self) -> Option<std::sync::Arc<dyn Runtime>> {
        self.made.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_log() -> Vec<u8> {
        panic!("the log is not read")
    }

    /// The kubelet's `getTerminationMessage` and its enrichment of the
    /// runtime's message.
    #[test]
    fn termination_messages_come_from_the_file_then_the_log() {
        let msg = |s: &str| Some(s.to_string());
        // The file, after the runtime's own message.
        assert_eq!(
            termination_message(None, Some(b"bye".to_vec()), false, 1, no_log),
            msg("bye")
        );
        assert_eq!(
            termination_message(msg("OOM"), Some(b"bye".to_vec()), true, 137, no_log),
            msg("OOM: bye")
        );
        // An empty or missing file: the runtime's message alone, unless
        // the policy falls back to the log of a failed run.
        assert_eq!(
            termination_message(msg("x"), Some(vec![]), false, 1, no_log),
            msg("x")
        );
        assert_eq!(termination_message(None, None, true, 0, no_log), None);
        assert_eq!(
            termination_message(None, None, true, 2, || b"line 1\nline 2\n".to_vec()),
            msg("line 1\nline 2\n")
        );
        // Of the log, the last 2048 bytes.
        let long: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
        let got =
            termination_message(None, Some(vec![]), true, 1, || long.clone()).expect("a message");
        assert_eq!(got.as_bytes(), &long[3000 - 2048..]);
    }

    #[test]
    fn termination_message_files_are_read_from_their_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = termination_log_path(dir.path(), "app", 2);
        assert!(file.ends_with("containers/app/2.termination-log"));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        let mut written = vec![b'x'; 5000];
        written.extend_from_slice(b"the end");
        std::fs::write(&file, &written).expect("write");
        let got = read_termination_message(None, &file, &dir.path().join("none.log"), true, 1)
            .expect("a message");
        assert_eq!(got.len(), 4096);
        assert!(got.ends_with("the end"));
    }
}
