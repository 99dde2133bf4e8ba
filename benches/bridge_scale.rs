//! `kedge bridge` at scale: the real control plane (etcd + kube-apiserver from
//! tests/k8s-harness), a real Mosquitto, the bridge, and N simulated devices
//! (tests/support/sim.rs) — 1,000 and then 10,000 by default.
//!
//! `cargo bench --features bridge --bench bridge_scale`
//! (`KEDGE_BENCH_DEVICES=500,2000` to choose the sizes, `KEDGE_BENCH_PODS`
//! for the number of pods whose status latency is measured, `KEDGE_BENCH_QPS`
//! for the bridge's `--api-qps`).
//!
//! Prints one row per size: bridge memory per device, API writes per second
//! while registering and in steady state, time until every node is Ready, and
//! the status latency (device publishes Running → the apiserver shows it),
//! each percentile with its sample count (`benches/stats.rs`: a p99 needs
//! 100 samples, so `KEDGE_BENCH_PODS` below 100 prints p95 or p90 instead).
//! The bridge is this build's `kedge` (the table names it); it runs beside
//! Kubernetes, not on a device, so no device budget applies.

#[path = "../tests/support/sim.rs"]
mod sim;
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kedge::model::PodKey;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::k8s::{BridgeOpts, BridgeProc, ControlPlane, ControlPlaneOpts, bridge_metric};
use support::{Mosquitto, rss_kib, wait_until};

struct Row {
    devices: usize,
    mem_per_device_kib: f64,
    rss_mib: f64,
    reg_writes_per_s: f64,
    steady_writes_per_s: f64,
    all_ready: Duration,
    pods: usize,
    /// Device publishes Running → the apiserver shows it, per pod.
    status: stats::Summary,
    /// Pod created → the apiserver shows it Running, per pod.
    create_to_running: stats::Summary,
}

/// The bridge's `kedge_bridge_api_requests_total`, through its kubelet API.
fn api_requests(cp: &ControlPlane, port: u16) -> Option<u64> {
    bridge_metric(cp, port, "kedge_bridge_api_requests_total").map(|v| v as u64)
}

fn run(devices: usize, pods: usize, qps: f64) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let mqtt = Mosquitto::start();
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec![
            format!("--api-qps={qps}"),
            "--api-concurrency=32".into(),
            "--heartbeat-timeout-ms=120000".into(),
        ],
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    });
    let port = bridge.kubelet_port;
    let writes0 = wait_until("bridge metrics", Duration::from_secs(60), || {
        bridge.assert_running();
        api_requests(&cp, port)
    });
    let rss0 = rss_kib(bridge.pid());

    // Count Ready kedge nodes from one watch.
    let ready: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let ready_count = Arc::new(AtomicUsize::new(0));
    {
        let ready = ready.clone();
        let count = ready_count.clone();
        let api: Api<Node> = Api::all(client.clone());
        rt.spawn(async move {
            let cfg = watcher::Config::default().labels("kedge.io/edge=true");
            let mut s = watcher::watcher(api, cfg).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                let Ok(ev) = ev else { continue };
                if let watcher::Event::Apply(n) | watcher::Event::InitApply(n) = ev {
                    let is_ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let mut m = ready.lock().expect("ready");
                    m.insert(n.metadata.name.unwrap_or_default(), is_ready);
                    count.store(m.values().filter(|r| **r).count(), Ordering::Relaxed);
                }
            }
        });
    }

    let start = Instant::now();
    let opts = sim::SimOpts {
        host: "127.0.0.1".into(),
        port: mqtt.port,
        prefix: "kedge/v1".into(),
        devices,
        name_prefix: "sim-".into(),
        connections: 8,
        heartbeat: Duration::from_secs(10),
        fleet: None,
    };
    let simulation = {
        let _g = rt.enter();
        sim::start(opts.clone())
    };
    wait_until(
        &format!("{devices} nodes Ready"),
        Duration::from_secs(3600),
        || {
            bridge.assert_running();
            (ready_count.load(Ordering::Relaxed) >= devices).then_some(())
        },
    );
    let all_ready = start.elapsed();
    let rss_ready = rss_kib(bridge.pid());
    let writes1 = api_requests(&cp, port).unwrap_or(writes0);

    // Steady state: heartbeats and Lease renewals only.
    let steady = Duration::from_secs(30);
    std::thread::sleep(steady);
    let writes2 = api_requests(&cp, port).unwrap_or(writes1);

    // Status latency: pods bound straight to simulated nodes.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let running = running.clone();
        let api = pod_api.clone();
        rt.spawn(async move {
            let mut s = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = s.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                    continue;
                };
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    running
                        .lock()
                        .expect("running")
                        .entry(p.metadata.name.unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let _ = rt.block_on(sa.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
    ));
    let mut created: HashMap<String, Instant> = HashMap::new();
    let stride = (devices / pods.max(1)).max(1);
    for k in 0..pods {
        let name = format!("load-{k}");
        let node = sim::device_name(&opts, (k * stride) % devices);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "registry.example/app:1"}],
            },
        }))
        .expect("pod");
        created.insert(name.clone(), Instant::now());
        rt.block_on(pod_api.create(&PostParams::default(), &pod))
            .expect("create pod");
    }
    wait_until(
        &format!("{pods} pods Running"),
        Duration::from_secs(1200),
        || {
            bridge.assert_running();
            (running.lock().expect("running").len() >= pods).then_some(())
        },
    );
    let seen = running.lock().expect("running").clone();
    let published = simulation.stats.running_at.lock().expect("stats").clone();
    let mut status_lat = Vec::new();
    let mut e2e = Vec::new();
    for (name, at) in &seen {
        if let Some(p) = published.get(&PodKey::new("default", name)) {
            status_lat.push(at.saturating_duration_since(*p));
        }
        if let Some(c) = created.get(name) {
            e2e.push(at.saturating_duration_since(*c));
        }
    }
    drop(simulation);
    // The watches would retry forever once the control plane is gone.
    rt.shutdown_background();
    Row {
        devices,
        mem_per_device_kib: (rss_ready.saturating_sub(rss0)) as f64 / devices as f64,
        rss_mib: rss_ready as f64 / 1024.0,
        reg_writes_per_s: (writes1 - writes0) as f64 / all_ready.as_secs_f64(),
        steady_writes_per_s: (writes2 - writes1) as f64 / steady.as_secs_f64(),
        all_ready,
        pods,
        status: stats::Summary::new(status_lat),
        create_to_running: stats::Summary::new(e2e),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("KEDGE_BENCH_DEVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pods: usize = std::env::var("KEDGE_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let qps: f64 = std::env::var("KEDGE_BENCH_QPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000.0);
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("== {n} simulated devices");
        let row = run(n, pods.min(n), qps);
        print_table(std::slice::from_ref(&row), qps);
        rows.push(row);
    }
    println!();
    println!(
        "kedge bridge at scale (bridge: {}, --api-qps {qps}; real kube-apiserver + etcd, Mosquitto; nearest-rank percentiles, \"—\" where the samples cannot carry one)",
        support::kedge_bin().display()
    );
    print_table(&rows, qps);
}

fn print_table(rows: &[Row], _qps: f64) {
    println!(
        "| devices | bridge RSS | memory/device | API writes/s (registering) | API writes/s (steady) | time to all Ready | pods | status latency: samples, p50 / tail | create→Running: samples, p50 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let tail = r.status.tail().map_or_else(
            || "—".to_string(),
            |(q, d)| format!("p{q} {:.0} ms", d.as_secs_f64() * 1000.0),
        );
        println!(
            "| {} | {:.1} MiB | {:.1} KiB | {:.0} | {:.0} | {:.1} s | {} | {}: {} / {tail} | {}: {} |",
            r.devices,
            r.rss_mib,
            r.mem_per_device_kib,
            r.reg_writes_per_s,
            r.steady_writes_per_s,
            r.all_ready.as_secs_f64(),
            r.pods,
            r.status.n(),
            r.status.ms(50.0, 0),
            r.create_to_running.n(),
            r.create_to_running.ms(50.0, 0),
        );
    }
}
