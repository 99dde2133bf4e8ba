//! `kedge bridge` end to end: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler built from the upstream Go
//! modules), a real Mosquitto, the bridge and real agents running Wasm pods.
//! Everything is observed through the Kubernetes API, as a user would with
//! kubectl, and on the device side through the broker.

#[path = "support/sim.rs"]
mod sim;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::Discovery;
use serde_json::json;
use support::k8s::{BridgeOpts, BridgeProc, ControlPlane, ControlPlaneOpts};
use support::{
    Agent, AgentOpts, GuestTarget, Mosquitto, guest_wasm, kedge_ok, repo_root, sha256_file,
    wait_until,
};

const LONG: Duration = Duration::from_secs(180);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn client(rt: &tokio::runtime::Runtime, kubeconfig: &Path) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
        Client::try_from(cfg).expect("client")
    })
}

/// `kubectl apply --server-side -f FILE` for every document of a YAML file.
fn apply_file(rt: &tokio::runtime::Runtime, client: &Client, path: &Path) {
    let text = std::fs::read_to_string(path).expect("read manifest");
    rt.block_on(async {
        let discovery = Discovery::new(client.clone())
            .run()
            .await
            .expect("discovery");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value.clone()).expect("object");
            let tm = obj.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&tm).expect("gvk");
            let (ar, caps) = discovery.resolve_gvk(&gvk).expect("known kind");
            let name = obj.metadata.name.clone().expect("name");
            let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
                (kube::discovery::Scope::Namespaced, Some(ns)) => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                (kube::discovery::Scope::Namespaced, None) => {
                    Api::default_namespaced_with(client.clone(), &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                &name,
                &PatchParams::apply("kedge-tests").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", tm.kind));
        }
    });
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn condition<'a>(
    node: &'a Node,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn pod_ready(p: &Pod) -> bool {
    let Some(st) = p.status.as_ref() else {
        return false;
    };
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && st
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && st
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

struct World {
    rt: tokio::runtime::Runtime,
    cp: ControlPlane,
    mqtt: Mosquitto,
    admin: Client,
    bridge: BridgeProc,
    agents: BTreeMap<String, (Agent, std::path::PathBuf)>,
    _data: tempfile::TempDir,
    image: String,
}

impl World {
    fn start(nodes: &[&str]) -> World {
        let rt = runtime();
        let cp = ControlPlane::start(ControlPlaneOpts {
            controllers: true,
            node_monitor_grace: Duration::from_secs(12),
        });
        let mqtt = Mosquitto::start();
        let admin = client(&rt, &cp.kubeconfig);
        apply_file(
            &rt,
            &admin,
            &repo_root().join("edge-manifests/bridge-rbac.yaml"),
        );
        let data = tempfile::Builder::new()
            .prefix("kedge-bridge-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut agents = BTreeMap::new();
        for n in nodes {
            let dir = data.path().join(n);
            let agent = Agent::start(AgentOpts {
                node: n.to_string(),
                broker_url: Some(mqtt.url()),
                data_dir: dir.clone(),
                ..Default::default()
            });
            agents.insert(n.to_string(), (agent, dir));
        }
        let bridge = BridgeProc::start(BridgeOpts {
            broker_url: mqtt.url(),
            kubeconfig: cp.bridge_kubeconfig.clone(),
            certs: cp.certs.clone(),
            extra_args: vec![],
        });
        let wasm = guest_wasm(GuestTarget::P1);
        let image = format!("file://{}@sha256:{}", wasm.display(), sha256_file(&wasm));
        World {
            rt,
            cp,
            mqtt,
            admin,
            bridge,
            agents,
            _data: data,
            image,
        }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.admin.clone())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), "default")
    }

    fn node(&self, name: &str) -> Option<Node> {
        self.rt.block_on(self.nodes().get_opt(name)).ok().flatten()
    }

    fn list_pods(&self, selector: &str) -> Vec<Pod> {
        self.rt
            .block_on(self.pods().list(&ListParams::default().labels(selector)))
            .map(|l| l.items)
            .unwrap_or_default()
    }

    fn logs(&self, pod: &str, container: &str) -> Result<String, String> {
        self.rt
            .block_on(self.pods().logs(
                pod,
                &LogParams {
                    container: Some(container.to_string()),
                    ..Default::default()
                },
            ))
            .map_err(|e| e.to_string())
    }

    fn wait_node_ready(&mut self, name: &str) -> Node {
        wait_until(&format!("node {name} Ready"), LONG, || {
            self.bridge.assert_running();
            let n = self.node(name)?;
            (condition(&n, "Ready")?.status == "True").then_some(n)
        })
    }

    /// `wait_until`, but on a timeout it prints every pod and the agents' logs.
    fn wait_or_dump<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_until(what, LONG, f))) {
            Ok(v) => v,
            Err(e) => {
                for p in self.list_pods("") {
                    eprintln!(
                        "pod {} on {:?}: {}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        serde_json::to_string(&p.status).unwrap_or_default()
                    );
                }
                for n in self
                    .rt
                    .block_on(self.nodes().list(&ListParams::default()))
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    eprintln!(
                        "node {}: taints {} conditions {}",
                        n.metadata.name.clone().unwrap_or_default(),
                        serde_json::to_string(&n.spec.as_ref().and_then(|s| s.taints.clone()))
                            .unwrap_or_default(),
                        serde_json::to_string(
                            &n.status.as_ref().and_then(|s| s.conditions.clone())
                        )
                        .unwrap_or_default()
                    );
                }
                for l in self.bridge.log().lines().filter(|l| l.contains("kedge")) {
                    eprintln!("bridge: {l}");
                }
                for (name, (agent, _)) in &self.agents {
                    let log = agent.log();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("--- agent {name}");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
                std::panic::resume_unwind(e)
            }
        }
    }

    fn create<K>(&self, api: &Api<K>, value: serde_json::Value)
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let obj: K = serde_json::from_value(value).expect("object");
        self.rt
            .block_on(api.create(&PostParams::default(), &obj))
            .expect("create");
    }
}

fn wasm_pod_spec(image: &str, args: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "runtimeClassName": "kedge-wasm",
        "automountServiceAccountToken": false,
        "nodeSelector": {"kedge.io/edge": "true"},
        // The shared test machine's disk can be below the kubelet's 10 % free
        // threshold; the agent then reports DiskPressure (rightly) and the node
        // controller taints the node. The workloads here write nothing.
        "tolerations": [
            {"key": "kedge.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": [{"name": "main", "image": image, "args": args}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

#[test]
fn devices_become_nodes_and_run_cluster_workloads() {
    let mut w = World::start(&["edge-a", "edge-b"]);

    // --- Nodes: Ready, real arch label, taint, Connected, Lease, endpoint.
    for name in ["edge-a", "edge-b"] {
        let n = w.wait_node_ready(name);
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/arch").map(String::as_str),
            Some(go_arch())
        );
        assert_eq!(
            labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some(name)
        );
        assert_eq!(
            labels.get("kedge.io/edge").map(String::as_str),
            Some("true")
        );
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == "kedge.io/edge" && t.effect == "NoSchedule"),
            "{taints:?}"
        );
        let st = n.status.clone().expect("status");
        assert_eq!(
            st.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(w.bridge.kubelet_port as i32)
        );
        assert_eq!(
            st.node_info.as_ref().map(|i| i.architecture.as_str()),
            Some(go_arch())
        );
        assert!(
            st.capacity
                .as_ref()
                .is_some_and(|c| c.contains_key("cpu") && c.contains_key("pods"))
        );
        wait_until(&format!("{name} Connected True"), LONG, || {
            let n = w.node(name)?;
            (condition(&n, "kedge.io/Connected")?.status == "True").then_some(())
        });
        let leases: Api<Lease> = Api::namespaced(w.admin.clone(), "kube-node-lease");
        let lease = wait_until("node lease", LONG, || {
            w.rt.block_on(leases.get_opt(name)).ok().flatten()
        });
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some(name)
        );
    }

    // --- A plain node that is not a kedge device: the DaemonSet must skip it.
    w.create(
        &w.nodes(),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "plain-worker", "labels": {"kubernetes.io/hostname": "plain-worker"}}}),
    );

    // --- Deployment with nodeSelector and toleration: Running, Ready, pod IP.
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), "default");
    w.create(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ticker"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "ticker"}},
                "template": {
                    "metadata": {"labels": {"app": "ticker"}},
                    "spec": wasm_pod_spec(&w.image, &["ticker", "0", "300"], json!({})),
                },
            },
        }),
    );
    let ticker_pods = w.wait_or_dump("2 ticker pods Running and Ready", || {
        let pods = w.list_pods("app=ticker");
        (pods.len() == 2 && pods.iter().all(pod_ready)).then_some(pods)
    });
    for p in &ticker_pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(node.starts_with("edge-"), "scheduled onto {node}");
        let st = p.status.as_ref().expect("status");
        assert!(st.host_ip.is_some(), "hostIP");
        assert!(st.start_time.is_some(), "startTime");
    }

    // --- kubectl logs through the apiserver and the bridge's kubelet API.
    let first = ticker_pods[0].metadata.name.clone().expect("name");
    let log = wait_until("ticker log through the apiserver", LONG, || {
        w.logs(&first, "main").ok().filter(|l| l.contains("tick 2"))
    });
    assert!(log.starts_with("tick 1"), "{log}");
    eprintln!("log of {first} through the apiserver:\n{log}");
    let tail =
        w.rt.block_on(w.pods().logs(
            &first,
            &LogParams {
                container: Some("main".into()),
                tail_lines: Some(1),
                ..Default::default()
            },
        ))
        .expect("logs with tailLines");
    assert_eq!(tail.lines().count(), 1, "tailLines=1 gave {tail:?}");
    assert!(tail.starts_with("tick "), "{tail}");

    // --- kubectl logs -f: lines keep coming while the container runs.
    let followed: Vec<String> = w.rt.block_on(async {
        use futures_util::{AsyncBufReadExt, StreamExt};
        let stream = w
            .pods()
            .log_stream(
                &first,
                &LogParams {
                    container: Some("main".into()),
                    follow: true,
                    tail_lines: Some(1),
                    ..Default::default()
                },
            )
            .await
            .expect("follow logs");
        tokio::time::timeout(
            LONG,
            stream.lines().take(4).map(|l| l.expect("line")).collect(),
        )
        .await
        .expect("4 followed lines")
    });
    let numbers: Vec<u64> = followed
        .iter()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()))
        .collect();
    assert_eq!(numbers.len(), 4, "{followed:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{followed:?}");

    // --- The kubelet API: only clients with a certificate from the CA.
    let healthz = |cert: Option<(&Path, &Path)>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&w.cp.certs.ca);
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        cmd.arg(format!(
            "https://127.0.0.1:{}/healthz",
            w.bridge.kubelet_port
        ));
        cmd.output().expect("run curl")
    };
    let anonymous = healthz(None);
    assert!(
        !anonymous.status.success() || anonymous.stdout != b"ok",
        "the kubelet API answered a client without a certificate"
    );
    let apiserver = healthz(Some((
        &w.cp.certs.kubelet_client_cert,
        &w.cp.certs.kubelet_client_key,
    )));
    assert_eq!(String::from_utf8_lossy(&apiserver.stdout), "ok");

    // --- DaemonSet on every kedge node and nowhere else.
    let daemonsets: Api<DaemonSet> = Api::namespaced(w.admin.clone(), "default");
    w.create(
        &daemonsets,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent-ds"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent-ds"}},
                "template": {
                    "metadata": {"labels": {"app": "agent-ds"}},
                    "spec": wasm_pod_spec(&w.image, &["ticker", "0", "1000"], json!({})),
                },
            },
        }),
    );
    let ds_nodes = wait_until("DaemonSet pods Ready on both kedge nodes", LONG, || {
        let pods = w.list_pods("app=agent-ds");
        let nodes: BTreeSet<String> = pods
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        (nodes.len() == 2).then_some((nodes, pods.len()))
    });
    assert_eq!(
        ds_nodes.0,
        BTreeSet::from(["edge-a".to_string(), "edge-b".to_string()])
    );
    assert_eq!(ds_nodes.1, 2, "no DaemonSet pod on plain-worker");

    // --- A ConfigMap change reaches the device.
    let cms: Api<ConfigMap> = Api::namespaced(w.admin.clone(), "default");
    w.create(
        &cms,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "greeting"}, "data": {"greeting": "hello"}}),
    );
    w.create(
        &w.pods(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "env-reader"},
            "spec": wasm_pod_spec(&w.image, &["env"], json!({
                "nodeSelector": {"kubernetes.io/hostname": "edge-a"},
                "containers": [{"name": "main", "image": w.image, "args": ["env"],
                    "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "greeting"}}}]}],
            })),
        }),
    );
    wait_until("env-reader prints the ConfigMap value", LONG, || {
        w.logs("env-reader", "main")
            .ok()
            .filter(|l| l.contains("GREETING=hello"))
    });
    w.rt.block_on(cms.patch(
        "greeting",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
    ))
    .expect("patch configmap");
    wait_until("env-reader prints the new ConfigMap value", LONG, || {
        w.logs("env-reader", "main")
            .ok()
            .filter(|l| l.contains("GREETING=bonjour"))
    });

    // --- A missing mandatory ConfigMap: not sent, an Event and a condition naming it.
    w.create(
        &w.pods(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "needs-missing"},
            "spec": wasm_pod_spec(&w.image, &["env"], json!({
                "containers": [{"name": "main", "image": w.image, "args": ["env"],
                    "envFrom": [{"configMapRef": {"name": "does-not-exist"}}]}],
            })),
        }),
    );
    wait_until("needs-missing refused with a condition", LONG, || {
        let p =
            w.rt.block_on(w.pods().get_opt("needs-missing"))
                .ok()
                .flatten()?;
        let conds = p.status?.conditions?;
        conds
            .iter()
            .find(|c| c.type_ == "kedge.io/Accepted" && c.status == "False")
            .filter(|c| {
                c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("does-not-exist"))
            })
            .cloned()
    });

    // --- Deleting the Deployment removes the workloads and the Pod objects.
    w.rt.block_on(deployments.delete("ticker", &DeleteParams::foreground()))
        .expect("delete deployment");
    wait_until("ticker Pod objects gone", LONG, || {
        w.list_pods("app=ticker").is_empty().then_some(())
    });
    let url = w.mqtt.url();
    wait_until("ticker workloads gone from the devices", LONG, || {
        let out = kedge_ok(&["get", "pods", "-A", "--broker", &url]);
        (!out.contains("ticker-")).then_some(())
    });

    // --- A node deleted by hand comes back while its device is alive.
    let old_uid = w.node("edge-a").and_then(|n| n.metadata.uid).expect("uid");
    w.rt.block_on(w.nodes().delete("edge-a", &DeleteParams::default()))
        .expect("delete node");
    wait_until("edge-a recreated", LONG, || {
        let n = w.node("edge-a")?;
        (n.metadata.uid.as_deref() != Some(old_uid.as_str())).then_some(())
    });

    // --- A condition written by someone else survives the bridge's status writes.
    w.rt.block_on(w.nodes().patch_status(
        "edge-b",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{
            "type": "example.com/NetworkOK", "status": "True", "reason": "Probe",
            "message": "written by another controller",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]}})),
    ))
    .expect("add a foreign node condition");

    // --- Killing an agent: Connected False at once, Ready Unknown after the grace period.
    w.agents.get_mut("edge-b").expect("edge-b").0.kill9();
    wait_until("edge-b Connected False", Duration::from_secs(30), || {
        let n = w.node("edge-b")?;
        let c = condition(&n, "kedge.io/Connected")?;
        (c.status == "False").then_some(())
    });
    wait_until(
        "edge-b Ready Unknown (node lifecycle controller)",
        LONG,
        || {
            let n = w.node("edge-b")?;
            (condition(&n, "Ready")?.status == "Unknown").then_some(())
        },
    );

    // --- Restarting it: the node comes back and pod status is resynced.
    let dir = w.agents["edge-b"].1.clone();
    let agent = Agent::start(AgentOpts {
        node: "edge-b".into(),
        broker_url: Some(url.clone()),
        data_dir: dir.clone(),
        ..Default::default()
    });
    w.agents.insert("edge-b".into(), (agent, dir));
    w.wait_node_ready("edge-b");
    wait_until("edge-b Connected True again", LONG, || {
        let n = w.node("edge-b")?;
        (condition(&n, "kedge.io/Connected")?.status == "True").then_some(())
    });
    wait_until("the DaemonSet pod on edge-b Ready again", LONG, || {
        w.list_pods("app=agent-ds")
            .iter()
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("edge-b"))
            .filter(|p| pod_ready(p))
            .map(|_| ())
    });
    w.cp.assert_running();
    let edge_b = w.node("edge-b").expect("edge-b");
    assert_eq!(
        condition(&edge_b, "example.com/NetworkOK").map(|c| c.status.as_str()),
        Some("True"),
        "the bridge wiped another writer's node condition"
    );
    eprintln!(
        "edge-b conditions at the end: {:?}",
        edge_b
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>()
    );
}

/// Many devices from the simulator (tests/support/sim.rs): every one becomes
/// a Ready node, and pods bound to them get the simulator's Running status.
#[test]
fn simulated_devices_become_ready_nodes() {
    const DEVICES: usize = 40;
    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let mqtt = Mosquitto::start();
    let admin = client(&rt, &cp.kubeconfig);
    apply_file(
        &rt,
        &admin,
        &repo_root().join("edge-manifests/bridge-rbac.yaml"),
    );
    let mut bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec![],
    });
    let opts = sim::SimOpts {
        host: "127.0.0.1".into(),
        port: mqtt.port,
        prefix: "kedge/v1".into(),
        devices: DEVICES,
        name_prefix: "sim-".into(),
        connections: 3,
        heartbeat: Duration::from_secs(5),
    };
    let simulation = {
        let _g = rt.enter();
        sim::start(opts.clone())
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_until("every simulated device a Ready node", LONG, || {
        bridge.assert_running();
        let list = rt
            .block_on(nodes.list(&ListParams::default().labels("kedge.io/edge=true")))
            .ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| condition(n, "Ready").is_some_and(|c| c.status == "True"))
            .count();
        (ready == DEVICES).then_some(())
    });
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    let _ = rt.block_on(sa.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
    ));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for i in 0..5 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("load-{i}")},
            "spec": {
                "nodeName": sim::device_name(&opts, i * 7),
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "registry.example/app:1"}],
            },
        }))
        .expect("pod");
        rt.block_on(pods.create(&PostParams::default(), &pod))
            .expect("create");
    }
    wait_until("5 pods Running with the simulator's pod IP", LONG, || {
        let list = rt.block_on(pods.list(&ListParams::default())).ok()?;
        let ok = list
            .items
            .iter()
            .filter(|p| {
                pod_ready(p)
                    && p.status
                        .as_ref()
                        .and_then(|s| s.pod_ip.as_deref())
                        .is_some_and(|ip| ip.starts_with("10."))
            })
            .count();
        (ok == 5).then_some(())
    });
    assert!(
        simulation
            .stats
            .specs
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
}

/// Two bridge replicas split 30 simulated devices through shard Leases and
/// read pod reports through a shared subscription; when one dies, the other
/// takes its shards over and keeps every node's Lease renewed.
#[test]
fn two_bridges_share_the_devices_through_leases() {
    const DEVICES: usize = 30;
    const SHARDS: usize = 8;
    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let mqtt = Mosquitto::start();
    let admin = client(&rt, &cp.kubeconfig);
    apply_file(
        &rt,
        &admin,
        &repo_root().join("edge-manifests/bridge-rbac.yaml"),
    );
    let replica = |id: &str| {
        BridgeProc::start(BridgeOpts {
            broker_url: mqtt.url(),
            kubeconfig: cp.bridge_kubeconfig.clone(),
            certs: cp.certs.clone(),
            extra_args: vec![
                format!("--id={id}"),
                format!("--shards={SHARDS}"),
                "--shared-status".into(),
            ],
        })
    };
    let mut a = replica("a");
    let mut b = replica("b");
    let opts = sim::SimOpts {
        host: "127.0.0.1".into(),
        port: mqtt.port,
        prefix: "kedge/v1".into(),
        devices: DEVICES,
        name_prefix: "sim-".into(),
        connections: 2,
        heartbeat: Duration::from_secs(3),
    };
    let _simulation = {
        let _g = rt.enter();
        sim::start(opts.clone())
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    let ready_nodes = || {
        rt.block_on(nodes.list(&ListParams::default().labels("kedge.io/edge=true")))
            .map(|l| {
                l.items
                    .iter()
                    .filter(|n| condition(n, "Ready").is_some_and(|c| c.status == "True"))
                    .count()
            })
            .unwrap_or(0)
    };
    let shard_leases: Api<Lease> = Api::namespaced(admin.clone(), "kedge-system");
    let holders = || -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        if let Ok(l) = rt.block_on(
            shard_leases.list(&ListParams::default().labels("kedge.io/bridge-lease=shard")),
        ) {
            for lease in l.items {
                let h = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                *m.entry(h).or_insert(0) += 1;
            }
        }
        m
    };
    wait_until("both replicas hold half of the shards", LONG, || {
        a.assert_running();
        b.assert_running();
        let h = holders();
        (h.get("a") == Some(&(SHARDS / 2)) && h.get("b") == Some(&(SHARDS / 2))).then_some(h)
    });
    wait_until("every simulated device a Ready node", LONG, || {
        (ready_nodes() == DEVICES).then_some(())
    });

    // Pod reports through the shared subscription reach the cluster.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    let _ = rt.block_on(sa.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
    ));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for i in 0..6 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("load-{i}")},
            "spec": {
                "nodeName": sim::device_name(&opts, i * 5),
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "registry.example/app:1"}],
            },
        }))
        .expect("pod");
        rt.block_on(pods.create(&PostParams::default(), &pod))
            .expect("create");
    }
    wait_until("6 pods Running", LONG, || {
        let list = rt.block_on(pods.list(&ListParams::default())).ok()?;
        (list.items.iter().filter(|p| pod_ready(p)).count() == 6).then_some(())
    });

    // Replica a dies: b takes every shard and renews every node's Lease.
    a.kill();
    let killed_ms = kedge::model::now_ms();
    wait_until("replica b holds every shard", LONG, || {
        b.assert_running();
        let h = holders();
        (h.get("b") == Some(&SHARDS) && h.len() == 1).then_some(())
    });
    let node_leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    wait_until("every node Lease renewed after the takeover", LONG, || {
        let l = rt.block_on(node_leases.list(&ListParams::default())).ok()?;
        let renewed = l
            .items
            .iter()
            .filter(|lease| {
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .is_some_and(|t| t.0.as_millisecond() as u64 > killed_ms)
            })
            .count();
        (renewed == DEVICES).then_some(())
    });
    assert_eq!(ready_nodes(), DEVICES);
}
