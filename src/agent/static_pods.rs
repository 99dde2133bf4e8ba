//! Static pods: the manifests in `--manifests DIR`, like the kubelet's file
//! source. The directory is re-read every poll interval and its complete
//! contents are sent to the controller whenever a file changed.
//!
//! `*.yaml`, `*.yml` and `*.json` files hold Kubernetes Pods (builds with the
//! `manifests` feature); `*.kedge.json` files hold kedge pod specs as
//! `kedge convert` writes them, read by every build (`minimal` reads only
//! these).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::model::{PodKey, PodSpec};
use crate::runtime::module_source::sha256_hex;

/// The ending of static pod files that hold kedge pod specs.
pub const SPEC_FILE_SUFFIX: &str = ".kedge.json";

/// The pods of one file, each converted (with its conversion's warnings:
/// reason and text) or refused on its own; `Err` when the file as a whole
/// cannot be read as pods.
type FilePods = Result<Vec<Result<(PodSpec, Vec<(String, String)>), String>>, String>;

fn pods_in(file: &Path, text: &str, node: &str) -> FilePods {
    if file.to_string_lossy().ends_with(SPEC_FILE_SUFFIX) {
        return serde_json::from_str::<Vec<PodSpec>>(text)
            .map(|specs| specs.into_iter().map(|s| Ok((s, Vec::new()))).collect())
            .map_err(|e| format!("not a list of kedge pod specs (`kedge convert` output): {e}"));
    }
    manifest_pods(text, node)
}

/// The Pods of a manifest, each on this node: as the kubelet sets a static
/// pod's `spec.nodeName` to its own (what env `fieldRef: spec.nodeName`
/// reads), whatever the file says.
#[cfg(feature = "manifests")]
fn manifest_pods(text: &str, node: &str) -> FilePods {
    use crate::model::convert::{NoResolver, convert_pod, parse_pod_manifests};
    let manifests = parse_pod_manifests(text).map_err(|e| e.to_string())?;
    Ok(manifests
        .into_iter()
        .map(|mut m| {
            if let Some(spec) = m.spec.as_mut() {
                spec.node_name = Some(node.to_owned());
            }
            let c = convert_pod(&m, &NoResolver).map_err(|e| e.to_string())?;
            let warnings = c
                .warnings
                .iter()
                .map(|w| (w.reason.to_string(), w.to_string()))
                .collect();
            Ok((c.spec, warnings))
        })
        .collect())
}

#[cfg(not(feature = "manifests"))]
fn manifest_pods(_text: &str, _node: &str) -> FilePods {
    Err(format!(
        "this agent was built without Kubernetes manifest support (`minimal`); \
         convert the file on a build host with `kedge convert -f FILE > NAME{SPEC_FILE_SUFFIX}`"
    ))
}

#[derive(Debug, Clone)]
pub enum StaticPod {
    Pod(Box<PodSpec>),
    Invalid {
        file: PathBuf,
        error: String,
    },
    /// What the conversion of a pod of `file` accepted but does not honour
    /// (the injected service account token volume, left out): a Warning
    /// event on the pod.
    Warning {
        file: PathBuf,
        pod: PodKey,
        reason: String,
        message: String,
    },
}

/// Reads every `.yaml`, `.yml` and `.json` file of a directory.
pub fn read_dir(dir: &Path, node: &str) -> (Vec<StaticPod>, BTreeMap<PathBuf, String>) {
    let mut pods = Vec::new();
    let mut digests = BTreeMap::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect(),
        Err(e) => {
            pods.push(StaticPod::Invalid {
                file: dir.to_path_buf(),
                error: e.to_string(),
            });
            return (pods, digests);
        }
    };
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                pods.push(StaticPod::Invalid {
                    file,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let digest = sha256_hex(text.as_bytes());
        digests.insert(file.clone(), digest.clone());
        match pods_in(&file, &text, node) {
            Ok(specs) => {
                for spec in specs {
                    match spec {
                        Ok((mut spec, warnings)) => {
                            // Like the kubelet: a static pod's uid is a hash of
                            // its node, name and manifest, so an edit makes a
                            // new pod and an unchanged file the same pod.
                            let id = sha256_hex(
                                format!("{node}/{}/{}/{digest}", spec.namespace, spec.name)
                                    .as_bytes(),
                            );
                            spec.uid = format!("static-{}", &id[..24]);
                            spec.generation = 1;
                            // The same rules as a spec from the broker.
                            match crate::model::validate::Validate::validate(&spec) {
                                Ok(()) => {
                                    let key = spec.key();
                                    pods.push(StaticPod::Pod(Box::new(spec)));
                                    for (reason, message) in warnings {
                                        pods.push(StaticPod::Warning {
                                            file: file.clone(),
                                            pod: key.clone(),
                                            reason,
                                            message,
                                        });
                                    }
                                }
                                Err(e) => pods.push(StaticPod::Invalid {
                                    file: file.clone(),
                                    error: format!("pod {}: {e}", spec.key()),
                                }),
                            }
                        }
                        Err(error) => pods.push(StaticPod::Invalid {
                            file: file.clone(),
                            error,
                        }),
                    }
                }
            }
            Err(error) => pods.push(StaticPod::Invalid { file, error }),
        }
    }
    (pods, digests)
}

pub async fn watch(
    dir: PathBuf,
    node: String,
    every: Duration,
    tx: mpsc::UnboundedSender<Vec<StaticPod>>,
) {
    let mut last: Option<BTreeMap<PathBuf, String>> = None;
    loop {
        let (pods, digests) = read_dir(&dir, &node);
        if last.as_ref() != Some(&digests) {
            if tx.send(pods).is_err() {
                return;
            }
            last = Some(digests);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: ticker
spec:
  runtimeClassName: kedge-wasm
  containers:
    - name: t
      image: file:///opt/t.wasm@sha256:ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46
";

    #[cfg(feature = "manifests")]
    fn specs(pods: &[StaticPod]) -> Vec<&PodSpec> {
        pods.iter()
            .filter_map(|p| match p {
                StaticPod::Pod(s) => Some(&**s),
                StaticPod::Invalid { .. } | StaticPod::Warning { .. } => None,
            })
            .collect()
    }

    fn errors(pods: &[StaticPod]) -> Vec<(String, String)> {
        pods.iter()
            .filter_map(|p| match p {
                StaticPod::Invalid { file, error } => Some((
                    file.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into(),
                    error.clone(),
                )),
                StaticPod::Pod(_) | StaticPod::Warning { .. } => None,
            })
            .collect()
    }

    /// A `kedge convert` file runs the same pod as the manifest it came
    /// from; a broken one is refused by name.
    #[cfg(feature = "manifests")]
    #[test]
    fn converted_specs_run_like_their_manifests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let converted = crate::model::convert::parse_pod_manifests(POD)
            .expect("parse")
            .iter()
            .map(|p| crate::model::convert::pod_spec_from_k8s(p).expect("convert"))
            .collect::<Vec<_>>();
        std::fs::write(dir.path().join("a.yaml"), POD).expect("write");
        std::fs::write(
            dir.path().join("b.kedge.json"),
            serde_json::to_string(&converted).expect("json"),
        )
        .expect("write");
        std::fs::write(dir.path().join("c.kedge.json"), "{\"name\": 1}").expect("write");
        let (pods, digests) = read_dir(dir.path(), "n1");
        assert_eq!(digests.len(), 3);
        let got = specs(&pods);
        assert_eq!(got.len(), 2);
        let (from_yaml, from_json) = (got[0], got[1]);
        assert_eq!(from_yaml.name, "ticker");
        assert_eq!(from_json.containers, from_yaml.containers);
        assert_eq!(from_json.runtime, from_yaml.runtime);
        assert!(from_json.uid.starts_with("static-"));
        assert_ne!(from_json.uid, from_yaml.uid, "the uid hashes the file");
        let errs = errors(&pods);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "c.kedge.json");
        assert!(
            errs[0].1.contains("not a list of kedge pod specs"),
            "{}",
            errs[0].1
        );
    }

    /// A static pod runs on this node: env `fieldRef: spec.nodeName` reads
    /// its name, whatever the file says, as on a kubelet.
    #[cfg(feature = "manifests")]
    #[test]
    fn a_static_pods_node_name_is_this_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = "apiVersion: v1
kind: Pod
metadata: {name: where}
spec:
  nodeName: elsewhere
  containers:
    - name: app
      image: busybox:1
      env:
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
";
        std::fs::write(dir.path().join("a.yaml"), pod).expect("write");
        let (pods, _) = read_dir(dir.path(), "n1");
        assert!(errors(&pods).is_empty(), "{:?}", errors(&pods));
        let got = specs(&pods);
        assert_eq!(got[0].containers[0].env[0].value, "n1");
    }

    /// A pod copied from a cluster (`kubectl get pod -o yaml`) runs without
    /// the service account token volume the apiserver injected, and says so.
    #[cfg(feature = "manifests")]
    #[test]
    fn the_injected_token_volume_of_a_static_pod_is_left_out_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = format!(
            "{POD}      volumeMounts:
        - {{name: kube-api-access-7xk2p, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}}
  volumes:
    - name: kube-api-access-7xk2p
      projected:
        defaultMode: 420
        sources:
          - serviceAccountToken: {{expirationSeconds: 3607, path: token}}
          - configMap: {{name: kube-root-ca.crt, items: [{{key: ca.crt, path: ca.crt}}]}}
          - downwardAPI: {{items: [{{path: namespace, fieldRef: {{apiVersion: v1, fieldPath: metadata.namespace}}}}]}}
"
        );
        std::fs::write(dir.path().join("a.yaml"), pod).expect("write");
        let (pods, _) = read_dir(dir.path(), "n1");
        assert!(errors(&pods).is_empty(), "{:?}", errors(&pods));
        let got = specs(&pods);
        assert_eq!(got.len(), 1);
        assert!(got[0].volumes.is_empty());
        assert!(got[0].containers[0].volume_mounts.is_empty());
        let warnings: Vec<(&PodKey, &str, &str)> = pods
            .iter()
            .filter_map(|p| match p {
                StaticPod::Warning {
                    pod,
                    reason,
                    message,
                    ..
                } => Some((pod, reason.as_str(), message.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(warnings.len(), 1, "{pods:?}");
        assert_eq!(warnings[0].0, &PodKey::new("default", "ticker"));
        assert_eq!(warnings[0].1, "ServiceAccountTokenNotMounted");
        assert!(
            warnings[0]
                .2
                .starts_with("spec.volumes[0]: the pod runs without its service account token"),
            "{}",
            warnings[0].2
        );
    }

    /// Without manifest support a Pod file is refused with the command
    /// that converts it.
    #[cfg(not(feature = "manifests"))]
    #[test]
    fn manifests_need_conversion_in_minimal_builds() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), POD).expect("write");
        let (pods, _) = read_dir(dir.path(), "n1");
        let errs = errors(&pods);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.contains("kedge convert -f FILE"), "{}", errs[0].1);
    }
}
