//! What the conversion tests share: manifests made by patching a minimal Pod,
//! and a resolver over maps.

use super::*;
use serde_json::json;

pub(super) const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Merges `patch` into `base` (objects recursively, everything else replaced).
pub(super) fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                match base.get_mut(&k) {
                    Some(existing) if v.is_object() => merge(existing, v),
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

pub(super) fn manifest(patch: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}
    });
    merge(&mut pod, patch);
    pod
}

pub(super) fn k8s_pod(patch: Value) -> k8s::Pod {
    let mut pods = parse_pod_manifests(&manifest(patch).to_string()).expect("manifest parses");
    assert_eq!(pods.len(), 1);
    pods.remove(0)
}

pub(super) fn convert(patch: Value) -> PodSpec {
    pod_spec_from_k8s(&k8s_pod(patch)).expect("pod converts")
}

/// The spec and its warnings.
pub(super) fn convert_warned(patch: Value) -> Converted {
    convert_pod(&k8s_pod(patch), &NoResolver).expect("pod converts")
}

pub(super) fn convert_err(patch: Value) -> String {
    pod_spec_from_k8s(&k8s_pod(patch))
        .expect_err("conversion fails")
        .to_string()
}

pub(super) fn with_container(container: Value) -> Value {
    json!({"spec": {"containers": [container]}})
}

pub(super) fn wasm(image: &str) -> Value {
    json!({"spec": {
        "runtimeClassName": "kedge-wasm",
        "containers": [{"name": "app", "image": image}]
    }})
}

#[derive(Default)]
pub(super) struct MapResolver {
    config_maps: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl MapResolver {
    pub(super) fn config_map(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        self.config_maps
            .insert((ns.into(), name.into()), to_data(data));
        self
    }
    pub(super) fn secret(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        self.secrets.insert((ns.into(), name.into()), to_data(data));
        self
    }
}

pub(super) fn to_data(data: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    data.iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

impl Resolver for MapResolver {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.config_maps
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

pub(super) fn resolver() -> MapResolver {
    MapResolver::default()
        .config_map("default", "cfg", &[("LEVEL", "debug"), ("MODE", "edge")])
        .config_map("other", "cfg", &[("LEVEL", "wrong-namespace")])
        .secret("default", "creds", &[("password", "hunter2")])
        .secret(
            "default",
            "regcred",
            &[(".dockerconfigjson", r#"{"auths":{"r.example":{}}}"#)],
        )
        .secret(
            "default",
            "legacy",
            &[(".dockercfg", r#"{"r.example":{}}"#)],
        )
        .secret("default", "opaque", &[("token", "x")])
        .secret("default", "dotted", &[("..data", "x")])
}

pub(super) fn convert_with(patch: Value, resolver: &dyn Resolver) -> Result<PodSpec, String> {
    pod_spec_from_k8s_with(&k8s_pod(patch), resolver).map_err(|e| e.to_string())
}
