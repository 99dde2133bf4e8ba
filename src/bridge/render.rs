//! Kubernetes objects the bridge writes, rendered from device reports as
//! server-side-apply bodies (JSON). Pure: no I/O, no clock.
//!
//! Server-side apply is what keeps the bridge from wiping what others write:
//! node and pod conditions are lists keyed by `type`, so an apply owns only
//! the entries it sends. The `kedge.io/Connected` condition is applied by a
//! field manager of its own ([`CONNECTED_MANAGER`]) so that turning it False
//! does not drop the other fields the bridge owns.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{
    ContainerState, ContainerStatus, NodeResources, NodeStatus, PodConditionType, PodPhase,
    PodStatus,
};

/// Field manager of everything the bridge applies except the Connected condition.
pub const MANAGER: &str = "kedge-bridge";
/// Field manager of the `kedge.io/Connected` node condition.
pub const CONNECTED_MANAGER: &str = "kedge-bridge-connected";
/// Field manager of the device's own labels on its Node.
pub const DEVICE_LABELS_MANAGER: &str = "kedge-device-labels";
/// Label and taint key that marks a kedge node.
pub const EDGE_LABEL: &str = "kedge.io/edge";
/// The node condition that says at once whether the device's MQTT session is up.
pub const CONNECTED_CONDITION: &str = "kedge.io/Connected";
/// The pod condition that says whether the bridge could send the pod to its device.
pub const ACCEPTED_CONDITION: &str = "kedge.io/Accepted";
/// Namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of node Leases (the kubelet's value).
pub const LEASE_DURATION_SECS: u32 = 40;

/// Where the apiserver reaches the bridge's kubelet API for this bridge's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletEndpoint {
    /// The address put in the Node's `InternalIP`.
    pub address: String,
    pub port: u16,
}

/// RFC 3339 with second precision (`metav1.Time`).
pub fn time(ms: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_second((ms / 1000) as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 with microseconds (`metav1.MicroTime`).
pub fn micro_time(ms: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

fn cpu_quantity(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

fn resources(r: &NodeResources) -> Value {
    json!({
        "cpu": cpu_quantity(r.cpu_millis),
        "memory": r.memory_bytes.to_string(),
        "pods": r.pods.to_string(),
        "ephemeral-storage": r.ephemeral_storage_bytes.to_string(),
    })
}

fn bool_word(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The labels the bridge puts on a device's Node.
pub fn node_labels(status: &NodeStatus) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let arch = if status.info.architecture.is_empty() {
        "unknown".to_string()
    } else {
        status.info.architecture.clone()
    };
    let os = if status.info.operating_system.is_empty() {
        "linux".to_string()
    } else {
        status.info.operating_system.clone()
    };
    l.insert("kubernetes.io/arch".into(), arch);
    l.insert("kubernetes.io/os".into(), os);
    l.insert("kubernetes.io/hostname".into(), status.name.clone());
    l.insert(EDGE_LABEL.into(), "true".into());
    l
}

/// Whether a device may set this label on its Node: not the bridge's own
/// labels, and nothing under `kubernetes.io` or `k8s.io` (as the
/// NodeRestriction admission plugin keeps kubelets from labelling
/// themselves into roles: a device must not attract workloads it was not
/// given).
pub fn device_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let reserved = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    !(reserved("kubernetes.io") || reserved("k8s.io") || key == EDGE_LABEL)
}

/// The device's own labels (its node status) that go on its Node, beside
/// the bridge's [`node_labels`].
pub fn device_labels(status: &NodeStatus) -> BTreeMap<String, String> {
    status
        .labels
        .iter()
        .filter(|(k, _)| device_may_set(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The field managers of the bridge itself: labels only they own on a Node
/// are the bridge's (its own, or the device-label mirror), not the user's.
pub const BRIDGE_MANAGERS: [&str; 3] = [MANAGER, CONNECTED_MANAGER, DEVICE_LABELS_MANAGER];

/// The labels users set on a device's Node (`kubectl label node gw1
/// building=b43`), which the bridge publishes to the device as its cloud
/// labels. A label is the user's when some field manager other than the
/// bridge's own ([`BRIDGE_MANAGERS`]) owns it in `metadata.managedFields`,
/// and it is not one a device may never set ([`device_may_set`]:
/// `kubernetes.io/*`, `k8s.io/*`, `kedge.io/edge`, which covers every label
/// of [`node_labels`]). A label only the device-label mirror owns came from
/// the device, so the two directions never loop.
pub fn user_labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    let Some(labels) = &meta.labels else {
        return BTreeMap::new();
    };
    let mut owned: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for entry in meta.managed_fields.iter().flatten() {
        if entry
            .manager
            .as_deref()
            .is_some_and(|m| BRIDGE_MANAGERS.contains(&m))
        {
            continue;
        }
        let Some(fields) = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:metadata"))
            .and_then(|m| m.get("f:labels"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        owned.extend(fields.keys().filter_map(|k| k.strip_prefix("f:")));
    }
    labels
        .iter()
        .filter(|(k, _)| owned.contains(k.as_str()) && device_may_set(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The server-side apply body of a device's labels on its Node.
pub fn node_labels_apply(name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    })
}

/// The Node object created for a device: labels and the edge taint.
pub fn node_object(name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [edge_taint()]},
    })
}

/// `kedge.io/edge=true:NoSchedule`.
pub fn edge_taint() -> Value {
    json!({"key": EDGE_LABEL, "value": "true", "effect": "NoSchedule"})
}

/// The Node status the bridge applies for an online device: conditions from
/// the device, nodeInfo, capacity, allocatable, the bridge as the address and
/// kubelet endpoint. Without a device Ready condition, Ready is False.
pub fn node_status(
    status: &NodeStatus,
    endpoint: &KubeletEndpoint,
    kubelet_version: &str,
) -> Value {
    let mut conditions: Vec<Value> = status
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.kind.as_str(),
                "status": bool_word(c.status),
                "reason": c.reason,
                "message": c.message,
                "lastHeartbeatTime": time(c.last_heartbeat_ms.max(status.heartbeat_ms)),
                "lastTransitionTime": time(c.last_transition_ms),
            })
        })
        .collect();
    if !status
        .conditions
        .iter()
        .any(|c| c.kind == crate::model::NodeConditionType::Ready)
    {
        conditions.push(json!({
            "type": "Ready",
            "status": "False",
            "reason": "KedgeAgentNotReady",
            "message": "the device reported no Ready condition",
            "lastHeartbeatTime": time(status.heartbeat_ms),
            "lastTransitionTime": time(status.heartbeat_ms),
        }));
    }
    let i = &status.info;
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": status.name},
        "status": {
            "conditions": conditions,
            // Both point at the bridge: the apiserver dials the first address
            // type of its --kubelet-preferred-address-types it finds, and the
            // default order starts with Hostname. The device's own addresses
            // would not serve the kubelet API.
            "addresses": [
                {"type": "InternalIP", "address": endpoint.address},
                {"type": "Hostname", "address": endpoint.address},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": endpoint.port}},
            "capacity": resources(&status.capacity),
            "allocatable": resources(&status.allocatable),
            "nodeInfo": {
                "machineID": status.info.machine_id,
                "systemUUID": status.info.system_uuid,
                "bootID": status.info.boot_id,
                "kernelVersion": i.kernel_version,
                "osImage": i.os_image,
                "containerRuntimeVersion": i.container_runtime_version,
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": i.operating_system,
                "architecture": i.architecture,
            },
        },
    })
}

/// The `kedge.io/Connected` condition, applied by [`CONNECTED_MANAGER`].
pub fn connected_status(
    name: &str,
    connected: bool,
    reason: &str,
    message: &str,
    transition_ms: u64,
    now_ms: u64,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{
            "type": CONNECTED_CONDITION,
            "status": bool_word(connected),
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": time(now_ms),
            "lastTransitionTime": time(transition_ms),
        }]},
    })
}

/// The node's Lease, held by the node, owned by the Node object.
pub fn lease(name: &str, node_uid: &str, now_ms: u64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": name,
                "uid": node_uid,
            }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECS,
            "renewTime": micro_time(now_ms),
        },
    })
}

fn container_state(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        }
        ContainerState::Running { started_at_ms } => {
            json!({"running": {"startedAt": time(*started_at_ms)}})
        }
        ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at_ms,
            finished_at_ms,
        } => {
            let mut t = json!({
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": time(*started_at_ms),
                "finishedAt": time(*finished_at_ms),
            });
            if let Some(m) = message {
                t["message"] = json!(m);
            }
            json!({"terminated": t})
        }
    }
}

fn container_status(c: &ContainerStatus) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": container_state(&c.state),
        "lastState": c.last_state.as_ref().map(container_state).unwrap_or_else(|| json!({})),
    });
    if !c.container_id.is_empty() {
        v["containerID"] = json!(if c.container_id.contains("://") {
            c.container_id.clone()
        } else {
            format!("kedge://{}", c.container_id)
        });
    }
    v
}

/// The pod status the bridge applies from a device report. `metadata.uid`
/// makes the apply a precondition on the pod instance. PodScheduled belongs
/// to the scheduler and is never sent.
pub fn pod_status(uid: &str, s: &PodStatus) -> Value {
    let conditions: Vec<Value> = s
        .conditions
        .iter()
        .filter(|c| c.kind != PodConditionType::PodScheduled)
        .map(|c| {
            let mut v = json!({
                "type": c.kind.as_str(),
                "status": bool_word(c.status),
                "lastTransitionTime": time(c.last_transition_ms),
            });
            if let Some(r) = &c.reason {
                v["reason"] = json!(r);
            }
            if let Some(m) = &c.message {
                v["message"] = json!(m);
            }
            v
        })
        .collect();
    let mut status = json!({
        "phase": s.phase.as_str(),
        "conditions": conditions,
        "containerStatuses": s.container_statuses.iter().map(container_status).collect::<Vec<_>>(),
    });
    if !s.init_container_statuses.is_empty() {
        status["initContainerStatuses"] = json!(
            s.init_container_statuses
                .iter()
                .map(container_status)
                .collect::<Vec<_>>()
        );
    }
    if let Some(r) = &s.reason {
        status["reason"] = json!(r);
    }
    if let Some(m) = &s.message {
        status["message"] = json!(m);
    }
    if let Some(t) = s.start_time_ms {
        status["startTime"] = json!(time(t));
    }
    if let Some(ip) = s.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
        status["hostIP"] = json!(ip);
        status["hostIPs"] = json!([{"ip": ip}]);
    }
    if let Some(ip) = s.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": s.name, "namespace": s.namespace, "uid": uid},
        "status": status,
    })
}

/// The status of a pod the bridge cannot send to its device: Pending, with
/// the `kedge.io/Accepted` condition False naming the field or reference,
/// and each container (`waiting`: name, image) waiting with the reason. For
/// a pod the device runs (`waiting` None) only the condition: a refused
/// update never rewrites the phase of a running pod.
pub fn refused_pod_status(
    namespace: &str,
    name: &str,
    uid: &str,
    reason: &str,
    message: &str,
    now_ms: u64,
    waiting: Option<&[(String, String)]>,
) -> Value {
    let condition = json!({
        "type": ACCEPTED_CONDITION,
        "status": "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": time(now_ms),
    });
    let status = match waiting {
        // The pod runs on the device: its phase and containers stay the
        // device's; the refused update shows only in the condition.
        None => json!({"conditions": [condition]}),
        // As the kubelet shows a container it cannot create: waiting with
        // the reason, which `kubectl get pods` prints as the STATUS.
        Some(containers) => json!({
            "phase": PodPhase::Pending.as_str(),
            "conditions": [condition],
            "containerStatuses": containers.iter().map(|(c, image)| json!({
                "name": c,
                "image": image,
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            })).collect::<Vec<_>>(),
        }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "status": status,
    })
}

/// The `kedge.io/Accepted` condition once the pod was sent.
pub fn accepted_pod_status(namespace: &str, name: &str, uid: &str, now_ms: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "status": {"conditions": [{
            "type": ACCEPTED_CONDITION,
            "status": "True",
            "reason": "SentToDevice",
            "lastTransitionTime": time(now_ms),
        }]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeAddress, NodeCondition, NodeConditionType, NodeInfo, PodCondition};

    fn device() -> NodeStatus {
        NodeStatus {
            name: "gw1".into(),
            online: true,
            heartbeat_ms: 1_767_225_600_000,
            info: NodeInfo {
                architecture: "arm64".into(),
                operating_system: "linux".into(),
                kernel_version: "6.1.0".into(),
                os_image: "Debian GNU/Linux 12".into(),
                hostname: "gw1".into(),
                agent_version: "0.1.0".into(),
                container_runtime_version: "wasmtime://48".into(),
                machine_id: "0123456789abcdef0123456789abcdef".into(),
                boot_id: "5f1c2a9e-0d3b-4e6f-8a7c-9b0d1e2f3a4b".into(),
                system_uuid: "4c4c4544-004b-3110-804b-c4c04f4e3732".into(),
            },
            capacity: NodeResources {
                cpu_millis: 4000,
                memory_bytes: 1 << 30,
                pods: 110,
                ephemeral_storage_bytes: 1 << 34,
            },
            allocatable: NodeResources {
                cpu_millis: 3500,
                memory_bytes: 1 << 29,
                pods: 110,
                ephemeral_storage_bytes: 1 << 33,
            },
            conditions: vec![NodeCondition {
                kind: NodeConditionType::Ready,
                status: true,
                reason: "KedgeAgentReady".into(),
                message: "ready".into(),
                last_transition_ms: 1_767_225_500_000,
                last_heartbeat_ms: 1_767_225_600_000,
            }],
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                address: "192.168.1.5".into(),
            }],
            pod_count: 0,
            labels: Default::default(),
            sealing_key: None,
            data: None,
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time(1_767_225_600_123), "2026-01-01T00:00:00Z");
        assert_eq!(micro_time(1_767_225_600_123), "2026-01-01T00:00:00.123000Z");
    }

    #[test]
    fn user_labels_are_those_a_user_manager_owns_and_a_device_may_carry() {
        let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(json!({
                "name": "gw1",
                "labels": {
                    "kubernetes.io/arch": "arm64",
                    "kedge.io/edge": "true",
                    "site": "b43",
                    "building": "b43",
                    "floor": "2",
                    "node-role.kubernetes.io/edge": "",
                    "orphan": "x",
                },
                "managedFields": [
                    {"manager": "kedge-bridge", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {
                        ".": {}, "f:kubernetes.io/arch": {}, "f:kedge.io/edge": {}}}}},
                    {"manager": "kedge-device-labels", "operation": "Apply", "fieldsV1": {"f:metadata": {"f:labels": {
                        "f:site": {}, "f:floor": {}}}}},
                    {"manager": "kubectl-label", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {
                        "f:building": {}, "f:floor": {}, "f:node-role.kubernetes.io/edge": {}}}}},
                    {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:unschedulable": {}}}},
                ],
            }))
            .expect("meta");
        let l = user_labels(&meta);
        // floor: the mirror and a user both own it, so it is the user's;
        // site: the mirror's alone; the role label: reserved; orphan: nobody's.
        assert_eq!(
            l,
            BTreeMap::from([
                ("building".to_string(), "b43".to_string()),
                ("floor".to_string(), "2".to_string()),
            ])
        );
        let bare = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta::default();
        assert!(user_labels(&bare).is_empty());
    }

    #[test]
    fn node_labels_carry_the_real_architecture() {
        let l = node_labels(&device());
        assert_eq!(l["kubernetes.io/arch"], "arm64");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["kubernetes.io/hostname"], "gw1");
        assert_eq!(l[EDGE_LABEL], "true");
        let obj = node_object("gw1", &l);
        assert_eq!(obj["spec"]["taints"][0]["effect"], "NoSchedule");
        assert_eq!(obj["spec"]["taints"][0]["key"], EDGE_LABEL);
    }

    #[test]
    fn node_status_has_endpoint_capacity_and_info() {
        let ep = KubeletEndpoint {
            address: "10.0.0.9".into(),
            port: 10250,
        };
        let v = node_status(&device(), &ep, &super::super::state::kubelet_version());
        let s = &v["status"];
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(s["addresses"][0]["address"], "10.0.0.9");
        assert_eq!(s["addresses"][1]["type"], "Hostname");
        assert_eq!(s["addresses"][1]["address"], "10.0.0.9");
        assert_eq!(s["capacity"]["cpu"], "4");
        assert_eq!(s["allocatable"]["cpu"], "3500m");
        assert_eq!(s["capacity"]["memory"], "1073741824");
        assert_eq!(s["nodeInfo"]["architecture"], "arm64");
        assert_eq!(
            s["nodeInfo"]["machineID"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            s["nodeInfo"]["bootID"],
            "5f1c2a9e-0d3b-4e6f-8a7c-9b0d1e2f3a4b"
        );
        assert_eq!(
            s["nodeInfo"]["systemUUID"],
            "4c4c4544-004b-3110-804b-c4c04f4e3732"
        );
        // A version Kubernetes' own parser takes: vMAJOR.MINOR.PATCH, then
        // a pre-release of dot-separated identifiers.
        let version = s["nodeInfo"]["kubeletVersion"].as_str().expect("a string");
        let (core, pre) = version
            .strip_prefix('v')
            .and_then(|v| v.split_once('-'))
            .expect("v<core>-<pre-release>");
        assert_eq!(
            core.split('.').filter(|n| n.parse::<u32>().is_ok()).count(),
            3,
            "{version}"
        );
        assert!(pre.starts_with("kedge."), "{version}");
        assert!(
            pre.split('.').all(|id| !id.is_empty()
                && id.chars().all(|c| c.is_ascii_alphanumeric())
                && !(id.len() > 1
                    && id.starts_with('0')
                    && id.chars().all(|c| c.is_ascii_digit()))),
            "{version}"
        );
        assert_eq!(s["conditions"][0]["type"], "Ready");
        assert_eq!(s["conditions"][0]["status"], "True");
        // No Connected condition here: that one has its own field manager.
        assert!(
            s["conditions"]
                .as_array()
                .expect("list")
                .iter()
                .all(|c| c["type"] != CONNECTED_CONDITION)
        );
    }

    #[test]
    fn missing_ready_condition_is_reported_false() {
        let mut d = device();
        d.conditions.clear();
        let v = node_status(
            &d,
            &KubeletEndpoint {
                address: "a".into(),
                port: 1,
            },
            "v",
        );
        assert_eq!(v["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(v["status"]["conditions"][0]["status"], "False");
    }

    #[test]
    fn pod_status_maps_every_field() {
        let s = PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            observed_generation: 1,
            phase: PodPhase::Running,
            conditions: vec![
                PodCondition {
                    kind: PodConditionType::PodScheduled,
                    status: true,
                    last_transition_ms: 1000,
                    reason: None,
                    message: None,
                },
                PodCondition {
                    kind: PodConditionType::Ready,
                    status: true,
                    last_transition_ms: 2000,
                    reason: None,
                    message: None,
                },
            ],
            reason: None,
            message: None,
            start_time_ms: Some(1000),
            host_ip: Some("192.168.1.5".into()),
            pod_ip: Some("192.168.1.5".into()),
            init_container_statuses: vec![],
            container_statuses: vec![ContainerStatus {
                name: "main".into(),
                image: "file:///m.wasm".into(),
                image_id: "sha256:ab".into(),
                container_id: "abc".into(),
                ready: true,
                started: true,
                restart_count: 2,
                state: ContainerState::Running {
                    started_at_ms: 1500,
                },
                last_state: Some(ContainerState::Terminated {
                    exit_code: 1,
                    reason: "Error".into(),
                    message: None,
                    started_at_ms: 1000,
                    finished_at_ms: 1200,
                }),
            }],
        };
        let v = pod_status("u1", &s);
        assert_eq!(v["metadata"]["uid"], "u1");
        let st = &v["status"];
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["podIP"], "192.168.1.5");
        assert_eq!(st["podIPs"][0]["ip"], "192.168.1.5");
        assert_eq!(st["hostIPs"][0]["ip"], "192.168.1.5");
        assert_eq!(st["startTime"], "1970-01-01T00:00:01Z");
        let conds = st["conditions"].as_array().expect("list");
        assert_eq!(conds.len(), 1, "PodScheduled is the scheduler's");
        assert_eq!(conds[0]["type"], "Ready");
        let c = &st["containerStatuses"][0];
        assert_eq!(c["containerID"], "kedge://abc");
        assert_eq!(c["restartCount"], 2);
        assert_eq!(c["ready"], true);
        assert!(c["state"]["running"]["startedAt"].is_string());
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    }

    #[test]
    fn lease_is_owned_by_the_node() {
        let v = lease("gw1", "uid-1", 1_767_225_600_000);
        assert_eq!(v["metadata"]["namespace"], LEASE_NAMESPACE);
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["spec"]["holderIdentity"], "gw1");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 40);
    }
}
