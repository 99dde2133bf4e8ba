//! The controller in process: the middle rung between the pure unit tests
//! and the end-to-end tests that run the binary against a real broker.
//!
//! Each test builds the controller from its parts (`Controller::new`): a real
//! redb store in a temporary directory, `FakeRuntime` (a fake, named as one)
//! in the Wasm slot, and the session's two channels, with the test playing
//! the session: it hands over `SessionEvent`s and reads the
//! `SessionCommand`s. Time is tokio's paused clock, so back-off and
//! heartbeats cost nothing. Every wait is for an observable condition (a
//! command arrives, then the store or the runtime is looked at again), with
//! a deadline in that paused time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Controller, Parts};
use crate::config::Config;
use crate::model::{
    Cohort, Event, EventType, FleetDeployment, FleetPodState, FleetReport, NodeInfo, PodKey,
    PodPhase, PodSource, PodSpec, PodStatus, RestartPolicy, Rollout, Volume, VolumeSource, samples,
};
use crate::mqtt::{AckToken, SessionCommand, SessionEvent};
use crate::runtime::fake::{Call, FakeRuntime, Start};
use crate::runtime::{LazyRuntime, Runtime};
use crate::store::Store;
use crate::wire::{self, Message, Topics};

const NODE: &str = "edge-1";

/// How long (in paused time) a wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(600);

/// A device's data directory, kept across agent restarts.
struct Device {
    dir: tempfile::TempDir,
    config: Config,
}

impl Device {
    fn new() -> Device {
        Device::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut Config)) -> Device {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config {
            node_name: NODE.into(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        change(&mut config);
        Device { dir, config }
    }

    /// Starts an agent on this device's store with a new fake runtime.
    fn start(&self) -> Agent {
        Agent::start(self.config.clone(), self.dir.path())
    }

    /// Starts an agent whose fake runtime is in the CRI slot (container
    /// pods) and whose Wasm runtime can never be made: making it sets
    /// `wasm_made` and fails.
    fn start_with_cri(&self, wasm_made: Arc<std::sync::atomic::AtomicBool>) -> Agent {
        let runtime = FakeRuntime::new();
        let cri: Arc<dyn Runtime> = runtime.clone();
        let wasm = LazyRuntime::new(Box::new(move || {
            wasm_made.store(true, std::sync::atomic::Ordering::SeqCst);
            anyhow::bail!("this test's Wasm runtime is never made")
        }));
        Agent::with_runtimes(
            self.config.clone(),
            self.dir.path(),
            runtime,
            wasm,
            Some(cri),
        )
    }
}

/// A running controller and the test's ends of its channels.
struct Agent {
    store: Arc<Store>,
    runtime: Arc<FakeRuntime>,
    topics: Topics,
    events: mpsc::UnboundedSender<SessionEvent>,
    commands: mpsc::UnboundedReceiver<SessionCommand>,
    /// Every command received so far, in order.
    seen: Vec<SessionCommand>,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn start(config: Config, dir: &Path) -> Agent {
        let runtime = FakeRuntime::new();
        let made: Arc<dyn Runtime> = runtime.clone();
        let wasm = LazyRuntime::new(Box::new(move || Ok(made)));
        Agent::with_runtimes(config, dir, runtime, wasm, None)
    }

    fn with_runtimes(
        config: Config,
        dir: &Path,
        runtime: Arc<FakeRuntime>,
        wasm: LazyRuntime,
        cri: Option<Arc<dyn Runtime>>,
    ) -> Agent {
        let store = Arc::new(Store::open(&dir.join("state.redb")).expect("store opens"));
        let (mut controller, receivers) = Controller::new(Parts {
            config,
            store: store.clone(),
            wasm: Some(wasm),
            cri,
            node_info: NodeInfo::default(),
            addresses: Vec::new(),
            sealing: Some(sealing_key()),
        });
        let (commands_tx, commands) = mpsc::unbounded_channel();
        controller.session = Some(commands_tx);
        let topics = controller.topics.clone();
        let (events, events_rx) = mpsc::unbounded_channel();
        let (_static_tx, static_rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(controller.serve(receivers, events_rx, static_rx, async {
            let _ = shutdown_rx.await;
        }));
        Agent {
            store,
            runtime,
            topics,
            events,
            commands,
            seen: Vec::new(),
            shutdown,
            task,
        }
    }

    /// Stops the controller (its pods stay recorded) and closes the store.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task
            .await
            .expect("controller task")
            .expect("controller ends cleanly");
    }

    /// Hands a QoS 1 message over as the session would.
    fn send(&self, topic: &str, payload: Vec<u8>) {
        let event = SessionEvent::Message {
            topic: topic.into(),
            payload,
            ack: Some(AckToken::for_test(topic)),
        };
        self.events.send(event).expect("controller listens");
    }

    fn desired_topic(&self, name: &str) -> String {
        self.topics.desired(NODE, &key(name))
    }

    fn apply(&self, spec: &PodSpec) {
        let payload =
            wire::encode(spec.generation, &Message::DesiredPod(spec.clone())).expect("encodes");
        self.send(&self.desired_topic(&spec.name), payload);
    }

    /// Reads commands until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&Agent) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.commands.recv()).await {
                Ok(Some(command)) => self.seen.push(command),
                Ok(None) => panic!("the controller ended while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {DEADLINE:?}; runtime calls: {:?}",
                    self.runtime.calls()
                ),
            }
        }
    }

    /// How many acknowledgements of messages on `topic` were sent.
    fn acks(&self, topic: &str) -> usize {
        self.seen
            .iter()
            .filter(|c| matches!(c, SessionCommand::Ack(a) if a.topic() == topic))
            .count()
    }

    fn status(&self, name: &str) -> Option<PodStatus> {
        self.store.status(&key(name)).expect("status readable")
    }

    fn phase(&self, name: &str) -> Option<PodPhase> {
        self.status(name).map(|s| s.phase)
    }

    /// Every message waiting in the outbox: (topic, message; None for an
    /// empty retained payload).
    fn outbox(&self) -> Vec<(String, Option<Message>)> {
        self.store
            .outbox_after(0, usize::MAX)
            .expect("outbox readable")
            .into_iter()
            .map(|(_, e)| {
                let message = (!e.payload.is_empty()).then(|| {
                    wire::decode(&e.payload)
                        .expect("outbox entry decodes")
                        .message
                });
                (e.topic, message)
            })
            .collect()
    }

    fn events(&self) -> Vec<Event> {
        self.outbox()
            .into_iter()
            .filter_map(|(_, m)| match m {
                Some(Message::Event(e)) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn has_event(&self, pod: Option<&str>, reason: &str) -> bool {
        self.events()
            .iter()
            .any(|e| e.pod.as_deref() == pod && e.reason == reason)
    }

    fn fleet_reports(&self, fleet: &PodKey) -> Vec<FleetReport> {
        let topic = self.topics.fleet_report(NODE, fleet);
        self.outbox()
            .into_iter()
            .filter_map(|(t, m)| match m {
                Some(Message::FleetReport(r)) if t == topic => Some(r),
                _ => None,
            })
            .collect()
    }
}

/// The sealing key of every test device.
fn sealing_key() -> crate::seal::KeyPair {
    crate::seal::KeyPair::from_seed(&[7; 32])
}

fn key(name: &str) -> PodKey {
    PodKey::new("default", name)
}

/// A Wasm pod `default/{name}` running the given containers.
fn pod(name: &str, generation: u64, policy: RestartPolicy, containers: &[&str]) -> PodSpec {
    let mut spec = samples::spec(name, &format!("uid-{name}"), generation, policy);
    spec.containers = containers.iter().map(|c| samples::container(c)).collect();
    spec
}

/// An agent of `device` running pod `web` (restartPolicy Always), whose
/// pod `job` (Never) has succeeded.
async fn web_running_and_job_succeeded(device: &Device) -> Agent {
    let mut agent = device.start();
    agent.runtime.script("task", [Start::Exit(0)]);
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent.apply(&pod("job", 1, RestartPolicy::Never, &["task"]));
    agent
        .until("web running and job succeeded", |a| {
            a.phase("web") == Some(PodPhase::Running) && a.phase("job") == Some(PodPhase::Succeeded)
        })
        .await;
    agent
}

#[tokio::test(start_paused = true)]
async fn pods_come_back_after_a_restart_and_terminal_pods_stay_terminal() {
    let device = Device::new();
    let agent = web_running_and_job_succeeded(&device).await;
    let job_before = agent.status("job");
    let web_before = agent.status("web").expect("web status");
    agent.stop().await;

    // No broker this time: everything comes from the store.
    let mut agent = device.start();
    agent
        .until("web running again", |a| {
            a.status("web").is_some_and(|s| {
                s.phase == PodPhase::Running
                    && s.container_statuses[0].container_id
                        != web_before.container_statuses[0].container_id
            })
        })
        .await;
    // A Wasm workload dies with the agent: its new run is a restart.
    assert_eq!(agent.runtime.starts_of(&key("web"), "app"), [(1, 1)]);
    assert_eq!(agent.runtime.starts_of(&key("job"), "task"), []);
    assert_eq!(
        agent.status("job"),
        job_before,
        "a terminal pod stays as it was"
    );
    assert_eq!(agent.runtime.running(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_spec_is_refused_with_a_status_and_an_event_and_a_running_pod_keeps_running() {
    let device = Device::new();
    let mut agent = device.start();
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;

    // A pod that does not run yet: a Failed status naming the cause.
    let bad = agent.desired_topic("bad");
    agent.send(&bad, b"not a pod spec".to_vec());
    agent
        .until("the refusal acknowledged", |a| a.acks(&bad) == 1)
        .await;
    let status = agent.status("bad").expect("a status for the refused pod");
    assert_eq!(status.phase, PodPhase::Failed);
    assert_eq!(status.reason.as_deref(), Some("InvalidSpec"));
    assert!(status.uid.is_empty());
    assert!(agent.has_event(Some("bad"), "InvalidSpec"));

    // The running pod: an event, and nothing else changes.
    let web = agent.desired_topic("web");
    agent.send(&web, vec![0xff, 0x01, 0x02]);
    let mut other = pod("other", 2, RestartPolicy::Always, &["app"]);
    other.uid = "uid-web".into();
    let payload = wire::encode(2, &Message::DesiredPod(other)).expect("encodes");
    agent.send(&web, payload);
    agent
        .until("both refusals acknowledged", |a| a.acks(&web) == 3)
        .await;
    let refusals = agent
        .events()
        .into_iter()
        .filter(|e| e.pod.as_deref() == Some("web") && e.reason == "InvalidSpec")
        .count();
    assert_eq!(refusals, 2);
    let status = agent.status("web").expect("web status");
    assert_eq!(
        (status.phase, status.uid.as_str()),
        (PodPhase::Running, "uid-web")
    );
    assert_eq!(agent.runtime.stops_of(&key("web")), 0);
    assert_eq!(agent.runtime.starts_of(&key("web"), "app"), [(1, 0)]);
    assert_eq!(agent.runtime.running(), 1);
}

/// A pod that declares data routes on a node without a data path (no
/// sink key here) is refused, with a status and an event that say why,
/// rather than run without its routes.
#[tokio::test(start_paused = true)]
async fn a_pod_with_routes_on_a_node_without_a_data_path_is_refused() {
    let device = Device::new();
    let mut agent = device.start();
    let mut meter = pod("meter", 1, RestartPolicy::Always, &["app"]);
    meter.routes = vec![crate::model::PodRoute {
        container: None,
        filter: "readings/#".into(),
        ttl_secs: 0,
        target: crate::model::RouteTarget::Upstream,
        priority: crate::model::Priority::default(),
    }];
    agent.apply(&meter);
    let topic = agent.desired_topic("meter");
    agent
        .until("the refusal acknowledged", |a| a.acks(&topic) == 1)
        .await;
    let status = agent.status("meter").expect("a status for the refused pod");
    assert_eq!(status.phase, PodPhase::Failed);
    assert_eq!(status.reason.as_deref(), Some("DataPathUnavailable"));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("kedge.io/routes") && m.contains("no data path")),
        "{status:?}"
    );
    assert!(agent.has_event(Some("meter"), "DataPathUnavailable"));
    assert!(agent.runtime.starts_of(&key("meter"), "app").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_newer_generation_replaces_the_pod_and_an_older_one_is_ignored() {
    let device = Device::new();
    let mut agent = device.start();
    let first = pod("web", 1, RestartPolicy::Always, &["app"]);
    agent.apply(&first);
    agent
        .until("generation 1 running", |a| {
            a.phase("web") == Some(PodPhase::Running)
        })
        .await;

    let mut second = pod("web", 2, RestartPolicy::Always, &["app"]);
    second.containers[0].args = vec!["--v2".into()];
    agent.apply(&second);
    agent
        .until("generation 2 running", |a| {
            a.status("web")
                .is_some_and(|s| s.observed_generation == 2 && s.phase == PodPhase::Running)
        })
        .await;
    assert_eq!(
        agent.runtime.starts_of(&key("web"), "app"),
        [(1, 0), (2, 0)]
    );
    assert_eq!(agent.runtime.stops_of(&key("web")), 1);
    assert_eq!(agent.runtime.running(), 1);

    // A late copy of generation 1: acknowledged, and nothing happens.
    let topic = agent.desired_topic("web");
    agent.apply(&first);
    agent
        .until("the old copy acknowledged", |a| a.acks(&topic) == 3)
        .await;
    let desired = agent.store.get_desired(&key("web")).expect("readable");
    assert_eq!(desired.map(|d| d.spec.generation), Some(2));
    assert_eq!(agent.runtime.starts_of(&key("web"), "app").len(), 2);
    assert_eq!(agent.runtime.stops_of(&key("web")), 1);
}

/// A new generation that changes only a ConfigMap's files and a label is
/// applied in place, as a kubelet syncs a running pod: the files are
/// swapped on disk, the generation observed, no container restarted.
#[tokio::test(start_paused = true)]
async fn changed_files_and_labels_update_the_running_pod_in_place() {
    let device = Device::new();
    let mut agent = device.start();
    let with_mode = |generation, mode: &str| {
        let mut spec = pod("web", generation, RestartPolicy::Always, &["app"]);
        spec.volumes.push(Volume {
            name: "config".into(),
            source: VolumeSource::Files {
                files: vec![("mode".into(), mode.as_bytes().to_vec())],
                default_mode: 0o644,
            },
        });
        spec
    };
    agent.apply(&with_mode(1, "fast"));
    agent
        .until("generation 1 running", |a| {
            a.phase("web") == Some(PodPhase::Running)
        })
        .await;
    let mut second = with_mode(2, "slow");
    second.labels.insert("tier".into(), "edge".into());
    agent.apply(&second);
    agent
        .until("generation 2 observed", |a| {
            a.status("web").is_some_and(|s| s.observed_generation == 2)
        })
        .await;
    let file = device
        .dir
        .path()
        .join("pods/default_web_uid-web/volumes/config/mode");
    assert_eq!(std::fs::read_to_string(&file).expect("written"), "slow");
    assert_eq!(agent.runtime.starts_of(&key("web"), "app"), [(1, 0)]);
    assert_eq!(agent.runtime.stops_of(&key("web")), 0);
    assert_eq!(agent.phase("web"), Some(PodPhase::Running));
    let desired = agent.store.get_desired(&key("web")).expect("readable");
    assert_eq!(desired.map(|d| d.spec), Some(second));
}

/// A new generation whose only change is an env value read from a
/// ConfigMap is recorded without a restart, as a kubelet leaves env alone;
/// the container's next start (here a restart after it exited) gets the
/// new value.
#[tokio::test(start_paused = true)]
async fn changed_env_from_a_config_map_waits_for_the_next_start() {
    let device = Device::new();
    let mut agent = device.start();
    let with_level = |generation, level: &str| {
        let mut spec = pod("web", generation, RestartPolicy::Always, &["app"]);
        spec.containers[0].env = vec![
            crate::model::EnvVar::from_object("LEVEL", level),
            crate::model::EnvVar::new("SAY", "level=$(LEVEL)"),
        ];
        spec
    };
    agent.apply(&with_level(1, "debug"));
    agent
        .until("generation 1 running", |a| {
            a.phase("web") == Some(PodPhase::Running)
        })
        .await;
    agent.apply(&with_level(2, "info"));
    agent
        .until("generation 2 observed", |a| {
            a.status("web").is_some_and(|s| s.observed_generation == 2)
        })
        .await;
    assert_eq!(agent.runtime.stops_of(&key("web")), 0, "not restarted");
    assert_eq!(agent.runtime.starts_of(&key("web"), "app"), [(1, 0)]);
    assert!(agent.runtime.exit(&key("web"), "app", 1));
    agent
        .until("app restarted", |a| {
            a.runtime.starts_of(&key("web"), "app").len() == 2
        })
        .await;
    assert_eq!(
        agent.runtime.envs_of(&key("web"), "app"),
        [
            ["LEVEL=debug", "SAY=level=debug"],
            ["LEVEL=info", "SAY=level=info"],
        ]
    );
    assert_eq!(agent.runtime.starts_of(&key("web"), "app")[1], (2, 1));
    agent
        .until("the restart observed at generation 2", |a| {
            a.status("web")
                .is_some_and(|s| s.observed_generation == 2 && s.restart_count() == 1)
        })
        .await;
}

/// A pod whose emptyDir holds more than its `sizeLimit` is evicted when
/// the agent next measures it: its container stopped within the kubelet's
/// 1 s, phase `Failed` with the reason `Evicted` and the kubelet's message,
/// a Warning event, and no restart.
#[tokio::test(start_paused = true)]
async fn a_pod_over_its_empty_dir_size_limit_is_evicted() {
    let device = Device::with(|c| c.node.eviction_monitoring_ms = 1_000);
    let mut agent = device.start();
    let mut spec = pod("web", 1, RestartPolicy::Always, &["app"]);
    spec.volumes.push(Volume {
        name: "cache".into(),
        source: VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: Some(64 << 10),
        },
    });
    agent.apply(&spec);
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    let cache = device
        .dir
        .path()
        .join("pods/default_web_uid-web/volumes/cache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    std::fs::write(cache.join("small"), vec![1u8; 16 << 10]).expect("write");
    // Measured under the limit a few times: nothing happens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(agent.phase("web"), Some(PodPhase::Running));
    std::fs::write(cache.join("blob"), vec![1u8; 128 << 10]).expect("write");
    agent
        .until("web evicted", |a| a.phase("web") == Some(PodPhase::Failed))
        .await;
    let status = agent.status("web").expect("status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    let message = "Usage of EmptyDir volume \"cache\" exceeds the limit \"64Ki\". ";
    assert_eq!(status.message.as_deref(), Some(message));
    assert!(
        agent
            .events()
            .iter()
            .any(|e| e.pod.as_deref() == Some("web")
                && e.reason == "Evicted"
                && e.kind == EventType::Warning
                && e.message == message),
        "{:?}",
        agent.events()
    );
    assert!(agent.runtime.calls().iter().any(|c| matches!(c,
        Call::Stop { container, grace, .. } if container == "app" && *grace == Duration::from_secs(1))));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        agent.runtime.starts_of(&key("web"), "app").len(),
        1,
        "never restarted"
    );
    assert_eq!(agent.phase("web"), Some(PodPhase::Failed));
}

#[tokio::test(start_paused = true)]
async fn a_desired_spec_is_acknowledged_only_once_committed() {
    let device = Device::new();
    let mut agent = device.start();
    let web = agent.desired_topic("web");

    // The disk is full: no commit, so no acknowledgement and no start.
    agent.store.fault_fail_writes(true);
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    // Messages are handled in order: once this one is acknowledged, the
    // spec before it has been handled.
    let index = agent.topics.index(NODE, "cli");
    agent.send(&index, Vec::new());
    agent
        .until("the later message acknowledged", |a| a.acks(&index) == 1)
        .await;
    assert_eq!(agent.acks(&web), 0);
    assert_eq!(
        agent.store.get_desired(&key("web")).expect("readable"),
        None
    );
    assert_eq!(agent.runtime.starts_of(&key("web"), "app"), []);

    // Space again: the heartbeat retries, commits, then acknowledges.
    agent.store.fault_fail_writes(false);
    agent
        .until("the spec acknowledged", |a| a.acks(&web) == 1)
        .await;
    let committed = agent.store.get_desired(&key("web")).expect("readable");
    assert_eq!(committed.map(|d| d.spec.generation), Some(1));
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
}

#[tokio::test(start_paused = true)]
async fn reports_dropped_from_a_full_outbox_are_reported() {
    // The outbox is trimmed on the heartbeat: an hour apart here, so that
    // the paused clock cannot reach one while the refusals are handled.
    let device = Device::with(|c| {
        c.outbox.max_entries = 4;
        c.node.heartbeat_ms = 3_600_000;
    });
    let mut agent = device.start();
    // Nobody acknowledges the outbox (no broker): each refusal adds an
    // event and a status.
    for name in ["a", "b", "c", "d"] {
        let topic = agent.desired_topic(name);
        agent.send(&topic, b"garbage".to_vec());
    }
    let last = agent.desired_topic("d");
    agent
        .until("the refusals handled", |a| a.acks(&last) == 1)
        .await;
    assert_eq!(agent.store.outbox_len().expect("readable"), 8);

    // The next heartbeat trims.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    agent
        .until("an OutboxOverflow event", |a| {
            a.has_event(None, "OutboxOverflow")
        })
        .await;
    let overflow = agent
        .events()
        .into_iter()
        .find(|e| e.reason == "OutboxOverflow")
        .expect("the event");
    assert_eq!(overflow.kind, EventType::Warning);
    assert_eq!(
        overflow.message,
        "dropped 4 reports that waited too long for the broker"
    );
    // The newest four, then the report of the drop.
    assert_eq!(agent.store.outbox_len().expect("readable"), 5);
}

#[tokio::test(start_paused = true)]
async fn a_fleet_deployment_and_its_spec_give_a_fleet_pod_and_a_report() {
    let device = Device::new();
    let mut agent = device.start();
    let spec = pod("sensor", 0, RestartPolicy::Always, &["probe"]);
    let fleet = roll_fleet(&mut agent, 1, &spec).await;
    let spec_topic = agent.topics.fleet_spec(&fleet.spec_digest);
    agent
        .until("a report of the running revision", |a| {
            a.fleet_reports(&fleet.key()).iter().any(|r| {
                r.running_revision == 1
                    && matches!(r.state, FleetPodState::Running | FleetPodState::Ready)
            })
        })
        .await;
    assert!(
        agent
            .seen
            .iter()
            .any(|c| matches!(c, SessionCommand::Unsubscribe(t) if *t == spec_topic)),
        "the spec's subscription ends once it arrived"
    );
    assert_eq!(agent.runtime.starts_of(&key("sensor"), "probe"), [(1, 0)]);
    let desired = agent.store.get_desired(&key("sensor")).expect("readable");
    assert_eq!(desired.map(|d| d.source), Some(PodSource::Fleet));
    let first = &agent.fleet_reports(&fleet.key())[0];
    assert_eq!(
        (first.fleet_uid.as_str(), first.desired_revision),
        ("uid-sensors", 1)
    );
}

/// Sends fleet `sensors` at `revision` with `spec` (pod `sensor`), and the
/// spec once the agent subscribed to it.
async fn roll_fleet(agent: &mut Agent, revision: u64, spec: &PodSpec) -> FleetDeployment {
    let mut spec = spec.clone();
    spec.uid = "uid-sensors".into();
    let (digest, payload) = crate::fleet::spec_payload(&spec).expect("spec payload");
    let fleet = FleetDeployment {
        namespace: "default".into(),
        name: "sensors".into(),
        uid: "uid-sensors".into(),
        selector: String::new(),
        priority: 0,
        pod_name: "sensor".into(),
        revision,
        spec_digest: digest.clone(),
        cohorts: vec![Cohort::everyone()],
        stable: None,
        rollout: Rollout::default(),
    };
    let record = wire::encode(0, &Message::FleetDeployment(fleet.clone())).expect("encodes");
    agent.send(&agent.topics.fleet(&fleet.key()), record);
    let spec_topic = agent.topics.fleet_spec(&digest);
    agent
        .until("a subscription to the spec", |a| {
            a.seen
                .iter()
                .any(|c| matches!(c, SessionCommand::Subscribe(t) if *t == spec_topic))
        })
        .await;
    agent.send(&spec_topic, payload);
    fleet
}

/// Fleet `sensors` at revision 1 (pod `sensor`, container `probe`), once
/// it runs: the fleet and its spec.
async fn revision_one_running(agent: &mut Agent) -> (FleetDeployment, PodSpec) {
    let spec = pod("sensor", 0, RestartPolicy::Always, &["probe"]);
    let fleet = roll_fleet(agent, 1, &spec).await;
    agent
        .until("revision 1 runs", |a| {
            a.fleet_reports(&fleet.key())
                .iter()
                .any(|r| r.running_revision == 1 && r.state == FleetPodState::Ready)
        })
        .await;
    (fleet, spec)
}

/// The index in `calls` of the first call `pick` takes.
fn call_index(calls: &[Call], pick: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().position(pick)
}

/// No gap: a fleet pod's next revision starts beside the running one as an
/// instance of its own, which is stopped only once the new one is ready;
/// the new instance is what a restart finds again.
#[tokio::test(start_paused = true)]
async fn a_fleet_pods_next_revision_starts_beside_it_and_replaces_it_once_ready() {
    let device = Device::new();
    let mut agent = device.start();
    let (fleet, mut spec) = revision_one_running(&mut agent).await;
    spec.containers[0].args = vec!["--v2".into()];
    roll_fleet(&mut agent, 2, &spec).await;
    agent
        .until("revision 2 runs", |a| {
            a.fleet_reports(&fleet.key())
                .iter()
                .any(|r| r.running_revision == 2 && r.state == FleetPodState::Ready)
        })
        .await;
    agent
        .until("the previous instance cleaned up", |a| {
            a.runtime
                .calls()
                .iter()
                .any(|c| matches!(c, Call::Cleanup { uid, .. } if uid == "uid-sensors"))
        })
        .await;
    let calls = agent.runtime.calls();
    let started = call_index(&calls, |c| matches!(c, Call::Start { generation: 2, .. }))
        .expect("revision 2 started");
    let stopped = call_index(&calls, |c| matches!(c, Call::Stop { .. })).expect("a stop");
    assert!(
        started < stopped,
        "revision 2 started before revision 1 was stopped: {calls:?}"
    );
    let instance = agent
        .store
        .instance(&key("sensor"))
        .expect("readable")
        .expect("the new instance is recorded");
    assert!(instance.starts_with("uid-sensors-"), "{instance}");
    assert!(calls.contains(&Call::PreparePod {
        pod: key("sensor"),
        uid: instance.clone(),
    }));
    assert_eq!(agent.runtime.running(), 1, "only revision 2 runs");
    let status = agent.status("sensor").expect("a status");
    assert_eq!(
        (status.uid.as_str(), status.observed_generation),
        ("uid-sensors", 2),
        "the instance reports as the pod"
    );
    let desired = agent.store.get_desired(&key("sensor")).expect("readable");
    assert_eq!(desired.map(|d| d.spec.generation), Some(2));
    agent.stop().await;

    // A restart finds the new instance again (a CRI container outlives
    // the agent: adopted, not started anew).
    let mut agent = device.start();
    agent.runtime.script("probe", [Start::Adopt]);
    agent
        .until("revision 2 adopted", |a| {
            a.runtime
                .calls()
                .iter()
                .any(|c| matches!(c, Call::Start { generation: 2, .. }))
        })
        .await;
    assert_eq!(
        agent.runtime.calls()[0],
        Call::PreparePod {
            pod: key("sensor"),
            uid: instance,
        }
    );
}

/// A next revision that fails beside the running one goes; the running one
/// is never stopped, and the fleet hears why.
#[tokio::test(start_paused = true)]
async fn a_fleet_pods_next_revision_that_fails_leaves_the_running_one_alone() {
    let device = Device::new();
    let mut agent = device.start();
    let (fleet, mut spec) = revision_one_running(&mut agent).await;
    // Revision 2's container exits with an error at once, every time.
    spec.containers[0].name = "broken".into();
    agent
        .runtime
        .script("broken", (0..10).map(|_| Start::Exit(3)));
    roll_fleet(&mut agent, 2, &spec).await;
    agent
        .until("revision 2 reported failed", |a| {
            a.fleet_reports(&fleet.key()).iter().any(|r| {
                r.desired_revision == 2
                    && r.running_revision == 1
                    && r.state == FleetPodState::Failed
                    && r.message.as_deref().is_some_and(|m| m.contains("broken"))
            })
        })
        .await;
    agent
        .until("revision 2 gone", |a| {
            a.runtime
                .calls()
                .iter()
                .any(|c| matches!(c, Call::Cleanup { uid, .. } if uid != "uid-sensors"))
        })
        .await;
    let calls = agent.runtime.calls();
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Stop { container, .. } if container == "probe")),
        "revision 1 was never stopped: {calls:?}"
    );
    assert_eq!(agent.runtime.starts_of(&key("sensor"), "probe"), [(1, 0)]);
    assert_eq!(agent.phase("sensor"), Some(PodPhase::Running));
    assert_eq!(
        agent.store.instance(&key("sensor")).expect("readable"),
        None
    );
    let desired = agent.store.get_desired(&key("sensor")).expect("readable");
    assert_eq!(desired.map(|d| d.spec.generation), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_container_adopted_after_a_restart_keeps_its_restart_count() {
    let device = Device::new();
    let mut agent = device.start();
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    agent.stop().await;

    // A CRI container outlives the agent: found again, not restarted.
    let mut agent = device.start();
    agent.runtime.script("app", [Start::Adopt]);
    agent
        .until("web adopted", |a| {
            a.status("web")
                .is_some_and(|s| s.phase == PodPhase::Running && s.restart_count() == 0)
                && a.runtime.starts_of(&key("web"), "app").len() == 1
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_waits_out_its_back_off_then_runs() {
    let device = Device::new();
    let mut agent = device.start();
    let failure = crate::runtime::RuntimeError::ImagePull("registry unreachable".into());
    agent.runtime.script("app", [Start::Fail(failure)]);
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("the pull failure reported", |a| {
            a.status("web").is_some_and(|s| {
                matches!(&s.container_statuses[0].state,
                    crate::model::ContainerState::Waiting { reason, .. } if reason == "ErrImagePull")
            })
        })
        .await;
    let failed_at = tokio::time::Instant::now();
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    assert_eq!(agent.runtime.starts_of(&key("web"), "app").len(), 2);
    let initial = Duration::from_millis(device.config.backoff.initial_ms);
    assert!(
        failed_at.elapsed() >= initial,
        "the retry waited its back-off"
    );
}

/// A device that trusts the key of seed `1` (and requires signatures).
fn signing_device() -> (Device, crate::trust::Signer) {
    let signer = crate::trust::Signer::from_seed(&[1; 32]);
    let public = signer.public_key_base64();
    let device = Device::with(|c| c.trust.keys = public);
    (device, signer)
}

fn signed(signer: &crate::trust::Signer, topic: &str, payload: &[u8]) -> Vec<u8> {
    signer
        .sign_envelope(topic, payload, crate::model::now_ms())
        .expect("signs")
}

#[tokio::test(start_paused = true)]
async fn a_signed_index_that_vanished_deletes_nothing() {
    let (device, signer) = signing_device();
    let mut agent = device.start();
    let web = agent.desired_topic("web");
    let spec = pod("web", 1, RestartPolicy::Always, &["app"]);
    let payload = wire::encode(1, &Message::DesiredPod(spec.clone())).expect("encodes");
    agent.send(&web, signed(&signer, &web, &payload));
    let cli_index = agent.topics.index(NODE, "cli");
    let mut index = crate::model::DesiredIndex::default();
    index.upsert(crate::model::IndexEntry::of(&spec));
    let payload = wire::encode(0, &Message::DesiredIndex(index)).expect("encodes");
    agent.send(&cli_index, signed(&signer, &cli_index, &payload));
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    // A new connection on which someone has cleared both the retained spec
    // and index/cli; another author's signed index lists nothing here.
    agent
        .events
        .send(SessionEvent::Connected { degraded: false })
        .expect("listens");
    let bridge_index = agent.topics.index(NODE, "bridge");
    let empty = wire::encode(
        0,
        &Message::DesiredIndex(crate::model::DesiredIndex::default()),
    )
    .expect("encodes");
    agent.send(&bridge_index, signed(&signer, &bridge_index, &empty));
    agent.events.send(SessionEvent::Synced).expect("listens");
    agent
        .until("the index called unreadable", |a| {
            a.has_event(None, "DesiredIndexUnreadable")
        })
        .await;
    let e = agent
        .events()
        .into_iter()
        .find(|e| e.reason == "DesiredIndexUnreadable")
        .expect("event");
    assert!(e.message.contains("cli"), "{}", e.message);
    assert_eq!(agent.runtime.stops_of(&key("web")), 0);
    assert!(
        agent
            .store
            .get_desired(&key("web"))
            .expect("readable")
            .is_some()
    );

    // An unsigned empty index (someone clearing it) is refused the same way,
    // and an unsigned empty payload on the desired topic deletes nothing.
    agent.send(&cli_index, Vec::new());
    agent.send(&web, Vec::new());
    agent
        .until("both acknowledged", |a| a.acks(&web) == 2)
        .await;
    assert!(agent.has_event(Some("web"), "SignatureMissing"));
    assert_eq!(agent.runtime.stops_of(&key("web")), 0);
    // A signed tombstone deletes.
    agent.send(&web, signed(&signer, &web, &[]));
    agent
        .until("web deleted", |a| a.status("web").is_none())
        .await;
}

#[tokio::test(start_paused = true)]
async fn fleet_records_and_labels_need_a_signature() {
    let (device, signer) = signing_device();
    let mut agent = device.start();
    let mut spec = pod("sensor", 0, RestartPolicy::Always, &["probe"]);
    spec.uid = "uid-sensors".into();
    let (digest, spec_payload) = crate::fleet::spec_payload(&spec).expect("spec payload");
    let fleet = FleetDeployment {
        namespace: "default".into(),
        name: "sensors".into(),
        uid: "uid-sensors".into(),
        selector: "tier=a".into(),
        priority: 0,
        pod_name: "sensor".into(),
        revision: 1,
        spec_digest: digest.clone(),
        cohorts: vec![Cohort::everyone()],
        stable: None,
        rollout: Rollout::default(),
    };
    let fleet_topic = agent.topics.fleet(&fleet.key());
    let record = wire::encode(0, &Message::FleetDeployment(fleet.clone())).expect("encodes");
    // Unsigned: refused, nothing fetched.
    agent.send(&fleet_topic, record.clone());
    agent
        .until("the refusal", |a| a.has_event(None, "SignatureMissing"))
        .await;
    agent.send(&fleet_topic, signed(&signer, &fleet_topic, &record));
    // Labels: unsigned ones are refused; signed ones select the device.
    let labels_topic = agent.topics.labels(NODE);
    let labels = wire::encode(
        0,
        &Message::NodeLabels(crate::model::NodeLabels {
            labels: [("tier".to_string(), "a".to_string())].into(),
        }),
    )
    .expect("encodes");
    agent.send(&labels_topic, labels.clone());
    agent
        .until("the labels refused", |a| a.acks(&labels_topic) == 1)
        .await;
    assert!(
        agent.fleet_reports(&fleet.key()).is_empty(),
        "not selected yet"
    );
    agent.send(&labels_topic, signed(&signer, &labels_topic, &labels));
    let spec_topic = agent.topics.fleet_spec(&digest);
    agent
        .until("a subscription to the spec", |a| {
            a.seen
                .iter()
                .any(|c| matches!(c, SessionCommand::Subscribe(t) if *t == spec_topic))
        })
        .await;
    // The spec is pinned by the signed record's digest: no signature.
    agent.send(&spec_topic, spec_payload);
    agent
        .until("the fleet pod running", |a| {
            a.phase("sensor") == Some(PodPhase::Running)
        })
        .await;

    // Someone clears the record: an unsigned delete is refused, and a
    // connection on which the record is missing keeps the fleet.
    agent.send(&fleet_topic, Vec::new());
    agent
        .events
        .send(SessionEvent::Connected { degraded: false })
        .expect("listens");
    agent.events.send(SessionEvent::Synced).expect("listens");
    agent
        .until("FleetsMissing", |a| a.has_event(None, "FleetsMissing"))
        .await;
    assert_eq!(agent.runtime.stops_of(&key("sensor")), 0);
    // The older signed record replayed is refused as well.
    let older = signed(&signer, &fleet_topic, &record);
    agent.send(&fleet_topic, signed(&signer, &fleet_topic, &record));
    agent.send(&fleet_topic, older);
    agent
        .until("the replay refused", |a| {
            a.has_event(None, "SignatureReplayed")
        })
        .await;
    // A signed delete removes the fleet and its pod.
    agent.send(&fleet_topic, signed(&signer, &fleet_topic, &[]));
    agent
        .until("the fleet pod deleted", |a| a.status("sensor").is_none())
        .await;
}

#[tokio::test(start_paused = true)]
async fn lifecycle_events_read_like_the_kubelets_and_a_crash_loop_backs_off_with_an_event() {
    let device = Device::new();
    let mut agent = device.start();
    agent
        .runtime
        .script("app", [Start::Exit(1), Start::Exit(1)]);
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("a BackOff event", |a| a.has_event(Some("web"), "BackOff"))
        .await;
    agent
        .until("web running after its back-off", |a| {
            a.phase("web") == Some(PodPhase::Running) && a.runtime.running() == 1
        })
        .await;
    let events = agent.events();
    let of = |reason: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.pod.as_deref() == Some("web") && e.reason == reason)
            .map(|e| e.message.clone())
            .collect()
    };
    // Three runs: the first exit restarts at once, the second backs off.
    assert_eq!(of("Created"), vec!["Created container: app"; 3]);
    assert_eq!(of("Started"), vec!["Started container app"; 3]);
    assert_eq!(
        of("BackOff"),
        ["Back-off restarting failed container app in pod web_default(uid-web)"]
    );
    let backoff = events
        .iter()
        .find(|e| e.reason == "BackOff")
        .expect("BackOff");
    assert_eq!(
        (backoff.kind, backoff.container.as_deref()),
        (EventType::Warning, Some("app"))
    );

    // Deleting it: Killing, naming the container stopped.
    agent.send(&agent.desired_topic("web"), Vec::new());
    agent
        .until("a Killing event", |a| a.has_event(Some("web"), "Killing"))
        .await;
    let killing: Vec<_> = agent
        .events()
        .into_iter()
        .filter(|e| e.reason == "Killing")
        .map(|e| e.message)
        .collect();
    assert_eq!(killing, ["Stopping container app"]);
}

/// Lifecycle hooks in process: a postStart hook runs before the container
/// reads Running, a failing one kills it (a `FailedPostStartHook` event, a
/// restart), and a preStop hook runs before the stop, which gets what is
/// left of the grace period.
#[tokio::test(start_paused = true)]
async fn hooks_run_after_the_start_and_before_the_stop() {
    use crate::model::{Hook, ProbeHandler};
    let exec = |words: &[&str]| {
        Some(Hook::Run(ProbeHandler::Exec {
            command: words.iter().map(|w| w.to_string()).collect(),
        }))
    };
    let device = Device::new();
    let mut agent = device.start();
    let mut spec = pod("web", 1, RestartPolicy::Always, &["app"]);
    spec.containers[0].lifecycle.post_start = exec(&["warm", "up"]);
    spec.containers[0].lifecycle.pre_stop = exec(&["drain"]);
    agent.apply(&spec);
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    let calls = agent.runtime.calls();
    let started = calls
        .iter()
        .position(|c| matches!(c, Call::Start { container, .. } if container == "app"))
        .expect("started");
    assert!(
        matches!(&calls[started + 1], Call::Exec { command, .. } if command == &["warm", "up"]),
        "{calls:?}"
    );
    agent.send(&agent.desired_topic("web"), Vec::new());
    agent
        .until("web stopped", |a| a.runtime.stops_of(&key("web")) == 1)
        .await;
    let calls = agent.runtime.calls();
    let drain = calls
        .iter()
        .position(|c| matches!(c, Call::Exec { command, .. } if command == &["drain"]))
        .expect("preStop ran");
    let stop = calls
        .iter()
        .position(|c| matches!(c, Call::Stop { .. }))
        .expect("stopped");
    assert!(drain < stop, "{calls:?}");
    assert!(
        matches!(calls[stop], Call::Stop { grace, .. } if grace <= Duration::from_secs(30) && grace > Duration::from_secs(2)),
        "{calls:?}"
    );

    // A failing postStart hook: killed, restarted, never Running.
    let mut spec = pod("bad", 1, RestartPolicy::Always, &["app"]);
    spec.containers[0].lifecycle.post_start = exec(&["exit", "3"]);
    agent.apply(&spec);
    agent
        .until("a FailedPostStartHook event", |a| {
            a.has_event(Some("bad"), "FailedPostStartHook")
        })
        .await;
    agent
        .until("bad restarted", |a| {
            a.status("bad")
                .is_some_and(|s| s.container_statuses[0].restart_count >= 1)
        })
        .await;
    let s = agent.status("bad").expect("a status");
    assert!(
        !matches!(
            s.container_statuses[0].state,
            crate::model::ContainerState::Running { .. }
        ),
        "{s:?}"
    );
    let Some(crate::model::ContainerState::Terminated { message, .. }) =
        &s.container_statuses[0].last_state
    else {
        panic!("{s:?}");
    };
    assert!(
        message.as_deref().is_some_and(|m| m.starts_with(
            "Exec lifecycle hook ([\"exit\", \"3\"]) for Container \"app\" in Pod \"bad_default(uid-bad)\" failed - error: command [\"exit\", \"3\"] exited with 3"
        )),
        "{message:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_pod_cannot_flood_the_outbox_with_events() {
    use super::event_budget::{BURST, REFILL};
    let device = Device::new();
    let mut agent = device.start();
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    agent.apply(&pod("wide", 1, RestartPolicy::Always, &names));
    agent
        .until("40 containers running", |a| a.runtime.running() == 40)
        .await;
    let count = |a: &Agent| {
        a.events()
            .iter()
            .filter(|e| e.pod.as_deref() == Some("wide"))
            .count()
    };
    // Another pod has its own budget; its events come after wide's on the
    // one channel, so once they are out, so is everything wide made.
    agent.apply(&pod("other", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("other's Started", |a| a.has_event(Some("other"), "Started"))
        .await;
    // 80 lifecycle events (Created and Started of each) made; the budget sent.
    assert_eq!(count(&agent), BURST as usize);
    // After a refill period, the next event says how many were not sent.
    tokio::time::advance(REFILL).await;
    agent.runtime.exit(&key("wide"), "c0", 1);
    agent
        .until("one more event of wide", |a| count(a) == BURST as usize + 1)
        .await;
    let last = agent
        .events()
        .into_iter()
        .rfind(|e| e.pod.as_deref() == Some("wide"))
        .expect("an event");
    assert!(
        last.message
            .contains("55 earlier events of this pod not sent"),
        "{}",
        last.message
    );
}

/// Supervisor statuses are committed off the loop, many in one
/// transaction: every pod's newest status in the store is also the newest
/// report of it in the outbox (a status and its entry are one write); a
/// stop while commits are under way finishes them, so the next start opens
/// the store; a status whose commit failed is written again once space is
/// back.
#[tokio::test(start_paused = true)]
async fn supervisor_statuses_commit_together_off_the_loop_and_nothing_is_lost() {
    let device = Device::new();
    let mut agent = device.start();
    let names: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    for name in &names {
        agent.apply(&pod(name, 1, RestartPolicy::Always, &["app"]));
    }
    agent
        .until("every pod running", |a| {
            names.iter().all(|n| a.phase(n) == Some(PodPhase::Running))
        })
        .await;
    // Every container exits at once: a burst of reports.
    for name in &names {
        assert!(agent.runtime.exit(&key(name), "app", 1));
    }
    agent
        .until("every pod restarted and recorded", |a| {
            names.iter().all(|n| {
                a.status(n)
                    .is_some_and(|s| s.restart_count() == 1 && s.phase == PodPhase::Running)
            })
        })
        .await;
    let newest_reports = |a: &Agent| {
        let mut newest = std::collections::HashMap::new();
        for (topic, message) in a.outbox() {
            if let Some(Message::PodStatus(s)) = message {
                newest.insert(topic, s);
            }
        }
        newest
    };
    let reports = newest_reports(&agent);
    for name in &names {
        let topic = agent.topics.reported(NODE, &key(name));
        assert_eq!(reports.get(&topic), agent.status(name).as_ref(), "{name}");
    }

    // Exits again, and a stop at once: the commits under way finish
    // before the controller ends, so the store opens again.
    for name in &names {
        assert!(agent.runtime.exit(&key(name), "app", 1));
    }
    agent.stop().await;
    let mut agent = device.start();
    agent
        .until("every pod running again", |a| {
            names.iter().all(|n| {
                a.phase(n) == Some(PodPhase::Running)
                    && a.runtime.starts_of(&key(n), "app").len() == 1
            })
        })
        .await;

    // A full disk: the statuses of a crash are not recorded, then are.
    let before = agent.status("p0").expect("status").restart_count();
    agent.store.fault_fail_writes(true);
    assert!(agent.runtime.exit(&key("p0"), "app", 1));
    agent
        .until("p0 restarted by its supervisor", |a| {
            a.runtime.starts_of(&key("p0"), "app").len() >= 2
        })
        .await;
    agent.store.fault_fail_writes(false);
    agent
        .until("p0's restart recorded", |a| {
            a.status("p0")
                .is_some_and(|s| s.restart_count() > before && s.phase == PodPhase::Running)
        })
        .await;
    let topic = agent.topics.reported(NODE, &key("p0"));
    assert_eq!(
        newest_reports(&agent).get(&topic),
        agent.status("p0").as_ref()
    );
}

/// A spec sealed to this device's key runs; one sealed to another key (a
/// re-keyed device, or a sender with a stale key) is refused with a
/// `SealedSpecError` while the pod keeps its last good spec; the same spec
/// sealed again under a newer generation (a restarted bridge cannot compare
/// what it sealed before) is adopted without a restart.
#[tokio::test(start_paused = true)]
async fn sealed_specs_open_with_the_device_key_and_nothing_else() {
    let mut agent = Device::new().start();
    let topic = agent.desired_topic("db");
    let sealed = |spec: &PodSpec, to: &crate::seal::PublicKey| {
        let sealed = crate::seal::seal_pod(to, &topic, spec).expect("seals");
        wire::encode(spec.generation, &Message::SealedPod(sealed)).expect("encodes")
    };
    let mine = sealing_key().public();
    let mut spec = pod("db", 1, RestartPolicy::Always, &["app"]);
    spec.containers[0]
        .env
        .push(crate::model::EnvVar::new("PASSWORD", "hunter2"));
    agent.send(&topic, sealed(&spec, &mine));
    agent
        .until("db running", |a| a.phase("db") == Some(PodPhase::Running))
        .await;
    let stored = agent
        .store
        .get_desired(&key("db"))
        .expect("readable")
        .expect("stored");
    assert_eq!(stored.spec.containers[0].env[0].value, "hunter2");

    let other = crate::seal::KeyPair::generate().expect("key").public();
    let mut changed = spec.clone();
    changed.generation = 2;
    changed.containers[0].image = "other".into();
    agent.send(&topic, sealed(&changed, &other));
    agent
        .until("the refusal", |a| {
            a.has_event(Some("db"), "SealedSpecError")
        })
        .await;
    let e = agent
        .events()
        .into_iter()
        .find(|e| e.reason == "SealedSpecError")
        .expect("event");
    assert!(
        e.message.contains("not to this device's key"),
        "{}",
        e.message
    );
    assert_eq!(agent.runtime.stops_of(&key("db")), 0);

    let mut again = spec.clone();
    again.generation = 3;
    agent.send(&topic, sealed(&again, &mine));
    agent
        .until("generation 3 recorded", |a| {
            a.store
                .get_desired(&key("db"))
                .ok()
                .flatten()
                .is_some_and(|r| r.spec.generation == 3)
        })
        .await;
    assert_eq!(
        agent.runtime.stops_of(&key("db")),
        0,
        "adopted, not restarted"
    );
    assert_eq!(agent.phase("db"), Some(PodPhase::Running));
    agent
        .until("the status observes generation 3", |a| {
            a.status("db").is_some_and(|s| s.observed_generation == 3)
        })
        .await;
    agent.stop().await;
}

/// The messages published on `topic` so far.
fn published(agent: &Agent, topic: &str) -> Vec<Message> {
    agent
        .seen
        .iter()
        .filter_map(|c| match c {
            SessionCommand::Publish {
                topic: t, payload, ..
            } if t == topic => Some(wire::decode(payload).expect("reply decodes").message),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_stats_request_gets_one_reply_with_the_running_containers_usage() {
    let device = Device::new();
    let mut agent = web_running_and_job_succeeded(&device).await;
    let ask = |agent: &Agent, id: &str, message: Message| {
        let payload = wire::encode(0, &message).expect("encodes");
        agent.send(&agent.topics.rpc_request(NODE, id), payload);
        agent.topics.rpc_response(NODE, id)
    };
    let request = |id: &str| {
        Message::StatsRequest(crate::model::StatsRequest {
            request_id: id.into(),
        })
    };

    let reply = ask(&agent, "s1", request("s1"));
    agent
        .until("the stats reply", |a| !published(a, &reply).is_empty())
        .await;
    let replies = published(&agent, &reply);
    let [Message::StatsReply(r)] = replies.as_slice() else {
        panic!("one StatsReply: {replies:?}");
    };
    assert_eq!(r.request_id, "s1");
    let stats = r.result.as_ref().expect("sampled");
    assert!(stats.usage.cpu_core_ns > 0 && stats.start_time_ms > 0);
    let web = agent.status("web").expect("web status");
    assert_eq!(stats.pods.len(), 1, "only the running pod: {stats:?}");
    let p = &stats.pods[0];
    assert_eq!((p.name.as_str(), p.uid.as_str()), ("web", "uid-web"));
    assert_eq!(p.start_time_ms, web.start_time_ms.expect("started"));
    assert_eq!(p.containers.len(), 1);
    assert_eq!(p.containers[0].name, "app");
    assert_eq!(p.containers[0].usage, FakeRuntime::USAGE);

    // A body naming another request, or another kind: refused as bad
    // requests with the log RPC's error chunk.
    let mismatched = ask(&agent, "s2", request("s3"));
    let wrong_kind = ask(&agent, "s4", Message::Tombstone);
    agent
        .until("both refusals", |a| {
            !published(a, &mismatched).is_empty() && !published(a, &wrong_kind).is_empty()
        })
        .await;
    for (topic, says) in [
        (
            &mismatched,
            "bad request: the request id \"s3\" is not the topic's \"s2\"",
        ),
        (
            &wrong_kind,
            "bad request: expected a LogRequest, StatsRequest, ExecRequest, StreamOpen or StreamExec message, got Tombstone",
        ),
    ] {
        match published(&agent, topic).as_slice() {
            [Message::LogChunk(c)] => {
                assert!(c.eof);
                assert_eq!(c.error.as_deref(), Some(says));
            }
            other => panic!("one error chunk: {other:?}"),
        }
    }
}

/// Asks the agent to run `command` in `container` of `pod` over the exec
/// RPC; returns the response topic.
fn exec(agent: &Agent, id: &str, pod: &str, container: &str, command: &[&str]) -> String {
    let request = Message::ExecRequest(crate::model::ExecRequest {
        request_id: id.into(),
        namespace: "default".into(),
        pod: pod.into(),
        container: container.into(),
        command: command.iter().map(|w| w.to_string()).collect(),
        timeout_secs: 10,
    });
    let payload = wire::encode(0, &request).expect("encodes");
    agent.send(&agent.topics.rpc_request(NODE, id), payload);
    agent.topics.rpc_response(NODE, id)
}

/// The one exec reply published on `topic`, once it is there.
async fn exec_reply(agent: &mut Agent, topic: &str) -> Result<crate::model::ExecOutput, String> {
    agent
        .until("the exec reply", |a| !published(a, topic).is_empty())
        .await;
    match published(agent, topic).as_slice() {
        [Message::ExecReply(r)] => {
            assert_eq!(Some(r.request_id.as_str()), topic.rsplit('/').next());
            r.result.clone()
        }
        other => panic!("one ExecReply: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_exec_request_runs_in_a_running_container_and_gets_one_reply() {
    let device = Device::new();
    let wasm_made = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agent = device.start_with_cri(wasm_made.clone());
    let mut web = pod("web", 1, RestartPolicy::Always, &["app"]);
    web.runtime = crate::model::RuntimeKind::Container;
    agent.apply(&web);
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;

    // The fake runtime's echo (`runtime::fake`), its exit code, and output
    // cut to the bound.
    let echo = exec(&agent, "e1", "web", "app", &["echo", "hi there"]);
    let out = exec_reply(&mut agent, &echo).await.expect("ran");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"echo hi there\n");
    assert!(out.stderr.is_empty() && !out.truncated);
    let failed = exec(&agent, "e2", "web", "app", &["exit", "3"]);
    assert_eq!(
        exec_reply(&mut agent, &failed)
            .await
            .expect("ran")
            .exit_code,
        3
    );
    let big = (crate::model::validate::MAX_EXEC_OUTPUT + 10).to_string();
    let long = exec(&agent, "e3", "web", "app", &["yes", &big]);
    let out = exec_reply(&mut agent, &long).await.expect("ran");
    assert!(out.truncated);
    let max = crate::model::validate::MAX_EXEC_OUTPUT;
    assert_eq!((out.stdout.len(), out.stderr.len()), (max, max));

    // Refusals, each the one reply's error.
    for (id, pod, container, says) in [
        (
            "e4",
            "nope",
            "app",
            r#"pod "default/nope" not found on node edge-1"#,
        ),
        (
            "e5",
            "web",
            "db",
            r#"container "db" not found in pod "default/web""#,
        ),
    ] {
        let topic = exec(&agent, id, pod, container, &["ls"]);
        assert_eq!(exec_reply(&mut agent, &topic).await, Err(says.to_string()));
    }

    // A body naming another request: a bad request, as for the other RPCs.
    let mismatched = exec(&agent, "e6", "web", "app", &["ls"]);
    let other = Message::ExecRequest(crate::model::ExecRequest {
        request_id: "e7".into(),
        namespace: "default".into(),
        pod: "web".into(),
        container: "app".into(),
        command: vec!["ls".into()],
        timeout_secs: 1,
    });
    agent.send(
        &agent.topics.rpc_request(NODE, "e8"),
        wire::encode(0, &other).expect("encodes"),
    );
    let wrong = agent.topics.rpc_response(NODE, "e8");
    agent
        .until("the refusal", |a| !published(a, &wrong).is_empty())
        .await;
    match published(&agent, &wrong).as_slice() {
        [Message::LogChunk(c)] => assert_eq!(
            c.error.as_deref(),
            Some(r#"bad request: the request id "e7" is not the topic's "e8""#)
        ),
        other => panic!("one error chunk: {other:?}"),
    }
    let _ = exec_reply(&mut agent, &mismatched).await;
    assert!(
        !wasm_made.load(std::sync::atomic::Ordering::SeqCst),
        "an exec never makes the Wasm runtime"
    );

    // A container that has ended is not running.
    agent.runtime.script("task", [Start::Exit(0)]);
    let mut job = pod("job", 1, RestartPolicy::Never, &["task"]);
    job.runtime = crate::model::RuntimeKind::Container;
    agent.apply(&job);
    agent
        .until("job succeeded", |a| {
            a.phase("job") == Some(PodPhase::Succeeded)
        })
        .await;
    let ended = exec(&agent, "e9", "job", "task", &["ls"]);
    assert_eq!(
        exec_reply(&mut agent, &ended).await,
        Err(r#"container "task" in pod "default/job" is not running"#.into())
    );
    agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_exec_request_in_a_wasm_pod_is_refused() {
    let device = Device::new();
    let mut agent = device.start();
    agent.apply(&pod("web", 1, RestartPolicy::Always, &["app"]));
    agent
        .until("web running", |a| a.phase("web") == Some(PodPhase::Running))
        .await;
    let topic = exec(&agent, "w1", "web", "app", &["ls"]);
    assert_eq!(
        exec_reply(&mut agent, &topic).await,
        Err(r#"exec is not supported for WebAssembly containers (container "app" of pod "default/web" runs as a Wasm module inside the agent)"#.into())
    );
    assert!(
        agent
            .runtime
            .calls()
            .iter()
            .all(|c| !matches!(c, Call::Cleanup { .. })),
        "the pod kept running"
    );
    agent.stop().await;
}
