//! The seed path: a pod bound to a fleet virtual node (`--fleet-node NAME`,
//! Node `kedge-fleet-NAME`) becomes a fleet deployment, as Azure IoT Edge's
//! Virtual Kubelet provider turned a Deployment's pod into one hub
//! deployment. Pure: which pods are seeds, the fleet they make (a
//! [`FleetDeploymentResource`] built from the pod, so the rest of
//! `bridge::fleets` treats it as any other), the fleet nodes' status, and
//! the pods' status. ARCHITECTURE.md, "Fleets: the seed path".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::crd::{BatchSpec, FleetDeploymentResource, FleetDeploymentSpec, IntOrString};
use super::nodes::{FleetNode, Summary};
use crate::fleet::manage;
use crate::fleet::tally::Counts;
use crate::model::selector::Selector;
use crate::model::{NodeCondition, NodeConditionType, NodeInfo, NodeStatus, PodKey};

/// The Node of fleet node `NAME` is `kedge-fleet-NAME`.
pub const NODE_PREFIX: &str = "kedge-fleet-";
/// Label of a fleet node: its name.
pub const FLEET_NODE_LABEL: &str = "kedge.io/fleet-node";
/// Required: label selector over the devices' labels.
pub const SELECTOR_ANNOTATION: &str = "kedge.io/selector";
/// Optional: the fleet deployment's priority.
pub const PRIORITY_ANNOTATION: &str = "kedge.io/priority";
/// Optional: batches in `kedge apply --batches` syntax
/// (`canary=true:100%,25%,100%`); none: every device at once.
pub const ROLLOUT_ANNOTATION: &str = "kedge.io/rollout";
/// The pod condition that carries the fleet's counts.
pub const FLEET_READY_CONDITION: &str = "kedge.io/FleetReady";
/// Set on the resource made from seed pods: the pod it came from (its
/// Events go to that pod).
pub const SEED_POD_ANNOTATION: &str = "kedge.io/seed-pod";
/// The Node name of a fleet node.
pub fn node_name(fleet_node: &str) -> String {
    format!("{NODE_PREFIX}{fleet_node}")
}

/// The labels of a fleet node's Node (beside the bridge's usual ones).
pub fn node_labels(fleet_node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (FLEET_NODE_LABEL.to_string(), fleet_node.to_string()),
        ("type".to_string(), "virtual-kubelet".to_string()),
    ])
}

/// The status the bridge reports for a fleet node while it runs: Ready,
/// with the capacity and allocatable summed over its online devices
/// ([`super::nodes`]) and how many it stands for in the message.
pub fn node_status(fleet_node: &str, devices: &Summary, now_ms: u64) -> NodeStatus {
    NodeStatus {
        name: node_name(fleet_node),
        online: true,
        heartbeat_ms: now_ms,
        info: NodeInfo {
            architecture: "virtual".into(),
            operating_system: "linux".into(),
            ..Default::default()
        },
        capacity: devices.capacity,
        allocatable: devices.allocatable,
        conditions: vec![NodeCondition {
            kind: NodeConditionType::Ready,
            status: true,
            reason: "KedgeFleetNodeReady".into(),
            message: format!(
                "{} of {} devices online; the kedge bridge serves this fleet node",
                thousands(devices.online),
                thousands(devices.devices)
            ),
            last_transition_ms: 0,
            last_heartbeat_ms: now_ms,
        }],
        addresses: vec![],
        pod_count: 0,
        labels: node_labels(fleet_node),
        sealing_key: None,
        data: None,
    }
}

/// The fleet node a pod is bound to, if it is one of `fleet_nodes`.
pub fn fleet_node_of<'a>(pod: &Pod, fleet_nodes: &'a [FleetNode]) -> Option<&'a FleetNode> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let name = node.strip_prefix(NODE_PREFIX)?;
    fleet_nodes.iter().find(|n| n.name == name)
}

/// The fleet deployment a seed pod makes: namespace and its controller's
/// name (a ReplicaSet's name less `-{pod-template-hash}`: the
/// Deployment's), or the pod's own name for a bare pod. Every pod of a
/// Deployment, of every template, makes the same fleet deployment.
pub fn fleet_key(pod: &Pod) -> Option<PodKey> {
    let meta = &pod.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let name = match controller {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(d) if !d.is_empty() => d.to_string(),
                _ => o.name.clone(),
            }
        }
        Some(o) => o.name.clone(),
        None => meta.name.clone()?,
    };
    Some(PodKey::new(ns, &name))
}

/// Why a seed pod makes no fleet deployment: the reason and the message
/// for its Event and condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRefusal {
    pub reason: &'static str,
    pub message: String,
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The FleetDeployment a seed pod stands for: `key` (from [`fleet_key`]),
/// `uid` (the fleet's, kept across its pods), the selector, priority and
/// rollout from the pod's annotations, the pod's labels, annotations and
/// spec as the template (the devices' pod is named after the fleet), with
/// the scheduling the fleet node needed removed. The devices are those
/// that match both the fleet node's selector (`node_selector`, from
/// `--fleet-node NAME:SELECTOR`) and the pod's `kedge.io/selector`; the
/// annotation is required only on a fleet node without a selector.
pub fn resource(
    key: &PodKey,
    uid: &str,
    pod: &Pod,
    node_selector: Option<&Selector>,
) -> Result<FleetDeploymentResource, SeedRefusal> {
    let invalid = |message: String| SeedRefusal {
        reason: "InvalidAnnotation",
        message,
    };
    let field = format!("metadata.annotations[{SELECTOR_ANNOTATION}]");
    let own = annotation(pod, SELECTOR_ANNOTATION);
    if let Some(own) = own {
        Selector::parse(&field, own).map_err(|e| invalid(e.to_string()))?;
    }
    // Both must hold: requirements joined by a comma.
    let selector = match (node_selector.filter(|s| !s.is_everything()), own) {
        (None, None) => {
            return Err(invalid(format!(
                "{field}: Required value: a pod on a fleet node needs a label selector over the devices' labels"
            )));
        }
        (None, Some(own)) => own.to_string(),
        (Some(node), None) => node.to_string(),
        (Some(node), Some(own)) if own.trim().is_empty() => node.to_string(),
        (Some(node), Some(own)) => {
            let both = format!("{node},{own}");
            Selector::parse(&field, &both)
                .map_err(|e| invalid(format!("{e} (with the fleet node's selector {node:?})")))?;
            both
        }
    };
    let priority = match annotation(pod, PRIORITY_ANNOTATION) {
        None => 0,
        Some(p) => p.trim().parse::<i32>().map_err(|_| {
            invalid(format!(
                "metadata.annotations[{PRIORITY_ANNOTATION}]: Invalid value: {p:?}: must be an integer"
            ))
        })?,
    };
    let mut rollout = super::crd::RolloutSpec::default();
    if let Some(r) = annotation(pod, ROLLOUT_ANNOTATION) {
        let batches = manage::parse_batches(r).map_err(|e| {
            invalid(format!(
                "metadata.annotations[{ROLLOUT_ANNOTATION}]: Invalid value: {r:?}: {e}"
            ))
        })?;
        rollout.batches = batches
            .into_iter()
            .map(|b| {
                let limit = b.limit.to_string();
                BatchSpec {
                    selector: b.selector,
                    limit: match limit.parse::<i64>() {
                        Ok(n) => IntOrString::Int(n),
                        Err(_) => IntOrString::String(limit),
                    },
                }
            })
            .collect();
    }
    let mut spec = pod.spec.clone().unwrap_or_default();
    // The fleet node's placement is not the devices'.
    spec.node_name = None;
    spec.node_selector = None;
    spec.tolerations = None;
    spec.affinity = None;
    spec.scheduler_name = None;
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            name: Some(key.name.clone()),
            labels: pod.metadata.labels.clone().map(|mut l| {
                l.remove("pod-template-hash");
                l
            }),
            annotations: pod.metadata.annotations.clone(),
            ..Default::default()
        }),
        spec: Some(spec),
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        SEED_POD_ANNOTATION.to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let mut cr = FleetDeploymentResource::new(
        &key.name,
        FleetDeploymentSpec {
            selector,
            priority,
            template,
            rollout,
            paused: false,
        },
    );
    cr.metadata.namespace = Some(key.namespace.clone());
    cr.metadata.uid = Some(uid.to_string());
    cr.metadata.annotations = Some(annotations);
    Ok(cr)
}

/// The seed pod a resource was made from (`None`: a FleetDeployment).
pub fn seed_pod(cr: &FleetDeploymentResource) -> Option<&str> {
    cr.metadata
        .annotations
        .as_ref()?
        .get(SEED_POD_ANNOTATION)
        .map(String::as_str)
}

/// Of the live pods of one fleet, the one whose template the fleet runs:
/// the newest (creation time, then name).
pub fn newest<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.into_iter().max_by(|a, b| {
        let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    })
}

/// `9412` as `9,412`.
pub fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a seed pod's status says of its fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedStatus {
    /// `Running` once a device runs the fleet's revision, else `Pending`.
    pub phase: &'static str,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// The status of a seed pod from its fleet's counts, rollout phase and
/// first failing devices, or its refusal.
pub fn seed_status(
    counts: &Counts,
    rollout_phase: Option<&str>,
    failing: &[(String, String)],
    refusal: Option<(&str, &str)>,
) -> SeedStatus {
    if let Some((reason, message)) = refusal {
        return SeedStatus {
            phase: "Pending",
            ready: false,
            reason: reason.to_string(),
            message: message.to_string(),
        };
    }
    let mut message = format!(
        "{} of {} devices running",
        thousands(counts.running),
        thousands(counts.targeted)
    );
    if counts.failed > 0 {
        message.push_str(&format!(", {} failing", thousands(counts.failed)));
        let named: Vec<String> = failing.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        if !named.is_empty() {
            message.push_str(": ");
            message.push_str(&named.join(", "));
        }
    }
    crate::fleet::rollout::clip_message(&mut message);
    SeedStatus {
        phase: if counts.running > 0 {
            "Running"
        } else {
            "Pending"
        },
        ready: counts.targeted > 0 && counts.running == counts.targeted && counts.failed == 0,
        reason: rollout_phase.unwrap_or("Pending").to_string(),
        message,
    }
}

/// The server-side apply body of a seed pod's status (the bridge's
/// field manager for pod conditions): the phase, `Ready` and
/// [`FLEET_READY_CONDITION`].
pub fn pod_status_body(pod: &PodKey, uid: &str, s: &SeedStatus, now: &str) -> Value {
    let word = |b: bool| if b { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": uid},
        "status": {
            "phase": s.phase,
            "conditions": [
                {
                    "type": FLEET_READY_CONDITION,
                    "status": word(s.ready),
                    "reason": s.reason,
                    "message": s.message,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Ready",
                    "status": word(s.phase == "Running"),
                    "lastTransitionTime": now,
                },
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn deployment_pod(name: &str, hash: &str, annotations: Value) -> Pod {
        pod(json!({
            "metadata": {
                "name": format!("meter-{hash}-x7k2p"), "namespace": "prod", "uid": format!("uid-{name}"),
                "labels": {"app": "meter", "pod-template-hash": hash},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("meter-{hash}"), "uid": "rs", "controller": true}],
            },
            "spec": {
                "nodeName": "kedge-fleet-edge",
                "nodeSelector": {"kedge.io/fleet-node": "edge"},
                "tolerations": [{"key": "kedge.io/edge", "operator": "Exists"}],
                "containers": [{"name": "main", "image": "meter:1"}],
            },
        }))
    }

    #[test]
    fn the_fleet_is_the_deployments_whatever_the_template_or_a_bare_pods_own() {
        let a = deployment_pod("a", "5d9c7f", json!({}));
        let b = deployment_pod("b", "66b4f9", json!({}));
        assert_eq!(fleet_key(&a), Some(PodKey::new("prod", "meter")));
        assert_eq!(fleet_key(&b), fleet_key(&a));
        let bare = pod(json!({"metadata": {"name": "solo", "namespace": "prod"}}));
        assert_eq!(fleet_key(&bare), Some(PodKey::new("prod", "solo")));
        let job = pod(json!({"metadata": {"name": "j-abc", "namespace": "prod",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u", "controller": true}]}}));
        assert_eq!(fleet_key(&job), Some(PodKey::new("prod", "j")));
    }

    #[test]
    fn only_pods_on_a_configured_fleet_node_are_seeds() {
        let p = deployment_pod("a", "h", json!({}));
        let nodes = vec![FleetNode::named("edge")];
        assert_eq!(
            fleet_node_of(&p, &nodes).map(|n| n.name.as_str()),
            Some("edge")
        );
        assert_eq!(fleet_node_of(&p, &[FleetNode::named("other")]), None);
        let mut q = p.clone();
        q.spec.as_mut().expect("spec").node_name = Some("gw1".into());
        assert_eq!(fleet_node_of(&q, &nodes), None);
    }

    #[test]
    fn the_resource_carries_the_annotations_and_the_template_without_the_placement() {
        let p = deployment_pod(
            "a",
            "h1",
            json!({"kedge.io/selector": "site=b43", "kedge.io/priority": "15",
                   "kedge.io/rollout": "canary=true:100%,25%,100%"}),
        );
        let key = fleet_key(&p).expect("key");
        let cr = resource(&key, "fleet-uid", &p, None).expect("resource");
        assert_eq!(cr.metadata.name.as_deref(), Some("meter"));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(cr.metadata.uid.as_deref(), Some("fleet-uid"));
        assert_eq!(seed_pod(&cr), p.metadata.name.as_deref());
        assert_eq!(cr.spec.selector, "site=b43");
        assert_eq!(cr.spec.priority, 15);
        let policy = cr.spec.rollout.policy().expect("policy");
        assert_eq!(policy.batches.len(), 3);
        assert_eq!(policy.batches[0].selector, "canary=true");
        let t = &cr.spec.template;
        assert_eq!(
            t.metadata.as_ref().and_then(|m| m.name.as_deref()),
            Some("meter")
        );
        let labels = t
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert!(!labels.contains_key("pod-template-hash"));
        let spec = t.spec.as_ref().expect("spec");
        assert!(
            spec.node_name.is_none() && spec.node_selector.is_none() && spec.tolerations.is_none()
        );
        // No rollout annotation: every device at once.
        let p = deployment_pod("a", "h1", json!({"kedge.io/selector": "site=b43"}));
        let cr = resource(&key, "u", &p, None).expect("resource");
        assert!(!manage::is_staged(
            &cr.spec.rollout.policy().expect("policy")
        ));
    }

    #[test]
    fn a_missing_or_invalid_selector_or_annotation_is_refused_naming_it() {
        let key = PodKey::new("prod", "meter");
        let e =
            resource(&key, "u", &deployment_pod("a", "h", json!({})), None).expect_err("refused");
        assert_eq!(e.reason, "InvalidAnnotation");
        assert!(
            e.message
                .starts_with("metadata.annotations[kedge.io/selector]: Required value"),
            "{}",
            e.message
        );
        let e = resource(
            &key,
            "u",
            &deployment_pod("a", "h", json!({"kedge.io/selector": "site in (b43"})),
            None,
        )
        .expect_err("refused");
        assert!(e.message.contains("kedge.io/selector"), "{}", e.message);
        let e = resource(
            &key,
            "u",
            &deployment_pod(
                "a",
                "h",
                json!({"kedge.io/selector": "a=b", "kedge.io/priority": "high"}),
            ),
            None,
        )
        .expect_err("refused");
        assert!(e.message.contains("kedge.io/priority"), "{}", e.message);
        let e = resource(
            &key,
            "u",
            &deployment_pod(
                "a",
                "h",
                json!({"kedge.io/selector": "a=b", "kedge.io/rollout": "canary=true"}),
            ),
            None,
        )
        .expect_err("refused");
        assert!(e.message.contains("kedge.io/rollout"), "{}", e.message);
    }

    /// On a fleet node with a selector, the pod's devices match both; its
    /// own selector is then optional.
    #[test]
    fn a_fleet_nodes_selector_and_the_pods_both_hold() {
        let key = PodKey::new("prod", "meter");
        let node = FleetNode::parse("b43:site=b43").expect("valid");
        let sel = node.selector.as_ref();
        let p = deployment_pod("a", "h", json!({}));
        let cr = resource(&key, "u", &p, sel).expect("the node's selector is enough");
        assert_eq!(cr.spec.selector, "site=b43");
        let p = deployment_pod("a", "h", json!({"kedge.io/selector": "tier in (a,b)"}));
        let cr = resource(&key, "u", &p, sel).expect("both");
        assert_eq!(cr.spec.selector, "site=b43,tier in (a,b)");
        let both = Selector::parse("s", &cr.spec.selector).expect("parses");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(both.matches(&labels(&[("site", "b43"), ("tier", "a")])));
        assert!(!both.matches(&labels(&[("site", "b44"), ("tier", "a")])));
        assert!(!both.matches(&labels(&[("site", "b43")])));
        // Still refused when the pod's own selector is invalid.
        let p = deployment_pod("a", "h", json!({"kedge.io/selector": "tier in (a"}));
        let e = resource(&key, "u", &p, sel).expect_err("refused");
        assert!(e.message.contains("kedge.io/selector"), "{}", e.message);
    }

    #[test]
    fn a_fleet_nodes_status_carries_its_devices_sums() {
        let devices = Summary {
            capacity: crate::model::NodeResources {
                cpu_millis: 3_000,
                memory_bytes: 3 << 30,
                pods: 30,
                ephemeral_storage_bytes: 24 << 30,
            },
            allocatable: Default::default(),
            devices: 3_000,
            online: 2_999,
        };
        let s = node_status("b43", &devices, 5);
        assert_eq!(s.name, "kedge-fleet-b43");
        assert_eq!(s.capacity, devices.capacity);
        assert_eq!(
            s.conditions[0].message,
            "2,999 of 3,000 devices online; the kedge bridge serves this fleet node"
        );
    }

    #[test]
    fn the_newest_pod_is_the_template() {
        let mut a = deployment_pod("a", "h1", json!({}));
        let mut b = deployment_pod("b", "h2", json!({}));
        a.metadata.creation_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
        b.metadata.creation_timestamp = serde_json::from_value(json!("2026-01-01T00:00:05Z")).ok();
        assert_eq!(
            newest([&a, &b]).and_then(|p| p.metadata.uid.clone()),
            b.metadata.uid
        );
        assert_eq!(
            newest([&b, &a]).and_then(|p| p.metadata.uid.clone()),
            b.metadata.uid
        );
    }

    #[test]
    fn the_pod_status_carries_the_counts() {
        let counts = Counts {
            targeted: 10_000,
            running: 9_412,
            failed: 3,
            ..Default::default()
        };
        let s = seed_status(
            &counts,
            Some("Progressing"),
            &[("gw-17".into(), "ErrImagePull".into())],
            None,
        );
        assert_eq!(s.phase, "Running");
        assert!(!s.ready);
        assert_eq!(
            s.message,
            "9,412 of 10,000 devices running, 3 failing: gw-17: ErrImagePull"
        );
        let none = seed_status(&Counts::default(), None, &[], None);
        assert_eq!((none.phase, none.ready), ("Pending", false));
        let all = Counts {
            targeted: 2,
            running: 2,
            ..Default::default()
        };
        assert!(seed_status(&all, Some("Complete"), &[], None).ready);
        let refused = seed_status(&all, None, &[], Some(("InvalidAnnotation", "no selector")));
        assert_eq!((refused.phase, refused.ready), ("Pending", false));
        let body = pod_status_body(&PodKey::new("prod", "p"), "u", &s, "2026-01-01T00:00:00Z");
        assert_eq!(
            body["status"]["conditions"][0]["type"],
            FLEET_READY_CONDITION
        );
        assert_eq!(body["metadata"]["uid"], "u");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
