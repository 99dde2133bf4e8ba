//! The route grammar shared by the node's routes (`data.routes`,
//! `data::route`) and the routes a pod declares for itself (the annotation
//! `kedge.io/routes`, `PodSpec.routes`), pure:
//!
//! ```text
//! FROM <source> <topic-filter> INTO <target> [TTL <duration>] [PRIORITY <0-9>]
//! ```
//!
//! A node's route names its source `namespace/pod[/container]`; a pod's
//! names one of its app containers, or `*` for all of them. One route per
//! line, or separated by `;`. The target is `$upstream` (the sink) or
//! another pod on the same node (module-to-module): `pod/<name>` in a
//! pod's route (a pod of its own namespace), `pod/<namespace>/<name>` in a
//! node's. `PRIORITY` (0 the highest to 9 the lowest, the default; TTL and
//! PRIORITY in either order) orders what waits for the broker, so it is
//! refused on a route into a pod: such a route's messages wait for no link
//! (each is delivered as soon as the pod subscribes) and not in
//! `data.budget_bytes`, so a priority there would be accepted and ignored.

use std::time::Duration;

use super::{PodRoute, Priority, RouteTarget};

/// The annotation in which a pod declares its routes.
pub const ROUTES_ANNOTATION: &str = "kedge.io/routes";

/// The grammar of a pod's route, for error messages.
pub const POD_ROUTE_USAGE: &str = "expected FROM <container>|* <topic-filter> INTO $upstream|pod/<name> [TTL <duration>] [PRIORITY <0-9>]";

/// The target word of a route line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTarget<'a> {
    Upstream,
    /// What follows `pod/`: `<name>` in a pod's route,
    /// `<namespace>/<name>` in a node's; its shape is the caller's to
    /// check.
    Pod(&'a str),
}

/// Whether `name` can name a namespace, a pod or a container: lowercase
/// letters, digits, `-` and `.`, not empty, at most 253 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// One route line, split (`Line`). `usage` is the grammar the message
/// repeats when the line has the wrong shape.
pub fn parse_line<'a>(line: &'a str, usage: &str) -> Result<Line<'a>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [from, source, filter, into, sink, rest @ ..] = words.as_slice() else {
        return Err(format!("{line:?}: {usage}"));
    };
    if !from.eq_ignore_ascii_case("FROM") || !into.eq_ignore_ascii_case("INTO") {
        return Err(format!("{line:?}: {usage}"));
    }
    if !rumqttc::mqttbytes::valid_filter(filter) {
        return Err(format!("invalid MQTT topic filter {filter:?}"));
    }
    let target = if *sink == "$upstream" {
        LineTarget::Upstream
    } else if let Some(pod) = sink.strip_prefix("pod/") {
        LineTarget::Pod(pod)
    } else {
        return Err(format!(
            "unsupported target {sink:?}: expected $upstream or pod/<name>"
        ));
    };
    let (mut ttl, mut priority) = (None, None);
    for pair in rest.chunks(2) {
        match pair {
            [word, value] if word.eq_ignore_ascii_case("TTL") && ttl.is_none() => {
                let t =
                    humantime::parse_duration(value).map_err(|e| format!("TTL {value:?}: {e}"))?;
                if t.is_zero() {
                    return Err(format!("TTL {value:?}: must be positive"));
                }
                ttl = Some(t);
            }
            [word, value] if word.eq_ignore_ascii_case("PRIORITY") && priority.is_none() => {
                priority = Some(parse_priority(value)?);
            }
            _ => return Err(format!("unexpected {:?} after the target", rest.join(" "))),
        }
    }
    if priority.is_some() && matches!(target, LineTarget::Pod(_)) {
        return Err(NOT_INTO_A_POD.into());
    }
    Ok(Line {
        source,
        filter,
        target,
        ttl,
        priority,
    })
}

/// Why `PRIORITY` is refused on a route into a pod.
pub const NOT_INTO_A_POD: &str = "PRIORITY applies to routes INTO $upstream only: a route into a pod waits for no link and is outside data.budget_bytes";

/// `PRIORITY`'s value: 0 (the highest) to 9 (the lowest).
fn parse_priority(value: &str) -> Result<Priority, String> {
    match value.parse::<u8>() {
        Ok(n) if usize::from(n) < Priority::LEVELS => Ok(Priority(n)),
        _ => Err(format!(
            "PRIORITY {value:?}: expected 0 (the highest) to 9 (the lowest)"
        )),
    }
}

/// A route line's parts: its source word, its topic filter, its target,
/// its TTL and its priority (None: the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub source: &'a str,
    pub filter: &'a str,
    pub target: LineTarget<'a>,
    pub ttl: Option<Duration>,
    pub priority: Option<Priority>,
}

/// The lines of a routes text: split on newlines and `;`, trimmed, empty
/// ones left out.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\n', ';'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// Parses the routes a pod declares (the value of `kedge.io/routes`):
/// every route or the first error, with its index. The source is an app
/// container's name or `*`; that the container exists is
/// `model::validate`'s to check.
pub fn parse_pod_routes(text: &str) -> Result<Vec<PodRoute>, (usize, String)> {
    lines(text)
        .enumerate()
        .map(|(index, line)| {
            let Line {
                source,
                filter,
                target,
                ttl,
                priority,
            } = parse_line(line, POD_ROUTE_USAGE).map_err(|e| (index, e))?;
            let container = match source {
                "*" => None,
                name => Some(name.to_string()),
            };
            let target = match target {
                LineTarget::Upstream => RouteTarget::Upstream,
                LineTarget::Pod(name) if valid_name(name) => RouteTarget::Pod(name.to_string()),
                LineTarget::Pod(name) => {
                    return Err((
                        index,
                        format!(
                            "target pod/{name}: expected pod/<name>, a pod of the same namespace"
                        ),
                    ));
                }
            };
            Ok(PodRoute {
                container,
                filter: filter.to_string(),
                ttl_secs: ttl.map_or(0, |t| t.as_secs().max(1)),
                target,
                priority: priority.unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_routes_parse_with_their_container_or_all() {
        let routes = parse_pod_routes(
            "FROM meter readings/# INTO $upstream TTL 2h\nFROM * alarms/+ INTO $upstream PRIORITY 0 TTL 10m\nFROM * cmd/# INTO pod/actuator TTL 1m",
        )
        .expect("valid");
        assert_eq!(
            routes,
            [
                PodRoute {
                    container: Some("meter".into()),
                    filter: "readings/#".into(),
                    ttl_secs: 7200,
                    target: RouteTarget::Upstream,
                    priority: Priority::LOWEST,
                },
                PodRoute {
                    container: None,
                    filter: "alarms/+".into(),
                    ttl_secs: 600,
                    target: RouteTarget::Upstream,
                    priority: Priority::HIGHEST,
                },
                PodRoute {
                    container: None,
                    filter: "cmd/#".into(),
                    ttl_secs: 60,
                    target: RouteTarget::Pod("actuator".into()),
                    priority: Priority::LOWEST,
                },
            ]
        );
        assert_eq!(parse_pod_routes(" ;\n "), Ok(vec![]));
    }

    #[test]
    fn a_wrong_route_says_which_and_why() {
        let err = |text: &str| parse_pod_routes(text).expect_err(text);
        assert_eq!(
            err("FROM * # INTO $upstream; FROM a # INTO elsewhere"),
            (
                1,
                "unsupported target \"elsewhere\": expected $upstream or pod/<name>".into()
            )
        );
        assert!(
            err("FROM * # INTO pod/default/actuator")
                .1
                .contains("a pod of the same namespace")
        );
        assert!(err("FROM * # INTO pod/").1.contains("expected pod/<name>"));
        assert!(err("FROM * # INTO pod/Actuator_").1.contains("pod/<name>"));
        assert!(err("FROM a # INTO").1.contains(POD_ROUTE_USAGE));
        assert!(err("FROM a x/#/y INTO $upstream").1.contains("filter"));
        assert!(err("FROM a # INTO $upstream TTL 0s").1.contains("positive"));
        assert!(err("FROM a # INTO $upstream TTL soon").1.contains("TTL"));
        for bad in ["10", "-1", "high", "1.5"] {
            assert_eq!(
                err(&format!("FROM a # INTO $upstream PRIORITY {bad}")).1,
                format!("PRIORITY {bad:?}: expected 0 (the highest) to 9 (the lowest)")
            );
        }
        assert!(
            err("FROM a # INTO $upstream PRIORITY 1 PRIORITY 2")
                .1
                .starts_with("unexpected")
        );
        assert!(
            err("FROM a # INTO $upstream PRIORITY")
                .1
                .starts_with("unexpected")
        );
        // Where it would mean nothing, it is refused.
        assert_eq!(
            err("FROM a # INTO pod/actuator PRIORITY 0").1,
            NOT_INTO_A_POD
        );
    }
}
