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
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
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

/// DiskPressure threshold of the test agents (`node.disk_available_min_percent`):
/// the shared test machine's disk can be below the kubelet's 10 % free, and
/// a node reporting DiskPressure is tainted `node.kubernetes.io/disk-pressure`,
/// which would keep the test pods off it. 1 %: the condition is still
/// computed, the pods need no toleration a user's pods would not have.
const TEST_DISK_MIN_PERCENT: (&str, &str) = ("KEDGE_NODE_DISK_AVAILABLE_MIN_PERCENT", "1");

fn test_agent_env() -> Vec<(String, String)> {
    vec![(
        TEST_DISK_MIN_PERCENT.0.to_string(),
        TEST_DISK_MIN_PERCENT.1.to_string(),
    )]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn client(rt: &tokio::runtime::Runtime, kubeconfig: &Path) -> Client {
    client_with(rt, kubeconfig, true)
}

/// A client that takes the apiserver's first answer, as kubectl does. kube's
/// default client retries 429, 503 and 504 up to 15 times with exponential
/// back-off (minutes in all): a test of what the apiserver answers, such as
/// ServiceUnavailable for the logs of a disconnected device, needs this one.
fn client_with(rt: &tokio::runtime::Runtime, kubeconfig: &Path, retry: bool) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
        let mut cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
        cfg.default_retry = retry;
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
    /// The admin without kube's retries: the apiserver's answers as kubectl
    /// sees them ([`client_with`]).
    kubectl: Client,
    bridge: BridgeProc,
    agents: BTreeMap<String, (Agent, std::path::PathBuf)>,
    _data: tempfile::TempDir,
    image: String,
}

impl World {
    fn start(nodes: &[&str]) -> World {
        World::start_with(nodes, vec![], vec![])
    }

    /// [`World::start`] with extra arguments for the bridge and extra
    /// environment for the agents.
    fn start_with(
        nodes: &[&str],
        bridge_args: Vec<String>,
        agent_env: Vec<(String, String)>,
    ) -> World {
        World::start_on(Mosquitto::start(), nodes, bridge_args, agent_env)
    }

    /// [`World::start_with`] on a broker the test started.
    fn start_on(
        mqtt: Mosquitto,
        nodes: &[&str],
        bridge_args: Vec<String>,
        agent_env: Vec<(String, String)>,
    ) -> World {
        let rt = runtime();
        let cp = ControlPlane::start(ControlPlaneOpts {
            controllers: true,
            node_monitor_grace: Duration::from_secs(12),
        });
        let admin = client(&rt, &cp.kubeconfig);
        let kubectl = client_with(&rt, &cp.kubeconfig, false);
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
        let mut env = test_agent_env();
        env.extend(agent_env);
        for n in nodes {
            let dir = data.path().join(n);
            let agent = Agent::start(AgentOpts {
                node: n.to_string(),
                broker_url: Some(mqtt.url()),
                data_dir: dir.clone(),
                env: env.clone(),
                ..Default::default()
            });
            agents.insert(n.to_string(), (agent, dir));
        }
        let bridge = BridgeProc::start(BridgeOpts {
            broker_url: mqtt.url(),
            kubeconfig: cp.bridge_kubeconfig.clone(),
            certs: cp.certs.clone(),
            extra_args: bridge_args,
        });
        let wasm = guest_wasm(GuestTarget::P1);
        let image = format!("file://{}@sha256:{}", wasm.display(), sha256_file(&wasm));
        World {
            rt,
            cp,
            mqtt,
            admin,
            kubectl,
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

    /// The Events about one object of the default namespace, as `kubectl
    /// get events --field-selector involvedObject.name=NAME` lists them.
    fn events_of(&self, name: &str) -> Vec<k8s_openapi::api::core::v1::Event> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.admin.clone(), "default");
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        self.rt
            .block_on(events.list(&params))
            .map(|l| l.items)
            .unwrap_or_default()
    }

    fn logs(&self, pod: &str, container: &str) -> Result<String, String> {
        let pods: Api<Pod> = Api::namespaced(self.kubectl.clone(), "default");
        self.rt
            .block_on(pods.logs(
                pod,
                &LogParams {
                    container: Some(container.to_string()),
                    ..Default::default()
                },
            ))
            .map_err(|e| e.to_string())
    }

    fn wait_node_ready(&self, name: &str) -> Node {
        self.bridge.wait(&format!("node {name} Ready"), LONG, || {
            let n = self.node(name)?;
            (condition(&n, "Ready")?.status == "True").then_some(n)
        })
    }

    /// `wait_until` (failing at once if the bridge died), but on a timeout
    /// it prints every pod and the agents' logs.
    fn wait_or_dump<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.bridge.wait(what, LONG, f)
        })) {
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
        // Only the kedge taint: the test agents' DiskPressure threshold
        // (`TEST_DISK_MIN_PERCENT`) keeps the disk-pressure taint off.
        "tolerations": [
            {"key": "kedge.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
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
    let mut ports = BTreeSet::new();
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
        // Each Node's kubelet port is its own, from the range after the
        // shared port (`--kubelet-node-ports auto`).
        let port = st
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .expect("daemonEndpoints");
        let shared = i32::from(w.bridge.kubelet_port);
        assert!(
            port > shared && port <= shared + 10_000,
            "{port} after {shared}"
        );
        assert!(
            ports.insert(port),
            "{name}: port {port} is another Node's too"
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
        w.bridge.wait(&format!("{name} Connected True"), LONG, || {
            let n = w.node(name)?;
            (condition(&n, "kedge.io/Connected")?.status == "True").then_some(())
        });
        let leases: Api<Lease> = Api::namespaced(w.admin.clone(), "kube-node-lease");
        let lease = w.bridge.wait("node lease", LONG, || {
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
    // A crash-looping pod: its BackOff events become one Event with a count
    // (checked further down, once two back-offs have passed).
    w.create(
        &w.pods(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "crasher"},
            "spec": wasm_pod_spec(&w.image, &["exit", "3"], json!({
                "nodeSelector": {"kubernetes.io/hostname": "edge-a"},
            })),
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
    let log = w.bridge.wait("ticker log through the apiserver", LONG, || {
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

    // --- The device's events reach `kubectl get events`, as a kubelet's do.
    let first_uid = ticker_pods[0].metadata.uid.clone().expect("uid");
    let first_node = ticker_pods[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("node");
    let seen = w.bridge.wait(
        "Pulled, Created and Started events of a ticker pod",
        LONG,
        || {
            let events = w.events_of(&first);
            let reasons: BTreeSet<String> = events
                .iter()
                .filter(|e| e.involved_object.uid.as_deref() == Some(first_uid.as_str()))
                .filter_map(|e| e.reason.clone())
                .collect();
            ["Pulled", "Created", "Started"]
                .iter()
                .all(|r| reasons.contains(*r))
                .then_some(events)
        },
    );
    let started = seen
        .iter()
        .find(|e| e.reason.as_deref() == Some("Started"))
        .expect("Started");
    assert_eq!(started.message.as_deref(), Some("Started container main"));
    assert_eq!(started.type_.as_deref(), Some("Normal"));
    assert_eq!(
        started.involved_object.field_path.as_deref(),
        Some("spec.containers{main}")
    );
    assert_eq!(
        started.source.as_ref().and_then(|s| s.host.as_deref()),
        Some(first_node.as_str())
    );

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
    let ds_nodes = w
        .bridge
        .wait("DaemonSet pods Ready on both kedge nodes", LONG, || {
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
    w.bridge
        .wait("env-reader prints the ConfigMap value", LONG, || {
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
    w.bridge
        .wait("env-reader prints the new ConfigMap value", LONG, || {
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
    w.bridge
        .wait("needs-missing refused with a condition", LONG, || {
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

    // --- A crash loop: Warning BackOff, repeats counted on one Event.
    let backoff = w
        .bridge
        .wait("one BackOff Event of crasher with count 2", LONG, || {
            w.events_of("crasher")
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("BackOff") && e.count.unwrap_or(0) >= 2)
        });
    assert_eq!(backoff.type_.as_deref(), Some("Warning"));
    assert!(
        backoff
            .message
            .as_deref()
            .is_some_and(|m| m
                .starts_with("Back-off restarting failed container main in pod crasher_default(")),
        "{backoff:?}"
    );
    assert_eq!(
        w.events_of("crasher")
            .iter()
            .filter(|e| e.reason.as_deref() == Some("BackOff"))
            .count(),
        1,
        "repeats of one BackOff are one Event"
    );

    // --- Deleting the Deployment removes the workloads and the Pod objects.
    w.rt.block_on(deployments.delete("ticker", &DeleteParams::foreground()))
        .expect("delete deployment");
    w.bridge.wait("ticker Pod objects gone", LONG, || {
        w.list_pods("app=ticker").is_empty().then_some(())
    });
    let url = w.mqtt.url();
    w.bridge
        .wait("ticker workloads gone from the devices", LONG, || {
            let out = kedge_ok(&["get", "pods", "-A", "--broker", &url]);
            (!out.contains("ticker-")).then_some(())
        });
    let killing = w.bridge.wait("a Killing event of a ticker pod", LONG, || {
        w.events_of(&first)
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Killing"))
    });
    assert_eq!(killing.message.as_deref(), Some("Stopping container main"));

    // --- A node deleted by hand comes back while its device is alive.
    let old_uid = w.node("edge-a").and_then(|n| n.metadata.uid).expect("uid");
    w.rt.block_on(w.nodes().delete("edge-a", &DeleteParams::default()))
        .expect("delete node");
    w.bridge.wait("edge-a recreated", LONG, || {
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
    w.bridge
        .wait("edge-b Connected False", Duration::from_secs(30), || {
            let n = w.node("edge-b")?;
            let c = condition(&n, "kedge.io/Connected")?;
            (c.status == "False").then_some(())
        });
    // Logs of a pod on the disconnected device: the kubelet API says so at
    // once (503 "node edge-b is not connected", as the apiserver's kubelet
    // client sees it), and the apiserver answers ServiceUnavailable at once,
    // instead of waiting for an answer that cannot come.
    let on_b = w
        .list_pods("app=agent-ds")
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("edge-b"))
        .expect("the DaemonSet pod on edge-b");
    let container = on_b.spec.as_ref().expect("spec").containers[0].name.clone();
    let name = on_b.metadata.name.clone().expect("name");
    let apiserver_client = (
        w.cp.certs.kubelet_client_cert.clone(),
        w.cp.certs.kubelet_client_key.clone(),
    );
    let path = format!("/containerLogs/default/{name}/{container}");
    w.bridge.wait(
        "the kubelet API: logs on edge-b refused as not connected",
        Duration::from_secs(30),
        || {
            let (code, body) = kubelet_get(&w, &apiserver_client, &path);
            (code == 503 && body.contains("node edge-b is not connected")).then_some(())
        },
    );
    let through_apiserver = w.logs(&name, &container).expect_err("edge-b is offline");
    assert!(
        through_apiserver.contains("ServiceUnavailable"),
        "{through_apiserver}"
    );
    w.bridge.wait(
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
        env: test_agent_env(),
        ..Default::default()
    });
    w.agents.insert("edge-b".into(), (agent, dir));
    w.wait_node_ready("edge-b");
    w.bridge.wait("edge-b Connected True again", LONG, || {
        let n = w.node("edge-b")?;
        (condition(&n, "kedge.io/Connected")?.status == "True").then_some(())
    });
    w.bridge
        .wait("the DaemonSet pod on edge-b Ready again", LONG, || {
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
    let bridge = BridgeProc::start(BridgeOpts {
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
        fleet: None,
    };
    let simulation = {
        let _g = rt.enter();
        sim::start(opts.clone())
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    bridge.wait("every simulated device a Ready node", LONG, || {
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
    bridge.wait("5 pods Running with the simulator's pod IP", LONG, || {
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
    let b = replica("b");
    let opts = sim::SimOpts {
        host: "127.0.0.1".into(),
        port: mqtt.port,
        prefix: "kedge/v1".into(),
        devices: DEVICES,
        name_prefix: "sim-".into(),
        connections: 2,
        heartbeat: Duration::from_secs(3),
        fleet: None,
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

/// A replica stopped with SIGTERM (as Kubernetes stops a pod) gives its
/// shard Leases back and deletes its membership Lease before it exits 0, so
/// the other replica takes the shards over in its next round instead of
/// after the Leases expire.
#[test]
fn a_bridge_stopped_with_sigterm_releases_its_shard_leases_and_exits_0() {
    const SHARDS: usize = 4;
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
            extra_args: vec![format!("--id={id}"), format!("--shards={SHARDS}")],
        })
    };
    let mut a = replica("a");
    let b = replica("b");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kedge-system");
    let holders = || -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        if let Ok(l) =
            rt.block_on(leases.list(&ListParams::default().labels("kedge.io/bridge-lease=shard")))
        {
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
    b.wait("both replicas hold half of the shards", LONG, || {
        a.assert_running();
        let h = holders();
        (h.get("a") == Some(&(SHARDS / 2)) && h.get("b") == Some(&(SHARDS / 2))).then_some(h)
    });

    let status = a.terminate(Duration::from_secs(60));
    let log = a.log();
    assert!(status.success(), "bridge a exited with {status}:\n{log}");
    // Released before the exit, not left to expire: no shard Lease names a.
    let h = holders();
    assert!(!h.contains_key("a"), "shard Leases after a exited: {h:?}");
    assert!(
        rt.block_on(leases.get_opt("kedge-bridge-replica-a"))
            .expect("read the replica lease")
            .is_none(),
        "a's membership Lease is deleted"
    );
    for line in [
        "shard leases released",
        "Kubernetes API writes flushed",
        "kedge bridge stopped",
    ] {
        assert!(log.contains(line), "{line:?} missing from a's log:\n{log}");
    }
    b.wait("replica b holds every shard", LONG, || {
        let h = holders();
        (h.get("b") == Some(&SHARDS) && h.len() == 1).then_some(())
    });
}

// ---------------------------------------------------------------- fleets

/// The labels of simulated device i: devices 0-2 are gateways (Nodes under
/// `--node-selector=kedge.io/role=gateway`), every fifth device is at site
/// b44, the others at b43; devices 5-7 are canaries.
fn fleet_labels(i: usize) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(
        "site".to_string(),
        if i % 5 == 4 { "b44" } else { "b43" }.to_string(),
    );
    if i < 3 {
        l.insert("kedge.io/role".to_string(), "gateway".to_string());
    }
    if (5..8).contains(&i) {
        l.insert("canary".to_string(), "true".to_string());
    }
    l
}

/// A pod whose image says "broken" fails on every device.
fn fleet_fails(_: usize, spec: &kedge::model::PodSpec) -> bool {
    spec.containers.iter().any(|c| c.image.contains("broken"))
}

/// The bridge's `/metrics`, read as the apiserver reads its kubelet API:
/// over TLS with the apiserver's kubelet client certificate.
fn bridge_metrics(
    rt: &tokio::runtime::Runtime,
    certs: &support::k8s::ClusterCerts,
    port: u16,
) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&certs.ca).expect("ca") {
        roots.add(ca.expect("ca")).expect("root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&certs.kubelet_client_cert)
            .expect("client cert")
            .collect::<Result<_, _>>()
            .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(&certs.kubelet_client_key).expect("client key");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("http client");
    rt.block_on(async {
        http.get(format!("https://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    })
}

/// Every fleet record the broker hands out for one fleet deployment, in order.
fn collect_records(
    rt: &tokio::runtime::Runtime,
    port: u16,
    topic: String,
) -> std::sync::Arc<std::sync::Mutex<Vec<kedge::model::FleetDeployment>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let _g = rt.enter();
    tokio::spawn(async move {
        let mut mo = rumqttc::MqttOptions::new(
            format!("kedge-test-records-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        mo.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut ev) = rumqttc::AsyncClient::new(mo, 1000);
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                    let _ = client.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    if let Ok((_, r)) =
                        kedge::wire::decode_as::<kedge::model::FleetDeployment>(&p.payload)
                    {
                        out.lock().expect("records").push(r);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    seen
}

fn fleet_spec(image: &str) -> serde_json::Value {
    json!({
        "selector": "site=b43",
        "template": {
            "metadata": {"labels": {"app": "sensor"}},
            "spec": {"containers": [{"name": "main", "image": image}]},
        },
        "rollout": {
            "batches": [
                {"selector": "canary=true", "limit": "100%"},
                {"limit": "50%"},
                {"limit": "100%"},
            ],
            "successThreshold": 100,
            "minReadySeconds": 2,
        },
    })
}

/// A FleetDeployment against 30 simulated devices, only 3 of which are
/// Nodes (`--node-selector`): it reaches the 24 devices at site b43 and no
/// other, in batches (canaries, half, all); its status, the server-side
/// table `kubectl get fleetdeployments` prints and the bridge's `/metrics`
/// show the counts; a template that fails on the canaries rolls back by
/// itself; the status writes do not grow with the devices.
#[test]
fn fleet_deployments_roll_out_in_batches_and_roll_back_a_failing_canary() {
    use kedge::bridge::fleets::crd::FleetDeploymentResource;
    use kedge::model::RolloutPhase;

    const DEVICES: usize = 30;
    const AT_B43: i32 = 24;
    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let mqtt = Mosquitto::start();
    let admin = client(&rt, &cp.kubeconfig);
    for f in ["bridge-rbac.yaml", "fleetdeployment-crd.yaml"] {
        apply_file(&rt, &admin, &repo_root().join("edge-manifests").join(f));
    }
    let fleets: Api<FleetDeploymentResource> = Api::namespaced(admin.clone(), "default");
    wait_until("the FleetDeployment resource is served", LONG, || {
        rt.block_on(fleets.list(&ListParams::default())).ok()
    });
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec!["--node-selector=kedge.io/role=gateway".into()],
    });
    let kubelet_port = bridge.kubelet_port;
    let opts = sim::SimOpts {
        host: "127.0.0.1".into(),
        port: mqtt.port,
        prefix: "kedge/v1".into(),
        devices: DEVICES,
        name_prefix: "sim-".into(),
        connections: 2,
        heartbeat: Duration::from_secs(5),
        fleet: Some(sim::SimFleet {
            labels: fleet_labels,
            fails: fleet_fails,
        }),
    };
    let simulation = {
        let _g = rt.enter();
        sim::start(opts.clone())
    };
    let records = collect_records(&rt, mqtt.port, "kedge/v1/_fleet/default/sensors".into());
    let nodes: Api<Node> = Api::all(admin.clone());
    let edge_nodes = || {
        rt.block_on(nodes.list(&ListParams::default().labels("kedge.io/edge=true")))
            .map(|l| l.items)
            .unwrap_or_default()
    };
    // Only the gateways are Nodes, with their device labels mirrored.
    bridge.wait("the 3 gateways are Nodes with their labels", LONG, || {
        let n = edge_nodes();
        (n.len() == 3
            && n.iter().all(|n| {
                let l = n.metadata.labels.clone().unwrap_or_default();
                l.get("kedge.io/role").map(String::as_str) == Some("gateway")
                    && l.get("site").map(String::as_str) == Some("b43")
            }))
        .then_some(())
    });

    let create: FleetDeploymentResource = serde_json::from_value(json!({
        "apiVersion": "kedge.io/v1alpha1",
        "kind": "FleetDeployment",
        "metadata": {"name": "sensors", "namespace": "default"},
        "spec": fleet_spec("registry.example/sensor:1"),
    }))
    .expect("fleet deployment");
    rt.block_on(fleets.create(&PostParams::default(), &create))
        .expect("create");
    let status = |want: &dyn Fn(&kedge::bridge::fleets::crd::FleetDeploymentStatus) -> bool| {
        let mut last = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bridge.wait("the fleet deployment's status", LONG, || {
                let f = rt.block_on(fleets.get("sensors")).ok()?;
                let s = f.status.clone()?;
                last = Some(s.clone());
                want(&s).then_some(s)
            })
        }));
        r.unwrap_or_else(|e| {
            eprintln!("last status: {last:?}");
            for l in bridge.log().lines().rev().take(40) {
                eprintln!("bridge: {l}");
            }
            std::panic::resume_unwind(e)
        })
    };
    let s = status(&|s| {
        s.revision == Some(1) && s.phase.as_deref() == Some("Complete") && s.ready == AT_B43
    });
    assert_eq!(
        (s.targeted, s.up_to_date, s.running, s.failed, s.offline),
        (AT_B43, AT_B43, AT_B43, 0, 0)
    );
    // Per revision: every device on revision 1.
    assert_eq!(
        s.revisions,
        vec![kedge::bridge::fleets::crd::RevisionStatus {
            revision: Some(1),
            devices: AT_B43,
            running: AT_B43,
            ready: AT_B43,
            ..Default::default()
        }]
    );
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    );
    // Revision 1 went out in batches: the canaries alone first.
    bridge.wait("the broker hands out the completed record", LONG, || {
        records
            .lock()
            .expect("records")
            .iter()
            .any(|r| r.revision == 1 && r.rollout.state.phase == RolloutPhase::Complete)
            .then_some(())
    });
    {
        let seen = records.lock().expect("records").clone();
        let first = seen
            .iter()
            .find(|r| !r.cohorts.is_empty())
            .expect("a batch");
        assert_eq!(first.cohorts.len(), 1);
        assert_eq!(first.cohorts[0].selector, "canary=true");
        assert!(seen.iter().any(|r| r.cohorts.len() == 2));
        assert_eq!(
            seen.last().map(|r| r.rollout.state.phase),
            Some(RolloutPhase::Complete)
        );
    }
    // Reports came from every device at b43 and from no other.
    let reported = simulation
        .stats
        .fleet_reports
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(reported >= AT_B43 as u64, "{reported}");

    // `kubectl get fleetdeployments`: the server-side table.
    let mut req =
        kube::core::Request::new("/apis/kedge.io/v1alpha1/namespaces/default/fleetdeployments")
            .list(&ListParams::default())
            .expect("request");
    req.headers_mut().insert(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io"
            .parse()
            .expect("header"),
    );
    let table: serde_json::Value =
        serde_json::from_str(&rt.block_on(admin.request_text(req)).expect("table")).expect("json");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Selector",
            "Revision",
            "Targeted",
            "Up-to-date",
            "Ready",
            "Failed",
            "Phase",
            "Age"
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "sensors");
    assert_eq!(cells[1], "site=b43");
    assert_eq!(cells[2], 1);
    assert_eq!(cells[3], AT_B43);
    assert_eq!(cells[4], AT_B43);
    assert_eq!(cells[5], AT_B43);
    assert_eq!(cells[6], 0);
    assert_eq!(cells[7], "Complete");

    // `/metrics` of the kubelet API, through the apiserver's node proxy.
    let metrics = bridge_metrics(&rt, &cp.certs, kubelet_port);
    for line in [
        format!(
            "kedge_fleet_devices{{namespace=\"default\",fleet=\"sensors\",state=\"targeted\"}} {AT_B43}"
        ),
        format!(
            "kedge_fleet_devices{{namespace=\"default\",fleet=\"sensors\",state=\"ready\"}} {AT_B43}"
        ),
        "kedge_fleet_devices{namespace=\"default\",fleet=\"sensors\",state=\"failed\"} 0"
            .to_string(),
        "kedge_fleet_revision{namespace=\"default\",fleet=\"sensors\"} 1".to_string(),
        format!(
            "kedge_fleet_revision_devices{{namespace=\"default\",fleet=\"sensors\",revision=\"1\",state=\"ready\"}} {AT_B43}"
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }

    // A new template rolls out in batches as revision 2.
    let patch = |image: &str| {
        rt.block_on(fleets.patch(
            "sensors",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}})),
        ))
        .expect("patch");
    };
    let before = records.lock().expect("records").len();
    patch("registry.example/sensor:2");
    status(&|s| {
        s.revision == Some(2) && s.phase.as_deref() == Some("Complete") && s.up_to_date == AT_B43
    });
    let completed = |revision: u64| {
        bridge.wait("the broker hands out the completed record", LONG, || {
            records
                .lock()
                .expect("records")
                .iter()
                .any(|r| r.revision == revision && r.rollout.state.phase == RolloutPhase::Complete)
                .then_some(())
        })
    };
    completed(2);
    {
        let seen = records.lock().expect("records")[before..].to_vec();
        let rev2: Vec<_> = seen.iter().filter(|r| r.revision == 2).collect();
        // One cohort more per batch (canaries, half, all), then the
        // completed record names everyone.
        let batches: Vec<usize> = rev2
            .iter()
            .filter(|r| r.rollout.state.phase != RolloutPhase::Complete)
            .map(|r| r.cohorts.len())
            .collect();
        assert!(
            batches.windows(2).all(|w| w[0] <= w[1])
                && batches.contains(&1)
                && batches.contains(&3),
            "cohorts per record: {batches:?}"
        );
        let last = rev2.last().expect("a record");
        assert_eq!(last.rollout.state.phase, RolloutPhase::Complete);
        assert_eq!(last.cohorts, vec![kedge::model::Cohort::everyone()]);
        assert_eq!(rev2[0].stable.as_ref().map(|s| s.revision), Some(1));
    }

    // A template that fails on the canaries: revision 3 stops there and
    // revision 4 brings revision 2's spec back, by itself.
    let before = records.lock().expect("records").len();
    patch("registry.example/sensor:broken");
    let s = status(&|s| s.phase.as_deref() == Some("RolledBack") && s.revision == Some(4));
    bridge.wait("the broker hands out revision 4", LONG, || {
        records
            .lock()
            .expect("records")
            .iter()
            .any(|r| r.revision == 4)
            .then_some(())
    });
    let seen = records.lock().expect("records")[before..].to_vec();
    let rev3: Vec<_> = seen.iter().filter(|r| r.revision == 3).collect();
    assert!(
        rev3.iter()
            .all(|r| r.cohorts.len() <= 1 && r.cohorts.iter().all(|c| c.selector == "canary=true")),
        "only the canaries got revision 3: {rev3:?}"
    );
    let rev4 = seen.iter().find(|r| r.revision == 4).expect("revision 4");
    let rev2_digest = rev4.stable.as_ref().map(|s| s.spec_digest.clone());
    assert_eq!(Some(rev4.spec_digest.clone()), rev2_digest);
    assert!(
        s.message.as_deref().unwrap_or("").contains("rolled back"),
        "{s:?}"
    );
    let s = status(&|s| {
        s.revision == Some(4) && s.ready == AT_B43 && s.failed == 0 && s.revisions.len() == 1
    });
    // Everyone on revision 4 now (revision 3's failures went with the
    // canaries' next reports).
    assert_eq!(
        (s.revisions[0].revision, s.revisions[0].devices),
        (Some(4), AT_B43),
        "{:?}",
        s.revisions
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    bridge.wait(
        "a RolledBack Warning Event on the fleet deployment",
        LONG,
        || {
            let l = rt.block_on(events.list(&ListParams::default())).ok()?;
            l.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("RolledBack")
                        && e.type_.as_deref() == Some("Warning")
                        && e.involved_object.kind.as_deref() == Some("FleetDeployment")
                })
                .then_some(())
        },
    );

    // Status writes: a few per rollout step, not per device.
    let metrics = bridge_metrics(&rt, &cp.certs, kubelet_port);
    let writes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kedge_bridge_fleet_status_writes_total "))
        .and_then(|v| v.parse().ok())
        .expect("the status write counter");
    eprintln!("fleet status writes for 4 revisions on {DEVICES} devices: {writes}");
    assert!(writes < 60, "{writes} status writes");
    // Still 3 Nodes: the other 27 devices are fleet members only.
    assert_eq!(edge_nodes().len(), 3);
}

/// Agent flags that make back-off and heartbeats test-sized.
fn fast_agent_args(labels: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--set",
        "backoff.initial_ms=300",
        "--set",
        "backoff.max_ms=600",
        "--set",
        "node.heartbeat_ms=1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // See `TEST_DISK_MIN_PERCENT`.
    args.extend([
        "--set".to_string(),
        format!(
            "node.disk_available_min_percent={}",
            TEST_DISK_MIN_PERCENT.1
        ),
    ]);
    if !labels.is_empty() {
        args.extend(["--labels".to_string(), labels.to_string()]);
    }
    args
}

/// The status of `pod` on `node` as the device reports it (`kedge get pods`).
fn device_pod(broker: &str, node: &str, pod: &str) -> Option<serde_json::Value> {
    let out = kedge_ok(&[
        "get", "pods", "--node", node, "-A", "-o", "json", "--broker", broker,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .map(|i| i["status"].clone())
        .find(|s| s["name"] == pod)
}

/// Real agents with labels and Wasm pods: a FleetDeployment reaches every
/// matching agent and no other; an update goes canary first; a revision
/// that cannot start on the canary rolls back by itself and the other
/// device never gets it.
#[test]
fn a_fleet_deployment_runs_on_every_matching_agent_and_rolls_back_a_failing_canary() {
    use kedge::bridge::fleets::crd::{FleetDeploymentResource, FleetDeploymentStatus};
    use kedge::model::RolloutPhase;

    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: false,
        ..Default::default()
    });
    let mqtt = Mosquitto::start();
    let admin = client(&rt, &cp.kubeconfig);
    for f in ["bridge-rbac.yaml", "fleetdeployment-crd.yaml"] {
        apply_file(&rt, &admin, &repo_root().join("edge-manifests").join(f));
    }
    let fleets: Api<FleetDeploymentResource> = Api::namespaced(admin.clone(), "default");
    wait_until("the FleetDeployment resource is served", LONG, || {
        rt.block_on(fleets.list(&ListParams::default())).ok()
    });
    let data = tempfile::Builder::new()
        .prefix("kedge-fleet-e2e-")
        .tempdir()
        .expect("tempdir");
    let mut agents = Vec::new();
    for (node, labels) in [
        ("edge-a", "site=b43,canary=true"),
        ("edge-b", "site=b43"),
        ("edge-c", "site=b44"),
    ] {
        agents.push(Agent::start(AgentOpts {
            node: node.into(),
            broker_url: Some(mqtt.url()),
            data_dir: data.path().join(node),
            extra_args: fast_agent_args(labels),
            ..Default::default()
        }));
    }
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec![],
    });
    let records = collect_records(&rt, mqtt.port, "kedge/v1/_fleet/default/meter".into());
    let wasm = guest_wasm(GuestTarget::P1);
    let image = format!("file://{}@sha256:{}", wasm.display(), sha256_file(&wasm));
    let spec = |image: &str, period: &str| {
        json!({
            "selector": "site=b43",
            "template": {
                "spec": {
                    "runtimeClassName": "kedge-wasm",
                    "containers": [{"name": "main", "image": image, "args": ["ticker", "0", period]}],
                },
            },
            "rollout": {
                "batches": [{"selector": "canary=true", "limit": "100%"}, {"limit": "100%"}],
                "deviceTimeoutSeconds": 120,
                "minReadySeconds": 2,
            },
        })
    };
    let create: FleetDeploymentResource = serde_json::from_value(json!({
        "apiVersion": "kedge.io/v1alpha1",
        "kind": "FleetDeployment",
        "metadata": {"name": "meter", "namespace": "default"},
        "spec": spec(&image, "100"),
    }))
    .expect("fleet deployment");
    rt.block_on(fleets.create(&PostParams::default(), &create))
        .expect("create");
    let url = mqtt.url();
    let status = |what: &str, want: &dyn Fn(&FleetDeploymentStatus) -> bool| {
        let mut last = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bridge.wait(what, LONG, || {
                let s = rt.block_on(fleets.get("meter")).ok()?.status?;
                last = Some(s.clone());
                want(&s).then_some(s)
            })
        }));
        r.unwrap_or_else(|e| {
            eprintln!("last status: {last:?}");
            for l in bridge.log().lines().rev().take(40) {
                eprintln!("bridge: {l}");
            }
            for (i, a) in agents.iter().enumerate() {
                eprintln!("--- agent {i}");
                for l in a.log().lines().rev().take(20) {
                    eprintln!("{l}");
                }
            }
            std::panic::resume_unwind(e)
        })
    };
    let s = status("revision 1 on both devices at b43", &|s| {
        s.revision == Some(1) && s.phase.as_deref() == Some("Complete") && s.ready == 2
    });
    assert_eq!((s.targeted, s.up_to_date, s.failed), (2, 2, 0));
    for node in ["edge-a", "edge-b"] {
        let p = device_pod(&url, node, "meter").expect("the fleet pod");
        assert_eq!(p["phase"], "Running", "{node}: {p}");
        assert_eq!(p["observed_generation"], 1, "{node}: {p}");
    }
    assert!(
        device_pod(&url, "edge-c", "meter").is_none(),
        "edge-c is at b44"
    );
    // A fleet pod is not a Kubernetes Pod.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    assert!(
        rt.block_on(pods.list(&ListParams::default()))
            .expect("pods")
            .items
            .is_empty()
    );

    // An update: the canary first, then everyone.
    let patch = |spec: serde_json::Value| {
        rt.block_on(fleets.patch(
            "meter",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        ))
        .expect("patch");
    };
    let before = records.lock().expect("records").len();
    patch(spec(&image, "200"));
    status("revision 2 on both devices", &|s| {
        s.revision == Some(2) && s.phase.as_deref() == Some("Complete") && s.ready == 2
    });
    bridge.wait("the completed record of revision 2", LONG, || {
        records
            .lock()
            .expect("records")
            .iter()
            .any(|r| r.revision == 2 && r.rollout.state.phase == RolloutPhase::Complete)
            .then_some(())
    });
    {
        let seen = records.lock().expect("records")[before..].to_vec();
        let admitted: Vec<usize> = seen
            .iter()
            .filter(|r| r.revision == 2 && r.rollout.state.phase == RolloutPhase::Progressing)
            .map(|r| r.cohorts.len())
            .collect();
        assert!(
            admitted.first() == Some(&0) && admitted.contains(&1) && admitted.contains(&2),
            "cohorts of revision 2's records: {admitted:?}"
        );
    }
    for node in ["edge-a", "edge-b"] {
        bridge.wait(&format!("{node} runs revision 2"), LONG, || {
            let p = device_pod(&url, node, "meter")?;
            (p["observed_generation"] == 2 && p["phase"] == "Running").then_some(())
        });
    }

    // Revision 3 cannot start (its module does not match its digest): the
    // canary fails it and revision 4 brings revision 2's spec back; edge-b
    // never gets revision 3.
    let bad_image = format!("file://{}@sha256:{}", wasm.display(), "0".repeat(64));
    patch(spec(&bad_image, "200"));
    let s = status("rolled back as revision 4", &|s| {
        s.phase.as_deref() == Some("RolledBack") && s.revision == Some(4)
    });
    assert!(
        s.message
            .as_deref()
            .unwrap_or("")
            .contains("rolled back to the spec of revision 2 as revision 4"),
        "{s:?}"
    );
    status("both devices run revision 4", &|s| {
        s.revision == Some(4) && s.ready == 2 && s.failed == 0
    });
    // Neither device stopped revision 2's pod: revision 3 never started on
    // the canary (its module is fetched and checked before the running pod
    // is replaced), and revision 4 is revision 2's spec (a new generation
    // for the agent, not a restart).
    for node in ["edge-a", "edge-b"] {
        let p = device_pod(&url, node, "meter").expect("the fleet pod");
        assert_eq!(p["phase"], "Running", "{node}: {p}");
        assert_ne!(p["observed_generation"], 3, "{node}: {p}");
    }
    let seen = records.lock().expect("records").clone();
    assert!(
        seen.iter()
            .filter(|r| r.revision == 3)
            .all(|r| r.cohorts.iter().all(|c| c.selector == "canary=true")),
        "only the canary was asked to run revision 3"
    );
    assert!(device_pod(&url, "edge-c", "meter").is_none());

    // Node labels become device labels: a user labels edge-c's Node into
    // b43; the bridge publishes it as the device's cloud labels, which win
    // over the agent's own site=b44, and the fleet reaches edge-c.
    let nodes: Api<Node> = Api::all(admin.clone());
    rt.block_on(nodes.patch(
        "edge-c",
        &PatchParams {
            field_manager: Some("kubectl-label".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"metadata": {"labels": {"site": "b43"}}})),
    ))
    .expect("label the Node");
    bridge.wait("edge-c reports site=b43 in its node status", LONG, || {
        let out = kedge_ok(&["get", "nodes", "-o", "json", "--broker", &url]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == "edge-c" && n["labels"]["site"] == "b43")
            .then_some(())
    });
    status("the fleet reaches edge-c", &|s| {
        s.targeted == 3 && s.ready == 3 && s.failed == 0
    });
    let p = device_pod(&url, "edge-c", "meter").expect("the fleet pod on edge-c");
    assert_eq!(p["phase"], "Running", "edge-c: {p}");
    // The label stays the user's on the Node (the device-label mirror does
    // not take it over).
    let n = rt.block_on(nodes.get("edge-c")).expect("node");
    assert_eq!(
        n.metadata
            .labels
            .unwrap_or_default()
            .get("site")
            .map(String::as_str),
        Some("b43")
    );
}

/// The seed path with real agents: a Deployment whose template is bound to
/// the fleet node `kedge-fleet-edge` becomes a fleet deployment over the
/// devices its `kedge.io/selector` selects (not the others), its pod shows
/// the counts, and a template change rolls out as revision 2 of the same
/// fleet deployment. The fleet nodes' capacity is the sum over their
/// devices (`edge`: all three; `b43:site=b43`: the two at b43, then one
/// when a device's labels stop matching).
#[test]
fn a_deployment_on_a_fleet_node_reaches_the_matching_agents_and_an_update_is_revision_2() {
    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts {
        controllers: true,
        node_monitor_grace: Duration::from_secs(12),
    });
    let mqtt = Mosquitto::start();
    let admin = client(&rt, &cp.kubeconfig);
    for f in ["bridge-rbac.yaml", "fleetdeployment-crd.yaml"] {
        apply_file(&rt, &admin, &repo_root().join("edge-manifests").join(f));
    }
    let data = tempfile::Builder::new()
        .prefix("kedge-seed-e2e-")
        .tempdir()
        .expect("tempdir");
    let mut agents = Vec::new();
    for (node, labels) in [
        ("edge-a", "site=b43"),
        ("edge-b", "site=b43"),
        ("edge-c", "site=b44"),
    ] {
        agents.push(Agent::start(AgentOpts {
            node: node.into(),
            broker_url: Some(mqtt.url()),
            data_dir: data.path().join(node),
            extra_args: fast_agent_args(labels),
            ..Default::default()
        }));
    }
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: mqtt.url(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: ["--fleet-node", "edge", "--fleet-node", "b43:site=b43"]
            .map(String::from)
            .to_vec(),
    });
    let records = collect_records(&rt, mqtt.port, "kedge/v1/_fleet/default/meter".into());
    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let dump = |what: &str, f: &mut dyn FnMut() -> bool| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bridge.wait(what, LONG, || f().then_some(()))
        }));
        if let Err(e) = r {
            for l in bridge.log().lines().rev().take(60) {
                eprintln!("bridge: {l}");
            }
            for (i, a) in agents.iter().enumerate() {
                eprintln!("--- agent {i}");
                for l in a.log().lines().rev().take(20) {
                    eprintln!("{l}");
                }
            }
            std::panic::resume_unwind(e)
        }
        bridge.assert_running();
    };
    dump("the fleet node is a Ready Node", &mut || {
        rt.block_on(nodes.get_opt("kedge-fleet-edge"))
            .ok()
            .flatten()
            .is_some_and(|n| {
                let labels = n.metadata.labels.clone().unwrap_or_default();
                labels.get("kedge.io/fleet-node").map(String::as_str) == Some("edge")
                    && labels.get("type").map(String::as_str) == Some("virtual-kubelet")
                    && condition(&n, "Ready").is_some_and(|c| c.status == "True")
            })
    });

    // A fleet node's capacity is the sum over its devices: every device
    // for `edge`, the two at site b43 for `b43`.
    let node = |name: &str| rt.block_on(nodes.get_opt(name)).ok().flatten();
    dump(
        "the fleet nodes' capacity is their devices' summed",
        &mut || {
            let Some(devices) = ["edge-a", "edge-b", "edge-c"]
                .iter()
                .map(|n| node(n).map(|n| capacity(&n)))
                .collect::<Option<Vec<[u64; 4]>>>()
            else {
                return false;
            };
            let (edge, b43) = (node("kedge-fleet-edge"), node("kedge-fleet-b43"));
            edge.is_some_and(|n| capacity(&n) == summed(&devices))
                && b43.is_some_and(|n| {
                    capacity(&n) == summed(&devices[..2])
                        && condition(&n, "Ready")
                            .and_then(|c| c.message.clone())
                            .as_deref()
                            == Some(
                                "2 of 2 devices online; the kedge bridge serves this fleet node",
                            )
                })
        },
    );

    let wasm = guest_wasm(GuestTarget::P1);
    let image = format!("file://{}@sha256:{}", wasm.display(), sha256_file(&wasm));
    let deployment = |period: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "meter", "namespace": "default"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "meter"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "100%"}},
                "template": {
                    "metadata": {"labels": {"app": "meter"}, "annotations": {"kedge.io/selector": "site=b43"}},
                    "spec": wasm_pod_spec(&image, &["ticker", "0", period], json!({
                        "nodeSelector": {"kedge.io/fleet-node": "edge"},
                    })),
                },
            },
        })
    };
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let d: Deployment = serde_json::from_value(deployment("100")).expect("deployment");
    rt.block_on(deployments.create(&PostParams::default(), &d))
        .expect("create the Deployment");
    let url = mqtt.url();
    for node in ["edge-a", "edge-b"] {
        dump(&format!("{node} runs the fleet pod"), &mut || {
            device_pod(&url, node, "meter")
                .is_some_and(|p| p["phase"] == "Running" && p["observed_generation"] == 1)
        });
    }
    assert!(
        device_pod(&url, "edge-c", "meter").is_none(),
        "edge-c is at b44"
    );
    let seed_pods = || {
        rt.block_on(pods.list(&ListParams::default().labels("app=meter")))
            .map(|l| l.items)
            .unwrap_or_default()
    };
    let fleet_ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "kedge.io/FleetReady"))
            .cloned()
    };
    dump("the pod is Running and shows its devices", &mut || {
        let ps = seed_pods();
        ps.len() == 1
            && ps[0].spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("kedge-fleet-edge")
            && ps[0].status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && fleet_ready(&ps[0]).is_some_and(|c| {
                c.message.as_deref() == Some("2 of 2 devices running") && c.status == "True"
            })
    });
    let first = seed_pods()[0].metadata.uid.clone();

    // A new template: the old pod goes, the new one comes, and the fleet
    // deployment (the same one) rolls out revision 2.
    rt.block_on(deployments.patch(
        "meter",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": deployment("200")["spec"]["template"].clone()}})),
    ))
    .expect("update the Deployment");
    for node in ["edge-a", "edge-b"] {
        dump(&format!("{node} runs revision 2"), &mut || {
            device_pod(&url, node, "meter")
                .is_some_and(|p| p["phase"] == "Running" && p["observed_generation"] == 2)
        });
    }
    dump("the new pod shows its devices", &mut || {
        let ps = seed_pods();
        ps.len() == 1
            && ps[0].metadata.uid != first
            && fleet_ready(&ps[0])
                .is_some_and(|c| c.message.as_deref() == Some("2 of 2 devices running"))
    });
    {
        let seen = records.lock().expect("records").clone();
        assert!(seen.iter().all(|r| !r.uid.is_empty()));
        let uids: BTreeSet<&str> = seen.iter().map(|r| r.uid.as_str()).collect();
        assert_eq!(uids.len(), 1, "one fleet deployment throughout: {uids:?}");
        assert!(seen.iter().any(|r| r.revision == 2), "revision 2 published");
    }
    assert!(device_pod(&url, "edge-c", "meter").is_none());

    // Scaled to 0: the fleet deployment goes, and with it the devices' pods.
    rt.block_on(deployments.patch(
        "meter",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    ))
    .expect("scale to 0");
    for node in ["edge-a", "edge-b"] {
        dump(&format!("{node} no longer runs the fleet pod"), &mut || {
            device_pod(&url, node, "meter").is_none()
        });
    }
    assert!(seed_pods().is_empty());

    // edge-b's labels stop matching (a user moves its Node to site b45):
    // fleet node b43 stands for edge-a alone.
    rt.block_on(nodes.patch(
        "edge-b",
        &PatchParams {
            field_manager: Some("kubectl-label".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"metadata": {"labels": {"site": "b45"}}})),
    ))
    .expect("label the Node");
    dump("fleet node b43 drops edge-b", &mut || {
        let (Some(a), Some(b43)) = (node("edge-a"), node("kedge-fleet-b43")) else {
            return false;
        };
        capacity(&b43) == summed(&[capacity(&a)])
            && condition(&b43, "Ready")
                .and_then(|c| c.message.clone())
                .as_deref()
                == Some("1 of 1 devices online; the kedge bridge serves this fleet node")
    });
}

/// A Node's capacity: CPU in millicores, memory, pods, ephemeral storage
/// (the bridge writes plain numbers, and CPU in cores or millicores).
fn capacity(n: &Node) -> [u64; 4] {
    let c = n
        .status
        .as_ref()
        .and_then(|s| s.capacity.clone())
        .unwrap_or_default();
    let get = |k: &str| c.get(k).map(|q| q.0.clone()).unwrap_or_default();
    let cpu = get("cpu");
    let cpu = match cpu.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => cpu.parse::<u64>().unwrap_or(0) * 1000,
    };
    let int = |k: &str| get(k).parse::<u64>().unwrap_or(0);
    [cpu, int("memory"), int("pods"), int("ephemeral-storage")]
}

/// Devices' capacities summed as a fleet node sums them: memory in whole
/// KiB and ephemeral storage in whole MiB per device.
fn summed(devices: &[[u64; 4]]) -> [u64; 4] {
    devices.iter().fold([0; 4], |s, d| {
        [
            s[0] + d[0],
            s[1] + (d[1] >> 10 << 10),
            s[2] + d[2],
            s[3] + (d[3] >> 20 << 20),
        ]
    })
}

/// A rustls client of the bridge's kubelet API with this client certificate.
fn kubelet_tls(ca: &Path, cert: &Path, key: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca")).expect("root");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("client cert")
        .collect::<Result<_, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("client key");
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth"),
    )
}

/// `curl` of the bridge's kubelet API with a client certificate: (status, body).
fn kubelet_get(
    w: &World,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    path: &str,
) -> (u16, String) {
    kubelet_request(w, cert, "GET", path)
}

/// `method path` on the bridge's kubelet API as the holder of `cert`: the
/// status code and the body.
fn kubelet_request(
    w: &World,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    method: &str,
    path: &str,
) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            method,
            "--max-time",
            "60",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(&w.cp.certs.ca)
        .arg("--cert")
        .arg(&cert.0)
        .arg("--key")
        .arg(&cert.1)
        .arg(format!(
            "https://{}:{}{path}",
            w.bridge.kubelet_host, w.bridge.kubelet_port
        ))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_kubelet_api_authorises_like_a_kubelet_and_a_slow_log_reader_loses_nothing() {
    let w = World::start_with(
        &["edge-a"],
        vec![
            "--kubelet-header-read-timeout=2s".into(),
            "--kubelet-tls-handshake-timeout=2s".into(),
        ],
        // The burst below writes ~30 MB of CRI log: no rotation under it.
        vec![(
            "KEDGE_LOGS_MAX_FILE_BYTES".into(),
            (64u64 << 20).to_string(),
        )],
    );
    w.wait_node_ready("edge-a");
    let accounts: Api<ServiceAccount> = Api::namespaced(w.admin.clone(), "default");
    w.bridge.wait("the default service account", LONG, || {
        w.rt.block_on(accounts.get_opt("default")).ok().flatten()
    });
    let on_edge_a = |args: &[&str], extra: serde_json::Value| {
        let mut spec = wasm_pod_spec(&w.image, args, extra);
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": "edge-a"});
        spec
    };
    w.create(
        &w.pods(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
               "spec": on_edge_a(&["ticker", "0", "500"], json!({}))}),
    );

    // Users from the cluster CA: alice has no rights on nodes; bob's group
    // is granted nodes/log through RBAC.
    let alice = w.cp.user_cert("alice", "/O=dev/CN=alice");
    let bob = w.cp.user_cert("bob", "/O=log-readers/CN=bob");
    let roles: Api<ClusterRole> = Api::all(w.admin.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(w.admin.clone());
    w.create(
        &roles,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "node-log-reader"},
               "rules": [{"apiGroups": [""], "resources": ["nodes/log"], "verbs": ["get"]}]}),
    );
    w.create(
        &bindings,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "log-readers"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-log-reader"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "log-readers"}]}),
    );
    w.wait_or_dump("talker Running and Ready", || {
        let p = w.rt.block_on(w.pods().get_opt("talker")).ok().flatten()?;
        pod_ready(&p).then_some(())
    });

    // --- Denied: 403 with the kubelet's words, for logs and everything else.
    let (code, body) = kubelet_get(&w, &alice, "/containerLogs/default/talker/main");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body,
        "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[log proxy])\n"
    );
    let (code, body) = kubelet_get(&w, &alice, "/metrics");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource(s)=[metrics]"), "{body}");
    // Nobody learns which pods exist without the right to read their logs.
    let (code, _) = kubelet_get(&w, &alice, "/containerLogs/default/no-such-pod/main");
    assert_eq!(code, 403);

    // --- Allowed through nodes/log: the logs.
    let log = w
        .bridge
        .wait("bob reads talker's log from the bridge", LONG, || {
            let (code, body) = kubelet_get(&w, &bob, "/containerLogs/default/talker/main");
            (code == 200 && body.contains("tick 1")).then_some(body)
        });
    assert!(log.starts_with("tick 1"), "{log}");
    // Only that: nodes/log is not nodes/metrics.
    assert_eq!(kubelet_get(&w, &bob, "/metrics").0, 403);
    // Typed errors: no previous run is 400, as the kubelet; unknown
    // container and pod are 404.
    let (code, body) = kubelet_get(&w, &bob, "/containerLogs/default/talker/main?previous=true");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("previous terminated container"), "{body}");
    let (code, body) = kubelet_get(&w, &bob, "/containerLogs/default/talker/nope");
    assert_eq!(
        (code, body.as_str()),
        (404, "container \"nope\" not found in pod \"talker\"\n")
    );
    assert_eq!(
        kubelet_get(&w, &bob, "/containerLogs/default/no-such-pod/main").0,
        404
    );

    // --- The apiserver's path (pods/log → the bridge as kube-apiserver-kubelet-client,
    // allowed by the system:kubelet-api-admin binding of bridge-rbac.yaml).
    let through_apiserver = w
        .logs("talker", "main")
        .expect("logs through the apiserver");
    assert!(
        through_apiserver.starts_with("tick 1"),
        "{through_apiserver}"
    );

    // --- A slow reader of a follow stream gets every line. The pod writes
    // 600,000 lines (7.4 MB) at once; the reader takes the head, then stops
    // reading (a 4 KiB receive buffer) until the bridge holds over 1 MiB
    // that the reader has not taken (the rest of the body is in the socket
    // buffers and hyper's), then reads on.
    const LINES: u64 = 600_000;
    w.create(
        &w.pods(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "burst"},
               "spec": on_edge_a(&["ticker", &LINES.to_string(), "0"], json!({"restartPolicy": "Never"}))}),
    );
    w.wait_or_dump("burst started", || {
        let p = w.rt.block_on(w.pods().get_opt("burst")).ok().flatten()?;
        let phase = p.status?.phase?;
        (phase == "Running" || phase == "Succeeded").then_some(())
    });
    let tls = kubelet_tls(&w.cp.certs.ca, &bob.0, &bob.1);
    let port = w.bridge.kubelet_port;
    let (head, mut conn) = w.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let tcp = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut conn = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS");
        // HTTP/1.0: the body ends when the connection does (no chunking).
        conn.write_all(
            b"GET /containerLogs/default/burst/main?follow=true HTTP/1.0\r\nHost: bridge\r\n\r\n",
        )
        .await
        .expect("request");
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read head");
            assert!(
                n > 0,
                "closed before the headers: {}",
                String::from_utf8_lossy(&head)
            );
            head.extend_from_slice(&buf[..n]);
        }
        (head, conn)
    });
    let head_text = String::from_utf8_lossy(&head).to_string();
    assert!(head_text.starts_with("HTTP/1.0 200"), "{head_text}");
    w.bridge.wait(
        "the bridge holds log data the reader has not taken",
        LONG,
        || {
            let held = support::k8s::bridge_metric(&w.cp, port, "kedge_bridge_log_buffered_bytes")?;
            (held >= 1024.0 * 1024.0).then_some(())
        },
    );
    let rest = w.rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        tokio::time::timeout(LONG, conn.read_to_end(&mut rest))
            .await
            .expect("the follow stream ends with the container")
            .expect("read body");
        rest
    });
    let mut all = head;
    all.extend_from_slice(&rest);
    let text = String::from_utf8(all).expect("utf-8");
    let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
    let numbers: Vec<u64> = body
        .lines()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a tick line: {l:?}"))
        })
        .collect();
    assert_eq!(numbers.len() as u64, LINES, "every line, once");
    assert!(numbers.iter().copied().eq(1..=LINES), "in order");
    assert_eq!(
        support::k8s::bridge_metric(&w.cp, port, "kedge_bridge_log_streams_cut_total"),
        Some(0.0)
    );

    // --- A client that never finishes its handshake, and one that never
    // sends its headers: both are closed by the bridge (2 s limits here).
    w.rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(LONG, silent.read(&mut buf))
            .await
            .expect("closed by the handshake timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "no bytes to a client that sent none");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut idle = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("TLS");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(LONG, idle.read_to_end(&mut out))
            .await
            .expect("closed by the header read timeout");
    });
    w.bridge.assert_running();
}

/// The bridge with `--signing-key` drives an agent that requires signed
/// desired state through a pod's life: the spec it publishes is signed and
/// runs, `kubectl logs` (a signed log request) works, the delete (a signed
/// tombstone) stops the pod, and once the device reported it gone the
/// bridge clears its tombstone from the broker.
#[test]
fn a_signing_bridge_drives_a_signing_agent_through_a_pod_create_and_delete() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("bridge.pem");
    let key = key.to_str().expect("utf8").to_string();
    let public = kedge_ok(&["keys", "generate", "--out", &key]);
    let node = "edge-signed";
    let w = World::start_with(
        &[node],
        vec!["--signing-key".into(), key.clone()],
        vec![("KEDGE_TRUST_KEYS".into(), public.trim().to_string())],
    );
    w.wait_node_ready(node);
    let mut spec = wasm_pod_spec(&w.image, &["ticker", "0", "200"], json!({}));
    spec["nodeName"] = json!(node);
    w.create(
        &w.pods(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "signed"}, "spec": spec}),
    );
    w.wait_or_dump("the signed pod Running and Ready", || {
        w.rt.block_on(w.pods().get_opt("signed"))
            .ok()
            .flatten()
            .filter(pod_ready)
    });
    let topic = format!("kedge/v1/{node}/desired/default/signed");
    let retained = |topic: &str| {
        let sub = support::Subscriber::start(&w.mqtt.url(), topic, None);
        sub.messages()
            .into_iter()
            .find(|(t, p)| t == topic && !p.is_empty())
            .map(|(_, p)| p)
    };
    let payload = retained(&topic).expect("the spec is retained");
    let opened = kedge::wire::open(&payload).expect("an envelope");
    assert!(opened.signature.is_some(), "the bridge signs the spec");
    let index = retained(&format!("kedge/v1/{node}/index/bridge")).expect("index");
    assert!(
        kedge::wire::open(&index)
            .expect("opens")
            .signature
            .is_some()
    );
    // A signed log request through the kubelet API.
    let log = w.bridge.wait("the log through the apiserver", LONG, || {
        w.logs("signed", "main")
            .ok()
            .filter(|l| l.contains("tick 2"))
    });
    assert!(log.starts_with("tick 1"), "{log}");

    w.rt.block_on(w.pods().delete("signed", &DeleteParams::default()))
        .expect("delete");
    w.wait_or_dump("the pod gone from the API", || {
        w.rt.block_on(w.pods().get_opt("signed"))
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    });
    // The device stopped it, and the signed tombstone was cleared.
    w.bridge
        .wait("the tombstone cleared from the broker", LONG, || {
            retained(&topic).is_none().then_some(())
        });
    let (agent, _) = &w.agents[node];
    let log = agent.log();
    assert!(log.contains("deleting pod"), "{log}");
    assert!(
        !log.contains("Signature"),
        "a refusal in the agent's log: {log}"
    );
}

// ---------------------------------------------------------------- kubectl

/// A real kubectl (tests/k8s-harness/kubectl, the control plane's release)
/// drives the bridge as a user does, through the admin kubeconfig the
/// support code writes: it applies the bridge's RBAC and the FleetDeployment
/// CRD; `kubectl get nodes` lists the devices Ready; `kubectl apply -f` of a
/// FleetDeployment runs it on the devices and `kubectl get fleetdeployments`
/// shows the counts; `kubectl apply -f` of the changed definition (an env
/// var added) rolls revision 2 out to them; `kubectl logs` of a pod on a
/// device Node returns its container's lines through the apiserver and the
/// bridge's kubelet API.
#[test]
fn kubectl_drives_device_nodes_fleets_and_pod_logs() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kedge::bridge::fleets::crd::{FleetDeploymentResource, FleetDeploymentStatus};
    use support::k8s::{Kubectl, kubectl_or_skip, kubectl_rows};

    let Some(bin) = kubectl_or_skip("kubectl_drives_device_nodes_fleets_and_pod_logs") else {
        return;
    };
    let rt = runtime();
    let cp = ControlPlane::start(ControlPlaneOpts::default());
    let kubectl = Kubectl::new(&bin, &cp.kubeconfig);
    let version = kubectl.ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version json");
    assert_eq!(
        version["clientVersion"]["gitVersion"], version["serverVersion"]["gitVersion"],
        "kubectl is the control plane's release: {version}"
    );

    let manifests = repo_root().join("edge-manifests");
    let rbac = manifests.join("bridge-rbac.yaml");
    let crd = manifests.join("fleetdeployment-crd.yaml");
    let out = kubectl.ok(&[
        "apply",
        "-f",
        &rbac.to_string_lossy(),
        "-f",
        &crd.to_string_lossy(),
    ]);
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/fleetdeployments.kedge.io created"
        ),
        "{out}"
    );
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=180s",
        "customresourcedefinition/fleetdeployments.kedge.io",
    ]);

    let mqtt = Mosquitto::start();
    let url = mqtt.url();
    let data = tempfile::Builder::new()
        .prefix("kedge-kubectl-e2e-")
        .tempdir()
        .expect("tempdir");
    let mut agents = Vec::new();
    for (node, labels) in [("edge-a", "site=b43,canary=true"), ("edge-b", "site=b43")] {
        agents.push(Agent::start(AgentOpts {
            node: node.into(),
            broker_url: Some(url.clone()),
            data_dir: data.path().join(node),
            extra_args: fast_agent_args(labels),
            ..Default::default()
        }));
    }
    let bridge = BridgeProc::start(BridgeOpts {
        broker_url: url.clone(),
        kubeconfig: cp.bridge_kubeconfig.clone(),
        certs: cp.certs.clone(),
        extra_args: vec![],
    });
    let admin = client(&rt, &cp.kubeconfig);
    let dump = |agents: &[Agent], bridge: &BridgeProc| {
        for l in bridge.log().lines().rev().take(40) {
            eprintln!("bridge: {l}");
        }
        for (i, a) in agents.iter().enumerate() {
            eprintln!("--- agent {i}");
            for l in a.log().lines().rev().take(20) {
                eprintln!("{l}");
            }
        }
    };

    // --- kubectl get nodes: the devices, Ready.
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["edge-a", "edge-b"] {
        bridge.wait(&format!("node {name} Ready"), LONG, || {
            let n = rt.block_on(nodes.get_opt(name)).ok().flatten()?;
            (condition(&n, "Ready")?.status == "True").then_some(())
        });
    }
    let out = kubectl.ok(&["get", "nodes", "-l", "kedge.io/edge=true"]);
    let rows = kubectl_rows(&out);
    assert_eq!(
        rows[0],
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "{out}"
    );
    let devices: Vec<(&str, &str)> = rows[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(devices, [("edge-a", "Ready"), ("edge-b", "Ready")], "{out}");
    eprintln!("kubectl get nodes:\n{out}");

    // --- kubectl apply -f of a FleetDeployment; kubectl get shows the counts.
    let wasm = guest_wasm(GuestTarget::P1);
    let image = format!("file://{}@sha256:{}", wasm.display(), sha256_file(&wasm));
    let fleet = |env: serde_json::Value| {
        json!({
            "apiVersion": "kedge.io/v1alpha1",
            "kind": "FleetDeployment",
            "metadata": {"name": "meter", "namespace": "default"},
            "spec": {
                "selector": "site=b43",
                "template": {
                    "spec": {
                        "runtimeClassName": "kedge-wasm",
                        "containers": [{
                            "name": "main",
                            "image": image,
                            "args": ["ticker", "0", "100"],
                            "env": env,
                        }],
                    },
                },
                "rollout": {
                    "batches": [{"selector": "canary=true", "limit": "100%"}, {"limit": "100%"}],
                    "deviceTimeoutSeconds": 120,
                    "minReadySeconds": 2,
                },
            },
        })
    };
    // The definition as a user keeps it: a YAML file, applied and re-applied.
    let file = data.path().join("meter.yaml");
    let write = |v: serde_json::Value| {
        std::fs::write(&file, serde_yaml_ng::to_string(&v).expect("yaml")).expect("write")
    };
    write(fleet(json!([])));
    let out = kubectl.ok(&["apply", "-f", &file.to_string_lossy()]);
    assert_eq!(out.trim(), "fleetdeployment.kedge.io/meter created");
    let fleets: Api<FleetDeploymentResource> = Api::namespaced(admin.clone(), "default");
    let status = |what: &str, want: &dyn Fn(&FleetDeploymentStatus) -> bool| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bridge.wait(what, LONG, || {
                let s = rt.block_on(fleets.get("meter")).ok()?.status?;
                want(&s).then_some(())
            })
        }));
        if let Err(e) = r {
            eprintln!(
                "{}",
                kubectl.ok(&["get", "fleetdeployment", "meter", "-o", "yaml"])
            );
            dump(&agents, &bridge);
            std::panic::resume_unwind(e)
        }
    };
    status("revision 1 on both devices", &|s| {
        s.revision == Some(1) && s.phase.as_deref() == Some("Complete") && s.ready == 2
    });
    let header = [
        "NAME",
        "SELECTOR",
        "REVISION",
        "TARGETED",
        "UP-TO-DATE",
        "READY",
        "FAILED",
        "PHASE",
        "AGE",
    ];
    let fleet_row = |args: &[&str]| {
        let out = kubectl.ok(args);
        let rows = kubectl_rows(&out);
        assert_eq!(rows.len(), 2, "{out}");
        assert_eq!(rows[0], header, "{out}");
        eprintln!("kubectl {}:\n{out}", args.join(" "));
        rows[1][..8].to_vec()
    };
    let row1 = ["meter", "site=b43", "1", "2", "2", "2", "0", "Complete"];
    assert_eq!(fleet_row(&["get", "fleetdeployments"]), row1);
    // No column of the CRD is wide-only: -o wide shows the same.
    assert_eq!(fleet_row(&["get", "fleetdeployments", "-o", "wide"]), row1);
    for node in ["edge-a", "edge-b"] {
        let p = device_pod(&url, node, "meter").expect("the fleet pod");
        assert_eq!(p["phase"], "Running", "{node}: {p}");
        assert_eq!(p["observed_generation"], 1, "{node}: {p}");
    }

    // --- kubectl apply -f of the changed definition: revision 2.
    write(fleet(json!([{"name": "METER_UNIT", "value": "kWh"}])));
    let out = kubectl.ok(&["apply", "-f", &file.to_string_lossy()]);
    assert_eq!(out.trim(), "fleetdeployment.kedge.io/meter configured");
    let applied = kubectl.ok(&[
        "get",
        "fleetdeployment",
        "meter",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(applied, "kWh");
    status("revision 2 on both devices", &|s| {
        s.revision == Some(2) && s.phase.as_deref() == Some("Complete") && s.ready == 2
    });
    for node in ["edge-a", "edge-b"] {
        bridge.wait(&format!("{node} runs revision 2"), LONG, || {
            let p = device_pod(&url, node, "meter")?;
            (p["observed_generation"] == 2 && p["phase"] == "Running").then_some(())
        });
    }
    assert_eq!(
        fleet_row(&["get", "fleetdeployments", "meter"]),
        ["meter", "site=b43", "2", "2", "2", "2", "0", "Complete"]
    );

    // --- kubectl logs of a pod on a device Node, through the apiserver and
    // the bridge's kubelet API. (Pods need the namespace's default
    // ServiceAccount, which the controller manager creates.)
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    bridge.wait("the default ServiceAccount", LONG, || {
        rt.block_on(accounts.get_opt("default")).ok().flatten()
    });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ticker", "namespace": "default"},
        "spec": wasm_pod_spec(&image, &["ticker", "0", "300"], json!({"nodeName": "edge-a"})),
    });
    let pod_file = data.path().join("ticker.yaml");
    std::fs::write(&pod_file, serde_yaml_ng::to_string(&pod).expect("yaml")).expect("write");
    let out = kubectl.ok(&["apply", "-f", &pod_file.to_string_lossy()]);
    assert_eq!(out.trim(), "pod/ticker created");
    let ready = kubectl.run(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "pod/ticker",
    ]);
    if !ready.status.success() {
        eprintln!("{}", kubectl.ok(&["get", "pod", "ticker", "-o", "yaml"]));
        dump(&agents, &bridge);
        panic!(
            "pod/ticker not Ready: {}",
            String::from_utf8_lossy(&ready.stderr)
        );
    }
    let log = bridge.wait("kubectl logs shows tick 2", LONG, || {
        let out = kubectl.run(&["logs", "ticker", "-c", "main"]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && log.contains("tick 2\n")).then_some(log)
    });
    assert!(log.starts_with("tick 1\n"), "{log}");
    eprintln!("kubectl logs ticker:\n{log}");
    let tail = kubectl.ok(&["logs", "ticker", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("tick "), "{tail}");
    // The pod's row: Running on edge-a.
    let out = kubectl.ok(&["get", "pod", "ticker", "-o", "wide"]);
    let rows = kubectl_rows(&out);
    assert_eq!(&rows[0][..3], ["NAME", "READY", "STATUS"], "{out}");
    assert_eq!(&rows[1][..3], ["ticker", "1/1", "Running"], "{out}");
    assert!(rows[1].iter().any(|c| c == "edge-a"), "{out}");
}

// ---------------------------------------------------------------- sealed secrets

/// A Secret's value reaches the device sealed to its key (issue 13.2): the
/// pod that takes it as an env var and as a secret volume runs, its init
/// container prints the value (read back through `kubectl logs`' path), and
/// the value is in no retained message and nowhere in the broker's
/// persistence file. Re-keyed (its key file removed, the agent restarted),
/// the device gets the spec again sealed to its new key and the pod runs.
#[test]
fn a_secret_reaches_the_device_sealed_and_the_broker_never_holds_it() {
    const VALUE: &str = "s3cr3t-v4lu3-kedge-e2e";
    let node = "edge-sealed";
    let mut w = World::start_on(Mosquitto::start_persistent(), &[node], vec![], vec![]);
    w.wait_node_ready(node);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(w.admin.clone(), "default");
    w.create(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
               "stringData": {"password": VALUE}}),
    );
    let mut spec = wasm_pod_spec(
        &w.image,
        &["ticker", "0", "200"],
        json!({
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}}],
            "initContainers": [{"name": "show", "image": w.image, "args": ["env"],
                "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
        }),
    );
    spec["nodeName"] = json!(node);
    w.create(
        &w.pods(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sealed"}, "spec": spec}),
    );
    w.wait_or_dump("the pod with the Secret Running and Ready", || {
        w.rt.block_on(w.pods().get_opt("sealed"))
            .ok()
            .flatten()
            .filter(pod_ready)
    });
    let log = w.bridge.wait(
        "the init container's env through the apiserver",
        LONG,
        || {
            w.logs("sealed", "show")
                .ok()
                .filter(|l| l.contains("PASSWORD="))
        },
    );
    assert!(log.contains(&format!("PASSWORD={VALUE}")), "{log}");

    let topic = format!("kedge/v1/{node}/desired/default/sealed");
    let retained = |w: &World| {
        let sub = support::Subscriber::start(&w.mqtt.url(), "kedge/v1/#", None);
        // The sealed spec itself, once the subscription has its retained copy.
        w.bridge.wait("the retained spec", LONG, || {
            sub.messages()
                .into_iter()
                .find(|(t, p)| *t == topic && !p.is_empty())
                .map(|_| ())
        });
        sub.messages()
    };
    let messages = retained(&w);
    for (t, p) in &messages {
        assert!(
            !p.windows(VALUE.len()).any(|x| x == VALUE.as_bytes()),
            "the Secret's value in the clear on {t}"
        );
    }
    let spec_payload = &messages.iter().find(|(t, _)| *t == topic).expect("spec").1;
    let (_, sealed) =
        kedge::wire::decode_as::<kedge::model::SealedPod>(spec_payload).expect("a SealedPod");
    let key_file = w.agents[node].1.join("sealing.key");
    let key_id = |path: &Path| {
        kedge::seal::KeyPair::load(path)
            .expect("the device's sealing key")
            .id()
    };
    assert_eq!(
        sealed.key_id,
        key_id(&key_file),
        "sealed to the device's key"
    );

    // Re-keyed: the key file is gone when the agent starts again.
    {
        let (agent, dir) = w.agents.get_mut(node).expect("agent");
        agent.stop();
        std::fs::remove_file(dir.join("sealing.key")).expect("remove the key file");
        *agent = Agent::start(AgentOpts {
            node: node.to_string(),
            broker_url: Some(w.mqtt.url()),
            data_dir: dir.clone(),
            env: test_agent_env(),
            ..Default::default()
        });
    }
    let new_id = w.bridge.wait("the new key file", LONG, || {
        key_file.exists().then(|| key_id(&key_file))
    });
    assert_ne!(new_id, sealed.key_id, "a new key");
    w.wait_or_dump("the spec sealed again to the new key", || {
        let sub = support::Subscriber::start(&w.mqtt.url(), &topic, None);
        sub.messages()
            .into_iter()
            .find(|(t, p)| *t == topic && !p.is_empty())
            .and_then(|(_, p)| kedge::wire::decode_as::<kedge::model::SealedPod>(&p).ok())
            .filter(|(_, s)| s.key_id == new_id)
    });
    w.wait_or_dump("the pod Running and Ready after the re-key", || {
        w.rt.block_on(w.pods().get_opt("sealed"))
            .ok()
            .flatten()
            .filter(pod_ready)
    });

    // Nowhere in the broker's persistence file, which a graceful stop writes.
    w.mqtt.stop_gracefully();
    let mut db = Vec::new();
    for entry in walk(&w.mqtt.dir().join("store")) {
        db.extend(std::fs::read(&entry).unwrap_or_default());
    }
    assert!(
        db.windows(topic.len()).any(|x| x == topic.as_bytes()),
        "the persistence file holds the retained spec's topic"
    );
    assert!(
        !db.windows(VALUE.len()).any(|x| x == VALUE.as_bytes()),
        "the Secret's value is in the broker's files"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A plain Deployment as written for any cluster: without
/// `automountServiceAccountToken: false`, so the apiserver's ServiceAccount
/// admission plugin injects the service account token volume
/// (`kube-api-access-*`) and its read-only mount. It runs Ready on a device
/// node without the token, and its pod gets one
/// `ServiceAccountTokenNotMounted` Warning Event saying so.
#[test]
fn a_plain_deployment_runs_without_the_injected_token_volume_and_says_so() {
    let w = World::start(&["edge-a"]);
    w.wait_node_ready("edge-a");
    // The admission plugin needs the namespace's default ServiceAccount,
    // which the controller manager creates.
    let accounts: Api<ServiceAccount> = Api::namespaced(w.admin.clone(), "default");
    w.bridge.wait("the default service account", LONG, || {
        w.rt.block_on(accounts.get_opt("default")).ok().flatten()
    });
    let mut spec = wasm_pod_spec(&w.image, &["ticker", "0", "300"], json!({}));
    spec.as_object_mut()
        .expect("spec")
        .remove("automountServiceAccountToken");
    let pod = w.deploy_one("plain", spec);
    let name = pod.metadata.name.clone().expect("name");

    // The control plane did inject the volume and its mount.
    let spec = pod.spec.expect("spec");
    let injected: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name.starts_with("kube-api-access-") && v.projected.is_some())
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(injected.len(), 1, "{:?}", spec.volumes);
    assert!(
        spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == injected[0]
                && m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
        "{:?}",
        spec.containers[0].volume_mounts
    );

    // `kubectl get events`: the warning, once, and no refusal.
    let warnings = w
        .bridge
        .wait("the ServiceAccountTokenNotMounted event", LONG, || {
            let events: Vec<_> = w
                .events_of(&name)
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("ServiceAccountTokenNotMounted"))
                .collect();
            (!events.is_empty()).then_some(events)
        });
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let ev = &warnings[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.count.unwrap_or(1), 1, "{ev:?}");
    assert_eq!(
        ev.message.as_deref(),
        Some(
            "the pod runs without its service account token at /var/run/secrets/kubernetes.io/serviceaccount: kedge nodes do not mount API tokens (set automountServiceAccountToken: false to silence this)"
        )
    );
    assert_eq!(
        ev.involved_object.uid.as_deref(),
        pod.metadata.uid.as_deref()
    );
    let refusals: Vec<_> = w
        .events_of(&name)
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("UnsupportedField"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
}

/// A Deployment whose pods mount a projected volume of a cluster ConfigMap
/// (read by the bridge by name) and downwardAPI files (the pod's labels as
/// the apiserver made them, a memory limit over its divisor): the files
/// reach the module on the device.
#[test]
fn a_deployment_with_a_projected_volume_of_a_config_map_and_the_downward_api_runs() {
    let w = World::start(&["edge-a"]);
    w.wait_node_ready("edge-a");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(w.admin.clone(), "default");
    w.create(
        &config_maps,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "proj-config"},
            "data": {"level": "debug"}}),
    );
    let read = |name: &str, file: &str| {
        json!({"name": name, "image": w.image, "args": ["read", file],
            "volumeMounts": [{"name": "info", "mountPath": "/info", "readOnly": true}]})
    };
    let mut spec = wasm_pod_spec(
        &w.image,
        &["ticker", "0", "300"],
        json!({
            "initContainers": [
                read("level", "/info/conf/level"),
                read("labels", "/info/labels"),
                read("memory", "/info/mem-mi"),
            ],
            "volumes": [{"name": "info", "projected": {"sources": [
                {"configMap": {"name": "proj-config", "items": [{"key": "level", "path": "conf/level"}]}},
                {"downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "mem-mi", "resourceFieldRef": {"containerName": "main",
                        "resource": "limits.memory", "divisor": "1Mi"}}
                ]}}
            ]}}],
        }),
    );
    spec["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi"}});
    let pod = w.deploy_one("projected", spec);
    let name = pod.metadata.name.clone().expect("name");
    // The labels as the apiserver made them (the ReplicaSet's hash too).
    let labels: Vec<String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    assert!(labels.len() == 2, "{labels:?}");
    for (container, want) in [
        ("level", "debug".to_string()),
        ("labels", labels.join("\n")),
        ("memory", "64".to_string()),
    ] {
        let logs = w.logs(&name, container).expect("logs");
        assert_eq!(logs.trim_end_matches('\n'), want, "{container}");
    }
}

/// `kubectl top` on edge pods: each device's Node has a kubelet API port of
/// its own, where the bridge serves `/stats/summary` and
/// `/metrics/resource` from one stats request to the device; a real
/// metrics-server scrapes them, and a real kubectl shows `top node` and
/// `top pod`. The shared port serves no node's stats, and a device that is
/// gone is said to be at once.
#[test]
fn kubectl_top_shows_edge_nodes_and_pods_through_a_real_metrics_server() {
    use support::k8s::{
        Kubectl, MetricsServer, kubectl_or_skip, kubectl_rows, metrics_server_or_skip,
    };
    let test = "kubectl_top_shows_edge_nodes_and_pods_through_a_real_metrics_server";
    let Some(bin) = kubectl_or_skip(test) else {
        return;
    };
    let Some(ms_bin) = metrics_server_or_skip(test) else {
        return;
    };
    let ip = match support::k8s::host_ipv4() {
        Ok(ip) => ip,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{test}: {why}"),
        Err(why) => return support::skip_test(test, &why),
    };
    // The apiserver's node proxy refuses loopback addresses: the bridge
    // advertises (and listens on) this machine's own.
    let mut w = World::start_with(
        &["edge-a"],
        vec!["--advertise-address".into(), ip.to_string()],
        vec![],
    );
    let node = w.wait_node_ready("edge-a");
    let port = node
        .status
        .as_ref()
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port)
        .expect("daemonEndpoints");
    assert_ne!(
        port, w.bridge.kubelet_port as i32,
        "the Node has a kubelet port of its own"
    );
    w.create(
        &w.pods(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "meter"},
            "spec": wasm_pod_spec(&w.image, &["ticker", "0", "50"], json!({"nodeName": "edge-a"})),
        }),
    );
    w.wait_or_dump("meter Running and Ready", || {
        w.rt.block_on(w.pods().get_opt("meter"))
            .ok()
            .flatten()
            .filter(pod_ready)
    });
    let kubectl = Kubectl::new(&bin, &w.cp.kubeconfig);

    // The kubelet's endpoints, through the apiserver's node proxy.
    let text = kubectl.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/edge-a/proxy/metrics/resource",
    ]);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(sample("node_cpu_usage_seconds_total ") > 0.0, "{text}");
    assert!(sample("node_memory_working_set_bytes ") > 0.0, "{text}");
    let labels = "{container=\"main\",namespace=\"default\",pod=\"meter\"}";
    // A Wasm module's memory is its linear memory: at least one 64 KiB page.
    assert!(
        sample(&format!("container_memory_working_set_bytes{labels}")) >= 65536.0,
        "{text}"
    );
    assert!(sample(&format!("container_cpu_usage_seconds_total{labels}")) >= 0.0);
    assert!(
        text.contains("# TYPE pod_cpu_usage_seconds_total counter"),
        "{text}"
    );
    let summary: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/edge-a/proxy/stats/summary",
    ]))
    .expect("summary json");
    assert_eq!(summary["node"]["nodeName"], "edge-a", "{summary}");
    assert!(summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0));
    let pod = summary["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["podRef"]["name"] == "meter"))
        .unwrap_or_else(|| panic!("meter in {summary}"));
    assert_eq!(pod["podRef"]["namespace"], "default");
    assert_eq!(pod["containers"][0]["name"], "main");
    assert!(
        pod["memory"]["workingSetBytes"].as_u64() >= Some(65536),
        "{pod}"
    );

    // The shared port is every Node's, so it serves no node's stats.
    let (kubelet_cert, kubelet_key) = (
        w.cp.certs.kubelet_client_cert.clone(),
        w.cp.certs.kubelet_client_key.clone(),
    );
    let (code, body) = kubelet_get(&w, &(kubelet_cert, kubelet_key), "/stats/summary");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("daemonEndpoints"), "{body}");

    // A stock metrics-server, and `kubectl top`.
    let ms = MetricsServer::start(&w.cp, &ms_bin, ip);
    kubectl.ok(&["apply", "-f", &ms.manifest.to_string_lossy()]);
    // `kubectl top KIND NAME` once metrics-server has two samples of it.
    let top = |kind: &str, name: &str| {
        w.wait_or_dump(&format!("kubectl top {kind} {name}"), || {
            ms.assert_running();
            let out = kubectl.run(&["top", kind, name, "--no-headers"]);
            out.status
                .success()
                .then(|| kubectl_rows(&String::from_utf8_lossy(&out.stdout)))
        })
    };
    // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
    let top_node = top("node", "edge-a");
    assert_eq!(top_node[0][0], "edge-a", "{top_node:?}");
    assert!(top_node[0][1].ends_with('m'), "{top_node:?}");
    assert!(top_node[0][3].ends_with("Mi"), "{top_node:?}");
    // NAME CPU(cores) MEMORY(bytes)
    let top_pod = top("pod", "meter");
    assert_eq!(top_pod[0][0], "meter", "{top_pod:?}");
    assert!(top_pod[0][1].ends_with('m'), "{top_pod:?}");
    assert!(top_pod[0][2].ends_with("Mi"), "{top_pod:?}");
    drop(ms);

    // A device that is gone: the bridge says so at once.
    w.agents.get_mut("edge-a").expect("agent").0.kill9();
    let mut last = String::new();
    let said = support::poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let out = kubectl.run(&["get", "--raw", "/api/v1/nodes/edge-a/proxy/stats/summary"]);
        last = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success()
            && last
                .contains("Error from server (ServiceUnavailable): node edge-a is not connected"))
        .then_some(())
    });
    assert!(
        said.is_some(),
        "kubectl get --raw of a gone device's stats: {last}"
    );
}

/// A Kubernetes quantity of bytes (`1180Ki`, `2Mi`, `1500k`, `65536`).
fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(factor)
}

/// HPA on an edge Deployment: a stock metrics-server reads the Wasm pods'
/// memory through the bridge's kubelet API, kube-controller-manager's
/// HorizontalPodAutoscaler (autoscaling/v2, a memory `AverageValue` below
/// what one replica holds: its linear memory, at least one 64 KiB page)
/// reads it through metrics.k8s.io, and scales the Deployment up; the new
/// replicas run on the device. Memory, not CPU: the guests idle.
#[test]
fn a_horizontal_pod_autoscaler_scales_an_edge_deployment_on_memory() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use support::k8s::{MetricsServer, metrics_server_or_skip};
    let test = "a_horizontal_pod_autoscaler_scales_an_edge_deployment_on_memory";
    let Some(ms_bin) = metrics_server_or_skip(test) else {
        return;
    };
    let ip = match support::k8s::host_ipv4() {
        Ok(ip) => ip,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{test}: {why}"),
        Err(why) => return support::skip_test(test, &why),
    };
    let w = World::start_with(
        &["edge-a"],
        vec!["--advertise-address".into(), ip.to_string()],
        vec![],
    );
    w.wait_node_ready("edge-a");
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), "default");
    w.create(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "hog"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "hog"}},
                "template": {
                    "metadata": {"labels": {"app": "hog"}},
                    "spec": wasm_pod_spec(&w.image, &["ticker", "0", "1000"], json!({})),
                },
            },
        }),
    );
    w.wait_or_dump("one hog pod Running and Ready", || {
        let pods = w.list_pods("app=hog");
        (pods.len() == 1 && pods.iter().all(pod_ready)).then_some(())
    });

    let ms = MetricsServer::start(&w.cp, &ms_bin, ip);
    apply_file(&w.rt, &w.admin, &ms.manifest);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(w.admin.clone(), "default");
    w.create(
        &hpas,
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "hog"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hog"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [{
                    "type": "Resource",
                    "resource": {
                        "name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "32Ki"},
                    },
                }],
            },
        }),
    );

    // The HPA reads the pods' memory and asks for the most replicas it may.
    let status = w.wait_or_dump("the HPA scales hog to 3", || {
        ms.assert_running();
        let hpa = w.rt.block_on(hpas.get("hog")).ok()?;
        let st = hpa.status?;
        (st.desired_replicas == 3 && st.current_metrics.as_ref().is_some_and(|m| !m.is_empty()))
            .then_some(st)
    });
    let metrics = status.current_metrics.expect("currentMetrics");
    let memory = metrics
        .iter()
        .find_map(|m| m.resource.as_ref().filter(|r| r.name == "memory"))
        .unwrap_or_else(|| panic!("a memory metric in {metrics:?}"));
    let average = memory
        .current
        .average_value
        .as_ref()
        .and_then(|q| quantity_bytes(&q.0))
        .unwrap_or_else(|| panic!("an averageValue in {memory:?}"));
    assert!(average >= 64 << 10, "one Wasm page at least: {memory:?}");
    let conditions = status.conditions.unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "ScalingActive" && c.status == "True"),
        "{conditions:?}"
    );

    // The Deployment grew, and its new replicas run on the device.
    let d = w.rt.block_on(deployments.get("hog")).expect("hog");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    let pods = w.wait_or_dump("3 hog pods Running and Ready on edge-a", || {
        let pods = w.list_pods("app=hog");
        (pods.len() == 3 && pods.iter().all(pod_ready)).then_some(pods)
    });
    for p in &pods {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert_eq!(node, Some("edge-a"), "{:?}", p.metadata.name);
    }
    let rescaled = w.wait_or_dump("the HPA's SuccessfulRescale event", || {
        w.events_of("hog")
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SuccessfulRescale"))
    });
    assert!(
        rescaled
            .message
            .as_deref()
            .is_some_and(|m| m.contains("New size: 3") && m.contains("memory")),
        "{rescaled:?}"
    );
}

/// A world with a Wasm node `edge-w` and a node `edge-c` whose agent runs
/// containers in a containerd of the test's own; the kubectl to drive it.
/// None (the skip said) without kubectl or root.
fn world_with_containers(
    test: &str,
) -> Option<(World, support::cri::Containerd, support::k8s::Kubectl)> {
    use support::cri::{Containerd, cri_tests_can_run};
    use support::k8s::{Kubectl, kubectl_or_skip};
    let bin = kubectl_or_skip(test)?;
    if !cri_tests_can_run(test) {
        return None;
    }
    let containerd = Containerd::start();
    let mut w = World::start(&["edge-w"]);
    let dir = w._data.path().join("edge-c");
    let mut args = containerd.agent_args();
    args.extend(["--set".into(), "node.heartbeat_ms=500".into()]);
    let agent = Agent::start(AgentOpts {
        node: "edge-c".into(),
        broker_url: Some(w.mqtt.url()),
        data_dir: dir.clone(),
        extra_args: args,
        env: test_agent_env(),
    });
    w.agents.insert("edge-c".into(), (agent, dir));
    w.wait_node_ready("edge-c");
    w.wait_node_ready("edge-w");
    let kubectl = Kubectl::new(&bin, &w.cp.kubeconfig);
    Some((w, containerd, kubectl))
}

/// A busybox pod on `edge-c` running `command`.
fn busybox_pod(name: &str, command: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "edge-c",
            "automountServiceAccountToken": false,
            "tolerations": [
                {"key": "kedge.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            ],
            "containers": [{
                "name": "main", "image": support::cri::BUSYBOX, "imagePullPolicy": "Never",
                "command": command,
            }],
        },
    })
}

impl World {
    /// A Deployment `name` of one replica of `spec`, its pods labelled
    /// `app: name`; its pod once Running and Ready.
    fn deploy_one(&self, name: &str, spec: serde_json::Value) -> Pod {
        let deployments: Api<Deployment> = Api::namespaced(self.admin.clone(), "default");
        self.create(
            &deployments,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
                },
            }),
        );
        self.wait_or_dump(&format!("the {name} pod Running and Ready"), || {
            let pods = self.list_pods(&format!("app={name}"));
            (pods.len() == 1 && pods.iter().all(pod_ready)).then(|| pods[0].clone())
        })
    }

    fn wait_pod_ready(&self, pod: &str) {
        self.wait_or_dump(&format!("{pod} Running and Ready"), || {
            self.rt
                .block_on(self.pods().get_opt(pod))
                .ok()
                .flatten()
                .filter(pod_ready)
        });
    }
}

/// `kubectl exec`, `attach` and `cp` on edge pods through a real
/// apiserver and a real kubectl: the apiserver upgrades to SPDY toward the
/// bridge's kubelet API, the bridge opens an exec stream to the device,
/// which connects to the real containerd's streaming server (CRI `Exec`,
/// `Attach`), and the session runs end to end: stdout, stderr, the exit
/// code, stdin, a terminal of the user's size, the container's own output
/// for attach, files both ways for cp. A command that does not exist, a
/// Wasm container and a user without `pods/exec` are refused with what
/// happened.
#[test]
fn kubectl_exec_runs_commands_in_edge_containers() {
    let test = "kubectl_exec_runs_commands_in_edge_containers";
    let Some((w, containerd, kubectl)) = world_with_containers(test) else {
        return;
    };
    w.create(&w.pods(), busybox_pod("box", &["sleep", "3600"]));
    w.create(
        &w.pods(),
        busybox_pod(
            "talker",
            &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
        ),
    );
    w.create(
        &w.pods(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "wasm"},
            "spec": wasm_pod_spec(&w.image, &["ticker", "0", "50"], json!({"nodeName": "edge-w"})),
        }),
    );
    w.wait_pod_ready("box");
    w.wait_pod_ready("talker");
    w.wait_pod_ready("wasm");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // Output and success.
    let out = kubectl.run(&["exec", "box", "--", "echo", "hello from the edge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from the edge\n");

    // stdout and stderr apart, and the exit code as kubectl's own.
    let out = kubectl.run(&[
        "exec",
        "box",
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        text(&out.stderr).starts_with("err\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("command terminated with exit code 3"),
        "{}",
        text(&out.stderr)
    );

    // Bytes that are not text, and more than one frame's worth.
    let out = kubectl.run(&["exec", "box", "--", "sh", "-c", "head -c 200000 /dev/zero"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 200_000);
    assert!(out.stdout.iter().all(|b| *b == 0));

    // A command that does not exist.
    let out = kubectl.run(&["exec", "box", "--", "no-such-command"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );

    // stdin: read to its end by the command, 1 MiB of it.
    let out = kubectl.run_with_input(
        &["exec", "-i", "box", "--", "tr", "a-z", "A-Z"],
        b"hello stdin\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "HELLO STDIN\n");
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = kubectl.run_with_input(&["exec", "-i", "box", "--", "sha256sum"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(support::sha256_hex(&input).as_str()),
        "the command read exactly the input"
    );

    // A terminal: the command sees a TTY of the user's size (kubectl sends
    // it on the resize stream, which may come after the command started:
    // it waits for it, as a kubelet's would), and the exit code still
    // comes through.
    let wait_for_size =
        "tty; until stty size | grep -qv '^0 0$'; do sleep 0.1; done; stty size; exit 4";
    let out = kubectl.run_in_terminal(
        &["exec", "-it", "box", "--", "sh", "-c", wait_for_size],
        33,
        111,
    );
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/"), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("33 111"), "{shown}{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{shown}");

    // attach: the container's own output, as it comes.
    let mut attach = kubectl.spawn(&["attach", "talker", "-c", "main"]);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        attach.stdout.take().expect("stdout"),
    ));
    let first = lines.next().expect("a line").expect("utf-8");
    assert_eq!(first, "tick");
    let second = lines.next().expect("another line").expect("utf-8");
    assert_eq!(second, "tick");
    let _ = attach.kill();
    let _ = attach.wait();

    // cp: a file in and back out (tar through exec's stdin and stdout).
    let local = w._data.path().join("to-the-edge.bin");
    std::fs::write(&local, &input).expect("write");
    kubectl.ok(&["cp", &local.display().to_string(), "box:/tmp/copied.bin"]);
    let out = kubectl.ok(&["exec", "box", "--", "sha256sum", "/tmp/copied.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(support::sha256_hex(&input).as_str())
    );
    let back = w._data.path().join("from-the-edge.bin");
    kubectl.ok(&["cp", "box:/tmp/copied.bin", &back.display().to_string()]);
    assert!(
        std::fs::read(&back).expect("copied back") == input,
        "cp back"
    );

    // The kubelet's `/run` (a POST, `cmd` split at spaces), as the
    // apiserver calls it (its node proxy refuses the loopback address these
    // Nodes have): the output, or a 500 with the exit code.
    let apiserver = (
        w.cp.certs.kubelet_client_cert.clone(),
        w.cp.certs.kubelet_client_key.clone(),
    );
    let run = "/run/default/box/main?cmd=echo%20run%20works";
    assert_eq!(
        kubelet_request(&w, &apiserver, "POST", run),
        (200, "run works\n".to_string())
    );
    let (code, body) = kubelet_request(&w, &apiserver, "POST", "/run/default/box/main?cmd=false");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("exited with 1"), "{body}");
    let (code, _) = kubelet_request(&w, &apiserver, "GET", run);
    assert_eq!(code, 405, "a run is a POST");

    // A Wasm container runs inside the agent: no exec there.
    let out = kubectl.run(&["exec", "wasm", "--", "ls"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("WebAssembly"),
        "{}",
        text(&out.stderr)
    );

    // A user who may read pods but has no RBAC for pods/exec.
    kubectl.ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    kubectl.ok(&[
        "create",
        "rolebinding",
        "alice-reads",
        "--role=pod-reader",
        "--user=alice",
    ]);
    let out = kubectl.run(&["--as=alice", "exec", "box", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot create resource \"pods/exec\""),
        "{}",
        text(&out.stderr)
    );

    // The audit line: who, which pod, which command.
    let log = w.bridge.log();
    assert!(
        log.lines()
            .any(|l| l.contains("exec") && l.contains("box") && l.contains("no-such-command")),
        "no audit line for the exec in the bridge's log"
    );
    drop(w);
    drop(containerd);
}

/// `kubectl port-forward` to an edge container pod through a real
/// apiserver (SPDY tunnelled in WebSocket from kubectl, SPDY to the bridge)
/// and the device's stream to the pod's address: an HTTP download of
/// 10 MB and a 10 MB echo both ways arrive whole; a port nothing listens
/// on is refused with the device's error.
#[test]
fn kubectl_port_forward_carries_http_and_bytes_both_ways_to_an_edge_pod() {
    use sha2::{Digest, Sha256};
    use std::io::{BufRead, Read, Write};
    let test = "kubectl_port_forward_carries_http_and_bytes_both_ways_to_an_edge_pod";
    let Some((w, containerd, kubectl)) = world_with_containers(test) else {
        return;
    };
    const SIZE: usize = 10 * 1024 * 1024;
    w.create(
        &w.pods(),
        busybox_pod(
            "web",
            &[
                "sh",
                "-c",
                // The file appears whole (a rename), once httpd listens:
                // the container is Ready as soon as it runs, before then.
                "mkdir -p /www && head -c 10485760 /dev/urandom > /www/big.part && httpd -p 8080 -h /www && mv /www/big.part /www/big && exec nc -ll -p 9000 -e cat",
            ],
        ),
    );
    w.wait_pod_ready("web");
    // Once the file is there (a digest read while `head` still wrote it
    // once differed from the download's).
    let want = wait_until("the pod's /www/big written", LONG, || {
        let out = kubectl.run(&["exec", "web", "--", "sha256sum", "/www/big"]);
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .expect("sha256sum")
                .to_string()
        })
    });

    // kubectl picks the local ports and says which.
    let mut pf = kubectl.spawn(&["port-forward", "pod/web", ":8080", ":9000", ":9999"]);
    let mut lines = std::io::BufReader::new(pf.stdout.take().expect("stdout")).lines();
    let mut local = BTreeMap::new();
    while local.len() < 3 {
        let line = lines
            .next()
            .expect("kubectl port-forward said which ports")
            .expect("read kubectl's stdout");
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
            && let Some((l, r)) = rest.split_once(" -> ")
        {
            local.insert(r.trim().to_string(), l.parse::<u16>().expect("local port"));
        }
    }
    let connect = |remote: &str| {
        std::net::TcpStream::connect(("127.0.0.1", local[remote])).expect("connect to kubectl")
    };

    // HTTP through it: the file, whole.
    let mut http = connect("8080");
    http.write_all(b"GET /big HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = Vec::new();
    http.read_to_end(&mut response).expect("response");
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header")
        + 4;
    assert!(
        response.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&response[..body_at])
    );
    assert_eq!(response.len() - body_at, SIZE);
    assert_eq!(hex::encode(Sha256::digest(&response[body_at..])), want);

    // 10 MB both ways through the echo server, at once.
    let sent: Vec<u8> = (0..SIZE).map(|_| fastrand::u8(..)).collect();
    let echo = connect("9000");
    let mut writer = echo.try_clone().expect("clone");
    let to_send = sent.clone();
    let send = std::thread::spawn(move || {
        writer.write_all(&to_send).expect("send");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
    });
    let mut got = Vec::with_capacity(SIZE);
    (&echo)
        .take(SIZE as u64)
        .read_to_end(&mut got)
        .expect("echo");
    send.join().expect("sender");
    assert_eq!(got.len(), SIZE);
    assert!(got == sent, "the echo differs from what was sent");

    // Nothing listens on 9999: the connection ends and kubectl says why.
    let mut refused = connect("9999");
    refused
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut nothing = Vec::new();
    let _ = refused.read_to_end(&mut nothing);
    assert!(nothing.is_empty());
    let _ = pf.kill();
    let out = pf.wait_with_output().expect("kubectl port-forward output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connection refused") || stderr.contains("Connection refused"),
        "{stderr}"
    );
    drop(w);
    drop(containerd);
}
