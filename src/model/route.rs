//! The route grammar shared by the node's routes (`data.routes`,
//! `data::route`) and the routes a pod declares for itself (the annotation
//! `kedge.io/routes`, `PodSpec.routes`), pure:
//!
//! ```text
//! FROM <source> <topic-filter> INTO $upstream [TTL <duration>]
//! ```
//!
//! A node's route names its source `namespace/pod[/container]`; a pod's
//! names one of its app containers, or `*` for all of them. One route per
//! line, or separated by `;`. `$upstream` (the sink) is the only target
//! so far.

use std::time::Duration;

use super::PodRoute;

/// The annotation in which a pod declares its routes.
pub const ROUTES_ANNOTATION: &str = "kedge.io/routes";

/// The grammar of a pod's route, for error messages.
pub const POD_ROUTE_USAGE: &str =
    "expected FROM <container>|* <topic-filter> INTO $upstream [TTL <duration>]";

/// One route line, split: its source word, its topic filter and its TTL
/// (None: the default). `usage` is the grammar the message repeats when
/// the line has the wrong shape.
pub fn parse_line<'a>(
    line: &'a str,
    usage: &str,
) -> Result<(&'a str, &'a str, Option<Duration>), String> {
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
    if *sink != "$upstream" {
        return Err(format!(
            "unsupported sink {sink:?}: only $upstream (module-to-module routes are not built yet)"
        ));
    }
    let ttl = match rest {
        [] => None,
        [ttl_word, value] if ttl_word.eq_ignore_ascii_case("TTL") => {
            let ttl =
                humantime::parse_duration(value).map_err(|e| format!("TTL {value:?}: {e}"))?;
            if ttl.is_zero() {
                return Err(format!("TTL {value:?}: must be positive"));
            }
            Some(ttl)
        }
        [word, ..] if word.eq_ignore_ascii_case("PRIORITY") => {
            return Err("PRIORITY is not supported yet".into());
        }
        other => return Err(format!("unexpected {:?} after the sink", other.join(" "))),
    };
    Ok((*source, *filter, ttl))
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
            let (source, filter, ttl) =
                parse_line(line, POD_ROUTE_USAGE).map_err(|e| (index, e))?;
            let container = match source {
                "*" => None,
                name => Some(name.to_string()),
            };
            Ok(PodRoute {
                container,
                filter: filter.to_string(),
                ttl_secs: ttl.map_or(0, |t| t.as_secs().max(1)),
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
            "FROM meter readings/# INTO $upstream TTL 2h\nFROM * alarms/+ INTO $upstream",
        )
        .expect("valid");
        assert_eq!(
            routes,
            [
                PodRoute {
                    container: Some("meter".into()),
                    filter: "readings/#".into(),
                    ttl_secs: 7200,
                },
                PodRoute {
                    container: None,
                    filter: "alarms/+".into(),
                    ttl_secs: 0,
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
                "unsupported sink \"elsewhere\": only $upstream (module-to-module routes are not built yet)".into()
            )
        );
        assert!(err("FROM a # INTO").1.contains(POD_ROUTE_USAGE));
        assert!(err("FROM a x/#/y INTO $upstream").1.contains("filter"));
        assert!(err("FROM a # INTO $upstream TTL 0s").1.contains("positive"));
        assert!(err("FROM a # INTO $upstream TTL soon").1.contains("TTL"));
    }
}
