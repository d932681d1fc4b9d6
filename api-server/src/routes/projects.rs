use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sluice_storage::StoreError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams};
use crate::types::{CreateProject, ErrorBody, ProjectView};
use crate::views::checked_name;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_project, list_projects)).routes(routes!(get_project))
}

/// Create a project.
#[utoipa::path(
    post,
    path = "/projects",
    tag = "projects",
    request_body = CreateProject,
    responses(
        (status = 201, description = "Created", body = ProjectView),
        (status = 400, description = "Invalid name or body", body = ErrorBody),
        (status = 409, description = "A project of that name exists", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
async fn create_project(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    checked_name("project", "name", &body.name)?;
    let project = state.store.create_project(&body.name, &body.description, &body.params).await.map_err(|e| match e {
        StoreError::Conflict(_) => ApiError::conflict(format!("project `{}` already exists", body.name)),
        other => other.into(),
    })?;
    tracing::info!(project = %project.name, id = %project.id, "project created");
    Ok((StatusCode::CREATED, Json(project.into())))
}

/// List projects.
#[utoipa::path(get, path = "/projects", tag = "projects", responses((status = 200, description = "All projects, by name", body = [ProjectView])))]
async fn list_projects(State(state): State<AppState>) -> ApiResult<Json<Vec<ProjectView>>> {
    Ok(Json(state.store.list_projects().await?.into_iter().map(ProjectView::from).collect()))
}

/// Get a project.
#[utoipa::path(
    get,
    path = "/projects/{project}",
    tag = "projects",
    params(("project" = String, Path, description = "Project name")),
    responses((status = 200, description = "The project", body = ProjectView), (status = 404, description = "No such project", body = ErrorBody))
)]
async fn get_project(State(state): State<AppState>, PathParams(project): PathParams<String>) -> ApiResult<Json<ProjectView>> {
    Ok(Json(state.project(&project).await?.into()))
}
