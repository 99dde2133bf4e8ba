//! `cargo bench --features bridge --bench kubectl_streams`: what `kubectl
//! exec` and `kubectl port-forward` through the bridge cost next to the
//! direct paths, in one world: the real control plane (etcd +
//! kube-apiserver from tests/k8s-harness), a real kubectl, Mosquitto, the
//! bridge, a containerd of the bench's own (runc, CNI bridge, the local
//! busybox image) and one agent with CRI (issue 14, "What it must show").
//!
//! One busybox pod runs `httpd` on 8080 serving a 64 MiB file and an echo
//! server (`nc -ll -p 9000 -e cat`) on 9000. Four tables, each with its
//! sample counts; the goals are printed beside the figures, never asserted:
//!
//! 1. exec round trip of `echo x`, alternating (a) `kubectl exec` (the
//!    whole user path, kubectl's start included: since wire version 9 an
//!    exec stream to containerd's streaming server), (b) the exec RPC alone
//!    (`kedge::client::Client::exec_within` over MQTT to the agent: what the
//!    bridge calls for the kubelet API's `/run`) and (c) the floor, CRI `ExecSync` straight to
//!    containerd's socket on the same container;
//! 2. port-forward throughput: the 64 MiB download through `kubectl
//!    port-forward` vs straight from the pod IP, alternating rounds (goal:
//!    forward ≥ 50 % of direct);
//! 3. port-forward latency: 1-byte ping-pong on one connection to the echo
//!    server, forward vs direct, alternating (goal: ≤ 5 ms added p50);
//! 4. memory per open stream: the bridge's and the agent's RSS with one
//!    idle `kubectl port-forward` and no connection, then with 50 idle
//!    forwarded connections open (each carried one byte there and back).
//!
//! Needs root (containerd, CNI), kubectl and the control plane binaries
//! (`KEDGE_KUBECTL`, `KEDGE_K8S_BIN_DIR`, as the bridge_e2e tests); prints
//! one line and skips otherwise. Environment: `KEDGE_BENCH_EXECS` (100)
//! execs of each kind, `KEDGE_BENCH_ROUNDS` (5) downloads of each kind,
//! `KEDGE_BENCH_PINGS` (1000) pings of each kind, `KEDGE_BENCH_STREAMS`
//! (50) idle connections, `KEDGE_BENCH_AGENT_LOG` (warn) the agent's
//! `KEDGE_LOG`, `KEDGE_BENCH_NODELAY` (1): Mosquitto's `set_tcp_nodelay`,
//! as README.md advises (`0`: the stock broker, whose small messages wait
//! for delayed ACKs, up to 40 ms a hop).

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use kedge::client::{self, ClientOptions, Inbound};
use kedge::model::ExecRequest;
use serde_json::json;
use support::cri::{BUSYBOX, Containerd};
use support::k8s::{BridgeOpts, BridgeProc, ControlPlane, ControlPlaneOpts, Kubectl};
use support::{Agent, AgentOpts, Mosquitto, rss_kib};
use tonic::transport::{Channel, Endpoint, Uri};

const NODE: &str = "edge-c";
const POD: &str = "web";
/// The file httpd serves.
const BIG: usize = 64 << 20;
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;
const LONG: Duration = Duration::from_secs(180);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Why the control plane cannot start here, if it cannot: its binaries
/// are missing from `KEDGE_K8S_BIN_DIR`, or that is unset and there is no
/// Go to build them (tests/k8s-harness/build.sh).
fn control_plane_missing() -> Option<String> {
    match std::env::var_os("KEDGE_K8S_BIN_DIR") {
        Some(dir) => ["etcd", "kube-apiserver"]
            .into_iter()
            .find(|b| !Path::new(&dir).join(b).is_file())
            .map(|b| format!("no {b} in KEDGE_K8S_BIN_DIR={}", dir.to_string_lossy())),
        None => {
            let go = std::process::Command::new("go").arg("version").output();
            (!go.is_ok_and(|o| o.status.success())).then(|| {
                "KEDGE_K8S_BIN_DIR is unset and there is no Go to build tests/k8s-harness".into()
            })
        }
    }
}

fn pod_manifest() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [
                {"key": "kedge.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            ],
            "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", format!(
                    "mkdir -p /www && head -c {BIG} /dev/urandom > /www/big && \
                     httpd -p {HTTP_PORT} -h /www && exec nc -ll -p {ECHO_PORT} -e cat"
                )],
            }],
        },
    })
}

// ---------------------------------------------------------------------------
// kubectl port-forward

/// A running `kubectl port-forward`, its stdout and stderr drained by
/// threads (it writes a line per connection; a full pipe would stop it).
struct PortForward {
    child: Child,
    /// Remote port → local port.
    local: Vec<(u16, u16)>,
    stderr: Arc<Mutex<String>>,
}

impl PortForward {
    fn start(kubectl: &Kubectl, ports: &[u16]) -> PortForward {
        let mut args = vec!["port-forward".to_string(), format!("pod/{POD}")];
        args.extend(ports.iter().map(|p| format!(":{p}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = kubectl.spawn(&args);
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 64 << 10 {
                        let cut = s.len() - (32 << 10);
                        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
                    && let Some((l, r)) = rest.split_once(" -> ")
                    && let (Ok(l), Ok(r)) = (l.parse::<u16>(), r.trim().parse::<u16>())
                {
                    let _ = tx.send((r, l));
                }
            }
        });
        let mut local = Vec::new();
        while local.len() < ports.len() {
            match rx.recv_timeout(LONG) {
                Ok(pair) => local.push(pair),
                Err(_) => panic!(
                    "kubectl port-forward said no local port within {LONG:?}:\n{}",
                    stderr.lock().unwrap_or_else(|e| e.into_inner())
                ),
            }
        }
        PortForward {
            child,
            local,
            stderr,
        }
    }

    fn addr(&self, remote: u16) -> SocketAddr {
        let local = self
            .local
            .iter()
            .find(|(r, _)| *r == remote)
            .map(|(_, l)| *l)
            .expect("forwarded port");
        SocketAddr::from(([127, 0, 0, 1], local))
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The measured operations

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(LONG)).expect("read timeout");
    s
}

/// `GET /big` over HTTP/1.0 to `addr`, read to its end: the time from the
/// connect to the last byte. `buf` is reused between downloads.
fn download(addr: SocketAddr, buf: &mut Vec<u8>, what: &str) -> Duration {
    buf.clear();
    let t0 = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"GET /big HTTP/1.0\r\n\r\n")
        .expect("HTTP request");
    s.read_to_end(buf)
        .unwrap_or_else(|e| panic!("{what}: reading the download: {e}"));
    let took = t0.elapsed();
    let body_at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no HTTP header in {} bytes", buf.len()))
        + 4;
    assert!(
        buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"),
        "{what}: {:?}",
        String::from_utf8_lossy(&buf[..body_at])
    );
    assert_eq!(buf.len() - body_at, BIG, "{what}: body length");
    took
}

/// One byte to the echo server and back.
fn ping(s: &mut TcpStream, byte: u8) -> Duration {
    let t0 = Instant::now();
    s.write_all(&[byte]).expect("ping");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("pong");
    let took = t0.elapsed();
    assert_eq!(b[0], byte, "the echo differs");
    took
}

async fn cri_channel(socket: &Path) -> Channel {
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

/// The CRI id of the pod's running container `main`.
async fn container_id(rt: &mut RuntimeServiceClient<Channel>) -> String {
    let filter = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        label_selector: [
            ("io.kubernetes.pod.name".to_string(), POD.to_string()),
            ("io.kubernetes.container.name".to_string(), "main".into()),
        ]
        .into(),
        ..Default::default()
    };
    let list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1, "running containers of {POD}: {list:?}");
    list[0].id.clone()
}

async fn exec_floor(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Duration {
    let t0 = Instant::now();
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: vec!["echo".into(), "x".into()],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let took = t0.elapsed();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, b"x\n".as_slice())
    );
    took
}

async fn exec_rpc(client: &client::Client) -> Duration {
    let request = ExecRequest {
        namespace: "default".into(),
        pod: POD.into(),
        container: "main".into(),
        command: vec!["echo".into(), "x".into()],
        timeout_secs: 30,
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = client
        .exec_within(NODE, request, Duration::from_secs(60))
        .await
        .expect("exec RPC");
    let took = t0.elapsed();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, b"x\n".as_slice())
    );
    took
}

/// For comparison: kubectl's start and one plain API call, no exec.
fn get_kubectl(kubectl: &Kubectl) -> Duration {
    let t0 = Instant::now();
    let out = kubectl.ok(&["get", "pod", POD, "-o", "name"]);
    let took = t0.elapsed();
    assert_eq!(out.trim(), format!("pod/{POD}"));
    took
}

fn exec_kubectl(kubectl: &Kubectl) -> Duration {
    let t0 = Instant::now();
    let out = kubectl.ok(&["exec", POD, "--", "echo", "x"]);
    let took = t0.elapsed();
    assert_eq!(out, "x\n");
    took
}

/// The process whose executable's name is `name` and whose command line
/// mentions `needle` (a temp dir of this run), if any.
fn pid_of(name: &str, needle: &Path) -> Option<u32> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let exe = args.next()?;
        (Path::new(exe.as_ref()).file_name()? == name && args.any(|a| a.contains(&needle)))
            .then_some(pid)
    })
}

// ---------------------------------------------------------------------------
// Printing

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn cell(s: &stats::Summary, q: f64) -> String {
    s.get(q).map_or_else(|| "—".to_string(), ms)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn main() {
    let me = "kubectl_streams";
    if !rustix::process::geteuid().is_root() {
        eprintln!("{me}: SKIPPED, needs root (containerd, CNI, cgroups)");
        return;
    }
    let kubectl_bin = match support::k8s::kubectl_bin() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("{me}: SKIPPED, no kubectl ({why}); set KEDGE_KUBECTL");
            return;
        }
    };
    if let Some(why) = control_plane_missing() {
        eprintln!("{me}: SKIPPED, no control plane ({why})");
        return;
    }
    let execs = env_usize("KEDGE_BENCH_EXECS", 100);
    let rounds = env_usize("KEDGE_BENCH_ROUNDS", 5);
    let pings = env_usize("KEDGE_BENCH_PINGS", 1000);
    let streams = env_usize("KEDGE_BENCH_STREAMS", 50);
    let agent_log = std::env::var("KEDGE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    let nodelay = std::env::var("KEDGE_BENCH_NODELAY").map_or(true, |v| v.trim() != "0");

    // The world. Locals drop in reverse: the agent first, containerd last.
    let containerd = Containerd::start();
    // As README.md advises for a deployment: no Nagle in the broker either
    // (kedge turns it off on its own sockets).
    let mqtt = Mosquitto::start_custom(false, |port| {
        format!(
            "user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_packet_size 15728640\n\
             set_tcp_nodelay {nodelay}\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        )
    });
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let kubectl = Kubectl::new(&kubectl_bin, &cp.kubeconfig);
    // The bridge's RBAC as a cluster admin applies it (with the binding
    // that lets the apiserver's kubelet client exec and port-forward), and
    // the bridge on its own kubeconfig, as the bridge_e2e tests.
    let rbac = support::repo_root().join("edge-manifests/bridge-rbac.yaml");
    kubectl.ok(&[
        "apply",
        "--server-side",
        "-f",
        rbac.to_str().expect("utf-8 path"),
    ]);
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec![],
    });
    let data = tempfile::Builder::new()
        .prefix("kedge-bench-streams-")
        .tempdir()
        .expect("tempdir");
    let agent = Agent::start(AgentOpts {
        node: NODE.into(),
        broker_url: Some(mqtt.url()),
        data_dir: data.path().join(NODE),
        extra_args: containerd.agent_args(),
        env: vec![
            ("KEDGE_LOG".into(), agent_log),
            // As the bridge_e2e tests: DiskPressure only below 1 % free, so a
            // full shared disk puts no taint on the node.
            ("KEDGE_NODE_DISK_AVAILABLE_MIN_PERCENT".into(), "1".into()),
        ],
    });

    // No controllers: the ServiceAccount admission wants `default` to exist.
    let _ = kubectl.run(&["create", "serviceaccount", "default"]);
    let manifest = data.path().join("pod.json");
    std::fs::write(&manifest, pod_manifest().to_string()).expect("write pod");
    kubectl.ok(&["create", "-f", manifest.to_str().expect("utf-8 path")]);
    let dump = || {
        format!(
            "pod: {}\nagent log:\n{}\nbridge log:\n{}",
            String::from_utf8_lossy(&kubectl.run(&["get", "pod", POD, "-o", "json"]).stdout),
            agent.log(),
            bridge.log()
        )
    };
    let pod_ip: IpAddr = support::poll_until(LONG, Duration::from_millis(200), || {
        bridge.assert_running();
        let out = kubectl.run(&[
            "get",
            "pod",
            POD,
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ]);
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (phase, ip) = out.split_once(' ')?;
        (phase == "Running").then(|| ip.trim().parse().ok())?
    })
    .unwrap_or_else(|| {
        panic!(
            "{POD} not Running with a pod IP within {LONG:?}\n{}",
            dump()
        )
    });
    // Up once the echo server listens (after the file and httpd).
    let direct_echo = SocketAddr::new(pod_ip, ECHO_PORT);
    let direct_http = SocketAddr::new(pod_ip, HTTP_PORT);
    support::poll_until(LONG, Duration::from_millis(100), || {
        TcpStream::connect_timeout(&direct_echo, Duration::from_secs(1)).ok()
    })
    .unwrap_or_else(|| panic!("no echo server at {direct_echo}\n{}", dump()));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");

    // 1. exec round trip.
    let (client, mut cri_rt, cid) = rt.block_on(async {
        let mut config = kedge::config::Config::default();
        config.broker.url = Some(mqtt.url());
        let opts = ClientOptions::new(format!("kedge-bench-streams-{}", std::process::id()));
        let (client, mut inbox) = client::start(&config, opts).expect("client starts");
        loop {
            match tokio::time::timeout(Duration::from_secs(60), inbox.recv()).await {
                Ok(Some(Inbound::Synced)) => break,
                Ok(Some(Inbound::Disconnected { error })) => panic!("disconnected: {error}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no barrier from {}", mqtt.url()),
            }
        }
        tokio::spawn(async move { while inbox.recv().await.is_some() {} });
        let mut cri_rt = RuntimeServiceClient::new(cri_channel(&containerd.socket).await);
        let cid = container_id(&mut cri_rt).await;
        (client, cri_rt, cid)
    });
    // One of each, not counted (first exec, first kubectl discovery).
    exec_kubectl(&kubectl);
    rt.block_on(exec_rpc(&client));
    rt.block_on(exec_floor(&mut cri_rt, &cid));
    get_kubectl(&kubectl);
    let (mut via_kubectl, mut via_rpc, mut via_cri) = (Vec::new(), Vec::new(), Vec::new());
    let mut kubectl_get = Vec::new();
    for _ in 0..execs {
        kubectl_get.push(get_kubectl(&kubectl));
        via_kubectl.push(exec_kubectl(&kubectl));
        via_rpc.push(rt.block_on(exec_rpc(&client)));
        via_cri.push(rt.block_on(exec_floor(&mut cri_rt, &cid)));
    }
    let via_kubectl = stats::Summary::new(via_kubectl);
    let via_rpc = stats::Summary::new(via_rpc);
    let via_cri = stats::Summary::new(via_cri);
    let kubectl_get = stats::Summary::new(kubectl_get);

    // 2. throughput.
    let pf = PortForward::start(&kubectl, &[HTTP_PORT, ECHO_PORT]);
    let mut buf = Vec::with_capacity(BIG + 4096);
    download(pf.addr(HTTP_PORT), &mut buf, "warm-up through port-forward");
    download(direct_http, &mut buf, "warm-up direct");
    let mbps = |d: Duration| BIG as f64 / (1 << 20) as f64 / d.as_secs_f64();
    // Where the CPU goes while the bytes cross: every process on the path.
    let on_path: Vec<(&str, u32)> = [
        ("kubectl port-forward", Some(pf.child.id())),
        ("kube-apiserver", pid_of("kube-apiserver", cp.dir())),
        ("bridge", Some(bridge.pid())),
        ("mosquitto", pid_of("mosquitto", mqtt.dir())),
        ("agent", Some(agent.pid())),
    ]
    .into_iter()
    .filter_map(|(who, pid)| Some((who, pid?)))
    .collect();
    let mut cpu = vec![Duration::ZERO; on_path.len()];
    let mut fwd_wall = Duration::ZERO;
    let (mut fwd_rate, mut direct_rate) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for through_forward in [r % 2 == 0, r % 2 != 0] {
            if through_forward {
                let before: Vec<Duration> = on_path
                    .iter()
                    .map(|(_, p)| support::k8s::cpu_time(*p))
                    .collect();
                let d = download(pf.addr(HTTP_PORT), &mut buf, "through port-forward");
                for (i, (_, p)) in on_path.iter().enumerate() {
                    cpu[i] += support::k8s::cpu_time(*p).saturating_sub(before[i]);
                }
                fwd_wall += d;
                fwd_rate.push(mbps(d));
            } else {
                direct_rate.push(mbps(download(direct_http, &mut buf, "direct")));
            }
        }
    }
    drop(buf);

    // 3. latency.
    let (fwd_ping, direct_ping) = {
        let mut fwd = connect(pf.addr(ECHO_PORT));
        let mut direct = connect(direct_echo);
        for i in 0..10u8 {
            ping(&mut fwd, i);
            ping(&mut direct, i);
        }
        let (mut f, mut d) = (Vec::new(), Vec::new());
        for i in 0..pings {
            let byte = (i % 251) as u8;
            f.push(ping(&mut fwd, byte));
            d.push(ping(&mut direct, byte));
        }
        (stats::Summary::new(f), stats::Summary::new(d))
    };
    let pf_stderr = pf.stderr();
    drop(pf);

    // 4. memory per open stream: a fresh port-forward, idle, then with
    // `streams` idle connections each carried end to end.
    let pf = PortForward::start(&kubectl, &[ECHO_PORT]);
    // Its upgraded connection reaches the bridge when kubectl starts; one
    // connection's worth of settling (untimed) before the baseline.
    {
        let mut s = connect(pf.addr(ECHO_PORT));
        ping(&mut s, 1);
    }
    std::thread::sleep(Duration::from_secs(2));
    let bridge_before = rss_kib(bridge.pid());
    let agent_before = rss_kib(agent.pid());
    let mut open = Vec::new();
    for i in 0..streams {
        let mut s = connect(pf.addr(ECHO_PORT));
        ping(&mut s, (i % 251) as u8);
        open.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let bridge_after = rss_kib(bridge.pid());
    let agent_after = rss_kib(agent.pid());
    // Still open (the bytes would not come back otherwise).
    for (i, s) in open.iter_mut().enumerate() {
        ping(s, (i % 251) as u8);
    }
    drop(open);
    drop(pf);
    rt.block_on(async {
        client.close();
    });

    // ---------------------------------------------------------------
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(support::repo_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kv = kubectl.run(&["version", "--client", "-o", "json"]);
    let kv: serde_json::Value = serde_json::from_slice(&kv.stdout).unwrap_or_default();
    let kv = kv["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    println!();
    println!(
        "## kubectl exec and port-forward through the bridge (commit {git}, kubectl {kv}, bridge and agent {}, Mosquitto set_tcp_nodelay {nodelay})",
        support::kedge_bin().display()
    );
    println!();
    println!(
        "Nearest-rank percentiles; \"—\" where the samples cannot carry one (a p99 needs 100, a p90 10)."
    );
    println!();
    println!("### exec round trip (`echo x`, alternating)");
    println!();
    println!("| path | samples | p50 ms | p90 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (path, s) in [
        (
            "`kubectl exec web -- echo x` (kubectl start, apiserver, SPDY through the bridge and an exec stream to containerd)",
            &via_kubectl,
        ),
        (
            "exec RPC alone: `Client::exec_within` over MQTT to the agent (the bridge's `/run`)",
            &via_rpc,
        ),
        ("floor: CRI `ExecSync` on containerd's socket", &via_cri),
        (
            "for comparison, no exec: `kubectl get pod web -o name` (kubectl start, one API call)",
            &kubectl_get,
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
    println!();

    let fwd_med = median(&fwd_rate);
    let direct_med = median(&direct_rate);
    let ratio = fwd_med / direct_med;
    println!(
        "### port-forward throughput (64 MiB over HTTP/1.0 from busybox httpd, alternating rounds)"
    );
    println!();
    println!("| path | rounds | median MiB/s | all rounds MiB/s |");
    println!("|---|---:|---:|---|");
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| through `kubectl port-forward` (apiserver, bridge, MQTT, agent) | {} | {fwd_med:.1} | {} |",
        fwd_rate.len(),
        list(&fwd_rate)
    );
    println!(
        "| direct to the pod IP {pod_ip} | {} | {direct_med:.1} | {} |",
        direct_rate.len(),
        list(&direct_rate)
    );
    println!(
        "| ratio forward / direct (goal ≥ 50 %) | | {:.1} % {} | |",
        ratio * 100.0,
        verdict(ratio >= 0.5)
    );
    println!();
    println!(
        "CPU time of each process on the forwarded path per 64 MiB download (mean over the {} forwarded rounds, {:.1} s of wall time each; /proc/PID/stat, 10 ms ticks):",
        fwd_rate.len(),
        fwd_wall.as_secs_f64() / fwd_rate.len().max(1) as f64
    );
    println!();
    println!("| process | CPU s per download | share of the wall time |");
    println!("|---|---:|---:|");
    for ((who, _), c) in on_path.iter().zip(&cpu) {
        println!(
            "| {who} | {:.2} | {:.0} % |",
            c.as_secs_f64() / fwd_rate.len().max(1) as f64,
            100.0 * c.as_secs_f64() / fwd_wall.as_secs_f64().max(1e-9)
        );
    }
    println!();

    println!(
        "### port-forward latency (1-byte ping-pong on one connection to the echo server, alternating)"
    );
    println!();
    println!("| path | samples | p50 ms | p90 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (path, s) in [
        ("through `kubectl port-forward`", &fwd_ping),
        ("direct to the pod IP", &direct_ping),
    ] {
        println!(
            "| {path} | {} | {} | {} | {} |",
            s.n(),
            cell(s, 50.0),
            cell(s, 90.0),
            cell(s, 99.0)
        );
    }
    if let (Some(f), Some(d)) = (fwd_ping.get(50.0), direct_ping.get(50.0)) {
        let added = f.saturating_sub(d);
        println!(
            "| added p50 (goal ≤ 5 ms) | | {} {} | | |",
            ms(added),
            verdict(added <= Duration::from_millis(5))
        );
    }
    println!();

    println!(
        "### memory per open stream ({streams} idle connections through one `kubectl port-forward`, each carried one byte there and back)"
    );
    println!();
    println!("| process | RSS, port-forward idle | RSS, {streams} connections open | per stream |");
    println!("|---|---:|---:|---:|");
    let per = |before: u64, after: u64| (after as f64 - before as f64) / streams.max(1) as f64;
    for (who, before, after) in [
        ("bridge", bridge_before, bridge_after),
        ("agent", agent_before, agent_after),
    ] {
        println!(
            "| {who} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per(before, after)
        );
    }
    println!();
    if !pf_stderr.trim().is_empty() {
        eprintln!("kubectl port-forward said:\n{pf_stderr}");
    }
    drop(agent);
    drop(bridge);
}
