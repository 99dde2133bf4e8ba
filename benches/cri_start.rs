//! `cargo bench --bench cri_start`: how fast the agent starts a container
//! pod (image present) compared with the bare CRI floor on the same
//! containerd. Everything is real: a containerd with runc and a CNI bridge
//! started by `tests/support/cri.rs`, Mosquitto on a free loopback port, the
//! release `kedge` binary. Prints one Markdown table; the figures are
//! reported against the goal (kedge ≤ 1.2 × the floor), never asserted.
//!
//! - kedge: from just before the desired spec is published (retained, QoS 1)
//!   to the moment this process receives the pod's first Running status.
//! - floor: RunPodSandbox + CreateContainer + StartContainer called directly
//!   over CRI, with the same sandbox and container configs kedge builds
//!   (`runtime::cri::spec`).
//!
//! Runs alternate (floor, kedge, floor, …) so both see the same noise; each
//! pod is removed (untimed) before the next starts.
//!
//! Prints p50, p90 and p99 of both with their sample count, each only
//! where the samples carry it (`benches/stats.rs`: a p99 needs 100).
//!
//! Environment: `KEDGE_BENCH_PODS` (100) pods of each kind;
//! `KEDGE_BENCH_AGENT_LOG` (warn) the agent's `KEDGE_LOG`.

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use kedge::model::convert::{parse_pod_manifests, pod_spec_from_k8s};
use kedge::model::{PodPhase, PodSpec};
use kedge::runtime::cri::spec;
use kedge::wire::{self, Message, Topics};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::cri::{BUSYBOX, Containerd};
use support::{Agent, AgentOpts, Mosquitto};
use tonic::transport::{Channel, Endpoint, Uri};

const NODE: &str = "bench-cri";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn template() -> PodSpec {
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: template, namespace: default}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
    );
    let pod = &parse_pod_manifests(&yaml).expect("parse template")[0];
    pod_spec_from_k8s(pod).expect("convert template")
}

fn named(template: &PodSpec, name: &str) -> PodSpec {
    let mut s = template.clone();
    s.name = name.into();
    s.uid = uuid::Uuid::new_v4().to_string();
    s.generation = 1;
    s
}

async fn cri_channel(socket: &std::path::Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:0")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to containerd")
}

/// RunPodSandbox + CreateContainer + StartContainer; returns the time and
/// the sandbox id (removed by the caller, untimed).
async fn floor_once(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &PodSpec,
    pod_dir: &std::path::Path,
    cgroup_parent: &str,
) -> (Duration, String) {
    std::fs::create_dir_all(spec::log_directory(pod_dir).join("main")).expect("log dir");
    let sandbox = spec::sandbox_config(pod, pod_dir, cgroup_parent, NODE);
    // The agent's defaults: no seccomp default (Unconfined, as the kubelet's).
    let profiles = spec::ProfileSettings {
        seccomp_default: false,
        seccomp_root: pod_dir.join("seccomp"),
    };
    let container = spec::container_config(pod, pod_dir, &pod.containers[0], BUSYBOX, 0, &profiles)
        .expect("container config");
    let t0 = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: cid })
        .await
        .expect("StartContainer");
    (t0.elapsed(), id)
}

async fn remove_sandbox(rt: &mut RuntimeServiceClient<Channel>, id: String) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("RemovePodSandbox");
}

struct Mqtt {
    client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, Instant)>,
}

impl Mqtt {
    async fn connect(port: u16) -> Mqtt {
        let mut opts = MqttOptions::new("cri-bench", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let at = Instant::now();
                        if tx.send((p.topic, p.payload.to_vec(), at)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("bench MQTT connection failed: {e}"),
                }
            }
        });
        Mqtt { client, rx }
    }

    async fn next(&mut self, what: &str, agent: &Agent) -> (String, Vec<u8>, Instant) {
        match tokio::time::timeout(STEP_TIMEOUT, self.rx.recv()).await {
            Ok(Some(m)) => m,
            _ => panic!(
                "nothing arrived within {STEP_TIMEOUT:?} while {what}; agent log:\n{}",
                agent.log()
            ),
        }
    }
}

async fn kedge_once(mqtt: &mut Mqtt, topics: &Topics, pod: &PodSpec, agent: &Agent) -> Duration {
    let key = pod.key();
    let reported = topics.reported(NODE, &key);
    let payload = wire::encode(1, &Message::DesiredPod(pod.clone())).expect("encode");
    let t0 = Instant::now();
    mqtt.client
        .publish(topics.desired(NODE, &key), QoS::AtLeastOnce, true, payload)
        .await
        .expect("publish");
    loop {
        let (topic, payload, at) = mqtt.next(&format!("starting {key}"), agent).await;
        if topic != reported {
            continue;
        }
        let Ok((_, status)) = wire::decode_as::<kedge::model::PodStatus>(&payload) else {
            continue;
        };
        if status.uid != pod.uid {
            continue;
        }
        match status.phase {
            PodPhase::Running => return at - t0,
            PodPhase::Pending | PodPhase::Unknown => {}
            other => panic!(
                "pod {key} ended {} ({}); agent log:\n{}",
                other.as_str(),
                status.display_status(),
                agent.log()
            ),
        }
    }
}

async fn kedge_delete(mqtt: &mut Mqtt, topics: &Topics, pod: &PodSpec, agent: &Agent) {
    let key = pod.key();
    let reported = topics.reported(NODE, &key);
    mqtt.client
        .publish(
            topics.desired(NODE, &key),
            QoS::AtLeastOnce,
            true,
            Vec::new(),
        )
        .await
        .expect("publish tombstone");
    loop {
        let (topic, payload, _) = mqtt.next(&format!("deleting {key}"), agent).await;
        if topic == reported && payload.is_empty() {
            return;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("cri_start: SKIPPED, needs root (containerd, CNI, cgroups)");
        return;
    }
    let pods: usize = std::env::var("KEDGE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let log_level = std::env::var("KEDGE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    let containerd = Containerd::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = containerd.agent_args();
    args.extend(["--set".into(), "node.heartbeat_ms=60000".into()]);
    let agent = Agent::start(AgentOpts {
        node: NODE.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![("KEDGE_LOG".into(), log_level)],
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let (kedge, floor) = rt.block_on(async {
        let topics = Topics::new("kedge/v1");
        let mut mqtt = Mqtt::connect(broker.port).await;
        mqtt.client
            .subscribe(format!("kedge/v1/{NODE}/reported/#"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let mut cri_rt = RuntimeServiceClient::new(cri_channel(&containerd.socket).await);
        let template = template();
        // One warm-up of each, not counted (first sandbox, first exec).
        let warm = named(&template, "warm-kedge");
        kedge_once(&mut mqtt, &topics, &warm, &agent).await;
        kedge_delete(&mut mqtt, &topics, &warm, &agent).await;
        let floor_dir = dir.path().join("floor");
        let warm = named(&template, "warm-floor");
        let (_, id) = floor_once(
            &mut cri_rt,
            &warm,
            &floor_dir.join(&warm.uid),
            &containerd.cgroup_parent,
        )
        .await;
        remove_sandbox(&mut cri_rt, id).await;

        let mut kedge = Vec::new();
        let mut floor = Vec::new();
        for i in 0..pods {
            let f = named(&template, &format!("floor-{i}"));
            let (took, id) = floor_once(
                &mut cri_rt,
                &f,
                &floor_dir.join(&f.uid),
                &containerd.cgroup_parent,
            )
            .await;
            floor.push(took);
            remove_sandbox(&mut cri_rt, id).await;

            let k = named(&template, &format!("kedge-{i}"));
            let took = kedge_once(&mut mqtt, &topics, &k, &agent).await;
            kedge.push(took);
            kedge_delete(&mut mqtt, &topics, &k, &agent).await;
        }
        (kedge, floor)
    });
    let kedge = stats::Summary::new(kedge);
    let floor = stats::Summary::new(floor);
    let version = containerd.ctr(&["version"]);
    let server = version
        .lines()
        .skip_while(|l| !l.starts_with("Server"))
        .find(|l| l.trim_start().starts_with("Version"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let bin = std::env::var_os("KEDGE_AGENT_BIN")
        .map_or_else(support::kedge_bin, std::path::PathBuf::from);
    println!();
    println!(
        "## Container pod start (image present), containerd {server}, agent {}",
        bin.display()
    );
    println!();
    println!(
        "Nearest-rank percentiles; \"—\" where the samples cannot carry one (a p99 needs 100, a p90 10)."
    );
    println!();
    println!("| path | samples | p50 ms | p90 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    let cell = |s: &stats::Summary, q: f64| {
        s.get(q)
            .map_or_else(|| "—".to_string(), |d| format!("{:.1}", ms(d)))
    };
    for (path, s) in [
        (
            "floor: RunPodSandbox + CreateContainer + StartContainer (CRI, CNI)",
            &floor,
        ),
        (
            "kedge: spec published → Running received (MQTT, agent, CRI)",
            &kedge,
        ),
    ] {
        println!(
            "| {path} | {} | {} | {} | {} |",
            s.n(),
            cell(s, 50.0),
            cell(s, 90.0),
            cell(s, 99.0)
        );
    }
    let ratio = |q: f64| match (kedge.get(q), floor.get(q)) {
        (Some(k), Some(f)) if !f.is_zero() => Some(k.as_secs_f64() / f.as_secs_f64()),
        _ => None,
    };
    let show = |r: Option<f64>| r.map_or_else(|| "—".to_string(), |r| format!("{r:.2}"));
    let goal = match ratio(50.0) {
        Some(r) if r <= 1.2 => " met",
        Some(_) => " NOT met",
        None => "",
    };
    println!(
        "| ratio kedge / floor (goal: p50 ≤ 1.2) | | {}{goal} | {} | {} |",
        show(ratio(50.0)),
        show(ratio(90.0)),
        show(ratio(99.0))
    );
    println!();
}
