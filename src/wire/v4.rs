//! `NodeStatus` as versions 2 to 4 carried it: no sealing key and a
//! `NodeInfo` without the machine identity. Version 1's (`wire::v1`) is
//! this without `labels`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::validate::{Result, Validate};
use crate::model::{NodeAddress, NodeCondition, NodeResources};

/// `NodeInfo` before version 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub architecture: String,
    pub operating_system: String,
    pub kernel_version: String,
    pub os_image: String,
    pub hostname: String,
    pub agent_version: String,
    pub container_runtime_version: String,
}

impl From<NodeInfo> for crate::model::NodeInfo {
    fn from(v: NodeInfo) -> Self {
        crate::model::NodeInfo {
            architecture: v.architecture,
            operating_system: v.operating_system,
            kernel_version: v.kernel_version,
            os_image: v.os_image,
            hostname: v.hostname,
            agent_version: v.agent_version,
            container_runtime_version: v.container_runtime_version,
            machine_id: String::new(),
            boot_id: String::new(),
            system_uuid: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub online: bool,
    pub heartbeat_ms: u64,
    pub info: NodeInfo,
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    pub conditions: Vec<NodeCondition>,
    pub addresses: Vec<NodeAddress>,
    pub pod_count: u32,
    pub labels: BTreeMap<String, String>,
}

impl From<NodeStatus> for crate::model::NodeStatus {
    fn from(v: NodeStatus) -> Self {
        crate::model::NodeStatus {
            name: v.name,
            online: v.online,
            heartbeat_ms: v.heartbeat_ms,
            info: v.info.into(),
            capacity: v.capacity,
            allocatable: v.allocatable,
            conditions: v.conditions,
            addresses: v.addresses,
            pod_count: v.pod_count,
            labels: v.labels,
            sealing_key: None,
        }
    }
}

impl Validate for NodeStatus {
    fn validate(&self) -> Result {
        crate::model::NodeStatus::from(self.clone()).validate()
    }
}
