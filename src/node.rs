//! The node reporter: what this machine is (info, capacity) and how it is
//! doing (pressure conditions), read from /proc and statvfs. The parsing is
//! split from the reading so it is unit-tested on fixed text.

use std::path::Path;

use crate::model::{
    NodeAddress, NodeCondition, NodeConditionType, NodeInfo, NodeResources, NodeStatus,
};

/// Thresholds like the kubelet's default hard eviction thresholds (the
/// disk's is configuration: `node.disk_available_min_percent`, an argument
/// of [`status`]).
const MEMORY_AVAILABLE_MIN: u64 = 100 * 1024 * 1024;
const PID_USED_MAX_PERCENT: u64 = 90;

/// A reading of the machine's resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_millis: u64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub pids_used: u64,
    pub pids_max: u64,
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo text, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `PRETTY_NAME` from /etc/os-release text.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The node's `InternalIP`, as the kubelet chooses it without `--node-ip`:
/// the address of the interface the default route goes through
/// (`route_source`), not whichever local address sorts first (a container
/// bridge's, `cni0` or `docker0`, would be wrong: nothing outside reaches
/// the node there, and it goes away with the bridge). Without a default
/// route (an offline device), the first non-loopback local address.
pub fn internal_ip(route_source: Option<std::net::Ipv4Addr>, fib_trie: &str) -> Option<String> {
    route_source
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .or_else(|| parse_fib_trie(fib_trie))
}

/// The source address the kernel picks toward a global address, that is
/// through the default route: a UDP socket's `connect` sends nothing, it
/// only looks the route up. None without a default route.
fn default_route_source() -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // Any global unicast address would do; nothing is sent to it.
    socket
        .connect((std::net::Ipv4Addr::new(1, 1, 1, 1), 53))
        .ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    }
}

/// The first non-loopback local IPv4 address in /proc/net/fib_trie text.
pub fn parse_fib_trie(text: &str) -> Option<String> {
    let mut last_addr: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last_addr = Some(addr);
        } else if t.contains("host LOCAL")
            && let Some(addr) = last_addr
            && !addr.starts_with("127.")
        {
            return Some(addr.to_string());
        }
    }
    None
}

/// Reads the machine now.
pub fn sample(data_dir: &Path) -> Sample {
    let (memory_total, memory_available) =
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let (disk_total, disk_available) = rustix::fs::statvfs(data_dir)
        .map(|s| (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
        .unwrap_or((0, 0));
    let pids_used = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(0);
    let pids_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    Sample {
        cpu_millis: cpus * 1000,
        memory_total,
        memory_available,
        disk_total,
        disk_available,
        pids_used,
        pids_max,
    }
}

/// One line of an identity file, trimmed; empty when it cannot be read or
/// is not a short single word (the status must stay valid).
fn read_id(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let id = text.trim();
    if id.len() <= 128 && !id.contains(char::is_whitespace) && !id.contains('\0') {
        id.to_string()
    } else {
        String::new()
    }
}

/// Static facts about this node, read once.
pub fn node_info(runtime_versions: &str) -> (NodeInfo, Vec<NodeAddress>) {
    let uname = rustix::system::uname();
    let hostname = uname.nodename().to_string_lossy().to_string();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    let info = NodeInfo {
        architecture: arch.into(),
        operating_system: std::env::consts::OS.into(),
        kernel_version: uname.release().to_string_lossy().to_string(),
        os_image: parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default())
            .unwrap_or_else(|| "unknown".into()),
        hostname: hostname.clone(),
        agent_version: format!("kedge/v{}", env!("CARGO_PKG_VERSION")),
        container_runtime_version: runtime_versions.into(),
        // The kubelet's machineID, bootID and systemUUID, read from the
        // same files (empty where a file is absent or unreadable).
        machine_id: read_id("/etc/machine-id"),
        boot_id: read_id("/proc/sys/kernel/random/boot_id"),
        system_uuid: read_id("/sys/class/dmi/id/product_uuid"),
    };
    let mut addresses = Vec::new();
    if let Some(ip) = internal_ip(
        default_route_source(),
        &std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default(),
    ) {
        addresses.push(NodeAddress {
            kind: "InternalIP".into(),
            address: ip,
        });
    }
    addresses.push(NodeAddress {
        kind: "Hostname".into(),
        address: hostname,
    });
    (info, addresses)
}

/// Builds the node status from a sample, keeping transition times from the
/// previous status where a condition did not change. DiskPressure: less
/// than `disk_available_min_percent` % of the disk available (0: never).
#[allow(clippy::too_many_arguments)]
pub fn status(
    name: &str,
    info: &NodeInfo,
    addresses: &[NodeAddress],
    s: &Sample,
    max_pods: u64,
    disk_available_min_percent: u64,
    pod_count: u32,
    previous: Option<&NodeStatus>,
    now_ms: u64,
) -> NodeStatus {
    let capacity = NodeResources {
        cpu_millis: s.cpu_millis,
        memory_bytes: s.memory_total,
        pods: max_pods,
        ephemeral_storage_bytes: s.disk_total,
    };
    let memory_pressure = s.memory_total > 0 && s.memory_available < MEMORY_AVAILABLE_MIN;
    let disk_pressure =
        s.disk_total > 0 && s.disk_available * 100 < s.disk_total * disk_available_min_percent;
    let pid_pressure = s.pids_max > 0 && s.pids_used * 100 > s.pids_max * PID_USED_MAX_PERCENT;
    let make = |kind: NodeConditionType, status: bool, reason: &str, message: String| {
        let last_transition_ms = previous
            .and_then(|p| p.condition(kind))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_ms)
            .unwrap_or(now_ms);
        NodeCondition {
            kind,
            status,
            reason: reason.into(),
            message,
            last_transition_ms,
            last_heartbeat_ms: now_ms,
        }
    };
    let conditions = vec![
        make(
            NodeConditionType::Ready,
            true,
            "KedgeReady",
            "kedge agent is posting ready status".into(),
        ),
        if memory_pressure {
            make(
                NodeConditionType::MemoryPressure,
                true,
                "KubeletHasInsufficientMemory",
                format!("{} bytes available", s.memory_available),
            )
        } else {
            make(
                NodeConditionType::MemoryPressure,
                false,
                "KubeletHasSufficientMemory",
                "kedge has sufficient memory available".into(),
            )
        },
        if disk_pressure {
            make(
                NodeConditionType::DiskPressure,
                true,
                "KubeletHasDiskPressure",
                format!("{} of {} bytes available", s.disk_available, s.disk_total),
            )
        } else {
            make(
                NodeConditionType::DiskPressure,
                false,
                "KubeletHasNoDiskPressure",
                "kedge has no disk pressure".into(),
            )
        },
        if pid_pressure {
            make(
                NodeConditionType::PIDPressure,
                true,
                "KubeletHasInsufficientPID",
                format!("{} of {} PIDs in use", s.pids_used, s.pids_max),
            )
        } else {
            make(
                NodeConditionType::PIDPressure,
                false,
                "KubeletHasSufficientPID",
                "kedge has sufficient PID available".into(),
            )
        },
    ];
    NodeStatus {
        name: name.into(),
        online: true,
        heartbeat_ms: now_ms,
        info: info.clone(),
        capacity,
        allocatable: capacity,
        conditions,
        addresses: addresses.to_vec(),
        pod_count,
        labels: Default::default(),
        sealing_key: None,
        data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let (t, a) =
            parse_meminfo("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    2048 kB\n");
        assert_eq!((t, a), (16384 * 1024, 2048 * 1024));
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     |-- 10.0.2.15\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(trie).as_deref(), Some("10.0.2.15"));
        assert_eq!(parse_fib_trie(""), None);
        // The default route's source wins over whatever sorts first (a
        // container bridge's 10.x address here); without one, the trie's.
        let bridge_first = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.201.7.1\n        /32 host LOCAL\n     |-- 192.0.2.2\n        /32 host LOCAL\n";
        assert_eq!(
            internal_ip(Some(std::net::Ipv4Addr::new(192, 0, 2, 2)), bridge_first).as_deref(),
            Some("192.0.2.2")
        );
        assert_eq!(
            internal_ip(None, bridge_first).as_deref(),
            Some("10.201.7.1")
        );
        assert_eq!(
            internal_ip(Some(std::net::Ipv4Addr::LOCALHOST), bridge_first).as_deref(),
            Some("10.201.7.1")
        );
        // This machine: an address the kernel routes from is one of its own.
        if let Some(ip) = default_route_source() {
            let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
            assert!(trie.contains(&format!("|-- {ip}\n")), "{ip} in\n{trie}");
        }
    }

    #[test]
    fn pressure_conditions_and_transition_times() {
        let info = NodeInfo::default();
        let healthy = Sample {
            cpu_millis: 2000,
            memory_total: 1 << 30,
            memory_available: 1 << 29,
            disk_total: 1000,
            disk_available: 500,
            pids_used: 10,
            pids_max: 100,
        };
        let s1 = status("n", &info, &[], &healthy, 110, 10, 0, None, 1000);
        assert!(
            s1.condition(NodeConditionType::Ready)
                .expect("ready")
                .status
        );
        assert!(
            !s1.condition(NodeConditionType::MemoryPressure)
                .expect("mem")
                .status
        );
        assert_eq!(s1.capacity.cpu_millis, 2000);
        let starved = Sample {
            memory_available: 1 << 20,
            disk_available: 50,
            pids_used: 95,
            ..healthy
        };
        let s2 = status("n", &info, &[], &starved, 110, 10, 0, Some(&s1), 2000);
        let mem = s2
            .condition(NodeConditionType::MemoryPressure)
            .expect("mem");
        assert!(mem.status);
        assert_eq!(mem.last_transition_ms, 2000);
        assert!(
            s2.condition(NodeConditionType::DiskPressure)
                .expect("disk")
                .status
        );
        assert!(
            s2.condition(NodeConditionType::PIDPressure)
                .expect("pid")
                .status
        );
        // Ready did not change: its transition time stays, its heartbeat moves.
        let ready = s2.condition(NodeConditionType::Ready).expect("ready");
        assert_eq!(
            (ready.last_transition_ms, ready.last_heartbeat_ms),
            (1000, 2000)
        );
    }

    #[test]
    fn the_disk_threshold_is_configuration_and_zero_never_reports_pressure() {
        let info = NodeInfo::default();
        let sample = Sample {
            disk_total: 1000,
            disk_available: 50,
            ..Default::default()
        };
        let disk = |min_percent| {
            status("n", &info, &[], &sample, 110, min_percent, 0, None, 1000)
                .condition(NodeConditionType::DiskPressure)
                .expect("disk")
                .status
        };
        // 5 % available.
        assert!(disk(10));
        assert!(disk(6));
        assert!(!disk(5));
        assert!(!disk(1));
        assert!(!disk(0));
    }
}
