//! Static pods: the manifests in `--manifests DIR`, like the kubelet's file
//! source. The directory is re-read every poll interval and its complete
//! contents are sent to the controller whenever a file changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::model::PodSpec;
use crate::model::convert::{parse_pod_manifests, pod_spec_from_k8s};
use crate::runtime::module_source::sha256_hex;

#[derive(Debug, Clone)]
pub enum StaticPod {
    Pod(PodSpec),
    Invalid { file: PathBuf, error: String },
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
        match parse_pod_manifests(&text) {
            Ok(manifests) => {
                for m in manifests {
                    match pod_spec_from_k8s(&m) {
                        Ok(mut spec) => {
                            // Like the kubelet: a static pod's uid is a hash of
                            // its node, name and manifest, so an edit makes a
                            // new pod and an unchanged file the same pod.
                            let id = sha256_hex(
                                format!("{node}/{}/{}/{digest}", spec.namespace, spec.name)
                                    .as_bytes(),
                            );
                            spec.uid = format!("static-{}", &id[..24]);
                            spec.generation = 1;
                            pods.push(StaticPod::Pod(spec));
                        }
                        Err(e) => pods.push(StaticPod::Invalid {
                            file: file.clone(),
                            error: e.to_string(),
                        }),
                    }
                }
            }
            Err(e) => pods.push(StaticPod::Invalid {
                file,
                error: e.to_string(),
            }),
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
