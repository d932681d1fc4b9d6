//! The api-server role: Sluice's REST API under `/api/v1`. It writes
//! commands and reads state; it never runs workflows itself.
//!
//! - `routes/`: the handlers, one module per resource, each annotated for
//!   the OpenAPI document (`GET /api/v1/openapi.json`, rendered by the
//!   self-contained page `docs.html` at `/api/v1/docs`).
//! - `types.rs`: the wire types, shared with the `sluice` CLI.
//! - `views.rs`: the one mapping between wire and domain types, with input
//!   validation that names the offending field.
//! - `extract.rs`: body, path and query extractors whose rejections are
//!   [`ApiError`]s, so axum's own refusals keep the error shape.
//! - `error.rs`: [`ErrorCode`] → HTTP status, and every error's mapping.

mod error;
mod extract;
mod routes;
pub mod types;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use sluice_runtime::{CancellationToken, Role, RoleError};
use sluice_storage::Store;
use sluice_tasks::TaskPlugins;
use tokio::task::JoinHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ErrorCode};

use routes::AppState;

/// The REST API as a [`Role`]. Binds on `start`; `local_addr` tells the
/// bound address (useful with port 0).
pub struct ApiServer {
    listen: SocketAddr,
    store: Arc<dyn Store>,
    plugins: TaskPlugins,
    bound: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub fn new(listen: SocketAddr, store: Arc<dyn Store>) -> Self {
        ApiServer { listen, store, plugins: TaskPlugins::builtin(), bound: None, shutdown: CancellationToken::new(), task: None }
    }

    /// The task types workflows may use (default: the built-in ones). The
    /// API checks documents against them before storing anything.
    pub fn with_plugins(mut self, plugins: TaskPlugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// The address the server listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice REST API",
        description = "Projects, workflows (as YAML or JSON documents, versioned), runs, workflow and task instances. \
            Every error has the shape `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    tags(
        (name = "meta", description = "Health"),
        (name = "projects", description = "Namespaces for workflows"),
        (name = "workflows", description = "Workflow definitions and their versions"),
        (name = "runs", description = "Starting runs; workflow and task instances"),
    )
)]
struct ApiDoc;

fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", routes::api())
}

/// The OpenAPI document of the API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

/// The API's routes, without a listener.
fn router(store: Arc<dyn Store>, plugins: TaskPlugins) -> Router {
    let (router, document) = documented_routes().split_for_parts();
    let document = Arc::new(document.to_pretty_json().expect("the OpenAPI document renders as JSON"));
    router
        .route("/api/v1/openapi.json", get(move || std::future::ready(routes::openapi_json(document.clone()))))
        .route("/api/v1/docs", get(routes::docs_page))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(AppState { store, plugins: Arc::new(plugins) })
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status, elapsed_ms, "request");
    }
    response
}

#[async_trait]
impl Role for ApiServer {
    fn name(&self) -> &'static str {
        "api"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        let listener =
            tokio::net::TcpListener::bind(self.listen).await.map_err(|e| format!("api: cannot listen on {}: {e}", self.listen))?;
        let bound = listener.local_addr()?;
        self.bound = Some(bound);
        let app = router(self.store.clone(), self.plugins.clone());
        let shutdown = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::error!(%error, "api server failed");
            }
        }));
        tracing::info!(addr = %bound, "api listening");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::{PoolOptions, SqliteStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn the_openapi_document_has_every_operation() {
        let document = serde_json::to_value(openapi()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3."));
        let operations: Vec<String> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |method| format!("{method} {path}")))
            .collect();
        assert_eq!(operations.len(), 15, "{operations:#?}");
        for operation in ["put /api/v1/projects/{project}/workflows/{name}", "post /api/v1/task-instances/{id}/kill"] {
            assert!(operations.iter().any(|o| o == operation), "{operation} missing from {operations:#?}");
        }
    }

    #[tokio::test]
    async fn health_reports_the_database_and_the_server_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db").to_str().unwrap(), PoolOptions::sized(1)).await.unwrap();
        let mut api = ApiServer::new("127.0.0.1:0".parse().unwrap(), Arc::new(store));
        api.start().await.unwrap();
        let addr = api.local_addr().unwrap();
        let response = get(addr, "/api/v1/health").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(r#"{"status":"ok","database":"ok"}"#), "{response}");
        let response = get(addr, "/api/v1/nothing").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        api.stop().await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after stop");
    }
}
