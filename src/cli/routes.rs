//! `kedge get routes`: the data path's counters each device reports in its
//! node status (`NodeStatus::data`), one line per route, then one summary
//! line per node. Pure rendering; the command reads the retained statuses.

use crate::model::NodeStatus;

/// Bytes as a person reads them: `512B`, `31.0kB`, `1.3MB` (SI, one
/// decimal).
fn bytes(n: u64) -> String {
    match n {
        0..=999 => format!("{n}B"),
        1_000..=999_999 => format!("{:.1}kB", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}MB", n as f64 / 1e6),
        _ => format!("{:.1}GB", n as f64 / 1e9),
    }
}

/// The table of every route of `nodes` (wide: with the bytes), then a line
/// per node: what the endpoint received, what no route took, the backlog
/// against the budget, the link's batches and bytes. A node without a data
/// path (or offline: its last will carries no counters) says so.
pub fn routes_table(nodes: &[NodeStatus], wide: bool) -> String {
    let mut header = vec![
        "NODE",
        "ROUTE",
        "DECLARED-BY",
        "PRIORITY",
        "RECEIVED",
        "QUEUED",
        "SENT",
        "DROPPED-TTL",
        "DROPPED-BUDGET",
    ];
    if wide {
        header.extend(["QUEUED-BYTES", "SENT-BYTES"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    let mut summary = String::new();
    for n in nodes {
        let Some(d) = &n.data else {
            summary.push_str(&format!(
                "{}: {}\n",
                n.name,
                if n.online {
                    "no data path (the agent runs none, or is older than wire version 11)"
                } else {
                    "offline; its counters come with its next status"
                }
            ));
            continue;
        };
        for r in &d.routes {
            let mut row = vec![
                n.name.clone(),
                if r.route.is_empty() {
                    "<unknown: stored before the agent restarted>".to_string()
                } else {
                    r.route.clone()
                },
                r.pod
                    .as_deref()
                    .map_or_else(|| "node".to_string(), |p| format!("pod/{p}")),
                r.priority.to_string(),
                r.received.to_string(),
                r.queued.to_string(),
                r.sent.to_string(),
                r.dropped_ttl.to_string(),
                r.dropped_budget.to_string(),
            ];
            if wide {
                row.push(bytes(r.queued_bytes));
                row.push(bytes(r.sent_bytes));
            }
            rows.push(row);
        }
        summary.push_str(&format!(
            "{}: {} received, {} unrouted, {} connections refused; {} queued ({} of the {} budget); {} sent in {} batches ({} stored, {} on the link); dropped {} past their TTL, {} over the budget\n",
            n.name,
            d.received,
            d.unrouted,
            d.refused_connections,
            d.queued,
            bytes(d.queued_bytes),
            bytes(d.budget_bytes),
            d.sent,
            d.batches,
            bytes(d.sent_bytes),
            bytes(d.link_bytes),
            d.dropped_ttl,
            d.dropped_budget,
        ));
    }
    let mut out = if rows.len() > 1 {
        super::table(&rows)
    } else {
        String::new()
    };
    if !summary.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&summary);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DataPathStatus, RouteStatus};

    fn node(name: &str, online: bool, data: Option<DataPathStatus>) -> NodeStatus {
        let mut n = crate::model::samples::node_status(name);
        n.online = online;
        n.data = data.map(Box::new);
        n
    }

    #[test]
    fn one_line_per_route_then_one_per_node() {
        let data = DataPathStatus {
            received: 10_250,
            unrouted: 3,
            queued: 240,
            queued_bytes: 31_000,
            budget_bytes: 64 << 20,
            sent: 10_000,
            sent_bytes: 1_290_000,
            batches: 12,
            link_bytes: 1_310_512,
            routes: vec![
                RouteStatus {
                    route: "FROM default/sensor sensors/# INTO $upstream TTL 2h PRIORITY 1".into(),
                    received: 10_000,
                    queued: 200,
                    sent: 9_800,
                    priority: crate::model::Priority(1),
                    ..Default::default()
                },
                RouteStatus {
                    route: String::new(),
                    pod: None,
                    queued: 40,
                    queued_bytes: 5_000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let nodes = [
            node("gw1", true, Some(data)),
            node("gw2", true, None),
            node("gw3", false, None),
        ];
        let text = routes_table(&nodes, true);
        let lines: Vec<&str> = text.lines().collect();
        let cells = |line: &str| -> Vec<String> {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells(lines[0]),
            [
                "NODE",
                "ROUTE",
                "DECLARED-BY",
                "PRIORITY",
                "RECEIVED",
                "QUEUED",
                "SENT",
                "DROPPED-TTL",
                "DROPPED-BUDGET",
                "QUEUED-BYTES",
                "SENT-BYTES"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "gw1",
                "FROM default/sensor sensors/# INTO $upstream TTL 2h PRIORITY 1",
                "node",
                "1",
                "10000",
                "200",
                "9800",
                "0",
                "0",
                "0B",
                "0B"
            ]
        );
        assert_eq!(
            cells(lines[2])[1..4],
            ["<unknown: stored before the agent restarted>", "node", "9"]
        );
        assert_eq!(cells(lines[2])[9], "5.0kB");
        assert_eq!(
            lines[4],
            "gw1: 10250 received, 3 unrouted, 0 connections refused; 240 queued (31.0kB of the 67.1MB budget); 10000 sent in 12 batches (1.3MB stored, 1.3MB on the link); dropped 0 past their TTL, 0 over the budget"
        );
        assert!(lines[5].starts_with("gw2: no data path"), "{text}");
        assert!(lines[6].starts_with("gw3: offline"), "{text}");
        // Nothing but nodes without counters: no header.
        assert!(routes_table(&nodes[1..], false).starts_with("gw2: "));
    }
}
