//! What masters and workers write into their registry nodes.

use serde::{Deserialize, Serialize};

use crate::ids::TaskInstanceId;
use crate::model::Timestamp;

/// Data of `nodes/masters/<host:port>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterHeartbeat {
    pub addr: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Workflow instances this master drives.
    pub workflow_instances: u32,
}

/// Data of `nodes/workers/<group>/<host:port>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub addr: String,
    pub groups: Vec<String>,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    pub slots: u32,
    pub free_slots: u32,
    pub running: Vec<TaskInstanceId>,
}
