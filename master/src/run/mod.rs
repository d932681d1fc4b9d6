//! The decisions of one workflow run, as a sans-I/O state machine: inputs
//! (task reports decoded once by the gRPC service, operator commands,
//! timers) go in, [`Effect`]s come out, and the driver (`crate::driver`)
//! only carries the effects out and feeds their results back.
//!
//! The protocol with the driver:
//! - every call returns a list of effects, carried out in order; a call
//!   returns either one [`Effect::Write`] alone or no write at all;
//! - a write's result goes back through [`RunMachine::persisted`], a queue
//!   put's through [`RunMachine::queued`], a withdrawal's through
//!   [`RunMachine::withdrawn`], before anything else reaches the machine
//!   (the driver runs the effects a result returns before the rest);
//! - the machine takes its own decisions as done as soon as it makes them
//!   (a write that fails ends the driver, and the machine with it), so every
//!   later decision sees them.

mod events;
mod machine;
mod plan;
mod protocol;
mod resolve;
#[cfg(test)]
mod tests;
mod watchdog;

use std::collections::HashSet;

pub(crate) use machine::{RunMachine, RunSetup};
pub(crate) use resolve::{Fetched, RunContext};
use sluice_domain::*;
pub(crate) use sluice_storage::{RunWrite, RunWritten};
pub(crate) use sluice_tasks::Placement;

pub(crate) use crate::workers::WorkerSeen;

/// What a worker said about an attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskReport {
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
    pub worker: String,
    /// When it happened, by the worker's clock.
    pub at: Timestamp,
    pub report: Report,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Report {
    Running { pid: u32, log_path: String },
    Finished(Finished),
    TimeoutWarning { timeout_ms: u64 },
    /// The task's own system named the attempt (a YARN application id).
    ExternalId(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finished {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub outputs: Params,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    Killed,
}

/// An operator command a live driver carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operator {
    Stop,
    Pause,
    KillTasks(Vec<String>),
    ForceSuccess(Vec<String>),
}

/// What the machine asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Persist in one fenced transaction; the result goes to
    /// [`RunMachine::persisted`].
    Write(RunWrite),
    /// Put in their groups' queues; results to [`RunMachine::queued`].
    Queue(Vec<QueueEntry>),
    /// Take out of the queues; results to [`RunMachine::withdrawn`].
    Withdraw(Vec<QueueRef>),
    /// Ask workers to kill attempts; each answers with a `killed` report.
    Kill(Vec<KillOrder>),
    /// Hand tasks that run inside the master to their runner; the runner
    /// reports like a worker.
    RunInMaster(Vec<QueueEntry>),
    /// Stop tasks running inside the master.
    CancelInMaster(Vec<KillOrder>),
    /// Write the master's lines into tasks' logs (tasks that ended without
    /// running say why there).
    Log(Vec<TaskLog>),
    /// The run is over (its final state is persisted).
    Finish(WorkflowState),
}

/// One attempt ready to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueEntry {
    pub node: TaskNode,
    pub group: String,
    pub key: String,
    /// Shared with the master's board of dispatches (see `crate::dispatches`).
    pub dispatch: std::sync::Arc<TaskDispatch>,
}

/// A queue entry to take back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueRef {
    pub node: TaskNode,
    pub attempt: u32,
    pub group: String,
    pub key: String,
    /// Taken back to kill the attempt (not to put it back later, as a
    /// pause does): an attempt no worker has fetched can then be killed
    /// at once, and removing its entry is only cleanup.
    pub kills: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KillOrder {
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
    pub task_type: TaskType,
    /// The worker running it (for a task in the master: this master).
    pub host: String,
    pub external_id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskLog {
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
    pub lines: Vec<String>,
}

/// How a queue put went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    Done,
    /// Interrupted by a registry outage: it may or may not have been done.
    Uncertain,
}

/// What the watchdog may ask the outside world, read before the tick.
pub(crate) trait World {
    /// What this master knows of `host` in `group`.
    fn worker(&self, group: &str, host: &str) -> WorkerSeen;
    /// The keys in `group`'s queue, if it was listed for this tick (see
    /// [`RunMachine::groups_to_list`]).
    fn queued(&self, group: &str) -> Option<&HashSet<String>>;
}
