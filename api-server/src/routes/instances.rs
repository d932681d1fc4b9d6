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

/// Commands that bring an instance at rest back to life. Until a master
/// takes one, the instance still shows its old state, so a second such
/// command would pass the state check and then be dropped by the master.
const RESTARTS: &[CommandKind] = &[CommandKind::Rerun, CommandKind::RecoverFailure, CommandKind::Resume, CommandKind::ForceSuccess];

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

    /// Queues `kind` for the master driving `instance`.
    async fn instance_command(&self, instance: &WorkflowInstance, kind: CommandKind, tasks: Vec<String>) -> ApiResult<CommandId> {
        let command =
            NewCommand { kind, workflow_instance_id: Some(instance.id), start_tasks: tasks, ..NewCommand::start(instance.workflow_id) };
        let id = self.store.insert_command(&command).await?;
        self.commands.send();
        Ok(id)
    }

    /// 409 when a restart of `instance` is already queued and no master
    /// has taken it yet.
    async fn no_restart_queued(&self, instance: &WorkflowInstance) -> ApiResult<()> {
        let queued = self.store.unclaimed_commands().await?;
        match queued.iter().find(|c| c.spec.workflow_instance_id == Some(instance.id) && RESTARTS.contains(&c.spec.kind)) {
            Some(command) => Err(ApiError::conflict(format!(
                "workflow instance {} already has a {} queued (command {}); it stays {} until a master takes it",
                instance.id, command.spec.kind, command.id, instance.state
            ))),
            None => Ok(()),
        }
    }

    /// Rerun, recover, resume: checked against the transition table and
    /// the queue, then queued.
    async fn restart(&self, id: i64, kind: CommandKind, event: WorkflowEvent, verb: &str) -> ApiResult<(StatusCode, Json<RequestAccepted>)> {
        let instance = self.instance(WorkflowInstanceId(id)).await?;
        check_instance_event(&instance, event, verb)?;
        self.no_restart_queued(&instance).await?;
        let command = self.instance_command(&instance, kind, Vec::new()).await?;
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
    let command = state.instance_command(&instance, CommandKind::Stop, Vec::new()).await?;
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
    let command = state.instance_command(&instance, CommandKind::Pause, Vec::new()).await?;
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
    let command = state.instance_command(&instance, CommandKind::KillTask, vec![task.name.clone()]).await?;
    tracing::info!(workflow_instance = %instance.id, task_instance = %task.id, task = %task.name, %command, "kill requested");
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: instance.id.get(), command_id: command.get(), run: None })))
}

/// Mark a failed or killed task instance successful so that its
/// downstream tasks run: at once in a running instance; in a failed or
/// stopped one, the instance is restarted (its `run` goes up by one) and
/// runs what is downstream of the task, and any other failed task again.
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
    if route == ForceSuccessRoute::Restart {
        state.no_restart_queued(&instance).await?;
    }
    let command = state.instance_command(&instance, CommandKind::ForceSuccess, vec![task.name.clone()]).await?;
    tracing::info!(workflow_instance = %instance.id, task_instance = %task.id, task = %task.name, %command, ?route, "force-success requested");
    let run = (route == ForceSuccessRoute::Restart).then_some(instance.run + 1);
    Ok((StatusCode::ACCEPTED, Json(RequestAccepted { workflow_instance_id: instance.id.get(), command_id: command.get(), run })))
}
