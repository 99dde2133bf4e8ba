//! Serving the exec RPC (docs/wire.md, "Exec RPC"), its non-interactive
//! first slice: a command run to its end in a running container, its exit
//! code and output answered with exactly one `ExecReply`.
//!
//! Which container a request may run in is decided by a pure function
//! (`target`) from the pod's spec and its last status; the command runs in
//! a task of its own (`serve`), so a long command never holds up the agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::model::validate::{MAX_EXEC_OUTPUT, MAX_MESSAGE};
use crate::model::{
    ContainerState, ExecOutput, ExecReply, ExecRequest, PodSpec, PodStatus, RuntimeKind,
};
use crate::mqtt::SessionCommand;
use crate::runtime::Runtime;
use crate::wire::Message;

/// A container of a pod, as an exec, an attach or an exec RPC names it.
pub struct ContainerRef<'r> {
    pub namespace: &'r str,
    pub pod: &'r str,
    pub container: &'r str,
    /// `exec` or `attach`, for the error a Wasm container gets.
    pub verb: &'static str,
}

impl<'r> From<&'r ExecRequest> for ContainerRef<'r> {
    fn from(r: &'r ExecRequest) -> Self {
        ContainerRef {
            namespace: &r.namespace,
            pod: &r.pod,
            container: &r.container,
            verb: "exec",
        }
    }
}

impl<'r> From<&'r crate::model::StreamExec> for ContainerRef<'r> {
    fn from(r: &'r crate::model::StreamExec) -> Self {
        ContainerRef {
            namespace: &r.namespace,
            pod: &r.pod,
            container: &r.container,
            verb: if r.command.is_empty() {
                "attach"
            } else {
                "exec"
            },
        }
    }
}

/// The id of the container `at` names, or the error the client sees: the
/// pod must be on this node (`spec`), have the container, the container
/// must be running (`status`) and not be a Wasm module.
pub fn target<'a>(
    node: &str,
    at: ContainerRef<'_>,
    spec: Option<&PodSpec>,
    status: Option<&'a PodStatus>,
) -> Result<&'a str, String> {
    let pod = format!("{}/{}", at.namespace, at.pod);
    let name = at.container;
    let Some(spec) = spec else {
        return Err(format!("pod {pod:?} not found on node {node}"));
    };
    if !spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .any(|c| c.name == name)
    {
        return Err(format!("container {name:?} not found in pod {pod:?}"));
    }
    let running = status.and_then(|s| {
        s.container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .find(|c| {
                c.name == name
                    && !c.container_id.is_empty()
                    && matches!(c.state, ContainerState::Running { .. })
            })
    });
    let Some(running) = running else {
        return Err(format!("container {name:?} in pod {pod:?} is not running"));
    };
    if spec.runtime == RuntimeKind::Wasm {
        return Err(format!(
            "{} is not supported for WebAssembly containers (container {name:?} of pod {pod:?} runs as a Wasm module inside the agent)",
            at.verb
        ));
    }
    Ok(&running.container_id)
}

/// Cuts each stream to `MAX_EXEC_OUTPUT` bytes; `truncated` says whether
/// either was cut.
pub fn bound(mut out: ExecOutput) -> ExecOutput {
    for stream in [&mut out.stdout, &mut out.stderr] {
        if stream.len() > MAX_EXEC_OUTPUT {
            stream.truncate(MAX_EXEC_OUTPUT);
            out.truncated = true;
        }
    }
    out
}

/// An error text cut to what a reply may carry (`MAX_MESSAGE`), at a
/// character boundary.
pub fn clip_error(mut e: String) -> String {
    if e.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        e.truncate(end);
    }
    e
}

/// Exec commands one agent runs at once: each holds a CRI call and up to
/// 16 MiB of its answer.
pub const MAX_AT_ONCE: usize = 8;

/// One of the `MAX_AT_ONCE` places, given back when dropped.
pub struct ExecSlot(Arc<AtomicUsize>);

impl ExecSlot {
    /// A place, or None when `MAX_AT_ONCE` commands run already.
    pub fn take(running: &Arc<AtomicUsize>) -> Option<ExecSlot> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_AT_ONCE).then_some(n + 1)
            })
            .ok()
            .map(|_| ExecSlot(running.clone()))
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The refusal when every place is taken.
pub fn busy(node: &str) -> String {
    format!("node {node} already runs {MAX_AT_ONCE} exec commands; try again when one has ended")
}

/// Answers one `ExecRequest` with one `ExecReply` on `topic`: `Err` when
/// `target` refused it, else what the runtime gave for the command in
/// `container_id`. A failure is logged in `span` (the request's).
pub async fn serve(
    session: mpsc::UnboundedSender<SessionCommand>,
    topic: String,
    request: ExecRequest,
    run_in: Result<(Arc<dyn Runtime>, String, ExecSlot), String>,
    span: tracing::Span,
) {
    let result = match run_in {
        Ok((runtime, container_id, _slot)) => {
            let timeout = Duration::from_secs(u64::from(request.timeout_secs));
            match runtime
                .exec_sync(&container_id, &request.command, timeout)
                .await
            {
                Ok(out) => Ok(bound(out)),
                Err(e) => Err(clip_error(e.to_string())),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        span.in_scope(|| tracing::info!(error = %e, "exec failed"));
    }
    let reply = Message::ExecReply(ExecReply {
        request_id: request.request_id,
        result,
    });
    super::stats_rpc::publish(&session, topic, &reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerStatus, PodPhase, RestartPolicy, samples};

    fn request(container: &str) -> ExecRequest {
        ExecRequest {
            request_id: "r1".into(),
            namespace: "default".into(),
            pod: "web".into(),
            container: container.into(),
            command: vec!["ls".into()],
            timeout_secs: 5,
        }
    }

    fn status_of(name: &str, id: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: "i".into(),
            image_id: String::new(),
            container_id: id.into(),
            ready: true,
            started: true,
            restart_count: 0,
            state,
            last_state: None,
        }
    }

    fn spec(runtime: RuntimeKind) -> PodSpec {
        let mut spec = samples::spec("web", "uid-web", 1, RestartPolicy::Always);
        spec.runtime = runtime;
        spec.init_containers = vec![samples::container("setup")];
        spec.containers = vec![samples::container("app"), samples::container("idle")];
        spec
    }

    fn status() -> PodStatus {
        let running = ContainerState::Running { started_at_ms: 1 };
        PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            observed_generation: 1,
            phase: PodPhase::Running,
            conditions: vec![],
            reason: None,
            message: None,
            start_time_ms: Some(1),
            host_ip: None,
            pod_ip: None,
            init_container_statuses: vec![status_of("setup", "containerd://s", running.clone())],
            container_statuses: vec![
                status_of("app", "containerd://a", running),
                status_of(
                    "idle",
                    "containerd://i",
                    ContainerState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: None,
                    },
                ),
            ],
        }
    }

    #[test]
    fn a_running_container_of_a_pod_on_this_node_is_the_target() {
        let (spec, status) = (spec(RuntimeKind::Container), status());
        let t = |c: &str| target("gw1", (&request(c)).into(), Some(&spec), Some(&status));
        assert_eq!(t("app"), Ok("containerd://a"));
        assert_eq!(t("setup"), Ok("containerd://s"), "a running init container");
        assert_eq!(
            t("idle"),
            Err(r#"container "idle" in pod "default/web" is not running"#.into())
        );
        assert_eq!(
            t("db"),
            Err(r#"container "db" not found in pod "default/web""#.into())
        );
        assert_eq!(
            target("gw1", (&request("app")).into(), None, Some(&status)),
            Err(r#"pod "default/web" not found on node gw1"#.into())
        );
        assert_eq!(
            target("gw1", (&request("app")).into(), Some(&spec), None),
            Err(r#"container "app" in pod "default/web" is not running"#.into()),
            "no status yet"
        );
    }

    #[test]
    fn at_most_max_at_once_commands_run_and_a_place_comes_back_when_one_ends() {
        let running = Arc::new(AtomicUsize::new(0));
        let mut slots: Vec<ExecSlot> = (0..MAX_AT_ONCE)
            .map(|_| ExecSlot::take(&running).expect("a place"))
            .collect();
        assert!(ExecSlot::take(&running).is_none());
        assert!(busy("gw1").contains("gw1 already runs 8 exec commands"));
        slots.pop();
        assert_eq!(running.load(Ordering::Acquire), MAX_AT_ONCE - 1);
        let again = ExecSlot::take(&running).expect("the place given back");
        assert_eq!(running.load(Ordering::Acquire), MAX_AT_ONCE);
        drop((again, slots));
        assert_eq!(running.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_wasm_container_is_refused() {
        let (spec, status) = (spec(RuntimeKind::Wasm), status());
        assert_eq!(
            target("gw1", (&request("app")).into(), Some(&spec), Some(&status)),
            Err(r#"exec is not supported for WebAssembly containers (container "app" of pod "default/web" runs as a Wasm module inside the agent)"#.into())
        );
    }

    #[test]
    fn output_is_cut_to_its_bound_and_says_so() {
        let out = |stdout: usize, stderr: usize| ExecOutput {
            exit_code: 1,
            stdout: vec![b'o'; stdout],
            stderr: vec![b'e'; stderr],
            truncated: false,
        };
        assert_eq!(bound(out(3, MAX_EXEC_OUTPUT)), out(3, MAX_EXEC_OUTPUT));
        let cut = bound(out(MAX_EXEC_OUTPUT + 1, 2));
        assert!(cut.truncated);
        assert_eq!((cut.stdout.len(), cut.stderr.len()), (MAX_EXEC_OUTPUT, 2));
        let cut = bound(out(0, 3 * MAX_EXEC_OUTPUT));
        assert!(cut.truncated && cut.stderr.len() == MAX_EXEC_OUTPUT);
        let reply = ExecReply {
            request_id: "r1".into(),
            result: Ok(cut),
        };
        crate::model::validate::Validate::validate(&reply).expect("a cut reply is valid");
    }

    #[test]
    fn a_long_error_is_clipped_at_a_character() {
        assert_eq!(clip_error("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE);
        let clipped = clip_error(long);
        assert!(clipped.len() <= MAX_MESSAGE && clipped.len() > MAX_MESSAGE - 2);
        let reply = ExecReply {
            request_id: "r1".into(),
            result: Err(clipped),
        };
        crate::model::validate::Validate::validate(&reply).expect("valid");
    }
}
