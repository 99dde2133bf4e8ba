//! Where a Wasm module comes from: `file://` or `https://` references pinned
//! by a sha256 digest, or OCI registry references (the Wasm OCI artifact
//! layout: one `application/wasm` or `application/vnd.wasm.content.layer.v1+wasm`
//! layer) whose layer digest comes from the manifest. Fetching verifies the
//! digest; nothing unverified is ever compiled or run.

use thiserror::Error;

use super::digest::Sha256Digest;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("image {image:?}: {message}")]
    Reference { image: String, message: String },
    #[error("failed to read module {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("module {url} has digest sha256:{actual}, expected sha256:{expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
}

/// A parsed module reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRef {
    File {
        path: String,
        sha256: Sha256Digest,
    },
    Https {
        url: String,
        sha256: Sha256Digest,
    },
    /// An OCI reference (registry/repo:tag or @digest).
    Oci(String),
}

impl ModuleRef {
    pub fn parse(image: &str) -> Result<ModuleRef, SourceError> {
        let bad = |m: &str| SourceError::Reference {
            image: image.to_string(),
            message: m.to_string(),
        };
        let scheme = if image.starts_with("file://") {
            "file"
        } else if image.starts_with("https://") {
            "https"
        } else if image.contains("://") {
            return Err(bad(
                "only file://, https:// and OCI references are supported",
            ));
        } else {
            return Ok(ModuleRef::Oci(image.to_string()));
        };
        let (location, digest) = image
            .rsplit_once("@sha256:")
            .ok_or_else(|| bad("needs a digest: append @sha256:<hex>"))?;
        let sha256 = Sha256Digest::parse(digest).map_err(|e| bad(&e.to_string()))?;
        Ok(match scheme {
            "file" => {
                let path = location.trim_start_matches("file://").to_string();
                if !path.starts_with('/') {
                    return Err(bad("file:// needs an absolute path"));
                }
                ModuleRef::File { path, sha256 }
            }
            _ => ModuleRef::Https {
                url: location.to_string(),
                sha256,
            },
        })
    }

    pub fn sha256(&self) -> Option<&Sha256Digest> {
        match self {
            ModuleRef::File { sha256, .. } | ModuleRef::Https { sha256, .. } => Some(sha256),
            ModuleRef::Oci(_) => None,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256Digest::of(bytes).to_string()
}

/// Checks fetched bytes against the pinned digest.
pub fn verify(url: &str, bytes: &[u8], expected: &Sha256Digest) -> Result<(), SourceError> {
    let actual = Sha256Digest::of(bytes);
    if &actual != expected {
        return Err(SourceError::DigestMismatch {
            url: url.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Fetches and verifies a module's bytes.
pub async fn fetch(r: &ModuleRef, http: &reqwest::Client) -> Result<Vec<u8>, SourceError> {
    match r {
        ModuleRef::File { path, sha256 } => {
            let url = format!("file://{path}");
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| SourceError::Fetch {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            verify(&url, &bytes, sha256)?;
            Ok(bytes)
        }
        ModuleRef::Https { url, sha256 } => {
            let fetch_err = |message: String| SourceError::Fetch {
                url: url.clone(),
                message,
            };
            let resp = http
                .get(url)
                .send()
                .await
                .map_err(|e| fetch_err(error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(fetch_err(format!("server answered {}", resp.status())));
            }
            let bytes = resp.bytes().await.map_err(|e| fetch_err(error_chain(&e)))?;
            verify(url, &bytes, sha256)?;
            Ok(bytes.to_vec())
        }
        ModuleRef::Oci(image) => Err(SourceError::Reference {
            image: image.clone(),
            message: "OCI references are pulled with pull_oci".into(),
        }),
    }
}

/// Layer media types of a Wasm OCI artifact (the CNCF Wasm layout and the
/// older wasm-to-oci one).
#[cfg(feature = "wasm")]
pub const WASM_LAYER_TYPES: [&str; 2] = [
    "application/wasm",
    oci_client::manifest::WASM_LAYER_MEDIA_TYPE,
];

/// Whether a registry is on this host: pulled over plain http, as
/// containerd does for loopback registries.
#[cfg(feature = "wasm")]
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Resolves an OCI reference to its Wasm layer's sha256 (from the manifest)
/// and, unless `cached(sha256)` says it is already here, downloads and
/// verifies the layer. Credentials come from the pod's dockerconfigjson
/// secrets; each matching one is tried, then anonymous access.
///
/// Each resolved reference is remembered in `refs_dir` (reference → layer
/// digest). With pull policy IfNotPresent (or Never) a remembered, cached
/// module is used without asking the registry, so a device restarts its
/// pods offline; Always asks the registry every time (and fails without
/// it, as the kubelet does); Never without a remembered module is an error.
#[cfg(feature = "wasm")]
pub async fn pull_oci(
    image: &str,
    secrets: &[String],
    policy: crate::model::PullPolicy,
    refs_dir: &std::path::Path,
    cached: impl Fn(&Sha256Digest) -> bool,
) -> Result<(Sha256Digest, Option<Vec<u8>>), SourceError> {
    let remembered_path = refs_dir.join(sha256_hex(image.as_bytes()));
    // What the agent wrote, read back as strictly as a registry's answer.
    let remembered = std::fs::read_to_string(&remembered_path)
        .ok()
        .and_then(|s| Sha256Digest::parse(s.trim_end_matches('\n')).ok())
        .filter(|d| cached(d));
    match (policy, &remembered) {
        (crate::model::PullPolicy::Always, _) => {}
        (_, Some(sha)) => return Ok((sha.clone(), None)),
        (crate::model::PullPolicy::Never, None) => {
            return Err(SourceError::Fetch {
                url: image.to_string(),
                message: "the module is not present with pull policy of Never".into(),
            });
        }
        (crate::model::PullPolicy::IfNotPresent, None) => {}
    }
    let (sha, bytes) = pull_oci_from_registry(image, secrets, &cached).await?;
    let _ = std::fs::create_dir_all(refs_dir)
        .and_then(|_| write_atomically(&remembered_path, sha.as_str().as_bytes()));
    Ok((sha, bytes))
}

#[cfg(feature = "wasm")]
async fn pull_oci_from_registry(
    image: &str,
    secrets: &[String],
    cached: &impl Fn(&Sha256Digest) -> bool,
) -> Result<(Sha256Digest, Option<Vec<u8>>), SourceError> {
    use oci_client::secrets::RegistryAuth;
    let fetch_err = |message: String| SourceError::Fetch {
        url: image.to_string(),
        message,
    };
    let parsed = super::image_ref::ImageRef::parse(image).map_err(|e| SourceError::Reference {
        image: image.to_string(),
        message: format!("not an OCI reference: {e}"),
    })?;
    let reference = match (parsed.tag, parsed.digest) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            parsed.registry,
            parsed.repository,
            tag,
            digest,
        ),
        (None, Some(digest)) => {
            oci_client::Reference::with_digest(parsed.registry, parsed.repository, digest)
        }
        (tag, None) => oci_client::Reference::with_tag(
            parsed.registry,
            parsed.repository,
            tag.unwrap_or_else(|| "latest".into()),
        ),
    };
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) {
        oci_client::client::ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        oci_client::client::ClientProtocol::Https
    };
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol,
        ..Default::default()
    });
    let mut auths: Vec<RegistryAuth> = super::registry_auth::credentials_for(image, secrets)
        .into_iter()
        .map(|c| RegistryAuth::Basic(c.username, c.password))
        .collect();
    auths.push(RegistryAuth::Anonymous);
    let mut last = String::new();
    for auth in auths {
        let manifest = match client.pull_image_manifest(&reference, &auth).await {
            Ok((m, _digest)) => m,
            Err(e) => {
                last = error_chain(&e);
                continue;
            }
        };
        let layer = manifest
            .layers
            .iter()
            .find(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
            .ok_or_else(|| {
                fetch_err(format!(
                    "no Wasm layer ({}) in the manifest",
                    WASM_LAYER_TYPES.join(" or ")
                ))
            })?;
        // The registry is not trusted: its digest becomes a file name.
        let sha256 = Sha256Digest::parse_prefixed(&layer.digest)
            .map_err(|e| fetch_err(format!("the manifest's Wasm layer has an {e}")))?;
        if cached(&sha256) {
            return Ok((sha256, None));
        }
        let mut bytes = Vec::new();
        client
            .pull_blob(&reference, layer, &mut bytes)
            .await
            .map_err(|e| fetch_err(error_chain(&e)))?;
        verify(image, &bytes, &sha256)?;
        return Ok((sha256, Some(bytes)));
    }
    Err(fetch_err(last))
}

/// Writes a file so that readers see the old content or the new, never a
/// part: a temporary file of its own in the same directory, flushed to disk,
/// then renamed over the target (and the directory flushed).
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An error and its causes on one line, as reqwest hides the useful part.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46";

    fn d() -> Sha256Digest {
        Sha256Digest::parse(D).expect("digest")
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            ModuleRef::parse(&format!("file:///opt/m.wasm@sha256:{D}")),
            Ok(ModuleRef::File {
                path: "/opt/m.wasm".into(),
                sha256: d()
            })
        );
        assert_eq!(
            ModuleRef::parse(&format!("https://h/x.wasm@sha256:{D}")),
            Ok(ModuleRef::Https {
                url: "https://h/x.wasm".into(),
                sha256: d()
            })
        );
        assert_eq!(
            ModuleRef::parse("ghcr.io/a/b:1"),
            Ok(ModuleRef::Oci("ghcr.io/a/b:1".into()))
        );
        for bad in [
            "file:///m.wasm",
            "file:///m.wasm@sha256:abc",
            "file://rel@sha256:".to_string().as_str(),
            "http://h/x@sha256:00",
        ] {
            assert!(ModuleRef::parse(bad).is_err(), "{bad}");
        }
    }

    /// Only 64 lowercase hex characters pass, whichever scheme.
    #[test]
    fn hostile_digests_in_references_are_refused() {
        let upper = D.to_uppercase();
        let short = &D[..63];
        let long = format!("{D}0");
        let nul = format!("{short}\0");
        for digest in ["../../etc/x", &upper, short, &long, &nul] {
            for scheme in ["file:///m.wasm", "https://h/m.wasm"] {
                let image = format!("{scheme}@sha256:{digest}");
                let e = ModuleRef::parse(&image).expect_err(&image);
                assert!(
                    e.to_string()
                        .contains(": expected 64 lowercase hex characters"),
                    "{e}"
                );
            }
        }
    }

    /// A remembered digest is read back as strictly as a registry's: a
    /// hostile file in `oci-refs` is a miss, never a path.
    #[cfg(feature = "wasm")]
    #[tokio::test]
    async fn hostile_remembered_digests_are_ignored() {
        use crate::model::PullPolicy;
        let dir = tempfile::tempdir().expect("tempdir");
        let image = "127.0.0.1:1/modules/m:v1";
        for hostile in ["../../etc/passwd", &D.to_uppercase(), &D[..63]] {
            std::fs::write(dir.path().join(sha256_hex(image.as_bytes())), hostile)
                .expect("remember");
            let got = pull_oci(image, &[], PullPolicy::Never, dir.path(), |_| true).await;
            assert!(got.is_err(), "{hostile}: {got:?}");
        }
    }

    #[test]
    fn writes_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_atomically(&path, b"one").expect("write");
        write_atomically(&path, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("f")],
            "no temporary left"
        );
    }

    #[cfg(feature = "wasm")]
    #[tokio::test]
    async fn remembered_oci_modules_need_no_registry_unless_always() {
        use crate::model::PullPolicy;
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        // Nothing listens on port 1: any registry request fails.
        let image = "127.0.0.1:1/modules/m:v1";
        let never = pull_oci(image, &[], PullPolicy::Never, dir.path(), |_| true).await;
        assert!(never.is_err(), "nothing remembered yet");
        let unreachable =
            pull_oci(image, &[], PullPolicy::IfNotPresent, dir.path(), |_| true).await;
        assert!(matches!(unreachable, Err(SourceError::Fetch { .. })));
        std::fs::write(dir.path().join(sha256_hex(image.as_bytes())), D).expect("remember");
        for policy in [PullPolicy::IfNotPresent, PullPolicy::Never] {
            let got = pull_oci(image, &[], policy, dir.path(), |_| true).await;
            assert_eq!(got, Ok((d(), None)), "{policy:?}");
        }
        let always = pull_oci(image, &[], PullPolicy::Always, dir.path(), |_| true).await;
        assert!(always.is_err(), "Always asks the registry");
        let evicted = pull_oci(image, &[], PullPolicy::Never, dir.path(), |_| false).await;
        assert!(
            evicted.is_err(),
            "a remembered digest without the module is not enough"
        );
    }

    #[cfg(feature = "wasm")]
    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("registry.local:5000"));
    }

    #[test]
    fn verifies_digests() {
        let hello =
            Sha256Digest::parse("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
                .expect("digest");
        assert!(verify("u", b"hello", &hello).is_ok());
        let e = verify("u", b"hello", &d()).expect_err("mismatch");
        assert!(
            e.to_string()
                .starts_with("module u has digest sha256:2cf24dba"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn fetches_files() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.wasm");
        std::fs::write(&path, b"hello").expect("write");
        let http = reqwest::Client::new();
        let ok = ModuleRef::File {
            path: path.display().to_string(),
            sha256: Sha256Digest::of(b"hello"),
        };
        assert_eq!(fetch(&ok, &http).await.expect("fetch"), b"hello");
        let missing = ModuleRef::File {
            path: "/nonexistent/m.wasm".into(),
            sha256: d(),
        };
        assert!(matches!(
            fetch(&missing, &http).await,
            Err(SourceError::Fetch { .. })
        ));
    }
}
