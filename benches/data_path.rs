//! `cargo bench --features sink --bench data_path`: what the data path
//! costs next to the floor, in one world (issue 12, "What it must show"): a
//! real Mosquitto, a real PostgreSQL (Debian's package, its own cluster), a
//! `kedge agent` with the data path and `kedge sink`.
//!
//! The workload is a client standing in for a container of a real Wasm pod
//! that a route names (it uses the credentials the agent injected into the
//! pod; the pod prints them), publishing JSON telemetry with QoS 1 and 100
//! publishes in flight to the agent's endpoint. The floor is the same
//! client publishing the same payloads straight to the same broker, and a
//! subscriber in this process inserting what it receives into the same
//! database (one multi-row INSERT per drained burst, at most 1,000 rows;
//! the JSON column's text checked as the sink checks it, large values
//! compressed with LZ4 as the sink has them). A round ends
//! when the last row is in: the poll reads the span of `seq` off the
//! primary key and counts the rows only once that span is complete.
//!
//! Tables, goals printed beside the figures, never asserted:
//!
//! 1. throughput: messages per second from the first publish to the last
//!    row in PostgreSQL, 100-byte and 1-KB messages, kedge and the floor in
//!    alternating rounds (goal: ≥ 20,000 messages/s, within 1.5× of the
//!    floor);
//! 2. latency: publish → row (`received_time`, the inserting transaction's
//!    start, a little before its commit) of messages paced at 1,000/s, so
//!    that it is the path's latency and not a queue's (goal: p50 ≤ 10 ms);
//! 3. bytes on the link per message (MQTT PUBLISH and PUBACK between the
//!    device and the broker) with batching and LZ4, batching alone, neither
//!    (`data.batch_max_messages = 1`), and the floor's plain publish;
//!    kedge's from the agent's own counters (`kedge get routes -o json`:
//!    sealed bytes and batches).
//!
//! Environment: `KEDGE_BENCH_MESSAGES` (20000) per throughput round,
//! `KEDGE_BENCH_ROUNDS` (3) rounds of each, `KEDGE_BENCH_PACED` (1000)
//! latency samples, `KEDGE_BENCH_AGENT_LOG` (warn) and `KEDGE_BENCH_SINK_LOG`
//! (info) their `KEDGE_LOG`, `KEDGE_BENCH_KEEP` (unset) keeps the temporary
//! directory with their logs. Skips with one line without PostgreSQL.

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stats::Summary;
use support::data::{endpoint, env_pod, run_env_pod, sink_keygen, start_sink};
use support::postgres::Postgres;
use support::{Agent, AgentOpts, Mosquitto, free_port, kedge_ok, wait_until};

const NODE: &str = "gw-bench";
const ROUTE: &str = "FROM default/sensor sensors/# INTO $upstream TTL 1h";
const WAIT: Duration = Duration::from_secs(300);
const INFLIGHT: u16 = 100;
const SIZES: [usize; 2] = [100, 1024];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A telemetry reading of about `size` bytes: the publish time in µs (`t`),
/// a counter and pseudo-random readings with two decimals (JSON as
/// sensors send it: it compresses about as well as real telemetry does).
fn payload(n: u64, size: usize, state: &mut u64) -> Vec<u8> {
    let mut s = format!(
        "{{\"t\":{},\"n\":{n},\"sensor\":\"line-3/press-7\",\"readings\":[",
        now_us()
    );
    let mut first = true;
    while s.len() + 8 < size {
        // xorshift64
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&format!("{}.{:02}", 10 + *state % 30, (*state >> 8) % 100));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// Where a client publishes: the agent's endpoint with a pod's
/// credentials, or the broker itself (the floor).
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    topic: String,
}

/// Publishes `count` messages of `size` bytes with QoS 1 (`INFLIGHT` at
/// once), one every `pace` if given; returns when every PUBACK is in.
async fn publish(
    target: &Target,
    client_id: &str,
    count: u64,
    size: usize,
    pace: Option<Duration>,
) {
    let mut opts = rumqttc::MqttOptions::new(client_id, target.host.clone(), target.port);
    if let Some((u, p)) = &target.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(INFLIGHT);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
    let topic = target.topic.clone();
    let publisher = tokio::spawn(async move {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = Instant::now();
        for n in 0..count {
            if let Some(pace) = pace {
                next += pace;
                tokio::time::sleep_until(next.into()).await;
            }
            client
                .publish(
                    &topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload(n, size, &mut state),
                )
                .await
                .expect("queue a publish");
        }
        client
    });
    let mut acked = 0;
    while acked < count {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publishing to {}:{}: {e}", target.host, target.port),
            Err(_) => panic!("only {acked} of {count} publishes acknowledged"),
        }
    }
    let client = publisher.await.expect("publisher");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

async fn rows(db: &tokio_postgres::Client, table: &str) -> u64 {
    let row = db
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count");
    row.get::<_, i64>(0) as u64
}

/// The span of `seq` in `table` (`max - min + 1`; 0 when empty), read
/// from the primary key's B-tree ends: no scan. Both tables' `seq` are
/// consecutive within a round (the device's message ids, the floor's
/// `bigserial`), so it is the number of rows at every commit.
async fn seq_span(db: &tokio_postgres::Client, table: &str) -> u64 {
    let filter = if table == "kedge_messages" {
        format!(" WHERE device = '{NODE}'")
    } else {
        String::new()
    };
    let row = db
        .query_one(
            &format!("SELECT COALESCE(max(seq) - min(seq) + 1, 0) FROM {table}{filter}"),
            &[],
        )
        .await
        .expect("seq span");
    row.get::<_, i64>(0) as u64
}

/// Waits until `table` holds `n` rows; the time it took since `start`.
/// Polls the cheap `seq_span` and counts the rows only once it reaches `n`
/// (a `count(*)` every 5 ms scanned the growing table continuously, a
/// fifth of PostgreSQL's CPU during a round, taken from the inserts of
/// kedge and of the floor alike).
async fn until_rows(db: &tokio_postgres::Client, table: &str, n: u64, start: Instant) -> Duration {
    let deadline = start + WAIT;
    loop {
        if seq_span(db, table).await >= n && rows(db, table).await >= n {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{table}: {} of {n} rows after {WAIT:?}",
            rows(db, table).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publish → row of every row in `table`.
async fn latencies(db: &tokio_postgres::Client, table: &str) -> Summary {
    let sql = format!(
        "SELECT (payload_json->>'t')::bigint, (extract(epoch FROM received_time) * 1000000)::bigint FROM {table}"
    );
    let rows = db.query(&sql, &[]).await.expect("latencies");
    Summary::new(rows.iter().map(|r| {
        let (sent, stored): (i64, i64) = (r.get(0), r.get(1));
        Duration::from_micros(stored.saturating_sub(sent).max(0) as u64)
    }))
}

/// The floor's subscriber: what the broker delivers on `floor/#`, into
/// `floor_messages`, one multi-row INSERT per burst.
async fn floor_subscriber(
    broker: (String, u16),
    conn: String,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let (db, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS floor_messages (
            seq bigserial PRIMARY KEY,
            topic text NOT NULL,
            payload bytea NOT NULL,
            payload_json jsonb,
            received_time timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .expect("create");
    // Large values compressed with LZ4, as the sink's connection has them.
    db.batch_execute("SET default_toast_compression = 'lz4'")
        .await
        .expect("lz4");
    let insert = db
        .prepare(
            "INSERT INTO floor_messages (topic, payload, payload_json) \
             SELECT t, p, j::jsonb FROM unnest($1::text[], $2::bytea[], $3::text[]) AS u(t, p, j)",
        )
        .await
        .expect("prepare");
    let mut opts = rumqttc::MqttOptions::new("floor-subscriber", broker.0, broker.1);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
    client
        .subscribe("floor/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let mut ready = Some(ready);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    while let Some(first) = rx.recv().await {
        let mut burst = vec![first];
        while burst.len() < 1000 {
            match rx.try_recv() {
                Ok(p) => burst.push(p),
                Err(_) => break,
            }
        }
        let topics: Vec<String> = burst.iter().map(|p| p.topic.clone()).collect();
        let payloads: Vec<Vec<u8>> = burst.iter().map(|p| p.payload.to_vec()).collect();
        // JSON checked as the sink checks plain JSON (without building a
        // `serde_json::Value`), and stored as sent.
        let json: Vec<Option<String>> = burst
            .iter()
            .map(|p| {
                let text = std::str::from_utf8(&p.payload).ok()?;
                serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
                Some(text.to_string())
            })
            .collect();
        db.execute(&insert, &[&topics, &payloads, &json])
            .await
            .expect("insert");
    }
}

/// The data path's counters in the agent's node status (null while the
/// retained status is the last will).
fn counters(broker_url: &str) -> serde_json::Value {
    let json = kedge_ok(&[
        "--broker", broker_url, "get", "routes", "--node", NODE, "-o", "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("json");
    list["items"][0]["data"].clone()
}

/// MQTT 3.1.1 bytes of one QoS 1 PUBLISH of `payload` bytes on `topic`,
/// and its PUBACK.
fn mqtt_bytes(topic: &str, payload: f64) -> f64 {
    let remaining = 2.0 + topic.len() as f64 + 2.0 + payload;
    let varint = match remaining as u64 {
        0..=127 => 1.0,
        128..=16_383 => 2.0,
        16_384..=2_097_151 => 3.0,
        _ => 4.0,
    };
    1.0 + varint + remaining + 4.0
}

/// One configuration of the device.
struct Device {
    agent: Agent,
    opts: AgentOpts,
}

impl Device {
    fn restart(&mut self, extra_env: &[(&str, &str)]) {
        let mut opts = self.opts.clone();
        opts.env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        self.agent.kill9();
        self.agent = Agent::start(opts);
    }
}

fn main() {
    if support::postgres::pg_bin_dir().is_none() {
        println!("SKIP data_path: PostgreSQL is not installed (apt-get install postgresql)");
        return;
    }
    let messages = env_usize("KEDGE_BENCH_MESSAGES", 20_000) as u64;
    let rounds = env_usize("KEDGE_BENCH_ROUNDS", 3);
    let paced = env_usize("KEDGE_BENCH_PACED", 1000) as u64;
    let agent_log = std::env::var("KEDGE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    let sink_log = std::env::var("KEDGE_BENCH_SINK_LOG").unwrap_or_else(|_| "info".into());

    let broker = Mosquitto::start_custom(false, |port| {
        format!(
            "user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_packet_size 15728640\n\
             max_queued_messages 100000\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        )
    });
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("KEDGE_BENCH_KEEP").is_some() {
        println!(
            "keeping {} (the agent's and the sink's logs)",
            dir.path().display()
        );
    }
    let (sink_key, sink_public) = sink_keygen(dir.path());
    let data_port = free_port();
    let opts = AgentOpts {
        node: NODE.into(),
        broker_url: Some(broker.url()),
        data_dir: dir.path().join("data"),
        extra_args: vec![],
        env: vec![
            ("KEDGE_LOG".into(), agent_log.clone()),
            ("KEDGE_DATA_ROUTES".into(), ROUTE.into()),
            ("KEDGE_DATA_SINK_PUBLIC_KEY".into(), sink_public),
            ("KEDGE_DATA_LISTEN".into(), format!("127.0.0.1:{data_port}")),
            ("KEDGE_NODE_HEARTBEAT_MS".into(), "1000".into()),
        ],
    };
    let mut device = Device {
        agent: Agent::start(opts.clone()),
        opts,
    };
    let (url, username, password) =
        run_env_pod(&broker, dir.path(), NODE, "sensor", &env_pod("sensor"));
    let (host, port) = endpoint(&url);
    let kedge = Target {
        host,
        port,
        credentials: Some((username, password)),
        topic: "sensors/t".into(),
    };
    let broker_addr = ("127.0.0.1".to_string(), broker.port);
    let floor = Target {
        host: broker_addr.0.clone(),
        port: broker_addr.1,
        credentials: None,
        topic: "floor/sensors/t".into(),
    };
    let sink = start_sink(&broker, &pg, dir.path(), &sink_key, NODE, &sink_log);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let conn = pg.conn();
    let db = rt.block_on(async {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(floor_subscriber(
            broker_addr.clone(),
            conn.clone(),
            ready_tx,
        ));
        ready.await.expect("the floor's subscriber subscribed");
        let (db, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        db
    });
    let broker_url = broker.url();
    // One throughput round: `count` messages through `target` into `table`
    // (emptied first); messages per second.
    let round = |target: &Target, table: &str, size: usize, count: u64| -> f64 {
        rt.block_on(async {
            db.batch_execute(&format!("TRUNCATE {table}"))
                .await
                .expect("truncate");
            let start = Instant::now();
            publish(target, "bench-publisher", count, size, None).await;
            let took = until_rows(&db, table, count, start).await;
            count as f64 / took.as_secs_f64()
        })
    };
    let paced_run = |target: &Target, table: &str, size: usize| -> Summary {
        rt.block_on(async {
            db.batch_execute(&format!("TRUNCATE {table}"))
                .await
                .expect("truncate");
            publish(
                target,
                "bench-publisher",
                paced,
                size,
                Some(Duration::from_millis(1)),
            )
            .await;
            until_rows(&db, table, paced, Instant::now()).await;
            latencies(&db, table).await
        })
    };
    // The agent's counters after everything it received was sent.
    let settled = |expect_sent: u64| -> serde_json::Value {
        wait_until("the agent counted every message sent", WAIT, || {
            let d = counters(&broker_url);
            (d["sent"].as_u64() >= Some(expect_sent) && d["queued"] == 0).then_some(d)
        })
    };
    let bytes_per_message = |before: &serde_json::Value, after: &serde_json::Value| -> (f64, f64) {
        let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        let (sent, batches, link) = (
            delta("sent") as f64,
            delta("batches") as f64,
            delta("link_bytes") as f64,
        );
        let topic = format!("kedge/v1/{NODE}/data");
        let per_batch = mqtt_bytes(&topic, link / batches);
        (batches * per_batch / sent, sent / batches)
    };

    // Throughput, alternating, and the counters of the default device
    // (batches of up to 1,000 messages, LZ4) around its rounds.
    let mut throughput: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut link: Vec<(usize, &str, f64, f64)> = Vec::new();
    let mut sent_so_far = 0;
    for size in SIZES {
        let (mut k, mut f) = (Vec::new(), Vec::new());
        let before = settled(sent_so_far);
        for _ in 0..rounds {
            f.push(round(&floor, "floor_messages", size, messages));
            k.push(round(&kedge, "kedge_messages", size, messages));
        }
        sent_so_far += messages * rounds as u64;
        let after = settled(sent_so_far);
        let (per_message, per_batch) = bytes_per_message(&before, &after);
        link.push((
            size,
            "kedge: batches and LZ4 (the default)",
            per_message,
            per_batch,
        ));
        throughput.push((size, k, f));
    }
    // Latency, paced.
    let mut latency = Vec::new();
    for size in SIZES {
        let f = paced_run(&floor, "floor_messages", size);
        let k = paced_run(&kedge, "kedge_messages", size);
        latency.push((size, k, f));
    }
    sent_so_far += paced * SIZES.len() as u64;
    // Bytes without compression, and without batching: the same device
    // restarted with each setting (the counters start again at 0).
    for (label, env) in [
        (
            "kedge: batches, no compression",
            vec![("KEDGE_DATA_COMPRESSION", "none")],
        ),
        (
            "kedge: one message per publish, no compression",
            vec![
                ("KEDGE_DATA_COMPRESSION", "none"),
                ("KEDGE_DATA_BATCH_MAX_MESSAGES", "1"),
            ],
        ),
    ] {
        let _ = settled(sent_so_far);
        device.restart(&env);
        // The new agent's counters start at 0: read them only once its own
        // status (not the old one, or the last will) is the retained one.
        let mut received = 0;
        for size in SIZES {
            let before = wait_until("the restarted agent's counters", WAIT, || {
                let d = counters(&broker_url);
                (d["received"].as_u64() == Some(received) && d["queued"] == 0).then_some(d)
            });
            let count = (messages / 4).max(1000);
            round(&kedge, "kedge_messages", size, count);
            received += count;
            let after = settled(before["sent"].as_u64().unwrap_or(0) + count);
            let (per_message, per_batch) = bytes_per_message(&before, &after);
            link.push((size, label, per_message, per_batch));
        }
        sent_so_far = received;
    }
    for size in SIZES {
        let mut state = 1;
        let sample = payload(0, size, &mut state).len() as f64;
        link.push((
            size,
            "floor: one plain publish per message",
            mqtt_bytes(&floor.topic, sample),
            1.0,
        ));
    }

    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!();
    println!(
        "## The data path vs the floor (commit {git}; {messages} messages per round, {rounds} rounds, QoS 1 with {INFLIGHT} in flight; Mosquitto set_tcp_nodelay true)"
    );
    println!();
    println!(
        "| throughput, publish → row in PostgreSQL | size | kedge msg/s (median; rounds) | floor msg/s (median; rounds) | kedge / floor | goal |"
    );
    println!("|---|---:|---|---|---:|---|");
    for (size, k, f) in &throughput {
        let (km, fm) = (median(k), median(f));
        let met = km >= 20_000.0 && fm / km <= 1.5;
        println!(
            "| workload → agent → broker → sink vs client → broker → subscriber | {size} B | {km:.0} ({}) | {fm:.0} ({}) | {:.2} | ≥ 20,000/s and floor/kedge ≤ 1.5: {} |",
            list(k),
            list(f),
            km / fm,
            if met { "met" } else { "**not met**" }
        );
    }
    println!();
    println!("| latency, publish → row (paced at 1,000/s) | size | samples | p50 | p90 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (size, k, f) in &latency {
        for (what, s) in [("kedge", k), ("floor", f)] {
            println!(
                "| {what} | {size} B | {} | {} | {} | {} |",
                s.n(),
                s.ms(50.0, 2),
                s.ms(90.0, 2),
                s.ms(99.0, 2)
            );
        }
        let p50 = k.get(50.0).unwrap_or_default().as_secs_f64() * 1000.0;
        println!(
            "| kedge p50 (goal ≤ 10 ms) | {size} B | | {p50:.2} ms: {} | | |",
            if p50 <= 10.0 { "met" } else { "**not met**" }
        );
    }
    println!();
    println!(
        "| bytes on the link per message (device ↔ broker: PUBLISH and PUBACK) | size | bytes per message | messages per publish |"
    );
    println!("|---|---:|---:|---:|");
    link.sort_by_key(|(size, ..)| *size);
    for (size, label, per_message, per_batch) in &link {
        println!("| {label} | {size} B | {per_message:.1} | {per_batch:.1} |");
    }
    drop(sink);
    drop(device);
    if std::env::var_os("KEDGE_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
