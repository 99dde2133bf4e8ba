//! Fleet nodes and the devices they stand for. `--fleet-node NAME[:SELECTOR]`
//! registers Node `kedge-fleet-NAME`; its devices are those the bridge hears
//! a node status from whose labels match SELECTOR (no selector: every
//! device), and its capacity and allocatable are the sums of theirs (online
//! devices only). Pure: `bridge::state` feeds it every device's node status
//! and renders the sums on each tick. ARCHITECTURE.md, "Fleets: the seed
//! path".
//!
//! Per device it keeps one [`Member`] (32 bytes: capacity and allocatable
//! as compact integers, the fleet nodes it counts for, online) beside its
//! name, and only for devices that count for a fleet node: enough to take
//! its old contribution out when its status changes, nothing else.

use std::collections::HashMap;

use crate::model::selector::Selector;
use crate::model::{NodeResources, NodeStatus};

/// Fleet nodes one bridge serves (a device's memberships are a bit set).
pub const MAX_FLEET_NODES: usize = 16;

/// One `--fleet-node NAME[:SELECTOR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNode {
    /// NAME: a DNS label; the Node is `kedge-fleet-NAME`.
    pub name: String,
    /// SELECTOR over the devices' labels; `None`: every device.
    pub selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetNodeError {
    #[error("invalid --fleet-node {arg:?}: {detail}")]
    Invalid { arg: String, detail: String },
    #[error("--fleet-node {name:?} is given twice")]
    Duplicate { name: String },
    #[error("too many --fleet-node flags: at most {MAX_FLEET_NODES}")]
    TooMany,
}

impl FleetNode {
    /// Parses `NAME` or `NAME:SELECTOR` (the first `:` splits: a name has
    /// none). The caller checks the Node name is a valid topic level.
    pub fn parse(arg: &str) -> Result<FleetNode, FleetNodeError> {
        let invalid = |detail: String| FleetNodeError::Invalid {
            arg: arg.to_string(),
            detail,
        };
        let (name, selector) = match arg.split_once(':') {
            Some((n, s)) => (n, Some(s)),
            None => (arg, None),
        };
        crate::model::validate::label("--fleet-node", "fleet node name", name)
            .map_err(|e| invalid(e.to_string()))?;
        let selector = match selector {
            None => None,
            Some(s) if s.trim().is_empty() => {
                return Err(invalid(
                    "an empty selector after ':' (for every device, give the name alone)".into(),
                ));
            }
            Some(s) => {
                Some(Selector::parse("--fleet-node", s).map_err(|e| invalid(e.to_string()))?)
            }
        };
        Ok(FleetNode {
            name: name.to_string(),
            selector,
        })
    }

    /// Parses every flag: distinct names, at most [`MAX_FLEET_NODES`].
    pub fn parse_all(args: &[String]) -> Result<Vec<FleetNode>, FleetNodeError> {
        if args.len() > MAX_FLEET_NODES {
            return Err(FleetNodeError::TooMany);
        }
        let mut out: Vec<FleetNode> = Vec::with_capacity(args.len());
        for a in args {
            let n = FleetNode::parse(a)?;
            if out.iter().any(|o| o.name == n.name) {
                return Err(FleetNodeError::Duplicate { name: n.name });
            }
            out.push(n);
        }
        Ok(out)
    }

    /// A fleet node of every device (what `--fleet-node NAME` makes).
    pub fn named(name: &str) -> FleetNode {
        FleetNode {
            name: name.to_string(),
            selector: None,
        }
    }

    fn selects(&self, status: &NodeStatus) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.matches(&status.labels))
    }
}

/// A device's resources as compact integers: CPU in millicores, memory in
/// KiB, ephemeral storage in MiB (each rounded down, saturating at
/// `u32::MAX`: 4,294 cores, 4 TiB, 4 PiB), pods up to 65,535.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Compact {
    cpu_millis: u32,
    memory_kib: u32,
    storage_mib: u32,
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Compact {
    fn of(r: &NodeResources) -> (Compact, u16) {
        (
            Compact {
                cpu_millis: clamp32(r.cpu_millis),
                memory_kib: clamp32(r.memory_bytes >> 10),
                storage_mib: clamp32(r.ephemeral_storage_bytes >> 20),
            },
            u16::try_from(r.pods).unwrap_or(u16::MAX),
        )
    }
}

/// What the bridge keeps of a device that counts for a fleet node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    capacity: Compact,
    allocatable: Compact,
    capacity_pods: u16,
    allocatable_pods: u16,
    /// Bit `i`: counts for fleet node `i`.
    nodes: u16,
    online: bool,
}

/// Resources summed exactly (in the compact units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum {
    cpu_millis: u64,
    memory_kib: u64,
    storage_mib: u64,
    pods: u64,
}

impl Sum {
    fn add(&mut self, c: &Compact, pods: u16, sign: bool) {
        let f = |s: &mut u64, v: u64| {
            *s = if sign {
                s.saturating_add(v)
            } else {
                s.saturating_sub(v)
            }
        };
        f(&mut self.cpu_millis, u64::from(c.cpu_millis));
        f(&mut self.memory_kib, u64::from(c.memory_kib));
        f(&mut self.storage_mib, u64::from(c.storage_mib));
        f(&mut self.pods, u64::from(pods));
    }

    fn resources(&self) -> NodeResources {
        NodeResources {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_kib.saturating_mul(1 << 10),
            pods: self.pods,
            ephemeral_storage_bytes: self.storage_mib.saturating_mul(1 << 20),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    capacity: Sum,
    allocatable: Sum,
    devices: u32,
    online: u32,
}

/// What a fleet node stands for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Summed over its online devices.
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    /// Its devices, online or not (heard a full node status from).
    pub devices: u32,
    pub online: u32,
}

/// The fleet nodes and what each stands for.
#[derive(Debug, Clone, Default)]
pub struct FleetNodes {
    nodes: Vec<FleetNode>,
    totals: Vec<Totals>,
    /// Only devices that count for at least one fleet node.
    members: HashMap<Box<str>, Member>,
}

impl FleetNodes {
    /// At most [`MAX_FLEET_NODES`] (more are ignored; `FleetNode::parse_all`
    /// refuses them).
    pub fn new(mut nodes: Vec<FleetNode>) -> FleetNodes {
        nodes.truncate(MAX_FLEET_NODES);
        FleetNodes {
            totals: vec![Totals::default(); nodes.len()],
            nodes,
            members: HashMap::new(),
        }
    }

    pub fn nodes(&self) -> &[FleetNode] {
        &self.nodes
    }

    /// Devices kept (those that count for a fleet node).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// What fleet node `name` stands for.
    pub fn summary(&self, name: &str) -> Option<Summary> {
        let i = self.nodes.iter().position(|n| n.name == name)?;
        let t = &self.totals[i];
        Some(Summary {
            capacity: t.capacity.resources(),
            allocatable: t.allocatable.resources(),
            devices: t.devices,
            online: t.online,
        })
    }

    fn add(&mut self, m: &Member, sign: bool) {
        for (i, t) in self.totals.iter_mut().enumerate() {
            if m.nodes & (1 << i) == 0 {
                continue;
            }
            let step = |v: &mut u32| {
                *v = if sign {
                    v.saturating_add(1)
                } else {
                    v.saturating_sub(1)
                }
            };
            step(&mut t.devices);
            if m.online {
                step(&mut t.online);
                t.capacity.add(&m.capacity, m.capacity_pods, sign);
                t.allocatable.add(&m.allocatable, m.allocatable_pods, sign);
            }
        }
    }

    /// A device's node status. A full one (online) sets its labels and
    /// resources; a last will (offline, no labels, no resources) only
    /// takes its resources out of the sums until it is back, and is
    /// ignored for a device never heard online.
    pub fn on_node_status(&mut self, device: &str, status: &NodeStatus) {
        if self.nodes.is_empty() {
            return;
        }
        let old = self.members.get(device).copied();
        let new = if status.online {
            let nodes = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.selects(status))
                .fold(0u16, |m, (i, _)| m | (1 << i));
            let (capacity, capacity_pods) = Compact::of(&status.capacity);
            let (allocatable, allocatable_pods) = Compact::of(&status.allocatable);
            (nodes != 0).then_some(Member {
                capacity,
                allocatable,
                capacity_pods,
                allocatable_pods,
                nodes,
                online: true,
            })
        } else {
            old.map(|m| Member { online: false, ..m })
        };
        if old == new {
            return;
        }
        if let Some(o) = &old {
            self.add(o, false);
        }
        match new {
            Some(n) => {
                self.add(&n, true);
                match self.members.get_mut(device) {
                    Some(m) => *m = n,
                    None => {
                        self.members.insert(device.into(), n);
                    }
                }
            }
            None => {
                self.members.remove(device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn status(online: bool, labels: &[(&str, &str)], cpu: u64, mem_mib: u64) -> NodeStatus {
        let r = NodeResources {
            cpu_millis: cpu,
            memory_bytes: mem_mib << 20,
            pods: 10,
            ephemeral_storage_bytes: 8 << 30,
        };
        NodeStatus {
            name: String::new(),
            online,
            heartbeat_ms: 0,
            info: Default::default(),
            capacity: if online { r } else { Default::default() },
            allocatable: if online {
                NodeResources {
                    memory_bytes: r.memory_bytes / 2,
                    ..r
                }
            } else {
                Default::default()
            },
            conditions: vec![],
            addresses: vec![],
            pod_count: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            sealing_key: None,
            data: None,
        }
    }

    #[test]
    fn the_flag_is_a_name_and_an_optional_selector() {
        assert_eq!(FleetNode::parse("b43"), Ok(FleetNode::named("b43")));
        let n = FleetNode::parse("b43:site=b43,tier in (a,b)").expect("valid");
        assert_eq!(n.name, "b43");
        assert_eq!(
            n.selector.map(|s| s.to_string()),
            Some("site=b43,tier in (a,b)".to_string())
        );
        for bad in ["", "B43", "b43:", "b43:site in (a", "a.b:x=y"] {
            let e = FleetNode::parse(bad).expect_err(bad).to_string();
            assert!(e.starts_with("invalid --fleet-node"), "{bad}: {e}");
        }
        let twice = FleetNode::parse_all(&["a".into(), "a:x=y".into()]);
        assert_eq!(twice, Err(FleetNodeError::Duplicate { name: "a".into() }));
        let many: Vec<String> = (0..=MAX_FLEET_NODES).map(|i| format!("n{i}")).collect();
        assert_eq!(FleetNode::parse_all(&many), Err(FleetNodeError::TooMany));
    }

    #[test]
    fn capacity_is_summed_over_the_matching_online_devices() {
        let mut f = FleetNodes::new(vec![
            FleetNode::parse("b43:site=b43").expect("valid"),
            FleetNode::named("all"),
        ]);
        f.on_node_status("gw1", &status(true, &[("site", "b43")], 1000, 512));
        f.on_node_status("gw2", &status(true, &[("site", "b43")], 2000, 1024));
        f.on_node_status("gw3", &status(true, &[("site", "b44")], 4000, 2048));
        let b43 = f.summary("b43").expect("b43");
        assert_eq!((b43.devices, b43.online), (2, 2));
        assert_eq!(b43.capacity.cpu_millis, 3000);
        assert_eq!(b43.capacity.memory_bytes, 1536 << 20);
        assert_eq!(b43.allocatable.memory_bytes, 768 << 20);
        assert_eq!(b43.capacity.pods, 20);
        assert_eq!(b43.capacity.ephemeral_storage_bytes, 16 << 30);
        assert_eq!(f.summary("all").expect("all").capacity.cpu_millis, 7000);
        // Offline: out of the sums, still one of its devices.
        f.on_node_status("gw2", &status(false, &[], 0, 0));
        let b43 = f.summary("b43").expect("b43");
        assert_eq!(
            (b43.devices, b43.online, b43.capacity.cpu_millis),
            (2, 1, 1000)
        );
        f.on_node_status("gw2", &status(true, &[("site", "b43")], 2000, 1024));
        assert_eq!(f.summary("b43").expect("b43").capacity.cpu_millis, 3000);
        // Its labels stop matching: it leaves the fleet node.
        f.on_node_status("gw1", &status(true, &[("site", "b44")], 1000, 512));
        let b43 = f.summary("b43").expect("b43");
        assert_eq!((b43.devices, b43.capacity.cpu_millis), (1, 2000));
        // A heartbeat changes nothing; a last will of a stranger is ignored.
        f.on_node_status("gw2", &status(true, &[("site", "b43")], 2000, 1024));
        f.on_node_status("gw9", &status(false, &[], 0, 0));
        assert_eq!(f.summary("b43"), Some(b43));
        assert_eq!(f.members(), 3);
        assert_eq!(f.summary("other"), None);
    }

    /// The sums after any sequence of statuses equal a sum from scratch
    /// over the devices' last statuses.
    #[test]
    fn incremental_sums_equal_a_recount() {
        let nodes = vec![
            FleetNode::parse("a:site=a").expect("valid"),
            FleetNode::parse("b:site in (a,b),!beta").expect("valid"),
            FleetNode::named("all"),
        ];
        let mut f = FleetNodes::new(nodes.clone());
        let mut last: HashMap<String, NodeStatus> = HashMap::new();
        let mut seed: u64 = 3;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for step in 0..5_000 {
            let device = format!("gw{}", next() % 40);
            let s = if next() % 5 == 0 {
                status(false, &[], 0, 0)
            } else {
                let site = ["a", "b", "c"][next() % 3];
                let mut labels = vec![("site", site)];
                if next() % 3 == 0 {
                    labels.push(("beta", "1"));
                }
                status(
                    true,
                    &labels,
                    (next() % 8000) as u64,
                    (next() % 4096) as u64,
                )
            };
            f.on_node_status(&device, &s);
            match last.get_mut(&device) {
                Some(l) if !s.online => l.online = false,
                None if !s.online => {}
                _ => {
                    last.insert(device.clone(), s);
                }
            }
            for n in &nodes {
                let mut want = Summary::default();
                let mut cpu = 0;
                let mut mem = 0;
                for l in last.values().filter(|l| n.selects(l)) {
                    want.devices += 1;
                    if l.online {
                        want.online += 1;
                        cpu += l.capacity.cpu_millis;
                        mem += l.allocatable.memory_bytes;
                    }
                }
                let have = f.summary(&n.name).expect("node");
                assert_eq!(
                    (
                        have.devices,
                        have.online,
                        have.capacity.cpu_millis,
                        have.allocatable.memory_bytes
                    ),
                    (want.devices, want.online, cpu, mem),
                    "{} after step {step}",
                    n.name
                );
            }
            let members = last
                .values()
                .filter(|l| nodes.iter().any(|n| n.selects(l)))
                .count();
            assert_eq!(f.members(), members, "after step {step}");
        }
    }

    /// What a device costs: its name and one 32-byte [`Member`] in the map
    /// (ARCHITECTURE.md has the arithmetic for 100,000 devices).
    #[test]
    fn a_member_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Member>(), 32);
        assert_eq!(std::mem::size_of::<(Box<str>, Member)>(), 48);
    }
}
