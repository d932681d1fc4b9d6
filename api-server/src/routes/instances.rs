use std::collections::hash_map::Entry;
use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use sluice_domain::*;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::types::*;
use crate::views::{check_force_success, check_instance_event, instance_listing, workflow_instance_view, ForceSuccessRoute};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances))
        .routes(routes!(get_instance))
        .routes(routes!(stop_instance))
        .routes(routes!(rerun_instance))
        .routes(routes!(recover_instance))
        .routes(routes!(pause_instance))
        .routes(routes!(resume_instance))
        .routes(routes!(get_task))
        .routes(routes!(kill_task))
        .routes(routes!(force_success_task))
}

/// Ids in paths are read into named fields, so a bad one is reported as
/// `field: "id"`.
#[derive(Deserialize)]
struct IdPath {
    id: i64,
}

impl AppState {
    async fn instance(&self, id: WorkflowInstanceId) -> ApiResult<WorkflowInstance> {
        self.store.workflow_instance(id).await?.ok_or_else(|| ApiError::not_found(format!("workflow instance {id} not found")))
    }

    async fn task_instance(&self, id: TaskInstanceId) -> ApiResult<TaskInstance> {
        self.store.task_instance(id).await?.ok_or_else(|| ApiError::not_found(format!("task instance {id} not found")))
    }

    async fn project_name(&self, id: ProjectId) -> ApiResult<String> {
        Ok(self.store.project_by_id(id).await?.map(|p| p.name).unwrap_or_default())
    }

    /// Queues `command` for the master driving its instance. A restart
    /// while another waits is refused by the database (409): until a
    /// master takes the first, the instance still shows its old state, and
    /// a check here would race the other request.
    async fn instance_command(&self, instance: &WorkflowInstance, command: NewCommand) -> ApiResult<CommandId> {
        let id = self.store.insert_command(&command).await.map_err(|error| match error {
            sluice_storage::StoreError::Conflict(_) if command.is_restart() => ApiError::conflict(format!(
                "workflow instance {} already has a restart queued; it stays {} until a master takes it",
                instance.id, instance.state
            )),
            other => other.into(),
        })?;
        self.commands.send();
        Ok(id)
    }

    /// Rerun, recover, resume: checked against the transition table, then
    /// queued.
    async fn restart(&self, id: i64, kind: CommandKind, event: WorkflowEvent, verb: &str) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
        let instance = self.instance(WorkflowInstanceId(id)).await?;
        check_instance_event(&instance, event, verb)?;
        let target = InstanceTarget::of(&instance);
        let command = match kind {
            CommandKind::Rerun => NewCommand::Rerun(target),
            CommandKind::Resume => NewCommand::Resume(target),
            _ => NewCommand::Recover { target, force_success: Vec::new() },
        };
        let command = self.instance_command(&instance, command).await?;
        tracing::info!(workflow_instance = %instance.id, %command, %kind, "run command requested");
        // Resume goes on with the same run; rerun and recover start the next.
        let run = (kind != CommandKind::Resume).then_some(instance.run + 1);
        Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: id, command_id: command.get(), run })))
    }
}

/// List workflow instances, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/workflow-instances",
    tag = "runs",
    params(InstanceQuery),
    responses(
        (status = 200, description = "A page; pass `next_cursor` as `cursor` for the next", body = InstancePage),
        (status = 400, description = "Bad filter; `field` names it", body = ErrorBody),
        (status = 404, description = "No such project or workflow", body = ErrorBody),
    )
)]
async fn list_instances(State(state): State<AppState>, QueryParams(query): QueryParams<InstanceQuery>) -> ApiResult<Json<InstancePage>> {
    let listing = instance_listing(query)?;
    let mut filter = InstanceFilter { state: listing.state, before: listing.before, limit: listing.limit, ..Default::default() };
    if let Some(name) = &listing.project {
        let project = state.project(name).await?;
        filter.project_id = Some(project.id);
        if let Some(workflow) = &listing.workflow {
            filter.workflow_id = Some(state.workflow(&project, workflow, None).await?.id);
        }
    }
    let items = state.store.list_workflow_instances(&filter).await?;
    // A full page has a next one only if an older match exists; asking
    // saves clients a last, empty page.
    let next_cursor = match items.last() {
        Some(last) if items.len() == listing.limit as usize => {
            let probe = InstanceFilter { before: Some(last.id), limit: 1, ..filter.clone() };
            (!state.store.list_workflow_instances(&probe).await?.is_empty()).then(|| last.id.to_string())
        }
        _ => None,
    };
    let mut projects: HashMap<ProjectId, String> = HashMap::new();
    let mut views = Vec::with_capacity(items.len());
    for wi in items {
        if let Entry::Vacant(slot) = projects.entry(wi.project_id) {
            slot.insert(state.project_name(wi.project_id).await?);
        }
        let project = &projects[&wi.project_id];
        views.push(workflow_instance_view(wi, project, None));
    }
    Ok(Json(InstancePage { items: views, next_cursor }))
}

/// A workflow instance with its task instances.
#[utoipa::path(
    get,
    path = "/workflow-instances/{id}",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 200, description = "The instance and its tasks", body = WorkflowInstanceView),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
    )
)]
async fn get_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<Json<WorkflowInstanceView>> {
    let instance = state.instance(WorkflowInstanceId(id)).await?;
    let tasks = state.store.task_instances(instance.id).await?;
    let project = state.project_name(instance.project_id).await?;
    Ok(Json(workflow_instance_view(instance, &project, Some(tasks))))
}

/// Stop a workflow instance: its running tasks are killed, nothing new starts.
#[utoipa::path(
    post,
    path = "/workflow-instances/{id}/stop",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 202, description = "Queued for the master driving it", body = RequestAccepted),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Already over", body = ErrorBody),
    )
)]
async fn stop_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    let instance = state.instance(WorkflowInstanceId(id)).await?;
    if instance.state.is_final() {
        return Err(ApiError::conflict(format!("workflow instance {id} is already over ({})", instance.state)));
    }
    let command = state.instance_command(&instance, NewCommand::Stop(InstanceTarget::of(&instance))).await?;
    tracing::info!(workflow_instance = %instance.id, %command, "stop requested");
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: id, command_id: command.get(), run: None })))
}

/// Rerun a finished workflow instance: every task again, in the same
/// instance (its `run` goes up by one).
#[utoipa::path(
    post,
    path = "/workflow-instances/{id}/rerun",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 202, description = "Queued; `run` is the run to wait for", body = RequestAccepted),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not over (success, failure or stopped), or a restart is already queued", body = ErrorBody),
    )
)]
async fn rerun_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    state.restart(id, CommandKind::Rerun, WorkflowEvent::Rerun, "rerun").await
}

/// Recover a failed or stopped workflow instance: its failed and killed
/// tasks run again with what is downstream of them; succeeded tasks are kept.
#[utoipa::path(
    post,
    path = "/workflow-instances/{id}/recover",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 202, description = "Queued; `run` is the run to wait for", body = RequestAccepted),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not failed or stopped, or a restart is already queued", body = ErrorBody),
    )
)]
async fn recover_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    state.restart(id, CommandKind::RecoverFailure, WorkflowEvent::Recover, "recover").await
}

/// Pause a running workflow instance: running tasks finish, nothing new
/// starts; it rests `paused` until resumed.
#[utoipa::path(
    post,
    path = "/workflow-instances/{id}/pause",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 202, description = "Queued for the master driving it", body = RequestAccepted),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
    )
)]
async fn pause_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    let instance = state.instance(WorkflowInstanceId(id)).await?;
    check_instance_event(&instance, WorkflowEvent::Pause, "pause")?;
    let command = state.instance_command(&instance, NewCommand::Pause(InstanceTarget::of(&instance))).await?;
    tracing::info!(workflow_instance = %instance.id, %command, "pause requested");
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: id, command_id: command.get(), run: None })))
}

/// Resume a paused workflow instance.
#[utoipa::path(
    post,
    path = "/workflow-instances/{id}/resume",
    tag = "runs",
    params(("id" = i64, Path, description = "Workflow instance id")),
    responses(
        (status = 202, description = "Queued", body = RequestAccepted),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not paused, or a restart is already queued", body = ErrorBody),
    )
)]
async fn resume_instance(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    state.restart(id, CommandKind::Resume, WorkflowEvent::Resume, "resume").await
}

/// A task instance.
#[utoipa::path(
    get,
    path = "/task-instances/{id}",
    tag = "runs",
    params(("id" = i64, Path, description = "Task instance id")),
    responses(
        (status = 200, description = "The task instance", body = TaskInstanceView),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such task instance", body = ErrorBody),
    )
)]
async fn get_task(State(state): State<AppState>, PathParams(IdPath { id }): PathParams<IdPath>) -> ApiResult<Json<TaskInstanceView>> {
    Ok(Json(state.task_instance(TaskInstanceId(id)).await?.into()))
}

/// Kill a task instance; its workflow goes on as its failure strategy says.
#[utoipa::path(
    post,
    path = "/task-instances/{id}/kill",
    tag = "runs",
    params(("id" = i64, Path, description = "Task instance id")),
    responses(
        (status = 202, description = "Queued for the master driving its workflow instance", body = RequestAccepted),
        (status = 404, description = "No such task instance", body = ErrorBody),
        (status = 409, description = "The task is already over", body = ErrorBody),
    )
)]
async fn kill_task(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    let task = state.task_instance(TaskInstanceId(id)).await?;
    if task.state.is_final() {
        return Err(ApiError::conflict(format!("task instance {id} (`{}`) is already over ({})", task.name, task.state)));
    }
    let instance = state.instance(task.workflow_instance_id).await?;
    if instance.state.is_final() {
        return Err(ApiError::conflict(format!(
            "workflow instance {} of task instance {id} is already over ({})",
            instance.id, instance.state
        )));
    }
    let command = state.instance_command(&instance, NewCommand::KillTask { target: InstanceTarget::of(&instance), tasks: vec![task.name.clone()] }).await?;
    tracing::info!(workflow_instance = %instance.id, task_instance = %task.id, task = %task.name, %command, "kill requested");
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: instance.id.get(), command_id: command.get(), run: None })))
}

/// Mark a failed or killed task instance successful so that its
/// downstream tasks run: at once in a running instance; a failed or
/// stopped one is recovered with the task forced (its `run` goes up by
/// one): the task stays `forced_success`, what is downstream of it runs,
/// and so do the other failed or killed tasks and what is below them.
#[utoipa::path(
    post,
    path = "/task-instances/{id}/force-success",
    tag = "runs",
    params(("id" = i64, Path, description = "Task instance id")),
    responses(
        (status = 202, description = "Queued; `run` is set when the instance restarts", body = RequestAccepted),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 404, description = "No such task instance", body = ErrorBody),
        (status = 409, description = "The task did not fail or was not killed, or its instance is neither running nor failed or stopped", body = ErrorBody),
    )
)]
async fn force_success_task(
    State(state): State<AppState>,
    PathParams(IdPath { id }): PathParams<IdPath>,
) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
    let task = state.task_instance(TaskInstanceId(id)).await?;
    let instance = state.instance(task.workflow_instance_id).await?;
    let route = check_force_success(&task, &instance)?;
    let (target, tasks) = (InstanceTarget::of(&instance), vec![task.name.clone()]);
    let command = match route {
        ForceSuccessRoute::Driver => NewCommand::ForceSuccess { target, tasks },
        ForceSuccessRoute::Restart => NewCommand::Recover { target, force_success: tasks },
    };
    let command = state.instance_command(&instance, command).await?;
    tracing::info!(workflow_instance = %instance.id, task_instance = %task.id, task = %task.name, %command, ?route, "force-success requested");
    let run = (route == ForceSuccessRoute::Restart).then_some(instance.run + 1);
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: instance.id.get(), command_id: command.get(), run })))
}
