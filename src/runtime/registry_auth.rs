//! Registry credentials for an image, from the pod's imagePullSecrets
//! (`.dockerconfigjson` content, resolved by the sender), for container
//! image pulls (CRI) and Wasm module pulls (OCI) alike. Pure: no I/O.
//!
//! Like the kubelet, every secret whose registry matches the image's is a
//! candidate, tried in order until a pull succeeds.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

/// One set of credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub server: String,
    pub username: String,
    pub password: String,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry host of an image reference, as docker resolves it:
/// `busybox` and `library/busybox` live on `docker.io`.
pub fn registry_of(image: &str) -> String {
    normalize(&super::image_ref::split_domain(image).0)
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
fn normalize(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Credentials for `image` from the pod's dockerconfigjson secrets, in the
/// order given; unreadable secrets are skipped (the kubelet logs them too).
pub fn credentials_for(image: &str, secrets: &[String]) -> Vec<Credential> {
    let registry = registry_of(image);
    let mut out = Vec::new();
    for secret in secrets {
        let Ok(config) = serde_json::from_str::<DockerConfig>(secret) else {
            continue;
        };
        for (server, auth) in config.auths {
            if normalize(&server) != registry {
                continue;
            }
            let pair = match (auth.username, auth.password, auth.auth) {
                (Some(u), Some(p), _) => Some((u, p)),
                (_, _, Some(encoded)) => base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.into(), p.into()))),
                _ => None,
            };
            if let Some((username, password)) = pair {
                out.push(Credential {
                    server: registry.clone(),
                    username,
                    password,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_follows_docker_rules() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/o/app@sha256:ab"), "ghcr.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
    }

    #[test]
    fn credentials_match_the_registry_in_either_form() {
        let auth = base64::engine::general_purpose::STANDARD.encode("kedge:s3cret");
        let a = format!(r#"{{"auths":{{"http://127.0.0.1:5000/v2/":{{"auth":"{auth}"}}}}}}"#);
        let b = r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"},
                   "127.0.0.1:5000":{"username":"second","password":"pw"}}}"#;
        let found = credentials_for("127.0.0.1:5000/app:1", &[a, "not json".into(), b.into()]);
        assert_eq!(
            found,
            vec![
                Credential {
                    server: "127.0.0.1:5000".into(),
                    username: "kedge".into(),
                    password: "s3cret".into()
                },
                Credential {
                    server: "127.0.0.1:5000".into(),
                    username: "second".into(),
                    password: "pw".into()
                },
            ]
        );
        let hub = credentials_for("busybox", &[b.into()]);
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].username, "u");
        assert!(credentials_for("quay.io/x", &[b.into()]).is_empty());
    }
}
