//! `cargo bench --bench pod_cost`: what one large pod costs the agent, and
//! whether it gives the memory back. A pod with the most containers a spec
//! may have (`model::validate::MAX_CONTAINERS`, Wasm ticker guests) is
//! applied to a running agent, runs, and is deleted, several rounds; the
//! table shows the agent's PSS before, while it runs and after the delete
//! (goal: after within 10 % of before), the time to Running, and how many
//! status messages (and bytes) the pod cost on the link, next to the number
//! of containers (without coalescing, one status per container change, each
//! carrying every container: the square of the pod's size).
//!
//! Everything is real: a Mosquitto on a free loopback port, the test guest
//! built for wasm32-wasip1, and as the agent **the device binary**
//! (`benches/device.rs`: x86-64 musl static, features `full`, from
//! scripts/build-targets.sh); the CLI (`kedge apply`) is this build's. The figures are reported, never asserted; the memory verdict is
//! given only when the agent is the device binary.
//!
//! Environment: `KEDGE_BENCH_CONTAINERS` (64), `KEDGE_BENCH_ROUNDS` (3),
//! `KEDGE_BENCH_SETTLE_SECS` (3: wait before each memory reading),
//! `KEDGE_BENCH_DEVICE_BIN` (the device binary, if not where
//! scripts/build-targets.sh leaves it; without one this build's `kedge`
//! runs, without a verdict), `KEDGE_AGENT_BIN` (run another build as the
//! agent, to compare; no verdict).

#[path = "device.rs"]
#[allow(dead_code)]
mod device;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

const NODE: &str = "gw-cost";
const WAIT: Duration = Duration::from_secs(180);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
        .unwrap_or(default)
}

fn kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pss_mib(pid: u32) -> f64 {
    kib(pid, "Pss:") as f64 / 1024.0
}

fn pod_yaml(name: &str, containers: usize, module: &std::path::Path) -> String {
    let sha = sha256_file(module);
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: kedge-wasm\n  containers:\n"
    );
    for i in 0..containers {
        y.push_str(&format!(
            "  - name: c{i}\n    image: file://{}@sha256:{sha}\n    args: [\"ticker\", \"0\", \"1000\"]\n",
            module.display()
        ));
    }
    y
}

fn running_containers(url: &str, name: &str) -> Option<(String, usize)> {
    let out = kedge_ok(&["--broker", url, "get", "pods", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let s = v["items"]
        .as_array()?
        .iter()
        .map(|i| i["status"].clone())
        .find(|s| s["name"] == name)?;
    let running = s["container_statuses"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["state"]["Running"].is_object())
                .count()
        })
        .unwrap_or(0);
    Some((s["phase"].as_str().unwrap_or_default().to_string(), running))
}

fn main() {
    let containers = env_u64(
        "KEDGE_BENCH_CONTAINERS",
        kedge::model::validate::MAX_CONTAINERS as u64,
    ) as usize;
    let rounds = env_u64("KEDGE_BENCH_ROUNDS", 3);
    let settle = Duration::from_secs(env_u64("KEDGE_BENCH_SETTLE_SECS", 3));
    let module = guest_wasm(GuestTarget::P1);
    let broker = Mosquitto::start();
    let url = broker.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin, label, device) = match std::env::var_os("KEDGE_AGENT_BIN") {
        Some(bin) => {
            let label = format!("KEDGE_AGENT_BIN={}", bin.display());
            (std::path::PathBuf::from(bin), label, false)
        }
        None => match device::device_binary() {
            Ok(d) => {
                let label = format!("device binary {} ({})", device::short(&d.path), d.label);
                (d.path, label, true)
            }
            Err(why) => {
                eprintln!(
                    "pod_cost: no device binary ({why}); measuring this build's kedge, no verdict"
                );
                let label = format!(
                    "this build's kedge {}, not the device binary: {why}",
                    device::short(&kedge_bin())
                );
                (kedge_bin(), label, false)
            }
        },
    };
    eprintln!("pod_cost: agent {label}");
    let agent = Agent::start_bin(
        &bin,
        AgentOpts {
            node: NODE.into(),
            broker_url: Some(url.clone()),
            data_dir: dir.path().join("data"),
            extra_args: vec!["--set".into(), "log.level=warn".into()],
            env: vec![("KEDGE_LOG".into(), "warn".into())],
        },
    );
    let pid = agent.pid();
    let apply = |name: &str, yaml: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write");
        kedge_ok(&[
            "--broker",
            &url,
            "apply",
            "-f",
            path.to_str().expect("utf8"),
            "--node",
            NODE,
        ]);
    };
    // The baseline has the Wasm engine made and one small pod running, so
    // that "before" and "after" compare the same agent.
    apply("small", &pod_yaml("small", 1, &module));
    wait_until("small pod Running", WAIT, || {
        running_containers(&url, "small").filter(|(p, n)| p == "Running" && *n == 1)
    });
    let mut rows = Vec::new();
    for round in 1..=rounds {
        std::thread::sleep(settle);
        let before = pss_mib(pid);
        let reports =
            Subscriber::start(&url, &format!("kedge/v1/{NODE}/reported/default/big"), None);
        let started = Instant::now();
        apply("big", &pod_yaml("big", containers, &module));
        wait_until("big pod Running", WAIT, || {
            running_containers(&url, "big").filter(|(p, n)| p == "Running" && *n == containers)
        });
        let to_running = started.elapsed();
        std::thread::sleep(settle);
        let during = pss_mib(pid);
        kedge_ok(&["--broker", &url, "delete", "pod", "big"]);
        wait_until("big pod gone", WAIT, || {
            running_containers(&url, "big").is_none().then_some(())
        });
        let msgs = reports.messages();
        let statuses = msgs.iter().filter(|(_, p)| !p.is_empty()).count();
        let bytes: usize = msgs.iter().map(|(_, p)| p.len()).sum();
        std::thread::sleep(settle);
        let after = pss_mib(pid);
        rows.push((round, to_running, statuses, bytes, before, during, after));
    }
    println!(
        "\n### One pod of {containers} Wasm containers on one agent ({label}; PSS from smaps_rollup, settle {settle:?}; one measurement per round)\n"
    );
    println!(
        "| round | apply → all Running | status messages (containers) | status bytes | agent PSS before | while running | after delete | after / before | goal ≤ 1.10 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (round, t, statuses, bytes, before, during, after) in rows {
        let ratio = after / before;
        let verdict = match (device, ratio <= 1.10) {
            (false, _) => "no verdict (not the device binary)",
            (true, true) => "met",
            (true, false) => "NOT met",
        };
        println!(
            "| {round} | {:.2} s | {statuses} ({containers}) | {bytes} | {before:.1} MiB | {during:.1} MiB | {after:.1} MiB | {ratio:.3} | {verdict} |",
            t.as_secs_f64(),
        );
    }
    drop(agent);
}
