//! What the run machine does with workers' reports and operators'
//! commands, and the two rules both lead to: killing a task wherever it is,
//! and the failure strategy.

use chrono::Utc;
use sluice_domain::*;

use super::machine::{RunMachine, Slot, Withdrawal};
use super::*;

impl RunMachine {
    /// Reports that arrived together, in their order: one write for all of
    /// them and for what they make ready.
    pub fn on_reports(&mut self, reports: Vec<TaskReport>) -> Vec<Effect> {
        for report in reports {
            self.on_report(report);
        }
        self.seal()
    }

    fn on_report(&mut self, report: TaskReport) {
        let TaskReport { task_instance_id: id, attempt, worker, at, report } = report;
        let Some(node) = self.node_of(id) else {
            tracing::warn!(workflow_instance = %self.instance.id, task_instance = %id, "report for an unknown task instance");
            return;
        };
        let Some(row) = self.row(node) else { return };
        if row.attempt != attempt {
            tracing::debug!(task_instance = %id, attempt, current = row.attempt, "report of an earlier attempt ignored");
            return;
        }
        let (state, known_host) = (row.state, row.host.is_some());
        match report {
            Report::Running { pid, log_path } => {
                if state != TaskState::Dispatched {
                    return; // a repeat, or after the final report
                }
                tracing::info!(task_instance = %id, attempt, %worker, pid, "task running");
                let update = TaskUpdate {
                    host: Some(Some(worker)),
                    start_time: Some(Some(at)),
                    log_path: Some(Some(log_path.clone())).filter(|_| !log_path.is_empty()),
                    ..Default::default()
                };
                self.change(node, &[TaskEvent::Start], update).expect("dispatched → running");
                self.uncertain.remove(&node);
                if let Some(reason) = self.kill_on_start.remove(&node).or_else(|| self.kill_reason_for(node)) {
                    self.kill(node, reason);
                }
            }
            Report::Finished(finished) => {
                if !matches!(state, TaskState::Dispatched | TaskState::Running) {
                    return; // a repeat (final, or waiting for its retry)
                }
                self.kill_on_start.remove(&node);
                let mut update = TaskUpdate {
                    exit_code: Some(finished.exit_code),
                    end_time: Some(Some(at)),
                    message: Some(Some(finished.reason.clone())),
                    kill_reason: Some(None),
                    host: (!known_host).then_some(Some(worker)),
                    ..Default::default()
                };
                match finished.outcome {
                    Outcome::Success => {
                        tracing::info!(task_instance = %id, attempt, "task succeeded");
                        update.outputs = Some(finished.outputs);
                        self.change(node, &[TaskEvent::Succeed], update).expect("in flight → success");
                    }
                    Outcome::Killed => {
                        tracing::info!(task_instance = %id, attempt, reason = %finished.reason, "task killed");
                        self.change(node, &[TaskEvent::Kill], update).expect("in flight → killed");
                        self.after_failure(node);
                    }
                    Outcome::Failure => self.failed(node, finished.reason, update),
                }
            }
            Report::TimeoutWarning { timeout_ms } => {
                tracing::warn!(task_instance = %id, attempt, timeout_ms, "task exceeded its timeout");
            }
            Report::ExternalId(external) => {
                if !state.is_final() {
                    let update = TaskUpdate { external_id: Some(Some(external)), ..Default::default() };
                    self.change(node, &[], update).expect("no move");
                }
            }
        }
    }

    /// An attempt failed: a retry if one is left and nothing stops the run,
    /// else a failure for good.
    fn failed(&mut self, node: TaskNode, reason: String, mut update: TaskUpdate) {
        let row = self.row(node).expect("a reported task has a row");
        let halted = self.stopping
            || row.kill_reason.is_some()
            || (self.instance.failure_strategy == FailureStrategy::End && self.has_failure());
        if row.can_retry() && !halted {
            let interval = self.specs[node].retry_interval;
            let due = Utc::now() + chrono::Duration::from_std(interval).unwrap_or_default();
            tracing::info!(task_instance = %row.id, attempt = row.attempt, %reason, retry_in = ?interval, "task failed; will retry");
            update.retry_at = Some(Some(due));
            update.retries = Some(row.retries + 1);
            self.change(node, &[TaskEvent::FailWillRetry], update).expect("in flight → retry wait");
            self.retry_at.insert(node, due);
        } else {
            tracing::info!(task_instance = %row.id, attempt = row.attempt, %reason, "task failed");
            self.change(node, &[TaskEvent::Fail], update).expect("in flight → failure");
            self.after_failure(node);
        }
    }

    /// Why a task that is (about to be) running must be killed, if it must.
    pub(super) fn kill_reason_for(&self, node: TaskNode) -> Option<String> {
        if let Some(reason) = self.row(node).and_then(|r| r.kill_reason.clone()) {
            return Some(reason);
        }
        if self.stopping {
            return Some("workflow instance stopped".into());
        }
        if self.instance.failure_strategy == FailureStrategy::End && self.has_failure() {
            return Some("failure strategy end: another task failed".into());
        }
        None
    }

    /// The failure strategy, once `node` failed (or was killed) for good:
    /// `end` kills every other task still in flight.
    pub(super) fn after_failure(&mut self, node: TaskNode) {
        if self.instance.failure_strategy == FailureStrategy::End && !self.stopping {
            let reason = format!("failure strategy end: task `{}` failed", self.dag.name(node));
            for other in self.unfinished_nodes() {
                self.kill(other, reason.clone());
            }
        }
    }

    /// Tasks with a row that is not final, in node order.
    pub(super) fn unfinished_nodes(&self) -> Vec<TaskNode> {
        (0..self.slots.len()).filter(|&n| self.state(n).is_some_and(|s| !s.is_final())).collect()
    }

    /// Kills one task wherever it is: at once if it is not queued yet (or
    /// waits for a retry or a failover), out of the queue if no worker took
    /// it, on its worker (or in this master) if it runs.
    pub(super) fn kill(&mut self, node: TaskNode, reason: String) {
        let Slot::Row(row) = &self.slots[node] else { return };
        let placement = self.placements[node];
        match row.state {
            TaskState::Submitted | TaskState::RetryWait | TaskState::NeedFailover => {
                self.kill_now(node, &reason);
            }
            TaskState::Dispatched if self.unqueued.contains(&node) => {
                self.unqueued.remove(&node);
                self.kill_now(node, &reason);
            }
            TaskState::Dispatched | TaskState::Running if placement == Placement::Master => {
                let order = self.kill_order(node, reason);
                self.step.after.cancel.push(order);
            }
            TaskState::Dispatched => {
                if !self.withdrawing.contains_key(&node) && !self.step.after.withdraw.iter().any(|(n, _)| *n == node) {
                    self.step.after.withdraw.push((node, Withdrawal::Kill(reason)));
                } else {
                    // Being taken back for a pause: kill it if a worker has it.
                    self.kill_on_start.insert(node, reason);
                }
            }
            TaskState::Running => {
                let order = self.kill_order(node, reason);
                self.step.after.kill.push(order);
            }
            _ => {}
        }
    }

    fn kill_now(&mut self, node: TaskNode, reason: &str) {
        let update = TaskUpdate {
            end_time: Some(Some(self.now())),
            message: Some(Some(reason.to_owned())),
            kill_reason: Some(None),
            ..Default::default()
        };
        // No log of its own: the API serves the one line from the reason
        // (a stop of 10,000 queued tasks writes no 10,000 files).
        self.change(node, &[TaskEvent::Kill], update).expect("a task not running may be killed");
    }

    fn kill_order(&self, node: TaskNode, reason: String) -> KillOrder {
        let row = self.row(node).expect("a row");
        KillOrder {
            task_instance_id: row.id,
            attempt: row.attempt,
            task_type: row.task_type.clone(),
            host: row.host.clone().unwrap_or_else(|| self.ctx.master.clone()),
            external_id: row.external_id.clone(),
            reason,
        }
    }

    /// An operator command, consumed by the write that carries it out.
    pub fn on_command(&mut self, command: CommandId, operator: Operator) -> Vec<Effect> {
        self.step.consume.push(command);
        match operator {
            Operator::Stop => self.stop(),
            Operator::Pause => self.pause(),
            Operator::KillTasks(names) => {
                for name in names {
                    self.kill_by_operator(&name);
                }
            }
            Operator::ForceSuccess(names) => {
                for name in names {
                    self.force_success(&name);
                }
            }
        }
        self.seal()
    }

    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        tracing::info!(workflow_instance = %self.instance.id, "stopping");
        self.stopping = true;
        if self.change_workflow(&[WorkflowEvent::Stop], WorkflowUpdate::default()).is_err() {
            tracing::warn!(workflow_instance = %self.instance.id, state = %self.instance.state, "stop of an instance in a state that cannot stop");
            return;
        }
        for node in self.unfinished_nodes() {
            self.kill(node, "workflow instance stopped".into());
        }
    }

    /// Running tasks finish; queued ones go back to `submitted` (taken out
    /// of the queue), and nothing new starts until a resume.
    fn pause(&mut self) {
        if self.pausing || self.stopping || self.instance.state != WorkflowState::Running {
            tracing::info!(workflow_instance = %self.instance.id, state = %self.instance.state, "pause of an instance that is not simply running; nothing to do");
            return;
        }
        tracing::info!(workflow_instance = %self.instance.id, "pausing");
        self.pausing = true;
        self.change_workflow(&[WorkflowEvent::Pause], WorkflowUpdate::default()).expect("running → ready to pause");
        self.withdraw_queued();
    }

    /// Takes the queued tasks back for a pause.
    pub(super) fn withdraw_queued(&mut self) {
        for node in 0..self.slots.len() {
            let queued = self.placements[node] != Placement::Master
                && self.row(node).is_some_and(|r| r.state == TaskState::Dispatched && r.host.is_none());
            if queued && !self.withdrawing.contains_key(&node) {
                self.step.after.withdraw.push((node, Withdrawal::Pause));
            }
        }
    }

    fn kill_by_operator(&mut self, name: &str) {
        let Some(node) = self.dag.node(name) else {
            tracing::warn!(workflow_instance = %self.instance.id, task = %name, "kill of an unknown task");
            return;
        };
        let Some(row) = self.row(node) else {
            tracing::info!(workflow_instance = %self.instance.id, task = %name, "kill of a task that has not started; nothing to kill");
            return;
        };
        if row.state.is_final() {
            tracing::info!(workflow_instance = %self.instance.id, task = %name, state = %row.state, "kill of a finished task; nothing to kill");
            return;
        }
        let reason = "killed by an operator".to_string();
        if matches!(row.state, TaskState::Dispatched | TaskState::Running) {
            // Written with the command's consumption, so that a master that
            // takes over before the worker answers sends the kill again.
            let update = TaskUpdate { kill_reason: Some(Some(reason.clone())), ..Default::default() };
            self.change(node, &[], update).expect("no move");
        }
        self.kill(node, reason);
    }

    fn force_success(&mut self, name: &str) {
        match self.dag.node(name) {
            Some(node) if self.row(node).is_some_and(|r| r.state.is_failure()) => {
                tracing::info!(workflow_instance = %self.instance.id, task = %name, "task forced to success");
                self.change(node, &[TaskEvent::ForceSuccess], TaskUpdate::default()).expect("failed → forced success");
            }
            _ => tracing::warn!(workflow_instance = %self.instance.id, task = %name, "force-success of a task that has not failed; ignored"),
        }
    }
}
