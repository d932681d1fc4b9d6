//! The REST API's wire types, shared by the server and the `sluice` CLI.
//! Instants are RFC 3339 strings (UTC); enums use the domain's wire names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_domain::{Params, ProjectId};
use utoipa::ToSchema;

/// Every error has this shape: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_input`, `not_found`, `conflict`,
    /// `unsupported_media_type`, `unavailable`, `internal`.
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
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    #[schema(value_type = i64)]
    pub id: ProjectId,
    pub name: String,
    pub description: String,
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

/// Answer to stop and kill requests (202): the request is queued for the
/// master that drives the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestAccepted {
    pub workflow_instance_id: i64,
    pub command_id: i64,
}
