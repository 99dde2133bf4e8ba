//! `cargo bench --bench wasm_start`: how fast the agent starts Wasm pods,
//! how long deleting them takes, how much memory it uses and how big the
//! binary is. Everything is real: a Mosquitto broker on a free loopback
//! port, the demo module (`edge-manifests/demo-wasm.wat`, as binary Wasm)
//! and the agent under test, by default **the device binary**
//! (`benches/device.rs`: x86-64 musl static, features `full`, from
//! scripts/build-targets.sh), so that the memory and size verdicts are about
//! what a device runs. Prints Markdown tables (and a JSON line);
//! measurements are reported against the goals, never asserted.
//!
//! Start latency of a pod: from just before its desired spec is published
//! (retained, QoS 1) to the moment this process receives the first status of
//! that pod with phase Running on `kedge/v1/bench/reported/#`. Pods start
//! one after another, one in flight, so the figure is latency, not queueing.
//! Three kinds of start, side by side, each with its sample count:
//! - **cold**: C distinct modules (the demo module with a custom section
//!   `kedge-bench-sample` holding the sample's number, so each has its own
//!   digest), one pod each, on an agent that has never seen any of them: the
//!   agent compiles each and writes its compiled-module cache on disk;
//! - **warm from disk**: the agent restarted on the same data directory
//!   (its in-memory module cache empty), one pod of each of the same C
//!   modules: each is loaded from the disk cache, none compiled;
//! - **warm from memory**: the agent restarted again, one untimed pod loads
//!   module 0 from disk, then P pods of module 0: each finds it in memory.
//!
//! The agent's "compiled Wasm module" log lines are counted per phase (C, 0
//! and 0 when each phase measured what it claims). Pods of a phase stay
//! running until the phase ends and are then deleted at once; the memory
//! figures are those of the third agent process (P running pods of one
//! module) and of a fresh one.
//!
//! Burst and density (a second table, the two guests side by side): for the
//! demo module and the Rust std test guest (`tests/wasm-guests` built for
//! wasm32-wasip1), each on a fresh agent with an empty module cache, N pods
//! of that new module are published at once: the time until all N report
//! Running, how many compiles the agent performed (its "compiled Wasm
//! module" log lines) and the PSS the burst added. Then N more pods of it
//! start, and the PSS they add, divided by N, is the memory per running
//! instance (the marginal cost: the engine, the compiled code and the first
//! pods' one-off costs are in the first N).
//!
//! Environment:
//! - `KEDGE_BENCH_PODS` (200): P, warm-from-memory starts.
//! - `KEDGE_BENCH_COLD_PODS` (100): C, distinct modules started cold and
//!   then warm from disk (100 is the fewest a p99 is printed from).
//! - `KEDGE_BENCH_GAP_MS` (20): pause after one pod runs before the next is
//!   published, so leftover work of the previous start (outbox
//!   acknowledgements) does not count against the next.
//! - `KEDGE_BENCH_SETTLE_SECS` (3): wait before each memory reading.
//! - `KEDGE_BENCH_AGENT_LOG` (warn): `KEDGE_LOG` of the agent under test
//!   (`kedge::runtime::wasm=info` is added, for the compile count).
//! - `KEDGE_BENCH_AGENT_LOG_FILE`: append the agent's log there (default: a
//!   temporary file, printed on failure).
//! - `KEDGE_BENCH_TRACE`: write per-pod timings there as CSV (wall-clock
//!   microseconds), to line up with agent log timestamps.
//! - `KEDGE_BENCH_DEVICE_BIN`: the device binary to measure, instead of
//!   `$CARGO_TARGET_DIR/device/x86_64-unknown-linux-musl/full/kedge` (built
//!   by `KEDGE_FEATURE_SETS=full scripts/build-targets.sh
//!   x86_64-unknown-linux-musl`). Without a device binary (or with one older
//!   than the sources) the host's release build runs and the memory and size
//!   verdicts are skipped, each saying why.
//! - `KEDGE_BENCH_BIN`: run this `kedge` binary as the agent instead (to
//!   compare builds; a wrapper script must `exec` it); no memory verdicts.
//! - `KEDGE_BENCH_DENSITY_PODS` (100): N of the burst and density table;
//!   `0` skips it.
//! - `KEDGE_BENCH_NODELAY` (1): the harness (this bench's MQTT client and
//!   Mosquitto's `set_tcp_nodelay`) sends without Nagle's algorithm, so only
//!   the agent's own sockets can hold a packet back waiting for a delayed
//!   ACK (up to 40 ms per hop on Linux). `0`: stock settings everywhere.

#[path = "device.rs"]
#[allow(dead_code)]
mod device;
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

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
    /// Compile lines in the log before this process started (a log file
    /// given by `KEDGE_BENCH_AGENT_LOG_FILE` is shared by every process).
    compiles_before: usize,
}

/// The agent's `KEDGE_LOG`: `KEDGE_BENCH_AGENT_LOG` (warn) with the Wasm
/// runtime at info, whose "compiled Wasm module" lines are counted.
fn agent_log_level() -> String {
    let level = std::env::var("KEDGE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    format!("{level},kedge::runtime::wasm=info")
}

impl Agent {
    /// `kedge --config <empty> <args…> agent --node <node> --data-dir
    /// <home>/data`, with no `KEDGE_*` variable from our environment but
    /// `KEDGE_LOG`; its log appended to `<home>/<log_name>` (or to
    /// `KEDGE_BENCH_AGENT_LOG_FILE` for the node under test). Starting it
    /// again with the same `home` keeps its data directory (module cache).
    fn start(bin: &Path, node: &str, args: &[String], home: &Path, log_name: &str) -> Agent {
        let config = home.join("config.toml");
        std::fs::write(&config, "").expect("write empty config.toml");
        let log = std::env::var_os("KEDGE_BENCH_AGENT_LOG_FILE")
            .filter(|_| node == NODE)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(log_name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open agent log");
        let compiles_before = compile_lines(&log);
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .args(["agent", "--node", node, "--data-dir"])
            .arg(home.join("data"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEDGE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("KEDGE_LOG", agent_log_level())
            .env("KEDGE_LOG_FORMAT", "plain")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Agent {
            proc: Proc { child },
            log,
            compiles_before,
        }
    }

    fn check_alive(&mut self) {
        self.proc.check_alive("the agent", &self.log);
    }

    /// How many modules this process compiled so far (its "compiled Wasm
    /// module" log lines).
    fn compiles(&self) -> usize {
        compile_lines(&self.log) - self.compiles_before
    }
}

fn compile_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("compiled Wasm module")
        .count()
}

fn agent_home() -> TempDir {
    tempfile::Builder::new()
        .prefix("kedge-bench-agent-")
        .tempdir()
        .expect("temp dir for the agent")
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

/// After the agent was killed: waits for the node's status saying it is
/// offline (the agent's retained last will), so that the next agent's
/// "online" cannot be confused with this one's.
async fn wait_node_offline(mqtt: &mut Mqtt, topics: &Topics, node: &str) {
    let topic = topics.node(node);
    let start = Instant::now();
    loop {
        let left = STEP_TIMEOUT.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, mqtt.rx.recv()).await {
            Ok(Some(Got::Publish {
                topic: t, payload, ..
            })) => {
                if t == topic && decode_node(&payload).is_some_and(|n| !n.online) {
                    return;
                }
            }
            Ok(Some(Got::Failed(e))) => panic!("MQTT connection failed: {e}"),
            Ok(None) => panic!("MQTT event loop ended"),
            Err(_) => panic!("{topic} did not say offline within {STEP_TIMEOUT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Pods

/// The demo module (edge-manifests/demo-wasm.wat) as binary Wasm: device
/// builds read binary modules only (WAT is the build host's).
fn demo_wasm() -> Vec<u8> {
    let wat = manifest_dir().join("edge-manifests/demo-wasm.wat");
    wat::parse_file(&wat).unwrap_or_else(|e| panic!("{}: {e}", wat.display()))
}

/// `module` with a custom section `kedge-bench-sample` holding `sample`
/// appended: the same code under a digest of its own, so a cache keyed by
/// digest has never seen it.
fn distinct_module(module: &[u8], sample: usize) -> Vec<u8> {
    fn leb128(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"kedge-bench-sample";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(sample.to_string().as_bytes());
    let mut out = module.to_vec();
    out.push(0); // custom section
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Writes `bytes` to `path`; returns its pinned image reference.
fn write_module(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    format!("file://{}@sha256:{}", path.display(), sha256_hex(bytes))
}

/// The demo pod (edge-manifests/demo.yaml) as `kedge apply` would send it,
/// running `image`.
fn template_spec(image: &str) -> PodSpec {
    let dir = manifest_dir().join("edge-manifests");
    let yaml = std::fs::read_to_string(dir.join("demo.yaml")).expect("read demo.yaml");
    let yaml = yaml.replace("DEMO_DIR", &dir.display().to_string());
    let pods = parse_pod_manifests(&yaml).expect("demo.yaml parses");
    let pod = pods.first().expect("demo.yaml has a pod");
    let mut spec = pod_spec_from_k8s(pod).expect("demo.yaml converts");
    spec.containers
        .first_mut()
        .expect("demo pod has a container")
        .image = image.to_string();
    spec
}

fn with_image(template: &PodSpec, name: &str, image: &str) -> PodSpec {
    let mut spec = pod_named(template, name);
    spec.containers
        .first_mut()
        .expect("the template has a container")
        .image = image.to_string();
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
        if t0.elapsed() > STEP_TIMEOUT {
            panic!(
                "pod {key} not Running within {STEP_TIMEOUT:?}; agent log:\n{}",
                tail(&agent.log)
            );
        }
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
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(manifest_dir())
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
    under: &Under,
    template: &PodSpec,
    guest: &Guest,
    n: usize,
    settle: Duration,
) -> Density {
    let topics = Topics::new(wire::DEFAULT_PREFIX);
    let broker = start_mosquitto();
    let home = agent_home();
    let mut agent = Agent::start(
        &under.bin,
        NODE,
        &[
            "--broker".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--set".into(),
            format!("node.max_pods={}", 2 * n + 16),
        ],
        home.path(),
        "agent.log",
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
    let compiles = agent.compiles();
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

/// The burst and density table: the demo module and the Rust std guest
/// side by side.
async fn burst_and_density(under: &Under, n: usize, settle: Duration) -> String {
    let dir = tempfile::Builder::new()
        .prefix("kedge-bench-modules-")
        .tempdir()
        .expect("temp dir for modules");
    let demo = dir.path().join("demo.wasm");
    let image = write_module(&demo, &demo_wasm());
    let template = template_spec(&image);
    let wat = Guest {
        name: "the demo module".into(),
        path: demo,
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
    let a = density(under, &template, &wat, n, settle).await;
    let b = density(under, &template, &rust, n, settle).await;
    let ratio = |x: f64, y: f64| {
        if x > 0.0 {
            format!("×{:.1}", y / x)
        } else {
            "—".into()
        }
    };
    let mut out = format!(
        "Burst and density (agent: {}; one measurement each, not a percentile)\n\n\
         | measure (N = {n}) | demo module, demo-wasm.wat as binary Wasm ({:.1} KB) | Rust std guest, wasm32-wasip1 ({:.1} KB) | Rust / demo | goal |\n|---|---|---|---|---|\n",
        under.label,
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
        under.verdict(b.per_instance_kib <= 512.0)
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

/// The host's release `kedge` binary (`cargo bench` builds it with the
/// bench; a cargo run from here would wait for the lock `cargo bench`
/// holds on the target directory).
fn host_binary() -> PathBuf {
    let bin = release_dir().join("kedge");
    assert!(
        bin.is_file(),
        "{} is missing (cargo build --release --bin kedge)",
        bin.display()
    );
    bin
}

/// The agent binary under test.
struct Under {
    bin: PathBuf,
    /// Which binary, for the tables' headers.
    label: String,
    /// Whether it is the device binary: only then are memory figures
    /// judged against the device's goals.
    device: bool,
}

impl Under {
    fn pick(device: &Result<device::DeviceBin, String>) -> Under {
        if let Some(bin) = std::env::var_os("KEDGE_BENCH_BIN") {
            let bin = PathBuf::from(bin);
            return Under {
                label: format!("KEDGE_BENCH_BIN={}", bin.display()),
                bin,
                device: false,
            };
        }
        match device {
            Ok(d) => Under {
                bin: d.path.clone(),
                label: format!("device binary {} ({})", device::short(&d.path), d.label),
                device: true,
            },
            Err(why) => {
                eprintln!(
                    "bench: no device binary ({why}); measuring the host release build, memory verdicts skipped"
                );
                let bin = host_binary();
                Under {
                    label: format!(
                        "host release build {} (glibc, dynamic), not the device binary: {why}",
                        device::short(&bin)
                    ),
                    bin,
                    device: false,
                }
            }
        }
    }

    /// A memory verdict, given only for the device binary.
    fn verdict(&self, met: bool) -> String {
        if self.device {
            verdict(met).to_string()
        } else {
            "no verdict (not the device binary)".to_string()
        }
    }
}

// ---------------------------------------------------------------------------
// Output

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

/// Starts of one kind, one pod each, in the order they ran.
struct Phase {
    /// "cold", "disk", "memory": the trace's phase column.
    name: &'static str,
    pods: Vec<String>,
    starts: Vec<Start>,
    /// Modules the agent compiled during the phase.
    compiles: usize,
}

impl Phase {
    fn new(name: &'static str) -> Phase {
        Phase {
            name,
            pods: Vec::new(),
            starts: Vec::new(),
            compiles: 0,
        }
    }

    fn running(&self) -> stats::Summary {
        stats::Summary::new(self.starts.iter().map(|s| s.running))
    }
}

fn write_trace(path: &Path, phases: &[&Phase]) {
    let mut out = String::from("phase,pod,publish_wall_us,first_status_us,running_us\n");
    for phase in phases {
        for (pod, s) in phase.pods.iter().zip(&phase.starts) {
            let _ = writeln!(
                out,
                "{},{pod},{},{},{}",
                phase.name,
                s.publish_wall_us,
                s.first_status.as_micros(),
                s.running.as_micros()
            );
        }
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// One row of the start table: p50, p90, p99 and max, each only where the
/// samples carry it, and the p50 next to the warm-from-memory p50.
fn start_row(
    out: &mut String,
    start: &str,
    modules: &str,
    compiles: Option<usize>,
    s: &stats::Summary,
    floor_p50: Option<Duration>,
    goal: &str,
) {
    let ratio = match (s.get(50.0), floor_p50) {
        (Some(a), Some(b)) if !b.is_zero() => format!("×{:.1}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "—".into(),
    };
    let _ = writeln!(
        out,
        "| {start} | {modules} | {} | {} | {} | {} | {} | {} | {ratio} | {goal} |",
        s.n(),
        compiles.map_or("—".into(), |c| c.to_string()),
        s.ms(50.0, 2),
        s.ms(90.0, 2),
        s.ms(99.0, 2),
        s.max().map_or("—".into(), |d| format!("{:.2} ms", ms(d))),
    );
}

// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; there are no options of our own.
    let pods = env_u64("KEDGE_BENCH_PODS", 200).max(1) as usize;
    let cold = env_u64("KEDGE_BENCH_COLD_PODS", 100).max(1) as usize;
    let gap = Duration::from_millis(env_u64("KEDGE_BENCH_GAP_MS", 20));
    let settle = Duration::from_secs(env_u64("KEDGE_BENCH_SETTLE_SECS", 3));
    let device = device::device_binary();
    let under = Under::pick(&device);
    eprintln!("bench: agent under test: {}", under.label);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "wasm_start".into());
    json.insert("agent".into(), under.label.clone().into());
    json.insert("device_binary".into(), under.device.into());
    json.insert("pods".into(), pods.into());
    json.insert("cold_pods".into(), cold.into());
    let (starts, mut table) = runtime.block_on(run(&under, pods, cold, gap, settle, &mut json));
    let dense = env_u64("KEDGE_BENCH_DENSITY_PODS", 100) as usize;
    let density_table = if dense == 0 {
        "burst and density skipped (KEDGE_BENCH_DENSITY_PODS=0)\n".to_string()
    } else {
        runtime.block_on(burst_and_density(&under, dense, settle))
    };

    let budget = device::budget_bytes(device::FEATURES);
    let budget_cell = budget.map_or_else(
        || {
            format!(
                "no budget_{}_bytes in targets/{}.toml",
                device::FEATURES,
                device::TARGET
            )
        },
        |b| format!("≤ {b} bytes (targets/{}.toml)", device::TARGET),
    );
    match &device {
        Ok(d) => {
            let bytes = std::fs::metadata(&d.path)
                .expect("stat the device binary")
                .len();
            table.row(
                format!(
                    "device binary size: {} ({})",
                    device::short(&d.path),
                    d.label
                ),
                format!("{bytes} bytes ({:.2} MiB)", bytes as f64 / 1048576.0),
                format!(
                    "{budget_cell}: {}",
                    budget.map_or("—", |b| verdict(bytes <= b))
                ),
            );
            json.insert("device_binary_bytes".into(), bytes.into());
        }
        Err(why) => {
            table.row("device binary size", format!("skipped: {why}"), budget_cell);
            json.insert("device_binary_bytes".into(), serde_json::Value::Null);
        }
    }
    let host = release_dir().join("kedge");
    if let Ok(m) = std::fs::metadata(&host) {
        let bytes = m.len();
        table.row(
            format!(
                "host release build size, for comparison: {} (glibc, dynamic, this bench's features)",
                device::short(&host)
            ),
            format!("{bytes} bytes ({:.2} MiB)", bytes as f64 / 1048576.0),
            "— (not a device build)",
        );
        json.insert("host_binary_bytes".into(), bytes.into());
    }

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "\n{starts}");
    let _ = writeln!(
        stdout,
        "Footprint (agent: {}; PSS from smaps_rollup, settle {settle:?})\n\n{}",
        under.label,
        table.markdown()
    );
    let _ = writeln!(stdout, "{density_table}");
    let _ = writeln!(stdout, "{}", serde_json::Value::Object(json));
}

/// The three kinds of start and the memory readings; returns the start
/// table and the footprint table's rows so far.
async fn run(
    under: &Under,
    pods: usize,
    cold: usize,
    gap: Duration,
    settle: Duration,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> (String, Table) {
    let topics = Topics::new(wire::DEFAULT_PREFIX);
    let bin = under.bin.as_path();

    // --- C distinct modules: the demo module, each with its own custom
    // section, so each has its own digest.
    let dir = tempfile::Builder::new()
        .prefix("kedge-bench-modules-")
        .tempdir()
        .expect("temp dir for modules");
    let base = demo_wasm();
    let images: Vec<String> = (0..cold)
        .map(|i| {
            write_module(
                &dir.path().join(format!("sample-{i:03}.wasm")),
                &distinct_module(&base, i),
            )
        })
        .collect();
    let template = template_spec(&images[0]);

    // --- The agent under test, against its own Mosquitto; its data
    // directory (and module cache) kept across its restarts.
    let broker = start_mosquitto();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    eprintln!("bench: mosquitto on {url}");
    let home = agent_home();
    let args = [
        "--broker".into(),
        url,
        "--set".into(),
        format!("node.max_pods={}", pods.max(cold) + 16),
    ];
    let mut agent = Agent::start(bin, NODE, &args, home.path(), "agent-1.log");
    let mut mqtt = Mqtt::connect(broker.port, "kedge-bench");
    mqtt.subscribe(&topics.reported_filter(NODE)).await;
    wait_node_online(&mut mqtt, &topics, NODE, &mut agent).await;
    eprintln!("bench: agent online (pid {})", agent.proc.pid());

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let fresh = memory(agent.proc.pid());

    // Starts `n` pods one after another, pod `i` running `image(i)`.
    async fn phase(
        mut phase: Phase,
        n: usize,
        image: impl Fn(usize) -> String,
        (template, gap): (&PodSpec, Duration),
        mqtt: &mut Mqtt,
        topics: &Topics,
        agent: &mut Agent,
    ) -> Phase {
        eprintln!("bench: {n} {} starts, one after another", phase.name);
        for i in 0..n {
            let spec = with_image(template, &format!("{}-{i:03}", phase.name), &image(i));
            phase
                .starts
                .push(start_pod(mqtt, topics, &spec, agent).await);
            phase.pods.push(spec.name);
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        phase.compiles = agent.compiles();
        phase
    }
    let keys =
        |p: &Phase| -> Vec<PodKey> { p.pods.iter().map(|n| PodKey::new("default", n)).collect() };

    // --- Cold: every module new to the agent.
    let cold_phase = phase(
        Phase::new("cold"),
        cold,
        |i| images[i].clone(),
        (&template, gap),
        &mut mqtt,
        &topics,
        &mut agent,
    )
    .await;
    delete_pods(&mut mqtt, &topics, &keys(&cold_phase), &mut agent).await;

    // --- Warm from disk: a new agent process on the same data directory.
    drop(agent);
    wait_node_offline(&mut mqtt, &topics, NODE).await;
    let mut agent = Agent::start(bin, NODE, &args, home.path(), "agent-2.log");
    wait_node_online(&mut mqtt, &topics, NODE, &mut agent).await;
    let disk_phase = phase(
        Phase::new("disk"),
        cold,
        |i| images[i].clone(),
        (&template, gap),
        &mut mqtt,
        &topics,
        &mut agent,
    )
    .await;
    delete_pods(&mut mqtt, &topics, &keys(&disk_phase), &mut agent).await;

    // --- Warm from memory: a third process; one untimed pod loads module 0
    // from disk, then every pod finds it in memory.
    drop(agent);
    wait_node_offline(&mut mqtt, &topics, NODE).await;
    let mut agent = Agent::start(bin, NODE, &args, home.path(), "agent-3.log");
    wait_node_online(&mut mqtt, &topics, NODE, &mut agent).await;
    let warmup = with_image(&template, "warmup", &images[0]);
    start_pod(&mut mqtt, &topics, &warmup, &mut agent).await;
    delete_pods(&mut mqtt, &topics, &[warmup.key()], &mut agent).await;
    let memory_phase = phase(
        Phase::new("memory"),
        pods,
        |_| images[0].clone(),
        (&template, gap),
        &mut mqtt,
        &topics,
        &mut agent,
    )
    .await;
    if let Some(path) = std::env::var_os("KEDGE_BENCH_TRACE") {
        write_trace(Path::new(&path), &[&cold_phase, &disk_phase, &memory_phase]);
    }

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let busy = memory(agent.proc.pid());

    eprintln!("bench: deleting {pods} pods");
    let deleted = delete_pods(&mut mqtt, &topics, &keys(&memory_phase), &mut agent).await;

    tokio::time::sleep(settle).await;
    agent.check_alive();
    let after = memory(agent.proc.pid());
    drop(mqtt);
    drop(agent);
    drop(broker);

    // --- An agent alone, with its embedded broker.
    let port = free_port();
    let lone_home = agent_home();
    let mut lone = Agent::start(
        bin,
        "idle",
        &[
            "--set".into(),
            format!("embedded_broker.listen=127.0.0.1:{port}"),
        ],
        lone_home.path(),
        "agent.log",
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
    let (c, d, m) = (
        cold_phase.running(),
        disk_phase.running(),
        memory_phase.running(),
    );
    let first = stats::Summary::new(memory_phase.starts.iter().map(|s| s.first_status));
    let second = stats::Summary::new(
        memory_phase
            .starts
            .iter()
            .map(|s| s.running - s.first_status),
    );
    let floor = m.get(50.0);
    let mut starts = format!(
        "Wasm pod start (agent: {}; one pod in flight, {} ms apart, harness {}; nearest-rank percentiles, \"—\" where the samples cannot carry one: a p99 needs 100, a p90 10)\n\n\
         | start | modules | samples | compiles by the agent | p50 | p90 | p99 | max | p50 / warm-from-memory p50 | goal |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        under.label,
        gap.as_millis(),
        if nodelay() {
            "TCP_NODELAY"
        } else {
            "with Nagle"
        },
    );
    start_row(
        &mut starts,
        "cold: fetch, compile, write the disk cache (first agent process)",
        &format!("{cold} distinct (demo module + custom section `kedge-bench-sample`)"),
        Some(cold_phase.compiles),
        &c,
        floor,
        "—",
    );
    start_row(
        &mut starts,
        "warm from disk: load the cached code (second process, in-memory cache empty)",
        &format!("the same {cold}, one pod each"),
        Some(disk_phase.compiles),
        &d,
        floor,
        "—",
    );
    let p50_goal = match floor {
        Some(p50) => format!("p50 ≤ 5 ms: {}", verdict(ms(p50) <= 5.0)),
        None => "p50 ≤ 5 ms".into(),
    };
    start_row(
        &mut starts,
        "warm from memory: module loaded by this process (third process, after one untimed pod)",
        "1 (module 0)",
        Some(memory_phase.compiles),
        &m,
        floor,
        &p50_goal,
    );
    start_row(
        &mut starts,
        "… warm from memory: publish → first status (Pending)",
        "",
        None,
        &first,
        None,
        "—",
    );
    start_row(
        &mut starts,
        "… warm from memory: first status → Running",
        "",
        None,
        &second,
        None,
        "—",
    );

    let mut table = Table { rows: Vec::new() };
    let idle_goal = |m: Mem| format!("≤ 8 MiB PSS: {}", under.verdict(m.pss_kib <= 8 * 1024));
    table.row(
        format!("delete {pods} pods (all tombstones published → last reported topic cleared; one measurement)"),
        format!("{:.0} ms", ms(deleted)),
        "—",
    );
    table.row(
        "agent idle, fresh start (Mosquitto, no pods, empty module cache)",
        mem_cell(fresh),
        idle_goal(fresh),
    );
    table.row(
        format!("agent with {pods} running pods of one module"),
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

    let opt_ms = |d: Option<Duration>| d.map_or(serde_json::Value::Null, |d| ms(d).into());
    for (kind, s, compiles) in [
        ("cold", &c, cold_phase.compiles),
        ("disk", &d, disk_phase.compiles),
        ("memory", &m, memory_phase.compiles),
    ] {
        json.insert(format!("{kind}_samples"), s.n().into());
        json.insert(format!("{kind}_compiles"), compiles.into());
        for q in [50.0, 90.0, 99.0] {
            json.insert(format!("{kind}_p{q}_ms"), opt_ms(s.get(q)));
        }
        json.insert(format!("{kind}_max_ms"), opt_ms(s.max()));
    }
    json.insert("first_status_p50_ms".into(), opt_ms(first.get(50.0)));
    json.insert("delete_ms".into(), ms(deleted).into());
    for (k, m) in [
        ("idle_fresh", fresh),
        ("running", busy),
        ("idle_after", after),
        ("idle_embedded", embedded),
    ] {
        json.insert(format!("{k}_pss_kib"), m.pss_kib.into());
        json.insert(format!("{k}_rss_kib"), m.rss_kib.into());
    }
    (starts, table)
}
