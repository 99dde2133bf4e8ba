//! Volumes (emptyDir, hostPath, configMap, secret, downwardAPI, projected)
//! and volume mounts, and the service account token volume Kubernetes
//! injects. configMap, secret, downwardAPI and projected volumes are
//! resolved here into files ([`VolumeSource::Files`]), fixed at conversion.

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
            (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
            (v.portworx_volume.is_some(), "portworxVolume"),
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
            v.downward_api.is_some(),
            v.projected.is_some(),
            v.persistent_volume_claim.is_some(),
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
                "volume type not supported on kedge nodes (use emptyDir, hostPath, configMap, secret, downwardAPI, projected or persistentVolumeClaim)",
            ));
        }
        let source = if let Some(host_path) = &v.host_path {
            self.host_path(host_path, &format!("{path}.hostPath"))?
        } else if let Some(pvc) = &v.persistent_volume_claim {
            // Bound on the device to a durable directory of the claim's
            // name (`VolumeSource::Claim`); the name rule is the wire's.
            VolumeSource::Claim {
                claim: pvc.claim_name.clone(),
                read_only: pvc.read_only == Some(true),
            }
        } else if let Some((default_mode, files)) = self.file_volume(v, path)? {
            VolumeSource::Files {
                files: files.into_iter().collect(),
                default_mode,
            }
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

    /// A configMap, secret, downwardAPI or projected volume: its mode and
    /// its files, in order; None for any other volume.
    fn file_volume(
        &self,
        v: &k8s::Volume,
        path: &str,
    ) -> Result<Option<(u32, Files)>, ConvertError> {
        let mut files = Files::new();
        let mode = if let Some(cm) = &v.config_map {
            let path = format!("{path}.configMap");
            let mode = default_mode(cm.default_mode, &path)?;
            let (name, optional, items) = (&cm.name, cm.optional, cm.items.as_deref());
            let name_path = format!("{path}.name");
            self.key_files(
                ObjectKind::ConfigMap,
                name,
                optional,
                items,
                mode,
                &path,
                &name_path,
                &mut files,
            )?;
            mode
        } else if let Some(secret) = &v.secret {
            let path = format!("{path}.secret");
            let mode = default_mode(secret.default_mode, &path)?;
            let name = secret.secret_name.as_deref().unwrap_or_default();
            let name_path = format!("{path}.secretName");
            let (optional, items) = (secret.optional, secret.items.as_deref());
            self.key_files(
                ObjectKind::Secret,
                name,
                optional,
                items,
                mode,
                &path,
                &name_path,
                &mut files,
            )?;
            mode
        } else if let Some(d) = &v.downward_api {
            let path = format!("{path}.downwardAPI");
            let mode = default_mode(d.default_mode, &path)?;
            self.downward_files(d.items.as_deref(), mode, &path, &mut files)?;
            mode
        } else if let Some(p) = &v.projected {
            self.projected(p, &format!("{path}.projected"), &mut files)?
        } else {
            return Ok(None);
        };
        Ok(Some((mode, files)))
    }

    /// The files of a configMap or secret volume or projection, added to
    /// `files`: every key, or the `items` asked for.
    #[allow(clippy::too_many_arguments)]
    fn key_files(
        &self,
        kind: ObjectKind,
        name: &str,
        optional: Option<bool>,
        items: Option<&[k8s::KeyToPath]>,
        mode: u32,
        path: &str,
        name_path: &str,
        files: &mut Files,
    ) -> Result<(), ConvertError> {
        let mut checked = Vec::new();
        for (k, item) in items.into_iter().flatten().enumerate() {
            let item_path = format!("{path}.items[{k}]");
            if item.key.is_empty() {
                return Err(field(format!("{item_path}.key"), "required"));
            }
            checked.push(file_path(&format!("{item_path}.path"), &item.path)?);
            item_mode(item.mode, mode, &item_path)?;
        }
        let Some(data) = self.lookup(kind, name, optional, name_path)? else {
            // Optional and missing: no files, as in Kubernetes.
            return Ok(());
        };
        let Some(items) = items else {
            if let Some(key) = data.keys().find(|k| !is_file_name(k)) {
                return Err(field(
                    name_path,
                    format!(
                        "{} {name:?} has key {key:?}, which is not a valid file name",
                        kind.word()
                    ),
                ));
            }
            files.extend(data);
            return Ok(());
        };
        for ((k, item), file) in items.iter().enumerate().zip(checked) {
            match data.get(&item.key) {
                Some(content) => {
                    files.insert(file, content.clone());
                }
                None if optional == Some(true) => {}
                None => {
                    return Err(field(
                        format!("{path}.items[{k}].key"),
                        format!("key {:?} not found in {} {name:?}", item.key, kind.word()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The files of a downwardAPI volume or projection, added to `files`.
    fn downward_files(
        &self,
        items: Option<&[k8s::DownwardAPIVolumeFile]>,
        mode: u32,
        path: &str,
        files: &mut Files,
    ) -> Result<(), ConvertError> {
        for (k, item) in items.into_iter().flatten().enumerate() {
            let item_path = format!("{path}.items[{k}]");
            let file = file_path(&format!("{item_path}.path"), &item.path)?;
            item_mode(item.mode, mode, &item_path)?;
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), None) => self.volume_field_ref(f, &format!("{item_path}.fieldRef"))?,
                (None, Some(r)) => {
                    self.resource_field_ref(r, None, &format!("{item_path}.resourceFieldRef"))?
                }
                (Some(_), Some(_)) => {
                    return Err(field(
                        item_path,
                        "Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously",
                    ));
                }
                (None, None) => {
                    return Err(field(
                        item_path,
                        "Required value: one of fieldRef and resourceFieldRef is required",
                    ));
                }
            };
            files.insert(file, value.into_bytes());
        }
        Ok(())
    }

    /// A projected volume: its sources' files merged in order. An item path
    /// given twice is refused, as the apiserver does; a key of a whole
    /// ConfigMap or Secret that another source has too is the later
    /// source's, as on a kubelet.
    fn projected(
        &self,
        p: &k8s::ProjectedVolumeSource,
        path: &str,
        files: &mut Files,
    ) -> Result<u32, ConvertError> {
        let mode = default_mode(p.default_mode, path)?;
        let sources = p.sources.as_deref().unwrap_or_default();
        let mut item_paths = BTreeSet::new();
        for (j, s) in sources.iter().enumerate() {
            let kinds = [
                s.config_map.is_some(),
                s.secret.is_some(),
                s.downward_api.is_some(),
                s.service_account_token.is_some(),
                s.cluster_trust_bundle.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() > 1 {
                return Err(field(
                    format!("{path}.sources[{j}]"),
                    "Forbidden: may not specify more than 1 volume type per source",
                ));
            }
            if s.cluster_trust_bundle.is_some() {
                return Err(unsupported(format!(
                    "{path}.sources[{j}].clusterTrustBundle"
                )));
            }
            let (named, paths): (&str, Vec<&str>) = if let Some(cm) = &s.config_map {
                (
                    &cm.name,
                    cm.items.iter().flatten().map(|i| i.path.as_str()).collect(),
                )
            } else if let Some(secret) = &s.secret {
                (
                    &secret.name,
                    secret
                        .items
                        .iter()
                        .flatten()
                        .map(|i| i.path.as_str())
                        .collect(),
                )
            } else {
                let items = s.downward_api.iter().flat_map(|d| d.items.iter().flatten());
                ("", items.map(|i| i.path.as_str()).collect())
            };
            for p in paths.into_iter().filter(|p| !p.is_empty()) {
                if !item_paths.insert(p) {
                    let value = if named.is_empty() { p } else { named };
                    return Err(field(
                        path,
                        format!("Invalid value: {value:?}: conflicting duplicate paths"),
                    ));
                }
            }
        }
        for (j, s) in sources.iter().enumerate() {
            let path = format!("{path}.sources[{j}]");
            let keys = if let Some(cm) = &s.config_map {
                Some((
                    ObjectKind::ConfigMap,
                    "configMap",
                    &cm.name,
                    cm.optional,
                    &cm.items,
                ))
            } else {
                (s.secret.as_ref())
                    .map(|s| (ObjectKind::Secret, "secret", &s.name, s.optional, &s.items))
            };
            if let Some((kind, field, name, optional, items)) = keys {
                let path = format!("{path}.{field}");
                let name_path = format!("{path}.name");
                let items = items.as_deref();
                self.key_files(kind, name, optional, items, mode, &path, &name_path, files)?;
            } else if let Some(d) = &s.downward_api {
                let path = format!("{path}.downwardAPI");
                self.downward_files(d.items.as_deref(), mode, &path, files)?;
            }
        }
        Ok(mode)
    }
}

/// A volume's files: relative path → content. A path given twice is the
/// later file's, as in the kubelet's payload (a map).
type Files = BTreeMap<String, Vec<u8>>;

/// A volume's `defaultMode` (0644 when unset, the apiserver's default).
fn default_mode(mode: Option<i32>, path: &str) -> Result<u32, ConvertError> {
    match mode {
        None => Ok(0o644),
        Some(mode) => file_mode(mode).ok_or_else(|| {
            field(
                format!("{path}.defaultMode"),
                "must be a file mode between 0 and 0777 (octal)",
            )
        }),
    }
}

/// An item's own `mode`: the agent writes every file of a volume with one
/// mode, so one that differs from the volume's is refused, never ignored.
fn item_mode(mode: Option<i32>, default: u32, item_path: &str) -> Result<(), ConvertError> {
    match mode.map(file_mode) {
        None => Ok(()),
        Some(Some(m)) if m == default => Ok(()),
        Some(None) => Err(field(
            format!("{item_path}.mode"),
            "must be a file mode between 0 and 0777 (octal)",
        )),
        Some(Some(_)) => Err(field(
            format!("{item_path}.mode"),
            "per-file modes are not supported on kedge nodes (use defaultMode)",
        )),
    }
}

/// An item's `path` as the apiserver validates it (relative, no `..`
/// element, not starting with `..`), cleaned as the kubelet writes it
/// (`a//b/./c` is `a/b/c`).
fn file_path(path: &str, value: &str) -> Result<String, ConvertError> {
    check_relative_path(path, value)?;
    let parts: Vec<&str> = value
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    match parts.first() {
        None => Err(field(path, "must name a file in the volume")),
        Some(first) if first.starts_with("..") => Err(field(path, "must not start with '..'")),
        Some(_) => Ok(parts.join("/")),
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
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => MountPropagation::Private,
            Some("HostToContainer") => MountPropagation::HostToContainer,
            Some("Bidirectional") => MountPropagation::Bidirectional,
            Some(other) => {
                return Err(field(
                    format!("{path}.mountPropagation"),
                    format!(
                        "unsupported value {other:?} (use None, HostToContainer or Bidirectional)"
                    ),
                ));
            }
        };
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
            propagation,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    /// `mountPropagation` reaches the mount; Bidirectional only for a
    /// privileged container, nothing for a Wasm module.
    #[test]
    fn mount_propagation_follows_the_kubernetes_rules() {
        let pod = |propagation: &str, privileged: bool| {
            json!({"spec": {
                "volumes": [{"name": "v", "hostPath": {"path": "/mnt"}}],
                "containers": [{"name": "app", "image": "nginx:1.25",
                    "securityContext": {"privileged": privileged},
                    "volumeMounts": [{"name": "v", "mountPath": "/mnt", "mountPropagation": propagation}]}]
            }})
        };
        let mount = |spec: &PodSpec| spec.containers[0].volume_mounts[0].propagation;
        assert_eq!(
            mount(&convert(pod("HostToContainer", false))),
            MountPropagation::HostToContainer
        );
        assert_eq!(
            mount(&convert(pod("Bidirectional", true))),
            MountPropagation::Bidirectional
        );
        assert_eq!(
            mount(&convert(pod("None", false))),
            MountPropagation::Private
        );
        assert_eq!(
            convert_err(pod("Bidirectional", false)),
            "spec.containers[0].volumeMounts[0].mountPropagation: Bidirectional mount propagation is available only to privileged containers"
        );
        let wasm = json!({"spec": {
            "runtimeClassName": "kedge-wasm",
            "volumes": [{"name": "v", "hostPath": {"path": "/mnt"}}],
            "containers": [{"name": "app", "image": format!("file:///m.wasm@sha256:{DIGEST}"),
                "volumeMounts": [{"name": "v", "mountPath": "/mnt", "mountPropagation": "HostToContainer"}]}]
        }});
        assert_eq!(
            convert_err(wasm),
            "spec.containers[0].volumeMounts[0].mountPropagation: not supported for wasm containers: a module has no mounts to propagate"
        );
    }

    /// A persistent volume claim becomes the device's durable directory of
    /// that claim; `readOnly` makes every mount of it read-only.
    #[test]
    fn persistent_volume_claims_become_device_claims() {
        let spec = convert(json!({"spec": {
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}},
                {"name": "ref", "persistentVolumeClaim": {"claimName": "models", "readOnly": true}}
            ],
            "containers": [{"name": "app", "image": "nginx:1.25", "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/db"},
                {"name": "ref", "mountPath": "/models"}
            ]}]
        }}));
        assert_eq!(
            spec.volumes[0].source,
            VolumeSource::Claim {
                claim: "db-data".into(),
                read_only: false
            }
        );
        let mounts = &spec.containers[0].volume_mounts;
        assert!(!spec.mount_read_only(&mounts[0]));
        assert!(spec.mount_read_only(&mounts[1]));
    }

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
                    sub_path: None,
                    propagation: MountPropagation::Private,
                },
                VolumeMount {
                    name: "dev".into(),
                    mount_path: "/dev/ttyUSB0".into(),
                    read_only: true,
                    sub_path: Some("x/y".into()),
                    propagation: MountPropagation::Private,
                },
            ]
        );

        let volume = json!([{"name": "v", "emptyDir": {}}]);
        let cases = [
            (
                json!({"spec": {"volumes": volume, "containers": [{"name": "app", "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": "Sideways"}]}]}}),
                "spec.containers[0].volumeMounts[0].mountPropagation: unsupported value \"Sideways\" (use None, HostToContainer or Bidirectional)",
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

    fn files(source: &VolumeSource) -> Vec<(&str, &str)> {
        let VolumeSource::Files { files, .. } = source else {
            panic!("not files: {source:?}");
        };
        files
            .iter()
            .map(|(n, c)| (n.as_str(), std::str::from_utf8(c).expect("utf-8")))
            .collect()
    }

    fn mode(source: &VolumeSource) -> u32 {
        match source {
            VolumeSource::Files { default_mode, .. } => *default_mode,
            other => panic!("not files: {other:?}"),
        }
    }

    fn field_file(path: &str, field_path: &str) -> Value {
        json!({"path": path, "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}})
    }

    fn resource_file(path: &str, resource: &str, divisor: Option<&str>) -> Value {
        let mut r = json!({"containerName": "app", "resource": resource});
        if let Some(d) = divisor {
            r["divisor"] = json!(d);
        }
        json!({"path": path, "resourceFieldRef": r})
    }

    /// A pod with one volume, its container `app` with these resources.
    fn pod_with(volume: Value, resources: Value) -> Value {
        json!({
            "metadata": {"namespace": "factory", "uid": "u-1",
                "labels": {"app": "web", "tier": "edge"},
                "annotations": {"note": "say \"hi\"\\\n\tthen\u{1}\u{7f} é\u{a0}\u{200b}😀\u{e000}\u{f0000}\u{301}"}},
            "spec": {"volumes": [volume], "containers": [
                {"name": "app", "image": "nginx", "resources": resources}]}
        })
    }

    #[test]
    fn downward_api_volume_files_are_the_kubelets() {
        let spec = convert(pod_with(
            json!({"name": "info", "downwardAPI": {"defaultMode": 0o444, "items": [
                field_file("name", "metadata.name"),
                field_file("ns", "metadata.namespace"),
                field_file("uid", "metadata.uid"),
                field_file("labels", "metadata.labels"),
                field_file("meta/annotations", "metadata.annotations"),
                field_file("meta//./app", "metadata.labels['app']"),
                field_file("missing", "metadata.labels['nope']"),
                {"path": "same-mode", "mode": 0o444, "fieldRef": {"fieldPath": "metadata.name"}}
            ]}}),
            json!({}),
        ));
        let source = &spec.volumes[0].source;
        assert_eq!(mode(source), 0o444);
        assert_eq!(
            files(source),
            [
                ("labels", "app=\"web\"\ntier=\"edge\""),
                // strconv.Quote: escapes, \x for ASCII controls, \u and \U
                // for what Go does not print (no-break space, zero-width
                // space, private use); é, the emoji and a combining mark as
                // they are.
                (
                    "meta/annotations",
                    "note=\"say \\\"hi\\\"\\\\\\n\\tthen\\x01\\x7f é\\u00a0\\u200b😀\\ue000\\U000f0000\u{301}\""
                ),
                ("meta/app", "web"),
                ("missing", ""),
                ("name", "web"),
                ("ns", "factory"),
                ("same-mode", "web"),
                ("uid", "u-1"),
            ]
        );
        assert_eq!(format_map_of(&[]), "");
    }

    fn format_map_of(pairs: &[(&str, &str)]) -> String {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        super::super::env::format_map(Some(&map))
    }

    #[test]
    fn resource_field_refs_divide_and_round_up_as_the_kubelet() {
        let spec = convert(pod_with(
            json!({"name": "res", "downwardAPI": {"items": [
                resource_file("cpu-limit", "limits.cpu", None),
                resource_file("cpu-limit-m", "limits.cpu", Some("1m")),
                resource_file("cpu-limit-zero-divisor", "limits.cpu", Some("0")),
                resource_file("cpu-request", "requests.cpu", Some("1m")),
                resource_file("mem-request", "requests.memory", Some("1Mi")),
                resource_file("mem-limit-ki", "limits.memory", Some("1Ki")),
                resource_file("mem-limit-k", "limits.memory", Some("1k")),
                resource_file("storage", "limits.ephemeral-storage", Some("1M")),
                resource_file("storage-request", "requests.ephemeral-storage", None)
            ]}}),
            json!({"limits": {"cpu": "1500m", "memory": "128Mi", "ephemeral-storage": "1Gi"},
                   "requests": {"cpu": "0.0001"}}),
        ));
        assert_eq!(
            files(&spec.volumes[0].source),
            [
                ("cpu-limit", "2"),
                ("cpu-limit-m", "1500"),
                ("cpu-limit-zero-divisor", "2"),
                // Below a millicore rounds up to one.
                ("cpu-request", "1"),
                ("mem-limit-k", "134218"),
                ("mem-limit-ki", "131072"),
                // A request not set is its limit.
                ("mem-request", "128"),
                ("storage", "1074"),
                ("storage-request", "1073741824"),
            ]
        );
        // No request and no limit: zero, as on a kubelet.
        let spec = convert(pod_with(
            json!({"name": "res", "downwardAPI": {"items": [
                resource_file("cpu", "requests.cpu", None),
                resource_file("memory", "requests.memory", None)
            ]}}),
            json!({}),
        ));
        assert_eq!(
            files(&spec.volumes[0].source),
            [("cpu", "0"), ("memory", "0")]
        );
        // In env, the container is its own by default.
        let spec = convert(with_container(json!({"name": "app", "image": "nginx",
            "resources": {"limits": {"memory": "64Mi"}},
            "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef":
                {"resource": "limits.memory", "divisor": "1Mi"}}}]})));
        assert_eq!(spec.containers[0].env[0].value, "64");
    }

    #[test]
    fn projected_volumes_merge_their_sources_in_order() {
        // (The files are sent sorted by path.)
        let spec = convert_with(
            pod_with(
                json!({"name": "all", "projected": {"defaultMode": 0o440, "sources": [
                    {"configMap": {"name": "cfg", "items": [
                        {"key": "LEVEL", "path": "conf/level", "mode": 0o440}]}},
                    {"configMap": {"name": "cfg"}},
                    {"configMap": {"name": "override"}},
                    {"secret": {"name": "creds"}},
                    {"secret": {"name": "absent", "optional": true}},
                    {"downwardAPI": {"items": [field_file("labels", "metadata.labels")]}},
                    {}
                ]}}),
                json!({}),
            ),
            &resolver()
                .config_map("factory", "cfg", &[("LEVEL", "debug"), ("MODE", "edge")])
                .config_map("factory", "override", &[("MODE", "cloud")])
                .secret("factory", "creds", &[("password", "hunter2")]),
        )
        .expect("pod converts");
        let source = &spec.volumes[0].source;
        assert_eq!(mode(source), 0o440);
        assert_eq!(
            files(source),
            [
                ("LEVEL", "debug"),
                // A whole ConfigMap's key that a later one has too is the later one's.
                ("MODE", "cloud"),
                ("conf/level", "debug"),
                ("labels", "app=\"web\"\ntier=\"edge\""),
                ("password", "hunter2"),
            ]
        );
        // Without defaultMode: 0644.
        let spec = convert(pod_with(
            json!({"name": "p", "projected": {"sources": [
                {"downwardAPI": {"items": [field_file("name", "metadata.name")]}}]}}),
            json!({}),
        ));
        assert_eq!(mode(&spec.volumes[0].source), 0o644);
    }

    #[test]
    fn downward_api_and_projected_refusals_name_their_field() {
        let downward = |item: Value| json!({"name": "v", "downwardAPI": {"items": [item]}});
        let projected = |sources: Value| json!({"name": "v", "projected": {"sources": sources}});
        let supported = "supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\"";
        let cases = [
            (
                downward(field_file("node", "spec.nodeName")),
                format!("spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath: Unsupported value: \"spec.nodeName\": {supported}"),
            ),
            (
                downward(field_file("ip", "status.podIP")),
                format!("spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath: Unsupported value: \"status.podIP\": {supported}"),
            ),
            (
                downward(json!({"path": "x", "fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}})),
                "spec.volumes[0].downwardAPI.items[0].fieldRef.apiVersion: unsupported apiVersion \"v2\" (use v1)".into(),
            ),
            (
                downward(resource_file("mem", "limits.memory", None)),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.resource: container \"app\" has no memory limit: a kubelet would use the node's allocatable memory, which is not known before the pod reaches the node (set resources.limits.memory)".into(),
            ),
            (
                downward(json!({"path": "mem", "resourceFieldRef": {"resource": "requests.memory"}})),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.containerName: Required value".into(),
            ),
            (
                downward(json!({"path": "mem", "resourceFieldRef": {"containerName": "db", "resource": "requests.memory"}})),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.containerName: container \"db\" not found in the pod".into(),
            ),
            (
                downward(resource_file("cpu", "requests.cpu", Some("1k"))),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.divisor: Invalid value: \"requests.cpu\": only divisor's values 1m and 1 are supported with the cpu resource".into(),
            ),
            (
                downward(resource_file("mem", "requests.memory", Some("3"))),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.divisor: Invalid value: \"requests.memory\": only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the memory resource".into(),
            ),
            (
                downward(resource_file("pages", "limits.hugepages-2Mi", None)),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.resource: Unsupported value: \"limits.hugepages-2Mi\": supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\"".into(),
            ),
            (
                downward(json!({"path": "x", "fieldRef": {"fieldPath": "metadata.name"},
                    "resourceFieldRef": {"containerName": "app", "resource": "requests.cpu"}})),
                "spec.volumes[0].downwardAPI.items[0]: Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously".into(),
            ),
            (
                downward(json!({"path": "x"})),
                "spec.volumes[0].downwardAPI.items[0]: Required value: one of fieldRef and resourceFieldRef is required".into(),
            ),
            (
                downward(json!({"path": "x", "mode": 0o600, "fieldRef": {"fieldPath": "metadata.name"}})),
                "spec.volumes[0].downwardAPI.items[0].mode: per-file modes are not supported on kedge nodes (use defaultMode)".into(),
            ),
            (
                downward(json!({"path": "x", "mode": 0o1000, "fieldRef": {"fieldPath": "metadata.name"}})),
                "spec.volumes[0].downwardAPI.items[0].mode: must be a file mode between 0 and 0777 (octal)".into(),
            ),
            (
                downward(field_file("../x", "metadata.name")),
                "spec.volumes[0].downwardAPI.items[0].path: must not contain '..'".into(),
            ),
            (
                downward(field_file("./..data", "metadata.name")),
                "spec.volumes[0].downwardAPI.items[0].path: must not start with '..'".into(),
            ),
            (
                downward(field_file("/etc/x", "metadata.name")),
                "spec.volumes[0].downwardAPI.items[0].path: must be a relative path".into(),
            ),
            (
                downward(field_file("", "metadata.name")),
                "spec.volumes[0].downwardAPI.items[0].path: required".into(),
            ),
            (
                downward(field_file("./", "metadata.name")),
                "spec.volumes[0].downwardAPI.items[0].path: must name a file in the volume".into(),
            ),
            (
                json!({"name": "v", "downwardAPI": {"defaultMode": -1}}),
                "spec.volumes[0].downwardAPI.defaultMode: must be a file mode between 0 and 0777 (octal)".into(),
            ),
            (
                projected(json!([{"configMap": {"name": "cfg", "optional": true,
                    "items": [{"key": "LEVEL", "path": "level", "mode": 0o600}]}}])),
                "spec.volumes[0].projected.sources[0].configMap.items[0].mode: per-file modes are not supported on kedge nodes (use defaultMode)".into(),
            ),
            (
                projected(json!([
                    {"configMap": {"name": "a", "optional": true, "items": [{"key": "k", "path": "same"}]}},
                    {"secret": {"name": "b", "optional": true, "items": [{"key": "k", "path": "same"}]}}])),
                "spec.volumes[0].projected: Invalid value: \"b\": conflicting duplicate paths".into(),
            ),
            (
                projected(json!([
                    {"configMap": {"name": "a", "optional": true, "items": [{"key": "k", "path": "same"}]}},
                    {"downwardAPI": {"items": [field_file("same", "metadata.name")]}}])),
                "spec.volumes[0].projected: Invalid value: \"same\": conflicting duplicate paths".into(),
            ),
            (
                projected(json!([{"configMap": {"name": "a", "optional": true},
                    "downwardAPI": {"items": []}}])),
                "spec.volumes[0].projected.sources[0]: Forbidden: may not specify more than 1 volume type per source".into(),
            ),
            (
                projected(json!([{"clusterTrustBundle": {"path": "ca.pem", "signerName": "x.io/s"}}])),
                "spec.volumes[0].projected.sources[0].clusterTrustBundle: not supported on kedge nodes".into(),
            ),
            (
                projected(json!([{"secret": {"name": "creds", "optional": false}}])),
                "spec.volumes[0].projected.sources[0].secret.name: secret \"creds\" must be resolved before sending (kedge apply cannot read the cluster)".into(),
            ),
            (
                projected(json!([{"downwardAPI": {"items": [field_file("n", "metadata.name")]}},
                    {"serviceAccountToken": {"path": "token"}}])),
                "spec.volumes[0].projected.sources[1].serviceAccountToken: service account token projections are not supported: kedge nodes do not mount API tokens (only the kube-api-access-* volume Kubernetes injects is left out, with a warning)".into(),
            ),
        ];
        for (volume, expected) in cases {
            assert_eq!(
                convert_err(pod_with(volume.clone(), json!({}))),
                expected,
                "volume: {volume}"
            );
        }
        // A secret volume's per-item mode is refused as a configMap's is.
        let err = convert_with(
            json!({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "creds",
                "items": [{"key": "password", "path": "p", "mode": 0o400}]}}]}}),
            &resolver(),
        );
        assert_eq!(
            err,
            Err("spec.volumes[0].secret.items[0].mode: per-file modes are not supported on kedge nodes (use defaultMode)".into())
        );
    }
}
