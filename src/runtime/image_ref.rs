//! Image references (`busybox`, `ghcr.io/o/app:1`, `host:5000/m@sha256:…`),
//! parsed and normalised the way docker and containerd do. Pure: no I/O.
//!
//! The grammar is distribution's (`reference/regexp.go`), the normalisation
//! its `normalize.go` (`docker.io` by default, `library/` for official
//! images, `latest` when neither tag nor digest is given). oci-client parses
//! references with a regular expression; its engine would be about half a
//! megabyte of the device binary for this one job, so the agent parses here
//! and builds oci-client's `Reference` from the parts. The tests check this
//! parser against oci-client's on a table of references.

use std::fmt;

/// The host docker.io images live on, and its legacy spelling.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// distribution's limit on the repository path.
const NAME_MAX: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`, `o/app`.
    pub repository: String,
    /// `latest` when the reference names neither a tag nor a digest.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference (the kubelet's
/// InvalidImageName says the same in its own words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("repository name must have at least one component")]
    Empty,
    #[error("invalid reference format")]
    Format,
    #[error("repository name must not be more than {NAME_MAX} characters")]
    TooLong,
    #[error("invalid checksum digest format")]
    DigestFormat,
    #[error("invalid checksum digest length")]
    DigestLength,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, RefError> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/'; a ':' before it
        // separates a registry's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if !is_name(name) || !tag.is_none_or(is_tag) || !digest.is_none_or(is_digest) {
            return Err(RefError::Format);
        }
        let (registry, repository) = split_domain(name);
        if repository.len() > NAME_MAX {
            return Err(RefError::TooLong);
        }
        if let Some(d) = digest {
            let (algorithm, hex) = d.split_once(':').ok_or(RefError::DigestFormat)?;
            let want = match algorithm {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return Err(RefError::DigestAlgorithm),
            };
            if hex.len() != want {
                return Err(RefError::DigestLength);
            }
            // go-digest (docker, containerd) accepts sha256 in lowercase
            // only; the digest reaches the registry and the cache as is.
            if algorithm == "sha256" && super::digest::Sha256Digest::parse(hex).is_err() {
                return Err(RefError::DigestFormat);
            }
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The registry and repository of a name, as docker resolves it: the first
/// component is a registry only if it has a '.' or ':' or is `localhost`.
pub fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// `[domain '/'] path-component ('/' path-component)*`
fn is_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    (is_path_component(first) || (is_domain(first) && !rest.is_empty()))
        && rest.iter().all(|p| is_path_component(p))
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let ok = match &b[sep..i] {
            b"." | b"_" | b"__" => true,
            s => s.iter().all(|&c| c == b'-'),
        };
        if !ok {
            return false;
        }
    }
}

/// `host (':' port)?`, host being dot-separated `[a-zA-Z0-9]` labels with
/// inner '-'.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `\w[\w.-]{0,127}` (ASCII word characters)
fn is_tag(s: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `[A-Za-z][A-Za-z0-9]* ([-_+.][A-Za-z][A-Za-z0-9]*)* ':' [0-9a-fA-F]{32,}`
fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).expect("parses");
        (r.registry, r.repository, r.tag, r.digest)
    }

    #[test]
    fn normalises_like_docker() {
        let s = |x: &str| x.to_string();
        assert_eq!(
            parts("busybox"),
            (
                s("docker.io"),
                s("library/busybox"),
                Some(s("latest")),
                None
            )
        );
        assert_eq!(
            parts("index.docker.io/o/app:1"),
            (s("docker.io"), s("o/app"), Some(s("1")), None)
        );
        assert_eq!(
            parts("localhost:5000/app"),
            (s("localhost:5000"), s("app"), Some(s("latest")), None)
        );
        assert_eq!(
            parts(&format!("ghcr.io/o/app:v1@{D}")),
            (s("ghcr.io"), s("o/app"), Some(s("v1")), Some(s(D)))
        );
        assert_eq!(
            parts(&format!("127.0.0.1:5000/m@{D}")),
            (s("127.0.0.1:5000"), s("m"), None, Some(s(D)))
        );
        assert_eq!(
            ImageRef::parse("busybox").expect("parses").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn refuses_what_docker_refuses() {
        assert_eq!(ImageRef::parse(""), Err(RefError::Empty));
        assert_eq!(ImageRef::parse("Busybox"), Err(RefError::Format));
        assert_eq!(ImageRef::parse("a//b"), Err(RefError::Format));
        assert_eq!(ImageRef::parse("app:"), Err(RefError::Format));
        assert_eq!(ImageRef::parse("app@sha256:12"), Err(RefError::Format));
        assert_eq!(
            ImageRef::parse(&format!("app@md5:{}", "a".repeat(32))),
            Err(RefError::DigestAlgorithm)
        );
        assert_eq!(
            ImageRef::parse(&format!("app@sha256:{}", "a".repeat(63))),
            Err(RefError::DigestLength)
        );
        // Stricter than oci-client's regex, as go-digest is: lowercase only.
        assert_eq!(
            ImageRef::parse(&format!("app@sha256:{}", "A".repeat(64))),
            Err(RefError::DigestFormat)
        );
        assert_eq!(
            ImageRef::parse(&format!("h.io/{}", "a".repeat(256))),
            Err(RefError::TooLong)
        );
    }

    /// oci-client's own (regex) parser is the reference: both agree on
    /// every case, accepted or refused.
    #[cfg(feature = "wasm")]
    #[test]
    fn agrees_with_oci_client() {
        let long_tag = format!("app:{}", "t".repeat(128));
        let too_long_tag = format!("app:{}", "t".repeat(129));
        let cases = [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "docker.io/busybox",
            "index.docker.io/busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "test:5000/repo:tag",
            "localhost/app",
            "localhost:5000/a/b/c:v_1.2-3",
            "lower/UPPER",
            "UPPER/lower",
            "Up.per/x",
            "a.b.c/d",
            "a-b.c-d/e",
            "-a.b/c",
            "a-.b/c",
            "a..b/c",
            "a/b.c",
            "a/b..c",
            "a/b__c",
            "a/b___c",
            "a/b---c",
            "a/b_-c",
            "a/.b",
            "a/b.",
            "a/b/",
            "/a",
            "a b",
            "a:b:c",
            "a@b",
            "h:/a",
            "h:x/a",
            "h.io:5000:6000/a",
            "x/y:Tag_1.0-rc",
            "x/y:.tag",
            "x/y:-tag",
            "x/y:_tag",
            "a/b:c@d",
            "app@sha256:zz",
            "app@:abc",
            "app@SHA256:ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46",
            "a@sha256:ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46@x",
            "192.168.1.1:5000/m",
            "my_registry.io/a",
            "reg.io/a_b/c__d",
            long_tag.as_str(),
            too_long_tag.as_str(),
        ];
        let with_digest = format!("reg.io:443/a/b:t@{D}");
        let sha512 = format!("reg.io/a@sha512:{}", "0".repeat(128));
        let sha384_bad = format!("reg.io/a@sha384:{}", "0".repeat(64));
        for s in cases.iter().copied().chain([
            with_digest.as_str(),
            sha512.as_str(),
            sha384_bad.as_str(),
        ]) {
            let theirs = s.parse::<oci_client::Reference>();
            let ours = ImageRef::parse(s);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => {
                    assert_eq!(o.registry, t.registry(), "{s}");
                    assert_eq!(o.repository, t.repository(), "{s}");
                    assert_eq!(o.tag.as_deref(), t.tag(), "{s}");
                    assert_eq!(o.digest.as_deref(), t.digest(), "{s}");
                    assert_eq!(o.to_string(), t.whole(), "{s}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{s}: ours {ours:?}, oci-client {theirs:?}"),
            }
        }
    }
}
