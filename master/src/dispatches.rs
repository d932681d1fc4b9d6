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
//!
//! The board also knows whether a worker has fetched a dispatch: one that
//! no worker has can be taken down for a kill ([`Board::withdraw_unfetched`])
//! and the attempt killed at once, since any later fetch misses the board
//! and meets the driver's killed row. Stopping an instance of 10,000
//! queued tasks does not wait for 10,000 queue removals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_domain::{QueueTicket, TaskDispatch, TaskInstanceId, WorkflowInstanceId};

type Posted = HashMap<WorkflowInstanceId, HashMap<TaskInstanceId, Entry>>;

struct Entry {
    dispatch: Arc<TaskDispatch>,
    /// A worker asked for it (and may be running it).
    fetched: bool,
}

#[derive(Default)]
pub(crate) struct Board {
    posted: Mutex<Posted>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, Posted> {
        self.posted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts `dispatch` (replacing an earlier attempt's) and returns the
    /// ticket to queue for it.
    pub fn post(&self, dispatch: Arc<TaskDispatch>) -> QueueTicket {
        let ticket = QueueTicket::of(&dispatch);
        let entry = Entry { dispatch: dispatch.clone(), fetched: false };
        self.lock().entry(dispatch.workflow_instance_id).or_default().insert(dispatch.task_instance_id, entry);
        ticket
    }

    /// The dispatch of exactly this attempt, for the worker that asks: from
    /// now on it counts as fetched.
    pub fn fetch(&self, instance: WorkflowInstanceId, task: TaskInstanceId, attempt: u32) -> Option<Arc<TaskDispatch>> {
        let mut posted = self.lock();
        let entry = posted.get_mut(&instance)?.get_mut(&task).filter(|e| e.dispatch.attempt == attempt)?;
        entry.fetched = true;
        Some(entry.dispatch.clone())
    }

    /// Takes down this attempt's dispatch if no worker has fetched it, and
    /// says whether it did: then no worker can ever run the attempt from
    /// this board.
    pub fn withdraw_unfetched(&self, instance: WorkflowInstanceId, task: TaskInstanceId, attempt: u32) -> bool {
        let mut posted = self.lock();
        let Some(tasks) = posted.get_mut(&instance) else { return false };
        if !tasks.get(&task).is_some_and(|e| e.dispatch.attempt == attempt && !e.fetched) {
            return false;
        }
        tasks.remove(&task);
        if tasks.is_empty() {
            posted.remove(&instance);
        }
        true
    }

    /// Takes down this attempt's dispatch (a later attempt's stays).
    pub fn take_down(&self, instance: WorkflowInstanceId, task: TaskInstanceId, attempt: u32) {
        let mut posted = self.lock();
        if let Some(tasks) = posted.get_mut(&instance) {
            if tasks.get(&task).is_some_and(|e| e.dispatch.attempt == attempt) {
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
        assert_eq!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 1).unwrap().attempt, 1);
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_none(), "another attempt");
        assert!(board.fetch(WorkflowInstanceId(2), TaskInstanceId(10), 1).is_none(), "another instance");

        // A new attempt replaces the old; taking the old one down keeps it.
        board.post(Arc::new(dispatch(1, 10, 2)));
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 1).is_none());
        board.take_down(WorkflowInstanceId(1), TaskInstanceId(10), 1);
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_some());
        board.take_down(WorkflowInstanceId(1), TaskInstanceId(10), 2);
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 2).is_none());
        assert_eq!(board.len(), 2);

        board.clear(WorkflowInstanceId(1));
        assert_eq!(board.len(), 1);
        assert!(board.fetch(WorkflowInstanceId(2), TaskInstanceId(20), 1).is_some());
    }

    #[test]
    fn only_a_dispatch_no_worker_fetched_is_withdrawn_for_a_kill() {
        let board = Board::default();
        board.post(Arc::new(dispatch(1, 10, 1)));
        board.post(Arc::new(dispatch(1, 11, 1)));
        assert!(!board.withdraw_unfetched(WorkflowInstanceId(1), TaskInstanceId(10), 2), "another attempt");
        assert!(!board.withdraw_unfetched(WorkflowInstanceId(2), TaskInstanceId(10), 1), "another instance");

        // Fetched: a worker may run it, so it stays for the slow path.
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(11), 1).is_some());
        assert!(!board.withdraw_unfetched(WorkflowInstanceId(1), TaskInstanceId(11), 1));
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(11), 1).is_some(), "still posted");

        // Never fetched: withdrawn, and a later fetch misses.
        assert!(board.withdraw_unfetched(WorkflowInstanceId(1), TaskInstanceId(10), 1));
        assert!(board.fetch(WorkflowInstanceId(1), TaskInstanceId(10), 1).is_none());
        assert!(!board.withdraw_unfetched(WorkflowInstanceId(1), TaskInstanceId(10), 1), "only once");
        assert_eq!(board.len(), 1);
    }
}
