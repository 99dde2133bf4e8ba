//! The data path end to end, with real parts: a real `kedge agent`, a real
//! Mosquitto, `kedge sink` and a real PostgreSQL (Debian's package, its own
//! cluster in a temporary directory).
//!
//! The workloads: a real Wasm pod that a route names gets the endpoint's
//! address and its credentials injected (it prints them); a test client
//! process **stands in for that pod's container** and publishes with them
//! to the MQTT endpoint, with QoS 2 and a persistent session as an IoT
//! client would. And with no stand-in: a real Wasm component that
//! publishes through the host interface (`kedge:data/publish`, the guest's
//! `publish-once` behaviour), and a real container (`tests/data-client`, a
//! static MQTT client built into a local image for a real containerd) that
//! publishes to the endpoint.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::data::{
    PodSubscriber, count, endpoint, env_pod, injected_credentials, publish_acked, run_env_pod,
    run_pod, sink_keygen, start_sink, wasm_env_pod,
};
use support::postgres::Postgres;
use support::*;

const WAIT: Duration = Duration::from_secs(120);
const NODE: &str = "gw-data";
/// Messages the stand-in workload publishes.
const N: u64 = 10_000;
/// The stand-in's QoS 2 window: one publish in flight, as a careful client
/// keeps (tests/data-client does too). With more, rumqttc 0.25 breaks MQTT
/// 3.1.1's rule that a packet id is free only once its PUBCOMP is in: across
/// a reconnect it sends what waited in its request queue ahead of the new
/// session's flow control, those publishes take ids still in flight, each
/// such collision replaces the one before it, and the ones replaced are
/// never sent. With 50 in flight this test once saw 44 publishes never
/// acknowledged after the agent's restart on a loaded machine (and still one
/// with no request queue). The agent answered every packet it was sent.
const INFLIGHT: u16 = 1;

/// The stand-in workload: publishes `{"n":i}` for i in 0..N on
/// `sensors/t` with QoS 2 and a persistent session, reconnecting through
/// outages (rumqttc re-sends what was not completed), as far as the test
/// `allowed` so far; `done` counts the completed publishes (PUBCOMP).
fn spawn_publisher(
    url: String,
    username: String,
    password: String,
    allowed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (host, port) = endpoint(&url);
            let mut opts = rumqttc::MqttOptions::new("sensor-main", host, port);
            opts.set_clean_session(false);
            opts.set_credentials(username, password);
            opts.set_keep_alive(Duration::from_secs(5));
            opts.set_inflight(INFLIGHT);
            // No request queue (capacity 0, as rumqttc's `EventLoop::clean`
            // advises): see INFLIGHT.
            let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 0);
            tokio::spawn(async move {
                for i in 0..N {
                    while i >= allowed.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    client
                        .publish(
                            "sensors/t",
                            rumqttc::QoS::ExactlyOnce,
                            false,
                            format!("{{\"n\":{i},\"unit\":\"plaintext-marker\"}}"),
                        )
                        .await
                        .expect("queue publish");
                }
            });
            while done.load(Ordering::SeqCst) < N {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    // The agent is down (killed, restarting): try again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    })
}

/// `1,2,3,7` as `1-3, 7`.
fn ranges(list: &str) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for n in list.split(',').filter_map(|n| n.trim().parse::<u64>().ok()) {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => out.push((n, n)),
        }
    }
    out.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn missing_messages_read_as_spans() {
    assert_eq!(ranges("1,2,3,7,9,10"), "1-3, 7, 9-10");
    assert_eq!(ranges(""), "");
}

fn publish_file(broker: &Mosquitto, topic: &str, payload: &[u8], dir: &Path) {
    let file = dir.join(format!("p-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, payload).expect("write payload");
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args(mqtt_cli_args(&broker.url(), None))
        .args(["-q", "1", "-t", topic, "-f"])
        .arg(&file);
    let out = run_with_deadline(cmd, b"", Duration::from_secs(30));
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
}

#[test]
fn workload_messages_reach_postgres_exactly_once_through_outage_and_crash_sealed_on_the_wire() {
    if support::postgres::pg_bin_dir().is_none() {
        panic!("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)");
    }
    // A broker that keeps the sink's session across its restart (as
    // production brokers do): what the device hands it while the sink's
    // subscription exists is the broker's to deliver.
    let mut broker = Mosquitto::start_persistent();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");

    let (sink_key, sink_public) = sink_keygen(dir.path());

    let data_port = free_port();
    let agent_opts = AgentOpts {
        node: NODE.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: vec![],
        env: vec![
            (
                "KEDGE_DATA_ROUTES".into(),
                "FROM default/sensor sensors/# INTO $upstream TTL 1h".into(),
            ),
            ("KEDGE_DATA_SINK_PUBLIC_KEY".into(), sink_public.clone()),
            ("KEDGE_DATA_LISTEN".into(), format!("127.0.0.1:{data_port}")),
            ("KEDGE_DATA_BATCH_MAX_MESSAGES".into(), "200".into()),
            ("KEDGE_BROKER_RECONNECT_MAX_MS".into(), "1000".into()),
            // Node statuses (and the data path's counters in them) every second.
            ("KEDGE_NODE_HEARTBEAT_MS".into(), "1000".into()),
        ],
    };
    let mut agent = Agent::start(agent_opts.clone());

    // A real Wasm pod the route names: it is given the endpoint and its
    // own credentials, and prints them.
    let (url, username, password) =
        run_env_pod(&broker, dir.path(), NODE, "sensor", &env_pod("sensor"));
    assert_eq!(url, format!("mqtt://127.0.0.1:{data_port}"));
    assert_eq!(username, "default/sensor/main");

    let sink = start_sink(
        &broker,
        &pg,
        dir.path(),
        &sink_key,
        NODE,
        "info,kedge=debug",
    );
    let sink_log = || std::fs::read_to_string(dir.path().join("sink.log")).unwrap_or_default();

    // Everything on the broker, as a curious subscriber sees it.
    let everything = Subscriber::start(&broker.url(), "#", None);

    let done = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(N / 3));
    let publisher = spawn_publisher(url, username, password, allowed.clone(), done.clone());
    let rows = || count(&pg, "SELECT count(*) FROM kedge_messages");
    let done_reaches = |what: &str, n: u64| {
        wait_until(what, WAIT, || {
            (done.load(Ordering::SeqCst) >= n).then_some(())
        })
    };

    // Online: the first third is acknowledged and reaches PostgreSQL.
    done_reaches("the first third acknowledged", N / 3);
    wait_until("the first rows in PostgreSQL", WAIT, || {
        (rows() >= N / 10).then_some(())
    });
    // The broker goes away; the second third goes into the store.
    broker.stop_gracefully();
    allowed.store(2 * N / 3, Ordering::SeqCst);
    done_reaches(
        "the second third acknowledged while the broker is down",
        2 * N / 3,
    );
    // The last third starts, and the agent dies in the middle of it (kill
    // -9), then comes back on the same data directory.
    allowed.store(N, Ordering::SeqCst);
    done_reaches("a few more acknowledged", 2 * N / 3 + 10);
    let at_kill = done.load(Ordering::SeqCst);
    agent.kill9();
    drop(agent);
    eprintln!(
        "agent killed with {at_kill} of {N} publishes completed, {} rows stored",
        rows()
    );
    let agent = Agent::start(agent_opts.clone());
    if poll_until(WAIT, Duration::from_millis(50), || {
        (done.load(Ordering::SeqCst) >= N).then_some(())
    })
    .is_none()
    {
        let log = agent.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        panic!(
            "only {} of {N} publishes acknowledged after the restart ({WAIT:?}); the restarted agent's log (tail, newest first):\n{}",
            done.load(Ordering::SeqCst),
            tail.join("\n")
        );
    }
    publisher.join().expect("publisher");
    // Only now the broker comes back: everything was kept on the device.
    broker.restart();
    let start = std::time::Instant::now();
    while rows() < N {
        if start.elapsed() > WAIT {
            let tail = |s: String| {
                s.lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            // Which messages are missing, and every log kept where the next
            // engineer finds it (the temporary directory goes with the test).
            let missing = pg.psql(&format!(
                "SELECT coalesce(string_agg(n::text, ','), '') FROM generate_series(0, {}) n \
                 WHERE n NOT IN (SELECT (payload_json->>'n')::bigint FROM kedge_messages \
                 WHERE payload_json IS NOT NULL)",
                N - 1
            ));
            let kept = std::env::temp_dir().join(format!(
                "kedge-data-e2e-failure-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ));
            let _ = std::fs::create_dir_all(&kept);
            let _ = std::fs::write(kept.join("broker.log"), broker.log());
            let _ = std::fs::write(kept.join("agent.log"), agent.log());
            let _ = std::fs::write(kept.join("sink.log"), sink_log());
            // What the sink refused, and the seqs it stored: the missing
            // messages' seqs are in the gaps, to find in the agent's log
            // ("data batch published/acknowledged", `last_id`).
            let refused = pg.psql(
                "SELECT coalesce(string_agg(reason || ': ' || detail, '; '), 'none') FROM kedge_refused",
            );
            let seqs = pg.psql(
                "SELECT coalesce(string_agg(seq::text, ','), '') FROM (SELECT seq FROM kedge_messages ORDER BY seq) s",
            );
            let _ = std::fs::write(kept.join("stored-seqs.txt"), ranges(&seqs));
            panic!(
                "only {} of {N} messages in PostgreSQL after {WAIT:?}; missing n: {}; refused: {refused}; stored seqs: {}; all logs in {}\n--- broker log (drops)\n{}\n--- agent log (tail)\n{}\n--- sink log (tail)\n{}",
                rows(),
                ranges(&missing),
                ranges(&seqs),
                kept.display(),
                tail(
                    broker
                        .log()
                        .lines()
                        .filter(|l| l.to_lowercase().contains("drop")
                            || l.contains("kedge-sink")
                            || l.contains("kedge-data"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                tail(
                    agent
                        .log()
                        .lines()
                        .filter(|l| l.contains("data"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                tail(sink_log())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    eprintln!(
        "refused so far: {}",
        pg.psql("SELECT coalesce(string_agg(reason || '=' || n, ', '), 'none') FROM (SELECT reason, count(*) n FROM kedge_refused GROUP BY reason) r")
    );
    // Exactly once, in order per source.
    assert_eq!(rows(), N, "sink log:\n{}", sink_log());
    assert_eq!(
        count(
            &pg,
            "SELECT count(DISTINCT payload_json->>'n') FROM kedge_messages"
        ),
        N
    );
    let order: Vec<u64> = pg
        .psql(
            "SELECT string_agg(payload_json->>'n', ',' ORDER BY seq) FROM kedge_messages \
             WHERE device = 'gw-data' AND namespace = 'default' AND pod = 'sensor' AND container = 'main'",
        )
        .split(',')
        .map(|n| n.parse().expect("n"))
        .collect();
    // In the order the workload sent them, except the client's own
    // re-sent window at the crash (rumqttc re-sends it in packet-id order,
    // not in the order it first sent it; at most INFLIGHT messages from
    // at_kill).
    let resent = at_kill..at_kill + 2 * u64::from(INFLIGHT);
    let outside: Vec<u64> = order
        .iter()
        .copied()
        .filter(|n| !resent.contains(n))
        .collect();
    assert!(
        outside.windows(2).all(|w| w[0] < w[1]),
        "order per source broken outside the re-sent window {resent:?}"
    );
    assert_eq!(
        pg.psql("SELECT DISTINCT topic FROM kedge_messages"),
        "sensors/t"
    );

    // The node status counts it all (since the restart: the messages stored
    // before it were queued on their route, and sent after it).
    const ROUTE: &str = "FROM default/sensor sensors/# INTO $upstream TTL 1h";
    let data = wait_until("the node status counts the backlog as sent", WAIT, || {
        let json = kedge_ok(&[
            "--broker",
            &broker.url(),
            "get",
            "routes",
            "--node",
            NODE,
            "-o",
            "json",
        ]);
        let list: serde_json::Value = serde_json::from_str(&json).expect("json");
        let data = list["items"][0]["data"].clone();
        (data["queued"] == 0 && data["sent"].as_u64() >= Some(N / 3)).then_some(data)
    });
    let route = &data["routes"][0];
    assert_eq!(route["route"], ROUTE, "{data}");
    assert_eq!(
        route["pod"],
        serde_json::Value::Null,
        "declared by the node"
    );
    assert_eq!(route["queued"], 0, "{data}");
    assert_eq!(
        route["sent"], data["sent"],
        "one route took everything: {data}"
    );
    assert_eq!(route["sent_bytes"], data["sent_bytes"], "{data}");
    for dropped in ["dropped_ttl", "dropped_budget"] {
        assert_eq!(data[dropped], 0, "{data}");
        assert_eq!(route[dropped], 0, "{data}");
    }
    assert!(data["batches"].as_u64() > Some(0) && data["link_bytes"].as_u64() > Some(0));
    let table = kedge_ok(&["--broker", &broker.url(), "get", "routes", "--node", NODE]);
    assert!(
        table.lines().nth(1).is_some_and(|l| {
            let cells: Vec<&str> = l
                .split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cells.get(..3) == Some(&[NODE, ROUTE, "node"][..])
        }),
        "{table}"
    );
    assert!(
        table.contains(&format!("{NODE}: ")) && table.contains(" 0 queued "),
        "{table}"
    );

    // The broker saw only ciphertext: no plaintext byte pattern of any
    // message, and no workload topic.
    let seen = everything.messages();
    let data_topic = format!("kedge/v1/{NODE}/data");
    let batches = only_ciphertext(&seen, NODE);

    // Refusals, counted: a replayed batch, a batch signed by another key,
    // a batch of a device the sink does not know.
    publish_file(&broker, &data_topic, &batches[0], dir.path());
    let sink_public_key =
        kedge::data::SinkPublicKey::parse(&sink_public, "sink").expect("sink key");
    let batch = |device: &str| kedge::data::Batch {
        device: device.into(),
        messages: vec![(
            u64::MAX / 2,
            kedge::data::DataMessage {
                source: kedge::model::DataSource {
                    namespace: "default".into(),
                    pod: "sensor".into(),
                    container: "main".into(),
                },
                topic: "sensors/t".into(),
                device_time_ms: 0,
                payload: b"forged".to_vec(),
            },
        )],
    };
    let stranger = kedge::data::DeviceKey::generate().expect("key");
    let forged = kedge::data::seal(
        &batch(NODE),
        kedge::data::Compression::Lz4,
        &stranger,
        &sink_public_key,
    )
    .expect("seal");
    publish_file(&broker, &data_topic, &forged, dir.path());
    let unknown = kedge::data::seal(
        &batch("gw-unknown"),
        kedge::data::Compression::Lz4,
        &stranger,
        &sink_public_key,
    )
    .expect("seal");
    publish_file(&broker, "kedge/v1/gw-unknown/data", &unknown, dir.path());
    let refused = |reason: &str| {
        count(
            &pg,
            &format!("SELECT count(*) FROM kedge_refused WHERE reason = '{reason}'"),
        )
    };
    wait_until("the three refusals counted", WAIT, || {
        (refused("duplicate") >= 1
            && refused("bad_signature") == 1
            && refused("unknown_device") == 1)
            .then_some(())
    });
    assert_eq!(rows(), N, "nothing refused was stored");
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM kedge_messages WHERE payload = 'forged'"
        ),
        0
    );

    // A device whose key file is there and cannot be read (here a symlink
    // to itself: ELOOP): its batch is neither refused (that would
    // acknowledge it, and lose it) nor stored; it waits until the key can
    // be read, and is stored then.
    let keys_dir = dir.path().join("device-keys");
    let held_key = keys_dir.join("gw-later.pub");
    std::os::unix::fs::symlink(&held_key, &held_key).expect("symlink");
    let mut held = batch("gw-later");
    held.messages[0].1.payload = b"held".to_vec();
    let sealed = kedge::data::seal(
        &held,
        kedge::data::Compression::Lz4,
        &stranger,
        &sink_public_key,
    )
    .expect("seal");
    publish_file(&broker, "kedge/v1/gw-later/data", &sealed, dir.path());
    wait_until("the sink says it cannot read the key", WAIT, || {
        sink_log()
            .contains("cannot read a device's public key")
            .then_some(())
    });
    assert_eq!(refused("unknown_device"), 1, "not refused");
    let tmp = keys_dir.join("gw-later.tmp");
    std::fs::write(&tmp, format!("{}\n", hex::encode(stranger.public_key()))).expect("write key");
    // One rename: the path never goes missing (a missing key is an unknown
    // device).
    std::fs::rename(&tmp, &held_key).expect("rename key");
    wait_until("the held batch stored", WAIT, || {
        (count(
            &pg,
            "SELECT count(*) FROM kedge_messages WHERE device = 'gw-later' AND payload = 'held'",
        ) == 1)
            .then_some(())
    });
    assert_eq!(refused("unknown_device"), 1, "never refused");

    drop(sink);
    drop(agent);
}

/// Routes declared with the pod (`kedge.io/routes`), on a node that has no
/// routes of its own (only the sink's key): the pod is given the endpoint
/// and its credentials, what it publishes on a routed topic lands in
/// PostgreSQL, another topic does not; a pod without routes gets nothing.
#[test]
fn a_pods_own_routes_take_its_messages_to_postgres() {
    if support::postgres::pg_bin_dir().is_none() {
        panic!("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)");
    }
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink_key, sink_public) = sink_keygen(dir.path());
    let data_port = free_port();
    let _agent = Agent::start(AgentOpts {
        node: NODE.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: vec![],
        env: vec![
            ("KEDGE_DATA_SINK_PUBLIC_KEY".into(), sink_public),
            ("KEDGE_DATA_LISTEN".into(), format!("127.0.0.1:{data_port}")),
        ],
    });
    let module = guest_wasm(GuestTarget::P1);
    run_pod(
        &broker,
        dir.path(),
        NODE,
        "meter",
        &wasm_env_pod("meter", &module).replace(
            "  name: meter\n",
            "  name: meter\n  annotations:\n    kedge.io/routes: \"FROM * meter/# INTO $upstream TTL 1h\"\n",
        ),
    );
    run_pod(
        &broker,
        dir.path(),
        NODE,
        "plain",
        &wasm_env_pod("plain", &module),
    );
    let plain = kedge_ok(&["--broker", &broker.url(), "logs", "plain"]);
    assert!(!plain.contains("KEDGE_DATA_"), "{plain}");
    let (url, username, password) = injected_credentials(&broker, "meter");
    assert_eq!(url, format!("mqtt://127.0.0.1:{data_port}"));
    assert_eq!(username, "default/meter/main");

    let sink = start_sink(
        &broker,
        &pg,
        dir.path(),
        &sink_key,
        NODE,
        "info,kedge=debug",
    );
    // The stand-in for the meter's container: 100 readings on a routed
    // topic, then one on a topic no route takes, each acknowledged.
    let credentials = (url, username, password);
    publish_acked(
        credentials.clone(),
        "meter-main",
        "meter/kwh",
        (0..100).map(|i| format!("{{\"n\":{i}}}")),
    );
    publish_acked(
        credentials,
        "meter-main",
        "elsewhere",
        ["unrouted".to_string()],
    );
    wait_until("the readings in PostgreSQL", WAIT, || {
        (count(&pg, "SELECT count(*) FROM kedge_messages") >= 100).then_some(())
    });
    assert_eq!(count(&pg, "SELECT count(*) FROM kedge_messages"), 100);
    assert_eq!(
        pg.psql("SELECT DISTINCT topic FROM kedge_messages"),
        "meter/kwh"
    );
    // The sink's table has one index, its key (each other index costs
    // every insert: sink::SCHEMA), and the device name compares bytewise.
    assert_eq!(
        pg.psql("SELECT indexdef FROM pg_indexes WHERE tablename = 'kedge_messages'"),
        "CREATE UNIQUE INDEX kedge_messages_pkey ON public.kedge_messages USING btree (device, seq)"
    );
    assert_eq!(
        pg.psql(
            "SELECT collation_name FROM information_schema.columns \
             WHERE table_name = 'kedge_messages' AND column_name = 'device'"
        ),
        "C"
    );
    drop(sink);
}

/// A route into another pod (module-to-module): a pod's route `INTO
/// pod/consumer` gives the consumer pod (which declares no route) the
/// endpoint's credentials; its container (a stand-in using them)
/// subscribes and receives each message the producer's container publishes
/// once; what is published while it is away waits in the agent's store,
/// through a kill -9 of the agent, and is delivered when it is back. The
/// route's counters say so.
#[test]
fn a_route_into_a_pod_delivers_each_message_once_through_a_disconnect_and_a_kill() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, sink_public) = sink_keygen(dir.path());
    let data_port = free_port();
    let agent_opts = AgentOpts {
        node: NODE.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: vec![],
        env: vec![
            ("KEDGE_DATA_SINK_PUBLIC_KEY".into(), sink_public),
            ("KEDGE_DATA_LISTEN".into(), format!("127.0.0.1:{data_port}")),
        ],
    };
    let mut agent = Agent::start(agent_opts.clone());
    const ROUTE: &str = "FROM * cmd/# INTO pod/consumer TTL 1h";
    let producer = run_env_pod(
        &broker,
        dir.path(),
        NODE,
        "producer",
        &env_pod("producer").replace(
            "  name: producer\n",
            &format!("  name: producer\n  annotations:\n    kedge.io/routes: \"{ROUTE}\"\n"),
        ),
    );
    let consumer = run_env_pod(&broker, dir.path(), NODE, "consumer", &env_pod("consumer"));
    assert_eq!(consumer.1, "default/consumer/main");
    // A pod no route goes into may connect (it publishes) but not
    // subscribe.
    let refused = PodSubscriber::start(producer.clone(), "producer-sub", "cmd/#");
    let payloads = |range: std::ops::Range<u64>| range.map(|i| format!("{{\"n\":{i}}}"));

    let subscriber = PodSubscriber::start(consumer.clone(), "consumer-main", "cmd/#");
    wait_until("the consumer subscribed", WAIT, || {
        (subscriber.granted.load(Ordering::SeqCst) > 0).then_some(())
    });
    publish_acked(
        producer.clone(),
        "producer-main",
        "cmd/set",
        payloads(0..100),
    );
    wait_until("the consumer received 100 messages", WAIT, || {
        (subscriber.received().len() >= 100).then_some(())
    });
    // The route's line in the node status (None until a status with it
    // was reported).
    let route_line = |data: &serde_json::Value| -> Option<serde_json::Value> {
        data["routes"]
            .as_array()?
            .iter()
            .find(|r| r["route"] == "FROM default/producer cmd/# INTO pod/default/consumer TTL 1h")
            .cloned()
    };
    // A delivery may be counted before its storing (each is counted after
    // its own commit, by another task): the counts commute (`RouteTally`),
    // so the line settles at all 100 sent and none queued. (Before they
    // did, a queue counted down at zero and then up stayed at 9 for good,
    // as one CI run saw: sent 100, queued 9.)
    let line = wait_until("the route counts 100 sent, none queued", WAIT, || {
        let line = route_line(&data_counters(&broker, NODE))?;
        (line["sent"] == 100 && line["queued"] == 0).then_some(line)
    });
    assert_eq!(
        (
            line["received"].as_u64(),
            line["queued"].as_u64(),
            line["pod"].as_str()
        ),
        (Some(100), Some(0), Some("default/producer")),
        "{line}"
    );
    assert_eq!(
        subscriber.received(),
        payloads(0..100).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(
        refused.granted.load(Ordering::SeqCst),
        0,
        "the producer may not subscribe"
    );
    drop(refused);

    // The consumer goes away; what is published meanwhile waits for it,
    // committed before it is acknowledged, and the agent is killed.
    drop(subscriber);
    publish_acked(
        producer.clone(),
        "producer-main",
        "cmd/set",
        payloads(100..200),
    );
    let line = wait_until("the route counts 100 queued", WAIT, || {
        let line = route_line(&data_counters(&broker, NODE))?;
        (line["received"] == 200).then_some(line)
    });
    assert_eq!(
        (line["queued"].as_u64(), line["sent"].as_u64()),
        (Some(100), Some(100)),
        "{line}"
    );
    agent.kill9();
    let _agent = Agent::start(agent_opts.clone());

    let subscriber = PodSubscriber::start(consumer, "consumer-main", "cmd/#");
    wait_until("the consumer received the 100 it missed", WAIT, || {
        (subscriber.received().len() >= 100).then_some(())
    });
    let line = wait_until("the route counts the backlog sent", WAIT, || {
        let line = route_line(&data_counters(&broker, NODE))?;
        (line["queued"] == 0 && line["sent"] == 100).then_some(line)
    });
    assert_eq!(line["dropped_ttl"], 0, "{line}");
    assert_eq!(
        subscriber.received(),
        payloads(100..200).collect::<Vec<_>>(),
        "nothing lost, each once, in order"
    );
}

/// How long the broker stays away in the workloads' tests (issue 12: 30
/// s), at least: the workload keeps publishing, and the agent is killed,
/// meanwhile.
const OUTAGE: Duration = Duration::from_secs(30);

/// A Wasm pod running the preview 2 guest with `args`, its directory
/// `/state` the host directory `state`.
fn component_pod(name: &str, args: &[&str], restart: &str, state: &Path) -> String {
    wasm_pod(
        name,
        &guest_wasm(GuestTarget::P2),
        args,
        restart,
        &format!(
            "    volumeMounts:\n    - name: state\n      mountPath: /state\n  volumes:\n  - name: state\n    hostPath:\n      path: {}\n      type: Directory\n",
            state.display()
        ),
    )
}

/// The node's data path counters (`kedge get routes -o json`).
fn data_counters(broker: &Mosquitto, node: &str) -> serde_json::Value {
    let json = kedge_ok(&[
        "--broker",
        &broker.url(),
        "get",
        "routes",
        "--node",
        node,
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("json");
    list["items"][0]["data"].clone()
}

/// One workload's world: a persistent Mosquitto, PostgreSQL, an agent with
/// a data path, the sink, and a subscriber on `#`.
struct DataWorld {
    broker: Mosquitto,
    pg: Postgres,
    dir: tempfile::TempDir,
    agent: Agent,
    agent_opts: AgentOpts,
    node: &'static str,
    _sink: support::data::Sink,
    everything: Subscriber,
}

impl DataWorld {
    /// Starts it all; the agent with `env` and `extra_args` besides the
    /// data path's settings.
    fn start(node: &'static str, env: Vec<(String, String)>, extra_args: Vec<String>) -> DataWorld {
        if support::postgres::pg_bin_dir().is_none() {
            panic!(
                "PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)"
            );
        }
        let broker = Mosquitto::start_persistent();
        let pg = Postgres::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let (sink_key, sink_public) = sink_keygen(dir.path());
        let mut all_env: Vec<(String, String)> = vec![
            ("KEDGE_DATA_SINK_PUBLIC_KEY".into(), sink_public),
            (
                "KEDGE_DATA_LISTEN".into(),
                format!("127.0.0.1:{}", free_port()),
            ),
            ("KEDGE_DATA_BATCH_MAX_MESSAGES".into(), "200".into()),
            ("KEDGE_BROKER_RECONNECT_MAX_MS".into(), "1000".into()),
            ("KEDGE_NODE_HEARTBEAT_MS".into(), "1000".into()),
        ];
        all_env.extend(env);
        let agent_opts = AgentOpts {
            node: node.into(),
            broker_url: Some(broker.url()),
            data_dir: dir.path().join("data"),
            extra_args,
            env: all_env,
        };
        let agent = Agent::start(agent_opts.clone());
        let key = dir.path().join("data/data/device-key.pk8.pub");
        if poll_until(WAIT, Duration::from_millis(50), || {
            key.exists().then_some(())
        })
        .is_none()
        {
            panic!(
                "the agent made no device key ({}) in {WAIT:?}; its log:\n{}",
                key.display(),
                agent.log()
            );
        }
        let sink = start_sink(&broker, &pg, dir.path(), &sink_key, node, "info");
        let everything = Subscriber::start(&broker.url(), "#", None);
        DataWorld {
            broker,
            pg,
            dir,
            agent,
            agent_opts,
            node,
            _sink: sink,
            everything,
        }
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        kedge_ok(&[
            "--broker",
            &self.broker.url(),
            "apply",
            "-f",
            file.to_str().expect("utf8"),
            "--node",
            self.node,
        ]);
    }

    fn rows(&self) -> u64 {
        count(&self.pg, "SELECT count(*) FROM kedge_messages")
    }

    /// Issue 12's scenario for a workload publishing N messages, gated by
    /// `allow` and reporting how many were acknowledged by `progress`: a
    /// third online (and in PostgreSQL); the broker stopped; a third into
    /// the store; the agent killed with -9 in the middle of the last third
    /// and started again; the broker away for `OUTAGE` at least, nothing
    /// reaching PostgreSQL meanwhile; then back, and every message in
    /// PostgreSQL. Returns the workload's progress when the agent died.
    fn through_outage_and_crash(&mut self, allow: &dyn Fn(u64), progress: &dyn Fn() -> u64) -> u64 {
        let progress_reaches = |what: &str, n: u64| {
            wait_until(what, WAIT, || (progress() >= n).then_some(()));
        };
        progress_reaches("the first third published", N / 3);
        wait_until("the first rows in PostgreSQL", WAIT, || {
            (self.rows() >= N / 10).then_some(())
        });
        self.broker.stop_gracefully();
        let outage = std::time::Instant::now();
        allow(2 * N / 3);
        progress_reaches("the second third published with the broker away", 2 * N / 3);
        let rows_offline = self.rows();
        allow(N);
        progress_reaches("a few more published", 2 * N / 3 + 10);
        self.agent.kill9();
        let at_kill = progress();
        eprintln!("agent killed with {at_kill} of {N} publishes acknowledged");
        self.agent = Agent::start(self.agent_opts.clone());
        if poll_until(WAIT, Duration::from_millis(50), || {
            (progress() >= N).then_some(())
        })
        .is_none()
        {
            let log = self.agent.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            panic!(
                "only {} of {N} publishes acknowledged after the restart; the agent's log (tail, newest first):\n{}",
                progress(),
                tail.join("\n")
            );
        }
        // The rest of the outage: nothing reaches PostgreSQL while the
        // broker is away (checked all along), everything waits on the device.
        while outage.elapsed() < OUTAGE {
            assert_eq!(
                self.rows(),
                rows_offline,
                "a row arrived with the broker away"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(rows_offline < N, "the outage held messages back");
        eprintln!(
            "broker away for {:.1?}; {rows_offline} rows stored before it",
            outage.elapsed()
        );
        self.broker.restart();
        let distinct = || {
            count(
                &self.pg,
                "SELECT count(DISTINCT payload_json->>'n') FROM kedge_messages",
            )
        };
        if poll_until(WAIT, Duration::from_millis(100), || {
            (distinct() >= N).then_some(())
        })
        .is_none()
        {
            let tail: Vec<String> = self
                .agent
                .log()
                .lines()
                .filter(|l| l.contains("data"))
                .rev()
                .take(40)
                .map(str::to_string)
                .collect();
            panic!(
                "only {} of {N} messages in PostgreSQL; the agent's data log (newest first):\n{}",
                distinct(),
                tail.join("\n")
            );
        }
        at_kill
    }

    /// Every message of `pod`'s container `main` in PostgreSQL once, in
    /// the order it sent them, and nothing else.
    fn assert_exactly_once_in_order(&self, pod: &str) {
        let order: Vec<u64> = self
            .pg
            .psql(&format!(
                "SELECT string_agg(payload_json->>'n', ',' ORDER BY seq) FROM kedge_messages \
                 WHERE device = '{}' AND namespace = 'default' AND pod = '{pod}' AND container = 'main'",
                self.node
            ))
            .split(',')
            .map(|n| n.parse().expect("n"))
            .collect();
        let repeated: Vec<u64> = order
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        assert_eq!(repeated, [0u64; 0], "stored twice");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "order per source broken"
        );
        assert_eq!(order, (0..N).collect::<Vec<u64>>());
        assert_eq!(self.rows(), N, "nothing of another source");
    }

    /// The node status once the backlog is sent: one route took it all,
    /// declared by `declared_by` (None: the node).
    fn assert_counted(&self, declared_by: Option<&str>) -> serde_json::Value {
        let data = wait_until("the node status counts the backlog as sent", WAIT, || {
            let data = data_counters(&self.broker, self.node);
            (data["queued"] == 0 && data["sent"].as_u64() >= Some(N / 3)).then_some(data)
        });
        let route = &data["routes"][0];
        assert_eq!(route["pod"].as_str(), declared_by, "{data}");
        assert_eq!(route["sent"], data["sent"], "{data}");
        assert_eq!(data["unrouted"], 0, "{data}");
        for dropped in ["dropped_ttl", "dropped_budget"] {
            assert_eq!(data[dropped], 0, "{data}");
        }
        data
    }

    /// The broker saw data batches, and only ciphertext: no workload topic,
    /// no plaintext byte pattern of any message.
    fn assert_only_ciphertext(&self) {
        only_ciphertext(&self.everything.messages(), self.node);
    }
}

/// A number in the first word of `dir/file`, 0 when there is none yet.
fn progress_in(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A Wasm component publishes 10,000 messages through the host interface
/// (`kedge:data/publish`) while the broker is away for 30 s and the agent
/// is killed with -9 in the middle: every message reaches PostgreSQL
/// exactly once, in order, sealed on the wire; the component (which dies
/// with the agent) is started again and resumes from its own record of
/// what was acknowledged.
///
/// Why exactly once: `publish-once` returns `ok` only after the commit, and
/// the guest records its progress after each `ok`, so the message in flight
/// when the agent died may have been stored without the guest learning it;
/// the guest sends it again with the same sequence, and the device, which
/// committed the sequence with the message, does not store it again. (With
/// plain `publish` that one message would be stored twice: the sink
/// deduplicates by the device's message id, which a re-send does not
/// share.) A pod no route names is refused with `no-route`, and counted.
#[test]
fn a_wasm_components_messages_reach_postgres_exactly_once_through_outage_and_crash_sealed_on_the_wire()
 {
    const ROUTE: &str = "FROM default/meter sensors/# INTO $upstream TTL 1h";
    let mut world = DataWorld::start(
        "gw-wasm-data",
        vec![("KEDGE_DATA_ROUTES".into(), ROUTE.into())],
        vec![],
    );
    let url = world.broker.url();

    // A pod no route names: its publish is refused with a reason (the
    // guest prints it and exits 3), and counted as unrouted.
    let stray_state = world.dir.path().join("stray");
    std::fs::create_dir_all(&stray_state).expect("mkdir");
    world.apply(
        "stray",
        &component_pod(
            "stray",
            &["publish", "1", "sensors/t", "/state"],
            "Never",
            &stray_state,
        ),
    );
    wait_until("the stray pod failed", WAIT, || {
        (support::data::pod_phase(&url, "stray").as_deref() == Some("Failed")).then_some(())
    });
    let logs = kedge_ok(&["--broker", &url, "logs", "stray"]);
    assert!(
        logs.contains("publish 0: ") && logs.contains("NoRoute"),
        "{logs}"
    );
    let counted = wait_until("the refusal counted as unrouted", WAIT, || {
        let data = data_counters(&world.broker, world.node);
        (data["unrouted"] == 1).then_some(data)
    });
    assert_eq!(counted["received"], 1, "{counted}");
    assert_eq!(counted["queued"], 0, "nothing stored: {counted}");

    // The component, gated by `allowed` in its state directory.
    let state = world.dir.path().join("meter");
    std::fs::create_dir_all(&state).expect("mkdir");
    let allow = |n: u64| std::fs::write(state.join("allowed"), n.to_string()).expect("allow");
    allow(N / 3);
    let n = N.to_string();
    world.apply(
        "meter",
        &component_pod(
            "meter",
            &["publish-once", &n, "sensors/t", "/state"],
            "OnFailure",
            &state,
        ),
    );
    let at_kill = world.through_outage_and_crash(&allow, &|| progress_in(&state, "next"));
    world.assert_exactly_once_in_order("meter");

    // Since the restart the route stored every message received but the
    // re-sent one, when it had been stored before the crash.
    let data = world.assert_counted(None);
    assert_eq!(data["routes"][0]["route"], ROUTE, "{data}");
    let (received, stored) = (
        data["received"].as_u64().expect("received"),
        data["routes"][0]["received"].as_u64().expect("stored"),
    );
    assert!(received == stored || received == stored + 1, "{data}");
    eprintln!(
        "{N} messages in PostgreSQL once each; the message in flight at the crash ({at_kill}) {}",
        if received > stored {
            "had been stored before it, and its re-send was recognised"
        } else {
            "had not been stored before it"
        }
    );
    world.assert_only_ciphertext();
}

/// A Wasm component publishes 10,000 messages in batches of 50 through
/// `publish-batch-once` (`kedge:data/publish@0.2.0`: each batch one commit,
/// all or nothing, one sequence for the batch) through the same outage and
/// crash: every message in PostgreSQL exactly once, in order. The batch in
/// flight when the agent died is sent again whole with its sequence, and
/// stored once.
#[test]
fn a_wasm_components_batches_reach_postgres_exactly_once_through_outage_and_crash() {
    const ROUTE: &str = "FROM default/meter sensors/# INTO $upstream TTL 1h";
    let mut world = DataWorld::start(
        "gw-wasm-batch",
        vec![("KEDGE_DATA_ROUTES".into(), ROUTE.into())],
        vec![],
    );
    let state = world.dir.path().join("meter");
    std::fs::create_dir_all(&state).expect("mkdir");
    let allow = |n: u64| std::fs::write(state.join("allowed"), n.to_string()).expect("allow");
    allow(N / 3);
    let n = N.to_string();
    world.apply(
        "meter",
        &component_pod(
            "meter",
            &["publish-batch-once", &n, "50", "sensors/t", "/state"],
            "OnFailure",
            &state,
        ),
    );
    let at_kill = world.through_outage_and_crash(&allow, &|| progress_in(&state, "next"));
    assert_eq!(at_kill % 50, 0, "progress moves a whole batch at a time");
    world.assert_exactly_once_in_order("meter");
    let data = world.assert_counted(None);
    let (received, stored) = (
        data["received"].as_u64().expect("received"),
        data["routes"][0]["received"].as_u64().expect("stored"),
    );
    // Since the restart: every message received was stored, but the
    // re-sent batch's when it had been stored before the crash.
    assert!(received == stored || received == stored + 50, "{data}");
    world.assert_only_ciphertext();
}

/// The agent still links version 0.1.0 of the interface beside 0.2.0: a
/// call through 0.1.0's `publish` (what a guest built before 0.2.0 makes)
/// is stored and reaches PostgreSQL.
#[test]
fn a_component_calling_the_0_1_0_interface_still_publishes() {
    let world = DataWorld::start(
        "gw-wit-0-1",
        vec![(
            "KEDGE_DATA_ROUTES".into(),
            "FROM default/old sensors/# INTO $upstream".into(),
        )],
        vec![],
    );
    let state = world.dir.path().join("old");
    std::fs::create_dir_all(&state).expect("mkdir");
    world.apply(
        "old",
        &component_pod("old", &["publish-0.1", "sensors/t"], "Never", &state),
    );
    let url = world.broker.url();
    wait_until(
        "the 0.1.0 caller succeeded",
        WAIT,
        || match support::data::pod_phase(&url, "old").as_deref() {
            Some("Succeeded") => Some(()),
            Some("Failed") => panic!("{}", kedge_ok(&["--broker", &url, "logs", "old"])),
            _ => None,
        },
    );
    wait_until("its message in PostgreSQL", WAIT, || {
        (world.rows() >= 1).then_some(())
    });
    assert_eq!(
        world.pg.psql(
            "SELECT pod || ' ' || topic || ' ' || (payload_json->>'via') FROM kedge_messages"
        ),
        "old sensors/t 0.1.0"
    );
}

/// Route priorities: a pod's alarms route at `PRIORITY 0` and its readings
/// route at the default (9). With the broker away, 1,000 readings and then
/// 1,000 alarms wait on the device; when it is back, every alarm reaches
/// PostgreSQL before any reading (the sink's commit order: its transaction
/// time, then the rows' order in the table), though the readings were
/// stored first, and each message once, in order within its route. `kedge
/// get routes` shows each route's priority.
#[test]
fn a_higher_priority_routes_backlog_reaches_postgres_first() {
    const ROUTES: &str =
        "FROM * readings/# INTO $upstream; FROM * alarms/# INTO $upstream PRIORITY 0";
    const M: u64 = 1_000;
    let mut world = DataWorld::start("gw-prio", vec![], vec![]);
    let credentials = run_env_pod(
        &world.broker,
        world.dir.path(),
        world.node,
        "meter",
        &env_pod("meter").replace(
            "  name: meter\n",
            &format!("  name: meter\n  annotations:\n    kedge.io/routes: \"{ROUTES}\"\n"),
        ),
    );
    let payloads = |range: std::ops::Range<u64>| range.map(|i| format!("{{\"n\":{i}}}"));
    world.broker.stop_gracefully();
    // Each acknowledged once committed on the device.
    publish_acked(
        credentials.clone(),
        "meter-main",
        "readings/kwh",
        payloads(0..M),
    );
    publish_acked(credentials, "meter-main", "alarms/high", payloads(0..M));
    assert_eq!(
        world.rows(),
        0,
        "nothing reached PostgreSQL with the broker away"
    );
    world.broker.restart();
    wait_until("every message in PostgreSQL", WAIT, || {
        (world.rows() >= 2 * M).then_some(())
    });
    let order = world.pg.psql(
        "SELECT string_agg(left(topic, 1), '' ORDER BY received_time, ctid) FROM kedge_messages",
    );
    let first_reading = order.find('r').expect("readings");
    assert_eq!(
        (first_reading as u64, order.rfind('a').map(|i| i as u64)),
        (M, Some(M - 1)),
        "every alarm before the first reading"
    );
    for topic in ["alarms/high", "readings/kwh"] {
        let sent: Vec<u64> = world
            .pg
            .psql(&format!(
                "SELECT string_agg(payload_json->>'n', ',' ORDER BY seq) FROM kedge_messages WHERE topic = '{topic}'"
            ))
            .split(',')
            .map(|n| n.parse().expect("n"))
            .collect();
        assert_eq!(
            sent,
            (0..M).collect::<Vec<u64>>(),
            "{topic}: once each, in order"
        );
    }
    assert_eq!(world.rows(), 2 * M, "nothing else");
    // The readings were stored first: lower device ids, sent later.
    assert_eq!(
        world.pg.psql(
            "SELECT max(seq) FILTER (WHERE topic = 'readings/kwh') < min(seq) FILTER (WHERE topic = 'alarms/high') FROM kedge_messages"
        ),
        "t"
    );
    // The routes' lines: their priorities, everything sent.
    let data = wait_until("the node status counts the backlog as sent", WAIT, || {
        let data = data_counters(&world.broker, world.node);
        (data["queued"] == 0 && data["sent"] == 2 * M).then_some(data)
    });
    let line = |text: &str| {
        data["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["route"].as_str().is_some_and(|r| r.contains(text)))
            .cloned()
            .unwrap_or_else(|| panic!("no route of {text}: {data}"))
    };
    let (alarms, readings) = (line("alarms/#"), line("readings/#"));
    assert_eq!(
        alarms["route"],
        "FROM default/meter alarms/# INTO $upstream TTL 2h PRIORITY 0"
    );
    assert_eq!(
        (alarms["priority"].as_u64(), alarms["sent"].as_u64()),
        (Some(0), Some(M))
    );
    assert_eq!(
        (readings["priority"].as_u64(), readings["sent"].as_u64()),
        (Some(9), Some(M))
    );
    let table = kedge_ok(&[
        "--broker",
        &world.broker.url(),
        "get",
        "routes",
        "--node",
        world.node,
    ]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("PRIORITY")),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains("alarms/#"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[1..4],
        [
            "FROM default/meter alarms/# INTO $upstream TTL 2h PRIORITY 0",
            "pod/default/meter",
            "0"
        ],
        "{table}"
    );
}

/// A real container — a small static MQTT client (`tests/data-client`)
/// that the test builds into a local image for a real containerd —
/// publishes 10,000 messages to the data endpoint with the credentials
/// the agent injected (its pod's own route, `kedge.io/routes`), QoS 2 and
/// a persistent session, while the broker is away for 30 s and the agent
/// is killed with -9 in the middle (the container keeps running and
/// reconnects; the agent adopts it): every message in PostgreSQL exactly
/// once, in order, sealed on the wire.
#[test]
fn a_containers_messages_reach_postgres_exactly_once_through_outage_and_crash_sealed_on_the_wire() {
    use support::cri::{Containerd, busybox_with, cri_tests_can_run};
    if !cri_tests_can_run(
        "a_containers_messages_reach_postgres_exactly_once_through_outage_and_crash_sealed_on_the_wire",
    ) {
        return;
    }
    const IMAGE: &str = "kedge.test/data-client:1";
    // Dropped after the world (declared first): containerd tears down the
    // pod once the agent is gone.
    let containerd = Containerd::start();
    let images = tempfile::tempdir().expect("tempdir");
    containerd.import(&busybox_with(
        &support::data::data_client_bin(),
        IMAGE,
        images.path(),
    ));
    let mut extra = containerd.agent_args();
    for set in ["backoff.initial_ms=300", "backoff.max_ms=1000"] {
        extra.extend(["--set".into(), set.into()]);
    }
    let mut world = DataWorld::start("gw-cri-data", vec![], extra);

    let state = world.dir.path().join("client");
    std::fs::create_dir_all(&state).expect("mkdir");
    let allow = |n: u64| std::fs::write(state.join("allowed"), n.to_string()).expect("allow");
    allow(N / 3);
    world.apply(
        "client",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: client
  annotations:
    kedge.io/routes: "FROM main sensors/# INTO $upstream TTL 1h"
spec:
  hostNetwork: true
  restartPolicy: OnFailure
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/data-client", "{N}", "sensors/t", "/state"]
    volumeMounts: [{{name: state, mountPath: /state}}]
  volumes:
  - name: state
    hostPath: {{path: {}, type: Directory}}
"#,
            state.display()
        ),
    );
    let at_kill = world.through_outage_and_crash(&allow, &|| progress_in(&state, "state"));
    eprintln!("the container was at message {at_kill} when the agent died");
    world.assert_exactly_once_in_order("client");
    // Since the restart the pod's route stored every message received but
    // the re-sent one, when the agent had stored it before it died.
    let data = world.assert_counted(Some("default/client"));
    let (received, stored) = (
        data["received"].as_u64().expect("received"),
        data["routes"][0]["received"].as_u64().expect("stored"),
    );
    assert!(received == stored || received == stored + 1, "{data}");
    world.assert_only_ciphertext();
    let logs = kedge_ok(&["--broker", &world.broker.url(), "logs", "client"]);
    assert!(logs.contains(&format!("published {N} of {N}")), "{logs}");
    drop(world);
}

/// What a subscriber on `#` saw (`seen`): data batches of `node`, and only
/// ciphertext: no workload topic, no plaintext byte pattern of any message.
/// Returns the batches.
fn only_ciphertext(seen: &[(String, Vec<u8>)], node: &str) -> Vec<Vec<u8>> {
    let data_topic = format!("kedge/v1/{node}/data");
    let batches: Vec<Vec<u8>> = seen
        .iter()
        .filter(|(t, _)| *t == data_topic)
        .map(|(_, p)| p.clone())
        .collect();
    assert!(!batches.is_empty(), "no data batch seen on {data_topic}");
    for (topic, payload) in seen {
        assert!(
            !topic.starts_with("sensors"),
            "a workload topic on the broker: {topic}"
        );
        let text = String::from_utf8_lossy(payload);
        assert!(
            !text.contains("plaintext-marker") && !text.contains("\"n\":"),
            "plaintext on {topic}"
        );
    }
    batches
}
