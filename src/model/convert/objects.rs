//! The Secrets and ConfigMaps of a manifest file as a [`Resolver`]: how
//! `kedge apply -f FILE --node NODE` and `kedge convert` resolve the pods'
//! references without a cluster. Pure: the file's objects in, their data
//! out, and a record of which were used (the CLI seals a spec that carries
//! a Secret's values, and warns of objects no pod used).

use std::cell::RefCell;

use super::*;

/// Which command reads the file (the wording of a missing reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Apply,
    Convert,
}

type Data = BTreeMap<String, Vec<u8>>;
/// Namespace and name.
type Name = (String, String);

/// The Secrets and ConfigMaps of one file, each in its own namespace or
/// else the one given (`-n`), else `default`, as the file's pods are.
#[derive(Debug)]
pub struct FileResolver {
    reader: Reader,
    secrets: BTreeMap<Name, Data>,
    config_maps: BTreeMap<Name, Data>,
    /// Secrets found since [`FileResolver::take_secrets_found`].
    secrets_found: RefCell<BTreeSet<Name>>,
    /// Every object found (kind word, namespace, name).
    used: RefCell<BTreeSet<(&'static str, String, String)>>,
}

impl FileResolver {
    /// The objects of `manifests`; one named twice in a namespace is an
    /// error (which of the two would the pods get?).
    pub fn new(
        manifests: &Manifests,
        namespace: Option<&str>,
        reader: Reader,
    ) -> Result<FileResolver, ConvertError> {
        let place = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            let ns = meta
                .namespace
                .clone()
                .or_else(|| namespace.map(str::to_string))
                .unwrap_or_else(|| "default".into());
            (ns, meta.name.clone().unwrap_or_default())
        };
        let mut secrets = BTreeMap::new();
        for s in &manifests.secrets {
            let name = place(&s.metadata);
            check_namespace(&name.0)?;
            // The API server merges stringData into data, stringData winning.
            let mut data: Data = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in s.string_data.iter().flatten() {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            if secrets.insert(name.clone(), data).is_some() {
                return Err(twice("secret", &name));
            }
        }
        let mut config_maps = BTreeMap::new();
        for c in &manifests.config_maps {
            let name = place(&c.metadata);
            check_namespace(&name.0)?;
            let mut data: Data = c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            for (k, v) in c.binary_data.iter().flatten() {
                data.insert(k.clone(), v.0.clone());
            }
            if config_maps.insert(name.clone(), data).is_some() {
                return Err(twice("configmap", &name));
            }
        }
        Ok(FileResolver {
            reader,
            secrets,
            config_maps,
            secrets_found: RefCell::default(),
            used: RefCell::default(),
        })
    }

    /// The Secrets (namespace, name) lookups found since the last call: a
    /// spec converted in between carries their values.
    pub fn take_secrets_found(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.secrets_found.borrow_mut())
            .into_iter()
            .collect()
    }

    /// The objects no lookup found so far, as `secret "db" (namespace
    /// "default")`.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let of = |kind: &'static str, names: &BTreeMap<Name, Data>| {
            names
                .keys()
                .filter(|(ns, name)| !used.contains(&(kind, ns.clone(), name.clone())))
                .map(|(ns, name)| format!("{kind} {name:?} (namespace {ns:?})"))
                .collect::<Vec<_>>()
        };
        let mut out = of("secret", &self.secrets);
        out.extend(of("configmap", &self.config_maps));
        out
    }
}

fn check_namespace(namespace: &str) -> Result<(), ConvertError> {
    check_label("metadata.namespace", "namespace", namespace)
}

fn twice(kind: &str, (ns, name): &Name) -> ConvertError {
    field(
        format!("{kind} {name:?}"),
        format!("defined twice in namespace {ns:?} in the file"),
    )
}

impl Resolver for FileResolver {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Data> {
        let found = self
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned();
        if found.is_some() {
            self.used
                .borrow_mut()
                .insert(("configmap", namespace.into(), name.into()));
        }
        found
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Data> {
        let key = (namespace.to_string(), name.to_string());
        let found = self.secrets.get(&key).cloned();
        if found.is_some() {
            self.used
                .borrow_mut()
                .insert(("secret", namespace.into(), name.into()));
            self.secrets_found.borrow_mut().insert(key);
        }
        found
    }

    /// It reads the file, not the cluster.
    fn can_resolve(&self) -> bool {
        false
    }

    fn missing_words(&self) -> String {
        match self.reader {
            Reader::Apply => "not found in the applied file (kedge apply reads Secrets and \
                 ConfigMaps only from the file)"
                .into(),
            Reader::Convert => "not found in the converted file (kedge convert reads Secrets \
                 and ConfigMaps only from the file)"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::pod_spec_from_k8s_with;

    const FILE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: db}
data:
  password: czNjcjN0          # "s3cr3t"
  user: YWRtaW4=              # "admin"
stringData:
  user: root
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cfg, namespace: other}
  data: {LEVEL: debug}
  binaryData: {blob: AAEC}
- apiVersion: v1
  kind: Secret
  type: kubernetes.io/dockerconfigjson
  metadata: {name: regcred}
  stringData:
    .dockerconfigjson: '{"auths": {"registry.example": {"username": "u", "password": "p"}}}'
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: spare}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  imagePullSecrets: [{name: regcred}]
  containers:
  - name: app
    image: registry.example/app:1
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: db, key: password}}
    envFrom:
    - secretRef: {name: db}
      prefix: DB_
  volumes:
  - name: creds
    secret: {secretName: db}
"#;

    fn env_of(spec: &PodSpec) -> BTreeMap<String, String> {
        spec.containers[0]
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn a_files_secrets_and_config_maps_resolve_its_pods() {
        let m = parse_manifests(FILE).expect("parses");
        assert_eq!(
            (m.pods.len(), m.secrets.len(), m.config_maps.len()),
            (1, 2, 2)
        );
        let r = FileResolver::new(&m, None, Reader::Apply).expect("objects");
        let spec = pod_spec_from_k8s_with(&m.pods[0], &r).expect("converts");
        let env = env_of(&spec);
        assert_eq!(env["PASSWORD"], "s3cr3t");
        // stringData wins over data, as the API server merges them.
        assert_eq!(env["DB_user"], "root");
        assert_eq!(env["DB_password"], "s3cr3t");
        let VolumeSource::Files { files, .. } = &spec.volumes[0].source else {
            panic!("a secret volume is files: {:?}", spec.volumes[0]);
        };
        assert!(
            files
                .iter()
                .any(|(path, content)| path == "password" && content == b"s3cr3t")
        );
        assert!(!spec.image_pull_secrets.is_empty(), "{spec:?}");
        assert_eq!(
            r.take_secrets_found(),
            [
                ("default".to_string(), "db".to_string()),
                ("default".into(), "regcred".into())
            ]
        );
        assert!(r.take_secrets_found().is_empty(), "taken");
        // The configmap in another namespace was not visible to the pod.
        assert_eq!(
            r.unused(),
            [
                "configmap \"spare\" (namespace \"default\")",
                "configmap \"cfg\" (namespace \"other\")"
            ]
        );
    }

    #[test]
    fn objects_take_the_namespace_given_like_pods() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {LEVEL: info}\n";
        let m = parse_manifests(text).expect("parses");
        let r = FileResolver::new(&m, Some("b43"), Reader::Apply).expect("objects");
        assert!(r.config_map("b43", "cfg").is_some());
        assert!(r.config_map("default", "cfg").is_none());
        assert!(
            r.take_secrets_found().is_empty(),
            "a configmap is no secret"
        );
    }

    #[test]
    fn a_reference_to_an_object_not_in_the_file_is_an_error() {
        let pod = |spec: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {spec}\n")
        };
        let cases = [
            (
                pod(
                    "{containers: [{name: c, image: i, env: [{name: X, valueFrom: {secretKeyRef: {name: db, key: k}}}]}]}",
                ),
                Reader::Apply,
                "spec.containers[0].env[0].valueFrom.secretKeyRef: secret \"db\" not found in the applied file (kedge apply reads Secrets and ConfigMaps only from the file)",
            ),
            (
                pod(
                    "{containers: [{name: c, image: i}], volumes: [{name: v, configMap: {name: cfg}}]}",
                ),
                Reader::Convert,
                "spec.volumes[0].configMap.name: configmap \"cfg\" not found in the converted file (kedge convert reads Secrets and ConfigMaps only from the file)",
            ),
            (
                pod("{containers: [{name: c, image: i}], imagePullSecrets: [{name: regcred}]}"),
                Reader::Apply,
                "spec.imagePullSecrets[0].name: secret \"regcred\" not found in the applied file (kedge apply reads Secrets and ConfigMaps only from the file)",
            ),
        ];
        for (text, reader, expected) in cases {
            let m = parse_manifests(&text).expect("parses");
            let r = FileResolver::new(&m, None, reader).expect("objects");
            let err = pod_spec_from_k8s_with(&m.pods[0], &r).expect_err("missing");
            assert_eq!(err.to_string(), expected);
        }
        // Optional references to absent objects are skipped, as before.
        let text = pod(
            "{containers: [{name: c, image: i, env: [{name: X, valueFrom: {secretKeyRef: {name: db, key: k, optional: true}}}]}]}",
        );
        let m = parse_manifests(&text).expect("parses");
        let r = FileResolver::new(&m, None, Reader::Apply).expect("objects");
        let spec = pod_spec_from_k8s_with(&m.pods[0], &r).expect("converts");
        assert!(spec.containers[0].env.is_empty());
        assert!(r.take_secrets_found().is_empty());
    }

    #[test]
    fn objects_are_checked_as_the_api_server_checks_them() {
        let cases = [
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: 'not base64!'}\n",
                "document 0: ",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {'bad key': x}\n",
                "document 0: secret \"s\": stringData[bad key]: invalid key \"bad key\"",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {..data: eA==}\n",
                "document 0: secret \"s\": data[..data]: invalid key",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: S_1}\n",
                "document 0: secret \"S_1\": metadata.name: not a valid name",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                "document 0: configmap: metadata.name: required",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: x}\nbinaryData: {k: eA==}\n",
                "document 0: configmap \"c\": binaryData[k]: duplicate of key \"k\" present in data",
            ),
            (
                "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata: {name: r}\nstringData: {other: x}\n",
                "document 0: secret \"r\": data[.dockerconfigjson]: required",
            ),
            (
                "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata: {name: r}\nstringData: {.dockerconfigjson: '{'}\n",
                "document 0: secret \"r\": data[.dockerconfigjson]: invalid JSON",
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringdata: {k: x}\n",
                "document 0: unknown field \"stringdata\"",
            ),
            (
                "apiVersion: v1\nkind: PodList\nitems:\n- {kind: Secret, metadata: {name: s}}\n",
                "document 0: items[0]: kind \"Secret\" (apiVersion v1) is not supported",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
                "document 0: kind \"Service\" (apiVersion v1) is not supported: only v1 pods (and the Secrets and ConfigMaps they refer to) can be applied",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_manifests(text).expect_err(text).to_string();
            assert!(err.starts_with(expected), "{text}\n{err}");
        }
        // The same name twice in a namespace is ambiguous; in two, fine.
        let twice = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: default}\n";
        let m = parse_manifests(twice).expect("parses");
        assert_eq!(
            FileResolver::new(&m, None, Reader::Apply)
                .expect_err("twice")
                .to_string(),
            "secret \"s\": defined twice in namespace \"default\" in the file"
        );
        // With -n other, the first is in "other", the second in "default".
        FileResolver::new(&m, Some("other"), Reader::Apply).expect("two namespaces");
        let apart = twice.replace("namespace: default", "namespace: b43");
        let m = parse_manifests(&apart).expect("parses");
        FileResolver::new(&m, None, Reader::Apply).expect("two namespaces");
    }

    #[test]
    fn pod_only_files_still_refuse_secrets() {
        let err = parse_pod_manifests("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
            .expect_err("static pods and fleets take pods only");
        assert!(
            err.to_string().contains("only `kedge apply -f FILE --node NODE` and `kedge convert` read Secrets and ConfigMaps"),
            "{err}"
        );
    }
}
