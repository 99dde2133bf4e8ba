//! A fake runtime, named as one, for the controller's in-process tests
//! (`agent::controller_tests`): nothing runs; every container start follows
//! a script and every call is recorded. Compiled into test builds only.
//!
//! A container's start is the next scripted `Start` for its name, or
//! `Start::Run` once the script is used up. A running container ends when
//! its pod stops it (exit 137 for a kill, as a real runtime reports it) or
//! when the test calls `exit`.
//!
//! Every running container reports a fixed usage ([`FakeRuntime::USAGE`]),
//! the stats RPC's.
//!
//! `exec_sync` is a fake too, an echo: nothing runs. In a running container
//! it answers stdout = the command's words joined by spaces and a newline,
//! exit code 0; `exit N` exits with N (and echoes); `yes N` writes N bytes
//! of `y` to stdout and `N` bytes of `n` to stderr (for the exec RPC's
//! truncation). A container that is not running is an error.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    BoxFuture, ExitStatus, PodContext, RunningContainer, Runtime, RuntimeError, StopHandle,
    UsageMap,
};
use crate::model::{Container, ExecOutput, PodKey, Usage};

/// What the next start of a container does.
#[derive(Debug)]
pub enum Start {
    /// Starts and runs until stopped or `FakeRuntime::exit`.
    Run,
    /// Starts and exits at once with this code.
    Exit(i32),
    /// Starts as a container found from before an agent restart (adopted),
    /// then runs.
    Adopt,
    /// Fails to start with this error.
    Fail(RuntimeError),
}

/// One call the runtime received (or one exit it reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PreparePod {
        pod: PodKey,
        uid: String,
    },
    Start {
        pod: PodKey,
        uid: String,
        generation: u64,
        container: String,
        restart_count: u32,
        /// The container's env as it was started (`NAME=value`, expanded).
        env: Vec<String>,
    },
    Stop {
        pod: PodKey,
        container: String,
        grace: Duration,
    },
    Cleanup {
        pod: PodKey,
        uid: String,
    },
    /// `exec_sync` in a container (by id): a probe, a hook or the exec RPC.
    Exec {
        container_id: String,
        command: Vec<String>,
    },
}

/// The fake runtime. Shared (`Arc`) between the controller and the test.
#[derive(Default)]
pub struct FakeRuntime {
    /// Shared with the task of each running container that waits for its
    /// stop request.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, VecDeque<Start>>,
    calls: Vec<Call>,
    /// Running containers by id: their pod, name and how to end them.
    running: HashMap<String, Running>,
}

/// Container ids are unique in the process, as a runtime's are across
/// agent restarts.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Running {
    pod: PodKey,
    container: String,
    exit: oneshot::Sender<ExitStatus>,
}

impl FakeRuntime {
    /// What every running container reports as its usage.
    pub const USAGE: Usage = Usage {
        timestamp_ms: 1_000,
        cpu_core_ns: 2_000_000,
        memory_working_set_bytes: 3 << 20,
    };

    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Queues what the next starts of containers named `container` do.
    pub fn script(&self, container: &str, starts: impl IntoIterator<Item = Start>) {
        self.state()
            .scripts
            .entry(container.to_string())
            .or_default()
            .extend(starts);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The starts so far of containers named `container` in `pod`:
    /// (generation, restart count) each.
    pub fn starts_of(&self, pod: &PodKey, container: &str) -> Vec<(u64, u32)> {
        self.starts_matching(pod, container, |generation, restart_count, _| {
            (generation, restart_count)
        })
    }

    /// The env of each start so far of containers named `container` in
    /// `pod`.
    pub fn envs_of(&self, pod: &PodKey, container: &str) -> Vec<Vec<String>> {
        self.starts_matching(pod, container, |_, _, env| env)
    }

    /// `what` of each start so far of containers named `container` in
    /// `pod`, given its generation, restart count and env.
    fn starts_matching<T>(
        &self,
        pod: &PodKey,
        container: &str,
        what: impl Fn(u64, u32, Vec<String>) -> T,
    ) -> Vec<T> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start {
                    pod: p,
                    container: n,
                    generation,
                    restart_count,
                    env,
                    ..
                } if &p == pod && n == container => Some(what(generation, restart_count, env)),
                _ => None,
            })
            .collect()
    }

    /// The stops asked of containers in `pod`.
    pub fn stops_of(&self, pod: &PodKey) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Stop { pod: p, .. } if p == pod))
            .count()
    }

    /// How many containers run now.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// Ends the running container `container` of `pod` with `exit_code`;
    /// false if none runs.
    pub fn exit(&self, pod: &PodKey, container: &str, exit_code: i32) -> bool {
        let mut state = self.state();
        let Some(id) = state
            .running
            .iter()
            .find(|(_, r)| &r.pod == pod && r.container == container)
            .map(|(id, _)| id.clone())
        else {
            return false;
        };
        if let Some(r) = state.running.remove(&id) {
            let _ = r.exit.send(exit(exit_code));
        }
        true
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends a running container when its pod asks: recorded, and reported as
/// killed (137), at once whatever the grace period.
async fn stop_when_asked(
    state: Arc<Mutex<State>>,
    container_id: String,
    stop_rx: oneshot::Receiver<Duration>,
) {
    let Ok(grace) = stop_rx.await else {
        return;
    };
    let mut state = lock(&state);
    let Some(r) = state.running.remove(&container_id) else {
        return;
    };
    state.calls.push(Call::Stop {
        pod: r.pod,
        container: r.container,
        grace,
    });
    let _ = r.exit.send(exit(137));
}

fn exit(exit_code: i32) -> ExitStatus {
    ExitStatus {
        exit_code,
        reason: None,
        message: None,
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "fake://1".into()
    }

    fn prepare_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.state().calls.push(Call::PreparePod {
            pod: pod.spec.key(),
            uid: pod.spec.uid.clone(),
        });
        Box::pin(async { Ok(()) })
    }

    fn start_container<'a>(
        &'a self,
        pod: &'a PodContext,
        container: &'a Container,
        restart_count: u32,
    ) -> BoxFuture<'a, Result<RunningContainer, RuntimeError>> {
        let key = pod.spec.key();
        let mut state = self.state();
        state.calls.push(Call::Start {
            pod: key.clone(),
            uid: pod.spec.uid.clone(),
            generation: pod.spec.generation,
            container: container.name.clone(),
            restart_count,
            env: container
                .env
                .iter()
                .map(|e| format!("{}={}", e.name, e.value))
                .collect(),
        });
        let start = state
            .scripts
            .get_mut(&container.name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Start::Run);
        let adopted = matches!(start, Start::Adopt);
        let result = match start {
            Start::Fail(e) => Err(e),
            Start::Run | Start::Adopt | Start::Exit(_) => {
                let container_id = format!("fake-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
                let (exit_tx, exited) = oneshot::channel();
                let (stop, stop_rx) = StopHandle::new();
                if let Start::Exit(code) = start {
                    let _ = exit_tx.send(exit(code));
                } else {
                    state.running.insert(
                        container_id.clone(),
                        Running {
                            pod: key.clone(),
                            container: container.name.clone(),
                            exit: exit_tx,
                        },
                    );
                    crate::spawn(stop_when_asked(
                        self.state.clone(),
                        container_id.clone(),
                        stop_rx,
                    ));
                }
                Ok(RunningContainer {
                    container_id,
                    image_id: format!("fake://{}", container.image),
                    exited,
                    stop,
                    adopted,
                })
            }
        };
        Box::pin(async move { result })
    }

    fn cleanup_pod<'a>(&'a self, pod: &'a PodContext) -> BoxFuture<'a, ()> {
        self.state().calls.push(Call::Cleanup {
            pod: pod.spec.key(),
            uid: pod.spec.uid.clone(),
        });
        Box::pin(async {})
    }

    fn exec_sync<'a>(
        &'a self,
        container_id: &'a str,
        command: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, RuntimeError>> {
        let mut state = self.state();
        let running = state.running.contains_key(container_id);
        state.calls.push(Call::Exec {
            container_id: container_id.to_string(),
            command: command.to_vec(),
        });
        drop(state);
        Box::pin(async move {
            if !running {
                return Err(RuntimeError::Unavailable(format!(
                    "fake: container {container_id} is not running"
                )));
            }
            let word = |i: usize| command.get(i).map(String::as_str);
            let number = word(1).and_then(|n| n.parse::<usize>().ok());
            Ok(match (word(0), number) {
                (Some("yes"), Some(n)) => ExecOutput {
                    exit_code: 0,
                    stdout: vec![b'y'; n],
                    stderr: vec![b'n'; n],
                    truncated: false,
                },
                (first, n) => ExecOutput {
                    exit_code: match (first, n) {
                        (Some("exit"), Some(code)) => code as i32,
                        _ => 0,
                    },
                    stdout: format!("{}\n", command.join(" ")).into_bytes(),
                    stderr: Vec::new(),
                    truncated: false,
                },
            })
        })
    }

    fn container_usage(&self) -> BoxFuture<'_, Result<UsageMap, RuntimeError>> {
        let usage = self
            .state()
            .running
            .keys()
            .map(|id| (id.clone(), FakeRuntime::USAGE))
            .collect();
        Box::pin(async move { Ok(usage) })
    }
}
