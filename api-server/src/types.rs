//! The REST API's wire types, shared by the server and the `sluice` CLI.
//! Instants are RFC 3339 strings (UTC); enums use the domain's wire names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_domain::{Params, ProjectId};
use utoipa::{IntoParams, ToSchema};

/// Every error has this shape: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_input` (400), `not_found` (404),
    /// `method_not_allowed` (405), `conflict` (409), `payload_too_large`
    /// (413), `unsupported_media_type` (415), `internal` (500),
    /// `unavailable` (503: the database does not answer; try again).
    pub code: String,
    /// For people: what was wrong, with which input.
    pub message: String,
    /// Path of the offending input field (`tasks[1].retires`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[schema(inline)]
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    #[schema(value_type = i64)]
    pub id: ProjectId,
    pub name: String,
    pub description: String,
    #[schema(inline)]
    pub params: Params,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Result of `PUT …/workflows/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavedWorkflowView {
    pub name: String,
    pub version: u32,
    /// A new version was stored (false: identical to the latest version).
    pub created: bool,
    /// What became of the document's `schedule`; absent when it has none
    /// (a stored schedule is then left as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<SavedSchedule>,
}

/// The schedule part of [`SavedWorkflowView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavedSchedule {
    /// `created` (the workflow had none: it starts offline), `changed`
    /// (replaced; online or offline as before) or `unchanged`.
    pub change: String,
    /// Whether it fires: `POST …/schedule/online` and `…/offline` switch it.
    pub online: bool,
}

/// A schedule as a workflow file's `schedule:` writes it, and as
/// `PUT …/workflows/{name}/schedule` takes it: `cron` (with `timezone`) or
/// `every` (with `times`), and optionally `start`, `end`, `misfire`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleBody {
    /// Quartz cron with seconds (`?`, `L`, `W`, `#`, optional year), e.g.
    /// `0 30 2 * * ?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA zone `cron` runs in, e.g. `Asia/Shanghai` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Instead of `cron`: fire every so often (`30s`, `5m`, `1h`; at least
    /// `1s`), counted from `start` (or from when the schedule was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// With `every`: at most this many fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// No fire before: a date (`2026-01-01`, midnight in the schedule's
    /// zone; UTC for `every`) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// No fire after; same forms as `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Fire times missed while no master ran: `run_once` (default, one run
    /// for them all), `run_all` (each, oldest first) or `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
}

/// A workflow's schedule and whether it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub project: String,
    pub workflow: String,
    pub online: bool,
    /// As a workflow file writes it.
    pub schedule: ScheduleBody,
    /// The last fire time a run was created for.
    pub last_fire: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Answer of `GET …/schedule/preview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SchedulePreview {
    pub project: String,
    pub workflow: String,
    /// The zone the times are given in: the schedule's (UTC for `every`).
    pub timezone: String,
    pub online: bool,
    /// The next fire times, RFC 3339 in `timezone` with its offset
    /// (`2026-03-08T03:00:00-04:00`); fewer than asked when the schedule
    /// ends (its `end`, or `times`) first.
    pub times: Vec<String>,
}

/// Query of `GET …/schedule/preview`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// How many fire times, 1 to 100 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub count: Option<String>,
    /// Fire times after this RFC 3339 time (default: now). The schedule's
    /// `start` and `end` still apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummaryView {
    pub name: String,
    pub description: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One version of a workflow, as the document users write (the same
/// document `sluice apply` reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    pub project: String,
    pub name: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersionView {
    pub version: u32,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST …/workflows/{name}/runs`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Run-time parameters; they override the workflow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub params: Option<Params>,
    /// `highest` | `high` | `medium` | `low` | `lowest`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_group: Option<String>,
    /// `end` | `continue`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_strategy: Option<String>,
    /// Start from these tasks only (with `scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_tasks: Option<Vec<String>>,
    /// `only` | `upstream` | `downstream` (default `only` when `start_tasks` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Check and report what would run; create nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// Answer to a run request: 202 with the new instance, or 200 for a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunAccepted {
    /// The instance created (it exists when this is returned); absent for a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_instance_id: Option<i64>,
    pub dry_run: bool,
    /// The workflow version that runs.
    pub version: u32,
    /// The tasks the run includes, in a dependency-respecting order.
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskInstanceView {
    pub id: i64,
    pub workflow_instance_id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub task_type: String,
    /// `submitted` | `dispatched` | `running` | `success` | `failure` |
    /// `killed` | `retry_wait` | `need_failover` | `forced_success`
    pub state: String,
    pub attempt: u32,
    pub max_retries: u32,
    pub failovers: u32,
    pub priority: String,
    pub worker_group: String,
    /// `host:port` of the worker of the current attempt.
    pub host: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the current attempt ended as it did, for people: `exit code 3`,
    /// `timed out after 2s`, or, for a task that never ran, `cannot
    /// resolve `$[...]`: …`, `killed before it started: …`, `skipped: …`.
    /// Absent while the attempt has not ended.
    pub reason: Option<String>,
    pub submit_time: DateTime<Utc>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowInstanceView {
    pub id: i64,
    pub project: String,
    pub workflow: String,
    pub workflow_version: u32,
    /// `submitted` | `running` | `ready_pause` | `paused` | `ready_stop` |
    /// `stopped` | `success` | `failure` | `need_failover`
    pub state: String,
    pub command: String,
    #[schema(inline)]
    pub params: Params,
    pub priority: String,
    pub worker_group: String,
    pub failure_strategy: String,
    pub schedule_time: Option<DateTime<Utc>>,
    /// The master driving it.
    pub owner: Option<String>,
    pub run: u32,
    pub start_tasks: Vec<String>,
    pub scope: Option<String>,
    /// Why the instance ended as it did, when the master said (`stopped
    /// while running`, `cannot run: …`).
    pub reason: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Present on `GET /workflow-instances/{id}`, absent in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskInstanceView>>,
}

/// A page of `GET /workflow-instances`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    pub items: Vec<WorkflowInstanceView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Answer to run commands (202): the request is queued for the master that
/// drives the instance, or for any master when nobody drives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestAccepted {
    pub workflow_instance_id: i64,
    pub command_id: i64,
    /// For commands that restart an instance at rest (rerun, recover,
    /// force-success of a failed or stopped instance): the instance's `run`
    /// once restarted. The restarted run is over when the instance has this
    /// run and a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
}

/// Longest backfill: this many dates (ten years of days).
pub const MAX_BACKFILL_DATES: usize = 3660;
/// Most runs of a parallel backfill at once.
pub const MAX_BACKFILL_PARALLELISM: u32 = 100;
/// Runs at once of a parallel backfill that does not say.
pub const DEFAULT_BACKFILL_PARALLELISM: u32 = 2;

/// Body of `POST …/workflows/{name}/backfill`: one run of the workflow's
/// latest version per date, each with its schedule time on that date (the
/// day's first fire time of the workflow's schedule in its zone, else
/// midnight there) and so its business date (`${system.biz.date}`, the day
/// before).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// First date, `YYYY-MM-DD`, with `end` (both included); or give `dates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last date, `YYYY-MM-DD`, not before `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Instead of `start` and `end`: these dates (`YYYY-MM-DD`, each once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dates: Option<Vec<String>>,
    /// `serial` (one run at a time) or `parallel` (`parallelism` at once).
    /// Default: `parallel` when `parallelism` is above 1, else `serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Runs at once: 1 for `serial`; 2 to 100 for `parallel` (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub parallelism: Option<u32>,
    /// `asc` (default: oldest date first) or `desc` (newest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Run-time parameters of every run; they override the workflow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub params: Option<Params>,
    /// Check the request and list the runs it would create; store nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// A backfill is stored (202); masters create its runs as earlier ones end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackfillAccepted {
    pub backfill_id: i64,
    /// How many runs it will create, one per date.
    pub runs: u32,
}

/// Answer to a dry run (200): the runs a backfill would create, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackfillPreview {
    pub dry_run: bool,
    pub project: String,
    pub workflow: String,
    /// The workflow version that would run (the latest).
    pub version: u32,
    /// The zone of the dates and times: the schedule's (UTC for `every`
    /// or without a schedule).
    pub timezone: String,
    pub parallelism: u32,
    pub runs: Vec<PlannedBackfillRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlannedBackfillRun {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// RFC 3339 in the backfill's `timezone`, with its offset.
    pub schedule_time: String,
}

/// A backfill and the runs it has created so far, in run order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackfillView {
    pub id: i64,
    pub project: String,
    pub workflow: String,
    pub workflow_version: u32,
    /// `running` (runs are created as earlier ones end), `done` (every run
    /// was created and has ended) or `stopped`.
    pub state: String,
    /// Runs at once (1: serial).
    pub parallelism: u32,
    /// The zone `date` and `schedule_time` are shown in: the workflow's
    /// schedule's (UTC for `every` or without a schedule).
    pub timezone: String,
    #[schema(inline)]
    pub params: Params,
    /// Runs created so far.
    pub created_runs: u32,
    /// Runs it creates in all: one per date.
    pub total_runs: u32,
    pub runs: Vec<BackfillRunView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One run of a backfill: a workflow instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackfillRunView {
    pub workflow_instance_id: i64,
    /// `YYYY-MM-DD`: the date it runs for.
    pub date: String,
    /// RFC 3339 in the backfill's `timezone`, with its offset.
    pub schedule_time: String,
    /// The workflow instance's state (`submitted`, `running`, `success`, ...).
    pub state: String,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

/// Answer to `POST /backfills/{id}/stop` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackfillStopped {
    pub backfill_id: i64,
    /// `stopped`: it creates no more runs.
    pub state: String,
    /// Its runs that had not ended; each is asked to stop (running tasks
    /// are killed).
    pub stopping: Vec<i64>,
}

/// Query of `GET /projects/{project}/workflows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkflowSearch {
    /// Matches (case-insensitively) part of a workflow's name, its
    /// description or one of its task names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// Query of `GET /projects/{project}/workflows/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkflowVersionQuery {
    /// A stored version (1, 2, …); the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>)]
    pub version: Option<String>,
}

/// Query of `GET /workflow-instances`. Values travel as text and are
/// checked by the server, which names the parameter of a bad value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// Project name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Workflow name (needs `project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A workflow-instance state, e.g. `running`, `failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The workflow document `PUT …/workflows/{name}` takes, as YAML or JSON
/// (documentation of its shape: the server reads it with `sluice_spec`,
/// which reports a mistake at its path, e.g. `tasks[1].retires`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowDocumentSchema {
    /// Must match the URL when present.
    pub project: Option<String>,
    /// Must match the URL when present.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Global parameters, overridable per run.
    #[schema(inline)]
    pub params: Option<Params>,
    /// `end` | `continue`
    pub failure_strategy: Option<String>,
    /// `highest` | `high` | `medium` | `low` | `lowest`
    pub priority: Option<String>,
    pub worker_group: Option<String>,
    pub tasks: Vec<TaskDocumentSchema>,
    /// When the workflow fires by itself. A document without it leaves the
    /// stored schedule (if any) as it is; a new schedule starts offline.
    pub schedule: Option<ScheduleBody>,
}

/// One task of a [`WorkflowDocumentSchema`]. Type-specific fields (`script`
/// for `shell` and `python`) go under `with`, or beside these when their
/// name is not one of these keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskDocumentSchema {
    pub name: String,
    /// `shell` | `python`
    #[serde(rename = "type")]
    pub task_type: String,
    pub description: Option<String>,
    /// Names of the tasks this one runs after.
    pub deps: Option<Vec<String>>,
    #[schema(inline)]
    pub params: Option<Params>,
    pub retries: Option<u32>,
    /// A duration: `500ms`, `30s`, `10m`, `1h`.
    pub retry_interval: Option<String>,
    /// A duration: `500ms`, `30s`, `10m`, `1h`.
    pub timeout: Option<String>,
    /// `warn` | `fail` | `warn_fail`
    pub timeout_strategy: Option<String>,
    pub priority: Option<String>,
    pub worker_group: Option<String>,
    /// The command (`shell`) or program (`python`).
    pub script: Option<String>,
    /// The task type's own fields, any name allowed (a type's own
    /// `timeout`); `script` may be given here instead of beside.
    #[serde(rename = "with")]
    #[schema(value_type = Option<Object>)]
    pub with: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `GET /task-instances/{id}/log` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Which attempt (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1)]
    pub attempt: Option<String>,
    /// Where to start: 0 (default) or the `next_offset` of the previous
    /// page. A byte offset into the log file: opaque, pass it back as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u64>)]
    pub offset: Option<String>,
    /// Lines per page, 1 to 10000 (default 1000); a page also stops at 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

/// `GET /task-instances/{id}/log/stream` and `/log/download` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogStreamQuery {
    /// Which attempt (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 1)]
    pub attempt: Option<String>,
    /// Stream only: start at this `next_offset` instead of the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u64>)]
    pub offset: Option<String>,
}

/// A page of a task attempt's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskLogPage {
    pub task_instance_id: i64,
    pub attempt: u32,
    /// Whole lines, without their newline:
    /// `2026-11-21T10:00:00.123Z [out] text` or `… [sluice] text`.
    pub lines: Vec<String>,
    /// Pass as `offset` for the next page (a byte offset; opaque).
    pub next_offset: u64,
    /// The attempt is over and this page reaches the end of its log.
    pub finished: bool,
    /// Where the page was read: `worker` or `store`; `reason` for an
    /// attempt that ended without running and whose log nobody wrote (a
    /// skipped task): its one line says why, from the task's `reason`.
    pub source: String,
}
