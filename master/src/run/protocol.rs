//! The protocol with the driver: decisions accumulate in the step;
//! [`RunMachine::seal`] turns it into one write (what it changes) and keeps
//! what must follow the write until [`RunMachine::persisted`] says it is
//! done; the feedback of queue puts and withdrawals comes back the same way.
//! Before each seal the machine starts what became ready and ends the run if
//! it is over.

use std::collections::BTreeSet;

use chrono::Utc;
use sluice_domain::*;

use super::machine::{After, RunMachine, Slot, Uncertain, Withdrawal};
use super::*;

impl RunMachine {
    /// Finishes the current decision: starts what became ready, ends the run
    /// if it is over, and returns the step as effects: one write (its
    /// after-effects kept until it is persisted), or, with nothing to write,
    /// the after-effects themselves. While a write is outstanding the step
    /// is kept for the next seal.
    pub(super) fn seal(&mut self) -> Vec<Effect> {
        if self.outstanding.is_some() {
            return Vec::new();
        }
        self.conclude();
        let mut step = std::mem::take(&mut self.step);
        if !step.has_write() {
            return self.after_effects(step.after);
        }
        let write = RunWrite {
            workflow: step.workflow.take(),
            tasks: std::mem::take(&mut step.tasks),
            create: step.create.iter().map(|(_, n)| n.clone()).collect(),
            consume: std::mem::take(&mut step.consume),
        };
        // The nodes being created, in the write's order, for `persisted`.
        self.creating = step.create.iter().map(|(n, _)| *n).collect();
        self.outstanding = Some(step.after);
        vec![Effect::Write(write)]
    }

    /// The outstanding write is persisted: the rows it left replace the
    /// machine's copies, and what had to follow it happens.
    pub fn persisted(&mut self, written: RunWritten) -> Vec<Effect> {
        let after = self.outstanding.take().expect("a write was outstanding");
        if let Some(instance) = written.workflow {
            self.instance = instance;
        }
        for row in written.tasks {
            if let Some(node) = self.node_of(row.id) {
                self.slots[node] = Slot::Row(row);
            }
        }
        let creating = std::mem::take(&mut self.creating);
        debug_assert_eq!(creating.len(), written.created.len());
        for (node, row) in creating.into_iter().zip(written.created) {
            self.by_id.insert(row.id, node);
            self.slots[node] = Slot::Row(row);
        }
        let mut effects = self.after_effects(after);
        effects.extend(self.seal());
        effects
    }

    /// Turns what follows a write into effects. Dispatched tasks are
    /// resolved here, now that their rows (and ids) exist; one that cannot
    /// be resolved fails without running, and its failure may kill others
    /// before anything is queued.
    fn after_effects(&mut self, after: After) -> Vec<Effect> {
        let After { dispatch, requeue, withdraw, kill, cancel, mut logs, finish } = after;
        let mut entries = Vec::new();
        let asked: Vec<TaskNode> = dispatch.iter().chain(&requeue).copied().collect();
        for node in dispatch.into_iter().chain(requeue) {
            if self.state(node) != Some(TaskState::Dispatched) || self.row(node).is_some_and(|r| r.host.is_some()) {
                self.unqueued.remove(&node);
                continue;
            }
            match self.entry(node) {
                Ok(entry) => entries.push(entry),
                Err(error) => self.fail_unresolved(node, error),
            }
        }
        // A failure above may have killed some of them (strategy `end`).
        entries.retain(|e| self.state(e.node) == Some(TaskState::Dispatched));
        let queued_now: BTreeSet<TaskNode> = entries.iter().map(|e| e.node).collect();
        for node in asked.iter().filter(|n| !queued_now.contains(n)) {
            self.unqueued.remove(node);
        }
        logs.append(&mut self.step.after.logs);
        let mut effects = Vec::new();
        if !logs.is_empty() {
            effects.push(Effect::Log(logs));
        }
        if !kill.is_empty() {
            effects.push(Effect::Kill(kill));
        }
        if !cancel.is_empty() {
            effects.push(Effect::CancelInMaster(cancel));
        }
        let (in_master, queued): (Vec<QueueEntry>, Vec<QueueEntry>) =
            entries.into_iter().partition(|e| self.placements[e.node] == Placement::Master);
        if !queued.is_empty() {
            effects.push(Effect::Queue(queued));
        }
        if !in_master.is_empty() {
            for entry in &in_master {
                self.unqueued.remove(&entry.node);
            }
            effects.push(Effect::RunInMaster(in_master));
        }
        let withdraw: Vec<QueueRef> = withdraw
            .into_iter()
            .filter_map(|(node, why)| {
                let row = self.row(node)?;
                let kills = matches!(why, Withdrawal::Kill(_));
                let entry = QueueRef { node, attempt: row.attempt, group: row.worker_group.to_string(), key: self.queue_key(node)?.encode(), kills };
                self.withdrawing.insert(node, why);
                Some(entry)
            })
            .collect();
        if !withdraw.is_empty() {
            effects.push(Effect::Withdraw(withdraw));
        }
        if let Some(state) = finish {
            effects.push(Effect::Finish(state));
        }
        effects
    }

    fn fail_unresolved(&mut self, node: TaskNode, error: sluice_params::ExprError) {
        let reason = error.to_string();
        tracing::warn!(workflow_instance = %self.instance.id, task = %self.dag.name(node), %error, "task parameters cannot be resolved");
        self.unqueued.remove(&node);
        let update = TaskUpdate { message: Some(Some(reason.clone())), end_time: Some(Some(self.now())), ..Default::default() };
        self.change(node, &[TaskEvent::Fail], update).expect("a dispatched task may fail");
        self.log(node, vec![format!("failed before it started: {reason}")]);
        self.after_failure(node);
    }

    /// Queue puts are done (or may be): uncertain ones are checked later.
    pub fn queued(&mut self, results: Vec<(QueueEntry, Put)>, now: Timestamp) -> Vec<Effect> {
        for (entry, put) in results {
            self.unqueued.remove(&entry.node);
            if put == Put::Uncertain {
                tracing::warn!(workflow_instance = %self.instance.id, task = %self.dag.name(entry.node), "queue put interrupted; it may have been done: checking later");
                self.uncertain.insert(entry.node, Uncertain { attempt: entry.dispatch.attempt, since: now, entry });
            }
        }
        self.seal()
    }

    /// Queue entries were taken back (`true`) or had been taken by a
    /// worker already (`false`).
    pub fn withdrawn(&mut self, results: Vec<(QueueRef, bool)>) -> Vec<Effect> {
        for (entry, removed) in results {
            let Some(why) = self.withdrawing.remove(&entry.node) else { continue };
            let current = self.row(entry.node).is_some_and(|r| r.attempt == entry.attempt && r.state == TaskState::Dispatched);
            if !current {
                continue;
            }
            match (why, removed) {
                (Withdrawal::Kill(reason), true) => {
                    let update = TaskUpdate { end_time: Some(Some(self.now())), message: Some(Some(reason.clone())), kill_reason: Some(None), ..Default::default() };
                    self.change(entry.node, &[TaskEvent::Kill], update).expect("a dispatched task may be killed");
                }
                (Withdrawal::Kill(reason), false) => {
                    // A worker has it but has not reported it running yet.
                    self.kill_on_start.insert(entry.node, reason);
                }
                (Withdrawal::Pause, true) => {
                    self.change(entry.node, &[TaskEvent::Withdraw], TaskUpdate::default()).expect("a dispatched task may be withdrawn");
                }
                (Withdrawal::Pause, false) => {} // it runs; the pause waits for it
            }
        }
        self.seal()
    }

    /// Starts what became ready and ends the run if it is over, into the
    /// step.
    fn conclude(&mut self) {
        if self.finished.is_some() {
            return;
        }
        if self.may_start() {
            self.start_ready();
        }
        if let Some(state) = self.outcome() {
            self.finish(state);
        }
    }

    /// Creates (or, for rows of an earlier run, starts again) the ready
    /// tasks, dispatched at once, and skips the tasks whose inputs were all
    /// skipped, until nothing more is ready: a skip can unblock more.
    fn start_ready(&mut self) {
        while self.plan.has_next() {
            for node in self.plan.skippable() {
                let reason = "skipped: every upstream task was skipped or took another branch".to_string();
                match self.rerun.remove(&node) {
                    Some(row) => self.restart_row(node, row, &[TaskEvent::Rerun, TaskEvent::Skip], Some(reason)),
                    None => self.create(node, &[TaskEvent::Skip], Some(reason)),
                }
            }
            for node in self.plan.ready() {
                match self.rerun.remove(&node) {
                    Some(row) => self.restart_row(node, row, &[TaskEvent::Rerun, TaskEvent::Dispatch], None),
                    None => self.create(node, &[TaskEvent::Dispatch], None),
                }
            }
        }
    }

    /// A row of an earlier run starts a new attempt in this run.
    fn restart_row(&mut self, node: TaskNode, mut row: TaskInstance, events: &[TaskEvent], message: Option<String>) {
        let update = TaskUpdate {
            attempt: Some(row.attempt + 1),
            run: Some(self.instance.run),
            retries: Some(0),
            host: Some(None),
            exit_code: Some(None),
            retry_at: Some(None),
            start_time: Some(None),
            end_time: Some(message.as_ref().map(|_| Utc::now())),
            message: Some(message),
            outputs: Some(Params::new()),
            kill_reason: Some(None),
            branches: Some(None),
            external_id: Some(None),
            ..Default::default()
        };
        tracing::info!(task_instance = %row.id, attempt = row.attempt + 1, run = self.instance.run, "task runs again");
        let to = row.state.after(events).expect("earlier rows are final");
        let change = TaskChange { id: row.id, from: row.state, events: events.to_vec(), update };
        change.update.apply_to(&mut row);
        row.state = to;
        self.record(change);
        self.by_id.insert(row.id, node);
        self.slots[node] = Slot::Row(row);
        self.entered(node, to);
    }

    /// The run's final state once nothing is in flight and nothing more can
    /// start; `None` while it goes on. A pause ends as `paused` once nothing
    /// runs, unless the run is over anyway.
    fn outcome(&self) -> Option<WorkflowState> {
        let in_flight = self.count_of(&[TaskState::Dispatched, TaskState::Running]);
        if self.pausing && !self.stopping {
            if in_flight > 0 {
                return None;
            }
            let unhalted_may_start = !(self.instance.failure_strategy == FailureStrategy::End && self.has_failure());
            if self.unfinished() == 0 && !(unhalted_may_start && self.plan.has_next()) {
                return Some(self.task_outcome());
            }
            return Some(WorkflowState::Paused);
        }
        if self.unfinished() > 0 {
            return None;
        }
        if self.stopping {
            return Some(WorkflowState::Stopped);
        }
        if self.may_start() && self.plan.has_next() {
            return None;
        }
        Some(self.task_outcome())
    }

    fn task_outcome(&self) -> WorkflowState {
        if self.satisfied == self.plan.selected_count() {
            WorkflowState::Success
        } else {
            WorkflowState::Failure
        }
    }

    fn finish(&mut self, state: WorkflowState) {
        let (event, update) = match state {
            WorkflowState::Success => (WorkflowEvent::Succeed, WorkflowUpdate { end_time: Some(Some(Utc::now())), ..Default::default() }),
            WorkflowState::Failure => (WorkflowEvent::Fail, WorkflowUpdate { end_time: Some(Some(Utc::now())), ..Default::default() }),
            WorkflowState::Stopped => (WorkflowEvent::Stopped, WorkflowUpdate { end_time: Some(Some(Utc::now())), ..Default::default() }),
            WorkflowState::Paused => (WorkflowEvent::Paused, WorkflowUpdate::default()),
            other => unreachable!("not an outcome: {other}"),
        };
        self.change_workflow(&[event], update).expect("a run ends from running, pausing or stopping");
        self.finished = Some(state);
        self.step.after.finish = Some(state);
    }
}

