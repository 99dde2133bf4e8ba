//! Serving the stats RPC (docs/wire.md, "Stats RPC"): one sample of the
//! node (`/proc`) and of the running containers (each made runtime's
//! `container_usage`), answered with exactly one `StatsReply`.
//!
//! Parsing and assembly are pure functions; only `sample_node` reads files.

use std::sync::Arc;

use rumqttc::QoS;
use tokio::sync::mpsc;

use super::StatusBoard;
use crate::model::validate::{MAX_CONTAINERS, MAX_STATS_PODS};
use crate::model::{
    ContainerState, ContainerStats, NodeStats, PodStats, PodStatus, StatsReply, Usage, now_ms,
};
use crate::mqtt::SessionCommand;
use crate::runtime::{Runtime, UsageMap};
use crate::wire::{self, Message};

/// Nanoseconds per clock tick of `/proc/stat` (USER_HZ is 100 on Linux,
/// whatever the kernel's HZ).
const NS_PER_TICK: u64 = 10_000_000;

/// The node's CPU time (ns) from the `cpu` line of `/proc/stat`: user,
/// nice, system, irq, softirq and steal (not idle and iowait).
pub fn parse_cpu_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let (mut busy, mut fields) = (0u64, 0);
    for (i, f) in line.split_ascii_whitespace().skip(1).enumerate() {
        let ticks: u64 = f.parse().ok()?;
        // user nice system idle iowait irq softirq steal …
        if matches!(i, 0 | 1 | 2 | 5 | 6 | 7) {
            busy = busy.saturating_add(ticks);
        }
        fields = i + 1;
    }
    (fields >= 4).then(|| busy.saturating_mul(NS_PER_TICK))
}

/// The node's boot time (Unix s) from the `btime` line of `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// (MemTotal, MemAvailable) in bytes from `/proc/meminfo`.
pub fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let rest = meminfo.lines().find_map(|l| l.strip_prefix(name))?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb.saturating_mul(1024))
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The node's sample: its boot (Unix ms), its usage and MemAvailable.
fn sample_node(now: u64) -> Result<(u64, Usage, u64), String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let stat = read("/proc/stat")?;
    let meminfo = read("/proc/meminfo")?;
    let unreadable = |path: &str| format!("cannot parse {path}");
    let cpu = parse_cpu_ns(&stat).ok_or_else(|| unreadable("/proc/stat"))?;
    let boot = parse_btime(&stat).ok_or_else(|| unreadable("/proc/stat"))?;
    let (total, available) = parse_meminfo(&meminfo).ok_or_else(|| unreadable("/proc/meminfo"))?;
    let usage = Usage {
        timestamp_ms: now,
        cpu_core_ns: cpu,
        memory_working_set_bytes: total.saturating_sub(available),
    };
    Ok((boot.saturating_mul(1000), usage, available))
}

/// The pods of the stats reply: every pod with a running container that
/// has a usage, with those containers (init and app), at most
/// `MAX_STATS_PODS` (in the board's order). Also returns how many running
/// containers had no usage.
pub fn assemble<'a>(
    statuses: impl Iterator<Item = &'a PodStatus>,
    usages: &UsageMap,
) -> (Vec<PodStats>, usize) {
    let mut missing = 0;
    let mut pods: Vec<PodStats> = Vec::new();
    for s in statuses {
        let mut containers = Vec::new();
        for c in s
            .init_container_statuses
            .iter()
            .chain(&s.container_statuses)
        {
            let ContainerState::Running { started_at_ms } = c.state else {
                continue;
            };
            match usages.iter().find(|(id, _)| *id == c.container_id) {
                Some((_, usage)) if containers.len() < 2 * MAX_CONTAINERS => {
                    containers.push(ContainerStats {
                        name: c.name.clone(),
                        start_time_ms: started_at_ms,
                        usage: *usage,
                    })
                }
                Some(_) => {}
                None => missing += 1,
            }
        }
        if containers.is_empty() || pods.len() == MAX_STATS_PODS {
            continue;
        }
        let first_start = containers.iter().map(|c| c.start_time_ms).min();
        pods.push(PodStats {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            uid: s.uid.clone(),
            start_time_ms: s.start_time_ms.or(first_start).unwrap_or(0),
            containers,
        });
    }
    (pods, missing)
}

/// Samples the node and the containers of `runtimes`. A runtime that
/// cannot answer fails the sample only when a running container is left
/// without usage (a configured CRI endpoint with nothing running on it
/// does not hide the Wasm pods' usage).
async fn sample(board: &StatusBoard, runtimes: &[Arc<dyn Runtime>]) -> Result<NodeStats, String> {
    let mut usages = UsageMap::new();
    let mut failed = None;
    for r in runtimes {
        match r.container_usage().await {
            Ok(u) => usages.extend(u),
            Err(e) => {
                failed = Some(format!(
                    "cannot read the {} runtime's container stats: {e}",
                    r.name()
                ))
            }
        }
    }
    let (start_time_ms, usage, memory_available_bytes) = sample_node(now_ms())?;
    let (pods, missing) = {
        let board = board
            .lock()
            .map_err(|_| "status board poisoned".to_string())?;
        assemble(board.values(), &usages)
    };
    match failed {
        Some(e) if missing > 0 => Err(e),
        _ => Ok(NodeStats {
            start_time_ms,
            usage,
            memory_available_bytes,
            pods,
        }),
    }
}

/// Answers one `StatsRequest` with one `StatsReply` on `topic`.
pub async fn serve(
    session: mpsc::UnboundedSender<SessionCommand>,
    topic: String,
    request_id: String,
    board: StatusBoard,
    runtimes: Vec<Arc<dyn Runtime>>,
) {
    let result = sample(&board, &runtimes).await;
    if let Err(e) = &result {
        tracing::warn!(request = %request_id, error = %e, "cannot sample stats");
    }
    let reply = Message::StatsReply(StatsReply { request_id, result });
    publish(&session, topic, &reply);
}

/// Publishes an RPC's one reply (QoS 1, not retained).
pub fn publish(session: &mpsc::UnboundedSender<SessionCommand>, topic: String, reply: &Message) {
    match wire::encode(0, reply) {
        Ok(payload) => {
            let _ = session.send(SessionCommand::Publish {
                topic,
                payload,
                retain: false,
                qos: QoS::AtLeastOnce,
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the reply"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerStatus;

    const STAT: &str = "cpu  2255 34 2290 22625563 6290 127 456 7 0 0\n\
cpu0 1132 34 1441 11311718 3675 127 438 0 0 0\n\
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]\n\
ctxt 1990473\n\
btime 1062191376\n\
processes 2915\n";

    const MEMINFO: &str = "MemTotal:        1921988 kB\n\
MemFree:          128064 kB\n\
MemAvailable:     921988 kB\n\
Buffers:           43212 kB\n";

    #[test]
    fn proc_stat_gives_busy_ticks_in_ns_and_the_boot_time() {
        // user + nice + system + irq + softirq + steal, not idle or iowait.
        let ticks = 2255 + 34 + 2290 + 127 + 456 + 7;
        assert_eq!(parse_cpu_ns(STAT), Some(ticks * 10_000_000));
        assert_eq!(parse_btime(STAT), Some(1_062_191_376));
        // An old kernel's four fields still count.
        assert_eq!(parse_cpu_ns("cpu 1 2 3 4\n"), Some(6 * 10_000_000));
        assert_eq!(parse_cpu_ns("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_cpu_ns("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_btime("cpu 1 2 3 4\n"), None);
    }

    #[test]
    fn meminfo_gives_total_and_available_bytes() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            Some((1_921_988 * 1024, 921_988 * 1024))
        );
        // Kernels before 3.14 have no MemAvailable: refused, not guessed.
        assert_eq!(parse_meminfo("MemTotal: 10 kB\nMemFree: 5 kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_node_samples() {
        let (boot, usage, available) = sample_node(now_ms()).expect("sample");
        assert!(boot > 0 && boot < now_ms());
        assert!(usage.cpu_core_ns > 0 && usage.memory_working_set_bytes > 0);
        assert!(available > 0);
    }

    fn container(name: &str, id: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: "i".into(),
            image_id: String::new(),
            container_id: id.into(),
            ready: true,
            started: true,
            restart_count: 0,
            state,
            last_state: None,
        }
    }

    fn pod(name: &str, init: Vec<ContainerStatus>, app: Vec<ContainerStatus>) -> PodStatus {
        PodStatus {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            observed_generation: 1,
            phase: crate::model::PodPhase::Running,
            conditions: vec![],
            reason: None,
            message: None,
            start_time_ms: Some(100),
            host_ip: None,
            pod_ip: None,
            init_container_statuses: init,
            container_statuses: app,
        }
    }

    fn usage(cpu: u64) -> Usage {
        Usage {
            timestamp_ms: 5,
            cpu_core_ns: cpu,
            memory_working_set_bytes: cpu * 2,
        }
    }

    #[test]
    fn pods_with_running_measured_containers_are_listed_with_those() {
        let running = |at| ContainerState::Running { started_at_ms: at };
        let waiting = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        let statuses = [
            pod(
                "web",
                vec![container("sidecar", "wasm://s", running(110))],
                vec![
                    container("app", "wasm://a", running(120)),
                    container("crashed", "wasm://old", waiting.clone()),
                ],
            ),
            pod("idle", vec![], vec![container("app", "", waiting)]),
            pod(
                "gone",
                vec![],
                vec![container("app", "wasm://x", running(1))],
            ),
            pod(
                "api",
                vec![],
                vec![container("app", "containerd://c", running(130))],
            ),
        ];
        let usages: UsageMap = [
            ("wasm://s".to_string(), usage(1)),
            ("wasm://a".to_string(), usage(2)),
            ("wasm://old".to_string(), usage(3)),
            ("containerd://c".to_string(), usage(4)),
        ]
        .into();
        let (pods, missing) = assemble(statuses.iter(), &usages);
        assert_eq!(missing, 1, "gone's container has no usage");
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        let web = &pods[0];
        assert_eq!((web.uid.as_str(), web.start_time_ms), ("uid-web", 100));
        let containers: Vec<(&str, u64, u64)> = web
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.start_time_ms, c.usage.cpu_core_ns))
            .collect();
        assert_eq!(containers, [("sidecar", 110, 1), ("app", 120, 2)]);
        assert_eq!(pods[1].containers[0].usage, usage(4));
    }

    #[test]
    fn the_reply_stays_within_its_bounds() {
        let running = ContainerState::Running { started_at_ms: 1 };
        let statuses: Vec<PodStatus> = (0..MAX_STATS_PODS + 3)
            .map(|i| {
                let mut p = pod(&format!("p{i}"), vec![], vec![]);
                p.start_time_ms = None;
                p.container_statuses = (0..2 * MAX_CONTAINERS + 1)
                    .map(|j| container(&format!("c{j}"), "wasm://same", running.clone()))
                    .collect();
                p
            })
            .collect();
        let usages: UsageMap = [("wasm://same".to_string(), usage(1))].into();
        let (pods, missing) = assemble(statuses.iter(), &usages);
        assert_eq!((pods.len(), missing), (MAX_STATS_PODS, 0));
        assert!(
            pods.iter()
                .all(|p| p.containers.len() == 2 * MAX_CONTAINERS)
        );
        assert_eq!(pods[0].start_time_ms, 1, "the first container's start");
        let reply = StatsReply {
            request_id: "r".into(),
            result: Ok(NodeStats {
                pods,
                ..Default::default()
            }),
        };
        crate::model::validate::Validate::validate(&reply).expect("valid");
    }
}
