//! One workflow instance, driven on a tokio task: the executor of a
//! [`RunMachine`]'s effects. It feeds the machine what arrives (task
//! reports, operator commands, timers), carries out what the machine
//! decides (writes, queue puts and withdrawals, kills, logs) and feeds the
//! results back. Every decision is the machine's; every I/O is here.

mod exec;
mod load;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sluice_domain::*;
use sluice_registry::RegistryError;
use sluice_storage::StoreError;
use tokio::sync::{mpsc, oneshot};

use crate::run::{Fetched, Operator, Report, RunMachine, TaskReport, World, WorkerSeen};
use crate::Shared;

/// What a driver is told.
pub(crate) enum DriverMsg {
    /// A worker's report; `ack` says whether it was taken into account
    /// (persisted, or recognised as stale).
    Report { report: TaskReport, ack: oneshot::Sender<bool> },
    /// An operator command claimed by this master: the driver's write that
    /// carries it out consumes it.
    Command(Command),
    /// A worker took the attempt's queue entry and asks for its dispatch
    /// (it was not on the board: this master adopted the instance).
    Fetch { task: TaskInstanceId, attempt: u32, reply: oneshot::Sender<Fetched> },
}

/// Why a driver gave up its instance.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Abort {
    /// Another master adopted the instance; this one must not touch it.
    #[error("fenced: {0}")]
    Fenced(StoreError),
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("registry: {0}")]
    Registry(RegistryError),
    #[error("master shutting down")]
    Shutdown,
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

/// How often a driver looks for tasks whose worker is gone.
const WATCHDOG: Duration = Duration::from_secs(1);
/// Most messages a driver takes in one go.
const BURST: usize = 512;

/// Starts driving `instance` (already owned by this master) and registers
/// its message channel.
pub(crate) fn spawn(shared: Arc<Shared>, instance: WorkflowInstance) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = instance.id;
    shared.drivers.lock().expect("drivers lock").insert(id, tx);
    tokio::spawn(async move {
        let mut held = Vec::new();
        let result = match load::load(&shared, instance).await {
            Ok(Some(machine)) => {
                let mut driver = Driver { shared: shared.clone(), machine, held: Vec::new(), discard: Vec::new(), cleanup: Vec::new() };
                let mut rx = rx;
                let result = driver.run(&mut rx).await;
                // Still registered (its channel open) until its queue
                // entries are gone: a next driver waits for this one.
                driver.finish_cleanup().await;
                drop(rx);
                held = driver.held;
                result
            }
            Ok(None) => Ok(WorkflowState::Failure), // could not be loaded: ended with the reason
            Err(abort) => {
                drop(rx);
                Err(abort)
            }
        };
        shared.dispatches.clear(id);
        {
            // Only this driver's entry: its receiver is gone, so its sender
            // reads closed. A newer driver of the same instance stays.
            let mut drivers = shared.drivers.lock().expect("drivers lock");
            if drivers.get(&id).is_some_and(|tx| tx.is_closed()) {
                drivers.remove(&id);
            }
        }
        // Commands this driver took and did not carry out go back to the
        // pool: the instance's owner (this master again, or the one that
        // adopted it) takes them next.
        for command in held {
            if let Err(error) = shared.store.release_command(command, &shared.addr).await {
                tracing::warn!(workflow_instance = %id, %command, %error, "cannot release a command; it is released when this master restarts or fails over");
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

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) machine: RunMachine,
    /// Commands handed to the machine and not consumed by a write yet.
    pub(crate) held: Vec<CommandId>,
    /// Queue entries of attempts killed unfetched, to remove (see
    /// `exec.rs`), and the background removals under way.
    pub(crate) discard: Vec<(String, String)>,
    pub(crate) cleanup: Vec<tokio::task::JoinHandle<()>>,
}

/// A call retried while its error is transient (see [`crate::retry`]),
/// as the driver's `Abort`.
macro_rules! retrying {
    ($shared:expr, $id:expr, $call:expr, $transient:expr) => {{
        let what = format_args!("workflow instance {}", $id).to_string();
        match $crate::retry::retry(&$shared.shutdown, &what, $transient, || $call).await {
            Ok(value) => Ok(value),
            Err($crate::retry::Gave::Up(error)) => Err(Abort::from(error)),
            Err($crate::retry::Gave::Shutdown) => Err(Abort::Shutdown),
        }
    }};
}
pub(crate) use retrying;

/// A store call, retried while the database is unreachable.
macro_rules! persist {
    ($shared:expr, $id:expr, $call:expr) => {
        $crate::driver::retrying!($shared, $id, $call, sluice_storage::StoreError::is_retryable)
    };
}
pub(crate) use persist;

/// A registry call, retried while ZooKeeper is unreachable or the registry
/// is renewing an expired session.
macro_rules! coordinate {
    ($shared:expr, $id:expr, $call:expr) => {
        $crate::driver::retrying!($shared, $id, $call, sluice_registry::RegistryError::is_transient)
    };
}
pub(crate) use coordinate;

/// What the machine may ask of the world on a tick: this master's view of
/// the workers, and the queue listings taken for the tick.
struct View {
    shared: Arc<Shared>,
    listings: HashMap<String, Arc<HashSet<String>>>,
}

impl World for View {
    fn worker(&self, group: &str, host: &str) -> WorkerSeen {
        self.shared.worker_tracker.seen(&self.shared.registry, group, host)
    }

    fn queued(&self, group: &str) -> Option<&HashSet<String>> {
        self.listings.get(group).map(|keys| keys.as_ref())
    }
}

impl Driver {
    async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<DriverMsg>) -> Result<WorkflowState, Abort> {
        let view = self.view(self.machine.groups_at_start()).await;
        let effects = self.machine.start(&view);
        if let Some(state) = self.execute(effects).await? {
            return Ok(state);
        }
        let shutdown = self.shared.shutdown.clone();
        let mut watchdog = tokio::time::interval(WATCHDOG);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.machine.next_deadline().map(|at| {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::Instant::now() + wait
            });
            let done = tokio::select! {
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
                        self.handle_burst(burst).await?
                    }
                },
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => self.tick().await?,
                _ = watchdog.tick() => self.tick().await?,
            };
            if let Some(state) = done {
                return Ok(state);
            }
        }
    }

    /// Lists the queues of `groups` (through the master's shared listings,
    /// so that drivers of one master list a group at most once a tick).
    async fn view(&self, groups: BTreeSet<String>) -> View {
        let mut listings = HashMap::new();
        for group in groups {
            match self.shared.queue_listings.keys(&self.shared.registry, &group).await {
                Ok(keys) => {
                    listings.insert(group, keys);
                }
                Err(error) => tracing::warn!(workflow_instance = %self.machine.instance().id, %group, %error, "cannot list the queue; checking at the next tick"),
            }
        }
        View { shared: self.shared.clone(), listings }
    }

    async fn tick(&mut self) -> Result<Option<WorkflowState>, Abort> {
        let now = Utc::now();
        let view = self.view(self.machine.groups_to_list(now)).await;
        let effects = self.machine.on_tick(now, &view);
        self.execute(effects).await
    }

    /// Messages that arrived together: the reports of a run of them go to
    /// the machine at once (one write for all), a command on its own, in
    /// order. Reports are acknowledged once what they caused is persisted.
    async fn handle_burst(&mut self, burst: Vec<DriverMsg>) -> Result<Option<WorkflowState>, Abort> {
        let mut reports = Vec::new();
        let mut acks = Vec::new();
        for msg in burst {
            match msg {
                DriverMsg::Report { report, ack } => {
                    reports.push(report);
                    acks.push(ack);
                }
                DriverMsg::Command(command) => {
                    if let Some(state) = self.reports(&mut reports, &mut acks).await? {
                        return Ok(Some(state));
                    }
                    if let Some(state) = self.command(command).await? {
                        return Ok(Some(state));
                    }
                }
                DriverMsg::Fetch { task, attempt, reply } => {
                    if let Some(state) = self.reports(&mut reports, &mut acks).await? {
                        return Ok(Some(state));
                    }
                    let _ = reply.send(self.machine.fetch(task, attempt));
                }
            }
        }
        self.reports(&mut reports, &mut acks).await
    }

    async fn reports(&mut self, reports: &mut Vec<TaskReport>, acks: &mut Vec<oneshot::Sender<bool>>) -> Result<Option<WorkflowState>, Abort> {
        if reports.is_empty() {
            return Ok(None);
        }
        // A reported attempt was fetched: its dispatch leaves the board.
        let id = self.machine.instance().id;
        for report in reports.iter().filter(|r| matches!(r.report, Report::Running { .. } | Report::Finished(_))) {
            self.shared.dispatches.take_down(id, report.task_instance_id, report.attempt);
        }
        let effects = self.machine.on_reports(std::mem::take(reports));
        let done = self.execute(effects).await?;
        for ack in acks.drain(..) {
            let _ = ack.send(true);
        }
        Ok(done)
    }

    async fn command(&mut self, command: Command) -> Result<Option<WorkflowState>, Abort> {
        let operator = match command.spec {
            NewCommand::Stop(_) => Operator::Stop,
            NewCommand::Pause(_) => Operator::Pause,
            NewCommand::KillTask { tasks, .. } => Operator::KillTasks(tasks),
            NewCommand::ForceSuccess { tasks, .. } => Operator::ForceSuccess(tasks),
            other => {
                tracing::error!(command = %command.id, kind = %other.kind(), "not a command for a running instance; released");
                self.held.push(command.id);
                return Ok(None);
            }
        };
        tracing::info!(workflow_instance = %self.machine.instance().id, command = %command.id, ?operator, "operator command");
        self.held.push(command.id);
        let effects = self.machine.on_command(command.id, operator);
        self.execute(effects).await
    }
}
