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
