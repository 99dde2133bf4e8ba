//! One task per pod: carries out what `PodMachine` decides, through a
//! `Runtime`, and reports every status change to the controller.
//!
//! The supervisor owns the pod's running containers (their stop handles)
//! and nothing else; the controller owns the supervisor through its
//! `SupervisorHandle` and learns the end of the task from `Report::Stopped`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::eviction::{self, ContainerStorage, PodStorage};
use super::pod_machine::{Action, ContainerRef, Exit, Now, PodMachine};
use super::probe::{self, ProbeKind};
use crate::model::expansion::Addresses;
use crate::model::{
    Container, ContainerState, EventType, Hook, PodKey, PodSpec, PodStatus, ProbeHandler,
    RuntimeKind, StatusField, now_ms,
};
use crate::runtime::{ExitStatus, PodContext, RunningContainer, Runtime, RuntimeError, StopHandle};

/// What a supervisor tells the controller.
// Sent once per status change and consumed at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Report {
    Status {
        key: PodKey,
        status: PodStatus,
    },
    /// The pod was stopped on request and its resources released.
    Stopped {
        key: PodKey,
        uid: String,
    },
}

/// The controller's side of a supervisor.
pub struct SupervisorHandle {
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    /// Newer generations updated in place (`Decision::UpdateInPlace`);
    /// the supervisor's loop reads them until it ends.
    update_tx: mpsc::UnboundedSender<PodSpec>,
}

impl SupervisorHandle {
    /// A newer generation of the running pod that changes only what is
    /// updated in place: the next container start uses it (env read from
    /// ConfigMaps and Secrets), and the status reports its generation.
    pub fn update(&self, spec: PodSpec) {
        let _ = self.update_tx.send(spec);
    }

    /// Asks the pod to stop (containers get their grace period); the
    /// supervisor answers with `Report::Stopped`.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Everything inside the supervisor's loop arrives as one of these.
enum Event {
    StopRequested,
    /// A newer generation updated in place (`SupervisorHandle::update`).
    Updated(Box<PodSpec>),
    Started(ContainerRef, Result<RunningContainer, RuntimeError>),
    Exited(ContainerRef, ExitStatus),
    Timer(ContainerRef),
    /// A probe of a container run (named by its id) gave a result.
    Probe {
        c: ContainerRef,
        container_id: String,
        kind: ProbeKind,
        result: Result<(), String>,
    },
    StopDeadline,
    /// Time to measure the pod's local storage (`agent::eviction`).
    MeasureStorage,
    /// What the pod holds on the disk, measured.
    StorageMeasured(PodStorage),
    /// A container started, and its postStart hook failed: it was killed
    /// (`status`: how it ended), with the hook's error in `message`.
    PostStartFailed {
        c: ContainerRef,
        container_id: String,
        image_id: String,
        status: ExitStatus,
        message: String,
    },
}

/// `storage_every`: how often a pod with local storage limits is measured
/// (config `node.eviction_monitoring_ms`).
pub fn spawn(
    mut machine: PodMachine,
    pod: PodContext,
    runtime: Arc<dyn Runtime>,
    reports: mpsc::UnboundedSender<Report>,
    storage_every: Duration,
) -> SupervisorHandle {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (update_tx, update_rx) = mpsc::unbounded_channel();
    let key = pod.spec.key();
    let span = info_span!("pod", pod = %key, uid = %pod.spec.uid, runtime = runtime.name());
    crate::spawn(
        async move {
            let mut sup = Supervisor {
                key: key.clone(),
                pod,
                runtime,
                reports,
                running: HashMap::new(),
                probes: HashMap::new(),
                starting: 0,
                last_reported: None,
                stop_deadline_set: false,
                origin: tokio::time::Instant::now(),
                hooks_in_flight: Vec::new(),
                storage_every,
                storage_ticker: None,
                measuring: false,
            };
            sup.run(&mut machine, stop_rx, update_rx).await;
        }
        .instrument(span),
    );
    SupervisorHandle {
        stop_tx: Some(stop_tx),
        update_tx,
    }
}

struct Supervisor {
    key: PodKey,
    pod: PodContext,
    runtime: Arc<dyn Runtime>,
    reports: mpsc::UnboundedSender<Report>,
    /// Stop handles of the containers that run now.
    running: HashMap<ContainerRef, StopHandle>,
    /// Probe loops of the containers that run now; aborted when they exit.
    probes: HashMap<ContainerRef, Vec<tokio::task::AbortHandle>>,
    /// Container starts in flight.
    starting: usize,
    last_reported: Option<PodStatus>,
    stop_deadline_set: bool,
    /// The monotonic origin of every `Now` given to the machine (tokio's
    /// clock: paused in tests).
    origin: tokio::time::Instant,
    /// One sender per postStart hook under way, dropped when the pod is
    /// asked to stop: the hook is then abandoned (its container is stopped
    /// like any other).
    hooks_in_flight: Vec<tokio::sync::oneshot::Sender<()>>,
    /// How often the pod's local storage is measured, when it has limits.
    storage_every: Duration,
    /// The task that asks for a measurement every `storage_every`: started
    /// with the pod when it has storage limits, aborted once the pod is
    /// done (and ends by itself with the supervisor's channel).
    storage_ticker: Option<tokio::task::AbortHandle>,
    /// A measurement is under way (one at a time).
    measuring: bool,
}

impl Supervisor {
    /// Both clocks, read now: wall time for what the status shows,
    /// monotonic time for durations.
    fn now(&self) -> Now {
        Now {
            wall_ms: now_ms(),
            monotonic: self.origin.elapsed(),
        }
    }

    async fn run(
        &mut self,
        machine: &mut PodMachine,
        mut stop_rx: tokio::sync::oneshot::Receiver<()>,
        mut update_rx: mpsc::UnboundedReceiver<PodSpec>,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        if machine.is_done() {
            // Restored in a terminal phase: nothing to run, just wait.
            self.report(machine);
        } else if let Err(e) = self.runtime.prepare_pod(&self.pod).await {
            warn!(error = %e, "cannot prepare pod");
            let now = self.now();
            let mut actions = machine.start(now);
            // Every container fails to start with the same reason.
            actions.retain(|a| !matches!(a, Action::Start(_)));
            for c in first_containers(machine) {
                actions.extend(machine.on_start_failed(c, e.reason(), e.to_string(), now));
            }
            self.execute(machine, actions, &tx);
        } else {
            machine.set_pod_ip(self.runtime.pod_ip(&self.pod));
            let actions = machine.start(self.now());
            self.execute(machine, actions, &tx);
        }
        if !machine.is_done() && eviction::has_storage_limits(&self.pod.spec) {
            let (tx, every) = (tx.clone(), self.storage_every);
            let ticker = crate::spawn(
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        if tx.send(Event::MeasureStorage).is_err() {
                            return;
                        }
                    }
                }
                .in_current_span(),
            );
            self.storage_ticker = Some(ticker.abort_handle());
        }
        let mut stop_requested = false;
        loop {
            let event = tokio::select! {
                _ = &mut stop_rx, if !stop_requested => {
                    stop_requested = true;
                    Event::StopRequested
                }
                Some(spec) = update_rx.recv() => Event::Updated(Box::new(spec)),
                Some(ev) = rx.recv() => ev,
            };
            let now = self.now();
            let actions = match event {
                Event::StopRequested => {
                    self.hooks_in_flight.clear();
                    machine.stop(now)
                }
                Event::Updated(spec) => {
                    info!(
                        generation = spec.generation,
                        "updated in place: the next container start uses this generation"
                    );
                    self.pod.spec = (*spec).clone();
                    machine.update_in_place(*spec);
                    Vec::new()
                }
                Event::PostStartFailed {
                    c,
                    container_id,
                    image_id,
                    status,
                    message,
                } => {
                    // As the kubelet: the container ran, its hook failed, it
                    // was killed; the restart policy decides what follows.
                    // It never read Running (one report for both steps).
                    self.starting -= 1;
                    let name = self.name_of(machine, c);
                    warn!(container = %name, %container_id, error = %message, "postStart hook failed");
                    self.emit(
                        Some(&name),
                        EventType::Warning,
                        "FailedPostStartHook",
                        "PostStartHook failed".into(),
                    );
                    let mut actions = machine.on_started(c, container_id, image_id, now);
                    actions.extend(machine.on_exited(
                        c,
                        Exit {
                            exit_code: status.exit_code,
                            reason: status.reason,
                            message: Some(message),
                        },
                        now,
                    ));
                    actions
                }
                Event::Started(c, Ok(rc)) => {
                    self.starting -= 1;
                    let RunningContainer {
                        container_id,
                        image_id,
                        exited,
                        mut stop,
                        adopted,
                    } = rc;
                    info!(container = %self.name_of(machine, c), %container_id, adopted, "container started");
                    let tx2 = tx.clone();
                    // The run's termination message file and log, read
                    // when it ends.
                    let run = if adopted {
                        machine.restart_count(c)
                    } else {
                        machine.next_run_number(c)
                    };
                    let name = self.name_of(machine, c);
                    let file = crate::runtime::termination_log_path(&self.pod.pod_dir, &name, run);
                    let log = self.pod.log_path(&name, run);
                    let fallback = machine
                        .container(c)
                        .is_some_and(|k| k.termination_message_fallback_to_logs);
                    crate::spawn(async move {
                        let mut status = exited.await.unwrap_or(ExitStatus {
                            exit_code: 137,
                            reason: Some("Error".into()),
                            message: Some("the runtime lost the container".into()),
                        });
                        status.message = crate::runtime::read_termination_message(
                            status.message,
                            &file,
                            &log,
                            fallback,
                            status.exit_code,
                        );
                        let _ = tx2.send(Event::Exited(c, status));
                    });
                    if machine.is_stopping() || machine.is_done() {
                        stop.stop(Duration::ZERO);
                    } else {
                        self.start_probes(machine, c, &container_id, &tx);
                    }
                    self.running.insert(c, stop);
                    // The sandbox may have been made by this start (a retry).
                    machine.set_pod_ip(self.runtime.pod_ip(&self.pod));
                    if adopted {
                        machine.on_adopted(c, container_id, image_id, now)
                    } else {
                        // The kubelet's pair: made, then started.
                        let name = self.name_of(machine, c);
                        self.emit(
                            Some(&name),
                            EventType::Normal,
                            "Created",
                            format!("Created container: {name}"),
                        );
                        self.emit(
                            Some(&name),
                            EventType::Normal,
                            "Started",
                            format!("Started container {name}"),
                        );
                        machine.on_started(c, container_id, image_id, now)
                    }
                }
                Event::Started(c, Err(e)) => {
                    self.starting -= 1;
                    let name = self.name_of(machine, c);
                    warn!(container = %name, reason = e.reason(), error = %e, "container failed to start");
                    // As the kubelet: a pull failure's own event names the
                    // image and cause (the runtime sent it); this one the reason.
                    let message = match e {
                        RuntimeError::ImagePull(_) => format!("Error: {}", e.reason()),
                        _ => format!("Error: {e}"),
                    };
                    self.emit(Some(&name), EventType::Warning, "Failed", message);
                    machine.on_start_failed(c, e.reason(), e.to_string(), now)
                }
                Event::Exited(c, status) => {
                    self.running.remove(&c);
                    for p in self.probes.remove(&c).unwrap_or_default() {
                        p.abort();
                    }
                    info!(container = %self.name_of(machine, c), exit_code = status.exit_code, reason = ?status.reason, "container exited");
                    machine.on_exited(
                        c,
                        Exit {
                            exit_code: status.exit_code,
                            reason: status.reason,
                            message: status.message,
                        },
                        now,
                    )
                }
                Event::Timer(c) => machine.on_timer(c, now),
                Event::Probe {
                    c,
                    container_id,
                    kind,
                    result,
                } => {
                    if let Err(why) = &result {
                        let name = self.name_of(machine, c);
                        info!(container = %name, probe = kind.as_str(), %why, "probe failed");
                        self.pod.events.emit(
                            &self.pod.spec,
                            Some(&name),
                            EventType::Warning,
                            "Unhealthy",
                            format!("{} probe failed: {why}", kind.as_str()),
                        );
                    }
                    machine.on_probe(c, &container_id, kind, result.is_ok(), now)
                }
                Event::MeasureStorage => {
                    if machine.is_done() || machine.is_stopping() {
                        if let Some(t) = self.storage_ticker.take() {
                            t.abort();
                        }
                    } else if !self.measuring {
                        self.measuring = true;
                        self.measure_storage(machine, &tx);
                    }
                    Vec::new()
                }
                Event::StorageMeasured(usage) => {
                    self.measuring = false;
                    match eviction::check(&self.pod.spec, &usage) {
                        Some(message) if !machine.is_done() && !machine.is_stopping() => {
                            warn!(%message, "evicting the pod: over a local storage limit");
                            self.emit(None, EventType::Warning, eviction::REASON, message.clone());
                            machine.evict(message, now)
                        }
                        _ => Vec::new(),
                    }
                }
                Event::StopDeadline => {
                    // The runtime did not confirm the stop in time; the
                    // containers are gone from our side regardless.
                    warn!("containers did not stop within their grace period");
                    self.running.clear();
                    Vec::new()
                }
            };
            self.execute(machine, actions, &tx);
            if stop_requested && self.running.is_empty() && self.starting == 0 {
                self.runtime.cleanup_pod(&self.pod).await;
                machine.on_stopped(self.now());
                self.report(machine);
                let _ = self.reports.send(Report::Stopped {
                    key: self.key.clone(),
                    uid: self.pod.spec.uid.clone(),
                });
                debug!("supervisor finished");
                return;
            }
        }
    }

    /// Measures the pod's disk-backed emptyDirs, its containers' logs and
    /// the writable layers of those running, off the loop; the result comes
    /// back as `Event::StorageMeasured`.
    fn measure_storage(&self, machine: &PodMachine, tx: &mpsc::UnboundedSender<Event>) {
        let running: Vec<(String, String)> = self
            .running
            .keys()
            .filter_map(|c| {
                let id = machine.container_id(*c)?;
                Some((self.name_of(machine, *c), id.to_string()))
            })
            .collect();
        let volumes = eviction::volumes_to_measure(&self.pod.spec)
            .into_iter()
            .map(str::to_string)
            .collect();
        let (pod, runtime, tx) = (self.pod.clone(), self.runtime.clone(), tx.clone());
        crate::spawn(
            async move {
                let usage = measure_pod(&pod, runtime.as_ref(), volumes, running).await;
                let _ = tx.send(Event::StorageMeasured(usage));
            }
            .in_current_span(),
        );
    }

    /// Starts one loop per probe of a container run: wait the initial
    /// delay, then check every period and report each result.
    fn start_probes(
        &mut self,
        machine: &PodMachine,
        c: ContainerRef,
        container_id: &str,
        tx: &mpsc::UnboundedSender<Event>,
    ) {
        let Some(container) = machine.container(c) else {
            return;
        };
        // Init containers that run to completion have no probes; sidecars
        // do, like app containers.
        if machine.is_regular_init(c) {
            return;
        }
        let pod_ip = machine.status().pod_ip.clone().unwrap_or_default();
        let mut handles = Vec::new();
        for (kind, probe) in [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
        ] {
            let Some(probe) = probe.clone() else { continue };
            let (runtime, tx) = (self.runtime.clone(), tx.clone());
            let (container_id, pod_ip) = (container_id.to_string(), pod_ip.clone());
            let task = crate::spawn(
                async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_secs)))
                        .await;
                    let period = Duration::from_secs(u64::from(probe.period_secs.max(1)));
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let result =
                            probe::check(&probe, runtime.as_ref(), &container_id, &pod_ip).await;
                        let event = Event::Probe {
                            c,
                            container_id: container_id.clone(),
                            kind,
                            result,
                        };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
                .in_current_span(),
            );
            handles.push(task.abort_handle());
        }
        self.probes.insert(c, handles);
    }

    fn emit(&self, container: Option<&str>, kind: EventType, reason: &str, message: String) {
        self.pod
            .events
            .emit(&self.pod.spec, container, kind, reason, message);
    }

    /// A restart waits out its back-off: the kubelet's BackOff event, for a
    /// crash loop or an image that cannot be pulled.
    fn backoff_event(&self, machine: &PodMachine, c: ContainerRef) {
        let Some(container) = machine.container(c) else {
            return;
        };
        let status = machine.status();
        let statuses = if c.init {
            &status.init_container_statuses
        } else {
            &status.container_statuses
        };
        let pulling = statuses
            .get(c.index)
            .is_some_and(|s| matches!(&s.state, ContainerState::Waiting { reason, .. } if reason == "ImagePullBackOff"));
        let spec = &self.pod.spec;
        let message = if pulling {
            format!("Back-off pulling image \"{}\"", container.image)
        } else {
            format!(
                "Back-off restarting failed container {} in pod {}_{}({})",
                container.name, spec.name, spec.namespace, spec.uid
            )
        };
        self.emit(
            Some(&container.name),
            EventType::Warning,
            "BackOff",
            message,
        );
    }

    fn name_of(&self, machine: &PodMachine, c: ContainerRef) -> String {
        machine
            .container(c)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    fn execute(
        &mut self,
        machine: &mut PodMachine,
        actions: Vec<Action>,
        tx: &mpsc::UnboundedSender<Event>,
    ) {
        for action in actions {
            match action {
                Action::Start(c) => {
                    let Some(container) = machine.container(c).cloned() else {
                        continue;
                    };
                    let run_number = machine.next_run_number(c);
                    self.starting += 1;
                    let runtime = self.runtime.clone();
                    let pod = self.pod.clone();
                    let tx = tx.clone();
                    let status = machine.status();
                    let (known_pod_ip, host_ip) = (status.pod_ip.clone(), status.host_ip.clone());
                    let (cancel_tx, mut cancel) = tokio::sync::oneshot::channel::<()>();
                    if container.lifecycle.post_start.is_some() {
                        self.hooks_in_flight.retain(|h| !h.is_closed());
                        self.hooks_in_flight.push(cancel_tx);
                    }
                    crate::spawn(
                        async move {
                            let pod_ip =
                                pod_ip(runtime.as_ref(), &pod, &container, known_pod_ip).await;
                            let addresses = Addresses {
                                pod_ip: pod_ip.as_deref().unwrap_or_default(),
                                host_ip: host_ip.as_deref().unwrap_or_default(),
                            };
                            let result = match crate::runtime::container_to_start(
                                &pod, &container, &addresses,
                            ) {
                                Ok(container) => {
                                    runtime.start_container(&pod, &container, run_number).await
                                }
                                Err(e) => Err(e),
                            };
                            // postStart runs right after the start; the
                            // container is not Running until it returns
                            // (not again for one adopted after a restart).
                            let hook = container.lifecycle.post_start.as_ref();
                            let event = match (result, hook) {
                                (Ok(mut rc), Some(hook)) if !rc.adopted => {
                                    let run = probe::run_hook(
                                        hook,
                                        runtime.as_ref(),
                                        &rc.container_id,
                                        addresses.pod_ip,
                                        UNBOUNDED_HOOK,
                                    );
                                    let outcome = tokio::select! {
                                        r = run => r,
                                        _ = &mut cancel => Ok(()),
                                    };
                                    match outcome {
                                        Ok(()) => Event::Started(c, Ok(rc)),
                                        Err(e) => {
                                            let grace = Duration::from_secs(
                                                pod.spec.termination_grace_period_secs,
                                            );
                                            rc.stop.stop(grace);
                                            let status = rc.exited.await.unwrap_or(ExitStatus {
                                                exit_code: 137,
                                                reason: Some("Error".into()),
                                                message: None,
                                            });
                                            Event::PostStartFailed {
                                                c,
                                                container_id: rc.container_id,
                                                image_id: rc.image_id,
                                                status,
                                                message: hook_failure(
                                                    hook,
                                                    &container.name,
                                                    &pod.spec,
                                                    &e,
                                                ),
                                            }
                                        }
                                    }
                                }
                                (result, _) => Event::Started(c, result),
                            };
                            let _ = tx.send(event);
                        }
                        .in_current_span(),
                    );
                }
                Action::WakeAfter(c, delay) => {
                    if !delay.is_zero() {
                        self.backoff_event(machine, c);
                    }
                    let tx = tx.clone();
                    crate::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Event::Timer(c));
                    });
                }
                Action::Kill(c, grace) => {
                    let name = self.name_of(machine, c);
                    warn!(container = %name, "probe failed past its threshold; killing the container");
                    self.pod.events.emit(
                        &self.pod.spec,
                        Some(&name),
                        EventType::Normal,
                        "Killing",
                        format!("Container {name} failed its probe, will be restarted"),
                    );
                    self.stop_container(machine, c, grace);
                }
                Action::StopSidecar(c, grace) => {
                    let name = self.name_of(machine, c);
                    self.emit(
                        Some(&name),
                        EventType::Normal,
                        "Killing",
                        format!("Stopping container {name}"),
                    );
                    self.stop_container(machine, c, grace);
                }
                Action::StopAll { grace } => {
                    // Sidecars stop after the others, one by one, as the
                    // machine says (`StopSidecar`).
                    let running: Vec<ContainerRef> = self
                        .running
                        .keys()
                        .copied()
                        .filter(|c| !machine.container(*c).is_some_and(|k| k.is_sidecar()))
                        .collect();
                    let mut names: Vec<String> =
                        running.iter().map(|c| self.name_of(machine, *c)).collect();
                    names.sort();
                    for name in names {
                        self.emit(
                            Some(&name),
                            EventType::Normal,
                            "Killing",
                            format!("Stopping container {name}"),
                        );
                    }
                    for c in running {
                        self.stop_container(machine, c, grace);
                    }
                    if !self.stop_deadline_set {
                        self.stop_deadline_set = true;
                        let tx = tx.clone();
                        crate::spawn(async move {
                            tokio::time::sleep(grace.saturating_add(Duration::from_secs(5))).await;
                            let _ = tx.send(Event::StopDeadline);
                        });
                    }
                }
            }
        }
        self.report(machine);
    }

    /// Stops a running container within `grace`: its preStop hook first,
    /// if it has one, then the stop signal with what is left of the grace
    /// period (at least 2 s, as the kubelet's).
    fn stop_container(&mut self, machine: &PodMachine, c: ContainerRef, grace: Duration) {
        // A stop under way (its preStop hook running) is not made twice.
        let Some(stop) = self.running.get_mut(&c).filter(|s| !s.requested()) else {
            return;
        };
        let hook = machine
            .container(c)
            .and_then(|k| k.lifecycle.pre_stop.clone());
        let container_id = machine.container_id(c).unwrap_or_default().to_string();
        let (Some(hook), false, false) = (hook, grace.is_zero(), container_id.is_empty()) else {
            stop.stop(grace);
            return;
        };
        let mut stop = stop.take();
        let runtime = self.runtime.clone();
        let pod_ip = machine.status().pod_ip.clone().unwrap_or_default();
        let (pod, name) = (self.pod.clone(), self.name_of(machine, c));
        crate::spawn(
            async move {
                let started = tokio::time::Instant::now();
                let run = probe::run_hook(&hook, runtime.as_ref(), &container_id, &pod_ip, grace);
                match tokio::time::timeout(grace, run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(container = %name, error = %hook_failure(&hook, &name, &pod.spec, &e), "preStop hook failed");
                        pod.events.emit(
                            &pod.spec,
                            Some(&name),
                            EventType::Warning,
                            "FailedPreStopHook",
                            "PreStopHook failed".into(),
                        );
                    }
                    Err(_) => info!(container = %name, "preStop hook did not complete in the grace period"),
                }
                stop.stop(grace_after_hook(grace, started.elapsed()));
            }
            .in_current_span(),
        );
    }

    /// Sends the status if it changed since the last report.
    fn report(&mut self, machine: &PodMachine) {
        let status = machine.status();
        if self.last_reported.as_ref() == Some(status) {
            return;
        }
        self.last_reported = Some(status.clone());
        let _ = self.reports.send(Report::Status {
            key: self.key.clone(),
            status: status.clone(),
        });
    }
}

/// How long a postStart hook may run: the kubelet gives it no limit; a
/// stop of the pod ends the wait (`Supervisor::stopping`).
const UNBOUNDED_HOOK: Duration = Duration::from_secs(24 * 3600);

/// The grace period left for the stop signal after a preStop hook ran for
/// `spent`: the kubelet's, never under 2 s.
fn grace_after_hook(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(Duration::from_secs(2))
}

/// A failed hook's message, as the kubelet words it.
fn hook_failure(hook: &Hook, container: &str, spec: &PodSpec, error: &str) -> String {
    let pod = format!("{}_{}({})", spec.name, spec.namespace, spec.uid);
    let (kind, command) = match hook {
        Hook::Run(ProbeHandler::Exec { command }) => ("Exec", format!(" ({command:?})")),
        Hook::Run(_) => ("HTTP", String::new()),
        Hook::Sleep { .. } => ("Sleep", String::new()),
    };
    format!(
        "{kind} lifecycle hook{command} for Container {container:?} in Pod {pod:?} failed - error: {error}"
    )
}

/// The pod's address for env status fields: the runtime's once its sandbox
/// exists, else the one the status shows (the node's for host-network and
/// Wasm pods). A container pod whose sandbox could not be made yet needs it
/// made first when this container reads `status.podIP`: the start would
/// retry it anyway.
async fn pod_ip(
    runtime: &dyn Runtime,
    pod: &PodContext,
    container: &Container,
    known: Option<String>,
) -> Option<String> {
    if let Some(ip) = runtime.pod_ip(pod) {
        return Some(ip);
    }
    let needs = container
        .env
        .iter()
        .any(|e| matches!(e.field, Some(StatusField::PodIp | StatusField::PodIps)));
    let own_network = pod.spec.runtime == RuntimeKind::Container && !pod.spec.host_network;
    if known.is_none() && needs && own_network && runtime.prepare_pod(pod).await.is_ok() {
        return runtime.pod_ip(pod);
    }
    known
}

/// The containers that would start first (init 0, or every app container).
fn first_containers(machine: &PodMachine) -> Vec<ContainerRef> {
    let spec = machine.spec();
    if spec.init_containers.is_empty() {
        (0..spec.containers.len())
            .map(|index| ContainerRef { init: false, index })
            .collect()
    } else {
        vec![ContainerRef {
            init: true,
            index: 0,
        }]
    }
}

/// Measures `pod`: the emptyDirs `volumes` names, the logs of every
/// container of its spec, and the writable layers of `running` (name,
/// container id) as the runtime reports them (none when it cannot say).
async fn measure_pod(
    pod: &PodContext,
    runtime: &dyn Runtime,
    volumes: Vec<String>,
    running: Vec<(String, String)>,
) -> PodStorage {
    let ids: Vec<String> = running.iter().map(|(_, id)| id.clone()).collect();
    let layers = match runtime.writable_layers(ids).await {
        Ok(layers) => layers,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the containers' writable layers");
            Vec::new()
        }
    };
    let pod_dir = pod.pod_dir.clone();
    let names: Vec<String> = pod
        .spec
        .init_containers
        .iter()
        .chain(&pod.spec.containers)
        .map(|c| c.name.clone())
        .collect();
    let walked = tokio::task::spawn_blocking(move || {
        let volumes: Vec<(String, u64)> = volumes
            .into_iter()
            .map(|v| {
                let used = crate::runtime::disk_usage::dir_usage(&pod_dir.join("volumes").join(&v));
                (v, used)
            })
            .collect();
        let logs: Vec<(String, u64)> = names
            .into_iter()
            .map(|n| {
                let used = crate::runtime::disk_usage::dir_usage(
                    &crate::runtime::logs::container_log_dir(&pod_dir, &n),
                );
                (n, used)
            })
            .collect();
        (volumes, logs)
    })
    .await;
    let Ok((volumes, logs)) = walked else {
        return PodStorage::default();
    };
    let containers = logs
        .into_iter()
        .map(|(name, log_bytes)| {
            let writable_layer_bytes = running
                .iter()
                .filter(|(n, _)| *n == name)
                .filter_map(|(_, id)| layers.iter().find(|(l, _)| l == id))
                .map(|(_, b)| *b)
                .sum();
            ContainerStorage {
                name,
                writable_layer_bytes,
                log_bytes,
            }
        })
        .collect();
    PodStorage {
        volumes,
        containers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stop signal gets what the preStop hook left of the grace period,
    /// never under the kubelet's 2 s.
    #[test]
    fn the_grace_period_counts_the_pre_stop_hook() {
        let s = Duration::from_secs;
        assert_eq!(grace_after_hook(s(30), s(10)), s(20));
        assert_eq!(grace_after_hook(s(30), s(29)), s(2));
        assert_eq!(grace_after_hook(s(30), s(45)), s(2));
    }

    #[test]
    fn hook_failures_read_like_the_kubelets() {
        let spec = crate::model::samples::spec("web", "u1", 1, crate::model::RestartPolicy::Always);
        let exec = Hook::Run(ProbeHandler::Exec {
            command: vec!["false".into()],
        });
        assert_eq!(
            hook_failure(&exec, "app", &spec, "command [\"false\"] exited with 1: "),
            "Exec lifecycle hook ([\"false\"]) for Container \"app\" in Pod \"web_default(u1)\" failed - error: command [\"false\"] exited with 1: "
        );
    }
}
