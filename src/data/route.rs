//! Routes: which workload messages go where (pure).
//!
//! Written in the node configuration (`data.routes`), one route per line or
//! separated by `;`:
//!
//! ```text
//! FROM default/sensor sensors/# INTO $upstream TTL 2h
//! FROM default/camera/uploader # INTO $upstream
//! FROM default/camera/detector events/# INTO pod/default/alarm TTL 10m
//! FROM default/sensor alarms/# INTO $upstream PRIORITY 0
//! ```
//!
//! `FROM namespace/pod[/container] topic-filter INTO $upstream|pod/namespace/name [TTL duration] [PRIORITY 0-9]`
//! (the grammar is `model::route`'s, shared with the routes a pod declares
//! for itself, `pod_routes`).
//! The source names the pod (and optionally one container; without it every
//! container of the pod); the filter is an MQTT topic filter on the topic
//! the workload publishes to. A pod named by a route is a pod that asks for
//! the data endpoint: only its containers get the endpoint's address and
//! credentials. The target is `$upstream` (the sink) or another pod on the
//! node (`pod/namespace/name`, module-to-module), which gets the endpoint's
//! credentials too.

use std::time::Duration;

use thiserror::Error;

use crate::model::route::{Line, LineTarget};
use crate::model::{Priority, RouteTarget};

pub use crate::model::DataSource as Source;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub pod: String,
    /// None: every container of the pod.
    pub container: Option<String>,
    pub filter: String,
    pub target: Target,
    /// How long a message may wait on the device for its target.
    pub ttl: Duration,
    /// Which messages waiting for the broker go first (`$upstream` only;
    /// the default, the lowest, into a pod).
    pub priority: Priority,
    /// Names the route in the store and the counters (`Route::id_of`).
    pub id: u32,
}

impl std::fmt::Display for Route {
    /// The route in the grammar it was written in, TTL included, and its
    /// priority unless it is the default (so a route written before
    /// priorities keeps its text, and its id).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FROM {}/{}", self.namespace, self.pod)?;
        if let Some(c) = &self.container {
            write!(f, "/{c}")?;
        }
        write!(
            f,
            " {} INTO {} TTL {}",
            self.filter,
            self.target,
            humantime::format_duration(self.ttl)
                .to_string()
                .replace(' ', "")
        )?;
        if self.priority != Priority::default() {
            write!(f, " PRIORITY {}", self.priority)?;
        }
        Ok(())
    }
}

impl Route {
    /// A route's id: the first four bytes of the SHA-256 of who declared
    /// it (`node`, or the pod) and its text, never 0 (a message stored
    /// before routes were counted). Stable across restarts, so the
    /// messages a route stored before one are still its own after it.
    fn id_of(declared_by: &str, route: &Route) -> u32 {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{declared_by}\n{route}").as_bytes(),
        );
        let mut four = [0; 4];
        four.copy_from_slice(&digest.as_ref()[..4]);
        u32::from_be_bytes(four).max(1)
    }

    /// Whether this route names the pod.
    pub fn names_pod(&self, namespace: &str, pod: &str) -> bool {
        self.namespace == namespace && self.pod == pod
    }

    pub fn matches(&self, source: &Source, topic: &str) -> bool {
        self.names_pod(&source.namespace, &source.pod)
            && self
                .container
                .as_ref()
                .is_none_or(|c| *c == source.container)
            && rumqttc::mqttbytes::matches(topic, &self.filter)
    }
}

/// Where a route's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The sink, sealed, through the broker.
    Upstream,
    /// A pod on the same node (module-to-module).
    Pod { namespace: String, pod: String },
}

impl std::fmt::Display for Target {
    /// As a node's route writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Upstream => f.write_str("$upstream"),
            Target::Pod { namespace, pod } => write!(f, "pod/{namespace}/{pod}"),
        }
    }
}

impl Target {
    /// Whether this target is the pod.
    pub fn is_pod(&self, namespace: &str, pod: &str) -> bool {
        matches!(self, Target::Pod { namespace: n, pod: p } if n == namespace && p == pod)
    }
}

/// The route a message takes: the first that matches.
pub fn route_for<'a>(routes: &'a [Route], source: &Source, topic: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(source, topic))
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{key}[{index}]: {message}")]
pub struct RouteError {
    pub key: String,
    pub index: usize,
    pub message: String,
}

/// The grammar of a node's route, for error messages.
const USAGE: &str = "expected FROM namespace/pod[/container] topic-filter INTO $upstream|pod/namespace/name [TTL duration] [PRIORITY 0-9]";

/// Parses `text` (the value of `key`), every route or none.
pub fn parse_routes(
    key: &str,
    text: &str,
    default_ttl: Duration,
) -> Result<Vec<Route>, RouteError> {
    crate::model::route::lines(text)
        .enumerate()
        .map(|(index, line)| {
            parse_route(line, default_ttl).map_err(|message| RouteError {
                key: key.to_string(),
                index,
                message,
            })
        })
        .collect()
}

fn parse_route(line: &str, default_ttl: Duration) -> Result<Route, String> {
    let Line {
        source,
        filter,
        target,
        ttl,
        priority,
    } = crate::model::route::parse_line(line, USAGE)?;
    let parts: Vec<&str> = source.split('/').collect();
    let (namespace, pod, container) = match parts.as_slice() {
        [ns, pod] => (*ns, *pod, None),
        [ns, pod, c] => (*ns, *pod, Some(c.to_string())),
        _ => {
            return Err(format!(
                "source {source:?}: expected namespace/pod[/container]"
            ));
        }
    };
    for (what, name) in [("namespace", namespace), ("pod", pod)]
        .into_iter()
        .chain(container.as_deref().map(|c| ("container", c)))
    {
        if !crate::model::route::valid_name(name) {
            return Err(format!("source {source:?}: invalid {what} name {name:?}"));
        }
    }
    let target = match target {
        LineTarget::Upstream => Target::Upstream,
        LineTarget::Pod(words) => match words.split('/').collect::<Vec<_>>().as_slice() {
            [ns, name]
                if crate::model::route::valid_name(ns) && crate::model::route::valid_name(name) =>
            {
                Target::Pod {
                    namespace: ns.to_string(),
                    pod: name.to_string(),
                }
            }
            _ => return Err(format!("target pod/{words}: expected pod/namespace/name")),
        },
    };
    let mut route = Route {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container,
        filter: filter.to_string(),
        target,
        ttl: ttl.unwrap_or(default_ttl),
        priority: priority.unwrap_or_default(),
        id: 0,
    };
    route.id = Route::id_of("node", &route);
    Ok(route)
}

/// A pod's own routes (`PodSpec.routes`) as the data path's routes, with
/// the node's default TTL where the pod gave none.
pub fn pod_routes(spec: &crate::model::PodSpec, default_ttl: Duration) -> Vec<Route> {
    spec.routes
        .iter()
        .map(|r| {
            let mut route = Route {
                namespace: spec.namespace.clone(),
                pod: spec.name.clone(),
                container: r.container.clone(),
                filter: r.filter.clone(),
                target: match &r.target {
                    RouteTarget::Upstream => Target::Upstream,
                    RouteTarget::Pod(name) => Target::Pod {
                        namespace: spec.namespace.clone(),
                        pod: name.clone(),
                    },
                },
                ttl: match r.ttl_secs {
                    0 => default_ttl,
                    secs => Duration::from_secs(secs),
                },
                priority: r.priority,
                id: 0,
            };
            route.id = Route::id_of("pod", &route);
            route
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HOURS: Duration = Duration::from_secs(7200);

    fn source(container: &str) -> Source {
        Source {
            namespace: "default".into(),
            pod: "sensor".into(),
            container: container.into(),
        }
    }

    #[test]
    fn routes_parse_and_match() {
        let routes = parse_routes(
            "data.routes",
            "FROM default/sensor sensors/# INTO $upstream TTL 30m;\n FROM default/sensor/aux # INTO $upstream",
            TWO_HOURS,
        )
        .expect("valid");
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].ttl, Duration::from_secs(1800));
        assert_eq!(routes[1].ttl, TWO_HOURS);
        assert_eq!(routes[1].container.as_deref(), Some("aux"));
        let main = source("main");
        assert!(route_for(&routes, &main, "sensors/t1").is_some());
        assert!(route_for(&routes, &main, "other").is_none());
        assert!(route_for(&routes, &source("aux"), "other").is_some());
        let other_pod = Source {
            pod: "camera".into(),
            ..main
        };
        assert!(route_for(&routes, &other_pod, "sensors/t1").is_none());
    }

    #[test]
    fn a_route_reads_as_written_and_its_id_depends_on_who_declared_it() {
        let node = parse_routes(
            "data.routes",
            "FROM default/meter/main readings/# INTO $upstream TTL 90m",
            TWO_HOURS,
        )
        .expect("valid");
        assert_eq!(
            node[0].to_string(),
            "FROM default/meter/main readings/# INTO $upstream TTL 1h30m"
        );
        // The text reads back as the same route.
        let again = parse_routes("data.routes", &node[0].to_string(), TWO_HOURS).expect("valid");
        assert_eq!(again, node);
        let mut spec =
            crate::model::samples::spec("meter", "uid-1", 1, crate::model::RestartPolicy::Always);
        spec.routes = vec![crate::model::PodRoute {
            container: Some("main".into()),
            filter: "readings/#".into(),
            ttl_secs: 5400,
            target: RouteTarget::Upstream,
            priority: Priority::default(),
        }];
        let own = pod_routes(&spec, TWO_HOURS);
        assert_eq!(own[0].to_string(), node[0].to_string());
        assert_ne!(own[0].id, node[0].id, "declared by the pod, not the node");
        assert!(own[0].id != 0 && node[0].id != 0);
        assert_eq!(pod_routes(&spec, TWO_HOURS)[0].id, own[0].id, "stable");
    }

    /// A route into another pod: the node's names its namespace, a pod's
    /// is its own namespace; both read back as the node writes them.
    #[test]
    fn a_route_into_a_pod_names_the_pod_in_its_namespace() {
        let node = parse_routes(
            "data.routes",
            "FROM default/camera events/# INTO pod/site/alarm TTL 10m",
            TWO_HOURS,
        )
        .expect("valid");
        assert_eq!(
            node[0].target,
            Target::Pod {
                namespace: "site".into(),
                pod: "alarm".into()
            }
        );
        assert!(node[0].target.is_pod("site", "alarm"));
        assert!(!node[0].target.is_pod("default", "alarm"));
        assert_eq!(
            node[0].to_string(),
            "FROM default/camera events/# INTO pod/site/alarm TTL 10m"
        );
        let mut spec =
            crate::model::samples::spec("camera", "uid-1", 1, crate::model::RestartPolicy::Always);
        spec.routes = vec![crate::model::PodRoute {
            container: None,
            filter: "events/#".into(),
            ttl_secs: 0,
            target: RouteTarget::Pod("alarm".into()),
            priority: Priority::default(),
        }];
        let own = pod_routes(&spec, TWO_HOURS);
        assert!(own[0].target.is_pod(&spec.namespace, "alarm"));
        assert_eq!(
            own[0].to_string(),
            format!(
                "FROM {0}/camera events/# INTO pod/{0}/alarm TTL 2h",
                spec.namespace
            )
        );
        let err = |text: &str| parse_routes("data.routes", text, TWO_HOURS).expect_err(text);
        for bad in [
            "FROM default/camera # INTO pod/alarm",
            "FROM default/camera # INTO pod/site/alarm/main",
            "FROM default/camera # INTO pod/Site/alarm",
        ] {
            assert!(
                err(bad).message.contains("expected pod/namespace/name"),
                "{bad}"
            );
        }
    }

    /// A priority reads back as written; the default is not written, so a
    /// route declared before priorities keeps its text and id, and the
    /// same route at another priority is another route.
    #[test]
    fn a_routes_priority_reads_back_and_names_it() {
        let routes = parse_routes(
            "data.routes",
            "FROM default/meter alarms/# INTO $upstream PRIORITY 0; FROM default/meter alarms/# INTO $upstream TTL 1h priority 9; FROM default/meter alarms/# INTO $upstream TTL 1h",
            TWO_HOURS,
        )
        .expect("valid");
        assert_eq!(routes[0].priority, Priority::HIGHEST);
        assert_eq!(
            routes[0].to_string(),
            "FROM default/meter alarms/# INTO $upstream TTL 2h PRIORITY 0"
        );
        assert_eq!(routes[1].priority, Priority::LOWEST);
        assert_eq!(routes[1], routes[2], "PRIORITY 9 is the default");
        assert_eq!(
            routes[1].to_string(),
            "FROM default/meter alarms/# INTO $upstream TTL 1h"
        );
        assert_ne!(routes[0].id, routes[1].id);
        let again = parse_routes("data.routes", &routes[0].to_string(), TWO_HOURS).expect("valid");
        assert_eq!(again[0], routes[0]);
    }

    #[test]
    fn invalid_routes_name_their_index_and_what_is_wrong() {
        let err = |text: &str| parse_routes("data.routes", text, TWO_HOURS).expect_err(text);
        let e = err("FROM default/sensor # INTO $upstream; FROM default/x # INTO elsewhere");
        assert_eq!(e.index, 1);
        assert!(
            e.to_string()
                .starts_with("data.routes[1]: unsupported target"),
            "{e}"
        );
        assert!(
            err("FROM sensor # INTO $upstream")
                .message
                .contains("namespace/pod")
        );
        assert!(
            err("FROM default/sensor sensors/#/x INTO $upstream")
                .message
                .contains("filter")
        );
        assert!(
            err("FROM default/sensor # INTO $upstream TTL soon")
                .message
                .contains("TTL")
        );
        assert!(
            err("FROM default/sensor # INTO $upstream PRIORITY 10")
                .message
                .contains("PRIORITY \"10\": expected 0 (the highest) to 9 (the lowest)")
        );
        assert!(
            err("FROM default/sensor # INTO pod/default/alarm PRIORITY 1")
                .message
                .contains("INTO $upstream only")
        );
        assert!(
            err("TO default/sensor # INTO $upstream")
                .message
                .contains("expected FROM")
        );
        assert!(
            err("FROM default/Sensor_ # INTO $upstream")
                .message
                .contains("invalid pod")
        );
        assert_eq!(parse_routes("data.routes", " ; \n", TWO_HOURS), Ok(vec![]));
    }
}
