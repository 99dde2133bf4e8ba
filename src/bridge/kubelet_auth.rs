//! Who may call the bridge's kubelet API, decided the way a kubelet in
//! webhook mode decides it (`--authentication-token-webhook=false`,
//! `--authorization-mode=Webhook`):
//!
//! - **Authentication**: the client certificate, already verified against
//!   the client CA during the TLS handshake, names the user: its subject's
//!   CN is the user name, each O a group (Kubernetes' x509 rule), and every
//!   authenticated user is also in `system:authenticated`. Bearer tokens are
//!   not accepted (only client certificates).
//! - **Authorisation**: each request maps to the attributes the kubelet
//!   uses ([`request_attributes`]): resource `nodes`, a subresource from the
//!   path, a verb from the HTTP method, the node as the name; a
//!   `SubjectAccessReview` asks the apiserver, and the decision is cached
//!   ([`DecisionCache`]: allowed for 5 minutes, denied for 30 seconds by
//!   default, like the kubelet's webhook cache).
//!
//! The pure parts (certificate subject, path → attributes, the cache) are
//! unit-tested here; [`Authorizer`] adds the API call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::Method;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// Group every authenticated user belongs to (as the kubelet's
/// authenticator adds it).
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertNameError {
    #[error("malformed certificate: {0}")]
    Der(&'static str),
    #[error("the certificate's subject has no common name (CN)")]
    NoCommonName,
    #[error("the certificate's subject holds a string type this server does not read")]
    StringType,
}

/// One DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertNameError> {
    let (&tag, rest) = input.split_first().ok_or(CertNameError::Der("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or(CertNameError::Der("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(CertNameError::Der("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(CertNameError::Der("truncated"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertNameError> {
    let (t, content, rest) = tlv(input)?;
    if t != tag {
        return Err(CertNameError::Der("unexpected tag"));
    }
    Ok((content, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The user a (verified) client certificate names: CN the user name, each
/// O a group, plus [`AUTHENTICATED_GROUP`].
pub fn user_from_certificate(der: &[u8]) -> Result<User, CertNameError> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    // [0] EXPLICIT version, optional.
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (mut subject, _) = expect(tbs, SEQUENCE)?;
    let mut name = None;
    let mut groups = Vec::new();
    while !subject.is_empty() {
        let (mut rdn, rest) = expect(subject, SET)?;
        subject = rest;
        while !rdn.is_empty() {
            let (atv, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(atv, OID)?;
            let (tag, value, _) = tlv(value)?;
            if oid != OID_CN && oid != OID_O {
                continue;
            }
            // UTF8String, PrintableString, T61String (read as UTF-8), IA5String.
            if !matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                return Err(CertNameError::StringType);
            }
            let value = std::str::from_utf8(value)
                .map_err(|_| CertNameError::StringType)?
                .to_string();
            if oid == OID_CN {
                name = Some(value);
            } else {
                groups.push(value);
            }
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or(CertNameError::NoCommonName)?;
    groups.push(AUTHENTICATED_GROUP.to_string());
    Ok(User { name, groups })
}

/// What a request asks of the node, as the kubelet puts it: resource
/// `nodes`, this verb, and one of these subresources (the first that is
/// allowed wins; the kubelet's fine-grained subresource comes first, then
/// the `proxy` it falls back to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresources: &'static [&'static str],
}

/// `subpath` is `path` or below it (the kubelet's `isSubpath`).
fn is_subpath(subpath: &str, path: &str) -> bool {
    subpath == path
        || subpath
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The kubelet's request → attributes mapping (`pkg/kubelet/server/auth.go`,
/// with `KubeletFineGrainedAuthz`): `/stats` → `stats`, `/metrics` →
/// `metrics`, `/logs` → `log`, `/checkpoint` → `checkpoint`, `/statusz` →
/// `statusz`, `/flagz` → `configz`; `/pods` and `/runningpods` → `pods`
/// then `proxy`, `/healthz` → `healthz` then `proxy`, `/configz` →
/// `configz` then `proxy`; everything else (`/exec`, `/attach`,
/// `/portForward`, `/run`, …) → `proxy`.
///
/// One addition: `/containerLogs` → `log` then `proxy`. The kubelet maps it
/// to `proxy` alone, but on a kubelet `nodes/log` reads `/var/log/`, which
/// holds every container's log (`/var/log/pods/…`), so letting `nodes/log`
/// read container logs here grants nothing a kubelet would not.
///
/// The verb comes from the method (GET get, POST create, PUT update, PATCH
/// patch, DELETE delete); other methods get `None`.
pub fn request_attributes(method: &Method, path: &str) -> Option<Attributes> {
    let verb = match *method {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return None,
    };
    let table: &[(&str, &'static [&'static str])] = &[
        ("/containerLogs", &["log", "proxy"]),
        ("/pods", &["pods", "proxy"]),
        ("/healthz", &["healthz", "proxy"]),
        ("/configz", &["configz", "proxy"]),
        ("/runningpods", &["pods", "proxy"]),
        ("/stats", &["stats"]),
        ("/metrics", &["metrics"]),
        ("/logs", &["log"]),
        ("/checkpoint", &["checkpoint"]),
        ("/statusz", &["statusz"]),
        ("/flagz", &["configz"]),
    ];
    let subresources = table
        .iter()
        .find(|(p, _)| is_subpath(path, p))
        .map_or(&["proxy"][..], |(_, s)| *s);
    Some(Attributes { verb, subresources })
}

/// The kubelet's 403 body.
pub fn forbidden_message(user: &str, attrs: &Attributes) -> String {
    format!(
        "Forbidden (user={user}, verb={}, resource=nodes, subresource(s)=[{}])\n",
        attrs.verb,
        attrs.subresources.join(" ")
    )
}

/// Decisions, keyed by everything a SubjectAccessReview is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    groups: Vec<String>,
    verb: &'static str,
    subresource: &'static str,
    node: String,
}

/// A bounded cache of authorisation decisions: allowed ones live
/// `allowed_ttl`, denied ones `denied_ttl`. When it is full, expired
/// entries go first, then the entries closest to expiry.
#[derive(Debug)]
pub struct DecisionCache {
    entries: HashMap<Key, (bool, Instant)>,
    capacity: usize,
    allowed_ttl: Duration,
    denied_ttl: Duration,
}

impl DecisionCache {
    pub fn new(capacity: usize, allowed_ttl: Duration, denied_ttl: Duration) -> DecisionCache {
        DecisionCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            allowed_ttl,
            denied_ttl,
        }
    }

    fn key(user: &User, verb: &'static str, subresource: &'static str, node: &str) -> Key {
        Key {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb,
            subresource,
            node: node.to_string(),
        }
    }

    /// A live decision, if any.
    pub fn get(
        &self,
        user: &User,
        verb: &'static str,
        subresource: &'static str,
        node: &str,
        now: Instant,
    ) -> Option<bool> {
        self.entries
            .get(&Self::key(user, verb, subresource, node))
            .filter(|(_, until)| *until > now)
            .map(|(allowed, _)| *allowed)
    }

    pub fn put(
        &mut self,
        user: &User,
        verb: &'static str,
        subresource: &'static str,
        node: &str,
        allowed: bool,
        now: Instant,
    ) {
        let ttl = if allowed {
            self.allowed_ttl
        } else {
            self.denied_ttl
        };
        if ttl.is_zero() {
            return;
        }
        let key = Self::key(user, verb, subresource, node);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, until)| *until > now);
            while self.entries.len() >= self.capacity {
                let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (allowed, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("SubjectAccessReview: {0}")]
pub struct AuthzError(String);

/// Authorises requests with SubjectAccessReviews through the bridge's
/// client (it needs `create` on `subjectaccessreviews`, see
/// edge-manifests/bridge-rbac.yaml), caching the decisions.
pub struct Authorizer {
    api: Api<SubjectAccessReview>,
    cache: Mutex<DecisionCache>,
}

/// How many decisions are kept at most.
pub const CACHE_CAPACITY: usize = 4096;

impl Authorizer {
    pub fn new(client: kube::Client, allowed_ttl: Duration, denied_ttl: Duration) -> Authorizer {
        Authorizer {
            api: Api::all(client),
            cache: Mutex::new(DecisionCache::new(CACHE_CAPACITY, allowed_ttl, denied_ttl)),
        }
    }

    /// Whether `user` may do `attrs` on `node` ("" for no node in
    /// particular: the request concerns all the bridge's nodes, so a grant
    /// limited to some nodes by `resourceNames` does not cover it).
    pub async fn allowed(
        &self,
        user: &User,
        attrs: &Attributes,
        node: &str,
    ) -> Result<bool, AuthzError> {
        for subresource in attrs.subresources {
            let cached = self
                .cache
                .lock()
                .ok()
                .and_then(|c| c.get(user, attrs.verb, subresource, node, Instant::now()));
            let allowed = match cached {
                Some(a) => a,
                None => {
                    let a = self.review(user, attrs.verb, subresource, node).await?;
                    if let Ok(mut c) = self.cache.lock() {
                        c.put(user, attrs.verb, subresource, node, a, Instant::now());
                    }
                    a
                }
            };
            if allowed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn review(
        &self,
        user: &User,
        verb: &str,
        subresource: &str,
        node: &str,
    ) -> Result<bool, AuthzError> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    verb: Some(verb.into()),
                    name: (!node.is_empty()).then(|| node.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| AuthzError(e.to_string()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -subj "/O=dev/O=ops/CN=alice"` (an EC key).
    const ALICE: &str = include_str!("testdata/alice.pem");

    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }

    #[test]
    fn a_certificate_names_the_user_and_its_groups() {
        let user = user_from_certificate(&der(ALICE)).expect("user");
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "ops", AUTHENTICATED_GROUP]);
    }

    #[test]
    fn malformed_certificates_are_errors_not_panics() {
        let good = der(ALICE);
        for n in 0..good.len() {
            let _ = user_from_certificate(&good[..n]);
        }
        assert!(user_from_certificate(&[]).is_err());
        assert!(user_from_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(user_from_certificate(&[0x30, 0x00]).is_err());
    }

    fn attrs(method: Method, path: &str) -> (&'static str, Vec<&'static str>) {
        let a = request_attributes(&method, path).expect("known method");
        (a.verb, a.subresources.to_vec())
    }

    #[test]
    fn requests_map_to_the_kubelets_attributes() {
        assert_eq!(
            attrs(Method::GET, "/containerLogs/default/web/main"),
            ("get", vec!["log", "proxy"])
        );
        assert_eq!(attrs(Method::GET, "/logs/syslog"), ("get", vec!["log"]));
        assert_eq!(attrs(Method::GET, "/logs"), ("get", vec!["log"]));
        assert_eq!(attrs(Method::GET, "/stats/summary"), ("get", vec!["stats"]));
        assert_eq!(attrs(Method::GET, "/metrics"), ("get", vec!["metrics"]));
        assert_eq!(
            attrs(Method::GET, "/metrics/cadvisor"),
            ("get", vec!["metrics"])
        );
        assert_eq!(
            attrs(Method::GET, "/healthz"),
            ("get", vec!["healthz", "proxy"])
        );
        assert_eq!(attrs(Method::GET, "/pods"), ("get", vec!["pods", "proxy"]));
        assert_eq!(
            attrs(Method::GET, "/runningpods/"),
            ("get", vec!["pods", "proxy"])
        );
        assert_eq!(
            attrs(Method::GET, "/configz"),
            ("get", vec!["configz", "proxy"])
        );
        assert_eq!(attrs(Method::GET, "/flagz"), ("get", vec!["configz"]));
        for p in [
            "/exec/ns/pod/c",
            "/attach/ns/pod/c",
            "/portForward/ns/pod",
            "/run/ns/pod/c",
            "/",
            "/metricsX",
            "/logsy",
            "/containerLogsX/a/b/c",
        ] {
            assert_eq!(attrs(Method::POST, p), ("create", vec!["proxy"]), "{p}");
        }
        assert_eq!(attrs(Method::PUT, "/pods").0, "update");
        assert_eq!(attrs(Method::PATCH, "/pods").0, "patch");
        assert_eq!(attrs(Method::DELETE, "/pods").0, "delete");
        assert_eq!(request_attributes(&Method::OPTIONS, "/pods"), None);
    }

    #[test]
    fn the_forbidden_body_reads_like_the_kubelets() {
        let a = request_attributes(&Method::GET, "/containerLogs/a/b/c").expect("attrs");
        assert_eq!(
            forbidden_message("alice", &a),
            "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[log proxy])\n"
        );
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            groups: vec![AUTHENTICATED_GROUP.into()],
        }
    }

    #[test]
    fn decisions_expire_allowed_later_than_denied() {
        let t0 = Instant::now();
        let mut c = DecisionCache::new(8, Duration::from_secs(300), Duration::from_secs(30));
        c.put(&user("a"), "get", "log", "n1", true, t0);
        c.put(&user("b"), "get", "log", "n1", false, t0);
        assert_eq!(c.get(&user("a"), "get", "log", "n1", t0), Some(true));
        assert_eq!(c.get(&user("b"), "get", "log", "n1", t0), Some(false));
        // Another node, verb, subresource or group set is another question.
        assert_eq!(c.get(&user("a"), "get", "log", "n2", t0), None);
        assert_eq!(c.get(&user("a"), "get", "proxy", "n1", t0), None);
        let mut admin = user("a");
        admin.groups.push("system:masters".into());
        assert_eq!(c.get(&admin, "get", "log", "n1", t0), None);
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(c.get(&user("b"), "get", "log", "n1", t1), None);
        assert_eq!(c.get(&user("a"), "get", "log", "n1", t1), Some(true));
        let t2 = t0 + Duration::from_secs(301);
        assert_eq!(c.get(&user("a"), "get", "log", "n1", t2), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let t0 = Instant::now();
        let mut c = DecisionCache::new(3, Duration::from_secs(300), Duration::from_secs(30));
        c.put(&user("denied"), "get", "log", "n", false, t0);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            c.put(
                &user(name),
                "get",
                "log",
                "n",
                true,
                t0 + Duration::from_secs(i as u64),
            );
            assert!(c.len() <= 3);
        }
        // The entries closest to expiry went first: the denied one, then "a".
        let t = t0 + Duration::from_secs(4);
        assert_eq!(c.get(&user("denied"), "get", "log", "n", t), None);
        assert_eq!(c.get(&user("a"), "get", "log", "n", t), None);
        assert_eq!(c.get(&user("d"), "get", "log", "n", t), Some(true));
        // A zero TTL caches nothing.
        let mut off = DecisionCache::new(3, Duration::ZERO, Duration::ZERO);
        off.put(&user("a"), "get", "log", "n", true, t0);
        assert!(off.is_empty());
    }
}
