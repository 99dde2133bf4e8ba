//! Splitting the devices between bridge replicas with Leases.
//!
//! Devices fall into `--shards` shards by `state::shard_of`. Every replica
//! renews a membership Lease (`kedge-bridge-replica-{id}`) and holds shard
//! Leases (`kedge-bridge-shard-{n}`) in `--shard-namespace`: with M live
//! members it keeps at most ⌈shards / M⌉, takes free or expired ones and
//! releases extras, so shards spread when replicas join and move to the
//! survivors one lease duration after a replica dies. Taking and renewing
//! use the Lease's resourceVersion (optimistic concurrency): two replicas
//! never both believe they hold a shard after a round.
//!
//! On shutdown [`run`] stops renewing and hands back what it holds
//! ([`Held`]); once the writer drained, [`Held::release`] gives the shard
//! Leases back as client-go's leader election does with `ReleaseOnCancel`
//! (holder cleared, duration 1 s, under the resourceVersion this replica
//! last wrote) and deletes the membership Lease, so the other replicas take
//! the shards over in their next round instead of after [`LEASE_SECS`].
//!
//! [`plan`] is the decision, pure and unit-tested; [`run`] does the I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Error as KubeError};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::mqtt_link::MqttLink;
use super::render;
use super::state::BridgeEvent;
use crate::model::now_ms;

/// Label on every Lease of this protocol: `shard` or `replica`.
pub const LEASE_LABEL: &str = "kedge.io/bridge-lease";
/// How long a shard or membership Lease lasts without renewal.
pub const LEASE_SECS: u64 = 15;
/// How often a replica renews and re-plans.
pub const ROUND: Duration = Duration::from_secs(3);

pub fn shard_lease_name(n: u32) -> String {
    format!("kedge-bridge-shard-{n}")
}

pub fn replica_lease_name(id: &str) -> String {
    format!("kedge-bridge-replica-{id}")
}

/// What a shard Lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLease {
    pub holder: String,
    pub renew_ms: u64,
    pub duration_ms: u64,
}

impl ShardLease {
    fn valid(&self, now_ms: u64) -> bool {
        !self.holder.is_empty() && self.renew_ms + self.duration_ms > now_ms
    }
}

/// One round's decision.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Shards this replica holds and keeps: renew.
    pub renew: BTreeSet<u32>,
    /// Free or expired shards to take.
    pub take: BTreeSet<u32>,
    /// Shards this replica holds beyond its fair share: give back.
    pub release: BTreeSet<u32>,
}

/// Decides which shards to keep, take and give back. `members` counts the
/// live replicas including this one.
pub fn plan(
    me: &str,
    shards: u32,
    members: usize,
    leases: &BTreeMap<u32, ShardLease>,
    now_ms: u64,
) -> Plan {
    let target = (shards as usize).div_ceil(members.max(1));
    let mine: Vec<u32> = (0..shards)
        .filter(|n| {
            leases
                .get(n)
                .is_some_and(|l| l.valid(now_ms) && l.holder == me)
        })
        .collect();
    let mut p = Plan::default();
    if mine.len() > target {
        p.renew = mine[..target].iter().copied().collect();
        p.release = mine[target..].iter().copied().collect();
        return p;
    }
    p.renew = mine.iter().copied().collect();
    let want = target - mine.len();
    p.take = (0..shards)
        .filter(|n| leases.get(n).is_none_or(|l| !l.valid(now_ms)))
        .take(want)
        .collect();
    p
}

fn parse_ms(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> u64 {
    t.map(|t| t.0.as_millisecond().max(0) as u64).unwrap_or(0)
}

fn view(l: &Lease) -> ShardLease {
    let spec = l.spec.clone().unwrap_or_default();
    ShardLease {
        holder: spec.holder_identity.unwrap_or_default(),
        renew_ms: parse_ms(spec.renew_time.as_ref()),
        duration_ms: spec.lease_duration_seconds.unwrap_or(0).max(0) as u64 * 1000,
    }
}

fn lease_body(name: &str, kind: &str, holder: &str, now_ms: u64, rv: Option<&str>) -> Lease {
    lease_object(name, kind, holder, LEASE_SECS, now_ms, rv)
}

fn lease_object(
    name: &str,
    kind: &str,
    holder: &str,
    duration_secs: u64,
    now_ms: u64,
    rv: Option<&str>,
) -> Lease {
    let mut v = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {LEASE_LABEL: kind}},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_secs,
            "renewTime": render::micro_time(now_ms),
        },
    });
    if let Some(rv) = rv {
        v["metadata"]["resourceVersion"] = json!(rv);
    }
    serde_json::from_value(v).unwrap_or_default()
}

fn conflict(e: &KubeError) -> bool {
    matches!(e, KubeError::Api(s) if s.code == 409 || s.code == 404)
}

/// The shard Leases a replica held when it stopped, as it last wrote them.
pub struct Held {
    api: Api<Lease>,
    me: String,
    leases: BTreeMap<u32, Lease>,
}

impl Held {
    /// How many shard Leases are held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Gives the shard Leases back and deletes the membership Lease.
    /// Returns the shards still held (a write failed, or another replica
    /// wrote the Lease since: then it is not ours to clear).
    pub async fn release(self) -> Vec<u32> {
        let now = now_ms();
        let mut kept = Vec::new();
        for (n, lease) in &self.leases {
            let name = shard_lease_name(*n);
            let rv = lease.metadata.resource_version.as_deref();
            let body = lease_object(&name, "shard", "", 1, now, rv);
            match self.api.replace(&name, &PostParams::default(), &body).await {
                Ok(_) => debug!(shard = n, "shard lease released"),
                Err(e) if conflict(&e) => debug!(shard = n, "shard lease already taken"),
                Err(e) => {
                    warn!(shard = n, error = %e, "cannot release a shard lease");
                    kept.push(*n);
                }
            }
        }
        let member = replica_lease_name(&self.me);
        if let Err(e) = self.api.delete(&member, &DeleteParams::default()).await
            && !conflict(&e)
        {
            warn!(error = %e, "cannot delete the replica lease");
        }
        kept
    }
}

/// Runs the shard protocol until `stop`, telling the main loop which shards
/// this replica holds and re-reading the broker's retained state when it
/// gains any. A round under way when `stop` comes is finished, so the
/// Leases it wrote are known; returns what is held then.
pub async fn run(
    client: Client,
    namespace: String,
    me: String,
    shards: u32,
    events: mpsc::Sender<BridgeEvent>,
    mqtt: MqttLink,
    stop: CancellationToken,
) -> Held {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut held: HashSet<u32> = HashSet::new();
    // The shard Leases as last written by this replica (their resourceVersion).
    let mut written: BTreeMap<u32, Lease> = BTreeMap::new();
    let stopped = |written: BTreeMap<u32, Lease>| Held {
        api: api.clone(),
        me: me.clone(),
        leases: written,
    };
    loop {
        if stop.is_cancelled() {
            return stopped(written);
        }
        let now = now_ms();
        let member = lease_body(&replica_lease_name(&me), "replica", &me, now, None);
        if let Err(e) = api
            .patch(
                &replica_lease_name(&me),
                &PatchParams::apply(render::MANAGER).force(),
                &Patch::Apply(&member),
            )
            .await
        {
            warn!(error = %e, "cannot renew the replica lease");
        }
        let list = match api.list(&ListParams::default().labels(LEASE_LABEL)).await {
            Ok(l) => l.items,
            Err(e) => {
                warn!(error = %e, "cannot list bridge leases");
                if stop
                    .run_until_cancelled(tokio::time::sleep(ROUND))
                    .await
                    .is_none()
                {
                    return stopped(written);
                }
                continue;
            }
        };
        let label = |l: &Lease| {
            l.metadata
                .labels
                .as_ref()
                .and_then(|m| m.get(LEASE_LABEL).cloned())
                .unwrap_or_default()
        };
        let members = list
            .iter()
            .filter(|l| label(l) == "replica" && view(l).valid(now))
            .count()
            .max(1);
        let mut views = BTreeMap::new();
        let mut objects = BTreeMap::new();
        for l in list.iter().filter(|l| label(l) == "shard") {
            let Some(n) = l
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("kedge-bridge-shard-"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            views.insert(n, view(l));
            objects.insert(n, l.clone());
        }
        let p = plan(&me, shards, members, &views, now);
        let mut next: HashSet<u32> = HashSet::new();
        for n in p.renew.iter().chain(p.take.iter()) {
            let name = shard_lease_name(*n);
            let result = match objects.get(n) {
                Some(existing) => {
                    let rv = existing.metadata.resource_version.as_deref();
                    api.replace(
                        &name,
                        &PostParams::default(),
                        &lease_body(&name, "shard", &me, now, rv),
                    )
                    .await
                }
                None => {
                    api.create(
                        &PostParams::default(),
                        &lease_body(&name, "shard", &me, now, None),
                    )
                    .await
                }
            };
            match result {
                Ok(lease) => {
                    next.insert(*n);
                    written.insert(*n, lease);
                }
                Err(e) if conflict(&e) => debug!(shard = n, "another replica won the shard"),
                Err(e) => warn!(shard = n, error = %e, "cannot write a shard lease"),
            }
        }
        written.retain(|n, _| next.contains(n));
        if next != held {
            let gained = next.difference(&held).count();
            info!(held = next.len(), members, "bridge shards changed");
            let sent = stop
                .run_until_cancelled(events.send(BridgeEvent::ShardsChanged { held: next.clone() }))
                .await;
            if !matches!(sent, Some(Ok(()))) {
                return stopped(written);
            }
            if gained > 0 {
                mqtt.resync();
            }
            held = next;
        }
        // Give back extras only after the main loop stopped serving them.
        for n in &p.release {
            if let Some(existing) = objects.get(n) {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: existing.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..Default::default()
                };
                let _ = api.delete(&shard_lease_name(*n), &dp).await;
            }
        }
        if stop
            .run_until_cancelled(tokio::time::sleep(ROUND))
            .await
            .is_none()
        {
            return stopped(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn held(holder: &str) -> ShardLease {
        ShardLease {
            holder: holder.into(),
            renew_ms: NOW - 1_000,
            duration_ms: 15_000,
        }
    }

    #[test]
    fn a_lone_replica_takes_every_shard() {
        let p = plan("a", 4, 1, &BTreeMap::new(), NOW);
        assert_eq!(p.take, BTreeSet::from([0, 1, 2, 3]));
        assert!(p.renew.is_empty() && p.release.is_empty());
    }

    #[test]
    fn a_second_replica_makes_the_first_give_back_half() {
        let leases: BTreeMap<u32, ShardLease> = (0..4).map(|n| (n, held("a"))).collect();
        let a = plan("a", 4, 2, &leases, NOW);
        assert_eq!(a.renew, BTreeSet::from([0, 1]));
        assert_eq!(a.release, BTreeSet::from([2, 3]));
        // b finds nothing free until a released.
        let b = plan("b", 4, 2, &leases, NOW);
        assert!(b.take.is_empty());
        let after: BTreeMap<u32, ShardLease> = (0..2).map(|n| (n, held("a"))).collect();
        let b = plan("b", 4, 2, &after, NOW);
        assert_eq!(b.take, BTreeSet::from([2, 3]));
    }

    #[test]
    fn expired_shards_of_a_dead_replica_are_taken() {
        let mut leases: BTreeMap<u32, ShardLease> = BTreeMap::new();
        leases.insert(0, held("a"));
        leases.insert(
            1,
            ShardLease {
                holder: "dead".into(),
                renew_ms: NOW - 20_000,
                duration_ms: 15_000,
            },
        );
        let a = plan("a", 2, 1, &leases, NOW);
        assert_eq!(a.renew, BTreeSet::from([0]));
        assert_eq!(a.take, BTreeSet::from([1]));
    }

    /// `Held::release` against kube's mock service pair: what it asks the
    /// apiserver.
    #[tokio::test]
    async fn release_clears_the_holder_under_the_last_resource_version_and_deletes_the_membership()
    {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "kedge-system");
        let mut written = lease_body(&shard_lease_name(2), "shard", "a", NOW, Some("41"));
        written.metadata.namespace = Some("kedge-system".into());
        let held = Held {
            api,
            me: "a".into(),
            leases: BTreeMap::from([(2, written)]),
        };
        let release = tokio::spawn(held.release());
        let mut seen = Vec::new();
        for reply in [
            // The shard Lease is replaced; the membership Lease was already gone.
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "kedge-bridge-shard-2"}}),
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "gone"}),
        ] {
            let (request, respond) = handle.next_request().await.expect("a request");
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let body = request.into_body().collect_bytes().await.expect("body");
            seen.push((method, uri, body));
            let code = reply["code"].as_u64().unwrap_or(200) as u16;
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
        }
        assert!(release.await.expect("release").is_empty(), "nothing kept");
        let (method, uri, body) = &seen[0];
        assert_eq!(*method, http::Method::PUT);
        assert_eq!(
            uri,
            "/apis/coordination.k8s.io/v1/namespaces/kedge-system/leases/kedge-bridge-shard-2?"
        );
        let lease: serde_json::Value = serde_json::from_slice(body).expect("a Lease");
        assert_eq!(lease["metadata"]["resourceVersion"], "41");
        assert_eq!(lease["spec"]["holderIdentity"], "");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
        let released = view(&serde_json::from_value(lease).expect("lease"));
        assert!(!released.valid(NOW), "free for the others at once");
        let (method, uri, _) = &seen[1];
        assert_eq!(*method, http::Method::DELETE);
        assert_eq!(
            uri,
            "/apis/coordination.k8s.io/v1/namespaces/kedge-system/leases/kedge-bridge-replica-a?"
        );
    }

    #[test]
    fn shard_of_is_stable_and_spread() {
        use super::super::state::shard_of;
        assert_eq!(shard_of("edge-a", 64), shard_of("edge-a", 64));
        let used: HashSet<u32> = (0..200).map(|i| shard_of(&format!("sim-{i}"), 8)).collect();
        assert_eq!(used.len(), 8);
    }
}
