//! The handlers, one module per resource. Handlers stay thin: extract
//! (errors named by [`crate::extract`]), look up, call the store, map with
//! [`crate::views`].

mod backfills;
mod instances;
mod meta;
mod projects;
mod schedules;
mod workflows;

use std::sync::Arc;

use sluice_domain::{Project, WorkflowDefinition};
use sluice_storage::Store;
use sluice_tasks::TaskPlugins;
use utoipa_axum::router::OpenApiRouter;

pub(crate) use meta::{docs_page, method_not_allowed, not_found, openapi_json};

use crate::error::{ApiError, ApiResult};

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub plugins: Arc<TaskPlugins>,
}

/// Every documented route, relative to `/api/v1`.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(meta::routes()).merge(projects::routes()).merge(workflows::routes())
        .merge(schedules::routes())
        .merge(instances::routes())
        .merge(backfills::routes())
}

impl AppState {
    pub async fn project(&self, name: &str) -> ApiResult<Project> {
        self.store.project(name).await?.ok_or_else(|| ApiError::not_found(format!("project `{name}` not found")))
    }

    /// `version` of the workflow, or its latest.
    pub async fn workflow(&self, project: &Project, name: &str, version: Option<u32>) -> ApiResult<WorkflowDefinition> {
        self.store.workflow(project.id, name, version).await?.ok_or_else(|| match version {
            Some(v) => ApiError::not_found(format!("workflow `{name}` of project `{}` has no version {v}", project.name)),
            None => ApiError::not_found(format!("workflow `{name}` not found in project `{}`", project.name)),
        })
    }
}
