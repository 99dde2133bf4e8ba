use std::collections::BTreeMap;

use serde_json::json;

use super::crd::FleetDeploymentSpec;
use super::*;
use crate::fleet::resolve;
use crate::model::convert::NoResolver;
use crate::model::{FleetPodState, NodeInfo, NodeStatus, PodSpec};

const NOW: u64 = 1_767_225_600_000;
const IMAGE: &str =
    "file:///m.wasm@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn template(image: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut container = json!({"name": "main", "image": image});
    if let (Some(c), Some(e)) = (container.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({
        "metadata": {"labels": {"app": "sensor"}},
        "spec": {"runtimeClassName": "kedge-wasm", "containers": [container]},
    })
}

fn resource(name: &str, generation: i64, spec: serde_json::Value) -> Arc<FleetDeploymentResource> {
    let spec: FleetDeploymentSpec = serde_json::from_value(spec).expect("spec");
    let mut cr = FleetDeploymentResource::new(name, spec);
    cr.metadata.namespace = Some("default".into());
    cr.metadata.uid = Some(format!("uid-{name}"));
    cr.metadata.generation = Some(generation);
    Arc::new(cr)
}

fn sensors(
    generation: i64,
    image: &str,
    rollout: serde_json::Value,
) -> Arc<FleetDeploymentResource> {
    resource(
        "sensors",
        generation,
        json!({
            "selector": "site=b43",
            "template": template(image, json!({})),
            "rollout": rollout,
        }),
    )
}

fn key() -> PodKey {
    PodKey::new("default", "sensors")
}

fn topics() -> Topics {
    Topics::new("kedge/v1")
}

/// A synced `Fleets` (broker and cluster listed, no resources yet).
fn synced() -> Fleets {
    let mut f = Fleets::new(topics(), false);
    assert!(
        f.handle(&BridgeEvent::MqttSynced, NOW, &NoResolver)
            .is_empty()
    );
    let none = FleetEvent::Synced {
        present_uids: HashSet::new(),
    };
    assert!(
        f.handle(&BridgeEvent::Fleet(none), NOW, &NoResolver)
            .is_empty()
    );
    f
}

fn apply(f: &mut Fleets, cr: &Arc<FleetDeploymentResource>, now: u64) -> Vec<Action> {
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Applied(cr.clone())),
        now,
        &NoResolver,
    )
}

/// The publications among `actions`: (topic, payload).
fn published(actions: &[Action]) -> Vec<(String, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } => Some((topic.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

fn records(actions: &[Action]) -> Vec<FleetDeployment> {
    published(actions)
        .into_iter()
        .filter(|(t, p)| t == &topics().fleet(&key()) && !p.is_empty())
        .map(|(_, p)| wire::decode_as::<FleetDeployment>(&p).expect("record").1)
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<FleetDeploymentStatus> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::FleetStatus { body, .. } => {
                Some(serde_json::from_value(body["status"].clone()).expect("status"))
            }
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<&KubeEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn tick(f: &mut Fleets, now: u64) -> Vec<Action> {
    f.handle(&BridgeEvent::Tick, now, &NoResolver)
}

fn report(f: &mut Fleets, node: &str, r: Option<FleetReport>, now: u64) -> Vec<Action> {
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Report {
            node: node.into(),
            fleet: key(),
            report: r,
        }),
        now,
        &NoResolver,
    )
}

/// What a device with `labels` says about `record` (as the agent does with
/// `fleet::resolve`), running what it is asked unless it is `broken`.
fn device_report(
    record: &FleetDeployment,
    node: &str,
    labels: &BTreeMap<String, String>,
    broken: bool,
) -> Option<FleetReport> {
    let plan = resolve::plan(
        crate::fleet::bucket(node),
        labels,
        [record],
        &Default::default(),
    );
    let resolve::Verdict::Targeted(t) = plan.fleets.get(&record.key())? else {
        return None;
    };
    let want = t.want.as_ref().map_or(0, |w| w.revision);
    let fails = broken && want == record.revision && want != 0;
    Some(FleetReport {
        fleet_uid: record.uid.clone(),
        desired_revision: want,
        running_revision: if fails { 0 } else { want },
        state: if want == 0 {
            FleetPodState::Waiting
        } else if fails {
            FleetPodState::Failed
        } else {
            FleetPodState::Ready
        },
        groups: t.groups,
        reason: fails.then(|| "CrashLoopBackOff".into()),
        message: None,
    })
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A simulated fleet of `n` devices at site b43 (the first `canaries`
/// labelled canary=true) plus two devices elsewhere.
struct Devices {
    names: Vec<(String, BTreeMap<String, String>)>,
    broken: BTreeSet<String>,
}

impl Devices {
    fn new(n: usize, canaries: usize) -> Devices {
        let mut names: Vec<(String, BTreeMap<String, String>)> = (0..n)
            .map(|i| {
                let l = if i < canaries {
                    labels(&[("site", "b43"), ("canary", "true")])
                } else {
                    labels(&[("site", "b43")])
                };
                (format!("gw{i}"), l)
            })
            .collect();
        names.push(("other0".into(), labels(&[("site", "b44")])));
        names.push(("other1".into(), labels(&[])));
        Devices {
            names,
            broken: BTreeSet::new(),
        }
    }

    /// Every device reports on the current record (a device that is not
    /// targeted says nothing).
    fn report_all(&self, f: &mut Fleets, now: u64) {
        let Some(record) = f.record(&key()).cloned() else {
            return;
        };
        for (name, l) in &self.names {
            let r = device_report(&record, name, l, self.broken.contains(name));
            if r.is_some() {
                report(f, name, r, now);
            }
        }
    }

    /// Reports and ticks until the record stops changing; returns every
    /// action, and the number of ticks.
    fn run(&self, f: &mut Fleets, mut now: u64) -> (Vec<Action>, u64) {
        let mut all = Vec::new();
        let mut quiet = 0;
        let mut ticks = 0;
        while quiet < 15 && ticks < 500 {
            self.report_all(f, now);
            now += 1_000;
            ticks += 1;
            let out = tick(f, now);
            if records(&out).is_empty() {
                quiet += 1;
            } else {
                quiet = 0;
            }
            all.extend(out);
        }
        (all, ticks)
    }
}

#[test]
fn nothing_goes_out_before_the_broker_and_the_cluster_are_listed() {
    let mut f = Fleets::new(topics(), false);
    let cr = sensors(1, IMAGE, json!({}));
    assert!(apply(&mut f, &cr, NOW).is_empty());
    assert!(
        f.handle(&BridgeEvent::MqttSynced, NOW, &NoResolver)
            .is_empty()
    );
    assert!(tick(&mut f, NOW + 5_000).is_empty());
    let present = FleetEvent::Synced {
        present_uids: ["uid-sensors".to_string()].into(),
    };
    let out = f.handle(&BridgeEvent::Fleet(present), NOW, &NoResolver);
    assert_eq!(records(&out).len(), 1);
}

#[test]
fn a_new_resource_publishes_its_spec_then_its_record() {
    let mut f = synced();
    let out = apply(&mut f, &sensors(1, IMAGE, json!({})), NOW);
    let p = published(&out);
    assert_eq!(p.len(), 2, "{p:?}");
    let (spec_topic, payload) = &p[0];
    let record = &records(&out)[0];
    assert_eq!(spec_topic, &topics().fleet_spec(&record.spec_digest));
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(payload)),
        record.spec_digest
    );
    let (seq, spec) = wire::decode_as::<PodSpec>(payload).expect("spec");
    assert_eq!(seq, 0);
    assert_eq!(
        (
            spec.namespace.as_str(),
            spec.name.as_str(),
            spec.uid.as_str()
        ),
        ("default", "sensors", "uid-sensors")
    );
    assert_eq!(spec.generation, 0);
    assert_eq!(spec.labels.get("app").map(String::as_str), Some("sensor"));
    assert_eq!(record.revision, 1);
    assert_eq!(record.selector, "site=b43");
    assert_eq!(record.pod_name, "sensors");
    assert_eq!(record.rollout.state.phase, RolloutPhase::Progressing);
    assert!(record.stable.is_none());
    // The same resource again publishes nothing.
    assert!(published(&apply(&mut f, &sensors(1, IMAGE, json!({})), NOW)).is_empty());
}

#[test]
fn a_template_change_is_a_new_revision_a_selector_change_is_not() {
    let mut f = synced();
    let first = records(&apply(&mut f, &sensors(1, IMAGE, json!({})), NOW))[0].clone();

    let mut spec = sensors(2, IMAGE, json!({})).spec.clone();
    spec.selector = "site in (b43,b44)".into();
    spec.priority = 7;
    spec.rollout.success_threshold = 90;
    let mut cr = (*sensors(2, IMAGE, json!({}))).clone();
    cr.spec = spec;
    let out = apply(&mut f, &Arc::new(cr), NOW + 1);
    let p = published(&out);
    assert_eq!(p.len(), 1, "only the record: {p:?}");
    let r = &records(&out)[0];
    assert_eq!(r.revision, 1);
    assert_eq!(r.spec_digest, first.spec_digest);
    assert_eq!(r.selector, "site in (b43,b44)");
    assert_eq!(r.priority, 7);
    assert_eq!(r.rollout.policy.success_threshold_pct, 90);

    let image2 = IMAGE.replace("aaaa", "bbbb");
    let out = apply(&mut f, &sensors(3, &image2, json!({})), NOW + 2);
    let p = published(&out);
    let r = &records(&out)[0];
    assert_eq!(r.revision, 2);
    assert_ne!(r.spec_digest, first.spec_digest);
    // The new spec, the record, then the old spec (no record names it).
    assert_eq!(p[0].0, topics().fleet_spec(&r.spec_digest));
    assert_eq!(p[1].0, topics().fleet(&key()));
    assert_eq!(p[2], (topics().fleet_spec(&first.spec_digest), vec![]));
}

#[test]
fn a_template_that_does_not_convert_publishes_nothing_and_says_why() {
    let mut f = synced();
    let cr = resource(
        "sensors",
        1,
        json!({
            "template": template(IMAGE, json!({"stdin": true})),
        }),
    );
    let out = apply(&mut f, &cr, NOW);
    assert!(published(&out).is_empty(), "{out:?}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventType::Warning);
    assert_eq!(ev[0].involved_kind, "FleetDeployment");
    assert!(
        ev[0]
            .message
            .starts_with("spec.template.spec.containers[0].stdin"),
        "{}",
        ev[0].message
    );
    // The same refusal again: no second Event.
    assert!(events(&apply(&mut f, &cr, NOW + 1)).is_empty());
    let st = statuses(&tick(&mut f, NOW + 2_000));
    let accepted = &st[0].conditions[0];
    assert_eq!(
        (accepted.type_.as_str(), accepted.status.as_str()),
        ("Accepted", "False")
    );
    assert!(
        accepted
            .message
            .contains("spec.template.spec.containers[0].stdin")
    );
    assert_eq!(st[0].observed_generation, Some(1));
    assert!(st[0].revision.is_none());

    // A bad batch limit is refused with its field too.
    let cr = sensors(2, IMAGE, json!({"batches": [{"limit": "0%"}]}));
    let out = apply(&mut f, &cr, NOW + 3);
    assert!(published(&out).is_empty());
    assert!(
        events(&out)[0]
            .message
            .starts_with("spec.rollout.batches[0].limit")
    );
    // Fixed: published, and Accepted again.
    let out = apply(&mut f, &sensors(3, IMAGE, json!({})), NOW + 4);
    assert_eq!(records(&out).len(), 1);
    let st = statuses(&tick(&mut f, NOW + 5_000));
    assert_eq!(st[0].conditions[0].status, "True");
}

/// A fleet's one spec goes to every matching device and cannot be sealed
/// to each one's key: a Secret in its template, optional or not, is
/// refused at its field, and nothing goes out.
#[test]
fn a_template_that_uses_a_secret_is_refused_at_its_field() {
    let mut f = synced();
    for (extra, path) in [
        (
            json!({"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p", "optional": true}}}]}),
            "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef",
        ),
        (
            json!({"envFrom": [{"secretRef": {"name": "db"}}]}),
            "spec.template.spec.containers[0].envFrom[0].secretRef",
        ),
    ] {
        let cr = resource("sensors", 1, json!({"template": template(IMAGE, extra)}));
        let out = apply(&mut f, &cr, NOW);
        assert!(published(&out).is_empty(), "{out:?}");
        let ev = events(&out);
        assert_eq!(ev.len(), 1, "{out:?}");
        assert!(
            ev[0].message.starts_with(path)
                && ev[0]
                    .message
                    .contains("fleet deployments cannot carry Secrets"),
            "{}",
            ev[0].message
        );
    }
}

#[test]
fn a_rollout_completes_in_batches_and_status_writes_do_not_grow_with_the_fleet() {
    let rollout = json!({"batches": [
        {"selector": "canary=true", "limit": "100%"},
        {"limit": "50%"},
        {"limit": "100%"},
    ]});
    let mut writes = Vec::new();
    for n in [100, 2_000] {
        let devices = Devices::new(n, 5);
        let mut f = synced();
        apply(&mut f, &sensors(1, IMAGE, rollout.clone()), NOW);
        let (out, ticks) = devices.run(&mut f, NOW);
        let last = f.record(&key()).expect("record");
        assert_eq!(last.rollout.state.phase, RolloutPhase::Complete, "{n}");
        let c = f.tally(&key()).expect("tally").counts();
        assert_eq!((c.targeted, c.ready, c.failed), (n as u32, n as u32, 0));
        // The status of the last tick says so.
        let st = statuses(&out);
        let final_status = st.last().expect("a status");
        assert_eq!(final_status.phase.as_deref(), Some("Complete"));
        assert_eq!(final_status.targeted, n as i32);
        assert_eq!(final_status.up_to_date, n as i32);
        // At most one status write per tick, and a handful of records.
        assert!(
            st.len() as u64 <= ticks,
            "{} writes in {ticks} ticks",
            st.len()
        );
        assert!(records(&out).len() <= 7, "{}", records(&out).len());
        writes.push(st.len());
    }
    // Twenty times the devices, the same writes.
    assert_eq!(writes[0], writes[1], "{writes:?}");
}

#[test]
fn a_failing_canary_batch_rolls_back_by_itself() {
    let rollout = json!({"batches": [
        {"selector": "canary=true", "limit": "100%"},
        {"limit": "100%"},
    ]});
    let mut devices = Devices::new(40, 4);
    let mut f = synced();
    apply(&mut f, &sensors(1, IMAGE, rollout.clone()), NOW);
    devices.run(&mut f, NOW);
    let stable = f.record(&key()).expect("record").clone();
    assert_eq!(stable.rollout.state.phase, RolloutPhase::Complete);

    // Revision 2 breaks the canaries.
    devices.broken = (0..3).map(|i| format!("gw{i}")).collect();
    let image2 = IMAGE.replace("aaaa", "bbbb");
    let now = NOW + 1_000_000;
    let out = apply(&mut f, &sensors(2, &image2, rollout.clone()), now);
    let bad = records(&out)[0].clone();
    assert_eq!(bad.revision, 2);
    assert_eq!(bad.stable.as_ref().map(|s| s.revision), Some(1));
    let (out, _) = devices.run(&mut f, now);
    let last = f.record(&key()).expect("record").clone();
    assert_eq!(
        last.rollout.state.phase,
        RolloutPhase::RolledBack,
        "{last:?}"
    );
    assert_eq!(last.revision, 3);
    assert_eq!(last.spec_digest, stable.spec_digest);
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e.reason == "RolledBack" && e.kind == EventType::Warning),
        "{ev:?}"
    );
    // Only canaries ever ran revision 2; the refused spec is removed.
    assert!(
        published(&out).contains(&(topics().fleet_spec(&bad.spec_digest), vec![])),
        "the spec of revision 2 is tombstoned"
    );
    let st = statuses(&out);
    let s = st.last().expect("status");
    assert_eq!(s.phase.as_deref(), Some("RolledBack"));
    assert_eq!(s.revision, Some(3));
    // The same resource seen again (a resync) does not bring revision 2 back.
    let again = apply(&mut f, &sensors(2, &image2, rollout), now + 500_000);
    assert!(records(&again).is_empty(), "{:?}", records(&again));
}

#[test]
fn paused_holds_the_rollout_and_resuming_continues() {
    let mut f = synced();
    let mut cr = (*sensors(1, IMAGE, json!({}))).clone();
    cr.spec.paused = true;
    let out = apply(&mut f, &Arc::new(cr.clone()), NOW);
    let r = &records(&out)[0];
    assert_eq!(r.rollout.state.phase, RolloutPhase::Paused);
    assert!(r.cohorts.is_empty());
    let devices = Devices::new(10, 0);
    let (out, _) = devices.run(&mut f, NOW);
    assert!(records(&out).is_empty(), "nothing moves while paused");
    cr.spec.paused = false;
    cr.metadata.generation = Some(2);
    let out = apply(&mut f, &Arc::new(cr), NOW + 100_000);
    assert_eq!(
        records(&out)[0].rollout.state.phase,
        RolloutPhase::Progressing
    );
    devices.run(&mut f, NOW + 100_000);
    assert_eq!(
        f.record(&key()).map(|r| r.rollout.state.phase),
        Some(RolloutPhase::Complete)
    );
}

#[test]
fn a_restarted_bridge_continues_the_rollout_it_finds() {
    // The first bridge rolled out revision 1, then revision 2 was rolled back.
    let mut first = synced();
    apply(&mut first, &sensors(1, IMAGE, json!({})), NOW);
    let mut devices = Devices::new(10, 0);
    devices.run(&mut first, NOW);
    devices.broken = devices.names.iter().map(|(n, _)| n.clone()).collect();
    let image2 = IMAGE.replace("aaaa", "bbbb");
    apply(&mut first, &sensors(2, &image2, json!({})), NOW + 100_000);
    devices.run(&mut first, NOW + 100_000);
    let retained = first.record(&key()).expect("record").clone();
    assert_eq!(retained.rollout.state.phase, RolloutPhase::RolledBack);

    // A new bridge reads the retained record, then the resource whose
    // status observed generation 2.
    let mut f = Fleets::new(topics(), false);
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Record {
            fleet: key(),
            record: Some(retained.clone()),
        }),
        NOW + 200_000,
        &NoResolver,
    );
    f.handle(&BridgeEvent::MqttSynced, NOW + 200_000, &NoResolver);
    let mut cr = (*sensors(2, &image2, json!({}))).clone();
    cr.status = Some(FleetDeploymentStatus {
        observed_generation: Some(2),
        ..Default::default()
    });
    apply(&mut f, &Arc::new(cr), NOW + 200_000);
    let out = f.handle(
        &BridgeEvent::Fleet(FleetEvent::Synced {
            present_uids: ["uid-sensors".to_string()].into(),
        }),
        NOW + 200_000,
        &NoResolver,
    );
    assert!(published(&out).is_empty(), "{:?}", records(&out));
    assert_eq!(f.record(&key()), Some(&retained));
}

#[test]
fn a_deleted_resource_removes_its_record_and_its_specs() {
    let mut f = synced();
    let cr = sensors(1, IMAGE, json!({}));
    let r = records(&apply(&mut f, &cr, NOW))[0].clone();
    let out = f.handle(
        &BridgeEvent::Fleet(FleetEvent::Deleted(cr)),
        NOW + 1,
        &NoResolver,
    );
    assert_eq!(
        published(&out),
        vec![
            (topics().fleet(&key()), vec![]),
            (topics().fleet_spec(&r.spec_digest), vec![]),
        ]
    );
    assert!(f.record(&key()).is_none());
    assert!(f.gauges().is_empty());
}

#[test]
fn a_resource_deleted_while_the_bridge_was_away_is_removed_after_the_relist() {
    let mut f = synced();
    let cr = sensors(1, IMAGE, json!({}));
    apply(&mut f, &cr, NOW);
    let out = f.handle(
        &BridgeEvent::Fleet(FleetEvent::Synced {
            present_uids: HashSet::new(),
        }),
        NOW + 1,
        &NoResolver,
    );
    assert_eq!(published(&out)[0], (topics().fleet(&key()), vec![]));
}

#[test]
fn presence_reports_and_metrics() {
    let mut f = synced();
    apply(&mut f, &sensors(1, IMAGE, json!({})), NOW);
    let devices = Devices::new(3, 0);
    devices.run(&mut f, NOW);
    let offline = node_status("gw1", false);
    f.handle(
        &BridgeEvent::Node {
            node: "gw1".into(),
            status: offline,
        },
        NOW + 60_000,
        &NoResolver,
    );
    let st = statuses(&tick(&mut f, NOW + 70_000));
    assert_eq!(st[0].offline, 1);
    // A report from another fleet of the same name counts as none.
    let mut stale = device_report(
        f.record(&key()).expect("record"),
        "gw2",
        &labels(&[("site", "b43")]),
        false,
    )
    .expect("report");
    stale.fleet_uid = "uid-old".into();
    report(&mut f, "gw2", Some(stale), NOW + 71_000);
    let g = f.gauges();
    assert_eq!(
        (g[0].targeted, g[0].ready, g[0].offline, g[0].revision),
        (2, 2, 1, 1)
    );
    let text = render_metrics(&g);
    assert!(text.contains(
        "kedge_fleet_devices{namespace=\"default\",fleet=\"sensors\",state=\"targeted\"} 2\n"
    ));
    assert!(text.contains(
        "kedge_fleet_devices{namespace=\"default\",fleet=\"sensors\",state=\"offline\"} 1\n"
    ));
    assert!(text.contains("kedge_fleet_revision{namespace=\"default\",fleet=\"sensors\"} 1\n"));
    // Per revision: the two devices on revision 1, one of them offline.
    assert!(text.contains(
        "kedge_fleet_revision_devices{namespace=\"default\",fleet=\"sensors\",revision=\"1\",state=\"devices\"} 2\n"
    ), "{text}");
    assert!(text.contains(
        "kedge_fleet_revision_devices{namespace=\"default\",fleet=\"sensors\",revision=\"1\",state=\"offline\"} 1\n"
    ), "{text}");
    assert_eq!(
        st[0].revisions,
        vec![RevisionStatus {
            revision: Some(1),
            devices: 3,
            running: 3,
            ready: 3,
            offline: 1,
            ..Default::default()
        }]
    );
    // Back online.
    f.handle(
        &BridgeEvent::Node {
            node: "gw1".into(),
            status: node_status("gw1", true),
        },
        NOW + 72_000,
        &NoResolver,
    );
    assert_eq!(f.gauges()[0].offline, 0);
}

#[test]
fn with_shards_only_the_holder_of_shard_0_drives_fleets() {
    let mut f = Fleets::new(topics(), true);
    f.handle(&BridgeEvent::MqttSynced, NOW, &NoResolver);
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Synced {
            present_uids: ["uid-sensors".to_string()].into(),
        }),
        NOW,
        &NoResolver,
    );
    assert!(apply(&mut f, &sensors(1, IMAGE, json!({})), NOW).is_empty());
    let out = f.handle(
        &BridgeEvent::ShardsChanged {
            held: [0, 3].into(),
        },
        NOW + 1,
        &NoResolver,
    );
    assert_eq!(records(&out).len(), 1);
}

fn node_status(name: &str, online: bool) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        online,
        heartbeat_ms: NOW,
        info: NodeInfo::default(),
        capacity: Default::default(),
        allocatable: Default::default(),
        conditions: vec![],
        addresses: vec![],
        pod_count: 0,
        labels: Default::default(),
        sealing_key: None,
        data: None,
    }
}

#[test]
fn a_new_fleet_waits_for_its_devices_to_answer_before_it_steps() {
    let rollout = json!({"batches": [
        {"selector": "canary=true", "limit": "100%"},
        {"limit": "100%"},
    ]});
    let mut f = synced();
    apply(&mut f, &sensors(1, IMAGE, rollout), NOW);
    // No device has answered: no batch is measured on nobody.
    for t in 1..10 {
        assert!(records(&tick(&mut f, NOW + t * 1_000)).is_empty());
    }
    // They answer (not all in the same tick): the canaries go first.
    let devices = Devices::new(20, 3);
    let record = f.record(&key()).expect("record").clone();
    for (name, l) in devices.names.iter().take(8) {
        report(
            &mut f,
            name,
            device_report(&record, name, l, false),
            NOW + 10_000,
        );
    }
    assert!(
        records(&tick(&mut f, NOW + 11_000)).is_empty(),
        "still joining"
    );
    for (name, l) in devices.names.iter().skip(8) {
        report(
            &mut f,
            name,
            device_report(&record, name, l, false),
            NOW + 11_500,
        );
    }
    assert!(
        records(&tick(&mut f, NOW + 12_000)).is_empty(),
        "still joining"
    );
    let out = tick(&mut f, NOW + 13_000);
    let first = &records(&out)[0];
    assert_eq!(first.cohorts.len(), 1);
    assert_eq!(first.cohorts[0].selector, "canary=true");
    devices.run(&mut f, NOW + 13_000);
    assert_eq!(
        f.record(&key()).map(|r| r.rollout.state.phase),
        Some(RolloutPhase::Complete)
    );
}

#[test]
fn an_unstaged_fleet_goes_to_every_device_at_once() {
    let mut f = synced();
    let out = apply(&mut f, &sensors(1, IMAGE, json!({})), NOW);
    assert_eq!(records(&out)[0].cohorts, vec![Cohort::everyone()]);
}

#[test]
fn a_rollback_quoting_long_failures_still_publishes_a_valid_record() {
    let mut f = synced();
    let rollout =
        json!({"batches": [{"selector": "canary=true", "limit": "100%"}, {"limit": "100%"}]});
    apply(&mut f, &sensors(1, IMAGE, rollout.clone()), NOW);
    let mut devices = Devices::new(6, 3);
    devices.run(&mut f, NOW);
    let image2 = IMAGE.replace("aaaa", "bbbb");
    apply(&mut f, &sensors(2, &image2, rollout), NOW + 100_000);
    devices.broken = devices.names.iter().map(|(n, _)| n.clone()).collect();
    let now = NOW + 100_000;
    let record = f.record(&key()).expect("record").clone();
    for t in 0..5u64 {
        let record = f.record(&key()).expect("record").clone();
        for (name, l) in &devices.names {
            if let Some(mut r) = device_report(&record, name, l, true) {
                if r.state == FleetPodState::Failed {
                    r.message = Some("x".repeat(30_000));
                }
                report(&mut f, name, Some(r), now + t * 1_000);
            }
        }
        tick(&mut f, now + (t + 1) * 1_000);
    }
    let last = f.record(&key()).expect("record");
    assert_ne!(last.revision, record.revision);
    assert_eq!(last.rollout.state.phase, RolloutPhase::RolledBack);
    assert!(last.validate().is_ok());
}

#[test]
fn a_halted_rollout_resumes_when_paused_then_unpaused() {
    // No stable revision: a failing canary halts the rollout.
    let rollout =
        json!({"batches": [{"selector": "canary=true", "limit": "100%"}, {"limit": "100%"}]});
    let mut devices = Devices::new(10, 2);
    devices.broken = ["gw0".to_string()].into();
    let mut f = synced();
    apply(&mut f, &sensors(1, IMAGE, rollout.clone()), NOW);
    devices.run(&mut f, NOW);
    assert_eq!(
        f.record(&key()).map(|r| r.rollout.state.phase),
        Some(RolloutPhase::Halted)
    );
    let mut cr = (*sensors(2, IMAGE, rollout)).clone();
    cr.spec.paused = true;
    let out = apply(&mut f, &Arc::new(cr.clone()), NOW + 500_000);
    assert_eq!(records(&out)[0].rollout.state.phase, RolloutPhase::Paused);
    assert_eq!(records(&out)[0].revision, 1, "no new revision");
    // Fixed on the device, unpaused: the rollout goes on and completes.
    devices.broken.clear();
    cr.spec.paused = false;
    cr.metadata.generation = Some(3);
    let out = apply(&mut f, &Arc::new(cr), NOW + 501_000);
    assert_eq!(
        records(&out)[0].rollout.state.phase,
        RolloutPhase::Progressing
    );
    devices.run(&mut f, NOW + 501_000);
    assert_eq!(
        f.record(&key()).map(|r| r.rollout.state.phase),
        Some(RolloutPhase::Complete)
    );
}

/// Counts are written in steps of 2 % of the fleet (and any difference
/// once it stood 5 s); structure at once.
#[test]
fn status_writes_follow_progress_in_steps_not_devices() {
    let status = |targeted: i32, running: i32, phase: &str| FleetDeploymentStatus {
        targeted,
        running,
        phase: Some(phase.into()),
        ..Default::default()
    };
    let sent = status(10_000, 1_000, "Progressing");
    assert!(!status_worth_writing(
        Some(&sent),
        &status(10_000, 1_150, "Progressing"),
        1_000
    ));
    assert!(status_worth_writing(
        Some(&sent),
        &status(10_000, 1_200, "Progressing"),
        1_000
    ));
    assert!(status_worth_writing(
        Some(&sent),
        &status(10_000, 1_001, "Progressing"),
        TRICKLE_MS
    ));
    assert!(status_worth_writing(
        Some(&sent),
        &status(10_000, 1_000, "Complete"),
        1_000
    ));
    assert!(!status_worth_writing(Some(&sent), &sent.clone(), 60_000));
    // A small fleet: every device counts.
    assert!(status_worth_writing(
        Some(&status(10, 1, "Progressing")),
        &status(10, 2, "Progressing"),
        1_000
    ));
    // From none to all of a large fleet, a device at a time: about 50
    // writes, not 100,000.
    let mut sent = status(100_000, 0, "Progressing");
    let mut writes = 0;
    for running in 1..=100_000 {
        let new = status(100_000, running, "Progressing");
        if status_worth_writing(Some(&sent), &new, 1_000) {
            writes += 1;
            sent = new;
        }
    }
    assert_eq!(writes, 50);
    // The revisions list is paced like the counts: 100,000 devices moving
    // from revision 1 to 2 one by one are about 50 writes too.
    let moving = |on_2: i32| {
        let line = |r: i64, devices: i32| RevisionStatus {
            revision: Some(r),
            devices,
            running: devices,
            ..Default::default()
        };
        FleetDeploymentStatus {
            targeted: 100_000,
            revisions: [line(2, on_2), line(1, 100_000 - on_2)]
                .into_iter()
                .filter(|l| l.devices > 0)
                .collect(),
            ..Default::default()
        }
    };
    let mut sent = moving(0);
    let mut writes = 0;
    for on_2 in 1..=100_000 {
        let new = moving(on_2);
        if status_worth_writing(Some(&sent), &new, 1_000) {
            writes += 1;
            sent = new;
        }
    }
    assert_eq!(writes, 50);
    // A line that comes is a move from zero: small, it waits (trickles).
    assert!(!status_worth_writing(Some(&moving(0)), &moving(1), 1_000));
    assert!(status_worth_writing(
        Some(&moving(0)),
        &moving(1),
        TRICKLE_MS
    ));
}

// The seed path: pods bound to a fleet node.

fn seed_pod(
    name: &str,
    hash: &str,
    created: &str,
    image: &str,
    selector: Option<&str>,
) -> Arc<Pod> {
    let mut annotations = serde_json::Map::new();
    if let Some(s) = selector {
        annotations.insert("kedge.io/selector".into(), json!(s));
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": created,
                "labels": {"app": "sensors", "pod-template-hash": hash},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("sensors-{hash}"), "uid": format!("rs-{hash}"), "controller": true}],
            },
            "spec": {
                "nodeName": "kedge-fleet-edge",
                "nodeSelector": {"kedge.io/fleet-node": "edge"},
                "tolerations": [{"key": "kedge.io/edge", "operator": "Exists"}],
                "runtimeClassName": "kedge-wasm",
                "containers": [{"name": "main", "image": image}],
            },
        }))
        .expect("pod"),
    )
}

/// A synced `Fleets` with fleet node `edge` (broker, FleetDeployments and pods listed).
fn seed_synced() -> Fleets {
    let mut f =
        Fleets::new(topics(), false).with_fleet_nodes(vec![nodes::FleetNode::named("edge")]);
    f.handle(&BridgeEvent::MqttSynced, NOW, &NoResolver);
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Synced {
            present_uids: HashSet::new(),
        }),
        NOW,
        &NoResolver,
    );
    assert!(
        f.handle(
            &BridgeEvent::PodsSynced {
                present_uids: Some(HashSet::new())
            },
            NOW,
            &NoResolver
        )
        .is_empty()
    );
    f
}

fn pod_applied(f: &mut Fleets, p: &Arc<Pod>, now: u64) -> Vec<Action> {
    f.handle(&BridgeEvent::PodApplied(p.clone()), now, &NoResolver)
}

fn deleting_pod(p: &Arc<Pod>) -> Arc<Pod> {
    let mut p = (**p).clone();
    p.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:10:00Z")).ok();
    Arc::new(p)
}

fn pod_statuses(actions: &[Action]) -> Vec<(&PodKey, &serde_json::Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PodStatus { pod, body, .. } => Some((pod, body)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pod_on_a_fleet_node_becomes_a_fleet_deployment_named_after_its_deployment() {
    let mut f = seed_synced();
    let a = seed_pod(
        "sensors-5d9c-x1",
        "5d9c",
        "2026-01-01T00:00:00Z",
        IMAGE,
        Some("site=b43"),
    );
    let out = pod_applied(&mut f, &a, NOW);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "{out:?}");
    let r = &recs[0];
    assert_eq!(
        (r.name.as_str(), r.pod_name.as_str()),
        ("sensors", "sensors")
    );
    assert_eq!((r.revision, r.selector.as_str()), (1, "site=b43"));
    assert_eq!(r.uid, "uid-sensors-5d9c-x1");
    // Unstaged: every device at once.
    assert_eq!(r.cohorts, vec![Cohort::everyone()]);
    // The spec goes out before the record.
    let topics_out: Vec<String> = published(&out).into_iter().map(|(t, _)| t).collect();
    assert!(topics_out[0].contains("_fleet-spec/"), "{topics_out:?}");
    // A pod elsewhere is not a seed.
    let mut other = (*seed_pod("x", "h", "2026-01-01T00:00:00Z", IMAGE, Some("a=b"))).clone();
    other.spec.as_mut().expect("spec").node_name = Some("gw1".into());
    assert!(pod_applied(&mut f, &Arc::new(other), NOW).is_empty());

    // Devices report: the pod is Running with the counts, at most once a
    // second and only on change.
    let labelled = labels(&[("site", "b43")]);
    report(
        &mut f,
        "gw1",
        device_report(r, "gw1", &labelled, false),
        NOW + 10,
    );
    report(
        &mut f,
        "gw2",
        device_report(r, "gw2", &labelled, true),
        NOW + 10,
    );
    let out = tick(&mut f, NOW + 2_000);
    let st = pod_statuses(&out);
    assert_eq!(st.len(), 1, "{out:?}");
    assert_eq!(st[0].0, &PodKey::new("default", "sensors-5d9c-x1"));
    let status = &st[0].1["status"];
    assert_eq!(status["phase"], "Running");
    let cond = &status["conditions"][0];
    assert_eq!(cond["type"], "kedge.io/FleetReady");
    assert_eq!(cond["status"], "False");
    assert_eq!(
        cond["message"],
        "1 of 2 devices running, 1 failing: gw2: CrashLoopBackOff"
    );
    // Within the second: nothing; once the rollout settles: nothing more.
    assert!(pod_statuses(&tick(&mut f, NOW + 2_500)).is_empty());
    tick(&mut f, NOW + 4_000);
    tick(&mut f, NOW + 6_000);
    assert!(pod_statuses(&tick(&mut f, NOW + 8_000)).is_empty());
    assert!(statuses(&out).is_empty(), "no FleetDeployment status");
}

#[test]
fn a_deployment_update_is_a_new_revision_of_the_same_fleet_deployment_in_either_order() {
    for old_goes_first in [true, false] {
        let mut f = seed_synced();
        let old = seed_pod(
            "sensors-aaa-1",
            "aaa",
            "2026-01-01T00:00:00Z",
            IMAGE,
            Some("site=b43"),
        );
        let r1 = records(&pod_applied(&mut f, &old, NOW)).remove(0);
        let image2 = IMAGE.replace("aaaa", "bbbb");
        let new = seed_pod(
            "sensors-bbb-1",
            "bbb",
            "2026-01-01T00:01:00Z",
            &image2,
            Some("site=b43"),
        );
        let mut out = Vec::new();
        if old_goes_first {
            // Deleted gracefully: the bridge lets it go at once.
            let o = pod_applied(&mut f, &deleting_pod(&old), NOW + 1);
            assert!(
                o.iter().any(
                    |a| matches!(a, Action::DeletePod { uid, .. } if uid == "uid-sensors-aaa-1")
                ),
                "{o:?}"
            );
            assert!(
                published(&o).is_empty(),
                "no tombstone while it lingers: {o:?}"
            );
            out.extend(f.handle(&BridgeEvent::PodDeleted(old.clone()), NOW + 2, &NoResolver));
            out.extend(tick(&mut f, NOW + 3));
            out.extend(pod_applied(&mut f, &new, NOW + 4));
        } else {
            out.extend(pod_applied(&mut f, &new, NOW + 1));
            out.extend(pod_applied(&mut f, &deleting_pod(&old), NOW + 2));
            out.extend(f.handle(&BridgeEvent::PodDeleted(old.clone()), NOW + 3, &NoResolver));
        }
        let recs = records(&out);
        assert_eq!(recs.len(), 1, "{out:?}");
        assert_eq!(recs[0].revision, 2);
        assert_eq!(recs[0].uid, r1.uid, "the same fleet deployment");
        assert!(
            !published(&out)
                .iter()
                .any(|(t, p)| t == &topics().fleet(&key()) && p.is_empty()),
            "never tombstoned"
        );
        // The last pod goes (scaled to 0): the fleet deployment goes after the linger.
        let o = pod_applied(&mut f, &deleting_pod(&new), NOW + 10);
        f.handle(&BridgeEvent::PodDeleted(new.clone()), NOW + 11, &NoResolver);
        assert!(published(&o).is_empty());
        assert!(published(&tick(&mut f, NOW + 12)).is_empty());
        let o = tick(&mut f, NOW + 11 + SEED_LINGER_MS);
        let tomb: Vec<String> = published(&o)
            .into_iter()
            .filter(|(_, p)| p.is_empty())
            .map(|(t, _)| t)
            .collect();
        assert!(tomb.contains(&topics().fleet(&key())), "{o:?}");
        assert!(f.record(&key()).is_none());
    }
}

#[test]
fn a_seed_pod_without_a_valid_selector_is_refused_with_an_event_and_a_condition() {
    let mut f = seed_synced();
    let p = seed_pod("sensors-aaa-1", "aaa", "2026-01-01T00:00:00Z", IMAGE, None);
    let out = pod_applied(&mut f, &p, NOW);
    assert!(published(&out).is_empty());
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].involved_kind, ev[0].reason.as_str()),
        ("Pod", "InvalidAnnotation")
    );
    assert!(
        ev[0].message.contains("kedge.io/selector"),
        "{}",
        ev[0].message
    );
    let st = pod_statuses(&out);
    assert_eq!(st[0].1["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        st[0].1["status"]["conditions"][0]["reason"],
        "InvalidAnnotation"
    );
    // Told once.
    assert!(pod_applied(&mut f, &p, NOW + 1).is_empty());
    let bad = seed_pod(
        "sensors-aaa-1",
        "aaa",
        "2026-01-01T00:00:00Z",
        IMAGE,
        Some("site in (b43"),
    );
    assert_eq!(events(&pod_applied(&mut f, &bad, NOW + 2)).len(), 1);
}

#[test]
fn nothing_is_published_for_seed_pods_before_the_pods_are_listed() {
    let mut f =
        Fleets::new(topics(), false).with_fleet_nodes(vec![nodes::FleetNode::named("edge")]);
    f.handle(&BridgeEvent::MqttSynced, NOW, &NoResolver);
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Synced {
            present_uids: HashSet::new(),
        }),
        NOW,
        &NoResolver,
    );
    // The record a previous bridge left, read while the pods are not listed yet.
    let p = seed_pod(
        "sensors-aaa-1",
        "aaa",
        "2026-01-01T00:00:00Z",
        IMAGE,
        Some("site=b43"),
    );
    let prev = {
        let mut g = seed_synced();
        records(&pod_applied(&mut g, &p, NOW)).remove(0)
    };
    f.handle(
        &BridgeEvent::Fleet(FleetEvent::Record {
            fleet: key(),
            record: Some(prev.clone()),
        }),
        NOW,
        &NoResolver,
    );
    assert!(pod_applied(&mut f, &p, NOW).is_empty());
    // Listed: the same spec continues, nothing new is published.
    let out = f.handle(
        &BridgeEvent::PodsSynced {
            present_uids: Some(HashSet::from(["uid-sensors-aaa-1".to_string()])),
        },
        NOW,
        &NoResolver,
    );
    assert!(records(&out).is_empty(), "{out:?}");
    assert_eq!(f.record(&key()).map(|r| r.revision), Some(1));
}

#[test]
fn a_seed_pod_that_does_not_convert_says_why_on_the_pod() {
    let mut f = seed_synced();
    let mut p = (*seed_pod(
        "sensors-aaa-1",
        "aaa",
        "2026-01-01T00:00:00Z",
        IMAGE,
        Some("site=b43"),
    ))
    .clone();
    p.spec.as_mut().expect("spec").containers[0].lifecycle =
        serde_json::from_value(json!({"preStop": {"exec": {"command": ["x"]}}})).ok();
    let out = pod_applied(&mut f, &Arc::new(p), NOW);
    assert!(published(&out).is_empty(), "{out:?}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].involved_kind, ev[0].involved_name.as_str()),
        ("Pod", "sensors-aaa-1")
    );
    assert!(
        ev[0].message.starts_with("spec.containers[0].lifecycle"),
        "{}",
        ev[0].message
    );
    let out = tick(&mut f, NOW + 2_000);
    let st = pod_statuses(&out);
    assert_eq!(st.len(), 1);
    let cond = &st[0].1["status"]["conditions"][0];
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("False"), &json!("UnsupportedField"))
    );
    assert_eq!(st[0].1["status"]["phase"], "Pending");
}

#[test]
fn a_seed_pod_with_the_injected_token_volume_runs_without_it_and_says_so_once() {
    let mut f = seed_synced();
    let mut p = (*seed_pod(
        "sensors-5d9c-x1",
        "5d9c",
        "2026-01-01T00:00:00Z",
        IMAGE,
        Some("site=b43"),
    ))
    .clone();
    let injected: Pod = serde_json::from_value(json!({"spec": {
        "volumes": [{"name": "kube-api-access-q2x7k", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}],
        "containers": [{"name": "main", "image": IMAGE, "volumeMounts": [{"name": "kube-api-access-q2x7k",
            "mountPath": crate::model::convert::TOKEN_MOUNT_PATH, "readOnly": true}]}],
    }}))
    .expect("pod");
    let spec = p.spec.as_mut().expect("spec");
    let injected = injected.spec.expect("spec");
    spec.volumes = injected.volumes;
    spec.containers = injected.containers;
    let p = Arc::new(p);
    let out = pod_applied(&mut f, &p, NOW);
    assert_eq!(records(&out).len(), 1, "{out:?}");
    let evs = events(&out);
    assert_eq!(evs.len(), 1, "{out:?}");
    assert_eq!(evs[0].reason, "ServiceAccountTokenNotMounted");
    assert_eq!(
        (evs[0].involved_kind, evs[0].involved_name.as_str()),
        ("Pod", "sensors-5d9c-x1")
    );
    assert!(
        evs[0]
            .message
            .starts_with("the pod runs without its service account token")
    );
    // The spec that goes out has neither the volume nor its mount.
    let (_, payload) = published(&out)
        .into_iter()
        .find(|(t, _)| t.contains("_fleet-spec/"))
        .expect("a spec");
    let spec = wire::decode_as::<PodSpec>(&payload)
        .expect("spec payload")
        .1;
    assert!(spec.volumes.is_empty());
    assert!(spec.containers[0].volume_mounts.is_empty());
    // Evaluated again: not repeated.
    let out = pod_applied(&mut f, &p, NOW + 10);
    assert!(events(&out).is_empty(), "{out:?}");
}
