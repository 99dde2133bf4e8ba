//! kedge: an edge orchestrator. See ARCHITECTURE.md for the code map.

pub mod model;
pub mod wire;
