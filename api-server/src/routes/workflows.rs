use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonOrEmpty, PathParams, QueryParams, WorkflowBody};
use crate::types::*;
use crate::views::{self, plan_run, saved_workflow_view, schedule_spec, workflow_view};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows))
        .routes(routes!(get_workflow, put_workflow, delete_workflow))
        .routes(routes!(list_versions))
        .routes(routes!(run_workflow))
}

/// Create a workflow, or store a new version of it when it changed.
///
/// The body is the workflow document as YAML (`application/yaml`,
/// `application/x-yaml`, `text/yaml`) or JSON (`application/json`);
/// `project` and `name` in it are optional and must match the URL.
/// 201 when a version was written, 200 when the workflow equals the latest
/// version. A `schedule` in the document is stored too, after the
/// workflow (a new one starts offline, a changed one stays online or
/// offline); a document without `schedule` leaves a stored schedule alone,
/// so that files written before schedules existed, or tools that do not
/// know them, never drop one (`PUT …/schedule` and the online/offline
/// switches manage it).
#[utoipa::path(
    put,
    path = "/projects/{project}/workflows/{name}",
    tag = "workflows",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    request_body(
        description = "The workflow document",
        content((WorkflowDocumentSchema = "application/yaml"), (WorkflowDocumentSchema = "application/json"))
    ),
    responses(
        (status = 201, description = "A new version was stored", body = SavedWorkflowView),
        (status = 200, description = "Unchanged: same as the latest version (its schedule may have changed)", body = SavedWorkflowView),
        (status = 400, description = "Invalid document; `field` is the path of the mistake (`schedule.cron`); nothing is stored", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 415, description = "Neither YAML nor JSON", body = ErrorBody),
    )
)]
async fn put_workflow(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    WorkflowBody(mut document): WorkflowBody,
) -> ApiResult<(StatusCode, Json<SavedWorkflowView>)> {
    if let Some(named) = document.project.as_deref().filter(|p| *p != project) {
        return Err(ApiError::invalid("project", format!("the document is for project `{named}`, the URL for `{project}`")));
    }
    if document.spec.name.is_empty() {
        document.spec.name = name.clone();
    } else if document.spec.name != name {
        return Err(ApiError::invalid("name", format!("the document names workflow `{}`, the URL `{name}`", document.spec.name)));
    }
    document.validate(&state.plugins)?;
    let project = state.project(&project).await?;
    let saved = state.store.save_workflow(project.id, &document.spec).await?;
    tracing::info!(project = %project.name, workflow = %name, version = saved.version, created = saved.created, "workflow saved");
    let schedule = match &document.schedule {
        None => None,
        Some(spec) => {
            let stored = state.store.schedule(saved.id).await?;
            let change = match &stored {
                None => "created",
                Some(s) if &schedule_spec(s) == spec => "unchanged",
                Some(_) => "changed",
            };
            // Unchanged: not written, so its `updated_at` keeps saying when
            // it last changed.
            let schedule = match stored {
                Some(s) if change == "unchanged" => s,
                _ => state.store.set_schedule(saved.id, spec).await?,
            };
            tracing::info!(project = %project.name, workflow = %name, schedule = %schedule.id, change, online = schedule.online, "workflow schedule saved");
            Some(SavedSchedule { change: change.to_owned(), online: schedule.online })
        }
    };
    let status = if saved.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(saved_workflow_view(&name, &saved, schedule))))
}

/// List (or search) the workflows of a project.
#[utoipa::path(
    get,
    path = "/projects/{project}/workflows",
    tag = "workflows",
    params(("project" = String, Path, description = "Project name"), WorkflowSearch),
    responses((status = 200, description = "Latest version of each match, by name", body = [WorkflowSummaryView]), (status = 404, description = "No such project", body = ErrorBody))
)]
async fn list_workflows(
    State(state): State<AppState>,
    PathParams(project): PathParams<String>,
    QueryParams(search): QueryParams<WorkflowSearch>,
) -> ApiResult<Json<Vec<WorkflowSummaryView>>> {
    let project = state.project(&project).await?;
    let found = state.store.list_workflows(project.id, search.q.as_deref()).await?;
    Ok(Json(found.into_iter().map(WorkflowSummaryView::from).collect()))
}

/// Get a workflow as its document: the latest version or `?version=N`,
/// with the workflow's schedule (if it has one) as `schedule`.
#[utoipa::path(
    get,
    path = "/projects/{project}/workflows/{name}",
    tag = "workflows",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name"), WorkflowVersionQuery),
    responses(
        (status = 200, description = "The version", body = WorkflowView),
        (status = 400, description = "Bad version", body = ErrorBody),
        (status = 404, description = "No such project, workflow or version", body = ErrorBody),
    )
)]
async fn get_workflow(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<WorkflowVersionQuery>,
) -> ApiResult<Json<WorkflowView>> {
    let version = views::version(query)?;
    let project = state.project(&project).await?;
    let def = state.workflow(&project, &name, version).await?;
    let schedule = state.store.schedule(def.id).await?;
    Ok(Json(workflow_view(&def, schedule.as_ref())))
}

/// A workflow's version history, newest first.
#[utoipa::path(
    get,
    path = "/projects/{project}/workflows/{name}/versions",
    tag = "workflows",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    responses((status = 200, description = "Every stored version", body = [WorkflowVersionView]), (status = 404, description = "No such project or workflow", body = ErrorBody))
)]
async fn list_versions(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
) -> ApiResult<Json<Vec<WorkflowVersionView>>> {
    let project = state.project(&project).await?;
    let workflow = state.workflow(&project, &name, None).await?;
    let versions = state.store.workflow_versions(workflow.id).await?;
    Ok(Json(versions.into_iter().map(WorkflowVersionView::from).collect()))
}

/// Delete a workflow with all its versions and its schedule; its runs stay.
#[utoipa::path(
    delete,
    path = "/projects/{project}/workflows/{name}",
    tag = "workflows",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such project or workflow", body = ErrorBody))
)]
async fn delete_workflow(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = state.project(&project).await?;
    let workflow = state.workflow(&project, &name, None).await?;
    // Issue 4 asks for a 409 naming the workflows that depend on this one;
    // dependent tasks do not exist yet, so nothing can depend on it. Check
    // here, before deleting, once they do.
    if !state.store.delete_workflow(workflow.id).await? {
        return Err(ApiError::not_found(format!("workflow `{name}` not found in project `{}`", project.name)));
    }
    tracing::info!(project = %project.name, workflow = %name, "workflow deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Run the latest version of a workflow.
///
/// 202 once the workflow instance is stored (it can be read at once; a
/// master picks it up); with `dry_run`, 200 with the tasks that would run
/// and nothing stored. An empty body runs everything with the defaults.
#[utoipa::path(
    post,
    path = "/projects/{project}/workflows/{name}/runs",
    tag = "runs",
    params(("project" = String, Path, description = "Project name"), ("name" = String, Path, description = "Workflow name")),
    request_body(content = RunRequest, description = "Optional: overrides and a task selection"),
    responses(
        (status = 202, description = "Accepted: the instance exists", body = RunAccepted),
        (status = 200, description = "Dry run: what would run", body = RunAccepted),
        (status = 400, description = "Invalid request; `field` names it (e.g. `start_tasks[1]`)", body = ErrorBody),
        (status = 404, description = "No such project or workflow", body = ErrorBody),
    )
)]
async fn run_workflow(
    State(state): State<AppState>,
    PathParams((project, name)): PathParams<(String, String)>,
    JsonOrEmpty(request): JsonOrEmpty<RunRequest>,
) -> ApiResult<(StatusCode, Json<RunAccepted>)> {
    let project = state.project(&project).await?;
    let def = state.workflow(&project, &name, None).await?;
    let plan = plan_run(&def, request)?;
    let mut accepted = RunAccepted { workflow_instance_id: None, dry_run: plan.dry_run, version: def.version, tasks: plan.tasks };
    if plan.dry_run {
        return Ok((StatusCode::OK, Json(accepted)));
    }
    let (instance, command) = state.store.submit_run(&plan.instance, &plan.command).await?;
    state.commands.send();
    tracing::info!(project = %project.name, workflow = %name, version = def.version, workflow_instance = %instance, command = %command, "run submitted");
    accepted.workflow_instance_id = Some(instance.get());
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}
