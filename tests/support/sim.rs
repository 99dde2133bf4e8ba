//! A device simulator: N fake kedge devices in one process, speaking the wire
//! protocol (docs/wire.md) over a few MQTT connections. Each device publishes
//! a retained online node status at start and every heartbeat; when a desired
//! spec arrives it answers at once with a Running, Ready pod status (seq from
//! its own counter), and a tombstone with an empty retained report. It runs
//! no workloads: it exists to load the bridge with many devices (see
//! `benches/bridge_scale.rs`). Include it with
//! `#[path = "support/sim.rs"] mod sim;`.
//!
//! With `fleet`, devices carry labels in their node status, read every
//! fleet record (`_fleet/+/+`) and spec (`_fleet-spec/+`), decide what to
//! run with `fleet::resolve` as the agent does, and report on each fleet
//! that targets them (`{node}/fleet/{ns}/{name}`): Ready at once, or Failed
//! when `fails` says the spec does not run on that device.
//!
//! Simulated devices share connections, so they have no last will; the
//! bridge's heartbeat timeout still applies to them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use kedge::fleet::resolve;
use kedge::model::{
    ContainerState, ContainerStatus, NodeAddress, NodeCondition, NodeConditionType, NodeInfo,
    NodeResources, NodeStatus, PodCondition, PodConditionType, PodKey, PodPhase, PodStatus, now_ms,
};
use kedge::model::{FleetDeployment, FleetPodState, FleetReport, PodSpec};
use kedge::wire::{self, Message, TopicKind, Topics};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::task::JoinHandle;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOpts {
    /// `host:port` of the broker (plain MQTT).
    pub host: String,
    pub port: u16,
    pub prefix: String,
    /// Number of devices, named `{name_prefix}{i}`.
    pub devices: usize,
    pub name_prefix: String,
    /// MQTT connections shared by the devices.
    pub connections: usize,
    pub heartbeat: Duration,
    /// Fleet members (None: devices only take specs by name).
    pub fleet: Option<SimFleet>,
}

/// How simulated devices take part in fleets.
#[derive(Debug, Clone)]
pub struct SimFleet {
    /// Device i's labels.
    pub labels: fn(usize) -> BTreeMap<String, String>,
    /// Whether device i fails to run this fleet pod spec.
    pub fails: fn(usize, &PodSpec) -> bool,
}

/// Counters and timestamps of a running simulation.
#[derive(Debug, Default)]
pub struct SimStats {
    pub node_statuses: AtomicU64,
    pub specs: AtomicU64,
    pub reports: AtomicU64,
    pub fleet_reports: AtomicU64,
    /// When the Running status of each pod was published.
    pub running_at: Mutex<HashMap<PodKey, Instant>>,
}

/// A running simulation; stops when dropped.
pub struct Sim {
    pub stats: Arc<SimStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The name of device `i`.
pub fn device_name(opts: &SimOpts, i: usize) -> String {
    format!("{}{i}", opts.name_prefix)
}

/// When the simulation started: the conditions' transition time (they never change).
fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(now_ms)
}

fn node_status(name: &str, ip: &str, labels: &BTreeMap<String, String>) -> NodeStatus {
    let now = now_ms();
    let cond = |kind, status: bool, reason: &str| NodeCondition {
        kind,
        status,
        reason: reason.into(),
        message: "simulated".into(),
        last_transition_ms: epoch_ms(),
        last_heartbeat_ms: now,
    };
    NodeStatus {
        name: name.into(),
        online: true,
        heartbeat_ms: now,
        info: NodeInfo {
            architecture: "arm64".into(),
            operating_system: "linux".into(),
            kernel_version: "6.1.0-sim".into(),
            os_image: "kedge device simulator".into(),
            hostname: name.into(),
            agent_version: "0.1.0".into(),
            container_runtime_version: "sim://1".into(),
            machine_id: String::new(),
            boot_id: String::new(),
            system_uuid: String::new(),
        },
        capacity: NodeResources {
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
            pods: 10,
            ephemeral_storage_bytes: 8 << 30,
        },
        allocatable: NodeResources {
            cpu_millis: 1000,
            memory_bytes: 448 << 20,
            pods: 10,
            ephemeral_storage_bytes: 8 << 30,
        },
        conditions: vec![
            cond(NodeConditionType::Ready, true, "KedgeReady"),
            cond(
                NodeConditionType::MemoryPressure,
                false,
                "KubeletHasSufficientMemory",
            ),
            cond(
                NodeConditionType::DiskPressure,
                false,
                "KubeletHasNoDiskPressure",
            ),
            cond(
                NodeConditionType::PIDPressure,
                false,
                "KubeletHasSufficientPID",
            ),
        ],
        addresses: vec![NodeAddress {
            kind: "InternalIP".into(),
            address: ip.into(),
        }],
        pod_count: 0,
        labels: labels.clone(),
        sealing_key: None,
        data: None,
    }
}

fn running(spec: &kedge::model::PodSpec, ip: &str) -> PodStatus {
    let now = now_ms();
    let cond = |kind| PodCondition {
        kind,
        status: true,
        last_transition_ms: now,
        reason: None,
        message: None,
    };
    PodStatus {
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
        uid: spec.uid.clone(),
        observed_generation: spec.generation,
        phase: PodPhase::Running,
        conditions: vec![
            cond(PodConditionType::Initialized),
            cond(PodConditionType::ContainersReady),
            cond(PodConditionType::Ready),
        ],
        reason: None,
        message: None,
        start_time_ms: Some(now),
        host_ip: Some(ip.into()),
        pod_ip: Some(ip.into()),
        init_container_statuses: vec![],
        container_statuses: spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: String::new(),
                container_id: format!("sim-{}-{}", spec.uid, c.name),
                ready: true,
                started: true,
                restart_count: 0,
                state: ContainerState::Running { started_at_ms: now },
                last_state: None,
            })
            .collect(),
    }
}

fn ip_of(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Starts the devices; returns at once (connections come up in the background).
pub fn start(opts: SimOpts) -> Sim {
    let stats = Arc::new(SimStats::default());
    let conns = opts.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let devices: Vec<usize> = (0..opts.devices).filter(|i| i % conns == c).collect();
        let opts = opts.clone();
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            run_connection(opts, c, devices, stats).await;
        }));
    }
    Sim { stats, tasks }
}

async fn run_connection(opts: SimOpts, c: usize, devices: Vec<usize>, stats: Arc<SimStats>) {
    let topics = Topics::new(opts.prefix.clone());
    let mut mo = MqttOptions::new(
        format!("kedge-sim-{c}-{}", std::process::id()),
        &opts.host,
        opts.port,
    );
    mo.set_keep_alive(Duration::from_secs(30));
    mo.set_max_packet_size(16 << 20, 16 << 20);
    mo.set_clean_session(true);
    mo.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(mo, 100_000);
    let index: HashMap<String, usize> = devices
        .iter()
        .map(|i| (device_name(&opts, *i), *i))
        .collect();
    let counter = Arc::new(AtomicU64::new(1));

    // Heartbeats: every device once per interval, spread over the interval.
    let hb_client = client.clone();
    let labels_of = |i: usize| {
        opts.fleet
            .as_ref()
            .map(|f| (f.labels)(i))
            .unwrap_or_default()
    };
    let hb_names: Vec<(String, String, BTreeMap<String, String>)> = devices
        .iter()
        .map(|i| (device_name(&opts, *i), ip_of(*i), labels_of(*i)))
        .collect();
    let hb_stats = stats.clone();
    let hb_topics = topics.clone();
    let heartbeat = opts.heartbeat;
    let hb = tokio::spawn(async move {
        loop {
            let start = Instant::now();
            let step = heartbeat / (hb_names.len().max(1) as u32);
            for (k, (name, ip, labels)) in hb_names.iter().enumerate() {
                let s = node_status(name, ip, labels);
                let Ok(payload) = wire::encode(s.heartbeat_ms, &Message::NodeStatus(s)) else {
                    continue;
                };
                if hb_client
                    .publish(hb_topics.node(name), QoS::AtLeastOnce, true, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                hb_stats.node_statuses.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep_until((start + step * (k as u32 + 1)).into()).await;
            }
            tokio::time::sleep_until((start + heartbeat).into()).await;
        }
    });

    let mut fleets = FleetMembers::default();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let mut filters: Vec<rumqttc::SubscribeFilter> = index
                    .keys()
                    .map(|n| {
                        rumqttc::SubscribeFilter::new(topics.desired_filter(n), QoS::AtLeastOnce)
                    })
                    .collect();
                if opts.fleet.is_some() {
                    for f in [
                        topics.fleet_filter(),
                        format!("{}/_fleet-spec/+", topics.prefix()),
                    ] {
                        filters.push(rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                    }
                }
                for chunk in filters.chunks(500) {
                    let _ = client.subscribe_many(chunk.to_vec()).await;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let parsed = topics.parse(&p.topic);
                if let (
                    Some(fleet_opts),
                    Some(TopicKind::Fleet { .. } | TopicKind::FleetSpec { .. }),
                ) = (&opts.fleet, &parsed)
                {
                    fleets.take(parsed.clone(), &p.payload);
                    for (topic, payload) in fleets.reports(&opts, fleet_opts, &devices, &topics) {
                        stats.fleet_reports.fetch_add(1, Ordering::Relaxed);
                        let _ = client.publish(topic, QoS::AtLeastOnce, true, payload).await;
                    }
                    continue;
                }
                let Some(TopicKind::Desired { node, pod }) = parsed else {
                    continue;
                };
                let Some(i) = index.get(&node) else { continue };
                if p.payload.is_empty() {
                    let _ = client
                        .publish(
                            topics.reported(&node, &pod),
                            QoS::AtLeastOnce,
                            true,
                            Vec::new(),
                        )
                        .await;
                    continue;
                }
                let Ok(wire::Envelope {
                    message: Message::DesiredPod(spec),
                    ..
                }) = wire::decode(&p.payload)
                else {
                    continue;
                };
                stats.specs.fetch_add(1, Ordering::Relaxed);
                let status = running(&spec, &ip_of(*i));
                let seq = counter.fetch_add(1, Ordering::Relaxed);
                let Ok(payload) = wire::encode(seq, &Message::PodStatus(status)) else {
                    continue;
                };
                stats
                    .running_at
                    .lock()
                    .expect("stats")
                    .insert(pod.clone(), Instant::now());
                let _ = client
                    .publish(
                        topics.reported(&node, &pod),
                        QoS::AtLeastOnce,
                        true,
                        payload,
                    )
                    .await;
                stats.reports.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if hb.is_finished() {
            return;
        }
    }
}

/// The fleet side of one connection's devices.
#[derive(Default)]
struct FleetMembers {
    records: BTreeMap<PodKey, FleetDeployment>,
    specs: HashMap<String, PodSpec>,
    /// What each device last reported: (node, fleet) → payload.
    sent: HashMap<(String, PodKey), Vec<u8>>,
}

impl FleetMembers {
    fn take(&mut self, topic: Option<TopicKind>, payload: &[u8]) {
        match topic {
            Some(TopicKind::Fleet { fleet }) => match wire::decode_as::<FleetDeployment>(payload) {
                Ok((_, r)) if !payload.is_empty() => {
                    self.records.insert(fleet, r);
                }
                _ => {
                    self.records.remove(&fleet);
                }
            },
            Some(TopicKind::FleetSpec { digest }) => {
                if let Ok((_, spec)) = wire::decode_as::<PodSpec>(payload) {
                    self.specs.insert(digest, spec);
                }
            }
            _ => {}
        }
    }

    /// The reports that changed, as (topic, retained payload).
    fn reports(
        &mut self,
        opts: &SimOpts,
        fleet_opts: &SimFleet,
        devices: &[usize],
        topics: &Topics,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for &i in devices {
            let node = device_name(opts, i);
            let labels = (fleet_opts.labels)(i);
            let plan = resolve::plan(
                kedge::fleet::bucket(&node),
                &labels,
                self.records.values(),
                &BTreeSet::new(),
            );
            for (key, record) in &self.records {
                let report = match plan.fleets.get(key) {
                    Some(resolve::Verdict::Targeted(t)) => {
                        let want = t.want.clone();
                        let spec = want.as_ref().and_then(|w| self.specs.get(&w.spec_digest));
                        let (state, running, reason) = match (&want, spec) {
                            _ if t.superseded_by.is_some() => (FleetPodState::Superseded, 0, None),
                            (None, _) => (FleetPodState::Waiting, 0, None),
                            (Some(_), None) => (FleetPodState::Pending, 0, None),
                            (Some(w), Some(spec)) if (fleet_opts.fails)(i, spec) => (
                                FleetPodState::Failed,
                                0,
                                Some(format!("CrashLoopBackOff: revision {} fails", w.revision)),
                            ),
                            (Some(w), Some(_)) => (FleetPodState::Ready, w.revision, None),
                        };
                        let r = FleetReport {
                            fleet_uid: record.uid.clone(),
                            desired_revision: want.as_ref().map_or(0, |w| w.revision),
                            running_revision: running,
                            state,
                            groups: t.groups,
                            reason,
                            message: None,
                        };
                        wire::encode(0, &Message::FleetReport(r)).unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                let k = (node.clone(), key.clone());
                let before = self.sent.get(&k);
                if before == Some(&report) || (before.is_none() && report.is_empty()) {
                    continue;
                }
                out.push((topics.fleet_report(&node, key), report.clone()));
                if report.is_empty() {
                    self.sent.remove(&k);
                } else {
                    self.sent.insert(k, report);
                }
            }
        }
        out
    }
}
