//! The devices' data path counters (`NodeStatus::data`, issue 12) as
//! Prometheus metrics on the bridge's `/metrics`. Pure: rendered from the
//! last node status of each device the bridge knows.

use std::fmt::Write as _;

use crate::model::{DataPathStatus, RouteStatus};

/// A family of one value per node or per route: name, type, help, value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// A label value in the text format: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every device's data path counters, one family after the other (the
/// text format wants a family's samples together). Devices without a data
/// path give no line.
pub fn render<'a>(devices: impl Iterator<Item = (&'a str, &'a DataPathStatus)> + Clone) -> String {
    let mut s = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: &mut dyn FnMut(&mut String)| {
        let mut body = String::new();
        lines(&mut body);
        if !body.is_empty() {
            let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{body}");
        }
    };
    family(
        "kedge_data_messages_total",
        "counter",
        "Workload messages on a device's data path since its agent started, by what happened to them.",
        &mut |out| {
            for (node, d) in devices.clone() {
                for (state, v) in [
                    ("received", d.received),
                    ("unrouted", d.unrouted),
                    ("sent", d.sent),
                    ("dropped_ttl", d.dropped_ttl),
                    ("dropped_budget", d.dropped_budget),
                ] {
                    let _ = writeln!(
                        out,
                        "kedge_data_messages_total{{node=\"{}\",state=\"{state}\"}} {v}",
                        label(node)
                    );
                }
            }
        },
    );
    let node_values: [Family<DataPathStatus>; 7] = [
        (
            "kedge_data_queued_messages",
            "gauge",
            "Workload messages stored on the device, waiting for the broker.",
            |d| d.queued,
        ),
        (
            "kedge_data_queued_bytes",
            "gauge",
            "Stored bytes of the messages waiting on the device.",
            |d| d.queued_bytes,
        ),
        (
            "kedge_data_budget_bytes",
            "gauge",
            "The device's data.budget_bytes.",
            |d| d.budget_bytes,
        ),
        (
            "kedge_data_sent_bytes_total",
            "counter",
            "Stored bytes of the messages the broker acknowledged.",
            |d| d.sent_bytes,
        ),
        (
            "kedge_data_link_bytes_total",
            "counter",
            "Sealed bytes of the acknowledged batches (what the link carried).",
            |d| d.link_bytes,
        ),
        (
            "kedge_data_batches_total",
            "counter",
            "Sealed batches the broker acknowledged.",
            |d| d.batches,
        ),
        (
            "kedge_data_refused_connections_total",
            "counter",
            "Connections the data endpoint refused (unknown pod or wrong credentials).",
            |d| d.refused_connections,
        ),
    ];
    for (name, kind, help, value) in node_values {
        family(name, kind, help, &mut |out| {
            for (node, d) in devices.clone() {
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", label(node), value(d));
            }
        });
    }
    let route_labels = |node: &str, r: &RouteStatus| {
        format!(
            "node=\"{}\",route=\"{}\",pod=\"{}\",priority=\"{}\"",
            label(node),
            label(&r.route),
            label(r.pod.as_deref().unwrap_or("")),
            r.priority
        )
    };
    family(
        "kedge_data_route_messages_total",
        "counter",
        "Workload messages of one route since the agent started, by what happened to them (route=\"\": a route the agent does not know, messages stored before its restart).",
        &mut |out| {
            for (node, d) in devices.clone() {
                for r in &d.routes {
                    let labels = route_labels(node, r);
                    for (state, v) in [
                        ("received", r.received),
                        ("sent", r.sent),
                        ("dropped_ttl", r.dropped_ttl),
                        ("dropped_budget", r.dropped_budget),
                    ] {
                        let _ = writeln!(
                            out,
                            "kedge_data_route_messages_total{{{labels},state=\"{state}\"}} {v}"
                        );
                    }
                }
            }
        },
    );
    let route_values: [Family<RouteStatus>; 3] = [
        (
            "kedge_data_route_queued_messages",
            "gauge",
            "Messages of one route stored on the device.",
            |r| r.queued,
        ),
        (
            "kedge_data_route_queued_bytes",
            "gauge",
            "Stored bytes of one route's messages on the device.",
            |r| r.queued_bytes,
        ),
        (
            "kedge_data_route_sent_bytes_total",
            "counter",
            "Stored bytes of one route's messages the broker acknowledged.",
            |r| r.sent_bytes,
        ),
    ];
    for (name, kind, help, value) in route_values {
        family(name, kind, help, &mut |out| {
            for (node, d) in devices.clone() {
                for r in &d.routes {
                    let _ = writeln!(out, "{name}{{{}}} {}", route_labels(node, r), value(r));
                }
            }
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_once_with_every_device_and_route() {
        let gw1 = DataPathStatus {
            received: 12,
            sent: 10,
            queued: 2,
            routes: vec![RouteStatus {
                route: "FROM default/s \"x\"/# INTO $upstream TTL 2h".into(),
                pod: Some("default/s".into()),
                received: 12,
                sent: 10,
                queued: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let gw2 = DataPathStatus::default();
        let text = render([("gw1", &gw1), ("gw2", &gw2)].into_iter());
        assert!(text.contains("kedge_data_messages_total{node=\"gw1\",state=\"sent\"} 10\n"));
        assert!(text.contains("kedge_data_queued_messages{node=\"gw2\"} 0\n"));
        assert!(text.contains(
            "kedge_data_route_messages_total{node=\"gw1\",route=\"FROM default/s \\\"x\\\"/# INTO $upstream TTL 2h\",pod=\"default/s\",priority=\"9\",state=\"received\"} 12\n"
        ));
        assert!(text.contains("kedge_data_route_queued_messages{node=\"gw1\","));
        // One HELP and TYPE per family, before its samples.
        for family in ["kedge_data_messages_total", "kedge_data_route_queued_bytes"] {
            assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1);
        }
        assert_eq!(render(std::iter::empty()), "");
    }
}
