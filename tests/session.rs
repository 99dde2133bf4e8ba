//! The shared MQTT session (`kedge::mqtt::run`, used through
//! `kedge::client` by the CLI and the bridge, directly by the agent) in
//! process against a real Mosquitto: the barrier, reconnecting after the
//! broker went away, the agent's outbox across the outage, and the log RPC
//! between the client and the agent's responder. No sleeps: every wait is
//! for an event, with a deadline only to fail instead of hanging.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kedge::client::{self, ClientOptions, Inbound, Inbox};
use kedge::config::Config;
use kedge::model::{LogRequest, now_ms};
use kedge::mqtt::{self, Reconnect, SessionCommand, SessionEvent, SessionSettings};
use kedge::store::{OutboxEntry, Store};
use kedge::wire::{self, Topics};
use rumqttc::QoS;
use support::Mosquitto;
use tokio::sync::mpsc;

/// How long any single wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn config(broker: &Mosquitto) -> Config {
    let mut config = Config::default();
    config.broker.url = Some(broker.url());
    config.topic_prefix = "kedge".into();
    // Reconnect fast: the outage test waits for it.
    config.broker.reconnect_initial_ms = 20;
    config.broker.reconnect_max_ms = 200;
    config
}

async fn next(inbox: &mut Inbox, what: &str) -> Inbound {
    match tokio::time::timeout(DEADLINE, inbox.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the session ended while waiting for {what}"),
        Err(_) => panic!("no event within {DEADLINE:?} while waiting for {what}"),
    }
}

/// Reads until the barrier; returns the messages before it.
async fn until_synced(inbox: &mut Inbox) -> BTreeMap<String, Vec<u8>> {
    let mut got = BTreeMap::new();
    loop {
        match next(inbox, "the barrier").await {
            Inbound::Synced => return got,
            Inbound::Message { topic, payload } => {
                got.insert(topic, payload);
            }
            Inbound::Connected => {}
            Inbound::Disconnected { error } => panic!("disconnected before the barrier: {error}"),
        }
    }
}

async fn connected_client(config: &Config, opts: ClientOptions) -> (client::Client, Inbox) {
    let (client, mut inbox) = client::start(config, opts).expect("start client");
    until_synced(&mut inbox).await;
    (client, inbox)
}

async fn publish_retained(client: &client::Client, topics: &[(String, Vec<u8>)]) {
    for (topic, payload) in topics {
        client
            .publish_acked(topic, payload.clone(), true)
            .await
            .expect("publish acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_comes_back_after_every_retained_message() {
    let broker = Mosquitto::start();
    let config = config(&broker);
    let (publisher, _pub_inbox) = connected_client(&config, ClientOptions::new("publisher")).await;
    let first: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("kedge/t/{i}"), format!("value {i}").into_bytes()))
        .collect();
    publish_retained(&publisher, &first).await;

    // On every connection: the subscriptions' retained messages, then the barrier.
    let mut opts = ClientOptions::new("reader");
    opts.subscriptions = vec!["kedge/t/#".into()];
    let (reader, mut inbox) = client::start(&config, opts).expect("start reader");
    let got = until_synced(&mut inbox).await;
    assert_eq!(got, first.iter().cloned().collect::<BTreeMap<_, _>>());

    // On demand, with a filter read once.
    let second: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("kedge/u/{i}"), vec![i as u8; 100]))
        .collect();
    publish_retained(&publisher, &second).await;
    reader.sync(Vec::new(), vec!["kedge/u/#".into()]);
    let got = until_synced(&mut inbox).await;
    assert_eq!(got, second.iter().cloned().collect::<BTreeMap<_, _>>());

    // Subscribing again replays the retained state, and only the latest
    // barrier counts: two requests, one `Synced` each, the last one after
    // the replay.
    reader.sync(vec!["kedge/t/#".into()], Vec::new());
    let got = until_synced(&mut inbox).await;
    assert_eq!(got.len(), first.len(), "the replay precedes the barrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_reconnects_after_the_broker_went_away_and_keeps_its_subscriptions() {
    let mut broker = Mosquitto::start();
    let config = config(&broker);
    let mut opts = ClientOptions::new("survivor");
    opts.reconnect = true;
    let (survivor, mut inbox) = connected_client(&config, opts).await;
    survivor.subscribe("kedge/r/#");

    broker.stop();
    loop {
        match next(&mut inbox, "the disconnection").await {
            Inbound::Disconnected { .. } => break,
            Inbound::Message { .. } | Inbound::Synced | Inbound::Connected => {}
        }
    }
    // Nothing goes out while disconnected, and the caller hears so.
    let refused = survivor
        .publish_acked("kedge/r/while-down", b"x".to_vec(), false)
        .await;
    assert!(refused.is_err(), "{refused:?}");

    broker.restart();
    // A new connection, with its own barrier.
    match next(&mut inbox, "the new connection").await {
        Inbound::Connected => {}
        other => panic!("expected Connected, got {other:?}"),
    }
    until_synced(&mut inbox).await;
    // The run-time subscription was made again on the new connection.
    let (publisher, _p) = connected_client(&config, ClientOptions::new("publisher")).await;
    publish_retained(&publisher, &[("kedge/r/1".into(), b"after".to_vec())]).await;
    loop {
        if let Inbound::Message { topic, payload } = next(&mut inbox, "kedge/r/1").await {
            assert_eq!(
                (topic.as_str(), payload.as_slice()),
                ("kedge/r/1", &b"after"[..])
            );
            break;
        }
    }
    survivor
        .publish_acked("kedge/r/2", b"acked".to_vec(), true)
        .await
        .expect("publishes again");
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("a session event in time")
        .expect("the session runs")
}

/// The agent's role: a persistent session, manual acks and the outbox.
/// Entries committed while the broker is away go out after it came back,
/// and leave the store on their PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_outbox_drains_after_the_broker_came_back() {
    let mut broker = Mosquitto::start();
    let config = config(&broker);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).expect("store"));
    let topics = Topics::new("kedge");
    let url = kedge::config::BrokerUrl::parse(&broker.url()).expect("url");
    let options = mqtt::mqtt_options(&url, &config.broker, "kedge-agent-gw1").expect("options");
    let mut settings = SessionSettings::clean(options, &config.broker);
    settings.clean_session = false;
    settings.manual_acks = true;
    settings.subscriptions = vec![(topics.sync("gw1"), QoS::AtLeastOnce)];
    settings.sync_topic = Some(topics.sync("gw1"));
    settings.reconnect = Reconnect::Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(mqtt::run(
        settings,
        Some(store.clone()),
        commands_rx,
        events_tx,
    ));
    while !matches!(next_event(&mut events).await, SessionEvent::Synced) {}

    broker.stop();
    while !matches!(
        next_event(&mut events).await,
        SessionEvent::Disconnected { .. }
    ) {}
    for i in 0..100u32 {
        store
            .append_outbox(|_| OutboxEntry {
                topic: format!("kedge/gw1/reported/default/p{i}"),
                payload: i.to_be_bytes().to_vec(),
                retain: true,
                created_ms: now_ms(),
            })
            .expect("append");
    }
    let _ = commands.send(SessionCommand::OutboxChanged);
    broker.restart();
    while !matches!(next_event(&mut events).await, SessionEvent::Synced) {}

    // Every entry left the store on its PUBACK (the window is 32, so this
    // took several rounds after the barrier) and is at the broker.
    let store_ = store.clone();
    tokio::task::spawn_blocking(move || {
        support::wait_until("the outbox to be empty", DEADLINE, || {
            (store_.outbox_len().expect("outbox_len") == 0).then_some(())
        })
    })
    .await
    .expect("wait");
    let (_reader, mut inbox) = {
        let mut opts = ClientOptions::new("reader");
        opts.subscriptions = vec!["kedge/gw1/reported/#".into()];
        client::start(&config, opts).expect("reader")
    };
    let got = until_synced(&mut inbox).await;
    assert_eq!(got.len(), 100);
    assert_eq!(
        got.get("kedge/gw1/reported/default/p42").map(Vec::as_slice),
        Some(&42u32.to_be_bytes()[..])
    );
}

/// `kedge logs` and the bridge's `/containerLogs` (one client module)
/// against the agent's responder (`agent::logs_rpc::serve`) reading a real
/// CRI-format log file, over a real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_request_round_trips_through_the_broker() {
    let broker = Mosquitto::start();
    let config = config(&broker);
    let topics = Topics::new("kedge");

    // The device: the agent's session and its log responder.
    let pod_dir = tempfile::tempdir().expect("tempdir");
    let mut log = kedge::runtime::logs::LogFile::create(
        kedge::runtime::logs::container_log_path(pod_dir.path(), "app", 0),
        kedge::runtime::logs::Rotation {
            max_file_bytes: 10 << 20,
            max_files: 2,
        },
    )
    .expect("log file");
    let lines: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    log.write_stream(0, lines.as_bytes()).expect("write log");
    drop(log);
    let url = kedge::config::BrokerUrl::parse(&broker.url()).expect("url");
    let options = mqtt::mqtt_options(&url, &config.broker, "kedge-agent-gw1").expect("options");
    let mut settings = SessionSettings::clean(options, &config.broker);
    settings.manual_acks = true;
    settings.subscriptions = vec![
        (topics.rpc_request_filter("gw1"), QoS::AtLeastOnce),
        (topics.sync("gw1"), QoS::AtLeastOnce),
    ];
    settings.sync_topic = Some(topics.sync("gw1"));
    let (device, device_rx) = mpsc::unbounded_channel();
    let (device_events_tx, mut device_events) = mpsc::unbounded_channel();
    tokio::spawn(mqtt::run(settings, None, device_rx, device_events_tx));
    while !matches!(
        tokio::time::timeout(DEADLINE, device_events.recv()).await,
        Ok(Some(SessionEvent::Synced))
    ) {}
    let board: kedge::agent::StatusBoard = Arc::new(Mutex::new(HashMap::new()));
    let responder = {
        let device = device.clone();
        let topics = topics.clone();
        let pod_dir = pod_dir.path().to_path_buf();
        tokio::spawn(async move {
            while let Some(event) = device_events.recv().await {
                let SessionEvent::Message {
                    topic,
                    payload,
                    ack,
                } = event
                else {
                    continue;
                };
                if let Some(ack) = ack {
                    let _ = device.send(SessionCommand::Ack(ack));
                }
                let Some(wire::TopicKind::RpcRequest { request_id, .. }) = topics.parse(&topic)
                else {
                    continue;
                };
                let (_, request) = wire::decode_as::<LogRequest>(&payload).expect("a log request");
                assert_eq!(request.request_id, request_id);
                tokio::spawn(kedge::agent::logs_rpc::serve(
                    device.clone(),
                    topics.rpc_response("gw1", &request_id),
                    request,
                    pod_dir.clone(),
                    "app".into(),
                    2,
                    board.clone(),
                ));
            }
        })
    };

    // The client: the whole log, then the tail of it.
    let (client, _inbox) = connected_client(&config, ClientOptions::new("reader")).await;
    let request = |tail_lines| LogRequest {
        request_id: String::new(),
        namespace: "default".into(),
        pod: "p".into(),
        container: Some("app".into()),
        tail_lines,
        follow: false,
        previous: false,
        timestamps: false,
        since_seconds: None,
        limit_bytes: None,
    };
    for (tail, want) in [
        (None, lines.clone()),
        (Some(3), "line 4997\nline 4998\nline 4999\n".to_string()),
    ] {
        let mut stream = client.logs("gw1", request(tail)).await.expect("request");
        let mut got = Vec::new();
        loop {
            let chunk = tokio::time::timeout(DEADLINE, stream.recv())
                .await
                .expect("a chunk in time")
                .expect("the stream ends with eof, not silence");
            assert_eq!(chunk.error, None);
            got.extend_from_slice(&chunk.data);
            if chunk.eof {
                break;
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    assert_eq!(
        client
            .log_stats()
            .buffered_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // A node name that is not a topic level never reaches the broker.
    assert!(client.logs("gw1/+", request(None)).await.is_err());
    responder.abort();
}
