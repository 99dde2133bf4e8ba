//! The ConfigMaps and Secrets that pods on kedge nodes (and fleet
//! deployments) refer to, read one by one by name: the bridge never lists
//! or watches Secrets or ConfigMaps, and its ClusterRole grants only `get`
//! on them (edge-manifests/bridge-rbac.yaml). A kubelet's "Cache" strategy,
//! without a Node authorizer to narrow `get` further.
//!
//! - A lookup of an object not read yet answers "pending"
//!   ([`Resolver::pending`]): the state machine decides nothing for that
//!   pod, the object is fetched, and [`BridgeEvent::ObjectChanged`] makes it
//!   decide again.
//! - Every object still referenced is read again every refresh interval
//!   (`--ref-refresh-interval`); a change, creation or deletion is an
//!   `ObjectChanged`. So an update reaches the devices within one interval
//!   (a watch would be at once, but needs `list` and `watch` on every
//!   Secret of the cluster).
//! - Objects no pod refers to any more are forgotten ([`RefTable::retain`],
//!   on every tick of the main loop).
//!
//! The table is pure (unit-tested); [`run`] does the reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::state::{BridgeEvent, ObjRef, RefKind};
use crate::model::convert::Resolver;

/// Reads at once.
const CONCURRENCY: usize = 8;

type Data = BTreeMap<String, Vec<u8>>;

/// What is known of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Asked for, not read yet.
    Pending,
    Found(Data),
    Missing,
}

/// The objects referenced, and what was read of each.
#[derive(Debug, Default)]
pub struct RefTable {
    entries: HashMap<ObjRef, Known>,
}

impl RefTable {
    /// What is known of `r`; an unknown `r` becomes pending, and `true`
    /// says it must be fetched.
    pub fn lookup(&mut self, r: &ObjRef) -> (Known, bool) {
        match self.entries.get(r) {
            Some(k) => (k.clone(), false),
            None => {
                self.entries.insert(r.clone(), Known::Pending);
                (Known::Pending, true)
            }
        }
    }

    /// Records a read; `true` if it changed what was known (so the pods
    /// that refer to it must be decided again). A read of an object no
    /// longer referenced is dropped.
    pub fn record(&mut self, r: &ObjRef, read: Known) -> bool {
        match self.entries.get_mut(r) {
            Some(k) if *k != read => {
                *k = read;
                true
            }
            _ => false,
        }
    }

    /// Keeps only the objects in `referenced` (and those pending: asked
    /// for by a decision not made yet).
    pub fn retain(&mut self, referenced: &BTreeSet<&ObjRef>) {
        self.entries
            .retain(|r, k| *k == Known::Pending || referenced.contains(r));
    }

    pub fn keys(&self) -> Vec<ObjRef> {
        self.entries.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The table as the state machine's [`Resolver`]: a miss asks `fetch` to
/// read the object.
pub struct TableResolver {
    pub table: Arc<Mutex<RefTable>>,
    pub fetch: mpsc::UnboundedSender<ObjRef>,
}

impl TableResolver {
    fn known(&self, kind: RefKind, namespace: &str, name: &str) -> Known {
        let r = ObjRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let Ok(mut t) = self.table.lock() else {
            return Known::Pending;
        };
        let (known, fetch) = t.lookup(&r);
        if fetch {
            let _ = self.fetch.send(r);
        }
        known
    }
}

impl Resolver for TableResolver {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Data> {
        match self.known(RefKind::ConfigMap, namespace, name) {
            Known::Found(d) => Some(d),
            _ => None,
        }
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Data> {
        match self.known(RefKind::Secret, namespace, name) {
            Known::Found(d) => Some(d),
            _ => None,
        }
    }
    fn pending(&self, secret: bool, namespace: &str, name: &str) -> bool {
        let kind = if secret {
            RefKind::Secret
        } else {
            RefKind::ConfigMap
        };
        self.known(kind, namespace, name) == Known::Pending
    }
}

fn config_map_data(cm: ConfigMap) -> Data {
    let mut out = Data::new();
    for (k, v) in cm.data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    for (k, v) in cm.binary_data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

fn secret_data(s: Secret) -> Data {
    let mut out = Data::new();
    for (k, v) in s.data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    for (k, v) in s.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

/// One GET; `None` when the read failed (kept as it was, read again later).
async fn read(client: &Client, r: &ObjRef) -> Option<Known> {
    let result = match r.kind {
        RefKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), &r.namespace)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(config_map_data)),
        RefKind::Secret => Api::<Secret>::namespaced(client.clone(), &r.namespace)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(secret_data)),
    };
    match result {
        Ok(Some(d)) => Some(Known::Found(d)),
        Ok(None) => Some(Known::Missing),
        Err(e) => {
            warn!(kind = ?r.kind, namespace = %r.namespace, name = %r.name, error = %e, "cannot read a referenced object; trying again later");
            None
        }
    }
}

/// Reads what is asked for, and everything referenced again every
/// `refresh`, turning changes into `ObjectChanged` events.
pub async fn run(
    client: Client,
    table: Arc<Mutex<RefTable>>,
    mut asked: mpsc::UnboundedReceiver<ObjRef>,
    refresh: Duration,
    events: mpsc::Sender<BridgeEvent>,
) {
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let batch: Vec<ObjRef> = tokio::select! {
            r = asked.recv() => {
                let Some(r) = r else { return };
                let mut batch = vec![r];
                while let Ok(r) = asked.try_recv() {
                    batch.push(r);
                }
                batch
            }
            _ = tick.tick() => {
                let keys = table.lock().map(|t| t.keys()).unwrap_or_default();
                debug!(objects = keys.len(), "refreshing referenced ConfigMaps and Secrets");
                keys
            }
        };
        let mut reads = futures_util::stream::iter(batch)
            .map(|r| {
                let client = client.clone();
                async move {
                    let known = read(&client, &r).await;
                    (r, known)
                }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((r, known)) = reads.next().await {
            let Some(known) = known else { continue };
            let changed = table.lock().is_ok_and(|mut t| t.record(&r, known));
            if changed && events.send(BridgeEvent::ObjectChanged(r)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: RefKind, name: &str) -> ObjRef {
        ObjRef {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_first_lookup_is_pending_and_asks_once() {
        let mut t = RefTable::default();
        let s = r(RefKind::Secret, "db");
        assert_eq!(t.lookup(&s), (Known::Pending, true));
        assert_eq!(t.lookup(&s), (Known::Pending, false));
        let data = Data::from([("password".to_string(), b"x".to_vec())]);
        assert!(t.record(&s, Known::Found(data.clone())));
        assert_eq!(t.lookup(&s), (Known::Found(data.clone()), false));
        // The same read again changes nothing; a deletion does.
        assert!(!t.record(&s, Known::Found(data)));
        assert!(t.record(&s, Known::Missing));
        assert_eq!(t.lookup(&s), (Known::Missing, false));
    }

    #[test]
    fn only_referenced_objects_are_kept() {
        let mut t = RefTable::default();
        let (a, b, c) = (
            r(RefKind::Secret, "a"),
            r(RefKind::ConfigMap, "b"),
            r(RefKind::Secret, "c"),
        );
        for x in [&a, &b, &c] {
            t.lookup(x);
        }
        t.record(&a, Known::Missing);
        t.record(&b, Known::Missing);
        t.retain(&BTreeSet::from([&b]));
        assert_eq!(t.len(), 2, "b kept, c still pending");
        assert_eq!(t.lookup(&a), (Known::Pending, true), "a forgotten");
        // A read of an object forgotten meanwhile is dropped.
        let mut t = RefTable::default();
        assert!(!t.record(&c, Known::Missing));
        assert!(t.is_empty());
    }

    #[test]
    fn the_resolver_answers_pending_then_the_value() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let table = Arc::new(Mutex::new(RefTable::default()));
        let res = TableResolver {
            table: table.clone(),
            fetch: tx,
        };
        assert_eq!(res.config_map("default", "greeting"), None);
        assert!(res.pending(false, "default", "greeting"));
        let asked = r(RefKind::ConfigMap, "greeting");
        assert_eq!(rx.try_recv().ok(), Some(asked.clone()));
        table.lock().expect("lock").record(
            &asked,
            Known::Found(Data::from([("k".to_string(), b"v".to_vec())])),
        );
        assert_eq!(
            res.config_map("default", "greeting"),
            Some(Data::from([("k".to_string(), b"v".to_vec())]))
        );
        assert!(!res.pending(false, "default", "greeting"));
    }
}
