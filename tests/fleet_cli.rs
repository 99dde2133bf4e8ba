//! Fleets through the operator CLI, end to end: `kedge apply --selector`,
//! `kedge label node`, `kedge rollout`, `kedge get fleets`, `kedge describe
//! fleet` and `kedge delete fleet` against a real Mosquitto and real agents
//! running Wasm pods (tests/wasm-guests).

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// A broker and agents with labels, each in its own data directory.
struct Fleet {
    broker: Mosquitto,
    dir: tempfile::TempDir,
    agents: Vec<(String, Agent)>,
}

impl Fleet {
    fn start(devices: &[(&str, &str)]) -> Fleet {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let agents = devices
            .iter()
            .map(|(node, labels)| {
                let mut extra = fast_args();
                if !labels.is_empty() {
                    extra.extend(["--labels".to_string(), labels.to_string()]);
                }
                let agent = Agent::start(AgentOpts {
                    node: node.to_string(),
                    broker_url: Some(broker.url()),
                    data_dir: dir.path().join(node),
                    extra_args: extra,
                    env: vec![],
                });
                (node.to_string(), agent)
            })
            .collect();
        let fleet = Fleet {
            broker,
            dir,
            agents,
        };
        // A rollout controller knows the devices that have connected: wait
        // until every agent's node status is retained.
        let all = support_wait("every agent connected", || {
            let out = fleet.cli_ok(&["get", "nodes", "-o", "json"]);
            let v: Value = serde_json::from_str(&out).ok()?;
            let online = v["items"]
                .as_array()?
                .iter()
                .filter(|n| n["online"] == true)
                .count();
            (online == fleet.agents.len()).then_some(())
        });
        assert!(all.is_some(), "{}", fleet.logs());
        fleet
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|(n, a)| format!("--- agent {n}\n{}", a.log()))
            .collect()
    }

    /// `kedge --broker URL ARGS` with a deadline long enough for a rollout.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(kedge_bin());
        cmd.arg("--broker").arg(self.broker.url()).args(args);
        cmd.env("KEDGE_LOG", "off");
        run_with_deadline(cmd, b"", Duration::from_secs(240))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "kedge {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` to a fresh file and returns its path.
    fn manifest(&self, yaml: &str) -> String {
        let path = self
            .dir
            .path()
            .join(format!("m-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, yaml).expect("write manifest");
        path.display().to_string()
    }

    /// The pod `name` on `node`, from `kedge get pods --node`.
    fn pod_on(&self, node: &str, name: &str) -> Option<Value> {
        let out = self.cli_ok(&["get", "pods", "--node", node, "-A", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .map(|i| i["status"].clone())
            .find(|s| s["name"] == name)
    }

    /// A fleet as `kedge get fleets -o json` shows it.
    fn fleet(&self, name: &str) -> Option<Value> {
        let out = self.cli_ok(&["get", "fleets", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("json");
        v["items"]
            .as_array()?
            .iter()
            .find(|i| i["fleet"]["name"] == name)
            .cloned()
    }

    fn wait_pod(&self, node: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("pod {name} on {node}");
        let found = support_wait(&what, || self.pod_on(node, name).filter(|s| pred(s)));
        found.unwrap_or_else(|| panic!("timed out waiting for {what}\n{}", self.logs()))
    }

    fn wait_no_pod(&self, node: &str, name: &str) {
        let what = format!("pod {name} gone from {node}");
        support_wait(&what, || self.pod_on(node, name).is_none().then_some(()))
            .unwrap_or_else(|| panic!("timed out waiting for {what}\n{}", self.logs()));
    }
}

/// `wait_until` without its panic, so a failure can show the agents' logs.
fn support_wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, WAIT, &mut f)
    }))
    .ok()
}

fn ticker(name: &str, period_ms: &str) -> String {
    wasm_pod(
        name,
        &guest_wasm(GuestTarget::P1),
        &["ticker", "0", period_ms],
        "Always",
        "",
    )
}

fn running(s: &Value) -> bool {
    s["phase"] == "Running"
}

/// The row of `name` in a `kedge get fleets` table, split into cells.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn fleet_flags_are_checked_before_anything_is_sent() {
    // No broker at all: these fail on the flags, naming them.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, ticker("sensor", "100")).expect("write");
    let file = file.to_str().expect("utf8");
    let broker = ["--broker", "mqtt://127.0.0.1:1"];
    for (args, want) in [
        (
            vec!["--selector", "tier in (a"],
            "error: invalid --selector \"tier in (a\":",
        ),
        (
            vec!["--selector", "a=b", "--batches", "canary=true"],
            "error: invalid --batches \"canary=true\": \"canary=true\" has no limit",
        ),
        (
            vec!["--selector", "a=b", "--max-unavailable", "150%"],
            "error: invalid --max-unavailable:",
        ),
        (
            vec!["--selector", "a=b", "--device-timeout", "soon"],
            "error: invalid --device-timeout:",
        ),
        (
            vec!["--node", "gw1", "--priority", "3"],
            "error: --priority applies to fleet deployments",
        ),
    ] {
        let mut all = broker.to_vec();
        all.extend(["apply", "-f", file]);
        all.extend(args.iter().copied());
        let out = kedge(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert!(stderr.starts_with(want), "{all:?}: {stderr}");
    }
}

#[test]
fn fleets_follow_selectors_labels_and_priorities() {
    let f = Fleet::start(&[
        ("gw-a", "building=b43"),
        ("gw-b", "building=b44"),
        ("gw-c", ""),
    ]);
    let sensor = f.manifest(&ticker("sensor", "100"));
    let out = f.cli_ok(&["apply", "-f", &sensor, "--selector", "building=b43"]);
    assert_eq!(out.trim(), "fleet/sensor created");
    let low_uid = f.fleet("sensor").expect("fleet")["fleet"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let s = f.wait_pod("gw-a", "sensor", running);
    assert_eq!(s["uid"], low_uid.as_str());
    let out = f.cli_ok(&["apply", "-f", &sensor, "--selector", "building=b43"]);
    assert_eq!(out.trim(), "fleet/sensor unchanged");

    // A label from the cloud brings gw-c in; changing gw-b's own value
    // needs --overwrite.
    let out = f.cli_ok(&["label", "node", "gw-c", "building=b43", "zone=north"]);
    assert_eq!(out.trim(), "node/gw-c labeled");
    f.wait_pod("gw-c", "sensor", running);
    let out = f.cli(&["label", "node", "gw-b", "building=b43"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: 'building' already has a value (b44), and --overwrite is false"
    );
    let listed = f.cli_ok(&["label", "node", "gw-c", "--list"]);
    assert!(listed.lines().any(|l| l == "building=b43"), "{listed}");
    let table = f.cli_ok(&["get", "fleets"]);
    let cells = row(&table, "sensor");
    // NAME SELECTOR PRIORITY REVISION TARGETED UP-TO-DATE RUNNING READY FAILED OFFLINE PHASE
    assert_eq!(
        cells[1..10],
        ["building=b43", "0", "1", "2", "2", "2", "2", "0", "0"],
        "{table}"
    );

    // The label goes: so does the pod.
    let out = f.cli_ok(&["label", "node", "gw-c", "building-"]);
    assert_eq!(out.trim(), "node/gw-c labeled");
    f.wait_no_pod("gw-c", "sensor");

    // A fleet of higher priority with a pod of the same name wins on the
    // devices it selects; deleted, the lower one comes back.
    let hi = f.manifest(&ticker("sensor", "300"));
    let out = f.cli_ok(&[
        "apply",
        "-f",
        &hi,
        "--selector",
        "building in (b43,b44)",
        "--fleet",
        "sensor-hi",
        "--priority",
        "10",
    ]);
    assert_eq!(out.trim(), "fleet/sensor-hi created");
    let hi_uid = f.fleet("sensor-hi").expect("fleet")["fleet"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    f.wait_pod("gw-a", "sensor", |s| {
        running(s) && s["uid"] == hi_uid.as_str()
    });
    f.wait_pod("gw-b", "sensor", |s| {
        running(s) && s["uid"] == hi_uid.as_str()
    });
    let superseded = support_wait("sensor superseded on gw-a", || {
        f.fleet("sensor")
            .filter(|v| v["devices"]["superseded"] == 1)
            .map(|_| ())
    });
    assert!(superseded.is_some(), "{}", f.logs());
    let out = f.cli_ok(&["delete", "fleet", "sensor-hi"]);
    assert_eq!(out.trim(), "fleet \"sensor-hi\" deleted");
    f.wait_pod("gw-a", "sensor", |s| {
        running(s) && s["uid"] == low_uid.as_str()
    });
    f.wait_no_pod("gw-b", "sensor");
    // Only the matching device ever ran the fleet's pod; gw-c had it only
    // while labelled.
    assert!(f.pod_on("gw-c", "sensor").is_none());
    let out = f.cli(&["describe", "fleet", "sensor-hi"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: fleets \"sensor-hi\" not found in namespace \"default\""
    );
}

#[test]
fn a_staged_rollout_goes_by_batches_and_rolls_back_when_the_canary_fails() {
    let f = Fleet::start(&[
        ("gw-1", "app=meter,canary=true"),
        ("gw-2", "app=meter"),
        ("gw-3", "app=meter"),
    ]);
    let flags = [
        "--selector",
        "app=meter",
        "--batches",
        "canary=true:100%,100%",
        "--device-timeout",
        "2m",
        "--min-ready",
        "3s",
        "--wait",
    ];
    // Revision 1, by batches: the canary first, then everyone.
    let v1 = f.manifest(&ticker("meter", "100"));
    let mut args = vec!["apply", "-f", v1.as_str()];
    args.extend(flags);
    let out = f.cli_ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "fleet/meter created", "{out}");
    let canary = lines
        .iter()
        .position(|l| l.contains("batch 1 of 2: revision 1 to 1 of 1 devices matching canary=true"))
        .unwrap_or_else(|| panic!("no canary batch in\n{out}"));
    let rest = lines
        .iter()
        .position(|l| l.contains("batch 2 of 2: revision 1 to 3 of 3 devices"))
        .unwrap_or_else(|| panic!("no second batch in\n{out}"));
    assert!(canary < rest, "{out}");
    // One record per step: the driver's own records coming back do not
    // take it back a step.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("batch 2 of 2: revision 1 to"))
            .count(),
        1,
        "{out}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("fleet \"meter\" successfully rolled out (revision 1)"),
        "{out}"
    );
    for node in ["gw-1", "gw-2", "gw-3"] {
        let s = f.pod_on(node, "meter").expect("meter");
        assert!(running(&s), "{node}: {s}");
        assert_eq!(s["observed_generation"], 1);
    }
    let table = f.cli_ok(&["get", "fleets"]);
    let cells = row(&table, "meter");
    assert_eq!(
        cells[3..11],
        ["1", "3", "3", "3", "3", "0", "0", "Complete"],
        "{table}"
    );

    let canary_container =
        f.pod_on("gw-1", "meter").expect("meter")["container_statuses"][0]["container_id"].clone();
    // Revision 2 starts, runs half a second and crashes, again and again:
    // it is Running before each crash, but never for --min-ready, so the
    // canary fails it, the rollout rolls back by itself (revision 3,
    // revision 1's spec) and the others never get it.
    let v2 = f.manifest(&wasm_pod(
        "meter",
        &guest_wasm(GuestTarget::P1),
        &["crash-after", "500"],
        "Always",
        "",
    ));
    let mut args = vec!["apply", "-f", v2.as_str()];
    args.extend(flags);
    let out = f.cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("fleet/meter configured"), "{stdout}");
    assert!(
        stderr.contains("error: fleet \"meter\" rollout failed: rolled back to the spec of revision 1 as revision 3: 1 of 1 devices in batch 1 of 2 failed revision 2 (gw-1: "),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("batch 2 of 2"),
        "the second batch never started:\n{stdout}"
    );
    for node in ["gw-2", "gw-3"] {
        let s = f.pod_on(node, "meter").expect("meter");
        assert!(running(&s), "{node}: {s}");
        assert_eq!(
            s["container_statuses"][0]["restart_count"], 0,
            "{node}: {s}"
        );
    }
    // The canary ran revision 2 beside revision 1 (no gap), so revision 1
    // never stopped: the same container, never restarted.
    let s = f.wait_pod("gw-1", "meter", |s| {
        running(s) && s["container_statuses"][0]["state"].get("Running").is_some()
    });
    assert_eq!(
        s["container_statuses"][0]["container_id"], canary_container,
        "{s}"
    );
    assert_eq!(s["container_statuses"][0]["restart_count"], 0, "{s}");
    let fleet = support_wait("every device runs revision 3", || {
        f.fleet("meter")
            .filter(|v| v["devices"]["running"] == 3 && v["fleet"]["revision"] == 3)
    })
    .unwrap_or_else(|| panic!("{}", f.logs()));
    assert_eq!(fleet["fleet"]["rollout"]["state"]["phase"], "RolledBack");
    let table = f.cli_ok(&["get", "fleets"]);
    let cells = row(&table, "meter");
    assert_eq!(
        cells[3..11],
        ["3", "3", "3", "3", "3", "0", "0", "RolledBack"],
        "{table}"
    );
    let described = f.cli_ok(&["describe", "fleet", "meter"]);
    for want in [
        "Stable Revision:    1 (spec sha256:",
        "Phase:              RolledBack",
        "rolled back to the spec of revision 1",
        "Revisions:\n  Revision   Devices   Running   Ready   Failed   Offline\n",
    ] {
        assert!(described.contains(want), "{want:?} not in\n{described}");
    }

    // Revision 4, applied without --wait: staged, it reaches no device
    // until a driver runs; meanwhile every device keeps the stable spec.
    // A separate `kedge rollout status` drives it from the retained record.
    let v4 = f.manifest(&ticker("meter", "200"));
    let mut args = vec!["apply", "-f", v4.as_str()];
    args.extend(&flags[..flags.len() - 1]);
    let out = f.cli(&args);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fleet/meter configured"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("revision 4 of fleet/meter waits for its first batch: drive the rollout with `kedge rollout status fleet/meter`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fleet = f.fleet("meter").expect("fleet");
    assert_eq!(fleet["fleet"]["revision"], 4);
    assert_eq!(fleet["fleet"]["cohorts"], serde_json::json!([]));
    let out = f.cli_ok(&["rollout", "status", "fleet/meter"]);
    assert!(
        out.contains("batch 1 of 2: revision 4 to 1 of 1 devices matching canary=true"),
        "{out}"
    );
    assert!(
        out.ends_with("fleet \"meter\" successfully rolled out (revision 4)\n"),
        "{out}"
    );
    for node in ["gw-1", "gw-2", "gw-3"] {
        f.wait_pod(node, "meter", |s| {
            running(s) && s["observed_generation"] == 4
        });
    }
    // Each device started revision 4 beside the one it replaced and
    // stopped that one only once revision 4 had been ready for --min-ready.
    for (node, agent) in &f.agents {
        let log = agent.log();
        let beside = log
            .find("starting the next revision beside the running one")
            .unwrap_or_else(|| panic!("{node}: no revision started beside another\n{log}"));
        let stopping = log
            .find("the next revision is ready; stopping the one it replaces")
            .unwrap_or_else(|| panic!("{node}: nothing replaced\n{log}"));
        assert!(beside < stopping, "{node}:\n{log}");
        assert!(
            log.contains("the next revision took the pod's place with no gap"),
            "{node}:\n{log}"
        );
    }
}

#[test]
fn rollouts_pause_resume_undo_and_fleets_are_deleted_with_their_specs() {
    // No devices: every rollout completes at once, which is enough to
    // follow the records.
    let f = Fleet::start(&[]);
    let v1 = f.manifest(&ticker("relay", "100"));
    let v2 = f.manifest(&ticker("relay", "200"));
    f.cli_ok(&["apply", "-f", &v1, "--selector", "", "--wait"]);
    let digest_1 = f.fleet("relay").expect("fleet")["fleet"]["spec_digest"].clone();
    let out = f.cli_ok(&[
        "apply",
        "-f",
        &v2,
        "--selector",
        "",
        "--batches",
        "50%,100%",
    ]);
    assert_eq!(out.trim(), "fleet/relay configured");
    let out = f.cli_ok(&["rollout", "pause", "fleet/relay"]);
    assert_eq!(out.trim(), "fleet/relay paused");
    let out = f.cli(&["rollout", "pause", "fleet/relay"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: fleet \"relay\" is already paused"
    );
    let out = f.cli(&["rollout", "status", "fleet/relay"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rollout is paused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.cli_ok(&["rollout", "resume", "fleet", "relay"]);
    let out = f.cli_ok(&["rollout", "status", "fleet/relay"]);
    assert!(
        out.ends_with("fleet \"relay\" successfully rolled out (revision 2)\n"),
        "{out}"
    );
    let out = f.cli_ok(&["rollout", "undo", "fleet/relay"]);
    assert_eq!(out.trim(), "fleet/relay rolled back");
    let fleet = f.fleet("relay").expect("fleet");
    assert_eq!(fleet["fleet"]["revision"], 3);
    assert_eq!(fleet["fleet"]["spec_digest"], digest_1);
    // Revision 2's spec is no longer needed: it was removed.
    let specs = Subscriber::start(&f.broker.url(), "kedge/v1/_fleet-spec/+", None);
    let retained: Vec<String> = specs
        .messages()
        .into_iter()
        .map(|(t, _)| t.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        retained,
        vec![digest_1.as_str().expect("digest").to_string()]
    );
    drop(specs);

    let out = f.cli_ok(&["delete", "fleet", "relay"]);
    assert_eq!(out.trim(), "fleet \"relay\" deleted");
    let left = Subscriber::start(&f.broker.url(), "kedge/v1/_fleet/#", None);
    let specs = Subscriber::start(&f.broker.url(), "kedge/v1/_fleet-spec/+", None);
    assert!(left.messages().is_empty() && specs.messages().is_empty());
    let out = f.cli(&["get", "fleets"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "No resources found in default namespace."
    );
    let out = f.cli(&["delete", "fleet", "relay"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: fleets \"relay\" not found in namespace \"default\""
    );
}
