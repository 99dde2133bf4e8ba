//! Sealed secrets end to end (docs/keys.md "Sealed specs"): a real
//! Mosquitto that persists its retained messages to a file, a real agent,
//! and `kedge apply -f` of a file holding a Secret and Wasm pods that use
//! it. The value reaches the workloads, and neither the broker's retained
//! messages nor its persistence file ever hold it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kedge::wire::{self, Message};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
/// Distinctive, so that finding it anywhere is meaningful.
const SECRET: &str = "s3cr3t-v4lu3-kedge";
const NODE: &str = "gw-sealed";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file with a Secret, a pod that prints its environment and reads the
/// Secret's volume (runs once), and a long-running pod that uses it too.
fn manifest(module: &Path) -> String {
    let image = format!("file://{}@sha256:{}", module.display(), sha256_file(module));
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: db}}
type: Opaque
stringData:
  password: {SECRET}
---
apiVersion: v1
kind: Pod
metadata: {{name: show}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  containers:
  - name: env
    image: {image}
    args: [env]
    env:
    - name: DB_PASSWORD
      valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
  - name: file
    image: {image}
    args: [read, /secret/password]
    volumeMounts: [{{name: creds, mountPath: /secret, readOnly: true}}]
  volumes:
  - name: creds
    secret: {{secretName: db}}
---
apiVersion: v1
kind: Pod
metadata: {{name: keeper}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Always
  containers:
  - name: main
    image: {image}
    args: [ticker, "0", "1000"]
    envFrom: [{{secretRef: {{name: db}}}}]
"#
    )
}

fn status(url: &str, name: &str) -> Option<Value> {
    pod_status(url, name)
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or_default()
}

fn restarts(s: &Value) -> u64 {
    s["container_statuses"][0]["restart_count"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn secret_values_travel_sealed_and_reach_the_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("mkdir store");
    let store_conf = store.clone();
    let mut broker = Mosquitto::start_custom(false, move |port| {
        format!(
            "user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_interval 1\n\
             log_dest stderr\n\
             log_type all\n",
            store_conf.display()
        )
    });
    let url = broker.url();
    let agent = Agent::start(AgentOpts {
        node: NODE.into(),
        broker_url: Some(url.clone()),
        data_dir: dir.path().join("data"),
        extra_args: fast_args(),
        env: vec![],
    });
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, manifest(&guest_wasm(GuestTarget::P1))).expect("write manifest");
    let file = file.to_str().expect("utf8");

    // `kedge convert` resolves from the file too, and says that its output
    // holds the value in clear.
    let out = kedge(&["convert", "-f", file]);
    assert!(out.status.success(), "{out:?}");
    let specs: Value = serde_json::from_slice(&out.stdout).expect("a JSON list");
    assert_eq!(specs.as_array().map(Vec::len), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(SECRET));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: pod/keeper carries the values of secret \"db\" in clear"),
        "{stderr}"
    );

    // A node that never reported a key gets nothing, in clear or not.
    let out = kedge_on(&broker, &["apply", "-f", file, "--node", "ghost"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node ghost has not reported its status")
            && stderr.contains("refusing to send the values of secret \"db\" in the clear"),
        "{stderr}"
    );

    // The agent publishes its sealing key in its node status.
    wait_until("the node's sealing key", WAIT, || {
        let out = kedge_ok(&["--broker", &url, "get", "nodes", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == NODE && !n["sealing_key"].is_null())
            .then_some(())
    });

    let out = kedge_on_ok(&broker, &agent, &["apply", "-f", file, "--node", NODE]);
    assert_eq!(out, "pod/show created\npod/keeper created\n");

    // The value reached the workloads: as an env var and as a file.
    wait_until("show Succeeded", WAIT, || {
        status(&url, "show").filter(|s| phase(s) == "Succeeded")
    });
    let logs = |container: &str| {
        kedge_on_ok(
            &broker,
            &agent,
            &["logs", "show", "-c", container, "--node", NODE],
        )
    };
    let env_log = logs("env");
    assert!(
        env_log.contains(&format!("DB_PASSWORD={SECRET}\n")),
        "{env_log}"
    );
    let file_log = logs("file");
    assert!(file_log.contains(SECRET), "{file_log}");
    let keeper = wait_until("keeper Running", WAIT, || {
        status(&url, "keeper").filter(|s| phase(s) == "Running")
    });

    // What the broker retains: sealed specs, and the value nowhere.
    let sub = Subscriber::start(&url, "kedge/v1/#", None);
    let desired = format!("kedge/v1/{NODE}/desired/default/keeper");
    let (_, payload) = sub.wait_for("keeper's retained spec", WAIT, |t, _| t == desired);
    let env = wire::decode(&payload).expect("the retained spec decodes");
    let Message::SealedPod(sealed) = env.message else {
        panic!("keeper's spec is not sealed: {:?}", env.message);
    };
    assert_eq!(env.seq, 1);
    sub.wait_for("show's retained spec", WAIT, |t, _| {
        t == format!("kedge/v1/{NODE}/desired/default/show")
    });
    for (topic, payload) in sub.messages() {
        assert!(
            !contains(&payload, SECRET.as_bytes()),
            "the secret value is in clear on {topic}"
        );
    }

    // Applied again unchanged: the CLI cannot compare a sealed spec, so it
    // sends the next generation, which the agent adopts without a restart.
    let out = kedge_on_ok(&broker, &agent, &["apply", "-f", file, "--node", NODE]);
    assert_eq!(out, "pod/show configured\npod/keeper configured\n");
    let (_, payload) = sub.wait_for("keeper's generation 2", WAIT, |t, p| {
        t == desired && wire::decode(p).is_ok_and(|e| e.seq == 2)
    });
    let Ok(Message::SealedPod(again)) = wire::decode(&payload).map(|e| e.message) else {
        panic!("keeper's second spec is not sealed");
    };
    assert_eq!(again.uid, sealed.uid, "the same pod");
    wait_until("the agent to adopt keeper's generation 2", WAIT, || {
        agent
            .log()
            .lines()
            .any(|l| {
                l.contains("generation recorded")
                    && l.contains("default/keeper")
                    && l.contains("generation=2")
            })
            .then_some(())
    });
    let after = status(&url, "keeper").expect("keeper's status");
    assert_eq!(phase(&after), "Running");
    assert_eq!(restarts(&after), 0, "{after}");
    assert_eq!(
        after["start_time_ms"], keeper["start_time_ms"],
        "keeper was not started again"
    );
    let env_log = logs("env");
    assert_eq!(
        env_log.matches("DB_PASSWORD=").count(),
        1,
        "show did not run again: {env_log}"
    );
    // (`kedge logs` answers carry what the workload printed, the value
    // included: the workload's choice. A new subscription after them gets
    // what the broker retains.)
    drop(sub);
    let sub = Subscriber::start(&url, "kedge/v1/#", None);
    sub.wait_for("keeper's retained generation 2", WAIT, |t, p| {
        t == desired && wire::decode(p).is_ok_and(|e| e.seq == 2)
    });
    for (topic, payload) in sub.messages() {
        assert!(
            !contains(&payload, SECRET.as_bytes()),
            "the secret value is in clear on {topic}"
        );
    }

    // The broker's persistence file holds the retained specs, sealed.
    drop(sub);
    broker.stop_gracefully();
    let db: PathBuf = store.join("mosquitto.db");
    let bytes = std::fs::read(&db).unwrap_or_else(|e| panic!("read {}: {e}", db.display()));
    assert!(
        contains(&bytes, desired.as_bytes()),
        "the persistence file holds the retained desired topics"
    );
    assert!(
        !contains(&bytes, SECRET.as_bytes()),
        "the secret value is in clear in {}",
        db.display()
    );
}

/// The node's sealing key as `kedge get nodes -o json` shows it.
fn node_key(url: &str) -> Option<Value> {
    let out = kedge_ok(&["--broker", url, "get", "nodes", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == NODE)
        .map(|n| n["sealing_key"].clone())
        .filter(|k| !k.is_null())
}

#[test]
fn a_re_keyed_device_refuses_the_old_sealing_and_takes_the_next_apply() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let opts = AgentOpts {
        node: NODE.into(),
        broker_url: Some(url.clone()),
        data_dir: data.clone(),
        extra_args: fast_args(),
        env: vec![],
    };
    let mut agent = Agent::start(opts.clone());
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, manifest(&guest_wasm(GuestTarget::P1))).expect("write manifest");
    let file = file.to_str().expect("utf8");
    let old_key = wait_until("the node's sealing key", WAIT, || node_key(&url));
    kedge_on_ok(&broker, &agent, &["apply", "-f", file, "--node", NODE]);
    wait_until("keeper Running", WAIT, || {
        status(&url, "keeper").filter(|s| phase(s) == "Running")
    });

    // The device loses its key file: it makes a new key on its next start.
    agent.stop();
    std::fs::remove_file(data.join("sealing.key")).expect("the agent made data/sealing.key");
    let events = Subscriber::start(&url, &format!("kedge/v1/{NODE}/events"), None);
    let agent = Agent::start(opts);
    let new_key = wait_until("the node's new sealing key", WAIT, || {
        node_key(&url).filter(|k| *k != old_key)
    });
    // The specs sealed to the old key are refused, naming both keys; the
    // pod runs on with its last good spec.
    let (_, payload) = events.wait_for("SealedSpecError", WAIT, |_, p| {
        matches!(wire::decode(p).map(|e| e.message),
            Ok(Message::Event(e)) if e.reason == "SealedSpecError" && e.pod.as_deref() == Some("keeper"))
    });
    let Ok(Message::Event(event)) = wire::decode(&payload).map(|e| e.message) else {
        unreachable!("matched above");
    };
    assert!(
        event.message.contains("not to this device's key"),
        "{}",
        event.message
    );
    let before = wait_until("keeper Running after the restart", WAIT, || {
        status(&url, "keeper").filter(|s| phase(s) == "Running")
    });

    // Applied again, the spec is sealed to the new key and adopted.
    let out = kedge_on(&broker, &["apply", "-f", file, "--node", NODE]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bytes: Vec<u8> = serde_json::from_value(new_key).expect("32 bytes");
    let key =
        kedge::seal::PublicKey::from_bytes(&bytes.try_into().expect("32 bytes"), "the node status")
            .expect("a key");
    assert!(
        stderr.contains(&format!("key id {}", hex::encode(key.id()))),
        "{stderr}"
    );
    wait_until("the agent to adopt keeper's generation 2", WAIT, || {
        agent
            .log()
            .lines()
            .any(|l| {
                l.contains("generation recorded")
                    && l.contains("default/keeper")
                    && l.contains("generation=2")
            })
            .then_some(())
    });
    let after = status(&url, "keeper").expect("keeper's status");
    assert_eq!(phase(&after), "Running");
    assert_eq!(restarts(&after), restarts(&before), "{after}");
    assert_eq!(after["start_time_ms"], before["start_time_ms"]);
}
