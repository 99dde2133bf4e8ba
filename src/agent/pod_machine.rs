//! The life of one pod as a state machine without I/O: given what happened
//! to its containers, what to do next and what its status reads.
//!
//! The supervisor (`agent::supervisor`) feeds it events and carries out the
//! actions it returns; everything here is plain data and unit-tested with
//! made-up clocks. Time is an argument (`Now`): durations are measured on a
//! monotonic clock, since a device without a real-time clock steps its
//! wall clock at boot (NTP); wall time is only shown (start and finish
//! times, transition times). Semantics follow the kubelet:
//! - init containers run one at a time, in order, each to success; a native
//!   sidecar (an init container with `restartPolicy: Always`) only has to
//!   have *started* (its startup probe passed, or it runs and has none)
//!   before the next one starts, and it keeps running: restarted whatever
//!   the pod's policy, probed like an app container, counted in the pod's
//!   readiness;
//! - app containers start together once every init container succeeded
//!   (or, a sidecar, started);
//! - `restartPolicy` decides restarts; the first restart is immediate, later
//!   ones wait `initial`, doubling to `max` (CrashLoopBackOff), and a
//!   container that ran `reset_after` starts its back-off afresh;
//! - the phase is computed as the kubelet's `getPhase` does;
//! - Succeeded and Failed are terminal: nothing moves a pod out of them;
//! - sidecars stop last: when the pod is deleted, after its app containers
//!   (and regular init containers), one at a time in reverse order, with
//!   what is left of the grace period; when the app containers of a
//!   `Never`/`OnFailure` pod have all ended (or its init failed for good),
//!   they are stopped the same way and the pod's phase follows.

use std::time::Duration;

use super::probe::{ProbeKind, Tracker};
use crate::model::{
    Container, ContainerState, ContainerStatus, PodCondition, PodConditionType, PodPhase, PodSpec,
    PodStatus, RestartPolicy, RuntimeKind,
};

/// A moment, as the machine is told it: both clocks, read once by the
/// caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch: shown in the status, never
    /// subtracted (it can step back or forward).
    pub wall_ms: u64,
    /// Time since a monotonic origin of the caller's (the supervisor's
    /// start): only differences mean anything, and they are the durations.
    pub monotonic: Duration,
}

/// Restart back-off limits (configurable so tests need not wait minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl BackoffPolicy {
    /// The delay before restart number `level` (0 = first restart).
    pub fn delay(&self, level: u32) -> Duration {
        if level == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(level - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Which container: an init container or an app container, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub init: bool,
    pub index: usize,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, …; derived from the code when None.
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// How long an evicted pod's containers get to stop: the kubelet's
/// `immediateEvictionGracePeriodSeconds`.
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// What the supervisor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start this container now.
    Start(ContainerRef),
    /// Call `on_timer(c)` after this delay (a back-off).
    WakeAfter(ContainerRef, Duration),
    /// Stop every running container but the sidecars (those follow, one
    /// by one, `StopSidecar`), giving it this long to exit.
    StopAll { grace: Duration },
    /// Kill this container (a liveness or startup probe failed); its exit
    /// then follows the restart policy.
    Kill(ContainerRef, Duration),
    /// Stop this sidecar within this grace period: the pod is stopping (or
    /// its app containers have ended) and every container after it has
    /// exited. It is not restarted.
    StopSidecar(ContainerRef, Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Running init container `n`.
    Init(usize),
    Main,
    /// The app containers have ended for good (or the init failed): the
    /// sidecars are being stopped before the phase turns terminal.
    Ending,
    Terminating,
    /// Terminal phase reached, or stopped after termination.
    Done,
}

#[derive(Debug, Clone)]
struct Slot {
    status: ContainerStatus,
    /// Back-off level: how many restarts since the back-off last reset.
    level: u32,
    /// When the current run started: shown (wall clock) and measured from
    /// (monotonic clock).
    started: Option<Now>,
    /// A restart is scheduled (waiting out back-off, or about to start).
    restart_pending: bool,
    /// Counts as restarted once the next start succeeds.
    has_run: bool,
    /// Probe results of the current run (None: the container has no such probe).
    startup: Option<Tracker>,
    liveness: Option<Tracker>,
    readiness: Option<Tracker>,
    /// An init container with `restartPolicy: Always`.
    sidecar: bool,
}

/// One pod's state machine.
#[derive(Debug, Clone)]
pub struct PodMachine {
    spec: PodSpec,
    policy: BackoffPolicy,
    stage: Stage,
    init: Vec<Slot>,
    main: Vec<Slot>,
    status: PodStatus,
    /// An app container has been started: the pod has initialized (a
    /// sidecar restarting later does not take that back).
    initialized: bool,
    /// When the sidecars' stop sequence began, and the grace period it
    /// shares (`Terminating`, `Ending`).
    stopping: Option<(Now, Duration)>,
}

fn slot(c: &Container, waiting_reason: &str) -> Slot {
    Slot {
        status: ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: String::new(),
            container_id: String::new(),
            ready: false,
            started: false,
            restart_count: 0,
            state: ContainerState::Waiting {
                reason: waiting_reason.into(),
                message: None,
            },
            last_state: None,
        },
        level: 0,
        started: None,
        restart_pending: false,
        has_run: false,
        startup: None,
        liveness: None,
        readiness: None,
        sidecar: c.is_sidecar(),
    }
}

fn exit_reason(exit: &Exit) -> String {
    exit.reason.clone().unwrap_or_else(|| {
        if exit.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        }
    })
}

impl PodMachine {
    pub fn new(spec: PodSpec, policy: BackoffPolicy, host_ip: Option<String>) -> Self {
        let has_init = !spec.init_containers.is_empty();
        let main_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let init = spec
            .init_containers
            .iter()
            .map(|c| slot(c, "PodInitializing"))
            .collect();
        let main = spec
            .containers
            .iter()
            .map(|c| slot(c, main_reason))
            .collect();
        let status = PodStatus {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            observed_generation: spec.generation,
            phase: PodPhase::Pending,
            conditions: Vec::new(),
            reason: None,
            message: None,
            start_time_ms: None,
            host_ip: host_ip.clone(),
            // Wasm modules use the node's network stack, like hostNetwork
            // pods: both report the node's address as their own.
            pod_ip: if spec.host_network || spec.runtime == RuntimeKind::Wasm {
                host_ip
            } else {
                None
            },
            init_container_statuses: Vec::new(),
            container_statuses: Vec::new(),
        };
        let mut machine = PodMachine {
            spec,
            policy,
            stage: Stage::Init(0),
            init,
            main,
            status,
            initialized: false,
            stopping: None,
        };
        machine.status.init_container_statuses =
            machine.init.iter().map(|s| s.status.clone()).collect();
        machine.status.container_statuses = machine.main.iter().map(|s| s.status.clone()).collect();
        machine
    }

    /// Carries restart counts over from a status saved before the agent
    /// restarted, so a pod that comes back keeps its history.
    pub fn carry_over(&mut self, previous: &PodStatus) {
        if previous.uid != self.spec.uid {
            return;
        }
        for (slots, prev) in [
            (&mut self.init, &previous.init_container_statuses),
            (&mut self.main, &previous.container_statuses),
        ] {
            for s in slots.iter_mut() {
                if let Some(p) = prev.iter().find(|p| p.name == s.status.name) {
                    s.status.restart_count = p.restart_count;
                    s.status.last_state = p.last_state.clone();
                    s.level = p.restart_count.min(16);
                    s.has_run =
                        p.restart_count > 0 || !matches!(p.state, ContainerState::Waiting { .. });
                }
            }
        }
        self.status.start_time_ms = previous.start_time_ms;
    }

    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn status(&self) -> &PodStatus {
        &self.status
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    pub fn is_terminating(&self) -> bool {
        self.stage == Stage::Terminating
    }

    /// Terminating, or stopping its sidecars after its app containers
    /// ended: a container that starts now is stopped at once.
    pub fn is_stopping(&self) -> bool {
        matches!(self.stage, Stage::Terminating | Stage::Ending)
    }

    /// The container spec for a reference.
    pub fn container(&self, c: ContainerRef) -> Option<&Container> {
        if c.init {
            self.spec.init_containers.get(c.index)
        } else {
            self.spec.containers.get(c.index)
        }
    }

    /// The id of the container's current (or last) run, once it started.
    pub fn container_id(&self, c: ContainerRef) -> Option<&str> {
        let slot = if c.init {
            self.init.get(c.index)
        } else {
            self.main.get(c.index)
        };
        slot.map(|s| s.status.container_id.as_str())
            .filter(|id| !id.is_empty())
    }

    /// The container's restart count: its current run's number.
    pub fn restart_count(&self, c: ContainerRef) -> u32 {
        let slot = if c.init {
            self.init.get(c.index)
        } else {
            self.main.get(c.index)
        };
        slot.map_or(0, |s| s.status.restart_count)
    }

    /// The number of the next run of a container (names its log file):
    /// 0 for the first run, then its restart count.
    pub fn next_run_number(&self, c: ContainerRef) -> u32 {
        let slot = if c.init {
            self.init.get(c.index)
        } else {
            self.main.get(c.index)
        };
        match slot {
            Some(s) if s.has_run => s.status.restart_count + 1,
            Some(s) => s.status.restart_count,
            None => 0,
        }
    }

    fn slot_mut(&mut self, c: ContainerRef) -> Option<&mut Slot> {
        if c.init {
            self.init.get_mut(c.index)
        } else {
            self.main.get_mut(c.index)
        }
    }

    /// Begins the pod.
    pub fn start(&mut self, now: Now) -> Vec<Action> {
        if self.status.start_time_ms.is_none() {
            self.status.start_time_ms = Some(now.wall_ms);
        }
        let actions = if self.init.is_empty() {
            self.enter_main()
        } else {
            self.stage = Stage::Init(0);
            self.init[0].status.state = ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
            vec![Action::Start(ContainerRef {
                init: true,
                index: 0,
            })]
        };
        self.refresh(now);
        actions
    }

    /// Restores a pod whose saved status is terminal (after an agent
    /// restart): it stays as it was and runs nothing.
    pub fn restore_terminal(&mut self, previous: PodStatus) {
        self.status = previous;
        self.stage = Stage::Done;
    }

    /// Init container `index` is done (a regular one succeeded, a sidecar
    /// started): the next one starts, or the app containers.
    fn after_init(&mut self, index: usize) -> Vec<Action> {
        let next = index + 1;
        if next >= self.init.len() {
            return self.enter_main();
        }
        self.stage = Stage::Init(next);
        self.init[next].status.state = ContainerState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        vec![Action::Start(ContainerRef {
            init: true,
            index: next,
        })]
    }

    /// Whether `c` is a sidecar.
    fn is_sidecar(&self, c: ContainerRef) -> bool {
        c.init && self.init.get(c.index).is_some_and(|s| s.sidecar)
    }

    /// Whether `c` is an init container that runs to completion.
    pub fn is_regular_init(&self, c: ContainerRef) -> bool {
        c.init && !self.is_sidecar(c)
    }

    fn enter_main(&mut self) -> Vec<Action> {
        self.stage = Stage::Main;
        self.initialized = true;
        let mut actions = Vec::new();
        for (index, s) in self.main.iter_mut().enumerate() {
            s.status.state = ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
            actions.push(Action::Start(ContainerRef { init: false, index }));
        }
        if actions.is_empty() {
            // A pod without app containers has nothing to run.
            self.stage = Stage::Done;
        }
        actions
    }

    /// The runtime started a container.
    pub fn on_started(
        &mut self,
        c: ContainerRef,
        container_id: String,
        image_id: String,
        now: Now,
    ) -> Vec<Action> {
        if matches!(self.stage, Stage::Done) {
            return Vec::new();
        }
        let regular_init = self.is_regular_init(c);
        let probes = self
            .container(c)
            .map(|k| {
                (
                    k.startup_probe.as_ref().map(Tracker::new),
                    k.liveness_probe.as_ref().map(Tracker::new),
                    k.readiness_probe.as_ref().map(Tracker::new),
                )
            })
            .unwrap_or((None, None, None));
        if let Some(s) = self.slot_mut(c) {
            if s.has_run {
                s.status.restart_count += 1;
            }
            (s.startup, s.liveness, s.readiness) = probes;
            s.has_run = true;
            s.restart_pending = false;
            s.started = Some(now);
            s.status.container_id = container_id;
            s.status.image_id = image_id;
            // A startup probe holds `started` (and readiness) back; without
            // a readiness probe, running (and started) means ready.
            s.status.started = s.startup.is_none();
            s.status.ready = !regular_init && s.startup.is_none() && s.readiness.is_none();
            s.status.state = ContainerState::Running {
                started_at_ms: now.wall_ms,
            };
        }
        let actions = self.sidecar_started(c);
        self.refresh(now);
        actions
    }

    /// A sidecar that has started lets the next init container start, if
    /// it is the one the pod was waiting for.
    fn sidecar_started(&mut self, c: ContainerRef) -> Vec<Action> {
        let started = self
            .init
            .get(c.index)
            .is_some_and(|s| s.sidecar && s.status.started);
        if c.init && started && self.stage == Stage::Init(c.index) {
            self.after_init(c.index)
        } else {
            Vec::new()
        }
    }

    /// The runtime found this container already running (or exited) from
    /// before an agent restart: it is this container's current run, so the
    /// restart count stays as it was.
    pub fn on_adopted(
        &mut self,
        c: ContainerRef,
        container_id: String,
        image_id: String,
        now: Now,
    ) -> Vec<Action> {
        if let Some(s) = self.slot_mut(c) {
            s.has_run = false;
        }
        self.on_started(c, container_id, image_id, now)
    }

    /// A probe of container `c` gave a result. `container_id` names the
    /// run it was for; results for an earlier run are ignored.
    pub fn on_probe(
        &mut self,
        c: ContainerRef,
        container_id: &str,
        kind: ProbeKind,
        success: bool,
        now: Now,
    ) -> Vec<Action> {
        if matches!(self.stage, Stage::Done | Stage::Terminating | Stage::Ending) {
            return Vec::new();
        }
        let grace = Duration::from_secs(self.spec.termination_grace_period_secs);
        let regular_init = self.is_regular_init(c);
        let Some(s) = self.slot_mut(c) else {
            return Vec::new();
        };
        if s.status.container_id != container_id
            || !matches!(s.status.state, ContainerState::Running { .. })
        {
            return Vec::new();
        }
        let started = s.startup.as_ref().is_none_or(|t| t.state() == Some(true));
        let mut actions = Vec::new();
        match kind {
            ProbeKind::Startup => match s.startup.as_mut().and_then(|t| t.record(success)) {
                Some(true) => {
                    s.status.started = true;
                    s.status.ready = !regular_init && s.readiness.is_none();
                }
                Some(false) if !started => actions.push(Action::Kill(c, grace)),
                _ => {}
            },
            ProbeKind::Liveness
                if started
                    && s.liveness.as_mut().and_then(|t| t.record(success)) == Some(false) =>
            {
                actions.push(Action::Kill(c, grace));
            }
            ProbeKind::Readiness if started => {
                if let Some(ready) = s.readiness.as_mut().and_then(|t| t.record(success)) {
                    s.status.ready = ready && !regular_init;
                }
            }
            _ => {}
        }
        if kind == ProbeKind::Startup {
            actions.extend(self.sidecar_started(c));
        }
        self.refresh(now);
        actions
    }

    /// The pod's own address, known once its sandbox exists.
    pub fn set_pod_ip(&mut self, ip: Option<String>) {
        if ip.is_some() {
            self.status.pod_ip = ip;
        }
    }

    /// The runtime could not create or start a container (bad image, bad
    /// module, missing volume …). `reason` reads like the kubelet's
    /// (`ErrImagePull`, `CreateContainerError`, …). It is retried with
    /// back-off, and the reason stays on the container while it waits.
    pub fn on_start_failed(
        &mut self,
        c: ContainerRef,
        reason: &str,
        message: String,
        now: Now,
    ) -> Vec<Action> {
        if matches!(self.stage, Stage::Done | Stage::Terminating | Stage::Ending) {
            return Vec::new();
        }
        let policy = self.policy;
        let mut actions = Vec::new();
        let image = self
            .container(c)
            .map(|k| k.image.clone())
            .unwrap_or_default();
        if let Some(s) = self.slot_mut(c) {
            // A pull that failed again while backing off reads like the
            // kubelet's: ImagePullBackOff, naming the image and the cause.
            let again = matches!(&s.status.state, ContainerState::Waiting { reason: r, .. }
                if r == "ErrImagePull" || r == "ImagePullBackOff");
            let (reason, message) = if reason == "ErrImagePull" && again {
                (
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\": {message}"),
                )
            } else {
                (reason, message)
            };
            s.level = s.level.saturating_add(1);
            let delay = policy.delay(s.level).max(policy.initial.min(policy.max));
            s.restart_pending = true;
            s.status.ready = false;
            s.status.started = false;
            let message = Some(message);
            s.status.state = ContainerState::Waiting {
                reason: reason.into(),
                message: message.clone(),
            };
            actions.push(Action::WakeAfter(c, delay));
        }
        self.refresh(now);
        actions
    }

    /// A container exited.
    pub fn on_exited(&mut self, c: ContainerRef, exit: Exit, now: Now) -> Vec<Action> {
        let policy = self.policy;
        let restart_policy = self.spec.restart_policy;
        let stage = self.stage;
        let sidecar = self.is_sidecar(c);
        let pod_label = format!(
            "{}_{}({})",
            self.spec.name, self.spec.namespace, self.spec.uid
        );
        let Some(s) = self.slot_mut(c) else {
            return Vec::new();
        };
        let started = s.started.take().unwrap_or(now);
        let reason = exit_reason(&exit);
        let terminated = ContainerState::Terminated {
            exit_code: exit.exit_code,
            reason,
            message: exit.message.clone(),
            started_at_ms: started.wall_ms,
            finished_at_ms: now.wall_ms,
        };
        s.status.ready = false;
        s.status.started = false;
        s.status.state = terminated.clone();
        if matches!(stage, Stage::Terminating | Stage::Ending | Stage::Done) {
            // Stopping: the next sidecar in line, once the others are gone.
            let actions = self.next_sidecar_stop(now);
            self.refresh(now);
            if stage == Stage::Ending && self.status.phase.is_terminal() {
                self.stage = Stage::Done;
            }
            return actions;
        }
        let ran_for = now.monotonic.saturating_sub(started.monotonic);
        if ran_for >= policy.reset_after {
            s.level = 0;
        }
        let succeeded = exit.exit_code == 0;
        let restart = if sidecar {
            true
        } else if c.init {
            !succeeded && restart_policy != RestartPolicy::Never
        } else {
            match restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !succeeded,
                RestartPolicy::Never => false,
            }
        };
        let mut actions = Vec::new();
        if restart {
            let delay = policy.delay(s.level);
            s.level = s.level.saturating_add(1);
            s.restart_pending = true;
            s.status.last_state = Some(terminated);
            if delay.is_zero() {
                actions.push(Action::Start(c));
            } else {
                s.status.state = ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {} restarting failed container={} pod={pod_label}",
                        humantime::format_duration(delay),
                        s.status.name
                    )),
                };
                actions.push(Action::WakeAfter(c, delay));
            }
        }
        if c.init && !sidecar && succeeded {
            actions.extend(self.after_init(c.index));
        }
        self.refresh(now);
        actions.extend(self.end_if_finished(now));
        actions
    }

    /// After an exit: a terminal phase ends the pod. App containers that
    /// have all ended for good (a `Never`/`OnFailure` pod), or an init
    /// that failed for good, stop the running sidecars first (`Ending`);
    /// the phase follows once they are gone.
    fn end_if_finished(&mut self, now: Now) -> Vec<Action> {
        let apps_done = self.spec.restart_policy != RestartPolicy::Always
            && self.initialized
            && self.main.iter().all(|s| {
                matches!(s.status.state, ContainerState::Terminated { .. }) && !s.restart_pending
            });
        let terminal = self.status.phase.is_terminal();
        if !terminal && !apps_done {
            return Vec::new();
        }
        let sidecar_runs = self
            .init
            .iter()
            .any(|s| s.sidecar && matches!(s.status.state, ContainerState::Running { .. }));
        if !sidecar_runs {
            if terminal {
                self.stage = Stage::Done;
            }
            return Vec::new();
        }
        self.stage = Stage::Ending;
        for s in self.init.iter_mut().filter(|s| s.sidecar) {
            s.restart_pending = false;
        }
        let grace = Duration::from_secs(self.spec.termination_grace_period_secs);
        self.stopping.get_or_insert((now, grace));
        self.next_sidecar_stop(now)
    }

    /// While the pod stops (`Terminating`, `Ending`): once no other
    /// container runs, the last running sidecar is stopped, with what is
    /// left of the grace period (the kubelet's order: app containers
    /// first, then sidecars in reverse order).
    fn next_sidecar_stop(&self, now: Now) -> Vec<Action> {
        let Some((since, grace)) = self.stopping else {
            return Vec::new();
        };
        let running = |s: &Slot| matches!(s.status.state, ContainerState::Running { .. });
        let others_run = self
            .main
            .iter()
            .chain(self.init.iter().filter(|s| !s.sidecar))
            .any(running);
        let last = self.init.iter().rposition(|s| s.sidecar && running(s));
        match last {
            Some(index) if !others_run => {
                let spent = now.monotonic.saturating_sub(since.monotonic);
                vec![Action::StopSidecar(
                    ContainerRef { init: true, index },
                    grace.saturating_sub(spent),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A back-off wait ended.
    pub fn on_timer(&mut self, c: ContainerRef, _now: Now) -> Vec<Action> {
        if matches!(self.stage, Stage::Done | Stage::Terminating | Stage::Ending) {
            return Vec::new();
        }
        let Some(s) = self.slot_mut(c) else {
            return Vec::new();
        };
        if !s.restart_pending {
            return Vec::new();
        }
        vec![Action::Start(c)]
    }

    /// The pod is being deleted or replaced.
    pub fn stop(&mut self, now: Now) -> Vec<Action> {
        if matches!(self.stage, Stage::Terminating) {
            return Vec::new();
        }
        let was_done = self.stage == Stage::Done;
        self.stage = Stage::Terminating;
        for s in self.init.iter_mut().chain(self.main.iter_mut()) {
            s.restart_pending = false;
            s.status.ready = false;
        }
        self.refresh(now);
        if was_done {
            self.stage = Stage::Done;
            return Vec::new();
        }
        let grace = Duration::from_secs(self.spec.termination_grace_period_secs);
        self.stopping.get_or_insert((now, grace));
        let mut actions = vec![Action::StopAll { grace }];
        actions.extend(self.next_sidecar_stop(now));
        actions
    }

    /// The pod is evicted (`agent::eviction`: a local storage limit): its
    /// phase turns `Failed` at once with the reason `Evicted` and `message`,
    /// nothing restarts, and every running container is stopped within the
    /// kubelet's immediate eviction grace period (1 s), sidecars last; the
    /// machine is done once they are gone. A pod that is stopping or done
    /// already is left as it is.
    pub fn evict(&mut self, message: String, now: Now) -> Vec<Action> {
        if matches!(self.stage, Stage::Done | Stage::Terminating | Stage::Ending) {
            return Vec::new();
        }
        self.status.phase = PodPhase::Failed;
        self.status.reason = Some(super::eviction::REASON.into());
        self.status.message = Some(message);
        for s in self.init.iter_mut().chain(self.main.iter_mut()) {
            s.restart_pending = false;
            s.status.ready = false;
        }
        self.refresh(now);
        let running = self
            .init
            .iter()
            .chain(&self.main)
            .any(|s| matches!(s.status.state, ContainerState::Running { .. }));
        if !running {
            self.stage = Stage::Done;
            return Vec::new();
        }
        self.stage = Stage::Ending;
        let grace = EVICTION_GRACE;
        self.stopping = Some((now, grace));
        let mut actions = vec![Action::StopAll { grace }];
        actions.extend(self.next_sidecar_stop(now));
        actions
    }

    /// A newer generation that changes only what is updated in place
    /// (`agent::decide::Decision::UpdateInPlace`: labels, file volumes, env
    /// values read from ConfigMaps and Secrets): the containers keep
    /// running, the next start of one uses `spec`, and the status reports
    /// its generation.
    pub fn update_in_place(&mut self, spec: PodSpec) {
        self.status.observed_generation = spec.generation;
        self.spec = spec;
    }

    /// Every container has stopped after `stop`.
    pub fn on_stopped(&mut self, now: Now) {
        self.stage = Stage::Done;
        self.refresh(now);
    }

    /// Recomputes phase and conditions; call after every change.
    fn refresh(&mut self, now: Now) {
        self.status.init_container_statuses = self.init.iter().map(|s| s.status.clone()).collect();
        self.status.container_statuses = self.main.iter().map(|s| s.status.clone()).collect();
        let previous = self.status.phase;
        let phase = if previous.is_terminal() {
            previous
        } else {
            compute_phase(
                self.spec.restart_policy,
                &self.init,
                &self.main,
                self.initialized,
            )
        };
        self.status.phase = phase;

        // An init container is done when it succeeded, a sidecar when it
        // has started; once an app container has started, the pod stays
        // initialized (the kubelet's `GeneratePodInitializedCondition`).
        let incomplete_init: Vec<&str> = self
            .init
            .iter()
            .filter(|s| {
                if s.sidecar {
                    !s.status.started
                } else {
                    !matches!(
                        s.status.state,
                        ContainerState::Terminated { exit_code: 0, .. }
                    )
                }
            })
            .map(|s| s.status.name.as_str())
            .collect();
        // Sidecars' readiness counts for the pod's, as app containers'.
        let unready: Vec<&str> = self
            .init
            .iter()
            .filter(|s| s.sidecar)
            .chain(&self.main)
            .filter(|s| !s.status.ready)
            .map(|s| s.status.name.as_str())
            .collect();
        let initialized = self.initialized || incomplete_init.is_empty();
        let (ready_reason, ready_message) = if phase.is_terminal() {
            (Some("PodCompleted".to_string()), None)
        } else if unready.is_empty() {
            (None, None)
        } else {
            (
                Some("ContainersNotReady".to_string()),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        let ready = unready.is_empty() && !phase.is_terminal() && !self.main.is_empty();
        let init_message = (!initialized).then(|| {
            format!(
                "containers with incomplete status: [{}]",
                incomplete_init.join(" ")
            )
        });
        let init_reason = if phase.is_terminal() && initialized {
            Some("PodCompleted".to_string())
        } else {
            (!initialized).then(|| "ContainersNotInitialized".to_string())
        };
        self.set_condition(
            PodConditionType::Initialized,
            initialized,
            init_reason,
            init_message,
            now,
        );
        self.set_condition(
            PodConditionType::ContainersReady,
            ready,
            ready_reason.clone(),
            ready_message.clone(),
            now,
        );
        self.set_condition(
            PodConditionType::Ready,
            ready,
            ready_reason,
            ready_message,
            now,
        );
    }

    fn set_condition(
        &mut self,
        kind: PodConditionType,
        status: bool,
        reason: Option<String>,
        message: Option<String>,
        now: Now,
    ) {
        match self.status.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_ms = now.wall_ms;
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
            }
            None => self.status.conditions.push(PodCondition {
                kind,
                status,
                last_transition_ms: now.wall_ms,
                reason,
                message,
            }),
        }
    }
}

/// The kubelet's `getPhase`. `initialized`: an app container has started.
fn compute_phase(
    policy: RestartPolicy,
    init: &[Slot],
    main: &[Slot],
    initialized: bool,
) -> PodPhase {
    for s in init.iter().filter(|s| !s.sidecar) {
        match &s.status.state {
            ContainerState::Terminated { exit_code: 0, .. } => {}
            ContainerState::Terminated { .. } if policy == RestartPolicy::Never => {
                return PodPhase::Failed;
            }
            _ => return PodPhase::Pending,
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    // Sidecars: a running one counts as running; one that has not started
    // yet holds the pod in Pending until it has initialized; one that ended
    // (or waits to restart) does not count.
    let mut pending_sidecars = 0;
    for s in init.iter().filter(|s| s.sidecar) {
        match (&s.status.state, &s.status.last_state) {
            (ContainerState::Running { .. }, _) => {
                running += 1;
                if !s.status.started {
                    pending_sidecars += 1;
                }
            }
            (ContainerState::Terminated { .. }, _) | (ContainerState::Waiting { .. }, Some(_)) => {}
            (ContainerState::Waiting { .. }, None) => {
                pending_sidecars += 1;
                waiting += 1;
            }
        }
    }
    if pending_sidecars > 0 && !initialized {
        return PodPhase::Pending;
    }
    for s in main {
        match (&s.status.state, &s.status.last_state) {
            (ContainerState::Running { .. }, _) => running += 1,
            (ContainerState::Terminated { exit_code, .. }, _)
            | (
                ContainerState::Waiting { .. },
                Some(ContainerState::Terminated { exit_code, .. }),
            ) => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            (ContainerState::Waiting { .. }, _) => waiting += 1,
        }
    }
    if waiting > 0 {
        return PodPhase::Pending;
    }
    if running > 0 {
        return PodPhase::Running;
    }
    if stopped > 0 {
        if policy == RestartPolicy::Always {
            return PodPhase::Running;
        }
        if stopped == succeeded {
            return PodPhase::Succeeded;
        }
        if policy == RestartPolicy::Never {
            return PodPhase::Failed;
        }
        // OnFailure with a failed container: it is being restarted.
        return PodPhase::Running;
    }
    PodPhase::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(300),
        reset_after: Duration::from_secs(600),
    };

    fn container(name: &str) -> Container {
        crate::model::samples::container(name)
    }

    fn spec(init: &[&str], main: &[&str], policy: RestartPolicy) -> PodSpec {
        let mut s = crate::model::samples::spec("p", "u", 1, policy);
        s.termination_grace_period_secs = 7;
        s.init_containers = init.iter().map(|n| container(n)).collect();
        s.containers = main.iter().map(|n| container(n)).collect();
        s
    }

    const A: ContainerRef = ContainerRef {
        init: false,
        index: 0,
    };
    const B: ContainerRef = ContainerRef {
        init: false,
        index: 1,
    };
    const I0: ContainerRef = ContainerRef {
        init: true,
        index: 0,
    };
    const I1: ContainerRef = ContainerRef {
        init: true,
        index: 1,
    };

    fn exit(code: i32) -> Exit {
        Exit {
            exit_code: code,
            reason: None,
            message: None,
        }
    }

    /// Both clocks at `ms`: they agree unless a test says otherwise.
    fn at(ms: u64) -> Now {
        Now {
            wall_ms: ms,
            monotonic: Duration::from_millis(ms),
        }
    }

    fn cond(m: &PodMachine, kind: PodConditionType) -> bool {
        m.status()
            .condition(kind)
            .map(|c| c.status)
            .unwrap_or(false)
    }

    #[test]
    fn back_off_doubles_to_the_cap() {
        let d: Vec<u64> = (0..8).map(|l| POLICY.delay(l).as_secs()).collect();
        assert_eq!(d, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(POLICY.delay(200), Duration::from_secs(300));
    }

    #[test]
    fn run_to_completion_never() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Never), POLICY, None);
        assert_eq!(m.start(at(1000)), vec![Action::Start(A)]);
        assert_eq!(m.status().phase, PodPhase::Pending);
        assert_eq!(m.status().display_status(), "ContainerCreating");
        m.on_started(A, "c1".into(), "sha256:x".into(), at(1001));
        assert_eq!(m.status().phase, PodPhase::Running);
        assert!(cond(&m, PodConditionType::Ready));
        assert!(m.on_exited(A, exit(0), at(2000)).is_empty());
        assert_eq!(m.status().phase, PodPhase::Succeeded);
        assert!(m.is_done());
        assert_eq!(m.status().display_status(), "Completed");
        let ready = m
            .status()
            .condition(PodConditionType::Ready)
            .expect("ready");
        assert!(!ready.status);
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
        match &m.status().container_statuses[0].state {
            ContainerState::Terminated {
                exit_code,
                reason,
                started_at_ms,
                finished_at_ms,
                ..
            } => {
                assert_eq!((*exit_code, reason.as_str()), (0, "Completed"));
                assert_eq!((*started_at_ms, *finished_at_ms), (1001, 2000));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn failure_with_never_is_failed_with_exit_code() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Never), POLICY, None);
        m.start(at(0));
        m.on_started(A, "c".into(), "i".into(), at(1));
        m.on_exited(A, exit(3), at(2));
        assert_eq!(m.status().phase, PodPhase::Failed);
        assert_eq!(m.status().display_status(), "Error");
        // Terminal: a late event changes nothing.
        assert!(m.on_timer(A, at(5)).is_empty());
        assert!(m.on_exited(A, exit(0), at(6)).is_empty());
        assert_eq!(m.status().phase, PodPhase::Failed);
    }

    #[test]
    fn always_restarts_with_crash_loop_back_off() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        m.on_started(A, "c1".into(), "i".into(), at(10));
        // First crash: immediate restart.
        assert_eq!(m.on_exited(A, exit(1), at(20)), vec![Action::Start(A)]);
        m.on_started(A, "c2".into(), "i".into(), at(30));
        assert_eq!(m.status().container_statuses[0].restart_count, 1);
        // Second crash: back-off 10 s, CrashLoopBackOff, phase stays Running.
        assert_eq!(
            m.on_exited(A, exit(1), at(40)),
            vec![Action::WakeAfter(A, Duration::from_secs(10))]
        );
        assert_eq!(m.status().phase, PodPhase::Running);
        assert_eq!(m.status().display_status(), "CrashLoopBackOff");
        let c = &m.status().container_statuses[0];
        assert!(matches!(
            &c.last_state,
            Some(ContainerState::Terminated { exit_code: 1, .. })
        ));
        match &c.state {
            ContainerState::Waiting {
                message: Some(msg), ..
            } => {
                assert!(
                    msg.starts_with("back-off 10s restarting failed container=a pod=p_default(u)"),
                    "{msg}"
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.on_timer(A, at(10_040)), vec![Action::Start(A)]);
        m.on_started(A, "c3".into(), "i".into(), at(10_050));
        assert_eq!(m.status().container_statuses[0].restart_count, 2);
        // Third crash: 20 s.
        assert_eq!(
            m.on_exited(A, exit(1), at(10_060)),
            vec![Action::WakeAfter(A, Duration::from_secs(20))]
        );
    }

    #[test]
    fn long_run_resets_back_off() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        m.on_started(A, "c".into(), "i".into(), at(0));
        m.on_exited(A, exit(1), at(1));
        m.on_started(A, "c".into(), "i".into(), at(2));
        m.on_exited(A, exit(1), at(3));
        m.on_timer(A, at(10_003));
        m.on_started(A, "c".into(), "i".into(), at(10_003));
        // Ran for more than reset_after: back to an immediate restart.
        assert_eq!(
            m.on_exited(A, exit(1), at(10_003 + 600_000)),
            vec![Action::Start(A)]
        );
    }

    const HOUR_MS: u64 = 3_600_000;

    /// The wall clock at `wall_ms`, the monotonic one at `mono_ms`.
    fn clocks(wall_ms: u64, mono_ms: u64) -> Now {
        Now {
            wall_ms,
            monotonic: Duration::from_millis(mono_ms),
        }
    }

    #[test]
    fn the_wall_clock_stepping_back_an_hour_leaves_the_back_off_alone() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        let t0 = 10 * HOUR_MS;
        m.start(clocks(t0, 0));
        m.on_started(A, "c1".into(), "i".into(), clocks(t0, 0));
        assert_eq!(
            m.on_exited(A, exit(1), clocks(t0 + 1_000, 1_000)),
            vec![Action::Start(A)]
        );
        m.on_started(A, "c2".into(), "i".into(), clocks(t0 + 1_000, 1_000));
        // NTP steps the clock back an hour while the container runs 2 s.
        let back = t0 - HOUR_MS;
        assert_eq!(
            m.on_exited(A, exit(1), clocks(back + 3_000, 3_000)),
            vec![Action::WakeAfter(A, Duration::from_secs(10))]
        );
        // What is shown is what the wall clock said.
        match &m.status().container_statuses[0].last_state {
            Some(ContainerState::Terminated {
                started_at_ms,
                finished_at_ms,
                ..
            }) => assert_eq!(
                (*started_at_ms, *finished_at_ms),
                (t0 + 1_000, back + 3_000)
            ),
            other => panic!("unexpected {other:?}"),
        }
        m.on_timer(A, clocks(back + 13_000, 13_000));
        m.on_started(A, "c3".into(), "i".into(), clocks(back + 13_000, 13_000));
        assert_eq!(
            m.on_exited(A, exit(1), clocks(back + 14_000, 14_000)),
            vec![Action::WakeAfter(A, Duration::from_secs(20))],
            "the back-off keeps doubling"
        );
        // Ten minutes of monotonic time reset it, whatever the wall clock
        // did meanwhile (here: another hour back, so it reads earlier than
        // the start).
        m.on_timer(A, clocks(back + 34_000, 34_000));
        m.on_started(A, "c4".into(), "i".into(), clocks(back + 34_000, 34_000));
        let ten_minutes_later = 34_000 + 600_000;
        assert_eq!(
            m.on_exited(
                A,
                exit(1),
                clocks(back - HOUR_MS + ten_minutes_later, ten_minutes_later)
            ),
            vec![Action::Start(A)]
        );
    }

    #[test]
    fn the_wall_clock_stepping_forward_does_not_reset_the_back_off() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        // A device without a real-time clock boots in 1970, then NTP
        // sets the date while the container crash-loops.
        m.start(clocks(0, 0));
        m.on_started(A, "c1".into(), "i".into(), clocks(0, 0));
        m.on_exited(A, exit(1), clocks(1_000, 1_000));
        m.on_started(A, "c2".into(), "i".into(), clocks(1_000, 1_000));
        let now = 20_000 * HOUR_MS;
        assert_eq!(
            m.on_exited(A, exit(1), clocks(now, 2_000)),
            vec![Action::WakeAfter(A, Duration::from_secs(10))],
            "one second of running is not ten minutes"
        );
    }

    #[test]
    fn on_failure_restarts_only_failures() {
        let mut m = PodMachine::new(
            spec(&[], &["a", "b"], RestartPolicy::OnFailure),
            POLICY,
            None,
        );
        assert_eq!(m.start(at(0)), vec![Action::Start(A), Action::Start(B)]);
        m.on_started(A, "a".into(), "i".into(), at(1));
        m.on_started(B, "b".into(), "i".into(), at(1));
        assert!(m.on_exited(A, exit(0), at(2)).is_empty());
        assert_eq!(m.status().phase, PodPhase::Running);
        assert_eq!(m.on_exited(B, exit(2), at(3)), vec![Action::Start(B)]);
        assert_eq!(m.status().phase, PodPhase::Running);
        m.on_started(B, "b2".into(), "i".into(), at(4));
        m.on_exited(B, exit(0), at(5));
        assert_eq!(m.status().phase, PodPhase::Succeeded);
    }

    #[test]
    fn init_containers_run_in_order_before_app_containers() {
        let mut m = PodMachine::new(
            spec(&["i0", "i1"], &["a"], RestartPolicy::Always),
            POLICY,
            None,
        );
        assert_eq!(m.start(at(0)), vec![Action::Start(I0)]);
        assert_eq!(m.status().display_status(), "Init:0/2");
        assert!(!cond(&m, PodConditionType::Initialized));
        m.on_started(I0, "i0".into(), "x".into(), at(1));
        assert_eq!(m.on_exited(I0, exit(0), at(2)), vec![Action::Start(I1)]);
        m.on_started(I1, "i1".into(), "x".into(), at(3));
        assert_eq!(m.status().display_status(), "Init:1/2");
        assert_eq!(m.on_exited(I1, exit(0), at(4)), vec![Action::Start(A)]);
        assert!(cond(&m, PodConditionType::Initialized));
        assert_eq!(m.status().phase, PodPhase::Pending);
        m.on_started(A, "a".into(), "x".into(), at(5));
        assert_eq!(m.status().phase, PodPhase::Running);
        assert!(cond(&m, PodConditionType::ContainersReady));
    }

    #[test]
    fn failing_init_container_retries_or_fails_the_pod() {
        let mut m = PodMachine::new(
            spec(&["i0"], &["a"], RestartPolicy::OnFailure),
            POLICY,
            None,
        );
        m.start(at(0));
        m.on_started(I0, "i0".into(), "x".into(), at(1));
        assert_eq!(m.on_exited(I0, exit(1), at(2)), vec![Action::Start(I0)]);
        assert_eq!(m.status().phase, PodPhase::Pending);

        let mut m = PodMachine::new(spec(&["i0"], &["a"], RestartPolicy::Never), POLICY, None);
        m.start(at(0));
        m.on_started(I0, "i0".into(), "x".into(), at(1));
        assert!(m.on_exited(I0, exit(1), at(2)).is_empty());
        assert_eq!(m.status().phase, PodPhase::Failed);
        assert_eq!(m.status().display_status(), "Init:Error");
        assert!(m.is_done());
    }

    #[test]
    fn start_failures_back_off_and_recover() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        let actions = m.on_start_failed(A, "ErrImagePull", "sha256 mismatch".into(), at(1));
        assert_eq!(actions, vec![Action::WakeAfter(A, Duration::from_secs(10))]);
        assert_eq!(m.status().display_status(), "ErrImagePull");
        assert_eq!(m.status().phase, PodPhase::Pending);
        assert_eq!(m.on_timer(A, at(10_001)), vec![Action::Start(A)]);
        m.on_started(A, "c".into(), "i".into(), at(10_002));
        assert_eq!(m.status().phase, PodPhase::Running);
        // A failed start is not a restart.
        assert_eq!(m.status().container_statuses[0].restart_count, 0);
    }

    #[test]
    fn stop_asks_for_the_grace_period_and_ends_done() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        m.on_started(A, "c".into(), "i".into(), at(1));
        assert_eq!(
            m.stop(at(2)),
            vec![Action::StopAll {
                grace: Duration::from_secs(7)
            }]
        );
        assert!(m.is_terminating());
        // Exits while terminating never restart.
        assert!(m.on_exited(A, exit(137), at(3)).is_empty());
        m.on_stopped(at(4));
        assert!(m.is_done());
        assert!(m.stop(at(5)).is_empty());
    }

    #[test]
    fn carried_over_restart_counts_continue() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        let mut prev = m.status().clone();
        prev.container_statuses = vec![ContainerStatus {
            restart_count: 4,
            state: ContainerState::Running { started_at_ms: 1 },
            ..m.status().container_statuses[0].clone()
        }];
        prev.start_time_ms = Some(42);
        m.carry_over(&prev);
        m.start(at(100));
        m.on_started(A, "c".into(), "i".into(), at(101));
        assert_eq!(m.status().container_statuses[0].restart_count, 5);
        assert_eq!(m.status().start_time_ms, Some(42));
    }

    #[test]
    fn conditions_transition_times_move_only_on_change() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        m.on_started(A, "c".into(), "i".into(), at(50));
        let t = m
            .status()
            .condition(PodConditionType::Ready)
            .expect("ready")
            .last_transition_ms;
        assert_eq!(t, 50);
        m.refresh(at(99));
        assert_eq!(
            m.status()
                .condition(PodConditionType::Ready)
                .expect("ready")
                .last_transition_ms,
            50
        );
    }

    fn probe(failure: u32) -> Probe {
        Probe {
            handler: ProbeHandler::Exec {
                command: vec!["true".into()],
            },
            initial_delay_secs: 0,
            period_secs: 1,
            timeout_secs: 1,
            success_threshold: 1,
            failure_threshold: failure,
        }
    }

    #[test]
    fn adopted_containers_keep_their_restart_count() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        let mut previous = m.status().clone();
        previous.container_statuses[0].restart_count = 2;
        previous.container_statuses[0].state = ContainerState::Running { started_at_ms: 5 };
        m.carry_over(&previous);
        m.start(at(1000));
        assert_eq!(
            m.next_run_number(A),
            3,
            "a new run would be the third restart"
        );
        m.on_adopted(A, "c1".into(), "sha256:x".into(), at(1001));
        assert_eq!(m.status().container_statuses[0].restart_count, 2);
        assert_eq!(m.status().phase, PodPhase::Running);
        // A later exit restarts it and counts as usual.
        m.on_exited(A, exit(1), at(2000));
        m.on_timer(A, at(60_000));
        m.on_started(A, "c2".into(), "sha256:x".into(), at(60_001));
        assert_eq!(m.status().container_statuses[0].restart_count, 3);
    }

    #[test]
    fn probes_gate_started_and_ready_and_kill_on_liveness_failure() {
        let mut s = spec(&[], &["a"], RestartPolicy::Always);
        s.containers[0].startup_probe = Some(probe(3));
        s.containers[0].readiness_probe = Some(probe(1));
        s.containers[0].liveness_probe = Some(probe(2));
        let mut m = PodMachine::new(s, POLICY, Some("10.0.0.9".into()));
        m.set_pod_ip(Some("10.88.0.4".into()));
        assert_eq!(m.status().pod_ip.as_deref(), Some("10.88.0.4"));
        m.start(at(0));
        m.on_started(A, "c1".into(), "i".into(), at(1));
        let st = |m: &PodMachine| {
            let c = &m.status().container_statuses[0];
            (c.started, c.ready)
        };
        assert_eq!(st(&m), (false, false), "startup probe pending");
        // Liveness and readiness wait for the startup probe.
        assert!(
            m.on_probe(A, "c1", ProbeKind::Liveness, false, at(2))
                .is_empty()
        );
        assert!(
            m.on_probe(A, "c1", ProbeKind::Liveness, false, at(3))
                .is_empty()
        );
        m.on_probe(A, "c1", ProbeKind::Readiness, true, at(3));
        assert_eq!(st(&m), (false, false));
        m.on_probe(A, "c1", ProbeKind::Startup, true, at(4));
        assert_eq!(st(&m), (true, false), "started, not yet ready");
        m.on_probe(A, "c1", ProbeKind::Readiness, true, at(5));
        assert_eq!(st(&m), (true, true));
        assert!(cond(&m, PodConditionType::Ready));
        m.on_probe(A, "c1", ProbeKind::Readiness, false, at(6));
        assert!(!cond(&m, PodConditionType::Ready));
        // Results for another run are ignored.
        assert!(
            m.on_probe(A, "old", ProbeKind::Liveness, false, at(7))
                .is_empty()
        );
        assert!(
            m.on_probe(A, "c1", ProbeKind::Liveness, false, at(8))
                .is_empty()
        );
        assert_eq!(
            m.on_probe(A, "c1", ProbeKind::Liveness, false, at(9)),
            vec![Action::Kill(A, Duration::from_secs(7))]
        );
    }

    #[test]
    fn a_failing_startup_probe_kills() {
        let mut s = spec(&[], &["a"], RestartPolicy::Always);
        s.containers[0].startup_probe = Some(probe(1));
        let mut m = PodMachine::new(s, POLICY, None);
        m.start(at(0));
        m.on_started(A, "c1".into(), "i".into(), at(1));
        assert_eq!(
            m.on_probe(A, "c1", ProbeKind::Startup, false, at(2)),
            vec![Action::Kill(A, Duration::from_secs(7))]
        );
    }

    #[test]
    fn repeated_pull_failures_read_image_pull_back_off() {
        let mut m = PodMachine::new(spec(&[], &["a"], RestartPolicy::Always), POLICY, None);
        m.start(at(0));
        m.on_start_failed(A, "ErrImagePull", "unauthorized".into(), at(1));
        let waiting = |m: &PodMachine| m.status().container_statuses[0].state.clone();
        assert_eq!(
            waiting(&m),
            ContainerState::Waiting {
                reason: "ErrImagePull".into(),
                message: Some("unauthorized".into())
            }
        );
        m.on_timer(A, at(20_000));
        m.on_start_failed(A, "ErrImagePull", "unauthorized".into(), at(20_001));
        assert_eq!(
            waiting(&m),
            ContainerState::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!(
                    "Back-off pulling image \"{}\": unauthorized",
                    container("a").image
                ))
            }
        );
        assert_eq!(m.status().display_status(), "ImagePullBackOff");
    }

    /// A pod with native sidecars (`restartPolicy: Always` on init
    /// containers `sidecars`).
    fn with_sidecars(
        init: &[&str],
        sidecars: &[usize],
        main: &[&str],
        policy: RestartPolicy,
    ) -> PodSpec {
        let mut s = spec(init, main, policy);
        for &i in sidecars {
            s.init_containers[i].restart_policy = Some(RestartPolicy::Always);
        }
        s
    }

    fn init_state(m: &PodMachine, i: usize) -> &ContainerStatus {
        &m.status().init_container_statuses[i]
    }

    /// The next init container starts once the sidecar before it has
    /// started, without waiting for it to end; the sidecar keeps running,
    /// restarts whatever the pod's policy, and its readiness is the pod's.
    #[test]
    fn a_sidecar_starts_the_next_init_container_and_keeps_running() {
        let s = with_sidecars(&["proxy", "setup"], &[0], &["a"], RestartPolicy::Never);
        let mut m = PodMachine::new(s, POLICY, None);
        assert_eq!(m.start(at(0)), vec![Action::Start(I0)]);
        assert_eq!(
            m.on_started(I0, "s1".into(), "i".into(), at(1)),
            vec![Action::Start(I1)]
        );
        assert_eq!(m.status().phase, PodPhase::Pending);
        assert!(!cond(&m, PodConditionType::Initialized));
        assert!(init_state(&m, 0).started && init_state(&m, 0).ready);
        assert!(m.on_started(I1, "i1".into(), "i".into(), at(2)).is_empty());
        assert_eq!(m.on_exited(I1, exit(0), at(3)), vec![Action::Start(A)]);
        m.on_started(A, "a1".into(), "i".into(), at(4));
        assert_eq!(m.status().phase, PodPhase::Running);
        assert!(cond(&m, PodConditionType::Initialized));
        assert!(cond(&m, PodConditionType::Ready));
        assert_eq!(m.status().display_status(), "Running");
        assert_eq!(
            m.status().ready_count(),
            (2, 2),
            "kubectl counts the sidecar"
        );
        // The sidecar ends (even successfully): restarted, although the
        // pod's policy is Never; the pod is not ready while it is down.
        assert_eq!(m.on_exited(I0, exit(0), at(5)), vec![Action::Start(I0)]);
        assert!(!cond(&m, PodConditionType::Ready));
        assert!(cond(&m, PodConditionType::Initialized), "stays initialized");
        assert_eq!(m.status().phase, PodPhase::Running);
        assert!(
            m.on_started(I0, "s2".into(), "i".into(), at(6)).is_empty(),
            "no init to start again"
        );
        assert_eq!(init_state(&m, 0).restart_count, 1);
        assert!(cond(&m, PodConditionType::Ready));
        // A second crash waits out the back-off.
        assert_eq!(
            m.on_exited(I0, exit(1), at(7)),
            vec![Action::WakeAfter(I0, Duration::from_secs(10))]
        );
    }

    /// A sidecar with a startup probe holds the next init container back
    /// until the probe passes; its readiness probe decides its readiness.
    #[test]
    fn a_sidecars_startup_probe_holds_the_next_init_container() {
        let mut s = with_sidecars(&["proxy"], &[0], &["a"], RestartPolicy::Always);
        s.init_containers[0].startup_probe = Some(probe(3));
        s.init_containers[0].readiness_probe = Some(probe(1));
        let mut m = PodMachine::new(s, POLICY, None);
        m.start(at(0));
        assert!(m.on_started(I0, "s1".into(), "i".into(), at(1)).is_empty());
        assert!(!init_state(&m, 0).started);
        assert_eq!(m.status().phase, PodPhase::Pending);
        // A readiness result before the start counts for nothing.
        m.on_probe(I0, "s1", ProbeKind::Readiness, true, at(2));
        assert!(!init_state(&m, 0).ready);
        assert_eq!(
            m.on_probe(I0, "s1", ProbeKind::Startup, true, at(3)),
            vec![Action::Start(A)]
        );
        m.on_started(A, "a1".into(), "i".into(), at(4));
        assert_eq!(m.status().phase, PodPhase::Running);
        assert!(
            !cond(&m, PodConditionType::Ready),
            "the sidecar is not ready yet"
        );
        m.on_probe(I0, "s1", ProbeKind::Readiness, true, at(5));
        assert!(cond(&m, PodConditionType::Ready));
        m.on_probe(I0, "s1", ProbeKind::Readiness, false, at(6));
        let ready = m
            .status()
            .condition(PodConditionType::Ready)
            .expect("ready");
        assert!(!ready.status);
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [proxy]")
        );
    }

    /// Deleting the pod stops its app containers first, then its sidecars
    /// one at a time in reverse order, with what is left of the grace
    /// period; none of them restarts.
    #[test]
    fn sidecars_stop_after_the_app_containers_in_reverse_order() {
        let s = with_sidecars(&["log", "proxy"], &[0, 1], &["a"], RestartPolicy::Always);
        let mut m = PodMachine::new(s, POLICY, None);
        m.start(at(0));
        m.on_started(I0, "s0".into(), "i".into(), at(1));
        m.on_started(I1, "s1".into(), "i".into(), at(2));
        m.on_started(A, "a1".into(), "i".into(), at(3));
        assert_eq!(
            m.stop(at(1_000)),
            vec![Action::StopAll {
                grace: Duration::from_secs(7)
            }]
        );
        assert_eq!(
            m.on_exited(A, exit(0), at(3_000)),
            vec![Action::StopSidecar(I1, Duration::from_secs(5))]
        );
        assert_eq!(
            m.on_exited(I1, exit(143), at(4_000)),
            vec![Action::StopSidecar(I0, Duration::from_secs(4))]
        );
        assert!(m.on_exited(I0, exit(143), at(4_500)).is_empty());
        assert!(m.on_timer(I0, at(5_000)).is_empty());
        m.on_stopped(at(4_600));
        assert!(m.is_done());
    }

    /// A pod that stops while only sidecars run (its init under way)
    /// stops the last one at once.
    #[test]
    fn a_pod_stopped_during_its_init_stops_its_sidecars() {
        let s = with_sidecars(
            &["log", "proxy", "setup"],
            &[0, 1],
            &["a"],
            RestartPolicy::Always,
        );
        let mut m = PodMachine::new(s, POLICY, None);
        m.start(at(0));
        m.on_started(I0, "s0".into(), "i".into(), at(1));
        m.on_started(I1, "s1".into(), "i".into(), at(2));
        assert_eq!(
            m.stop(at(10)),
            vec![
                Action::StopAll {
                    grace: Duration::from_secs(7)
                },
                Action::StopSidecar(I1, Duration::from_secs(7)),
            ]
        );
    }

    /// A Job's pod with a sidecar: once its app container has ended, the
    /// sidecar is stopped and the phase follows the app container's exit.
    #[test]
    fn a_job_with_a_sidecar_completes_when_its_app_container_ends() {
        for (code, phase) in [(0, PodPhase::Succeeded), (2, PodPhase::Failed)] {
            let s = with_sidecars(&["proxy"], &[0], &["job"], RestartPolicy::Never);
            let mut m = PodMachine::new(s, POLICY, None);
            m.start(at(0));
            assert_eq!(
                m.on_started(I0, "s1".into(), "i".into(), at(1)),
                vec![Action::Start(A)]
            );
            m.on_started(A, "j1".into(), "i".into(), at(2));
            assert_eq!(
                m.on_exited(A, exit(code), at(1_002)),
                vec![Action::StopSidecar(I0, Duration::from_secs(7))]
            );
            assert_eq!(
                m.status().phase,
                PodPhase::Running,
                "the sidecar still runs"
            );
            assert!(m.is_stopping() && !m.is_done());
            assert!(
                m.on_exited(I0, exit(143), at(1_500)).is_empty(),
                "not restarted"
            );
            assert_eq!(m.status().phase, phase, "exit {code}");
            assert!(m.is_done());
        }
    }

    /// An init container that fails for good (policy Never) fails the pod
    /// and stops the sidecar that runs before it.
    #[test]
    fn a_failed_init_stops_the_sidecars() {
        let s = with_sidecars(&["proxy", "setup"], &[0], &["a"], RestartPolicy::Never);
        let mut m = PodMachine::new(s, POLICY, None);
        m.start(at(0));
        m.on_started(I0, "s1".into(), "i".into(), at(1));
        m.on_started(I1, "i1".into(), "i".into(), at(2));
        assert_eq!(
            m.on_exited(I1, exit(1), at(3)),
            vec![Action::StopSidecar(I0, Duration::from_secs(7))]
        );
        assert_eq!(m.status().phase, PodPhase::Failed);
        assert!(m.on_exited(I0, exit(143), at(4)).is_empty());
        assert!(m.is_done());
        assert_eq!(m.status().phase, PodPhase::Failed);
    }
}
