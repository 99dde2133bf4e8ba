//! `kedge bridge`: every device a Kubernetes Node (the Virtual Kubelet
//! pattern over MQTT). See ARCHITECTURE.md, "The bridge".
//!
//! Wiring only: the decisions live in [`state`] and [`fleets`] (pure), Kubernetes objects in
//! [`render`] (pure), API writes in [`writer`], the broker session in
//! [`mqtt_link`] and the kubelet API in [`kubelet`]. One loop owns the state
//! and handles one [`BridgeEvent`] at a time.
//!
//! Shutdown (SIGTERM, Ctrl-C): the loop stops taking events and a
//! cancellation token stops the watches, the reference reads, the kubelet
//! API's listener, the shard rounds and the MQTT forwarding (kube-runtime
//! and mini-redis do the same); the writer then has until
//! `--shutdown-grace-period` to make the writes queued; the shard Leases
//! are released ([`shard::Held::release`]), the broker link is closed, and
//! the process exits 0. What was not finished is logged.

pub mod data_metrics;
pub mod event_series;
pub mod fleets;
pub mod kubelet;
pub mod kubelet_auth;
pub mod mqtt_link;
pub mod node_ports;
pub mod portforward;
pub mod refs;
pub mod remotecommand;
pub mod render;
pub mod shard;
pub mod spdy;
pub mod state;
pub mod usage;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::model::now_ms;
use crate::wire::{self, Topics};
use fleets::crd::FleetDeploymentResource;
use fleets::{FleetEvent, Fleets};
use state::{Action, Bridge, BridgeEvent, ObjRef, Settings};

/// `kedge bridge` arguments (broker and topic prefix come from the configuration).
#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    /// Kubeconfig file; without it: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of this bridge as the apiserver reaches it (the Nodes' InternalIP).
    #[arg(long, value_name = "IP")]
    pub advertise_address: String,
    /// Where the kubelet API listens.
    #[arg(long, default_value = "0.0.0.0:10250", value_name = "ADDR")]
    pub kubelet_listen: SocketAddr,
    /// The port put in the Nodes' daemonEndpoints (default: the listen port).
    #[arg(long, value_name = "PORT")]
    pub kubelet_port: Option<u16>,
    /// Each device's Node gets a kubelet API port of its own from this
    /// range (START-END), on --kubelet-listen's address: requests that name
    /// no pod (`/stats/summary`, `/metrics/resource`, so `kubectl top`) can
    /// only tell the Node by its port. `auto`: the 10,000 ports after the
    /// listen port; `none`: every Node has the one port (no stats).
    #[arg(long, default_value = "auto", value_name = "RANGE")]
    pub kubelet_node_ports: String,
    /// Serving certificate of the kubelet API (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_private_key_file: PathBuf,
    /// CA that signs the apiserver's kubelet client certificate.
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: PathBuf,
    /// How long an allowed SubjectAccessReview answer of the kubelet API is
    /// cached (the kubelet's flag and default).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a denied SubjectAccessReview answer is cached.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// A kubelet API client must finish its TLS handshake within this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub kubelet_tls_handshake_timeout: Duration,
    /// A kubelet API request's headers must arrive within this (HTTP/1;
    /// also the idle limit between requests of a kept-alive connection).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub kubelet_header_read_timeout: Duration,
    /// Kubelet API connections served at once; further ones wait in the
    /// listen backlog until one closes.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub kubelet_max_connections: usize,
    /// Only these devices become nodes (comma-separated; default: every device).
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    pub allow_nodes: Vec<String>,
    /// Only devices whose labels match this label selector become Nodes
    /// (`kedge.io/role=gateway`); the others are fleet members only: no
    /// Node, no Lease, no API writes of their own (default: every device).
    #[arg(long, value_name = "SELECTOR")]
    pub node_selector: Option<String>,
    /// A fleet virtual node (repeatable, at most 16): Node
    /// `kedge-fleet-NAME`, standing for the devices whose labels match
    /// SELECTOR (none: every device), with their capacity summed. A pod (a
    /// Deployment's template) bound to it becomes a fleet deployment over
    /// the devices that match both SELECTOR and its `kedge.io/selector`
    /// annotation (required when the node has no SELECTOR): the seed path.
    #[arg(long = "fleet-node", value_name = "NAME[:SELECTOR]")]
    pub fleet_nodes: Vec<String>,
    /// Maximum Kubernetes API write requests per second.
    #[arg(long, default_value_t = 50.0)]
    pub api_qps: f64,
    /// Kubernetes API writes in flight at once.
    #[arg(long, default_value_t = 8)]
    pub api_concurrency: usize,
    /// A device silent for this long counts as gone (ms).
    #[arg(long, default_value_t = 40_000)]
    pub heartbeat_timeout_ms: u64,
    /// This replica's name (MQTT client id `kedge-bridge-{id}`, shard lease holder).
    #[arg(long, default_value = "0")]
    pub id: String,
    /// Split the devices into this many shards held through Leases, so that
    /// several replicas share the fleet (0: this replica serves every device).
    #[arg(long, default_value_t = 0)]
    pub shards: u32,
    /// Namespace of the shard and replica Leases.
    #[arg(long, default_value = "kedge-system")]
    pub shard_namespace: String,
    /// How often the ConfigMaps and Secrets the pods refer to are read
    /// again (they are read by name, never watched): an update reaches the
    /// devices within this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ref_refresh_interval: Duration,
    /// Read pod reports and events through an MQTT shared subscription
    /// (`$share/kedge-bridge/…`): each report reaches one replica, which writes it.
    #[arg(long)]
    pub shared_status: bool,
    /// On SIGTERM or Ctrl-C, how long the Kubernetes API writes already
    /// queued may take to be made before the bridge gives up on them (and
    /// logs what was left); releasing the shard Leases and closing the
    /// broker link take up to a further 5 s each. Keep the sum under the
    /// pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace_period: Duration,
}

/// The most that releasing the shard Leases, and then closing the broker
/// link, may each take on shutdown (after the writer's grace period).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bridge's background tasks, each under a name: stopped together by
/// one token and awaited up to a deadline, so what did not finish is named.
/// The kubelet API listeners of single Nodes (`Action::ServeNode`,
/// [`node_ports`]), beside the shared one.
struct NodeListeners {
    ip: std::net::IpAddr,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<kubelet::Ctx>,
    limits: kubelet::ServeLimits,
    stop: CancellationToken,
    serving: HashMap<String, (u16, tokio::task::JoinHandle<()>)>,
}

impl NodeListeners {
    /// Serves `node`'s kubelet API on `port` (nothing to do if it already
    /// is; a previous port of the node is closed).
    fn serve(&mut self, node: &str, port: u16) -> std::io::Result<()> {
        if self.serving.get(node).is_some_and(|(p, _)| *p == port) {
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind((self.ip, port))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let stop = self.stop.clone();
        let serve = kubelet::serve(
            listener,
            self.tls.clone(),
            self.ctx.clone(),
            self.limits,
            Some(Arc::from(node)),
        );
        let task = tokio::spawn(
            async move {
                stop.run_until_cancelled(serve).await;
            }
            .instrument(info_span!("node kubelet API", %node, port)),
        );
        if let Some((_, old)) = self.serving.insert(node.to_string(), (port, task)) {
            old.abort();
        }
        info!(%node, port, "serving the Node's kubelet API");
        Ok(())
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in self.serving.drain() {
            task.abort();
        }
    }
}

struct Tasks {
    set: JoinSet<&'static str>,
    running: BTreeSet<&'static str>,
    stop: CancellationToken,
}

impl Tasks {
    fn new(stop: CancellationToken) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            running: BTreeSet::new(),
            stop,
        }
    }

    /// Runs `fut` until it ends or the token is cancelled.
    fn spawn(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.running.insert(name);
        self.set.spawn(
            async move {
                stop.run_until_cancelled(fut).await;
                name
            }
            .instrument(info_span!("task", name)),
        );
    }

    /// Waits for every task up to `deadline`; aborts and returns the names
    /// of those still running then.
    async fn join(mut self, deadline: Instant) -> BTreeSet<&'static str> {
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next()).await {
                Ok(Some(Ok(name))) => {
                    self.running.remove(name);
                }
                Ok(Some(Err(e))) => warn!(error = %e, "a bridge task failed"),
                Ok(None) => return BTreeSet::new(),
                Err(_) => {
                    self.set.abort_all();
                    return self.running;
                }
            }
        }
    }
}

async fn kube_client(args: &BridgeArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Forwards a watcher's events for pods into the main loop. Objects missing
/// from a re-list are reported as deleted.
async fn pump_pods(
    api: Api<Pod>,
    writer: reflector::store::Writer<Pod>,
    tx: mpsc::Sender<BridgeEvent>,
) {
    let cfg = watcher::Config::default().fields("spec.nodeName!=");
    // kube-runtime's back-off after an error (client-go's reflector: 0.8 s
    // doubling to 30 s, jittered), reset by the next event.
    let mut stream =
        reflector::reflector(writer, watcher::watcher(api, cfg).default_backoff()).boxed();
    let mut listing: Option<HashSet<(String, String)>> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "pod watch error; retrying");
                continue;
            }
        };
        let out = match ev {
            watcher::Event::Init => {
                listing = Some(HashSet::new());
                continue;
            }
            watcher::Event::InitApply(p) => {
                if let Some(l) = &mut listing {
                    l.insert((
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.uid.clone().unwrap_or_default(),
                    ));
                }
                BridgeEvent::PodApplied(Arc::new(p))
            }
            watcher::Event::Apply(p) => BridgeEvent::PodApplied(Arc::new(p)),
            watcher::Event::Delete(p) => BridgeEvent::PodDeleted(Arc::new(p)),
            watcher::Event::InitDone => BridgeEvent::PodsSynced {
                present_uids: listing
                    .take()
                    .map(|l| l.into_iter().map(|(_, uid)| uid).collect()),
            },
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

/// Reports deleted kedge Node objects, so the bridge recreates them, and
/// the labels users set on each (`render::user_labels`), when they change,
/// so that they reach the device. A metadata watch: labels and
/// managedFields are all it reads.
async fn pump_nodes(api: Api<PartialObjectMeta<Node>>, tx: mpsc::Sender<BridgeEvent>) {
    let cfg = watcher::Config::default().labels(&format!("{}=true", render::EDGE_LABEL));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    // The user labels last forwarded per Node: a Node changes with every
    // status write, its labels seldom.
    let mut sent: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    while let Some(ev) = stream.next().await {
        let out = match ev {
            Ok(watcher::Event::Delete(n)) => {
                let Some(name) = n.metadata.name else {
                    continue;
                };
                sent.remove(&name);
                BridgeEvent::NodeObjectDeleted(name)
            }
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let Some(name) = n.metadata.name.clone() else {
                    continue;
                };
                let user_labels = render::user_labels(&n.metadata);
                if sent.get(&name) == Some(&user_labels) {
                    continue;
                }
                sent.insert(name.clone(), user_labels.clone());
                BridgeEvent::NodeObject { name, user_labels }
            }
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "node watch error; retrying");
                continue;
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

/// Forwards FleetDeployment changes into the main loop. Resources missing
/// from a re-list are reported as deleted (`Synced`).
async fn pump_fleets(api: Api<FleetDeploymentResource>, tx: mpsc::Sender<BridgeEvent>) {
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<HashSet<String>> = None;
    let mut warned = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // Without the CRD installed this repeats: say it once.
                if !warned {
                    warn!(error = %e, "FleetDeployment watch error (is edge-manifests/fleetdeployment-crd.yaml applied?); retrying");
                    warned = true;
                }
                continue;
            }
        };
        warned = false;
        let out = match ev {
            watcher::Event::Init => {
                listing = Some(HashSet::new());
                continue;
            }
            watcher::Event::InitApply(f) => {
                if let Some(l) = &mut listing {
                    l.insert(f.metadata.uid.clone().unwrap_or_default());
                }
                FleetEvent::Applied(Arc::new(f))
            }
            watcher::Event::Apply(f) => FleetEvent::Applied(Arc::new(f)),
            watcher::Event::Delete(f) => FleetEvent::Deleted(Arc::new(f)),
            watcher::Event::InitDone => FleetEvent::Synced {
                present_uids: listing.take().unwrap_or_default(),
            },
        };
        if tx.send(BridgeEvent::Fleet(out)).await.is_err() {
            return;
        }
    }
}

/// Runs the bridge until `shutdown` completes.
pub async fn run(
    config: Config,
    args: BridgeArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    if args.advertise_address.parse::<std::net::IpAddr>().is_err() {
        anyhow::bail!(
            "invalid --advertise-address {:?}: must be an IP address (it becomes the Nodes' InternalIP)",
            args.advertise_address
        );
    }
    let client = kube_client(&args).await?;
    let topics = Topics::new(config.topic_prefix.trim_end_matches('/'));
    let mut settings = Settings::new(
        topics,
        render::KubeletEndpoint {
            address: args.advertise_address.clone(),
            port: args.kubelet_port.unwrap_or(args.kubelet_listen.port()),
        },
    );
    if let Some(sel) = &args.node_selector {
        let selector = crate::model::selector::Selector::parse("--node-selector", sel)
            .map_err(|e| anyhow::anyhow!("invalid --node-selector {sel:?}: {e}"))?;
        settings.admit.node_selector = Some(selector);
    }
    if !args.allow_nodes.is_empty() {
        settings.admit.allow = Some(args.allow_nodes.iter().cloned().collect());
    }
    let fleet_nodes = fleets::nodes::FleetNode::parse_all(&args.fleet_nodes)?;
    for n in &fleet_nodes {
        let node = fleets::seed::node_name(&n.name);
        if !wire::valid_topic_level(&node) {
            anyhow::bail!(
                "invalid --fleet-node {:?}: {node:?} is not a valid node name",
                n.name
            );
        }
    }
    settings.fleet_nodes = fleet_nodes.clone();
    settings.heartbeat_timeout_ms = args.heartbeat_timeout_ms;
    settings.shared_status = args.shared_status;
    if args.shards > 0 {
        settings.admit.shards = Some((args.shards, HashSet::new()));
    }
    settings.node_ports = match args.kubelet_node_ports.as_str() {
        "auto" => {
            let first = args.kubelet_listen.port().saturating_add(1);
            (first > args.kubelet_listen.port()).then(|| first..=first.saturating_add(9_999))
        }
        range => node_ports::PortPool::parse_range(range)
            .map_err(|e| anyhow::anyhow!("invalid --kubelet-node-ports: {e}"))?,
    };

    let tls = kubelet::tls_config(
        &args.tls_cert_file,
        &args.tls_private_key_file,
        &args.client_ca_file,
    )?;
    let listener = kubelet::bind(args.kubelet_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.kubelet_listen))?;

    if args.ref_refresh_interval.is_zero() {
        anyhow::bail!("invalid --ref-refresh-interval 0s: must be positive");
    }
    if args.kubelet_max_connections == 0 {
        anyhow::bail!("invalid --kubelet-max-connections 0: must be at least 1");
    }

    let stop = CancellationToken::new();
    let mut tasks = Tasks::new(stop.clone());
    let (tx, mut rx) = mpsc::channel::<BridgeEvent>(65_536);
    let (mqtt, mqtt_task) = mqtt_link::MqttLink::start(
        &config,
        &format!("kedge-bridge-{}", args.id),
        args.shared_status,
        tx.clone(),
        stop.clone(),
    )?;
    let shard_task = (args.shards > 0).then(|| {
        tokio::spawn(
            shard::run(
                client.clone(),
                args.shard_namespace.clone(),
                args.id.clone(),
                args.shards,
                tx.clone(),
                mqtt.clone(),
                stop.clone(),
            )
            .instrument(info_span!("shards")),
        )
    });
    let writer = writer::Writer::start(client.clone(), args.api_qps, args.api_concurrency);

    let (pods, pods_w) = reflector::store::<Pod>();
    // ConfigMaps and Secrets: only those referenced, read by name (refs.rs).
    let ref_table = Arc::new(std::sync::Mutex::new(refs::RefTable::default()));
    let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
    tasks.spawn(
        "reference reads",
        refs::run(
            client.clone(),
            ref_table.clone(),
            fetch_rx,
            args.ref_refresh_interval,
            tx.clone(),
        ),
    );
    tasks.spawn(
        "pod watch",
        pump_pods(Api::<Pod>::all(client.clone()), pods_w, tx.clone()),
    );
    tasks.spawn(
        "node watch",
        pump_nodes(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            tx.clone(),
        ),
    );
    tasks.spawn(
        "fleet deployment watch",
        pump_fleets(
            Api::<FleetDeploymentResource>::all(client.clone()),
            tx.clone(),
        ),
    );
    let state_metrics = Arc::new(std::sync::Mutex::new(String::new()));
    let offline = Arc::new(std::sync::RwLock::new(HashSet::new()));
    let limits = kubelet::ServeLimits {
        handshake_timeout: args.kubelet_tls_handshake_timeout,
        header_read_timeout: args.kubelet_header_read_timeout,
        max_connections: args.kubelet_max_connections,
    };
    let tls = Arc::new(tls);
    let ctx = Arc::new(kubelet::Ctx {
        pods: pods.clone(),
        mqtt: mqtt.clone(),
        stats: writer.stats(),
        state_metrics: state_metrics.clone(),
        authorizer: kubelet_auth::Authorizer::new(
            client.clone(),
            args.authorization_webhook_cache_authorized_ttl,
            args.authorization_webhook_cache_unauthorized_ttl,
        ),
        log_stats: mqtt.log_stats(),
        offline: offline.clone(),
        rates: Default::default(),
    });
    tasks.spawn(
        "kubelet API",
        kubelet::serve(listener, tls.clone(), ctx.clone(), limits, None),
    );
    let mut node_listeners = NodeListeners {
        ip: args.kubelet_listen.ip(),
        tls,
        ctx,
        limits,
        stop: stop.clone(),
        serving: HashMap::new(),
    };
    info!(
        kubelet = %args.kubelet_listen,
        advertise = %args.advertise_address,
        "kedge bridge started"
    );

    let resolver = refs::TableResolver {
        table: ref_table.clone(),
        fetch: fetch_tx,
    };
    let mut fleets =
        Fleets::new(settings.topics.clone(), args.shards > 0).with_fleet_nodes(fleet_nodes);
    let mut bridge = Bridge::new(settings);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = tick.tick() => BridgeEvent::Tick,
            _ = &mut shutdown => break,
        };
        let span = info_span!("bridge_event", kind = event_name(&ev));
        async {
            if let BridgeEvent::NodeObjectDeleted(name) = &ev {
                writer.forget_node(name);
            }
            let now = now_ms();
            let mut actions = fleets.handle(&ev, now, &resolver);
            let tick = matches!(ev, BridgeEvent::Tick);
            if tick && let Ok(mut m) = state_metrics.lock() {
                *m = fleets::render_metrics(&fleets.gauges());
                m.push_str(&data_metrics::render(bridge.data_statuses()));
            }
            actions.extend(bridge.handle(ev, now, &resolver));
            if tick {
                let now_offline: HashSet<String> =
                    bridge.offline_devices().map(str::to_string).collect();
                if let Ok(mut o) = offline.write()
                    && *o != now_offline
                {
                    *o = now_offline;
                }
            }
            if tick && let Ok(mut t) = ref_table.lock() {
                let referenced: BTreeSet<&ObjRef> =
                    bridge.referenced().chain(fleets.referenced()).collect();
                t.retain(&referenced);
            }
            let mut actions = std::collections::VecDeque::from(actions);
            while let Some(action) = actions.pop_front() {
                match action {
                    Action::Publish { topic, payload } => mqtt.publish_retained(topic, payload),
                    Action::ClearRetained { topic } => mqtt.clear_signed_tombstone(topic),
                    Action::ServeNode { name, port } => {
                        if let Err(e) = node_listeners.serve(&name, port) {
                            warn!(node = %name, port, error = %e, "cannot serve the Node's kubelet API port; trying the next one");
                            let failed = BridgeEvent::ServeFailed { node: name, port };
                            actions.extend(bridge.handle(failed, now, &resolver));
                        }
                    }
                    other => writer.push(other),
                }
            }
        }
        .instrument(span)
        .await;
    }

    // Shutdown: no new work; what is queued is written, then the shards
    // are given back and the broker link closed.
    let deadline = Instant::now() + args.shutdown_grace_period;
    info!(grace_period = ?args.shutdown_grace_period, "kedge bridge stopping");
    stop.cancel();
    let held = match shard_task {
        Some(mut task) => match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(held)) => Some(held),
            Ok(Err(e)) => {
                warn!(error = %e, "the shard task failed; its Leases expire on their own");
                None
            }
            Err(_) => {
                task.abort();
                warn!(
                    "a shard round was still running at the deadline; its Leases expire on their own"
                );
                None
            }
        },
        None => None,
    };
    node_listeners.stop_all();
    let unfinished = tasks.join(deadline).await;
    if !unfinished.is_empty() {
        warn!(tasks = ?unfinished, "bridge tasks still running at the deadline were aborted");
    }
    match writer.drain(deadline).await {
        Ok(()) => info!("Kubernetes API writes flushed"),
        Err(left) => warn!(
            unwritten = %left,
            grace_period = ?args.shutdown_grace_period,
            "Kubernetes API writes not made within the shutdown grace period"
        ),
    }
    if let Some(held) = held {
        let shards = held.len();
        match tokio::time::timeout(RELEASE_TIMEOUT, held.release()).await {
            Ok(kept) if kept.is_empty() => info!(shards, "shard leases released"),
            Ok(kept) => warn!(?kept, "shard leases not released; they expire on their own"),
            Err(_) => warn!("releasing the shard leases timed out; they expire on their own"),
        }
    }
    mqtt.close();
    let mut mqtt_task = mqtt_task;
    if tokio::time::timeout(RELEASE_TIMEOUT, &mut mqtt_task)
        .await
        .is_err()
    {
        mqtt_task.abort();
        warn!("the broker link did not close in time; dropped without DISCONNECT");
    }
    drop(rx);
    info!("kedge bridge stopped");
    Ok(())
}

fn event_name(ev: &BridgeEvent) -> &'static str {
    match ev {
        BridgeEvent::Node { .. } => "node",
        BridgeEvent::Report { .. } => "report",
        BridgeEvent::DeviceEvent { .. } => "device_event",
        BridgeEvent::Desired { .. } => "desired",
        BridgeEvent::MqttSynced => "mqtt_synced",
        BridgeEvent::PodApplied(_) => "pod_applied",
        BridgeEvent::PodDeleted(_) => "pod_deleted",
        BridgeEvent::PodsSynced { .. } => "pods_synced",
        BridgeEvent::ObjectChanged(_) => "object_changed",
        BridgeEvent::NodeObjectDeleted(_) => "node_deleted",
        BridgeEvent::NodeObject { .. } => "node_object",
        BridgeEvent::CloudLabels { .. } => "cloud_labels",
        BridgeEvent::Tick => "tick",
        BridgeEvent::ShardsChanged { .. } => "shards_changed",
        BridgeEvent::ServeFailed { .. } => "serve_failed",
        BridgeEvent::Fleet(FleetEvent::Report { .. }) => "fleet_report",
        BridgeEvent::Fleet(FleetEvent::Record { .. }) => "fleet_record",
        BridgeEvent::Fleet(_) => "fleet_deployment",
    }
}
