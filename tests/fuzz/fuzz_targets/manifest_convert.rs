//! The Kubernetes manifest converter on YAML or JSON text: what `kedge
//! apply -f`, `kedge convert`, the agent's static-pod directory
//! (`parse_pod_manifests` + `pod_spec_from_k8s`) and the bridge
//! (`pod_spec_from_k8s_with` and a resolver that finds ConfigMaps and
//! Secrets) run on a file or a Pod.
//!
//! Checks, beyond "never panics": every spec the converter returns is one
//! every receiver takes —
//! - it passes `model::validate` (with the uid the caller fills in);
//! - it crosses the wire: encoded as a desired spec it decodes to the same
//!   spec (what the agent receives);
//! - its JSON (`kedge convert` output, read back from `*.kedge.json` static
//!   pods) reads back to the same spec;
//! - converting is deterministic (the bridge converts again on every change
//!   and compares digests).

#![no_main]

use std::collections::BTreeMap;

use kedge::model::PodSpec;
use kedge::model::convert::{
    Resolver, parse_pod_manifests, pod_spec_from_k8s, pod_spec_from_k8s_with,
};
use kedge::model::validate::Validate;
use kedge::wire::{self, Message};
use libfuzzer_sys::fuzz_target;

/// The uid `kedge apply` would make up for a pod without one.
const UID: &str = "0b4d4e8a-9c3f-4d6e-8f80-1234567890ab";

/// The bridge's view of the cluster, made up: every ConfigMap and Secret
/// exists except those named `missing…`, with a few keys (one not UTF-8, as
/// a Secret's binary value can be).
struct Cluster;

impl Cluster {
    fn object(name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        if name.starts_with("missing") {
            return None;
        }
        let mut m = BTreeMap::new();
        m.insert("key".to_string(), b"value".to_vec());
        m.insert("config.toml".to_string(), b"a = 1\n".to_vec());
        m.insert("bin".to_string(), vec![0xff, 0x00, 0xfe]);
        m.insert(
            ".dockerconfigjson".to_string(),
            br#"{"auths":{"r.example":{"auth":"dTpw"}}}"#.to_vec(),
        );
        Some(m)
    }
}

impl Resolver for Cluster {
    fn config_map(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        Cluster::object(name)
    }
    fn secret(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        Cluster::object(name)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pods) = parse_pod_manifests(text) else {
        return;
    };
    for pod in &pods {
        let plain = pod_spec_from_k8s(pod);
        if let Ok(spec) = &plain {
            receivers_take(spec.clone());
        }
        assert_eq!(
            plain,
            pod_spec_from_k8s(pod),
            "conversion is not deterministic"
        );
        if let Ok(spec) = pod_spec_from_k8s_with(pod, &Cluster) {
            receivers_take(spec);
        }
    }
});

fn receivers_take(mut spec: PodSpec) {
    if spec.uid.is_empty() {
        spec.uid = UID.to_string();
    }
    if let Err(e) = spec.validate() {
        panic!("the converter returned a spec that does not validate: {e}\n{spec:#?}");
    }
    let payload = wire::encode(spec.generation, &Message::DesiredPod(spec.clone()))
        .expect("a converted spec encodes");
    match wire::decode_as::<PodSpec>(&payload) {
        Ok((seq, back)) => {
            assert_eq!(seq, spec.generation);
            assert_eq!(back, spec, "the wire changed the spec");
        }
        Err(e) => panic!("the agent refuses a converted spec: {e}\n{spec:#?}"),
    }
    let json = serde_json::to_string(&vec![&spec]).expect("a converted spec is JSON");
    let back: Vec<PodSpec> = serde_json::from_str(&json).expect("kedge convert output reads back");
    assert_eq!(back, vec![spec], "JSON changed the spec");
}
