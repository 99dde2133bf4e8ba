//! `cargo bench --bench wasm_start`: how fast the agent starts Wasm pods,
//! how long deleting them takes, how much memory it uses and how big the
//! binary is. Everything is real: the release `kedge` binary, a Mosquitto
//! broker on a free loopback port, the demo module
//! (`edge-manifests/demo-wasm.wat`). Prints one Markdown table (and a JSON
//! line); measurements are reported against the goals, never asserted.
//!
//! Start latency of a pod: from just before its desired spec is published
//! (retained, QoS 1) to the moment this process receives the first status of
//! that pod with phase Running on `kedge/v1/bench/reported/#`. Pods start
//! one after another, one in flight, so the figure is latency, not queueing.
//!
//! Burst and density (a second table, the two guests side by side): for the
//! WAT demo module and the Rust std test guest (`tests/wasm-guests` built for
//! wasm32-wasip1), each on a fresh agent with an empty module cache, N pods
//! of that new module are published at once: the time until all N report
//! Running, how many compiles the agent performed (its "compiled Wasm
//! module" log lines) and the PSS the burst added. Then N more pods of it start, and the PSS they add,
//! divided by N, is the memory per running instance (the marginal cost:
//! the engine, the compiled code and the first pods' one-off costs are in
//! the first N).
//!
//! Environment:
//! - `KEDGE_BENCH_PODS` (200): pods started one after another.
//! - `KEDGE_BENCH_GAP_MS` (20): pause after one pod runs before the next is
//!   published, so leftover work of the previous start (outbox
//!   acknowledgements) does not count against the next.
//! - `KEDGE_BENCH_SETTLE_SECS` (3): wait before each memory reading.
//! - `KEDGE_BENCH_AGENT_LOG` (warn): `KEDGE_LOG` of the agent under test.
//! - `KEDGE_BENCH_AGENT_LOG_FILE`: write the agent's log there (default: a
//!   temporary file, printed on failure).
//! - `KEDGE_BENCH_TRACE`: write per-pod timings there as CSV (wall-clock
//!   microseconds), to line up with agent log timestamps.
//! - `KEDGE_BENCH_SKIP_MUSL`: skip the static musl build.
//! - `KEDGE_BENCH_BIN`: run this `kedge` binary instead of the release build
//!   (to compare builds; a wrapper script must `exec` it).
//! - `KEDGE_BENCH_DENSITY_PODS` (100): N of the burst and density table
//!   (below); `0` skips it.
//! - `KEDGE_BENCH_NODELAY` (1): the harness (this bench's MQTT client and
//!   Mosquitto's `set_tcp_nodelay`) sends without Nagle's algorithm, so only
//!   the agent's own sockets can hold a packet back waiting for a delayed
//!   ACK (up to 40 ms per hop on Linux). `0`: stock settings everywhere.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kedge::model::convert::{parse_pod_manifests, pod_spec_from_k8s};
use kedge::model::{NodeStatus, PodKey, PodPhase, PodSpec, PodStatus};
use kedge::runtime::module_source::sha256_hex;
use kedge::wire::{self, Message, Topics};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tempfile::TempDir;
use tokio::sync::mpsc;

const NODE: &str = "bench";
const MUSL: &str = "x86_64-unknown-linux-musl";
/// How long any single step may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn nodelay() -> bool {
    std::env::var("KEDGE_BENCH_NODELAY").map_or(true, |v| v.trim() != "0")
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Processes

/// A child process that is killed and reaped when dropped (also on panic).
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has exited, with its log.
    fn check_alive(&mut self, what: &str, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{what} exited ({status}); log {}:\n{}",
                log.display(),
                tail(log)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16, proc: &mut Proc, what: &str, log: &Path) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        proc.check_alive(what, log);
        if start.elapsed() > Duration::from_secs(20) {
            panic!(
                "{what} does not listen on {addr} after 20 s; log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Mosquitto {
    port: u16,
    _proc: Proc,
    _dir: TempDir,
}

fn start_mosquitto() -> Mosquitto {
    let dir = tempfile::Builder::new()
        .prefix("kedge-bench-mosquitto-")
        .tempdir()
        .expect("temp dir for mosquitto");
    let conf = dir.path().join("mosquitto.conf");
    let log = dir.path().join("mosquitto.log");
    for _attempt in 0..5 {
        let port = free_port();
        // `user root`: no effect unless started as root, where it keeps
        // mosquitto from switching to a user that cannot read the temp dir.
        std::fs::write(
            &conf,
            format!(
                "user root\n\
                 listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_queued_messages 100000\n\
                 set_tcp_nodelay {}\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n",
                nodelay()
            ),
        )
        .expect("write mosquitto.conf");
        let out = std::fs::File::create(&log).expect("create mosquitto.log");
        let program = if Path::new("/usr/sbin/mosquitto").is_file() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log fd"))
            .stderr(out)
            .spawn()
            .expect("spawn mosquitto (is it installed?)");
        let mut proc = Proc { child };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = proc.child.try_wait() {
                break; // port taken meanwhile: try another
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Mosquitto {
                    port,
                    _proc: proc,
                    _dir: dir,
                };
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("mosquitto does not listen on {addr}; log:\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("mosquitto failed to start 5 times; log:\n{}", tail(&log));
}

struct Agent {
    proc: Proc,
    log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// `kedge --config <empty> <args…> agent --node <node> --data-dir <tmp>`,
    /// with no `KEDGE_*` variable from our environment but `KEDGE_LOG`.
    fn start(bin: &Path, node: &str, args: &[String]) -> Agent {
        let level = std::env::var("KEDGE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into());
        Self::start_logging(bin, node, args, &level)
    }

    /// [`Agent::start`] with the agent's log filter given.
    fn start_logging(bin: &Path, node: &str, args: &[String], level: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("kedge-bench-agent-")
            .tempdir()
            .expect("temp dir for the agent");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").expect("write empty config.toml");
        let log = std::env::var_os("KEDGE_BENCH_AGENT_LOG_FILE")
            .filter(|_| node == NODE)
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("agent.log"));
        let out = std::fs::File::create(&log).expect("create agent log");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .args(["agent", "--node", node, "--data-dir"])
            .arg(dir.path().join("data"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEDGE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("KEDGE_LOG", level)
            .env("KEDGE_LOG_FORMAT", "plain")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Agent {
            proc: Proc { child },
            log,
            _dir: dir,
        }
    }

    fn check_alive(&mut self) {
        self.proc.check_alive("the agent", &self.log);
    }
}

// ---------------------------------------------------------------------------
// Memory

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    pss_kib: u64,
}

fn kib_field(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

fn memory(pid: u32) -> Mem {
    Mem {
        rss_kib: kib_field(&format!("/proc/{pid}/status"), "VmRSS:"),
        pss_kib: kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    }
}

// ---------------------------------------------------------------------------
// MQTT

enum Got {
    Publish {
        topic: String,
        payload: Vec<u8>,
        at: Instant,
    },
    Failed(String),
}

/// A client whose event loop runs in a task that timestamps every message.
struct Mqtt {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
}

impl Mqtt {
    fn connect(port: u16, id: &str) -> Mqtt {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 4096);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(nodelay());
        eventloop.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let at = Instant::now();
                        let got = Got::Publish {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            at,
                        };
                        if tx.send(got).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Got::Failed(e.to_string()));
                        return;
                    }
                }
            }
        });
        Mqtt { client, rx }
    }

    async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("queue PUBLISH");
    }

    /// The next message. Panics with `what` and the agent's log if the
    /// agent exits or nothing arrives within `STEP_TIMEOUT`.
    async fn next(&mut self, what: &str, agent: &mut Agent) -> (String, Vec<u8>, Instant) {
        let start = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(500), self.rx.recv()).await {
                Ok(Some(Got::Publish { topic, payload, at })) => return (topic, payload, at),
                Ok(Some(Got::Failed(e))) => panic!("MQTT connection failed while {what}: {e}"),
                Ok(None) => panic!("MQTT event loop ended while {what}"),
                Err(_) => {
                    agent.check_alive();
                    if start.elapsed() > STEP_TIMEOUT {
                        panic!(
                            "nothing arrived within {STEP_TIMEOUT:?} while {what}; agent log:\n{}",
                            tail(&agent.log)
                        );
                    }
                }
            }
        }
    }
}

fn decode_status(payload: &[u8]) -> Option<PodStatus> {
    wire::decode_as::<kedge::model::PodStatus>(payload)
        .ok()
        .map(|(_, s)| s)
}

fn decode_node(payload: &[u8]) -> Option<NodeStatus> {
    wire::decode_as::<kedge::model::NodeStatus>(payload)
        .ok()
        .map(|(_, s)| s)
}

/// Waits for the node's retained status saying it is online.
async fn wait_node_online(mqtt: &mut Mqtt, topics: &Topics, node: &str, agent: &mut Agent) {
    let topic = topics.node(node);
    mqtt.subscribe(&topic).await;
    let what = format!("waiting for {topic}");
    loop {
        let (t, payload, _) = mqtt.next(&what, agent).await;
        if t == topic && decode_node(&payload).is_some_and(|n| n.online) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Pods

/// The demo pod (edge-manifests/demo.yaml) as `kedge apply` would send it,
/// its image pinned to the digest of demo-wasm.wat as it is now.
fn template_spec() -> PodSpec {
    let dir = manifest_dir().join("edge-manifests");
    let yaml = std::fs::read_to_string(dir.join("demo.yaml")).expect("read demo.yaml");
    let yaml = yaml.replace("DEMO_DIR", &dir.display().to_string());
    let pods = parse_pod_manifests(&yaml).expect("demo.yaml parses");
    let pod = pods.first().expect("demo.yaml has a pod");
    let mut spec = pod_spec_from_k8s(pod).expect("demo.yaml converts");
    let wat = dir.join("demo-wasm.wat");
    let bytes = std::fs::read(&wat).expect("read demo-wasm.wat");
    let container = spec
        .containers
        .first_mut()
        .expect("demo pod has a container");
    container.image = format!("file://{}@sha256:{}", wat.display(), sha256_hex(&bytes));
    spec
}

fn pod_named(template: &PodSpec, name: &str) -> PodSpec {
    let mut spec = template.clone();
    spec.namespace = "default".into();
    spec.name = name.into();
    spec.uid = uuid::Uuid::new_v4().to_string();
    spec.generation = 1;
    spec
}

/// One pod start, measured from just before the publish.
#[derive(Debug, Clone, Copy)]
struct Start {
    publish_wall_us: u64,
    /// Until the first status of the pod arrived (Pending, normally).
    first_status: Duration,
    /// Until the first Running status arrived.
    running: Duration,
}

async fn start_pod(mqtt: &mut Mqtt, topics: &Topics, spec: &PodSpec, agent: &mut Agent) -> Start {
    let key = spec.key();
    let desired = topics.desired(NODE, &key);
    let reported = topics.reported(NODE, &key);
    let payload =
        wire::encode(spec.generation, &Message::DesiredPod(spec.clone())).expect("encode spec");
    let publish_wall_us = wall_us();
    let t0 = Instant::now();
    mqtt.publish(&desired, payload).await;
    let mut first_status = None;
    loop {
        let (topic, payload, at) = mqtt.next(&format!("starting pod {key}"), agent).await;
        if topic != reported {
            continue;
        }
        let Some(status) = decode_status(&payload).filter(|s| s.uid == spec.uid) else {
            continue;
        };
        let first = *first_status.get_or_insert(at - t0);
        match status.phase {
            PodPhase::Running => {
                return Start {
                    publish_wall_us,
                    first_status: first,
                    running: at - t0,
                };
            }
            PodPhase::Pending | PodPhase::Unknown => {}
            PodPhase::Succeeded | PodPhase::Failed => {
                agent.check_alive();
                panic!(
                    "pod {key} ended {} before running: {} {}; agent log:\n{}",
                    status.phase.as_str(),
                    status.display_status(),
                    status.message.unwrap_or_default(),
                    tail(&agent.log)
                );
            }
        }
    }
}

/// Publishes every tombstone at once; returns when every reported topic has
/// been cleared.
async fn delete_pods(
    mqtt: &mut Mqtt,
    topics: &Topics,
    keys: &[PodKey],
    agent: &mut Agent,
) -> Duration {
    let mut remaining: HashSet<String> = keys.iter().map(|k| topics.reported(NODE, k)).collect();
    let t0 = Instant::now();
    for key in keys {
        mqtt.publish(&topics.desired(NODE, key), Vec::new()).await;
    }
    let mut last = t0;
    while !remaining.is_empty() {
        let what = format!("deleting pods ({} reported topics left)", remaining.len());
        let (topic, payload, at) = mqtt.next(&what, agent).await;
        if payload.is_empty() && remaining.remove(&topic) {
            last = at;
        }
    }
    last - t0
}

// ---------------------------------------------------------------------------
// Bursts and density

/// A module for the burst and density table.
struct Guest {
    name: String,
    path: PathBuf,
    args: Vec<String>,
}

impl Guest {
    fn kib(&self) -> f64 {
        std::fs::metadata(&self.path).map_or(0.0, |m| m.len() as f64 / 1024.0)
    }
}

/// The Rust std test guest (`tests/wasm-guests`) built for wasm32-wasip1,
/// as the integration tests build it.
fn rust_guest() -> Result<PathBuf, String> {
    let target_dir = std::env::var_os("KEDGE_GUESTS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kedge-guests-target"));
    eprintln!("bench: building the Rust guest (wasm32-wasip1)");
    let status = cargo()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(manifest_dir().join("tests/wasm-guests/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the guest failed ({status}); is wasm32-wasip1 installed?"
        ));
    }
    Ok(target_dir.join("wasm32-wasip1/release/guest.wasm"))
}

/// The template pod running `guest`.
fn guest_spec(template: &PodSpec, guest: &Guest, name: &str) -> PodSpec {
    let mut spec = pod_named(template, name);
    let bytes =
        std::fs::read(&guest.path).unwrap_or_else(|e| panic!("read {}: {e}", guest.path.display()));
    let container = spec
        .containers
        .first_mut()
        .expect("the template has a container");
    container.image = format!(
        "file://{}@sha256:{}",
        guest.path.display(),
        sha256_hex(&bytes)
    );
    container.args = guest.args.clone();
    spec
}

/// Publishes every spec at once; returns when the last one reported Running.
async fn start_all(
    mqtt: &mut Mqtt,
    topics: &Topics,
    specs: &[PodSpec],
    agent: &mut Agent,
) -> Duration {
    let mut waiting: HashMap<String, String> = specs
        .iter()
        .map(|s| (topics.reported(NODE, &s.key()), s.uid.clone()))
        .collect();
    let t0 = Instant::now();
    for spec in specs {
        let payload =
            wire::encode(spec.generation, &Message::DesiredPod(spec.clone())).expect("encode spec");
        mqtt.publish(&topics.desired(NODE, &spec.key()), payload)
            .await;
    }
    let mut last = t0;
    while !waiting.is_empty() {
        let what = format!(
            "starting {} pods at once ({} not Running yet)",
            specs.len(),
            waiting.len()
        );
        let (topic, payload, at) = mqtt.next(&what, agent).await;
        let Some(uid) = waiting.get(&topic) else {
            continue;
        };
        let Some(status) = decode_status(&payload).filter(|s| &s.uid == uid) else {
            continue;
        };
        match status.phase {
            PodPhase::Running => {
                waiting.remove(&topic);
                last = at;
            }
            PodPhase::Succeeded | PodPhase::Failed => panic!(
                "{topic} ended {} before running: {} {}; agent log:\n{}",
                status.phase.as_str(),
                status.display_status(),
                status.message.unwrap_or_default(),
                tail(&agent.log)
            ),
            PodPhase::Pending | PodPhase::Unknown => {}
        }
    }
    last - t0
}

/// What one guest costs on a fresh agent (see the module documentation).
struct Density {
    all_running: Duration,
    compiles: usize,
    /// PSS the burst added, per pod (with the engine and the compile).
    burst_kib: f64,
    per_instance_kib: f64,
}

async fn density(
    bin: &Path,
    template: &PodSpec,
    guest: &Guest,
    n: usize,
    settle: Duration,
) -> Density {
    let topics = Topics::new(wire::DEFAULT_PREFIX);
    let broker = start_mosquitto();
    let mut agent = Agent::start_logging(
        bin,
        NODE,
        &[
            "--broker".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--set".into(),
            format!("node.max_pods={}", 2 * n + 16),
        ],
        "warn,kedge::runtime::wasm=info",
    );
    let mut mqtt = Mqtt::connect(broker.port, "kedge-bench-density");
    mqtt.subscribe(&topics.reported_filter(NODE)).await;
    wait_node_online(&mut mqtt, &topics, NODE, &mut agent).await;
    tokio::time::sleep(settle).await;
    agent.check_alive();
    let idle = memory(agent.proc.pid());
    eprintln!("bench: {n} pods of {} at once", guest.name);
    let burst: Vec<PodSpec> = (0..n)
        .map(|i| guest_spec(template, guest, &format!("burst-{i:03}")))
        .collect();
    let all_running = start_all(&mut mqtt, &topics, &burst, &mut agent).await;
    let compiles = std::fs::read_to_string(&agent.log)
        .unwrap_or_default()
        .matches("compiled Wasm module")
        .count();
    tokio::time::sleep(settle).await;
    agent.check_alive();
    let before = memory(agent.proc.pid());
    eprintln!("bench: {n} more pods of {}", guest.name);
    let more: Vec<PodSpec> = (0..n)
        .map(|i| guest_spec(template, guest, &format!("dense-{i:03}")))
        .collect();
    start_all(&mut mqtt, &topics, &more, &mut agent).await;
    tokio::time::sleep(settle).await;
    agent.check_alive();
    let after = memory(agent.proc.pid());
    Density {
        all_running,
        compiles,
        burst_kib: (before.pss_kib as f64 - idle.pss_kib as f64) / n as f64,
        per_instance_kib: (after.pss_kib as f64 - before.pss_kib as f64) / n as f64,
    }
}

/// The burst and density table: the WAT demo module and the Rust std guest
/// side by side.
async fn burst_and_density(bin: &Path, n: usize, settle: Duration) -> String {
    let template = template_spec();
    let wat = Guest {
        name: "the WAT demo module".into(),
        path: manifest_dir().join("edge-manifests/demo-wasm.wat"),
        args: Vec::new(),
    };
    let rust = match rust_guest() {
        Ok(path) => Guest {
            name: "the Rust std guest".into(),
            path,
            // Prints a line every 2 s, like the demo module.
            args: ["ticker", "0", "2000"].map(String::from).to_vec(),
        },
        Err(why) => return format!("burst and density not measured: {why}\n"),
    };
    let a = density(bin, &template, &wat, n, settle).await;
    let b = density(bin, &template, &rust, n, settle).await;
    let ratio = |x: f64, y: f64| {
        if x > 0.0 {
            format!("×{:.1}", y / x)
        } else {
            "—".into()
        }
    };
    let mut out = format!(
        "| measure (N = {n}) | WAT demo module ({:.1} KB) | Rust std guest, wasm32-wasip1 ({:.1} KB) | Rust / WAT | goal |\n|---|---|---|---|---|\n",
        wat.kib(),
        rust.kib()
    );
    let _ = writeln!(
        out,
        "| N pods of one new module published at once → all Running | {:.0} ms | {:.0} ms | {} | — |",
        ms(a.all_running),
        ms(b.all_running),
        ratio(ms(a.all_running), ms(b.all_running))
    );
    let _ = writeln!(
        out,
        "| … compiles performed by the agent | {} | {} | — | 1 each: {} |",
        a.compiles,
        b.compiles,
        verdict(a.compiles == 1 && b.compiles == 1)
    );
    let _ = writeln!(
        out,
        "| PSS added by the burst / N (with the engine and the compile) | {:.0} KiB | {:.0} KiB | {} | — |",
        a.burst_kib,
        b.burst_kib,
        ratio(a.burst_kib, b.burst_kib)
    );
    let _ = writeln!(
        out,
        "| PSS per running instance (N more pods, PSS added / N) | {:.0} KiB | {:.0} KiB | {} | Rust ≤ 512 KiB: {} |",
        a.per_instance_kib,
        b.per_instance_kib,
        ratio(a.per_instance_kib, b.per_instance_kib),
        verdict(b.per_instance_kib <= 512.0)
    );
    out
}

// ---------------------------------------------------------------------------
// Binaries

/// `<target dir>/release`: where this bench runs from
/// (`<target dir>/release/deps/wasm_start-<hash>`).
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    match exe.parent().and_then(Path::parent) {
        Some(dir) if dir.file_name().is_some_and(|n| n == "release") => dir.to_path_buf(),
        _ => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("target"))
            .join("release"),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(manifest_dir());
    cmd
}

/// The release `kedge` binary, built first if missing.
fn kedge_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEDGE_BENCH_BIN") {
        return PathBuf::from(bin);
    }
    let bin = release_dir().join("kedge");
    if !bin.is_file() {
        eprintln!("bench: {} is missing; building it", bin.display());
        let status = cargo()
            .args(["build", "--release", "--bin", "kedge"])
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed: {status}");
    }
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Builds the static musl binary and returns its size, or why not.
fn musl_binary_size() -> Result<u64, String> {
    if std::env::var_os("KEDGE_BENCH_SKIP_MUSL").is_some() {
        return Err("skipped (KEDGE_BENCH_SKIP_MUSL is set)".into());
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        return Err(format!(
            "target {MUSL} is not installed (rustup target add {MUSL})"
        ));
    }
    if !on_path("musl-gcc") {
        return Err("musl-gcc is not on PATH (apt-get install musl-tools)".into());
    }
    eprintln!("bench: building the static binary (cargo build --release --target {MUSL})");
    let status = cargo()
        .args(["build", "--release", "--target", MUSL, "--bin", "kedge"])
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --target {MUSL} failed ({status})"));
    }
    let bin = release_dir()
        .parent()
        .map(|t| t.join(MUSL).join("release").join("kedge"))
        .ok_or("no target directory")?;
    std::fs::metadata(&bin)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", bin.display()))
}

// ---------------------------------------------------------------------------
// Statistics and output

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: impl Iterator<Item = Duration>) -> Vec<Duration> {
    let mut v: Vec<Duration> = values.collect();
    v.sort();
    v
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mem_cell(m: Mem) -> String {
    format!(
        "PSS {:.1} MiB (RSS {:.1} MiB)",
        mib(m.pss_kib),
        mib(m.rss_kib)
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

struct Table {
    rows: Vec<[String; 3]>,
}

impl Table {
    fn row(
        &mut self,
        measure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
    ) {
        self.rows.push([measure.into(), value.into(), goal.into()]);
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| measure | value | goal |\n|---|---|---|\n");
        for [m, v, g] in &self.rows {
            let _ = writeln!(out, "| {m} | {v} | {g} |");
        }
        out
    }
}

fn write_trace(path: &Path, names: &[String], starts: &[Start]) {
    let mut out = String::from("pod,publish_wall_us,first_status_us,running_us\n");
    for (name, s) in names.iter().zip(starts) {
        let _ = writeln!(
            out,
            "{name},{},{},{}",
            s.publish_wall_us,
            s.first_status.as_micros(),
            s.running.as_micros()
        );
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; there are no options of our own.
    let pods = env_u64("KEDGE_BENCH_PODS", 200).max(1) as usize;
    let gap = Duration::from_millis(env_u64("KEDGE_BENCH_GAP_MS", 20));
    let settle = Duration::from_secs(env_u64("KEDGE_BENCH_SETTLE_SECS", 3));
    let bin = kedge_binary();
    eprintln!("bench: using {}", bin.display());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut table = Table { rows: Vec::new() };
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "wasm_start".into());
    json.insert("pods".into(), pods.into());
    runtime.block_on(run(&bin, pods, gap, settle, &mut table, &mut json));
    let dense = env_u64("KEDGE_BENCH_DENSITY_PODS", 100) as usize;
    let density_table = if dense == 0 {
        "burst and density skipped (KEDGE_BENCH_DENSITY_PODS=0)\n".to_string()
    } else {
        runtime.block_on(burst_and_density(&bin, dense, settle))
    };

    let size = std::fs::metadata(&bin).expect("stat kedge").len();
    table.row(
        "release binary size (x86-64 glibc, stripped, dynamic)",
        format!("{:.2} MiB ({size} bytes)", mib(size / 1024)),
        "— (goal is for the static binary)",
    );
    json.insert("binary_bytes".into(), size.into());
    match musl_binary_size() {
        Ok(bytes) => {
            table.row(
                "static binary size (x86-64 musl, stripped)",
                format!("{:.2} MiB ({bytes} bytes)", mib(bytes / 1024)),
                format!("≤ 12 MiB: {}", verdict(bytes <= 12 * 1024 * 1024)),
            );
            json.insert("musl_binary_bytes".into(), bytes.into());
        }
        Err(why) => {
            table.row(
                "static binary size (x86-64 musl, stripped)",
                format!("not built: {why}"),
                "≤ 12 MiB",
            );
            json.insert("musl_binary_bytes".into(), serde_json::Value::Null);
        }
    }

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "\n{}", table.markdown());
    let _ = writeln!(stdout, "{density_table}");
    let _ = writeln!(stdout, "{}", serde_json::Value::Object(json));
}

async fn run(
    bin: &Path,
    pods: usize,
    gap: Duration,
    settle: Duration,
    table: &mut Table,
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let topics = Topics::new(wire::DEFAULT_PREFIX);
    let template = template_spec();

    // --- The agent under test, against its own Mosquitto.
    let broker = start_mosquitto();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    eprintln!("bench: mosquitto on {url}");
    let mut agent = Agent::start(
        bin,
        NODE,
        &[
            "--broker".into(),
            url,
            "--set".into(),
            format!("node.max_pods={}", pods + 16),
        ],
    );
    let mut mqtt = Mqtt::connect(broker.port, "kedge-bench");
    mqtt.subscribe(&topics.reported_filter(NODE)).await;
    wait_node_online(&mut mqtt, &topics, NODE, &mut agent).await;
    eprintln!("bench: agent online (pid {})", agent.proc.pid());

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let fresh = memory(agent.proc.pid());

    // --- Cold start: the compiled-module cache is empty.
    let cold_spec = pod_named(&template, "bench-cold");
    let cold = start_pod(&mut mqtt, &topics, &cold_spec, &mut agent).await;
    delete_pods(&mut mqtt, &topics, &[cold_spec.key()], &mut agent).await;
    eprintln!("bench: cold start {:.2} ms", ms(cold.running));

    // --- Warm starts, one in flight.
    eprintln!("bench: starting {pods} pods one after another");
    let mut names = Vec::with_capacity(pods);
    let mut starts = Vec::with_capacity(pods);
    for i in 0..pods {
        let spec = pod_named(&template, &format!("bench-{i:03}"));
        let s = start_pod(&mut mqtt, &topics, &spec, &mut agent).await;
        names.push(spec.name.clone());
        starts.push(s);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    if let Some(path) = std::env::var_os("KEDGE_BENCH_TRACE") {
        write_trace(Path::new(&path), &names, &starts);
    }

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let busy = memory(agent.proc.pid());

    let keys: Vec<PodKey> = names.iter().map(|n| PodKey::new("default", n)).collect();
    eprintln!("bench: deleting {pods} pods");
    let deleted = delete_pods(&mut mqtt, &topics, &keys, &mut agent).await;

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let after = memory(agent.proc.pid());
    drop(mqtt);
    drop(agent);
    drop(broker);

    // --- An agent alone, with its embedded broker.
    let port = free_port();
    let mut lone = Agent::start(
        bin,
        "idle",
        &[
            "--set".into(),
            format!("embedded_broker.listen=127.0.0.1:{port}"),
        ],
    );
    wait_listening(port, &mut lone.proc, "the agent", &lone.log.clone());
    let mut mqtt = Mqtt::connect(port, "kedge-bench-idle");
    wait_node_online(&mut mqtt, &topics, "idle", &mut lone).await;
    drop(mqtt);
    tokio::time::sleep(settle).await;
    lone.check_alive();
    let embedded = memory(lone.proc.pid());
    drop(lone);

    // --- Results.
    let running = sorted(starts.iter().map(|s| s.running));
    let first = sorted(starts.iter().map(|s| s.first_status));
    let second = sorted(starts.iter().map(|s| s.running - s.first_status));
    let p = |v: &[Duration], q: f64| ms(percentile(v, q));
    let p50 = p(&running, 50.0);
    let idle_goal = |m: Mem| format!("≤ 8 MiB PSS: {}", verdict(m.pss_kib <= 8 * 1024));

    table.row(
        "Wasm pod start, cold (first pod: compile + write module cache)",
        format!("{:.2} ms", ms(cold.running)),
        "—",
    );
    let how = format!(
        "{pods} pods one at a time, {} ms apart, harness {}",
        gap.as_millis(),
        if nodelay() {
            "TCP_NODELAY"
        } else {
            "with Nagle"
        }
    );
    table.row(
        format!("Wasm pod start p50 ({how})"),
        format!("{p50:.2} ms"),
        format!("≤ 5 ms: {}", verdict(p50 <= 5.0)),
    );
    table.row(
        "Wasm pod start p90",
        format!("{:.2} ms", p(&running, 90.0)),
        "—",
    );
    table.row(
        "Wasm pod start p99",
        format!("{:.2} ms", p(&running, 99.0)),
        "—",
    );
    table.row(
        "Wasm pod start max",
        format!("{:.2} ms", p(&running, 100.0)),
        "—",
    );
    table.row(
        "… of which publish → first status (Pending), p50 / p90",
        format!("{:.2} / {:.2} ms", p(&first, 50.0), p(&first, 90.0)),
        "—",
    );
    table.row(
        "… of which first status → Running, p50 / p90",
        format!("{:.2} / {:.2} ms", p(&second, 50.0), p(&second, 90.0)),
        "—",
    );
    table.row(
        format!("delete {pods} pods (all tombstones published → last reported topic cleared)"),
        format!("{:.0} ms", ms(deleted)),
        "—",
    );
    table.row(
        "agent idle, fresh start (Mosquitto, no pods)",
        mem_cell(fresh),
        idle_goal(fresh),
    );
    table.row(
        format!("agent with {pods} running pods"),
        mem_cell(busy),
        "—",
    );
    table.row(
        format!("agent idle after deleting the {pods} pods"),
        mem_cell(after),
        idle_goal(after),
    );
    table.row(
        "agent idle with embedded broker (no pods)",
        mem_cell(embedded),
        idle_goal(embedded),
    );

    for (k, v) in [
        ("cold_ms", ms(cold.running)),
        ("p50_ms", p50),
        ("p90_ms", p(&running, 90.0)),
        ("p99_ms", p(&running, 99.0)),
        ("max_ms", p(&running, 100.0)),
        ("first_status_p50_ms", p(&first, 50.0)),
        ("delete_ms", ms(deleted)),
    ] {
        json.insert(k.into(), v.into());
    }
    for (k, m) in [
        ("idle_fresh", fresh),
        ("running", busy),
        ("idle_after", after),
        ("idle_embedded", embedded),
    ] {
        json.insert(format!("{k}_pss_kib"), m.pss_kib.into());
        json.insert(format!("{k}_rss_kib"), m.rss_kib.into());
    }
}
