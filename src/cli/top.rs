//! `kedge top node|pod`: the CPU and memory of devices and their pods,
//! asked of each device through the stats RPC (docs/wire.md, "Stats RPC")
//! and printed as `kubectl top` prints them. No metrics-server and no
//! Kubernetes: the device's counters are cumulative, so each device is
//! asked twice, [`WINDOW`] apart, and CPU is the rate in between.
//!
//! The arithmetic and the tables are pure functions; `top` does the asking.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use super::client::Client;
use super::{TopWhat, no_resources, table};
use crate::client::ClientError;
use crate::config::Config;
use crate::model::{NodeStats, NodeStatus, PodKey, Usage};
use crate::wire::{self, Topics};

/// The time between a device's two samples: CPU is the average over it.
pub const WINDOW: Duration = Duration::from_secs(1);
/// How long a device has to answer each request, unless `--timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Millicores used between two readings of a cumulative CPU counter
/// (core-nanoseconds at Unix ms). Without an earlier reading of the same
/// counter (a container that started in between, or one whose counter went
/// back: it restarted), the average since `start_ms`.
pub fn millicores(before: Option<(u64, u64)>, after: (u64, u64), start_ms: u64) -> u64 {
    let (t1, ns1) = after;
    let (t0, ns0) = match before {
        Some((t0, ns0)) if t0 < t1 && ns0 <= ns1 => (t0, ns0),
        _ => (start_ms, 0),
    };
    if t1 <= t0 {
        return 0;
    }
    // core-ns per ms of wall time / 1000 = millicores.
    let rate = u128::from(ns1 - ns0) / (u128::from(t1 - t0) * 1000);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// kubectl's CPU column: millicores, `12m`.
pub fn cpu(millis: u64) -> String {
    format!("{millis}m")
}

/// kubectl's memory column: whole MiB, `34Mi`.
pub fn memory(bytes: u64) -> String {
    format!("{}Mi", bytes >> 20)
}

/// kubectl's percentage column (of allocatable): `7%`; `<unknown>` when the
/// node reports no allocatable amount.
pub fn percent(used: u64, allocatable: u64) -> String {
    if allocatable == 0 {
        return UNKNOWN.into();
    }
    format!("{}%", u128::from(used) * 100 / u128::from(allocatable))
}

const UNKNOWN: &str = "<unknown>";

fn reading(u: &Usage) -> (u64, u64) {
    (u.timestamp_ms, u.cpu_core_ns)
}

/// A node's usage over the window: (millicores, working set bytes).
pub fn node_usage(first: &NodeStats, second: &NodeStats) -> (u64, u64) {
    let cpu = millicores(
        Some(reading(&first.usage)),
        reading(&second.usage),
        second.start_time_ms,
    );
    (cpu, second.usage.memory_working_set_bytes)
}

/// One container's usage over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTop {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// One pod's usage over the window: its running containers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTop {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<ContainerTop>,
}

impl PodTop {
    /// The pod's own line: the sum of its containers, as kubectl shows it.
    pub fn total(&self) -> (u64, u64) {
        self.containers.iter().fold((0, 0), |(c, m), x| {
            (
                c.saturating_add(x.cpu_millis),
                m.saturating_add(x.memory_bytes),
            )
        })
    }
}

/// The pods of the second sample that `keep` keeps, with each container's
/// CPU over the window (matched with the first sample by pod uid, container
/// name and start time) and its working set at the end.
pub fn pods_usage(
    first: &NodeStats,
    second: &NodeStats,
    keep: impl Fn(&str, &str) -> bool,
) -> Vec<PodTop> {
    let earlier = |uid: &str, name: &str, start: u64| {
        first
            .pods
            .iter()
            .filter(|p| p.uid == uid)
            .flat_map(|p| &p.containers)
            .find(|c| c.name == name && c.start_time_ms == start)
            .map(|c| reading(&c.usage))
    };
    second
        .pods
        .iter()
        .filter(|p| keep(&p.namespace, &p.name))
        .map(|p| PodTop {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            containers: p
                .containers
                .iter()
                .map(|c| ContainerTop {
                    name: c.name.clone(),
                    cpu_millis: millicores(
                        earlier(&p.uid, &c.name, c.start_time_ms),
                        reading(&c.usage),
                        c.start_time_ms,
                    ),
                    memory_bytes: c.usage.memory_working_set_bytes,
                })
                .collect(),
        })
        .collect()
}

/// A line of `kedge top node`: the node's usage over the window (None: it
/// could not be read; the reason is said apart) and its allocatable CPU
/// (millicores) and memory (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTop {
    pub name: String,
    pub usage: Option<(u64, u64)>,
    pub allocatable: (u64, u64),
}

/// `kedge top node`: NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%), as
/// kubectl v1.35 prints it; a node that could not be read shows
/// `<unknown>`.
pub fn nodes_table(nodes: &[NodeTop], headers: bool) -> String {
    let mut rows = Vec::new();
    if headers {
        rows.push(
            ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
                .map(String::from)
                .to_vec(),
        );
    }
    for n in nodes {
        let mut row = vec![n.name.clone()];
        match n.usage {
            Some((c, m)) => row.extend([
                cpu(c),
                percent(c, n.allocatable.0),
                memory(m),
                percent(m, n.allocatable.1),
            ]),
            None => row.extend([UNKNOWN; 4].map(String::from)),
        }
        rows.push(row);
    }
    table(&rows)
}

/// `kedge top pod`: [NAMESPACE] NAME CPU(cores) MEMORY(bytes), or with
/// `containers` [NAMESPACE] POD NAME CPU(cores) MEMORY(bytes), one line per
/// container; sorted by namespace and name, as kubectl lists them.
pub fn pods_table(
    pods: &[PodTop],
    all_namespaces: bool,
    containers: bool,
    headers: bool,
) -> String {
    let mut pods: Vec<&PodTop> = pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut rows = Vec::new();
    if headers {
        let mut h = Vec::new();
        if all_namespaces {
            h.push("NAMESPACE");
        }
        if containers {
            h.push("POD");
        }
        h.extend(["NAME", "CPU(cores)", "MEMORY(bytes)"]);
        rows.push(h.into_iter().map(String::from).collect());
    }
    for p in pods {
        let lead = |rest: [String; 3]| {
            let mut row = Vec::new();
            if all_namespaces {
                row.push(p.namespace.clone());
            }
            if containers {
                row.push(p.name.clone());
            }
            row.extend(rest);
            row
        };
        if containers {
            for c in &p.containers {
                rows.push(lead([
                    c.name.clone(),
                    cpu(c.cpu_millis),
                    memory(c.memory_bytes),
                ]));
            }
        } else {
            let (c, m) = p.total();
            rows.push(lead([p.name.clone(), cpu(c), memory(m)]));
        }
    }
    table(&rows)
}

/// The nodes to ask and what their retained statuses say: a node whose
/// agent is offline (its last will) is not asked.
async fn node_statuses(
    client: &mut Client,
    topics: &Topics,
    only: Option<&str>,
) -> anyhow::Result<BTreeMap<String, NodeStatus>> {
    let filter = format!("{}/{}/node", topics.prefix(), only.unwrap_or("+"));
    let mut nodes = BTreeMap::new();
    for (topic, payload) in client.retained(&filter).await? {
        match wire::decode_as::<NodeStatus>(&payload) {
            Ok((_, n)) => {
                nodes.insert(n.name.clone(), n);
            }
            Err(e) => eprintln!("warning: skipping {topic}: {e}"),
        }
    }
    if let Some(name) = only
        && !nodes.contains_key(name)
    {
        bail!(
            "node {name:?} not found: no status of it on broker {} (has its agent ever connected?)",
            client.url()
        );
    }
    Ok(nodes)
}

/// Asks every online node of `nodes` for two samples, [`WINDOW`] apart, at
/// once; each request waits at most `timeout`. A node that is offline or
/// does not answer is an error of its own.
async fn sample_all(
    client: &Client,
    nodes: &BTreeMap<String, NodeStatus>,
    timeout: Duration,
) -> BTreeMap<String, Result<(NodeStats, NodeStats), String>> {
    let mut out = BTreeMap::new();
    let mut asked = tokio::task::JoinSet::new();
    for (name, status) in nodes {
        if !status.online {
            out.insert(name.clone(), Err(format!("node {name}: not connected")));
            continue;
        }
        let (rpc, name) = (client.rpc(), name.clone());
        asked.spawn(async move {
            let two = async {
                let first = rpc.stats_within(&name, timeout).await?;
                tokio::time::sleep(WINDOW).await;
                let second = rpc.stats_within(&name, timeout).await?;
                Ok::<_, ClientError>((first, second))
            };
            let result = two.await.map_err(|e| match e {
                ClientError::NotConnected(_) | ClientError::NoAck { .. } => {
                    format!("node {name}: {e}")
                }
                e => e.to_string(),
            });
            (name, result)
        });
    }
    while let Some(done) = asked.join_next().await {
        if let Ok((name, result)) = done {
            out.insert(name, result);
        }
    }
    out
}

/// The arguments of `kedge top`, parsed.
fn timeout_of(timeout: Option<&str>) -> anyhow::Result<Duration> {
    match timeout {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("invalid --timeout {t:?} (e.g. 10s, 1m)")),
    }
}

/// `kedge top node|pod`. What could be read is printed; each node that
/// could not is said on stderr. Fails when nothing could be read, or when
/// the one node or pod named could not.
pub async fn top(config: &Config, what: &TopWhat) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let mut stdout = std::io::stdout();
    let (failed, nothing) = match what {
        TopWhat::Node {
            name,
            timeout,
            no_headers,
        } => {
            let timeout = timeout_of(timeout.as_deref())?;
            let statuses = node_statuses(&mut client, &topics, name.as_deref()).await?;
            if statuses.is_empty() {
                bail!("no nodes on broker {}", client.url());
            }
            let samples = sample_all(&client, &statuses, timeout).await;
            let mut rows = Vec::new();
            let mut failed = Vec::new();
            for (node, status) in &statuses {
                let usage = match samples.get(node) {
                    Some(Ok((a, b))) => Some(node_usage(a, b)),
                    Some(Err(e)) => {
                        failed.push(e.clone());
                        None
                    }
                    None => {
                        failed.push(format!("node {node}: the request failed"));
                        None
                    }
                };
                rows.push(NodeTop {
                    name: node.clone(),
                    usage,
                    allocatable: (
                        status.allocatable.cpu_millis,
                        status.allocatable.memory_bytes,
                    ),
                });
            }
            write!(stdout, "{}", nodes_table(&rows, !no_headers))?;
            (failed, rows.iter().all(|r| r.usage.is_none()))
        }
        TopWhat::Pod {
            name,
            namespace,
            all_namespaces,
            node,
            containers,
            timeout,
            no_headers,
        } => {
            let timeout = timeout_of(timeout.as_deref())?;
            let node = match (name, node) {
                (Some(pod), None) => Some(
                    super::find_node(&mut client, &topics, &PodKey::new(namespace, pod), None)
                        .await?,
                ),
                (_, node) => node.clone(),
            };
            let statuses = node_statuses(&mut client, &topics, node.as_deref()).await?;
            let samples = sample_all(&client, &statuses, timeout).await;
            let keep = |ns: &str, pod: &str| {
                (*all_namespaces || ns == namespace) && name.as_deref().is_none_or(|n| n == pod)
            };
            let mut pods = Vec::new();
            let mut failed = Vec::new();
            for result in samples.values() {
                match result {
                    Ok((a, b)) => pods.extend(pods_usage(a, b, keep)),
                    Err(e) => failed.push(e.clone()),
                }
            }
            let nothing = failed.len() == samples.len() && !samples.is_empty();
            if let (Some(pod), false, true) = (name, nothing, pods.is_empty()) {
                bail!("pod {pod:?} in namespace {namespace:?} has no running container to measure");
            }
            if pods.is_empty() && failed.is_empty() {
                no_resources(*all_namespaces, namespace);
            } else if !pods.is_empty() {
                let text = pods_table(&pods, *all_namespaces, *containers, !no_headers);
                write!(stdout, "{text}")?;
            }
            (failed, nothing || (name.is_some() && pods.is_empty()))
        }
    };
    client.disconnect().await;
    for e in &failed {
        eprintln!("error: {e}");
    }
    if nothing && !failed.is_empty() {
        bail!("no usage could be read");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerStats, PodStats};

    fn usage(t: u64, ns: u64, mem: u64) -> Usage {
        Usage {
            timestamp_ms: t,
            cpu_core_ns: ns,
            memory_working_set_bytes: mem,
        }
    }

    #[test]
    fn cpu_is_the_rate_between_two_readings() {
        // 0.5 s of CPU over 1 s of wall time: half a core.
        assert_eq!(millicores(Some((1_000, 0)), (2_000, 500_000_000), 0), 500);
        // 12 ms of CPU in a second: 12m.
        assert_eq!(millicores(Some((5_000, 7)), (6_000, 12_000_007), 0), 12);
        // Without an earlier reading, or one that went back (a restart):
        // the average since the start.
        assert_eq!(millicores(None, (10_000, 2_000_000_000), 6_000), 500);
        assert_eq!(
            millicores(Some((9_000, 9_000_000_000)), (10_000, 2_000_000_000), 6_000),
            500
        );
        // No time passed, or a clock that went back: nothing to divide by.
        assert_eq!(millicores(Some((5_000, 0)), (5_000, 100), 0), 0);
        assert_eq!(millicores(None, (5_000, 100), 9_000), 0);
        // Huge counters do not overflow.
        assert_eq!(millicores(Some((0, 0)), (1, u64::MAX), 0), u64::MAX / 1000);
    }

    #[test]
    fn columns_read_like_kubectl() {
        assert_eq!(cpu(0), "0m");
        assert_eq!(cpu(1250), "1250m");
        assert_eq!(memory(34 << 20 | 5), "34Mi");
        assert_eq!(memory(1 << 19), "0Mi");
        assert_eq!(percent(500, 2000), "25%");
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(5, 0), "<unknown>");
    }

    fn stats(t: u64, node_ns: u64, pods: Vec<PodStats>) -> NodeStats {
        NodeStats {
            start_time_ms: 1,
            usage: usage(t, node_ns, 900 << 20),
            memory_available_bytes: 100 << 20,
            pods,
        }
    }

    fn pod(ns: &str, name: &str, containers: &[(&str, u64, Usage)]) -> PodStats {
        PodStats {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            start_time_ms: 1,
            containers: containers
                .iter()
                .map(|(n, start, u)| ContainerStats {
                    name: n.to_string(),
                    start_time_ms: *start,
                    usage: *u,
                })
                .collect(),
        }
    }

    #[test]
    fn pods_are_matched_across_samples_and_filtered() {
        let first = stats(
            10_000,
            0,
            vec![
                pod("default", "web", &[("app", 1_000, usage(10_000, 0, 1))]),
                pod("kube", "sys", &[("c", 1_000, usage(10_000, 0, 1))]),
            ],
        );
        let second = stats(
            11_000,
            250_000_000,
            vec![
                pod(
                    "default",
                    "web",
                    &[
                        ("app", 1_000, usage(11_000, 100_000_000, 30 << 20)),
                        // Started after the first sample: its average since.
                        ("side", 10_500, usage(11_000, 50_000_000, 2 << 20)),
                    ],
                ),
                pod("kube", "sys", &[("c", 1_000, usage(11_000, 0, 1))]),
            ],
        );
        assert_eq!(node_usage(&first, &second), (250, 900 << 20));
        let pods = pods_usage(&first, &second, |ns, _| ns == "default");
        assert_eq!(
            pods,
            vec![PodTop {
                namespace: "default".into(),
                name: "web".into(),
                containers: vec![
                    ContainerTop {
                        name: "app".into(),
                        cpu_millis: 100,
                        memory_bytes: 30 << 20
                    },
                    ContainerTop {
                        name: "side".into(),
                        cpu_millis: 100,
                        memory_bytes: 2 << 20
                    },
                ],
            }]
        );
        assert_eq!(pods[0].total(), (200, 32 << 20));
        // A container that restarted in between (another start time) is
        // not compared with its predecessor.
        let restarted = stats(
            11_000,
            0,
            vec![pod(
                "default",
                "web",
                &[("app", 10_800, usage(11_000, 20_000_000, 1))],
            )],
        );
        let pods = pods_usage(&first, &restarted, |_, _| true);
        assert_eq!(pods[0].containers[0].cpu_millis, 100);
    }

    #[test]
    fn tables_read_like_kubectl_top() {
        let nodes = [
            NodeTop {
                name: "gw1".into(),
                usage: Some((120, 512 << 20)),
                allocatable: (2000, 2048 << 20),
            },
            NodeTop {
                name: "gw2".into(),
                usage: None,
                allocatable: (1000, 1 << 30),
            },
        ];
        assert_eq!(
            nodes_table(&nodes, true),
            "NAME   CPU(cores)   CPU(%)      MEMORY(bytes)   MEMORY(%)\n\
             gw1    120m         6%          512Mi           25%\n\
             gw2    <unknown>    <unknown>   <unknown>       <unknown>\n"
        );
        let pods = [
            PodTop {
                namespace: "default".into(),
                name: "web".into(),
                containers: vec![
                    ContainerTop {
                        name: "app".into(),
                        cpu_millis: 3,
                        memory_bytes: 40 << 20,
                    },
                    ContainerTop {
                        name: "side".into(),
                        cpu_millis: 1,
                        memory_bytes: 2 << 20,
                    },
                ],
            },
            PodTop {
                namespace: "default".into(),
                name: "api".into(),
                containers: vec![ContainerTop {
                    name: "main".into(),
                    cpu_millis: 0,
                    memory_bytes: 1 << 20,
                }],
            },
        ];
        assert_eq!(
            pods_table(&pods, false, false, true),
            "NAME   CPU(cores)   MEMORY(bytes)\n\
             api    0m           1Mi\n\
             web    4m           42Mi\n"
        );
        assert_eq!(
            pods_table(&pods, true, true, false),
            "default   api   main   0m   1Mi\n\
             default   web   app    3m   40Mi\n\
             default   web   side   1m   2Mi\n"
        );
    }
}
