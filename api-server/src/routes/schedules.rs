//! A workflow's schedule: read, replace, switch online/offline, preview.
//! The schedule is also set from a workflow document's `schedule:` (see
//! `workflows::put_workflow`); the cron leader (`master/src/cron.rs`) fires
//! the online ones.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use sluice_domain::{Project, Schedule, WorkflowDefinition};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::types::*;
use crate::views::{preview, preview_query, schedule_view};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_schedule, put_schedule))
        .routes(routes!(schedule_online))
        .routes(routes!(schedule_offline))
        .routes(routes!(preview_schedule))
}

impl AppState {
    /// The workflow's schedule, or a 404 that says how to add one.
    async fn schedule_of(&self, project: &Project, workflow: &WorkflowDefinition) -> ApiResult<Schedule> {
        self.store.schedule(workflow.id).await?.ok_or_else(|| {
            ApiError::not_found(format!(
                "workflow `{}` of project `{}` has no schedule; add `schedule:` to its file or PUT one",
                workflow.name, project.name
            ))
        })
    }

    async fn set_online(&self, project: String, name: String, online: bool) -> ApiResult<Json<ScheduleView>> {
        let project = self.project(&project).await?;
        let workflow = self.workflow(&project, &name, None).await?;
        self.schedule_of(&project, &workflow).await?;
        let schedule = self.store.set_schedule_online(workflow.id, online).await?;
        tracing::info!(project = %project.name, workflow = %name, schedule = %schedule.id, online, "schedule switched");
        Ok(Json(schedule_view(&project.name, &name, &schedule)))
    }
}

/// A workflow's schedule and whether it is online.
#[utoipa::path(
    get,
    path = "/projects/{project}/workflows/{name}/schedule",
    tag = "schedules",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such project or workflow, or it has no schedule", body = ErrorBody),
    )
)]
async fn get_schedule(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    let project = state.project(&project).await?;
    let workflow = state.workflow(&project, &name, None).await?;
    let schedule = state.schedule_of(&project, &workflow).await?;
    Ok(Json(schedule_view(&project.name, &name, &schedule)))
}

/// Set or replace a workflow's schedule.
///
/// The body is the `schedule:` of a workflow file, as JSON. A new schedule
/// starts offline; a replaced one stays online or offline as it was.
#[utoipa::path(
    put,
    path = "/projects/{project}/workflows/{name}/schedule",
    tag = "schedules",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    request_body(content = ScheduleBody, description = "`cron` (with `timezone`) or `every` (with `times`); `start`, `end`, `misfire`"),
    responses(
        (status = 201, description = "Created (offline)", body = ScheduleView),
        (status = 200, description = "Replaced", body = ScheduleView),
        (status = 400, description = "Invalid schedule; `field` names the key (`cron`, `timezone`, ...)", body = ErrorBody),
        (status = 404, description = "No such project or workflow", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
async fn put_schedule(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    let spec = sluice_spec::schedule_from_value(body, "")?;
    let project = state.project(&project).await?;
    let workflow = state.workflow(&project, &name, None).await?;
    let existed = state.store.schedule(workflow.id).await?.is_some();
    let schedule = state.store.set_schedule(workflow.id, &spec).await?;
    tracing::info!(project = %project.name, workflow = %name, schedule = %schedule.id, online = schedule.online, "schedule stored");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(schedule_view(&project.name, &name, &schedule))))
}

/// Put a schedule online: the cron leader fires it from its next fire time.
#[utoipa::path(
    post,
    path = "/projects/{project}/workflows/{name}/schedule/online",
    tag = "schedules",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    responses(
        (status = 200, description = "Online (also when it already was)", body = ScheduleView),
        (status = 404, description = "No such project or workflow, or it has no schedule", body = ErrorBody),
    )
)]
async fn schedule_online(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    state.set_online(project, name, true).await
}

/// Take a schedule offline: it fires no more (runs already started go on).
#[utoipa::path(
    post,
    path = "/projects/{project}/workflows/{name}/schedule/offline",
    tag = "schedules",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    responses(
        (status = 200, description = "Offline (also when it already was)", body = ScheduleView),
        (status = 404, description = "No such project or workflow, or it has no schedule", body = ErrorBody),
    )
)]
async fn schedule_offline(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    state.set_online(project, name, false).await
}

/// The next fire times of a schedule, in its time zone (DST included),
/// whether or not it is online.
#[utoipa::path(
    get,
    path = "/projects/{project}/workflows/{name}/schedule/preview",
    tag = "schedules",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name"), PreviewQuery),
    responses(
        (status = 200, description = "The next fire times", body = SchedulePreview),
        (status = 400, description = "Bad `count` or `after`", body = ErrorBody),
        (status = 404, description = "No such project or workflow, or it has no schedule", body = ErrorBody),
    )
)]
async fn preview_schedule(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<PreviewQuery>,
) -> ApiResult<Json<SchedulePreview>> {
    let (count, after) = preview_query(query, Utc::now())?;
    let project = state.project(&project).await?;
    let workflow = state.workflow(&project, &name, None).await?;
    let schedule = state.schedule_of(&project, &workflow).await?;
    let (tz, times) = preview(&schedule, after, count)?;
    Ok(Json(SchedulePreview {
        project: project.name,
        workflow: name,
        timezone: tz.name().to_owned(),
        online: schedule.online,
        times: times.into_iter().map(|t| sluice_spec::zoned_text(t, tz)).collect(),
    }))
}
