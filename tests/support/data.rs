//! The data path's test set-up, shared by `data_e2e` and the `data_path`
//! bench: the sink's keys and process, the Wasm pod that prints the
//! credentials the agent injected, reading PostgreSQL, the static MQTT
//! client a container workload runs (`data_client_bin`), and the stand-ins
//! for the containers of a route into a pod (`publish_acked`,
//! `PodSubscriber`).

use std::path::Path;
use std::time::Duration;

use super::postgres::Postgres;
use super::{
    GuestTarget, Mosquitto, guest_wasm, kedge_bin, kedge_ok, pod_status, wait_until, wasm_pod,
};

/// A Wasm pod `name` that prints its environment and exits.
pub fn wasm_env_pod(name: &str, module: &Path) -> String {
    wasm_pod(name, module, &["env"], "Never", "")
}

pub fn pod_phase(url: &str, name: &str) -> Option<String> {
    pod_status(url, name).and_then(|s| s["phase"].as_str().map(str::to_string))
}

pub fn count(pg: &Postgres, sql: &str) -> u64 {
    pg.psql(sql).parse().unwrap_or(0)
}

/// The sink's key pair in `dir` (`kedge sink keygen`): its file, and the
/// public half the devices get.
pub fn sink_keygen(dir: &Path) -> (std::path::PathBuf, String) {
    let sink_key = dir.join("sink.key");
    let public = kedge_ok(&["sink", "keygen", "--out", sink_key.to_str().expect("utf8")])
        .trim()
        .to_string();
    (sink_key, public)
}

/// A `kedge sink` process, killed when dropped (a failing test leaves none
/// behind).
pub struct Sink(std::process::Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kedge sink run` on `broker` into `pg`, with the public key of the agent
/// whose data directory is `dir/data` as its one device (`node`), logging to
/// `dir/sink.log` at `log_filter` (`KEDGE_LOG`); returned once it has subscribed.
pub fn start_sink(
    broker: &Mosquitto,
    pg: &Postgres,
    dir: &Path,
    sink_key: &Path,
    node: &str,
    log_filter: &str,
) -> Sink {
    let device_keys = dir.join("device-keys");
    std::fs::create_dir_all(&device_keys).expect("mkdir");
    std::fs::copy(
        dir.join("data/data/device-key.pk8.pub"),
        device_keys.join(format!("{node}.pub")),
    )
    .expect("copy the device's public key");
    let log = std::fs::File::create(dir.join("sink.log")).expect("log");
    let sink = std::process::Command::new(kedge_bin())
        .args(["--broker", &broker.url(), "sink", "run", "--key"])
        .arg(sink_key)
        .arg("--device-keys")
        .arg(&device_keys)
        .args(["--postgres", &pg.conn()])
        // A plain subscription: Mosquitto 2.0 (Debian's) does not keep a
        // shared subscription across its restart (README, "Sending workload
        // data"), and a test restarts it.
        .args(["--share-group", ""])
        .env("KEDGE_LOG", log_filter)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn kedge sink");
    wait_until("the sink subscribed", Duration::from_secs(120), || {
        std::fs::read_to_string(dir.join("sink.log"))
            .unwrap_or_default()
            .contains("sink ready")
            .then_some(())
    });
    Sink(sink)
}

/// The data endpoint's address and a container's credentials, as the
/// agent injected them into the Wasm pod `name` (it prints its
/// environment).
pub fn injected_credentials(broker: &Mosquitto, name: &str) -> (String, String, String) {
    let logs = kedge_ok(&["--broker", &broker.url(), "logs", name]);
    let env = |key: &str| -> String {
        logs.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} not in the pod's environment:\n{logs}"))
            .to_string()
    };
    (
        env("KEDGE_DATA_URL"),
        env("KEDGE_DATA_USERNAME"),
        env("KEDGE_DATA_PASSWORD"),
    )
}

/// Applies `yaml` (a pod `name` that ends by itself) to `node` and waits
/// until it has succeeded.
pub fn run_pod(broker: &Mosquitto, dir: &Path, node: &str, name: &str, yaml: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write");
    kedge_ok(&[
        "--broker",
        &broker.url(),
        "apply",
        "-f",
        file.to_str().expect("utf8"),
        "--node",
        node,
    ]);
    wait_until("the pod ran", Duration::from_secs(120), || {
        (pod_phase(&broker.url(), name).as_deref() == Some("Succeeded")).then_some(())
    });
}

/// `run_pod` of a Wasm pod that prints its environment (such as
/// `wasm_env_pod`'s): the endpoint and credentials the agent injected into
/// it, (url, username, password).
pub fn run_env_pod(
    broker: &Mosquitto,
    dir: &Path,
    node: &str,
    name: &str,
    yaml: &str,
) -> (String, String, String) {
    run_pod(broker, dir, node, name, yaml);
    injected_credentials(broker, name)
}

/// `wasm_env_pod` of the preview 1 guest.
pub fn env_pod(name: &str) -> String {
    wasm_env_pod(name, &guest_wasm(GuestTarget::P1))
}

/// `tests/data-client` built for x86_64-unknown-linux-musl: a static MQTT
/// client for a container workload's local image (built once per process,
/// cached in `$KEDGE_DATA_CLIENT_TARGET_DIR`).
pub fn data_client_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        const TARGET: &str = "x86_64-unknown-linux-musl";
        let target_dir =
            super::cache_dir("KEDGE_DATA_CLIENT_TARGET_DIR", "kedge-data-client-target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
            .arg(super::repo_root().join("tests/data-client/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        let out = super::run_with_deadline(cmd, b"", Duration::from_secs(600));
        assert!(
            out.status.success(),
            "building tests/data-client failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = target_dir.join(TARGET).join("release/data-client");
        assert!(
            bin.is_file(),
            "cargo succeeded but {} is missing",
            bin.display()
        );
        bin
    })
    .clone()
}

/// The data endpoint's (host, port) in `url` (`mqtt://host:port`).
pub fn endpoint(url: &str) -> (String, u16) {
    url.trim_start_matches("mqtt://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().expect("port")))
        .expect("host:port")
}

/// A stand-in for a container of a pod a route goes into: connects to the
/// endpoint with the pod's injected credentials (clean session), subscribes
/// to `filter` with QoS 1 on every connection (the endpoint keeps no
/// subscription across connections), reconnects while the agent is away,
/// and records the payload of every message it receives (rumqttc
/// acknowledges each). Ends when dropped.
pub struct PodSubscriber {
    pub received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Subscriptions the endpoint granted, over every connection.
    pub granted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodSubscriber {
    pub fn start(
        (url, username, password): (String, String, String),
        client_id: &str,
        filter: &str,
    ) -> PodSubscriber {
        use std::sync::atomic::Ordering;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let granted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client_id, filter) = (client_id.to_string(), filter.to_string());
        let thread = {
            let (received, granted, stop) = (received.clone(), granted.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let (host, port) = endpoint(&url);
                    let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
                    opts.set_credentials(username, password);
                    opts.set_keep_alive(Duration::from_secs(5));
                    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
                    while !stop.load(Ordering::SeqCst) {
                        let event =
                            tokio::time::timeout(Duration::from_millis(200), eventloop.poll())
                                .await;
                        match event {
                            // Checks the stop flag.
                            Err(_) => {}
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                                client
                                    .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                                    .await
                                    .expect("queue subscribe");
                            }
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)))) => {
                                if ack.return_codes.iter().all(|c| {
                                    matches!(
                                        c,
                                        rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(_)
                                    )
                                }) {
                                    granted.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    // Refused (the route into the pod is
                                    // not declared yet after a restart):
                                    // asked again, paced.
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    client
                                        .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                                        .await
                                        .expect("queue subscribe");
                                }
                            }
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                                received
                                    .lock()
                                    .expect("lock")
                                    .push(String::from_utf8_lossy(&p.payload).into_owned());
                            }
                            Ok(Ok(_)) => {}
                            // The agent is away: connect again, paced.
                            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    let _ = client.disconnect().await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                });
            })
        };
        PodSubscriber {
            received,
            granted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for PodSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes `payloads` on `topic` with QoS 1 to the endpoint with the
/// credentials `(url, username, password)` as `client_id`, and returns
/// once every one is acknowledged (committed by the agent).
pub fn publish_acked(
    (url, username, password): (String, String, String),
    client_id: &str,
    topic: &str,
    payloads: impl IntoIterator<Item = String>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (host, port) = endpoint(&url);
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_credentials(username, password);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let mut sent = 0;
        for payload in payloads {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue");
            sent += 1;
        }
        let mut acked = 0;
        while acked < sent {
            match tokio::time::timeout(Duration::from_secs(120), eventloop.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("data endpoint: {e}"),
                Err(_) => panic!("only {acked} of {sent} publishes acknowledged"),
            }
        }
        let _ = client.disconnect().await;
    });
}
