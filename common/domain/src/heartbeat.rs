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
    /// How busy the machine is, for operators and (later) for masters that
    /// steer work away from overloaded workers. Defaulted when absent so that
    /// heartbeats of older workers still parse.
    #[serde(default)]
    pub host: HostLoad,
}

/// A worker machine's load when it last beat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostLoad {
    /// CPU use over all cores since the previous heartbeat, 0 to 100.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    /// Free space (for unprivileged users) on the file system of the
    /// worker's working directory, where tasks write their files.
    pub disk_free_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_heartbeats_without_host_load_still_parse() {
        let old = r#"{"addr":"w:1","groups":["default"],"started_at":"2026-01-01T00:00:00Z",
            "heartbeat_at":"2026-01-01T00:00:05Z","slots":4,"free_slots":3,"running":[7]}"#;
        let beat: WorkerHeartbeat = serde_json::from_str(old).unwrap();
        assert_eq!(beat.running, [TaskInstanceId(7)]);
        assert_eq!(beat.host, HostLoad::default());
    }
}
