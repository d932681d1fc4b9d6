//! The run machine's state and its bookkeeping: every change of a task or
//! of the instance goes through [`RunMachine::change`] /
//! [`RunMachine::create`] / [`RunMachine::change_workflow`], which check it
//! against the transition table, record it in the [`Step`] being decided,
//! and keep the counters and the plan up to date. `protocol.rs` turns steps
//! into effects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use sluice_domain::*;

use super::plan::{decides, Plan};
use super::resolve::{self, RunContext};
use super::*;

/// Everything a machine starts from: the instance and its tasks as stored,
/// the definition version it runs, and how its task types are placed.
pub(crate) struct RunSetup {
    pub instance: WorkflowInstance,
    pub def: WorkflowDefinition,
    pub dag: Dag,
    /// Where each task (by node) runs.
    pub placements: Vec<Placement>,
    pub ctx: RunContext,
    /// Every task instance of the instance.
    pub tasks: Vec<TaskInstance>,
    /// How long a worker may be missing before its tasks fail over.
    pub failover_grace: Duration,
    /// The queue does not survive a restart of this process (the embedded
    /// registry of `sluice standalone`): an attempt marked dispatched but
    /// missing from the queue at start was lost with it, not taken.
    pub queue_lost_on_restart: bool,
}

/// A task's row, as far as the machine knows.
// Nearly every slot of a live run is a `Row`: boxing it would cost an
// allocation per task and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Not created in this run (or a row of an earlier run to run again).
    Absent,
    /// Being created by the outstanding write, in this state.
    Creating(TaskState),
    Row(TaskInstance),
}

/// Why a queue entry is being taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Withdrawal {
    Kill(String),
    Pause,
}

/// A queue put that may or may not have been done.
#[derive(Debug, Clone)]
pub(super) struct Uncertain {
    pub attempt: u32,
    pub since: Timestamp,
    pub entry: QueueEntry,
}

/// What must happen once the step's write is persisted.
#[derive(Debug, Default)]
pub(super) struct After {
    /// Tasks the write dispatches: resolved and queued (or handed to the
    /// master's runner) once their rows exist.
    pub dispatch: Vec<TaskNode>,
    /// Attempts whose queue entry was lost with the queue: put again.
    pub requeue: Vec<TaskNode>,
    pub withdraw: Vec<(TaskNode, Withdrawal)>,
    pub kill: Vec<KillOrder>,
    pub cancel: Vec<KillOrder>,
    pub logs: Vec<TaskLog>,
    pub finish: Option<WorkflowState>,
}

/// Decisions not written yet.
#[derive(Debug, Default)]
pub(super) struct Step {
    pub workflow: Option<WorkflowChange>,
    pub tasks: Vec<TaskChange>,
    pub index: HashMap<TaskInstanceId, usize>,
    pub create: Vec<(TaskNode, NewTaskInstance)>,
    pub consume: Vec<CommandId>,
    pub after: After,
    /// The time stamped on what this step ends or starts: one for the
    /// whole step, so that a stop's 10,000 killed rows are alike and
    /// written by one statement per chunk (see `RunMachine::now`).
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

impl Step {
    pub(super) fn has_write(&self) -> bool {
        self.workflow.is_some() || !self.tasks.is_empty() || !self.create.is_empty() || !self.consume.is_empty()
    }
}

/// One workflow run's decisions. See the module docs of `run` for the
/// protocol.
pub(crate) struct RunMachine {
    pub(super) instance: WorkflowInstance,
    pub(super) def: WorkflowDefinition,
    /// Task specs by node.
    pub(super) specs: Vec<TaskSpec>,
    pub(super) dag: Dag,
    pub(super) placements: Vec<Placement>,
    pub(super) ctx: RunContext,
    pub(super) grace: Duration,
    pub(super) queue_lost_on_restart: bool,
    pub(super) plan: Plan,
    pub(super) slots: Vec<Slot>,
    pub(super) by_id: HashMap<TaskInstanceId, TaskNode>,
    /// Rows of an earlier run this run (a rerun or a recover) runs again:
    /// they count as not created until the plan reaches them, then start a
    /// new attempt of the same task instance.
    pub(super) rerun: HashMap<TaskNode, TaskInstance>,
    /// Rows (and rows being created) per state.
    pub(super) counts: [usize; TaskState::ALL.len()],
    /// Selected tasks whose row satisfies (success, forced, skipped).
    pub(super) satisfied: usize,
    pub(super) stopping: bool,
    pub(super) pausing: bool,
    pub(super) retry_at: BTreeMap<TaskNode, Timestamp>,
    /// Tasks to kill as soon as a worker reports them running (their queue
    /// entry was already taken when the kill was decided).
    pub(super) kill_on_start: HashMap<TaskNode, String>,
    pub(super) uncertain: HashMap<TaskNode, Uncertain>,
    /// Dispatched by the outstanding write (or just after it), not put yet.
    pub(super) unqueued: BTreeSet<TaskNode>,
    pub(super) withdrawing: HashMap<TaskNode, Withdrawal>,
    pub(super) step: Step,
    /// What the outstanding write's persistence must be followed by.
    pub(super) outstanding: Option<After>,
    /// The tasks the outstanding write creates, in its order.
    pub(super) creating: Vec<TaskNode>,
    pub(super) finished: Option<WorkflowState>,
}

/// How long a task may sit taken from the queue without a `running` report
/// before its worker is presumed dead (a worker reports within moments).
pub(super) const NEVER_STARTED: Duration = Duration::from_secs(60);
/// How long an interrupted queue put is given to show it was done (its
/// attempt reported running) before it is checked and, if need be, done
/// again.
pub(super) const UNCERTAIN_PUT_SETTLE: Duration = Duration::from_secs(5);

pub(super) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

impl RunMachine {
    /// A machine for `setup`. Fails if the instance's selection names tasks
    /// the definition does not have.
    pub fn new(setup: RunSetup) -> Result<RunMachine, String> {
        let RunSetup { instance, def, dag, placements, ctx, tasks, failover_grace, queue_lost_on_restart } = setup;
        let specs: Vec<TaskSpec> = (0..dag.len())
            .map(|n| def.task(dag.name(n)).map(|t| t.spec.clone()).ok_or_else(|| format!("task `{}` is not in the definition", dag.name(n))))
            .collect::<Result<_, _>>()?;
        let selected: BTreeSet<TaskNode> = if instance.start_tasks.is_empty() {
            (0..dag.len()).collect()
        } else {
            let start: Vec<&str> = instance.start_tasks.iter().map(String::as_str).collect();
            dag.select(&start, instance.scope.unwrap_or(RunScope::Only)).map_err(|e| format!("run selection: {e}"))?
        };
        let mut rows: HashMap<TaskNode, TaskInstance> = HashMap::new();
        for task in tasks {
            if let Some(node) = dag.node(&task.name) {
                rows.insert(node, task);
            }
        }
        // A rerun runs every task again; a recover the ones that did not
        // succeed and everything below them. Rows already re-run in this run
        // (before a failover) are current.
        let earlier: Vec<TaskNode> = rows.iter().filter(|(_, t)| t.run < instance.run).map(|(n, _)| *n).collect();
        let again: BTreeSet<TaskNode> = match instance.command_kind {
            CommandKind::Rerun => earlier.iter().copied().collect(),
            CommandKind::RecoverFailure | CommandKind::RecoverFailover | CommandKind::ForceSuccess => {
                let failed: Vec<TaskNode> = earlier.iter().copied().filter(|n| !rows[n].state.satisfies()).collect();
                dag.descendants(&failed).into_iter().filter(|n| earlier.contains(n)).collect()
            }
            _ => BTreeSet::new(),
        };
        let rerun: HashMap<TaskNode, TaskInstance> = again.iter().filter_map(|n| rows.remove(n).map(|t| (*n, t))).collect();
        let plan = Plan::new(&dag, &selected);
        let mut machine = RunMachine {
            stopping: instance.state == WorkflowState::ReadyStop,
            pausing: instance.state == WorkflowState::ReadyPause,
            instance,
            def,
            specs,
            placements,
            ctx,
            grace: failover_grace,
            queue_lost_on_restart,
            plan,
            slots: vec![Slot::Absent; dag.len()],
            dag,
            by_id: HashMap::new(),
            rerun,
            counts: [0; TaskState::ALL.len()],
            satisfied: 0,
            retry_at: BTreeMap::new(),
            kill_on_start: HashMap::new(),
            uncertain: HashMap::new(),
            unqueued: BTreeSet::new(),
            withdrawing: HashMap::new(),
            step: Step::default(),
            outstanding: None,
            creating: Vec::new(),
            finished: None,
        };
        // Rows first, then their effect on the plan: deciding an edge needs
        // the downstream task's row to be known (a created task is never
        // ready again).
        let mut nodes: Vec<TaskNode> = rows.keys().copied().collect();
        nodes.sort_unstable();
        for &node in &nodes {
            let row = rows.remove(&node).expect("listed");
            machine.plan.created(node);
            machine.count(row.state, 1, node);
            if row.state == TaskState::RetryWait {
                machine.retry_at.insert(node, row.retry_at.unwrap_or_else(Utc::now));
            }
            machine.by_id.insert(row.id, node);
            machine.slots[node] = Slot::Row(row);
        }
        for node in nodes {
            let state = machine.state(node).expect("a row");
            if decides(state) {
                machine.decide_downstream(node);
            }
        }
        Ok(machine)
    }

    pub fn instance(&self) -> &WorkflowInstance {
        &self.instance
    }

    pub fn fence(&self) -> Fence {
        self.instance.fence()
    }

    // --- bookkeeping

    pub(super) fn state(&self, node: TaskNode) -> Option<TaskState> {
        match &self.slots[node] {
            Slot::Absent => None,
            Slot::Creating(state) => Some(*state),
            Slot::Row(row) => Some(row.state),
        }
    }

    pub(super) fn row(&self, node: TaskNode) -> Option<&TaskInstance> {
        match &self.slots[node] {
            Slot::Row(row) => Some(row),
            _ => None,
        }
    }

    pub(super) fn node_of(&self, id: TaskInstanceId) -> Option<TaskNode> {
        self.by_id.get(&id).copied()
    }

    fn count(&mut self, state: TaskState, delta: isize, node: TaskNode) {
        let slot = &mut self.counts[state as usize];
        *slot = slot.checked_add_signed(delta).expect("state counts stay positive");
        if state.satisfies() && self.plan.is_selected(node) {
            self.satisfied = self.satisfied.checked_add_signed(delta).expect("satisfied count stays positive");
        }
    }

    pub(super) fn count_of(&self, states: &[TaskState]) -> usize {
        states.iter().map(|s| self.counts[*s as usize]).sum()
    }

    /// Rows not final (being created included).
    pub(super) fn unfinished(&self) -> usize {
        TaskState::ALL.iter().filter(|s| !s.is_final()).map(|s| self.counts[*s as usize]).sum()
    }

    /// Whether some task failed for good.
    pub(super) fn has_failure(&self) -> bool {
        self.count_of(&[TaskState::Failure, TaskState::Killed]) > 0
    }

    /// Whether new tasks may start (or be skipped).
    pub(super) fn may_start(&self) -> bool {
        let ended = self.instance.failure_strategy == FailureStrategy::End && self.has_failure();
        !self.stopping && !self.pausing && !ended
    }

    /// `node` now satisfies: its outgoing edges are decided.
    fn decide_downstream(&mut self, node: TaskNode) {
        if !self.plan.is_selected(node) {
            return;
        }
        let (skipped, branches) = match &self.slots[node] {
            Slot::Row(row) => (row.state == TaskState::Skipped, row.branches.clone()),
            Slot::Creating(state) => (*state == TaskState::Skipped, None),
            Slot::Absent => return,
        };
        for down in self.dag.downstream(node) {
            if !self.plan.is_selected(down) {
                continue;
            }
            let live = !skipped && self.dag.condition(node, down).taken(branches.as_deref());
            self.plan.decide(down, live);
        }
    }

    /// Moves task `node` by `events` with `update`: through the transition
    /// table, recorded in the step (merged with what the step already holds
    /// for it), and applied here at once.
    pub(super) fn change(&mut self, node: TaskNode, events: &[TaskEvent], update: TaskUpdate) -> Result<(), InvalidTransition> {
        let Slot::Row(row) = &mut self.slots[node] else {
            panic!("task `{}` has no row to change", self.dag.name(node));
        };
        let from = row.state;
        let to = from.after(events)?;
        let change = TaskChange { id: row.id, from, events: events.to_vec(), update };
        change.update.apply_to(row);
        row.state = to;
        self.record(change);
        if from != to {
            self.count(from, -1, node);
            self.count(to, 1, node);
            if !decides(from) && decides(to) {
                self.decide_downstream(node);
            }
            if to.is_final() || to == TaskState::Submitted {
                self.retry_at.remove(&node);
                self.kill_on_start.remove(&node);
                self.uncertain.remove(&node);
            }
            if to == TaskState::Dispatched {
                self.unqueued.insert(node);
                self.step.after.dispatch.push(node);
            }
        }
        Ok(())
    }

    /// Adds `change` to the step, merged with an earlier change of the same
    /// task in it.
    pub(super) fn record(&mut self, change: TaskChange) {
        match self.step.index.get(&change.id) {
            Some(&i) => {
                let earlier = std::mem::replace(&mut self.step.tasks[i], change.clone());
                self.step.tasks[i] = earlier.then(change);
            }
            None => {
                self.step.index.insert(change.id, self.step.tasks.len());
                self.step.tasks.push(change);
            }
        }
    }

    /// Takes note of a task that enters this run in `state` (created, or a
    /// row of an earlier run started again).
    pub(super) fn entered(&mut self, node: TaskNode, state: TaskState) {
        self.plan.created(node);
        self.count(state, 1, node);
        if decides(state) {
            self.decide_downstream(node);
        }
        if state == TaskState::Dispatched {
            self.unqueued.insert(node);
            self.step.after.dispatch.push(node);
        }
    }

    /// A new task instance for `node` in the state `events` lead to from
    /// `submitted`.
    pub(super) fn create(&mut self, node: TaskNode, events: &[TaskEvent], message: Option<String>) {
        let spec = &self.specs[node];
        let def = self.def.task(&spec.name).expect("specs come from the definition");
        let new = NewTaskInstance {
            workflow_instance_id: self.instance.id,
            task_definition_id: def.id,
            name: spec.name.clone(),
            task_type: spec.task_type.clone(),
            priority: spec.priority,
            worker_group: self.group_of(node),
            max_retries: spec.retries,
            run: self.instance.run,
            events: events.to_vec(),
            message,
        };
        let state = new.state().expect("creation paths are in the table");
        self.slots[node] = Slot::Creating(state);
        self.step.create.push((node, new));
        self.entered(node, state);
    }

    pub(super) fn group_of(&self, node: TaskNode) -> WorkerGroup {
        self.specs[node].worker_group.clone().unwrap_or_else(|| self.instance.worker_group.clone())
    }

    pub(super) fn change_workflow(&mut self, events: &[WorkflowEvent], update: WorkflowUpdate) -> Result<(), InvalidTransition> {
        let from = self.instance.state;
        let to = from.after(events)?;
        apply_workflow_update(&mut self.instance, &update);
        self.instance.state = to;
        self.step.workflow = Some(match self.step.workflow.take() {
            Some(mut earlier) => {
                earlier.events.extend_from_slice(events);
                earlier.update = merge_workflow_updates(earlier.update, update);
                earlier
            }
            None => WorkflowChange { from, events: events.to_vec(), update },
        });
        Ok(())
    }

    pub(super) fn queue_key(&self, node: TaskNode) -> Option<QueueKey> {
        let row = self.row(node)?;
        Some(QueueKey {
            workflow_priority: self.instance.priority,
            workflow_instance_id: self.instance.id,
            task_priority: row.priority,
            task_instance_id: row.id,
        })
    }

    /// The step's time (taken once per step).
    pub(super) fn now(&mut self) -> chrono::DateTime<chrono::Utc> {
        *self.step.now.get_or_insert_with(chrono::Utc::now)
    }

    pub(super) fn log(&mut self, node: TaskNode, lines: Vec<String>) {
        if let Some(row) = self.row(node) {
            let log = TaskLog { workflow_instance_id: self.instance.id, task_instance_id: row.id, attempt: row.attempt, lines };
            self.step.after.logs.push(log);
        }
    }

    /// Output parameters of the successful tasks upstream of `node`, nearer
    /// ones (later in topological order) winning.
    fn upstream_outputs(&self, node: TaskNode) -> Params {
        let ancestors = self.dag.ancestors(&[node]);
        let mut outputs = Params::new();
        for n in self.dag.topological_order().iter().filter(|n| **n != node && ancestors.contains(n)) {
            if let Some(task) = self.row(*n).filter(|t| t.state.is_success()) {
                outputs.extend(task.outputs.clone());
            }
        }
        outputs
    }

    /// The queue entry of `node`'s current attempt, or why its parameters
    /// cannot be resolved.
    pub(super) fn entry(&self, node: TaskNode) -> Result<QueueEntry, sluice_params::ExprError> {
        let row = self.row(node).expect("a dispatched task has a row");
        let dispatch = resolve::dispatch(&self.ctx, &self.instance, &self.def, &self.specs[node], row, self.upstream_outputs(node))?;
        Ok(QueueEntry { node, group: row.worker_group.to_string(), key: self.queue_key(node).expect("a row").encode(), dispatch: std::sync::Arc::new(dispatch) })
    }
}

fn apply_workflow_update(instance: &mut WorkflowInstance, update: &WorkflowUpdate) {
    if let Some(kind) = update.command_kind {
        instance.command_kind = kind;
    }
    if let Some(run) = update.run {
        instance.run = run;
    }
    if let Some(start) = update.start_time {
        instance.start_time = start;
    }
    if let Some(end) = update.end_time {
        instance.end_time = end;
    }
    if let Some(reason) = &update.reason {
        instance.reason = reason.clone();
    }
}

fn merge_workflow_updates(earlier: WorkflowUpdate, later: WorkflowUpdate) -> WorkflowUpdate {
    WorkflowUpdate {
        command_kind: later.command_kind.or(earlier.command_kind),
        run: later.run.or(earlier.run),
        start_time: later.start_time.or(earlier.start_time),
        end_time: later.end_time.or(earlier.end_time),
        reason: later.reason.or(earlier.reason),
    }
}
