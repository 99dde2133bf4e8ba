//! Manifest files: YAML or JSON, several documents, lists; each document a
//! v1 Pod, or (for `kedge apply -f --node` and `kedge convert`) a v1 Secret
//! or ConfigMap that the pods refer to.

use serde::de::DeserializeSeed;

use super::*;

/// What a manifest file holds: pods, and the Secrets and ConfigMaps that
/// resolve their references ([`FileResolver`]), in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub pods: Vec<k8s::Pod>,
    pub secrets: Vec<k8s::Secret>,
    pub config_maps: Vec<k8s::ConfigMap>,
}

/// Parses a YAML or JSON file that may hold several documents (`---`), and
/// `kind: List` / `kind: PodList` items. Empty documents are skipped. Any
/// document whose kind is not `Pod` (apiVersion `v1`) is an error naming its
/// index and kind (Deployments etc. are for the bridge). Fields unknown to
/// Kubernetes are errors, like `kubectl apply --validate=strict`.
pub fn parse_pod_manifests(text: &str) -> Result<Vec<k8s::Pod>, ConvertError> {
    Ok(parse(text, false)?.pods)
}

/// [`parse_pod_manifests`] that also takes v1 Secrets (`data` in base64,
/// `stringData`) and ConfigMaps (`data`, `binaryData`), checked as the API
/// server checks them (names, keys, a `kubernetes.io/dockerconfigjson`
/// Secret's `.dockerconfigjson`).
pub fn parse_manifests(text: &str) -> Result<Manifests, ConvertError> {
    parse(text, true)
}

fn parse(text: &str, objects: bool) -> Result<Manifests, ConvertError> {
    let mut found = Manifests::default();
    for (index, doc) in split_documents(text)?.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        collect(index, doc, objects, &mut found)?;
    }
    Ok(found)
}

/// Every document of the file as JSON, empty documents as `Null`.
fn split_documents(text: &str) -> Result<Vec<Value>, ConvertError> {
    let mut docs = Vec::new();
    // Like kubectl: a file starting with `{` is JSON (JSON is nearly YAML, but
    // YAML rejects the tabs many JSON writers indent with).
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        loop {
            // Whitespace only until the end: no more documents.
            if de.end().is_ok() {
                break;
            }
            let value = NoDuplicateKeys::root()
                .deserialize(&mut de)
                .map_err(|e| document(docs.len(), format!("invalid json: {e}")))?;
            docs.push(value);
        }
    } else {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            let mut value = NoDuplicateKeys::root()
                .deserialize(de)
                .map_err(|e| document(docs.len(), format!("invalid yaml: {e}")))?;
            octal_modes(&mut value);
            docs.push(value);
        }
    }
    Ok(docs)
}

/// File modes as kubectl reads them: its YAML 1.1 takes `defaultMode:
/// 0440` as the octal number it is meant to be, the YAML 1.2 read here as
/// the string "0440". A `defaultMode` or `mode` string of a 0 and octal
/// digits becomes that number (so does a quoted one, which kubectl would
/// refuse as a string: the one place kedge is more lenient).
fn octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let octal = match v {
                    Value::String(s) if key == "defaultMode" || key == "mode" => yaml11_octal(s),
                    _ => None,
                };
                match octal {
                    Some(n) => *v = Value::from(n),
                    None => octal_modes(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// YAML 1.1's octal integer (`0440`), without its sign forms.
fn yaml11_octal(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('0')?;
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

/// Reads a document as a JSON value, refusing a key set twice in one
/// mapping (kubectl refuses it: `key "image" already set in map`), with
/// the key's path (`spec.containers[0].image`).
struct NoDuplicateKeys<'p> {
    /// The path of the value being read, `""` at the root.
    path: &'p str,
}

impl NoDuplicateKeys<'static> {
    fn root() -> Self {
        NoDuplicateKeys { path: "" }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicateKeys<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, out.len());
            match seq.next_element_seed(NoDuplicateKeys { path: &path })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<KeyString>()? {
            let key = key.0;
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(NoDuplicateKeys { path: &path })?;
            if out.contains_key(&key) {
                // kubectl's words; YAML errors add the parent's path.
                return Err(serde::de::Error::custom(format!(
                    "key {key:?} already set in map ({path})"
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: strings, and numbers and booleans as their text (YAML
/// allows `80: x`; JSON objects only have string keys).
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
        }
        de.deserialize_any(V)
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn collect(
    index: usize,
    doc: Value,
    objects: bool,
    found: &mut Manifests,
) -> Result<(), ConvertError> {
    if !doc.is_object() {
        return Err(document(
            index,
            "expected a mapping with apiVersion and kind",
        ));
    }
    let kind = str_field(&doc, "kind").unwrap_or_default().to_owned();
    let api_version = str_field(&doc, "apiVersion").unwrap_or_default().to_owned();
    match (kind.as_str(), api_version.as_str()) {
        ("List" | "PodList", "v1") => {
            let pod_list = kind == "PodList";
            let items = match doc.get("items") {
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Array(items)) => items.clone(),
                Some(_) => return Err(document(index, "items: expected a list")),
            };
            for (i, mut item) in items.into_iter().enumerate() {
                let prefix = format!("items[{i}]");
                // Items of a PodList need not repeat their kind.
                if pod_list && let Value::Object(map) = &mut item {
                    map.entry("kind").or_insert_with(|| "Pod".into());
                    map.entry("apiVersion").or_insert_with(|| "v1".into());
                }
                if !item.is_object() {
                    return Err(document(index, format!("{prefix}: expected a pod")));
                }
                let kind = str_field(&item, "kind").unwrap_or_default().to_owned();
                let api_version = str_field(&item, "apiVersion")
                    .unwrap_or_default()
                    .to_owned();
                let objects = objects && !pod_list;
                collect_object(&kind, &api_version, item, objects, found)
                    .map_err(|m| document(index, format!("{prefix}: {m}")))?;
            }
            Ok(())
        }
        (kind, api_version) => {
            collect_object(kind, api_version, doc, objects, found).map_err(|m| document(index, m))
        }
    }
}

/// One object (a document or a list's item): a pod, or with `objects` a
/// Secret or ConfigMap.
fn collect_object(
    kind: &str,
    api_version: &str,
    value: Value,
    objects: bool,
    found: &mut Manifests,
) -> Result<(), String> {
    match (kind, api_version) {
        ("Pod", "v1") => found.pods.push(object_from_value(value)?),
        // Read from a file by build hosts only: their types' serde code
        // costs a device build more than its size budget has (targets/README.md).
        #[cfg(feature = "operator")]
        ("Secret", "v1") if objects => {
            let secret: k8s::Secret = object_from_value(value)?;
            let name = check_object_name("secret", secret.metadata.name.as_deref())?;
            check_secret(&secret).map_err(|m| format!("secret {name:?}: {m}"))?;
            found.secrets.push(secret);
        }
        #[cfg(feature = "operator")]
        ("ConfigMap", "v1") if objects => {
            let config_map: k8s::ConfigMap = object_from_value(value)?;
            let name = check_object_name("configmap", config_map.metadata.name.as_deref())?;
            check_config_map(&config_map).map_err(|m| format!("configmap {name:?}: {m}"))?;
            found.config_maps.push(config_map);
        }
        (kind, api_version) => return Err(wrong_kind(kind, api_version, objects)),
    }
    Ok(())
}

fn wrong_kind(kind: &str, api_version: &str, objects: bool) -> String {
    let expected = if objects {
        "apiVersion: v1, kind: Pod, Secret or ConfigMap"
    } else {
        "apiVersion: v1, kind: Pod"
    };
    if kind.is_empty() {
        return format!("missing kind (expected {expected})");
    }
    if api_version.is_empty() {
        return format!("kind {kind:?} has no apiVersion (expected {expected})");
    }
    if cfg!(not(feature = "operator"))
        && objects
        && matches!((kind, api_version), ("Secret" | "ConfigMap", "v1"))
    {
        return format!(
            "kind {kind:?} (apiVersion v1): this kedge is a device build, which reads only Pods \
             from a file; apply pods that use Secrets or ConfigMaps with a workstation's kedge \
             (a build-host build) against the same broker"
        );
    }
    if !objects && matches!((kind, api_version), ("Secret" | "ConfigMap", "v1")) {
        return format!(
            "kind {kind:?} (apiVersion v1) is not supported here: only `kedge apply -f FILE \
             --node NODE` and `kedge convert` read Secrets and ConfigMaps, to resolve the \
             references of the pods in the same file"
        );
    }
    let what = if objects {
        "v1 pods (and the Secrets and ConfigMaps they refer to)"
    } else {
        "v1 pods"
    };
    format!(
        "kind {kind:?} (apiVersion {api_version}) is not supported: only {what} can be applied \
         to kedge nodes (deployments and other workloads go through the bridge)"
    )
}

/// A Secret as the API server validates it: a name, valid keys, and what
/// its type requires of the types that matter here.
#[cfg(feature = "operator")]
fn check_secret(secret: &k8s::Secret) -> Result<(), String> {
    for key in secret.data.iter().flatten().map(|(k, _)| k) {
        check_key("data", key)?;
    }
    for key in secret.string_data.iter().flatten().map(|(k, _)| k) {
        check_key("stringData", key)?;
    }
    if secret.type_.as_deref() == Some("kubernetes.io/dockerconfigjson") {
        let value = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson").map(|s| s.as_bytes().to_vec()))
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(".dockerconfigjson").map(|b| b.0.clone()))
            })
            .ok_or_else(|| {
                "data[.dockerconfigjson]: required for a secret of type \
                 kubernetes.io/dockerconfigjson"
                    .to_string()
            })?;
        serde_json::from_slice::<Value>(&value)
            .map_err(|e| format!("data[.dockerconfigjson]: invalid JSON: {e}"))?;
    }
    Ok(())
}

#[cfg(feature = "operator")]
fn check_config_map(config_map: &k8s::ConfigMap) -> Result<(), String> {
    for key in config_map.data.iter().flatten().map(|(k, _)| k) {
        check_key("data", key)?;
    }
    for key in config_map.binary_data.iter().flatten().map(|(k, _)| k) {
        check_key("binaryData", key)?;
        if config_map
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
        {
            return Err(format!(
                "binaryData[{key}]: duplicate of key {key:?} present in data"
            ));
        }
    }
    Ok(())
}

/// The object's name, which must be a DNS subdomain.
#[cfg(feature = "operator")]
fn check_object_name<'a>(kind: &str, name: Option<&'a str>) -> Result<&'a str, String> {
    match name {
        None | Some("") => Err(format!("{kind}: metadata.name: required")),
        Some(name) if !is_dns1123_subdomain(name) => Err(format!(
            "{kind} {name:?}: metadata.name: not a valid name: {SUBDOMAIN_RULE}"
        )),
        Some(name) => Ok(name),
    }
}

/// The API server's rule for ConfigMap and Secret keys.
#[cfg(feature = "operator")]
fn check_key(field: &str, key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && key != ".."
        && !key.starts_with("..");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field}[{key}]: invalid key {key:?}: a valid config key must consist of \
             alphanumeric characters, '-', '_' or '.' (and not be '.', '..' or start with '..')"
        ))
    }
}

/// Reads an object, refusing fields Kubernetes does not know.
fn object_from_value<T>(value: Value) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
{
    // k8s-openapi ignores unknown fields: `serde_ignored` tells which (the
    // first one is the error). This replaced serialising the object back
    // and comparing, which linked every k8s type's `Serialize` into device
    // builds.
    let mut unknown = None;
    let mut note = |path: serde_ignored::Path| {
        if unknown.is_none() {
            let mut text = String::new();
            field_path(&path, &mut text);
            unknown = Some(text);
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut note);
    // A wrong-typed value names its field, as kubectl's validation does
    // (build hosts: the path tracking doubles the manifests' serde code,
    // about 160 kB, more than a device build's budget has left).
    #[cfg(feature = "operator")]
    let object: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    #[cfg(not(feature = "operator"))]
    let object: T = T::deserialize(de).map_err(|e| e.to_string())?;
    match unknown {
        Some(path) => Err(format!("unknown field {path:?}")),
        None => Ok(object),
    }
}

/// An ignored field's path as kubectl writes it: `spec.containers[0].x`.
fn field_path(path: &serde_ignored::Path, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            field_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            field_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn parses_multi_document_yaml_with_empty_json_and_list_documents() {
        let text = r#"
# a comment before the first document
apiVersion: v1
kind: Pod
metadata:
  name: one
spec:
  containers:
  - name: app
    image: nginx
    resources:
      limits:
        cpu: 1
        memory: 1e3
---
---
# only a comment
---
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
 "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: three}
  spec:
    containers: [{name: app, image: nginx}]
- apiVersion: v1
  kind: Pod
  metadata: {name: four}
  spec:
    containers: [{name: app, image: nginx}]
"#;
        let pods = parse_pod_manifests(text).expect("manifests parse");
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["one", "two", "three", "four"]);
        let spec = pod_spec_from_k8s(&pods[0]).expect("pod converts");
        assert_eq!(spec.containers[0].resources.cpu_limit_millis, Some(1000));
        assert_eq!(spec.containers[0].resources.memory_limit_bytes, Some(1000));
    }

    #[test]
    fn yaml_file_modes_are_octal_as_kubectl_reads_them() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: modes}
spec:
  containers: [{name: app, image: nginx}]
  volumes:
  - name: a
    secret: {secretName: s, defaultMode: 0440, items: [{key: k, path: p, mode: 0440}]}
  - name: b
    configMap: {name: c, defaultMode: 420}
  - name: c
    configMap: {name: c, defaultMode: 0o600}
"#;
        let pods = parse_pod_manifests(text).expect("parses");
        let volumes = pods[0]
            .spec
            .as_ref()
            .expect("spec")
            .volumes
            .clone()
            .expect("volumes");
        let secret = volumes[0].secret.as_ref().expect("secret");
        assert_eq!(secret.default_mode, Some(0o440));
        assert_eq!(secret.items.as_ref().expect("items")[0].mode, Some(0o440));
        let mode = |i: usize| volumes[i].config_map.as_ref().and_then(|c| c.default_mode);
        assert_eq!(mode(1), Some(420));
        assert_eq!(mode(2), Some(0o600));
        for (text, octal) in [
            ("0440", Some(0o440)),
            ("0", None),
            ("0448", None),
            ("440", None),
        ] {
            assert_eq!(yaml11_octal(text), octal, "{text}");
        }
    }

    #[test]
    fn parses_json_files_with_tabs_and_pod_lists() {
        let text = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"PodList\",\n\t\"items\": [\n\t\t{\"metadata\": {\"name\": \"a\"}, \"spec\": {\"containers\": [{\"name\": \"c\", \"image\": \"busybox\"}]}}\n\t]\n}\n{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"containers\": [{\"name\": \"c\", \"image\": \"busybox\"}]}}";
        let pods = parse_pod_manifests(text).expect("json parses");
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("a"));
        assert_eq!(pods[1].metadata.name.as_deref(), Some("b"));
    }

    #[test]
    fn empty_files_hold_no_pods() {
        assert_eq!(parse_pod_manifests("").expect("empty parses"), vec![]);
        assert_eq!(
            parse_pod_manifests("---\n# nothing\n---\n").expect("parses"),
            vec![]
        );
        let empty_list = "apiVersion: v1\nkind: List\nitems: []\n";
        assert_eq!(parse_pod_manifests(empty_list).expect("parses"), vec![]);
    }

    #[test]
    fn non_pod_documents_are_errors_naming_index_and_kind() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: i}]}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let err = parse_pod_manifests(text).expect_err("deployment is rejected");
        let ConvertError::Document { index, message } = &err else {
            panic!("expected a document error, got {err:?}");
        };
        assert_eq!(*index, 2);
        assert!(message.contains("\"Deployment\""), "{message}");
        assert!(message.contains("apps/v1"), "{message}");
        assert!(
            err.to_string()
                .starts_with("document 2: kind \"Deployment\"")
        );

        let err = parse_pod_manifests("metadata: {name: a}\n").expect_err("no kind");
        assert_eq!(
            err.to_string(),
            "document 0: missing kind (expected apiVersion: v1, kind: Pod)"
        );

        let err = parse_pod_manifests("apiVersion: v2\nkind: Pod\n").expect_err("wrong version");
        assert!(err.to_string().contains("(apiVersion v2)"), "{err}");

        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n";
        let err = parse_pod_manifests(list).expect_err("service in a list");
        assert!(
            err.to_string()
                .starts_with("document 0: items[0]: kind \"Service\""),
            "{err}"
        );

        let err = parse_pod_manifests("- a\n- b\n").expect_err("a sequence");
        assert!(matches!(err, ConvertError::Document { index: 0, .. }));
    }

    #[test]
    fn syntax_and_type_errors_name_the_document() {
        let err = parse_pod_manifests("apiVersion: v1\nkind: Pod\n---\nkey: [unclosed\n")
            .expect_err("bad yaml");
        assert!(
            matches!(err, ConvertError::Document { index: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("invalid yaml"), "{err}");

        let bad_type = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: [{containerPort: http}]\n";
        let err = parse_pod_manifests(bad_type).expect_err("string port");
        assert!(
            matches!(err, ConvertError::Document { index: 0, .. }),
            "{err:?}"
        );

        let err = parse_pod_manifests("{\"kind\": ").expect_err("bad json");
        assert!(
            err.to_string().starts_with("document 0: invalid json"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: one\n    image: two\n";
        let err = parse_pod_manifests(yaml).expect_err("duplicate key");
        assert!(
            matches!(err, ConvertError::Document { index: 0, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("key \"image\" already set in map (spec.containers[0].image)"),
            "{err}"
        );
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nmetadata: {name: b}\n";
        let err = parse_pod_manifests(yaml).expect_err("duplicate top-level key");
        assert!(
            err.to_string()
                .contains("key \"metadata\" already set in map (metadata)"),
            "{err}"
        );

        let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "1", "x": "2"}}}"#;
        let err = parse_pod_manifests(json).expect_err("duplicate json key");
        assert!(
            err.to_string().contains(
                "document 0: invalid json: key \"x\" already set in map (metadata.labels.x)"
            ),
            "{err}"
        );
        // The same key in different mappings, and several JSON documents,
        // are fine.
        let ok = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}, {"name": "d", "image": "i"}]}}
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        "#;
        assert_eq!(parse_pod_manifests(ok).expect("parses").len(), 2);
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let text = manifest(with_container(
            json!({"name": "app", "image": "nginx", "imagePullPoilcy": "Always"}),
        ))
        .to_string();
        let err = parse_pod_manifests(&text).expect_err("typo is rejected");
        assert_eq!(
            err.to_string(),
            "document 0: unknown field \"spec.containers[0].imagePullPoilcy\""
        );
        // A value of the wrong type names its field.
        let text = manifest(json!({"spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": "eighty"}]}
        ]}}))
        .to_string();
        let err = parse_pod_manifests(&text).expect_err("a string port");
        assert!(
            err.to_string().starts_with(
                "document 0: spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\", expected i32"
            ),
            "{err}"
        );
        // Null values and known-but-empty fields are fine.
        let text = manifest(json!({
            "metadata": {"creationTimestamp": null, "annotations": {}},
            "spec": {"nodeSelector": {}, "volumes": []},
            "status": {}
        }))
        .to_string();
        parse_pod_manifests(&text).expect("null and empty fields parse");
    }
}
