//! Volumes (emptyDir, hostPath, configMap, secret, projected) and volume
//! mounts, and the service account token volume Kubernetes injects.

use super::*;

/// Where Kubernetes mounts the service account token volume in every
/// container (`DefaultAPITokenMountPath` of the ServiceAccount admission
/// plugin).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The reason of the warning for a pod whose injected token volume is left out.
pub const SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED: &str = "ServiceAccountTokenNotMounted";

/// The prefix of the injected volume's name (`kube-api-access-` and five
/// random characters).
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// Whether `v` is exactly the volume the apiserver's ServiceAccount admission
/// plugin adds to every pod unless `automountServiceAccountToken: false`
/// (`TokenVolumeSource` in plugin/pkg/admission/serviceaccount): named
/// `kube-api-access-XXXXX`, a projected volume of the token (`token`, 3607
/// seconds, the apiserver's audience), `ca.crt` of the `kube-root-ca.crt`
/// ConfigMap and the namespace, nothing else, mode 0644. Kedge nodes do not
/// mount API tokens: this volume (and its mounts) are left out with a
/// warning; anything else with a token is a user's own projection, refused.
///
/// Checked field by field with exhaustive patterns (a field a newer
/// k8s-openapi adds does not compile until it is checked here), not by
/// comparing with a built `Volume`: the derived equality of every volume
/// source cost device builds 20 kB.
pub(super) fn is_injected_token_volume(v: &k8s::Volume) -> bool {
    let Some(suffix) = v.name.strip_prefix(TOKEN_VOLUME_PREFIX) else {
        return false;
    };
    if suffix.len() != 5
        || !suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return false;
    }
    let k8s::Volume {
        name: _,
        projected: Some(projected),
        aws_elastic_block_store: None,
        azure_disk: None,
        azure_file: None,
        cephfs: None,
        cinder: None,
        config_map: None,
        csi: None,
        downward_api: None,
        empty_dir: None,
        ephemeral: None,
        fc: None,
        flex_volume: None,
        flocker: None,
        gce_persistent_disk: None,
        git_repo: None,
        glusterfs: None,
        host_path: None,
        image: None,
        iscsi: None,
        nfs: None,
        persistent_volume_claim: None,
        photon_persistent_disk: None,
        portworx_volume: None,
        quobyte: None,
        rbd: None,
        scale_io: None,
        secret: None,
        storageos: None,
        vsphere_volume: None,
    } = v
    else {
        return false;
    };
    // The apiserver's default mode (and the plugin's explicit value).
    if !matches!(projected.default_mode, None | Some(0o644)) {
        return false;
    }
    let Some(
        [
            k8s::VolumeProjection {
                service_account_token: Some(token),
                cluster_trust_bundle: None,
                config_map: None,
                downward_api: None,
                secret: None,
            },
            k8s::VolumeProjection {
                config_map: Some(ca),
                cluster_trust_bundle: None,
                downward_api: None,
                secret: None,
                service_account_token: None,
            },
            k8s::VolumeProjection {
                downward_api: Some(namespace),
                cluster_trust_bundle: None,
                config_map: None,
                secret: None,
                service_account_token: None,
            },
        ],
    ) = projected.sources.as_deref()
    else {
        return false;
    };
    let token_ok =
        token.path == "token" && token.expiration_seconds == Some(3607) && token.audience.is_none();
    let ca_ok = ca.name == "kube-root-ca.crt"
        && ca.optional.is_none()
        && matches!(ca.items.as_deref(), Some([k8s::KeyToPath { key, path, mode: None }])
            if key == "ca.crt" && path == "ca.crt");
    let namespace_ok = matches!(
        namespace.items.as_deref(),
        Some([k8s::DownwardAPIVolumeFile {
            path,
            field_ref: Some(k8s::ObjectFieldSelector { api_version: Some(v1), field_path }),
            mode: None,
            resource_field_ref: None,
        }]) if path == "namespace" && v1 == "v1" && field_path == "metadata.namespace"
    );
    token_ok && ca_ok && namespace_ok
}

/// The warning for a pod whose injected token volume (at `path`) is left out.
pub(super) fn token_warning(path: &str) -> ConvertWarning {
    ConvertWarning {
        path: path.to_owned(),
        reason: SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED,
        message: format!(
            "the pod runs without its service account token at {TOKEN_MOUNT_PATH}: kedge nodes do not mount API tokens (set automountServiceAccountToken: false to silence this)"
        ),
    }
}

impl Ctx<'_> {
    pub(super) fn volume(&self, v: &k8s::Volume, path: &str) -> Result<Volume, ConvertError> {
        // Every source but the supported ones, by its field name.
        let others = [
            (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
            (v.azure_disk.is_some(), "azureDisk"),
            (v.azure_file.is_some(), "azureFile"),
            (v.cephfs.is_some(), "cephfs"),
            (v.cinder.is_some(), "cinder"),
            (v.csi.is_some(), "csi"),
            (v.downward_api.is_some(), "downwardAPI"),
            (v.ephemeral.is_some(), "ephemeral"),
            (v.fc.is_some(), "fc"),
            (v.flex_volume.is_some(), "flexVolume"),
            (v.flocker.is_some(), "flocker"),
            (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
            (v.git_repo.is_some(), "gitRepo"),
            (v.glusterfs.is_some(), "glusterfs"),
            (v.image.is_some(), "image"),
            (v.iscsi.is_some(), "iscsi"),
            (v.nfs.is_some(), "nfs"),
            (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
            (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
            (v.portworx_volume.is_some(), "portworxVolume"),
            (v.projected.is_some(), "projected"),
            (v.quobyte.is_some(), "quobyte"),
            (v.rbd.is_some(), "rbd"),
            (v.scale_io.is_some(), "scaleIO"),
            (v.storageos.is_some(), "storageos"),
            (v.vsphere_volume.is_some(), "vsphereVolume"),
        ];
        let supported = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
        ];
        let count =
            supported.iter().filter(|s| **s).count() + others.iter().filter(|(s, _)| *s).count();
        if count > 1 {
            return Err(field(path, "may not specify more than 1 volume type"));
        }
        // The volume Kubernetes injects is left out before this (see
        // `is_injected_token_volume`); any other token projection is refused.
        let token = v.projected.as_ref().and_then(|p| {
            p.sources
                .iter()
                .flatten()
                .position(|s| s.service_account_token.is_some())
        });
        if let Some(j) = token {
            return Err(field(
                format!("{path}.projected.sources[{j}].serviceAccountToken"),
                "service account token projections are not supported: kedge nodes do not mount API tokens (only the kube-api-access-* volume Kubernetes injects is left out, with a warning)",
            ));
        }
        if let Some((_, source)) = others.iter().find(|(s, _)| *s) {
            return Err(field(
                format!("{path}.{source}"),
                "volume type not supported on kedge nodes (use emptyDir, hostPath, configMap or secret)",
            ));
        }
        let source = if let Some(host_path) = &v.host_path {
            self.host_path(host_path, &format!("{path}.hostPath"))?
        } else if let Some(cm) = &v.config_map {
            let path = format!("{path}.configMap");
            self.files(
                ObjectKind::ConfigMap,
                &cm.name,
                cm.optional,
                cm.items.as_deref(),
                cm.default_mode,
                &path,
            )?
        } else if let Some(secret) = &v.secret {
            let path = format!("{path}.secret");
            self.files(
                ObjectKind::Secret,
                secret.secret_name.as_deref().unwrap_or_default(),
                secret.optional,
                secret.items.as_deref(),
                secret.default_mode,
                &path,
            )?
        } else {
            // No source at all defaults to an emptyDir, as in Kubernetes.
            let empty_dir = v.empty_dir.clone().unwrap_or_default();
            self.empty_dir(&empty_dir, &format!("{path}.emptyDir"))?
        };
        Ok(Volume {
            name: v.name.clone(),
            source,
        })
    }

    pub(super) fn empty_dir(
        &self,
        e: &k8s::EmptyDirVolumeSource,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        let memory = match e.medium.as_deref() {
            None | Some("") => false,
            Some("Memory") => true,
            Some(other) => {
                return Err(field(
                    format!("{path}.medium"),
                    format!(
                        "medium {other:?} is not supported on kedge nodes (use \"\" or Memory)"
                    ),
                ));
            }
        };
        let size_limit_bytes = e
            .size_limit
            .as_ref()
            .map(|q| bytes(&q.0).map_err(|m| field(format!("{path}.sizeLimit"), m)))
            .transpose()?;
        Ok(VolumeSource::EmptyDir {
            memory,
            size_limit_bytes,
        })
    }

    pub(super) fn host_path(
        &self,
        h: &k8s::HostPathVolumeSource,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        if h.path.is_empty() {
            return Err(field(format!("{path}.path"), "required"));
        }
        if !h.path.starts_with('/') {
            return Err(field(format!("{path}.path"), "must be an absolute path"));
        }
        if h.path.split('/').any(|part| part == "..") {
            return Err(field(format!("{path}.path"), "must not contain '..'"));
        }
        // Checked on the device before the pod's containers start.
        let kind = match HostPathType::parse(h.type_.as_deref().unwrap_or_default()) {
            Some(kind) => kind,
            None => {
                return Err(field(
                    format!("{path}.type"),
                    format!(
                        "Unsupported value: {:?}: supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
                        h.type_.as_deref().unwrap_or_default()
                    ),
                ));
            }
        };
        Ok(VolumeSource::HostPath {
            path: h.path.clone(),
            kind,
        })
    }

    /// A configMap or secret volume as resolved files.
    pub(super) fn files(
        &self,
        kind: ObjectKind,
        name: &str,
        optional: Option<bool>,
        items: Option<&[k8s::KeyToPath]>,
        default_mode: Option<i32>,
        path: &str,
    ) -> Result<VolumeSource, ConvertError> {
        let default_mode = match default_mode {
            None => 0o644,
            Some(mode) => file_mode(mode).ok_or_else(|| {
                field(
                    format!("{path}.defaultMode"),
                    "must be a file mode between 0 and 0777 (octal)",
                )
            })?,
        };
        for (k, item) in items.into_iter().flatten().enumerate() {
            let item_path = format!("{path}.items[{k}]");
            if item.key.is_empty() {
                return Err(field(format!("{item_path}.key"), "required"));
            }
            check_relative_path(&format!("{item_path}.path"), &item.path)?;
            if let Some(mode) = item.mode
                && file_mode(mode) != Some(default_mode)
            {
                return Err(field(
                    format!("{item_path}.mode"),
                    "per-file modes are not supported on kedge nodes (use defaultMode)",
                ));
            }
        }
        let name_path = match kind {
            ObjectKind::ConfigMap => format!("{path}.name"),
            ObjectKind::Secret => format!("{path}.secretName"),
        };
        let Some(data) = self.lookup(kind, name, optional, &name_path)? else {
            // Optional and missing: an empty volume, as in Kubernetes.
            return Ok(VolumeSource::Files {
                files: Vec::new(),
                default_mode,
            });
        };
        let files = match items {
            None => {
                if let Some(key) = data.keys().find(|k| !is_file_name(k)) {
                    return Err(field(
                        name_path,
                        format!(
                            "{} {name:?} has key {key:?}, which is not a valid file name",
                            kind.word()
                        ),
                    ));
                }
                data.into_iter().collect()
            }
            Some(items) => {
                let mut files = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    match data.get(&item.key) {
                        Some(content) => files.push((item.path.clone(), content.clone())),
                        None if optional == Some(true) => {}
                        None => {
                            return Err(field(
                                format!("{path}.items[{k}].key"),
                                format!("key {:?} not found in {} {name:?}", item.key, kind.word()),
                            ));
                        }
                    }
                }
                files
            }
        };
        Ok(VolumeSource::Files {
            files,
            default_mode,
        })
    }
}

pub(super) fn file_mode(mode: i32) -> Option<u32> {
    u32::try_from(mode).ok().filter(|m| *m <= 0o777)
}

/// A ConfigMap or Secret key that can be a file name in a volume.
pub(super) fn is_file_name(key: &str) -> bool {
    !key.is_empty() && !key.starts_with("..") && key != "." && !key.contains('/')
}

pub(super) fn check_relative_path(path: &str, value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        return Err(field(path, "required"));
    }
    if value.starts_with('/') {
        return Err(field(path, "must be a relative path"));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(field(path, "must not contain '..'"));
    }
    Ok(())
}

/// The mounts of a container. `token_volumes` are the injected service
/// account token volumes, left out: their mount as the admission plugin
/// makes it (read-only at [`TOKEN_MOUNT_PATH`], nothing else) is left out
/// too, any other mount of them is refused.
pub(super) fn volume_mounts(
    c: &k8s::Container,
    path: &str,
    volume_names: &BTreeSet<&str>,
    token_volumes: &BTreeSet<&str>,
) -> Result<Vec<VolumeMount>, ConvertError> {
    let mut out: Vec<VolumeMount> = Vec::new();
    for (k, m) in c.volume_mounts.iter().flatten().enumerate() {
        let path = format!("{path}.volumeMounts[{k}]");
        if m.name.is_empty() {
            return Err(field(format!("{path}.name"), "required"));
        }
        if !volume_names.contains(m.name.as_str()) {
            return Err(field(
                format!("{path}.name"),
                format!("volume {:?} not found in spec.volumes", m.name),
            ));
        }
        if token_volumes.contains(m.name.as_str()) {
            let injected = k8s::VolumeMount {
                name: m.name.clone(),
                mount_path: TOKEN_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..Default::default()
            };
            if *m == injected {
                continue;
            }
            return Err(field(
                path,
                format!(
                    "service account tokens are not available on kedge nodes: the token volume {:?} is left out, and only its read-only mount at {TOKEN_MOUNT_PATH} with it",
                    m.name
                ),
            ));
        }
        if m.mount_path.is_empty() {
            return Err(field(format!("{path}.mountPath"), "required"));
        }
        if !m.mount_path.starts_with('/') {
            return Err(field(
                format!("{path}.mountPath"),
                "must be an absolute path",
            ));
        }
        if out.iter().any(|o| o.mount_path == m.mount_path) {
            return Err(field(
                format!("{path}.mountPath"),
                format!("duplicate mount path {:?}", m.mount_path),
            ));
        }
        if let Some(propagation) = m.mount_propagation.as_deref()
            && propagation != "None"
        {
            return Err(unsupported(format!("{path}.mountPropagation")));
        }
        if m.sub_path_expr.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(unsupported(format!("{path}.subPathExpr")));
        }
        // recursiveReadOnly: IfPossible and Disabled are satisfied by a plain
        // read-only mount; Enabled is a guarantee the agent cannot give.
        if m.recursive_read_only.as_deref() == Some("Enabled") {
            return Err(unsupported(format!("{path}.recursiveReadOnly")));
        }
        let sub_path = m.sub_path.clone().filter(|s| !s.is_empty());
        if let Some(sub_path) = &sub_path {
            check_relative_path(&format!("{path}.subPath"), sub_path)?;
        }
        out.push(VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
            sub_path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn volumes_and_mounts() {
        let spec = convert(json!({"spec": {
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "dev", "hostPath": {"path": "/dev/ttyUSB0", "type": "CharDevice"}},
                {"name": "implicit"}
            ],
            "containers": [{"name": "app", "image": "nginx", "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "dev", "mountPath": "/dev/ttyUSB0", "readOnly": true, "subPath": "x/y",
                 "mountPropagation": "None"}
            ]}]
        }}));
        assert_eq!(
            spec.volumes,
            [
                Volume {
                    name: "scratch".into(),
                    source: VolumeSource::EmptyDir {
                        memory: false,
                        size_limit_bytes: None
                    }
                },
                Volume {
                    name: "ram".into(),
                    source: VolumeSource::EmptyDir {
                        memory: true,
                        size_limit_bytes: Some(64 << 20)
                    }
                },
                Volume {
                    name: "dev".into(),
                    source: VolumeSource::HostPath {
                        path: "/dev/ttyUSB0".into(),
                        kind: HostPathType::CharDevice,
                    }
                },
                Volume {
                    name: "implicit".into(),
                    source: VolumeSource::EmptyDir {
                        memory: false,
                        size_limit_bytes: None
                    }
                },
            ]
        );
        assert_eq!(
            spec.containers[0].volume_mounts,
            [
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp".into(),
                    read_only: false,
                    sub_path: None
                },
                VolumeMount {
                    name: "dev".into(),
                    mount_path: "/dev/ttyUSB0".into(),
                    read_only: true,
                    sub_path: Some("x/y".into())
                },
            ]
        );

        let volume = json!([{"name": "v", "emptyDir": {}}]);
        let cases = [
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "HostToContainer"}]}]}}),
                "spec.containers[0].volumeMounts[0].mountPropagation: not supported on kedge nodes",
            ),
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "../etc"}]}]}}),
                "spec.containers[0].volumeMounts[0].subPath: must not contain '..'",
            ),
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": ""}]}]}}),
                "spec.containers[0].volumeMounts[0].mountPath: required",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]}}),
                "spec.volumes[1].name: duplicate volume name \"v\"",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}]}}),
                "spec.volumes[0]: may not specify more than 1 volume type",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "relative"}}]}}),
                "spec.volumes[0].hostPath.path: must be an absolute path",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/x", "type": "Dir"}}]}}),
                "spec.volumes[0].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1.5"}}]}}),
                "spec.volumes[0].emptyDir.sizeLimit: fractional byte value \"1.5\" is invalid, must be an integer",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
    }

    /// The volume and mount the apiserver's ServiceAccount admission plugin
    /// adds (as `kubectl get pod -o json` shows them).
    fn token_volume(name: &str) -> Value {
        json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}})
    }

    fn token_mount(name: &str) -> Value {
        json!({"name": name, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true})
    }

    /// A pod with the injected volume (second) mounted in its init
    /// container and its container, besides an emptyDir.
    fn injected(volume: Value, mount: Value) -> Value {
        json!({"spec": {
            "volumes": [{"name": "scratch", "emptyDir": {}}, volume],
            "initContainers": [{"name": "init", "image": "busybox:1", "volumeMounts": [mount.clone()]}],
            "containers": [{"name": "app", "image": "nginx:1.25", "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp"}, mount
            ]}]
        }})
    }

    #[test]
    fn the_injected_token_volume_is_left_out_with_a_warning() {
        let name = "kube-api-access-7xk2p";
        let without = convert(json!({"spec": {
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "app", "image": "nginx:1.25", "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp"}
            ]}]
        }}));
        let warning = ConvertWarning {
            path: "spec.volumes[1]".into(),
            reason: SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED,
            message: "the pod runs without its service account token at /var/run/secrets/kubernetes.io/serviceaccount: kedge nodes do not mount API tokens (set automountServiceAccountToken: false to silence this)".into(),
        };
        let converted = convert_warned(injected(token_volume(name), token_mount(name)));
        assert_eq!(converted.spec, without);
        assert_eq!(converted.warnings, std::slice::from_ref(&warning));
        assert_eq!(
            warning.to_string(),
            format!("spec.volumes[1]: {}", warning.message)
        );

        // Without the explicit defaultMode (the same 0644), in a Wasm pod,
        // and in a container that does not mount it.
        let mut volume = token_volume(name);
        volume["projected"]
            .as_object_mut()
            .expect("projected")
            .remove("defaultMode");
        let mut pod = injected(volume, token_mount(name));
        merge(
            &mut pod,
            json!({"spec": {"runtimeClassName": "kedge-wasm", "initContainers": [],
                "containers": [{"name": "app", "image": format!("https://m.example/m.wasm@sha256:{DIGEST}")}]}}),
        );
        let converted = convert_warned(pod);
        let names: Vec<&str> = converted
            .spec
            .volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["scratch"]);
        assert_eq!(converted.warnings, [warning]);

        // A pod without it has no warning.
        assert!(convert_warned(json!({})).warnings.is_empty());
    }

    #[test]
    fn other_token_projections_are_refused_at_their_field() {
        let name = "kube-api-access-7xk2p";
        let token = "spec.volumes[1].projected.sources[0].serviceAccountToken: service account token projections are not supported: kedge nodes do not mount API tokens (only the kube-api-access-* volume Kubernetes injects is left out, with a warning)";
        let mount_refused = |k: usize| {
            format!(
                "spec.containers[0].volumeMounts[{k}]: service account tokens are not available on kedge nodes: the token volume \"{name}\" is left out, and only its read-only mount at {TOKEN_MOUNT_PATH} with it"
            )
        };
        let changed = |patch: Value| {
            let mut v = token_volume(name);
            merge(&mut v, patch);
            v
        };
        let sources = |f: &dyn Fn(&mut Vec<Value>)| {
            let mut v = token_volume(name);
            let list = v["projected"]["sources"].as_array_mut().expect("sources");
            f(list);
            v
        };
        let cases: Vec<(Value, Value, String)> = vec![
            // Another file name for the token.
            (
                sources(&|s| s[0]["serviceAccountToken"]["path"] = json!("api-token")),
                token_mount(name),
                token.into(),
            ),
            // Another audience.
            (
                sources(&|s| s[0]["serviceAccountToken"]["audience"] = json!("vault")),
                token_mount(name),
                token.into(),
            ),
            // Another lifetime.
            (
                sources(&|s| s[0]["serviceAccountToken"]["expirationSeconds"] = json!(7200)),
                token_mount(name),
                token.into(),
            ),
            // An extra source (OpenShift adds its service CA this way).
            (
                sources(&|s| {
                    s.push(json!({"configMap": {"name": "openshift-service-ca.crt",
                        "items": [{"key": "service-ca.crt", "path": "service-ca.crt"}]}}))
                }),
                token_mount(name),
                token.into(),
            ),
            // A source missing.
            (
                sources(&|s| {
                    s.pop();
                }),
                token_mount(name),
                token.into(),
            ),
            // Another mode.
            (
                changed(json!({"projected": {"defaultMode": 256}})),
                token_mount(name),
                token.into(),
            ),
            // The exact shape under a user's own name.
            (
                changed(json!({"name": "api-token"})),
                token_mount("api-token"),
                token.into(),
            ),
            (
                changed(json!({"name": "kube-api-access-mine-too-long"})),
                token_mount("kube-api-access-mine-too-long"),
                token.into(),
            ),
            // The injected volume mounted writable, elsewhere, or in part.
            (
                token_volume(name),
                json!({"name": name, "mountPath": TOKEN_MOUNT_PATH}),
                mount_refused(1),
            ),
            (
                token_volume(name),
                json!({"name": name, "mountPath": "/token", "readOnly": true}),
                mount_refused(1),
            ),
            (
                token_volume(name),
                json!({"name": name, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true, "subPath": "token"}),
                mount_refused(1),
            ),
        ];
        for (volume, mount, expected) in cases {
            let mut pod = injected(volume.clone(), mount.clone());
            merge(&mut pod, json!({"spec": {"initContainers": []}}));
            assert_eq!(
                convert_err(pod),
                expected,
                "volume: {volume}, mount: {mount}"
            );
        }

        // Asking for the token explicitly stays refused, injected volume or not.
        let mut pod = injected(token_volume(name), token_mount(name));
        merge(
            &mut pod,
            json!({"spec": {"automountServiceAccountToken": true}}),
        );
        assert_eq!(
            convert_err(pod),
            "spec.automountServiceAccountToken: service account tokens are not available on kedge nodes (set it to false or leave it unset)"
        );
    }

    #[test]
    fn resolver_fills_configmap_and_secret_volumes() {
        let spec = convert_with(
            json!({"spec": {"volumes": [
                {"name": "all", "configMap": {"name": "cfg"}},
                {"name": "some", "configMap": {"name": "cfg", "defaultMode": 0o600,
                    "items": [{"key": "MODE", "path": "conf/mode", "mode": 0o600},
                              {"key": "gone", "path": "gone"}], "optional": true}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "maybe", "secret": {"secretName": "absent", "optional": true}}
            ]}}),
            &resolver(),
        )
        .expect("pod converts");
        let sources: Vec<&VolumeSource> = spec.volumes.iter().map(|v| &v.source).collect();
        assert_eq!(
            sources,
            [
                &VolumeSource::Files {
                    files: vec![
                        ("LEVEL".into(), b"debug".to_vec()),
                        ("MODE".into(), b"edge".to_vec()),
                    ],
                    default_mode: 0o644,
                },
                &VolumeSource::Files {
                    files: vec![("conf/mode".into(), b"edge".to_vec())],
                    default_mode: 0o600,
                },
                &VolumeSource::Files {
                    files: vec![("password".into(), b"hunter2".to_vec())],
                    default_mode: 0o400,
                },
                &VolumeSource::Files {
                    files: vec![],
                    default_mode: 0o644
                },
            ]
        );
    }
}
