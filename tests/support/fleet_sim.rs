//! A fleet device simulator: N simulated kedge devices, **each with its own
//! MQTT connection** (client id `kedge-agent-{name}`, a last will, keep-alive),
//! speaking the fleet side of the wire protocol (docs/wire.md, "Fleets")
//! exactly as the agent does: it subscribes to `{prefix}/_fleet/+/+` and its
//! `{node}/labels`, decides with the agent's own `fleet::resolve::plan`,
//! subscribes to the spec of each revision it needs and checks its sha256,
//! then "runs" it at once and publishes a retained `FleetReport` (Ready).
//! It runs no workloads: it exists to load the broker and the fleet
//! controller with many devices (`benches/fleet_scale.rs`). Include it with
//! `#[path = "support/fleet_sim.rs"] mod fleet_sim;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kedge::fleet::resolve::{self, Verdict};
use kedge::model::{
    FleetDeployment, FleetPodState, FleetReport, NodeInfo, NodeLabels, NodeResources, NodeStatus,
    PodKey, PodSpec, now_ms,
};
use kedge::wire::{self, Message, TopicKind, Topics};
use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct FleetSimOpts {
    pub host: String,
    /// Broker listener ports: device i connects to `ports[i % len]` (each
    /// (address, port) pair has its own ~28,000 ephemeral source ports).
    pub ports: Vec<u16>,
    pub prefix: String,
    pub devices: usize,
    /// Device numbers start here (names `{name_prefix}{first + i}`; stats
    /// stay indexed from 0).
    pub first: usize,
    pub name_prefix: String,
    /// Labels of device i (its global number).
    pub labels: fn(usize) -> BTreeMap<String, String>,
    pub keep_alive: Duration,
    /// How often the node status is published again (a real agent's
    /// `node.heartbeat_ms`); the first one at a random point within it.
    pub heartbeat: Duration,
    /// Connections being set up at once.
    pub connect_parallelism: usize,
}

/// Per-device results, indexed by device number.
pub struct FleetSimStats {
    pub epoch: Instant,
    pub connected: AtomicUsize,
    /// The revision each device last reported Ready for (by fleet: one
    /// fleet per simulation is what the bench measures).
    pub ready_revision: Vec<AtomicU64>,
    /// When (Unix ms) it reported that revision Ready.
    pub ready_at_ms: Vec<AtomicU64>,
    pub reports: AtomicU64,
    pub spec_fetches: AtomicU64,
    pub bad_specs: AtomicU64,
}

impl FleetSimStats {
    /// Devices that report `revision` Ready.
    pub fn ready(&self, revision: u64) -> usize {
        self.ready_revision
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) == revision)
            .count()
    }
    /// Each device's time from `since_unix_ms` until it reported `revision`
    /// Ready.
    pub fn latencies(&self, revision: u64, since_unix_ms: u64) -> Vec<Duration> {
        let base = since_unix_ms;
        self.ready_revision
            .iter()
            .zip(&self.ready_at_ms)
            .filter(|(r, _)| r.load(Ordering::Relaxed) == revision)
            .map(|(_, t)| Duration::from_millis(t.load(Ordering::Relaxed).saturating_sub(base)))
            .collect()
    }
}

pub struct FleetSim {
    pub stats: Arc<FleetSimStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FleetSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn node_status(name: &str, online: bool, labels: &BTreeMap<String, String>) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        online,
        heartbeat_ms: if online { now_ms() } else { 0 },
        info: NodeInfo {
            architecture: "arm64".into(),
            operating_system: "linux".into(),
            kernel_version: "6.1.0".into(),
            os_image: "fleet-sim".into(),
            hostname: name.into(),
            agent_version: "kedge-sim".into(),
            container_runtime_version: String::new(),
            machine_id: String::new(),
            boot_id: String::new(),
            system_uuid: String::new(),
        },
        capacity: NodeResources {
            cpu_millis: 4000,
            memory_bytes: 4 << 30,
            pods: 110,
            ephemeral_storage_bytes: 32 << 30,
        },
        allocatable: NodeResources {
            cpu_millis: 4000,
            memory_bytes: 4 << 30,
            pods: 110,
            ephemeral_storage_bytes: 32 << 30,
        },
        conditions: Vec::new(),
        addresses: Vec::new(),
        pod_count: 0,
        labels: labels.clone(),
        sealing_key: None,
        data: None,
    }
}

/// One simulated device's state.
struct Device {
    index: usize,
    name: String,
    own_labels: BTreeMap<String, String>,
    cloud_labels: BTreeMap<String, String>,
    records: BTreeMap<PodKey, FleetDeployment>,
    specs: BTreeMap<String, PodSpec>,
    fetching: BTreeSet<String>,
    /// Pod → revision it "runs".
    running: BTreeMap<PodKey, u64>,
    reports: BTreeMap<PodKey, FleetReport>,
    seq: u64,
}

impl Device {
    fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.own_labels.clone();
        l.extend(self.cloud_labels.clone());
        l
    }

    /// The agent's rules (agent::fleet), without workloads: a revision
    /// whose spec is known runs at once.
    async fn refleet(&mut self, client: &AsyncClient, topics: &Topics, stats: &FleetSimStats) {
        let plan = resolve::plan(
            kedge::fleet::bucket(&self.name),
            &self.labels(),
            self.records.values(),
            &BTreeSet::new(),
        );
        let mut needed = BTreeSet::new();
        self.running.retain(|pod, _| plan.pods.contains_key(pod));
        for (pod, (_, rev)) in &plan.pods {
            if self.specs.contains_key(&rev.spec_digest) {
                self.running.insert(pod.clone(), rev.revision);
            } else {
                needed.insert(rev.spec_digest.clone());
            }
        }
        for d in needed.difference(&self.fetching) {
            let _ = client
                .subscribe(topics.fleet_spec(d), QoS::AtLeastOnce)
                .await;
        }
        for d in self.fetching.difference(&needed) {
            let _ = client.unsubscribe(topics.fleet_spec(d)).await;
        }
        self.fetching = needed;
        for (key, verdict) in plan.fleets {
            let Some(f) = self.records.get(&key) else {
                continue;
            };
            let report = match verdict {
                Verdict::NotTargeted => None,
                Verdict::Targeted(t) => {
                    let desired = t.want.as_ref().map_or(0, |r| r.revision);
                    let running = self.running.get(&f.pod_key()).copied().unwrap_or(0);
                    let state = if t.superseded_by.is_some() {
                        FleetPodState::Superseded
                    } else if t.want.is_none() {
                        FleetPodState::Waiting
                    } else if running == desired {
                        FleetPodState::Ready
                    } else {
                        FleetPodState::Pending
                    };
                    Some(FleetReport {
                        fleet_uid: f.uid.clone(),
                        desired_revision: desired,
                        running_revision: running,
                        state,
                        groups: t.groups,
                        reason: None,
                        message: None,
                    })
                }
            };
            if self.reports.get(&key) == report.as_ref() {
                continue;
            }
            self.seq += 1;
            let payload = match &report {
                Some(r) => {
                    wire::encode(self.seq, &Message::FleetReport(r.clone())).unwrap_or_default()
                }
                None => Vec::new(),
            };
            if report.is_none() && !self.reports.contains_key(&key) {
                continue;
            }
            let _ = client
                .publish(
                    topics.fleet_report(&self.name, &key),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .await;
            stats.reports.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = &report
                && r.state == FleetPodState::Ready
            {
                stats.ready_revision[self.index].store(r.running_revision, Ordering::Relaxed);
                stats.ready_at_ms[self.index].store(now_ms(), Ordering::Relaxed);
            }
            match report {
                Some(r) => self.reports.insert(key, r),
                None => self.reports.remove(&key),
            };
        }
    }

    async fn on_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        client: &AsyncClient,
        topics: &Topics,
        stats: &FleetSimStats,
    ) {
        match topics.parse(topic) {
            Some(TopicKind::Fleet { fleet }) => {
                if payload.is_empty() {
                    self.records.remove(&fleet);
                } else if let Ok((_, f)) = wire::decode_as::<FleetDeployment>(payload) {
                    self.records.insert(fleet, f);
                }
            }
            Some(TopicKind::FleetSpec { digest }) => {
                if !self.fetching.contains(&digest) || payload.is_empty() {
                    return;
                }
                stats.spec_fetches.fetch_add(1, Ordering::Relaxed);
                match wire::decode_as::<PodSpec>(payload) {
                    Ok((_, spec)) if sha256_hex(payload) == digest => {
                        self.specs.insert(digest, spec);
                    }
                    _ => {
                        stats.bad_specs.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Some(TopicKind::Labels { .. }) => {
                self.cloud_labels = wire::decode_as::<NodeLabels>(payload)
                    .map(|(_, l)| l.labels)
                    .unwrap_or_default();
            }
            _ => return,
        }
        self.refleet(client, topics, stats).await;
    }
}

impl FleetSim {
    /// Starts the devices; returns at once (watch `stats.connected`).
    pub fn start(opts: FleetSimOpts) -> FleetSim {
        let stats = Arc::new(FleetSimStats {
            epoch: Instant::now(),
            connected: AtomicUsize::new(0),
            ready_revision: (0..opts.devices).map(|_| AtomicU64::new(0)).collect(),
            ready_at_ms: (0..opts.devices).map(|_| AtomicU64::new(0)).collect(),
            reports: AtomicU64::new(0),
            spec_fetches: AtomicU64::new(0),
            bad_specs: AtomicU64::new(0),
        });
        let gate = Arc::new(Semaphore::new(opts.connect_parallelism.max(1)));
        let topics = Topics::new(&opts.prefix);
        let mut tasks = Vec::with_capacity(opts.devices);
        for i in 0..opts.devices {
            let name = format!("{}{}", opts.name_prefix, opts.first + i);
            let port = opts.ports[i % opts.ports.len()];
            let labels = (opts.labels)(opts.first + i);
            let mut mqtt = MqttOptions::new(format!("kedge-agent-{name}"), &opts.host, port);
            mqtt.set_keep_alive(opts.keep_alive);
            mqtt.set_clean_session(true);
            mqtt.set_max_packet_size(1 << 20, 1 << 20);
            let will = wire::encode(0, &Message::NodeStatus(node_status(&name, false, &labels)))
                .unwrap_or_default();
            mqtt.set_last_will(LastWill::new(
                topics.node(&name),
                will,
                QoS::AtLeastOnce,
                true,
            ));
            let stats = stats.clone();
            let gate = gate.clone();
            let topics = topics.clone();
            let heartbeat = opts.heartbeat;
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.ok();
                let (client, mut eventloop) = AsyncClient::new(mqtt, 16);
                let mut device = Device {
                    index: i,
                    name: name.clone(),
                    own_labels: labels.clone(),
                    cloud_labels: BTreeMap::new(),
                    records: BTreeMap::new(),
                    specs: BTreeMap::new(),
                    fetching: BTreeSet::new(),
                    running: BTreeMap::new(),
                    reports: BTreeMap::new(),
                    seq: 0,
                };
                let mut permit = permit;
                let first = heartbeat.mul_f64(fastrand::f64());
                let mut next_beat = tokio::time::Instant::now() + first;
                loop {
                    let event = tokio::select! {
                        ev = eventloop.poll() => ev,
                        _ = tokio::time::sleep_until(next_beat) => {
                            next_beat += heartbeat;
                            let status = node_status(&name, true, &device.labels());
                            if let Ok(p) = wire::encode(status.heartbeat_ms, &Message::NodeStatus(status)) {
                                let _ = client.try_publish(topics.node(&name), QoS::AtLeastOnce, true, p);
                            }
                            continue;
                        }
                    };
                    match event {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            drop(permit.take());
                            stats.connected.fetch_add(1, Ordering::Relaxed);
                            let _ = client
                                .subscribe(topics.labels(&name), QoS::AtLeastOnce)
                                .await;
                            let _ = client.subscribe(topics.fleet_filter(), QoS::AtLeastOnce).await;
                            let status = node_status(&name, true, &device.labels());
                            if let Ok(p) =
                                wire::encode(status.heartbeat_ms, &Message::NodeStatus(status))
                            {
                                let _ = client
                                    .publish(topics.node(&name), QoS::AtLeastOnce, true, p)
                                    .await;
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            device
                                .on_publish(&p.topic, &p.payload, &client, &topics, &stats)
                                .await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            drop(permit.take());
                            tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..1000)))
                                .await;
                        }
                    }
                }
            }));
        }
        FleetSim { stats, tasks }
    }
}
