//! What a master puts in a worker group's queue for each ready task attempt
//! (the queue entry's payload, JSON so that an operator can read it in
//! ZooKeeper).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{TaskInstanceId, WorkflowInstanceId};
use crate::model::{duration_text, Params, TaskType, TimeoutStrategy};

/// Everything a worker needs to run one attempt of a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDispatch {
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
    /// `host:port` of the master that owns the workflow instance: where the
    /// worker reports the attempt's events.
    pub master: String,
    pub project: String,
    pub workflow: String,
    pub task: String,
    pub task_type: TaskType,
    /// Type-specific settings (`script` for shell and python).
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Resolved parameters; the task sees them as environment variables.
    pub params: Params,
    #[serde(default, with = "duration_text::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub timeout_strategy: TimeoutStrategy,
}

impl TaskDispatch {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("dispatch serializes")
    }

    pub fn from_json(raw: &[u8]) -> Result<TaskDispatch, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

/// What a task queue holds for one attempt: the key of the attempt and
/// the master to fetch its [`TaskDispatch`] from, never the script or the
/// resolved parameters (secrets stay out of the registry, and a script of
/// any size fits: ZooKeeper refuses a node over `jute.maxbuffer`, 1 MB).
/// `master` is the owner when the entry was put; after a failover the
/// worker is redirected to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTicket {
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
    pub master: String,
}

impl QueueTicket {
    pub fn of(dispatch: &TaskDispatch) -> QueueTicket {
        QueueTicket {
            workflow_instance_id: dispatch.workflow_instance_id,
            task_instance_id: dispatch.task_instance_id,
            attempt: dispatch.attempt,
            master: dispatch.master.clone(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ticket serializes")
    }

    pub fn from_json(raw: &[u8]) -> Result<QueueTicket, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_round_trips_through_json() {
        let mut body = serde_json::Map::new();
        body.insert("script".into(), "echo hi".into());
        let d = TaskDispatch {
            workflow_instance_id: WorkflowInstanceId(7),
            task_instance_id: TaskInstanceId(9),
            attempt: 2,
            master: "10.0.0.1:5678".into(),
            project: "demo".into(),
            workflow: "etl".into(),
            task: "extract".into(),
            task_type: TaskType::new("shell"),
            body,
            params: [("dt".to_string(), "20260101".to_string())].into(),
            timeout: Some(Duration::from_secs(2)),
            timeout_strategy: TimeoutStrategy::Fail,
        };
        let raw = d.to_json();
        assert!(std::str::from_utf8(&raw).unwrap().contains(r#""timeout":"2s""#));
        assert_eq!(TaskDispatch::from_json(&raw).unwrap(), d);

        let ticket = QueueTicket::of(&d);
        let raw = ticket.to_json();
        assert_eq!(
            std::str::from_utf8(&raw).unwrap(),
            r#"{"workflow_instance_id":7,"task_instance_id":9,"attempt":2,"master":"10.0.0.1:5678"}"#
        );
        assert_eq!(QueueTicket::from_json(&raw).unwrap(), ticket);
        // A ticket is not a dispatch (a worker tells the two apart).
        assert!(TaskDispatch::from_json(&raw).is_err());
    }
}
