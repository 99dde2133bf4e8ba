//! Environment variables: values, ConfigMap and Secret references, field
//! and resource references (the downward API, shared with downwardAPI
//! volumes).

use super::*;
use crate::model::expansion::escape;

impl Ctx<'_> {
    pub(super) fn env(&self, c: &k8s::Container, path: &str) -> Result<Vec<EnvVar>, ConvertError> {
        let mut env: Vec<EnvVar> = Vec::new();
        // A later variable of the same name wins, as in Kubernetes. Values
        // are templates the agent expands (`model::expansion`); only literal
        // `value`s are expanded by the kubelet, so every other value is sent
        // escaped. (One corner differs: a variable between two definitions
        // of a name sees the later one here, the earlier one on a kubelet.)
        let mut set = |var: EnvVar| match env.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => *existing = var,
            None => env.push(var),
        };

        // envFrom first; env overrides it.
        for (j, source) in c.env_from.iter().flatten().enumerate() {
            let path = format!("{path}.envFrom[{j}]");
            let prefix = source.prefix.as_deref().unwrap_or_default();
            if prefix.contains('=') {
                return Err(field(format!("{path}.prefix"), "must not contain '='"));
            }
            let (kind, name, optional, ref_path) =
                match (&source.config_map_ref, &source.secret_ref) {
                    (Some(cm), None) => (
                        ObjectKind::ConfigMap,
                        &cm.name,
                        cm.optional,
                        format!("{path}.configMapRef"),
                    ),
                    (None, Some(secret)) => (
                        ObjectKind::Secret,
                        &secret.name,
                        secret.optional,
                        format!("{path}.secretRef"),
                    ),
                    _ => {
                        return Err(field(
                            path,
                            "must specify exactly one of configMapRef and secretRef",
                        ));
                    }
                };
            let Some(data) = self.lookup(kind, name, optional, &ref_path)? else {
                continue;
            };
            for (key, value) in data {
                let value = utf8(value, kind, name, &key, &ref_path)?;
                set(EnvVar::from_object(
                    format!("{prefix}{key}"),
                    escape(&value),
                ));
            }
        }

        for (j, e) in c.env.iter().flatten().enumerate() {
            let path = format!("{path}.env[{j}]");
            if e.name.is_empty() {
                return Err(field(format!("{path}.name"), "required"));
            }
            if e.name.contains('=') {
                return Err(field(format!("{path}.name"), "must not contain '='"));
            }
            let Some(source) = &e.value_from else {
                set(EnvVar::new(
                    e.name.clone(),
                    e.value.clone().unwrap_or_default(),
                ));
                continue;
            };
            if e.value.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(field(
                    format!("{path}.valueFrom"),
                    "may not be specified when value is not empty",
                ));
            }
            // The pod's and the node's addresses are known on the device
            // only: the agent reads them at each container start.
            let status = source.field_ref.as_ref().and_then(|f| {
                [
                    StatusField::PodIp,
                    StatusField::PodIps,
                    StatusField::HostIp,
                    StatusField::HostIps,
                ]
                .into_iter()
                .find(|s| s.as_str() == f.field_path)
                .filter(|_| {
                    f.api_version
                        .as_deref()
                        .is_none_or(|v| v.is_empty() || v == "v1")
                })
            });
            if let Some(status) = status
                && source.config_map_key_ref.is_none()
                && source.secret_key_ref.is_none()
                && source.resource_field_ref.is_none()
            {
                set(EnvVar {
                    field: Some(status),
                    ..EnvVar::new(e.name.clone(), "")
                });
            } else if let Some(value) =
                self.env_value_from(source, &c.name, &format!("{path}.valueFrom"))?
            {
                let object = source.config_map_key_ref.is_some() || source.secret_key_ref.is_some();
                set(EnvVar {
                    from_object: object,
                    ..EnvVar::new(e.name.clone(), escape(&value))
                });
            }
        }
        Ok(env)
    }

    /// The value of an `env[].valueFrom`, `None` if an optional reference is missing.
    pub(super) fn env_value_from(
        &self,
        source: &k8s::EnvVarSource,
        container: &str,
        path: &str,
    ) -> Result<Option<String>, ConvertError> {
        let count = [
            source.config_map_key_ref.is_some(),
            source.secret_key_ref.is_some(),
            source.field_ref.is_some(),
            source.resource_field_ref.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if count != 1 {
            return Err(field(
                path,
                "must specify exactly one of configMapKeyRef, secretKeyRef, fieldRef and resourceFieldRef",
            ));
        }
        let key_ref = if let Some(r) = &source.config_map_key_ref {
            Some((
                ObjectKind::ConfigMap,
                &r.name,
                &r.key,
                r.optional,
                format!("{path}.configMapKeyRef"),
            ))
        } else {
            source.secret_key_ref.as_ref().map(|r| {
                (
                    ObjectKind::Secret,
                    &r.name,
                    &r.key,
                    r.optional,
                    format!("{path}.secretKeyRef"),
                )
            })
        };
        if let Some((kind, name, key, optional, path)) = key_ref {
            if key.is_empty() {
                return Err(field(format!("{path}.key"), "required"));
            }
            let Some(mut data) = self.lookup(kind, name, optional, &path)? else {
                return Ok(None);
            };
            return match data.remove(key.as_str()) {
                Some(value) => Ok(Some(utf8(value, kind, name, key, &path)?)),
                None if optional == Some(true) => Ok(None),
                None => Err(field(
                    format!("{path}.key"),
                    format!("key {key:?} not found in {} {name:?}", kind.word()),
                )),
            };
        }
        if let Some(field_ref) = &source.field_ref {
            return self
                .field_ref(field_ref, &format!("{path}.fieldRef"))
                .map(Some);
        }
        let r = source.resource_field_ref.as_ref();
        r.map(|r| self.resource_field_ref(r, Some(container), &format!("{path}.resourceFieldRef")))
            .transpose()
    }

    /// A downwardAPI volume file's `fieldRef`: the fields the apiserver
    /// allows there, the whole label and annotation maps in the kubelet's
    /// format ([`format_map`]).
    pub(super) fn volume_field_ref(
        &self,
        selector: &k8s::ObjectFieldSelector,
        path: &str,
    ) -> Result<String, ConvertError> {
        check_api_version(selector, path)?;
        let meta = &self.pod.metadata;
        let field_path = selector.field_path.as_str();
        match field_path {
            "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
            "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
            "metadata.name" | "metadata.namespace" | "metadata.uid" => {
                self.field_ref(selector, path)
            }
            _ if field_path.starts_with("metadata.labels[")
                || field_path.starts_with("metadata.annotations[") =>
            {
                self.field_ref(selector, path)
            }
            _ => Err(field(
                format!("{path}.fieldPath"),
                format!(
                    "Unsupported value: {field_path:?}: supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\""
                ),
            )),
        }
    }

    /// A `resourceFieldRef` as the kubelet computes it: the container's
    /// limit or request divided by `divisor`, rounded up. `container` is
    /// the default for an empty `containerName` (env only). A limit not
    /// set is the node's allocatable on a kubelet, which is not known
    /// here: refused.
    pub(super) fn resource_field_ref(
        &self,
        r: &k8s::ResourceFieldSelector,
        container: Option<&str>,
        path: &str,
    ) -> Result<String, ConvertError> {
        let name = r.container_name.as_deref().filter(|n| !n.is_empty());
        let name = name
            .or(container)
            .ok_or_else(|| field(format!("{path}.containerName"), "Required value"))?;
        let spec = self.spec;
        let c = (spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten()))
        .find(|c| c.name == name)
        .ok_or_else(|| {
            field(
                format!("{path}.containerName"),
                format!("container {name:?} not found in the pod"),
            )
        })?;
        let resource_path = format!("{path}.resource");
        let (which, resource) = match r.resource.split_once('.') {
            Some((w @ ("limits" | "requests"), res @ ("cpu" | "memory" | "ephemeral-storage"))) => {
                (w, res)
            }
            _ => {
                return Err(field(
                    resource_path,
                    format!(
                        "Unsupported value: {:?}: supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\"",
                        r.resource
                    ),
                ));
            }
        };
        let cpu = resource == "cpu";
        let units = |q: &str| if cpu { cpu_millis(q) } else { bytes(q) };
        // An unset (or zero) divisor is 1.
        let divisor = match r.divisor.as_ref().map(|d| units(&d.0)) {
            None | Some(Ok(0)) => Ok(if cpu { 1000 } else { 1 }),
            Some(Ok(d))
                if if cpu {
                    d == 1 || d == 1000
                } else {
                    (1..=6).any(|k| d == 1000u64.pow(k) || d == 1u64 << (10 * k)) || d == 1
                } =>
            {
                Ok(d)
            }
            _ => Err(field(
                format!("{path}.divisor"),
                format!(
                    "Invalid value: {:?}: only divisor's values {} are supported with the {} resource",
                    r.resource,
                    if cpu {
                        "1m and 1"
                    } else {
                        "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei"
                    },
                    match resource {
                        "ephemeral-storage" => "local ephemeral storage",
                        other => other,
                    }
                ),
            )),
        }?;
        let resources = c.resources.as_ref();
        let limit = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(resource));
        // A request not set is its limit (the apiserver's default), or none.
        let quantity = match which {
            "limits" => Some(limit.ok_or_else(|| {
                field(
                    &resource_path,
                    format!(
                        "container {name:?} has no {resource} limit: a kubelet would use the node's allocatable {resource}, which is not known before the pod reaches the node (set resources.limits.{resource})"
                    ),
                )
            })?),
            _ => resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(resource))
                .or(limit),
        };
        let value = match quantity {
            None => 0,
            Some(q) => units(&q.0).map_err(|m| field(&resource_path, m))?,
        };
        Ok(value.div_ceil(divisor).to_string())
    }

    /// Downward API values that are known before the pod reaches the node.
    pub(super) fn field_ref(
        &self,
        selector: &k8s::ObjectFieldSelector,
        path: &str,
    ) -> Result<String, ConvertError> {
        check_api_version(selector, path)?;
        let field_path = selector.field_path.as_str();
        let fp = format!("{path}.fieldPath");
        let bracketed = |prefix: &str| {
            field_path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix("['"))
                .and_then(|rest| rest.strip_suffix("']"))
        };
        let meta = &self.pod.metadata;
        match field_path {
            "metadata.name" => Ok(self.name.to_owned()),
            "metadata.namespace" => Ok(self.namespace.to_owned()),
            "metadata.uid" if self.uid.is_empty() => Err(field(
                fp,
                "metadata.uid is not known yet (set metadata.uid before converting)",
            )),
            "metadata.uid" => Ok(self.uid.to_owned()),
            "spec.nodeName" => self
                .spec
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| field(fp, "spec.nodeName is not set")),
            "spec.serviceAccountName" => Ok(self
                .spec
                .service_account_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into())),
            _ => {
                if let Some(key) = bracketed("metadata.labels") {
                    let labels = meta.labels.as_ref();
                    return Ok(labels.and_then(|l| l.get(key)).cloned().unwrap_or_default());
                }
                if let Some(key) = bracketed("metadata.annotations") {
                    let annotations = meta.annotations.as_ref();
                    return Ok(annotations
                        .and_then(|a| a.get(key))
                        .cloned()
                        .unwrap_or_default());
                }
                Err(field(fp, format!("unsupported field path {field_path:?}")))
            }
        }
    }
}

fn check_api_version(selector: &k8s::ObjectFieldSelector, path: &str) -> Result<(), ConvertError> {
    match selector.api_version.as_deref() {
        Some(version) if !version.is_empty() && version != "v1" => Err(field(
            format!("{path}.apiVersion"),
            format!("unsupported apiVersion {version:?} (use v1)"),
        )),
        _ => Ok(()),
    }
}

/// Labels or annotations as the kubelet writes them in a downwardAPI file
/// (`fieldpath.FormatMap`): `key="value"` lines sorted by key, no newline
/// after the last, each value quoted as Go's `strconv.Quote` does.
pub(super) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (key, value) in map.into_iter().flatten() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            let code = u32::from(c);
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\x07' => "\\a",
                '\x08' => "\\b",
                '\x0c' => "\\f",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\x0b' => "\\v",
                _ => "",
            };
            let (prefix, width) = match code {
                0x20..0x7f => ("", 0),
                0..0x80 => ("\\x", 2),
                _ if is_printable(c) => ("", 0),
                0x80..0x10000 => ("\\u", 4),
                _ => ("\\U", 8),
            };
            if !escaped.is_empty() {
                out.push_str(escaped);
            } else if width == 0 {
                out.push(c);
            } else {
                let _ = write!(out, "{prefix}{code:0width$x}");
            }
        }
        out.push('"');
    }
    out
}

/// Go's `unicode.IsPrint` for a non-ASCII character: not a control, format,
/// private-use, unassigned or separator character. Rust's `escape_debug`
/// leaves exactly those characters as they are (after the first character
/// of a string, where it escapes combining marks too).
fn is_printable(c: char) -> bool {
    let mut buf = [b'a'; 5];
    let len = c.encode_utf8(&mut buf[1..]).len();
    std::str::from_utf8(&buf[..=len]).is_ok_and(|s| s.escape_debug().count() == 2)
}

pub(super) fn utf8(
    value: Vec<u8>,
    kind: ObjectKind,
    name: &str,
    key: &str,
    path: &str,
) -> Result<String, ConvertError> {
    String::from_utf8(value).map_err(|_| {
        field(
            path,
            format!("key {key:?} of {} {name:?} is not valid utf-8", kind.word()),
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn resolver_fills_env_from_configmaps_and_secrets() {
        let spec = convert_with(
            json!({"spec": {"containers": [{"name": "app", "image": "nginx",
                "envFrom": [
                    {"configMapRef": {"name": "cfg"}, "prefix": "APP_"},
                    {"configMapRef": {"name": "absent", "optional": true}}
                ],
                "env": [
                    {"name": "APP_MODE", "value": "override"},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
                    {"name": "OPT_KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
                    {"name": "OPT_MAP", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}}
                ]}]}}),
            &resolver(),
        )
        .expect("pod converts");
        let env: Vec<(&str, &str, bool)> = spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str(), e.from_object))
            .collect();
        // Values read from objects say so (`agent::decide` updates them
        // without a restart); a literal value does not.
        assert_eq!(
            env,
            [
                ("APP_LEVEL", "debug", true),
                ("APP_MODE", "override", false),
                ("PASSWORD", "hunter2", true),
                ("LEVEL", "debug", true),
            ]
        );
    }

    #[test]
    fn field_refs_resolve_statically() {
        let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let spec = convert(json!({
            "metadata": {"namespace": "factory", "uid": "u-1", "labels": {"app": "web"},
                "annotations": {"team": "edge"}},
            "spec": {"nodeName": "gw-1", "containers": [{"name": "app", "image": "nginx", "env": [
                field_env("NAME", "metadata.name"),
                field_env("NS", "metadata.namespace"),
                field_env("UID", "metadata.uid"),
                field_env("NODE", "spec.nodeName"),
                field_env("SA", "spec.serviceAccountName"),
                field_env("APP", "metadata.labels['app']"),
                field_env("TEAM", "metadata.annotations['team']"),
                field_env("NONE", "metadata.labels['missing']")
            ]}]}
        }));
        let env: Vec<(&str, &str)> = spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("NAME", "web"),
                ("NS", "factory"),
                ("UID", "u-1"),
                ("NODE", "gw-1"),
                ("SA", "default"),
                ("APP", "web"),
                ("TEAM", "edge"),
                ("NONE", ""),
            ]
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "env": [field_env("X", "spec.nodeName")]})));
        assert_eq!(
            err,
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: spec.nodeName is not set"
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "env": [field_env("X", "metadata.generation")]})));
        assert_eq!(
            err,
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported field path \"metadata.generation\""
        );
    }

    /// The pod's and the node's addresses are known on the device only:
    /// they travel as status fields the agent reads at container start.
    #[test]
    fn status_field_refs_travel_as_fields() {
        use crate::model::{EnvVar, StatusField};
        let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let spec = convert(with_container(
            json!({"name": "app", "image": "nginx", "env": [
                field_env("POD_IP", "status.podIP"),
                field_env("POD_IPS", "status.podIPs"),
                field_env("HOST_IP", "status.hostIP"),
                field_env("HOST_IPS", "status.hostIPs"),
                {"name": "URL", "value": "http://$(POD_IP)"}
            ]}),
        ));
        let field = |name: &str, field: StatusField| EnvVar {
            name: name.into(),
            value: String::new(),
            field: Some(field),
            from_object: false,
        };
        assert_eq!(
            spec.containers[0].env,
            [
                field("POD_IP", StatusField::PodIp),
                field("POD_IPS", StatusField::PodIps),
                field("HOST_IP", StatusField::HostIp),
                field("HOST_IPS", StatusField::HostIps),
                EnvVar::new("URL", "http://$(POD_IP)"),
            ]
        );
        // A later plain value of the same name replaces the field.
        let spec = convert(with_container(
            json!({"name": "app", "image": "nginx", "env": [
            field_env("IP", "status.podIP"), {"name": "IP", "value": "x"}]}),
        ));
        assert_eq!(spec.containers[0].env, [EnvVar::new("IP", "x")]);
        let err = convert_err(with_container(
            json!({"name": "app", "image": "nginx", "env": [
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP", "apiVersion": "v2"}}}]}),
        ));
        assert_eq!(
            err,
            "spec.containers[0].env[0].valueFrom.fieldRef.apiVersion: unsupported apiVersion \"v2\" (use v1)"
        );
    }

    /// Only literal values are templates: what comes from a ConfigMap, a
    /// Secret or the downward API is sent escaped, so the agent's expansion
    /// gives it back as it was (the kubelet expands only `value`).
    #[test]
    fn values_from_sources_are_escaped_literal_values_are_not() {
        let resolver = MapResolver::default()
            .config_map("default", "cfg", &[("TEMPLATE", "$(HOME) costs $$5")])
            .secret("default", "creds", &[("password", "pa$$(word)")]);
        let spec = convert_with(
            json!({
                "spec": {"containers": [{"name": "app", "image": "nginx",
                "envFrom": [{"configMapRef": {"name": "cfg"}}],
                "env": [
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "LITERAL", "value": "$(PASSWORD)-$$"}
                ]}]}}),
            &resolver,
        )
        .expect("pod converts");
        let env: Vec<(&str, &str)> = spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("TEMPLATE", "$$(HOME) costs $$$$5"),
                ("PASSWORD", "pa$$$$(word)"),
                ("LITERAL", "$(PASSWORD)-$$"),
            ]
        );
        let running =
            crate::model::expansion::expand_container(&spec.containers[0], &Default::default());
        let env: Vec<&str> = running.env.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(env, ["$(HOME) costs $$5", "pa$$(word)", "pa$$(word)-$"]);
    }
}
