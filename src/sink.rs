//! `kedge sink` (feature `sink`, never in a device build): reads the
//! devices' sealed data batches through an MQTT shared subscription, opens
//! and verifies them (`data::open`), and writes their messages to
//! PostgreSQL with exactly-once effect.
//!
//! - **Keys.** `--key FILE` (repeatable: during a rotation the old and the
//!   new key) opens batches; a device's public key is `DIR/{device}.pub`
//!   under `--device-keys DIR` (hex, the agent's `device-key.pk8.pub`).
//!   Device keys come from the operator, not from the broker: a broker
//!   that could hand the sink a device's key could forge its data.
//! - **Exactly once.** Every message's key is (device, seq): `seq` is the
//!   device's node-wide message id, increasing, so the order per source is
//!   the order of `seq`. A batch's rows are one multi-row `INSERT … ON
//!   CONFLICT DO NOTHING` in one transaction, and the MQTT PUBACK (manual
//!   acks) goes only after the commit. A batch the broker delivers again, a
//!   device that sends a batch again, or a replayed batch inserts nothing.
//! - **Refusals.** A batch that does not open, whose signature does not
//!   verify, of an unknown device, or that is entirely stored already
//!   (`duplicate`: a replay or a re-send) is acknowledged (so it is not
//!   delivered forever), logged, and counted as a row in `kedge_refused`.
//! - **A database that fails** stops the acks: the batch in hand is retried
//!   every second and said so in the log; the broker keeps the rest in the
//!   sink's persistent session.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::data::{self, Batch, OpenError, SinkKey};
use crate::wire::Topics;

/// `kedge sink` arguments (broker and topic prefix come from the configuration).
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    #[command(subcommand)]
    pub command: SinkCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SinkCommand {
    /// Make a sink key file (mode 0600) and print its public key, the
    /// devices' `data.sink_public_key`.
    Keygen {
        /// Where the key goes (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Read, open and store the devices' batches.
    Run(RunArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// A sink key file (repeatable: the old and the new key while devices
    /// move to the new one).
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    /// Directory of device public keys: `{device}.pub` (hex).
    #[arg(long, value_name = "DIR")]
    pub device_keys: PathBuf,
    /// PostgreSQL connection string (`host=… port=… user=… dbname=…` or a
    /// postgres:// URL).
    #[arg(long, value_name = "CONN")]
    pub postgres: String,
    /// This replica's MQTT client id suffix (a persistent session per replica).
    #[arg(long, default_value = "0")]
    pub id: String,
    /// The shared subscription's group (`$share/GROUP/…`), so replicas
    /// split the batches; empty: a plain subscription (one sink). Mosquitto
    /// 2.0 does not keep shared subscriptions across its own restart, so
    /// batches published after a broker restart and before the sink
    /// subscribes again are lost there; a plain subscription of a
    /// persistent session is kept.
    #[arg(long, default_value = "kedge-sink")]
    pub share_group: String,
}

pub async fn run(
    config: Config,
    args: SinkArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match args.command {
        SinkCommand::Keygen { out } => {
            let key = SinkKey::create_file(&out)?;
            println!("{}", key.public().to_hex());
            Ok(())
        }
        SinkCommand::Run(run) => serve(config, run, shutdown).await,
    }
}

/// The table layout (created if missing). `kedge_messages` is what users
/// query; `kedge_refused` counts what was refused.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kedge_messages (
    device        text        NOT NULL,
    seq           bigint      NOT NULL,
    namespace     text        NOT NULL,
    pod           text        NOT NULL,
    container     text        NOT NULL,
    topic         text        NOT NULL,
    device_time   timestamptz NOT NULL,
    received_time timestamptz NOT NULL DEFAULT now(),
    payload       bytea       NOT NULL,
    payload_json  jsonb,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS kedge_messages_source
    ON kedge_messages (device, namespace, pod, container, seq);
CREATE TABLE IF NOT EXISTS kedge_refused (
    received_time timestamptz NOT NULL DEFAULT now(),
    device        text        NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL
);
";

async fn serve(
    config: Config,
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = args
        .keys
        .iter()
        .map(|p| SinkKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let topics = Topics::new(&config.topic_prefix);
    let (url, mut options) =
        crate::mqtt::clean_session_options(&config, &format!("kedge-sink-{}", args.id))?;
    // A persistent session: what arrives while the sink is down or cannot
    // write waits at the broker.
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Acks are small and the broker's window to the sink is short: without
    // this, Nagle's algorithm and delayed ACKs hold each one up to 40 ms.
    eventloop.network_options.set_tcp_nodelay(true);
    let filter = if args.share_group.is_empty() {
        topics.data("+")
    } else {
        format!("$share/{}/{}", args.share_group, topics.data("+"))
    };
    // Unbounded, so the event loop never waits for the worker (it must keep
    // polling to send the worker's acks): what is in it is bounded by the
    // broker's in-flight window, since nothing is acknowledged before the
    // worker is done with it.
    let (batches_tx, mut batches) = mpsc::unbounded_channel::<Publish>();
    let subscriber = client.clone();
    // The event loop runs on its own task so keep-alives go on while the
    // database is slow or down.
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    info!(broker = %url, %filter, "sink connected; subscribing");
                    // From another task: the request queue may be full of
                    // acks that only this loop's next poll sends.
                    let (subscriber, filter) = (subscriber.clone(), filter.clone());
                    tokio::spawn(async move {
                        if let Err(e) = subscriber.subscribe(filter, QoS::AtLeastOnce).await {
                            warn!(error = %e, "cannot subscribe");
                        }
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    info!(%filter, "sink subscribed");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if batches_tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "sink's broker connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let mut db = Database::connect(&args.postgres).await?;
    info!("sink ready");
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            p = batches.recv() => match p {
                Some(p) => p,
                None => anyhow::bail!("the broker connection task ended"),
            },
        };
        // Every batch already delivered goes into the same transaction (at
        // most `COALESCE`): one commit for a burst, as the devices batch.
        let mut publishes = vec![first];
        while publishes.len() < COALESCE {
            match batches.try_recv() {
                Ok(p) => publishes.push(p),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Result<Batch, (String, OpenError)>> = publishes
            .iter()
            .map(|p| open_batch(&topics, &keys, &args.device_keys, p))
            .collect();
        let mut failures = 0u32;
        loop {
            match db.store(&outcomes).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        warn!(error = %format!("{e:#}"), "cannot write to PostgreSQL; not acknowledging, retrying every second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(fresh) = Database::connect(&args.postgres).await {
                        db = fresh;
                    }
                }
            }
        }
        for publish in &publishes {
            client
                .ack(publish)
                .await
                .context("cannot acknowledge a batch")?;
        }
    }
}

/// Batches stored in one transaction, at most.
const COALESCE: usize = 64;

/// Opens one delivered batch, or says why not (with the device it names).
fn open_batch(
    topics: &Topics,
    keys: &[SinkKey],
    device_keys: &std::path::Path,
    publish: &Publish,
) -> Result<Batch, (String, OpenError)> {
    let Some(device) = data::device_of_topic(topics.prefix(), &publish.topic) else {
        return Err((
            String::new(),
            OpenError::Malformed(format!("not a data topic: {}", publish.topic)),
        ));
    };
    let read_key = |device: &str| -> Option<Vec<u8>> {
        // A device name is one topic level without '/', so this stays in
        // the directory; names starting with '.' are refused too.
        if device.starts_with('.') {
            return None;
        }
        let text = std::fs::read_to_string(device_keys.join(format!("{device}.pub"))).ok()?;
        data::keys::parse_hex32(&text, device)
            .ok()
            .map(|k| k.to_vec())
    };
    data::open(&publish.payload, device, keys, read_key).map_err(|e| (device.to_string(), e))
}

/// The reason column of `kedge_refused`.
fn reason(e: &OpenError) -> &'static str {
    match e {
        OpenError::Malformed(_) | OpenError::Version(_) | OpenError::Decompress { .. } => {
            "malformed"
        }
        OpenError::WrongDevice { .. } => "wrong_device",
        OpenError::UnknownSinkKey(_) | OpenError::Decrypt => "not_for_this_sink",
        OpenError::UnknownDevice(_) => "unknown_device",
        OpenError::BadSignature(_) => "bad_signature",
    }
}

struct Database {
    client: tokio_postgres::Client,
    /// `INSERT_MESSAGES` and the refusal's insert, prepared once.
    insert: tokio_postgres::Statement,
    refuse: tokio_postgres::Statement,
}

impl Database {
    async fn connect(conn: &str) -> anyhow::Result<Database> {
        let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
            .await
            .context("cannot connect to PostgreSQL")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(SCHEMA)
            .await
            .context("cannot create the sink's tables")?;
        let insert = client.prepare(INSERT_MESSAGES).await?;
        let refuse = client
            .prepare("INSERT INTO kedge_refused (device, reason, detail) VALUES ($1, $2, $3)")
            .await?;
        Ok(Database {
            client,
            insert,
            refuse,
        })
    }

    /// Stores what a burst of deliveries brought, in one transaction: the
    /// messages of every opened batch (one `INSERT … SELECT FROM unnest`,
    /// `ON CONFLICT DO NOTHING`), a `kedge_refused` row for every batch
    /// refused, and one for every batch whose every message was stored
    /// already (a replay, or a batch sent again after a lost PUBACK).
    async fn store(
        &mut self,
        outcomes: &[Result<Batch, (String, OpenError)>],
    ) -> anyhow::Result<()> {
        let mut columns = Columns::default();
        for batch in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
            for (id, m) in &batch.messages {
                columns.device.push(batch.device.clone());
                columns.seq.push(i64::try_from(*id).unwrap_or(i64::MAX));
                columns.namespace.push(m.source.namespace.clone());
                columns.pod.push(m.source.pod.clone());
                columns.container.push(m.source.container.clone());
                columns.topic.push(m.topic.clone());
                columns.device_time.push(m.device_time_ms as f64 / 1000.0);
                columns.payload.push(m.payload.clone());
                columns.payload_json.push(
                    serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .ok()
                        .map(|v| v.to_string()),
                );
            }
        }
        let txn = self.client.transaction().await?;
        let mut inserted = std::collections::HashSet::new();
        if !columns.seq.is_empty() {
            let rows = txn
                .query(
                    &self.insert,
                    &[
                        &columns.device,
                        &columns.seq,
                        &columns.namespace,
                        &columns.pod,
                        &columns.container,
                        &columns.topic,
                        &columns.device_time,
                        &columns.payload,
                        &columns.payload_json,
                    ],
                )
                .await?;
            for row in rows {
                inserted.insert((row.get::<_, String>(0), row.get::<_, i64>(1)));
            }
        }

        for outcome in outcomes {
            let (device, reason, detail) = match outcome {
                Err((device, e)) => {
                    warn!(%device, error = %e, "refused a data batch");
                    (device.clone(), self::reason(e), e.to_string())
                }
                Ok(batch)
                    if !batch.messages.is_empty()
                        && !batch.messages.iter().any(|(id, _)| {
                            inserted.contains(&(
                                batch.device.clone(),
                                i64::try_from(*id).unwrap_or(i64::MAX),
                            ))
                        }) =>
                {
                    let detail = format!(
                        "batch of {} messages up to seq {}, all stored already (a replay or a re-send)",
                        batch.messages.len(),
                        batch.last_id()
                    );
                    warn!(device = %batch.device, "{detail}");
                    (batch.device.clone(), "duplicate", detail)
                }
                Ok(_) => continue,
            };
            txn.execute(&self.refuse, &[&device, &reason, &detail])
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// The messages of a burst, column by column (the arrays `unnest` reads).
#[derive(Default)]
struct Columns {
    device: Vec<String>,
    seq: Vec<i64>,
    namespace: Vec<String>,
    pod: Vec<String>,
    container: Vec<String>,
    topic: Vec<String>,
    device_time: Vec<f64>,
    payload: Vec<Vec<u8>>,
    payload_json: Vec<Option<String>>,
}

/// One statement for every message of a burst; returns the keys it
/// inserted (not those stored already).
const INSERT_MESSAGES: &str = "INSERT INTO kedge_messages \
     (device, seq, namespace, pod, container, topic, device_time, payload, payload_json) \
     SELECT d, s, n, p, c, t, to_timestamp(dt), b, j::jsonb \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::float8[], $8::bytea[], $9::text[]) AS u(d, s, n, p, c, t, dt, b, j) \
     ON CONFLICT (device, seq) DO NOTHING \
     RETURNING device, seq";
