//! The agent's durable state in redb. This is the only module that touches
//! the database; everything else sees domain types.
//!
//! Invariants:
//! - a desired spec is committed before it is acted on (`put_desired`);
//! - a delete is committed as an intent before it is acknowledged
//!   (`begin_delete` removes the desired record and records what is needed
//!   to finish in `deleting`, one transaction); `finish_delete` removes the
//!   intent, the status and queues the empty retained status, one
//!   transaction, so a crash in between is finished on the next start;
//! - a status change and the outbox entry that publishes it are one
//!   transaction (`record_status`, `remove_status`), so what the agent
//!   believes and what it will tell the broker never diverge;
//! - outbox entries leave only through `ack_outbox` (broker acknowledged)
//!   or `trim_outbox` (bounds exceeded, counted and reported);
//! - every published status and event carries a number from one node-wide
//!   counter (`seq`), so receivers can drop duplicates and stale replays.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{PodKey, PodSource, PodSpec, PodStatus, Priority};

pub mod queues;

use queues::{LEVELS, data_key, key_parts};

/// Bumped when a table's layout changes; `open` migrates older files.
pub const STORE_SCHEMA_VERSION: u32 = 11;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 4; older ones are re-encoded by `open` (read without what later
/// versions appended, `model::added`, and escaped).
const POD_FIELDS_SINCE: u32 = 6;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 9; schema 6's are re-encoded by `open` (read as today's without
/// what version 9 appended, `model::added`).
const CONTAINER_FIELDS_SINCE: u32 = 7;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 10; schema 7's are re-encoded by `open` (read as today's without
/// what version 10 appended, `model::added`).
const SIDECARS_SINCE: u32 = 8;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 11; schemas 8 and 9 hold version 10's, re-encoded by `open`
/// (read as today's without what version 11 appended, `model::added`).
const SELINUX_DNS_SINCE: u32 = 10;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 12 (route priorities; schema 10's are re-encoded by `open`) and
/// whose `data` table is keyed by priority and id (`queues::data_key`;
/// schemas 4 to 10 keyed it by id, re-keyed at the default priority).
const ROUTE_PRIORITY_SINCE: u32 = 11;
/// The schema that brought the data path's tables.
#[cfg(feature = "data")]
const DATA_SINCE: u32 = 4;
/// The schema whose QoS 2 keys' table has `&[u8]` values.
#[cfg(feature = "data")]
const QOS2_KEYS_SINCE: u32 = 9;

/// redb's page cache. The state of a busy node (hundreds of pods, a full
/// outbox) is a few MiB; reads past the cache go to the page cache of the
/// kernel, which gives memory back under pressure.
const STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");
const OBSERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("observed");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Runtime handles, never written (adoption reads the runtime's labels):
/// created by stores of schema 1 to 5, deleted when a store is opened.
const LEGACY_HANDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("handles");
/// Deletes committed but not finished: pod key → `DeletingRecord`.
const DELETING: TableDefinition<&str, &[u8]> = TableDefinition::new("deleting");
/// Fleet state (schema 3), by key: `fleet/{ns}/{name}` → the fleet
/// deployment's payload, `spec/{digest}` → a fleet spec's payload (both
/// decoded and checked again when read), `labels` → the cloud's labels'
/// payload, `report/{ns}/{name}` → the last report sent (postcard).
const FLEET: TableDefinition<&str, &[u8]> = TableDefinition::new("fleet");
/// Signed desired state (schema 5): full MQTT topic → the last message
/// accepted there (`trust::Accepted`, postcard), so that a restart cannot
/// be tricked into an older signed message.
const TRUST: TableDefinition<&str, &[u8]> = TableDefinition::new("trust");

/// Workload messages waiting for the broker (schema 4, feature `data`):
/// the priority and the message id (node-wide, increasing) as one key
/// (`queues::data_key`, schema 11; the id alone before) → `DataRecord`
/// (postcard). A table of
/// its own, apart from the outbox: data never delays a status report, and its
/// bounds (TTL per route, a byte budget) are its own.
const DATA: TableDefinition<u64, &[u8]> = TableDefinition::new("data");

/// Workload messages routed into a pod on this node (module-to-module),
/// waiting for a subscriber of that pod to acknowledge them:
/// `{namespace}/{pod}\n{id:020}` (`pod_queue_key`; the id is the node-wide
/// message id of `DATA`) → `DataRecord` (postcard). A queue per target pod,
/// read in id order; the table is made on every open, so a store of an
/// older agent gains it, and an older agent leaves it alone.
const DATA_PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("data_pods");

/// Whether a workload message with QoS 2 key `key` (None: not QoS 2) is
/// seen for the first time; it is recorded if so, in the transaction that
/// stores the message.
fn first_delivery(
    qos2: &mut redb::Table<&str, &[u8]>,
    key: Option<&str>,
) -> Result<bool, StoreError> {
    let Some(key) = key else {
        return Ok(true);
    };
    if qos2.get(key)?.is_some() {
        return Ok(false);
    }
    qos2.insert(key, [].as_slice())?;
    Ok(true)
}

/// Reads the messages of `range` (keys of one queue) into `out` while it
/// holds fewer than `max_count` and about `max_bytes` (at least one).
fn read_queue(
    table: &redb::ReadOnlyTable<u64, &[u8]>,
    range: std::ops::Range<u64>,
    max_count: usize,
    max_bytes: usize,
    out: &mut Vec<(u64, DataRecord)>,
) -> Result<(), StoreError> {
    let mut bytes: usize = 0;
    for item in table.range(range)? {
        let (k, v) = item?;
        if out.len() >= max_count || (!out.is_empty() && bytes + v.value().len() > max_bytes) {
            break;
        }
        bytes += v.value().len();
        let (priority, id) = key_parts(k.value());
        let mut record = decode_data(id, v.value())?;
        record.priority = priority;
        out.push((id, record));
    }
    Ok(())
}

/// The key of message `id` in the queue of the pod `target`
/// (`namespace/pod`): the queue's keys sort by id.
fn pod_queue_key(target: &str, id: u64) -> String {
    format!("{target}\n{id:020}")
}

/// QoS 2 publishes received and not yet released, per workload connection
/// (schema 9): `{client}\n{packet id}` → empty. Written in the transaction
/// that commits the message, so a publish sent again after a crash of the
/// agent is recognised and not stored twice. The Wasm host interface's
/// `publish-once` keeps its state here too: `{namespace}/{pod}/{container}#{pod
/// uid}` → the highest sequence taken (u64, little-endian), written with
/// the message (`sequence_key`; `#` is in no Kubernetes name, so no client
/// key begins like one, and older agents, which only look keys up and
/// clear their own clients' prefixes, never touch them). Its values are the other
/// tables' type (`&[u8]`), so redb's B-tree code is compiled once for all of
/// them: a table of `()` values cost ~30 kB of device binary.
const DATA_QOS2: TableDefinition<&str, &[u8]> = TableDefinition::new("data_qos2_keys");

/// The same keys in schemas 4–8, with `()` values: copied into `DATA_QOS2`
/// and deleted by the migration to schema 9.
const LEGACY_DATA_QOS2: TableDefinition<&str, ()> = TableDefinition::new("data_qos2");

const KEY_SCHEMA: &str = "schema_version";
const KEY_SEQ: &str = "seq";
const KEY_OUTBOX_ID: &str = "outbox_next_id";
const KEY_IDENTITY: &str = "node_identity";
const KEY_DATA_ID: &str = "data_next_id";
const KEY_DATA_BYTES: &str = "data_bytes";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in {table} for {key}: {detail}")]
    Corrupt {
        table: &'static str,
        key: String,
        detail: String,
    },
    #[error(
        "state database has schema version {found}, newer than this agent's {STORE_SCHEMA_VERSION}"
    )]
    TooNew { found: u32 },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A desired pod and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub source: PodSource,
    pub spec: PodSpec,
}

/// A delete that was committed (and acknowledged) but whose pod may still
/// have a directory, a status and a retained report to clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletingRecord {
    pub namespace: String,
    pub name: String,
    /// The uid of the pod being deleted: its directory is
    /// `pods/{namespace}_{name}_{uid}`.
    pub uid: String,
}

impl DeletingRecord {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
}

/// A message waiting for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub topic: String,
    /// Empty for a retained tombstone.
    pub payload: Vec<u8>,
    pub retain: bool,
    pub created_ms: u64,
}

/// A workload message waiting for the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    pub source: crate::model::DataSource,
    pub topic: String,
    pub device_time_ms: u64,
    /// When its route's time to live runs out (device clock, ms).
    pub expires_ms: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The route that took it (`data::Route::id`), for its counters; 0 in
    /// a record an older agent stored (which lacks the field: read by
    /// `decode_data`, and an older agent reads this layout, ignoring it).
    pub route: u32,
    /// Its route's priority: not in the value but in the key of the
    /// `data` table (`queues::data_key`), set from it when read.
    #[serde(skip)]
    pub priority: Priority,
}

/// What the store's own passes need of a stored workload message (its
/// expiry and route), read without copying its payload and strings: the
/// deletion of every acknowledged batch and the expiry pass over the
/// whole backlog read each record. Both layouts, as `decode_data`.
fn data_head(id: u64, bytes: &[u8]) -> Result<(u64, u32), StoreError> {
    // `DataRecord`'s fields in order (postcard writes a struct's fields
    // one after the other, nested ones too), borrowed; the older layout
    // ends after the payload.
    type Fields<'a> = (&'a str, &'a str, &'a str, &'a str, u64, u64, &'a [u8]);
    postcard::from_bytes::<(Fields, u32)>(bytes)
        .map(|(f, route)| (f.5, route))
        .or_else(|_| postcard::from_bytes::<Fields>(bytes).map(|f| (f.5, 0)))
        .map_err(|e| corrupt("data", &id, e))
}

/// A stored workload message read back: today's layout, else the one
/// before `route` was appended (then route 0).
fn decode_data(id: u64, bytes: &[u8]) -> Result<DataRecord, StoreError> {
    decode("data", id, bytes).or_else(|e| {
        #[derive(Deserialize)]
        struct Before {
            source: crate::model::DataSource,
            topic: String,
            device_time_ms: u64,
            expires_ms: u64,
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
        }
        let old: Before = decode("data", id, bytes).map_err(|_| e)?;
        Ok(DataRecord {
            source: old.source,
            topic: old.topic,
            device_time_ms: old.device_time_ms,
            expires_ms: old.expires_ms,
            payload: old.payload,
            route: 0,
            priority: Priority::default(),
        })
    })
}

/// Stored workload messages read back, each with its id.
pub type DataRecords = Vec<(u64, DataRecord)>;

/// Workload messages by route (`DataAppend`, `Store::expire_data`): each
/// one's route id and stored bytes.
pub type RouteBytes = Vec<(u32, u64)>;

/// What one read of a workload connection asks `append_data` to commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataWrite {
    /// Messages, with the QoS 2 key (`{client}\n{packet id}`) of those sent
    /// with QoS 2.
    pub records: Vec<(DataRecord, Option<String>)>,
    /// Messages a route takes into a pod on this node: the target
    /// (`namespace/pod`), the message and its QoS 2 key, as `records`.
    pub into_pods: Vec<(String, DataRecord, Option<String>)>,
    /// QoS 2 keys the workload released (PUBREL), applied before the
    /// records: a release in one read is for a publish of an earlier one.
    pub released: Vec<String>,
    /// A connection with a clean session: every QoS 2 key of this client
    /// is forgotten first.
    pub clear_client: Option<String>,
    /// A host-interface `publish-once`: (`sequence_key`, sequence). The
    /// records are stored only if the sequence is above the one recorded
    /// under the key, which becomes it; else they are duplicates.
    pub sequence: Option<(String, u64)>,
    /// A pod that is gone, (`namespace/pod`, uid): its containers'
    /// `publish-once` sequences are forgotten.
    pub forget_sequences: Option<(String, String)>,
}

impl DataWrite {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.into_pods.is_empty()
            && self.released.is_empty()
            && self.clear_client.is_none()
            && self.forget_sequences.is_none()
    }
}

/// Where the host interface's `publish-once` keeps the highest sequence a
/// container of a pod (by uid) had taken.
pub fn sequence_key(source: &crate::model::DataSource, uid: &str) -> String {
    format!("{source}#{uid}")
}

/// What `append_data` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataAppend {
    pub ids: Vec<u64>,
    /// The messages stored for upstream (not the duplicates), in order.
    pub stored: RouteBytes,
    /// The messages stored into pods' queues (not the duplicates).
    pub stored_in_pods: RouteBytes,
    /// QoS 2 publishes sent again that were stored already.
    pub duplicates: u64,
    /// Older messages dropped to stay within the byte budget.
    pub dropped_budget: RouteBytes,
}

/// Who this node is; written on first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub name: String,
    pub created_ms: u64,
}

pub struct Store {
    db: Db,
}

/// The database, reopened after an I/O error. redb refuses every
/// transaction after a failed write ("Previous I/O error occurred") until it
/// is opened again; on a device that error is usually a full disk, and the
/// agent must carry on once space is free instead of failing until it is
/// restarted. Opening again runs redb's repair, which brings the file back
/// to its last committed transaction.
struct Db {
    path: std::path::PathBuf,
    /// None after an I/O error closed it: the next transaction opens it.
    current: std::sync::Mutex<Option<std::sync::Arc<Database>>>,
    /// Fault hook for tests, named as one (`Store::fault_fail_writes`).
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl Db {
    fn open(path: &Path) -> Result<Database, redb::DatabaseError> {
        // redb caches up to 1 GiB by default, and keeps what it cached: on a
        // gateway, a burst of outbox writes would hold that memory for good.
        Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<std::sync::Arc<Database>>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        let mut slot = self.slot();
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        // Transactions still running keep the old file open; then this
        // fails (DatabaseAlreadyOpen) and the next transaction tries again.
        let db = std::sync::Arc::new(Db::open(&self.path)?);
        tracing::warn!(path = %self.path.display(), "state database opened again after an I/O error");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Closes the database after an I/O error (when the last transaction
    /// using it ends).
    fn close(&self, failed: std::sync::Arc<Database>) {
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|db| std::sync::Arc::ptr_eq(db, &failed))
        {
            *slot = None;
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(redb::StorageError::Io(full).into());
        }
        let db = self.current()?;
        match db.begin_write() {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                self.close(db);
                Ok(self.current()?.begin_write()?)
            }
            other => Ok(other?),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let db = self.current()?;
        match db.begin_read() {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                self.close(db);
                Ok(self.current()?.begin_read()?)
            }
            other => Ok(other?),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard only fails on writer errors or unsupported serde features,
    // neither of which our plain data types can hit.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Re-encodes every desired record from the old `PodSpec` layout of store
/// schema `found`. A record that does not decode is left as it is (reading
/// it reports it corrupt, as before the migration).
fn migrate_desired_pod_fields(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    found: u32,
) -> Result<(), StoreError> {
    let mut upgraded = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        // Schemas 1–5, 6, 7, 8–9 and 10 hold the `PodSpec` of wire versions
        // 3, 8, 9, 10 and 11: today's layout without what later versions appended
        // (`model::added`); version 3's literal values are escaped.
        let wire = match found {
            f if f < POD_FIELDS_SINCE => 3,
            f if f < CONTAINER_FIELDS_SINCE => 8,
            f if f < SIDECARS_SINCE => 9,
            f if f < SELINUX_DNS_SINCE => 10,
            _ => 11,
        };
        let old =
            crate::model::added::reading(wire, || postcard::from_bytes::<DesiredRecord>(v.value()));
        if let Ok(mut rec) = old {
            if wire == 3 {
                crate::model::expansion::escape_literals(&mut rec.spec);
            }
            upgraded.push((k.value().to_string(), encode(&rec)));
        }
    }
    for (k, v) in upgraded {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(table, &key, e))
}

/// `decode`'s error, compiled once rather than once per record type (a
/// device build is counted in bytes).
#[inline(never)]
fn corrupt(table: &'static str, key: &dyn std::fmt::Display, e: postcard::Error) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        detail: e.to_string(),
    }
}

/// A little-endian integer stored as bytes; zero when absent or malformed.
fn le_bytes<const N: usize>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<[u8; N], StoreError> {
    Ok(table
        .get(key)?
        .and_then(|v| v.value().try_into().ok())
        .unwrap_or([0; N]))
}

fn read_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(u64::from_le_bytes(le_bytes(table, key)?))
}

/// A write transaction made and not yet committed (`Store::stage_statuses`).
pub struct Staged(redb::WriteTransaction);

impl Staged {
    /// Commits (and fsyncs). An I/O error here is handled like any other:
    /// the next transaction opens the database again.
    pub fn commit(self) -> Result<(), StoreError> {
        self.0.commit()?;
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Db::open(path)?;
        let store = Store {
            db: Db {
                path: path.to_path_buf(),
                current: std::sync::Mutex::new(Some(std::sync::Arc::new(db))),
                #[cfg(test)]
                fail_writes: Default::default(),
            },
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = u32::from_le_bytes(le_bytes(&meta, KEY_SCHEMA)?);
            if found > STORE_SCHEMA_VERSION {
                return Err(StoreError::TooNew { found });
            }
            // Version 0 → 1: create the tables. Later migrations go here,
            // one step per version, inside this same transaction.
            txn.open_table(DESIRED)?;
            txn.open_table(OBSERVED)?;
            txn.open_table(OUTBOX)?;
            // Version 1 → 2: the delete intents.
            txn.open_table(DELETING)?;
            // Version 2 → 3: fleet state.
            txn.open_table(FLEET)?;
            // Version 3 → 4: workload data waiting for the broker.
            txn.open_table(DATA)?;
            // (Version 8 → 9 below: the QoS 2 keys' table of schemas 4–8.)
            txn.open_table(DATA_QOS2)?;
            // The queues of routes into pods (no schema change: made
            // whenever missing).
            txn.open_table(DATA_PODS)?;
            // Version 4 → 5: the last signed message accepted per topic.
            txn.open_table(TRUST)?;
            // Version 5 → 6 (from any earlier version): desired records in
            // the PodSpec of wire version 4 (seccomp/AppArmor profiles,
            // hostPath types, `$(VAR)` templates: the old literal values are
            // escaped).
            // Version 6 → 7 (likewise): the `PodSpec` of wire version 9
            // (lifecycle hooks, termination messages, env status fields).
            // Version 7 → 8 (likewise): the `PodSpec` of wire version 10
            // (native sidecars).
            // Version 9 → 10 (likewise): the `PodSpec` of wire version 11
            // (SELinux labels, the pod's DNS).
            // Version 10 → 11 (likewise): the `PodSpec` of wire version 12
            // (route priorities).
            if (1..ROUTE_PRIORITY_SINCE).contains(&found) {
                migrate_desired_pod_fields(&mut txn.open_table(DESIRED)?, found)?;
            }
            // Version 10 → 11: the `data` table keyed by priority and id;
            // what older agents stored waits at the default priority. (A
            // build without the data path has none of it.)
            #[cfg(feature = "data")]
            if (DATA_SINCE..ROUTE_PRIORITY_SINCE).contains(&found) {
                let mut table = txn.open_table(DATA)?;
                let old: Vec<(u64, Vec<u8>)> = table
                    .iter()?
                    .filter_map(Result::ok)
                    .map(|(k, v)| (k.value(), v.value().to_vec()))
                    .collect();
                for (id, value) in old {
                    table.remove(id)?;
                    table.insert(data_key(Priority::default(), id), value.as_slice())?;
                }
            }
            // Version 8 → 9: the QoS 2 keys move to a table of `&[u8]` values.
            // A build without the data path (`minimal`) has no use for them
            // and leaves out the code that reads the old table (8 kB).
            #[cfg(feature = "data")]
            if (DATA_SINCE..QOS2_KEYS_SINCE).contains(&found) {
                let keys: Vec<String> = txn
                    .open_table(LEGACY_DATA_QOS2)?
                    .iter()?
                    .filter_map(Result::ok)
                    .map(|(k, _)| k.value().to_string())
                    .collect();
                let mut table = txn.open_table(DATA_QOS2)?;
                for key in keys {
                    table.insert(key.as_str(), [].as_slice())?;
                }
            }
            txn.delete_table(LEGACY_DATA_QOS2)?;
            // The `handles` table older stores made and nothing wrote.
            txn.delete_table(LEGACY_HANDLES)?;
            meta.insert(KEY_SCHEMA, STORE_SCHEMA_VERSION.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Fault hook for tests, named as one: while `on`, every write
    /// transaction fails as on a full disk, before it touches the file.
    /// What a full disk does to redb itself is `agent_e2e`'s (a tmpfs).
    #[cfg(test)]
    pub fn fault_fail_writes(&self, on: bool) {
        self.db
            .fail_writes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn node_identity(&self) -> Result<Option<NodeIdentity>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(KEY_IDENTITY)? {
            Some(v) => Ok(Some(decode("meta", KEY_IDENTITY, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn set_node_identity(&self, id: &NodeIdentity) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(KEY_IDENTITY, encode(id).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Writes (`Some`) or removes (`None`) fleet state under `key`.
    pub fn put_fleet(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(FLEET)?;
            match value {
                Some(v) => {
                    t.insert(key, v)?;
                }
                None => {
                    t.remove(key)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The last signed message accepted on `topic`.
    pub fn accepted(&self, topic: &str) -> Result<Option<crate::trust::Accepted>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TRUST)?;
        match t.get(topic)? {
            Some(v) => Ok(Some(decode("trust", topic, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every topic under `prefix` with the last signed message accepted there.
    pub fn accepted_under(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, crate::trust::Accepted)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TRUST)?;
        let mut out = Vec::new();
        for row in t.range(prefix..)? {
            let (k, v) = row?;
            let topic = k.value().to_string();
            if !topic.starts_with(prefix) {
                break;
            }
            out.push((topic.clone(), decode("trust", &topic, v.value())?));
        }
        Ok(out)
    }

    /// Records the signed message accepted on `topic`.
    pub fn set_accepted(
        &self,
        topic: &str,
        accepted: &crate::trust::Accepted,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TRUST)?
            .insert(topic, encode(accepted).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// All fleet state, by key.
    pub fn fleet_state(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(FLEET)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn put_desired(&self, rec: &DesiredRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(DESIRED)?
            .insert(rec.spec.key().to_string().as_str(), encode(rec).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Records a desired pod and the uid its runtime instance runs under,
    /// in one transaction: `Some` for a fleet pod's revision that was
    /// started beside the one it replaced (`agent::fleet`), None for one
    /// started under its own uid. Kept in the fleet table
    /// (`instance/{namespace}/{name}`), which older agents read past.
    pub fn put_desired_instance(
        &self,
        rec: &DesiredRecord,
        instance: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = rec.spec.key().to_string();
        let txn = self.db.begin_write()?;
        txn.open_table(DESIRED)?
            .insert(key.as_str(), encode(rec).as_slice())?;
        {
            let mut fleet = txn.open_table(FLEET)?;
            let instance_key = format!("instance/{key}");
            match instance {
                Some(uid) => {
                    fleet.insert(instance_key.as_str(), uid.as_bytes())?;
                }
                None => {
                    fleet.remove(instance_key.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The uid the runtime knows the desired pod `key` by, when it is not
    /// the spec's (`put_desired_instance`).
    pub fn instance(&self, key: &PodKey) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FLEET)?;
        Ok(table
            .get(format!("instance/{key}").as_str())?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    pub fn get_desired(&self, key: &PodKey) -> Result<Option<DesiredRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DESIRED)?;
        let k = key.to_string();
        match table.get(k.as_str())? {
            Some(v) => Ok(Some(decode("desired", &k, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn remove_desired(&self, key: &PodKey) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(DESIRED)?.remove(key.to_string().as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Removes the desired record and records the delete intent, in one
    /// transaction: once this returns, the delete survives a crash.
    pub fn begin_delete(&self, rec: &DeletingRecord) -> Result<(), StoreError> {
        let key = rec.key().to_string();
        let txn = self.db.begin_write()?;
        txn.open_table(DESIRED)?.remove(key.as_str())?;
        txn.open_table(FLEET)?
            .remove(format!("instance/{key}").as_str())?;
        txn.open_table(DELETING)?
            .insert(key.as_str(), encode(rec).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Delete intents not finished yet.
    pub fn deleting(&self) -> Result<Vec<DeletingRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DELETING)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(decode("deleting", k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn is_deleting(&self, key: &PodKey) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(DELETING)?
            .get(key.to_string().as_str())?
            .is_some())
    }

    /// Drops a delete intent without touching the status: the pod of that
    /// name was replaced by a new one instead.
    pub fn cancel_delete(&self, key: &PodKey) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(DELETING)?.remove(key.to_string().as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// Finishes a delete: the intent and the status go, and the publication
    /// that clears the retained status is queued, in one transaction.
    pub fn finish_delete(
        &self,
        key: &PodKey,
        make: impl FnOnce(u64) -> OutboxEntry,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.append_with(make, |txn| {
            txn.open_table(OBSERVED)?.remove(key.as_str())?;
            txn.open_table(DELETING)?.remove(key.as_str())?;
            Ok(())
        })
    }

    /// The last-known status of one pod.
    pub fn status(&self, key: &PodKey) -> Result<Option<PodStatus>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBSERVED)?;
        let k = key.to_string();
        match table.get(k.as_str())? {
            Some(v) => Ok(Some(decode("observed", &k, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every desired pod. A record that cannot be decoded is returned as an
    /// error in its slot so one bad record does not hide the others.
    pub fn desired(&self) -> Result<Vec<Result<DesiredRecord, StoreError>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DESIRED)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(decode("desired", k.value(), v.value()));
        }
        Ok(out)
    }

    /// Every last-known pod status.
    pub fn observed(&self) -> Result<Vec<PodStatus>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBSERVED)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(decode("observed", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Takes the next node-wide sequence number and appends the outbox
    /// entry `make` builds with it; the caller may change other tables in
    /// the same transaction through `extra`.
    fn append_with(
        &self,
        make: impl FnOnce(u64) -> OutboxEntry,
        extra: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let seq;
        {
            let mut meta = txn.open_table(META)?;
            seq = read_u64(&meta, KEY_SEQ)? + 1;
            let id = read_u64(&meta, KEY_OUTBOX_ID)? + 1;
            meta.insert(KEY_SEQ, seq.to_le_bytes().as_slice())?;
            meta.insert(KEY_OUTBOX_ID, id.to_le_bytes().as_slice())?;
            let entry = make(seq);
            txn.open_table(OUTBOX)?
                .insert(id, encode(&entry).as_slice())?;
        }
        extra(&txn)?;
        txn.commit()?;
        Ok(seq)
    }

    /// Records a pod's status and queues its publication, atomically.
    /// `make` gets the sequence number the status is published with.
    pub fn record_status(
        &self,
        status: &PodStatus,
        make: impl FnOnce(u64) -> OutboxEntry,
    ) -> Result<u64, StoreError> {
        let key = status.key().to_string();
        self.append_with(make, |txn| {
            txn.open_table(OBSERVED)?
                .insert(key.as_str(), encode(status).as_slice())?;
            Ok(())
        })
    }

    /// Records several pods' statuses and queues their publications in one
    /// transaction (one commit, one fsync): each status with its outbox
    /// entry, in order, so every status still travels with its entry and
    /// none is recorded without the others. `make(i, seq)` makes the entry
    /// of `statuses[i]`. Returns the sequence numbers, in order.
    pub fn record_statuses(
        &self,
        statuses: &[PodStatus],
        make: impl FnMut(usize, u64) -> OutboxEntry,
    ) -> Result<Vec<u64>, StoreError> {
        let (staged, seqs) = self.stage_statuses(statuses, make)?;
        staged.commit()?;
        Ok(seqs)
    }

    /// `record_statuses` up to its commit: the changes are made and the
    /// transaction holds redb's write lock, so every later write waits for
    /// this one and transactions commit in the order they began. The
    /// commit (the fsync, the slow part) can then run off the async loop
    /// (`Staged::commit` in `spawn_blocking`); readers see the change once
    /// it is committed. Dropped uncommitted, nothing is recorded.
    pub fn stage_statuses(
        &self,
        statuses: &[PodStatus],
        mut make: impl FnMut(usize, u64) -> OutboxEntry,
    ) -> Result<(Staged, Vec<u64>), StoreError> {
        let txn = self.db.begin_write()?;
        let mut seqs = Vec::with_capacity(statuses.len());
        {
            let mut meta = txn.open_table(META)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut observed = txn.open_table(OBSERVED)?;
            let mut seq = read_u64(&meta, KEY_SEQ)?;
            let mut id = read_u64(&meta, KEY_OUTBOX_ID)?;
            for (i, status) in statuses.iter().enumerate() {
                seq += 1;
                id += 1;
                outbox.insert(id, encode(&make(i, seq)).as_slice())?;
                observed.insert(status.key().to_string().as_str(), encode(status).as_slice())?;
                seqs.push(seq);
            }
            meta.insert(KEY_SEQ, seq.to_le_bytes().as_slice())?;
            meta.insert(KEY_OUTBOX_ID, id.to_le_bytes().as_slice())?;
        }
        Ok((Staged(txn), seqs))
    }

    /// Forgets a pod's status and queues the publication that clears it.
    pub fn remove_status(
        &self,
        key: &PodKey,
        make: impl FnOnce(u64) -> OutboxEntry,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.append_with(make, |txn| {
            txn.open_table(OBSERVED)?.remove(key.as_str())?;
            Ok(())
        })
    }

    /// Queues an event (or any other acknowledged publication).
    pub fn append_outbox(&self, make: impl FnOnce(u64) -> OutboxEntry) -> Result<u64, StoreError> {
        self.append_with(make, |_| Ok(()))
    }

    /// Up to `limit` outbox entries with ids above `after`, oldest first.
    pub fn outbox_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for item in table.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let id = k.value();
            out.push((id, decode("outbox", id, v.value())?));
        }
        Ok(out)
    }

    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Removes entries the broker acknowledged. Not synced to disk on its
    /// own (the next durable commit carries it): losing an acknowledgement
    /// in a crash only re-sends a report, which receivers drop by `seq`, and
    /// it keeps an fsync off every pod start.
    pub fn ack_outbox(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut table = txn.open_table(OUTBOX)?;
            for id in ids {
                table.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops the oldest entries beyond `max_entries` and those older than
    /// `max_age_ms`. Returns how many were dropped.
    pub fn trim_outbox(
        &self,
        max_entries: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut dropped = 0;
        {
            let mut table = txn.open_table(OUTBOX)?;
            let mut len = table.len()?;
            loop {
                let Some((k, v)) = table.first()? else { break };
                let id = k.value();
                let entry: Result<OutboxEntry, _> = decode("outbox", id, v.value());
                let too_old = entry
                    .as_ref()
                    .map(|e| now_ms.saturating_sub(e.created_ms) > max_age_ms)
                    .unwrap_or(true);
                drop((k, v));
                if len > max_entries || too_old {
                    table.remove(id)?;
                    len -= 1;
                    dropped += 1;
                } else {
                    break;
                }
            }
        }
        txn.commit()?;
        Ok(dropped)
    }

    /// Commits what one read of a workload connection brought, in one
    /// durable transaction (`append_data_all` of one write).
    pub fn append_data(
        &self,
        write: DataWrite,
        budget_bytes: u64,
    ) -> Result<DataAppend, StoreError> {
        self.append_data_all(vec![write], budget_bytes)
    }

    /// Commits `writes` (each what one read of a workload connection or one
    /// host-interface publish brought), in order, in one durable
    /// transaction (the workloads' publishes are acknowledged only after it
    /// returns): new messages, each with the time it expires, in the queue
    /// of its priority; a message with a QoS 2 key already recorded is a
    /// duplicate and is not stored again; released QoS 2 keys are
    /// forgotten. Then drops messages while the table holds more than
    /// `budget_bytes`: the lowest priority's first, oldest first.
    pub fn append_data_all(
        &self,
        writes: Vec<DataWrite>,
        budget_bytes: u64,
    ) -> Result<DataAppend, StoreError> {
        let txn = self.db.begin_write()?;
        let mut appended = DataAppend::default();
        {
            let mut meta = txn.open_table(META)?;
            let mut table = txn.open_table(DATA)?;
            let mut qos2 = txn.open_table(DATA_QOS2)?;
            let mut pods = txn.open_table(DATA_PODS)?;
            let mut next = read_u64(&meta, KEY_DATA_ID)?;
            let mut bytes = read_u64(&meta, KEY_DATA_BYTES)?;
            for write in writes {
                if let Some(client) = &write.clear_client {
                    let prefix = format!("{client}\n");
                    let stale: Vec<String> = qos2
                        .range(prefix.as_str()..)?
                        .filter_map(Result::ok)
                        .map(|(k, _)| k.value().to_string())
                        .take_while(|k| k.starts_with(&prefix))
                        .collect();
                    for key in stale {
                        qos2.remove(key.as_str())?;
                    }
                }
                if let Some((pod, uid)) = &write.forget_sequences {
                    let (prefix, suffix) = (format!("{pod}/"), format!("#{uid}"));
                    let gone: Vec<String> = qos2
                        .range(prefix.as_str()..)?
                        .filter_map(Result::ok)
                        .map(|(k, _)| k.value().to_string())
                        .take_while(|k| k.starts_with(&prefix))
                        .filter(|k| k.ends_with(&suffix))
                        .collect();
                    for key in gone {
                        qos2.remove(key.as_str())?;
                    }
                }
                // Releases first: a PUBREL in this write is for a publish of
                // an earlier one (its PUBREC went out after that commit),
                // and a publish here that reuses its packet id is a new
                // message (rumqttc reuses an id once it sent the PUBREL).
                for key in &write.released {
                    qos2.remove(key.as_str())?;
                }
                if let Some((key, sequence)) = &write.sequence {
                    let last = qos2
                        .get(key.as_str())?
                        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                        .map(u64::from_le_bytes);
                    if last.is_some_and(|last| *sequence <= last) {
                        appended.duplicates += write.records.len() as u64;
                        continue;
                    }
                    qos2.insert(key.as_str(), sequence.to_le_bytes().as_slice())?;
                }
                for (record, key) in write.records {
                    if !first_delivery(&mut qos2, key.as_deref())? {
                        appended.duplicates += 1;
                        continue;
                    }
                    next += 1;
                    let value = encode(&record);
                    bytes += value.len() as u64;
                    table.insert(data_key(record.priority, next), value.as_slice())?;
                    appended.ids.push(next);
                    appended.stored.push((record.route, value.len() as u64));
                }
                for (target, record, key) in write.into_pods {
                    if !first_delivery(&mut qos2, key.as_deref())? {
                        appended.duplicates += 1;
                        continue;
                    }
                    next += 1;
                    let value = encode(&record);
                    pods.insert(pod_queue_key(&target, next).as_str(), value.as_slice())?;
                    appended
                        .stored_in_pods
                        .push((record.route, value.len() as u64));
                }
            }
            while bytes > budget_bytes {
                // The lowest priority's oldest message.
                let Some(last) = table.last()?.map(|(k, _)| k.value()) else {
                    break;
                };
                let from = queues::budget_drops_from(last);
                let Some((k, v)) = table.range(from..)?.next().transpose()? else {
                    break;
                };
                let (key, len) = (k.value(), v.value().len() as u64);
                let route = data_head(key, v.value()).map_or(0, |(_, route)| route);
                drop((k, v));
                table.remove(key)?;
                bytes = bytes.saturating_sub(len);
                appended.dropped_budget.push((route, len));
            }
            meta.insert(KEY_DATA_ID, next.to_le_bytes().as_slice())?;
            meta.insert(KEY_DATA_BYTES, bytes.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(appended)
    }

    /// Up to `max_count` messages (and about `max_bytes`, at least one) with
    /// ids above `after`, in the order the forwarder drains them when all
    /// are new: the highest priority first, each priority oldest first.
    pub fn data_after(
        &self,
        after: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, DataRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DATA)?;
        let mut out = Vec::new();
        for p in 0..LEVELS {
            let range = queues::queue_after(Priority(p as u8), after);
            read_queue(&table, range, max_count, max_bytes, &mut out)?;
        }
        Ok(out)
    }

    /// The forwarder's next batch: up to `max_count` messages (and about
    /// `max_bytes`, at least one) of the queue `queues::next_queue` names,
    /// given the newest id sent of each priority (`sent`), oldest first;
    /// None when every message stored was sent.
    pub fn data_next(
        &self,
        sent: &[u64; LEVELS],
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Option<(Priority, DataRecords)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DATA)?;
        let mut newest = [0; LEVELS];
        for (p, newest) in newest.iter_mut().enumerate() {
            let range = queues::queue_after(Priority(p as u8), 0);
            if let Some(last) = table.range(range)?.next_back() {
                *newest = key_parts(last?.0.value()).1;
            }
        }
        let Some(priority) = queues::next_queue(sent, &newest) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let range = queues::queue_after(priority, sent[usize::from(priority.0)]);
        read_queue(&table, range, max_count, max_bytes, &mut out)?;
        Ok(Some((priority, out)))
    }

    /// How many messages wait and their bytes, by the route that took
    /// them (one pass over every stored message: for the counters at
    /// start).
    pub fn data_backlog_by_route(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, (u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DATA)?;
        let mut out = std::collections::BTreeMap::<u32, (u64, u64)>::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let route = data_head(k.value(), v.value()).map_or(0, |(_, route)| route);
            let entry = out.entry(route).or_default();
            entry.0 += 1;
            entry.1 += v.value().len() as u64;
        }
        // And what waits in the pods' queues.
        for item in txn.open_table(DATA_PODS)?.iter()? {
            let (_, v) = item?;
            let route = decode::<DataRecord>("data_pods", 0, v.value()).map_or(0, |r| r.route);
            let entry = out.entry(route).or_default();
            entry.0 += 1;
            entry.1 += v.value().len() as u64;
        }
        Ok(out)
    }

    /// How many messages wait, and their bytes.
    pub fn data_backlog(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let count = txn.open_table(DATA)?.len()?;
        let bytes = read_u64(&txn.open_table(META)?, KEY_DATA_BYTES)?;
        Ok((count, bytes))
    }

    /// Removes the messages of `batches` (each a priority and the first
    /// and last id of a batch the broker acknowledged: a range of one
    /// queue, which no later message joins). Not synced on its own: a
    /// crash may send a batch again, which the sink drops by message id.
    /// Returns each removed message's route and bytes.
    pub fn ack_data(&self, batches: &[(Priority, u64, u64)]) -> Result<RouteBytes, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let mut removed = Vec::new();
        {
            let mut meta = txn.open_table(META)?;
            let mut table = txn.open_table(DATA)?;
            let mut bytes = read_u64(&meta, KEY_DATA_BYTES)?;
            for &(priority, first, last) in batches {
                let range = data_key(priority, first)..=data_key(priority, last);
                let acked: Vec<(u64, u32, u64)> = table
                    .range(range)?
                    .filter_map(Result::ok)
                    .map(|(k, v)| {
                        let route = data_head(k.value(), v.value()).map_or(0, |(_, route)| route);
                        (k.value(), route, v.value().len() as u64)
                    })
                    .collect();
                for (key, route, len) in acked {
                    table.remove(key)?;
                    bytes = bytes.saturating_sub(len);
                    removed.push((route, len));
                }
            }
            meta.insert(KEY_DATA_BYTES, bytes.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Drops the messages whose time to live has passed; returns each one's
    /// route and bytes.
    pub fn expire_data(&self, now_ms: u64) -> Result<RouteBytes, StoreError> {
        let expired: Vec<(u64, u32, u64)> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(DATA)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let head = data_head(k.value(), v.value());
                // A record that does not decode can never be sent: it goes too.
                if head
                    .as_ref()
                    .is_ok_and(|&(expires_ms, _)| expires_ms > now_ms)
                {
                    continue;
                }
                let route = head.map_or(0, |(_, route)| route);
                out.push((k.value(), route, v.value().len() as u64));
            }
            out
        };
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let mut dropped = Vec::new();
        {
            let mut meta = txn.open_table(META)?;
            let mut table = txn.open_table(DATA)?;
            let mut bytes = read_u64(&meta, KEY_DATA_BYTES)?;
            for (id, route, len) in expired {
                if table.remove(id)?.is_some() {
                    bytes = bytes.saturating_sub(len);
                    dropped.push((route, len));
                }
            }
            meta.insert(KEY_DATA_BYTES, bytes.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(dropped)
    }

    /// Up to `max_count` messages of the queue of the pod `target`
    /// (`namespace/pod`) with ids above `after`, oldest first.
    pub fn pod_data(
        &self,
        target: &str,
        after: u64,
        max_count: usize,
    ) -> Result<Vec<(u64, DataRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DATA_PODS)?;
        let prefix = format!("{target}\n");
        let start = pod_queue_key(target, after.saturating_add(1));
        let mut out = Vec::new();
        for item in table.range(start.as_str()..)? {
            let (k, v) = item?;
            let Some(id) = k.value().strip_prefix(&prefix) else {
                break;
            };
            if out.len() >= max_count {
                break;
            }
            let id: u64 = id.parse().map_err(|_| StoreError::Corrupt {
                table: "data_pods",
                key: k.value().to_string(),
                detail: "not a message id".into(),
            })?;
            out.push((id, decode("data_pods", id, v.value())?));
        }
        Ok(out)
    }

    /// Removes the messages `ids` from the queue of the pod `target` (a
    /// subscriber acknowledged them). Not synced on its own, as `ack_data`:
    /// a crash may deliver them again. Returns each removed message's route
    /// and bytes (an id no longer there is left out).
    pub fn ack_pod_data(&self, target: &str, ids: &[u64]) -> Result<RouteBytes, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let mut removed = Vec::new();
        {
            let mut table = txn.open_table(DATA_PODS)?;
            for &id in ids {
                if let Some(v) = table.remove(pod_queue_key(target, id).as_str())? {
                    let route =
                        decode::<DataRecord>("data_pods", id, v.value()).map_or(0, |r| r.route);
                    removed.push((route, v.value().len() as u64));
                }
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Drops the messages of the pods' queues whose time to live has
    /// passed; returns each one's route and bytes.
    pub fn expire_pod_data(&self, now_ms: u64) -> Result<RouteBytes, StoreError> {
        let expired: Vec<(String, u32, u64)> = {
            let txn = self.db.begin_read()?;
            let mut out = Vec::new();
            for item in txn.open_table(DATA_PODS)?.iter()? {
                let (k, v) = item?;
                let record = decode::<DataRecord>("data_pods", 0, v.value());
                // A record that does not decode can never be delivered.
                if record.as_ref().is_ok_and(|r| r.expires_ms > now_ms) {
                    continue;
                }
                let route = record.map_or(0, |r| r.route);
                out.push((k.value().to_string(), route, v.value().len() as u64));
            }
            out
        };
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let mut dropped = Vec::new();
        {
            let mut table = txn.open_table(DATA_PODS)?;
            for (key, route, len) in expired {
                if table.remove(key.as_str())?.is_some() {
                    dropped.push((route, len));
                }
            }
        }
        txn.commit()?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn spec(name: &str, generation: u64) -> PodSpec {
        crate::model::samples::spec(name, "u1", generation, RestartPolicy::Never)
    }

    fn status(name: &str) -> PodStatus {
        PodStatus {
            namespace: "default".into(),
            name: name.into(),
            uid: "u1".into(),
            observed_generation: 1,
            phase: PodPhase::Running,
            conditions: vec![],
            reason: None,
            message: None,
            start_time_ms: None,
            host_ip: None,
            pod_ip: None,
            init_container_statuses: vec![],
            container_statuses: vec![],
        }
    }

    fn entry(topic: &str, seq: u64) -> OutboxEntry {
        OutboxEntry {
            topic: topic.into(),
            payload: seq.to_le_bytes().to_vec(),
            retain: true,
            created_ms: 1000 + seq,
        }
    }

    #[test]
    fn desired_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path).expect("open");
            s.put_desired(&DesiredRecord {
                source: PodSource::Mqtt,
                spec: spec("a", 1),
            })
            .expect("put");
            s.put_desired(&DesiredRecord {
                source: PodSource::File,
                spec: spec("b", 2),
            })
            .expect("put");
            s.remove_desired(&PodKey::new("default", "a"))
                .expect("remove");
        }
        let s = Store::open(&path).expect("reopen");
        let all: Vec<_> = s
            .desired()
            .expect("read")
            .into_iter()
            .map(|r| r.expect("decodes"))
            .collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].spec.name, "b");
        assert_eq!(all[0].source, PodSource::File);
    }

    #[test]
    fn status_and_outbox_are_one_write_with_rising_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        let a = s
            .record_status(&status("a"), |seq| entry("t/a", seq))
            .expect("record");
        let b = s
            .record_status(&status("b"), |seq| entry("t/b", seq))
            .expect("record");
        let c = s
            .remove_status(&PodKey::new("default", "a"), |seq| entry("t/a", seq))
            .expect("remove");
        assert!(a < b && b < c);
        let observed = s.observed().expect("observed");
        assert_eq!(observed.len(), 1);
        assert_eq!(observed[0].name, "b");
        let out = s.outbox_after(0, 10).expect("outbox");
        let topics: Vec<_> = out.iter().map(|(_, e)| e.topic.as_str()).collect();
        assert_eq!(topics, ["t/a", "t/b", "t/a"]);
        // Acknowledged entries leave; the rest keep their order.
        s.ack_outbox(&[out[0].0]).expect("ack");
        let rest = s.outbox_after(0, 10).expect("outbox");
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].0, out[1].0);
        assert_eq!(s.outbox_after(out[1].0, 10).expect("after").len(), 1);
    }

    #[test]
    fn statuses_recorded_together_are_one_write_each_with_its_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        let first = s
            .record_status(&status("a"), |seq| entry("t/a", seq))
            .expect("record");
        let batch = [status("b"), status("c"), status("a")];
        let topics = ["t/b", "t/c", "t/a"];
        // A failed write records none of them.
        s.fault_fail_writes(true);
        assert!(
            s.record_statuses(&batch, |i, seq| entry(topics[i], seq))
                .is_err()
        );
        s.fault_fail_writes(false);
        assert_eq!(s.outbox_after(0, 10).expect("outbox").len(), 1);
        let seqs = s
            .record_statuses(&batch, |i, seq| entry(topics[i], seq))
            .expect("record");
        assert_eq!(seqs, [first + 1, first + 2, first + 3]);
        let out = s.outbox_after(0, 10).expect("outbox");
        let got: Vec<_> = out
            .iter()
            .map(|(_, e)| (e.topic.as_str(), e.created_ms - 1000))
            .collect();
        assert_eq!(
            got,
            [
                ("t/a", first),
                ("t/b", first + 1),
                ("t/c", first + 2),
                ("t/a", first + 3)
            ]
        );
        assert_eq!(s.observed().expect("observed").len(), 3);
        // The next single write continues the sequence.
        let next = s.append_outbox(|seq| entry("t", seq)).expect("append");
        assert_eq!(next, first + 4);
        assert!(
            s.record_statuses(&[], |_, _| unreachable!())
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn outbox_is_bounded_by_count_and_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        for _ in 0..10 {
            s.append_outbox(|seq| entry("t", seq)).expect("append");
        }
        assert_eq!(s.trim_outbox(6, u64::MAX, 0).expect("trim"), 4);
        assert_eq!(s.outbox_len().expect("len"), 6);
        // Entries were created at 1000+seq (seq 5..=10 remain); with now
        // = 1010 and max age 3, those created before 1007 go.
        assert_eq!(s.trim_outbox(100, 3, 1010).expect("trim"), 2);
        let left: Vec<u64> = s
            .outbox_after(0, 100)
            .expect("read")
            .into_iter()
            .map(|(_, e)| e.created_ms)
            .collect();
        assert_eq!(left, [1007, 1008, 1009, 1010]);
    }

    #[test]
    fn a_delete_intent_survives_reopen_until_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let key = PodKey::new("default", "a");
        {
            let s = Store::open(&path).expect("open");
            s.put_desired(&DesiredRecord {
                source: PodSource::Mqtt,
                spec: spec("a", 1),
            })
            .expect("put");
            s.record_status(&status("a"), |seq| entry("t/a", seq))
                .expect("status");
            s.begin_delete(&DeletingRecord {
                namespace: "default".into(),
                name: "a".into(),
                uid: "u1".into(),
            })
            .expect("begin");
        }
        let s = Store::open(&path).expect("reopen");
        assert!(s.desired().expect("desired").is_empty());
        assert_eq!(s.deleting().expect("deleting")[0].uid, "u1");
        assert!(s.is_deleting(&key).expect("is"));
        s.finish_delete(&key, |seq| entry("t/a", seq))
            .expect("finish");
        assert!(s.deleting().expect("deleting").is_empty());
        assert!(s.status(&key).expect("status").is_none());
        assert_eq!(s.outbox_len().expect("len"), 2);
    }

    fn record(n: u8, expires_ms: u64) -> DataRecord {
        DataRecord {
            source: DataSource {
                namespace: "default".into(),
                pod: "sensor".into(),
                container: "main".into(),
            },
            topic: "sensors/t".into(),
            device_time_ms: 1,
            expires_ms,
            payload: vec![n; 100],
            route: 7 + u32::from(n % 2),
            priority: Priority::default(),
        }
    }

    #[test]
    fn data_waits_in_order_until_acknowledged_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).expect("open");
            let write = DataWrite {
                records: (0..5).map(|n| (record(n, u64::MAX), None)).collect(),
                ..Default::default()
            };
            let appended = store.append_data(write, u64::MAX).expect("append");
            assert_eq!(appended.ids, [1, 2, 3, 4, 5]);
        }
        let store = Store::open(&path).expect("reopen");
        let first = store.data_after(0, 2, usize::MAX).expect("read");
        assert_eq!(first.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(first[1].1.payload, vec![1; 100]);
        assert_eq!(
            store
                .ack_data(&[(Priority::LOWEST, 1, 2)])
                .expect("ack")
                .len(),
            2
        );
        let rest = store.data_after(0, 10, usize::MAX).expect("read");
        assert_eq!(
            rest.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let (count, bytes) = store.data_backlog().expect("backlog");
        assert_eq!(count, 3);
        assert!(bytes > 300, "{bytes}");
        // Ids keep rising after acknowledgements.
        let more = store
            .append_data(
                DataWrite {
                    records: vec![(record(9, u64::MAX), None)],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        assert_eq!(more.ids, [6]);
    }

    #[test]
    fn data_is_bounded_by_ttl_and_budget_and_says_how_much_it_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let write = DataWrite {
            records: vec![
                (record(0, 1_000), None),
                (record(1, 5_000), None),
                (record(2, 1_000), None),
            ],
            ..Default::default()
        };
        store.append_data(write, u64::MAX).expect("append");
        let (_, one) = store.data_backlog().expect("backlog");
        let one = one / 3;
        // Each dropped message is named by its route, with its bytes.
        assert_eq!(
            store.expire_data(2_000).expect("expire"),
            [(7, one), (7, one)]
        );
        assert_eq!(store.data_backlog().expect("backlog"), (1, one));
        assert_eq!(
            store.data_backlog_by_route().expect("by route"),
            std::collections::BTreeMap::from([(8, (1, one))])
        );
        // A budget of about two messages (these have a longer TTL field):
        // appending three drops the oldest two.
        let write = DataWrite {
            records: (3..6).map(|n| (record(n, u64::MAX), None)).collect(),
            ..Default::default()
        };
        let appended = store.append_data(write, 2 * one + 40).expect("append");
        // The first message left (route 8), then the first new one (route
        // 8 too; its TTL field is 8 bytes longer).
        assert_eq!(appended.dropped_budget, [(8, one), (8, one + 8)]);
        let left = store.data_after(0, 10, usize::MAX).expect("read");
        assert_eq!(
            left.iter().map(|(_, r)| r.payload[0]).collect::<Vec<_>>(),
            [4, 5]
        );
    }

    /// A message stored by an agent from before routes were counted (its
    /// record has no `route`) is read back with route 0; an older agent
    /// reads today's records (postcard ignores the trailing field).
    #[test]
    fn data_records_without_a_route_are_read() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            source: DataSource,
            topic: String,
            device_time_ms: u64,
            expires_ms: u64,
            payload: Vec<u8>,
        }
        let today = record(3, 9);
        let before = Before {
            source: today.source.clone(),
            topic: today.topic.clone(),
            device_time_ms: today.device_time_ms,
            expires_ms: today.expires_ms,
            payload: today.payload.clone(),
        };
        let old_bytes = postcard::to_stdvec(&before).expect("encodes");
        assert_eq!(
            decode_data(1, &old_bytes).expect("reads"),
            DataRecord {
                route: 0,
                ..today.clone()
            }
        );
        assert_eq!(decode_data(1, &encode(&today)).expect("reads"), today);
        let by_older: Before = postcard::from_bytes(&encode(&today)).expect("older reads");
        assert_eq!(by_older, before);
        assert!(decode_data(1, &old_bytes[..old_bytes.len() - 1]).is_err());
        // The head (expiry, route) the deletion and expiry passes read,
        // borrowed: the same as the whole record's, in both layouts.
        assert_eq!(
            data_head(1, &encode(&today)).expect("reads"),
            (today.expires_ms, today.route)
        );
        assert_ne!(
            today.route, 0,
            "the fixture's route tells the layouts apart"
        );
        assert_eq!(
            data_head(1, &old_bytes).expect("reads"),
            (today.expires_ms, 0)
        );
        assert!(data_head(1, &old_bytes[..old_bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_qos2_publish_sent_again_is_stored_once_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let key = || Some("default/sensor/main|c1\n7".to_string());
        let once = |write: DataWrite| store.append_data(write, u64::MAX).expect("append");
        let first = once(DataWrite {
            records: vec![(record(0, u64::MAX), key())],
            ..Default::default()
        });
        assert_eq!((first.ids.len(), first.duplicates), (1, 0));
        // The client did not get PUBREC (the agent crashed) and sends it again.
        let again = once(DataWrite {
            records: vec![(record(0, u64::MAX), key())],
            ..Default::default()
        });
        assert_eq!((again.ids.len(), again.duplicates), (0, 1));
        // Released: the packet id may carry a new message.
        once(DataWrite {
            released: vec![key().expect("key")],
            ..Default::default()
        });
        let reused = once(DataWrite {
            records: vec![(record(1, u64::MAX), key())],
            ..Default::default()
        });
        assert_eq!(reused.ids.len(), 1);
        // One read brought the PUBREL of that message and, after it, a new
        // publish reusing the packet id (rumqttc does this before PUBCOMP):
        // the release comes first, the publish is new.
        let same_read = once(DataWrite {
            released: vec![key().expect("key")],
            records: vec![(record(3, u64::MAX), key())],
            ..Default::default()
        });
        assert_eq!((same_read.ids.len(), same_read.duplicates), (1, 0));
        // A clean session forgets what was not released.
        let fresh = once(DataWrite {
            records: vec![(record(2, u64::MAX), key())],
            clear_client: Some("default/sensor/main|c1".into()),
            ..Default::default()
        });
        assert_eq!((fresh.ids.len(), fresh.duplicates), (1, 0));
    }

    /// Writes grouped into one transaction (the data path's group commit)
    /// do what they would have done one after the other: a packet id
    /// released by one may carry a new message in the next, and ids follow
    /// the writes' order.
    #[test]
    fn grouped_data_writes_commit_as_if_one_after_the_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let key = || Some("default/sensor/main|c1\n7".to_string());
        store
            .append_data(
                DataWrite {
                    records: vec![(record(0, u64::MAX), key())],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        let grouped = store
            .append_data_all(
                vec![
                    DataWrite {
                        released: vec![key().expect("key")],
                        ..Default::default()
                    },
                    DataWrite {
                        records: vec![(record(1, u64::MAX), key())],
                        ..Default::default()
                    },
                    DataWrite {
                        records: vec![(record(2, u64::MAX), None), (record(3, u64::MAX), None)],
                        ..Default::default()
                    },
                ],
                u64::MAX,
            )
            .expect("append");
        assert_eq!((grouped.ids, grouped.duplicates), (vec![2, 3, 4], 0));
        let stored: Vec<u64> = store
            .data_after(0, 10, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|(_, r)| r.payload[0].into())
            .collect();
        assert_eq!(stored, vec![0, 1, 2, 3]);
    }

    /// A `publish-once` sent again (the component did not see `ok`: the
    /// agent crashed) is a duplicate; a higher sequence is stored; a new
    /// pod (uid) starts again; a gone pod's sequences are forgotten, not
    /// another's, and no QoS 2 key.
    #[test]
    fn a_sequenced_publish_sent_again_is_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let source = record(0, u64::MAX).source;
        let once = |n: u8, uid: &str, sequence: u64| {
            store
                .append_data(
                    DataWrite {
                        records: vec![(record(n, u64::MAX), None)],
                        sequence: Some((sequence_key(&source, uid), sequence)),
                        ..Default::default()
                    },
                    u64::MAX,
                )
                .expect("append")
        };
        assert_eq!(once(0, "u1", 0).ids.len(), 1);
        assert_eq!(once(1, "u1", 1).ids.len(), 1);
        let again = once(1, "u1", 1);
        assert_eq!((again.ids.len(), again.duplicates), (0, 1));
        assert_eq!(once(0, "u1", 0).duplicates, 1, "an older one too");
        assert_eq!(once(5, "u1", 5).ids.len(), 1, "gaps are allowed");
        assert_eq!(once(0, "u2", 0).ids.len(), 1, "another pod's sequences");
        let qos2 = Some("default/sensor/main|c1\n7".to_string());
        store
            .append_data(
                DataWrite {
                    records: vec![(record(9, u64::MAX), qos2.clone())],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        store
            .append_data(
                DataWrite {
                    forget_sequences: Some(("default/sensor".into(), "u1".into())),
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("forget");
        assert_eq!(once(1, "u1", 1).ids.len(), 1, "forgotten: stored");
        assert_eq!(once(0, "u2", 0).duplicates, 1, "u2's are kept");
        let resent = store
            .append_data(
                DataWrite {
                    records: vec![(record(9, u64::MAX), qos2)],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        assert_eq!(resent.duplicates, 1, "the QoS 2 key is kept");
    }

    /// Schema 8 kept QoS 2 keys in a table of `()` values: a publish that
    /// was received and not released before the upgrade is still known
    /// after it, and the old table is gone.
    #[cfg(feature = "data")]
    #[test]
    fn schema_8_qos2_keys_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let key = "default/sensor/main|c1\n7";
        {
            let (_db, txn) = old_store(&path, 8);
            txn.open_table(LEGACY_DATA_QOS2)
                .expect("qos2")
                .insert(key, ())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let store = Store::open(&path).expect("migrates");
        let again = store
            .append_data(
                DataWrite {
                    records: vec![(record(0, u64::MAX), Some(key.to_string()))],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        assert_eq!((again.ids.len(), again.duplicates), (0, 1));
        let txn = store.db.begin_read().expect("read");
        let names: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "data_qos2"), "{names:?}");
    }

    #[test]
    fn accepted_counters_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let a = crate::trust::Accepted {
            counter: 7,
            digest: [1; 32],
            tombstone: false,
        };
        {
            let s = Store::open(&path).expect("open");
            s.set_accepted("p/gw1/index/cli", &a).expect("set");
            s.set_accepted("p/gw1/index/bridge", &a).expect("set");
            s.set_accepted("p/gw1/labels", &a).expect("set");
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.accepted("p/gw1/index/cli").expect("get"), Some(a));
        assert_eq!(s.accepted("p/gw1/other").expect("get"), None);
        let under: Vec<String> = s
            .accepted_under("p/gw1/index/")
            .expect("range")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(under, ["p/gw1/index/bridge", "p/gw1/index/cli"]);
    }

    /// A schema 3 file (before the data path and signed desired state)
    /// opens and gains the trust table, keeping what it held.
    #[test]
    fn schema_3_is_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let (_db, txn) = old_store(&path, 3);
            txn.open_table(FLEET)
                .expect("fleet")
                .insert("labels", b"x".as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let s = Store::open(&path).expect("migrates");
        assert_eq!(s.accepted("t").expect("trust table"), None);
        assert_eq!(
            s.fleet_state().expect("fleet"),
            [("labels".to_string(), b"x".to_vec())]
        );
    }

    /// A file of an older schema (desired records in the PodSpec of wire
    /// versions 1 to 3: store schemas 1 to 5) opens with its records
    /// re-encoded: the same pod, nothing it did not have, and its literal `$`
    /// kept literal.
    #[test]
    fn desired_records_are_migrated_from_every_older_schema() {
        for schema in 1..POD_FIELDS_SINCE {
            desired_records_are_migrated_from(schema);
        }
    }

    fn desired_records_are_migrated_from(schema: u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let old = crate::wire::v3::PodSpec {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            generation: 4,
            labels: Default::default(),
            runtime: RuntimeKind::Container,
            restart_policy: RestartPolicy::Always,
            termination_grace_period_secs: 30,
            host_network: false,
            init_containers: vec![],
            containers: vec![crate::wire::v3::Container {
                name: "app".into(),
                image: "busybox".into(),
                image_pull_policy: PullPolicy::IfNotPresent,
                command: vec!["echo".into(), "$(HOME)".into()],
                args: vec![],
                working_dir: None,
                env: vec![crate::wire::v3::EnvVar {
                    name: "PRICE".into(),
                    value: "$5".into(),
                }],
                volume_mounts: vec![],
                ports: vec![],
                resources: Default::default(),
                liveness_probe: None,
                readiness_probe: None,
                startup_probe: None,
                security_context: Some(crate::wire::v3::SecurityContext {
                    run_as_user: Some(7),
                    ..Default::default()
                }),
            }],
            volumes: vec![crate::wire::v3::Volume {
                name: "dev".into(),
                source: crate::wire::v3::VolumeSource::HostPath {
                    path: "/dev/x".into(),
                },
            }],
            image_pull_secrets: vec![],
        };
        {
            let (_db, txn) = old_store(&path, schema);
            /// A desired record as store schemas 1–5 wrote it.
            #[derive(Serialize)]
            struct DesiredRecordV5 {
                source: PodSource,
                spec: crate::wire::v3::PodSpec,
            }
            let rec = DesiredRecordV5 {
                source: PodSource::File,
                spec: old,
            };
            let mut t = txn.open_table(DESIRED).expect("desired");
            t.insert("default/web", encode(&rec).as_slice())
                .expect("insert");
            t.insert("default/bad", b"\xff".as_slice()).expect("insert");
            drop(t);
            txn.commit().expect("commit");
        }
        let s = Store::open(&path).expect("migrates");
        assert_eq!(
            s.accepted("t").expect("trust table"),
            None,
            "schema {schema}"
        );
        let rec = s
            .get_desired(&PodKey::new("default", "web"))
            .expect("reads")
            .expect("kept");
        assert_eq!(rec.source, PodSource::File);
        let c = &rec.spec.containers[0];
        assert_eq!(c.command, ["echo", "$$(HOME)"]);
        assert_eq!(c.env[0].value, "$$5");
        let sc = c.security_context.as_ref().expect("kept");
        assert_eq!(
            (sc.run_as_user, &sc.seccomp_profile, &sc.app_armor_profile),
            (Some(7), &None, &None)
        );
        assert_eq!(
            rec.spec.volumes[0].source,
            VolumeSource::HostPath {
                path: "/dev/x".into(),
                kind: HostPathType::Unset
            }
        );
        // Migrated once: opening again changes nothing.
        drop(s);
        let s = Store::open(&path).expect("reopens");
        let again = s
            .get_desired(&PodKey::new("default", "web"))
            .expect("reads")
            .expect("kept");
        assert_eq!(again, rec);
        // An unreadable record stays unreadable, and did not stop the open.
        assert!(s.get_desired(&PodKey::new("default", "bad")).is_err());
    }

    /// A schema 6 file (desired records in the PodSpec of wire versions 4
    /// to 8) opens with its records re-encoded: no hooks, the default
    /// termination message, the values as they were.
    #[test]
    fn schema_6_desired_records_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let mut spec = crate::wire::v8::PodSpec {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            generation: 4,
            labels: Default::default(),
            runtime: RuntimeKind::Container,
            restart_policy: RestartPolicy::Always,
            termination_grace_period_secs: 30,
            host_network: false,
            init_containers: vec![],
            containers: vec![],
            volumes: vec![],
            image_pull_secrets: vec![],
        };
        let mut c: crate::model::Container = crate::model::samples::container("app");
        c.env = vec![EnvVar::new("PRICE", "$$5")];
        spec.containers.push(crate::wire::v8::Container {
            name: c.name.clone(),
            image: c.image.clone(),
            image_pull_policy: c.image_pull_policy,
            command: vec!["echo".into()],
            args: vec![],
            working_dir: None,
            env: vec![crate::wire::v8::EnvVar {
                name: "PRICE".into(),
                value: "$$5".into(),
            }],
            volume_mounts: vec![],
            ports: vec![],
            resources: Default::default(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security_context: None,
        });
        /// A desired record as store schema 6 wrote it.
        #[derive(Serialize)]
        struct DesiredRecordV6 {
            source: PodSource,
            spec: crate::wire::v8::PodSpec,
        }
        let rec = DesiredRecordV6 {
            source: PodSource::Mqtt,
            spec,
        };
        let rec = migrated_from(&path, 6, &encode(&rec));
        assert_eq!(rec.source, PodSource::Mqtt);
        let mut want = c;
        want.command = vec!["echo".into()];
        assert_eq!(rec.spec.containers, [want]);
    }

    /// A schema 7 file (desired records in the PodSpec of wire version 9)
    /// opens with its records re-encoded: no sidecars, everything else as
    /// it was.
    #[test]
    fn schema_7_desired_records_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let mut want = crate::model::samples::spec("web", "u1", 4, RestartPolicy::Always);
        let mut c = crate::model::samples::container("app");
        c.env = vec![EnvVar::new("PRICE", "$$5")];
        c.run_as_non_root = true;
        want.init_containers
            .push(crate::model::samples::container("setup"));
        want.containers.push(c);
        let old = |c: &crate::model::Container| crate::wire::v9::Container {
            name: c.name.clone(),
            image: c.image.clone(),
            image_pull_policy: c.image_pull_policy,
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            env: c.env.iter().map(Into::into).collect(),
            volume_mounts: c.volume_mounts.clone(),
            ports: c.ports.clone(),
            resources: c.resources.into(),
            liveness_probe: c.liveness_probe.clone(),
            readiness_probe: c.readiness_probe.clone(),
            startup_probe: c.startup_probe.clone(),
            security_context: c.security_context.as_ref().map(Into::into),
            lifecycle: c.lifecycle.clone(),
            termination_message_path: c.termination_message_path.clone(),
            termination_message_fallback_to_logs: c.termination_message_fallback_to_logs,
            run_as_non_root: c.run_as_non_root,
        };
        let spec = crate::wire::v9::PodSpec {
            namespace: want.namespace.clone(),
            name: want.name.clone(),
            uid: want.uid.clone(),
            generation: want.generation,
            labels: want.labels.clone(),
            runtime: want.runtime,
            restart_policy: want.restart_policy,
            termination_grace_period_secs: want.termination_grace_period_secs,
            host_network: want.host_network,
            init_containers: want.init_containers.iter().map(old).collect(),
            containers: want.containers.iter().map(old).collect(),
            volumes: want.volumes.clone(),
            image_pull_secrets: want.image_pull_secrets.clone(),
            security: (&want.security).into(),
        };
        /// A desired record as store schema 7 wrote it.
        #[derive(Serialize)]
        struct DesiredRecordV7 {
            source: PodSource,
            spec: crate::wire::v9::PodSpec,
        }
        let rec = DesiredRecordV7 {
            source: PodSource::Fleet,
            spec,
        };
        let rec = migrated_from(&path, 7, &encode(&rec));
        assert_eq!(rec.source, PodSource::Fleet);
        assert_eq!(rec.spec, want);
    }

    /// Files of schemas 8 and 9 (desired records in the PodSpec of wire
    /// version 10) open with their records re-encoded: no SELinux labels,
    /// the default DNS policy, everything else as it was.
    #[test]
    fn schema_9_desired_records_are_migrated() {
        let mut want = crate::model::samples::spec("web", "u1", 4, RestartPolicy::Always);
        want.runtime = RuntimeKind::Container;
        let mut c = crate::model::samples::container("app");
        c.security_context = Some(crate::model::SecurityContext {
            run_as_user: Some(1000),
            seccomp_profile: Some(crate::model::SecurityProfile::RuntimeDefault),
            ..Default::default()
        });
        want.containers.push(c);
        let mut sidecar = crate::model::samples::container("proxy");
        sidecar.restart_policy = Some(RestartPolicy::Always);
        want.init_containers.push(sidecar);
        want.security.fs_group = Some(2000);
        want.routes.push(crate::model::PodRoute {
            container: None,
            filter: "sensors/#".into(),
            ttl_secs: 60,
            target: crate::model::RouteTarget::Upstream,
            priority: crate::model::Priority::default(),
        });
        /// A desired record as store schemas 8 and 9 wrote it.
        #[derive(Serialize)]
        struct DesiredRecordV9 {
            source: PodSource,
            spec: crate::wire::v10::PodSpec,
        }
        let rec = encode(&DesiredRecordV9 {
            source: PodSource::Mqtt,
            spec: (&want).into(),
        });
        for schema in [8, 9] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("s.redb");
            let read = migrated_from(&path, schema, &rec);
            assert_eq!(read.source, PodSource::Mqtt);
            assert_eq!(read.spec, want, "schema {schema}");
        }
    }

    /// Schema 10 wrote the `PodSpec` of wire version 11 (routes without a
    /// priority) and keyed `data` by id: the record reads as today's with
    /// the default priority, and the messages wait in the default
    /// priority's queue, in their order, with their ids.
    #[test]
    fn schema_10_records_and_messages_are_migrated_to_priorities() {
        let mut want = crate::model::samples::spec("web", "u1", 4, RestartPolicy::Always);
        want.routes.push(crate::model::PodRoute {
            container: None,
            filter: "sensors/#".into(),
            ttl_secs: 60,
            target: crate::model::RouteTarget::Upstream,
            priority: Priority::default(),
        });
        let rec = |priority| {
            let mut spec = want.clone();
            spec.routes[0].priority = priority;
            encode(&DesiredRecord {
                source: PodSource::Mqtt,
                spec,
            })
        };
        // Version 11's layout is today's without the priority's one byte:
        // where two priorities encode differently.
        let (a, b) = (rec(Priority(8)), rec(Priority::LOWEST));
        let at = (0..a.len()).find(|&i| a[i] != b[i]).expect("differs");
        let mut v11 = a.clone();
        v11.remove(at);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let (_db, txn) = old_store(&path, 10);
            txn.open_table(DESIRED)
                .expect("desired")
                .insert("default/web", v11.as_slice())
                .expect("insert");
            let mut data = txn.open_table(DATA).expect("data");
            for id in [3u64, 4, 7] {
                let value = encode(&record(id as u8, u64::MAX));
                data.insert(id, value.as_slice()).expect("insert");
            }
            drop(data);
            txn.commit().expect("commit");
        }
        let store = Store::open(&path).expect("migrates");
        let read = store
            .get_desired(&PodKey::new("default", "web"))
            .expect("reads")
            .expect("kept");
        assert_eq!(read.spec, want);
        // (A build without the data path leaves its table alone.)
        #[cfg(feature = "data")]
        {
            let sent = [0; LEVELS];
            let (priority, queued) = store
                .data_next(&sent, 10, usize::MAX)
                .expect("next")
                .expect("some");
            assert_eq!(priority, Priority::default());
            assert_eq!(
                queued.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                [3, 4, 7]
            );
            assert_eq!(queued[2].1, record(7, u64::MAX));
        }
    }

    /// Messages wait in a queue per priority: the forwarder's reads take
    /// the highest priority first, each queue oldest first, and come back
    /// to a higher priority as soon as it has a message; acknowledged
    /// ranges leave exactly; the budget drops the lowest priority's oldest
    /// first.
    #[test]
    fn data_waits_in_a_queue_per_priority_and_the_budget_drops_the_lowest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let at = |n: u8, p: u8| DataRecord {
            priority: Priority(p),
            ..record(n, u64::MAX)
        };
        // Ids 1-6: low, low, high, low, middle, high.
        let write = DataWrite {
            records: [(0, 9), (1, 9), (2, 0), (3, 9), (4, 5), (5, 0)]
                .into_iter()
                .map(|(n, p)| (at(n, p), None))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            store.append_data(write, u64::MAX).expect("append").ids,
            [1, 2, 3, 4, 5, 6]
        );
        let ids = |v: &[(u64, DataRecord)]| v.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        let mut sent = [0; LEVELS];
        let next = |sent: &[u64; LEVELS]| {
            store
                .data_next(sent, 2, usize::MAX)
                .expect("next")
                .map(|(p, v)| (p.0, ids(&v)))
        };
        assert_eq!(next(&sent), Some((0, vec![3, 6])));
        sent[0] = 6;
        assert_eq!(next(&sent), Some((5, vec![5])));
        sent[5] = 5;
        assert_eq!(next(&sent), Some((9, vec![1, 2])));
        sent[9] = 2;
        // A high-priority message arrives: it goes before the rest of 9.
        store
            .append_data(
                DataWrite {
                    records: vec![(at(6, 0), None)],
                    ..Default::default()
                },
                u64::MAX,
            )
            .expect("append");
        assert_eq!(next(&sent), Some((0, vec![7])));
        sent[0] = 7;
        assert_eq!(next(&sent), Some((9, vec![4])));
        sent[9] = 4;
        assert_eq!(next(&sent), None);
        // The order of a fresh connection.
        assert_eq!(
            ids(&store.data_after(0, 10, usize::MAX).expect("all")),
            [3, 6, 7, 5, 1, 2, 4]
        );
        // Acknowledged: priority 0's first batch and 9's first; 7 and the
        // rest wait.
        let removed = store
            .ack_data(&[(Priority(0), 3, 6), (Priority(9), 1, 2)])
            .expect("ack");
        assert_eq!(removed.len(), 4);
        assert_eq!(
            ids(&store.data_after(0, 10, usize::MAX).expect("all")),
            [7, 5, 4]
        );
        // Over the budget: the lowest priority's oldest go first (4, then
        // the new low one), then the middle one; the high one stays.
        let (_, bytes) = store.data_backlog().expect("backlog");
        let one = bytes / 3;
        let appended = store
            .append_data(
                DataWrite {
                    records: vec![(at(7, 9), None)],
                    ..Default::default()
                },
                one + 10,
            )
            .expect("append");
        assert_eq!(appended.dropped_budget.len(), 3);
        assert_eq!(ids(&store.data_after(0, 10, usize::MAX).expect("all")), [7]);
        assert_eq!(store.data_backlog().expect("backlog"), (1, one));
    }

    /// A new database at `path` that says it has store schema `schema`,
    /// and its open write transaction, for the test to fill and commit.
    fn old_store(path: &Path, schema: u32) -> (Database, redb::WriteTransaction) {
        let db = Database::create(path).expect("create");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(KEY_SCHEMA, schema.to_le_bytes().as_slice())
            .expect("insert");
        (db, txn)
    }

    /// Writes a store file of `schema` at `path` holding one desired record
    /// (`default/web`, in that schema's encoding), opens it (which
    /// migrates it) and reads the record back.
    fn migrated_from(path: &Path, schema: u32, record: &[u8]) -> DesiredRecord {
        {
            let (_db, txn) = old_store(path, schema);
            txn.open_table(DESIRED)
                .expect("desired")
                .insert("default/web", record)
                .expect("insert");
            txn.commit().expect("commit");
        }
        Store::open(path)
            .expect("migrates")
            .get_desired(&PodKey::new("default", "web"))
            .expect("reads")
            .expect("kept")
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let (_db, txn) = old_store(&path, 99);
            txn.commit().expect("commit");
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99 })
        ));
    }
}
