//! The workflow-instance and task-instance state machines. Every move goes
//! through one `transition(state, event)` function per machine; the table in
//! each function is the whole truth, and the tests check every edge of it.

use std::fmt;

use crate::model::wire_enum;

/// An event that is not allowed in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{machine}: event `{event}` is not allowed in state `{state}`")]
pub struct InvalidTransition {
    pub machine: &'static str,
    pub state: String,
    pub event: String,
}

wire_enum!(
    /// States of a workflow instance.
    WorkflowState {
        Submitted = "submitted",
        Running = "running",
        ReadyPause = "ready_pause",
        Paused = "paused",
        ReadyStop = "ready_stop",
        Stopped = "stopped",
        Success = "success",
        Failure = "failure",
        /// The owning master was lost; another master will adopt it.
        NeedFailover = "need_failover",
    }
);

/// What can happen to a workflow instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowEvent {
    /// A master starts driving it.
    Start,
    /// Every task it ran succeeded (or was forced to).
    Succeed,
    /// A task failed for good and the failure strategy has played out.
    Fail,
    /// Operator: let running tasks finish, start nothing new.
    Pause,
    /// The last running task of a pausing instance finished.
    Paused,
    /// Operator: kill running tasks.
    Stop,
    /// The last running task of a stopping instance ended.
    Stopped,
    /// Operator: go on after a pause.
    Resume,
    /// Its owning master is gone.
    OwnerLost,
    /// A master adopted it after failover.
    Adopt,
    /// Operator: run all tasks again in the same instance.
    Rerun,
    /// Operator: run only the failed/killed tasks and what is below them.
    Recover,
}

impl fmt::Display for WorkflowEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl WorkflowEvent {
    pub const ALL: &'static [WorkflowEvent] = &[
        WorkflowEvent::Start,
        WorkflowEvent::Succeed,
        WorkflowEvent::Fail,
        WorkflowEvent::Pause,
        WorkflowEvent::Paused,
        WorkflowEvent::Stop,
        WorkflowEvent::Stopped,
        WorkflowEvent::Resume,
        WorkflowEvent::OwnerLost,
        WorkflowEvent::Adopt,
        WorkflowEvent::Rerun,
        WorkflowEvent::Recover,
    ];
}

impl WorkflowState {
    /// No task of the instance will run again unless an operator restarts it.
    pub fn is_final(self) -> bool {
        matches!(self, WorkflowState::Success | WorkflowState::Failure | WorkflowState::Stopped)
    }

    /// The state after `events`, in order, each through [`Self::transition`].
    pub fn after(self, events: &[WorkflowEvent]) -> Result<WorkflowState, InvalidTransition> {
        events.iter().try_fold(self, |state, event| state.transition(*event))
    }

    /// The one transition table of workflow instances.
    pub fn transition(self, event: WorkflowEvent) -> Result<WorkflowState, InvalidTransition> {
        use WorkflowEvent as E;
        use WorkflowState as S;
        let next = match (self, event) {
            (S::Submitted, E::Start) => S::Running,
            (S::Running | S::ReadyPause, E::Succeed) => S::Success,
            (S::Running | S::ReadyPause, E::Fail) => S::Failure,
            (S::Running, E::Pause) => S::ReadyPause,
            (S::ReadyPause, E::Paused) => S::Paused,
            (S::Submitted | S::Paused, E::Stop) => S::Stopped,
            (S::Running | S::ReadyPause, E::Stop) => S::ReadyStop,
            (S::ReadyStop, E::Stopped) => S::Stopped,
            (S::Paused, E::Resume) => S::Running,
            (S::Submitted | S::Running | S::ReadyPause | S::ReadyStop, E::OwnerLost) => {
                S::NeedFailover
            }
            (S::NeedFailover, E::Adopt) => S::Running,
            (S::Success | S::Failure | S::Stopped, E::Rerun) => S::Submitted,
            (S::Failure | S::Stopped, E::Recover) => S::Submitted,
            (state, event) => {
                return Err(InvalidTransition {
                    machine: "workflow instance",
                    state: state.to_string(),
                    event: event.to_string(),
                })
            }
        };
        Ok(next)
    }
}

wire_enum!(
    /// States of a task instance.
    TaskState {
        /// Created, waiting to be put in the queue.
        Submitted = "submitted",
        /// In its worker group's queue, or taken by a worker not yet running it.
        Dispatched = "dispatched",
        Running = "running",
        Success = "success",
        Failure = "failure",
        Killed = "killed",
        /// Failed with retries left; a new attempt is submitted when due.
        RetryWait = "retry_wait",
        /// Its worker was lost; a new attempt will be dispatched elsewhere.
        NeedFailover = "need_failover",
        /// Failed or killed, then marked successful by an operator.
        ForcedSuccess = "forced_success",
        /// Done without running: on a branch a conditions or switch task did
        /// not take, or below tasks that were all skipped. Downstream tasks
        /// treat it as satisfied.
        Skipped = "skipped",
    }
);

/// What can happen to a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskEvent {
    /// Put in the queue of its worker group.
    Dispatch,
    /// Taken back out of the queue before any worker took it (pause).
    Withdraw,
    /// A worker reports the attempt running.
    Start,
    /// The attempt exited 0.
    Succeed,
    /// The attempt failed (non-zero exit, timeout with `fail`) and no retry is left.
    Fail,
    /// The attempt failed and a retry is left.
    FailWillRetry,
    /// The retry interval is over: submit the next attempt.
    RetryDue,
    /// Killed by an operator, a stop or the `end` failure strategy.
    Kill,
    /// Its worker disappeared while it was dispatched or running.
    WorkerLost,
    /// The failover attempt is submitted.
    Redispatch,
    /// Operator: treat a failed or killed task as successful.
    ForceSuccess,
    /// Operator: run it again (rerun, recover, start-from).
    Rerun,
    /// Its inputs were all skipped: it is done without running.
    Skip,
}

impl fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl TaskEvent {
    pub const ALL: &'static [TaskEvent] = &[
        TaskEvent::Dispatch,
        TaskEvent::Withdraw,
        TaskEvent::Start,
        TaskEvent::Succeed,
        TaskEvent::Fail,
        TaskEvent::FailWillRetry,
        TaskEvent::RetryDue,
        TaskEvent::Kill,
        TaskEvent::WorkerLost,
        TaskEvent::Redispatch,
        TaskEvent::ForceSuccess,
        TaskEvent::Rerun,
        TaskEvent::Skip,
    ];
}

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failure
                | TaskState::Killed
                | TaskState::ForcedSuccess
                | TaskState::Skipped
        )
    }

    /// Ran successfully, or was forced to by an operator: its outputs (if
    /// any) flow downstream.
    pub fn is_success(self) -> bool {
        matches!(self, TaskState::Success | TaskState::ForcedSuccess)
    }

    /// Final in a way that lets the run go on: a success, a forced success
    /// or a skip. A run whose selected tasks all satisfy ends `success`.
    pub fn satisfies(self) -> bool {
        self.is_success() || self == TaskState::Skipped
    }

    /// Failed for good: failed or killed, not forced to success.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failure | TaskState::Killed)
    }

    /// Occupies (or is about to occupy) a worker slot.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Dispatched | TaskState::Running)
    }

    /// The state after `events`, in order, each through [`Self::transition`]
    /// (a worker's `running` and `succeeded` merged into one write).
    pub fn after(self, events: &[TaskEvent]) -> Result<TaskState, InvalidTransition> {
        events.iter().try_fold(self, |state, event| state.transition(*event))
    }

    /// The one transition table of task instances.
    pub fn transition(self, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let next = match (self, event) {
            (S::Submitted, E::Dispatch) => S::Dispatched,
            (S::Dispatched, E::Withdraw) => S::Submitted,
            (S::Dispatched, E::Start) => S::Running,
            // A worker's `running` event may arrive after its final event
            // was processed (or be coalesced): finishing from `Dispatched`
            // is legal.
            (S::Dispatched | S::Running, E::Succeed) => S::Success,
            // `Submitted` fails without running when its parameters cannot
            // be resolved.
            (S::Submitted | S::Dispatched | S::Running, E::Fail) => S::Failure,
            (S::Dispatched | S::Running, E::FailWillRetry) => S::RetryWait,
            (S::RetryWait, E::RetryDue) => S::Submitted,
            (S::Submitted | S::Dispatched | S::Running | S::RetryWait | S::NeedFailover, E::Kill) => {
                S::Killed
            }
            (S::Dispatched | S::Running, E::WorkerLost) => S::NeedFailover,
            (S::NeedFailover, E::Redispatch) => S::Submitted,
            (S::Failure | S::Killed, E::ForceSuccess) => S::ForcedSuccess,
            (S::Success | S::Failure | S::Killed | S::ForcedSuccess | S::Skipped, E::Rerun) => {
                S::Submitted
            }
            (S::Submitted, E::Skip) => S::Skipped,
            (state, event) => {
                return Err(InvalidTransition {
                    machine: "task instance",
                    state: state.to_string(),
                    event: event.to_string(),
                })
            }
        };
        Ok(next)
    }
}

/// The shortest path of events from `from` to `to` through a transition
/// table, if there is one: how tests and tools set a row to a state the
/// way the engine would get it there.
fn shortest_path<S, E>(from: S, to: S, events: &[E], transition: impl Fn(S, E) -> Result<S, InvalidTransition>) -> Option<Vec<E>>
where
    S: Copy + Eq + std::hash::Hash,
    E: Copy,
{
    let mut seen = std::collections::HashSet::from([from]);
    let mut frontier = std::collections::VecDeque::from([(from, Vec::new())]);
    while let Some((state, path)) = frontier.pop_front() {
        if state == to {
            return Some(path);
        }
        for &event in events {
            if let Ok(next) = transition(state, event) {
                if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(event);
                    frontier.push_back((next, longer));
                }
            }
        }
    }
    None
}

impl WorkflowState {
    /// The shortest path of events from `self` to `to`, if any.
    pub fn path_to(self, to: WorkflowState) -> Option<Vec<WorkflowEvent>> {
        shortest_path(self, to, WorkflowEvent::ALL, WorkflowState::transition)
    }
}

impl TaskState {
    /// The shortest path of events from `self` to `to`, if any.
    pub fn path_to(self, to: TaskState) -> Option<Vec<TaskEvent>> {
        shortest_path(self, to, TaskEvent::ALL, TaskState::transition)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Checks `transition` against an explicit list of edges: every listed
    /// edge yields its target, every unlisted (state, event) pair is refused.
    fn check_table<S, E>(
        states: &[S],
        events: &[E],
        edges: &[(S, E, S)],
        transition: impl Fn(S, E) -> Result<S, InvalidTransition>,
    ) where
        S: Copy + Eq + std::hash::Hash + fmt::Debug,
        E: Copy + Eq + std::hash::Hash + fmt::Debug,
    {
        let expected: HashMap<(S, E), S> = edges.iter().map(|&(s, e, t)| ((s, e), t)).collect();
        assert_eq!(expected.len(), edges.len(), "an edge is listed twice");
        let mut checked = 0;
        for &state in states {
            for &event in events {
                match (expected.get(&(state, event)), transition(state, event)) {
                    (Some(&to), Ok(got)) => {
                        assert_eq!(got, to, "{state:?} --{event:?}-->");
                        checked += 1;
                    }
                    (None, Err(err)) => {
                        assert!(err.to_string().contains("is not allowed"), "{err}");
                    }
                    (want, got) => panic!("{state:?} --{event:?}--> expected {want:?}, got {got:?}"),
                }
            }
        }
        assert_eq!(checked, edges.len());
    }

    #[test]
    fn workflow_transition_table() {
        use WorkflowEvent as E;
        use WorkflowState as S;
        let edges = [
            (S::Submitted, E::Start, S::Running),
            (S::Running, E::Succeed, S::Success),
            (S::ReadyPause, E::Succeed, S::Success),
            (S::Running, E::Fail, S::Failure),
            (S::ReadyPause, E::Fail, S::Failure),
            (S::Running, E::Pause, S::ReadyPause),
            (S::ReadyPause, E::Paused, S::Paused),
            (S::Submitted, E::Stop, S::Stopped),
            (S::Paused, E::Stop, S::Stopped),
            (S::Running, E::Stop, S::ReadyStop),
            (S::ReadyPause, E::Stop, S::ReadyStop),
            (S::ReadyStop, E::Stopped, S::Stopped),
            (S::Paused, E::Resume, S::Running),
            (S::Submitted, E::OwnerLost, S::NeedFailover),
            (S::Running, E::OwnerLost, S::NeedFailover),
            (S::ReadyPause, E::OwnerLost, S::NeedFailover),
            (S::ReadyStop, E::OwnerLost, S::NeedFailover),
            (S::NeedFailover, E::Adopt, S::Running),
            (S::Success, E::Rerun, S::Submitted),
            (S::Failure, E::Rerun, S::Submitted),
            (S::Stopped, E::Rerun, S::Submitted),
            (S::Failure, E::Recover, S::Submitted),
            (S::Stopped, E::Recover, S::Submitted),
        ];
        check_table(S::ALL, E::ALL, &edges, S::transition);
    }

    #[test]
    fn task_transition_table() {
        use TaskEvent as E;
        use TaskState as S;
        let edges = [
            (S::Submitted, E::Dispatch, S::Dispatched),
            (S::Dispatched, E::Withdraw, S::Submitted),
            (S::Dispatched, E::Start, S::Running),
            (S::Dispatched, E::Succeed, S::Success),
            (S::Running, E::Succeed, S::Success),
            (S::Submitted, E::Fail, S::Failure),
            (S::Dispatched, E::Fail, S::Failure),
            (S::Running, E::Fail, S::Failure),
            (S::Dispatched, E::FailWillRetry, S::RetryWait),
            (S::Running, E::FailWillRetry, S::RetryWait),
            (S::RetryWait, E::RetryDue, S::Submitted),
            (S::Submitted, E::Kill, S::Killed),
            (S::Dispatched, E::Kill, S::Killed),
            (S::Running, E::Kill, S::Killed),
            (S::RetryWait, E::Kill, S::Killed),
            (S::NeedFailover, E::Kill, S::Killed),
            (S::Dispatched, E::WorkerLost, S::NeedFailover),
            (S::Running, E::WorkerLost, S::NeedFailover),
            (S::NeedFailover, E::Redispatch, S::Submitted),
            (S::Failure, E::ForceSuccess, S::ForcedSuccess),
            (S::Killed, E::ForceSuccess, S::ForcedSuccess),
            (S::Success, E::Rerun, S::Submitted),
            (S::Failure, E::Rerun, S::Submitted),
            (S::Killed, E::Rerun, S::Submitted),
            (S::ForcedSuccess, E::Rerun, S::Submitted),
            (S::Skipped, E::Rerun, S::Submitted),
            (S::Submitted, E::Skip, S::Skipped),
        ];
        check_table(S::ALL, E::ALL, &edges, S::transition);
    }

    #[test]
    fn final_states_only_leave_by_operator_action() {
        for &state in WorkflowState::ALL.iter().filter(|s| s.is_final()) {
            for &event in WorkflowEvent::ALL {
                if let Ok(next) = state.transition(event) {
                    assert!(matches!(event, WorkflowEvent::Rerun | WorkflowEvent::Recover), "{state} {event}");
                    assert_eq!(next, WorkflowState::Submitted);
                }
            }
        }
        for &state in TaskState::ALL.iter().filter(|s| s.is_final()) {
            for &event in TaskEvent::ALL {
                if state.transition(event).is_ok() {
                    assert!(matches!(event, TaskEvent::Rerun | TaskEvent::ForceSuccess), "{state} {event}");
                }
            }
        }
    }

    #[test]
    fn every_state_is_reached_from_submitted_along_the_table() {
        for &state in WorkflowState::ALL {
            let path = WorkflowState::Submitted.path_to(state).unwrap_or_else(|| panic!("{state} unreachable"));
            assert_eq!(WorkflowState::Submitted.after(&path), Ok(state));
        }
        for &state in TaskState::ALL {
            let path = TaskState::Submitted.path_to(state).unwrap_or_else(|| panic!("{state} unreachable"));
            assert_eq!(TaskState::Submitted.after(&path), Ok(state));
        }
        assert_eq!(TaskState::Success.path_to(TaskState::Running), Some(vec![TaskEvent::Rerun, TaskEvent::Dispatch, TaskEvent::Start]));
        assert_eq!(WorkflowState::Success.path_to(WorkflowState::NeedFailover), Some(vec![WorkflowEvent::Rerun, WorkflowEvent::OwnerLost]));
    }

    #[test]
    fn refusals_name_machine_state_and_event() {
        let err = TaskState::Success.transition(TaskEvent::Start).unwrap_err();
        assert_eq!(err.to_string(), "task instance: event `Start` is not allowed in state `success`");
    }
}
