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

use crate::model::{PodKey, PodSource, PodSpec, PodStatus};

/// Bumped when a table's layout changes; `open` migrates older files.
pub const STORE_SCHEMA_VERSION: u32 = 4;
/// The first store schema whose desired records hold the `PodSpec` of wire
/// version 3; older ones are re-encoded by `open` (`wire::v2`).
const PODSPEC_V3_SINCE: u32 = 4;

/// redb's page cache. The state of a busy node (hundreds of pods, a full
/// outbox) is a few MiB; reads past the cache go to the page cache of the
/// kernel, which gives memory back under pressure.
const STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");
const OBSERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("observed");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Runtime handles (sandbox and container ids) for adoption after restart.
const HANDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("handles");
/// Deletes committed but not finished: pod key → `DeletingRecord`.
const DELETING: TableDefinition<&str, &[u8]> = TableDefinition::new("deleting");
/// Fleet state (schema 3), by key: `fleet/{ns}/{name}` → the fleet
/// deployment's payload, `spec/{digest}` → a fleet spec's payload (both
/// decoded and checked again when read), `labels` → the cloud's labels'
/// payload, `report/{ns}/{name}` → the last report sent (postcard).
const FLEET: TableDefinition<&str, &[u8]> = TableDefinition::new("fleet");

const KEY_SCHEMA: &str = "schema_version";
const KEY_SEQ: &str = "seq";
const KEY_OUTBOX_ID: &str = "outbox_next_id";
const KEY_IDENTITY: &str = "node_identity";

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

/// A desired record as store schemas 1–3 wrote it.
#[derive(Serialize, Deserialize)]
struct DesiredRecordV2 {
    source: PodSource,
    spec: crate::wire::v2::PodSpec,
}

/// Re-encodes every desired record from the old `PodSpec` layout. A record
/// that does not decode is left as it is (reading it reports it corrupt, as
/// before the migration).
fn migrate_desired_to_podspec_v3(
    table: &mut redb::Table<&'static str, &'static [u8]>,
) -> Result<(), StoreError> {
    let mut upgraded = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if let Ok(old) = postcard::from_bytes::<DesiredRecordV2>(v.value()) {
            let rec = DesiredRecord {
                source: old.source,
                spec: old.spec.into(),
            };
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
    key: impl ToString,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        detail: e.to_string(),
    })
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
            txn.open_table(HANDLES)?;
            // Version 1 → 2: the delete intents.
            txn.open_table(DELETING)?;
            // Version 2 → 3: fleet state.
            txn.open_table(FLEET)?;
            // Version 3 → 4: desired records in the PodSpec of wire
            // version 3 (seccomp/AppArmor profiles, hostPath types, `$(VAR)`
            // templates: the old literal values are escaped).
            if (1..PODSPEC_V3_SINCE).contains(&found) {
                migrate_desired_to_podspec_v3(&mut txn.open_table(DESIRED)?)?;
            }
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

    pub fn put_handle(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(HANDLES)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
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

    /// A schema 3 file (desired records in the PodSpec of wire version 2)
    /// opens with its records re-encoded: the same pod, nothing it did not
    /// have, and its literal `$` kept literal.
    #[test]
    fn schema_3_desired_records_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let old = crate::wire::v2::PodSpec {
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
            containers: vec![crate::wire::v2::Container {
                name: "app".into(),
                image: "busybox".into(),
                image_pull_policy: PullPolicy::IfNotPresent,
                command: vec!["echo".into(), "$(HOME)".into()],
                args: vec![],
                working_dir: None,
                env: vec![EnvVar {
                    name: "PRICE".into(),
                    value: "$5".into(),
                }],
                volume_mounts: vec![],
                ports: vec![],
                resources: Resources::default(),
                liveness_probe: None,
                readiness_probe: None,
                startup_probe: None,
                security_context: Some(crate::wire::v2::SecurityContext {
                    run_as_user: Some(7),
                    ..Default::default()
                }),
            }],
            volumes: vec![crate::wire::v2::Volume {
                name: "dev".into(),
                source: crate::wire::v2::VolumeSource::HostPath {
                    path: "/dev/x".into(),
                },
            }],
            image_pull_secrets: vec![],
        };
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(KEY_SCHEMA, 3u32.to_le_bytes().as_slice())
                .expect("insert");
            let rec = DesiredRecordV2 {
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

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(KEY_SCHEMA, 99u32.to_le_bytes().as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99 })
        ));
    }
}
