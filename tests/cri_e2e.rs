//! Container pods end to end: the real `kedge agent` against a real
//! Mosquitto and a real containerd (CRI, runc, CNI bridge) started by
//! `tests/support/cri.rs`, with busybox images built locally.
//!
//! These tests need root; without it each one says so loudly and returns.
#![cfg(feature = "cri")]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::cri::{BUSYBOX, Containerd, cri_tests_can_run};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// ConfigMaps or Secrets by name: key → bytes.
type Objects = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

struct CriEnv {
    // Dropped in reverse order of declaration: the agent first, then
    // containerd (which tears down pods, bridge, iptables and cgroups).
    agent: Agent,
    broker: Mosquitto,
    containerd: Containerd,
    dir: tempfile::TempDir,
    node: String,
}

impl CriEnv {
    /// The world of CRI test `test` with an agent named `node`, or None
    /// when CRI tests cannot run here (the test then says so and returns).
    fn for_test(test: &str, node: &str) -> Option<CriEnv> {
        cri_tests_can_run(test).then(|| CriEnv::start(node))
    }

    fn start(node: &str) -> CriEnv {
        CriEnv::start_with(node, &[])
    }

    /// With configuration keys set besides the tests' own (`key=value`).
    fn start_with(node: &str, settings: &[String]) -> CriEnv {
        let containerd = Containerd::start();
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = start_agent(node, &broker, &containerd, dir.path(), settings);
        CriEnv {
            agent,
            broker,
            containerd,
            dir,
            node: node.into(),
        }
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        kedge_on_ok(&self.broker, &self.agent, args)
    }

    fn apply(&self, yaml: &str) {
        apply_on(&self.broker, &self.agent, self.dir.path(), &self.node, yaml);
    }

    /// Publishes a spec converted with ConfigMaps resolved from `config_maps`
    /// (what the bridge does with the cluster's objects).
    fn apply_resolved(&self, yaml: &str, config_maps: Objects) {
        self.apply_with(yaml, config_maps, Objects::new())
    }

    /// Publishes a spec converted with ConfigMaps and Secrets resolved from
    /// these maps (name → key → bytes).
    fn apply_with(&self, yaml: &str, config_maps: Objects, secrets: Objects) {
        struct Maps(Objects, Objects);
        impl kedge::model::convert::Resolver for Maps {
            fn config_map(&self, _ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
                self.0.get(name).cloned()
            }
            fn secret(&self, _ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
                self.1.get(name).cloned()
            }
        }
        let pods = kedge::model::convert::parse_pod_manifests(yaml).expect("parse");
        let mut spec =
            kedge::model::convert::pod_spec_from_k8s_with(&pods[0], &Maps(config_maps, secrets))
                .expect("convert");
        spec.uid = uuid::Uuid::new_v4().to_string();
        spec.generation = 1;
        let payload = kedge::wire::encode(1, &kedge::wire::Message::DesiredPod(spec.clone()))
            .expect("encode");
        publish_raw(
            &self.broker.url(),
            &format!(
                "kedge/v1/{}/desired/{}/{}",
                self.node, spec.namespace, spec.name
            ),
            &payload,
            true,
        );
    }

    fn status(&self, name: &str) -> Option<Value> {
        pod_status(&self.broker.url(), name)
    }

    fn wait_status(&self, what: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = {
            let mut last = None;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wait_until(what, WAIT, || {
                    let s = self.status(name);
                    last = s.clone();
                    s.filter(|s| pred(s))
                })
            }));
            r.map_err(|_| last)
        };
        match found {
            Ok(v) => v,
            Err(last) => panic!(
                "timed out waiting for {what}; last status: {}\n--- agent log (tail):\n{}\n--- containerd log (tail):\n{}",
                serde_json::to_string_pretty(&last).unwrap_or_default(),
                tail(&self.agent.log(), 60),
                tail(&self.containerd.log(), 40),
            ),
        }
    }

    fn logs(&self, pod: &str, container: &str) -> String {
        self.cli_ok(&["logs", pod, "-c", container])
    }
}

fn start_agent(
    node: &str,
    broker: &Mosquitto,
    containerd: &Containerd,
    dir: &std::path::Path,
    settings: &[String],
) -> Agent {
    let mut extra = containerd.agent_args();
    let ours = [
        "backoff.initial_ms=300",
        "backoff.max_ms=600",
        "node.heartbeat_ms=500",
    ];
    for s in ours
        .iter()
        .map(|s| s.to_string())
        .chain(settings.iter().cloned())
    {
        extra.push("--set".into());
        extra.push(s);
    }
    Agent::start(AgentOpts {
        node: node.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.join("data"),
        extra_args: extra,
        env: vec![],
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or_default()
}

fn named<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["container_statuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn all_running(s: &Value) -> bool {
    s["container_statuses"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|c| c["state"].get("Running").is_some()))
}

#[test]
fn two_containers_share_localhost_and_an_empty_dir() {
    let Some(env) = CriEnv::for_test(
        "two_containers_share_localhost_and_an_empty_dir",
        "gw-cri-pair",
    ) else {
        return;
    };
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: pair}}
spec:
  containers:
  - name: server
    image: {BUSYBOX}
    command: [sh, -c, "mkdir -p /shared/www && echo served-over-localhost > /shared/www/index.html && exec httpd -f -p 8080 -h /shared/www"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: client
    image: {BUSYBOX}
    command: [sh, -c, "until wget -qO /shared/got http://127.0.0.1:8080/; do sleep 0.2; done; cat /shared/got; echo client-saw-$(cat /shared/www/index.html); exec sleep 3600"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  volumes:
  - name: shared
    emptyDir: {{}}
"#
    ));
    let s = env.wait_status("both containers running", "pair", |s| {
        phase(s) == "Running" && all_running(s)
    });
    // The pod has its own address from the CNI bridge's subnet.
    let ip = s["pod_ip"].as_str().expect("pod ip");
    let prefix = env.containerd.subnet.rsplit_once('.').expect("subnet").0;
    assert!(
        ip.starts_with(prefix),
        "pod ip {ip} not in {}",
        env.containerd.subnet
    );
    for c in ["server", "client"] {
        let st = named(&s, c);
        assert!(
            st["container_id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("containerd://"),
            "{st}"
        );
        assert!(
            st["image_id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("sha256:"),
            "{st}"
        );
    }
    wait_until("client logs", WAIT, || {
        let l = env.logs("pair", "client");
        (l.contains("served-over-localhost") && l.contains("client-saw-served-over-localhost"))
            .then_some(())
    });
    // The node reports the container runtime it talks to.
    let nodes = env.cli_ok(&["get", "nodes", "-o", "json"]);
    assert!(nodes.contains("containerd://"), "{nodes}");

    // Delete: the sandbox and its containers go away.
    env.cli_ok(&["delete", "pod", "pair"]);
    wait_until("pod status removed", WAIT, || {
        env.status("pair").is_none().then_some(())
    });
    wait_until("containers removed from containerd", WAIT, || {
        env.containerd
            .ctr(&["-n", "k8s.io", "containers", "list", "-q"])
            .trim()
            .is_empty()
            .then_some(())
    });
}

#[test]
fn a_container_pods_stats_come_from_containerd() {
    let Some(env) = CriEnv::for_test(
        "a_container_pods_stats_come_from_containerd",
        "gw-cri-stats",
    ) else {
        return;
    };
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: busy}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "head -c 4000000 /dev/zero > /dev/shm/fill; exec sleep 3600"]
"#
    ));
    let s = env.wait_status("app running", "busy", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let stats = with_client(&env.broker, async |client| {
        client.stats(&env.node).await.expect("stats")
    });
    assert!(stats.usage.cpu_core_ns > 0 && stats.usage.memory_working_set_bytes > 0);
    let pod = stats
        .pods
        .iter()
        .find(|p| p.name == "busy")
        .unwrap_or_else(|| panic!("busy listed: {stats:?}"));
    assert_eq!(pod.uid, s["uid"].as_str().expect("uid"));
    assert_eq!(pod.containers.len(), 1, "{pod:?}");
    let app = &pod.containers[0];
    assert_eq!(app.name, "app");
    assert!(app.usage.memory_working_set_bytes > 0, "{app:?}");
    assert!(app.start_time_ms > 0 && app.usage.timestamp_ms > 0);
}

/// The exec RPC against containerd's ExecSync: both streams apart and the
/// exit code; output over the bound cut and flagged; a missing command and
/// a timeout are containerd's errors.
#[test]
fn exec_runs_a_command_in_a_container_through_containerd() {
    if !cri_tests_can_run("exec_runs_a_command_in_a_container_through_containerd") {
        return;
    }
    use kedge::client::ClientError;
    use kedge::model::{ExecRequest, validate::MAX_EXEC_OUTPUT};
    let env = CriEnv::start("gw-cri-exec");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
"#
    ));
    env.wait_status("app running", "shell", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let request = |command: &[&str]| ExecRequest {
        namespace: "default".into(),
        pod: "shell".into(),
        container: "app".into(),
        command: command.iter().map(|w| w.to_string()).collect(),
        timeout_secs: 30,
        ..Default::default()
    };
    // More than tonic's default bound (4 MiB) for a gRPC message.
    let big = format!("head -c {} /dev/zero", 6 * MAX_EXEC_OUTPUT);
    let (both, missing, long, slow) = with_client(&env.broker, async |client| {
        let node = env.node.as_str();
        let both = client
            .exec_within(
                node,
                request(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
                WAIT,
            )
            .await;
        let missing = client
            .exec_within(node, request(&["no-such-command", "x"]), WAIT)
            .await;
        let long = client
            .exec_within(node, request(&["sh", "-c", &big]), WAIT)
            .await;
        let mut slow = request(&["sleep", "60"]);
        slow.timeout_secs = 1;
        let slow = client.exec_within(node, slow, WAIT).await;
        (both, missing, long, slow)
    });
    let both = both.expect("ran");
    assert_eq!(
        (
            both.exit_code,
            both.stdout.as_slice(),
            both.stderr.as_slice()
        ),
        (3, b"out\n".as_slice(), b"err\n".as_slice())
    );
    assert!(!both.truncated);
    // A command that does not exist: runc cannot start the exec process, so
    // containerd fails the ExecSync call (no exit code), naming it.
    match missing {
        Err(ClientError::Agent { message, .. }) => assert!(
            message.contains(r#"exec: "no-such-command": executable file not found in $PATH"#),
            "{message}"
        ),
        other => panic!("the runtime's error: {other:?}"),
    }
    // Over its timeout: containerd gives up on the exec with an error.
    match slow {
        Err(ClientError::Agent { message, .. }) => {
            assert!(message.contains("timeout 1s exceeded"), "{message}")
        }
        other => panic!("the runtime's timeout: {other:?}"),
    }
    let long = long.expect("ran");
    assert_eq!(long.exit_code, 0);
    assert!(long.truncated, "cut at the bound");
    assert_eq!(long.stdout.len(), MAX_EXEC_OUTPUT);
    assert!(long.stdout.iter().all(|b| *b == 0) && long.stderr.is_empty());
}

/// Port-forward to a container pod of its own network namespace: the agent
/// connects to the pod's IP (from CNI); an HTTP/1.0 request written by the
/// test fetches a file of 1 MiB (four windows) served by busybox httpd, and
/// what comes back is the file.
#[test]
fn port_forward_reaches_a_cni_pod_on_its_ip() {
    let Some(env) = CriEnv::for_test("port_forward_reaches_a_cni_pod_on_its_ip", "gw-cri-pf")
    else {
        return;
    };
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    let file: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(www.join("data.bin"), &file).expect("data.bin");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: [httpd, -f, -p, "8080", -h, /www]
    volumeMounts: [{{name: www, mountPath: /www}}]
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
  volumes:
  - name: www
    hostPath: {{path: {www}}}
"#,
        www = www.display()
    ));
    let s = env.wait_status("httpd ready", "web", |s| {
        phase(s) == "Running" && condition(s, "Ready") == Some(true)
    });
    let pod_ip = s["pod_ip"].as_str().unwrap_or_default().to_string();
    assert!(
        pod_ip.parse::<std::net::IpAddr>().is_ok() && !pod_ip.starts_with("127."),
        "a CNI pod has an IP of its own: {s}"
    );
    let response = with_client(&env.broker, async |client| {
        let (mut w, mut r) = client
            .port_forward(&env.node, "default", "web", 8080, WAIT)
            .await
            .expect("the agent connects to the pod's IP");
        w.write(b"GET /data.bin HTTP/1.0\r\n\r\n")
            .await
            .expect("writes");
        w.finish().await.expect("finishes");
        let mut response = Vec::new();
        while let Some(bytes) = r.read().await.expect("reads") {
            response.extend_from_slice(&bytes);
        }
        response
    });
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP header");
    let head = String::from_utf8_lossy(&response[..split]);
    // busybox answers HTTP/1.1 (and closes: the request was 1.0).
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let body = &response[split + 4..];
    assert_eq!(body.len(), file.len(), "{head}");
    assert!(body == file.as_slice(), "the file's bytes");
}

#[test]
fn init_output_env_and_config_files_reach_the_app() {
    let Some(env) = CriEnv::for_test(
        "init_output_env_and_config_files_reach_the_app",
        "gw-cri-init",
    ) else {
        return;
    };
    let mut maps = BTreeMap::new();
    maps.insert(
        "app-config".to_string(),
        BTreeMap::from([("app.conf".to_string(), b"level=debug\n".to_vec())]),
    );
    env.apply_resolved(
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: initpod, namespace: default}}
spec:
  restartPolicy: Never
  initContainers:
  - name: prepare
    image: {BUSYBOX}
    command: [sh, -c, "echo prepared-by-init > /work/msg"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: app
    image: {BUSYBOX}
    workingDir: /work
    env: [{{name: GREETING, value: hello-from-env}}]
    command: [sh, -c, "cat msg; echo greeting=$GREETING; cat /config/app.conf; echo cwd=$(pwd); touch /config/x 2>/dev/null && echo config=writable || echo config=read-only"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: config, mountPath: /config}}
  volumes:
  - name: work
    emptyDir: {{}}
  - name: config
    configMap: {{name: app-config}}
"#
        ),
        maps,
    );
    let s = env.wait_status("pod succeeded", "initpod", |s| phase(s) == "Succeeded");
    let init = &s["init_container_statuses"][0];
    assert_eq!(init["state"]["Terminated"]["reason"], "Completed", "{init}");
    let app = named(&s, "app");
    assert_eq!(app["state"]["Terminated"]["exit_code"], 0, "{app}");
    assert_eq!(app["state"]["Terminated"]["reason"], "Completed", "{app}");
    let logs = env.logs("initpod", "app");
    for want in [
        "prepared-by-init",
        "greeting=hello-from-env",
        "level=debug",
        "cwd=/work",
        // Read-only although the mount does not say so, as in Kubernetes.
        "config=read-only",
    ] {
        assert!(logs.contains(want), "missing {want:?} in logs:\n{logs}");
    }
    let init_logs = env.logs("initpod", "prepare");
    assert!(
        init_logs.is_empty() || !init_logs.contains("error"),
        "{init_logs}"
    );
}

#[test]
fn exit_codes_and_oom_kills_are_reported_like_the_kubelet() {
    let Some(env) = CriEnv::for_test(
        "exit_codes_and_oom_kills_are_reported_like_the_kubelet",
        "gw-cri-exit",
    ) else {
        return;
    };
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: fails}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "echo failing; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    # dd's 256 MiB buffer cannot fit under a 32 MiB limit. The second's
    # wait first: containerd 1.6's shim arms its cgroup v1 OOM watch only
    # after the task has started, and a process killed before that is
    # reported `Error` (by the kubelet too), not `OOMKilled`.
    command: [sh, -c, "sleep 1; exec dd if=/dev/zero of=/dev/null bs=256M count=4"]
    resources:
      limits: {{memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crashy}}
spec:
  restartPolicy: Always
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "echo crashing; exit 1"]
---
apiVersion: v1
kind: Pod
metadata: {{name: absent}}
spec:
  containers:
  - name: main
    image: kedge.test/not-here:1
    imagePullPolicy: Never
"#
    ));
    let s = env.wait_status("failed pod", "fails", |s| phase(s) == "Failed");
    let t = &named(&s, "main")["state"]["Terminated"];
    assert_eq!(t["exit_code"], 3, "{s}");
    assert_eq!(t["reason"], "Error", "{s}");
    assert!(env.logs("fails", "main").contains("failing"));

    let s = env.wait_status("oom-killed pod", "hog", |s| phase(s) == "Failed");
    let t = &named(&s, "main")["state"]["Terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{s}");
    assert_eq!(t["exit_code"], 137, "{s}");

    // Restarted by the same supervisor and back-off as Wasm containers.
    let s = env.wait_status("crash loop", "crashy", |s| {
        named(s, "main")["restart_count"].as_u64().unwrap_or(0) >= 2
            && named(s, "main")["state"]["Waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert_eq!(
        named(&s, "main")["last_state"]["Terminated"]["exit_code"],
        1,
        "{s}"
    );
    let previous = env.cli_ok(&["logs", "crashy", "-c", "main", "--previous"]);
    assert!(
        previous.contains("crashing"),
        "the previous run's log: {previous}"
    );

    let s = env.wait_status("never pulled", "absent", |s| {
        named(s, "main")["state"]["Waiting"]["reason"] == "ErrImageNeverPull"
    });
    let message = named(&s, "main")["state"]["Waiting"]["message"].to_string();
    assert!(
        message.contains("kedge.test/not-here:1") && message.contains("Never"),
        "{message}"
    );
}

#[test]
fn a_killed_agent_adopts_its_running_containers() {
    if !cri_tests_can_run("a_killed_agent_adopts_its_running_containers") {
        return;
    }
    let mut env = CriEnv::start("gw-cri-adopt");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  initContainers:
  - name: setup
    image: {BUSYBOX}
    command: [sh, -c, "echo setup"]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "echo started-once; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: forgotten}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, "3600"]
"#
    ));
    env.wait_status("second pod running", "forgotten", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let before = env.wait_status("pod running", "steady", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let id_before = named(&before, "main")["container_id"].clone();
    let all_before = env.containerd.container_ids();
    assert_eq!(
        all_before.len(),
        5,
        "two sandboxes, init and two app containers: {all_before:?}"
    );

    env.agent.kill9();
    // While the agent is down its record of `forgotten` disappears (as if
    // deleted): its sandbox becomes an orphan the next agent removes.
    {
        let store = kedge::store::Store::open(&env.dir.path().join("data/state.redb"))
            .expect("open the agent's store");
        store
            .remove_desired(&kedge::model::PodKey::new("default", "forgotten"))
            .expect("remove desired");
    }
    let ids_before = env.containerd.container_ids_of_pod("steady");
    assert_eq!(ids_before.len(), 3, "sandbox, init and app: {ids_before:?}");
    assert_eq!(env.containerd.container_ids_of_pod("forgotten").len(), 2);
    env.agent = start_agent(&env.node, &env.broker, &env.containerd, env.dir.path(), &[]);
    // The log is shared by both runs; only the second one adopts.
    wait_until("the new agent adopted the app container", WAIT, || {
        let log = env.agent.log();
        log.lines()
            .any(|l| {
                l.contains("container started") && l.contains("main") && l.contains("adopted=true")
            })
            .then_some(())
    });
    let after = env.wait_status("pod running after restart", "steady", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let main = named(&after, "main");
    assert_eq!(main["container_id"], id_before, "{after}");
    assert_eq!(main["restart_count"], 0, "{after}");
    assert_eq!(
        env.containerd.container_ids_of_pod("steady"),
        ids_before,
        "no container was created anew"
    );
    wait_until("the orphaned pod's containers are removed", WAIT, || {
        env.containerd
            .container_ids_of_pod("forgotten")
            .is_empty()
            .then_some(())
    });
    assert!(env.agent.log().contains("removing orphaned pod sandbox"));
    assert_eq!(
        env.logs("steady", "main").matches("started-once").count(),
        1,
        "the app ran once"
    );
}

fn condition(s: &Value, kind: &str) -> Option<bool> {
    s["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["kind"] == kind)?["status"]
        .as_bool()
}

#[test]
fn probes_drive_readiness_and_restart_unhealthy_containers() {
    let Some(env) = CriEnv::for_test(
        "probes_drive_readiness_and_restart_unhealthy_containers",
        "gw-cri-probe",
    ) else {
        return;
    };
    let events = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/events", env.node),
        None,
    );
    // The test controls both probes through files in a hostPath volume:
    // `ready` is served by httpd (readiness httpGet), `healthy` is read by
    // the liveness exec probe; a startup tcpSocket probe waits for httpd.
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("healthy"), "ok").expect("healthy");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    command: [httpd, -f, -p, "8080", -h, /www]
    volumeMounts: [{{name: www, mountPath: /www}}]
    startupProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      httpGet: {{path: /ready, port: 8080}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      exec: {{command: [cat, /www/healthy]}}
      periodSeconds: 1
      failureThreshold: 2
  volumes:
  - name: www
    hostPath: {{path: {www}}}
"#,
        www = www.display()
    ));
    let s = env.wait_status("running but not ready", "probed", |s| {
        phase(s) == "Running" && all_running(s) && named(s, "web")["started"] == true
    });
    assert_eq!(condition(&s, "Ready"), Some(false), "{s}");
    std::fs::write(www.join("ready"), "yes").expect("ready");
    env.wait_status("ready", "probed", |s| condition(s, "Ready") == Some(true));
    std::fs::remove_file(www.join("ready")).expect("unready");
    let s = env.wait_status("not ready again", "probed", |s| {
        condition(s, "Ready") == Some(false)
    });
    assert_eq!(
        named(&s, "web")["restart_count"],
        0,
        "readiness never restarts: {s}"
    );

    // Liveness: the container is killed and restarted.
    std::fs::remove_file(www.join("healthy")).expect("unhealthy");
    let s = env.wait_status("restarted by liveness", "probed", |s| {
        named(s, "web")["restart_count"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        named(&s, "web")["last_state"]["Terminated"].is_object(),
        "{s}"
    );
    for (reason, text) in [
        ("Unhealthy", "Liveness probe failed"),
        ("Killing", "will be restarted"),
    ] {
        events.wait_for(&format!("{reason} event"), WAIT, |_, p| {
            matches!(kedge::wire::decode(p).map(|e| e.message),
                Ok(kedge::wire::Message::Event(e)) if e.reason == reason && e.message.contains(text))
        });
    }
    std::fs::write(www.join("healthy"), "ok").expect("healthy again");
    std::fs::write(www.join("ready"), "yes").expect("ready again");
    env.wait_status("ready after the restart", "probed", |s| {
        condition(s, "Ready") == Some(true) && all_running(s)
    });
}

/// Every status of `pod` published so far, decoded, in order.
fn statuses(sub: &Subscriber) -> Vec<kedge::model::PodStatus> {
    sub.messages()
        .iter()
        .filter_map(|(_, p)| match kedge::wire::decode(p).ok()?.message {
            kedge::wire::Message::PodStatus(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn waiting_of(s: &kedge::model::PodStatus) -> Option<(String, String)> {
    match &s.container_statuses.first()?.state {
        kedge::model::ContainerState::Waiting { reason, message } => {
            Some((reason.clone(), message.clone().unwrap_or_default()))
        }
        _ => None,
    }
}

#[test]
fn private_images_pull_with_credentials_and_wrong_ones_back_off() {
    let Some(env) = CriEnv::for_test(
        "private_images_pull_with_credentials_and_wrong_ones_back_off",
        "gw-cri-pull",
    ) else {
        return;
    };
    let registry = support::cri::Registry::start();
    let image = registry.push_busybox("private/busybox", "v1");
    let pod = |name: &str, secret: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  restartPolicy: Never
  imagePullSecrets: [{{name: {secret}}}]
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    command: [sh, -c, "echo pulled-and-ran"]
"#
        )
    };
    let mut secrets = Objects::new();
    for (name, password) in [
        ("good", registry.password.clone()),
        ("bad", "wrong".to_string()),
    ] {
        secrets.insert(
            name.into(),
            BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                registry.docker_config_json(&password).into_bytes(),
            )]),
        );
    }
    let events = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/events", env.node),
        None,
    );
    let reported = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/reported/default/denied", env.node),
        None,
    );

    env.apply_with(&pod("allowed", "good"), Objects::new(), secrets.clone());
    let s = env.wait_status("private image ran", "allowed", |s| phase(s) == "Succeeded");
    assert!(
        named(&s, "main")["image_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sha256:")
    );
    assert!(env.logs("allowed", "main").contains("pulled-and-ran"));
    for reason in ["Pulling", "Pulled"] {
        events.wait_for(&format!("{reason} event"), WAIT, |_, p| {
            matches!(kedge::wire::decode(p).map(|e| e.message),
                Ok(kedge::wire::Message::Event(e)) if e.reason == reason && e.pod.as_deref() == Some("allowed"))
        });
    }

    env.apply_with(&pod("denied", "bad"), Objects::new(), secrets);
    wait_until("ErrImagePull, then ImagePullBackOff", WAIT, || {
        let reasons: Vec<(String, String)> =
            statuses(&reported).iter().filter_map(waiting_of).collect();
        let first_err = reasons.iter().position(|(r, _)| r == "ErrImagePull")?;
        let backoff = reasons[first_err..]
            .iter()
            .find(|(r, _)| r == "ImagePullBackOff")?;
        Some(backoff.clone())
    });
    let s = env.status("denied").expect("status");
    let waiting = &named(&s, "main")["state"]["Waiting"];
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&image) && message.contains("failed to pull image"),
        "the message names the image and the failure: {message}"
    );
    assert!(
        message.contains("401") || message.to_lowercase().contains("unauthorized"),
        "the message says the credentials were refused: {message}"
    );
    assert_eq!(phase(&s), "Pending");
}

#[cfg(feature = "wasm")]
/// Pushes a Wasm module to the registry as a Wasm OCI artifact (one
/// `application/wasm` layer, the Wasm config media type), as `wkg` or
/// `oras` would.
fn push_wasm_artifact(registry: &support::cri::Registry, repo: &str, module: &[u8]) -> String {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    let image = format!("{}/{repo}", registry.host());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        kedge::tls::install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![registry.host()]),
            ..Default::default()
        });
        let reference: oci_client::Reference = image.parse().expect("reference");
        let layer = ImageLayer::new(module.to_vec(), "application/wasm".into(), None);
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.wasm.config.v0+json".into(),
            None,
        );
        let auth = oci_client::secrets::RegistryAuth::Basic(
            registry.user.clone(),
            registry.password.clone(),
        );
        client
            .push(&reference, &[layer], config, &auth, None)
            .await
            .expect("push the Wasm artifact");
    });
    image
}

#[cfg(feature = "wasm")]
#[test]
fn wasm_modules_pull_from_the_same_registry_with_credentials() {
    let Some(env) = CriEnv::for_test(
        "wasm_modules_pull_from_the_same_registry_with_credentials",
        "gw-wasm-oci",
    ) else {
        return;
    };
    let registry = support::cri::Registry::start();
    let module = std::fs::read(guest_wasm(GuestTarget::P1)).expect("guest module");
    let image = push_wasm_artifact(&registry, "modules/guest:v1", &module);
    let mut secrets = Objects::new();
    secrets.insert(
        "regcred".into(),
        BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            registry.docker_config_json(&registry.password).into_bytes(),
        )]),
    );
    env.apply_with(
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: oci-module, namespace: default}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {image}
    args: [hello, from, the, registry]
"#
        ),
        Objects::new(),
        secrets,
    );
    let s = env.wait_status("module ran", "oci-module", |s| phase(s) == "Succeeded");
    let sha = sha256_file(guest_wasm(GuestTarget::P1));
    assert_eq!(
        named(&s, "main")["image_id"],
        format!("sha256:{sha}"),
        "the layer digest was verified against the module: {s}"
    );
    let logs = env.logs("oci-module", "main");
    assert!(logs.contains("from the registry"), "{logs}");

    // Without credentials the registry refuses, and the status says so.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: oci-denied}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
"#
    ));
    let s = env.wait_status("pull refused", "oci-denied", |s| {
        named(s, "main")["state"]["Waiting"]["reason"]
            .as_str()
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    let message = named(&s, "main")["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(&image), "{message}");
    // IfNotPresent: the module is remembered, so a new pod runs from the
    // cache even with the registry gone (a device restarting offline).
    let registry_host = registry.host();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(&registry_host).is_err(),
        "registry stopped"
    );
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: oci-offline}}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    args: [hello, offline]
"#
    ));
    env.wait_status("module ran offline", "oci-offline", |s| {
        phase(s) == "Succeeded"
    });
    assert!(env.logs("oci-offline", "main").contains("offline"));
}

/// `GET /` over plain HTTP/1.0; the body if the server answered 200.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status_line = out.lines().next()?;
    status_line.contains(" 200 ").then(|| out.clone())
}

#[test]
fn host_network_and_host_ports_reach_the_containers() {
    let Some(env) = CriEnv::for_test(
        "host_network_and_host_ports_reach_the_containers",
        "gw-cri-net",
    ) else {
        return;
    };
    let (host_net_port, host_port) = (free_port(), free_port());
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: on-host}}
spec:
  hostNetwork: true
  containers:
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, "mkdir -p /tmp/www && echo host-network-pod > /tmp/www/index.html && exec httpd -f -p {host_net_port} -h /tmp/www"]
---
apiVersion: v1
kind: Pod
metadata: {{name: mapped}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, "mkdir -p /tmp/www && echo host-port-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
"#
    ));
    let s = env.wait_status("host-network pod running", "on-host", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let host_ip = s["host_ip"].as_str().expect("host ip").to_string();
    assert_eq!(
        s["pod_ip"], s["host_ip"],
        "a hostNetwork pod has the node's address: {s}"
    );
    let body = wait_until("the host-network pod serves on the host", WAIT, || {
        http_get(&format!("127.0.0.1:{host_net_port}"))
    });
    assert!(body.contains("host-network-pod"), "{body}");

    let s = env.wait_status("mapped pod running", "mapped", |s| {
        phase(s) == "Running" && all_running(s)
    });
    assert_ne!(s["pod_ip"], s["host_ip"], "{s}");
    let body = wait_until("the host port reaches the pod", WAIT, || {
        http_get(&format!("{host_ip}:{host_port}"))
    });
    assert!(body.contains("host-port-pod"), "{body}");
}

#[test]
fn pods_wait_for_an_unreachable_runtime_and_start_when_it_is_back() {
    if !cri_tests_can_run("pods_wait_for_an_unreachable_runtime_and_start_when_it_is_back") {
        return;
    }
    let mut env = CriEnv::start("gw-cri-down");
    // The agent starts while the runtime is down (a device booting).
    env.agent.kill9();
    env.containerd.stop_daemon();
    env.agent = start_agent(&env.node, &env.broker, &env.containerd, env.dir.path(), &[]);
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: patient}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, "3600"]
"#
    ));
    let s = env.wait_status("the runtime is reported unreachable", "patient", |s| {
        named(s, "main")["state"]["Waiting"]["reason"] == "RuntimeUnavailable"
    });
    let message = named(&s, "main")["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("cannot reach the container runtime")
            && message.contains(&env.containerd.endpoint()),
        "{message}"
    );
    assert_eq!(phase(&s), "Pending");
    wait_until("the node reports no container runtime yet", WAIT, || {
        let nodes = env.cli_ok(&["get", "nodes", "-o", "json"]);
        (nodes.contains("gw-cri-down") && !nodes.contains("containerd://")).then_some(())
    });
    env.containerd.start_daemon();
    let s = env.wait_status("running once the runtime is back", "patient", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let prefix = env.containerd.subnet.rsplit_once('.').expect("subnet").0;
    assert!(
        s["pod_ip"].as_str().unwrap_or_default().starts_with(prefix),
        "the pod ip comes from the sandbox made on the retry: {s}"
    );
    wait_until("the node names the runtime once it answered", WAIT, || {
        let nodes = env.cli_ok(&["get", "nodes", "-o", "json"]);
        nodes.contains("containerd://").then_some(())
    });
}

#[test]
fn a_failing_test_still_tears_down_containerd_and_its_network() {
    if !cri_tests_can_run("a_failing_test_still_tears_down_containerd_and_its_network") {
        return;
    }
    struct Seen {
        dir: std::path::PathBuf,
        network: String,
        bridge: String,
        cgroup: String,
        /// The per-pod chains our rules jump to (portmap's `CNI-DN-…`).
        chains: Vec<String>,
    }
    let seen: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let env = CriEnv::start("gw-cri-teardown");
        env.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: left-running}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, "3600"]
    ports: [{{containerPort: 80, hostPort: {port}}}]
"#,
            port = free_port()
        ));
        env.wait_status("pod running", "left-running", |s| {
            phase(s) == "Running" && all_running(s)
        });
        let c = &env.containerd;
        let iptables = String::from_utf8_lossy(
            &std::process::Command::new("iptables-save")
                .output()
                .expect("iptables-save")
                .stdout,
        )
        .into_owned();
        assert!(iptables.contains(&c.network), "CNI made rules for the pod");
        let chains: Vec<String> = iptables
            .lines()
            .filter(|l| l.contains(&c.network))
            .filter_map(|l| l.split(" -j ").nth(1))
            .filter_map(|t| t.split_whitespace().next())
            .filter(|t| t.starts_with("CNI-DN-"))
            .map(str::to_string)
            .collect();
        assert!(
            !chains.is_empty(),
            "portmap made a chain for the host port:\n{iptables}"
        );
        assert!(
            std::path::Path::new(&format!("/sys/class/net/{}", c.bridge)).exists(),
            "CNI made the bridge"
        );
        *seen.lock().expect("lock") = Some(Seen {
            dir: c.dir.path().to_path_buf(),
            network: c.network.clone(),
            bridge: c.bridge.clone(),
            cgroup: c.cgroup_parent.trim_start_matches('/').to_string(),
            chains,
        });
        panic!("a test failing while its pod runs");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let seen = seen.lock().expect("lock").take().expect("names recorded");
    let needle = seen.dir.display().to_string();
    let iptables = String::from_utf8_lossy(
        &std::process::Command::new("iptables-save")
            .output()
            .expect("iptables-save")
            .stdout,
    )
    .into_owned();
    for chain in &seen.chains {
        assert!(
            !iptables.contains(chain.as_str()),
            "chain {chain} left:\n{iptables}"
        );
    }
    assert!(
        !iptables.contains(&seen.network),
        "iptables rules left:\n{iptables}"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{}", seen.bridge)).exists(),
        "bridge {} left",
        seen.bridge
    );
    for hierarchy in ["memory", "cpu", "pids", "unified", ""] {
        let p = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(&seen.cgroup);
        assert!(!p.exists(), "cgroup {} left", p.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&needle), "mounts left under {needle}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains(&needle),
            "process {} still runs: {cmdline}",
            entry.file_name().to_string_lossy()
        );
    }
    assert!(!seen.dir.exists(), "{} left", seen.dir.display());
}

/// What changes what runs (issue 15's "silently dropped" fields), through
/// containerd: seccomp RuntimeDefault filters syscalls (a user namespace is
/// refused) while an unset profile is the kubelet's Unconfined; a Memory
/// emptyDir is a tmpfs of its sizeLimit; `$(VAR)` is expanded and `$$`
/// unescaped; hostPath types are made (DirectoryOrCreate) or checked (File)
/// before a container starts.
#[test]
fn seccomp_memory_volumes_expansion_and_host_path_types_change_what_runs() {
    let Some(env) = CriEnv::for_test(
        "seccomp_memory_volumes_expansion_and_host_path_types_change_what_runs",
        "gw-cri-fidelity",
    ) else {
        return;
    };
    let made = env.dir.path().join("host/made-by-kedge");
    let probe = "grep Seccomp: /proc/self/status; if unshare -U true; then echo unshare-allowed; else echo unshare-denied; fi";
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: fidelity}}
spec:
  restartPolicy: Never
  containers:
  - name: strict
    image: {BUSYBOX}
    securityContext: {{seccompProfile: {{type: RuntimeDefault}}}}
    command: [sh, -c, "{probe}"]
  - name: loose
    image: {BUSYBOX}
    command: [sh, -c, "{probe}"]
  - name: ram
    image: {BUSYBOX}
    command: [sh, -c, "grep ' /cache ' /proc/mounts; dd if=/dev/zero of=/cache/f bs=1M count=5 2>&1 || echo write-refused"]
    volumeMounts:
    - {{name: cache, mountPath: /cache}}
    - {{name: made, mountPath: /made}}
  - name: expand
    image: {BUSYBOX}
    env:
    - {{name: A, value: hello}}
    - {{name: B, value: "$(A)-world"}}
    command: [echo, "$(B)", "$$(B)", "$(MISSING)"]
  volumes:
  - name: cache
    emptyDir: {{medium: Memory, sizeLimit: 4Mi}}
  - name: made
    hostPath: {{path: {made}, type: DirectoryOrCreate}}
"#,
        made = made.display()
    ));
    let s = env.wait_status("every container done", "fidelity", |s| {
        phase(s) == "Succeeded" || phase(s) == "Failed"
    });
    assert_eq!(phase(&s), "Succeeded", "{s}");

    let strict = env.logs("fidelity", "strict");
    assert!(
        strict.contains("Seccomp:\t2"),
        "a filter applies:\n{strict}"
    );
    assert!(strict.contains("unshare-denied"), "{strict}");
    let loose = env.logs("fidelity", "loose");
    assert!(
        loose.contains("Seccomp:\t0"),
        "unset is Unconfined:\n{loose}"
    );
    // The same call without the filter: what refused it was seccomp.
    assert!(loose.contains("unshare-allowed"), "{loose}");

    let ram = env.logs("fidelity", "ram");
    assert!(ram.contains("tmpfs /cache tmpfs"), "{ram}");
    assert!(ram.contains("size=4096k"), "{ram}");
    assert!(ram.contains("No space left on device"), "{ram}");
    assert!(made.is_dir(), "DirectoryOrCreate made {}", made.display());

    let expand = env.logs("fidelity", "expand");
    assert!(expand.contains("hello-world $(B) $(MISSING)"), "{expand}");

    // A hostPath that must be a file and is missing: the container waits
    // with the kubelet's reason and message, and nothing runs.
    let missing = env.dir.path().join("host/no-such-file");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hostpath-file}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
    volumeMounts: [{{name: f, mountPath: /f}}]
  volumes:
  - name: f
    hostPath: {{path: {missing}, type: File}}
"#,
        missing = missing.display()
    ));
    let s = env.wait_status(
        "the container waits on its hostPath",
        "hostpath-file",
        |s| named(s, "app")["state"]["Waiting"]["reason"] == "CreateContainerConfigError",
    );
    let message = named(&s, "app")["state"]["Waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        message,
        format!(
            "MountVolume.SetUp failed for volume \"f\" : hostPath type check failed: {} is not a file",
            missing.display()
        )
    );

    // Deleting the pod unmounts its tmpfs.
    env.cli_ok(&["delete", "pod", "fidelity"]);
    wait_until("pod status removed", WAIT, || {
        env.status("fidelity").is_none().then_some(())
    });
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    let data = env.dir.path().join("data").display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&data)),
        "a tmpfs of the pod is still mounted:\n{mounts}"
    );
}

/// Lifecycle hooks and env status fields, the kubelet's way: a postStart
/// exec hook runs in the container before it reads Running (the container
/// sees what the hook made); a failing one kills the container, which is
/// restarted with a `FailedPostStartHook` event and never reads Running; a
/// preStop hook runs before the stop signal; `status.podIP` in env is the
/// pod's IP.
#[test]
fn lifecycle_hooks_run_around_the_container_and_env_reads_the_pod_ip() {
    let Some(env) = CriEnv::for_test(
        "lifecycle_hooks_run_around_the_container_and_env_reads_the_pod_ip",
        "gw-cri-hooks",
    ) else {
        return;
    };
    let events = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/events", env.node),
        None,
    );
    let reported = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/reported/default/badhook", env.node),
        None,
    );
    let out = env.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir out");
    // The app waits for what its postStart hook writes inside the
    // container, and appends to `order` when it gets SIGTERM; the preStop
    // hook appends to `order` first.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: {BUSYBOX}
    env:
    - name: MY_POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: MY_HOST_IP
      valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}
    - name: ADDR
      value: "$(MY_POD_IP):8080"
    command:
    - sh
    - -c
    - |
      trap 'echo term >> /out/order; exit 0' TERM
      echo "$MY_POD_IP" > /out/pod_ip
      echo "$ADDR" > /out/addr
      while [ ! -f /tmp/hook-ran ]; do sleep 0.1; done
      cat /tmp/hook-ran > /out/saw
      while true; do sleep 0.2; done
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, "echo made-by-post-start > /tmp/hook-ran"]}}
      preStop:
        exec: {{command: [sh, -c, "echo pre-stop >> /out/order"]}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - name: out
    hostPath: {{path: {out}}}
"#,
        out = out.display()
    ));
    let s = env.wait_status("running", "hooks", |s| {
        phase(s) == "Running" && all_running(s)
    });
    wait_until("the container saw the hook's file", WAIT, || {
        std::fs::read_to_string(out.join("saw"))
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert_eq!(
        std::fs::read_to_string(out.join("saw"))
            .expect("saw")
            .trim(),
        "made-by-post-start"
    );
    let pod_ip = s["pod_ip"].as_str().expect("a pod ip").to_string();
    assert!(!pod_ip.is_empty(), "{s}");
    assert_eq!(
        std::fs::read_to_string(out.join("pod_ip"))
            .expect("pod_ip")
            .trim(),
        pod_ip
    );
    assert_eq!(
        std::fs::read_to_string(out.join("addr"))
            .expect("addr")
            .trim(),
        format!("{pod_ip}:8080")
    );

    // preStop runs before the stop signal.
    env.cli_ok(&["delete", "pod", "hooks"]);
    wait_until("pod status removed", WAIT, || {
        env.status("hooks").is_none().then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(out.join("order")).expect("order"),
        "pre-stop\nterm\n"
    );

    // A failing postStart hook: killed, restarted, an event, never Running.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, "echo no-good; exit 3"]}}
"#
    ));
    let s = env.wait_status("restarted after its hook failed", "badhook", |s| {
        named(s, "app")["restart_count"].as_u64().unwrap_or(0) >= 1
            && named(s, "app")["last_state"]["Terminated"].is_object()
    });
    let message = named(&s, "app")["last_state"]["Terminated"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("Exec lifecycle hook ([\"sh\", \"-c\", \"echo no-good; exit 3\"]) for Container \"app\" in Pod \"badhook_default(")
            && message.contains("exited with 3: no-good"),
        "{message}"
    );
    events.wait_for("FailedPostStartHook event", WAIT, |_, p| {
        matches!(kedge::wire::decode(p).map(|e| e.message),
            Ok(kedge::wire::Message::Event(e)) if e.reason == "FailedPostStartHook"
                && e.message == "PostStartHook failed" && e.pod.as_deref() == Some("badhook"))
    });
    let all = statuses(&reported);
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|s| s.container_statuses.iter().all(|c| {
            !matches!(c.state, kedge::model::ContainerState::Running { .. }) && !c.ready
        })),
        "the container read Running with a failed postStart hook: {all:?}"
    );
}

/// The message of a terminated container, the kubelet's way: what it wrote
/// to its `terminationMessagePath` (the default `/dev/termination-log`, or
/// its own), else with `FallbackToLogsOnError` the end of its log when it
/// failed.
#[test]
fn termination_messages_come_from_the_file_or_the_log() {
    let Some(env) = CriEnv::for_test(
        "termination_messages_come_from_the_file_or_the_log",
        "gw-cri-lastwords",
    ) else {
        return;
    };
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: lastwords}}
spec:
  restartPolicy: Never
  containers:
  - name: default-path
    image: {BUSYBOX}
    command: [sh, -c, "printf 'all done' > /dev/termination-log"]
  - name: own-path
    image: {BUSYBOX}
    terminationMessagePath: /tmp/why
    securityContext: {{runAsUser: 1000}}
    command: [sh, -c, "printf 'disk full' > /tmp/why; exit 4"]
  - name: from-log
    image: {BUSYBOX}
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "echo first; echo 'it broke'; exit 1"]
"#
    ));
    let s = env.wait_status("every container ended", "lastwords", |s| {
        phase(s) == "Failed"
            && s["container_statuses"]
                .as_array()
                .is_some_and(|a| a.iter().all(|c| c["state"]["Terminated"].is_object()))
    });
    let message = |name: &str| {
        named(&s, name)["state"]["Terminated"]["message"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(message("default-path").as_deref(), Some("all done"), "{s}");
    assert_eq!(message("own-path").as_deref(), Some("disk full"), "{s}");
    assert_eq!(
        message("from-log").as_deref(),
        Some("first\nit broke\n"),
        "{s}"
    );
}

/// `shareProcessNamespace`, `hostPID`, `fsGroup` and `supplementalGroups`
/// against the real containerd: the container's PID 1 is the pod's pause
/// process (or the node's PID 1), its processes have both groups, and the
/// emptyDir belongs to the fsGroup (setgid, so what the pod makes there
/// does too).
#[test]
fn process_namespaces_and_groups_are_the_pods() {
    let Some(env) = CriEnv::for_test(
        "process_namespaces_and_groups_are_the_pods",
        "gw-cri-groups",
    ) else {
        return;
    };
    let out = env.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir out");
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: shared}}
spec:
  shareProcessNamespace: true
  securityContext: {{fsGroup: 2000, supplementalGroups: [3000]}}
  containers:
  - name: app
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - |
      id -G > /out/groups.tmp && mv /out/groups.tmp /out/groups
      cat /proc/1/comm > /out/pid1.tmp && mv /out/pid1.tmp /out/pid1
      touch /data/made
      stat -c '%g %a' /data > /out/data.tmp && mv /out/data.tmp /out/data
      stat -c '%g' /data/made > /out/made.tmp && mv /out/made.tmp /out/made
      while true; do sleep 1; done
    volumeMounts: [{{name: out, mountPath: /out}}, {{name: data, mountPath: /data}}]
  volumes:
  - name: out
    hostPath: {{path: {out}}}
  - name: data
    emptyDir: {{}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostpid}}
spec:
  hostPID: true
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "cat /proc/1/comm > /out/host.tmp && mv /out/host.tmp /out/host_pid1; while true; do sleep 1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - name: out
    hostPath: {{path: {out}}}
"#,
        out = out.display()
    ));
    let read = |name: &str| {
        wait_until(&format!("the container wrote {name}"), WAIT, || {
            std::fs::read_to_string(out.join(name)).ok()
        })
        .trim()
        .to_string()
    };
    let groups = read("groups");
    let groups: Vec<&str> = groups.split_whitespace().collect();
    assert!(
        groups.contains(&"2000") && groups.contains(&"3000"),
        "{groups:?}"
    );
    // One PID namespace: PID 1 is the sandbox's pause process, which in
    // these tests' pause image is busybox `sleep` (alone, it would be `sh`).
    assert_eq!(read("pid1"), "sleep", "one PID namespace: the sandbox's");
    assert_eq!(
        read("data"),
        "2000 2775",
        "the emptyDir is the fsGroup's, setgid"
    );
    assert_eq!(read("made"), "2000", "what the pod makes there too");
    let host_init = std::fs::read_to_string("/proc/1/comm").expect("the node's PID 1");
    assert_eq!(
        read("host_pid1"),
        host_init.trim(),
        "hostPID: the node's PID 1"
    );
}

/// A pod's DNS is the kubelet's on a node without cluster DNS: the default
/// `ClusterFirst` falls back to the node's resolver configuration
/// (`cri.resolv_conf`) with a `MissingClusterDNS` event, `None` is the
/// pod's `dnsConfig` alone, which is otherwise merged in. An SELinux label
/// and the relabelling of its volumes pass through to containerd, which
/// applies neither on a node without SELinux, as under a kubelet.
#[test]
fn a_pods_resolv_conf_is_the_kubelets_and_selinux_labels_pass_through() {
    let test = "a_pods_resolv_conf_is_the_kubelets_and_selinux_labels_pass_through";
    if !cri_tests_can_run(test) {
        return;
    }
    let node_dns = tempfile::tempdir().expect("tempdir");
    let resolv_conf = node_dns.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "# the node's\nsearch lan.example\nnameserver 192.0.2.10\noptions ndots:3 timeout:2\n",
    )
    .expect("write resolv.conf");
    let env = CriEnv::start_with(
        "gw-cri-dns",
        &[format!("cri.resolv_conf={}", resolv_conf.display())],
    );
    let events = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/events", env.node),
        None,
    );
    let out = env.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir out");
    let pod = |name: &str, spec: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
{spec}
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "touch /data/x && cp /etc/resolv.conf /out/{name}.tmp && mv /out/{name}.tmp /out/{name}; exec sleep 3600"]
    volumeMounts: [{{name: out, mountPath: /out}}, {{name: data, mountPath: /data}}]
  volumes:
  - name: out
    hostPath: {{path: {out}}}
  - name: data
    emptyDir: {{}}
"#,
            out = out.display()
        )
    };
    env.apply(&pod("cluster", "  dnsPolicy: ClusterFirst"));
    env.apply(&pod(
        "merged",
        "  dnsPolicy: Default
  dnsConfig:
    nameservers: [192.0.2.53]
    searches: [factory.example]
    options: [{name: ndots, value: \"1\"}]",
    ));
    env.apply(&pod(
        "alone",
        "  dnsPolicy: None
  dnsConfig: {nameservers: [192.0.2.53], searches: [factory.example]}
  securityContext: {seLinuxOptions: {level: \"s0:c1,c2\"}}",
    ));
    let read = |name: &str| {
        let text = wait_until(&format!("{name} wrote its resolv.conf"), WAIT, || {
            std::fs::read_to_string(out.join(name)).ok()
        });
        let c = kedge::runtime::cri::dns::parse_resolv_conf(&text);
        (c.servers, c.searches, c.options)
    };
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        read("cluster"),
        (
            own(&["192.0.2.10"]),
            own(&["lan.example"]),
            own(&["ndots:3", "timeout:2"])
        )
    );
    assert_eq!(
        read("merged"),
        (
            own(&["192.0.2.10", "192.0.2.53"]),
            own(&["lan.example", "factory.example"]),
            own(&["ndots:1", "timeout:2"])
        )
    );
    assert_eq!(
        read("alone"),
        (own(&["192.0.2.53"]), own(&["factory.example"]), own(&[]))
    );
    events.wait_for("MissingClusterDNS event", WAIT, |_, p| {
        matches!(kedge::wire::decode(p).map(|e| e.message),
            Ok(kedge::wire::Message::Event(e)) if e.reason == "MissingClusterDNS"
                && e.pod.as_deref() == Some("cluster")
                && e.message.ends_with("kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."))
    });
}

/// `runAsNonRoot` without a `runAsUser` against the real containerd: the
/// agent reads the image's user (CRI `ImageStatus`) as the kubelet does.
/// The test busybox image names no user, so it runs as root: the container
/// waits in `CreateContainerConfigError` with the kubelet's message, and
/// runs once a non-root `runAsUser` is given.
#[test]
fn run_as_non_root_checks_the_images_user() {
    let Some(env) = CriEnv::for_test("run_as_non_root_checks_the_images_user", "gw-cri-nonroot")
    else {
        return;
    };
    let pod = |name: &str, user: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  securityContext: {{runAsNonRoot: true{user}}}
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "while true; do sleep 1; done"]
"#
        )
    };
    env.apply(&pod("rooted", ""));
    let s = env.wait_status("the container refused as root", "rooted", |s| {
        named(s, "app")["state"]["Waiting"]["reason"] == "CreateContainerConfigError"
    });
    assert_eq!(
        named(&s, "app")["state"]["Waiting"]["message"],
        "container has runAsNonRoot and image will run as root (pod: \"default/rooted\", container: app)",
        "{s}"
    );
    env.apply(&pod("user", ", runAsUser: 1000"));
    env.wait_status("a non-root user runs", "user", |s| {
        phase(s) == "Running" && all_running(s)
    });
}

/// A gRPC readiness probe against a real gRPC health server (tonic-health,
/// in this test, on a free port of every address) from a host-network pod
/// in the real containerd: the pod is Ready only while the service answers
/// SERVING, as with a kubelet.
#[test]
fn a_grpc_probe_drives_readiness() {
    use tonic_health::ServingStatus;
    let Some(env) = CriEnv::for_test("a_grpc_probe_drives_readiness", "gw-cri-grpc") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (reporter, port) = rt.block_on(async {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("sensor", ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (reporter, port)
    });
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: grpc}}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "while true; do sleep 1; done"]
    readinessProbe:
      grpc: {{port: {port}, service: sensor}}
      periodSeconds: 1
"#
    ));
    let s = env.wait_status("running, not serving", "grpc", |s| {
        phase(s) == "Running" && all_running(s)
    });
    assert_eq!(condition(&s, "Ready"), Some(false), "{s}");
    rt.block_on(reporter.set_service_status("sensor", ServingStatus::Serving));
    env.wait_status("ready while serving", "grpc", |s| {
        condition(s, "Ready") == Some(true)
    });
    rt.block_on(reporter.set_service_status("sensor", ServingStatus::NotServing));
    env.wait_status("not ready again", "grpc", |s| {
        condition(s, "Ready") == Some(false)
    });
}

fn init_named<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["init_container_statuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Native sidecars (`restartPolicy: Always` on an init container) against
/// the real containerd: the init container after the sidecar starts while
/// the sidecar runs (it waits for what the sidecar serves on localhost),
/// the app container starts after it, the sidecar keeps running beside the
/// app; in a Job-like pod (`restartPolicy: Never`) the sidecar is stopped
/// once the app container has ended and the pod succeeds.
#[test]
fn native_sidecars_run_beside_the_app_and_stop_after_it() {
    let Some(env) = CriEnv::for_test(
        "native_sidecars_run_beside_the_app_and_stop_after_it",
        "gw-cri-sidecar",
    ) else {
        return;
    };
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: meshed}}
spec:
  initContainers:
  - name: proxy
    image: {BUSYBOX}
    restartPolicy: Always
    command: [sh, -c, "mkdir -p /www && echo from-the-sidecar > /www/index.html && exec httpd -f -p 8081 -h /www"]
    startupProbe: {{tcpSocket: {{port: 8081}}, periodSeconds: 1}}
  - name: wait-for-proxy
    image: {BUSYBOX}
    command: [sh, -c, "wget -qO- http://127.0.0.1:8081/"]
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "wget -qO- http://127.0.0.1:8081/; exec sleep 3600"]
"#
    ));
    let s = env.wait_status("the app running beside its sidecar", "meshed", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let proxy = init_named(&s, "proxy");
    assert!(proxy["state"]["Running"].is_object(), "{s}");
    assert_eq!(proxy["started"], true, "{s}");
    assert_eq!(proxy["ready"], true, "{s}");
    assert_eq!(
        init_named(&s, "wait-for-proxy")["state"]["Terminated"]["exit_code"],
        0,
        "{s}"
    );
    assert_eq!(condition(&s, "Ready"), Some(true), "{s}");
    assert!(
        env.logs("meshed", "wait-for-proxy")
            .contains("from-the-sidecar")
    );
    wait_until("the app read the sidecar", WAIT, || {
        env.logs("meshed", "app")
            .contains("from-the-sidecar")
            .then_some(())
    });
    let shown = env.cli_ok(&["get", "pods"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("meshed") && l.contains("Running")),
        "{shown}"
    );
    env.cli_ok(&["delete", "pod", "meshed"]);

    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: batch}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: shipper
    image: {BUSYBOX}
    restartPolicy: Always
    command: [sh, -c, "trap 'echo shipper-stopping; exit 0' TERM; while true; do sleep 0.1; done"]
  containers:
  - name: job
    image: {BUSYBOX}
    command: [sh, -c, "echo job-done"]
"#
    ));
    let s = env.wait_status("the job done and its sidecar stopped", "batch", |s| {
        phase(s) == "Succeeded"
    });
    let shipper = init_named(&s, "shipper");
    assert!(shipper["state"]["Terminated"].is_object(), "{s}");
    assert_eq!(shipper["restart_count"], 0, "stopped, not restarted: {s}");
    assert_eq!(
        named(&s, "job")["state"]["Terminated"]["exit_code"],
        0,
        "{s}"
    );
    assert!(env.logs("batch", "shipper").contains("shipper-stopping"));
}

/// A ConfigMap that changes (`kedge apply -f` of the same file with a new
/// value) updates the mounted file in place, as a kubelet does: the
/// container, which reads the file in a loop, sees the new value with no
/// restart (the same container id, no restart counted).
#[test]
fn a_changed_config_map_updates_the_mounted_files_in_place() {
    let Some(env) = CriEnv::for_test(
        "a_changed_config_map_updates_the_mounted_files_in_place",
        "gw-cri-reload",
    ) else {
        return;
    };
    let manifest = |mode: &str| {
        format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: {mode}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "last=; while true; do m=$(cat /config/mode); if [ \"$m\" != \"$last\" ]; then echo mode=$m; last=$m; fi; sleep 0.2; done"]
    volumeMounts: [{{name: config, mountPath: /config}}]
  volumes:
  - name: config
    configMap: {{name: settings}}
"#
        )
    };
    env.apply(&manifest("fast"));
    let before = env.wait_status("the reader running", "reader", |s| {
        phase(s) == "Running" && all_running(s)
    });
    wait_until("the first value read", WAIT, || {
        env.logs("reader", "app")
            .contains("mode=fast")
            .then_some(())
    });
    env.apply(&manifest("slow"));
    wait_until("the new value read in place", WAIT, || {
        env.logs("reader", "app")
            .contains("mode=slow")
            .then_some(())
    });
    let after = env.wait_status("generation 2 observed", "reader", |s| {
        s["observed_generation"] == 2
    });
    let app = |s: &Value| named(s, "app").clone();
    assert_eq!(
        app(&after)["container_id"],
        app(&before)["container_id"],
        "{after}"
    );
    assert_eq!(app(&after)["restart_count"], 0, "{after}");
    assert!(app(&after)["state"]["Running"].is_object(), "{after}");
}

/// A persistent volume claim against the real containerd: what a pod
/// writes to its claim is there for the next pod that names the claim (a
/// new uid, after the first was deleted), in a directory of the device's
/// that the delete left alone; a `readOnly` claim cannot be written.
#[test]
fn a_claims_data_outlives_its_pod() {
    let Some(env) = CriEnv::for_test("a_claims_data_outlives_its_pod", "gw-cri-claim") else {
        return;
    };
    let pod = |name: &str, command: &str, read_only: bool| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "{command}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: counter, readOnly: {read_only}}}
"#
        )
    };
    env.apply(&pod(
        "writer",
        "echo first-pod-was-here > /data/note",
        false,
    ));
    env.wait_status("the writer done", "writer", |s| phase(s) == "Succeeded");
    env.cli_ok(&["delete", "pod", "writer"]);
    wait_until("the writer gone", WAIT, || {
        env.status("writer").is_none().then_some(())
    });
    let claim = env.dir.path().join("data/claims/default/counter/note");
    assert_eq!(
        std::fs::read_to_string(&claim).expect("the claim's file on the device"),
        "first-pod-was-here\n"
    );
    env.apply(&pod(
        "reader",
        "cat /data/note; if echo x > /data/other; then echo writable; else echo read-only; fi",
        true,
    ));
    env.wait_status("the reader done", "reader", |s| phase(s) == "Succeeded");
    let logs = env.logs("reader", "app");
    assert!(logs.contains("first-pod-was-here"), "{logs}");
    assert!(logs.contains("read-only"), "{logs}");
}

/// Mounts made for a test, undone (lazily, innermost first) when it ends,
/// whatever happened.
struct Mounts(Vec<std::path::PathBuf>);

impl Mounts {
    fn run(&mut self, args: &[&str], target: &std::path::Path) {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount {args:?}: {out:?}");
        self.0.push(target.to_path_buf());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(target)
                .status();
        }
    }
}

/// `mountPropagation: HostToContainer` against the real containerd: a file
/// system the node mounts below a hostPath after the container started
/// appears in the container (rslave), as with the kubelet.
#[test]
fn host_mounts_propagate_into_a_container_that_asks() {
    let Some(env) = CriEnv::for_test(
        "host_mounts_propagate_into_a_container_that_asks",
        "gw-cri-propagation",
    ) else {
        return;
    };
    let shared = env.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    let mut mounts = Mounts(Vec::new());
    // Propagation needs a shared mount at the source, as a node's is.
    mounts.run(&["--bind", shared.to_str().expect("utf8")], &shared);
    mounts.run(&["--make-shared"], &shared);
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: watcher}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "until [ -e /host/late/hello ]; do sleep 0.2; done; echo saw-the-late-mount; exec sleep 3600"]
    volumeMounts: [{{name: host, mountPath: /host, mountPropagation: HostToContainer}}]
  volumes:
  - name: host
    hostPath: {{path: {}, type: Directory}}
"#,
        shared.display()
    ));
    env.wait_status("the watcher running", "watcher", |s| {
        phase(s) == "Running" && all_running(s)
    });
    let late = shared.join("late");
    std::fs::create_dir_all(&late).expect("mkdir");
    mounts.run(&["-t", "tmpfs", "tmpfs"], &late);
    std::fs::write(late.join("hello"), "hi").expect("write");
    wait_until("the container saw the node's new mount", WAIT, || {
        env.logs("watcher", "app")
            .contains("saw-the-late-mount")
            .then_some(())
    });
    env.cli_ok(&["delete", "pod", "watcher"]);
    wait_until("the watcher gone", WAIT, || {
        env.status("watcher").is_none().then_some(())
    });
}

/// Fleets, no gap, through the real containerd: a fleet pod's next
/// revision gets a sandbox of its own beside the running one (both run at
/// once), the old one goes only once the new one has been ready for
/// `--min-ready`, and a killed agent adopts the new instance.
#[test]
fn a_fleet_pods_next_revision_runs_beside_the_old_one_until_it_is_ready() {
    if !cri_tests_can_run("a_fleet_pods_next_revision_runs_beside_the_old_one_until_it_is_ready") {
        return;
    }
    let mut env = CriEnv::start_with("gw-cri-fleet", &["node.labels=app=probe".into()]);
    let manifest = |text: &str| {
        let path = env
            .dir
            .path()
            .join(format!("m-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &path,
            format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: probe}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "echo {text}; exec sleep 3600"]
"#
            ),
        )
        .expect("write manifest");
        path.display().to_string()
    };
    let rollout = |file: &str| {
        vec![
            "apply".to_string(),
            "-f".into(),
            file.into(),
            "--selector".into(),
            "app=probe".into(),
            "--min-ready".into(),
            "3s".into(),
            "--wait".into(),
        ]
    };
    let v1 = manifest("revision-one");
    let args = rollout(&v1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.cli_ok(&args);
    env.wait_status("revision 1 running", "probe", |s| {
        phase(s) == "Running" && all_running(s) && s["observed_generation"] == 1
    });
    let first = env.containerd.container_ids_of_pod("probe");
    assert_eq!(
        first.len(),
        2,
        "a sandbox and its container: {first:?}\n{}",
        tail(&env.agent.log(), 80)
    );

    // Revision 2, applied in the background while containerd is watched.
    let v2 = manifest("revision-two");
    let args = rollout(&v2);
    let url = env.broker.url();
    let apply = std::thread::spawn(move || {
        let mut all = vec!["--broker".to_string(), url];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        kedge(&all)
    });
    let both = wait_until("both revisions' sandboxes at once", WAIT, || {
        let ids = env.containerd.container_ids_of_pod("probe");
        (ids.len() == 4 && first.iter().all(|id| ids.contains(id))).then_some(ids)
    });
    let out = apply.join().expect("apply thread");
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&env.agent.log(), 60)
    );
    let after = env.wait_status("revision 2 running", "probe", |s| {
        phase(s) == "Running" && all_running(s) && s["observed_generation"] == 2
    });
    wait_until("revision 1's sandbox removed", WAIT, || {
        let ids = env.containerd.container_ids_of_pod("probe");
        (ids.len() == 2).then_some(())
    });
    let second = env.containerd.container_ids_of_pod("probe");
    assert!(
        second
            .iter()
            .all(|id| both.contains(id) && !first.contains(id)),
        "revision 2's own sandbox and container remain: {second:?}"
    );
    assert!(env.logs("probe", "main").contains("revision-two"));
    let id = named(&after, "main")["container_id"].clone();

    // A killed agent finds revision 2's instance again.
    env.agent.kill9();
    env.agent = start_agent(
        &env.node,
        &env.broker,
        &env.containerd,
        env.dir.path(),
        &["node.labels=app=probe".into()],
    );
    wait_until("the new agent adopted revision 2", WAIT, || {
        env.agent
            .log()
            .lines()
            .any(|l| l.contains("container started") && l.contains("adopted=true"))
            .then_some(())
    });
    let adopted = env.wait_status("revision 2 running after the restart", "probe", |s| {
        phase(s) == "Running" && all_running(s)
    });
    assert_eq!(named(&adopted, "main")["container_id"], id, "{adopted}");
    assert_eq!(named(&adopted, "main")["restart_count"], 0, "{adopted}");
    assert_eq!(env.containerd.container_ids_of_pod("probe"), second);
}

/// Local storage limits against the real containerd, as the kubelet's
/// eviction manager enforces them: a container that writes past its
/// emptyDir's `sizeLimit` gets its pod evicted (containers stopped, phase
/// `Failed`, reason `Evicted`, the kubelet's message, a Warning event), and
/// is not restarted. The agent measures every 200 ms here
/// (`node.eviction_monitoring_ms`).
#[test]
fn a_container_writing_past_its_empty_dir_size_limit_is_evicted() {
    if !cri_tests_can_run("a_container_writing_past_its_empty_dir_size_limit_is_evicted") {
        return;
    }
    let env = CriEnv::start_with(
        "gw-cri-evict",
        &["node.eviction_monitoring_ms=200".to_string()],
    );
    let events = Subscriber::start(
        &env.broker.url(),
        &format!("kedge/v1/{}/events", env.node),
        None,
    );
    // 1 MiB allowed; the app writes 4 MiB, then waits to be stopped.
    env.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "echo writing; head -c 4194304 /dev/zero > /cache/blob; echo written; while true; do sleep 1; done"]
    resources:
      limits: {{ephemeral-storage: 64Mi}}
    volumeMounts: [{{name: cache, mountPath: /cache}}]
  volumes:
  - name: cache
    emptyDir: {{sizeLimit: 1Mi}}
"#
    ));
    let evicted = env.wait_status("the pod evicted", "hog", |s| {
        phase(s) == "Failed" && named(s, "app")["state"]["Terminated"].is_object()
    });
    assert_eq!(evicted["reason"], "Evicted", "{evicted}");
    assert_eq!(
        evicted["message"], "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ",
        "{evicted}"
    );
    assert_eq!(named(&evicted, "app")["restart_count"], 0, "{evicted}");
    // It ran and wrote (eviction may come before its "written": the
    // usage passes the limit while `head` is still writing).
    assert!(env.logs("hog", "app").contains("writing"));
    events.wait_for("Evicted event", WAIT, |_, p| {
        matches!(kedge::wire::decode(p).map(|e| e.message),
            Ok(kedge::wire::Message::Event(e)) if e.reason == "Evicted"
                && e.kind == kedge::model::EventType::Warning
                && e.message == "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". "
                && e.pod.as_deref() == Some("hog"))
    });
}

/// Env read from a ConfigMap is left alone when the ConfigMap changes, as
/// the kubelet leaves it, against the real containerd: the new generation
/// is observed without a restart (same container, restart count 0), and
/// the container's next start, after it exited, gets the new value.
#[test]
fn env_from_a_changed_config_map_reaches_the_container_at_its_next_start() {
    let Some(env) = CriEnv::for_test(
        "env_from_a_changed_config_map_reaches_the_container_at_its_next_start",
        "gw-cri-envcm",
    ) else {
        return;
    };
    let trigger = env.dir.path().join("trigger");
    std::fs::create_dir_all(&trigger).expect("mkdir trigger");
    let manifest = |level: &str| {
        format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{level: {level}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envreader}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "echo level=$LEVEL; while [ ! -f /trigger/exit ]; do sleep 0.2; done; rm /trigger/exit; exit 1"]
    env:
    - name: LEVEL
      valueFrom: {{configMapKeyRef: {{name: settings, key: level}}}}
    volumeMounts: [{{name: trigger, mountPath: /trigger}}]
  volumes:
  - name: trigger
    hostPath: {{path: {}, type: Directory}}
"#,
            trigger.display()
        )
    };
    env.apply(&manifest("debug"));
    let before = env.wait_status("the reader running", "envreader", |s| {
        phase(s) == "Running" && all_running(s)
    });
    wait_until("the first value printed", WAIT, || {
        env.logs("envreader", "app")
            .contains("level=debug")
            .then_some(())
    });
    env.apply(&manifest("info"));
    let after = env.wait_status("generation 2 observed", "envreader", |s| {
        s["observed_generation"] == 2
    });
    let app = |s: &Value| named(s, "app").clone();
    assert_eq!(
        app(&after)["container_id"],
        app(&before)["container_id"],
        "not restarted: {after}"
    );
    assert_eq!(app(&after)["restart_count"], 0, "{after}");
    assert!(app(&after)["state"]["Running"].is_object(), "{after}");
    assert!(!env.logs("envreader", "app").contains("level=info"));
    // The container exits (its own doing); its restart reads the new value.
    std::fs::write(trigger.join("exit"), b"").expect("write trigger");
    let restarted = env.wait_status("the reader restarted", "envreader", |s| {
        app(s)["restart_count"] == 1 && all_running(s)
    });
    assert_eq!(restarted["observed_generation"], 2, "{restarted}");
    wait_until("the new value printed after the restart", WAIT, || {
        env.logs("envreader", "app")
            .contains("level=info")
            .then_some(())
    });
    let previous = env.cli_ok(&["logs", "envreader", "-c", "app", "--previous"]);
    assert!(previous.contains("level=debug"), "{previous}");
}
