//! Fleets at scale: one fleet deployment rolled out to N simulated devices,
//! **each with its own MQTT connection** (tests/support/fleet_sim.rs, which
//! decides with the agent's own `fleet::resolve`), through a real Mosquitto.
//!
//! `cargo bench --features bridge --bench fleet_scale`
//! (`KEDGE_BENCH_DEVICES=10000,30000,100000` the sizes;
//! `KEDGE_BENCH_IDLE_SECS` the idle window, default 120;
//! `KEDGE_BENCH_CONTROLLER=bridge|direct`: who turns the rollout into MQTT
//! messages — `bridge` (the default) runs the real control plane and
//! `kedge bridge`, creates a FleetDeployment custom resource and then
//! changes its template; `direct` publishes the spec and the record from
//! the bench, the floor any controller must at least send).
//!
//! One process may hold at most `ulimit -Hn` sockets (20,000 on the
//! development machines, which cannot raise it: no CAP_SYS_RESOURCE). So,
//! as a real deployment scales its broker out, devices are sharded: up to
//! 15,000 devices per simulator process and per Mosquitto. Above one shard,
//! each shard's Mosquitto is an edge broker bridged to one core broker (the
//! fleet records and specs flow in, the devices' reports and presence flow
//! out), and the controller talks to the core: the layout of an
//! EMQX/HiveMQ cluster with Mosquitto's means. Each (address, port) pair
//! has ~28,000 source ports, so one listener per shard is enough.
//!
//! Prints one row per size: connect time, broker RSS per device, the
//! bridge's RSS per device, time from the apply until each device reports
//! the revision Ready (p50/p99 over every device, with the sample count;
//! `benches/stats.rs`, so a p99 needs 100 devices; all), MQTT bytes per device per rollout
//! (the device-facing brokers' own `$SYS` byte counters, both directions),
//! the bridge's CPU time and Kubernetes API writes per rollout, the same
//! for an update, and the bytes per device per idle hour (keep-alives
//! every 60 s, node status every 10 min).

#[path = "../tests/support/fleet_sim.rs"]
mod fleet_sim;
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_sim::{FleetSim, FleetSimOpts};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kedge::model::{Cohort, FleetDeployment, PodSpec, Rollout};
use kedge::wire::{self, Message, Topics};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::k8s::{
    BridgeOpts, BridgeProc, ControlPlane, ControlPlaneOpts, bridge_metric, cpu_time,
};
use support::{free_port, rss_kib, wait_until};

const PREFIX: &str = "kedge/v1";

fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let limit = Rlimit {
        current: Some(want),
        maximum: Some(want.max(cur.maximum.unwrap_or(0))),
    };
    if setrlimit(Resource::Nofile, limit).is_err() {
        // Not root: as high as the hard limit allows.
        let hard = cur.maximum;
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}

/// Devices per simulator process and per Mosquitto (`KEDGE_BENCH_SHARD`
/// to try the sharded layout at small sizes).
fn shard() -> usize {
    std::env::var("KEDGE_BENCH_SHARD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15_000)
}

/// A Mosquitto: no persistence, `$SYS` every second; an edge broker is
/// bridged to the core on `core_port`.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(core_port: Option<u16>, name: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!(
            "allow_anonymous true\npersistence false\nsys_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 1000\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\nmax_connections -1\n"
        );
        if let Some(core) = core_port {
            conf.push_str(&format!(
                "connection {name}\naddress 127.0.0.1:{core}\nclientid bench-{name}\ncleansession true\n\
                 topic {PREFIX}/_fleet/# in 1\ntopic {PREFIX}/_fleet-spec/# in 1\ntopic {PREFIX}/+/labels in 1\n\
                 topic {PREFIX}/+/fleet/# out 1\ntopic {PREFIX}/+/node out 1\n"
            ));
        }
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        wait_until("mosquitto listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Broker {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker's total bytes (received + sent), from `$SYS`.
struct SysBytes {
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    updates: Arc<AtomicU64>,
}

impl SysBytes {
    fn start(port: u16) -> SysBytes {
        let s = SysBytes {
            received: Arc::default(),
            sent: Arc::default(),
            updates: Arc::default(),
        };
        let (r, t, u) = (s.received.clone(), s.sent.clone(), s.updates.clone());
        tokio::spawn(async move {
            let mut o = MqttOptions::new("bench-sys", "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(60));
            let (client, mut ev) = AsyncClient::new(o, 16);
            let _ = client
                .subscribe("$SYS/broker/bytes/+", QoS::AtMostOnce)
                .await;
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = e {
                    let v: u64 = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    match p.topic.as_str() {
                        "$SYS/broker/bytes/received" => r.store(v, Ordering::Relaxed),
                        "$SYS/broker/bytes/sent" => t.store(v, Ordering::Relaxed),
                        _ => continue,
                    }
                    u.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        s
    }
    /// The total after the next two `$SYS` updates (both counters fresh).
    fn settled(&self) -> u64 {
        let start = self.updates.load(Ordering::Relaxed);
        wait_until("$SYS byte counters", Duration::from_secs(30), || {
            (self.updates.load(Ordering::Relaxed) >= start + 4).then_some(())
        });
        self.received.load(Ordering::Relaxed) + self.sent.load(Ordering::Relaxed)
    }
}

/// A fleet pod spec (never run by the simulator; its size is realistic).
fn spec(uid: &str, version: &str) -> PodSpec {
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sensor
spec:
  runtimeClassName: kedge-wasm
  containers:
  - name: main
    image: registry.example.com/acme/sensor:{version}
    args: ["--interval", "5s", "--topic", "telemetry/temperature"]
    env:
    - name: MODE
      value: edge
    resources:
      limits:
        memory: 16Mi
"#
    );
    let pods = kedge::model::convert::parse_pod_manifests(&yaml).expect("manifest");
    let mut s = kedge::model::convert::pod_spec_from_k8s(&pods[0]).expect("converts");
    s.namespace = "default".into();
    s.uid = uid.into();
    s.generation = 0;
    s
}

/// The floor: publishes the spec and the record itself (what any
/// controller must at least send), returns the publish instant.
async fn publish_direct(client: &AsyncClient, revision: u64, version: &str) {
    let topics = Topics::new(PREFIX);
    let s = spec("fleet-sensors", version);
    let payload = wire::encode(0, &Message::DesiredPod(s)).expect("encodes");
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let f = FleetDeployment {
        namespace: "default".into(),
        name: "sensors".into(),
        uid: "fleet-sensors".into(),
        selector: "building=b43".into(),
        priority: 0,
        pod_name: "sensor".into(),
        revision,
        spec_digest: digest.clone(),
        cohorts: vec![Cohort::everyone()],
        stable: None,
        rollout: Rollout::default(),
    };
    client
        .publish(topics.fleet_spec(&digest), QoS::AtLeastOnce, true, payload)
        .await
        .expect("publish spec");
    let record = wire::encode(0, &Message::FleetDeployment(f)).expect("encodes");
    client
        .publish(
            topics.fleet(&kedge::model::PodKey::new("default", "sensors")),
            QoS::AtLeastOnce,
            true,
            record,
        )
        .await
        .expect("publish record");
}

/// Who turns "roll this out" into MQTT messages.
enum Controller {
    /// The bench publishes the spec and the record itself: the floor.
    Direct(AsyncClient),
    /// The real `kedge bridge` with the real control plane: a
    /// FleetDeployment custom resource is created, then its template
    /// changed.
    Bridge(Box<BridgeSide>),
}

struct BridgeSide {
    cp: ControlPlane,
    bridge: BridgeProc,
    client: kube::Client,
}

impl BridgeSide {
    fn start(rt: &tokio::runtime::Runtime, core_port: u16) -> BridgeSide {
        let cp = ControlPlane::start(ControlPlaneOpts {
            controllers: false,
            ..Default::default()
        });
        let bridge = BridgeProc::start(BridgeOpts {
            broker_url: format!("mqtt://127.0.0.1:{core_port}"),
            kubeconfig: cp.kubeconfig.clone(),
            certs: cp.certs.clone(),
            extra_args: vec![
                // The simulated devices are fleet members, not Nodes.
                "--node-selector=kedge.io/node=true".into(),
                "--heartbeat-timeout-ms=1200000".into(),
            ],
        });
        let client = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config");
            kube::Client::try_from(cfg).expect("client")
        });
        // The CRD, as users install it.
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(
            &std::fs::read_to_string(
                support::repo_root().join("edge-manifests/fleetdeployment-crd.yaml"),
            )
            .expect("edge-manifests/fleetdeployment-crd.yaml"),
        )
        .expect("CRD yaml");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        rt.block_on(crds.create(&PostParams::default(), &crd))
            .expect("create CRD");
        wait_until("CRD established", Duration::from_secs(60), || {
            let c = rt.block_on(crds.get("fleetdeployments.kedge.io")).ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        });
        BridgeSide { cp, bridge, client }
    }

    fn fleets(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: "kedge.io".into(),
            version: "v1alpha1".into(),
            api_version: "kedge.io/v1alpha1".into(),
            kind: "FleetDeployment".into(),
            plural: "fleetdeployments".into(),
        };
        Api::namespaced_with(self.client.clone(), "default", &ar)
    }

    fn writes(&self) -> f64 {
        bridge_metric(
            &self.cp,
            self.bridge.kubelet_port,
            "kedge_bridge_api_requests_total",
        )
        .unwrap_or(0.0)
    }
}

fn template(version: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"labels": {"app": "sensor"}},
        "spec": {
            "runtimeClassName": "kedge-wasm",
            "containers": [{
                "name": "main",
                "image": format!("registry.example.com/acme/sensor:{version}"),
                "args": ["--interval", "5s", "--topic", "telemetry/temperature"],
                "env": [{"name": "MODE", "value": "edge"}],
                "resources": {"limits": {"memory": "16Mi"}}
            }]
        }
    })
}

/// Rolls `version` out through the controller.
fn apply(rt: &tokio::runtime::Runtime, c: &Controller, revision: u64, version: &str) {
    match c {
        Controller::Direct(client) => {
            rt.block_on(publish_direct(client, revision, version));
        }
        Controller::Bridge(b) => {
            let api = b.fleets();
            if revision == 1 {
                let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                    "apiVersion": "kedge.io/v1alpha1",
                    "kind": "FleetDeployment",
                    "metadata": {"name": "sensors", "namespace": "default"},
                    "spec": {"selector": "building=b43", "template": template(version)}
                }))
                .expect("object");
                rt.block_on(api.create(&PostParams::default(), &obj))
                    .expect("create FleetDeployment");
            } else {
                let patch = serde_json::json!({"spec": {"template": template(version)}});
                rt.block_on(api.patch("sensors", &PatchParams::default(), &Patch::Merge(&patch)))
                    .expect("patch FleetDeployment");
            }
        }
    }
}

struct Rollout1 {
    /// Apply → each device reports the revision Ready.
    ready: stats::Summary,
    all: Duration,
    bytes_per_device: f64,
    /// The bridge's CPU time and Kubernetes API writes during the rollout.
    bridge_cpu: Duration,
    api_writes: f64,
}

struct Row {
    devices: usize,
    brokers: usize,
    /// The bridge's RSS growth per device, once every device has reported
    /// (bridge mode).
    bridge_bytes_per_device: Option<f64>,
    connect: Duration,
    broker_kib_per_device: f64,
    first: Rollout1,
    update: Rollout1,
    idle_bytes_per_device_hour: f64,
}

/// What the simulator processes report, by global device number.
struct Devices {
    connected: AtomicU64,
    ready_revision: Vec<AtomicU64>,
    ready_at_ms: Vec<AtomicU64>,
}

impl Devices {
    fn ready(&self, revision: u64) -> usize {
        self.ready_revision
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) == revision)
            .count()
    }
    fn latencies(&self, revision: u64, since_ms: u64) -> Vec<Duration> {
        self.ready_revision
            .iter()
            .zip(&self.ready_at_ms)
            .filter(|(r, _)| r.load(Ordering::Relaxed) == revision)
            .map(|(_, t)| Duration::from_millis(t.load(Ordering::Relaxed).saturating_sub(since_ms)))
            .collect()
    }
}

/// A simulator process for devices `first..first + count` on `port`.
struct SimChild {
    child: Child,
}

impl SimChild {
    fn start(port: u16, first: usize, count: usize, devices: Arc<Devices>) -> SimChild {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD_ENV, format!("{port} {first} {count}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn simulator process");
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["C", n] => {
                        devices
                            .connected
                            .fetch_add(n.parse().unwrap_or(0), Ordering::Relaxed);
                    }
                    ["R", i, rev, ms] => {
                        let (Ok(i), Ok(rev), Ok(ms)) =
                            (i.parse::<usize>(), rev.parse::<u64>(), ms.parse::<u64>())
                        else {
                            continue;
                        };
                        if let (Some(r), Some(t)) =
                            (devices.ready_revision.get(i), devices.ready_at_ms.get(i))
                        {
                            t.store(ms, Ordering::Relaxed);
                            r.store(rev, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        });
        SimChild { child }
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CHILD_ENV: &str = "KEDGE_FLEET_SIM_CHILD";

/// The simulator process: runs its shard and streams connection and Ready
/// reports to the parent on stdout; ends when its stdin closes.
fn child_main(spec: &str) {
    let f: Vec<usize> = spec
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [port, first, count] = f[..] else {
        eprintln!("bad {CHILD_ENV}: {spec}");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = {
        let _g = rt.enter();
        FleetSim::start(FleetSimOpts {
            host: "127.0.0.1".into(),
            ports: vec![port as u16],
            prefix: PREFIX.into(),
            devices: count,
            first,
            name_prefix: "dev-".into(),
            labels: |_| BTreeMap::from([("building".to_string(), "b43".to_string())]),
            keep_alive: Duration::from_secs(60),
            heartbeat: Duration::from_secs(600),
            connect_parallelism: 256,
        })
    };
    std::thread::spawn(|| {
        let mut buf = String::new();
        while std::io::stdin().read_line(&mut buf).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });
    let mut announced = false;
    let mut sent = vec![0u64; count];
    let mut out = std::io::stdout().lock();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !announced && sim.stats.connected.load(Ordering::Relaxed) >= count {
            announced = true;
            let _ = writeln!(out, "C {count}");
        }
        for (i, r) in sim.stats.ready_revision.iter().enumerate() {
            let rev = r.load(Ordering::Relaxed);
            if rev != sent[i] {
                sent[i] = rev;
                let ms = sim.stats.ready_at_ms[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "R {} {rev} {ms}", first + i);
            }
        }
        let _ = out.flush();
    }
}

fn rollout(
    rt: &tokio::runtime::Runtime,
    controller: &Controller,
    devices: &Devices,
    sys: &[SysBytes],
    n: usize,
    revision: u64,
    version: &str,
) -> Rollout1 {
    let bytes = |sys: &[SysBytes]| sys.iter().map(SysBytes::settled).sum::<u64>();
    let before = bytes(sys);
    let (cpu0, writes0) = match controller {
        Controller::Bridge(b) => (cpu_time(b.bridge.pid()), b.writes()),
        Controller::Direct(_) => (Duration::ZERO, 0.0),
    };
    let since_ms = kedge::model::now_ms();
    let start = Instant::now();
    apply(rt, controller, revision, version);
    wait_until(
        &format!("{n} devices report revision {revision} Ready"),
        Duration::from_secs(1800),
        || (devices.ready(revision) >= n).then_some(()),
    );
    let all = start.elapsed();
    let lat = devices.latencies(revision, since_ms);
    let after = bytes(sys);
    let (bridge_cpu, api_writes) = match controller {
        Controller::Bridge(b) => {
            // The bridge has seen every report once its status says so.
            let api = b.fleets();
            wait_until(
                "the FleetDeployment's status counts every device",
                Duration::from_secs(600),
                || {
                    let o = rt.block_on(api.get("sensors")).ok()?;
                    (o.data["status"]["upToDate"].as_u64()? >= n as u64
                        && o.data["status"]["phase"] == "Complete")
                        .then_some(())
                },
            );
            (
                cpu_time(b.bridge.pid()).saturating_sub(cpu0),
                b.writes() - writes0,
            )
        }
        Controller::Direct(_) => (Duration::ZERO, 0.0),
    };
    Rollout1 {
        ready: stats::Summary::new(lat),
        all,
        bytes_per_device: (after - before) as f64 / n as f64,
        bridge_cpu,
        api_writes,
    }
}

fn run(n: usize, idle: Duration, bridge: bool) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let shards = n.div_ceil(shard()).max(1);
    let core = Broker::start(None, "core");
    let edges: Vec<Broker> = if shards > 1 {
        (0..shards)
            .map(|k| Broker::start(Some(core.port), &format!("edge{k}")))
            .collect()
    } else {
        Vec::new()
    };
    // The brokers devices connect to.
    let facing: Vec<&Broker> = if edges.is_empty() {
        vec![&core]
    } else {
        edges.iter().collect()
    };
    let rss = |bs: &[&Broker]| bs.iter().map(|b| rss_kib(b.child.id())).sum::<u64>();
    let rss0 = rss(&facing);
    let sys: Vec<SysBytes> = {
        let _g = rt.enter();
        facing.iter().map(|b| SysBytes::start(b.port)).collect()
    };
    let controller = if bridge {
        Controller::Bridge(Box::new(BridgeSide::start(&rt, core.port)))
    } else {
        let _g = rt.enter();
        let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", core.port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 64);
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        Controller::Direct(client)
    };
    let bridge_rss0 = match &controller {
        Controller::Bridge(b) => rss_kib(b.bridge.pid()),
        Controller::Direct(_) => 0,
    };
    let devices = Arc::new(Devices {
        connected: AtomicU64::new(0),
        ready_revision: (0..n).map(|_| AtomicU64::new(0)).collect(),
        ready_at_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let start = Instant::now();
    let _children: Vec<SimChild> = (0..shards)
        .map(|k| {
            let first = k * shard();
            let count = shard().min(n - first);
            SimChild::start(facing[k].port, first, count, devices.clone())
        })
        .collect();
    wait_until(
        &format!("{n} devices connected"),
        Duration::from_secs(1800),
        || (devices.connected.load(Ordering::Relaxed) >= n as u64).then_some(()),
    );
    let connect = start.elapsed();
    let rss1 = rss(&facing);
    let first = rollout(&rt, &controller, &devices, &sys, n, 1, "1.0.0");
    let bridge_bytes_per_device = match &controller {
        Controller::Bridge(b) => {
            Some(rss_kib(b.bridge.pid()).saturating_sub(bridge_rss0) as f64 * 1024.0 / n as f64)
        }
        Controller::Direct(_) => None,
    };
    let update = rollout(&rt, &controller, &devices, &sys, n, 2, "1.1.0");
    // Idle: keep-alives and node statuses only.
    let bytes = |sys: &[SysBytes]| sys.iter().map(SysBytes::settled).sum::<u64>();
    let before = bytes(&sys);
    let idle_start = Instant::now();
    std::thread::sleep(idle);
    let after = bytes(&sys);
    let idle_secs = idle_start.elapsed().as_secs_f64();
    Row {
        devices: n,
        brokers: facing.len(),
        bridge_bytes_per_device,
        connect,
        broker_kib_per_device: rss1.saturating_sub(rss0) as f64 / n as f64,
        first,
        update,
        idle_bytes_per_device_hour: (after - before) as f64 / n as f64 * 3600.0 / idle_secs,
    }
}

fn mosquitto_version() -> String {
    let out = Command::new("/usr/sbin/mosquitto").arg("-h").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "mosquitto".into())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child_main(&spec);
    }
    let sizes: Vec<usize> = std::env::var("KEDGE_BENCH_DEVICES")
        .unwrap_or_else(|_| "10000,30000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(
        std::env::var("KEDGE_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let nofile = raise_nofile(1 << 20);
    if nofile < shard() as u64 + 1_000 {
        eprintln!(
            "the nofile limit {nofile} is below {} (one shard)",
            shard() + 1_000
        );
        std::process::exit(1);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bridge = match std::env::var("KEDGE_BENCH_CONTROLLER").as_deref() {
        Ok("direct") => false,
        Ok("bridge") | Err(_) => true,
        Ok(other) => {
            eprintln!("KEDGE_BENCH_CONTROLLER={other}: expected direct or bridge");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("fleet_scale: {n} devices…");
        rows.push(run(n, idle, bridge));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nfleet_scale (controller: {}; one MQTT connection per device; {}, single-threaded, at most {} devices per broker; bridge {}; nearest-rank percentiles over every device, \"—\" where the samples cannot carry one)\n",
        if bridge {
            "kedge bridge with a FleetDeployment custom resource, real kube-apiserver"
        } else {
            "direct publish, the floor"
        },
        mosquitto_version(),
        shard(),
        support::kedge_bin().display()
    );
    let _ = writeln!(
        out,
        "| devices | brokers | connect all | broker RSS/device | bridge RSS/device | rollout samples | p50 | p99 | all Ready | MQTT bytes/device | bridge CPU | API writes | update samples | p50 | p99 | all Ready | bytes/device | bridge CPU | API writes | idle bytes/device/h (kbit/s) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} s | {:.1} KiB | {} | {} | {} | {} | {:.2} s | {:.0} | {:.2} s | {:.0} | {} | {} | {} | {:.2} s | {:.0} | {:.2} s | {:.0} | {:.0} ({:.4}) |",
            r.devices,
            r.brokers,
            r.connect.as_secs_f64(),
            r.broker_kib_per_device,
            r.bridge_bytes_per_device
                .map_or("-".to_string(), |b| format!("{b:.0} B")),
            r.first.ready.n(),
            r.first.ready.secs(50.0, 2),
            r.first.ready.secs(99.0, 2),
            r.first.all.as_secs_f64(),
            r.first.bytes_per_device,
            r.first.bridge_cpu.as_secs_f64(),
            r.first.api_writes,
            r.update.ready.n(),
            r.update.ready.secs(50.0, 2),
            r.update.ready.secs(99.0, 2),
            r.update.all.as_secs_f64(),
            r.update.bytes_per_device,
            r.update.bridge_cpu.as_secs_f64(),
            r.update.api_writes,
            r.idle_bytes_per_device_hour,
            r.idle_bytes_per_device_hour * 8.0 / 3600.0 / 1000.0,
        );
    }
}
