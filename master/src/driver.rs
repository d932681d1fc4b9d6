//! One workflow instance, driven as an async state machine on a tokio task.
//!
//! The driver owns the instance's in-memory state, persists every transition
//! through the store (fenced by the instance's owner epoch) before acting on
//! it, and reacts to task events, operator requests and retry timers. Pure
//! decisions (what is ready, whether the run is over) come from
//! [`sluice_domain::RunView`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use sluice_domain::*;
use sluice_proto::v1::task_event_request::Event;
use sluice_proto::v1::{TaskEventRequest, TaskOutcome};
use sluice_registry::RegistryError;
use sluice_storage::StoreError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::workers::WorkerSeen;
use crate::Shared;

/// What a driver is told.
pub(crate) enum DriverMsg {
    /// A worker's event; `ack` says whether it was taken into account
    /// (persisted, or recognised as stale).
    Event { event: TaskEventRequest, ack: oneshot::Sender<bool> },
    /// Operator: stop the instance, killing its running tasks.
    Stop,
    /// Operator: kill one task of the instance.
    KillTask { task: String },
    /// Operator: let running tasks finish, start nothing new.
    Pause,
    /// Operator: a failed or killed task counts as successful from now on.
    ForceSuccess { task: String },
}

/// Why a driver gave up its instance.
#[derive(Debug, thiserror::Error)]
enum Abort {
    /// Another master adopted the instance; this one must not touch it.
    #[error("fenced: {0}")]
    Fenced(StoreError),
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("registry: {0}")]
    Registry(RegistryError),
    #[error("master shutting down")]
    Shutdown,
    #[error("{0}")]
    Broken(String),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { .. } => Abort::Fenced(e),
            other => Abort::Store(other),
        }
    }
}

impl From<RegistryError> for Abort {
    fn from(e: RegistryError) -> Self {
        Abort::Registry(e)
    }
}

/// Starts driving `instance` (already owned by this master) and registers
/// its message channel.
pub(crate) fn spawn(shared: Arc<Shared>, instance: WorkflowInstance) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = instance.id;
    shared.drivers.lock().expect("drivers lock").insert(id, tx);
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        let loaded = loop {
            match Driver::load(shared.clone(), instance.clone()).await {
                Err(Abort::Store(error)) if error.is_retryable() => {
                    tracing::warn!(workflow_instance = %id, %error, retry_in = ?wait, "database unavailable while loading; retrying");
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => break Err(Abort::Shutdown),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => break other,
            }
        };
        let result = match loaded {
            Ok(mut driver) => driver.run(rx).await,
            Err(abort) => {
                drop(rx);
                Err(abort)
            }
        };
        {
            // Only this driver's entry: its receiver is gone, so its sender
            // reads closed. A newer driver of the same instance stays.
            let mut drivers = shared.drivers.lock().expect("drivers lock");
            if drivers.get(&id).is_some_and(|tx| tx.is_closed()) {
                drivers.remove(&id);
            }
        }
        match result {
            Ok(state) => tracing::info!(workflow_instance = %id, %state, "workflow instance finished"),
            Err(Abort::Shutdown) => tracing::info!(workflow_instance = %id, "left for another master: shutting down"),
            Err(Abort::Fenced(e)) => tracing::warn!(workflow_instance = %id, error = %e, "no longer the owner; letting go"),
            Err(e) => tracing::error!(workflow_instance = %id, error = %e, "driver failed; the instance is left for recovery"),
        }
    });
}

struct Driver {
    shared: Arc<Shared>,
    instance: WorkflowInstance,
    fence: Fence,
    def: WorkflowDefinition,
    dag: Dag,
    project: String,
    project_params: Params,
    /// The zone schedule times and time expressions are read in: the
    /// workflow's cron schedule's, else UTC.
    timezone: sluice_params::Tz,
    selected: BTreeSet<TaskNode>,
    tasks: HashMap<TaskNode, TaskInstance>,
    /// Task instances of an earlier run that this run (a rerun or a
    /// recover) runs again: they count as not created until the planner
    /// reaches them, then start a new attempt.
    rerun: HashMap<TaskNode, TaskInstance>,
    /// Retry timers of tasks in `RetryWait`.
    retry_at: HashMap<TaskNode, Instant>,
    /// Tasks to kill as soon as a worker reports them running (their queue
    /// entry was already taken when the kill was decided).
    kill_on_start: HashMap<TaskNode, String>,
    stopping: bool,
    pausing: bool,
    /// Queue puts interrupted by a registry outage: the put may have been
    /// done before the connection broke, and the entry taken since, so it
    /// is not simply sent again (a worker would run the attempt twice). Once
    /// [`UNCERTAIN_PUT_SETTLE`] has passed without the attempt being reported
    /// running, and its entry is not in the queue, it is put again.
    uncertain_puts: HashMap<TaskNode, UncertainPut>,
    /// Task instance id → task, see [`Driver::node_of`].
    by_id: HashMap<TaskInstanceId, TaskNode>,
}

struct UncertainPut {
    attempt: u32,
    since: Instant,
    group: String,
    key: String,
    payload: Vec<u8>,
}

/// Runs a call until it succeeds or fails for good, retrying with backoff
/// while `$transient` says the error will pass: the driver waits instead of
/// giving its instance up (nobody would drive it until this master restarts).
macro_rules! retrying {
    ($driver:expr, $call:expr, $transient:ident, $what:literal) => {{
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match $call.await {
                Err(error) if error.$transient() => {
                    tracing::warn!(workflow_instance = %$driver.instance.id, %error, retry_in = ?wait, concat!($what, " unavailable; retrying"));
                    tokio::select! {
                        _ = $driver.shared.shutdown.cancelled() => break Err(Abort::Shutdown),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                other => break other.map_err(Abort::from),
            }
        }
    }};
}

/// A store call, retried while the database is unreachable (a PostgreSQL
/// restart, a network cut).
macro_rules! persist {
    ($driver:expr, $call:expr) => {
        retrying!($driver, $call, is_retryable, "database")
    };
}

/// A registry call, retried while ZooKeeper is unreachable or the registry
/// is renewing an expired session.
macro_rules! coordinate {
    ($driver:expr, $call:expr) => {
        retrying!($driver, $call, is_transient, "registry")
    };
}

/// How long an interrupted queue put is given to show it was done (its
/// attempt reported running) before it is checked and, if need be, done
/// again: a worker reports an attempt it took within moments.
const UNCERTAIN_PUT_SETTLE: Duration = Duration::from_secs(5);
/// How often a driver looks for tasks whose worker is gone.
const WATCHDOG: Duration = Duration::from_secs(1);
/// How long a task may sit taken from the queue without a `running` event
/// before its worker is presumed dead (a worker reports within moments).
const NEVER_STARTED: Duration = Duration::from_secs(60);

/// Most messages a driver takes in one go.
const BURST: usize = 512;

/// A plain task event, as [`Driver::plain_event`] sees it.
enum Plain {
    /// Already taken into account: acknowledged, nothing to write.
    Repeat,
    Apply { node: TaskNode, event: TaskEvent, update: Box<TaskUpdate> },
}

/// Plain task events of a burst, merged per task, not yet persisted.
#[derive(Default)]
struct PlainEvents {
    /// A task's state after its events, and their changes merged in order.
    changes: Vec<(TaskNode, TaskState, TaskUpdate)>,
    index: HashMap<TaskNode, usize>,
    acks: Vec<oneshot::Sender<bool>>,
}

impl PlainEvents {
    fn state(&self, node: TaskNode) -> Option<TaskState> {
        self.index.get(&node).map(|&i| self.changes[i].1)
    }

    fn has_host(&self, node: TaskNode) -> bool {
        self.index.get(&node).is_some_and(|&i| matches!(self.changes[i].2.host, Some(Some(_))))
    }

    fn add(&mut self, node: TaskNode, state: TaskState, update: TaskUpdate, ack: oneshot::Sender<bool>) {
        match self.index.get(&node) {
            Some(&i) => {
                let (_, merged_state, merged) = &mut self.changes[i];
                *merged_state = state;
                *merged = std::mem::take(merged).then(update);
            }
            None => {
                self.index.insert(node, self.changes.len());
                self.changes.push((node, state, update));
            }
        }
        self.acks.push(ack);
    }
}

fn ms_to_time(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

impl Driver {
    async fn load(shared: Arc<Shared>, instance: WorkflowInstance) -> Result<Driver, Abort> {
        let store = &shared.store;
        let def = store
            .workflow_by_id(instance.workflow_id, Some(instance.workflow_version))
            .await?
            .ok_or_else(|| Abort::Broken(format!("workflow {} version {} is gone", instance.workflow_id, instance.workflow_version)))?;
        let dag = def.spec().validate().map_err(|e| Abort::Broken(format!("stored workflow is invalid: {e}")))?;
        let project = store
            .project_by_id(instance.project_id)
            .await?
            .ok_or_else(|| Abort::Broken(format!("project {} is gone", instance.project_id)))?;
        let timezone = match store.schedule(instance.workflow_id).await? {
            Some(Schedule { trigger: Trigger::Cron { timezone, .. }, .. }) => {
                sluice_params::timezone(&timezone).unwrap_or(sluice_params::Tz::UTC)
            }
            _ => sluice_params::Tz::UTC,
        };
        let mut tasks = HashMap::new();
        let mut retry_at = HashMap::new();
        for task in store.task_instances(instance.id).await? {
            let Some(node) = dag.node(&task.name) else { continue };
            if task.state == TaskState::RetryWait {
                let due = task.retry_at.unwrap_or_else(Utc::now);
                let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                retry_at.insert(node, Instant::now() + wait);
            }
            tasks.insert(node, task);
        }
        // A rerun runs every task again; a recover the failed and killed
        // ones and everything below them. Rows already re-run in this run
        // (before a failover) are current.
        let earlier: Vec<TaskNode> = tasks.iter().filter(|(_, t)| t.run < instance.run).map(|(n, _)| *n).collect();
        let again: BTreeSet<TaskNode> = match instance.command_kind {
            CommandKind::Rerun => earlier.iter().copied().collect(),
            CommandKind::RecoverFailure => {
                let failed: Vec<TaskNode> = earlier.iter().copied().filter(|n| !tasks[n].state.is_success()).collect();
                dag.descendants(&failed).into_iter().filter(|n| earlier.contains(n)).collect()
            }
            _ => BTreeSet::new(),
        };
        let mut rerun = HashMap::new();
        for node in again {
            if let Some(task) = tasks.remove(&node) {
                retry_at.remove(&node);
                rerun.insert(node, task);
            }
        }
        let selected: BTreeSet<TaskNode> = if instance.start_tasks.is_empty() {
            (0..dag.len()).collect()
        } else {
            let start: Vec<&str> = instance.start_tasks.iter().map(String::as_str).collect();
            dag.select(&start, instance.scope.unwrap_or(RunScope::Only))
                .map_err(|e| Abort::Broken(format!("run selection: {e}")))?
        };
        Ok(Driver {
            fence: instance.fence(),
            project: project.name,
            project_params: project.params,
            timezone,
            shared,
            instance,
            def,
            dag,
            selected,
            tasks,
            rerun,
            retry_at,
            kill_on_start: HashMap::new(),
            uncertain_puts: HashMap::new(),
            by_id: HashMap::new(),
            stopping: false,
            pausing: false,
        })
    }

    fn states(&self) -> HashMap<TaskNode, TaskState> {
        self.tasks.iter().map(|(n, t)| (*n, t.state)).collect()
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<DriverMsg>) -> Result<WorkflowState, Abort> {
        match self.instance.state {
            WorkflowState::Submitted => {
                self.set_workflow_state(WorkflowEvent::Start, Some(Some(Utc::now())), None).await?;
            }
            WorkflowState::NeedFailover => self.set_workflow_state(WorkflowEvent::Adopt, None, None).await?,
            WorkflowState::ReadyStop => self.stopping = true,
            WorkflowState::ReadyPause => self.pausing = true,
            _ => {}
        }
        // Tasks created but never queued (a crash between the two writes).
        let unqueued: Vec<TaskNode> = self.tasks.iter().filter(|(_, t)| t.state == TaskState::Submitted).map(|(n, _)| *n).collect();
        for node in unqueued {
            self.dispatch(node).await?;
        }
        self.dispatch_ready().await?;
        let shutdown = self.shared.shutdown.clone();
        let mut watchdog = tokio::time::interval(WATCHDOG);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.pausing && !self.stopping && !self.tasks.values().any(|t| t.state.is_active()) {
                // Nothing in flight: the run is over, or it rests paused.
                let states = self.states();
                let unhalted = RunView { halted: false, ..self.view(&states) };
                if !unhalted.has_active() && unhalted.ready().is_empty() {
                    if let Some(outcome) = unhalted.outcome(false) {
                        return self.finish(outcome).await;
                    }
                }
                self.set_workflow_state(WorkflowEvent::Paused, None, None).await?;
                return Ok(WorkflowState::Paused);
            }
            let states = self.states();
            let view = self.view(&states);
            if let Some(outcome) = view.outcome(self.stopping) {
                return self.finish(outcome).await;
            }
            let next_retry = self.retry_at.values().min().copied();
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Abort::Shutdown),
                msg = rx.recv() => match msg {
                    None => return Err(Abort::Shutdown),
                    Some(msg) => {
                        let mut burst = vec![msg];
                        while burst.len() < BURST {
                            match rx.try_recv() {
                                Ok(msg) => burst.push(msg),
                                Err(_) => break,
                            }
                        }
                        self.handle_burst(burst).await?;
                    }
                },
                _ = async { tokio::time::sleep_until(next_retry.expect("guarded")).await }, if next_retry.is_some() => {
                    self.retry_due().await?;
                }
                _ = watchdog.tick() => {
                    self.settle_puts().await?;
                    self.check_workers().await?;
                    self.dispatch_ready().await?;
                }
            }
        }
    }

    fn view<'a>(&'a self, states: &'a HashMap<TaskNode, TaskState>) -> RunView<'a> {
        RunView {
            dag: &self.dag,
            selected: &self.selected,
            states,
            failure_strategy: self.instance.failure_strategy,
            halted: self.stopping || self.pausing,
        }
    }

    /// Handles messages that arrived together, in their order. Runs of
    /// plain task events (started, succeeded) are persisted in one
    /// transaction and acknowledged after it; anything else is handled on
    /// its own once the events before it are persisted. What became ready
    /// is dispatched once, at the end.
    async fn handle_burst(&mut self, burst: Vec<DriverMsg>) -> Result<(), Abort> {
        let mut plain = PlainEvents::default();
        for msg in burst {
            match msg {
                DriverMsg::Event { event, ack } => match self.plain_event(&plain, &event) {
                    Some(Plain::Repeat) => {
                        let _ = ack.send(true);
                    }
                    Some(Plain::Apply { node, event, update }) => {
                        let next = plain.state(node).unwrap_or(self.tasks[&node].state).transition(event);
                        match next {
                            Ok(next) => plain.add(node, next, *update, ack),
                            Err(error) => {
                                let _ = ack.send(false);
                                return Err(Abort::Broken(error.to_string()));
                            }
                        }
                    }
                    None => {
                        self.flush(&mut plain).await?;
                        self.handle(DriverMsg::Event { event, ack }).await?;
                    }
                },
                other => {
                    self.flush(&mut plain).await?;
                    self.handle(other).await?;
                }
            }
        }
        self.flush_and_dispatch(plain).await
    }

    /// Persists the pending plain events together with the task instances
    /// they make ready (created already dispatched), in one commit, then
    /// acknowledges the events and queues the new tasks: a hand-off from a
    /// task to its successor costs one commit.
    async fn flush_and_dispatch(&mut self, mut plain: PlainEvents) -> Result<(), Abort> {
        if plain.changes.is_empty() || !self.rerun.is_empty() {
            // A rerun's tasks start new attempts of existing rows: the
            // general path handles them.
            self.flush(&mut plain).await?;
            return self.dispatch_ready().await;
        }
        let ready = {
            let mut states = self.states();
            for (node, state, _) in &plain.changes {
                states.insert(*node, *state);
            }
            self.view(&states).ready()
        };
        self.persist_plain(plain, &ready).await?;
        if !ready.is_empty() {
            self.dispatch_all(ready).await?;
        }
        Ok(())
    }

    /// Whether `event` is a plain one: a task of this attempt reported
    /// running or successful, with nothing else to do about it than to
    /// persist it (or a repeat of such an event). `None`: anything else,
    /// for [`Self::on_event`].
    fn plain_event(&mut self, pending: &PlainEvents, event: &TaskEventRequest) -> Option<Plain> {
        let id = TaskInstanceId(event.task_instance_id);
        let node = self.node_of(id)?;
        let task = &self.tasks[&node];
        if task.attempt != event.attempt || self.kill_on_start.contains_key(&node) {
            return None;
        }
        let state = pending.state(node).unwrap_or(task.state);
        let at = ms_to_time(event.event_time_ms);
        match &event.event {
            Some(Event::Running(running)) => {
                if state != TaskState::Dispatched {
                    return Some(Plain::Repeat);
                }
                tracing::info!(task_instance = %id, attempt = event.attempt, worker = %event.worker, pid = running.pid, "task running");
                Some(Plain::Apply {
                    node,
                    event: TaskEvent::Start,
                    update: Box::new(TaskUpdate {
                        host: Some(Some(event.worker.clone())),
                        start_time: Some(Some(at)),
                        log_path: Some(Some(running.log_path.clone())).filter(|p| p.as_ref().is_some_and(|p| !p.is_empty())),
                        ..Default::default()
                    }),
                })
            }
            Some(Event::Finished(finished)) if finished.outcome == TaskOutcome::Success as i32 => {
                if state.is_final() || state == TaskState::RetryWait {
                    return Some(Plain::Repeat);
                }
                tracing::info!(task_instance = %id, attempt = event.attempt, "task succeeded");
                let known_host = task.host.is_some() || pending.has_host(node);
                Some(Plain::Apply {
                    node,
                    event: TaskEvent::Succeed,
                    update: Box::new(TaskUpdate {
                        exit_code: Some(finished.exit_code),
                        end_time: Some(Some(at)),
                        message: Some(Some(finished.reason.clone())),
                        outputs: Some(finished.outputs.clone().into_iter().collect()),
                        host: (!known_host).then(|| Some(event.worker.clone())),
                        ..Default::default()
                    }),
                })
            }
            _ => None,
        }
    }

    /// Persists the pending plain events in one transaction, then
    /// acknowledges them.
    async fn flush(&mut self, plain: &mut PlainEvents) -> Result<(), Abort> {
        if plain.changes.is_empty() {
            return Ok(());
        }
        self.persist_plain(std::mem::take(plain), &[]).await
    }

    /// Persists plain events and creates the `ready` tasks' instances
    /// (already dispatched) in one transaction, then acknowledges the
    /// events.
    async fn persist_plain(&mut self, plain: PlainEvents, ready: &[TaskNode]) -> Result<(), Abort> {
        let PlainEvents { changes, acks, .. } = plain;
        let updates: Vec<(TaskInstanceId, TaskUpdate)> = changes
            .iter()
            .map(|(node, state, update)| (self.tasks[node].id, TaskUpdate { state: Some(*state), ..update.clone() }))
            .collect();
        let news = self.new_task_instances(ready);
        let (updated, created) = persist!(self, self.shared.store.update_and_create_dispatched(self.fence, &updates, &news))?;
        for ((node, _, _), task) in changes.into_iter().zip(updated) {
            self.tasks.insert(node, task);
        }
        for (node, task) in ready.iter().zip(created) {
            self.tasks.insert(*node, task);
        }
        for ack in acks {
            let _ = ack.send(true);
        }
        Ok(())
    }

    /// The task a task instance id is of. The index is a cache checked
    /// against `tasks`, refreshed by a scan when it misses, so no write path
    /// has to maintain it: an event costs O(1) instead of a scan of every
    /// task of a 10,000-task instance.
    fn node_of(&mut self, id: TaskInstanceId) -> Option<TaskNode> {
        if let Some(&node) = self.by_id.get(&id) {
            if self.tasks.get(&node).is_some_and(|t| t.id == id) {
                return Some(node);
            }
        }
        self.by_id = self.tasks.iter().map(|(node, t)| (t.id, *node)).collect();
        self.by_id.get(&id).copied()
    }

    async fn handle(&mut self, msg: DriverMsg) -> Result<(), Abort> {
        match msg {
            DriverMsg::Event { event, ack } => {
                let result = self.on_event(event).await;
                let _ = ack.send(result.is_ok());
                result?;
            }
            DriverMsg::Stop => self.stop().await?,
            DriverMsg::Pause => self.pause().await?,
            DriverMsg::ForceSuccess { task } => match self.dag.node(&task) {
                Some(node) if self.tasks.get(&node).is_some_and(|t| matches!(t.state, TaskState::Failure | TaskState::Killed)) => {
                    tracing::info!(workflow_instance = %self.instance.id, %task, "task forced to success");
                    self.set_task_state(node, TaskEvent::ForceSuccess, TaskUpdate::default()).await?;
                }
                _ => tracing::warn!(workflow_instance = %self.instance.id, %task, "force-success for a task that has not failed; ignored"),
            },
            DriverMsg::KillTask { task } => {
                if let Some(node) = self.dag.node(&task) {
                    self.kill(node, "killed by operator".into()).await?;
                } else {
                    tracing::warn!(workflow_instance = %self.instance.id, %task, "kill request for an unknown task");
                }
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, event: TaskEventRequest) -> Result<(), Abort> {
        let id = TaskInstanceId(event.task_instance_id);
        let Some((node, task)) = self.node_of(id).map(|node| (node, &self.tasks[&node])) else {
            tracing::warn!(workflow_instance = %self.instance.id, task_instance = %id, "event for an unknown task instance");
            return Ok(());
        };
        if task.attempt != event.attempt {
            tracing::debug!(task_instance = %id, attempt = event.attempt, current = task.attempt, "event of an earlier attempt ignored");
            return Ok(());
        }
        let at = ms_to_time(event.event_time_ms);
        match event.event {
            Some(Event::Running(running)) => {
                if task.state != TaskState::Dispatched {
                    return Ok(()); // a repeat, or after the final event
                }
                tracing::info!(task_instance = %id, attempt = event.attempt, worker = %event.worker, pid = running.pid, "task running");
                let update = TaskUpdate {
                    host: Some(Some(event.worker.clone())),
                    start_time: Some(Some(at)),
                    log_path: Some(Some(running.log_path)).filter(|p| p.as_ref().is_some_and(|p| !p.is_empty())),
                    ..Default::default()
                };
                self.set_task_state(node, TaskEvent::Start, update).await?;
                if let Some(reason) = self.kill_on_start.remove(&node) {
                    self.send_kill(node, reason);
                }
            }
            Some(Event::Finished(finished)) => {
                if task.state.is_final() || task.state == TaskState::RetryWait {
                    return Ok(()); // a repeat
                }
                let outcome = TaskOutcome::try_from(finished.outcome).unwrap_or(TaskOutcome::Unspecified);
                let mut update = TaskUpdate {
                    exit_code: Some(finished.exit_code),
                    end_time: Some(Some(at)),
                    message: Some(Some(finished.reason.clone())),
                    ..Default::default()
                };
                if task.host.is_none() {
                    update.host = Some(Some(event.worker.clone()));
                }
                self.kill_on_start.remove(&node);
                match outcome {
                    TaskOutcome::Success => {
                        tracing::info!(task_instance = %id, attempt = event.attempt, "task succeeded");
                        update.outputs = Some(finished.outputs.into_iter().collect());
                        self.set_task_state(node, TaskEvent::Succeed, update).await?;
                    }
                    TaskOutcome::Killed => {
                        tracing::info!(task_instance = %id, attempt = event.attempt, reason = %finished.reason, "task killed");
                        self.set_task_state(node, TaskEvent::Kill, update).await?;
                        self.after_failure(node).await?;
                    }
                    TaskOutcome::Failure | TaskOutcome::Unspecified => {
                        let halted = self.stopping
                            || (self.instance.failure_strategy == FailureStrategy::End && self.view(&self.states()).has_failure());
                        let task = &self.tasks[&node];
                        if task.can_retry() && !halted {
                            let interval = self.task_spec(node).retry_interval;
                            tracing::info!(task_instance = %id, attempt = event.attempt, reason = %finished.reason, retry_in = ?interval, "task failed; will retry");
                            update.retry_at = Some(Some(Utc::now() + chrono::Duration::from_std(interval).unwrap_or_default()));
                            update.retries = Some(task.retries + 1);
                            self.set_task_state(node, TaskEvent::FailWillRetry, update).await?;
                            self.retry_at.insert(node, Instant::now() + interval);
                        } else {
                            tracing::info!(task_instance = %id, attempt = event.attempt, reason = %finished.reason, "task failed");
                            self.set_task_state(node, TaskEvent::Fail, update).await?;
                            self.after_failure(node).await?;
                        }
                    }
                }
            }
            Some(Event::TimeoutWarning(w)) => {
                tracing::warn!(task_instance = %id, attempt = event.attempt, timeout_ms = w.timeout_ms, "task exceeded its timeout");
            }
            None => {}
        }
        Ok(())
    }

    /// Applies the failure strategy once a task failed (or was killed) for good.
    async fn after_failure(&mut self, node: TaskNode) -> Result<(), Abort> {
        if self.instance.failure_strategy == FailureStrategy::End && !self.stopping {
            let reason = format!("failure strategy end: task `{}` failed", self.dag.name(node));
            for other in self.active_nodes() {
                self.kill(other, reason.clone()).await?;
            }
        }
        Ok(())
    }

    fn active_nodes(&self) -> Vec<TaskNode> {
        let mut nodes: Vec<TaskNode> = self.tasks.iter().filter(|(_, t)| !t.state.is_final()).map(|(n, _)| *n).collect();
        nodes.sort_unstable();
        nodes
    }

    /// Gives a new attempt elsewhere to tasks whose worker is gone: running
    /// on a worker missing for longer than the grace period, or taken from
    /// the queue and never reported running (the worker died in between).
    async fn check_workers(&mut self) -> Result<(), Abort> {
        let grace = self.shared.config.failover_grace;
        let mut lost = Vec::new();
        for (node, task) in &self.tasks {
            match (task.state, &task.host) {
                (TaskState::Running, Some(host)) => match self.shared.worker_tracker.seen(&self.shared.registry, task.worker_group.as_str(), host) {
                    // The worker was alive when it reported the attempt
                    // running, whatever this master's view of the registry
                    // (which lags after a ZooKeeper outage) says: it is lost
                    // only if missing for the grace period since then too.
                    WorkerSeen::Missing(missing) if missing.min(since(task.updated_at)) > grace => {
                        lost.push((*node, format!("worker {host} lost")))
                    }
                    // Back at the same address, but as a new process: the
                    // attempt died with the old one (possibly within the
                    // grace period, or before this master watched). Both
                    // times come from the worker's clock; start times are
                    // whole milliseconds (the event's), hence the rounding.
                    WorkerSeen::Live { started_at: Some(started_at) }
                        if task.start_time.is_some_and(|t| t.timestamp_millis() < started_at.timestamp_millis()) =>
                    {
                        lost.push((*node, format!("worker {host} restarted since the attempt started")));
                    }
                    _ => {}
                },
                (TaskState::Dispatched, None) => {
                    let waited = since(task.updated_at);
                    if waited > NEVER_STARTED.max(grace * 2) {
                        let key = self.queue_key(*node).encode();
                        let queued = coordinate!(self, self.shared.registry.queue_keys(task.worker_group.as_str()))?;
                        if !queued.contains(&key) {
                            lost.push((*node, "taken from the queue but never reported running".into()));
                        }
                    }
                }
                _ => {}
            }
        }
        for (node, reason) in lost {
            self.fail_over_task(node, reason).await?;
        }
        Ok(())
    }

    /// The attempt on a lost worker is over; a new one (a failover, not a
    /// retry) is queued for another worker of the group.
    async fn fail_over_task(&mut self, node: TaskNode, reason: String) -> Result<(), Abort> {
        let task = &self.tasks[&node];
        tracing::warn!(task_instance = %task.id, attempt = task.attempt, %reason, "task failing over");
        let ended = TaskUpdate { message: Some(Some(reason)), end_time: Some(Some(Utc::now())), ..Default::default() };
        self.set_task_state(node, TaskEvent::WorkerLost, ended).await?;
        self.kill_on_start.remove(&node);
        if self.stopping {
            return self.set_task_state(node, TaskEvent::Kill, TaskUpdate::default()).await;
        }
        let task = &self.tasks[&node];
        let again = TaskUpdate {
            attempt: Some(task.attempt + 1),
            failovers: Some(task.failovers + 1),
            host: Some(None),
            exit_code: Some(None),
            start_time: Some(None),
            end_time: Some(None),
            ..Default::default()
        };
        self.set_task_state(node, TaskEvent::Redispatch, again).await?;
        self.dispatch(node).await
    }

    /// Running tasks finish; queued ones go back to `submitted` (taken out
    /// of the queue), and nothing new starts until a resume.
    async fn pause(&mut self) -> Result<(), Abort> {
        if self.pausing || self.stopping || self.instance.state != WorkflowState::Running {
            return Ok(());
        }
        self.pausing = true;
        tracing::info!(workflow_instance = %self.instance.id, "pausing");
        self.set_workflow_state(WorkflowEvent::Pause, None, None).await?;
        let queued: Vec<TaskNode> = self.tasks.iter().filter(|(_, t)| t.state == TaskState::Dispatched).map(|(n, _)| *n).collect();
        for node in queued {
            let key = self.queue_key(node).encode();
            let group = self.task_group(node);
            if coordinate!(self, self.shared.registry.queue_remove(group.as_str(), &key))? {
                self.set_task_state(node, TaskEvent::Withdraw, TaskUpdate::default()).await?;
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), Abort> {
        if self.stopping {
            return Ok(());
        }
        self.stopping = true;
        tracing::info!(workflow_instance = %self.instance.id, "stopping");
        self.set_workflow_state(WorkflowEvent::Stop, None, None).await?;
        for node in self.active_nodes() {
            self.kill(node, "workflow instance stopped".into()).await?;
        }
        Ok(())
    }

    /// Kills one task wherever it is: withdrawn from the queue if no worker
    /// took it yet, killed on its worker if running.
    async fn kill(&mut self, node: TaskNode, reason: String) -> Result<(), Abort> {
        let Some(task) = self.tasks.get(&node) else { return Ok(()) };
        let now = Some(Some(Utc::now()));
        match task.state {
            TaskState::Submitted | TaskState::RetryWait | TaskState::NeedFailover => {
                self.retry_at.remove(&node);
                self.set_task_state(node, TaskEvent::Kill, TaskUpdate { end_time: now, ..Default::default() }).await?;
            }
            TaskState::Dispatched => {
                let key = self.queue_key(node);
                let group = self.task_group(node);
                if coordinate!(self, self.shared.registry.queue_remove(group.as_str(), &key.encode()))? {
                    self.set_task_state(node, TaskEvent::Kill, TaskUpdate { end_time: now, ..Default::default() }).await?;
                } else {
                    // A worker has it but has not reported it running yet.
                    self.kill_on_start.insert(node, reason);
                }
            }
            TaskState::Running => self.send_kill(node, reason),
            _ => {}
        }
        Ok(())
    }

    /// Sends the kill to the task's worker in the background; the worker
    /// answers with a `killed` event.
    fn send_kill(&self, node: TaskNode, reason: String) {
        let task = &self.tasks[&node];
        let Some(host) = task.host.clone() else { return };
        let (shared, id, attempt) = (self.shared.clone(), task.id, task.attempt);
        tokio::spawn(async move {
            match shared.workers.kill(&host, id, attempt, &reason).await {
                Ok(true) => tracing::info!(task_instance = %id, attempt, worker = %host, %reason, "kill sent"),
                Ok(false) => tracing::info!(task_instance = %id, attempt, worker = %host, "worker no longer runs the attempt"),
                Err(error) => tracing::error!(task_instance = %id, attempt, %error, "kill not delivered"),
            }
        });
    }

    async fn retry_due(&mut self) -> Result<(), Abort> {
        let now = Instant::now();
        let due: Vec<TaskNode> = self.retry_at.iter().filter(|(_, at)| **at <= now).map(|(n, _)| *n).collect();
        for node in due {
            self.retry_at.remove(&node);
            let attempt = self.tasks[&node].attempt + 1;
            tracing::info!(task_instance = %self.tasks[&node].id, attempt, "retrying");
            let update = TaskUpdate {
                attempt: Some(attempt),
                host: Some(None),
                exit_code: Some(None),
                retry_at: Some(None),
                start_time: Some(None),
                end_time: Some(None),
                ..Default::default()
            };
            self.set_task_state(node, TaskEvent::RetryDue, update).await?;
            self.dispatch(node).await?;
        }
        Ok(())
    }

    /// Creates the task instances that became ready and queues them.
    async fn dispatch_ready(&mut self) -> Result<(), Abort> {
        let ready = self.view(&self.states()).ready();
        if ready.is_empty() {
            return Ok(());
        }
        // Tasks of an earlier run start a new attempt of the same instance.
        let (again, ready): (Vec<TaskNode>, Vec<TaskNode>) = ready.into_iter().partition(|n| self.rerun.contains_key(n));
        for node in again {
            let task = self.rerun.remove(&node).expect("partitioned");
            let update = TaskUpdate {
                state: Some(task.state.transition(TaskEvent::Rerun).map_err(|e| Abort::Broken(e.to_string()))?),
                attempt: Some(task.attempt + 1),
                run: Some(self.instance.run),
                retries: Some(0),
                host: Some(None),
                exit_code: Some(None),
                retry_at: Some(None),
                start_time: Some(None),
                end_time: Some(None),
                message: Some(None),
                outputs: Some(Params::new()),
                ..Default::default()
            };
            let stored = persist!(self, self.shared.store.update_task_instance(self.fence, task.id, &update))?;
            tracing::info!(task_instance = %stored.id, attempt = stored.attempt, run = stored.run, "task runs again");
            self.tasks.insert(node, stored);
            self.dispatch(node).await?;
        }
        if ready.is_empty() {
            return Ok(());
        }
        let news = self.new_task_instances(&ready);
        // Created already dispatched, in one commit: they are queued right
        // below, and a hand-off between chained tasks is mostly commits.
        let created = persist!(self, self.shared.store.create_dispatched_task_instances(self.fence, &news))?;
        for (node, task) in ready.iter().zip(created) {
            self.tasks.insert(*node, task);
        }
        self.dispatch_all(ready).await
    }

    fn new_task_instances(&self, ready: &[TaskNode]) -> Vec<NewTaskInstance> {
        ready
            .iter()
            .map(|&node| {
                let def = self.def.task(self.dag.name(node)).expect("dag and definition agree");
                NewTaskInstance {
                    workflow_instance_id: self.instance.id,
                    task_definition_id: def.id,
                    name: def.spec.name.clone(),
                    task_type: def.spec.task_type.clone(),
                    priority: def.spec.priority,
                    worker_group: self.task_group(node),
                    max_retries: def.spec.retries,
                    run: self.instance.run,
                }
            })
            .collect()
    }

    fn task_spec(&self, node: TaskNode) -> &TaskSpec {
        &self.def.task(self.dag.name(node)).expect("dag and definition agree").spec
    }

    fn task_group(&self, node: TaskNode) -> WorkerGroup {
        self.task_spec(node).worker_group.clone().unwrap_or_else(|| self.instance.worker_group.clone())
    }

    fn queue_key(&self, node: TaskNode) -> QueueKey {
        let task = &self.tasks[&node];
        QueueKey {
            workflow_priority: self.instance.priority,
            workflow_instance_id: self.instance.id,
            task_priority: task.priority,
            task_instance_id: task.id,
        }
    }

    /// Output parameters of the successful tasks upstream of `node`, nearer
    /// ones (later in topological order) winning.
    fn upstream_outputs(&self, node: TaskNode) -> Params {
        let ancestors = self.dag.ancestors(&[node]);
        let mut outputs = Params::new();
        for n in self.dag.topological_order().iter().filter(|n| **n != node && ancestors.contains(n)) {
            if let Some(task) = self.tasks.get(n).filter(|t| t.state.is_success()) {
                outputs.extend(task.outputs.clone());
            }
        }
        outputs
    }

    /// The task's parameters and body with every `${...}`/`$[...]` resolved
    /// (sluice-params), or why they cannot be.
    fn resolve(&self, node: TaskNode, spec: &TaskSpec) -> Result<(Params, serde_json::Map<String, serde_json::Value>), sluice_params::ExprError> {
        let ctx = sluice_params::Context {
            schedule_time: self.instance.schedule_time.unwrap_or(self.instance.created_at),
            timezone: self.timezone,
            project: self.project.clone(),
            workflow: self.def.name.clone(),
            workflow_instance_id: self.instance.id.get(),
            task_instance_id: Some(self.tasks[&node].id.get()),
        };
        let layers = sluice_params::Layers {
            project: self.project_params.clone(),
            workflow: self.def.params.clone(),
            upstream: self.upstream_outputs(node),
            task: spec.params.clone(),
            run: self.instance.params.clone(),
        };
        let params = sluice_params::resolve(&layers, &ctx)?;
        let mut body = spec.body.clone();
        for value in body.values_mut() {
            if let serde_json::Value::String(text) = value {
                *text = sluice_params::substitute(text, &params, &ctx)?;
            }
        }
        Ok((params, body))
    }

    /// Resolves the attempt's parameters, marks it dispatched, then puts it
    /// in its group's queue. A task whose parameters cannot be resolved
    /// fails here, before it starts.
    async fn dispatch(&mut self, node: TaskNode) -> Result<(), Abort> {
        self.dispatch_all(vec![node]).await
    }

    /// [`Driver::dispatch`] for many tasks at once: every attempt is marked
    /// dispatched in one transaction (persisted before any is queued), then
    /// all are put in their queues concurrently. A wide workflow becoming
    /// ready costs one commit instead of one per task. Tasks created
    /// dispatched (`dispatch_ready`) are only queued.
    async fn dispatch_all(&mut self, nodes: Vec<TaskNode>) -> Result<(), Abort> {
        let mut resolved = Vec::with_capacity(nodes.len());
        for node in nodes {
            let spec = self.task_spec(node).clone();
            match self.resolve(node, &spec) {
                Ok((params, body)) => resolved.push((node, spec, params, body)),
                Err(error) => {
                    tracing::warn!(task_instance = %self.tasks[&node].id, %error, "task parameters cannot be resolved");
                    let update = TaskUpdate {
                        message: Some(Some(error.to_string())),
                        end_time: Some(Some(Utc::now())),
                        ..Default::default()
                    };
                    self.set_task_state(node, TaskEvent::Fail, update).await?;
                    self.after_failure(node).await?;
                }
            }
        }
        if resolved.is_empty() {
            return Ok(());
        }
        let mut updates = Vec::with_capacity(resolved.len());
        let mut marked = Vec::with_capacity(resolved.len());
        for (node, ..) in &resolved {
            let task = &self.tasks[node];
            if task.state == TaskState::Dispatched {
                continue;
            }
            let next = task.state.transition(TaskEvent::Dispatch).map_err(|e| Abort::Broken(e.to_string()))?;
            updates.push((task.id, TaskUpdate { state: Some(next), ..Default::default() }));
            marked.push(*node);
        }
        if !updates.is_empty() {
            let stored = persist!(self, self.shared.store.update_task_instances(self.fence, &updates))?;
            for (node, task) in marked.into_iter().zip(stored) {
                self.tasks.insert(node, task);
            }
        }
        let mut puts = Vec::with_capacity(resolved.len());
        for (node, spec, params, body) in resolved {
            let task = &self.tasks[&node];
            let payload = TaskDispatch {
                workflow_instance_id: self.instance.id,
                task_instance_id: task.id,
                attempt: task.attempt,
                master: self.shared.addr.clone(),
                project: self.project.clone(),
                workflow: self.def.name.clone(),
                task: spec.name.clone(),
                task_type: spec.task_type.clone(),
                body,
                params,
                timeout: spec.timeout,
                timeout_strategy: spec.timeout_strategy,
            };
            let key = self.queue_key(node).encode();
            let group = self.task_group(node);
            let registry = self.shared.registry.clone();
            let (id, attempt) = (task.id, task.attempt);
            puts.push(async move {
                let put = UncertainPut { attempt, since: Instant::now(), group: group.to_string(), key, payload: payload.to_json() };
                let result = registry.queue_put(&put.group, &put.key, &put.payload).await;
                tracing::debug!(task_instance = %id, attempt, group = %put.group, key = %put.key, "task dispatched");
                (node, put, result)
            });
        }
        // Bounded, so a huge fan-out does not flood the registry session.
        let results: Vec<_> = futures::stream::iter(puts).buffer_unordered(256).collect().await;
        for (node, put, result) in results {
            self.after_put(node, put, result)?;
        }
        Ok(())
    }

    /// Takes note of a queue put that may or may not have been done.
    fn after_put(&mut self, node: TaskNode, put: UncertainPut, result: Result<(), RegistryError>) -> Result<(), Abort> {
        match result {
            Ok(()) | Err(RegistryError::NodeExists { .. }) => Ok(()),
            Err(error) if error.is_transient() => {
                tracing::warn!(task_instance = %self.tasks[&node].id, attempt = put.attempt, %error, "queue put interrupted; it may have been done: checking later");
                self.uncertain_puts.insert(node, UncertainPut { since: Instant::now(), ..put });
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Settles the interrupted queue puts whose time has come: an attempt
    /// reported running, or whose entry is in the queue, was put; one that
    /// is neither was not, or was taken by a worker that died at once: it
    /// is put again (a worker that ran it remembers it and skips it).
    async fn settle_puts(&mut self) -> Result<(), Abort> {
        let due: Vec<TaskNode> = self.uncertain_puts.iter().filter(|(_, p)| p.since.elapsed() >= UNCERTAIN_PUT_SETTLE).map(|(n, _)| *n).collect();
        for node in due {
            let put = self.uncertain_puts.remove(&node).expect("due put");
            let task = &self.tasks[&node];
            if task.state != TaskState::Dispatched || task.attempt != put.attempt || task.host.is_some() {
                continue; // it was taken: its worker reported it
            }
            let queued = coordinate!(self, self.shared.registry.queue_keys(&put.group))?;
            if queued.contains(&put.key) {
                continue;
            }
            tracing::warn!(task_instance = %task.id, attempt = put.attempt, "interrupted queue put not found in the queue and the attempt never started: putting it again");
            let result = self.shared.registry.queue_put(&put.group, &put.key, &put.payload).await;
            self.after_put(node, put, result)?;
        }
        Ok(())
    }

    /// Applies `event` to a task through the transition table and persists
    /// it (with `update`) before anything acts on the new state.
    async fn set_task_state(&mut self, node: TaskNode, event: TaskEvent, mut update: TaskUpdate) -> Result<(), Abort> {
        let task = self.tasks.get(&node).expect("known task");
        let next = task.state.transition(event).map_err(|e| Abort::Broken(e.to_string()))?;
        update.state = Some(next);
        let stored = persist!(self, self.shared.store.update_task_instance(self.fence, task.id, &update))?;
        self.tasks.insert(node, stored);
        Ok(())
    }

    async fn set_workflow_state(
        &mut self,
        event: WorkflowEvent,
        start_time: Option<Option<Timestamp>>,
        end_time: Option<Option<Timestamp>>,
    ) -> Result<(), Abort> {
        let next = self.instance.state.transition(event).map_err(|e| Abort::Broken(e.to_string()))?;
        let update = WorkflowUpdate { state: Some(next), start_time, end_time, ..Default::default() };
        self.instance = persist!(self, self.shared.store.update_workflow_instance(self.fence, &update))?;
        Ok(())
    }

    async fn finish(&mut self, outcome: WorkflowState) -> Result<WorkflowState, Abort> {
        let event = match outcome {
            WorkflowState::Success => WorkflowEvent::Succeed,
            WorkflowState::Failure => WorkflowEvent::Fail,
            WorkflowState::Stopped => WorkflowEvent::Stopped,
            other => return Err(Abort::Broken(format!("planner returned non-final outcome {other}"))),
        };
        self.set_workflow_state(event, None, Some(Some(Utc::now()))).await?;
        Ok(outcome)
    }
}

/// How long ago `at` was by this master's clock (zero if in the future).
fn since(at: Timestamp) -> Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}
