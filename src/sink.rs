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
//!   sink's persistent session. So does a device key file that is there
//!   and cannot be read (an I/O error; a missing file is an unknown
//!   device): the burst waits, retried every second, never refused.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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
///
/// `kedge_messages` has one index, its key. A source's messages in order
/// are its device's rows by `seq` (a device numbers all its messages in
/// one sequence), which the key serves; users add the indexes their own
/// queries need (README, "Sending workload data to the cloud"). The
/// per-source index sinks before session 17 created, `(device, namespace,
/// pod, container, seq)`, was about 7 % of the inserting backend's CPU at
/// 1-KB messages (`perf` during benches/data_path.rs); a table created
/// then keeps it until dropped. The device name compares bytewise
/// (`COLLATE "C"`): names are DNS labels, and a locale's collation is a
/// function call per key comparison.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kedge_messages (
    device        text        COLLATE "C" NOT NULL,
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
CREATE TABLE IF NOT EXISTS kedge_refused (
    received_time timestamptz NOT NULL DEFAULT now(),
    device        text        NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL
);
"#;

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
    let db = Database::connect(&args.postgres).await?;
    info!("sink ready");
    // Opening a burst and storing the previous one overlap: this loop opens
    // (decrypts, verifies, decompresses, checks the JSON) while the writer
    // task has PostgreSQL insert and commit the burst before. One writer,
    // bursts in delivery order, acks after their commit: the order per
    // source and "ack only after the commit" are the writer's.
    let (bursts_tx, bursts_rx) = mpsc::channel::<Burst>(1);
    let mut writer = tokio::spawn(write_bursts(
        db,
        args.postgres.clone(),
        client.clone(),
        bursts_rx,
    ));
    tokio::pin!(shutdown);
    'bursts: loop {
        let first = tokio::select! {
            _ = &mut shutdown => break,
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
        // The devices' keys, read once per burst. A key file that is there
        // and cannot be read holds the burst back (refusing its batches
        // would acknowledge them, and lose them), as a database that
        // cannot write does.
        let mut failures = 0u32;
        let device_keys = loop {
            match read_device_keys(&topics, &args.device_keys, &publishes) {
                Ok(found) => break found,
                Err((path, e)) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        warn!(path = %path.display(), error = %e, "cannot read a device's public key; not acknowledging its batches, retrying every second");
                    }
                    tokio::select! {
                        _ = &mut shutdown => break 'bursts,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let burst = Burst::open(publishes, |p| open_batch(&topics, &keys, &device_keys, p));
        tokio::select! {
            _ = &mut shutdown => break,
            sent = bursts_tx.send(burst) => if sent.is_err() {
                // The writer ended: an ack could not be queued.
                return match (&mut writer).await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow::anyhow!("the sink's database writer ended")),
                };
            },
        }
    }
    // What is stored is acknowledged; a burst cut off here is not, and the
    // broker delivers it again (stored at most once by its keys).
    drop(bursts_tx);
    if tokio::time::timeout(WRITER_DRAIN, writer).await.is_err() {
        warn!(
            deadline = ?WRITER_DRAIN,
            "the sink stopped before PostgreSQL stored what it was writing; the broker delivers it again"
        );
    }
    Ok(())
}

/// How long a stopping sink waits for the burst its writer has in hand.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// The writer task: stores each burst (one transaction, retried every
/// second while PostgreSQL fails, on a new connection), then acknowledges
/// its publishes. Ends when the bursts' sender is dropped, or with the
/// error of an ack that cannot be queued.
async fn write_bursts(
    mut db: Database,
    conn: String,
    client: AsyncClient,
    mut bursts: mpsc::Receiver<Burst>,
) -> anyhow::Result<()> {
    while let Some(burst) = bursts.recv().await {
        let mut failures = 0u32;
        loop {
            match db.store(&burst).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        warn!(error = %format!("{e:#}"), "cannot write to PostgreSQL; not acknowledging, retrying every second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(fresh) = Database::connect(&conn).await {
                        db = fresh;
                    }
                }
            }
        }
        for (publish, outcome) in burst.publishes.iter().zip(&burst.outcomes) {
            if let Ok(batch) = outcome {
                debug!(
                    device = %batch.device,
                    first = batch.messages.first().map_or(0, |(id, _)| *id),
                    last = batch.last_id(),
                    pkid = publish.pkid,
                    dup = publish.dup,
                    "batch stored; acknowledging"
                );
            }
            client
                .ack(publish)
                .await
                .context("cannot acknowledge a batch")?;
        }
    }
    Ok(())
}

/// What one transaction stores: a burst of deliveries, opened, and the
/// rows of its opened batches column by column (built once, before the
/// writer gets it, so a retry does not build them again).
struct Burst {
    publishes: Vec<Publish>,
    outcomes: Vec<Result<Batch, (String, OpenError)>>,
    columns: Columns,
}

impl Burst {
    /// Opens every delivery with `open`; the payloads move into `columns`
    /// (the batches keep their ids, which `Database::store` reads).
    fn open(
        publishes: Vec<Publish>,
        open: impl Fn(&Publish) -> Result<Batch, (String, OpenError)>,
    ) -> Burst {
        let mut outcomes: Vec<_> = publishes.iter().map(open).collect();
        let mut columns = Columns::default();
        for batch in outcomes.iter_mut().filter_map(|o| o.as_mut().ok()) {
            for (id, m) in &mut batch.messages {
                columns.device.push(batch.device.clone());
                columns.seq.push(i64::try_from(*id).unwrap_or(i64::MAX));
                columns.namespace.push(m.source.namespace.clone());
                columns.pod.push(m.source.pod.clone());
                columns.container.push(m.source.container.clone());
                columns.topic.push(m.topic.clone());
                columns.device_time.push(m.device_time_ms as f64 / 1000.0);
                columns.payload_json.push(json_text(&m.payload));
                columns.payload.push(std::mem::take(&mut m.payload));
            }
        }
        Burst {
            publishes,
            outcomes,
            columns,
        }
    }
}

/// Batches stored in one transaction, at most.
const COALESCE: usize = 64;

/// Opens one delivered batch, or says why not (with the device it names).
fn open_batch(
    topics: &Topics,
    keys: &[SinkKey],
    device_keys: &DeviceKeys,
    publish: &Publish,
) -> Result<Batch, (String, OpenError)> {
    let Some(device) = data::device_of_topic(topics.prefix(), &publish.topic) else {
        return Err((
            String::new(),
            OpenError::Malformed(format!("not a data topic: {}", publish.topic)),
        ));
    };
    let read_key = |device: &str| device_keys.get(device).cloned().flatten();
    data::open(&publish.payload, device, keys, read_key).map_err(|e| (device.to_string(), e))
}

/// The public keys of the devices a burst came from, by name; None for a
/// device that has none (an unknown device: its batches are refused).
type DeviceKeys = HashMap<String, Option<Vec<u8>>>;

/// Reads the public key of every device of `publishes` from `dir`
/// (`{device}.pub`, hex). A missing file, a name that is not a plain file
/// name there, or a file that does not hold a key: no key (the device is
/// unknown). A file that is there and cannot be read (an I/O error): that
/// error, with its path.
fn read_device_keys(
    topics: &Topics,
    dir: &std::path::Path,
    publishes: &[Publish],
) -> Result<DeviceKeys, (PathBuf, std::io::Error)> {
    let mut found = DeviceKeys::new();
    for publish in publishes {
        let Some(device) = data::device_of_topic(topics.prefix(), &publish.topic) else {
            continue;
        };
        if found.contains_key(device) {
            continue;
        }
        // A device name is one topic level without '/', so this stays in
        // the directory; names starting with '.' are refused too.
        let key = if device.starts_with('.') {
            None
        } else {
            let path = dir.join(format!("{device}.pub"));
            match std::fs::read_to_string(&path) {
                Ok(text) => data::keys::parse_hex32(&text, device)
                    .ok()
                    .map(|k| k.to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err((path, e)),
            }
        };
        found.insert(device.to_string(), key);
    }
    Ok(found)
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
        // A row (a 1-KB payload as bytes and as JSONB) is over TOAST's
        // threshold, so PostgreSQL compresses its values as it inserts
        // them: with pglz, its default, that was a third of the inserting
        // backend's CPU. LZ4 (PostgreSQL 14 and later, when built with
        // it, as Debian's is) costs a fraction of that; each value records
        // its method, so readers need nothing. Where it is not available
        // the server's default stays.
        if let Err(e) = client
            .batch_execute("SET default_toast_compression = 'lz4'")
            .await
        {
            info!(error = %e, "PostgreSQL compresses large values with its default method (no LZ4)");
        }
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
    async fn store(&mut self, burst: &Burst) -> anyhow::Result<()> {
        let (outcomes, columns) = (&burst.outcomes, &burst.columns);
        let txn = self.client.transaction().await?;
        // Per device, the seqs this transaction inserted.
        let mut inserted = HashMap::<String, HashSet<i64>>::new();
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
                let seqs: Vec<i64> = row.get(1);
                inserted.insert(row.get(0), seqs.into_iter().collect());
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
                        && !inserted.get(&batch.device).is_some_and(|seqs| {
                            batch.messages.iter().any(|(id, _)| {
                                seqs.contains(&i64::try_from(*id).unwrap_or(i64::MAX))
                            })
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

/// A payload's text for `payload_json` when it is one JSON value JSONB
/// takes; None otherwise. Plain JSON (`JsonShape::Plain`) goes as the
/// device sent it, checked without building it (`IgnoredAny`): building a
/// `serde_json::Value` and printing it again took the sink longer than
/// opening the batch. Other numbers go the old way, through a `Value`,
/// which turns those JSONB refuses (an exponent beyond ±1000, thousands of
/// digits) into ones it takes, or refuses them. A string with a NUL
/// (`\u0000`) JSONB refuses however it is printed, and one such row would
/// fail every retry of its burst: None.
fn json_text(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    match json_shape(text.as_bytes()) {
        JsonShape::Plain => {
            serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
            Some(text.to_string())
        }
        JsonShape::OtherNumbers => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .map(|v| v.to_string()),
        JsonShape::Nul => None,
    }
}

/// What a lexical pass over JSON text (not a parse) finds.
#[derive(Debug, PartialEq, Eq)]
enum JsonShape {
    /// Every number outside strings is plain: no exponent, at most 100
    /// digits (JSONB takes any such number as written).
    Plain,
    /// A number with an exponent or over 100 digits.
    OtherNumbers,
    /// A string escapes a NUL (`\u0000`).
    Nul,
}

fn json_shape(text: &[u8]) -> JsonShape {
    let mut shape = JsonShape::Plain;
    let (mut in_string, mut escaped) = (false, false);
    let (mut digits, mut in_number) = (0usize, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
                if b == b'u' && text[i + 1..].starts_with(b"0000") {
                    return JsonShape::Nul;
                }
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 100 {
                    shape = JsonShape::OtherNumbers;
                }
                in_number = true;
            }
            b'.' | b'-' | b'+' => in_number = true,
            b'e' | b'E' if in_number => shape = JsonShape::OtherNumbers,
            b'"' => {
                in_string = true;
                (digits, in_number) = (0, false);
            }
            _ => (digits, in_number) = (0, false),
        }
    }
    shape
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
/// inserted (not those stored already), one row per device with its seqs
/// (returning a row per message cost PostgreSQL and the sink a protocol
/// message per row).
const INSERT_MESSAGES: &str = "WITH inserted AS (INSERT INTO kedge_messages \
     (device, seq, namespace, pod, container, topic, device_time, payload, payload_json) \
     SELECT d, s, n, p, c, t, to_timestamp(dt), b, j::jsonb \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::float8[], $8::bytea[], $9::text[]) AS u(d, s, n, p, c, t, dt, b, j) \
     ON CONFLICT (device, seq) DO NOTHING \
     RETURNING device, seq) \
     SELECT device, array_agg(seq) FROM inserted GROUP BY device";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_goes_as_sent_when_plain_and_through_a_value_otherwise() {
        // Plain: the device's own text, numbers as written.
        let plain = r#"{"t":1700000000000123,"readings":[21.50,-3.25,0],"s":"e5 \"x\" \\u0000"}"#;
        assert_eq!(json_text(plain.as_bytes()).as_deref(), Some(plain));
        assert_eq!(json_shape(plain.as_bytes()), JsonShape::Plain);
        // true, false and null are no exponents.
        assert_eq!(json_shape(b"[true,false,null,1]"), JsonShape::Plain);
        // Exponents and long numbers: through a Value (JSONB refuses
        // 1e-1001 as written; a Value prints it as 0.0).
        assert_eq!(json_shape(b"[1e-1001]"), JsonShape::OtherNumbers);
        assert_eq!(json_text(b"[1e-1001]").as_deref(), Some("[0.0]"));
        assert_eq!(json_shape(b"[2.5E3]"), JsonShape::OtherNumbers);
        let long = format!("[{}]", "1".repeat(101));
        assert_eq!(json_shape(long.as_bytes()), JsonShape::OtherNumbers);
        // Out of an f64's range: not JSON to a Value, as before.
        assert_eq!(json_text(b"[1e999]"), None);
        // A NUL in a string: never JSON (JSONB refuses it).
        assert_eq!(json_text(br#"{"a":"x\u0000"}"#), None);
        // Not JSON, or not one value, or not UTF-8.
        assert_eq!(json_text(b"21.5 C"), None);
        assert_eq!(json_text(b"{} {}"), None);
        assert_eq!(json_text(b"{\"a\":1"), None);
        assert_eq!(json_text(&[b'"', 0xff, b'"']), None);
    }

    /// A device without a key file, or whose file holds no key, is unknown
    /// (its batches are refused); a key file that cannot be read is an
    /// error (the burst waits: refusing would acknowledge, and lose, it).
    #[test]
    fn device_keys_are_known_unknown_or_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topics = Topics::new("kedge/v1");
        let publish = |device: &str| Publish::new(topics.data(device), QoS::AtLeastOnce, vec![1]);
        let key = [7u8; 32];
        std::fs::write(
            dir.path().join("gw1.pub"),
            format!("{}\n", hex::encode(key)),
        )
        .expect("write");
        std::fs::write(dir.path().join("gw2.pub"), "not a key").expect("write");
        let found = read_device_keys(
            &topics,
            dir.path(),
            &[
                publish("gw1"),
                publish("gw1"),
                publish("gw2"),
                publish("gw3"),
                publish(".hidden"),
                Publish::new("elsewhere", QoS::AtLeastOnce, vec![1]),
            ],
        )
        .expect("read");
        assert_eq!(
            found,
            DeviceKeys::from([
                ("gw1".to_string(), Some(key.to_vec())),
                ("gw2".to_string(), None),
                ("gw3".to_string(), None),
                (".hidden".to_string(), None),
            ])
        );
        // There, and not readable (a directory: EISDIR).
        std::fs::create_dir(dir.path().join("gw4.pub")).expect("mkdir");
        let (path, e) = read_device_keys(&topics, dir.path(), &[publish("gw1"), publish("gw4")])
            .expect_err("unreadable");
        assert_eq!(path, dir.path().join("gw4.pub"));
        assert_ne!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
