//! A device's usage (`model::NodeStats`, from the stats RPC) as the kubelet
//! serves it: the Summary API (`/stats/summary`, `stats/v1alpha1`) and the
//! resource metrics (`/metrics/resource`, the STABLE metric names
//! metrics-server reads, so `kubectl top` and HPA work on edge pods).
//!
//! Pure: no I/O. [`Rates`] keeps the previous sample of each node and
//! container so that the summary's `usageNanoCores` (a rate) can be given;
//! the resource metrics are cumulative, and their reader takes the rates.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::render::time;
use crate::model::{NodeStats, PodStats, Usage};

/// A previous sample older than this gives no rate (a device that was away).
const MAX_RATE_GAP_MS: u64 = 5 * 60 * 1000;
/// Samples kept in [`Rates`]; past it the oldest half is dropped.
const MAX_RATE_KEYS: usize = 65_536;

/// The previous CPU sample of each node, pod and container, for
/// `usageNanoCores`.
#[derive(Debug, Default)]
pub struct Rates {
    last: HashMap<String, (u64, u64)>,
}

impl Rates {
    /// The CPU rate in nanocores since the previous sample of `key`, and
    /// remembers this one. None for a first sample, a sample not newer than
    /// the last, a counter that went back (a restart), or a gap too long.
    pub fn nano_cores(&mut self, key: &str, u: &Usage) -> Option<u64> {
        if self.last.len() >= MAX_RATE_KEYS && !self.last.contains_key(key) {
            let mut by_age: Vec<(String, u64)> =
                self.last.iter().map(|(k, v)| (k.clone(), v.0)).collect();
            by_age.sort_by_key(|(_, ts)| *ts);
            for (k, _) in by_age.into_iter().take(MAX_RATE_KEYS / 2) {
                self.last.remove(&k);
            }
        }
        let prev = self
            .last
            .insert(key.to_string(), (u.timestamp_ms, u.cpu_core_ns));
        let (ts, cpu) = prev?;
        let dt_ms = u.timestamp_ms.checked_sub(ts).filter(|d| *d > 0)?;
        if dt_ms > MAX_RATE_GAP_MS {
            return None;
        }
        let dcpu = u.cpu_core_ns.checked_sub(cpu)?;
        // nanocores = core-ns per second of wall time.
        Some(((dcpu as u128) * 1000 / dt_ms as u128).min(u64::MAX as u128) as u64)
    }
}

/// The usage of a pod: the sum of its containers', sampled at the latest
/// of their times.
fn pod_usage(p: &PodStats) -> Usage {
    p.containers.iter().fold(Usage::default(), |acc, c| Usage {
        timestamp_ms: acc.timestamp_ms.max(c.usage.timestamp_ms),
        cpu_core_ns: acc.cpu_core_ns.saturating_add(c.usage.cpu_core_ns),
        memory_working_set_bytes: acc
            .memory_working_set_bytes
            .saturating_add(c.usage.memory_working_set_bytes),
    })
}

fn cpu(u: &Usage, nano_cores: Option<u64>) -> Value {
    let mut v = json!({
        "time": time(u.timestamp_ms),
        "usageCoreNanoSeconds": u.cpu_core_ns,
    });
    if let Some(n) = nano_cores {
        v["usageNanoCores"] = json!(n);
    }
    v
}

fn memory(u: &Usage) -> Value {
    json!({
        "time": time(u.timestamp_ms),
        "workingSetBytes": u.memory_working_set_bytes,
        "usageBytes": u.memory_working_set_bytes,
    })
}

/// The kubelet's `/stats/summary` (the fields a device can give: CPU and
/// memory of the node, its pods and their containers).
pub fn summary(node: &str, s: &NodeStats, rates: &mut Rates) -> Value {
    let node_rate = rates.nano_cores(node, &s.usage);
    let mut node_memory = memory(&s.usage);
    node_memory["availableBytes"] = json!(s.memory_available_bytes);
    node_memory["usageBytes"] = json!(
        s.usage
            .memory_working_set_bytes
            .saturating_add(s.memory_available_bytes)
    );
    let pods: Vec<Value> = s
        .pods
        .iter()
        .map(|p| {
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    let key = format!("{node}/{}/{}", p.uid, c.name);
                    json!({
                        "name": c.name,
                        "startTime": time(c.start_time_ms),
                        "cpu": cpu(&c.usage, rates.nano_cores(&key, &c.usage)),
                        "memory": memory(&c.usage),
                    })
                })
                .collect();
            let total = pod_usage(p);
            let key = format!("{node}/{}", p.uid);
            json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": time(p.start_time_ms),
                "containers": containers,
                "cpu": cpu(&total, rates.nano_cores(&key, &total)),
                "memory": memory(&total),
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": node,
            "startTime": time(s.start_time_ms),
            "cpu": cpu(&s.usage, node_rate),
            "memory": node_memory,
            "systemContainers": [],
        },
        "pods": pods,
    })
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn seconds(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

fn ms_as_seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The kubelet's `/metrics/resource` (Prometheus text format 0.0.4), with
/// the STABLE metrics metrics-server reads, each sample with its time.
pub fn resource_metrics(s: &NodeStats) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String, u64)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, ts) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {ts}");
        }
    };
    let containers = || {
        s.pods.iter().flat_map(|p| {
            p.containers.iter().map(move |c| {
                (
                    format!(
                        "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                        label(&c.name),
                        label(&p.namespace),
                        label(&p.name)
                    ),
                    c,
                )
            })
        })
    };
    let pods = || {
        s.pods.iter().map(|p| {
            (
                format!(
                    "{{namespace=\"{}\",pod=\"{}\"}}",
                    label(&p.namespace),
                    label(&p.name)
                ),
                pod_usage(p),
            )
        })
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers()
            .map(|(l, c)| (l, seconds(c.usage.cpu_core_ns), c.usage.timestamp_ms))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers()
            .map(|(l, c)| {
                let u = &c.usage;
                (l, u.memory_working_set_bytes.to_string(), u.timestamp_ms)
            })
            .collect(),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        containers()
            .map(|(l, c)| (l, ms_as_seconds(c.start_time_ms), c.usage.timestamp_ms))
            .collect(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        vec![(
            String::new(),
            seconds(s.usage.cpu_core_ns),
            s.usage.timestamp_ms,
        )],
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        vec![(
            String::new(),
            s.usage.memory_working_set_bytes.to_string(),
            s.usage.timestamp_ms,
        )],
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pods()
            .map(|(l, u)| (l, seconds(u.cpu_core_ns), u.timestamp_ms))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pods()
            .map(|(l, u)| (l, u.memory_working_set_bytes.to_string(), u.timestamp_ms))
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(out, "resource_scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerStats;

    fn usage(ts: u64, cpu: u64, mem: u64) -> Usage {
        Usage {
            timestamp_ms: ts,
            cpu_core_ns: cpu,
            memory_working_set_bytes: mem,
        }
    }

    fn sample() -> NodeStats {
        NodeStats {
            start_time_ms: 1_767_225_000_000,
            usage: usage(1_767_225_612_345, 41_250_000_000, 412_000_000),
            memory_available_bytes: 1_512_000_000,
            pods: vec![PodStats {
                namespace: "factory".into(),
                name: "sensor".into(),
                uid: "u1".into(),
                start_time_ms: 1_767_225_100_000,
                containers: vec![
                    ContainerStats {
                        name: "reader".into(),
                        start_time_ms: 1_767_225_101_000,
                        usage: usage(1_767_225_612_000, 1_500_000_000, 2_097_152),
                    },
                    ContainerStats {
                        name: "sidecar".into(),
                        start_time_ms: 1_767_225_101_500,
                        usage: usage(1_767_225_612_100, 250_000_000, 1_048_576),
                    },
                ],
            }],
        }
    }

    #[test]
    fn resource_metrics_read_like_the_kubelets() {
        let text = resource_metrics(&sample());
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"reader\",namespace=\"factory\",pod=\"sensor\"} 1.500000000 1767225612000",
            "container_memory_working_set_bytes{container=\"sidecar\",namespace=\"factory\",pod=\"sensor\"} 1048576 1767225612100",
            "container_start_time_seconds{container=\"reader\",namespace=\"factory\",pod=\"sensor\"} 1767225101.000 1767225612000",
            "node_cpu_usage_seconds_total 41.250000000 1767225612345",
            "node_memory_working_set_bytes 412000000 1767225612345",
            // A pod is the sum of its containers, at the latest sample time.
            "pod_cpu_usage_seconds_total{namespace=\"factory\",pod=\"sensor\"} 1.750000000 1767225612100",
            "pod_memory_working_set_bytes{namespace=\"factory\",pod=\"sensor\"} 3145728 1767225612100",
            "resource_scrape_error 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{l}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_node_with_no_pods_still_has_its_node_metrics() {
        let mut s = sample();
        s.pods.clear();
        let text = resource_metrics(&s);
        assert!(text.contains("\nnode_cpu_usage_seconds_total 41.250000000 1767225612345\n"));
        assert!(!text.contains("container=\""));
    }

    #[test]
    fn the_summary_has_the_kubelets_shape_and_rates_from_the_second_sample() {
        let mut rates = Rates::default();
        let first = summary("gw1", &sample(), &mut rates);
        assert_eq!(first["node"]["nodeName"], "gw1");
        assert_eq!(first["node"]["startTime"], "2025-12-31T23:50:00Z");
        assert_eq!(
            first["node"]["cpu"]["usageCoreNanoSeconds"],
            41_250_000_000u64
        );
        assert!(first["node"]["cpu"].get("usageNanoCores").is_none());
        assert_eq!(first["node"]["memory"]["workingSetBytes"], 412_000_000u64);
        assert_eq!(first["node"]["memory"]["availableBytes"], 1_512_000_000u64);
        let pod = &first["pods"][0];
        assert_eq!(pod["podRef"]["name"], "sensor");
        assert_eq!(pod["podRef"]["namespace"], "factory");
        assert_eq!(pod["podRef"]["uid"], "u1");
        assert_eq!(pod["containers"][1]["name"], "sidecar");
        assert_eq!(pod["memory"]["workingSetBytes"], 3_145_728u64);
        assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 1_750_000_000u64);

        // One second later, the node used half a core.
        let mut next = sample();
        next.usage.timestamp_ms += 1000;
        next.usage.cpu_core_ns += 500_000_000;
        let second = summary("gw1", &next, &mut rates);
        assert_eq!(second["node"]["cpu"]["usageNanoCores"], 500_000_000u64);
        // The containers' samples did not move: no rate for them.
        assert!(
            second["pods"][0]["containers"][0]["cpu"]
                .get("usageNanoCores")
                .is_none()
        );
    }

    #[test]
    fn rates_need_a_recent_earlier_sample_and_a_growing_counter() {
        let mut r = Rates::default();
        assert_eq!(r.nano_cores("k", &usage(1_000, 100, 0)), None);
        assert_eq!(
            r.nano_cores("k", &usage(3_000, 2_000_000_100, 0)),
            Some(1_000_000_000)
        );
        // The counter went back (a restart): no rate, and it starts again.
        assert_eq!(r.nano_cores("k", &usage(4_000, 5, 0)), None);
        assert_eq!(
            r.nano_cores("k", &usage(5_000, 250_000_005, 0)),
            Some(250_000_000)
        );
        // Not newer, or too far apart: no rate.
        assert_eq!(r.nano_cores("k", &usage(5_000, 300_000_000, 0)), None);
        assert_eq!(
            r.nano_cores("k", &usage(5_000 + MAX_RATE_GAP_MS + 1, 400_000_000, 0)),
            None
        );
    }

    #[test]
    fn rates_stay_bounded() {
        let mut r = Rates::default();
        for i in 0..(MAX_RATE_KEYS + 10) {
            r.nano_cores(&i.to_string(), &usage(i as u64, 0, 0));
        }
        assert!(r.last.len() <= MAX_RATE_KEYS);
        // The newest survive.
        assert!(r.last.contains_key(&(MAX_RATE_KEYS + 9).to_string()));
    }
}
