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
//! [`plan`] is the decision, pure and unit-tested; [`run`] does the I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Error as KubeError};
use serde_json::json;
use tokio::sync::mpsc;
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
    let mut v = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {LEASE_LABEL: kind}},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": LEASE_SECS,
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

/// Runs the shard protocol forever, telling the main loop which shards this
/// replica holds and re-reading the broker's retained state when it gains any.
pub async fn run(
    client: Client,
    namespace: String,
    me: String,
    shards: u32,
    events: mpsc::Sender<BridgeEvent>,
    mqtt: MqttLink,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut held: HashSet<u32> = HashSet::new();
    loop {
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
                tokio::time::sleep(ROUND).await;
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
                Ok(_) => {
                    next.insert(*n);
                }
                Err(e) if conflict(&e) => debug!(shard = n, "another replica won the shard"),
                Err(e) => warn!(shard = n, error = %e, "cannot write a shard lease"),
            }
        }
        if next != held {
            let gained = next.difference(&held).count();
            info!(held = next.len(), members, "bridge shards changed");
            if events
                .send(BridgeEvent::ShardsChanged { held: next.clone() })
                .await
                .is_err()
            {
                return;
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
        tokio::time::sleep(ROUND).await;
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

    #[test]
    fn shard_of_is_stable_and_spread() {
        use super::super::state::shard_of;
        assert_eq!(shard_of("edge-a", 64), shard_of("edge-a", 64));
        let used: HashSet<u32> = (0..200).map(|i| shard_of(&format!("sim-{i}"), 8)).collect();
        assert_eq!(used.len(), 8);
    }
}
