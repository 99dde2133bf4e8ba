//! The edge pod and node model: compact, runtime-neutral types that travel on
//! the wire and live in the store. No I/O here.
//!
//! These are deliberately smaller than the Kubernetes API types: they carry
//! only what a device can honour. `convert` turns Kubernetes manifests into
//! them (and is the one place that knows Kubernetes field paths).

pub mod added;
#[cfg(feature = "manifests")]
pub mod convert;
pub mod expansion;
pub mod fleet;
pub mod route;
pub mod selector;
pub mod validate;

pub use fleet::{
    Batch, Cohort, FleetDeployment, FleetPodState, FleetReport, Limit, NodeLabels, Revision,
    Rollout, RolloutPhase, RolloutPolicy, RolloutState,
};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `runtimeClassName` that selects the in-agent WebAssembly runtime.
pub const WASM_RUNTIME_CLASS: &str = "kedge-wasm";

/// Namespace and name of a pod: the identity used in topics and the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a desired pod came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodSource {
    /// A retained desired topic (bridge or `kedge apply`).
    Mqtt,
    /// A manifest in the agent's `--manifests` directory (a static pod).
    File,
    /// A fleet deployment whose selector matches this device
    /// (`{prefix}/_fleet/…`, docs/wire.md "Fleets").
    Fleet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeKind {
    /// Containers through the CRI (containerd, CRI-O).
    Container,
    /// WebAssembly modules inside the agent (`runtimeClassName: kedge-wasm`).
    Wasm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A desired spec sealed to the device's public key (`seal`; kind
/// `SealedPod`, schema version 5): what travels instead of a `PodSpec` that
/// carries Secret values, so the broker holds only ciphertext. The plaintext
/// is the `PodSpec` body in this version's encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPod {
    /// The spec's uid, in clear: an author compares it without the key.
    pub uid: String,
    /// The spec's labels, in clear (metadata, as visible as the Pod's in
    /// the cluster): an author tells its own specs from others' by them.
    pub labels: BTreeMap<String, String>,
    /// The first 8 bytes of the SHA-256 of the public key sealed to.
    pub key_id: [u8; 8],
    /// HPKE's encapsulated key.
    pub encapped_key: [u8; 32],
    /// The sealed `PodSpec` body and its 16-byte tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl SealedPod {
    /// What an author that cannot open a sealed spec knows of it, as a
    /// `PodSpec` with no containers (which no real spec equals, so a
    /// comparison with it always sends again): namespace and name from
    /// the topic, uid and labels from the envelope, the generation from
    /// its seq.
    pub fn stub(&self, pod: &PodKey, generation: u64) -> PodSpec {
        PodSpec {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: self.uid.clone(),
            generation,
            labels: self.labels.clone(),
            runtime: RuntimeKind::Wasm,
            restart_policy: RestartPolicy::Always,
            termination_grace_period_secs: 0,
            host_network: false,
            init_containers: Vec::new(),
            containers: Vec::new(),
            volumes: Vec::new(),
            image_pull_secrets: Vec::new(),
            security: PodSecurity::default(),
            routes: Vec::new(),
            dns: PodDns::default(),
        }
    }
}

/// The compact edge pod spec: what the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// The Kubernetes uid (or one made by the CLI); a new uid is a new pod.
    pub uid: String,
    /// Increases with every change of the spec; older generations are ignored.
    pub generation: u64,
    pub labels: BTreeMap<String, String>,
    pub runtime: RuntimeKind,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_secs: u64,
    pub host_network: bool,
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    /// Registry credentials (dockerconfigjson), resolved by the sender.
    pub image_pull_secrets: Vec<String>,
    /// The pod's process namespaces and groups. Schema 9 (absent in an
    /// older body: `added`).
    #[serde(deserialize_with = "added::in_v9")]
    pub security: PodSecurity,
    /// The data routes the pod declares (`kedge.io/routes`): what its
    /// containers publish to the agent's data endpoint goes to the sink
    /// (`agent::data`). Schema 10 (absent in a version-9 body: `added`).
    #[serde(deserialize_with = "added::in_v10")]
    pub routes: Vec<PodRoute>,
    /// `dnsPolicy` and `dnsConfig`: the resolver configuration of a
    /// container pod's sandbox, which the agent makes from them and the
    /// node's as the kubelet does (`runtime::cri::dns`). Schema 11 (absent
    /// in an older body: `added`, read as `ClusterFirst` with no
    /// `dnsConfig`, the default).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub dns: PodDns,
}

/// A pod's `dnsPolicy` and its `dnsConfig`, which is merged into what the
/// policy gives (the kubelet's `GetPodDNS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    pub policy: DnsPolicy,
    /// `dnsConfig.nameservers`: IP addresses, at most 3.
    pub nameservers: Vec<String>,
    /// `dnsConfig.searches`: search domains, at most 32.
    pub searches: Vec<String>,
    /// `dnsConfig.options`, as resolv.conf writes them: `name` or
    /// `name:value`.
    pub options: Vec<String>,
}

/// `dnsPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsPolicy {
    /// The cluster's DNS; a node without one (every kedge node) falls back
    /// to `Default` with a `MissingClusterDNS` warning, as the kubelet
    /// does. With the host network: `Default`, without a warning.
    #[default]
    ClusterFirst,
    /// The cluster's DNS also with the host network: as `ClusterFirst`
    /// without it.
    ClusterFirstWithHostNet,
    /// The node's resolver configuration (config `cri.resolv_conf`).
    Default,
    /// Only the pod's `dnsConfig`.
    None,
}

/// A data route a pod declares for itself (the annotation `kedge.io/routes`,
/// `model::route`): messages its containers publish to the agent's data
/// endpoint on a topic that matches `filter` go to `target` (upstream to
/// the sink, sealed, or to another pod on the node), and wait on the
/// device at most `ttl_secs` for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoute {
    /// One app container; None: every app container of the pod.
    pub container: Option<String>,
    /// An MQTT topic filter on the topic the workload publishes to.
    pub filter: String,
    /// 0: the node's `data.default_ttl_secs`.
    pub ttl_secs: u64,
    /// Where the messages go. Schema 11 (absent in a version-10 body:
    /// `added`, read as `$upstream`, the only target then).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub target: RouteTarget,
    /// `PRIORITY n`: which of the messages waiting for the broker go first
    /// (`$upstream` only; a route into a pod has the default). Schema 12
    /// (absent in an older body: `added`, read as the default, the lowest).
    #[serde(default, deserialize_with = "added::in_v12")]
    pub priority: Priority,
}

/// A data route's priority (`PRIORITY n`, as Azure IoT Edge's edgeHub has
/// it): 0 the highest to 9 the lowest, the default. Messages waiting for
/// the broker go highest priority first, each priority in the order it was
/// stored; under `data.budget_bytes` the lowest priority's oldest go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(pub u8);

impl Priority {
    pub const HIGHEST: Priority = Priority(0);
    pub const LOWEST: Priority = Priority(9);
    /// How many priorities there are (0 to 9).
    pub const LEVELS: usize = 10;
}

impl Default for Priority {
    fn default() -> Self {
        Priority::LOWEST
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a pod's route sends its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteTarget {
    /// `$upstream`: the sink, sealed, through the broker.
    #[default]
    Upstream,
    /// `pod/<name>`: the pod of that name in the declaring pod's
    /// namespace, on the same node (module-to-module).
    Pod(String),
}

impl std::fmt::Display for RouteTarget {
    /// As the grammar writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTarget::Upstream => f.write_str("$upstream"),
            RouteTarget::Pod(name) => write!(f, "pod/{name}"),
        }
    }
}

/// What a pod's processes share with the node and each other, and the
/// groups they run with: `hostPID`, `hostIPC`, `shareProcessNamespace`,
/// `securityContext.fsGroup` and `supplementalGroups` (container pods
/// only; a Wasm pod has none of these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    /// The node's PID namespace.
    pub host_pid: bool,
    /// The node's IPC namespace.
    pub host_ipc: bool,
    /// One PID namespace for the pod's containers (the sandbox's).
    pub share_process_namespace: bool,
    /// A group every container's processes have, and the group that owns
    /// the pod's emptyDir and file volumes (directories setgid, as the
    /// kubelet sets them).
    pub fs_group: Option<i64>,
    /// Groups every container's processes have.
    pub supplemental_groups: Vec<i64>,
    /// `securityContext.seLinuxOptions`: the label of the pod's sandbox
    /// (each container's is in its `SecurityContext`). Schema 11 (absent in
    /// an older body: `added`).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub se_linux_options: Option<SeLinuxOptions>,
}

/// An SELinux label (`seLinuxOptions`) for the container runtime; an empty
/// part is the runtime's default for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeLinuxOptions {
    pub user: String,
    pub role: String,
    pub r#type: String,
    pub level: String,
}

impl PodSpec {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    /// Whether `mount` is read-only in the container: as asked, always for
    /// a volume of files (configMap, secret, downwardAPI, projected), which
    /// Kubernetes mounts read-only whatever the mount says, and for a claim
    /// the pod names `readOnly`.
    pub fn mount_read_only(&self, mount: &VolumeMount) -> bool {
        mount.read_only
            || self.volumes.iter().any(|v| {
                v.name == mount.name
                    && matches!(
                        v.source,
                        VolumeSource::Files { .. }
                            | VolumeSource::Claim {
                                read_only: true,
                                ..
                            }
                    )
            })
    }
}

/// A container. `command`, `args` and env values are templates: the agent
/// expands `$(VAR)` and unescapes `$$` at container start, the kubelet's way
/// (`model::expansion`); a value that must stay literal (one read from a
/// ConfigMap, a Secret or the downward API) is sent escaped
/// (`expansion::escape`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// For Wasm: `file:///path/mod.wasm@sha256:<hex>` or `https://…@sha256:<hex>`.
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<EnvVar>,
    pub volume_mounts: Vec<VolumeMount>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub security_context: Option<SecurityContext>,
    /// `lifecycle.postStart` and `lifecycle.preStop`. Schema 9 (this and
    /// the next three: absent in an older body, `added`).
    #[serde(deserialize_with = "added::in_v9")]
    pub lifecycle: Lifecycle,
    /// `terminationMessagePath`; None: the default, `/dev/termination-log`.
    /// Schema 9.
    #[serde(deserialize_with = "added::in_v9")]
    pub termination_message_path: Option<String>,
    /// `terminationMessagePolicy: FallbackToLogsOnError` (false: `File`).
    /// Schema 9.
    #[serde(deserialize_with = "added::in_v9")]
    pub termination_message_fallback_to_logs: bool,
    /// `runAsNonRoot` (the container's, else the pod's) without a
    /// `runAsUser`: the agent checks the image's user before each start, as
    /// the kubelet does (with a `runAsUser`, the sender checked it). Schema 9.
    #[serde(deserialize_with = "added::in_v9")]
    pub run_as_non_root: bool,
    /// An init container's `restartPolicy`; only `Always` is allowed, and it
    /// makes the container a native sidecar (Kubernetes' restartable init
    /// container): it starts in its place among the init containers, the
    /// next one starts once it has started, it restarts whatever the pod's
    /// policy, its probes and readiness count for the pod, and it is stopped
    /// after the app containers. Always None on an app container. Schema 10
    /// (absent in a version-9 body: `added`).
    #[serde(deserialize_with = "added::in_v10")]
    pub restart_policy: Option<RestartPolicy>,
}

/// The path a container's termination message is read from when its spec
/// names none (Kubernetes' default `terminationMessagePath`).
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

impl Container {
    /// A native sidecar: an init container with `restartPolicy: Always`.
    pub fn is_sidecar(&self) -> bool {
        self.restart_policy == Some(RestartPolicy::Always)
    }

    /// The file the container may write its termination message to.
    pub fn termination_message_path(&self) -> &str {
        self.termination_message_path
            .as_deref()
            .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH)
    }
}

/// A container's lifecycle hooks (`lifecycle`). Schema 9.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Runs right after the container starts; the container is not
    /// Running until it returns, and is killed if it fails.
    pub post_start: Option<Hook>,
    /// Runs before the container is sent its stop signal, within the
    /// termination grace period.
    pub pre_stop: Option<Hook>,
}

/// What a lifecycle hook does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// `exec` or `httpGet`, with a probe's handler (never `TcpSocket`: the
    /// kubelet deprecates it for hooks, and conversion refuses it).
    Run(ProbeHandler),
    /// `sleep.seconds`.
    Sleep { seconds: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// A template (`model::expansion`); empty when `field` is set.
    pub value: String,
    /// A value only the device knows (env `fieldRef` of `status.podIP` and
    /// the like), read at each container start. Schema 9 (absent in an
    /// older body: `added`).
    #[serde(deserialize_with = "added::in_v9")]
    pub field: Option<StatusField>,
    /// The value was read from a ConfigMap or a Secret (`configMapKeyRef`,
    /// `secretKeyRef`, `envFrom`): a new generation that changes only such
    /// values is recorded without a restart, and the container's next start
    /// gets them, as on a kubelet (`agent::decide`). Wire version 11
    /// (absent in an older body: `added`, false).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub from_object: bool,
}

impl EnvVar {
    /// A variable with a value (a template).
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            field: None,
            from_object: false,
        }
    }

    /// A variable whose value was read from a ConfigMap or a Secret.
    pub fn from_object(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            from_object: true,
            ..EnvVar::new(name, value)
        }
    }
}

/// A pod status field an env variable may take its value from
/// (`valueFrom.fieldRef`), resolved by the agent at container start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusField {
    /// `status.podIP`
    PodIp,
    /// `status.podIPs`: the pod's addresses, comma-separated.
    PodIps,
    /// `status.hostIP`
    HostIp,
    /// `status.hostIPs`: the node's addresses, comma-separated.
    HostIps,
}

impl StatusField {
    /// The Kubernetes field path.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusField::PodIp => "status.podIP",
            StatusField::PodIps => "status.podIPs",
            StatusField::HostIp => "status.hostIP",
            StatusField::HostIps => "status.hostIPs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
    /// `mountPropagation` (container pods). Schema 10 (absent in an older
    /// body: `added`).
    #[serde(deserialize_with = "added::in_v10")]
    pub propagation: MountPropagation,
}

/// How mounts propagate between the node and a container's mount of a
/// volume (`mountPropagation`), as the CRI names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountPropagation {
    /// `None`: private (rprivate), the default.
    #[default]
    Private,
    /// `HostToContainer`: mounts the node makes below the volume appear in
    /// the container (rslave).
    HostToContainer,
    /// `Bidirectional`: and the container's appear on the node (rshared);
    /// privileged containers only.
    Bidirectional,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub protocol: String,
}

/// Requests and limits in plain units (millicores, bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// `limits.ephemeral-storage`: what the container's writable layer and
    /// logs may hold on the node's disk before the agent evicts the pod, as
    /// the kubelet's eviction manager does (`agent::eviction`). Wire
    /// version 11 (absent in an older body: `added`).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub ephemeral_storage_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub handler: ProbeHandler,
    pub initial_delay_secs: u32,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeHandler {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        path: String,
        port: u16,
        host: Option<String>,
        https: bool,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        port: u16,
        host: Option<String>,
    },
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) on the
    /// pod's address; `service` may be empty. Schema 9 (a new last variant:
    /// older bodies read as before).
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// The container's seccompProfile, or the pod's. None: unset, and the
    /// node's default applies (config `cri.seccomp_default`). Wire version
    /// 4 (this and the next: absent in an older body, `added`).
    #[serde(default, deserialize_with = "added::in_v4")]
    pub seccomp_profile: Option<SecurityProfile>,
    /// The container's appArmorProfile (or its annotation), or the pod's.
    /// None: unset, the runtime's default applies. Wire version 4.
    #[serde(default, deserialize_with = "added::in_v4")]
    pub app_armor_profile: Option<SecurityProfile>,
    /// The container's seLinuxOptions, else the pod's (the kubelet's
    /// effective security context: the container's replace the pod's
    /// whole). None: the runtime chooses the label. Wire version 11 (absent
    /// in an older body: `added`).
    #[serde(default, deserialize_with = "added::in_v11")]
    pub se_linux_options: Option<SeLinuxOptions>,
}

/// A seccomp or AppArmor profile (`securityContext.seccompProfile`,
/// `appArmorProfile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProfile {
    /// The container runtime's default profile.
    RuntimeDefault,
    /// No profile.
    Unconfined,
    /// A profile on the node: for seccomp a file relative to the agent's
    /// `{data_dir}/seccomp` (the kubelet's `{root-dir}/seccomp`), for
    /// AppArmor a loaded profile's name.
    Localhost(String),
}

/// `hostPath.type`: what must be at the path before a container starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPathType {
    /// `""`: no check.
    #[default]
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostPathType::Unset => "",
            HostPathType::DirectoryOrCreate => "DirectoryOrCreate",
            HostPathType::Directory => "Directory",
            HostPathType::FileOrCreate => "FileOrCreate",
            HostPathType::File => "File",
            HostPathType::Socket => "Socket",
            HostPathType::CharDevice => "CharDevice",
            HostPathType::BlockDevice => "BlockDevice",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<HostPathType> {
        [
            HostPathType::Unset,
            HostPathType::DirectoryOrCreate,
            HostPathType::Directory,
            HostPathType::FileOrCreate,
            HostPathType::File,
            HostPathType::Socket,
            HostPathType::CharDevice,
            HostPathType::BlockDevice,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// `memory`: a tmpfs the agent mounts (`medium: Memory`), of
    /// `size_limit_bytes` when given.
    EmptyDir {
        memory: bool,
        size_limit_bytes: Option<u64>,
    },
    HostPath {
        path: String,
        /// Checked (and for the `*OrCreate` types made) before the pod's
        /// containers start. Wire version 4 (absent in an older body:
        /// `added`).
        #[serde(default, deserialize_with = "added::in_v4")]
        kind: HostPathType,
    },
    /// configMap, secret, downwardAPI or projected volume content, resolved
    /// by the sender: relative file path → bytes, all of `default_mode`.
    Files {
        files: Vec<(String, Vec<u8>)>,
        default_mode: u32,
    },
    /// A persistent volume claim (`persistentVolumeClaim.claimName`), bound
    /// on the device to a durable directory of its own,
    /// `{data_dir}/claims/{namespace}/{claim}` (`runtime::volumes::claim_dir`):
    /// made on first use, kept when the pod goes or is replaced, shared by
    /// the pods of the namespace that name the same claim. `read_only`:
    /// `persistentVolumeClaim.readOnly`. Schema 10 (a new last variant: older
    /// bodies read as before).
    Claim { claim: String, read_only: bool },
}

// ---------------------------------------------------------------------------
// Status

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodConditionType {
    PodScheduled,
    Initialized,
    ContainersReady,
    Ready,
}

impl PodConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PodConditionType::PodScheduled => "PodScheduled",
            PodConditionType::Initialized => "Initialized",
            PodConditionType::ContainersReady => "ContainersReady",
            PodConditionType::Ready => "Ready",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCondition {
    pub kind: PodConditionType,
    pub status: bool,
    pub last_transition_ms: u64,
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at_ms: u64,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at_ms: u64,
        finished_at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

/// What the agent reports for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The spec generation this status describes.
    pub observed_generation: u64,
    pub phase: PodPhase,
    pub conditions: Vec<PodCondition>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub start_time_ms: Option<u64>,
    pub host_ip: Option<String>,
    pub pod_ip: Option<String>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub container_statuses: Vec<ContainerStatus>,
}

impl PodStatus {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    pub fn condition(&self, kind: PodConditionType) -> Option<&PodCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// The STATUS column of `kubectl get pods`: the most telling container
    /// reason, else the pod's reason, else the phase.
    pub fn display_status(&self) -> String {
        let init_count = self.init_container_statuses.len();
        // Once initialized, running sidecars (init containers that keep
        // running) say nothing about the pod's status.
        let initialized = self
            .condition(PodConditionType::Initialized)
            .is_some_and(|c| c.status);
        let init = if initialized {
            &[][..]
        } else {
            &self.init_container_statuses[..]
        };
        for (i, c) in init.iter().enumerate() {
            match &c.state {
                ContainerState::Terminated { exit_code: 0, .. } => continue,
                ContainerState::Terminated { reason, .. } => return format!("Init:{reason}"),
                ContainerState::Waiting { reason, .. }
                    if reason != "PodInitializing" && reason != "ContainerCreating" =>
                {
                    return format!("Init:{reason}");
                }
                _ => return format!("Init:{i}/{init_count}"),
            }
        }
        if let Some(reason) = &self.reason {
            return reason.clone();
        }
        let mut shown: Option<String> = None;
        for c in &self.container_statuses {
            match &c.state {
                ContainerState::Waiting { reason, .. } => shown = Some(reason.clone()),
                ContainerState::Terminated { reason, .. } if shown.is_none() => {
                    shown = Some(reason.clone())
                }
                _ => {}
            }
        }
        match (self.phase, shown) {
            (PodPhase::Running, Some(r)) if r != "Completed" => r,
            (PodPhase::Running, _) => "Running".into(),
            (_, Some(r)) => r,
            (phase, None) => phase.as_str().into(),
        }
    }

    /// The READY column of `kubectl get pods`: app containers and, as
    /// kubectl counts them, running sidecars.
    pub fn ready_count(&self) -> (usize, usize) {
        let counted: Vec<&ContainerStatus> = self.counted_containers().collect();
        let ready = counted.iter().filter(|c| c.ready).count();
        (ready, counted.len())
    }

    pub fn restart_count(&self) -> u32 {
        self.counted_containers().map(|c| c.restart_count).sum()
    }

    /// The app containers and the sidecars: once the pod has initialized,
    /// every regular init container has ended, so an init container that
    /// has not (it runs, or waits to restart) is a sidecar.
    fn counted_containers(&self) -> impl Iterator<Item = &ContainerStatus> {
        let initialized = self
            .condition(PodConditionType::Initialized)
            .is_some_and(|c| c.status);
        let sidecars = self
            .init_container_statuses
            .iter()
            .filter(move |c| initialized && !matches!(c.state, ContainerState::Terminated { .. }));
        sidecars.chain(&self.container_statuses)
    }
}

// ---------------------------------------------------------------------------
// Node

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub architecture: String,
    pub operating_system: String,
    pub kernel_version: String,
    pub os_image: String,
    pub hostname: String,
    pub agent_version: String,
    pub container_runtime_version: String,
    /// `/etc/machine-id` (the kubelet's `machineID`; empty when absent).
    /// Schema version 5 (this and the next two: absent in an older body,
    /// `added`).
    #[serde(deserialize_with = "added::in_v5")]
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot. Version 5.
    #[serde(deserialize_with = "added::in_v5")]
    pub boot_id: String,
    /// The firmware's product UUID (`/sys/class/dmi/id/product_uuid`,
    /// readable by root only; empty when absent). Version 5.
    #[serde(deserialize_with = "added::in_v5")]
    pub system_uuid: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
    pub ephemeral_storage_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeConditionType {
    Ready,
    MemoryPressure,
    DiskPressure,
    PIDPressure,
}

impl NodeConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeConditionType::Ready => "Ready",
            NodeConditionType::MemoryPressure => "MemoryPressure",
            NodeConditionType::DiskPressure => "DiskPressure",
            NodeConditionType::PIDPressure => "PIDPressure",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCondition {
    pub kind: NodeConditionType,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_ms: u64,
    pub last_heartbeat_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `InternalIP` or `Hostname`, as in Kubernetes.
    pub kind: String,
    pub address: String,
}

/// What the agent reports for its node; also the last will (online = false).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub online: bool,
    pub heartbeat_ms: u64,
    pub info: NodeInfo,
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    pub conditions: Vec<NodeCondition>,
    pub addresses: Vec<NodeAddress>,
    pub pod_count: u32,
    /// The device's labels: its own (`node.labels`) and the cloud's
    /// (`{node}/labels`), which win on a conflict. Schema version 2
    /// (absent in a version-1 body: `added`).
    #[serde(deserialize_with = "added::in_v2")]
    pub labels: BTreeMap<String, String>,
    /// The device's X25519 public key that Secret-bearing specs are sealed
    /// to (`seal`); None from an agent that cannot open them. Version 5
    /// (absent in an older body: `added`).
    #[serde(deserialize_with = "added::in_v5")]
    pub sealing_key: Option<[u8; 32]>,
    /// The data path's counters (issue 12); None from an agent without
    /// one. Version 11 (absent in an older body: `added`).
    #[serde(deserialize_with = "added::in_v11")]
    pub data: Option<Box<DataPathStatus>>,
}

/// The device's data path as its node status reports it: counters since
/// the agent started, except `queued`/`queued_bytes` (what the store holds
/// now, across restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathStatus {
    /// Publishes the endpoint read (routed or not).
    pub received: u64,
    /// Publishes no route took (acknowledged, not stored).
    pub unrouted: u64,
    /// Connections refused (unknown pod, wrong credentials).
    pub refused_connections: u64,
    /// Messages waiting for the broker, and their stored bytes.
    pub queued: u64,
    pub queued_bytes: u64,
    /// `data.budget_bytes`.
    pub budget_bytes: u64,
    /// Messages the broker acknowledged, their stored bytes, and the
    /// batches and sealed bytes that carried them (the link's cost).
    pub sent: u64,
    pub sent_bytes: u64,
    pub batches: u64,
    pub link_bytes: u64,
    pub dropped_ttl: u64,
    pub dropped_budget: u64,
    /// One line per route that is declared or still has messages stored.
    pub routes: Vec<RouteStatus>,
}

/// One route's counters (`DataPathStatus::routes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The route as declared (`FROM ns/pod topic INTO $upstream TTL 2h`);
    /// empty when the agent does not know it (messages stored before its
    /// restart under a route not declared since).
    pub route: String,
    /// Who declared it: None the node (`data.routes`), else the pod
    /// (`namespace/name`, its `kedge.io/routes`).
    pub pod: Option<String>,
    pub received: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub sent: u64,
    pub sent_bytes: u64,
    pub dropped_ttl: u64,
    pub dropped_budget: u64,
    /// The route's priority (`PRIORITY n`). Version 12 (absent in an
    /// older body: `added`, the default).
    #[serde(default, deserialize_with = "added::in_v12")]
    pub priority: Priority,
}

impl NodeStatus {
    pub fn condition(&self, kind: NodeConditionType) -> Option<&NodeCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

// ---------------------------------------------------------------------------
// Events and log requests

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// Who published a workload message on the device's data endpoint: the
/// pod and container its connection authenticated as (feature `data`; here
/// because the store keeps it in every build).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataSource {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// A Kubernetes-style event (`kubectl get events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub kind: EventType,
    pub reason: String,
    pub message: String,
    pub timestamp_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub request_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub tail_lines: Option<u64>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub since_seconds: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// One piece of a log response; the last one has `eof` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub request_id: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub eof: bool,
    pub error: Option<String>,
}

/// Asks an agent for its node's and its containers' resource usage (the
/// bridge's `/stats/summary` and `/metrics/resource`; docs/wire.md, "Stats
/// RPC"). Sent on the RPC request topic like a `LogRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRequest {
    pub request_id: String,
}

/// The answer to a `StatsRequest`: the stats, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    pub request_id: String,
    pub result: Result<NodeStats, String>,
}

/// Runs a command in a running container and returns its output, like
/// `kubectl exec` without stdin or a tty (docs/wire.md, "Exec RPC": the
/// non-interactive first slice). Sent on the RPC request topic like a
/// `LogRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub request_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The command and its arguments (not run through a shell).
    pub command: Vec<String>,
    /// How long the command may run before the runtime stops it.
    pub timeout_secs: u32,
}

/// The answer to an `ExecRequest`: the command's output, or why it did not
/// run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    pub request_id: String,
    pub result: Result<ExecOutput, String>,
}

/// What a command run in a container gave: its exit code and its two
/// output streams, each cut to `validate::MAX_EXEC_OUTPUT` (`truncated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub exit_code: i32,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Either stream was longer than `MAX_EXEC_OUTPUT` and was cut.
    pub truncated: bool,
}

/// Opens a byte stream to a TCP port of a pod, for `kubectl port-forward`
/// (docs/wire.md, "Streams (port-forward)"). Sent on the RPC request topic
/// `rpc/req/{stream_id}`; every later message of the stream goes on the same
/// two topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    /// 32 lowercase hex digits, equal to the topic's `{request_id}`.
    pub stream_id: String,
    pub namespace: String,
    pub pod: String,
    /// The pod's port to connect to (1–65535).
    pub port: u16,
    /// Bytes the device may send before the opener grants more.
    pub window: u32,
}

/// Opens a byte stream to the container runtime's streaming server, for
/// `kubectl exec` and `kubectl attach` (docs/wire.md, "Streams (exec and
/// attach)"): the device asks its runtime for a streaming URL (CRI `Exec`,
/// or `Attach` when `command` is empty), connects to it and writes the HTTP
/// request that upgrades it to SPDY/3.1 offering `protocols`; from then on
/// the stream relays bytes like a `StreamOpen` stream, and the opener reads
/// the streaming server's response and speaks the remotecommand protocol
/// with it end to end (stdin, TTY and resize included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamExec {
    /// 32 lowercase hex digits, equal to the topic's `{request_id}`.
    pub stream_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The command and its arguments; empty: attach to the container's own
    /// process.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A terminal (no separate stderr then).
    pub tty: bool,
    /// The remotecommand protocols the opener speaks
    /// (`X-Stream-Protocol-Version`), most preferred first.
    pub protocols: Vec<String>,
    /// Bytes the device may send before the opener grants more.
    pub window: u32,
}

/// Bytes of a stream, in either direction (`seq` counts each direction's
/// messages from 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamData {
    pub stream_id: String,
    pub seq: u64,
    /// At most `validate::MAX_STREAM_CHUNK` bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// This direction ends after `data` (a TCP half-close).
    pub fin: bool,
}

/// The receiver of a direction grants `credit` more bytes. The device's
/// first one also answers a `StreamOpen`: the connection is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamWindow {
    pub stream_id: String,
    pub credit: u32,
}

/// The stream is over, in both directions: aborted with `error`, or
/// cancelled (None).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamClose {
    pub stream_id: String,
    pub error: Option<String>,
}

/// A sample of the node's and its running containers' usage. Counters are
/// cumulative (the reader computes rates from two samples, as
/// metrics-server does from the kubelet's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// When the node's boot (Unix ms): the node's `startTime`.
    pub start_time_ms: u64,
    pub usage: Usage,
    /// Memory the node's processes could still get (MemAvailable).
    pub memory_available_bytes: u64,
    /// The pods that have at least one running container, each with those.
    pub pods: Vec<PodStats>,
}

/// CPU time and memory of a node or a container at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// When it was sampled (Unix ms).
    pub timestamp_ms: u64,
    /// CPU time used since start, in core-nanoseconds.
    pub cpu_core_ns: u64,
    /// The working set: memory in use that cannot be reclaimed at once
    /// (the kubelet's `workingSetBytes`; a Wasm module's linear memory).
    pub memory_working_set_bytes: u64,
}

/// The running containers of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub start_time_ms: u64,
    pub containers: Vec<ContainerStats>,
}

/// One running container's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub name: String,
    pub start_time_ms: u64,
    pub usage: Usage,
}

/// One author's statement of every desired spec it has retained for a node
/// (`{prefix}/{node}/index/{author}`), so that an agent whose session lost a
/// tombstone still learns the pod is no longer desired.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesiredIndex {
    /// Sorted by namespace, then name; one entry per pod.
    pub pods: Vec<IndexEntry>,
}

/// A pod an index lists: which spec (uid) and which generation of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IndexEntry {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: u64,
}

impl IndexEntry {
    pub fn of(spec: &PodSpec) -> IndexEntry {
        IndexEntry {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            generation: spec.generation,
        }
    }
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
}

impl DesiredIndex {
    /// Adds or replaces the entry for the entry's pod, keeping the order.
    pub fn upsert(&mut self, entry: IndexEntry) {
        self.pods
            .retain(|e| !(e.namespace == entry.namespace && e.name == entry.name));
        self.pods.push(entry);
        self.pods.sort();
    }
    /// Removes the pod's entry; true if there was one.
    pub fn remove(&mut self, key: &PodKey) -> bool {
        let before = self.pods.len();
        self.pods
            .retain(|e| !(e.namespace == key.namespace && e.name == key.name));
        self.pods.len() != before
    }
}

/// The wire contract's rule for writing a desired spec (docs/wire.md,
/// "Writing specs"): `None` if `existing` already carries this content for
/// the same uid; otherwise `spec` with the generation to send: the old
/// generation + 1 for the same uid, else at least 1. Shared by `kedge apply`
/// and the bridge.
pub fn next_desired(existing: Option<&PodSpec>, mut spec: PodSpec) -> Option<PodSpec> {
    match existing {
        Some(e) if e.uid == spec.uid => {
            let mut same = e.clone();
            same.generation = spec.generation;
            if same == spec {
                return None;
            }
            spec.generation = e.generation + 1;
        }
        _ => spec.generation = spec.generation.max(1),
    }
    Some(spec)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builders for unit tests across modules.
#[cfg(test)]
pub mod samples {
    use super::*;

    /// A Wasm pod `default/{name}` with no containers.
    pub fn spec(name: &str, uid: &str, generation: u64, restart_policy: RestartPolicy) -> PodSpec {
        PodSpec {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            generation,
            labels: Default::default(),
            runtime: RuntimeKind::Wasm,
            restart_policy,
            termination_grace_period_secs: 30,
            host_network: false,
            init_containers: vec![],
            containers: vec![],
            volumes: vec![],
            image_pull_secrets: vec![],
            security: PodSecurity::default(),
            routes: vec![],
            dns: PodDns::default(),
        }
    }

    /// An online node `name` with nothing else reported.
    pub fn node_status(name: &str) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            online: true,
            heartbeat_ms: 1,
            info: NodeInfo::default(),
            capacity: NodeResources::default(),
            allocatable: NodeResources::default(),
            conditions: vec![],
            addresses: vec![],
            pod_count: 0,
            labels: Default::default(),
            sealing_key: None,
            data: None,
        }
    }

    /// A Wasm container `name` with a pinned file module.
    pub fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: format!("file:///m.wasm@sha256:{}", "0".repeat(64)),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: vec![],
            args: vec![],
            working_dir: None,
            env: vec![],
            volume_mounts: vec![],
            ports: vec![],
            resources: Resources::default(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security_context: None,
            lifecycle: Lifecycle::default(),
            termination_message_path: None,
            termination_message_fallback_to_logs: false,
            run_as_non_root: false,
            restart_policy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_key_parses_and_prints() {
        let k = PodKey::parse("default/web").expect("valid key");
        assert_eq!(k, PodKey::new("default", "web"));
        assert_eq!(k.to_string(), "default/web");
        assert!(PodKey::parse("nope").is_none());
        assert!(PodKey::parse("a/b/c").is_none());
        assert!(PodKey::parse("/b").is_none());
    }

    #[test]
    fn next_desired_bumps_generation_only_on_change() {
        let old = samples::spec("web", "u1", 4, RestartPolicy::Always);
        let same = samples::spec("web", "u1", 1, RestartPolicy::Always);
        assert_eq!(next_desired(Some(&old), same), None);
        let changed = samples::spec("web", "u1", 1, RestartPolicy::Never);
        assert_eq!(
            next_desired(Some(&old), changed).map(|s| s.generation),
            Some(5)
        );
        let other_uid = samples::spec("web", "u2", 0, RestartPolicy::Always);
        assert_eq!(
            next_desired(Some(&old), other_uid).map(|s| s.generation),
            Some(1)
        );
        let fresh = samples::spec("web", "u3", 7, RestartPolicy::Always);
        assert_eq!(next_desired(None, fresh).map(|s| s.generation), Some(7));
    }
}
