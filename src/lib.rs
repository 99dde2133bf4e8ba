//! kedge: an edge orchestrator. See ARCHITECTURE.md for the code map.
// Every `pub` item is reachable from outside the crate (the binary, the
// tests, the benches) or says `pub(crate)`: what `pub` hides from the
// dead-code lint is found this way.
#![warn(unreachable_pub)]

pub mod agent;
#[cfg(feature = "bridge")]
pub mod bridge;
pub mod cli;
pub mod client;
pub mod config;
#[cfg(feature = "data")]
pub mod data;
pub mod embedded_broker;
pub mod fleet;
pub mod model;
pub mod mqtt;
pub mod node;
pub mod runtime;
pub mod seal;
#[cfg(feature = "sink")]
pub mod sink;
pub mod store;
pub mod tls;
pub mod trust;
pub mod wire;

/// `tokio::spawn` for the tasks of the agent, its runtimes and the MQTT
/// session: the future boxed, so that every task with the same output shares
/// one tokio task harness instead of one per future type (2–3 kB of code
/// each in a device build: targets/README.md). Not for a per-byte path: it
/// costs an allocation per spawn.
pub(crate) fn spawn<T: Send + 'static>(
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let task: runtime::BoxFuture<'static, T> = Box::pin(task);
    tokio::spawn(task)
}
