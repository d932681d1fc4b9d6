//! The dispatches of queued attempts, until their worker fetches them.
//!
//! A queue entry holds only a [`QueueTicket`]: the attempt's key and this
//! master. The resolved [`TaskDispatch`] (script, parameters, secrets among
//! them) waits here, posted by the driver just before the put, and the
//! worker that takes the entry fetches it over gRPC (`FetchTask`). A
//! dispatch leaves the board when its attempt is reported, withdrawn or
//! replaced, or when its instance's driver ends; a fetch that misses the
//! board (the instance was adopted from another master) is answered by the
//! driver, which resolves the attempt again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_domain::{QueueTicket, TaskDispatch, TaskInstanceId, WorkflowInstanceId};

#[derive(Default)]
pub(crate) struct Board {
    posted: Mutex<HashMap<WorkflowInstanceId, HashMap<TaskInstanceId, Arc<TaskDispatch>>>>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkflowInstanceId, HashMap<TaskInstanceId, Arc<TaskDispatch>>>> {
        self.posted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts `dispatch` (replacing an earlier attempt's) and returns the
    /// ticket to queue for it.
    pub fn post(&self, dispatch: Arc<TaskDispatch>) -> QueueTicket {
        let ticket = QueueTicket::of(&dispatch);
        self.lock().entry(dispatch.workflow_instance_id).or_default().insert(dispatch.task_instance_id, dispatch);
        ticket
    }

    /// The dispatch of exactly this attempt, if posted.
    pub fn get(&self, instance: WorkflowInstanceId, task: TaskInstanceId, attempt: u32) -> Option<Arc<TaskDispatch>> {
        self.lock().get(&instance)?.get(&task).filter(|d| d.attempt == attempt).cloned()
    }

    /// Takes down this attempt's dispatch (a later attempt's stays).
    pub fn take_down(&self, instance: WorkflowInstanceId, task: TaskInstanceId, attempt: u32) {
        let mut posted = self.lock();
        if let Some(tasks) = posted.get_mut(&instance) {
            if tasks.get(&task).is_some_and(|d| d.attempt == attempt) {
                tasks.remove(&task);
            }
            if tasks.is_empty() {
                posted.remove(&instance);
            }
        }
    }

    /// Takes down every dispatch of `instance` (its driver ended).
    pub fn clear(&self, instance: WorkflowInstanceId) {
        self.lock().remove(&instance);
    }

    /// How many dispatches are posted, over all instances.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use sluice_domain::{Params, TaskType, TimeoutStrategy};

    use super::*;

    fn dispatch(instance: i64, task: i64, attempt: u32) -> TaskDispatch {
        TaskDispatch {
            workflow_instance_id: WorkflowInstanceId(instance),
            task_instance_id: TaskInstanceId(task),
            attempt,
            master: "m:1".into(),
            project: "p".into(),
            workflow: "w".into(),
            task: "t".into(),
            task_type: TaskType::new("shell"),
            body: serde_json::Map::new(),
            params: Params::new(),
            timeout: None,
            timeout_strategy: TimeoutStrategy::Fail,
        }
    }

    #[test]
    fn an_attempt_is_found_until_taken_down_or_replaced() {
        let board = Board::default();
        let ticket = board.post(Arc::new(dispatch(1, 10, 1)));
        assert_eq!((ticket.task_instance_id, ticket.attempt, ticket.master.as_str()), (TaskInstanceId(10), 1, "m:1"));
        board.post(Arc::new(dispatch(1, 11, 1)));
        board.post(Arc::new(dispatch(2, 20, 1)));
        assert_eq!(board.get(WorkflowInstanceId(1), TaskInstanceId(10), 1).unwrap().attempt, 1);
        assert!(board.get(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_none(), "another attempt");
        assert!(board.get(WorkflowInstanceId(2), TaskInstanceId(10), 1).is_none(), "another instance");

        // A new attempt replaces the old; taking the old one down keeps it.
        board.post(Arc::new(dispatch(1, 10, 2)));
        assert!(board.get(WorkflowInstanceId(1), TaskInstanceId(10), 1).is_none());
        board.take_down(WorkflowInstanceId(1), TaskInstanceId(10), 1);
        assert!(board.get(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_some());
        board.take_down(WorkflowInstanceId(1), TaskInstanceId(10), 2);
        assert!(board.get(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_none());
        assert_eq!(board.len(), 2);

        board.clear(WorkflowInstanceId(1));
        assert_eq!(board.len(), 1);
        assert!(board.get(WorkflowInstanceId(2), TaskInstanceId(20), 1).is_some());
    }
}
