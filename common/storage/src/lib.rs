//! Sluice's storage layer: one [`Store`] trait, implemented with diesel for
//! PostgreSQL (clusters) and SQLite (`sluice standalone`), both checked by
//! the same test suite (`tests/suite.rs`).
//!
//! Diesel is synchronous; every call runs on tokio's blocking pool with a
//! pooled connection, so callers stay async and never block a runtime thread.
//! Row structs never leave this crate: callers see domain types only.

mod diesel_store;
mod error;
mod rows;
mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use sluice_domain::*;

pub use diesel_store::{DieselStore, PgStore, SqliteStore};
pub use error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Result of storing a workflow spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedWorkflow {
    pub id: WorkflowId,
    pub version: u32,
    /// A new version was written (the workflow is new, or it changed).
    pub created: bool,
}

/// One entry of a workflow's version history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowVersionInfo {
    pub version: u32,
    pub description: String,
    pub created_at: Timestamp,
}

/// One fire time of a schedule, planned from `schedule` as the cron leader
/// last read it. It is written only if, when its transaction commits, the
/// schedule is still online and fires on the same timing (trigger, start,
/// end): taking a schedule offline, or changing it, before a fire time wins
/// over a fire prepared ahead of that time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFire {
    pub schedule: Schedule,
    pub at: Timestamp,
}

impl ScheduledFire {
    /// The start command the fire writes.
    pub fn command(&self) -> NewCommand {
        NewCommand::Start(StartRun { schedule_id: Some(self.schedule.id), schedule_time: Some(self.at), ..StartRun::of(self.schedule.workflow_id) })
    }

    /// Whether `current` (the schedule as stored now) still fires this.
    pub(crate) fn still_fires(&self, current: &Schedule) -> bool {
        let planned = &self.schedule;
        current.online && current.trigger == planned.trigger && current.start == planned.start && current.end == planned.end
    }
}

/// What became of one [`ScheduledFire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// Its start command was written.
    Written(CommandId),
    /// That fire time of that schedule already had a command: whoever fires
    /// it, a time fires once.
    AlreadyFired,
    /// The schedule went offline, changed its timing or was deleted since
    /// the fire was planned: nothing was written.
    Withdrawn,
}

/// Everything one decision of a master's run machine writes: one fenced
/// transaction, all or nothing. State changes are compare-and-set (each
/// names the state it expects) and go through the transition tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunWrite {
    pub workflow: Option<WorkflowChange>,
    pub tasks: Vec<TaskChange>,
    pub create: Vec<NewTaskInstance>,
    /// Commands carried out by this write: deleted with it. Each must be
    /// claimed by the instance's owner (the writer).
    pub consume: Vec<CommandId>,
}

impl RunWrite {
    pub fn is_empty(&self) -> bool {
        self.workflow.is_none() && self.tasks.is_empty() && self.create.is_empty() && self.consume.is_empty()
    }
}

/// The rows a [`RunWrite`] left: the instance if it changed, the changed
/// tasks in the write's order, then the created ones in theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunWritten {
    pub workflow: Option<WorkflowInstance>,
    pub tasks: Vec<TaskInstance>,
    pub created: Vec<TaskInstance>,
}

/// Everything Sluice persists. Writes to a workflow instance or its tasks
/// carry the owner's [`Fence`]; a stale fence makes them fail with
/// [`StoreError::Fenced`] and change nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Round trip to the database: `Ok` when it answers.
    async fn ping(&self) -> Result<()>;

    // --- projects
    async fn create_project(&self, name: &str, description: &str, params: &Params) -> Result<Project>;
    async fn project(&self, name: &str) -> Result<Option<Project>>;
    async fn project_by_id(&self, id: ProjectId) -> Result<Option<Project>>;
    async fn list_projects(&self) -> Result<Vec<Project>>;

    // --- workflow definitions
    /// Stores `spec` (already validated by the caller) as the first version
    /// of a new workflow, or as a new version when it differs from the
    /// latest; an unchanged spec stores nothing. Task definitions get a new
    /// version only when they changed.
    async fn save_workflow(&self, project: ProjectId, spec: &WorkflowSpec) -> Result<SavedWorkflow>;
    /// The given version, or the latest.
    async fn workflow(&self, project: ProjectId, name: &str, version: Option<u32>) -> Result<Option<WorkflowDefinition>>;
    async fn workflow_by_id(&self, id: WorkflowId, version: Option<u32>) -> Result<Option<WorkflowDefinition>>;
    async fn workflow_versions(&self, id: WorkflowId) -> Result<Vec<WorkflowVersionInfo>>;
    /// Workflows of a project; `query` matches (case-insensitively) part of
    /// the name, the description or a task name.
    async fn list_workflows(&self, project: ProjectId, query: Option<&str>) -> Result<Vec<WorkflowSummary>>;
    /// Deletes the definition with its versions and schedule; finished runs
    /// stay. Refused (`Conflict`, naming them) while some of its instances
    /// are not final: they need the definition to go on.
    async fn delete_workflow(&self, id: WorkflowId) -> Result<bool>;

    // --- schedules
    async fn set_schedule(&self, workflow: WorkflowId, spec: &ScheduleSpec) -> Result<Schedule>;
    async fn schedule(&self, workflow: WorkflowId) -> Result<Option<Schedule>>;
    async fn set_schedule_online(&self, workflow: WorkflowId, online: bool) -> Result<Schedule>;
    async fn online_schedules(&self) -> Result<Vec<Schedule>>;

    // --- commands
    async fn insert_command(&self, command: &NewCommand) -> Result<CommandId>;
    /// Inserts a command. A second restart (rerun, recover, resume) of an
    /// instance while one waits is a `Conflict`.
    ///
    /// Writes the start command of `fire` and records its time as the
    /// schedule's last fire, atomically; see
    /// [`Store::insert_scheduled_commands`].
    async fn insert_scheduled_command(&self, fire: &ScheduledFire) -> Result<Fired> {
        Ok(self.insert_scheduled_commands(std::slice::from_ref(fire), chrono::Utc::now()).await?.remove(0))
    }
    /// Writes many fires in one transaction (schedules that fire on the
    /// same second fire together): what became of each, in `fires`' order.
    ///
    /// The commands become visible at `publish_at`, not before. PostgreSQL
    /// writes them at once and holds the commit until `publish_at`, so a
    /// fire prepared ahead of its time costs only the commit when the time
    /// comes; SQLite, which has one writer at a time, waits until then and
    /// writes. Either way the schedules are read again (PostgreSQL: locked)
    /// at `publish_at`, in the transaction, and a fire whose schedule went
    /// offline or changed meanwhile is withdrawn. A fire that cannot be
    /// written is not visible at all.
    async fn insert_scheduled_commands(&self, fires: &[ScheduledFire], publish_at: Timestamp) -> Result<Vec<Fired>>;
    /// Creates a workflow instance (state `submitted`, no owner) and the
    /// command that starts it, in one transaction, so the API can return the
    /// instance id before any master picked the command up.
    async fn submit_run(&self, instance: &NewWorkflowInstance, command: &NewCommand) -> Result<(WorkflowInstanceId, CommandId)>;
    /// Claims up to `limit` unclaimed commands for `owner`, oldest first.
    /// Safe with several masters: each command is claimed exactly once.
    /// Commands aimed at an instance owned by another master are left to it.
    async fn claim_commands(&self, owner: &str, limit: u32) -> Result<Vec<Command>>;
    /// Deletes a command `owner` claimed and found nothing to do for (its
    /// effect, if any, is written with [`Store::write_run`]'s `consume`).
    async fn consume_command(&self, id: CommandId, owner: &str) -> Result<()>;
    /// Returns the commands claimed by `owner` (a dead master) to the pool.
    async fn release_commands(&self, owner: &str) -> Result<u64>;
    /// Returns one command `owner` claimed to the pool (the driver it was
    /// meant for is gone): the instance's owner takes it next.
    async fn release_command(&self, id: CommandId, owner: &str) -> Result<()>;
    async fn unclaimed_commands(&self) -> Result<Vec<Command>>;

    // --- workflow instances
    async fn create_workflow_instance(&self, new: &NewWorkflowInstance) -> Result<WorkflowInstance>;
    /// Adopts instance `id` for `owner` (a new epoch) if it is in `expect`,
    /// applies `write` under the new fence and deletes `command`, in one
    /// transaction: a restart, a stop of an instance nobody drives, the
    /// start of a pre-created one. `StaleState` if it is not in `expect`.
    async fn adopt_for_command(
        &self,
        command: CommandId,
        id: WorkflowInstanceId,
        owner: &str,
        expect: WorkflowState,
        write: &RunWrite,
    ) -> Result<(WorkflowInstance, RunWritten)>;
    /// Creates the instance a claimed command asks for and deletes the
    /// command, in one transaction: a master that dies in between leaves
    /// either the command (to be released and claimed again) or the
    /// instance (to be failed over), never both.
    async fn create_instance_for_command(&self, command: CommandId, new: &NewWorkflowInstance) -> Result<WorkflowInstance>;
    async fn workflow_instance(&self, id: WorkflowInstanceId) -> Result<Option<WorkflowInstance>>;
    async fn list_workflow_instances(&self, filter: &InstanceFilter) -> Result<Vec<WorkflowInstance>>;
    /// Makes `owner` the owner and bumps the epoch: every write fenced with
    /// an older epoch fails from now on.
    async fn adopt_workflow_instance(&self, id: WorkflowInstanceId, owner: &str) -> Result<WorkflowInstance>;
    /// Non-final instances owned by `owner`.
    async fn owned_workflow_instances(&self, owner: &str) -> Result<Vec<WorkflowInstance>>;
    /// Deletes up to `batch` finished workflow instances that ended before
    /// `before`, with their task instances, in one short transaction;
    /// returns how many instances went. Call until it returns less than
    /// `batch`.
    async fn delete_finished_instances(&self, before: Timestamp, batch: u32) -> Result<u64>;
    /// Masters that own unfinished, not paused, instances or hold claimed
    /// commands: the ones whose loss needs a failover.
    async fn owners_with_work(&self) -> Result<Vec<String>>;

    // --- backfills
    async fn create_backfill(&self, new: &NewBackfill) -> Result<Backfill>;
    async fn backfill(&self, id: BackfillId) -> Result<Option<Backfill>>;
    /// For every running backfill, creates its next runs (instance + start
    /// command, in schedule-time order) while fewer than its parallelism are
    /// unfinished, and marks it done once every run was created and has
    /// finished. Safe with several masters. Returns the instances created.
    async fn advance_backfills(&self) -> Result<Vec<WorkflowInstanceId>>;
    /// Stops a running backfill as a whole: no new runs, and a stop command
    /// for each unfinished one, in one transaction. A backfill already done
    /// or stopped is a `Conflict`.
    async fn stop_backfill(&self, id: BackfillId) -> Result<Backfill>;

    // --- runs
    /// Applies `write` under `fence` in one transaction (see [`RunWrite`]).
    /// `Fenced` if another master adopted the instance, `StaleState` if a
    /// row is not in the state a change expects; either way nothing is
    /// written.
    async fn write_run(&self, fence: Fence, write: &RunWrite) -> Result<RunWritten>;
    /// One task change, for callers with nothing else to write.
    async fn change_task(&self, fence: Fence, change: &TaskChange) -> Result<TaskInstance> {
        let written = self.write_run(fence, &RunWrite { tasks: vec![change.clone()], ..Default::default() }).await?;
        Ok(written.tasks.into_iter().next().expect("one change, one row"))
    }
    /// Task instances created under `fence`, for callers with nothing else
    /// to write.
    async fn create_tasks(&self, fence: Fence, new: &[NewTaskInstance]) -> Result<Vec<TaskInstance>> {
        Ok(self.write_run(fence, &RunWrite { create: new.to_vec(), ..Default::default() }).await?.created)
    }
    /// A workflow-instance change, for callers with nothing else to write.
    async fn change_workflow(&self, fence: Fence, change: &WorkflowChange) -> Result<WorkflowInstance> {
        let written = self.write_run(fence, &RunWrite { workflow: Some(change.clone()), ..Default::default() }).await?;
        Ok(written.workflow.expect("a workflow change returns the instance"))
    }
    async fn task_instance(&self, id: TaskInstanceId) -> Result<Option<TaskInstance>>;
    async fn task_instances(&self, workflow_instance: WorkflowInstanceId) -> Result<Vec<TaskInstance>>;
}

/// How to connect: pool size and how long to wait for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    pub size: u32,
    pub connect_timeout: std::time::Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { size: 10, connect_timeout: std::time::Duration::from_secs(10) }
    }
}

impl PoolOptions {
    pub fn sized(size: u32) -> Self {
        PoolOptions { size, ..Default::default() }
    }
}

/// Opens the database at `url` (`postgres://…`, `postgresql://…` or
/// `sqlite://PATH`), applies pending migrations and returns the store.
pub async fn open(url: &str, options: PoolOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url, options).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(SqliteStore::open(path, options).await?))
    } else {
        Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected postgres://…, postgresql://… or sqlite://PATH".into(),
        })
    }
}
