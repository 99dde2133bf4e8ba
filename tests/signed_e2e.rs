//! Signed desired state end to end (docs/keys.md, docs/wire.md
//! "Signatures"): a real Mosquitto, real agents configured with trusted
//! keys, the CLI signing with `--signing-key`, and a client without the key
//! publishing straight to the broker.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kedge::model::{DesiredIndex, Event, PodSpec};
use kedge::wire::{self, Message};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// `kedge keys generate --out DIR/NAME.pem`: the key file and the public
/// key line it printed.
fn generate_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.pem"));
    let public = kedge_ok(&["keys", "generate", "--out", path.to_str().expect("utf8")]);
    let public = public.trim().to_string();
    assert_eq!(
        kedge_ok(&["keys", "public", path.to_str().expect("utf8")]).trim(),
        public
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
    (path, public)
}

struct Env {
    broker: Mosquitto,
    agent: Agent,
    dir: tempfile::TempDir,
    node: String,
    /// `--set trust.keys=…` for the agent (empty: none).
    trust_keys: String,
}

impl Env {
    fn start(node: &str, dir: tempfile::TempDir, trust_keys: &str) -> Env {
        let broker = Mosquitto::start();
        let agent = start_agent(&broker, dir.path(), node, trust_keys);
        Env {
            broker,
            agent,
            dir,
            node: node.into(),
            trust_keys: trust_keys.into(),
        }
    }

    fn restart_agent(&mut self) {
        self.agent.kill9();
        self.agent = start_agent(&self.broker, self.dir.path(), &self.node, &self.trust_keys);
    }

    /// `kedge apply` of `yaml` to the node, signed with `key` if given.
    fn apply(&self, key: Option<&Path>, yaml: &str) -> String {
        let path = self
            .dir
            .path()
            .join(format!("m-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, yaml).expect("write manifest");
        let mut args = vec![
            "apply",
            "-f",
            path.to_str().expect("utf8"),
            "--node",
            &self.node,
        ];
        let key = key.map(|k| k.to_str().expect("utf8").to_string());
        if let Some(k) = &key {
            args.extend(["--signing-key", k.as_str()]);
        }
        kedge_on_ok(&self.broker, &self.agent, &args)
    }

    fn delete(&self, key: Option<&Path>, name: &str) -> String {
        let mut args = vec!["delete", "pod", name, "--node", &self.node];
        let key = key.map(|k| k.to_str().expect("utf8").to_string());
        if let Some(k) = &key {
            args.extend(["--signing-key", k.as_str()]);
        }
        kedge_on_ok(&self.broker, &self.agent, &args)
    }

    fn status(&self, name: &str) -> Option<Value> {
        pod_status(&self.broker.url(), name)
    }

    fn wait_status(&self, what: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, WAIT, || self.status(name).filter(|s| pred(s)))
    }

    fn desired_topic(&self, name: &str) -> String {
        format!("kedge/v1/{}/desired/default/{name}", self.node)
    }

    /// The retained payload on `topic` (None: nothing retained).
    fn retained(&self, topic: &str) -> Option<Vec<u8>> {
        let sub = Subscriber::start(&self.broker.url(), topic, None);
        sub.messages()
            .into_iter()
            .find(|(t, p)| t == topic && !p.is_empty())
            .map(|(_, p)| p)
    }

    /// `kedge logs`: log requests are signed too (with `key`).
    fn logs(&self, key: Option<&Path>, name: &str) -> String {
        let mut args = vec!["logs", name, "--node", &self.node];
        let key = key.map(|k| k.to_str().expect("utf8").to_string());
        if let Some(k) = &key {
            args.extend(["--signing-key", k.as_str()]);
        }
        kedge_on_ok(&self.broker, &self.agent, &args)
    }
}

fn start_agent(broker: &Mosquitto, dir: &Path, node: &str, trust_keys: &str) -> Agent {
    let mut extra_args = fast_args();
    if !trust_keys.is_empty() {
        extra_args.extend(["--set".to_string(), format!("trust.keys={trust_keys}")]);
    }
    Agent::start(AgentOpts {
        node: node.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.join("data"),
        extra_args,
        env: vec![],
    })
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or_default()
}

fn decode_event(payload: &[u8]) -> Option<Event> {
    match wire::decode(payload).ok()?.message {
        Message::Event(e) => Some(e),
        _ => None,
    }
}

/// Events about `pod` with `reason` received so far.
fn events(sub: &Subscriber, pod: Option<&str>, reason: &str) -> Vec<Event> {
    sub.messages()
        .iter()
        .filter_map(|(_, p)| decode_event(p))
        .filter(|e| e.reason == reason && e.pod.as_deref() == pod)
        .collect()
}

/// Waits for the `n`th event about `pod` with `reason`, and returns it.
fn wait_event(sub: &Subscriber, pod: Option<&str>, reason: &str, n: usize) -> Event {
    wait_until(
        &format!("{n} {reason} event(s) about {pod:?}"),
        WAIT,
        || events(sub, pod, reason).into_iter().nth(n - 1),
    )
}

/// A long-running Wasm pod (its environment carries `VERSION`).
fn ticker(name: &str, version: &str) -> String {
    let env = format!("    env: [{{name: VERSION, value: \"{version}\"}}]\n");
    wasm_pod(
        name,
        &guest_wasm(GuestTarget::P1),
        &["ticker", "0", "100"],
        "Always",
        &env,
    )
}

/// A pod that prints its environment and exits.
fn env_pod(name: &str, version: &str) -> String {
    let env = format!("    env: [{{name: VERSION, value: \"{version}\"}}]\n");
    wasm_pod(name, &guest_wasm(GuestTarget::P1), &["env"], "Never", &env)
}

#[test]
fn a_signing_agent_refuses_what_the_key_did_not_sign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = generate_key(dir.path(), "author");
    let mut env = Env::start("gw-signed", dir, &public);
    let url = env.broker.url();
    let events_sub = Subscriber::start(&url, "kedge/v1/gw-signed/events", None);

    // A signed spec runs; a signed update replaces it.
    assert_eq!(
        env.apply(Some(&key), &env_pod("app", "one")).trim(),
        "pod/app created"
    );
    env.wait_status("app v1 done", "app", |s| phase(s) == "Succeeded");
    let topic = env.desired_topic("app");
    let signed_v1 = env.retained(&topic).expect("the signed spec is retained");
    assert!(wire::open(&signed_v1).expect("opens").signature.is_some());
    assert_eq!(
        env.apply(Some(&key), &env_pod("app", "two")).trim(),
        "pod/app configured"
    );
    let s = env.wait_status("app v2 done", "app", |s| {
        s["observed_generation"] == 2 && phase(s) == "Succeeded"
    });
    let uid = s["uid"].as_str().expect("uid").to_string();
    assert!(env.logs(Some(&key), "app").contains("VERSION=two"));
    // An unsigned log request is refused.
    let out = kedge_on(&env.broker, &["logs", "app", "--node", "gw-signed"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SignatureMissing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed_v2 = env.retained(&topic).expect("retained");

    // 1. A spec from a client without the key (generation 3, same uid): refused.
    let (_, mut forged) = wire::decode_as::<PodSpec>(&signed_v2).expect("decodes");
    forged.generation = 3;
    forged.containers[0].env[0].value = "forged".into();
    let unsigned = wire::encode(3, &Message::DesiredPod(forged)).expect("encodes");
    publish_raw(&url, &topic, &unsigned, true);
    let e = wait_event(&events_sub, Some("app"), "SignatureMissing", 1);
    assert_eq!(e.kind, kedge::model::EventType::Warning);
    assert!(
        e.message
            .contains("refusing the desired spec of pod default/app")
            && e.message.contains("keeps its last accepted spec"),
        "{}",
        e.message
    );

    // 2. The older signed spec replayed: refused, not merely stale.
    publish_raw(&url, &topic, &signed_v1, true);
    let e = wait_event(&events_sub, Some("app"), "SignatureReplayed", 1);
    assert!(e.message.contains("older than"), "{}", e.message);

    // 3. An unsigned tombstone (clearing the retained spec): the pod stays.
    publish_raw(&url, &topic, b"", true);
    let e = wait_event(&events_sub, Some("app"), "SignatureMissing", 2);
    assert!(e.message.contains("refusing the delete"), "{}", e.message);

    // 4. A desired index from a client without the key, listing nothing:
    // read as unreadable, so it deletes nothing.
    let index = wire::encode(0, &Message::DesiredIndex(DesiredIndex::default())).expect("enc");
    publish_raw(&url, "kedge/v1/gw-signed/index/cli", &index, true);
    let e = wait_event(&events_sub, None, "DesiredIndexUnreadable", 1);
    assert!(e.message.contains("SignatureMissing"), "{}", e.message);

    // Through all of it the pod kept its last good spec.
    let s = env.status("app").expect("status");
    assert_eq!(s["uid"], uid.as_str());
    assert_eq!(s["observed_generation"], 2);
    assert_eq!(phase(&s), "Succeeded");
    assert!(!env.logs(Some(&key), "app").contains("forged"));

    // A restart (a new session, every retained message again) is not
    // tricked either: the counters are in the agent's store.
    env.agent.kill9();
    let restarted_from = events(&events_sub, None, "DesiredIndexUnreadable").len();
    env.restart_agent();
    wait_event(
        &events_sub,
        None,
        "DesiredIndexUnreadable",
        restarted_from + 1,
    );
    let s = env.status("app").expect("status");
    assert_eq!(
        (s["observed_generation"].as_u64(), phase(&s)),
        (Some(2), "Succeeded")
    );

    // A signed delete works, and a replay of the signed spec afterwards
    // does not bring the pod back.
    env.delete(Some(&key), "app");
    wait_until("app deleted", WAIT, || {
        env.status("app").is_none().then_some(())
    });
    let replayed_before = events(&events_sub, Some("app"), "SignatureReplayed").len();
    publish_raw(&url, &topic, &signed_v2, true);
    wait_event(
        &events_sub,
        Some("app"),
        "SignatureReplayed",
        replayed_before + 1,
    );
    let s = env.wait_status("refusal reported", "app", |s| {
        s["reason"] == "SignatureReplayed"
    });
    assert_eq!(phase(&s), "Failed");
    assert_eq!(s["uid"], "", "no pod runs: the status of a refused spec");
}

#[test]
fn a_running_pod_keeps_running_when_its_spec_is_forged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = generate_key(dir.path(), "author");
    let env = Env::start("gw-forged", dir, &public);
    let url = env.broker.url();
    let events_sub = Subscriber::start(&url, "kedge/v1/gw-forged/events", None);
    env.apply(Some(&key), &ticker("tick", "good"));
    env.wait_status("tick Running", "tick", |s| phase(s) == "Running");
    // A spec signed by another key (an attacker's own): refused.
    let (other, _) = generate_key(env.dir.path(), "attacker");
    let other_signer = kedge::trust::Signer::load(&other).expect("loads");
    let topic = env.desired_topic("tick");
    let (_, mut spec) =
        wire::decode_as::<PodSpec>(&env.retained(&topic).expect("retained")).expect("spec");
    spec.generation += 1;
    spec.containers[0].env[0].value = "evil".into();
    let payload = other_signer
        .sign_message(&topic, spec.generation, &Message::DesiredPod(spec.clone()))
        .expect("signs");
    publish_raw(&url, &topic, &payload, true);
    let e = wait_event(&events_sub, Some("tick"), "SignatureUntrusted", 1);
    assert!(e.message.contains("does not trust"), "{}", e.message);
    // The author's own signature for another node does not pass either.
    let author = kedge::trust::Signer::load(&key).expect("loads");
    let elsewhere = author
        .sign_message(
            "kedge/v1/gw-other/desired/default/tick",
            spec.generation,
            &Message::DesiredPod(spec),
        )
        .expect("signs");
    publish_raw(&url, &topic, &elsewhere, true);
    let e = wait_event(&events_sub, Some("tick"), "SignatureInvalid", 1);
    assert!(
        e.message.contains("signed for another node"),
        "{}",
        e.message
    );
    let s = env.status("tick").expect("status");
    assert_eq!(
        (s["observed_generation"].as_u64(), phase(&s)),
        (Some(1), "Running")
    );
    assert_eq!(s["container_statuses"][0]["restart_count"], 0);
}

#[test]
fn an_expired_key_is_refused_and_its_successor_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, old_public) = generate_key(dir.path(), "old");
    let (new, new_public) = generate_key(dir.path(), "new");
    let keys = format!("{old_public},expires=2020-01-01T00:00:00Z {new_public}");
    let env = Env::start("gw-rotate", dir, &keys);
    let events_sub = Subscriber::start(&env.broker.url(), "kedge/v1/gw-rotate/events", None);
    env.apply(Some(&old), &env_pod("rotated", "old"));
    let e = wait_event(&events_sub, Some("rotated"), "SignatureUntrusted", 1);
    assert!(
        e.message.contains("trusted until 2020-01-01T00:00:00Z"),
        "{}",
        e.message
    );
    let s = env.wait_status("refused", "rotated", |s| {
        s["reason"] == "SignatureUntrusted"
    });
    assert_eq!(phase(&s), "Failed");
    // The same pod signed with the current key runs.
    env.apply(Some(&new), &env_pod("rotated", "new"));
    env.wait_status("rotated done", "rotated", |s| phase(s) == "Succeeded");
    assert!(env.logs(Some(&new), "rotated").contains("VERSION=new"));
}

#[test]
fn an_agent_without_keys_takes_signed_and_unsigned_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = generate_key(dir.path(), "author");
    let env = Env::start("gw-open", dir, "");
    env.apply(None, &env_pod("plain", "unsigned"));
    env.wait_status("plain done", "plain", |s| phase(s) == "Succeeded");
    env.apply(Some(&key), &env_pod("plain", "signed"));
    env.wait_status("plain v2 done", "plain", |s| {
        s["observed_generation"] == 2 && phase(s) == "Succeeded"
    });
    assert!(env.logs(None, "plain").contains("VERSION=signed"));
    env.delete(None, "plain");
    wait_until("plain deleted", WAIT, || {
        env.status("plain").is_none().then_some(())
    });
    // An unsigned spec as a client of schema version 2 wrote it: the
    // committed version-2 test vector (pod factory/sensor, generation 3;
    // its modules are not on this node, so it only has to be taken).
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v2/desired_pod.hex"),
    )
    .expect("the version 2 vector");
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let v2 = hex::decode(digits).expect("hex");
    assert_eq!(v2[0], 2, "a version 2 envelope");
    let topic = format!("kedge/v1/{}/desired/factory/sensor", env.node);
    publish_raw(&env.broker.url(), &topic, &v2, true);
    env.wait_status("the version 2 spec taken", "sensor", |s| {
        s["observed_generation"] == 3 && s["namespace"] == "factory"
    });
}

// ------------------------------------------------ the documented broker ACL

/// The ```conf block that follows the line containing `after` in
/// docs/wire.md: the test runs the configuration as documented.
fn documented_conf(after: &str) -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/wire.md")).expect("docs/wire.md");
    let from = doc
        .find(after)
        .unwrap_or_else(|| panic!("{after} in docs/wire.md"));
    let rest = &doc[from..];
    let start = rest.find("```conf\n").expect("a conf block") + "```conf\n".len();
    let end = rest[start..].find("```").expect("its end");
    rest[start..start + end].to_string()
}

/// What a test client received: (topic, payload), in order.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// One MQTT connection with a certificate, its event loop polled on a task:
/// what it receives, the SUBACK codes, and whether the broker ever closed it.
struct Client {
    client: rumqttc::AsyncClient,
    got: Received,
    subacks: tokio::sync::mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
    pubacks: tokio::sync::mpsc::UnboundedReceiver<u16>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    async fn connect(broker: &Mosquitto, pki: &Path, cn: &str, client_id: &str) -> Client {
        kedge::tls::install_crypto_provider();
        let url = kedge::config::BrokerUrl::parse(&broker.url()).expect("url");
        let settings = kedge::config::BrokerConfig {
            ca_file: Some(pki.join("ca.pem")),
            cert_file: Some(pki.join(format!("{cn}.pem"))),
            key_file: Some(pki.join(format!("{cn}.key"))),
            ..Default::default()
        };
        let mut opts = kedge::mqtt::mqtt_options(&url, &settings, client_id).expect("options");
        opts.set_clean_session(true);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
        let got: Received = Default::default();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (suback_tx, subacks) = tokio::sync::mpsc::unbounded_channel();
        let (puback_tx, pubacks) = tokio::sync::mpsc::unbounded_channel();
        let (connack_tx, connack) = tokio::sync::oneshot::channel();
        let (g, d) = (got.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut connack_tx = Some(connack_tx);
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = connack_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        g.lock().expect("lock").push((p.topic, p.payload.to_vec()));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => {
                        let _ = suback_tx.send(s.return_codes);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                        let _ = puback_tx.send(a.pkid);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // The broker closed the connection (or refused it):
                        // recorded, and this client stops.
                        d.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, connack)
            .await
            .expect("CONNACK in time")
            .expect("connected");
        Client {
            client,
            got,
            subacks,
            pubacks,
            dropped,
        }
    }

    /// Subscribes and returns the SUBACK's code.
    async fn subscribe(&mut self, filter: &str) -> rumqttc::SubscribeReasonCode {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let codes = tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("SUBACK in time")
            .expect("SUBACK");
        codes[0]
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK (Mosquitto
    /// acknowledges a publish its ACL refuses too, and drops it).
    async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("publish");
        tokio::time::timeout(WAIT, self.pubacks.recv())
            .await
            .expect("PUBACK in time")
            .expect("PUBACK");
    }

    /// Waits until a message on `topic` arrived; returns everything received
    /// up to then, in order.
    async fn wait_for(&self, topic: &str) -> Vec<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.got.lock().expect("lock").clone();
            if got.iter().any(|(t, _)| t == topic) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message on {topic}; got {:?}",
                got.iter().map(|(t, _)| t).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn was_dropped(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Two devices' certificates under docs/wire.md's Mosquitto configuration
/// and ACL, run as written on a real Mosquitto: device A cannot read
/// device B's desired specs, cannot write or tombstone them, and cannot
/// take B's session by connecting with B's client id; the bridge's
/// certificate reads and writes both. Absence is shown by order, not by
/// waiting: a marker published after the forbidden message, by the same
/// client, arrives; the forbidden one, had the broker let it through,
/// would have arrived before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_cannot_read_write_tombstone_or_take_over_each_others_topics() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki {
        dir: pki_dir.path(),
        days: "365",
    };
    pki.ca("/CN=kedge test CA", "keyCertSign, cRLSign");
    pki.leaf(
        "server",
        "/CN=localhost",
        &leaf_ext(
            "digitalSignature",
            "serverAuth",
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        ),
    );
    for cn in ["dev-a", "dev-b", "kedge-bridge", "ops-alice"] {
        pki.leaf(
            cn,
            &format!("/CN={cn}"),
            &leaf_ext("digitalSignature", "clientAuth", ""),
        );
    }
    let dir = pki_dir.path().to_path_buf();
    let acl_path = dir.join("kedge.acl");
    std::fs::write(&acl_path, documented_conf("`/etc/mosquitto/kedge.acl`:")).expect("acl");
    let conf = documented_conf("`mosquitto.conf`:");
    assert!(conf.contains("use_username_as_clientid true"), "{conf}");
    let broker = Mosquitto::start_custom(true, |port| {
        // The documented file with this machine's paths and port; `user
        // root` so that a root mosquitto keeps reading our 0700 temp dir.
        let doc = conf
            .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
            .replace(
                "/etc/mosquitto/ca.crt",
                &dir.join("ca.pem").display().to_string(),
            )
            .replace(
                "/etc/mosquitto/server.crt",
                &dir.join("server.pem").display().to_string(),
            )
            .replace(
                "/etc/mosquitto/server.key",
                &dir.join("server.key").display().to_string(),
            )
            .replace("/etc/mosquitto/kedge.acl", &acl_path.display().to_string());
        assert!(!doc.contains("/etc/mosquitto"), "{doc}");
        format!("user root\npersistence false\nlog_dest stderr\nlog_type all\n{doc}")
    });

    let b_spec = "kedge/v1/dev-b/desired/default/web";
    let mut bridge = Client::connect(&broker, &dir, "kedge-bridge", "kedge-bridge-0").await;
    assert_ne!(
        bridge.subscribe("kedge/v1/#").await,
        rumqttc::SubscribeReasonCode::Failure
    );
    let mut dev_b = Client::connect(&broker, &dir, "dev-b", "kedge-agent-dev-b").await;
    assert_ne!(
        dev_b.subscribe("kedge/v1/dev-b/desired/#").await,
        rumqttc::SubscribeReasonCode::Failure
    );
    let mut dev_a = Client::connect(&broker, &dir, "dev-a", "kedge-agent-dev-a").await;
    assert_ne!(
        dev_a.subscribe("kedge/v1/dev-a/desired/#").await,
        rumqttc::SubscribeReasonCode::Failure
    );
    // Read: A asks for B's specs. Mosquitto may refuse the subscription or
    // grant it and deliver nothing; either way nothing of B's may arrive.
    let _ = dev_a.subscribe("kedge/v1/dev-b/#").await;
    bridge.publish(b_spec, b"spec-for-b", true).await;
    bridge
        .publish("kedge/v1/dev-a/desired/default/marker", b"marker", false)
        .await;
    dev_b.wait_for(b_spec).await;
    let got = dev_a
        .wait_for("kedge/v1/dev-a/desired/default/marker")
        .await;
    assert!(
        got.iter().all(|(t, _)| !t.starts_with("kedge/v1/dev-b/")),
        "device A read device B's topics: {got:?}"
    );

    // Write and tombstone: A publishes a spec and an empty retained payload
    // to B's desired topics, then a marker to its own subtree.
    dev_a
        .publish("kedge/v1/dev-b/desired/default/evil", b"hostPath: /", true)
        .await;
    dev_a.publish(b_spec, b"", true).await;
    dev_a
        .publish("kedge/v1/dev-a/reported/default/marker", b"m", false)
        .await;
    let seen = bridge
        .wait_for("kedge/v1/dev-a/reported/default/marker")
        .await;
    assert!(
        !seen
            .iter()
            .any(|(t, p)| t == "kedge/v1/dev-b/desired/default/evil"
                || (t == b_spec && p.is_empty())),
        "device A wrote into device B's desired state: {seen:?}"
    );
    assert!(
        dev_b
            .got
            .lock()
            .expect("lock")
            .iter()
            .all(|(t, p)| t == b_spec && p == b"spec-for-b"),
        "device B received something from device A"
    );
    // B's retained spec is intact: a new subscriber reads it (an operator's
    // certificate: one certificate is one session under
    // use_username_as_clientid, so the bridge's would end the bridge's).
    let mut reader = Client::connect(&broker, &dir, "ops-alice", "kedge-cli-1").await;
    reader.subscribe(b_spec).await;
    let retained = reader.wait_for(b_spec).await;
    assert_eq!(retained[0].1, b"spec-for-b");

    // Take-over: A connects with B's client id. Under
    // use_username_as_clientid its client id is its certificate's name, so
    // B's session stays: B still round-trips, and was never disconnected.
    let rogue = Client::connect(&broker, &dir, "dev-a", "kedge-agent-dev-b").await;
    dev_b
        .publish(
            "kedge/v1/dev-b/reported/default/after",
            b"still here",
            false,
        )
        .await;
    bridge
        .wait_for("kedge/v1/dev-b/reported/default/after")
        .await;
    assert!(!dev_b.was_dropped(), "device B's session was taken over");
    assert!(!bridge.was_dropped(), "the bridge's session ended");
    assert!(!rogue.was_dropped());
    // … and the broker named the rogue connection by its certificate.
    let log = broker.log();
    assert!(
        !log.contains("Client kedge-agent-dev-b already connected"),
        "{log}"
    );
}
