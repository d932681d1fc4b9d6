//! Backfills: one run of a workflow per past date, serial or parallel,
//! stoppable as a whole. The API checks the request and stores the
//! backfill; masters create its runs (`Store::advance_backfills`) as
//! earlier ones end, each with the schedule time of its date.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sluice_domain::*;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams};
use crate::types::*;
use crate::views::{backfill_times, backfill_view, backfill_zone, plan_backfill, planned_runs};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_backfill)).routes(routes!(get_backfill)).routes(routes!(stop_backfill))
}

/// Ids in paths are read into named fields, so a bad one is reported as
/// `field: "id"`.
#[derive(Deserialize)]
struct IdPath {
    id: i64,
}

/// The store lists at most this many instances at a time.
const PAGE: u32 = 1000;

impl AppState {
    async fn backfill(&self, id: BackfillId) -> ApiResult<Backfill> {
        self.store.backfill(id).await?.ok_or_else(|| ApiError::not_found(format!("backfill {id} not found")))
    }

    /// Every run the backfill has created (up to its number of dates).
    async fn backfill_runs(&self, backfill: &Backfill) -> ApiResult<Vec<WorkflowInstance>> {
        let mut runs = Vec::new();
        let mut filter = InstanceFilter { backfill_id: Some(backfill.id), limit: PAGE, ..Default::default() };
        loop {
            let page = self.store.list_workflow_instances(&filter).await?;
            let full = page.len() == PAGE as usize;
            filter.before = page.last().map(|wi| wi.id);
            runs.extend(page);
            if !full {
                return Ok(runs);
            }
        }
    }

    /// The project and workflow names of a backfill. A deleted workflow
    /// (its runs stay) is named by its runs, else by its id.
    async fn backfill_names(&self, backfill: &Backfill, runs: &[WorkflowInstance]) -> ApiResult<(String, String)> {
        let spec = &backfill.spec;
        if let Some(def) = self.store.workflow_by_id(spec.workflow_id, Some(spec.workflow_version)).await? {
            return Ok((def.project, def.name));
        }
        match runs.first() {
            Some(run) => {
                let project = self.store.project_by_id(run.project_id).await?.map(|p| p.name).unwrap_or_default();
                Ok((project, run.workflow_name.clone()))
            }
            None => Ok((String::new(), format!("(deleted workflow {})", spec.workflow_id))),
        }
    }
}

/// Backfill a workflow: one run of its latest version per date.
///
/// Each run's schedule time is the first fire time of the workflow's
/// schedule on its date, in the schedule's zone (midnight there when it
/// does not fire that day, or in UTC without a schedule); its business date
/// (`${system.biz.date}`) is the day before. Runs start in date order
/// (`order`), `parallelism` at a time. Everything is checked before
/// anything is stored; with `dry_run`, 200 with the runs it would create.
#[utoipa::path(
    post,
    path = "/projects/{project}/workflows/{name}/backfill",
    tag = "backfills",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    request_body(content = BackfillRequest, description = "`start` and `end`, or `dates`; `mode`, `parallelism`, `order`, `params`, `dry_run`"),
    responses(
        (status = 202, description = "Stored: masters create its runs", body = BackfillAccepted),
        (status = 200, description = "Dry run: the runs it would create, nothing stored", body = BackfillPreview),
        (status = 400, description = "Invalid request; `field` names it (`end`, `dates[2]`, `parallelism`, ...); nothing stored", body = ErrorBody),
        (status = 404, description = "No such project or workflow", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
async fn create_backfill(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    JsonBody(request): JsonBody<BackfillRequest>,
) -> ApiResult<Response> {
    let plan = plan_backfill(request)?;
    let project = state.project(&project).await?;
    let def = state.workflow(&project, &name, None).await?;
    let schedule = state.store.schedule(def.id).await?;
    let (tz, times) = backfill_times(schedule.as_ref(), &plan.dates)?;
    if plan.dry_run {
        let preview = BackfillPreview {
            dry_run: true,
            project: project.name,
            workflow: name,
            version: def.version,
            timezone: tz.name().to_owned(),
            parallelism: plan.parallelism,
            runs: planned_runs(&times, tz),
        };
        return Ok((StatusCode::OK, Json(preview)).into_response());
    }
    let runs = times.len() as u32;
    let new = NewBackfill { workflow_id: def.id, workflow_version: def.version, schedule_times: times, parallelism: plan.parallelism, params: plan.params };
    let backfill = state.store.create_backfill(&new).await?;
    // Its runs are created by the masters' command scan.
    state.commands.send();
    tracing::info!(
        project = %project.name, workflow = %name, version = def.version, backfill = %backfill.id, runs,
        parallelism = plan.parallelism, "backfill created"
    );
    Ok((StatusCode::ACCEPTED, Json(BackfillAccepted { backfill_id: backfill.id.get(), runs })).into_response())
}

/// A backfill: its state, how far it got, and the runs it has created, in
/// run order.
#[utoipa::path(
    get,
    path = "/backfills/{id}",
    tag = "backfills",
    params(("id" = i64, Path, description = "Backfill id")),
    responses(
        (status = 200, description = "The backfill and its runs so far", body = BackfillView),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such backfill", body = ErrorBody),
    )
)]
async fn get_backfill(State(state): State<AppState>, PathParams(IdPath { id }): PathParams<IdPath>) -> ApiResult<Json<BackfillView>> {
    let backfill = state.backfill(BackfillId(id)).await?;
    let runs = state.backfill_runs(&backfill).await?;
    let (project, workflow) = state.backfill_names(&backfill, &runs).await?;
    let schedule = state.store.schedule(backfill.spec.workflow_id).await?;
    Ok(Json(backfill_view(backfill, project, workflow, backfill_zone(schedule.as_ref()), runs)))
}

/// Stop a backfill as a whole: it creates no more runs, and each of its
/// runs that has not ended is stopped (running tasks are killed).
#[utoipa::path(
    post,
    path = "/backfills/{id}/stop",
    tag = "backfills",
    params(("id" = i64, Path, description = "Backfill id")),
    responses(
        (status = 202, description = "Stopped; its unfinished runs are asked to stop", body = BackfillStopped),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such backfill", body = ErrorBody),
        (status = 409, description = "Already done or stopped", body = ErrorBody),
    )
)]
async fn stop_backfill(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<BackfillStopped>)> {
    let backfill = state.backfill(BackfillId(id)).await?;
    if backfill.state != BackfillState::Running {
        return Err(ApiError::conflict(format!("backfill {id} is already {}", backfill.state)));
    }
    let stopped = state.store.stop_backfill(backfill.id).await?;
    state.commands.send();
    // The runs that were still going when it stopped got a stop command
    // each (in the store's transaction); they are the ones not over yet.
    let stopping: Vec<i64> =
        state.backfill_runs(&stopped).await?.into_iter().filter(|r| !r.state.is_final()).map(|r| r.id.get()).rev().collect();
    tracing::info!(backfill = %stopped.id, stopping = stopping.len(), "backfill stopped");
    Ok((StatusCode::ACCEPTED, Json(BackfillStopped { backfill_id: id, state: stopped.state.to_string(), stopping })))
}
