//! Diesel row structs, private to the storage layer, and their conversion to
//! and from domain types. Instants are stored as milliseconds since the epoch,
//! enums by their wire names, maps and lists as JSON text.

use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use diesel::prelude::*;
use sluice_domain::*;

use crate::error::StoreError;
use crate::schema::*;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> Result<Timestamp, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::corrupt(format!("timestamp {ms} out of range")))
}

fn opt_ms(ms: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    ms.map(from_ms).transpose()
}

pub(crate) fn now_ms() -> i64 {
    ms(Utc::now())
}

pub(crate) fn parse<T: FromStr>(column: &str, raw: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e| StoreError::corrupt(format!("{column}: {e}")))
}

fn parse_opt<T: FromStr>(column: &str, raw: Option<String>) -> Result<Option<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    raw.map(|r| parse(column, &r)).transpose()
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialize to JSON")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(column: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(format!("{column}: {e}")))
}

fn u32_of(column: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::corrupt(format!("{column}: negative value {v}")))
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = projects)]
pub(crate) struct ProjectRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub params: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProjectRow {
    pub fn into_domain(self) -> Result<Project, StoreError> {
        Ok(Project {
            id: ProjectId(self.id),
            name: self.name,
            description: self.description,
            params: from_json("projects.params", &self.params)?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = workflows)]
pub(crate) struct WorkflowRow {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub description: String,
    pub current_version: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

impl WorkflowRow {
    pub fn into_summary(self) -> Result<WorkflowSummary, StoreError> {
        Ok(WorkflowSummary {
            id: WorkflowId(self.id),
            project_id: ProjectId(self.project_id),
            name: self.name,
            description: self.description,
            version: u32_of("workflows.current_version", self.current_version)?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = workflow_versions)]
pub(crate) struct WorkflowVersionRow {
    pub id: i64,
    pub version: i32,
    pub description: String,
    pub params: String,
    pub failure_strategy: String,
    pub priority: String,
    pub worker_group: String,
    pub created_at: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = task_definitions)]
pub(crate) struct TaskDefinitionRow {
    pub id: i64,
    pub name: String,
    pub version: i32,
    pub spec: String,
    pub created_at: i64,
}

impl TaskDefinitionRow {
    /// The stored spec; `deps` come from the workflow version's edges.
    pub fn into_domain(self, deps: Vec<String>) -> Result<TaskDefinition, StoreError> {
        let mut spec: TaskSpec = from_json("task_definitions.spec", &self.spec)?;
        spec.deps = deps;
        Ok(TaskDefinition {
            id: TaskDefinitionId(self.id),
            version: u32_of("task_definitions.version", self.version)?,
            spec,
            created_at: from_ms(self.created_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = schedules)]
pub(crate) struct ScheduleRow {
    pub id: i64,
    pub workflow_id: i64,
    pub trigger_kind: String,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_ms: Option<i64>,
    pub repeat_times: Option<i32>,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub misfire: String,
    pub online: bool,
    pub last_fire: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The trigger's columns: (kind, cron, timezone, interval_ms, repeat_times).
pub(crate) fn trigger_columns(
    trigger: &Trigger,
) -> (&'static str, Option<String>, Option<String>, Option<i64>, Option<i32>) {
    match trigger {
        Trigger::Cron { expression, timezone } => {
            ("cron", Some(expression.clone()), Some(timezone.clone()), None, None)
        }
        Trigger::Interval { every, times } => (
            "interval",
            None,
            None,
            Some(every.as_millis() as i64),
            times.map(|t| t as i32),
        ),
    }
}

impl ScheduleRow {
    pub fn into_domain(self) -> Result<Schedule, StoreError> {
        let trigger = match self.trigger_kind.as_str() {
            "cron" => Trigger::Cron {
                expression: self.cron.ok_or_else(|| StoreError::corrupt("schedules.cron is null"))?,
                timezone: self.timezone.ok_or_else(|| StoreError::corrupt("schedules.timezone is null"))?,
            },
            "interval" => Trigger::Interval {
                every: Duration::from_millis(
                    self.interval_ms
                        .ok_or_else(|| StoreError::corrupt("schedules.interval_ms is null"))?
                        .max(0) as u64,
                ),
                times: self.repeat_times.map(|t| t.max(0) as u32),
            },
            other => return Err(StoreError::corrupt(format!("schedules.trigger_kind: `{other}`"))),
        };
        Ok(Schedule {
            id: ScheduleId(self.id),
            workflow_id: WorkflowId(self.workflow_id),
            trigger,
            start: opt_ms(self.start_at)?,
            end: opt_ms(self.end_at)?,
            misfire: parse("schedules.misfire", &self.misfire)?,
            online: self.online,
            last_fire: opt_ms(self.last_fire)?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = commands)]
pub(crate) struct CommandRow {
    pub id: i64,
    pub kind: String,
    pub workflow_id: i64,
    pub workflow_version: Option<i32>,
    pub workflow_instance_id: Option<i64>,
    pub params: String,
    pub priority: Option<String>,
    pub worker_group: Option<String>,
    pub failure_strategy: Option<String>,
    pub start_tasks: String,
    pub scope: Option<String>,
    pub schedule_id: Option<i64>,
    pub schedule_time: Option<i64>,
    pub owner: Option<String>,
    pub claimed_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = commands)]
pub(crate) struct NewCommandRow {
    pub kind: String,
    pub workflow_id: i64,
    pub workflow_version: Option<i32>,
    pub workflow_instance_id: Option<i64>,
    pub params: String,
    pub priority: Option<String>,
    pub worker_group: Option<String>,
    pub failure_strategy: Option<String>,
    pub start_tasks: String,
    pub scope: Option<String>,
    pub schedule_id: Option<i64>,
    pub schedule_time: Option<i64>,
    pub created_at: i64,
}

/// Commands are stored in one table whatever their kind: a start uses the
/// run-settings columns, the others name their instance, and the tasks of
/// a kill, a force-success or a recover (the ones it forces) go in
/// `start_tasks`.
impl NewCommandRow {
    pub fn new(c: &NewCommand, now: i64) -> Self {
        let mut row = NewCommandRow {
            kind: c.kind().to_string(),
            workflow_id: c.workflow_id().get(),
            workflow_version: None,
            workflow_instance_id: c.workflow_instance_id().map(|i| i.get()),
            params: json(&Params::new()),
            priority: None,
            worker_group: None,
            failure_strategy: None,
            start_tasks: json(&Vec::<String>::new()),
            scope: None,
            schedule_id: None,
            schedule_time: None,
            created_at: now,
        };
        match c {
            NewCommand::Start(s) => {
                row.workflow_version = s.workflow_version.map(|v| v as i32);
                row.params = json(&s.params);
                row.priority = s.priority.map(|p| p.to_string());
                row.worker_group = s.worker_group.as_ref().map(|g| g.to_string());
                row.failure_strategy = s.failure_strategy.map(|f| f.to_string());
                row.start_tasks = json(&s.start_tasks);
                row.scope = s.scope.map(|s| s.to_string());
                row.schedule_id = s.schedule_id.map(|s| s.get());
                row.schedule_time = s.schedule_time.map(ms);
            }
            NewCommand::Recover { force_success: tasks, .. } | NewCommand::KillTask { tasks, .. } | NewCommand::ForceSuccess { tasks, .. } => {
                row.start_tasks = json(tasks)
            }
            NewCommand::Rerun(_) | NewCommand::Resume(_) | NewCommand::Pause(_) | NewCommand::Stop(_) => {}
        }
        row
    }
}

impl CommandRow {
    pub fn into_domain(self) -> Result<Command, StoreError> {
        let kind: CommandKind = parse("commands.kind", &self.kind)?;
        let tasks: Vec<String> = from_json("commands.start_tasks", &self.start_tasks)?;
        let target = || match self.workflow_instance_id {
            Some(id) => Ok(InstanceTarget { workflow_id: WorkflowId(self.workflow_id), workflow_instance_id: WorkflowInstanceId(id) }),
            None => Err(StoreError::corrupt(format!("command {} ({kind}) names no workflow instance", self.id))),
        };
        let spec = match kind {
            CommandKind::Start | CommandKind::StartFromTasks | CommandKind::Backfill => NewCommand::Start(StartRun {
                workflow_id: WorkflowId(self.workflow_id),
                workflow_version: self.workflow_version.map(|v| u32_of("commands.workflow_version", v)).transpose()?,
                workflow_instance_id: self.workflow_instance_id.map(WorkflowInstanceId),
                params: from_json("commands.params", &self.params)?,
                priority: parse_opt("commands.priority", self.priority.clone())?,
                worker_group: parse_opt("commands.worker_group", self.worker_group.clone())?,
                failure_strategy: parse_opt("commands.failure_strategy", self.failure_strategy.clone())?,
                start_tasks: tasks,
                scope: parse_opt("commands.scope", self.scope.clone())?,
                schedule_id: self.schedule_id.map(ScheduleId),
                schedule_time: opt_ms(self.schedule_time)?,
            }),
            CommandKind::Rerun => NewCommand::Rerun(target()?),
            CommandKind::RecoverFailure | CommandKind::RecoverFailover => NewCommand::Recover { target: target()?, force_success: tasks },
            CommandKind::Resume => NewCommand::Resume(target()?),
            CommandKind::Pause => NewCommand::Pause(target()?),
            CommandKind::Stop => NewCommand::Stop(target()?),
            CommandKind::KillTask => NewCommand::KillTask { target: target()?, tasks },
            CommandKind::ForceSuccess => NewCommand::ForceSuccess { target: target()?, tasks },
        };
        Ok(Command {
            id: CommandId(self.id),
            spec,
            owner: self.owner,
            claimed_at: opt_ms(self.claimed_at)?,
            created_at: from_ms(self.created_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = workflow_instances)]
pub(crate) struct WorkflowInstanceRow {
    pub id: i64,
    pub project_id: i64,
    pub workflow_id: i64,
    pub workflow_version: i32,
    pub workflow_name: String,
    pub state: String,
    pub command_kind: String,
    pub params: String,
    pub priority: String,
    pub worker_group: String,
    pub failure_strategy: String,
    pub schedule_time: Option<i64>,
    pub owner: Option<String>,
    pub owner_epoch: i64,
    pub run: i32,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub start_tasks: String,
    pub scope: Option<String>,
    pub backfill_id: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = workflow_instances)]
pub(crate) struct NewWorkflowInstanceRow {
    pub project_id: i64,
    pub workflow_id: i64,
    pub workflow_version: i32,
    pub workflow_name: String,
    pub state: String,
    pub command_kind: String,
    pub params: String,
    pub priority: String,
    pub worker_group: String,
    pub failure_strategy: String,
    pub schedule_time: Option<i64>,
    pub owner: Option<String>,
    pub owner_epoch: i64,
    pub run: i32,
    pub created_at: i64,
    pub updated_at: i64,
    pub start_tasks: String,
    pub scope: Option<String>,
    pub backfill_id: Option<i64>,
}

impl NewWorkflowInstanceRow {
    pub fn new(n: &NewWorkflowInstance, project_id: i64, workflow_name: String, now: i64) -> Self {
        NewWorkflowInstanceRow {
            project_id,
            workflow_id: n.workflow_id.get(),
            workflow_version: n.workflow_version as i32,
            workflow_name,
            state: WorkflowState::Submitted.to_string(),
            command_kind: n.command_kind.to_string(),
            params: json(&n.params),
            priority: n.priority.to_string(),
            worker_group: n.worker_group.to_string(),
            failure_strategy: n.failure_strategy.to_string(),
            schedule_time: n.schedule_time.map(ms),
            owner: n.owner.clone(),
            owner_epoch: 1,
            run: 1,
            created_at: now,
            updated_at: now,
            start_tasks: json(&n.start_tasks),
            scope: n.scope.map(|s| s.to_string()),
            backfill_id: None,
        }
    }
}

impl WorkflowInstanceRow {
    pub fn into_domain(self) -> Result<WorkflowInstance, StoreError> {
        Ok(WorkflowInstance {
            id: WorkflowInstanceId(self.id),
            project_id: ProjectId(self.project_id),
            workflow_id: WorkflowId(self.workflow_id),
            workflow_version: u32_of("workflow_instances.workflow_version", self.workflow_version)?,
            workflow_name: self.workflow_name,
            state: parse("workflow_instances.state", &self.state)?,
            command_kind: parse("workflow_instances.command_kind", &self.command_kind)?,
            params: from_json("workflow_instances.params", &self.params)?,
            priority: parse("workflow_instances.priority", &self.priority)?,
            worker_group: parse("workflow_instances.worker_group", &self.worker_group)?,
            failure_strategy: parse("workflow_instances.failure_strategy", &self.failure_strategy)?,
            schedule_time: opt_ms(self.schedule_time)?,
            owner: self.owner,
            owner_epoch: self.owner_epoch,
            run: u32_of("workflow_instances.run", self.run)?,
            start_tasks: from_json("workflow_instances.start_tasks", &self.start_tasks)?,
            scope: parse_opt("workflow_instances.scope", self.scope)?,
            backfill_id: self.backfill_id.map(BackfillId),
            start_time: opt_ms(self.start_time)?,
            end_time: opt_ms(self.end_time)?,
            reason: self.reason,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = task_instances)]
pub(crate) struct TaskInstanceRow {
    pub id: i64,
    pub workflow_instance_id: i64,
    pub task_definition_id: i64,
    pub name: String,
    pub task_type: String,
    pub state: String,
    pub attempt: i32,
    pub max_retries: i32,
    pub failovers: i32,
    pub priority: String,
    pub worker_group: String,
    pub host: Option<String>,
    pub exit_code: Option<i32>,
    pub retry_at: Option<i64>,
    pub log_path: Option<String>,
    pub submit_time: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub updated_at: i64,
    pub outputs: String,
    pub message: Option<String>,
    pub run: i32,
    pub retries: i32,
    pub kill_reason: Option<String>,
    pub branches: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = task_instances)]
pub(crate) struct NewTaskInstanceRow {
    pub workflow_instance_id: i64,
    pub task_definition_id: i64,
    pub name: String,
    pub task_type: String,
    pub state: String,
    pub attempt: i32,
    pub max_retries: i32,
    pub failovers: i32,
    pub priority: String,
    pub worker_group: String,
    pub submit_time: i64,
    pub updated_at: i64,
    pub run: i32,
    pub message: Option<String>,
    pub end_time: Option<i64>,
}

impl NewTaskInstanceRow {
    pub fn new(n: &NewTaskInstance, state: TaskState, now: i64) -> Self {
        NewTaskInstanceRow {
            workflow_instance_id: n.workflow_instance_id.get(),
            task_definition_id: n.task_definition_id.get(),
            name: n.name.clone(),
            task_type: n.task_type.to_string(),
            state: state.to_string(),
            attempt: 1,
            max_retries: n.max_retries as i32,
            failovers: 0,
            priority: n.priority.to_string(),
            worker_group: n.worker_group.to_string(),
            submit_time: now,
            updated_at: now,
            run: n.run as i32,
            message: n.message.clone(),
            end_time: state.is_final().then_some(now),
        }
    }
}

impl TaskInstanceRow {
    pub fn into_domain(self) -> Result<TaskInstance, StoreError> {
        Ok(TaskInstance {
            id: TaskInstanceId(self.id),
            workflow_instance_id: WorkflowInstanceId(self.workflow_instance_id),
            task_definition_id: TaskDefinitionId(self.task_definition_id),
            name: self.name,
            task_type: TaskType::new(self.task_type),
            state: parse("task_instances.state", &self.state)?,
            attempt: u32_of("task_instances.attempt", self.attempt)?,
            max_retries: u32_of("task_instances.max_retries", self.max_retries)?,
            failovers: u32_of("task_instances.failovers", self.failovers)?,
            priority: parse("task_instances.priority", &self.priority)?,
            worker_group: parse("task_instances.worker_group", &self.worker_group)?,
            host: self.host,
            exit_code: self.exit_code,
            retry_at: opt_ms(self.retry_at)?,
            log_path: self.log_path,
            submit_time: from_ms(self.submit_time)?,
            start_time: opt_ms(self.start_time)?,
            end_time: opt_ms(self.end_time)?,
            updated_at: from_ms(self.updated_at)?,
            outputs: from_json("task_instances.outputs", &self.outputs)?,
            message: self.message,
            run: u32_of("task_instances.run", self.run)?,
            retries: u32_of("task_instances.retries", self.retries)?,
            kill_reason: self.kill_reason,
            branches: self.branches.as_deref().map(|b| from_json("task_instances.branches", b)).transpose()?,
            external_id: self.external_id,
        })
    }
}

/// A [`TaskChange`] as a diesel changeset; `None` fields are left alone.
#[derive(AsChangeset, Clone, PartialEq, Eq, Hash)]
#[diesel(table_name = task_instances)]
pub(crate) struct TaskChangeset {
    pub state: Option<String>,
    pub attempt: Option<i32>,
    pub failovers: Option<i32>,
    pub host: Option<Option<String>>,
    pub exit_code: Option<Option<i32>>,
    pub retry_at: Option<Option<i64>>,
    pub log_path: Option<Option<String>>,
    pub start_time: Option<Option<i64>>,
    pub end_time: Option<Option<i64>>,
    pub updated_at: i64,
    pub outputs: Option<String>,
    pub message: Option<Option<String>>,
    pub run: Option<i32>,
    pub retries: Option<i32>,
    pub kill_reason: Option<Option<String>>,
    pub branches: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
}

impl TaskChangeset {
    /// `state`: where the change's events lead (`None`: they do not move it).
    pub fn new(u: &TaskUpdate, state: Option<TaskState>, now: i64) -> Self {
        TaskChangeset {
            state: state.map(|s| s.to_string()),
            attempt: u.attempt.map(|a| a as i32),
            failovers: u.failovers.map(|f| f as i32),
            host: u.host.clone(),
            exit_code: u.exit_code,
            retry_at: u.retry_at.map(|t| t.map(ms)),
            log_path: u.log_path.clone(),
            start_time: u.start_time.map(|t| t.map(ms)),
            end_time: u.end_time.map(|t| t.map(ms)),
            updated_at: now,
            outputs: u.outputs.as_ref().map(json),
            message: u.message.clone(),
            run: u.run.map(|r| r as i32),
            retries: u.retries.map(|r| r as i32),
            kill_reason: u.kill_reason.clone(),
            branches: u.branches.as_ref().map(|b| b.as_ref().map(json)),
            external_id: u.external_id.clone(),
        }
    }
}

/// A [`WorkflowUpdate`] as a diesel changeset.
#[derive(AsChangeset)]
#[diesel(table_name = workflow_instances)]
pub(crate) struct WorkflowChangeset {
    pub state: Option<String>,
    pub command_kind: Option<String>,
    pub run: Option<i32>,
    pub start_time: Option<Option<i64>>,
    pub end_time: Option<Option<i64>>,
    pub reason: Option<Option<String>>,
    pub updated_at: i64,
}

impl WorkflowChangeset {
    pub fn new(u: &WorkflowUpdate, state: Option<WorkflowState>, now: i64) -> Self {
        WorkflowChangeset {
            state: state.map(|s| s.to_string()),
            command_kind: u.command_kind.map(|k| k.to_string()),
            run: u.run.map(|r| r as i32),
            start_time: u.start_time.map(|t| t.map(ms)),
            end_time: u.end_time.map(|t| t.map(ms)),
            reason: u.reason.clone(),
            updated_at: now,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = backfills)]
pub(crate) struct BackfillRow {
    pub id: i64,
    pub workflow_id: i64,
    pub workflow_version: i32,
    pub schedule_times: String,
    pub parallelism: i32,
    pub next_index: i32,
    pub state: String,
    pub params: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl BackfillRow {
    pub fn into_domain(self) -> Result<Backfill, StoreError> {
        let times: Vec<i64> = from_json("backfills.schedule_times", &self.schedule_times)?;
        Ok(Backfill {
            id: BackfillId(self.id),
            spec: NewBackfill {
                workflow_id: WorkflowId(self.workflow_id),
                workflow_version: u32_of("backfills.workflow_version", self.workflow_version)?,
                schedule_times: times.into_iter().map(from_ms).collect::<Result<_, _>>()?,
                parallelism: u32_of("backfills.parallelism", self.parallelism)?,
                params: from_json("backfills.params", &self.params)?,
            },
            created_runs: u32_of("backfills.next_index", self.next_index)?,
            state: parse("backfills.state", &self.state)?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

/// Blocks the calling (blocking-pool) thread until `at`.
pub(crate) fn sleep_until_blocking(at: Timestamp) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        std::thread::sleep(left);
    }
}

/// Waits until `at` without holding a thread.
pub(crate) async fn sleep_until_async(at: Timestamp) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}
