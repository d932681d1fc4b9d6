//! The handlers, one module per resource. Handlers stay thin: extract
//! (errors named by [`crate::extract`]), look up, call the store, map with
//! [`crate::views`].

mod backfills;
mod instances;
mod logs;
mod meta;
mod projects;
mod schedules;
mod workflows;

use std::sync::Arc;

use sluice_domain::{Project, WorkflowDefinition};
use sluice_registry::{paths, Registry};
use sluice_storage::Store;
use sluice_tasks::TaskPlugins;
use utoipa_axum::router::OpenApiRouter;

pub(crate) use meta::{docs_page, method_not_allowed, not_found, openapi_json};

use crate::error::{ApiError, ApiResult};
use crate::logs::LogAccess;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub plugins: Arc<TaskPlugins>,
    pub logs: LogAccess,
    pub commands: CommandSignal,
}

/// Wakes the masters' command scans once the API inserted commands.
#[derive(Clone, Default)]
pub(crate) struct CommandSignal(Option<Arc<dyn Registry>>);

impl CommandSignal {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        CommandSignal(Some(registry))
    }

    /// Signals in the background: the request does not wait on the
    /// registry, and a lost signal only costs the wait for the next poll.
    pub fn send(&self) {
        let Some(registry) = self.0.clone() else { return };
        tokio::spawn(async move {
            if let Err(error) = registry.signal(&paths::commands_signal()).await {
                tracing::debug!(%error, "commands signal not sent; masters will find the commands at their next poll");
            }
        });
    }
}

/// Every documented route, relative to `/api/v1`.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(meta::routes()).merge(projects::routes()).merge(workflows::routes())
        .merge(schedules::routes())
        .merge(instances::routes())
        .merge(backfills::routes())
        .merge(logs::routes())
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
