//! The agent: a controller that compares the desired pods with what runs,
//! one supervisor task per pod, and the reports that go back to the broker.
//!
//! Every reason the controller acts is a variant of `AgentEvent`, produced by
//! one `select!` in `Controller::serve` and handled by one `match`. Decisions
//! live in `decide` (desired-set changes) and `pod_machine` (a pod's life);
//! this file carries them out.

#[cfg(test)]
mod controller_tests;
#[cfg(feature = "data")]
pub mod data;
pub mod decide;
pub mod event_budget;
pub mod eviction;
pub mod exec_rpc;
mod fleet;
pub mod logs_rpc;
pub mod pod_machine;
pub mod probe;
pub mod reconcile;
pub mod static_pods;
pub mod stats_rpc;
pub mod stream_rpc;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{LastWill, QoS};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{BrokerUrl, Config};
use crate::model::{
    DesiredIndex, Event, EventType, ExecRequest, LogRequest, NodeInfo, NodeStatus, PodKey,
    PodPhase, PodSource, PodSpec, PodStatus, RuntimeKind, now_ms,
};
use crate::mqtt::{self, AckToken, SessionCommand, SessionEvent, SessionSettings};
use crate::runtime::{LazyRuntime, PodContext, Runtime};
use crate::store::{DeletingRecord, DesiredRecord, OutboxEntry, Store, StoreError};
use crate::wire::{self, Kind, Message, TopicKind, Topics};
use decide::{Decision, Incoming, decide};
use pod_machine::{BackoffPolicy, PodMachine};
use reconcile::{AuthorIndex, Have, Verdict, reconcile};
use static_pods::StaticPod;
use supervisor::{Report, SupervisorHandle};

/// Every reason the controller acts.
#[derive(Debug)]
pub enum AgentEvent {
    /// A message from the broker (desired spec, tombstone, log request).
    Broker(SessionEvent),
    /// Supervisors reported status changes or their end: every report
    /// waiting at that moment, in order (coalesced per pod when handled).
    Supervisor(Vec<Report>),
    /// The static pod directory changed: its complete contents.
    StaticPods(Vec<StaticPod>),
    /// A runtime reported an event about a pod (image pulled, …).
    Runtime(Event),
    /// A fleet pod's next revision was prefetched (or could not be).
    Prefetched(fleet::Prefetched),
    /// Time to publish node status and trim the outbox.
    Heartbeat,
    /// A batch of supervisor statuses was committed off the loop (or not).
    Recorded(Recorded),
    Shutdown,
}

/// The outcome of a status batch committed off the loop
/// (`Controller::record_statuses_off_loop`).
#[derive(Debug)]
pub struct Recorded {
    keys: Vec<PodKey>,
    statuses: Vec<PodStatus>,
    result: Result<(), crate::store::StoreError>,
}

/// Last known status per pod, shared with log followers.
pub type StatusBoard = Arc<Mutex<HashMap<PodKey, PodStatus>>>;

struct PodEntry {
    source: PodSource,
    spec: PodSpec,
    supervisor: Option<SupervisorHandle>,
    /// What happens once the supervisor has stopped.
    then: AfterStop,
    /// The uid the runtime knows this instance of the pod by: the spec's,
    /// or, for a fleet pod's revision started beside the one it replaced
    /// (`agent::fleet`, no gap), one of its own, kept in the store
    /// (`Store::instance`) so that a restart finds it again. Statuses and
    /// stops come back under it; the pod's directory is named after it.
    instance: String,
}

// One per pod, rarely anything but Nothing.
#[allow(clippy::large_enum_variant)]
enum AfterStop {
    Nothing,
    Replace(PodSpec, PodSource),
    Delete,
    /// A fleet pod's next revision runs beside it and is ready: it takes
    /// the pod's place (`Controller::successors`).
    Promote,
    /// A successor that is given up (it failed, or a newer revision came):
    /// it goes, and the pod it was to replace stays.
    Abandon,
}

pub struct Controller {
    config: Config,
    node: String,
    topics: Topics,
    store: Arc<Store>,
    /// Made when the first Wasm pod starts; None in builds without it.
    wasm: Option<LazyRuntime>,
    /// The CRI client (cheap: it connects on first use); None when
    /// `cri.endpoint` is empty or the build has no CRI support.
    cri: Option<Arc<dyn Runtime>>,
    /// Exec commands running now (at most `exec_rpc::MAX_AT_ONCE`).
    execs: Arc<std::sync::atomic::AtomicUsize>,
    policy: BackoffPolicy,
    pods: HashMap<PodKey, PodEntry>,
    /// Fleet pods' next revisions, started beside the running one and
    /// not yet ready (`agent::fleet`: no gap between revisions).
    successors: HashMap<PodKey, fleet::Successor>,
    board: StatusBoard,
    session: Option<mpsc::UnboundedSender<SessionCommand>>,
    reports_tx: mpsc::UnboundedSender<Report>,
    /// Handed to runtimes in every `PodContext`; read by the main loop.
    runtime_events: mpsc::UnboundedSender<Event>,
    node_info: NodeInfo,
    addresses: Vec<crate::model::NodeAddress>,
    last_node_status: Option<NodeStatus>,
    /// Desired changes that could not be committed (a full disk): not
    /// acknowledged, retried on every heartbeat; one per pod, the newest.
    uncommitted: HashMap<PodKey, Uncommitted>,
    /// Pod statuses that could not be recorded (a full disk): the newest
    /// per pod, recorded again on every heartbeat.
    unrecorded: HashMap<PodKey, PodStatus>,
    /// Where status batches committed off the loop report (`AgentEvent::Recorded`).
    recorded: mpsc::UnboundedSender<Recorded>,
    /// Status batches whose commit has not reported yet.
    commits_in_flight: usize,
    /// What this connection says about the desired set (reset on connect).
    desired_view: DesiredView,
    /// Labels, fleet deployments, fleet specs and reports (`agent::fleet`).
    fleet: fleet::FleetView,
    /// Where prefetch tasks report (`AgentEvent::Prefetched`).
    prefetched: mpsc::UnboundedSender<fleet::Prefetched>,
    /// Each pod's event budget (the kubelet's spam filter).
    event_budget: event_budget::EventBudget,
    /// The monotonic origin of the event budget's clock (tokio's: paused
    /// in the in-process tests).
    origin: tokio::time::Instant,
    /// The data path, when routes or the sink's key are configured
    /// (`agent::data`): pods a route names (the node's or their own) get the
    /// endpoint's address and credentials.
    #[cfg(feature = "data")]
    data: Option<Arc<data::DataPath>>,
    /// Whether the MQTT session is connected, as `on_broker` last saw it:
    /// the data forwarder publishes through the session while it is.
    #[cfg(feature = "data")]
    broker_connected: tokio::sync::watch::Sender<bool>,
    /// Signed desired state (`trust.keys`); None: signatures not checked.
    trust: Option<TrustPolicy>,
    /// The device's sealing key (`{data_dir}/sealing.key`): opens specs
    /// sealed to it. None when it could not be read or made.
    sealing: Option<crate::seal::KeyPair>,
    /// The port-forward streams this agent relays (`agent::stream_rpc`).
    streams: stream_rpc::Streams,
}

/// What an agent with `trust.keys` accepts (docs/wire.md, "Signatures").
struct TrustPolicy {
    keys: Vec<crate::trust::TrustedKey>,
    /// `trust.require_signatures`: unsigned messages are refused.
    require: bool,
}

struct Uncommitted {
    payload: Vec<u8>,
    ack: Option<AckToken>,
}

/// The desired indexes and specs received on the current broker connection.
#[derive(Default)]
struct DesiredView {
    /// The barrier came back: the retained snapshot is complete.
    synced: bool,
    indexes: BTreeMap<String, AuthorIndex>,
    /// (pod, uid) of every desired spec received on this connection.
    seen: HashSet<(PodKey, String)>,
    /// Reported once per connection.
    warned_unknown: bool,
    warned_missing: HashSet<(PodKey, String)>,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = Arc::new(
        Store::open(&config.data_dir.join("state.redb"))
            .with_context(|| format!("cannot open state in {}", config.data_dir.display()))?,
    );
    match store.node_identity()? {
        Some(id) if id.name != config.node_name => warn!(
            previous = %id.name, now = %config.node_name,
            "this data directory belonged to another node name; keeping its pods"
        ),
        Some(_) => {}
        None => store.set_node_identity(&crate::store::NodeIdentity {
            name: config.node_name.clone(),
            created_ms: now_ms(),
        })?,
    }

    // Trusted roots for https:// modules: the system's, if it has any (a
    // busybox device often has none; that must not stop the agent), plus
    // wasm.ca_file.
    let mut roots: Vec<reqwest::Certificate> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    if let Some(ca) = &config.wasm.ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read wasm.ca_file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("invalid wasm.ca_file {}", ca.display()))?;
        roots.extend(certs);
    }
    if roots.is_empty() {
        warn!("no system CA certificates and no wasm.ca_file: https:// modules cannot be verified");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .tls_certs_only(roots)
        .build()
        .context("cannot set up the HTTP client")?;
    #[cfg(feature = "wasm")]
    let (wasm, runtime_versions) = {
        let opts = crate::runtime::wasm::WasmOptions {
            data_dir: config.data_dir.clone(),
            epoch_tick: Duration::from_millis(config.wasm.epoch_tick_ms),
            default_memory_limit: config.wasm.default_memory_limit_bytes,
            rotation: crate::runtime::logs::Rotation {
                max_file_bytes: config.logs.max_file_bytes,
                max_files: config.logs.max_files,
            },
        };
        let make: crate::runtime::MakeRuntime = Box::new(move || {
            let runtime: Arc<dyn Runtime> = crate::runtime::wasm::WasmRuntime::new(opts, http)?;
            Ok(runtime)
        });
        (
            Some(LazyRuntime::new(make)),
            crate::runtime::wasm::VERSION.to_string(),
        )
    };
    #[cfg(not(feature = "wasm"))]
    let (wasm, runtime_versions): (Option<LazyRuntime>, String) = {
        drop(http);
        (None, String::new())
    };
    let (cri, runtime_versions) = cri_runtime(&config, runtime_versions).await;
    let (node_info, addresses) = crate::node::node_info(&runtime_versions);
    let sealing_path = config.data_dir.join("sealing.key");
    let sealing = match crate::seal::KeyPair::load_or_create(&sealing_path) {
        Ok(key) => {
            info!(key_id = %hex::encode(key.id()), public_key = %key.public().to_hex(), "sealing key");
            Some(key)
        }
        Err(e) => {
            error!(error = %e, "no sealing key: specs that carry Secrets cannot be opened on this node");
            None
        }
    };

    let (mut controller, receivers) = Controller::new(Parts {
        config,
        store: store.clone(),
        wasm,
        cri,
        node_info,
        addresses,
        sealing,
    });
    let topics = controller.topics.clone();

    // The broker: the configured one, the embedded one, or none (offline).
    let (session_events_tx, session_events_rx) = mpsc::unbounded_channel();
    let broker_url = match &controller.config.broker.url {
        Some(url) => Some(url.clone()),
        None => crate::embedded_broker::start(&controller.config.embedded_broker.listen)?,
    };
    let _session_task = match broker_url.clone() {
        Some(url) => {
            let parsed = BrokerUrl::parse(&url)?;
            let options = mqtt::mqtt_options(
                &parsed,
                &controller.config.broker,
                &format!("kedge-agent-{}", controller.node),
            )?;
            let will = controller
                .offline_status()
                .context("cannot encode the last will")?;
            let settings = SessionSettings {
                options,
                subscriptions: vec![
                    (topics.desired_filter(&controller.node), QoS::AtLeastOnce),
                    (topics.index_filter(&controller.node), QoS::AtLeastOnce),
                    (topics.labels(&controller.node), QoS::AtLeastOnce),
                    (topics.fleet_filter(), QoS::AtLeastOnce),
                    (topics.sync(&controller.node), QoS::AtLeastOnce),
                    (
                        topics.rpc_request_filter(&controller.node),
                        QoS::AtLeastOnce,
                    ),
                ],
                dropped_when_oversized: vec![
                    topics.desired_filter(&controller.node),
                    topics.index_filter(&controller.node),
                    topics.labels(&controller.node),
                    topics.fleet_filter(),
                ],
                sync_topic: Some(topics.sync(&controller.node)),
                last_will: Some(LastWill::new(
                    topics.node(&controller.node),
                    will,
                    QoS::AtLeastOnce,
                    true,
                )),
                reconnect: mqtt::Reconnect::Backoff {
                    initial: Duration::from_millis(controller.config.broker.reconnect_initial_ms),
                    max: Duration::from_millis(controller.config.broker.reconnect_max_ms),
                },
                unreadable_retry: Duration::from_millis(
                    controller.config.broker.unreadable_retry_ms,
                ),
                // A persistent session, acknowledged after the commit.
                clean_session: false,
                manual_acks: true,
                read_once: Vec::new(),
                request_capacity: 4096,
                // Gone is gone: the last will says so.
                goodbye: false,
                tap: None,
            };
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            controller.session = Some(cmd_tx);
            info!(broker = %url, node = %controller.node, "starting MQTT session");
            Some(crate::spawn(mqtt::run(
                settings,
                Some(store.clone()),
                cmd_rx,
                session_events_tx,
            )))
        }
        None => {
            info!("no broker configured: running offline");
            drop(session_events_tx);
            None
        }
    };

    #[cfg(feature = "data")]
    {
        controller.data = start_data_path(&controller, &store).await?;
    }

    let (static_tx, static_rx) = mpsc::unbounded_channel();
    if let Some(dir) = controller.config.manifests_dir.clone() {
        crate::spawn(static_pods::watch(
            dir,
            controller.node.clone(),
            Duration::from_millis(controller.config.manifests_poll_ms),
            static_tx,
        ));
    } else {
        drop(static_tx);
    }

    controller
        .serve(receivers, session_events_rx, static_rx, shutdown)
        .await
}

/// Starts the data endpoint and its forwarder when routes are configured.
#[cfg(feature = "data")]
async fn start_data_path(
    controller: &Controller,
    store: &Arc<Store>,
) -> anyhow::Result<Option<Arc<data::DataPath>>> {
    let config = &controller.config;
    let routes = config.data.parsed_routes()?;
    // Routes come from the node's configuration or from the pods (their
    // `kedge.io/routes`): the sink's key is what a data path needs.
    if routes.is_empty() && config.data.sink_public_key.is_empty() {
        return Ok(None);
    }
    let dir = config.data_dir.join("data");
    let device_key = crate::data::DeviceKey::load_or_create(&dir.join("device-key.pk8"))?;
    let sink =
        crate::data::SinkPublicKey::parse(&config.data.sink_public_key, "data.sink_public_key")?;
    let path = Arc::new(data::DataPath::new(
        &config.data,
        routes,
        &dir,
        store.clone(),
    )?);
    let listener = tokio::net::TcpListener::bind(&config.data.listen)
        .await
        .with_context(|| {
            format!(
                "data endpoint cannot listen on {} (data.listen)",
                config.data.listen
            )
        })?;
    info!(
        listen = %config.data.listen,
        device_key = %hex::encode(device_key.public_key()),
        "data endpoint listening"
    );
    crate::spawn(data::serve_endpoint(listener, path.clone()));
    match &controller.session {
        Some(session) => {
            let settings = data::ForwarderSettings {
                session: session.clone(),
                connected: controller.broker_connected.subscribe(),
                topic: controller.topics.data(&controller.node),
                node: controller.node.clone(),
                device_key,
                sink,
                batch_max_messages: config.data.batch_max_messages as usize,
                compression: config.data.compression(),
                events: controller.runtime_events.clone(),
            };
            crate::spawn(data::forward(settings, path.clone()));
        }
        None => warn!(
            "no broker: workload data is kept (up to its TTL and data.budget_bytes) but not sent"
        ),
    }
    Ok(Some(path))
}

/// What a controller is made of. `run` makes them from the configuration;
/// the in-process tests (`controller_tests`) pass their own (a store in a
/// temporary directory, `runtime::fake::FakeRuntime` in the Wasm slot).
pub(crate) struct Parts {
    pub config: Config,
    pub store: Arc<Store>,
    /// Made when the first Wasm pod starts; None in builds without it.
    pub wasm: Option<LazyRuntime>,
    /// The CRI client; None when `cri.endpoint` is empty or the build has
    /// no CRI support.
    pub cri: Option<Arc<dyn Runtime>>,
    pub node_info: NodeInfo,
    pub addresses: Vec<crate::model::NodeAddress>,
    /// The device's sealing key (`seal`); None: sealed specs are refused.
    pub sealing: Option<crate::seal::KeyPair>,
}

/// The receiving ends of the controller's own channels, owned by `serve`.
pub(crate) struct Receivers {
    /// From every supervisor (each holds a sender).
    reports: mpsc::UnboundedReceiver<Report>,
    /// From the runtimes, through the `EventSink` of each `PodContext`.
    runtime_events: mpsc::UnboundedReceiver<Event>,
    /// From fleet prefetch tasks (`agent::fleet`).
    prefetched: mpsc::UnboundedReceiver<fleet::Prefetched>,
    /// From status commits off the loop.
    recorded: mpsc::UnboundedReceiver<Recorded>,
}

/// Every report waiting now (at least one; None once the channel closed).
async fn recv_batch(rx: &mut mpsc::UnboundedReceiver<Report>) -> Option<Vec<Report>> {
    let mut batch = Vec::new();
    (rx.recv_many(&mut batch, 1024).await > 0).then_some(batch)
}

/// Statuses ready to be recorded (`Controller::prepare_statuses`).
struct Prepared {
    keys: Vec<PodKey>,
    records: Vec<PodStatus>,
    outgoing: Outgoing,
}

/// The retained reports of a status batch, one per status, in order.
struct Outgoing {
    created_ms: u64,
    messages: Vec<(String, wire::Body)>,
}

impl Outgoing {
    fn entry(&self, i: usize, seq: u64) -> OutboxEntry {
        let (topic, body) = &self.messages[i];
        OutboxEntry {
            topic: topic.clone(),
            payload: body.envelope(seq),
            retain: true,
            created_ms: self.created_ms,
        }
    }
}

/// Keeps only the newest status of each pod among `reports`, in order: a
/// pod with many containers reports a status per container change, and
/// every status carries all of them, so recording each would cost the
/// square of its size in writes and on the link. A `Stopped` report stays
/// behind its pod's last status.
fn coalesce(reports: Vec<Report>) -> Vec<Report> {
    // A `Stopped` report splits a pod's reports in two: the last status
    // before it and the last one after it (a replacement's) are both kept.
    // Two instances of one pod (a fleet pod's next revision beside it)
    // report apart: each keeps its own last status.
    let mut segment: HashMap<&PodKey, u32> = HashMap::new();
    let mut last: HashMap<(&PodKey, &str, u32), usize> = HashMap::new();
    for (i, r) in reports.iter().enumerate() {
        match r {
            Report::Status { key, status } => {
                let seg = segment.get(key).copied().unwrap_or(0);
                last.insert((key, status.uid.as_str(), seg), i);
            }
            Report::Stopped { key, .. } => *segment.entry(key).or_insert(0) += 1,
        }
    }
    let keep: std::collections::HashSet<usize> = last.into_values().collect();
    reports
        .into_iter()
        .enumerate()
        .filter(|(i, r)| matches!(r, Report::Stopped { .. }) || keep.contains(i))
        .map(|(_, r)| r)
        .collect()
}

/// The CRI runtime, if configured, and the node's runtime versions with the
/// CRI runtime's (`containerd://1.6.20, wasmtime://48`) when it answers.
#[cfg(feature = "cri")]
async fn cri_runtime(config: &Config, versions: String) -> (Option<Arc<dyn Runtime>>, String) {
    let Some(endpoint) = config.cri.endpoint.clone() else {
        return (None, versions);
    };
    let opts = crate::runtime::cri::CriOptions {
        endpoint: endpoint.clone(),
        cgroup_parent: config.cri.cgroup_parent.clone(),
        timeout: Duration::from_millis(config.cri.timeout_ms),
        node: config.node_name.clone(),
        profiles: crate::runtime::cri::spec::ProfileSettings {
            seccomp_default: config.cri.seccomp_default,
            seccomp_root: config.data_dir.join("seccomp"),
        },
        resolv_conf: config.cri.resolv_conf.clone(),
    };
    // What a container without a seccompProfile gets, said once (the
    // kubelet's --seccomp-default is as silent in its status).
    info!(
        seccomp_default = if config.cri.seccomp_default { "RuntimeDefault" } else { "Unconfined" },
        seccomp_profiles = %config.data_dir.join("seccomp").display(),
        "container pods without a seccompProfile run with the seccomp default"
    );
    let runtime = match crate::runtime::cri::CriRuntime::new(opts) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot set up the CRI client; container pods will fail");
            return (None, versions);
        }
    };
    let versions = match tokio::time::timeout(Duration::from_secs(3), runtime.query_version()).await
    {
        Ok(Ok(v)) => {
            info!(%endpoint, runtime = %v, "container runtime answers");
            if versions.is_empty() {
                v
            } else {
                format!("{v}, {versions}")
            }
        }
        Ok(Err(e)) => {
            info!(%endpoint, error = %e, "container runtime not reachable now; container pods retry it");
            versions
        }
        Err(_) => {
            info!(%endpoint, "container runtime did not answer within 3 s; container pods retry it");
            versions
        }
    };
    (Some(Arc::new(runtime)), versions)
}

#[cfg(not(feature = "cri"))]
async fn cri_runtime(_config: &Config, versions: String) -> (Option<Arc<dyn Runtime>>, String) {
    (None, versions)
}

impl Controller {
    /// A controller with no pods and no session yet (`run` sets `session`
    /// once it has the last will, which needs the node's addresses).
    pub(crate) fn new(parts: Parts) -> (Controller, Receivers) {
        let Parts {
            config,
            store,
            wasm,
            cri,
            node_info,
            addresses,
            sealing,
        } = parts;
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (runtime_events, runtime_events_rx) = mpsc::unbounded_channel();
        let (prefetched, prefetched_rx) = mpsc::unbounded_channel();
        let (recorded, recorded_rx) = mpsc::unbounded_channel();
        let controller = Controller {
            node: config.node_name.clone(),
            topics: Topics::new(&config.topic_prefix),
            store,
            wasm,
            cri,
            execs: Arc::default(),
            policy: BackoffPolicy {
                initial: Duration::from_millis(config.backoff.initial_ms),
                max: Duration::from_millis(config.backoff.max_ms),
                reset_after: Duration::from_millis(config.backoff.reset_after_ms),
            },
            pods: HashMap::new(),
            successors: HashMap::new(),
            board: Arc::new(Mutex::new(HashMap::new())),
            session: None,
            reports_tx,
            runtime_events,
            node_info,
            addresses,
            last_node_status: None,
            uncommitted: HashMap::new(),
            unrecorded: HashMap::new(),
            recorded,
            commits_in_flight: 0,
            desired_view: DesiredView::default(),
            fleet: fleet::FleetView::default(),
            prefetched,
            trust: {
                let keys = config.trusted_keys();
                let require = config.trust.require_signatures;
                (!keys.is_empty()).then_some(TrustPolicy { keys, require })
            },
            sealing,
            streams: stream_rpc::Streams::default(),
            event_budget: event_budget::EventBudget::default(),
            origin: tokio::time::Instant::now(),
            #[cfg(feature = "data")]
            data: None,
            #[cfg(feature = "data")]
            broker_connected: tokio::sync::watch::Sender::new(false),
            config,
        };
        let receivers = Receivers {
            reports,
            runtime_events: runtime_events_rx,
            prefetched: prefetched_rx,
            recorded: recorded_rx,
        };
        (controller, receivers)
    }

    /// Restores the pods from the store, then handles every event until
    /// `shutdown` resolves. `session_events` and `static_pods` may be
    /// closed (offline, no manifests directory).
    pub(crate) async fn serve(
        mut self,
        receivers: Receivers,
        mut session_events: mpsc::UnboundedReceiver<SessionEvent>,
        mut static_pods: mpsc::UnboundedReceiver<Vec<StaticPod>>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Receivers {
            mut reports,
            mut runtime_events,
            mut prefetched,
            mut recorded,
        } = receivers;
        self.restore_fleets();
        self.restore()?;
        self.refleet();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => AgentEvent::Shutdown,
                Some(ev) = session_events.recv() => AgentEvent::Broker(ev),
                // While a status batch commits, reports wait and make the
                // next batch bigger (one commit for all of them).
                Some(batch) = recv_batch(&mut reports), if self.commits_in_flight == 0 => AgentEvent::Supervisor(batch),
                Some(r) = recorded.recv() => AgentEvent::Recorded(r),
                Some(event) = runtime_events.recv() => AgentEvent::Runtime(event),
                Some(p) = prefetched.recv() => AgentEvent::Prefetched(p),
                Some(pods) = static_pods.recv() => AgentEvent::StaticPods(pods),
                _ = heartbeat.tick() => AgentEvent::Heartbeat,
            };
            match event {
                AgentEvent::Shutdown => {
                    // The commits under way finish first: they hold the
                    // database, which the next start opens.
                    while self.commits_in_flight > 0
                        && let Some(r) = recorded.recv().await
                    {
                        self.on_recorded(r);
                    }
                    info!("shutting down; workloads stay recorded and come back on the next start");
                    return Ok(());
                }
                AgentEvent::Broker(ev) => self.on_broker(ev),
                AgentEvent::Supervisor(batch) => self.on_reports(batch),
                AgentEvent::StaticPods(pods) => self.on_static_pods(pods),
                AgentEvent::Runtime(event) => self.node_event(event),
                AgentEvent::Prefetched(p) => self.on_prefetched(p),
                AgentEvent::Heartbeat => self.on_heartbeat(),
                AgentEvent::Recorded(r) => self.on_recorded(r),
            }
        }
    }

    fn pod_dir(&self, spec: &PodSpec) -> PathBuf {
        self.pod_dir_of(&spec.namespace, &spec.name, &spec.uid)
    }

    /// The directory of a running instance (named after its `instance`).
    fn entry_dir(&self, e: &PodEntry) -> PathBuf {
        self.pod_dir_of(&e.spec.namespace, &e.spec.name, &e.instance)
    }

    fn pod_dir_of(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.config
            .data_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"))
    }

    /// The last will. An empty payload would be a tombstone for the node,
    /// so an encoding error stops the agent instead.
    fn offline_status(&self) -> Result<Vec<u8>, wire::WireError> {
        let status = NodeStatus {
            name: self.node.clone(),
            online: false,
            heartbeat_ms: 0,
            info: self.node_info.clone(),
            capacity: Default::default(),
            allocatable: Default::default(),
            conditions: Vec::new(),
            addresses: self.addresses.clone(),
            pod_count: 0,
            labels: Default::default(),
            sealing_key: self.sealing.as_ref().map(|k| k.public().to_bytes()),
            data: None,
        };
        wire::encode(0, &Message::NodeStatus(status))
    }

    fn send(&self, cmd: SessionCommand) {
        if let Some(s) = &self.session {
            let _ = s.send(cmd);
        }
    }

    fn ack(&self, ack: Option<AckToken>) {
        if let Some(a) = ack {
            self.send(SessionCommand::Ack(a));
        }
    }

    /// Brings back every desired pod from the store, as it was.
    fn restore(&mut self) -> anyhow::Result<()> {
        self.finish_interrupted_deletes()?;
        let observed: HashMap<PodKey, PodStatus> = self
            .store
            .observed()?
            .into_iter()
            .map(|s| (s.key(), s))
            .collect();
        let mut count = 0;
        for record in self.store.desired()? {
            match record {
                Ok(rec) => {
                    let key = rec.spec.key();
                    let previous = observed.get(&key).cloned();
                    let instance = match self.store.instance(&key) {
                        Ok(i) => i,
                        Err(e) => {
                            warn!(pod = %key, error = %e, "cannot read the pod's instance; starting it under its uid");
                            None
                        }
                    };
                    self.start_instance(rec.spec, rec.source, previous, instance);
                    count += 1;
                }
                Err(e) => warn!(error = %e, "skipping unreadable desired pod"),
            }
        }
        info!(pods = count, "restored desired pods from the store");
        // Only now that the desired set is loaded may anything be removed.
        if let Some(cri) = self.cri.clone() {
            let keep: Vec<String> = self
                .pods
                .values()
                .filter(|e| e.spec.runtime == RuntimeKind::Container)
                .map(|e| e.instance.clone())
                .collect();
            crate::spawn(async move { cri.remove_orphans(keep).await });
        }
        Ok(())
    }

    /// Deletes committed before a crash but not finished: the workload is
    /// gone with the process (Wasm) or removed as an orphan (CRI, after
    /// `restore`); the directory, the status and the retained report go here.
    fn finish_interrupted_deletes(&mut self) -> anyhow::Result<()> {
        for rec in self.store.deleting()? {
            let key = rec.key();
            let replaced_by = self.store.get_desired(&key)?;
            if replaced_by.as_ref().map(|r| r.spec.uid.as_str()) != Some(rec.uid.as_str()) {
                let _ = crate::runtime::volumes::remove_pod_dir(&self.pod_dir_of(
                    &rec.namespace,
                    &rec.name,
                    &rec.uid,
                ));
            }
            if replaced_by.is_some() {
                // A new pod of that name was committed after the delete.
                self.store.cancel_delete(&key)?;
                continue;
            }
            info!(pod = %key, uid = %rec.uid, "finishing a delete interrupted by a restart");
            self.clear_status(&key, true);
        }
        Ok(())
    }

    /// Forgets a pod's status and queues the empty retained report that
    /// clears it on the broker; with `deleting`, the delete intent goes in
    /// the same transaction.
    fn clear_status(&mut self, key: &PodKey, deleting: bool) {
        if let Ok(mut b) = self.board.lock() {
            b.remove(key);
        }
        let topic = self.topics.reported(&self.node, key);
        let make = |_| OutboxEntry {
            topic,
            payload: Vec::new(),
            retain: true,
            created_ms: now_ms(),
        };
        let result = if deleting {
            self.store.finish_delete(key, make)
        } else {
            self.store.remove_status(key, make)
        };
        match result {
            Ok(_) => self.send(SessionCommand::OutboxChanged),
            Err(e) => warn!(pod = %key, error = %e, "cannot record pod removal"),
        }
    }

    /// The runtime that runs `spec`, made now if needed; the error says why
    /// there is none.
    fn runtime_for(&mut self, spec: &PodSpec) -> Result<Arc<dyn Runtime>, String> {
        match (spec.runtime, self.wasm.as_mut()) {
            (RuntimeKind::Wasm, Some(lazy)) => lazy
                .get()
                .map_err(|e| format!("the Wasm runtime cannot start: {e}")),
            (RuntimeKind::Wasm, None) => Err("this agent was built without the Wasm runtime".into()),
            (RuntimeKind::Container, _) => match &self.cri {
                Some(cri) => Ok(cri.clone()),
                None => Err(
                    "no container runtime (CRI) is configured on this node (cri.endpoint); set runtimeClassName: kedge-wasm to run Wasm modules".into(),
                ),
            },
        }
    }

    /// What the pod's containers run with: the spec as sent, plus the data
    /// endpoint's address and credentials for a pod a route names
    /// (`agent::data`), under `instance`, the uid the runtime knows this
    /// instance by (its sandbox, its directory; the controller maps its
    /// reports back to the pod's). The stored spec stays as sent.
    fn runtime_spec(&self, spec: &PodSpec, instance: &str) -> PodSpec {
        #[cfg(feature = "data")]
        let admitted = match &self.data {
            Some(data) => data.admit(spec.clone()),
            None => spec.clone(),
        };
        #[cfg(not(feature = "data"))]
        let admitted = spec.clone();
        PodSpec {
            uid: instance.to_string(),
            ..admitted
        }
    }

    fn start_pod(&mut self, spec: PodSpec, source: PodSource, previous: Option<PodStatus>) {
        self.start_instance(spec, source, previous, None);
    }

    /// Starts `spec` as the instance `instance` (None: its uid).
    fn start_instance(
        &mut self,
        spec: PodSpec,
        source: PodSource,
        previous: Option<PodStatus>,
        instance: Option<String>,
    ) {
        let entry = self.launch(spec, source, previous, instance);
        self.pods.insert(entry.spec.key(), entry);
    }

    /// Starts a supervisor for `spec`, known to the runtime as `instance`
    /// (None: the spec's uid); the entry that holds it is the caller's to
    /// keep. A runtime that cannot start is said in the pod's status.
    fn launch(
        &mut self,
        spec: PodSpec,
        source: PodSource,
        previous: Option<PodStatus>,
        instance: Option<String>,
    ) -> PodEntry {
        let key = spec.key();
        let instance = instance.unwrap_or_else(|| spec.uid.clone());
        let runtime = self.runtime_for(&spec);
        let host_ip = self
            .addresses
            .iter()
            .find(|a| a.kind == "InternalIP")
            .map(|a| a.address.clone());
        let runtime_spec = self.runtime_spec(&spec, &instance);
        let mut machine = PodMachine::new(runtime_spec, self.policy, host_ip);
        let supervisor = match runtime {
            Err(what) => {
                let what = what.as_str();
                let mut status = machine.status().clone();
                status.uid = spec.uid.clone();
                status.phase = PodPhase::Failed;
                status.reason = Some("RuntimeUnavailable".into());
                status.message = Some(what.into());
                self.record_status(&key, &status);
                self.event(&key, EventType::Warning, "RuntimeUnavailable", what);
                None
            }
            Ok(runtime) => {
                if let Some(mut prev) = previous.filter(|p| p.uid == spec.uid) {
                    prev.uid = instance.clone();
                    if prev.phase.is_terminal() && prev.observed_generation == spec.generation {
                        machine.restore_terminal(prev);
                    } else {
                        machine.carry_over(&prev);
                    }
                }
                let ctx = PodContext {
                    pod_dir: self.pod_dir_of(&spec.namespace, &spec.name, &instance),
                    spec: machine.spec().clone(),
                    events: crate::runtime::EventSink::new(self.runtime_events.clone()),
                    #[cfg(feature = "data")]
                    data: Some(match &self.data {
                        Some(data) => data.publisher(&spec),
                        None => data::no_data_path(&self.node),
                    }),
                };
                Some(supervisor::spawn(
                    machine,
                    ctx,
                    runtime,
                    self.reports_tx.clone(),
                    Duration::from_millis(self.config.node.eviction_monitoring_ms),
                ))
            }
        };
        PodEntry {
            source,
            spec,
            supervisor,
            then: AfterStop::Nothing,
            instance,
        }
    }

    fn on_broker(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Connected { degraded } => {
                info!(degraded, "broker connected");
                #[cfg(feature = "data")]
                self.broker_connected.send_replace(true);
                // Retained specs and indexes arrive again, then the barrier.
                self.desired_view = DesiredView::default();
                self.fleets_connected();
                self.publish_node_status();
                self.send(SessionCommand::OutboxChanged);
            }
            SessionEvent::Synced => {
                info!(
                    indexes = self.desired_view.indexes.len(),
                    "the broker's retained desired state has arrived"
                );
                self.desired_view.synced = true;
                self.reconcile_with_indexes();
                self.fleets_synced();
            }
            SessionEvent::Oversized { bytes } => {
                let message = format!(
                    "the broker sent this node a message of {bytes} bytes, larger than the {} bytes the agent reads; its desired pods cannot be read until it is removed from the broker (cap the broker's max_packet_size below that, docs/wire.md). Pods keep running; desired specs are read again later",
                    mqtt::MAX_PACKET_BYTES
                );
                self.node_warning("MessageTooLarge", message);
            }
            SessionEvent::TakenOver { client_id, closes } => {
                let message = format!(
                    "the broker closed this node's session {closes} times right after it connected: another client is probably connected with client id {client_id} (bind client ids to certificate identities: docs/wire.md, \"Broker configuration\")"
                );
                self.node_warning("SessionTakenOver", message);
            }
            SessionEvent::Disconnected { error } => {
                self.desired_view.synced = false;
                #[cfg(feature = "data")]
                self.broker_connected.send_replace(false);
                warn!(%error, "broker disconnected; working offline, reports wait in the outbox");
            }
            SessionEvent::Message {
                topic,
                payload,
                ack,
            } => match self.topics.parse(&topic) {
                Some(TopicKind::Desired { node, pod }) if node == self.node => {
                    // Acknowledged only once the change is committed (or
                    // refused for good); otherwise retried on the heartbeat,
                    // and the broker keeps it until then.
                    if let Some(old) = self.uncommitted.remove(&pod) {
                        self.ack(old.ack);
                    }
                    match self.on_desired(pod.clone(), &payload) {
                        Ok(()) => self.ack(ack),
                        Err(e) => {
                            warn!(pod = %pod, error = %e, "cannot record the desired change; retrying");
                            self.uncommitted.insert(pod, Uncommitted { payload, ack });
                        }
                    }
                }
                Some(TopicKind::Index { node, author }) if node == self.node => {
                    self.on_index(author, &payload);
                    self.ack(ack);
                }
                Some(TopicKind::Fleet { fleet }) => {
                    self.on_fleet(fleet, &payload);
                    self.ack(ack);
                }
                Some(TopicKind::FleetSpec { digest }) => {
                    self.on_fleet_spec(digest, &payload);
                    self.ack(ack);
                }
                Some(TopicKind::Labels { node }) if node == self.node => {
                    self.on_labels(&payload);
                    self.ack(ack);
                }
                Some(TopicKind::RpcRequest { node, request_id }) if node == self.node => {
                    self.ack(ack);
                    self.on_rpc(request_id, &payload);
                }
                _ => {
                    debug!(%topic, "ignoring message on an unexpected topic");
                    self.ack(ack);
                }
            },
        }
    }

    /// Retries the desired changes that could not be committed.
    fn retry_uncommitted(&mut self) {
        let keys: Vec<PodKey> = self.uncommitted.keys().cloned().collect();
        for key in keys {
            let Some(u) = self.uncommitted.remove(&key) else {
                continue;
            };
            match self.on_desired(key.clone(), &u.payload) {
                Ok(()) => self.ack(u.ack),
                Err(_) => {
                    self.uncommitted.insert(key, u);
                }
            }
        }
    }

    /// Whether signatures are required (`trust.keys` and
    /// `trust.require_signatures`).
    fn signatures_required(&self) -> bool {
        self.trust.as_ref().is_some_and(|t| t.require)
    }

    /// The signature check of a desired-side message received on `topic`
    /// (docs/wire.md, "Signatures"): Ok when it may be acted on. A signed
    /// message that is new on its topic is recorded in the store, so that
    /// no older one is accepted there again, even after a restart. A payload
    /// that is no envelope passes: its handler refuses it when it decodes.
    fn admit(&mut self, topic: &str, payload: &[u8]) -> Result<(), crate::trust::Refusal> {
        use crate::trust::{self, Accepted, Fresh, Refusal};
        let Some(policy) = &self.trust else {
            return Ok(());
        };
        if payload.is_empty() {
            return if policy.require {
                Err(Refusal::Missing)
            } else {
                Ok(())
            };
        }
        let Ok(opened) = wire::open(payload) else {
            return Ok(());
        };
        let verified = match trust::verify(&policy.keys, now_ms(), topic, &opened) {
            Ok(v) => v,
            Err(Refusal::Missing) if !policy.require => return Ok(()),
            Err(r) => return Err(r),
        };
        // Log requests read; each goes to a topic of its own: no counter.
        if matches!(self.topics.parse(topic), Some(TopicKind::RpcRequest { .. })) {
            return Ok(());
        }
        let digest = trust::sha256(payload);
        let last = self.store.accepted(topic).unwrap_or_else(|e| {
            warn!(topic, error = %e, "cannot read the last accepted signature; checking without it");
            None
        });
        if trust::check_replay(last.as_ref(), verified.counter, &digest)? == Fresh::New {
            let accepted = Accepted {
                counter: verified.counter,
                digest,
                tombstone: opened.kind == wire::Kind::Tombstone,
            };
            if let Err(e) = self.store.set_accepted(topic, &accepted) {
                warn!(topic, error = %e, "cannot record the accepted signature");
            }
        }
        Ok(())
    }

    /// An author's index (or its removal): known at once; acted on once the
    /// retained snapshot is complete.
    fn on_index(&mut self, author: String, payload: &[u8]) {
        let topic = self.topics.index(&self.node, &author);
        if let Err(r) = self.admit(&topic, payload) {
            // Read as unreadable: nothing is deleted for lack of a listing.
            warn!(%author, reason = r.reason(), error = %r, "refusing desired index");
            self.desired_view.indexes.insert(
                author,
                AuthorIndex::Unreadable(format!("{}: {r}", r.reason())),
            );
        } else if wire::is_tombstone(payload) {
            info!(%author, "desired index removed");
            self.desired_view.indexes.remove(&author);
        } else {
            let decoded = wire::decode_as::<DesiredIndex>(payload);
            let index = match decoded {
                Ok((_, i)) => {
                    debug!(%author, pods = i.pods.len(), "desired index");
                    AuthorIndex::Listed(i)
                }
                Err(e) => {
                    warn!(%author, error = %e, "cannot decode desired index");
                    AuthorIndex::Unreadable(e.to_string())
                }
            };
            self.desired_view.indexes.insert(author, index);
        }
        if self.desired_view.synced {
            self.reconcile_with_indexes();
        }
    }

    /// Compares the pods from the broker with the indexes (`reconcile`) and
    /// carries out the verdict.
    fn reconcile_with_indexes(&mut self) {
        let missing_signed = self.missing_signed_indexes();
        let view = &self.desired_view;
        let have: Vec<Have> = self
            .pods
            .iter()
            .filter(|(_, e)| !matches!(e.then, AfterStop::Delete))
            .map(|(key, e)| {
                let (spec, source) = match &e.then {
                    AfterStop::Replace(s, src) => (s, *src),
                    _ => (&e.spec, e.source),
                };
                Have {
                    key: key.clone(),
                    uid: spec.uid.clone(),
                    generation: spec.generation,
                    source,
                    spec_seen: view.seen.contains(&(key.clone(), spec.uid.clone())),
                }
            })
            .collect();
        let refused: Vec<PodKey> = match self.store.observed() {
            Ok(all) => all
                .into_iter()
                .filter(|s| s.uid.is_empty())
                .map(|s| s.key())
                .filter(|k| !self.pods.contains_key(k))
                .collect(),
            Err(e) => {
                return warn!(error = %e, "cannot read statuses; not comparing with the desired index");
            }
        };
        let mut indexes = view.indexes.clone();
        for (author, why) in missing_signed {
            indexes
                .entry(author)
                .or_insert(AuthorIndex::Unreadable(why));
        }
        match reconcile(&indexes, &have, &refused) {
            Verdict::Unknown { reason, message } => {
                if !self.desired_view.warned_unknown {
                    self.desired_view.warned_unknown = true;
                    warn!(reason, %message, "desired set unknown");
                    self.node_warning(reason, message);
                }
            }
            Verdict::Known { delete, missing } => {
                self.desired_view.warned_unknown = false;
                for key in delete {
                    let message = "no desired index lists this pod any more: its delete was lost with the broker session; deleting it";
                    info!(pod = %key, "{message}");
                    self.event(&key, EventType::Normal, "NotInDesiredIndex", message);
                    if let Err(e) = self.apply(key.clone(), Incoming::Delete(PodSource::Mqtt)) {
                        warn!(pod = %key, error = %e, "cannot record the deletion; trying again on the next index or connection");
                    }
                }
                for (key, uid, message) in missing {
                    if self.desired_view.warned_missing.insert((key.clone(), uid)) {
                        warn!(pod = %key, %message, "desired spec missing");
                        self.event(&key, EventType::Warning, "DesiredSpecMissing", &message);
                    }
                }
            }
        }
    }

    /// With signatures required: the authors whose signed index this node
    /// accepted and which the broker no longer holds (nor did they delete it
    /// with a signed tombstone). Cleared by anyone, it counts as unreadable:
    /// otherwise removing an index and a retained spec would make the agent
    /// delete the pod.
    fn missing_signed_indexes(&self) -> Vec<(String, String)> {
        if !self.signatures_required() {
            return Vec::new();
        }
        let prefix = self.topics.index(&self.node, "");
        let accepted = match self.store.accepted_under(&prefix) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot read the accepted indexes");
                return Vec::new();
            }
        };
        accepted
            .into_iter()
            .filter(|(_, a)| !a.tombstone)
            .filter_map(|(topic, _)| {
                let author = topic.strip_prefix(&prefix)?.to_string();
                let why = "its signed index is no longer on the broker, and was not deleted with a signed tombstone".to_string();
                (!self.desired_view.indexes.contains_key(&author)).then_some((author, why))
            })
            .collect()
    }

    /// Err only when the change could not be committed to the store (it is
    /// then not acknowledged); refusals are Ok: they are final.
    fn on_desired(&mut self, key: PodKey, payload: &[u8]) -> Result<(), StoreError> {
        // The topic names the pod: its levels must be a valid namespace and
        // name before they are used for anything (status topics, the store).
        if let Err(e) = crate::model::validate::label("namespace", "namespace", &key.namespace)
            .and_then(|()| crate::model::validate::subdomain("name", "pod name", &key.name))
        {
            let message =
                format!("ignoring a desired spec on a topic that names no valid pod: {e}");
            self.node_warning("InvalidSpec", message);
            return Ok(());
        }
        let topic = self.topics.desired(&self.node, &key);
        if let Err(r) = self.admit(&topic, payload) {
            let runs = self
                .pods
                .get(&key)
                .is_some_and(|e| e.source == PodSource::Mqtt);
            // An unsigned empty payload where no pod runs deletes nothing
            // (the bridge clears the signed tombstones it left this way);
            // it may still clear the status of a refused spec.
            if !payload.is_empty() || runs {
                let what = if wire::is_tombstone(payload) {
                    "delete"
                } else {
                    "desired spec"
                };
                let keeps = if runs {
                    "; the pod keeps its last accepted spec"
                } else {
                    ""
                };
                self.refuse(
                    &key,
                    r.reason(),
                    format!("refusing the {what} of pod {key}: {r}{keeps}"),
                );
                return Ok(());
            }
        }
        let incoming = if wire::is_tombstone(payload) {
            self.desired_view.seen.retain(|(k, _)| k != &key);
            Incoming::Delete(PodSource::Mqtt)
        } else {
            match self.desired_spec(&topic, payload) {
                Ok(spec) if spec.key() != key => {
                    self.refuse(
                        &key,
                        "InvalidSpec",
                        format!(
                            "the spec names pod {} but was sent on the topic of {key}",
                            spec.key()
                        ),
                    );
                    return Ok(());
                }
                Ok(spec) => {
                    self.desired_view
                        .seen
                        .insert((key.clone(), spec.uid.clone()));
                    Incoming::Apply(spec, PodSource::Mqtt)
                }
                Err((reason, message)) => {
                    self.refuse(&key, reason, message);
                    return Ok(());
                }
            }
        };
        self.apply(key, incoming)
    }

    /// The spec a desired payload carries: a `DesiredPod`, or a `SealedPod`
    /// opened with this device's sealing key (`seal`). Err: the reason and
    /// message of the refusal.
    fn desired_spec(&self, topic: &str, payload: &[u8]) -> Result<PodSpec, (&'static str, String)> {
        let invalid =
            |e: wire::WireError| ("InvalidSpec", format!("cannot decode desired spec: {e}"));
        let envelope = wire::decode(payload).map_err(invalid)?;
        match envelope.message {
            Message::DesiredPod(spec) => Ok(spec),
            Message::SealedPod(sealed) => {
                let Some(key) = &self.sealing else {
                    return Err((
                        "SealedSpecError",
                        "the desired spec is sealed, and this agent has no sealing key (see its log)"
                            .to_string(),
                    ));
                };
                crate::seal::open_pod(key, topic, &sealed, envelope.version).map_err(|e| {
                    (
                        "SealedSpecError",
                        format!("cannot open the sealed desired spec: {e}"),
                    )
                })
            }
            other => Err(invalid(wire::WireError::WrongKind {
                expected: Kind::DesiredPod.name(),
                found: other.kind().name(),
            })),
        }
    }

    /// Records a desired spec whose instance starts under its own uid (a new
    /// pod, or the replacement of a stopped one), dropping any instance
    /// recorded for an earlier revision.
    fn record_new_instance(&self, spec: &PodSpec, source: PodSource) -> Result<(), StoreError> {
        let record = DesiredRecord {
            source,
            spec: spec.clone(),
        };
        self.store.put_desired_instance(&record, None)
    }

    /// A desired spec that cannot be used: an event, and a status that says
    /// why unless a good version of the pod runs (which keeps running).
    fn refuse(&mut self, key: &PodKey, reason: &str, message: String) {
        warn!(pod = %key, reason, %message, "refusing desired spec");
        self.event(key, EventType::Warning, reason, &message);
        if !self.pods.contains_key(key) {
            let status = PodStatus {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid: String::new(),
                observed_generation: 0,
                phase: PodPhase::Failed,
                conditions: Vec::new(),
                reason: Some(reason.into()),
                message: Some(message),
                start_time_ms: None,
                host_ip: None,
                pod_ip: None,
                init_container_statuses: Vec::new(),
                container_statuses: Vec::new(),
            };
            self.record_status(key, &status);
        }
    }

    /// Why this node cannot run a pod that declares data routes, if it
    /// cannot: it has no data path (a build without it, or no sink key).
    /// Refused rather than run without them (never accept and ignore).
    fn routes_refusal(&self, spec: &PodSpec) -> Option<String> {
        if spec.routes.is_empty() {
            return None;
        }
        #[cfg(feature = "data")]
        if self.data.is_some() {
            return None;
        }
        Some(format!(
            "the pod declares data routes ({}) and node {} has no data path: {}",
            crate::model::route::ROUTES_ANNOTATION,
            self.node,
            if cfg!(feature = "data") {
                "set data.sink_public_key in its configuration (docs/config.md)"
            } else {
                "this agent is built without it (feature `data`)"
            }
        ))
    }

    /// Carries out a desired change. Err when it could not be committed
    /// (nothing was changed then).
    fn apply(&mut self, key: PodKey, incoming: Incoming) -> Result<(), StoreError> {
        if let Incoming::Apply(spec, _) = &incoming
            && let Some(why) = self.routes_refusal(spec)
        {
            self.refuse(&key, "DataPathUnavailable", why);
            return Ok(());
        }
        let current = self.pods.get(&key).map(|e| {
            // While a replacement is pending, compare with the newest spec.
            match &e.then {
                AfterStop::Replace(s, src) => (s, *src),
                _ => (&e.spec, e.source),
            }
        });
        // A status left by a refused spec, for a pod that does not run.
        let refused_status =
            current.is_none() && matches!(self.store.status(&key), Ok(Some(s)) if s.uid.is_empty());
        let decision = decide(current, refused_status, &incoming);
        debug!(pod = %key, ?decision, "desired change");
        match (decision, incoming) {
            (Decision::Create, Incoming::Apply(spec, source)) => {
                if self.pods.len() as u64 >= self.config.node.max_pods {
                    let msg = format!(
                        "node {} already runs its maximum of {} pods",
                        self.node, self.config.node.max_pods
                    );
                    self.refuse(&key, "OutOfpods", msg);
                    return Ok(());
                }
                self.record_new_instance(&spec, source)?;
                info!(pod = %key, uid = %spec.uid, generation = spec.generation, "starting pod");
                self.start_pod(spec, source, None);
            }
            (Decision::Replace, Incoming::Apply(spec, source)) => {
                // The replacement starts under its own uid, once this
                // instance stopped (`finish_stop`).
                self.record_new_instance(&spec, source)?;
                self.abandon_successor(&key);
                info!(pod = %key, uid = %spec.uid, generation = spec.generation, "replacing pod");
                if let Some(entry) = self.pods.get_mut(&key) {
                    entry.then = AfterStop::Replace(spec, source);
                    match entry.supervisor.as_mut() {
                        Some(s) => s.stop(),
                        None => self.finish_stop(&key),
                    }
                }
            }
            (Decision::Adopt, Incoming::Apply(spec, source)) => {
                self.store.put_desired(&DesiredRecord {
                    source,
                    spec: spec.clone(),
                })?;
                info!(pod = %key, generation = spec.generation, "the spec is unchanged: generation recorded, the pod keeps running");
                let mut running = false;
                if let Some(entry) = self.pods.get_mut(&key) {
                    match &mut entry.then {
                        AfterStop::Replace(pending, _) => pending.generation = spec.generation,
                        _ => {
                            entry.spec.generation = spec.generation;
                            running = true;
                        }
                    }
                }
                // The status says it observed the new generation at once.
                if running
                    && let Ok(Some(mut status)) = self.store.status(&key)
                    && status.uid == spec.uid
                {
                    status.observed_generation = spec.generation;
                    self.record_status(&key, &status);
                }
            }
            (Decision::UpdateInPlace, Incoming::Apply(spec, source)) => {
                self.store.put_desired(&DesiredRecord {
                    source,
                    spec: spec.clone(),
                })?;
                let mut running = false;
                let instance = self.pods.get(&key).map(|e| e.instance.clone());
                let runtime_spec =
                    self.runtime_spec(&spec, instance.as_deref().unwrap_or(&spec.uid));
                if let Some(entry) = self.pods.get_mut(&key) {
                    match &mut entry.then {
                        // Replaced anyway once stopped: the new files then.
                        AfterStop::Replace(pending, _) => *pending = spec.clone(),
                        _ => {
                            entry.spec = spec.clone();
                            // The next container start reads the new env.
                            if let Some(supervisor) = &entry.supervisor {
                                supervisor.update(runtime_spec);
                            }
                            running = true;
                        }
                    }
                }
                if running {
                    info!(pod = %key, generation = spec.generation, "only labels, volume files or env from ConfigMaps and Secrets changed: updating the pod in place, the containers keep running");
                    let dir = self.pod_dir_of(&key.namespace, &key.name, &self.pods[&key].instance);
                    if let Err(e) = crate::runtime::update_file_volumes(&dir, &spec) {
                        warn!(pod = %key, error = %e, "cannot update the pod's volume files");
                        self.event(&key, EventType::Warning, "FailedMount", &e.to_string());
                    }
                    if let Ok(Some(mut status)) = self.store.status(&key)
                        && status.uid == spec.uid
                    {
                        status.observed_generation = spec.generation;
                        self.record_status(&key, &status);
                    }
                }
            }
            (Decision::Delete, _) => {
                // The instance's uid: its directory's name.
                let Some(uid) = self.pods.get(&key).map(|e| e.instance.clone()) else {
                    return Ok(());
                };
                // Committed before the tombstone is acknowledged: a crash from
                // here on is finished by `restore`.
                let intent = DeletingRecord {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    uid,
                };
                self.store.begin_delete(&intent)?;
                self.abandon_successor(&key);
                info!(pod = %key, "deleting pod");
                if let Some(entry) = self.pods.get_mut(&key) {
                    entry.then = AfterStop::Delete;
                    match entry.supervisor.as_mut() {
                        Some(s) => s.stop(),
                        None => self.finish_stop(&key),
                    }
                }
            }
            (Decision::ClearRefused, _) => {
                info!(pod = %key, "removing the status of a refused spec");
                self.clear_status(&key, false);
            }
            (Decision::Ignore(why), _) => debug!(pod = %key, %why, "ignoring desired change"),
            (Decision::Reject(why), _) => self.event(&key, EventType::Warning, "Rejected", &why),
            (d, i) => warn!(pod = %key, decision = ?d, incoming = ?i, "inconsistent decision"),
        }
        Ok(())
    }

    /// A batch of supervisor reports, coalesced per pod: the statuses are
    /// recorded together, one transaction (one fsync) for all of them
    /// rather than one each, so a burst (a restore, a node-wide restart)
    /// holds the loop for one commit. A `Stopped` report first records the
    /// statuses before it, so nothing recorded earlier lands after what
    /// the stop does (a delete clears the status).
    fn on_reports(&mut self, reports: Vec<Report>) {
        let mut statuses = Vec::new();
        for report in coalesce(reports) {
            match report {
                Report::Status { key, mut status } => {
                    if self
                        .successors
                        .get(&key)
                        .is_some_and(|s| s.entry.instance == status.uid)
                    {
                        // Held back until it takes the pod's place.
                        self.on_successor_status(&key, status);
                        continue;
                    }
                    let Some(e) = self.pods.get(&key).filter(|e| e.instance == status.uid) else {
                        continue;
                    };
                    // The runtime's instance, reported as the pod.
                    status.uid = e.spec.uid.clone();
                    // A generation adopted after the supervisor started.
                    status.observed_generation = status.observed_generation.max(e.spec.generation);
                    info!(pod = %key, phase = status.phase.as_str(), status = %status.display_status(), restarts = status.restart_count(), "pod status");
                    statuses.push((key, status));
                }
                Report::Stopped { key, uid } => {
                    // Whatever the stop writes waits for this commit
                    // (`Store::stage_statuses`): the order holds.
                    self.record_statuses_off_loop(std::mem::take(&mut statuses));
                    if self.pods.get(&key).map(|e| e.instance.as_str()) == Some(uid.as_str()) {
                        self.finish_stop(&key);
                    } else if self
                        .successors
                        .get(&key)
                        .is_some_and(|s| s.entry.instance == uid)
                    {
                        self.successor_stopped(&key);
                    }
                }
            }
        }
        self.record_statuses_off_loop(statuses);
    }

    /// The pod's supervisor ended: carry out what was waiting for it.
    fn finish_stop(&mut self, key: &PodKey) {
        let Some(entry) = self.pods.remove(key) else {
            return;
        };
        #[cfg(feature = "data")]
        if let Some(data) = &self.data {
            data.forget(&key.namespace, &key.name);
        }
        let dir = self.entry_dir(&entry);
        match entry.then {
            AfterStop::Replace(spec, source) => {
                let _ = crate::runtime::volumes::remove_pod_dir(&dir);
                // A delete that a new spec overtook while the pod stopped.
                if matches!(self.store.is_deleting(key), Ok(true))
                    && let Err(e) = self.store.cancel_delete(key)
                {
                    warn!(pod = %key, error = %e, "cannot record that the delete was replaced");
                }
                self.start_pod(spec, source, None);
            }
            AfterStop::Delete => {
                let _ = crate::runtime::volumes::remove_pod_dir(&dir);
                self.clear_status(key, true);
                self.event_budget.forget(key);
                info!(pod = %key, "pod deleted");
                if entry.source == PodSource::Fleet {
                    self.fleet_pod_changed(key);
                }
            }
            AfterStop::Promote => {
                let _ = crate::runtime::volumes::remove_pod_dir(&dir);
                self.promote(key);
            }
            // (`Abandon` is a successor's: `successor_stopped`.)
            AfterStop::Nothing | AfterStop::Abandon => {
                self.pods.insert(
                    key.clone(),
                    PodEntry {
                        then: AfterStop::Nothing,
                        ..entry
                    },
                );
            }
        }
    }

    fn record_status(&mut self, key: &PodKey, status: &PodStatus) {
        self.record_statuses(vec![(key.clone(), status.clone())]);
    }

    /// Records statuses and their outbox entries in one transaction
    /// (`Store::record_statuses`), on the loop, then nudges the session.
    fn record_statuses(&mut self, statuses: Vec<(PodKey, PodStatus)>) {
        let Some(Prepared {
            keys,
            records,
            outgoing,
        }) = self.prepare_statuses(statuses)
        else {
            return;
        };
        let result = self
            .store
            .record_statuses(&records, |i, seq| outgoing.entry(i, seq))
            .map(drop);
        // `on_recorded` counts a commit that was in flight.
        self.commits_in_flight += 1;
        self.on_recorded(Recorded {
            keys,
            statuses: records,
            result,
        });
    }

    /// The supervisors' statuses: the transaction is made on the loop (it
    /// takes redb's write lock, so every later write waits for it and the
    /// order of writes is the loop's), its commit and fsync run on a
    /// blocking thread, and `AgentEvent::Recorded` brings the outcome back:
    /// the session is nudged and fleet pods are looked at only then. The
    /// loop meanwhile handles whatever does not write (acks, log requests,
    /// the runtime's events up to their outbox write).
    fn record_statuses_off_loop(&mut self, statuses: Vec<(PodKey, PodStatus)>) {
        let Some(Prepared {
            keys,
            records,
            outgoing,
        }) = self.prepare_statuses(statuses)
        else {
            return;
        };
        let staged = self
            .store
            .stage_statuses(&records, |i, seq| outgoing.entry(i, seq));
        match staged {
            Ok((staged, _)) => {
                let tx = self.recorded.clone();
                self.commits_in_flight += 1;
                tokio::task::spawn_blocking(move || {
                    let result = staged.commit();
                    let _ = tx.send(Recorded {
                        keys,
                        statuses: records,
                        result,
                    });
                });
            }
            Err(e) => {
                self.commits_in_flight += 1;
                self.on_recorded(Recorded {
                    keys,
                    statuses: records,
                    result: Err(e),
                });
            }
        }
    }

    /// Updates the board, encodes each status (one that cannot be encoded
    /// is left out, logged) and names its topic.
    fn prepare_statuses(&mut self, statuses: Vec<(PodKey, PodStatus)>) -> Option<Prepared> {
        if statuses.is_empty() {
            return None;
        }
        if let Ok(mut b) = self.board.lock() {
            for (key, status) in &statuses {
                b.insert(key.clone(), status.clone());
            }
        }
        let mut p = Prepared {
            keys: Vec::with_capacity(statuses.len()),
            records: Vec::with_capacity(statuses.len()),
            outgoing: Outgoing {
                created_ms: now_ms(),
                messages: Vec::with_capacity(statuses.len()),
            },
        };
        for (key, status) in statuses {
            match wire::Body::of(&Message::PodStatus(status.clone())) {
                Ok(body) => {
                    let topic = self.topics.reported(&self.node, &key);
                    p.outgoing.messages.push((topic, body));
                    p.keys.push(key);
                    p.records.push(status);
                }
                Err(e) => warn!(pod = %key, error = %e, "cannot encode pod status; not recorded"),
            }
        }
        (!p.records.is_empty()).then_some(p)
    }

    /// After a status batch's commit (on the loop or off it).
    fn on_recorded(&mut self, r: Recorded) {
        self.commits_in_flight = self.commits_in_flight.saturating_sub(1);
        match r.result {
            Ok(()) => {
                self.send(SessionCommand::OutboxChanged);
                for key in &r.keys {
                    // Unless a newer one failed since.
                    if self
                        .unrecorded
                        .get(key)
                        .is_some_and(|s| r.statuses.iter().any(|t| t == s))
                    {
                        self.unrecorded.remove(key);
                    }
                    if self
                        .pods
                        .get(key)
                        .is_some_and(|e| e.source == PodSource::Fleet)
                    {
                        self.fleet_pod_changed(key);
                    }
                }
            }
            Err(e) => {
                // Kept and written again on the heartbeat: a supervisor
                // reports a status only when it changes, so a status lost
                // here would stay wrong until the next change.
                for (key, status) in r.keys.into_iter().zip(r.statuses) {
                    warn!(pod = %key, error = %e, "cannot record pod status; retrying");
                    self.unrecorded.insert(key, status);
                }
            }
        }
    }

    /// Records again the statuses that could not be recorded, unless the
    /// pod has gone or another status has been recorded since.
    fn retry_unrecorded(&mut self) {
        let pending: Vec<(PodKey, PodStatus)> = self.unrecorded.drain().collect();
        let still: Vec<(PodKey, PodStatus)> = pending
            .into_iter()
            .filter(|(key, status)| {
                let current = self.pods.get(key).map(|e| e.spec.uid.as_str());
                current == Some(status.uid.as_str()) || (current.is_none() && status.uid.is_empty())
            })
            .collect();
        self.record_statuses(still);
    }

    fn event(&mut self, key: &PodKey, kind: EventType, reason: &str, message: &str) {
        let event = Event {
            namespace: Some(key.namespace.clone()),
            pod: Some(key.name.clone()),
            container: None,
            kind,
            reason: reason.into(),
            message: message.into(),
            timestamp_ms: now_ms(),
        };
        self.node_event(event);
    }

    fn node_event(&mut self, mut event: Event) {
        if let (Some(ns), Some(pod)) = (&event.namespace, &event.pod) {
            let key = PodKey::new(ns, pod);
            match self.event_budget.admit(&key, self.origin.elapsed()) {
                event_budget::Admit::No => {
                    return debug!(pod = %key, reason = %event.reason, "event over the pod's budget; not sent");
                }
                event_budget::Admit::Yes { dropped: 0 } => {}
                event_budget::Admit::Yes { dropped } => {
                    event.message = format!(
                        "{} ({dropped} earlier events of this pod not sent: over its budget of {} at once and one per {} s)",
                        event.message,
                        event_budget::BURST,
                        event_budget::REFILL.as_secs()
                    );
                }
            }
        }
        let topic = self.topics.events(&self.node);
        let body = match wire::Body::of(&Message::Event(event)) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "cannot encode event; not recorded"),
        };
        let result = self.store.append_outbox(|seq| OutboxEntry {
            topic,
            payload: body.envelope(seq),
            retain: false,
            created_ms: now_ms(),
        });
        match result {
            Ok(_) => self.send(SessionCommand::OutboxChanged),
            Err(e) => warn!(error = %e, "cannot record event"),
        }
    }

    /// A Warning event about the node itself.
    fn node_warning(&mut self, reason: &str, message: String) {
        self.node_event(Event {
            namespace: None,
            pod: None,
            container: None,
            kind: EventType::Warning,
            reason: reason.into(),
            message,
            timestamp_ms: now_ms(),
        });
    }

    fn on_static_pods(&mut self, pods: Vec<StaticPod>) {
        let mut seen = Vec::new();
        for p in pods {
            match p {
                StaticPod::Pod(spec) => {
                    seen.push(spec.key());
                    let key = spec.key();
                    if let Err(e) = self.apply(key.clone(), Incoming::Apply(*spec, PodSource::File))
                    {
                        warn!(pod = %key, error = %e, "cannot record static pod; read again on the next change or restart");
                    }
                }
                StaticPod::Invalid { file, error } => {
                    warn!(file = %file.display(), %error, "invalid static pod manifest");
                    self.node_warning("InvalidManifest", format!("{}: {error}", file.display()));
                }
                StaticPod::Warning {
                    file,
                    pod,
                    reason,
                    message,
                } => {
                    warn!(file = %file.display(), %pod, %reason, "static pod: {message}");
                    self.event(&pod, EventType::Warning, &reason, &message);
                }
            }
        }
        let gone: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(k, e)| e.source == PodSource::File && !seen.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Err(e) = self.apply(key.clone(), Incoming::Delete(PodSource::File)) {
                warn!(pod = %key, error = %e, "cannot record static pod removal; read again on the next change or restart");
            }
        }
    }

    fn on_heartbeat(&mut self) {
        self.retry_uncommitted();
        self.retry_unrecorded();
        self.retry_prefetches();
        self.take_over_due();
        self.publish_node_status();
        match self.store.trim_outbox(
            self.config.outbox.max_entries,
            self.config.outbox.max_age_secs * 1000,
            now_ms(),
        ) {
            Ok(0) => {}
            Ok(dropped) => {
                warn!(dropped, "outbox full: dropped the oldest reports");
                self.node_warning(
                    "OutboxOverflow",
                    format!("dropped {dropped} reports that waited too long for the broker"),
                );
            }
            Err(e) => warn!(error = %e, "cannot trim the outbox"),
        }
    }

    fn publish_node_status(&mut self) {
        // A container runtime that was not up when the agent started is
        // named once it has answered.
        if let Some(cri) = &self.cri {
            let version = cri.version();
            let known = &mut self.node_info.container_runtime_version;
            if !version.is_empty() && !known.contains(&version) {
                *known = if known.is_empty() {
                    version
                } else {
                    format!("{version}, {known}")
                };
            }
        }
        let sample = crate::node::sample(&self.config.data_dir);
        let status = crate::node::status(
            &self.node,
            &self.node_info,
            &self.addresses,
            &sample,
            self.config.node.max_pods,
            self.config.node.disk_available_min_percent,
            self.pods.len() as u32,
            self.last_node_status.as_ref(),
            now_ms(),
        );
        #[allow(unused_mut)]
        let mut status = NodeStatus {
            labels: self.fleet.labels(),
            sealing_key: self.sealing.as_ref().map(|k| k.public().to_bytes()),
            ..status
        };
        #[cfg(feature = "data")]
        {
            status.data = self.data.as_ref().map(|d| Box::new(d.status()));
        }
        if let Ok(payload) = wire::encode(status.heartbeat_ms, &Message::NodeStatus(status.clone()))
        {
            self.send(SessionCommand::Publish {
                topic: self.topics.node(&self.node),
                payload,
                retain: true,
                qos: QoS::AtLeastOnce,
            });
        }
        self.last_node_status = Some(status);
    }

    fn on_rpc(&mut self, request_id: String, payload: &[u8]) {
        let reply_topic = self.topics.rpc_response(&self.node, &request_id);
        let Some(session) = self.session.clone() else {
            return;
        };
        let topic = self.topics.rpc_request(&self.node, &request_id);
        if let Err(r) = self.admit(&topic, payload) {
            logs_rpc::reply_error(
                &session,
                &reply_topic,
                &request_id,
                format!("forbidden: {r} ({})", r.reason()),
            );
            return;
        }
        let span = tracing::info_span!("rpc", request = %request_id);
        let _entered = span.enter();
        let bad = match wire::decode(payload).map(|e| e.message) {
            Ok(Message::LogRequest(r)) => {
                return self.on_log_request(session, reply_topic, request_id, r);
            }
            Ok(Message::StatsRequest(r)) if r.request_id == request_id => {
                // Not instrumented (its warning names the request): an
                // `Instrumented` future costs a device build kilobytes.
                let mut runtimes = Vec::new();
                runtimes.extend(self.wasm.as_ref().and_then(LazyRuntime::made));
                runtimes.extend(self.cri.clone());
                let board = self.board.clone();
                crate::spawn(stats_rpc::serve(
                    session,
                    reply_topic,
                    request_id,
                    board,
                    runtimes,
                ));
                return;
            }
            Ok(Message::ExecRequest(r)) if r.request_id == request_id => {
                return self.on_exec_request(session, reply_topic, r);
            }
            #[cfg(feature = "streams")]
            Ok(Message::StreamOpen(o)) if o.stream_id == request_id => {
                return self.on_stream_open(session, reply_topic, o);
            }
            #[cfg(feature = "streams")]
            Ok(Message::StreamExec(o)) if o.stream_id == request_id => {
                return self.on_stream_exec(session, reply_topic, o);
            }
            Ok(m) if stream_rpc::stream_id(&m) == Some(request_id.as_str()) => {
                if let Some(e) = self.streams.route(&self.node, m) {
                    stream_rpc::close(&session, reply_topic, &request_id, Some(e));
                }
                return;
            }
            Ok(
                Message::StatsRequest(crate::model::StatsRequest { request_id: id })
                | Message::ExecRequest(crate::model::ExecRequest { request_id: id, .. })
                | Message::StreamOpen(crate::model::StreamOpen { stream_id: id, .. })
                | Message::StreamExec(crate::model::StreamExec { stream_id: id, .. })
                | Message::StreamData(crate::model::StreamData { stream_id: id, .. })
                | Message::StreamWindow(crate::model::StreamWindow { stream_id: id, .. })
                | Message::StreamClose(crate::model::StreamClose { stream_id: id, .. }),
            ) => format!("the request id {id:?} is not the topic's {request_id:?}"),
            Ok(other) => wire::WireError::WrongKind {
                expected: "LogRequest, StatsRequest, ExecRequest, StreamOpen or StreamExec",
                found: other.kind().name(),
            }
            .to_string(),
            Err(e) => e.to_string(),
        };
        logs_rpc::reply_error(
            &session,
            &reply_topic,
            &request_id,
            format!("bad request: {bad}"),
        );
    }

    /// A port-forward stream: where it connects chosen here
    /// (`stream_rpc::target`), relayed by a task of its own
    /// (`stream_rpc::relay`); at most `stream_rpc::MAX_STREAMS` at once. A
    /// redelivered `StreamOpen` of a running stream is dropped.
    #[cfg(feature = "streams")]
    fn on_stream_open(
        &mut self,
        session: mpsc::UnboundedSender<SessionCommand>,
        reply_topic: String,
        open: crate::model::StreamOpen,
    ) {
        if self.streams.is_open(&open.stream_id) {
            return;
        }
        let span = tracing::info_span!(
            "port_forward",
            stream = %open.stream_id,
            namespace = %open.namespace,
            pod = %open.pod,
            port = open.port,
        );
        span.in_scope(|| info!("port-forward"));
        let key = PodKey::new(&open.namespace, &open.pod);
        let spec = self.pods.get(&key).map(|e| &e.spec);
        let addr = if self.streams.count() >= stream_rpc::MAX_STREAMS {
            Err(format!(
                "too many port-forward streams on node {}: at most {} at once",
                self.node,
                stream_rpc::MAX_STREAMS
            ))
        } else {
            let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            stream_rpc::target(&self.node, &open, spec, board.get(&key))
        };
        let dial = addr.map(|addr| stream_rpc::Dial::port(&open, addr));
        self.start_stream(
            session,
            reply_topic,
            open.stream_id,
            open.window,
            dial,
            span,
        );
    }

    /// An exec or attach stream (`kubectl exec`, `attach`): its container
    /// chosen here (`exec_rpc::target`), connected to the runtime's
    /// streaming server and relayed by a task of its own, within the same
    /// `stream_rpc::MAX_STREAMS` as port-forwards. Every one is logged at
    /// info with its command.
    #[cfg(feature = "streams")]
    fn on_stream_exec(
        &mut self,
        session: mpsc::UnboundedSender<SessionCommand>,
        reply_topic: String,
        exec: crate::model::StreamExec,
    ) {
        if self.streams.is_open(&exec.stream_id) {
            return;
        }
        let span = tracing::info_span!(
            "exec_stream",
            stream = %exec.stream_id,
            namespace = %exec.namespace,
            pod = %exec.pod,
            container = %exec.container,
        );
        span.in_scope(
            || info!(command = ?exec.command, tty = exec.tty, stdin = exec.stdin, "exec stream"),
        );
        let key = PodKey::new(&exec.namespace, &exec.pod);
        let spec = self.pods.get(&key).map(|e| &e.spec);
        let container = if self.streams.count() >= stream_rpc::MAX_STREAMS {
            Err(format!(
                "too many streams on node {}: at most {} at once",
                self.node,
                stream_rpc::MAX_STREAMS
            ))
        } else {
            let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            exec_rpc::target(&self.node, (&exec).into(), spec, board.get(&key)).map(str::to_string)
        };
        let dial = container.and_then(|id| match &self.cri {
            Some(cri) => Ok(stream_rpc::Dial::exec(cri.clone(), id, exec.clone())),
            None => Err("no container runtime (CRI) is configured on this node".into()),
        });
        self.start_stream(
            session,
            reply_topic,
            exec.stream_id,
            exec.window,
            dial,
            span,
        );
    }

    /// Starts the relay of stream `id` to where `dial` connects, or answers
    /// its refusal with a `StreamClose`.
    #[cfg(feature = "streams")]
    fn start_stream(
        &mut self,
        session: mpsc::UnboundedSender<SessionCommand>,
        reply_topic: String,
        id: String,
        window: u32,
        dial: Result<stream_rpc::Dial, String>,
        span: tracing::Span,
    ) {
        match dial {
            Ok(dial) => {
                let inbox = self.streams.open(&id, window);
                let relay = stream_rpc::relay(session, reply_topic, id, dial, inbox, span);
                crate::spawn(relay);
            }
            Err(e) => {
                span.in_scope(|| info!(error = %e, "stream refused"));
                stream_rpc::close(&session, reply_topic, &id, Some(e));
            }
        }
    }

    /// An exec request: its container chosen here (`exec_rpc::target`),
    /// the command run by a task of its own (`exec_rpc::serve`). Never makes
    /// the Wasm runtime: a Wasm container is refused before.
    fn on_exec_request(
        &mut self,
        session: mpsc::UnboundedSender<SessionCommand>,
        reply_topic: String,
        request: ExecRequest,
    ) {
        let first = request.command.first().map_or("", String::as_str);
        let span = tracing::info_span!(
            "exec",
            namespace = %request.namespace,
            pod = %request.pod,
            container = %request.container,
            command = %first,
        );
        span.in_scope(|| info!(command = ?request.command, "exec"));
        let key = PodKey::new(&request.namespace, &request.pod);
        let spec = self.pods.get(&key).map(|e| &e.spec);
        let run_in = {
            let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            exec_rpc::target(&self.node, (&request).into(), spec, board.get(&key))
                .map(str::to_string)
        };
        let run_in = run_in.and_then(|id| match &self.cri {
            Some(cri) => Ok((cri.clone(), id)),
            None => Err("no container runtime (CRI) is configured on this node".into()),
        });
        let run_in = run_in.and_then(|(cri, id)| {
            exec_rpc::ExecSlot::take(&self.execs)
                .map(|slot| (cri, id, slot))
                .ok_or_else(|| exec_rpc::busy(&self.node))
        });
        crate::spawn(exec_rpc::serve(session, reply_topic, request, run_in, span));
    }

    /// A log request: checked against the pod's spec here, then served by
    /// its own task (`logs_rpc::serve`).
    fn on_log_request(
        &mut self,
        session: mpsc::UnboundedSender<SessionCommand>,
        reply_topic: String,
        request_id: String,
        request: LogRequest,
    ) {
        let key = PodKey::new(&request.namespace, &request.pod);
        let Some(entry) = self.pods.get(&key) else {
            logs_rpc::reply_error(
                &session,
                &reply_topic,
                &request_id,
                format!(
                    "pods \"{}\" not found in namespace \"{}\" on node {}",
                    request.pod, request.namespace, self.node
                ),
            );
            return;
        };
        let pod_dir = self.entry_dir(entry);
        let names: Vec<String> = entry
            .spec
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let init_names: Vec<String> = entry
            .spec
            .init_containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let container = match (&request.container, names.as_slice()) {
            (Some(c), _) if names.contains(c) || init_names.contains(c) => c.clone(),
            (Some(c), _) => {
                logs_rpc::reply_error(
                    &session,
                    &reply_topic,
                    &request_id,
                    format!("container {c} is not valid for pod {}", request.pod),
                );
                return;
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                logs_rpc::reply_error(
                    &session,
                    &reply_topic,
                    &request_id,
                    format!(
                        "a container name must be specified for pod {}, choose one of: [{}]",
                        request.pod,
                        names.join(" ")
                    ),
                );
                return;
            }
        };
        crate::spawn(logs_rpc::serve(
            session,
            reply_topic,
            request,
            pod_dir,
            container,
            self.config.logs.max_files,
            self.board.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RestartPolicy, samples};

    fn status(name: &str, uid: &str, generation: u64) -> Report {
        let spec = samples::spec(name, uid, generation, RestartPolicy::Always);
        let machine = PodMachine::new(
            spec,
            BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(2),
                reset_after: Duration::from_secs(3),
            },
            None,
        );
        Report::Status {
            key: PodKey::new("default", name),
            status: machine.status().clone(),
        }
    }

    fn stopped(name: &str, uid: &str) -> Report {
        Report::Stopped {
            key: PodKey::new("default", name),
            uid: uid.into(),
        }
    }

    fn describe(reports: &[Report]) -> Vec<String> {
        reports
            .iter()
            .map(|r| match r {
                Report::Status { key, status } => {
                    format!("{}:{}@{}", key.name, status.uid, status.observed_generation)
                }
                Report::Stopped { key, uid } => format!("stop {}:{uid}", key.name),
            })
            .collect()
    }

    #[test]
    fn only_the_newest_status_of_each_pod_is_recorded() {
        let batch = vec![
            status("a", "u1", 1),
            status("b", "u2", 1),
            status("a", "u1", 2),
            status("a", "u1", 3),
            status("b", "u2", 2),
        ];
        assert_eq!(describe(&coalesce(batch)), ["a:u1@3", "b:u2@2"]);
    }

    #[test]
    fn a_stop_keeps_the_status_before_it_and_the_replacements_after() {
        let batch = vec![
            status("a", "u1", 1),
            status("a", "u1", 2),
            stopped("a", "u1"),
            status("a", "u9", 1),
            status("a", "u9", 2),
        ];
        assert_eq!(
            describe(&coalesce(batch)),
            ["a:u1@2", "stop a:u1", "a:u9@2"]
        );
    }
}
