//! What the run machine does when a driver starts (or takes over) a run,
//! and on its timers: retries that are due, tasks whose worker is gone,
//! queue puts that a registry outage left uncertain.

use std::collections::BTreeSet;

use chrono::Utc;
use sluice_domain::*;

use super::machine::{elapsed, RunMachine, NEVER_STARTED, UNCERTAIN_PUT_SETTLE};
use super::*;

impl RunMachine {
    /// The groups whose queue [`RunMachine::start`] wants listed.
    pub fn groups_at_start(&self) -> BTreeSet<String> {
        if !self.queue_lost_on_restart {
            return BTreeSet::new();
        }
        self.queued_rows().map(|n| self.row(n).expect("a row").worker_group.to_string()).collect()
    }

    /// Worker tasks marked dispatched that no worker reported running.
    fn queued_rows(&self) -> impl Iterator<Item = TaskNode> + '_ {
        (0..self.slots.len()).filter(|&n| {
            self.placements[n] != Placement::Master
                && self.row(n).is_some_and(|r| r.state == TaskState::Dispatched && r.host.is_none())
        })
    }

    /// The first decision of a driver: the instance starts (or is taken
    /// over), and whatever its stored state implies is done again, since the
    /// driver before may have died before doing it: kills an operator, a
    /// stop or the failure strategy asked for, a pause's withdrawals,
    /// dispatches of tasks waiting to be queued, and (with a queue that
    /// died with the process) puts of the entries it lost.
    pub fn start(&mut self, world: &dyn World) -> Vec<Effect> {
        match self.instance.state {
            WorkflowState::Submitted => {
                let update = WorkflowUpdate { start_time: Some(Some(Utc::now())), ..Default::default() };
                self.change_workflow(&[WorkflowEvent::Start], update).expect("submitted → running");
            }
            WorkflowState::NeedFailover => {
                self.change_workflow(&[WorkflowEvent::Adopt], WorkflowUpdate::default()).expect("need failover → running");
            }
            _ => {}
        }
        for node in self.unfinished_nodes() {
            if let Some(reason) = self.kill_reason_for(node) {
                self.kill(node, reason);
            }
        }
        if self.pausing && !self.stopping {
            self.withdraw_queued();
        }
        for node in self.unfinished_nodes() {
            match self.state(node) {
                Some(TaskState::Submitted) if self.may_start() => {
                    self.change(node, &[TaskEvent::Dispatch], TaskUpdate::default()).expect("submitted → dispatched");
                }
                Some(TaskState::NeedFailover) => self.redispatch(node),
                _ => {}
            }
        }
        if self.queue_lost_on_restart && !self.stopping && !self.pausing {
            let lost: Vec<TaskNode> = self
                .queued_rows()
                .filter(|&n| !self.unqueued.contains(&n))
                .filter(|&n| {
                    let row = self.row(n).expect("a row");
                    let key = self.queue_key(n).expect("a row").encode();
                    world.queued(row.worker_group.as_str()).is_some_and(|keys| !keys.contains(&key))
                })
                .collect();
            for node in lost {
                tracing::info!(workflow_instance = %self.instance.id, task = %self.dag.name(node), "queue entry lost with the process: put again");
                self.step.after.requeue.push(node);
            }
        }
        self.seal()
    }

    /// When the next retry is due, if one waits.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.stopping || self.pausing {
            return None;
        }
        self.retry_at.values().min().copied()
    }

    /// The groups whose queue the next tick needs listed: those with tasks
    /// taken long ago and never reported running, or uncertain puts due.
    /// Each is listed once per tick, however many tasks wait in it.
    pub fn groups_to_list(&self, now: Timestamp) -> BTreeSet<String> {
        let mut groups: BTreeSet<String> = self
            .uncertain
            .values()
            .filter(|u| elapsed(u.since, now) >= UNCERTAIN_PUT_SETTLE)
            .map(|u| u.entry.group.clone())
            .collect();
        let patience = NEVER_STARTED.max(self.grace * 2);
        for node in self.queued_rows() {
            let row = self.row(node).expect("a row");
            if !self.unqueued.contains(&node) && !self.uncertain.contains_key(&node) && elapsed(row.updated_at, now) > patience {
                groups.insert(row.worker_group.to_string());
            }
        }
        groups
    }

    /// The timers: retries due, the watchdog, uncertain puts.
    pub fn on_tick(&mut self, now: Timestamp, world: &dyn World) -> Vec<Effect> {
        if !self.stopping && !self.pausing {
            let due: Vec<TaskNode> = self.retry_at.iter().filter(|(_, at)| **at <= now).map(|(n, _)| *n).collect();
            for node in due {
                self.retry_at.remove(&node);
                self.retry(node);
            }
        }
        self.check_workers(now, world);
        self.settle_puts(now, world);
        self.seal()
    }

    fn retry(&mut self, node: TaskNode) {
        let row = self.row(node).expect("a task waiting for its retry has a row");
        let attempt = row.attempt + 1;
        tracing::info!(task_instance = %row.id, attempt, "retrying");
        let update = TaskUpdate { attempt: Some(attempt), ..fresh_attempt() };
        self.change(node, &[TaskEvent::RetryDue, TaskEvent::Dispatch], update).expect("retry wait → dispatched");
    }

    /// Gives a new attempt elsewhere to tasks whose worker is gone: running
    /// on a worker missing for longer than the grace period (or back as a
    /// new process), or taken from the queue and never reported running.
    fn check_workers(&mut self, now: Timestamp, world: &dyn World) {
        let patience = NEVER_STARTED.max(self.grace * 2);
        let mut lost = Vec::new();
        for node in 0..self.slots.len() {
            if self.placements[node] == Placement::Master {
                continue;
            }
            let Some(row) = self.row(node) else { continue };
            match (row.state, &row.host) {
                (TaskState::Running, Some(host)) => match world.worker(row.worker_group.as_str(), host) {
                    // The worker was alive when it reported the attempt
                    // running, whatever this master's view of the registry
                    // (which lags after a ZooKeeper outage) says: it is lost
                    // only if missing for the grace period since then too.
                    WorkerSeen::Missing(missing) if missing.min(elapsed(row.updated_at, now)) > self.grace => {
                        lost.push((node, format!("worker {host} lost")));
                    }
                    // Back at the same address, but as a new process: the
                    // attempt died with the old one. Both times come from
                    // the worker's clock; start times are whole milliseconds.
                    WorkerSeen::Live { started_at: Some(started_at) }
                        if row.start_time.is_some_and(|t| t.timestamp_millis() < started_at.timestamp_millis()) =>
                    {
                        lost.push((node, format!("worker {host} restarted since the attempt started")));
                    }
                    _ => {}
                },
                (TaskState::Dispatched, None)
                    if !self.unqueued.contains(&node) && !self.uncertain.contains_key(&node) && elapsed(row.updated_at, now) > patience =>
                {
                    let key = self.queue_key(node).expect("a row").encode();
                    if world.queued(row.worker_group.as_str()).is_some_and(|keys| !keys.contains(&key)) {
                        lost.push((node, "taken from the queue but never reported running".into()));
                    }
                }
                _ => {}
            }
        }
        for (node, reason) in lost {
            self.fail_over(node, reason);
        }
    }

    /// The attempt on a lost worker is over; a new one (a failover, not a
    /// retry) is queued for another worker of the group.
    fn fail_over(&mut self, node: TaskNode, reason: String) {
        let row = self.row(node).expect("a row");
        tracing::warn!(task_instance = %row.id, attempt = row.attempt, %reason, "task failing over");
        self.kill_on_start.remove(&node);
        let ended = TaskUpdate { message: Some(Some(reason)), end_time: Some(Some(self.now())), ..Default::default() };
        self.change(node, &[TaskEvent::WorkerLost], ended).expect("in flight → need failover");
        if self.stopping {
            self.change(node, &[TaskEvent::Kill], TaskUpdate::default()).expect("need failover → killed");
            return;
        }
        self.redispatch(node);
    }

    fn redispatch(&mut self, node: TaskNode) {
        let row = self.row(node).expect("a row");
        let update = TaskUpdate { attempt: Some(row.attempt + 1), failovers: Some(row.failovers + 1), ..fresh_attempt() };
        self.change(node, &[TaskEvent::Redispatch, TaskEvent::Dispatch], update).expect("need failover → dispatched");
    }

    /// Settles the interrupted queue puts whose time has come: an attempt
    /// reported running, or whose entry is in the queue, was put; one that
    /// is neither was not, or was taken by a worker that died at once: it
    /// is put again (a worker that ran it remembers it and skips it).
    fn settle_puts(&mut self, now: Timestamp, world: &dyn World) {
        let due: Vec<TaskNode> = self.uncertain.iter().filter(|(_, u)| elapsed(u.since, now) >= UNCERTAIN_PUT_SETTLE).map(|(n, _)| *n).collect();
        for node in due {
            let Some(keys) = world.queued(&self.uncertain[&node].entry.group) else { continue };
            let put = self.uncertain.remove(&node).expect("due");
            let current = self.row(node).is_some_and(|r| r.state == TaskState::Dispatched && r.attempt == put.attempt && r.host.is_none());
            if !current || keys.contains(&put.entry.key) {
                continue;
            }
            tracing::warn!(task_instance = %put.entry.dispatch.task_instance_id, attempt = put.attempt, "interrupted queue put not found in the queue and the attempt never started: putting it again");
            self.unqueued.insert(node);
            self.step.after.requeue.push(node);
        }
    }
}

/// The fields a new attempt starts from.
fn fresh_attempt() -> TaskUpdate {
    TaskUpdate {
        host: Some(None),
        exit_code: Some(None),
        retry_at: Some(None),
        start_time: Some(None),
        end_time: Some(None),
        kill_reason: Some(None),
        external_id: Some(None),
        ..Default::default()
    }
}
