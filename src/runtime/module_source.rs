//! Where a Wasm module comes from: `file://` or `https://` references pinned
//! by a sha256 digest, or OCI registry references (the Wasm OCI artifact
//! layout: one `application/wasm` or `application/vnd.wasm.content.layer.v1+wasm`
//! layer) whose layer digest comes from the manifest. Fetching verifies the
//! digest; nothing unverified is ever compiled or run.

use sha2::{Digest, Sha256};
use thiserror::Error;

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
        sha256: String,
    },
    Https {
        url: String,
        sha256: String,
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
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the sha256 digest must be 64 hex digits"));
        }
        let sha256 = digest.to_ascii_lowercase();
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

    pub fn sha256(&self) -> Option<&str> {
        match self {
            ModuleRef::File { sha256, .. } | ModuleRef::Https { sha256, .. } => Some(sha256),
            ModuleRef::Oci(_) => None,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks fetched bytes against the pinned digest.
pub fn verify(url: &str, bytes: &[u8], expected: &str) -> Result<(), SourceError> {
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(SourceError::DigestMismatch {
            url: url.to_string(),
            expected: expected.to_string(),
            actual,
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
    cached: impl Fn(&str) -> bool,
) -> Result<(String, Option<Vec<u8>>), SourceError> {
    let remembered_path = refs_dir.join(sha256_hex(image.as_bytes()));
    let remembered = std::fs::read_to_string(&remembered_path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 64 && cached(s));
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
    let _ = std::fs::create_dir_all(refs_dir).and_then(|_| std::fs::write(&remembered_path, &sha));
    Ok((sha, bytes))
}

#[cfg(feature = "wasm")]
async fn pull_oci_from_registry(
    image: &str,
    secrets: &[String],
    cached: &impl Fn(&str) -> bool,
) -> Result<(String, Option<Vec<u8>>), SourceError> {
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
        let sha256 = layer
            .digest
            .strip_prefix("sha256:")
            .filter(|d| d.len() == 64)
            .ok_or_else(|| fetch_err(format!("unsupported layer digest {}", layer.digest)))?
            .to_ascii_lowercase();
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

    #[test]
    fn parses_references() {
        assert_eq!(
            ModuleRef::parse(&format!("file:///opt/m.wasm@sha256:{D}")),
            Ok(ModuleRef::File {
                path: "/opt/m.wasm".into(),
                sha256: D.into()
            })
        );
        assert_eq!(
            ModuleRef::parse(&format!("https://h/x.wasm@sha256:{}", D.to_uppercase())),
            Ok(ModuleRef::Https {
                url: "https://h/x.wasm".into(),
                sha256: D.into()
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
            assert_eq!(got, Ok((D.to_string(), None)), "{policy:?}");
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
        assert!(
            verify(
                "u",
                b"hello",
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            )
            .is_ok()
        );
        let e = verify("u", b"hello", D).expect_err("mismatch");
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
            sha256: sha256_hex(b"hello"),
        };
        assert_eq!(fetch(&ok, &http).await.expect("fetch"), b"hello");
        let missing = ModuleRef::File {
            path: "/nonexistent/m.wasm".into(),
            sha256: D.into(),
        };
        assert!(matches!(
            fetch(&missing, &http).await,
            Err(SourceError::Fetch { .. })
        ));
    }
}
