//! End-to-end tests of the agent and the operator CLI against a real
//! Mosquitto, with Wasm guests built from tests/wasm-guests.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    broker: Mosquitto,
    agent: Agent,
    dir: tempfile::TempDir,
    node: String,
}

impl Env {
    fn start(node: &str) -> Env {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent::start(AgentOpts {
            node: node.into(),
            broker_url: Some(broker.url()),
            data_dir: dir.path().join("data"),
            extra_args: fast_args(),
            env: vec![],
        });
        Env {
            broker,
            agent,
            dir,
            node: node.into(),
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        kedge_on(&self.broker, args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        kedge_on_ok(&self.broker, &self.agent, args)
    }

    fn apply(&self, yaml: &str) -> String {
        apply_on(&self.broker, &self.agent, self.dir.path(), &self.node, yaml)
    }

    /// The pod's status as JSON (from `kedge get pods -o json`), if reported.
    fn status(&self, name: &str) -> Option<Value> {
        pod_status(&self.broker.url(), name)
    }

    /// A long-running pod that must outlive whatever a test throws at the
    /// agent (checked at the end with [`Env::assert_survivor_untouched`]).
    fn start_survivor(&self) {
        self.apply(&wasm_pod(
            "survivor",
            &p1(),
            &["ticker", "0", "100"],
            "Always",
            "",
        ));
        self.wait_status("survivor Running", "survivor", |s| phase(s) == "Running");
    }

    fn assert_survivor_untouched(&self) {
        let s = self.status("survivor").expect("survivor");
        assert_eq!(phase(&s), "Running");
        assert_eq!(restarts(&s), 0);
    }

    fn wait_status(&self, what: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, WAIT, || self.status(name).filter(|s| pred(s)))
    }
}

/// A static-pod directory holding one manifest.
fn manifest_dir(parent: &Path, file: &str, yaml: &str) -> PathBuf {
    let dir = parent.join("manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(file), yaml).expect("write manifest");
    dir
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or_default()
}

fn container(s: &Value) -> &Value {
    &s["container_statuses"][0]
}

fn terminated(s: &Value) -> Option<&Value> {
    container(s)["state"].get("Terminated")
}

fn restarts(s: &Value) -> u64 {
    container(s)["restart_count"].as_u64().unwrap_or(0)
}

fn waiting_reason(s: &Value) -> Option<&str> {
    container(s)["state"]["Waiting"]["reason"].as_str()
}

fn p1() -> PathBuf {
    guest_wasm(GuestTarget::P1)
}

/// The guest precompiled by `kedge wasm compile --target {target}` into
/// `dir`, as a file whose image reference `wasm_pod` can pin.
fn precompiled(dir: &Path, guest: GuestTarget, target: &str) -> PathBuf {
    let out = dir.join(format!("{}-{target}.cwasm", guest.triple()));
    let input = guest_wasm(guest);
    let printed = kedge_ok(&[
        "wasm",
        "compile",
        "--target",
        target,
        input.to_str().expect("utf8"),
        "-o",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(
        printed.trim(),
        format!("file://{}@sha256:{}", out.display(), sha256_file(&out))
    );
    out
}

#[test]
fn precompiled_modules_run_and_other_architectures_are_refused() {
    let env = Env::start("gw-precompiled");
    let here = std::env::consts::ARCH;
    let there = if here == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    for (name, guest) in [("pre-p1", GuestTarget::P1), ("pre-p2", GuestTarget::P2)] {
        let code = precompiled(env.dir.path(), guest, here);
        env.apply(&wasm_pod(name, &code, &["hello"], "Never", ""));
        let s = env.wait_status(&format!("{name} Succeeded"), name, |s| {
            phase(s) == "Succeeded"
        });
        assert_eq!(terminated(&s).expect("terminated")["exit_code"], 0);
        let logs = env.cli_ok(&["logs", name]);
        assert!(logs.contains("hello from kedge guest"), "{logs}");
    }
    // Portable Pulley bytecode runs too (interpreted).
    let code = precompiled(env.dir.path(), GuestTarget::P1, "pulley64");
    env.apply(&wasm_pod("pre-pulley", &code, &["hello"], "Never", ""));
    let s = env.wait_status("pre-pulley Succeeded", "pre-pulley", |s| {
        phase(s) == "Succeeded"
    });
    assert_eq!(terminated(&s).expect("terminated")["exit_code"], 0);
    let logs = env.cli_ok(&["logs", "pre-pulley"]);
    assert!(logs.contains("hello from kedge guest"), "{logs}");
    // Nothing was compiled on the node: the cache holds the artifacts as given.
    let cache = env.dir.path().join("data/wasm-cache");
    for guest in [GuestTarget::P1, GuestTarget::P2] {
        let sha = sha256_file(
            env.dir
                .path()
                .join(format!("{}-{here}.cwasm", guest.triple())),
        );
        let entry = std::fs::read_dir(&cache)
            .expect("cache dir")
            .filter_map(|e| e.ok())
            .find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&sha) && name.ends_with(".cwasm")
            })
            .expect("cache entry");
        assert_eq!(sha256_file(entry.path()), sha);
    }

    let code = precompiled(env.dir.path(), GuestTarget::P1, there);
    env.apply(&wasm_pod("pre-foreign", &code, &["hello"], "Never", ""));
    let s = env.wait_status("foreign artifact refused", "pre-foreign", |s| {
        waiting_reason(s) == Some("ErrImagePull")
    });
    let msg = container(&s)["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "was precompiled for {there} but this node is {here}; compile it with `kedge wasm compile --target {here}`"
        )),
        "{msg}"
    );
}

#[test]
fn pod_runs_to_completion_with_exit_code_and_logs() {
    let env = Env::start("gw-complete");
    let out = env.apply(&wasm_pod("hello", &p1(), &["hello"], "Never", ""));
    assert_eq!(out.trim(), "pod/hello created");
    let s = env.wait_status("hello Succeeded", "hello", |s| phase(s) == "Succeeded");
    let t = terminated(&s).expect("terminated");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["reason"], "Completed");
    let logs = env.cli_ok(&["logs", "hello"]);
    assert!(logs.contains("hello from kedge guest"), "{logs}");
    assert!(logs.contains("guest stderr line"), "{logs}");
    let table = env.cli_ok(&["get", "pods"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("hello") && table.contains("Completed"),
        "{table}"
    );

    env.apply(&wasm_pod("three", &p1(), &["exit", "3"], "Never", ""));
    let s = env.wait_status("three Failed", "three", |s| phase(s) == "Failed");
    let t = terminated(&s).expect("terminated");
    assert_eq!(t["exit_code"], 3);
    assert_eq!(t["reason"], "Error");

    // A WASI preview 2 component runs the same way.
    env.apply(&wasm_pod(
        "component",
        &guest_wasm(GuestTarget::P2),
        &["hello", "from", "p2"],
        "Never",
        "",
    ));
    env.wait_status("component Succeeded", "component", |s| {
        phase(s) == "Succeeded"
    });
    let logs = env.cli_ok(&["logs", "component"]);
    assert!(logs.contains("from p2"), "{logs}");

    // The node reports itself.
    let nodes = env.cli_ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.contains("gw-complete") && nodes.contains("Ready"),
        "{nodes}"
    );
}

/// Twenty pods of one module the agent has never seen, arriving together:
/// it is compiled once (the others wait for that compile) and every pod runs.
#[test]
fn a_burst_of_pods_of_one_new_module_compiles_it_once() {
    let env = Env::start("gw-burst");
    let pods: Vec<String> = (0..20)
        .map(|i| {
            wasm_pod(
                &format!("burst-{i:02}"),
                &p1(),
                &["ticker", "0", "1000"],
                "Always",
                "",
            )
        })
        .collect();
    env.apply(&pods.join("---\n"));
    let url = env.broker.url();
    wait_until("all 20 pods Running", WAIT, || {
        let out = kedge_ok(&["--broker", &url, "get", "pods", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let running = v["items"]
            .as_array()?
            .iter()
            .filter(|i| phase(&i["status"]) == "Running" && restarts(&i["status"]) == 0)
            .count();
        (running == 20).then_some(())
    });
    let log = env.agent.log();
    assert_eq!(
        log.matches("compiled Wasm module").count(),
        1,
        "one compile for twenty pods; agent log:\n{log}"
    );
    assert!(!log.contains("cannot cache compiled module"), "{log}");
}

#[test]
fn crashing_module_backs_off_and_counts_restarts() {
    let env = Env::start("gw-crash");
    env.apply(&wasm_pod("crasher", &p1(), &["exit", "1"], "Always", ""));
    let s = env.wait_status("CrashLoopBackOff with restarts", "crasher", |s| {
        waiting_reason(s) == Some("CrashLoopBackOff") && restarts(s) >= 2
    });
    assert_eq!(phase(&s), "Running");
    let last = &container(&s)["last_state"]["Terminated"];
    assert_eq!(last["exit_code"], 1);
    let msg = container(&s)["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.starts_with("back-off"), "{msg}");
    // Restarts keep growing.
    let before = restarts(&s);
    env.wait_status("more restarts", "crasher", |s| restarts(s) > before);
    let table = env.cli_ok(&["get", "pods"]);
    assert!(table.contains("crasher"), "{table}");
}

#[test]
fn delete_stops_the_workload_and_removes_its_status() {
    let env = Env::start("gw-delete");
    env.apply(&wasm_pod(
        "ticker",
        &p1(),
        &["ticker", "0", "50"],
        "Always",
        "",
    ));
    env.wait_status("ticker Running", "ticker", |s| phase(s) == "Running");
    let pods_dir = env.dir.path().join("data/pods");
    wait_until("logs written", WAIT, || {
        let l = env.cli_ok(&["logs", "ticker"]);
        l.contains("tick 3").then_some(())
    });
    let out = env.cli_ok(&["delete", "pod", "ticker"]);
    assert_eq!(out.trim(), "pod \"ticker\" deleted");
    wait_until("status removed", WAIT, || {
        env.status("ticker").is_none().then_some(())
    });
    // The workload and its files are gone.
    wait_until("pod directory removed", WAIT, || {
        std::fs::read_dir(&pods_dir)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
            .then_some(())
    });
    let out = env.cli(&["logs", "ticker"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

/// The agent of `env` (killed first if it still runs) started again on its
/// data directory, with `env_vars`.
fn restart_agent(env: &mut Env, env_vars: &[(&str, &str)]) {
    restart_agent_with(env, env_vars, &[]);
}

fn restart_agent_with(env: &mut Env, env_vars: &[(&str, &str)], args: &[&str]) {
    env.agent.kill9();
    env.agent = Agent::start(AgentOpts {
        node: env.node.clone(),
        broker_url: Some(env.broker.url()),
        data_dir: env.dir.path().join("data"),
        extra_args: [fast_args(), args.iter().map(|a| a.to_string()).collect()].concat(),
        env: env_vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
}

fn pod_dirs(env: &Env) -> usize {
    std::fs::read_dir(env.dir.path().join("data/pods"))
        .map(|d| d.count())
        .unwrap_or(0)
}

const FAULT_ABORT: (&str, &str) = ("KEDGE_FAULT_ABORT_AFTER_DELETE_ACK", "1");

#[test]
fn a_delete_acknowledged_before_a_crash_is_finished_after_restart() {
    let mut env = Env::start("gw-durable-delete");
    // The fault hook aborts the agent right after a tombstone's PUBACK went
    // out: the window between the ack and the pod's clean-up, every time.
    restart_agent(&mut env, &[FAULT_ABORT]);
    for round in 0..10 {
        let name = format!("victim-{round}");
        env.apply(&wasm_pod(
            &name,
            &p1(),
            &["ticker", "0", "50"],
            "Always",
            "",
        ));
        env.wait_status(&format!("{name} Running"), &name, |s| phase(s) == "Running");
        assert_eq!(pod_dirs(&env), 1);
        env.cli_ok(&["delete", "pod", &name]);
        let status = env.agent.wait_exit(WAIT);
        assert!(!status.success(), "round {round}: {status}");
        assert!(
            env.agent
                .log()
                .contains("fault hook KEDGE_FAULT_ABORT_AFTER_DELETE_ACK"),
            "round {round}"
        );
        restart_agent(&mut env, &[FAULT_ABORT]);
        wait_until(&format!("{name}'s status removed"), WAIT, || {
            env.status(&name).is_none().then_some(())
        });
        wait_until(&format!("{name}'s directory removed"), WAIT, || {
            (pod_dirs(&env) == 0).then_some(())
        });
    }
    // And with real kills at whatever moment the delete happens to be in.
    restart_agent(&mut env, &[]);
    for round in 0..20 {
        let name = format!("killed-{round}");
        env.apply(&wasm_pod(
            &name,
            &p1(),
            &["ticker", "0", "50"],
            "Always",
            "",
        ));
        env.wait_status(&format!("{name} Running"), &name, |s| phase(s) == "Running");
        env.cli_ok(&["delete", "pod", &name]);
        env.agent.kill9();
        restart_agent(&mut env, &[]);
        wait_until(&format!("{name}'s status removed"), WAIT, || {
            env.status(&name).is_none().then_some(())
        });
        wait_until(&format!("{name}'s directory removed"), WAIT, || {
            (pod_dirs(&env) == 0).then_some(())
        });
    }
}

#[test]
fn a_tombstone_removes_the_status_of_a_refused_spec() {
    let mut env = Env::start("gw-refused");
    let url = env.broker.url();
    let topic = "kedge/v1/gw-refused/desired/default/junk";
    publish_raw(&url, topic, b"junk", true);
    env.wait_status("junk refused", "junk", |s| s["reason"] == "InvalidSpec");
    // The refused spec's status survives a restart (it is in redb) …
    env.agent.kill9();
    restart_agent(&mut env, &[]);
    // … and a tombstone removes it, on the broker and in the agent.
    publish_raw(&url, topic, b"", true);
    wait_until("refused status removed", WAIT, || {
        env.status("junk").is_none().then_some(())
    });
    wait_until("the agent says so", WAIT, || {
        env.agent
            .log()
            .contains("removing the status of a refused spec")
            .then_some(())
    });
}

/// The retained desired index of `author` for `node`, decoded.
fn retained_index(url: &str, node: &str, author: &str) -> Option<kedge::model::DesiredIndex> {
    let topic = format!("kedge/v1/{node}/index/{author}");
    let sub = Subscriber::start(url, &topic, None);
    // Retained messages come before the subscription's ready marker.
    let found = sub
        .messages()
        .into_iter()
        .find(|(t, p)| t == &topic && !p.is_empty());
    found.map(|(_, p)| {
        kedge::wire::decode_as::<kedge::model::DesiredIndex>(&p)
            .expect("a desired index")
            .1
    })
}

fn index_names(ix: &kedge::model::DesiredIndex) -> Vec<String> {
    ix.pods.iter().map(|e| e.name.clone()).collect()
}

#[test]
fn the_cli_keeps_its_desired_index() {
    let env = Env::start("gw-index-cli");
    let url = env.broker.url();
    assert!(retained_index(&url, "gw-index-cli", "cli").is_none());
    env.apply(&wasm_pod(
        "one",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    env.apply(&wasm_pod(
        "two",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    let s = env.wait_status("one Running", "one", |s| phase(s) == "Running");
    let ix = retained_index(&url, "gw-index-cli", "cli").expect("index");
    assert_eq!(index_names(&ix), ["one", "two"]);
    assert_eq!(ix.pods[0].uid, s["uid"].as_str().expect("uid"));
    assert_eq!(ix.pods[0].generation, 1);
    // A change: the new generation is listed.
    env.apply(&wasm_pod(
        "one",
        &p1(),
        &["ticker", "0", "200"],
        "Always",
        "",
    ));
    let ix = retained_index(&url, "gw-index-cli", "cli").expect("index");
    assert_eq!(ix.pods[0].generation, 2);
    // Deletes: the entry goes; an empty index is still an index.
    env.cli_ok(&["delete", "pod", "one"]);
    let ix = retained_index(&url, "gw-index-cli", "cli").expect("index");
    assert_eq!(index_names(&ix), ["two"]);
    env.cli_ok(&["delete", "pod", "two"]);
    let ix = retained_index(&url, "gw-index-cli", "cli").expect("index");
    assert!(ix.pods.is_empty());
    // A tombstone whose index update was lost (another tool, or a CLI that
    // died in between): the next apply drops the stale entry.
    env.apply(&wasm_pod(
        "three",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    publish_raw(
        &url,
        "kedge/v1/gw-index-cli/desired/default/three",
        b"",
        true,
    );
    assert_eq!(
        index_names(&retained_index(&url, "gw-index-cli", "cli").expect("index")),
        ["three"]
    );
    env.apply(&wasm_pod("four", &p1(), &["hello"], "Never", ""));
    let ix = retained_index(&url, "gw-index-cli", "cli").expect("index");
    assert_eq!(index_names(&ix), ["four"]);
}

#[test]
fn a_delete_lost_with_the_broker_session_is_done_from_the_index() {
    let mut env = Env::start("gw-index-lost");
    env.apply(&wasm_pod(
        "keep",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    env.apply(&wasm_pod(
        "gone",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    env.wait_status("keep Running", "keep", |s| phase(s) == "Running");
    env.wait_status("gone Running", "gone", |s| phase(s) == "Running");
    // The agent is away and its broker session is lost (another client
    // took its client id with a clean session), so the tombstone below is
    // queued for nobody.
    env.agent.stop();
    wipe_session(&env.broker.url(), "kedge-agent-gw-index-lost");
    env.cli_ok(&["delete", "pod", "gone", "--node", "gw-index-lost"]);
    restart_agent(&mut env, &[]);
    // The index no longer lists it: deleted, status and directory gone.
    wait_until("gone removed through the index", WAIT, || {
        env.status("gone").is_none().then_some(())
    });
    wait_until("one pod directory left", WAIT, || {
        (pod_dirs(&env) == 1).then_some(())
    });
    assert!(
        env.agent
            .log()
            .contains("no desired index lists this pod any more"),
        "{}",
        env.agent.log()
    );
    // The other pod runs on (Wasm pods restart with the agent).
    env.wait_status("keep Running", "keep", |s| phase(s) == "Running");
}

#[test]
fn a_broker_that_lost_its_state_kills_no_pod_and_says_so() {
    let mut env = Env::start("gw-index-amnesia");
    // Slow reconnects, so the subscriber below is in place first.
    restart_agent_with(
        &mut env,
        &[],
        &[
            "--set",
            "broker.reconnect_initial_ms=2000",
            "--set",
            "broker.reconnect_max_ms=2000",
        ],
    );
    env.apply(&wasm_pod(
        "steady",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    env.wait_status("steady Running", "steady", |s| phase(s) == "Running");
    // Restarted without persistence: no spec, no index, no session.
    env.broker.restart();
    let sub = Subscriber::start(&env.broker.url(), "kedge/v1/gw-index-amnesia/events", None);
    let (_, payload) = sub.wait_for("DesiredIndexMissing event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "DesiredIndexMissing")
    });
    let event = decode_event(&payload).expect("event");
    assert_eq!(event.kind, kedge::model::EventType::Warning);
    // The pod still runs: its logs keep growing.
    // (The broker forgot which node has it: name the node.)
    let logs = || env.cli_ok(&["logs", "steady", "--node", "gw-index-amnesia"]);
    let ticks = |l: String| l.matches("tick").count();
    let before = ticks(logs());
    wait_until("steady keeps ticking", WAIT, || {
        (ticks(logs()) > before).then_some(())
    });
    assert!(!env.agent.log().contains("deleting pod"));
}

#[test]
fn newer_generation_replaces_and_older_is_ignored() {
    let env = Env::start("gw-gen");
    let v1 = wasm_pod(
        "app",
        &p1(),
        &["env"],
        "Never",
        "    env: [{name: VERSION, value: \"one\"}]\n",
    );
    assert_eq!(env.apply(&v1).trim(), "pod/app created");
    env.wait_status("v1 done", "app", |s| phase(s) == "Succeeded");
    assert!(env.cli_ok(&["logs", "app"]).contains("VERSION=one"));
    assert_eq!(env.apply(&v1).trim(), "pod/app unchanged");

    let v2 = v1.replace("\"one\"", "\"two\"");
    assert_eq!(env.apply(&v2).trim(), "pod/app configured");
    let s = env.wait_status("v2 done", "app", |s| {
        s["observed_generation"] == 2 && phase(s) == "Succeeded"
    });
    let uid = s["uid"].as_str().expect("uid").to_string();
    assert!(env.cli_ok(&["logs", "app"]).contains("VERSION=two"));

    // Replay the generation-1 spec by hand: it must be ignored.
    let mut stale = kedge::model::convert::pod_spec_from_k8s(
        &kedge::model::convert::parse_pod_manifests(&v1).expect("parse")[0],
    )
    .expect("convert");
    stale.uid = uid;
    stale.generation = 1;
    let payload = kedge::wire::encode(1, &kedge::wire::Message::DesiredPod(stale)).expect("encode");
    publish_raw(
        &env.broker.url(),
        "kedge/v1/gw-gen/desired/default/app",
        &payload,
        true,
    );
    // Messages on one subscription are handled in order: once a pod sent
    // after the stale spec runs, the stale spec has been seen.
    env.apply(&wasm_pod("marker", &p1(), &["hello"], "Never", ""));
    env.wait_status("marker done", "marker", |s| phase(s) == "Succeeded");
    let s = env.status("app").expect("app status");
    assert_eq!(s["observed_generation"], 2);
    assert!(env.cli_ok(&["logs", "app"]).contains("VERSION=two"));
}

#[test]
fn bad_input_gets_clear_errors_and_the_agent_keeps_running() {
    let env = Env::start("gw-bad");
    let url = env.broker.url();
    // A long-running pod that must survive everything below.
    env.start_survivor();

    publish_raw(
        &url,
        "kedge/v1/gw-bad/desired/default/garbage",
        b"\x01\x02\x03not postcard",
        true,
    );
    let s = env.wait_status("garbage refused", "garbage", |s| {
        s["reason"] == "InvalidSpec"
    });
    assert_eq!(phase(&s), "Failed");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot decode desired spec"),
        "{s}"
    );

    // An envelope of the version after this build's.
    let future = kedge::wire::SCHEMA_VERSION + 1;
    publish_raw(
        &url,
        "kedge/v1/gw-bad/desired/default/future",
        &[future as u8, 1, 0, 0, 0],
        true,
    );
    let s = env.wait_status("future refused", "future", |s| s["reason"] == "InvalidSpec");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("unsupported schema version {future}")),
        "{s}"
    );

    // An invalid manifest is refused by the CLI, naming the field.
    let bad = wasm_pod(
        "bad",
        &p1(),
        &["hello"],
        "Never",
        "    lifecycle: {preStop: {exec: {command: [x]}}}\n",
    );
    let path = env.dir.path().join("bad.yaml");
    std::fs::write(&path, bad).expect("write");
    let out = env.cli(&[
        "apply",
        "-f",
        path.to_str().expect("utf8"),
        "--node",
        "gw-bad",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.containers[0].lifecycle.preStop.exec: exec hooks are not supported for wasm containers"),
        "{err}"
    );

    // A module whose digest does not match.
    let wrong = wasm_pod("wrongsha", &p1(), &["hello"], "Never", "")
        .replace(&sha256_file(p1()), &"0".repeat(64));
    env.apply(&wrong);
    let s = env.wait_status("wrong digest", "wrongsha", |s| {
        waiting_reason(s) == Some("ErrImagePull")
    });
    let msg = container(&s)["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.contains("expected sha256:0000"), "{msg}");

    // A module that traps.
    env.apply(&wasm_pod("trapper", &p1(), &["trap"], "Never", ""));
    let s = env.wait_status("trap", "trapper", |s| phase(s) == "Failed");
    let t = terminated(&s).expect("terminated");
    assert_eq!(t["exit_code"], 134);
    assert!(
        t["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wasm trap"),
        "{t}"
    );

    // A module that allocates past its memory limit.
    let hog = wasm_pod(
        "hog",
        &p1(),
        &["alloc", "64"],
        "Never",
        "    resources: {limits: {memory: 16Mi}}\n",
    );
    env.apply(&hog);
    let s = env.wait_status("OOMKilled", "hog", |s| phase(s) == "Failed");
    assert_eq!(terminated(&s).expect("terminated")["reason"], "OOMKilled");

    // A busy loop does not starve other pods.
    env.apply(&wasm_pod("spinner", &p1(), &["spin"], "Always", ""));
    env.wait_status("spinner Running", "spinner", |s| phase(s) == "Running");
    env.apply(&wasm_pod("after-spin", &p1(), &["hello"], "Never", ""));
    env.wait_status("pod beside a busy loop completes", "after-spin", |s| {
        phase(s) == "Succeeded"
    });

    // Through all of it the first pod kept running without a restart.
    env.assert_survivor_untouched();
    // Deleting the busy loop works too.
    env.cli_ok(&["delete", "pod", "spinner"]);
    wait_until("spinner gone", WAIT, || {
        env.status("spinner").is_none().then_some(())
    });
}

/// A module that fails keeps the cause in its status, on one line, not
/// wasmtime's "error while executing at wasm backtrace:" header.
#[test]
fn a_failing_module_keeps_the_cause_in_its_status() {
    let env = Env::start("gw-cause");
    let message = |s: &Value| {
        terminated(s).expect("terminated")["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // WASI preview 1 exit statuses stop at 125.
    env.apply(&wasm_pod("exit-200", &p1(), &["exit", "200"], "Never", ""));
    let s = env.wait_status("exit-200 Failed", "exit-200", |s| phase(s) == "Failed");
    let msg = message(&s);
    assert!(
        msg.contains("exit with invalid exit status outside of [0..126)"),
        "{s}"
    );
    assert!(!msg.contains("backtrace") && !msg.contains('\n'), "{msg}");
    assert_eq!(terminated(&s).expect("terminated")["exit_code"], 134);

    env.apply(&wasm_pod("aborter", &p1(), &["abort"], "Never", ""));
    let s = env.wait_status("aborter Failed", "aborter", |s| phase(s) == "Failed");
    let msg = message(&s);
    assert!(msg.starts_with("wasm trap: "), "{s}");
    assert!(msg.contains("unreachable"), "{s}");
}

#[test]
fn offline_restart_keeps_pods_and_delivers_every_report_in_order() {
    let mut env = Env::start("gw-offline");
    env.apply(&wasm_pod(
        "steady",
        &p1(),
        &["ticker", "0", "100"],
        "Always",
        "",
    ));
    env.apply(&wasm_pod(
        "flappy",
        &p1(),
        &["crash-after", "100"],
        "Always",
        "",
    ));
    env.wait_status("steady Running", "steady", |s| phase(s) == "Running");
    env.wait_status("flappy restarted", "flappy", |s| restarts(s) >= 1);

    env.broker.stop();
    env.agent.kill9();
    let data_dir = env.dir.path().join("data");
    env.agent = Agent::start(AgentOpts {
        node: "gw-offline".into(),
        broker_url: Some(env.broker.url()),
        data_dir: data_dir.clone(),
        extra_args: [
            fast_args(),
            vec![
                "--set".into(),
                "broker.reconnect_initial_ms=2000".into(),
                "--set".into(),
                "broker.reconnect_max_ms=2000".into(),
            ],
        ]
        .concat(),
        env: vec![],
    });
    // With no broker, the pods come back from redb and keep reporting.
    wait_until("pods restored offline", WAIT, || {
        env.agent
            .log()
            .contains("restored desired pods from the store pods=2")
            .then_some(())
    });
    wait_until("reports produced offline", WAIT, || {
        let n = env.agent.log().matches("pod=default/flappy phase=").count();
        (n >= 6).then_some(())
    });

    env.broker.restart();
    let sub = Subscriber::start(&env.broker.url(), "kedge/v1/gw-offline/reported/#", None);
    // Every report reaches the broker, in the order it was made.
    let msgs = wait_until("outbox drained", WAIT, || {
        let m = sub.messages();
        let flappy: Vec<(u64, Value)> = m
            .iter()
            .filter(|(t, p)| t.ends_with("/flappy") && !p.is_empty())
            .filter_map(|(_, p)| {
                let env = kedge::wire::decode(p).ok()?;
                let kedge::wire::Message::PodStatus(s) = env.message else {
                    return None;
                };
                Some((env.seq, serde_json::to_value(s).ok()?))
            })
            .collect();
        (flappy.len() >= 6).then_some(flappy)
    });
    let seqs: Vec<u64> = msgs.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    // Restart counts continued from before the agent was killed.
    let last = &msgs.last().expect("some").1;
    assert!(restarts(last) >= 2, "{last}");
    let steady = env.wait_status("steady reported", "steady", |s| phase(s) == "Running");
    assert_eq!(steady["uid"].as_str().map(|u| !u.is_empty()), Some(true));
    // Nothing waits in the outbox any more: later reports flow directly.
    env.wait_status("live again", "flappy", |s| restarts(s) > restarts(last));
}

#[test]
fn logs_follow_until_the_container_ends() {
    let env = Env::start("gw-logs");
    env.apply(&wasm_pod(
        "counter",
        &p1(),
        &["ticker", "8", "150"],
        "Never",
        "",
    ));
    env.wait_status("counter Running", "counter", |s| phase(s) == "Running");
    let out = env.cli_ok(&["logs", "counter", "-f"]);
    assert!(out.contains("tick 1") && out.contains("tick 8"), "{out}");
    let tail = env.cli_ok(&["logs", "counter", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("tick 8"));
}

#[test]
fn stats_report_the_node_and_a_running_wasm_pod() {
    let env = Env::start("gw-stats");
    env.apply(&wasm_pod(
        "spinner",
        &p1(),
        &["ticker", "0", "50"],
        "Always",
        "",
    ));
    let status = env.wait_status("spinner Running", "spinner", |s| phase(s) == "Running");
    let (first, second) = with_client(&env.broker, async |client| {
        let first = client.stats(&env.node).await.expect("stats");
        let second = client.stats(&env.node).await.expect("stats again");
        (first, second)
    });
    assert!(first.usage.cpu_core_ns > 0, "{first:?}");
    assert!(first.usage.memory_working_set_bytes > 0, "{first:?}");
    assert!(first.memory_available_bytes > 0 && first.start_time_ms > 0);
    assert!(second.usage.cpu_core_ns >= first.usage.cpu_core_ns);
    let spinner = |stats: &kedge::model::NodeStats| {
        let pods: Vec<_> = stats.pods.iter().filter(|p| p.name == "spinner").collect();
        assert_eq!(pods.len(), 1, "{stats:?}");
        let pod = pods[0].clone();
        assert_eq!(pod.uid, status["uid"].as_str().expect("uid"));
        assert_eq!(pod.containers.len(), 1, "{pod:?}");
        assert_eq!(pod.containers[0].name, "main");
        pod.containers[0].usage
    };
    let (a, b) = (spinner(&first), spinner(&second));
    assert!(
        a.memory_working_set_bytes >= 64 << 10,
        "one Wasm page: {a:?}"
    );
    assert!(b.cpu_core_ns >= a.cpu_core_ns, "{a:?} then {b:?}");
    assert!(b.timestamp_ms >= a.timestamp_ms);
}

/// The rows of a `kedge top` table, split on whitespace.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `34Mi` → 34.
fn mebibytes(cell: &str) -> u64 {
    cell.strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not NNMi: {cell:?}"))
}

/// `12m` → 12.
fn millicores(cell: &str) -> u64 {
    cell.strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not NNm: {cell:?}"))
}

/// `kedge top node` and `kedge top pod`: the CLI asks the device over MQTT
/// (the stats RPC) and prints kubectl's tables; a node that does not answer
/// in time and a node that is gone are said per node, at once for the one
/// whose last will says it is offline.
#[test]
fn kedge_top_shows_the_node_and_a_running_wasm_pod() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = fast_args();
    args.extend(["--set".into(), "broker.keep_alive_secs=5".into()]);
    let agent = Agent::start(AgentOpts {
        node: "gw-top".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let mut env = Env {
        broker,
        agent,
        dir,
        node: "gw-top".into(),
    };
    env.apply(&wasm_pod(
        "meter",
        &p1(),
        &["ticker", "0", "200"],
        "Always",
        "",
    ));
    env.wait_status("meter Running", "meter", |s| phase(s) == "Running");

    // NAME CPU(cores) MEMORY(bytes): a Rust guest's linear memory holds its
    // 1 MiB stack, so at least 1Mi.
    let table = rows(&env.cli_ok(&["top", "pod"]));
    assert_eq!(
        table[0],
        ["NAME", "CPU(cores)", "MEMORY(bytes)"],
        "{table:?}"
    );
    assert_eq!(table.len(), 2, "{table:?}");
    assert_eq!(table[1][0], "meter", "{table:?}");
    millicores(&table[1][1]);
    assert!(mebibytes(&table[1][2]) >= 1, "{table:?}");
    // By name, per container, in every namespace.
    let table = rows(&env.cli_ok(&["top", "pod", "meter", "--containers", "-A"]));
    assert_eq!(
        table[0],
        ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"],
        "{table:?}"
    );
    assert_eq!(table[1][..3], ["default", "meter", "main"], "{table:?}");
    assert!(mebibytes(&table[1][4]) >= 1, "{table:?}");
    // Another namespace has nothing running.
    let out = env.cli(&["top", "pod", "-n", "other"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("No resources found in other namespace.\n"),
        "{stderr}"
    );

    // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%), of allocatable. A
    // node that says it is online but never answers (a fake: a retained
    // status with no agent behind it) is reported after --timeout, beside
    // the node that answered.
    let ghost = kedge::model::NodeStatus {
        name: "ghost".into(),
        online: true,
        heartbeat_ms: kedge::model::now_ms(),
        info: Default::default(),
        capacity: Default::default(),
        allocatable: Default::default(),
        conditions: Vec::new(),
        addresses: Vec::new(),
        pod_count: 0,
        labels: Default::default(),
        sealing_key: None,
        data: None,
    };
    let payload = kedge::wire::encode(0, &kedge::wire::Message::NodeStatus(ghost)).expect("enc");
    publish_raw(&env.broker.url(), "kedge/v1/ghost/node", &payload, true);
    let out = env.cli(&["top", "node", "--timeout", "1s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table = rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        table[0],
        ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"],
        "{table:?}"
    );
    assert_eq!(
        table[1],
        ["ghost", "<unknown>", "<unknown>", "<unknown>", "<unknown>"]
    );
    assert_eq!(table[2][0], "gw-top", "{table:?}");
    millicores(&table[2][1]);
    assert!(table[2][2].ends_with('%'), "{table:?}");
    assert!(mebibytes(&table[2][3]) > 0, "{table:?}");
    assert!(table[2][4].ends_with('%'), "{table:?}");
    let said: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        said,
        ["error: node ghost did not answer within 1 s (is it online?)"],
        "{stderr}"
    );

    // A node whose agent is gone (its last will): said at once, and the one
    // node asked for could not be read, so the command fails.
    env.agent.kill9();
    let out = wait_until("kedge top node says gw-top is gone", WAIT, || {
        let out = env.cli(&["top", "node", "gw-top", "--no-headers", "--timeout", "1s"]);
        let gone = String::from_utf8_lossy(&out.stderr).contains("not connected");
        (gone && !out.status.success()).then_some(out)
    });
    let table = rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        table,
        [["gw-top", "<unknown>", "<unknown>", "<unknown>", "<unknown>"]]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: node gw-top: not connected"),
        "{stderr}"
    );
    let out = env.cli(&["top", "pod", "meter", "--node", "gw-top"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node gw-top: not connected"), "{stderr}");
}

/// FNV-1a, 64 bits: a checksum of a byte stream in any chunking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn of(bytes: &[u8]) -> Fnv {
        let mut h = Fnv::new();
        h.write(bytes);
        h
    }
}

/// `len` pseudo-random bytes (xorshift from `seed`).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A listener on a free port of 127.0.0.1 with a small receive buffer
/// (accepted connections inherit it), so that the kernel holds little of
/// what the agent writes to the test's server.
fn small_listener() -> (tokio::net::TcpListener, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(8192).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("binds");
    let listener = socket.listen(16).expect("listens");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// Port-forward through the client call to a Wasm pod, which uses the
/// node's network: the agent connects to 127.0.0.1 and the port, where the
/// test's own server listens. 10 MB go each way at once and arrive intact;
/// then a server that reads slowly holds the writer back: what `write`
/// accepted never runs ahead of what the server read by more than the two
/// windows (the client's credit, the agent's queue) and the kernel's
/// socket buffers.
#[test]
fn port_forward_moves_10_mb_both_ways_and_a_slow_reader_holds_the_writer() {
    use kedge::wire::stream::DEFAULT_WINDOW;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 10 << 20;
    let env = Env::start("gw-pf");
    env.apply(&wasm_pod(
        "spinner",
        &p1(),
        &["ticker", "0", "50"],
        "Always",
        "",
    ));
    env.wait_status("spinner Running", "spinner", |s| phase(s) == "Running");
    let (up, down) = (noise(TOTAL, 1), noise(TOTAL, 2));
    let node = env.node.clone();
    with_client(&env.broker, async |client| {
        // Both ways at once: the server echoes nothing, it reads all and
        // writes its own 10 MB, then half-closes.
        let (listener, port) = small_listener();
        let served = tokio::spawn({
            let down = down.clone();
            async move {
                let (mut sock, _) = listener.accept().await.expect("accepts");
                let (mut rd, mut wr) = sock.split();
                let read = async {
                    let (mut h, mut n, mut buf) = (Fnv::new(), 0, vec![0; 65536]);
                    loop {
                        let got = rd.read(&mut buf).await.expect("server reads");
                        if got == 0 {
                            return (h, n);
                        }
                        h.write(&buf[..got]);
                        n += got;
                    }
                };
                let write = async {
                    wr.write_all(&down).await.expect("server writes");
                    wr.shutdown().await.expect("server half-closes");
                };
                tokio::join!(read, write).0
            }
        });
        let (mut w, mut r) = client
            .port_forward(&node, "default", "spinner", port, WAIT)
            .await
            .expect("the agent connects");
        let send = async {
            for piece in up.chunks(100_000) {
                w.write(piece).await.expect("writes");
            }
            w.finish().await.expect("finishes");
        };
        let recv = async {
            let (mut h, mut n) = (Fnv::new(), 0);
            while let Some(bytes) = r.read().await.expect("reads") {
                h.write(&bytes);
                n += bytes.len();
            }
            (h, n)
        };
        let ((), got) = tokio::join!(send, recv);
        assert_eq!(got, (Fnv::of(&down), TOTAL), "the server's bytes, intact");
        let sent = served.await.expect("server");
        assert_eq!(sent, (Fnv::of(&up), TOTAL), "the client's bytes, intact");
        drop((w, r));

        // A slow reader: the server reads 4 KiB, then waits until the
        // writer is a quarter window ahead of it (or done) before the next
        // read, so the writer always could run ahead; flow control must
        // stop it. The kernel may hold up to the agent's send buffer (at
        // most tcp_wmem's maximum) and the server's receive buffer.
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .expect("tcp_wmem")
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("a maximum");
        let window = DEFAULT_WINDOW as usize;
        let bound = 2 * window + wmem_max + 2 * 65536;
        assert!(bound < TOTAL, "the bound must be a real one");
        let (listener, port) = small_listener();
        let (accepted_tx, accepted_rx) = tokio::sync::watch::channel(0usize);
        let slow = tokio::spawn({
            let mut accepted = accepted_rx;
            async move {
                let (mut sock, _) = listener.accept().await.expect("accepts");
                let (mut h, mut read, mut buf) = (Fnv::new(), 0usize, vec![0; 4096]);
                let mut most_ahead = 0;
                loop {
                    let ahead = (read + window / 4).min(TOTAL);
                    let a = *accepted.wait_for(|a| *a >= ahead).await.expect("writer");
                    let got = sock.read(&mut buf).await.expect("server reads");
                    if got == 0 {
                        return (h, read, most_ahead);
                    }
                    h.write(&buf[..got]);
                    read += got;
                    let a = a.max(*accepted.borrow());
                    assert!(
                        a <= read + bound,
                        "write() accepted {a} bytes while the server had read {read}: more than {bound} in flight"
                    );
                    most_ahead = most_ahead.max(a.saturating_sub(read));
                }
            }
        });
        let (mut w, _r) = client
            .port_forward(&node, "default", "spinner", port, WAIT)
            .await
            .expect("the agent connects");
        let mut accepted = 0;
        for piece in up.chunks(32 * 1024) {
            w.write(piece).await.expect("writes");
            accepted += piece.len();
            accepted_tx.send_replace(accepted);
        }
        w.finish().await.expect("finishes");
        let (h, read, most_ahead) = slow.await.expect("slow server");
        assert_eq!((h, read), (Fnv::of(&up), TOTAL), "intact");
        assert!(most_ahead <= bound, "{most_ahead}");
        println!(
            "the writer ran at most {most_ahead} bytes ahead of the slow server (bound {bound})"
        );
    });
}

/// A port nobody listens on is the kubelet's "connection refused"; a pod
/// that is not on the node is refused before any connection.
#[test]
fn port_forward_refusals_are_the_agents_errors() {
    use kedge::client::ClientError;
    let env = Env::start("gw-pf-no");
    env.apply(&wasm_pod(
        "spinner",
        &p1(),
        &["ticker", "0", "50"],
        "Always",
        "",
    ));
    env.wait_status("spinner Running", "spinner", |s| phase(s) == "Running");
    // A free port: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binds")
        .local_addr()
        .expect("addr")
        .port();
    let node = env.node.clone();
    let answers = with_client(&env.broker, async |client| {
        let mut answers = Vec::new();
        for (pod, port) in [("spinner", closed), ("nope", 80)] {
            let r = client
                .port_forward(&node, "default", pod, port, WAIT)
                .await
                .map(|_| ());
            answers.push(r);
        }
        answers
    });
    let expected = [
        format!("error forwarding port {closed} to pod default/spinner: connection refused"),
        format!(r#"pod "default/nope" not found on node {node}"#),
    ];
    for (answer, says) in answers.into_iter().zip(expected) {
        match answer {
            Err(ClientError::Agent { node: n, message }) => {
                assert_eq!(
                    (n.as_str(), message.as_str()),
                    (node.as_str(), says.as_str())
                )
            }
            other => panic!("expected the agent's refusal {says:?}, got {other:?}"),
        }
    }
}

/// The exec RPC over MQTT through the client call: a Wasm container is
/// refused (the agent runs it as a module, there is nothing to exec in), as
/// are a missing pod and container; the pod keeps running. The fake
/// runtime's echo covers the happy path in the controller tests, the real
/// one tests/cri_e2e.rs.
#[test]
fn exec_refuses_wasm_containers_and_missing_pods_or_containers() {
    use kedge::client::ClientError;
    use kedge::model::ExecRequest;
    let env = Env::start("gw-exec");
    env.apply(&wasm_pod(
        "spinner",
        &p1(),
        &["ticker", "0", "50"],
        "Always",
        "",
    ));
    env.wait_status("spinner Running", "spinner", |s| phase(s) == "Running");
    let request = |pod: &str, container: &str| ExecRequest {
        namespace: "default".into(),
        pod: pod.into(),
        container: container.into(),
        command: vec!["ls".into(), "/".into()],
        timeout_secs: 5,
        ..Default::default()
    };
    let (answers, invalid) = with_client(&env.broker, async |client| {
        let mut answers = Vec::new();
        for (pod, container) in [("spinner", "main"), ("nope", "main"), ("spinner", "db")] {
            let r = client
                .exec_within(&env.node, request(pod, container), WAIT)
                .await;
            answers.push(r);
        }
        // Refused by the client itself, as the agent would refuse it.
        let mut empty = request("spinner", "main");
        empty.command.clear();
        let invalid = client.exec_within(&env.node, empty, WAIT).await;
        (answers, invalid)
    });
    let node = &env.node;
    let expected = [
        r#"exec is not supported for WebAssembly containers (container "main" of pod "default/spinner" runs as a Wasm module inside the agent)"#.to_string(),
        format!(r#"pod "default/nope" not found on node {node}"#),
        r#"container "db" not found in pod "default/spinner""#.to_string(),
    ];
    for (answer, says) in answers.into_iter().zip(expected) {
        match answer {
            Err(ClientError::Agent { node: n, message }) => {
                assert_eq!(
                    (n.as_str(), message.as_str()),
                    (node.as_str(), says.as_str())
                )
            }
            other => panic!("expected the agent's refusal {says:?}, got {other:?}"),
        }
    }
    match invalid {
        Err(ClientError::Wire(kedge::wire::WireError::Invalid { kind, invalid })) => {
            assert_eq!((kind, invalid.field.as_str()), ("ExecRequest", "command"))
        }
        other => panic!("refused by the client: {other:?}"),
    }
    let s = env.status("spinner").expect("status");
    assert_eq!(phase(&s), "Running", "{s}");
}

#[test]
fn static_pods_follow_their_directory() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = manifest_dir(
        dir.path(),
        "a.yaml",
        &wasm_pod("static-a", &p1(), &["ticker", "0", "100"], "Always", ""),
    );
    let mut args = fast_args();
    args.extend([
        "--manifests".into(),
        manifests.display().to_string(),
        "--set".into(),
        "manifests_poll_ms=200".into(),
    ]);
    let agent = Agent::start(AgentOpts {
        node: "gw-static".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let url = broker.url();
    let status = |name: &str| pod_status(&url, name);
    wait_until("static pod Running", WAIT, || {
        status("static-a").filter(|s| phase(s) == "Running")
    });
    // What a `minimal` agent reads: the pod as `kedge convert` writes it.
    let yaml = dir.path().join("b.yaml");
    std::fs::write(
        &yaml,
        wasm_pod("static-b", &p1(), &["ticker", "0", "100"], "Always", ""),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kedge"))
        .args(["convert", "-f"])
        .arg(&yaml)
        .output()
        .expect("kedge convert runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let specs: Value = serde_json::from_slice(&out.stdout).expect("convert prints JSON");
    assert_eq!(specs[0]["name"], "static-b", "{specs}");
    std::fs::write(manifests.join("b.kedge.json"), &out.stdout).expect("write");
    wait_until("converted static pod Running", WAIT, || {
        status("static-b").filter(|s| phase(s) == "Running")
    });
    std::fs::remove_file(manifests.join("a.yaml")).expect("remove");
    wait_until("static pod removed", WAIT, || {
        status("static-a").is_none().then_some(())
    });
    assert!(status("static-b").is_some(), "the converted pod stays");
    drop(agent);
}

#[test]
fn tls_with_client_certificates() {
    let tls = generate_tls("gw-tls");
    let broker = Mosquitto::start_tls(&tls, true);
    let url = format!("mqtts://localhost:{}", broker.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_args = |with_cert: bool| -> Vec<String> {
        let mut a = vec![
            "--set".to_string(),
            format!("broker.ca_file={}", tls.ca.display()),
        ];
        if with_cert {
            a.extend([
                "--set".into(),
                format!("broker.cert_file={}", tls.client_cert.display()),
                "--set".into(),
                format!("broker.key_file={}", tls.client_key.display()),
            ]);
        }
        a
    };
    let agent = Agent::start(AgentOpts {
        node: "gw-tls".into(),
        broker_url: Some(url.clone()),
        data_dir: dir.path().join("data"),
        extra_args: [fast_args(), tls_args(true)].concat(),
        env: vec![],
    });
    let manifest = dir.path().join("p.yaml");
    std::fs::write(
        &manifest,
        wasm_pod("secure", &p1(), &["hello"], "Never", ""),
    )
    .expect("write");
    let mut apply: Vec<String> = vec!["--broker".into(), url.clone()];
    apply.extend(tls_args(true));
    apply.extend(
        [
            "apply",
            "-f",
            manifest.to_str().expect("utf8"),
            "--node",
            "gw-tls",
        ]
        .map(String::from),
    );
    let apply_refs: Vec<&str> = apply.iter().map(String::as_str).collect();
    kedge_ok(&apply_refs);
    let mut get: Vec<String> = vec!["--broker".into(), url.clone()];
    get.extend(tls_args(true));
    get.extend(["get", "pods", "-o", "json"].map(String::from));
    let get_refs: Vec<&str> = get.iter().map(String::as_str).collect();
    wait_until("pod completes over TLS", WAIT, || {
        let out = kedge_ok(&get_refs);
        out.contains("\"Succeeded\"").then_some(())
    });
    // Without a client certificate the broker refuses the CLI.
    let mut no_cert: Vec<String> = vec!["--broker".into(), url];
    no_cert.extend(tls_args(false));
    no_cert.extend(["get", "pods"].map(String::from));
    let refs: Vec<&str> = no_cert.iter().map(String::as_str).collect();
    let out = kedge(&refs);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to broker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let out = kedge(&["--set", "backoff.max_ms=soon", "get", "pods"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backoff.max_ms") && err.contains("soon"),
        "{err}"
    );
    let out = kedge(&["--broker", "http://x", "get", "pods"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn volumes_are_shared_and_compiled_modules_are_cached() {
    let env = Env::start("gw-vol");
    let host_dir = env.dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    std::fs::write(host_dir.join("greeting.txt"), "hello from the host").expect("write");
    let module = p1();
    let sha = sha256_file(&module);
    let image = format!("file://{}@sha256:{sha}", module.display());
    // An init container writes into an emptyDir; the app container reads it
    // back, and also reads a file from a read-only hostPath.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: vols}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  initContainers:
  - name: writer
    image: {image}
    args: [write, /scratch/msg.txt, "written by init"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  containers:
  - name: reader
    image: {image}
    args: [read, /scratch/msg.txt]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: host-reader
    image: {image}
    args: [read, /host/greeting.txt]
    volumeMounts: [{{name: host, mountPath: /host, readOnly: true}}]
  volumes:
  - name: scratch
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}}}
"#,
        host = host_dir.display()
    );
    env.apply(&manifest);
    let s = env.wait_status("vols Succeeded", "vols", |s| phase(s) == "Succeeded");
    assert_eq!(
        s["init_container_statuses"][0]["state"]["Terminated"]["exit_code"],
        0
    );
    assert!(
        env.cli_ok(&["logs", "vols", "-c", "reader"])
            .contains("written by init")
    );
    assert!(
        env.cli_ok(&["logs", "vols", "-c", "host-reader"])
            .contains("hello from the host")
    );
    assert!(
        env.cli_ok(&["logs", "vols", "-c", "writer"])
            .contains("wrote /scratch/msg.txt")
    );
    // Without -c, a pod with several containers asks which one.
    let out = env.cli(&["logs", "vols"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a container name must be specified"));
    // The module was compiled once and cached on disk by digest.
    let cache = env.dir.path().join("data/wasm-cache");
    let cached: Vec<String> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        cached
            .iter()
            .any(|f| f.starts_with(&sha) && f.ends_with(".cwasm")),
        "{cached:?}"
    );
}

/// downwardAPI and projected volumes are files fixed by `kedge apply`
/// (ConfigMap from the same file, labels in the kubelet's format, a
/// resource limit over its divisor), written by the agent at nested paths
/// with the volume's mode, and read by the module.
#[test]
fn downward_api_and_projected_files_reach_the_module() {
    let env = Env::start("gw-proj");
    let module = p1();
    let image = format!(
        "file://{}@sha256:{}",
        module.display(),
        sha256_file(&module)
    );
    let reader = |name: &str, file: &str| {
        format!(
            "  - name: {name}\n    image: {image}\n    args: [read, {file}]\n    resources: {{limits: {{memory: 64Mi}}}}\n    volumeMounts: [{{name: info, mountPath: /info, readOnly: true}}, {{name: pod, mountPath: /pod}}]\n"
        )
    };
    let manifest = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config}}
data: {{level: debug}}
---
apiVersion: v1
kind: Pod
metadata:
  name: proj
  labels: {{app: web, tier: edge}}
  annotations: {{note: "say \"hi\"\n"}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  containers:
{level}{labels}{annotations}{memory}{name}  volumes:
  - name: info
    projected:
      defaultMode: 0o440
      sources:
      - configMap:
          name: app-config
          items: [{{key: level, path: conf/level}}]
      - downwardAPI:
          items:
          - {{path: meta/labels, fieldRef: {{fieldPath: metadata.labels}}}}
          - {{path: meta/annotations, fieldRef: {{fieldPath: metadata.annotations}}}}
          - path: mem-mi
            resourceFieldRef: {{containerName: memory, resource: limits.memory, divisor: 1Mi}}
  - name: pod
    downwardAPI:
      items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]
"#,
        level = reader("level", "/info/conf/level"),
        labels = reader("labels", "/info/meta/labels"),
        annotations = reader("annotations", "/info/meta/annotations"),
        memory = reader("memory", "/info/mem-mi"),
        name = reader("name", "/pod/name"),
    );
    env.apply(&manifest);
    let s = env.wait_status("proj Succeeded", "proj", |s| phase(s) == "Succeeded");
    for (c, want) in [
        ("level", "debug"),
        ("labels", "app=\"web\"\ntier=\"edge\""),
        ("annotations", r#"note="say \"hi\"\n""#),
        ("memory", "64"),
        ("name", "proj"),
    ] {
        // The file has no newline at its end; the log's line has one.
        assert_eq!(
            env.cli_ok(&["logs", "proj", "-c", c]),
            format!("{want}\n"),
            "{s}"
        );
    }
    // On the device: the nested path, with the volume's mode.
    use std::os::unix::fs::PermissionsExt;
    let uid = s["uid"].as_str().expect("uid");
    let level = env.dir.path().join(format!(
        "data/pods/default_proj_{uid}/volumes/info/conf/level"
    ));
    let mode = std::fs::metadata(&level).expect("the file is on the device");
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o440,
        "{}",
        level.display()
    );
}

/// A real HTTPS server (Python's http.server behind TLS) serving `dir`.
struct HttpsServer {
    child: std::process::Child,
    port: u16,
}

impl HttpsServer {
    fn start(dir: &Path, tls: &TlsFiles) -> HttpsServer {
        use std::io::BufRead;
        let script = format!(
            "import functools, http.server, ssl\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
             s = http.server.HTTPServer(('127.0.0.1', 0), h)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain({cert:?}, {key:?})\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             print(s.server_address[1], flush=True)\n\
             s.serve_forever()\n",
            dir = dir.display().to_string(),
            cert = tls.server_cert.display().to_string(),
            key = tls.server_key.display().to_string(),
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line.trim().parse().expect("port");
        HttpsServer { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn modules_download_over_https_with_a_pinned_digest() {
    let tls = generate_tls("unused");
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::copy(p1(), site.path().join("guest.wasm")).expect("copy");
    let server = HttpsServer::start(site.path(), &tls);
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = fast_args();
    args.extend(["--set".into(), format!("wasm.ca_file={}", tls.ca.display())]);
    let agent = Agent::start(AgentOpts {
        node: "gw-https".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let sha = sha256_file(p1());
    let url = broker.url();
    let manifest = |name: &str, digest: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  runtimeClassName: kedge-wasm\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: https://localhost:{}/guest.wasm@sha256:{digest}\n    args: [hello, over, https]\n",
            server.port
        )
    };
    let apply = |name: &str, digest: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, manifest(name, digest)).expect("write");
        kedge_ok(&[
            "--broker",
            &url,
            "apply",
            "-f",
            path.to_str().expect("utf8"),
            "--node",
            "gw-https",
        ]);
    };
    let status = |name: &str| pod_status(&url, name);
    apply("fetched", &sha);
    wait_until("https module runs", WAIT, || {
        status("fetched").filter(|s| phase(s) == "Succeeded")
    });
    let logs = kedge_ok(&["--broker", &url, "logs", "fetched"]);
    assert!(logs.contains("over https"), "{logs}");
    // The same URL with another digest is refused, never run.
    apply("tampered", &"1".repeat(64));
    let s = wait_until("digest mismatch", WAIT, || {
        status("tampered").filter(|s| waiting_reason(s) == Some("ErrImagePull"))
    });
    let msg = container(&s)["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("has digest sha256:") && msg.contains("expected sha256:1111"),
        "{msg}"
    );
    drop(agent);
}

#[test]
fn without_a_broker_the_agent_embeds_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let manifests = manifest_dir(
        dir.path(),
        "p.yaml",
        &wasm_pod("embedded", &p1(), &["ticker", "0", "100"], "Always", ""),
    );
    let mut args = fast_args();
    args.extend([
        "--manifests".into(),
        manifests.display().to_string(),
        "--set".into(),
        format!("embedded_broker.listen=127.0.0.1:{port}"),
    ]);
    let agent = Agent::start(AgentOpts {
        node: "gw-embedded".into(),
        broker_url: None,
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let url = format!("mqtt://127.0.0.1:{port}");
    wait_until("pod Running behind the embedded broker", WAIT, || {
        let out = kedge(&["--broker", &url, "get", "pods"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("embedded") && text.contains("Running"))
            .then_some(())
    });
    wait_until("logs through the embedded broker", WAIT, || {
        let out = kedge(&["--broker", &url, "logs", "embedded"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("tick 2")
            .then_some(())
    });
    drop(agent);
}

fn decode_event(payload: &[u8]) -> Option<kedge::model::Event> {
    match kedge::wire::decode(payload).ok()?.message {
        kedge::wire::Message::Event(e) => Some(e),
        _ => None,
    }
}

#[test]
fn killed_agent_is_marked_offline_by_its_last_will() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = fast_args();
    args.extend(["--set".into(), "broker.keep_alive_secs=5".into()]);
    let mut agent = Agent::start(AgentOpts {
        node: "gw-will".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let url = broker.url();
    let nodes = || kedge_ok(&["--broker", &url, "get", "nodes"]);
    wait_until("node Ready", WAIT, || {
        nodes().contains("Ready").then_some(())
    });
    let sub = Subscriber::start(&url, "kedge/v1/gw-will/events", None);
    // A malformed spec is reported as a Warning event on the events topic.
    publish_raw(&url, "kedge/v1/gw-will/desired/default/junk", b"junk", true);
    let (_, payload) = sub.wait_for("InvalidSpec event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "InvalidSpec")
    });
    let event = decode_event(&payload).expect("event");
    assert_eq!(event.pod.as_deref(), Some("junk"));
    assert_eq!(event.kind, kedge::model::EventType::Warning);

    agent.kill9();
    // The broker publishes the will after 1.5 × keep-alive.
    wait_until("node NotReady after the last will", WAIT, || {
        let n = nodes();
        (n.contains("gw-will") && n.contains("NotReady")).then_some(())
    });
    let json = kedge_ok(&["--broker", &url, "get", "nodes", "-o", "json"]);
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["items"][0]["online"], false);
}

#[test]
fn a_full_outbox_drops_the_oldest_and_says_so() {
    let mut broker = Mosquitto::start();
    broker.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = manifest_dir(
        dir.path(),
        "f.yaml",
        &wasm_pod("flappy", &p1(), &["crash-after", "50"], "Always", ""),
    );
    let mut args = fast_args();
    args.extend([
        "--manifests".into(),
        manifests.display().to_string(),
        "--set".into(),
        "outbox.max_entries=3".into(),
        "--set".into(),
        "backoff.initial_ms=100".into(),
        "--set".into(),
        "backoff.max_ms=100".into(),
        // Slow reconnects, so the subscriber below is in place first.
        "--set".into(),
        "broker.reconnect_initial_ms=2000".into(),
        "--set".into(),
        "broker.reconnect_max_ms=2000".into(),
    ]);
    let agent = Agent::start(AgentOpts {
        node: "gw-full".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    wait_until("the outbox overflowed while offline", WAIT, || {
        agent
            .log()
            .contains("outbox full: dropped the oldest reports")
            .then_some(())
    });
    broker.restart();
    let sub = Subscriber::start(&broker.url(), "kedge/v1/gw-full/events", None);
    let (_, payload) = sub.wait_for("OutboxOverflow event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "OutboxOverflow")
    });
    let event = decode_event(&payload).expect("event");
    assert!(event.message.starts_with("dropped "), "{}", event.message);
}

#[test]
fn args_env_and_working_directory_reach_the_module() {
    let env = Env::start("gw-env");
    let extra = "    command: [\"my-tool\"]\n    workingDir: /work\n    env: [{name: GREETING, value: \"hi there\"}]\n";
    for (name, target) in [("env-p1", GuestTarget::P1), ("env-p2", GuestTarget::P2)] {
        env.apply(&wasm_pod(
            name,
            &guest_wasm(target),
            &["env", "x y"],
            "Never",
            extra,
        ));
        env.wait_status("env done", name, |s| phase(s) == "Succeeded");
        let logs = env.cli_ok(&["logs", name]);
        // Exactly what the pod declares (workingDir becomes PWD), nothing
        // the runtime made up.
        assert_eq!(
            environment(&logs),
            ["GREETING=hi there", "PWD=/work"],
            "{logs}"
        );
        // command replaces argv[0]; args follow it.
        assert!(
            logs.contains("arg[0]=my-tool")
                && logs.contains("arg[1]=env")
                && logs.contains("arg[2]=x y"),
            "{logs}"
        );
        // WASI has no chdir at start: workingDir is PWD (and the preview 2
        // initial-cwd, which today's wasi-libc does not read yet).
        assert!(logs.contains("cwd=/"), "{logs}");
    }
    // A pod that declares nothing gets an empty environment.
    for (name, target) in [("bare-p1", GuestTarget::P1), ("bare-p2", GuestTarget::P2)] {
        env.apply(&wasm_pod(name, &guest_wasm(target), &["env"], "Never", ""));
        env.wait_status("env done", name, |s| phase(s) == "Succeeded");
        let logs = env.cli_ok(&["logs", name]);
        assert_eq!(environment(&logs), Vec::<String>::new(), "{logs}");
    }
}

/// The `NAME=value` lines the guest's `env` mode prints before its arguments.
fn environment(logs: &str) -> Vec<String> {
    logs.lines()
        .take_while(|l| !l.starts_with("arg["))
        .map(str::to_string)
        .collect()
}

/// A spec from `kedge convert` of `yaml`, to be altered and published raw.
fn converted_spec(dir: &Path, yaml: &str) -> kedge::model::PodSpec {
    let path = dir.join("to-convert.yaml");
    std::fs::write(&path, yaml).expect("write");
    let json = kedge_ok(&["convert", "-f", path.to_str().expect("utf8")]);
    let mut specs: Vec<kedge::model::PodSpec> = serde_json::from_str(&json).expect("specs");
    specs.remove(0)
}

fn publish_spec(url: &str, node: &str, spec: &kedge::model::PodSpec) {
    let payload =
        kedge::wire::encode(1, &kedge::wire::Message::DesiredPod(spec.clone())).expect("encodes");
    let topic = format!("kedge/v1/{node}/desired/{}/{}", spec.namespace, spec.name);
    publish_raw(url, &topic, &payload, true);
}

/// One message must not take a device down or reach outside its data
/// directory: a uid that walks up the tree, a log request whose arithmetic
/// would overflow, a topic that names no valid pod.
#[test]
fn hostile_messages_are_refused_and_nothing_escapes_the_data_dir() {
    let env = Env::start("gw-hostile");
    let url = env.broker.url();
    env.start_survivor();
    let sub = Subscriber::start(&url, "kedge/v1/gw-hostile/events", None);

    // A uid with path separators: refused with the field, nothing created.
    let mut spec = converted_spec(
        env.dir.path(),
        &wasm_pod("escape", &p1(), &["hello"], "Never", ""),
    );
    spec.uid = "x/../../..".into();
    publish_spec(&url, "gw-hostile", &spec);
    let s = env.wait_status("escape refused", "escape", |s| s["reason"] == "InvalidSpec");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(msg.contains("metadata.uid: Invalid value"), "{msg}");
    // Nothing of the pod's was made anywhere: not in the pods directory, and
    // not beside or above the data directory.
    let data = env.dir.path().join("data");
    let pods: Vec<_> = std::fs::read_dir(data.join("pods"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        pods.iter().all(|n| !n.to_string_lossy().contains("escape")),
        "{pods:?}"
    );
    for dir in [env.dir.path(), data.as_path()] {
        assert!(
            !dir.join("logs").exists(),
            "logs written in {}",
            dir.display()
        );
    }

    // Numbers past their bounds, each refused by field.
    let mut spec = converted_spec(
        env.dir.path(),
        &wasm_pod("forever", &p1(), &["hello"], "Never", ""),
    );
    spec.uid = "0f6a8a3c-0d43-4b5e-9a7a-5b0a3f5e2c11".into();
    spec.termination_grace_period_secs = u64::MAX;
    publish_spec(&url, "gw-hostile", &spec);
    let s = env.wait_status("grace refused", "forever", |s| s["reason"] == "InvalidSpec");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.terminationGracePeriodSeconds"),
        "{s}"
    );

    // A log request whose `since` would underflow the clock: an error reply,
    // and the agent lives on.
    let request = kedge::model::LogRequest {
        request_id: "r1".into(),
        namespace: "default".into(),
        pod: "survivor".into(),
        container: None,
        tail_lines: None,
        follow: false,
        previous: false,
        timestamps: false,
        since_seconds: Some(u64::MAX),
        limit_bytes: None,
    };
    let replies = Subscriber::start(&url, "kedge/v1/gw-hostile/rpc/res/r1", None);
    let payload = kedge::wire::encode(0, &kedge::wire::Message::LogRequest(request.clone()))
        .expect("encodes");
    publish_raw(&url, "kedge/v1/gw-hostile/rpc/req/r1", &payload, false);
    let (_, reply) = replies.wait_for("log error reply", WAIT, |_, _| true);
    let chunk = match kedge::wire::decode(&reply).expect("reply decodes").message {
        kedge::wire::Message::LogChunk(c) => c,
        other => panic!("expected a log chunk, got {other:?}"),
    };
    let error = chunk.error.unwrap_or_default();
    assert!(error.contains("sinceSeconds"), "{error}");
    // The largest accepted value works: everything since the epoch.
    let mut request = request;
    request.request_id = "r2".into();
    request.since_seconds = Some(kedge::model::validate::MAX_SECONDS * 100);
    let replies = Subscriber::start(&url, "kedge/v1/gw-hostile/rpc/res/r2", None);
    let payload =
        kedge::wire::encode(0, &kedge::wire::Message::LogRequest(request)).expect("encodes");
    publish_raw(&url, "kedge/v1/gw-hostile/rpc/req/r2", &payload, false);
    replies.wait_for("log data", WAIT, |_, p| {
        matches!(kedge::wire::decode(p).map(|e| e.message), Ok(kedge::wire::Message::LogChunk(c)) if c.error.is_none())
    });

    // A topic whose levels are no valid pod: a node event, no status.
    publish_raw(&url, "kedge/v1/gw-hostile/desired/Bad_NS/x", b"junk", true);
    sub.wait_for("InvalidSpec node event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "InvalidSpec" && e.pod.is_none())
    });

    // Through all of it the survivor kept running, without a restart.
    env.assert_survivor_untouched();
}

/// A spec larger than the agent reads must not lock it in a reconnect loop:
/// it says so, keeps its pods and its other topics, and reads its desired
/// topics again once the message is gone.
#[test]
fn a_message_too_large_to_read_is_reported_and_the_agent_carries_on() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = fast_args();
    args.extend(["--set".into(), "broker.unreadable_retry_ms=2000".into()]);
    let agent = Agent::start(AgentOpts {
        node: "gw-huge".into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: args,
        env: vec![],
    });
    let env = Env {
        broker,
        agent,
        dir,
        node: "gw-huge".into(),
    };
    let url = env.broker.url();
    env.start_survivor();
    let sub = Subscriber::start(&url, "kedge/v1/gw-huge/events", None);

    let huge = vec![0x5a_u8; kedge::mqtt::MAX_PACKET_BYTES + 1024];
    publish_raw(&url, "kedge/v1/gw-huge/desired/default/huge", &huge, true);
    let (_, payload) = sub.wait_for("MessageTooLarge event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "MessageTooLarge")
    });
    let event = decode_event(&payload).expect("event");
    assert!(
        event.message.contains("larger than the 16777216 bytes"),
        "{}",
        event.message
    );
    // The degraded session still serves the node: logs of the survivor.
    wait_until("degraded connection", WAIT, || {
        env.agent.log().contains("degraded=true").then_some(())
    });
    wait_until("logs while degraded", WAIT, || {
        let out = env.cli(&["logs", "survivor"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("tick")
            .then_some(())
    });

    // Once the message is gone, desired topics are read again.
    publish_raw(&url, "kedge/v1/gw-huge/desired/default/huge", b"", true);
    env.apply(&wasm_pod("after-huge", &p1(), &["hello"], "Never", ""));
    env.wait_status("new pod runs after recovery", "after-huge", |s| {
        phase(s) == "Succeeded"
    });
    env.assert_survivor_untouched();
}

/// A second client with the agent's client id takes its session over (MQTT
/// 3.1.1 closes the older connection without a word). The agent notices the
/// pattern and says so, instead of reconnecting in silence.
#[test]
fn a_duplicate_client_id_is_reported() {
    let env = Env::start("gw-twin");
    let url = env.broker.url();
    wait_until("node Ready", WAIT, || {
        kedge_ok(&["--broker", &url, "get", "nodes"])
            .contains("Ready")
            .then_some(())
    });
    let sub = Subscriber::start(&url, "kedge/v1/gw-twin/events", None);
    // mosquitto_sub reconnects when it is kicked out, so the two clients
    // take the session from each other in turn.
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(mqtt_cli_args(&url, None))
        .args(["-i", "kedge-agent-gw-twin", "-t", "impostor/#", "-q", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut impostor = cmd.spawn().expect("mosquitto_sub");
    let found = sub.wait_for("SessionTakenOver event", WAIT, |_, p| {
        decode_event(p).is_some_and(|e| e.reason == "SessionTakenOver")
    });
    let _ = impostor.kill();
    let _ = impostor.wait();
    let event = decode_event(&found.1).expect("event");
    assert!(
        event.message.contains("client id kedge-agent-gw-twin"),
        "{}",
        event.message
    );
}

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk under the agent's data directory: the desired spec that
/// cannot be committed is not acknowledged and is retried, the state
/// database is opened again once space is free (redb refuses everything
/// after a failed write until then), and the pod then runs and its status
/// is right. Nothing is lost and the agent does not need a restart.
#[test]
fn a_full_disk_loses_nothing_and_the_agent_recovers() {
    if !rustix::process::geteuid().is_root() {
        skip_test(
            "a_full_disk_loses_nothing_and_the_agent_recovers",
            "mounting a small tmpfs needs root",
        );
        return;
    }
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&data)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs");
    let _disk = SmallDisk(data.clone());
    let agent = Agent::start(AgentOpts {
        node: "gw-full".into(),
        broker_url: Some(broker.url()),
        data_dir: data.clone(),
        extra_args: fast_args(),
        env: vec![],
    });
    let env = Env {
        broker,
        agent,
        dir,
        node: "gw-full".into(),
    };
    let url = env.broker.url();
    wait_until("node Ready", WAIT, || {
        kedge_ok(&["--broker", &url, "get", "nodes"])
            .contains("Ready")
            .then_some(())
    });
    // Fill the disk.
    let filler = data.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
    // Desired changes until one cannot be committed: redb may still have
    // free pages inside its file (how many depends on what the agent wrote
    // before), so the first small commit need not grow the file. Each pod
    // applied is one more record that must not be lost.
    let refused = || {
        env.agent
            .log()
            .contains("cannot record the desired change; retrying")
    };
    let mut applied = Vec::new();
    while !refused() {
        assert!(
            applied.len() < 40,
            "no commit refused for lack of space after {} pods; the agent's log:\n{}",
            applied.len(),
            env.agent.log()
        );
        let name = format!("on-full-disk-{}", applied.len());
        env.apply(&wasm_pod(
            &name,
            &p1(),
            &["ticker", "0", "100"],
            "Always",
            "",
        ));
        applied.push(name);
        // The agent's answer to this change: a refusal, or its status.
        let _ = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
            (refused() || env.status(applied.last().expect("one")).is_some()).then_some(())
        });
    }
    std::fs::remove_file(&filler).expect("free the disk");
    for name in &applied {
        env.wait_status("pod Running once space is free", name, |s| {
            phase(s) == "Running" && container(s)["state"]["Running"].is_object()
        });
    }
    assert!(
        env.agent.log().contains("state database opened again"),
        "the store was not reopened"
    );
}

// ---------------------------------------------------------------------------
// Fleets, published here message by message (the CLI and the bridge have
// tests of their own): what an agent does with them.

mod fleets {
    use std::collections::BTreeMap;

    use kedge::model::{
        Cohort, FleetDeployment, FleetPodState, FleetReport, NodeLabels, PodSpec, Rollout,
    };
    use kedge::wire::{self, Message};

    use super::*;

    fn spec_of(yaml: &str, uid: &str) -> PodSpec {
        let pods = kedge::model::convert::parse_pod_manifests(yaml).expect("manifest");
        let mut spec = kedge::model::convert::pod_spec_from_k8s(&pods[0]).expect("converts");
        spec.namespace = "default".into();
        spec.uid = uid.into();
        spec.generation = 0;
        spec
    }

    /// Publishes the spec under its digest; returns the digest.
    fn publish_spec(url: &str, spec: &PodSpec) -> String {
        let payload = wire::encode(0, &Message::DesiredPod(spec.clone())).expect("encodes");
        let digest = sha256_hex(&payload);
        publish_raw(
            url,
            &format!("kedge/v1/_fleet-spec/{digest}"),
            &payload,
            true,
        );
        digest
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("payload");
        std::fs::write(&path, bytes).expect("write");
        sha256_file(&path)
    }

    fn fleet(
        name: &str,
        selector: &str,
        priority: i32,
        spec: &PodSpec,
        revision: u64,
        digest: &str,
    ) -> FleetDeployment {
        FleetDeployment {
            namespace: "default".into(),
            name: name.into(),
            uid: spec.uid.clone(),
            selector: selector.into(),
            priority,
            pod_name: spec.name.clone(),
            revision,
            spec_digest: digest.into(),
            cohorts: vec![Cohort::everyone()],
            stable: None,
            rollout: Rollout::default(),
        }
    }

    fn publish_fleet(url: &str, f: &FleetDeployment) {
        let payload = wire::encode(0, &Message::FleetDeployment(f.clone())).expect("encodes");
        publish_raw(
            url,
            &format!("kedge/v1/_fleet/default/{}", f.name),
            &payload,
            true,
        );
    }

    fn publish_labels(url: &str, node: &str, labels: &[(&str, &str)]) {
        let l = NodeLabels {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let payload = wire::encode(0, &Message::NodeLabels(l)).expect("encodes");
        publish_raw(url, &format!("kedge/v1/{node}/labels"), &payload, true);
    }

    /// Every device's retained report on a fleet.
    fn reports(url: &str, fleet: &str) -> BTreeMap<String, FleetReport> {
        let sub = Subscriber::start(url, &format!("kedge/v1/+/fleet/default/{fleet}"), None);
        sub.messages()
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| {
                let node = t.split('/').nth(2).expect("node level").to_string();
                (
                    node,
                    wire::decode_as::<FleetReport>(&p).expect("a report").1,
                )
            })
            .collect()
    }

    /// The pod `name` on `node` (from `kedge get pods --node`).
    fn pod_on(url: &str, node: &str, name: &str) -> Option<Value> {
        let out = kedge_ok(&[
            "--broker", url, "get", "pods", "--node", node, "-A", "-o", "json",
        ]);
        let v: Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .map(|i| i["status"].clone())
            .find(|s| s["name"] == name)
    }

    fn node_labels(url: &str, node: &str) -> Option<BTreeMap<String, String>> {
        let sub = Subscriber::start(url, &format!("kedge/v1/{node}/node"), None);
        sub.messages().into_iter().find_map(|(_, p)| {
            wire::decode_as::<kedge::model::NodeStatus>(&p)
                .ok()
                .filter(|(_, s)| s.online)
                .map(|(_, s)| s.labels)
        })
    }

    fn running(s: &Value) -> bool {
        phase(s) == "Running"
    }

    #[test]
    fn fleets_reach_matching_agents_layer_by_priority_and_follow_labels() {
        let broker = Mosquitto::start();
        let url = broker.url();
        let dir = tempfile::tempdir().expect("tempdir");
        let start = |node: &str, labels: &str| {
            let mut extra = fast_args();
            if !labels.is_empty() {
                extra.extend(["--labels".to_string(), labels.to_string()]);
            }
            Agent::start(AgentOpts {
                node: node.into(),
                broker_url: Some(url.clone()),
                data_dir: dir.path().join(node),
                extra_args: extra,
                env: vec![],
            })
        };
        let _a = start("gw-a", "building=b43");
        let _b = start("gw-b", "building=b44");
        let _c = start("gw-c", "");

        let ticker = |name: &str, period: &str| {
            wasm_pod(name, &p1(), &["ticker", "0", period], "Always", "")
        };
        let sensor = spec_of(&ticker("sensor", "100"), "fleet-b43");
        let sensor_digest = publish_spec(&url, &sensor);
        publish_fleet(
            &url,
            &fleet("b43", "building=b43", 0, &sensor, 1, &sensor_digest),
        );
        // A fleet for everyone, published after: a device that runs it has
        // read the first one too.
        let beacon = spec_of(&ticker("beacon", "200"), "fleet-all");
        let beacon_digest = publish_spec(&url, &beacon);
        publish_fleet(&url, &fleet("all", "", 0, &beacon, 1, &beacon_digest));

        for node in ["gw-a", "gw-b", "gw-c"] {
            wait_until(&format!("beacon on {node}"), WAIT, || {
                pod_on(&url, node, "beacon").filter(running)
            });
        }
        let s = wait_until("sensor on gw-a", WAIT, || {
            pod_on(&url, "gw-a", "sensor").filter(running)
        });
        assert_eq!(s["uid"], "fleet-b43");
        assert_eq!(s["observed_generation"], 1);
        assert!(
            pod_on(&url, "gw-b", "sensor").is_none(),
            "gw-b is in building b44"
        );
        assert!(
            pod_on(&url, "gw-c", "sensor").is_none(),
            "gw-c has no building"
        );
        let r = wait_until("gw-a reports b43 running", WAIT, || {
            reports(&url, "b43")
                .remove("gw-a")
                .filter(|r| r.running_revision == 1 && r.state == FleetPodState::Ready)
        });
        assert_eq!(r.desired_revision, 1);
        assert_eq!(reports(&url, "b43").len(), 1, "only gw-a is targeted");
        assert_eq!(
            node_labels(&url, "gw-a").map(|l| l.get("building").cloned()),
            Some(Some("b43".into()))
        );

        // Labelled from the cloud: gw-b joins (the cloud's value wins over
        // its own b44); unlabelled: it leaves, and says so.
        publish_labels(&url, "gw-b", &[("building", "b43")]);
        wait_until("sensor on gw-b", WAIT, || {
            pod_on(&url, "gw-b", "sensor").filter(running)
        });
        wait_until("gw-b reports b43", WAIT, || {
            reports(&url, "b43").remove("gw-b")
        });
        publish_labels(&url, "gw-b", &[]);
        wait_until("sensor leaves gw-b", WAIT, || {
            pod_on(&url, "gw-b", "sensor").is_none().then_some(())
        });
        wait_until("gw-b's report on b43 removed", WAIT, || {
            (!reports(&url, "b43").contains_key("gw-b")).then_some(())
        });
        assert_eq!(
            node_labels(&url, "gw-b").map(|l| l.get("building").cloned()),
            Some(Some("b44".into()))
        );

        // A higher priority fleet with a pod of the same name wins on gw-a;
        // the lower one says it is superseded; when it goes, the lower one
        // comes back.
        let override_spec = spec_of(&ticker("sensor", "300"), "fleet-override");
        let override_digest = publish_spec(&url, &override_spec);
        publish_fleet(
            &url,
            &fleet(
                "override",
                "building=b43",
                10,
                &override_spec,
                1,
                &override_digest,
            ),
        );
        wait_until("the override runs on gw-a", WAIT, || {
            pod_on(&url, "gw-a", "sensor").filter(|s| running(s) && s["uid"] == "fleet-override")
        });
        wait_until("b43 superseded on gw-a", WAIT, || {
            reports(&url, "b43")
                .remove("gw-a")
                .filter(|r| r.state == FleetPodState::Superseded)
        });
        publish_raw(&url, "kedge/v1/_fleet/default/override", b"", true);
        wait_until("b43's sensor back on gw-a", WAIT, || {
            pod_on(&url, "gw-a", "sensor").filter(|s| running(s) && s["uid"] == "fleet-b43")
        });

        // The same spec as a new revision (a rollback to what runs): the
        // pod is not restarted.
        let started = pod_on(&url, "gw-a", "sensor").expect("sensor")["start_time_ms"].clone();
        publish_fleet(
            &url,
            &fleet("b43", "building=b43", 0, &sensor, 2, &sensor_digest),
        );
        let r = wait_until("gw-a runs b43 revision 2", WAIT, || {
            reports(&url, "b43")
                .remove("gw-a")
                .filter(|r| r.running_revision == 2 && r.state == FleetPodState::Ready)
        });
        assert_eq!(r.desired_revision, 2);
        let s = pod_on(&url, "gw-a", "sensor").expect("sensor");
        assert_eq!(s["start_time_ms"], started, "not restarted");
        assert_eq!(restarts(&s), 0);

        // A revision whose module cannot be fetched never stops the one
        // that runs: the agent prefetches before it stops, reports the
        // failure, and keeps revision 2 running.
        let mut broken = sensor.clone();
        broken.containers[0].image = format!("file://{}@sha256:{}", p1().display(), "0".repeat(64));
        let broken_digest = publish_spec(&url, &broken);
        publish_fleet(
            &url,
            &fleet("b43", "building=b43", 0, &broken, 3, &broken_digest),
        );
        let r = wait_until("gw-a cannot prefetch revision 3", WAIT, || {
            reports(&url, "b43")
                .remove("gw-a")
                .filter(|r| r.desired_revision == 3 && r.state == FleetPodState::Failed)
        });
        assert_eq!(r.reason.as_deref(), Some("ErrImagePull"), "{r:?}");
        assert_eq!(r.running_revision, 2);
        let s = pod_on(&url, "gw-a", "sensor").expect("sensor");
        assert!(running(&s));
        assert_eq!(s["start_time_ms"], started, "revision 2 was never stopped");
        // Back to a spec that can start: it replaces revision 2.
        let sensor4 = spec_of(&ticker("sensor", "150"), "fleet-b43");
        let sensor4_digest = publish_spec(&url, &sensor4);
        publish_fleet(
            &url,
            &fleet("b43", "building=b43", 0, &sensor4, 4, &sensor4_digest),
        );
        wait_until("gw-a runs revision 4", WAIT, || {
            reports(&url, "b43")
                .remove("gw-a")
                .filter(|r| r.running_revision == 4 && r.state == FleetPodState::Ready)
        });

        // A spec whose bytes do not match its digest is refused; the old
        // revision keeps running (no gap) and the report says why.
        let tampered = spec_of(&ticker("beacon", "250"), "fleet-all");
        let good = wire::encode(0, &Message::DesiredPod(tampered.clone())).expect("encodes");
        let digest = sha256_hex(&good);
        let mut evil = tampered;
        evil.containers[0].args = vec!["crash".into()];
        let evil = wire::encode(0, &Message::DesiredPod(evil)).expect("encodes");
        publish_raw(&url, &format!("kedge/v1/_fleet-spec/{digest}"), &evil, true);
        publish_fleet(&url, &fleet("all", "", 0, &beacon, 2, &digest));
        let r = wait_until("gw-c refuses the tampered spec", WAIT, || {
            reports(&url, "all")
                .remove("gw-c")
                .filter(|r| r.state == FleetPodState::Failed)
        });
        assert_eq!(r.reason.as_deref(), Some("InvalidFleetSpec"));
        assert_eq!(r.desired_revision, 2);
        assert_eq!(r.running_revision, 1, "the old revision keeps running");
        let s = pod_on(&url, "gw-c", "beacon").expect("beacon");
        assert!(running(&s));
        assert_eq!(s["observed_generation"], 1);

        // Deleting a fleet removes its pods everywhere.
        publish_raw(&url, "kedge/v1/_fleet/default/all", b"", true);
        for node in ["gw-a", "gw-b", "gw-c"] {
            wait_until(&format!("beacon leaves {node}"), WAIT, || {
                pod_on(&url, node, "beacon").is_none().then_some(())
            });
        }
        assert!(pod_on(&url, "gw-a", "sensor").is_some_and(|s| running(&s)));
    }
}
