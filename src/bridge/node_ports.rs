//! One kubelet API port per Node (pure). The apiserver and metrics-server
//! reach a Node's kubelet at its `InternalIP` and
//! `daemonEndpoints.kubeletEndpoint.Port`, and requests such as
//! `/stats/summary` or `/metrics/resource` name no node in their path: with
//! every Node of a bridge at one address, only the port can tell the bridge
//! which device is meant. Each device's Node therefore gets a port of its
//! own from `--kubelet-node-ports` (the shared `--kubelet-listen` port still
//! serves everything that names a pod, such as `/containerLogs`).
//!
//! Invariants: a node keeps its port for the bridge's lifetime; no two nodes
//! share one; a port that could not be bound is never handed out again.

use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;

#[derive(Debug, Clone)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    by_node: HashMap<String, u16>,
    /// Assigned to a node, or refused by the system (in use elsewhere).
    taken: BTreeSet<u16>,
    /// Where the search for a free port starts (the ports below are taken).
    next: u32,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> PortPool {
        let next = u32::from(*range.start());
        PortPool {
            range,
            by_node: HashMap::new(),
            taken: BTreeSet::new(),
            next,
        }
    }

    /// The node's port, if it has one.
    pub fn port(&self, node: &str) -> Option<u16> {
        self.by_node.get(node).copied()
    }

    /// The node's port: the one it has, or the lowest free one of the range.
    /// None when every port of the range is taken.
    pub fn assign(&mut self, node: &str) -> Option<u16> {
        if let Some(p) = self.port(node) {
            return Some(p);
        }
        let end = u32::from(*self.range.end());
        while self.next <= end {
            let p = self.next as u16;
            self.next += 1;
            if self.taken.insert(p) {
                self.by_node.insert(node.to_string(), p);
                return Some(p);
            }
        }
        None
    }

    /// `port` could not be bound for `node`: it is never handed out again,
    /// and the node gets the next free one (None: the range is used up).
    pub fn refuse(&mut self, node: &str, port: u16) -> Option<u16> {
        self.taken.insert(port);
        if self.by_node.get(node) == Some(&port) {
            self.by_node.remove(node);
        }
        self.assign(node)
    }

    /// Parses `--kubelet-node-ports`: `START-END` (inclusive), or `none`.
    pub fn parse_range(s: &str) -> Result<Option<RangeInclusive<u16>>, String> {
        if s == "none" {
            return Ok(None);
        }
        let bad =
            || format!("invalid port range {s:?}: want START-END (1-65535, START <= END) or none");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(Some(a..=b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_the_lowest_free_port_and_keeps_it() {
        let mut p = PortPool::new(10_300..=10_302);
        assert_eq!(p.assign("gw1"), Some(10_300));
        assert_eq!(p.assign("gw2"), Some(10_301));
        assert_eq!(p.assign("gw1"), Some(10_300));
        assert_eq!(p.port("gw2"), Some(10_301));
        assert_eq!(p.assign("gw3"), Some(10_302));
        assert_eq!(p.assign("gw4"), None, "the range is used up");
        assert_eq!(p.port("gw4"), None);
    }

    #[test]
    fn a_port_in_use_elsewhere_is_skipped_for_good() {
        let mut p = PortPool::new(10_300..=10_303);
        assert_eq!(p.assign("gw1"), Some(10_300));
        assert_eq!(p.refuse("gw1", 10_300), Some(10_301));
        assert_eq!(p.port("gw1"), Some(10_301));
        assert_eq!(p.assign("gw2"), Some(10_302));
        // A stale refusal (the node has moved on) takes the port out only.
        assert_eq!(p.refuse("gw2", 10_301), Some(10_302));
        assert_eq!(p.port("gw1"), Some(10_301));
        assert_eq!(p.assign("gw3"), Some(10_303));
        assert_eq!(p.refuse("gw3", 10_303), None);
    }

    #[test]
    fn the_range_at_the_top_of_the_port_space_ends() {
        let mut p = PortPool::new(65_535..=65_535);
        assert_eq!(p.assign("a"), Some(65_535));
        assert_eq!(p.assign("b"), None);
    }

    #[test]
    fn ranges_parse_or_say_what_they_want() {
        assert_eq!(
            PortPool::parse_range("10251-20250"),
            Ok(Some(10_251..=20_250))
        );
        assert_eq!(PortPool::parse_range("none"), Ok(None));
        for bad in ["", "10", "0-5", "9-8", "a-b", "1-70000"] {
            let e = PortPool::parse_range(bad).expect_err(bad);
            assert!(e.contains("START-END"), "{e}");
        }
    }
}
