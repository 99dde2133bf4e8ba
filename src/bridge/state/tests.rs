use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::model::convert::NoResolver;
use crate::model::{
    NodeCondition, NodeConditionType, NodeInfo, NodeResources, PodPhase, RestartPolicy,
};

const NOW: u64 = 1_767_225_600_000;

/// A resolver over fixed maps (ConfigMaps and Secrets by "ns/name").
#[derive(Default)]
struct Fixed {
    cms: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Resolver for Fixed {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.cms.get(&format!("{namespace}/{name}")).cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(&format!("{namespace}/{name}")).cloned()
    }
}

fn settings() -> Settings {
    Settings::new(
        Topics::new("kedge/v1"),
        KubeletEndpoint {
            address: "10.0.0.9".into(),
            port: 10250,
        },
    )
}

fn node_status(name: &str, online: bool, heartbeat_ms: u64) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        online,
        heartbeat_ms,
        info: NodeInfo {
            architecture: "arm64".into(),
            operating_system: "linux".into(),
            ..Default::default()
        },
        capacity: NodeResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pods: 10,
            ephemeral_storage_bytes: 1 << 32,
        },
        allocatable: NodeResources::default(),
        conditions: if online {
            vec![NodeCondition {
                kind: NodeConditionType::Ready,
                status: true,
                reason: "KedgeAgentReady".into(),
                message: "ok".into(),
                last_transition_ms: NOW,
                last_heartbeat_ms: heartbeat_ms,
            }]
        } else {
            vec![]
        },
        addresses: vec![],
        pod_count: 0,
        labels: Default::default(),
        sealing_key: Some(device_key().public().to_bytes()),
        data: None,
    }
}

/// gw1's sealing key (every test device reports it).
fn device_key() -> crate::seal::KeyPair {
    static KEY: std::sync::OnceLock<crate::seal::KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| crate::seal::KeyPair::generate().expect("key"))
        .clone()
}

fn pod(name: &str, uid: &str, node: &str, extra_spec: serde_json::Value) -> Arc<Pod> {
    let mut spec = serde_json::json!({
        "nodeName": node,
        "runtimeClassName": "kedge-wasm",
        "containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1},
            "spec": spec,
        }))
        .expect("valid pod"),
    )
}

fn deleting(p: &Pod) -> Arc<Pod> {
    let mut p = p.clone();
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1).expect("ts"),
    ));
    Arc::new(p)
}

fn report(uid: &str, phase: PodPhase) -> PodStatus {
    PodStatus {
        namespace: "default".into(),
        name: "web".into(),
        uid: uid.into(),
        observed_generation: 1,
        phase,
        conditions: vec![],
        reason: None,
        message: None,
        start_time_ms: Some(NOW),
        host_ip: Some("192.168.1.5".into()),
        pod_ip: Some("192.168.1.5".into()),
        init_container_statuses: vec![],
        container_statuses: vec![],
    }
}

/// A bridge that knows device gw1 (alive) and has synced both sides.
fn synced_bridge() -> Bridge {
    let mut b = Bridge::new(settings());
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    b.handle(
        BridgeEvent::PodsSynced { present_uids: None },
        NOW,
        &NoResolver,
    );
    b
}

/// The desired specs and tombstones published (indexes aside).
fn publishes(actions: &[Action]) -> Vec<(&str, &[u8])> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } if topic.contains("/desired/") => {
                Some((topic.as_str(), payload.as_slice()))
            }
            _ => None,
        })
        .collect()
}

/// The desired indexes published: (topic, index).
fn indexes(actions: &[Action]) -> Vec<(&str, DesiredIndex)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } if topic.contains("/index/") => Some((
                topic.as_str(),
                crate::wire::decode_as::<crate::model::DesiredIndex>(payload)
                    .expect("a desired index")
                    .1,
            )),
            _ => None,
        })
        .collect()
}

/// A published spec that carries Secrets: sealed, opened with `key`.
fn sealed_spec_of(key: &crate::seal::KeyPair, (topic, payload): (&str, &[u8])) -> PodSpec {
    let (_, sealed) =
        crate::wire::decode_as::<crate::model::SealedPod>(payload).expect("a sealed spec");
    crate::seal::open_pod(key, topic, &sealed, crate::wire::SCHEMA_VERSION)
        .expect("opens with the device key")
}

fn spec_of(payload: &[u8]) -> PodSpec {
    crate::wire::decode_as::<crate::model::PodSpec>(payload)
        .expect("a desired spec")
        .1
}

#[test]
fn first_online_status_creates_node_status_connected_and_lease() {
    let mut b = Bridge::new(settings());
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    assert!(
        matches!(&a[0], Action::EnsureNode { name, labels } if name == "gw1" && labels["kubernetes.io/arch"] == "arm64")
    );
    assert!(matches!(&a[1], Action::NodeStatus { name, .. } if name == "gw1"));
    assert!(
        matches!(&a[2], Action::Connected { body, .. } if body["status"]["conditions"][0]["status"] == "True")
    );
    assert!(matches!(&a[3], Action::RenewLease { name, .. } if name == "gw1"));
    assert!(b.is_alive("gw1"));
    // Read while the bridge starts (retained): no event. A device that
    // comes up once it runs: an Event on the Node, as the kubelet says it.
    b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw2".into(),
            status: node_status("gw2", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    assert!(
        a.iter().any(
            |x| matches!(x, Action::Event(e) if e.involved_kind == "Node"
            && e.reason == "NodeReady" && e.message == "Node gw2 status is now: NodeReady")
        ),
        "{a:?}"
    );
    // Rebooted (a new boot id): a Warning, as the kubelet reports it.
    let mut rebooted = node_status("gw1", true, NOW + 1_000);
    rebooted.info.boot_id = "boot-2".into();
    let mut before = node_status("gw1", true, NOW + 500);
    before.info.boot_id = "boot-1".into();
    for (status, now) in [(before, NOW + 500), (rebooted, NOW + 1_000)] {
        let a = b.handle(
            BridgeEvent::Node {
                node: "gw1".into(),
                status,
            },
            now,
            &NoResolver,
        );
        let reboots: Vec<&str> = a
            .iter()
            .filter_map(|x| match x {
                Action::Event(e) if e.reason == "Rebooted" => Some(e.message.as_str()),
                _ => None,
            })
            .collect();
        if now == NOW + 1_000 {
            assert_eq!(reboots, vec!["Node gw1 has been rebooted, boot id: boot-2"]);
        } else {
            assert!(reboots.is_empty(), "a first boot id is no reboot: {a:?}");
        }
    }
}

/// The kubelet port in a Node status action.
fn status_port(a: &[Action], node: &str) -> Option<u64> {
    a.iter().find_map(|x| match x {
        Action::NodeStatus { name, body } if name == node => {
            body["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()
        }
        _ => None,
    })
}

#[test]
fn each_device_node_gets_a_kubelet_port_of_its_own_and_a_busy_one_is_skipped() {
    let mut s = settings();
    s.node_ports = Some(10_300..=10_302);
    let mut b = Bridge::new(s);
    let online = |b: &mut Bridge, n: &str| {
        b.handle(
            BridgeEvent::Node {
                node: n.into(),
                status: node_status(n, true, NOW),
            },
            NOW,
            &NoResolver,
        )
    };
    let a = online(&mut b, "gw1");
    // The port is served before the Node names it.
    assert!(
        matches!(&a[0], Action::ServeNode { name, port } if name == "gw1" && *port == 10_300),
        "{a:?}"
    );
    assert!(matches!(&a[1], Action::EnsureNode { .. }));
    assert_eq!(status_port(&a, "gw1"), Some(10_300));
    let a = online(&mut b, "gw2");
    assert_eq!(status_port(&a, "gw2"), Some(10_301));
    // The port is in use by another program: the next one, and the Node
    // status says so.
    let a = b.handle(
        BridgeEvent::ServeFailed {
            node: "gw2".into(),
            port: 10_301,
        },
        NOW,
        &NoResolver,
    );
    assert!(
        matches!(&a[0], Action::ServeNode { name, port } if name == "gw2" && *port == 10_302),
        "{a:?}"
    );
    assert_eq!(status_port(&a, "gw2"), Some(10_302));
    // The range is used up: the shared port, and no ServeNode.
    let a = online(&mut b, "gw3");
    assert!(
        !a.iter().any(|x| matches!(x, Action::ServeNode { .. })),
        "{a:?}"
    );
    assert_eq!(status_port(&a, "gw3"), Some(10_250));
    // A Node deleted by hand comes back with the same port.
    let a = b.handle(
        BridgeEvent::NodeObjectDeleted("gw1".into()),
        NOW,
        &NoResolver,
    );
    assert_eq!(status_port(&a, "gw1"), Some(10_300));
    // Without a range, every Node has the shared port and nothing is served.
    let mut b = Bridge::new(settings());
    let a = online(&mut b, "gw1");
    assert!(!a.iter().any(|x| matches!(x, Action::ServeNode { .. })));
    assert_eq!(status_port(&a, "gw1"), Some(10_250));
}

#[test]
fn heartbeats_renew_the_lease_every_10s_and_status_only_on_change() {
    let mut b = synced_bridge();
    // A heartbeat 5 s later: nothing changed, lease not due.
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW + 5_000),
        },
        NOW + 5_000,
        &NoResolver,
    );
    assert!(a.is_empty(), "{a:?}");
    let a = b.handle(BridgeEvent::Tick, NOW + 9_000, &NoResolver);
    assert!(a.is_empty(), "{a:?}");
    let a = b.handle(BridgeEvent::Tick, NOW + 10_000, &NoResolver);
    assert_eq!(
        a,
        vec![Action::RenewLease {
            name: "gw1".into(),
            now_ms: NOW + 10_000
        }]
    );
    // A capacity change is written at once.
    let mut s = node_status("gw1", true, NOW + 11_000);
    s.capacity.pods = 20;
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: s,
        },
        NOW + 11_000,
        &NoResolver,
    );
    assert!(matches!(&a[..], [Action::NodeStatus { .. }]), "{a:?}");
}

/// The data path's counters change with every heartbeat: they are the
/// bridge's metrics, never a write of the Node.
#[test]
fn data_counters_are_metrics_not_node_writes() {
    let mut b = synced_bridge();
    assert_eq!(b.data_statuses().count(), 0);
    let mut s = node_status("gw1", true, NOW + 5_000);
    s.data = Some(Box::new(crate::model::DataPathStatus {
        received: 7,
        sent: 5,
        queued: 2,
        ..Default::default()
    }));
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: s,
        },
        NOW + 5_000,
        &NoResolver,
    );
    assert!(a.is_empty(), "{a:?}");
    let statuses: Vec<(&str, u64)> = b.data_statuses().map(|(n, d)| (n, d.sent)).collect();
    assert_eq!(statuses, [("gw1", 5)]);
    let text = crate::bridge::data_metrics::render(b.data_statuses());
    assert!(
        text.contains("kedge_data_queued_messages{node=\"gw1\"} 2\n"),
        "{text}"
    );
}

#[test]
fn last_will_turns_connected_false_at_once_and_stops_the_lease() {
    let mut b = synced_bridge();
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", false, 0),
        },
        NOW + 1_000,
        &NoResolver,
    );
    assert!(
        matches!(&a[..], [Action::Event(e), Action::Connected { body, .. }]
            if e.reason == "NodeNotReady"
            && body["status"]["conditions"][0]["status"] == "False"
            && body["status"]["conditions"][0]["reason"] == "DeviceOffline"),
        "{a:?}"
    );
    assert!(!b.is_alive("gw1"));
    let a = b.handle(BridgeEvent::Tick, NOW + 60_000, &NoResolver);
    assert!(
        !a.iter().any(|x| matches!(x, Action::RenewLease { .. })),
        "no lease while offline: {a:?}"
    );
}

#[test]
fn silent_device_times_out() {
    let mut b = synced_bridge();
    let a = b.handle(BridgeEvent::Tick, NOW + 40_001, &NoResolver);
    assert!(
        a.iter().any(|x| matches!(x, Action::Connected { body, .. }
            if body["status"]["conditions"][0]["reason"] == "HeartbeatTimeout")),
        "{a:?}"
    );
    assert!(!a.iter().any(|x| matches!(x, Action::RenewLease { .. })));
}

#[test]
fn node_deleted_by_hand_is_recreated_while_alive() {
    let mut b = synced_bridge();
    let a = b.handle(
        BridgeEvent::NodeObjectDeleted("gw1".into()),
        NOW + 1,
        &NoResolver,
    );
    assert!(matches!(&a[0], Action::EnsureNode { name, .. } if name == "gw1"));
    assert!(a.iter().any(|x| matches!(x, Action::NodeStatus { .. })));
    assert!(a.iter().any(|x| matches!(x, Action::RenewLease { .. })));
    assert!(a.iter().any(|x| matches!(x, Action::Connected { .. })));
    // Unknown nodes (not devices) are left alone.
    assert!(
        b.handle(
            BridgeEvent::NodeObjectDeleted("other".into()),
            NOW,
            &NoResolver
        )
        .is_empty()
    );
}

#[test]
fn nothing_is_published_before_both_sides_synced() {
    let mut b = Bridge::new(settings());
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    assert!(publishes(&a).is_empty());
    let a = b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    assert!(publishes(&a).is_empty());
    let a = b.handle(
        BridgeEvent::PodsSynced { present_uids: None },
        NOW,
        &NoResolver,
    );
    let p = publishes(&a);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "kedge/v1/gw1/desired/default/web");
    let spec = spec_of(p[0].1);
    assert_eq!(spec.uid, "u1");
    assert_eq!(spec.generation, 1);
    assert_eq!(spec.labels[BRIDGE_SPEC_LABEL], "true");
}

#[test]
fn pods_of_other_nodes_are_ignored() {
    let mut b = synced_bridge();
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "worker-1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn unchanged_pods_are_not_resent_and_changes_bump_the_generation() {
    let mut b = synced_bridge();
    let p = pod("web", "u1", "gw1", serde_json::json!({}));
    let a = b.handle(BridgeEvent::PodApplied(p.clone()), NOW, &NoResolver);
    let first = spec_of(publishes(&a)[0].1);
    // The broker echoes our retained spec back.
    b.handle(
        BridgeEvent::Desired {
            node: "gw1".into(),
            pod: PodKey::new("default", "web"),
            spec: Some(first.clone()),
            sealed: false,
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(BridgeEvent::PodApplied(p), NOW, &NoResolver);
    assert!(publishes(&a).is_empty(), "{a:?}");
    let changed = pod(
        "web",
        "u1",
        "gw1",
        serde_json::json!({"restartPolicy": "Never"}),
    );
    let a = b.handle(BridgeEvent::PodApplied(changed), NOW, &NoResolver);
    let second = spec_of(publishes(&a)[0].1);
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(second.restart_policy, RestartPolicy::Never);
}

/// A resolver whose every object is still being fetched.
struct AllPending;

impl Resolver for AllPending {
    fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn pending(&self, _: bool, _: &str, _: &str) -> bool {
        true
    }
}

#[test]
fn a_pod_waits_without_a_word_while_its_secret_is_being_read() {
    let mut b = synced_bridge();
    let p = pod(
        "web",
        "u1",
        "gw1",
        serde_json::json!({"containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}),
    );
    // Not read yet: no spec, no event, no refusal.
    let a = b.handle(BridgeEvent::PodApplied(p), NOW, &AllPending);
    assert!(a.is_empty(), "{a:?}");
    // Read: the pod is decided.
    let mut fixed = Fixed::default();
    fixed.secrets.insert(
        "default/db".into(),
        BTreeMap::from([("password".to_string(), b"s3cret".to_vec())]),
    );
    let db = ObjRef {
        kind: RefKind::Secret,
        namespace: "default".into(),
        name: "db".into(),
    };
    assert_eq!(b.referenced().collect::<Vec<_>>(), vec![&db]);
    let a = b.handle(BridgeEvent::ObjectChanged(db), NOW, &fixed);
    let s = sealed_spec_of(&device_key(), publishes(&a)[0]);
    assert_eq!(s.containers[0].env[0].name, "PASSWORD");
}

#[test]
fn configmap_change_resends_the_pod_and_missing_mandatory_blocks_it() {
    let mut b = synced_bridge();
    let p = pod(
        "web",
        "u1",
        "gw1",
        serde_json::json!({"containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}}]}]}),
    );
    // Missing ConfigMap: not sent, a Warning event and a condition naming it.
    let none = Fixed::default();
    let a = b.handle(BridgeEvent::PodApplied(p.clone()), NOW, &none);
    assert!(publishes(&a).is_empty());
    let ev = a
        .iter()
        .find_map(|x| match x {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .expect("an event");
    assert_eq!(ev.reason, "CreateContainerConfigError");
    assert!(
        ev.message.contains("configmap \"cfg\" not found"),
        "{}",
        ev.message
    );
    let refused = |a: &[Action]| {
        a.iter()
            .find_map(|x| match x {
                Action::PodStatus {
                    owner: PodStatusOwner::Bridge,
                    body,
                    ..
                } if body["status"]["conditions"][0]["status"] == "False" => Some(body.clone()),
                _ => None,
            })
            .expect("the refusal's status")
    };
    // As the kubelet shows it: Pending, the container waiting with the reason
    // (`kubectl get pods` prints it as the STATUS).
    let body = refused(&a);
    assert_eq!(body["status"]["phase"], "Pending");
    let waiting = &body["status"]["containerStatuses"][0];
    assert_eq!(waiting["name"], "main");
    assert_eq!(
        waiting["state"]["waiting"]["reason"],
        "CreateContainerConfigError"
    );
    // The ConfigMap appears: the pod is sent.
    let mut fixed = Fixed::default();
    fixed.cms.insert(
        "default/cfg".into(),
        BTreeMap::from([("greeting".to_string(), b"hello".to_vec())]),
    );
    let cfg = ObjRef {
        kind: RefKind::ConfigMap,
        namespace: "default".into(),
        name: "cfg".into(),
    };
    let a = b.handle(BridgeEvent::ObjectChanged(cfg.clone()), NOW, &fixed);
    let s1 = spec_of(publishes(&a)[0].1);
    assert_eq!(s1.containers[0].env[0].value, "hello");
    // It changes: the pod is re-sent with the new value and a higher generation.
    fixed.cms.insert(
        "default/cfg".into(),
        BTreeMap::from([("greeting".to_string(), b"bonjour".to_vec())]),
    );
    let a = b.handle(BridgeEvent::ObjectChanged(cfg.clone()), NOW, &fixed);
    let s2 = spec_of(publishes(&a)[0].1);
    assert_eq!(s2.containers[0].env[0].value, "bonjour");
    assert_eq!(s2.generation, s1.generation + 1);
    // The device runs it; then the ConfigMap is deleted: the refused update
    // shows in the condition only, never as a phase of the running pod.
    b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: PodKey::new("default", "web"),
            seq: 1,
            status: Some(report("u1", PodPhase::Running)),
        },
        NOW,
        &fixed,
    );
    let a = b.handle(BridgeEvent::ObjectChanged(cfg), NOW, &none);
    assert!(publishes(&a).is_empty());
    let body = refused(&a);
    assert!(body["status"].get("phase").is_none(), "{body}");
    assert!(body["status"].get("containerStatuses").is_none(), "{body}");
}

#[test]
fn optional_missing_reference_does_not_block() {
    let mut b = synced_bridge();
    let p = pod(
        "web",
        "u1",
        "gw1",
        serde_json::json!({"containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "envFrom": [{"configMapRef": {"name": "absent", "optional": true}}]}]}),
    );
    let a = b.handle(BridgeEvent::PodApplied(p), NOW, &Fixed::default());
    assert_eq!(publishes(&a).len(), 1);
}

#[test]
fn unsupported_field_gets_an_event_and_condition_naming_it() {
    let mut b = synced_bridge();
    let p = pod(
        "web",
        "u1",
        "gw1",
        serde_json::json!({"securityContext": {"fsGroup": 2000}}),
    );
    let a = b.handle(BridgeEvent::PodApplied(p.clone()), NOW, &NoResolver);
    assert!(publishes(&a).is_empty());
    let ev = a
        .iter()
        .find_map(|x| match x {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .expect("an event");
    assert_eq!(ev.reason, "UnsupportedField");
    assert!(ev.message.contains("spec.securityContext.fsGroup"));
    let cond = a
        .iter()
        .find_map(|x| match x {
            Action::PodStatus { body, .. } => Some(body["status"]["conditions"][0].clone()),
            _ => None,
        })
        .expect("a condition");
    assert_eq!(cond["type"], render::ACCEPTED_CONDITION);
    assert!(
        cond["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.securityContext.fsGroup")
    );
    // The same refusal is not repeated on every update.
    let a = b.handle(BridgeEvent::PodApplied(p), NOW, &NoResolver);
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn reports_are_applied_in_seq_order_only_for_the_same_uid() {
    let mut b = synced_bridge();
    b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    let key = PodKey::new("default", "web");
    let rep = |seq, uid: &str, phase| BridgeEvent::Report {
        node: "gw1".into(),
        pod: key.clone(),
        seq,
        status: Some(report(uid, phase)),
    };
    let a = b.handle(rep(5, "u1", PodPhase::Running), NOW, &NoResolver);
    assert!(
        matches!(&a[..], [Action::PodStatus { owner: PodStatusOwner::Device, body, .. }]
        if body["status"]["phase"] == "Running" && body["status"]["podIP"] == "192.168.1.5")
    );
    // Duplicate and stale replays are dropped.
    assert!(
        b.handle(rep(5, "u1", PodPhase::Running), NOW, &NoResolver)
            .is_empty()
    );
    assert!(
        b.handle(rep(3, "u1", PodPhase::Pending), NOW, &NoResolver)
            .is_empty()
    );
    // Another instance's status is not written to this one.
    assert!(
        b.handle(rep(6, "old", PodPhase::Failed), NOW, &NoResolver)
            .is_empty()
    );
}

#[test]
fn terminal_phase_stays_terminal() {
    let mut b = synced_bridge();
    b.handle(
        BridgeEvent::PodApplied(pod(
            "web",
            "u1",
            "gw1",
            serde_json::json!({"restartPolicy": "Never"}),
        )),
        NOW,
        &NoResolver,
    );
    let key = PodKey::new("default", "web");
    let a = b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: key.clone(),
            seq: 7,
            status: Some(report("u1", PodPhase::Succeeded)),
        },
        NOW,
        &NoResolver,
    );
    assert_eq!(a.len(), 1);
    let a = b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: key,
            seq: 8,
            status: Some(report("u1", PodPhase::Running)),
        },
        NOW,
        &NoResolver,
    );
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn reconnect_resyncs_every_pod_status() {
    let mut b = synced_bridge();
    b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    let key = PodKey::new("default", "web");
    b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: key,
            seq: 5,
            status: Some(report("u1", PodPhase::Running)),
        },
        NOW,
        &NoResolver,
    );
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", false, 0),
        },
        NOW + 1,
        &NoResolver,
    );
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW + 2),
        },
        NOW + 2,
        &NoResolver,
    );
    assert!(
        a.iter().any(
            |x| matches!(x, Action::PodStatus { owner: PodStatusOwner::Device, body, .. }
            if body["status"]["phase"] == "Running")
        ),
        "{a:?}"
    );
    assert!(a.iter().any(|x| matches!(x, Action::RenewLease { .. })));
}

#[test]
fn deletion_sends_tombstone_then_deletes_with_uid_once_the_device_reports_gone() {
    let mut b = synced_bridge();
    let p = pod("web", "u1", "gw1", serde_json::json!({}));
    let key = PodKey::new("default", "web");
    let a = b.handle(BridgeEvent::PodApplied(p.clone()), NOW, &NoResolver);
    let spec = spec_of(publishes(&a)[0].1);
    b.handle(
        BridgeEvent::Desired {
            node: "gw1".into(),
            pod: key.clone(),
            spec: Some(spec),
            sealed: false,
        },
        NOW,
        &NoResolver,
    );
    b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: key.clone(),
            seq: 3,
            status: Some(report("u1", PodPhase::Running)),
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(BridgeEvent::PodApplied(deleting(&p)), NOW, &NoResolver);
    assert_eq!(
        publishes(&a),
        vec![("kedge/v1/gw1/desired/default/web", &b""[..])]
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::DeletePod { .. })),
        "still on the device"
    );
    let a = b.handle(
        BridgeEvent::Report {
            node: "gw1".into(),
            pod: key.clone(),
            seq: 0,
            status: None,
        },
        NOW,
        &NoResolver,
    );
    assert_eq!(
        a,
        vec![
            Action::DeletePod {
                pod: key,
                uid: "u1".into()
            },
            // A signing bridge clears its signed tombstone now.
            Action::ClearRetained {
                topic: "kedge/v1/gw1/desired/default/web".into()
            }
        ]
    );
}

#[test]
fn orphaned_bridge_specs_are_tombstoned_after_sync_but_not_cli_specs() {
    let mut b = Bridge::new(settings());
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    let mut ours = crate::model::samples::spec("gone", "u9", 2, RestartPolicy::Always);
    ours.labels.insert(BRIDGE_SPEC_LABEL.into(), "true".into());
    let cli = crate::model::samples::spec("manual", "u8", 1, RestartPolicy::Always);
    for s in [ours, cli] {
        b.handle(
            BridgeEvent::Desired {
                node: "gw1".into(),
                pod: s.key(),
                spec: Some(s),
                sealed: false,
            },
            NOW,
            &NoResolver,
        );
    }
    let a = b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    assert!(publishes(&a).is_empty(), "pods not listed yet: {a:?}");
    let a = b.handle(
        BridgeEvent::PodsSynced { present_uids: None },
        NOW,
        &NoResolver,
    );
    assert_eq!(
        publishes(&a),
        vec![("kedge/v1/gw1/desired/default/gone", &b""[..])]
    );
}

#[test]
fn finished_pods_are_never_started_again() {
    let mut b = synced_bridge();
    let mut p = (*pod(
        "job",
        "u1",
        "gw1",
        serde_json::json!({"restartPolicy": "Never"}),
    ))
    .clone();
    p.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Succeeded".into()),
        ..Default::default()
    });
    let a = b.handle(BridgeEvent::PodApplied(Arc::new(p)), NOW, &NoResolver);
    assert!(publishes(&a).is_empty(), "{a:?}");
}

#[test]
fn device_events_become_kubernetes_events_once() {
    let mut b = synced_bridge();
    let ev = Event {
        namespace: Some("default".into()),
        pod: Some("web".into()),
        container: Some("main".into()),
        kind: EventType::Warning,
        reason: "BackOff".into(),
        message: "Back-off restarting failed container main".into(),
        timestamp_ms: NOW,
    };
    let a = b.handle(
        BridgeEvent::DeviceEvent {
            node: "gw1".into(),
            seq: 4,
            event: ev.clone(),
        },
        NOW,
        &NoResolver,
    );
    assert!(
        matches!(&a[..], [Action::Event(k)] if k.reason == "BackOff" && k.involved_kind == "Pod")
    );
    let a = b.handle(
        BridgeEvent::DeviceEvent {
            node: "gw1".into(),
            seq: 4,
            event: ev,
        },
        NOW,
        &NoResolver,
    );
    assert!(a.is_empty());
}

#[test]
fn allow_list_limits_the_devices() {
    let mut s = settings();
    s.admit.allow = Some(["gw2".to_string()].into_iter().collect());
    let mut b = Bridge::new(s);
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    assert!(a.is_empty());
    assert_eq!(b.device_count(), 0);
}

#[test]
fn image_pull_secrets_are_resolved_and_resent_when_they_change() {
    let mut b = synced_bridge();
    let p = pod(
        "app",
        "u1",
        "gw1",
        serde_json::json!({"runtimeClassName": null, "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "main", "image": "registry.example/app:1"}]}),
    );
    let cred = |user: &str| {
        BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            format!(r#"{{"auths":{{"registry.example":{{"username":"{user}","password":"p"}}}}}}"#)
                .into_bytes(),
        )])
    };
    let mut fixed = Fixed::default();
    fixed
        .secrets
        .insert("default/regcred".into(), cred("alice"));
    let a = b.handle(BridgeEvent::PodApplied(p), NOW, &fixed);
    let s1 = sealed_spec_of(&device_key(), publishes(&a)[0]);
    assert_eq!(s1.image_pull_secrets.len(), 1);
    assert!(
        s1.image_pull_secrets[0].contains("alice"),
        "{:?}",
        s1.image_pull_secrets
    );
    fixed.secrets.insert("default/regcred".into(), cred("bob"));
    let a = b.handle(
        BridgeEvent::ObjectChanged(ObjRef {
            kind: RefKind::Secret,
            namespace: "default".into(),
            name: "regcred".into(),
        }),
        NOW,
        &fixed,
    );
    let s2 = sealed_spec_of(&device_key(), publishes(&a)[0]);
    assert!(s2.image_pull_secrets[0].contains("bob"));
    assert_eq!(s2.generation, s1.generation + 1);
}

#[test]
fn the_desired_index_lists_the_bridge_specs_of_each_node_after_them() {
    let mut b = synced_bridge();
    // A spec of kedge apply on the same node is not the bridge's to list.
    let cli = crate::model::samples::spec("manual", "u8", 1, RestartPolicy::Always);
    let a = b.handle(
        BridgeEvent::Desired {
            node: "gw1".into(),
            pod: cli.key(),
            spec: Some(cli),
            sealed: false,
        },
        NOW,
        &NoResolver,
    );
    assert_eq!(
        indexes(&a),
        vec![("kedge/v1/gw1/index/bridge", DesiredIndex::default())]
    );
    let web = pod("web", "u1", "gw1", serde_json::json!({}));
    let a = b.handle(BridgeEvent::PodApplied(web.clone()), NOW, &NoResolver);
    // The spec first, then the index that lists it.
    let topics: Vec<&str> = a
        .iter()
        .filter_map(|x| match x {
            Action::Publish { topic, .. } => Some(topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        topics,
        [
            "kedge/v1/gw1/desired/default/web",
            "kedge/v1/gw1/index/bridge"
        ]
    );
    let spec = spec_of(publishes(&a)[0].1);
    let listed = &indexes(&a)[0].1;
    assert_eq!(
        listed.pods,
        vec![IndexEntry {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            generation: spec.generation,
        }]
    );
    // The echo of our own spec changes nothing: no second index.
    let a = b.handle(
        BridgeEvent::Desired {
            node: "gw1".into(),
            pod: spec.key(),
            spec: Some(spec.clone()),
            sealed: false,
        },
        NOW,
        &NoResolver,
    );
    assert!(indexes(&a).is_empty(), "{a:?}");
    // A second pod: one index listing both.
    let db = pod("db", "u2", "gw1", serde_json::json!({}));
    let a = b.handle(BridgeEvent::PodApplied(db), NOW, &NoResolver);
    let names: Vec<String> = indexes(&a)[0]
        .1
        .pods
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, ["db", "web"]);
    // Deleted: the tombstone, then the index without it.
    let a = b.handle(BridgeEvent::PodApplied(deleting(&web)), NOW, &NoResolver);
    assert_eq!(
        publishes(&a),
        vec![("kedge/v1/gw1/desired/default/web", &b""[..])]
    );
    let names: Vec<String> = indexes(&a)[0]
        .1
        .pods
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, ["db"]);
    // After a reconnection (the broker may have lost everything) the index
    // goes out again.
    let a = b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    assert_eq!(indexes(&a).len(), 1, "{a:?}");
}

#[test]
fn only_devices_matching_the_node_selector_become_nodes() {
    let mut s = settings();
    s.admit.node_selector =
        Some(Selector::parse("--node-selector", "kedge.io/role=gateway").expect("selector"));
    let mut b = Bridge::new(s);
    let with = |labels: &[(&str, &str)], online: bool| {
        let mut st = node_status("gw1", online, NOW);
        st.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BridgeEvent::Node {
            node: "gw1".into(),
            status: st,
        }
    };
    // A sensor: a fleet member only, no API writes at all.
    assert!(b.handle(with(&[], true), NOW, &NoResolver).is_empty());
    assert!(
        b.handle(with(&[("kedge.io/role", "sensor")], true), NOW, &NoResolver)
            .is_empty()
    );
    assert!(b.handle(with(&[], false), NOW, &NoResolver).is_empty());
    assert_eq!(b.device_count(), 0);
    assert!(
        b.handle(BridgeEvent::Tick, NOW + 20_000, &NoResolver)
            .is_empty()
    );
    // A gateway: a Node.
    let a = b.handle(
        with(&[("kedge.io/role", "gateway")], true),
        NOW + 21_000,
        &NoResolver,
    );
    assert!(matches!(&a[0], Action::EnsureNode { name, .. } if name == "gw1"));
    // Its last will carries no labels: still its Node (Connected False).
    let a = b.handle(with(&[], false), NOW + 22_000, &NoResolver);
    assert!(
        matches!(&a[..], [Action::Event(_), Action::Connected { body, .. }] if body["status"]["conditions"][0]["status"] == "False"),
        "{a:?}"
    );
    assert_eq!(b.device_count(), 1);
    // Back, relabelled: no longer a Node of this bridge.
    b.handle(
        with(&[("kedge.io/role", "sensor")], true),
        NOW + 23_000,
        &NoResolver,
    );
    assert_eq!(b.device_count(), 0);
}

#[test]
fn device_labels_go_on_the_node_except_reserved_ones_and_only_when_they_change() {
    let mut b = Bridge::new(settings());
    let with = |labels: &[(&str, &str)], hb: u64| {
        let mut st = node_status("gw1", true, hb);
        st.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BridgeEvent::Node {
            node: "gw1".into(),
            status: st,
        }
    };
    let node_labels = |a: &[Action]| -> Vec<BTreeMap<String, String>> {
        a.iter()
            .filter_map(|a| match a {
                Action::NodeLabels { labels, .. } => Some(labels.clone()),
                _ => None,
            })
            .collect()
    };
    let a = b.handle(
        with(
            &[
                ("site", "b43"),
                ("kedge.io/edge", "false"),
                ("kubernetes.io/arch", "amd64"),
                ("node-role.kubernetes.io/control-plane", ""),
                ("example.com/zone", "a"),
            ],
            NOW,
        ),
        NOW,
        &NoResolver,
    );
    let want: BTreeMap<String, String> = [("site", "b43"), ("example.com/zone", "a")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(node_labels(&a), vec![want.clone()]);
    // The EnsureNode labels stay the bridge's own.
    assert!(
        matches!(&a[0], Action::EnsureNode { labels, .. } if labels["kubernetes.io/arch"] == "arm64" && labels["kedge.io/edge"] == "true")
    );
    // A heartbeat with the same labels: nothing.
    let a = b.handle(
        with(&[("site", "b43"), ("example.com/zone", "a")], NOW + 10_000),
        NOW + 10_000,
        &NoResolver,
    );
    assert!(node_labels(&a).is_empty());
    // One dropped: the whole set again (its field manager removes the other).
    let a = b.handle(
        with(&[("site", "b43")], NOW + 20_000),
        NOW + 20_000,
        &NoResolver,
    );
    assert_eq!(node_labels(&a).len(), 1);
    assert_eq!(node_labels(&a)[0].len(), 1);
    // A device without labels sends none on first sight.
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw2".into(),
            status: node_status("gw2", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    assert!(node_labels(&a).is_empty());
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cloud labels published for each node: (topic, labels; empty = tombstone).
fn cloud_labels_published(actions: &[Action]) -> Vec<(&str, BTreeMap<String, String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } if topic.ends_with("/labels") => Some((
                topic.as_str(),
                if payload.is_empty() {
                    BTreeMap::new()
                } else {
                    wire::decode_as::<NodeLabels>(payload)
                        .expect("node labels")
                        .1
                        .labels
                },
            )),
            _ => None,
        })
        .collect()
}

fn mirrored(actions: &[Action]) -> Vec<BTreeMap<String, String>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::NodeLabels { labels, .. } => Some(labels.clone()),
            _ => None,
        })
        .collect()
}

fn node_object(name: &str, user: &[(&str, &str)]) -> BridgeEvent {
    BridgeEvent::NodeObject {
        name: name.into(),
        user_labels: labels(user),
    }
}

#[test]
fn node_labels_set_by_users_are_published_to_the_device_only_on_change() {
    let mut b = Bridge::new(settings());
    // Before the broker's retained labels are read: nothing.
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(node_object("gw1", &[("building", "b43")]), NOW, &NoResolver);
    assert!(cloud_labels_published(&a).is_empty());
    // The broker had older labels: at the barrier, the Node's replace them.
    b.handle(
        BridgeEvent::CloudLabels {
            node: "gw1".into(),
            labels: labels(&[("old", "1")]),
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw1/labels", labels(&[("building", "b43")]))]
    );
    // The echo of our own publish, and the same labels again: nothing.
    let a = b.handle(
        BridgeEvent::CloudLabels {
            node: "gw1".into(),
            labels: labels(&[("building", "b43")]),
        },
        NOW,
        &NoResolver,
    );
    assert!(cloud_labels_published(&a).is_empty());
    let a = b.handle(node_object("gw1", &[("building", "b43")]), NOW, &NoResolver);
    assert!(a.is_empty(), "{a:?}");
    // A change: the whole set.
    let a = b.handle(
        node_object("gw1", &[("building", "b43"), ("floor", "2")]),
        NOW,
        &NoResolver,
    );
    assert_eq!(
        cloud_labels_published(&a),
        vec![(
            "kedge/v1/gw1/labels",
            labels(&[("building", "b43"), ("floor", "2")])
        )]
    );
    // `kedge label node` overwrote them: the Node's users win on a Node.
    let a = b.handle(
        BridgeEvent::CloudLabels {
            node: "gw1".into(),
            labels: labels(&[("cli", "x")]),
        },
        NOW,
        &NoResolver,
    );
    assert_eq!(cloud_labels_published(&a).len(), 1);
    // All removed: an empty retained payload, once.
    let a = b.handle(node_object("gw1", &[]), NOW, &NoResolver);
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw1/labels", BTreeMap::new())]
    );
    let a = b.handle(node_object("gw1", &[]), NOW, &NoResolver);
    assert!(cloud_labels_published(&a).is_empty());
    // A Node whose device this bridge does not know (not a Node of it, or
    // another replica's): nothing.
    let a = b.handle(node_object("gw9", &[("building", "b43")]), NOW, &NoResolver);
    assert!(cloud_labels_published(&a).is_empty());
    // Its device shows up: published then.
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw9".into(),
            status: node_status("gw9", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw9/labels", labels(&[("building", "b43")]))]
    );
}

#[test]
fn the_device_label_mirror_leaves_out_the_nodes_own_labels_so_they_never_loop() {
    let mut b = synced_bridge();
    let with = |pairs: &[(&str, &str)]| {
        let mut st = node_status("gw1", true, NOW + 1_000);
        st.labels = labels(pairs);
        BridgeEvent::Node {
            node: "gw1".into(),
            status: st,
        }
    };
    let a = b.handle(with(&[("site", "b44")]), NOW + 1_000, &NoResolver);
    assert_eq!(mirrored(&a), vec![labels(&[("site", "b44")])]);
    // A user sets site=b43 on the Node: published, and the mirror lets go
    // of site (the user owns it on the Node now).
    let a = b.handle(node_object("gw1", &[("site", "b43")]), NOW, &NoResolver);
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw1/labels", labels(&[("site", "b43")]))]
    );
    assert_eq!(mirrored(&a), vec![BTreeMap::new()]);
    // The device applies it (cloud labels win) and reports the merged set:
    // the mirror does not carry it back.
    let a = b.handle(
        with(&[("site", "b43"), ("own", "1")]),
        NOW + 2_000,
        &NoResolver,
    );
    assert_eq!(mirrored(&a), vec![labels(&[("own", "1")])]);
    assert!(cloud_labels_published(&a).is_empty());
    // The user removes it: the device's own value comes back through the mirror.
    let a = b.handle(node_object("gw1", &[]), NOW, &NoResolver);
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw1/labels", BTreeMap::new())]
    );
    assert_eq!(mirrored(&a), vec![labels(&[("site", "b43"), ("own", "1")])]);
    let a = b.handle(
        with(&[("site", "b44"), ("own", "1")]),
        NOW + 3_000,
        &NoResolver,
    );
    assert_eq!(mirrored(&a), vec![labels(&[("site", "b44"), ("own", "1")])]);
}

#[test]
fn a_deleted_node_takes_its_users_labels_with_it() {
    let mut b = synced_bridge();
    b.handle(node_object("gw1", &[("building", "b43")]), NOW, &NoResolver);
    b.handle(
        BridgeEvent::NodeObjectDeleted("gw1".into()),
        NOW,
        &NoResolver,
    );
    // Made again by the bridge, bare: the device's cloud labels go.
    let a = b.handle(node_object("gw1", &[]), NOW, &NoResolver);
    assert_eq!(
        cloud_labels_published(&a),
        vec![("kedge/v1/gw1/labels", BTreeMap::new())]
    );
}

#[test]
fn fleet_nodes_are_ready_nodes_while_the_bridge_runs_and_their_pods_are_not_device_pods() {
    let mut s = settings();
    s.fleet_nodes = vec![FleetNode::named("edge")];
    let mut b = Bridge::new(s);
    b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    b.handle(
        BridgeEvent::PodsSynced { present_uids: None },
        NOW,
        &NoResolver,
    );
    let a = b.handle(BridgeEvent::Tick, NOW, &NoResolver);
    let ensured: Vec<&BTreeMap<String, String>> = a
        .iter()
        .filter_map(|a| match a {
            Action::EnsureNode { name, labels } if name == "kedge-fleet-edge" => Some(labels),
            _ => None,
        })
        .collect();
    assert_eq!(ensured.len(), 1, "{a:?}");
    assert_eq!(ensured[0]["kedge.io/edge"], "true");
    assert_eq!(
        mirrored(&a),
        vec![labels(&[
            ("kedge.io/fleet-node", "edge"),
            ("type", "virtual-kubelet")
        ])]
    );
    let status = a
        .iter()
        .find_map(|a| match a {
            Action::NodeStatus { name, body } if name == "kedge-fleet-edge" => Some(body),
            _ => None,
        })
        .expect("node status");
    // No device yet: nothing to sum.
    assert_eq!(status["status"]["allocatable"]["pods"], "0");
    assert!(a.iter().any(|a| matches!(a, Action::RenewLease { .. })));
    // Alive tick after tick, past the heartbeat timeout.
    for i in 1..=60 {
        b.handle(BridgeEvent::Tick, NOW + i * 1_000, &NoResolver);
    }
    assert!(b.is_alive("kedge-fleet-edge"));
    // A pod bound to it is no device's: nothing published, no status.
    let a = b.handle(
        BridgeEvent::PodApplied(pod("p", "u1", "kedge-fleet-edge", serde_json::json!({}))),
        NOW + 61_000,
        &NoResolver,
    );
    assert!(a.is_empty(), "{a:?}");
}

/// A fleet node stands for the devices its selector matches, Nodes or not
/// (`--node-selector`) and of any shard: its capacity is theirs summed,
/// online devices only, and follows their labels.
#[test]
fn a_fleet_nodes_capacity_is_the_sum_over_its_matching_devices() {
    let mut s = settings();
    s.fleet_nodes = vec![FleetNode::parse("b43:site=b43").expect("valid")];
    s.admit.node_selector =
        Some(Selector::parse("--node-selector", "kedge.io/role=gateway").expect("selector"));
    s.admit.shards = Some((4, [shard_of("kedge-fleet-b43", 4)].into()));
    let mut b = Bridge::new(s);
    b.handle(BridgeEvent::MqttSynced, NOW, &NoResolver);
    b.handle(
        BridgeEvent::PodsSynced { present_uids: None },
        NOW,
        &NoResolver,
    );
    let device = |b: &mut Bridge, name: &str, site: &str, online: bool, at: u64| {
        let mut st = node_status(name, online, at);
        if online {
            st.labels = labels(&[("site", site)]);
        }
        b.handle(
            BridgeEvent::Node {
                node: name.into(),
                status: st,
            },
            at,
            &NoResolver,
        );
    };
    let fleet_status = |b: &mut Bridge, at: u64| {
        b.handle(BridgeEvent::Tick, at, &NoResolver)
            .into_iter()
            .find_map(|a| match a {
                Action::NodeStatus { name, body } if name == "kedge-fleet-b43" => Some(body),
                _ => None,
            })
    };
    for (i, name) in ["gw1", "gw2", "gw3"].iter().enumerate() {
        device(&mut b, name, "b43", true, NOW + i as u64);
    }
    device(&mut b, "gw4", "b44", true, NOW);
    let st = fleet_status(&mut b, NOW + 1_000).expect("a status");
    // Three devices of 2 CPUs, 1 GiB and 10 pods each.
    assert_eq!(st["status"]["capacity"]["cpu"], "6");
    assert_eq!(st["status"]["capacity"]["memory"], (3u64 << 30).to_string());
    assert_eq!(st["status"]["capacity"]["pods"], "30");
    let ready = &st["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(
        ready["message"],
        "3 of 3 devices online; the kedge bridge serves this fleet node"
    );
    // Unchanged: not written again.
    assert!(fleet_status(&mut b, NOW + 2_000).is_none());
    // One goes offline, one leaves site b43.
    device(&mut b, "gw2", "", false, NOW + 2_500);
    device(&mut b, "gw3", "b44", true, NOW + 2_500);
    let st = fleet_status(&mut b, NOW + 3_000).expect("a new status");
    assert_eq!(st["status"]["capacity"]["cpu"], "2");
    assert_eq!(
        st["status"]["conditions"][0]["message"],
        "1 of 2 devices online; the kedge bridge serves this fleet node"
    );
    // None of them is a Node (no gateway), yet all count.
    assert_eq!(b.device_count(), 1, "only the fleet node is a Node here");
}

/// The pod of the sealing tests: its env takes a Secret's value.
fn secret_pod(uid: &str) -> Arc<Pod> {
    pod(
        "db",
        uid,
        "gw1",
        serde_json::json!({"containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}),
    )
}

fn db_secret(value: &str) -> Fixed {
    let mut fixed = Fixed::default();
    fixed.secrets.insert(
        "default/db".into(),
        BTreeMap::from([("password".to_string(), value.as_bytes().to_vec())]),
    );
    fixed
}

fn gw1_reports_key(b: &mut Bridge, key: Option<&crate::seal::KeyPair>, now: u64) -> Vec<Action> {
    let mut status = node_status("gw1", true, now);
    status.sealing_key = key.map(|k| k.public().to_bytes());
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status,
        },
        now,
        &db_secret("hunter2-hunter2"),
    )
}

/// A spec that carries a Secret's value goes out only sealed to the
/// device's key: no value in the payload; one without Secrets in clear.
#[test]
fn a_spec_with_secret_values_is_sealed_to_the_device_key() {
    let mut b = synced_bridge();
    let a = b.handle(
        BridgeEvent::PodApplied(secret_pod("u1")),
        NOW,
        &db_secret("hunter2-hunter2"),
    );
    let published = publishes(&a);
    assert_eq!(published.len(), 1, "{a:?}");
    assert!(
        !published[0].1.windows(7).any(|w| w == b"hunter2"),
        "the value is not in the payload"
    );
    let spec = sealed_spec_of(&device_key(), published[0]);
    assert_eq!(spec.containers[0].env[0].value, "hunter2-hunter2");
    assert_eq!(spec.generation, 1);
    // The index lists it like any spec.
    let index = indexes(&a);
    assert_eq!(index[0].1.pods[0].uid, "u1");
    // Unchanged: not sent again.
    let a = b.handle(
        BridgeEvent::PodApplied(secret_pod("u1")),
        NOW,
        &db_secret("hunter2-hunter2"),
    );
    assert!(publishes(&a).is_empty(), "{a:?}");
    // A pod without Secrets goes in clear.
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u2", "gw1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    assert_eq!(spec_of(publishes(&a)[0].1).uid, "u2");
}

/// No key reported: the pod waits with a condition and one event that say
/// why, and nothing goes out; the key arrives: sealed to it. The device is
/// re-keyed: sent again, sealed to the new key, as the next generation.
#[test]
fn a_pod_with_secrets_waits_for_the_sealing_key_and_follows_a_re_key() {
    let mut b = synced_bridge();
    gw1_reports_key(&mut b, None, NOW);
    let a = b.handle(
        BridgeEvent::PodApplied(secret_pod("u1")),
        NOW,
        &db_secret("hunter2-hunter2"),
    );
    assert!(publishes(&a).is_empty(), "{a:?}");
    let reasons: Vec<&str> = a
        .iter()
        .filter_map(|x| match x {
            Action::Event(e) => Some(e.reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![NO_SEALING_KEY]);
    let cond = a
        .iter()
        .find_map(|x| match x {
            Action::PodStatus { body, .. } => Some(body["status"]["conditions"][0].clone()),
            _ => None,
        })
        .expect("a condition");
    assert_eq!(cond["reason"], NO_SEALING_KEY);
    assert!(
        cond["message"]
            .as_str()
            .unwrap_or("")
            .contains("has not reported a sealing key"),
        "{cond}"
    );
    // Said once.
    let a = b.handle(
        BridgeEvent::PodApplied(secret_pod("u1")),
        NOW,
        &db_secret("hunter2-hunter2"),
    );
    assert!(a.is_empty(), "{a:?}");

    let a = gw1_reports_key(&mut b, Some(&device_key()), NOW + 1);
    let first = sealed_spec_of(&device_key(), publishes(&a)[0]);
    assert_eq!(first.generation, 1);

    let new_key = crate::seal::KeyPair::generate().expect("key");
    let a = gw1_reports_key(&mut b, Some(&new_key), NOW + 2);
    let published = publishes(&a);
    assert_eq!(published.len(), 1, "{a:?}");
    let again = sealed_spec_of(&new_key, published[0]);
    assert_eq!(
        again.generation, 2,
        "the next generation: the device adopts it"
    );
    let (_, sealed) =
        crate::wire::decode_as::<crate::model::SealedPod>(published[0].1).expect("sealed");
    assert!(
        crate::seal::open_pod(
            &device_key(),
            published[0].0,
            &sealed,
            crate::wire::SCHEMA_VERSION
        )
        .is_err()
    );
}

/// A restarted bridge reads back a sealed spec it cannot open: it sends it
/// again once, as the next generation (the device adopts an unchanged one
/// without a restart), and not on every resync; a sealed spec it made
/// itself in this process is kept as it knows it.
#[test]
fn a_sealed_spec_read_back_after_a_restart_is_sent_again_once() {
    let mut b = Bridge::new(settings());
    b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true, NOW),
        },
        NOW,
        &NoResolver,
    );
    let topic = Topics::new("kedge/v1").desired("gw1", &PodKey::new("default", "db"));
    let mut before = crate::model::samples::spec("db", "u1", 4, RestartPolicy::Always);
    before
        .containers
        .push(crate::model::samples::container("main"));
    before
        .labels
        .insert(BRIDGE_SPEC_LABEL.into(), "true".into());
    let sealed = crate::seal::seal_pod(&device_key().public(), &topic, &before).expect("seals");
    let read_back = BridgeEvent::Desired {
        node: "gw1".into(),
        pod: PodKey::new("default", "db"),
        spec: Some(sealed.stub(&PodKey::new("default", "db"), 4)),
        sealed: true,
    };
    b.handle(read_back, NOW, &NoResolver);
    let secret = db_secret("hunter2-hunter2");
    b.handle(BridgeEvent::PodApplied(secret_pod("u1")), NOW, &secret);
    b.handle(BridgeEvent::MqttSynced, NOW, &secret);
    let a = b.handle(BridgeEvent::PodsSynced { present_uids: None }, NOW, &secret);
    let published = publishes(&a);
    assert_eq!(published.len(), 1, "{a:?}");
    assert_eq!(sealed_spec_of(&device_key(), published[0]).generation, 5);
    // The broker gives back what this bridge just sealed: kept, not resent.
    let (_, now_sealed) =
        crate::wire::decode_as::<crate::model::SealedPod>(published[0].1).expect("sealed");
    b.handle(
        BridgeEvent::Desired {
            node: "gw1".into(),
            pod: PodKey::new("default", "db"),
            spec: Some(now_sealed.stub(&PodKey::new("default", "db"), 5)),
            sealed: true,
        },
        NOW,
        &NoResolver,
    );
    let a = b.handle(BridgeEvent::MqttSynced, NOW, &db_secret("hunter2-hunter2"));
    assert!(publishes(&a).is_empty(), "{a:?}");
}

/// When a device's last will arrives, its Wasm pods (which ran inside the
/// agent) are known stopped: not Ready, containers waiting `DeviceOffline`,
/// the phase kept; a container pod, which may still run, is left alone.
#[test]
fn a_devices_last_will_marks_its_wasm_pods_not_ready_at_once() {
    let mut b = synced_bridge();
    let running = |uid: &str, name: &str| {
        let mut s = report(uid, PodPhase::Running);
        s.name = name.into();
        s.conditions = vec![crate::model::PodCondition {
            kind: crate::model::PodConditionType::Ready,
            status: true,
            last_transition_ms: NOW,
            reason: None,
            message: None,
        }];
        s.container_statuses = vec![crate::model::ContainerStatus {
            name: "main".into(),
            image: "m".into(),
            image_id: String::new(),
            container_id: "c1".into(),
            ready: true,
            started: true,
            restart_count: 0,
            state: ContainerState::Running { started_at_ms: NOW },
            last_state: None,
        }];
        s
    };
    b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", serde_json::json!({}))),
        NOW,
        &NoResolver,
    );
    b.handle(
        BridgeEvent::PodApplied(pod(
            "ctr",
            "u2",
            "gw1",
            serde_json::json!({"runtimeClassName": null, "containers": [{"name": "main", "image": "busybox"}]}),
        )),
        NOW,
        &NoResolver,
    );
    for (name, uid) in [("web", "u1"), ("ctr", "u2")] {
        b.handle(
            BridgeEvent::Report {
                node: "gw1".into(),
                pod: PodKey::new("default", name),
                seq: if name == "web" { 1 } else { 2 },
                status: Some(running(uid, name)),
            },
            NOW,
            &NoResolver,
        );
    }
    let a = b.handle(
        BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", false, 0),
        },
        NOW + 1_000,
        &NoResolver,
    );
    let statuses: Vec<(&PodKey, &serde_json::Value)> = a
        .iter()
        .filter_map(|x| match x {
            Action::PodStatus {
                pod,
                owner: PodStatusOwner::Device,
                body,
            } => Some((pod, body)),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len(), 1, "only the Wasm pod: {a:?}");
    let (pod_key, body) = statuses[0];
    assert_eq!(pod_key.name, "web");
    assert_eq!(body["status"]["phase"], "Running", "the phase is kept");
    assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(body["status"]["conditions"][0]["status"], "False");
    assert_eq!(body["status"]["conditions"][0]["reason"], "DeviceOffline");
    let c = &body["status"]["containerStatuses"][0];
    assert_eq!(c["ready"], false);
    assert_eq!(c["state"]["waiting"]["reason"], "DeviceOffline");
    assert!(c["lastState"]["running"].is_object(), "{c}");
}

/// The service account token volume and mounts the apiserver injects into
/// a pod that does not set automountServiceAccountToken: false.
fn with_injected_token(label: &str) -> serde_json::Value {
    let mount = serde_json::json!({"name": "kube-api-access-q2x7k",
        "mountPath": crate::model::convert::TOKEN_MOUNT_PATH, "readOnly": true});
    serde_json::json!({
        "volumes": [{"name": "kube-api-access-q2x7k", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}],
        "containers": [{"name": "main", "image": "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "args": [label], "volumeMounts": [mount]}],
    })
}

fn token_events(actions: &[Action]) -> Vec<&KubeEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) if e.reason == "ServiceAccountTokenNotMounted" => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn the_injected_token_volume_is_left_out_with_one_warning_per_pod() {
    let mut b = synced_bridge();
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", with_injected_token("a"))),
        NOW,
        &NoResolver,
    );
    let sent = publishes(&a);
    assert_eq!(sent.len(), 1, "{a:?}");
    let spec = spec_of(sent[0].1);
    assert!(spec.volumes.is_empty());
    assert!(spec.containers[0].volume_mounts.is_empty());
    let events = token_events(&a);
    assert_eq!(events.len(), 1, "{a:?}");
    let ev = events[0];
    assert_eq!(ev.kind, EventType::Warning);
    assert_eq!(
        (
            ev.involved_kind,
            ev.involved_name.as_str(),
            ev.involved_uid.as_str()
        ),
        ("Pod", "web", "u1")
    );
    assert_eq!(
        ev.message,
        "the pod runs without its service account token at /var/run/secrets/kubernetes.io/serviceaccount: kedge nodes do not mount API tokens (set automountServiceAccountToken: false to silence this)"
    );

    // Evaluated again (the same pod, then an update that changes the
    // spec): the warning is not repeated.
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", with_injected_token("a"))),
        NOW,
        &NoResolver,
    );
    assert!(token_events(&a).is_empty(), "{a:?}");
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u1", "gw1", with_injected_token("b"))),
        NOW,
        &NoResolver,
    );
    assert_eq!(publishes(&a).len(), 1, "{a:?}");
    assert!(token_events(&a).is_empty(), "{a:?}");

    // A new pod of the same name (a new uid) is told again.
    let a = b.handle(
        BridgeEvent::PodApplied(pod("web", "u2", "gw1", with_injected_token("b"))),
        NOW,
        &NoResolver,
    );
    let events = token_events(&a);
    assert_eq!(events.len(), 1, "{a:?}");
    assert_eq!(events[0].involved_uid, "u2");
}
